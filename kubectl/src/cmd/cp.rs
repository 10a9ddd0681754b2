//! `kubectl cp SRC DEST` where one side is `[NAMESPACE/]POD:PATH`: a tar stream over
//! exec, as the stock kubectl does (`tar cf - PATH` in the container to copy out,
//! `tar xmf - -C DIR` to copy in); needs `tar` in the container.

use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use kube::api::AttachParams;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::context::Ctx;
use crate::errors::{self, Exit};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// SRC and DEST: a local path or [NAMESPACE/]POD:PATH
    pub paths: Vec<String>,
    /// Container name. If omitted, use the default container.
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// The tar archive is not preserving ownership and permissions (accepted).
    #[arg(long = "no-preserve")]
    pub no_preserve: bool,
    /// Number of retries (accepted).
    #[arg(long, default_value_t = 0)]
    pub retries: i32,
}

/// A `[NAMESPACE/]POD:PATH` argument.
#[derive(Debug, PartialEq)]
pub struct Remote {
    pub namespace: Option<String>,
    pub pod: String,
    pub path: String,
}

pub fn parse_remote(s: &str) -> Option<Remote> {
    // A local path that exists, or one starting with / or ., stays local.
    if s.starts_with('/') || s.starts_with('.') || Path::new(s).exists() {
        return None;
    }
    let (target, path) = s.split_once(':')?;
    let (namespace, pod) = match target.split_once('/') {
        Some((ns, p)) => (Some(ns.to_string()), p.to_string()),
        None => (None, target.to_string()),
    };
    if pod.is_empty() {
        return None;
    }
    Some(Remote {
        namespace,
        pod,
        path: path.to_string(),
    })
}

/// `path` inside the archive made of `base`, or None for entries that would escape.
async fn read_all(r: Option<impl tokio::io::AsyncRead + Unpin>) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if let Some(mut r) = r {
        r.read_to_end(&mut buf).await?;
    }
    Ok(buf)
}

fn strip(entry: &Path, prefix: &Path) -> Option<PathBuf> {
    let rel = entry.strip_prefix(prefix).ok()?;
    if rel
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::RootDir))
    {
        return None;
    }
    Some(rel.to_path_buf())
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    if args.paths.len() != 2 {
        return errors::usage("cp", "source and destination are required");
    }
    let (src, dst) = (&args.paths[0], &args.paths[1]);
    match (parse_remote(src), parse_remote(dst)) {
        (Some(r), None) => copy_from(ctx, &args, &r, Path::new(dst)).await,
        (None, Some(r)) => copy_to(ctx, &args, Path::new(src), &r).await,
        (Some(_), Some(_)) => {
            anyhow::bail!("one of src or dest must be a local file specification")
        }
        (None, None) => anyhow::bail!("one of src or dest must be a remote file specification"),
    }
}

async fn pod_api(ctx: &Ctx, r: &Remote) -> anyhow::Result<(kube::Api<Pod>, String)> {
    let ns = match &r.namespace {
        Some(n) => n.clone(),
        None => ctx.namespace().await?,
    };
    let client = ctx.client().await?;
    let pod =
        crate::write::get(&client, &format!("/api/v1/namespaces/{ns}/pods/{}", r.pod)).await?;
    Ok((
        kube::Api::namespaced(client, &ns),
        serde_json::to_string(&pod)?,
    ))
}

