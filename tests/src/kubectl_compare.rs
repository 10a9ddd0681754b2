//! Side-by-side runs of the stock `kubectl` (on PATH) and rkube's (`target/<profile>/kubectl`)
//! against one in-process cluster: each script line is run by both, and their stdout,
//! stderr and exit codes must match once the things that differ between two runs by
//! nature (ages, generated names, uids, timestamps) are normalised.
//!
//! - [`compare_scripts`]: both binaries share the cluster's kubeconfig (and its default
//!   namespace). For read commands, and for write commands run by one side only.
//! - [`compare_scripts_isolated`]: each binary gets a namespace of its own (set as its
//!   kubeconfig context's namespace), so write commands can be compared; the namespace
//!   names are normalised too.
//!
//! A script line is a kubectl command line without the `kubectl` (shell-style quoting,
//! `{dir}` is replaced by [`Scratch::dir`], a directory the test can put manifests in).
//! Prefixes: `stock: ` runs the line with the stock kubectl only, `ours: ` with ours only
//! (setup steps whose output is not compared; they must succeed); `sleep: N` waits N
//! milliseconds; `stdin: <file> <args>` feeds the file to both. In isolated runs `{ns}`
//! is replaced by each side's namespace (for per-side cluster-scoped objects).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::cluster::Cluster;

/// The stock kubectl, looked up on PATH.
pub const STOCK: &str = "kubectl";

/// rkube's kubectl, beside the test executable; an error telling how to build it when missing.
pub fn ours_binary() -> anyhow::Result<PathBuf> {
    let path = crate::multinode::workspace_binary("kubectl")?;
    if !path.is_file() {
        bail!(
            "no kubectl binary at {} (build it first: cargo build --workspace --all-targets, or cargo build -p kubectl)",
            path.display()
        );
    }
    Ok(path)
}

/// What one run printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
}

/// Runs `program` with `args` (and `stdin` when given), killed after `timeout`.
pub async fn run(
    program: &Path,
    args: &[String],
    stdin: Option<&Path>,
    timeout: Duration,
) -> anyhow::Result<Run> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("KUBECONFIG")
        .env("NO_COLOR", "1")
        .kill_on_drop(true);
    match stdin {
        Some(file) => cmd.stdin(
            std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?,
        ),
        None => cmd.stdin(Stdio::null()),
    };
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(out) => out?,
        Err(_) => bail!(
            "`{} {}` did not finish within {timeout:?}",
            program.display(),
            args.join(" ")
        ),
    };
    Ok(Run {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        code: output.status.code().unwrap_or(-1),
    })
}

/// Runs `program` with `args` for `duration`, then kills it: what it printed by then
/// (for commands that do not end by themselves, like `get -w` or `logs -f`).
pub async fn run_for(program: &Path, args: &[String], duration: Duration) -> anyhow::Result<Run> {
    use tokio::io::AsyncReadExt as _;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("KUBECONFIG")
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let mut stdout = child.stdout.take().context("no stdout pipe")?;
    let mut stderr = child.stderr.take().context("no stderr pipe")?;
    let out = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf).await;
        buf
    });
    let err = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf).await;
        buf
    });
    let code = match tokio::time::timeout(duration, child.wait()).await {
        Ok(status) => status?.code().unwrap_or(-1),
        Err(_) => {
            child.kill().await?;
            -1
        }
    };
    Ok(Run {
        stdout: String::from_utf8_lossy(&out.await?).into_owned(),
        stderr: String::from_utf8_lossy(&err.await?).into_owned(),
        code,
    })
}

/// Splits a command line the way a shell would (single and double quotes, backslashes).
pub fn split_line(line: &str) -> anyhow::Result<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => bail!("unterminated ' in {line}"),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => bail!("unterminated \" in {line}"),
                        },
                        Some(c) => word.push(c),
                        None => bail!("unterminated \" in {line}"),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    word.push(c);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// A scratch directory for manifests a script refers to as `{dir}`.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> anyhow::Result<Scratch> {
        Ok(Scratch {
            dir: tempfile::tempdir()?,
        })
    }

    /// Writes `name` in the scratch directory.
    pub fn write(&self, name: &str, contents: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents)?;
        Ok(path)
    }
}

