//! Node-side commands: the lab node's images and containers seen and handled the way the
//! docker CLI shows them (`rkube images`, `pull`, `rmi`, `load`, `save`, `image prune`,
//! `ps`, `logs`, `exec`, `inspect`). They open the node's image store and runtime
//! records directly, so they work whether or not the lab is running.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use chrono::{DateTime, Utc};
use kubelet::runtime::image::ImageStore;
use kubelet::runtime::{ContainerState, ContainerStatus, ExecRequest, ImageInfo, Runtime, LABEL_CONTAINER_NAME, LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID};

use crate::lab::Lab;

pub fn store(lab: &Lab) -> anyhow::Result<ImageStore> {
    ImageStore::open(&lab.agent_dir().join("image-store")).context("opening the node's image store")
}

async fn runtime(lab: &Lab) -> anyhow::Result<Arc<dyn Runtime>> {
    let settings = lab.load_settings()?.with_context(|| format!("{} is not a lab (no lab.json): run rkube up first", lab.dir.display()))?;
    let config = crate::up::kubelet_config(lab, &settings);
    Ok(kubelet::runtime::linux_runtime(&config, false).await?.runtime)
}

/// Docker's human sizes: decimal units, three significant digits.
pub fn human_size(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i < units.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        return format!("{bytes}B");
    }
    let digits = if v >= 100.0 { 0 } else if v >= 10.0 { 1 } else { 2 };
    let s = format!("{v:.digits$}");
    let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s };
    format!("{s}{}", units[i])
}

/// Docker's "N units ago".
pub fn human_ago(t: DateTime<Utc>) -> String {
    let secs = Utc::now().signed_duration_since(t).num_seconds().max(0);
    let (n, unit) = match secs {
        s if s < 60 => return if s <= 1 { "Less than a second ago".into() } else { format!("{s} seconds ago") },
        s if s < 3600 => (s / 60, "minute"),
        s if s < 86_400 => (s / 3600, "hour"),
        s if s < 86_400 * 14 => (s / 86_400, "day"),
        s if s < 86_400 * 60 => (s / (86_400 * 7), "week"),
        s if s < 86_400 * 365 * 2 => (s / (86_400 * 30), "month"),
        s => (s / (86_400 * 365), "year"),
    };
    if n == 1 {
        if unit == "hour" {
            return "About an hour ago".into();
        }
        return format!("1 {unit} ago");
    }
    format!("{n} {unit}s ago")
}

/// Duration for "Up 5 minutes" (no "ago").
fn human_for(t: DateTime<Utc>) -> String {
    human_ago(t).trim_end_matches(" ago").to_string()
}