async fn copy_from(ctx: &Ctx, args: &Args, r: &Remote, dst: &Path) -> anyhow::Result<()> {
    if r.path.is_empty() {
        anyhow::bail!("remote path cannot be empty");
    }
    let (api, pod) = pod_api(ctx, r).await?;
    let pod: serde_json::Value = serde_json::from_str(&pod)?;
    let container = super::exec::pick_container(&pod, args.container.as_deref(), false)?;
    let params = AttachParams::default()
        .container(container)
        .stdin(false)
        .stdout(true)
        .stderr(true);
    let mut proc = api
        .exec(&r.pod, vec!["tar", "cf", "-", r.path.as_str()], &params)
        .await?;
    let out = proc.stdout();
    let err = proc.stderr();
    // Both streams at once, then the status; tar's messages go to stdout, as the stock
    // kubectl prints them.
    let (archive, messages) = tokio::join!(read_all(out), read_all(err));
    let status = match proc.take_status() {
        Some(f) => f.await,
        None => None,
    };
    tokio::io::stdout().write_all(&messages?).await?;
    let archive = archive?;
    // A failing tar (a missing path) is reported by its messages only, and the copy
    // "succeeds" with nothing copied, as with the stock kubectl.
    let _ = super::exec::exit_code(status.as_ref());
    // tar drops the leading '/': entries are relative to the remote path's parent.
    let remote = Path::new(r.path.trim_start_matches('/'));
    let prefix = remote.to_path_buf();
    let mut tar = tar::Archive::new(std::io::Cursor::new(archive));
    for entry in tar.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let Some(rel) = strip(&path, &prefix) else {
            eprintln!(
                "warning: skipping {}: it is outside the copied path",
                path.display()
            );
            continue;
        };
        let target = if rel.as_os_str().is_empty() {
            dst.to_path_buf()
        } else {
            dst.join(rel)
        };
        if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        entry.unpack(&target)?;
    }
    Ok(())
}

async fn copy_to(ctx: &Ctx, args: &Args, src: &Path, r: &Remote) -> anyhow::Result<()> {
    if !src.exists() {
        anyhow::bail!("{} doesn't exist in local filesystem", src.display());
    }
    let (api, pod) = pod_api(ctx, r).await?;
    let pod: serde_json::Value = serde_json::from_str(&pod)?;
    let container = super::exec::pick_container(&pod, args.container.as_deref(), false)?;
    let dest = if r.path.is_empty() {
        ".".to_string()
    } else {
        r.path.clone()
    };
    let dest_path = Path::new(&dest);
    let dir = dest_path
        .parent()
        .map(|p| p.display().to_string())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| ".".into());
    let base = dest_path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| ".".into());
    let mut builder = tar::Builder::new(Vec::new());
    if src.is_dir() {
        builder.append_dir_all(&base, src)?;
    } else {
        builder.append_path_with_name(src, &base)?;
    }
    let archive = builder.into_inner()?;
    let params = AttachParams::default()
        .container(container)
        .stdin(true)
        .stdout(true)
        .stderr(true);
    let mut proc = api
        .exec(
            &r.pod,
            vec!["tar", "-xmf", "-", "-C", dir.as_str()],
            &params,
        )
        .await?;
    if let Some(mut w) = proc.stdin() {
        w.write_all(&archive).await?;
        w.shutdown().await?;
    }
    let (out, messages) = tokio::join!(read_all(proc.stdout()), read_all(proc.stderr()));
    let status = match proc.take_status() {
        Some(f) => f.await,
        None => None,
    };
    let mut stdout = tokio::io::stdout();
    stdout.write_all(&out?).await?;
    stdout.write_all(&messages?).await?;
    let code = super::exec::exit_code(status.as_ref())?;
    if code != 0 {
        return Err(Exit(code).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_remote_from_local_paths() {
        assert_eq!(
            parse_remote("ns/pod:/etc/hosts"),
            Some(Remote {
                namespace: Some("ns".into()),
                pod: "pod".into(),
                path: "/etc/hosts".into()
            })
        );
        assert_eq!(
            parse_remote("pod:tmp"),
            Some(Remote {
                namespace: None,
                pod: "pod".into(),
                path: "tmp".into()
            })
        );
        assert_eq!(parse_remote("/tmp/x"), None);
        assert_eq!(parse_remote("./a:b"), None);
    }

    #[test]
    fn entries_outside_the_copied_path_are_refused() {
        assert_eq!(
            strip(Path::new("etc/hosts"), Path::new("etc/hosts")),
            Some(PathBuf::new())
        );
        assert_eq!(
            strip(Path::new("etc/x/y"), Path::new("etc")),
            Some(PathBuf::from("x/y"))
        );
        assert_eq!(strip(Path::new("etc/../root"), Path::new("etc")), None);
        assert_eq!(strip(Path::new("var/x"), Path::new("etc")), None);
    }
}