/// How one side runs: its binary and kubeconfig, and the namespace to normalise away.
struct Side {
    binary: PathBuf,
    kubeconfig: PathBuf,
    namespace: Option<String>,
}

/// Runs every line with both kubectls sharing the cluster's kubeconfig; an error listing
/// every mismatch with both outputs.
pub async fn compare_scripts(cluster: &Cluster, lines: &[&str]) -> anyhow::Result<()> {
    let scratch = Scratch::new()?;
    compare_scripts_in(cluster, &scratch, lines).await
}

/// [`compare_scripts`] with `{dir}` meaning `scratch`'s directory.
pub async fn compare_scripts_in(
    cluster: &Cluster,
    scratch: &Scratch,
    lines: &[&str],
) -> anyhow::Result<()> {
    let stock = Side {
        binary: STOCK.into(),
        kubeconfig: cluster.kubeconfig.clone(),
        namespace: None,
    };
    let ours = Side {
        binary: ours_binary()?,
        kubeconfig: cluster.kubeconfig.clone(),
        namespace: None,
    };
    compare(&stock, &ours, scratch, lines, false).await
}

/// Runs every line with each kubectl in a fresh namespace of its own (`<prefix>-stock`,
/// `<prefix>-ours`, made the kubeconfig context's namespace), so write commands can be
/// compared; generated names, uids, IPs and timestamps are normalised.
pub async fn compare_scripts_isolated(
    cluster: &Cluster,
    scratch: &Scratch,
    prefix: &str,
    lines: &[&str],
) -> anyhow::Result<()> {
    let mut sides = Vec::new();
    for (who, binary) in [("stock", PathBuf::from(STOCK)), ("ours", ours_binary()?)] {
        let ns = format!("{prefix}-{who}");
        let api: kube::Api<k8s_openapi::api::core::v1::Namespace> =
            kube::Api::all(cluster.client.clone());
        let obj = serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))?;
        api.create(&Default::default(), &obj)
            .await
            .with_context(|| format!("creating namespace {ns}"))?;
        let kubeconfig = scratch.dir.path().join(format!("{who}.kubeconfig"));
        write_kubeconfig_with_namespace(&cluster.kubeconfig, &kubeconfig, &ns)?;
        sides.push(Side {
            binary,
            kubeconfig,
            namespace: Some(ns),
        });
    }
    compare(&sides[0], &sides[1], scratch, lines, true).await
}

fn write_kubeconfig_with_namespace(from: &Path, to: &Path, namespace: &str) -> anyhow::Result<()> {
    let mut config = kube::config::Kubeconfig::read_from(from)?;
    let current = config.current_context.clone().unwrap_or_default();
    for ctx in &mut config.contexts {
        if ctx.name == current {
            if let Some(c) = &mut ctx.context {
                c.namespace = Some(namespace.to_string());
            }
        }
    }
    // JSON is YAML: both kubectls read it.
    std::fs::write(to, serde_json::to_vec_pretty(&config)?)?;
    Ok(())
}