/// Columns separated by at least three spaces, as docker's tabwriter prints them.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols).map(|c| rows.iter().map(|r| r.get(c).map(|s| s.chars().count()).unwrap_or(0)).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < r.len() {
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 3));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn short_id(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

fn split_tag(tag: &str) -> (String, String) {
    let familiar = kubelet::runtime::image::ImageReference::parse(tag).map(|r| r.familiar()).unwrap_or_else(|_| tag.to_string());
    match familiar.rsplit_once(':') {
        Some((repo, t)) if !t.contains('/') => (repo.to_string(), t.to_string()),
        _ => (familiar, "<none>".into()),
    }
}

pub fn images(lab: &Lab, quiet: bool) -> anyhow::Result<()> {
    let mut list = store(lab)?.list()?;
    list.sort_by_key(|i| std::cmp::Reverse(i.created));
    if quiet {
        for i in &list {
            println!("{}", short_id(&i.id));
        }
        return Ok(());
    }
    let mut rows = vec![vec!["REPOSITORY".into(), "TAG".into(), "IMAGE ID".into(), "CREATED".into(), "SIZE".into()]];
    for i in &list {
        let created = i.created.map(human_ago).unwrap_or_else(|| "N/A".into());
        let tags = if i.repo_tags.is_empty() { vec!["<none>:<none>".to_string()] } else { i.repo_tags.clone() };
        for t in tags {
            let (repo, tag) = if t == "<none>:<none>" { ("<none>".into(), "<none>".into()) } else { split_tag(&t) };
            rows.push(vec![repo, tag, short_id(&i.id), created.clone(), human_size(i.size)]);
        }
    }
    print!("{}", table(&rows));
    Ok(())
}

pub async fn pull(lab: &Lab, reference: &str) -> anyhow::Result<()> {
    let store = store(lab)?;
    let normalized = kubelet::runtime::image::normalize_reference(reference)?;
    let (repo, tag) = split_tag(&normalized);
    println!("{tag}: Pulling from {repo}");
    let info = store.pull(reference, None).await?;
    if let Some(d) = info.repo_digests.first() {
        println!("Digest: {}", d.rsplit('@').next().unwrap_or(d));
    }
    println!("Status: Downloaded newer image for {repo}:{tag}");
    println!("{normalized}");
    Ok(())
}

pub async fn rmi(lab: &Lab, references: &[String]) -> anyhow::Result<()> {
    let store = store(lab)?;
    let in_use = images_in_use(lab).await;
    let mut failed = false;
    for r in references {
        if let Ok(Some(info)) = store.status(r) {
            if in_use.contains(&info.id) && info.repo_tags.len() <= 1 {
                eprintln!("Error response from daemon: conflict: unable to remove image {r} (must force) - image is being used by a container");
                failed = true;
                continue;
            }
        }
        match store.remove(r) {
            Ok(outcome) => {
                for t in outcome.untagged {
                    println!("Untagged: {t}");
                }
                if let Some(id) = outcome.deleted {
                    println!("Deleted: {id}");
                }
            }
            Err(e) => {
                eprintln!("Error response from daemon: {e}");
                failed = true;
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
    Ok(())
}

/// Image ids used by containers that exist on the node (running or not).
async fn images_in_use(lab: &Lab) -> HashSet<String> {
    let Ok(rt) = runtime(lab).await else { return HashSet::new() };
    rt.list_containers().await.unwrap_or_default().into_iter().map(|c| c.image_ref).collect()
}

pub async fn prune(lab: &Lab) -> anyhow::Result<()> {
    let in_use = images_in_use(lab).await;
    let removed = store(lab)?.prune(&in_use)?;
    let mut total = 0;
    if !removed.is_empty() {
        println!("Deleted Images:");
    }
    for i in &removed {
        for t in &i.repo_tags {
            println!("untagged: {t}");
        }
        println!("deleted: {}", i.id);
        total += i.size;
    }
    println!("\nTotal reclaimed space: {}", human_size(total));
    Ok(())
}

pub fn load(lab: &Lab, input: &Path) -> anyhow::Result<()> {
    let loaded = store(lab)?.import_archive(input).with_context(|| format!("loading {}", input.display()))?;
    for i in loaded {
        for t in &i.repo_tags {
            let (repo, tag) = split_tag(t);
            println!("Loaded image: {repo}:{tag}");
        }
        if i.repo_tags.is_empty() {
            println!("Loaded image ID: {}", i.id);
        }
    }
    Ok(())
}

pub fn save(lab: &Lab, output: Option<&Path>, references: &[String]) -> anyhow::Result<()> {
    if references.is_empty() {
        bail!("\"rkube save\" requires at least 1 argument (an image)");
    }
    let store = store(lab)?;
    match output {
        Some(path) => {
            let tmp = path.with_extension("partial");
            let mut file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            store.save(references, &mut file)?;
            file.sync_all()?;
            std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
        }
        None => {
            if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                bail!("cowardly refusing to save to a terminal. Use the -o flag or redirect");
            }
            let mut out = std::io::stdout().lock();
            store.save(references, &mut out)?;
            out.flush()?;
        }
    }
    Ok(())
}

/// `k8s_<container>_<pod>_<namespace>_<uid>_<attempt>`, the names dockershim gave.
fn container_name(c: &ContainerStatus) -> String {
    let l = |k: &str| c.labels.get(k).cloned().unwrap_or_default();
    format!("k8s_{}_{}_{}_{}_{}", l(LABEL_CONTAINER_NAME), l(LABEL_POD_NAME), l(LABEL_POD_NAMESPACE), l(LABEL_POD_UID), c.attempt)
}

fn container_command(lab: &Lab, id: &str) -> String {
    let path = lab.agent_dir().join("containers").join(id).join("config.json");
    let args: Vec<String> = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.pointer("/process/args").and_then(|a| serde_json::from_value(a.clone()).ok()))
        .unwrap_or_default();
    let text = args.join(" ");
    let short: String = text.chars().take(19).collect();
    if text.chars().count() > 20 {
        format!("\"{short}…\"")
    } else {
        format!("\"{text}\"")
    }
}

fn familiar(image: &str) -> String {
    kubelet::runtime::image::ImageReference::parse(image).map(|r| r.familiar()).unwrap_or_else(|_| image.to_string())
}

pub async fn ps(lab: &Lab, all: bool, quiet: bool) -> anyhow::Result<()> {
    let rt = runtime(lab).await?;
    let mut list: Vec<ContainerStatus> = rt.list_containers().await?.into_iter().filter(|c| all || c.state == ContainerState::Running).collect();
    list.sort_by_key(|c| std::cmp::Reverse(c.created_at));
    if quiet {
        for c in &list {
            println!("{}", short_id(&c.id));
        }
        return Ok(());
    }
    let mut rows = vec![["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"].map(String::from).to_vec()];
    for c in &list {
        let status = match c.state {
            ContainerState::Running => format!("Up {}", human_for(c.started_at.unwrap_or(c.created_at))),
            ContainerState::Exited => format!("Exited ({}) {}", c.exit_code.unwrap_or(0), human_ago(c.finished_at.unwrap_or(c.created_at))),
            ContainerState::Created => "Created".into(),
            ContainerState::Unknown => "Unknown".into(),
        };
        rows.push(vec![short_id(&c.id), familiar(&c.image), container_command(lab, &c.id), human_ago(c.created_at), status, String::new(), container_name(c)]);
    }
    print!("{}", table(&rows));
    Ok(())
}

/// A container by full id, unique id prefix, or name.
async fn find_container(rt: &Arc<dyn Runtime>, key: &str) -> anyhow::Result<ContainerStatus> {
    let list = rt.list_containers().await?;
    let matches: Vec<&ContainerStatus> = list.iter().filter(|c| c.id == key || container_name(c) == key).collect();
    if let Some(c) = matches.first() {
        return Ok((*c).clone());
    }
    let prefixed: Vec<&ContainerStatus> = list.iter().filter(|c| !key.is_empty() && c.id.starts_with(key)).collect();
    match prefixed.as_slice() {
        [one] => Ok((*one).clone()),
        [] => bail!("Error response from daemon: No such container: {key}"),
        _ => bail!("Error response from daemon: multiple containers match {key:?}; give more of the id"),
    }
}

pub async fn logs(lab: &Lab, key: &str, timestamps: bool, tail: Option<usize>) -> anyhow::Result<()> {
    let rt = runtime(lab).await?;
    let c = find_container(&rt, key).await?;
    let text = std::fs::read(&c.log_path).with_context(|| format!("reading {}", c.log_path.display()))?;
    let mut lines: Vec<(bool, String)> = Vec::new();
    let mut partial = String::new();
    for raw in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(entry) = kubelet::server::logs::parse_cri_line(raw) else { continue };
        let stderr = matches!(entry.stream, kubelet::server::logs::LogStream::Stderr);
        let content = String::from_utf8_lossy(&entry.content);
        let stamp = if timestamps { format!("{} ", entry.timestamp.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)) } else { String::new() };
        if entry.partial {
            partial.push_str(&content);
            continue;
        }
        let whole = format!("{stamp}{partial}{content}");
        partial.clear();
        lines.push((stderr, whole));
    }
    let skip = tail.map(|n| lines.len().saturating_sub(n)).unwrap_or(0);
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    for (stderr, line) in lines.into_iter().skip(skip) {
        if stderr {
            writeln!(err, "{line}")?;
        } else {
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}

pub async fn inspect(lab: &Lab, key: &str) -> anyhow::Result<()> {
    if let Ok(rt) = runtime(lab).await {
        if let Ok(c) = find_container(&rt, key).await {
            let config: serde_json::Value = std::fs::read(lab.agent_dir().join("containers").join(&c.id).join("config.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            let doc = serde_json::json!([{
                "Id": c.id, "Name": container_name(&c), "Created": c.created_at,
                "State": {"Status": format!("{:?}", c.state).to_lowercase(), "Pid": c.pid, "ExitCode": c.exit_code,
                          "StartedAt": c.started_at, "FinishedAt": c.finished_at, "OOMKilled": c.reason.as_deref() == Some("OOMKilled")},
                "Image": c.image_ref, "Config": {"Image": c.image, "Labels": c.labels}, "LogPath": c.log_path,
                "Spec": config,
            }]);
            println!("{}", serde_json::to_string_pretty(&doc)?);
            return Ok(());
        }
    }
    let store = store(lab)?;
    let Some(info) = store.status(key)? else {
        bail!("Error: No such object: {key}");
    };
    let resolved = store.resolve(key)?;
    let doc = image_doc(&info, resolved.as_ref().map(|r| serde_json::to_value(&r.config).unwrap_or_default()));
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}

fn image_doc(info: &ImageInfo, config: Option<serde_json::Value>) -> serde_json::Value {
    let config = config.unwrap_or_default();
    serde_json::json!([{
        "Id": info.id, "RepoTags": info.repo_tags, "RepoDigests": info.repo_digests, "Created": info.created,
        "Size": info.size, "Architecture": config.get("architecture"), "Os": config.get("os"), "Config": config.get("config"),
        "RootFS": config.get("rootfs"),
    }])
}

pub async fn exec(lab: &Lab, key: &str, command: Vec<String>, interactive: bool, tty: bool) -> anyhow::Result<i32> {
    if command.is_empty() {
        bail!("\"rkube exec\" requires at least 2 arguments: a container and a command");
    }
    let rt = runtime(lab).await?;
    let c = find_container(&rt, key).await?;
    if c.state != ContainerState::Running {
        bail!("Error response from daemon: container {} is not running", short_id(&c.id));
    }
    let mut session = rt.exec(ExecRequest { container_id: c.id.clone(), command, tty, stdin: interactive }).await?;
    let _raw = if tty { crate::term::RawMode::enable().ok() } else { None };
    if let (Some(resize), Some((cols, rows))) = (&session.resize, crate::term::size()) {
        let _ = resize.send((cols, rows)).await;
    }
    let mut tasks = Vec::new();
    if let (true, Some(mut stdin)) = (interactive, session.stdin.take()) {
        tasks.push(tokio::spawn(async move {
            let mut input = tokio::io::stdin();
            let _ = tokio::io::copy(&mut input, &mut stdin).await;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut stdin).await;
        }));
    }
    let out = session.stdout.take().map(|mut s| {
        tokio::spawn(async move {
            let mut o = tokio::io::stdout();
            let _ = tokio::io::copy(&mut s, &mut o).await;
            let _ = tokio::io::AsyncWriteExt::flush(&mut o).await;
        })
    });
    let err = session.stderr.take().map(|mut s| {
        tokio::spawn(async move {
            let mut e = tokio::io::stderr();
            let _ = tokio::io::copy(&mut s, &mut e).await;
        })
    });
    let code = session.exit.await.unwrap_or(255);
    for t in [out, err].into_iter().flatten() {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), t).await;
    }
    for t in tasks {
        t.abort();
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_tables_read_like_docker() {
        assert_eq!(human_size(4_261_000), "4.26MB");
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(1_500_000_000), "1.5GB");
        assert_eq!(human_size(12_300), "12.3kB");
        let t = table(&[vec!["REPOSITORY".into(), "TAG".into()], vec!["busybox".into(), "latest".into()]]);
        assert_eq!(t, "REPOSITORY   TAG\nbusybox      latest\n");
        assert_eq!(split_tag("docker.io/library/busybox:latest"), ("busybox".into(), "latest".into()));
        assert_eq!(split_tag("localhost:5000/app:1"), ("localhost:5000/app".into(), "1".into()));
    }
}