async fn compare(
    stock: &Side,
    ours: &Side,
    scratch: &Scratch,
    lines: &[&str],
    isolated: bool,
) -> anyhow::Result<()> {
    let dir = scratch.dir.path().display().to_string();
    let mut mismatches = Vec::new();
    for line in lines {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(ms) = line.strip_prefix("sleep:") {
            tokio::time::sleep(Duration::from_millis(ms.trim().parse()?)).await;
            continue;
        }
        let (only, rest) = if let Some(r) = line.strip_prefix("stock:") {
            (Some("stock"), r.trim())
        } else if let Some(r) = line.strip_prefix("ours:") {
            (Some("ours"), r.trim())
        } else {
            (None, line)
        };
        let (stdin, rest) = match rest.strip_prefix("stdin:") {
            Some(r) => {
                let r = r.trim();
                let (file, args) = r.split_once(' ').unwrap_or((r, ""));
                (
                    Some(PathBuf::from(file.replace("{dir}", &dir))),
                    args.trim(),
                )
            }
            None => (None, rest),
        };
        let words = split_line(&rest.replace("{dir}", &dir))?;
        let args_for = |side: &Side| {
            let mut a = vec![
                "--kubeconfig".to_string(),
                side.kubeconfig.display().to_string(),
            ];
            // `{ns}`: the side's own namespace (isolated runs), e.g. to name per-side
            // cluster-scoped objects; normalised away like the namespace.
            a.extend(words.iter().map(|w| match &side.namespace {
                Some(ns) => w.replace("{ns}", ns),
                None => w.clone(),
            }));
            a
        };
        let timeout = Duration::from_secs(60);
        if let Some(who) = only {
            let side = if who == "stock" { stock } else { ours };
            let r = run(&side.binary, &args_for(side), stdin.as_deref(), timeout).await?;
            if r.code != 0 {
                bail!(
                    "setup step `{line}` failed ({}): {}{}",
                    r.code,
                    r.stdout,
                    r.stderr
                );
            }
            continue;
        }
        let (stock_args, ours_args) = (args_for(stock), args_for(ours));
        let (s, o) = tokio::join!(
            run(&stock.binary, &stock_args, stdin.as_deref(), timeout),
            run(&ours.binary, &ours_args, stdin.as_deref(), timeout)
        );
        let (s, o) = (s?, o?);
        if s == o && !isolated {
            continue;
        }
        let norm = |r: &Run, side: &Side, collapse: bool| Run {
            stdout: normalise(&r.stdout, side.namespace.as_deref(), isolated, collapse),
            stderr: normalise(&r.stderr, side.namespace.as_deref(), isolated, collapse),
            code: r.code,
        };
        // Exact alignment is compared unless normalised words (whose widths differ
        // between the runs) moved the columns.
        let same = norm(&s, stock, false) == norm(&o, ours, false)
            || ((isolated || ages(&s) != ages(&o))
                && norm(&s, stock, true) == norm(&o, ours, true));
        if !same {
            mismatches.push(format!(
                "=== kubectl {rest}\n--- stock (exit {}):\n{}{}--- ours (exit {}):\n{}{}",
                s.code,
                s.stdout,
                stderr_block(&s.stderr),
                o.code,
                o.stdout,
                stderr_block(&o.stderr)
            ));
        }
    }
    if !mismatches.is_empty() {
        bail!(
            "{} of the script's commands print differently:\n{}",
            mismatches.len(),
            mismatches.join("\n")
        );
    }
    Ok(())
}

/// The age-like words of a run, in order.
fn ages(r: &Run) -> Vec<String> {
    r.stdout
        .split_whitespace()
        .chain(r.stderr.split_whitespace())
        .filter(|w| is_age(w))
        .map(str::to_string)
        .collect()
}

fn stderr_block(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("[stderr]\n{stderr}")
    }
}

/// Replaces what differs between two runs by nature and, with `collapse`, column
/// padding (whose width follows the replaced text) to one space.
pub fn normalise(text: &str, namespace: Option<&str>, isolated: bool, collapse: bool) -> String {
    let text = match namespace {
        Some(ns) => text.replace(ns, "<ns>"),
        None => text.to_string(),
    };
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        let mut word = String::new();
        let mut prev_space = false;
        let mut piece = String::new();
        let flush = |word: &mut String, piece: &mut String| {
            if !word.is_empty() {
                piece.push_str(&normalise_word(word, isolated));
                word.clear();
            }
        };
        for c in line.chars() {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '_' | '<' | '>') {
                word.push(c);
                prev_space = false;
                continue;
            }
            flush(&mut word, &mut piece);
            if c == ' ' && collapse {
                if !prev_space {
                    piece.push(' ');
                }
                prev_space = true;
            } else {
                piece.push(c);
                prev_space = false;
            }
        }
        flush(&mut word, &mut piece);
        out.push_str(&piece);
    }
    out
}

fn normalise_word(w: &str, isolated: bool) -> String {
    if is_age(w) {
        return "<age>".into();
    }
    if is_uid(w) {
        return "<uid>".into();
    }
    if is_timestamp(w) {
        return "<time>".into();
    }
    if isolated {
        if is_cluster_ip(w) {
            return "<ip>".into();
        }
        if let Some(base) = generated_base(w) {
            return format!("{base}-<generated>");
        }
        if w.chars().all(|c| c.is_ascii_digit()) && w.len() >= 2 {
            return "<n>".into();
        }
    }
    w.to_string()
}

/// `5s`, `3m2s`, `4h`, `2d3h`, `<unknown>`, `<invalid>`.
fn is_age(w: &str) -> bool {
    if w == "<unknown>" || w == "<invalid>" {
        return true;
    }
    let mut digits = false;
    let mut units = 0;
    for c in w.chars() {
        if c.is_ascii_digit() {
            digits = true;
        } else if matches!(c, 's' | 'm' | 'h' | 'd' | 'y') && digits {
            digits = false;
            units += 1;
        } else {
            return false;
        }
    }
    units > 0 && !digits
}

fn is_uid(w: &str) -> bool {
    let b = w.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                *c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// `2024-05-01T10:00:00Z` (with optional fraction).
fn is_timestamp(w: &str) -> bool {
    let b = w.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && w.ends_with('Z')
}

fn is_cluster_ip(w: &str) -> bool {
    w.starts_with("10.4")
        && w.split('.').count() == 4
        && w.split('.').all(|p| p.parse::<u8>().is_ok())
}

/// `web-7d9f8c6b5d-x2kq9` → `web`, `job-abcde` → `job`: names with generated suffixes.
fn generated_base(w: &str) -> Option<&str> {
    let rand = |s: &str| {
        s.len() == 5
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    };
    let hash = |s: &str| {
        (8..=10).contains(&s.len())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    };
    let (rest, last) = w.rsplit_once('-')?;
    if hash(last) && last.chars().any(|c| c.is_ascii_digit()) {
        return Some(rest);
    }
    if !rand(last) || !last.chars().any(|c| c.is_ascii_digit()) {
        return None;
    }
    match rest.rsplit_once('-') {
        Some((base, h)) if hash(h) => Some(base),
        _ => Some(rest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_what_differs_between_runs() {
        let a = "NAME    READY   AGE\nweb-1   1/1     9s\n";
        let b = "NAME    READY   AGE\nweb-1   1/1     10s\n";
        assert_eq!(
            normalise(a, None, false, false),
            normalise(b, None, false, false)
        );
        let c = "NAME    READY   AGE\nweb-2   1/1     9s\n";
        assert_ne!(
            normalise(a, None, false, true),
            normalise(c, None, false, true)
        );
        let misaligned = "NAME   READY   AGE\nweb-1  1/1     9s\n";
        assert_ne!(
            normalise(a, None, false, false),
            normalise(misaligned, None, false, false)
        );
        assert_eq!(
            normalise(
                "pod/web-7d9f8c6b5d-x2kq9 created in ns-ours\n",
                Some("ns-ours"),
                true,
                true
            ),
            "pod/web-<generated> created in <ns>\n"
        );
    }

    #[test]
    fn splits_like_a_shell() {
        assert_eq!(
            split_line(r#"get pods -o 'jsonpath={.items[*].metadata.name}' "a b" c\ d"#).ok(),
            Some(
                vec![
                    "get",
                    "pods",
                    "-o",
                    "jsonpath={.items[*].metadata.name}",
                    "a b",
                    "c d"
                ]
                .into_iter()
                .map(String::from)
                .collect()
            )
        );
    }
}
