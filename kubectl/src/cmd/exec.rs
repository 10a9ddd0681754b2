//! `kubectl exec [-i] [-t] POD|TYPE/NAME [-c CONTAINER] -- COMMAND…`: runs a command in a
//! container over the apiserver's exec websocket (kube-rs), with the terminal in raw
//! mode for `-t`; exits with the command's exit code (`command terminated with exit
//! code N`).

use std::os::fd::AsFd as _;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status as MetaStatus;
use kube::api::{AttachParams, TerminalSize};
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;

use crate::context::Ctx;
use crate::errors::{self, Exit};
use crate::write;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// POD or TYPE/NAME
    pub target: Option<String>,
    /// Container name. If omitted, use the kubectl.kubernetes.io/default-container annotation, else the first container.
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Pass stdin to the container
    #[arg(short = 'i', long)]
    pub stdin: bool,
    /// Stdin is a TTY
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Only print output from the remote session
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// The pod a `POD`, `pod/NAME` or `TYPE/NAME` (a workload or service: its first pod) names.
pub async fn resolve_pod(ctx: &Ctx, target: &str) -> anyhow::Result<Value> {
    let client = ctx.client().await?;
    let ns = ctx.namespace().await?;
    let (type_arg, name) = match target.split_once('/') {
        Some((t, n)) => (t, n),
        None => ("pods", target),
    };
    let discovery = ctx.discovery().await?;
    let res = discovery.resolve(type_arg)?;
    let obj = write::get(&client, &res.object_url(Some(&ns), name)).await?;
    if res.kind == "Pod" {
        return Ok(obj);
    }
    let selector = match res.kind.as_str() {
        "Service" | "ReplicationController" => obj["spec"]["selector"].clone(),
        _ => obj["spec"]["selector"]["matchLabels"].clone(),
    };
    let Some(m) = selector.as_object().filter(|m| !m.is_empty()) else {
        anyhow::bail!(
            "cannot attach to {}: selector for {} not implemented",
            res.kind,
            res.kind
        );
    };
    let sel: Vec<String> = m
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    let url = super::with_query(
        &format!("/api/v1/namespaces/{ns}/pods"),
        &[("labelSelector", &sel.join(","))],
    );
    let pods = write::get(&client, &url).await?;
    let mut items = pods["items"].as_array().cloned().unwrap_or_default();
    // Running pods first, then the oldest.
    items.sort_by_key(|p| {
        (
            p["status"]["phase"] != "Running",
            p["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    });
    items
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no pods found for {}/{name}", res.kind_group()))
}

/// The container to use: `-c`, else the default-container annotation, else the first
/// (saying so, as the stock kubectl does, when there are several).
pub fn pick_container(pod: &Value, container: Option<&str>, quiet: bool) -> anyhow::Result<String> {
    let names: Vec<String> = pod["spec"]["containers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if let Some(c) = container {
        return Ok(c.to_string());
    }
    if let Some(d) =
        pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"].as_str()
    {
        if names.iter().any(|n| n == d) {
            return Ok(d.to_string());
        }
    }
    let first = names.first().cloned().unwrap_or_default();
    if names.len() > 1 && !quiet {
        eprintln!("Defaulted container {first:?} out of: {}", names.join(", "));
    }
    Ok(first)
}

/// The terminal's size, from `stty size` (rows, columns).
fn terminal_size() -> Option<TerminalSize> {
    let out = std::process::Command::new("stty")
        .arg("size")
        .stdin(std::process::Stdio::inherit())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace();
    let height = it.next()?.parse().ok()?;
    let width = it.next()?.parse().ok()?;
    Some(TerminalSize { width, height })
}

/// Puts stdin's terminal in raw mode until dropped.
struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    fn enable() -> RawMode {
        let stdin = std::io::stdin();
        match nix::sys::termios::tcgetattr(stdin.as_fd()) {
            Ok(orig) => {
                let mut raw = orig.clone();
                nix::sys::termios::cfmakeraw(&mut raw);
                let _ = nix::sys::termios::tcsetattr(
                    stdin.as_fd(),
                    nix::sys::termios::SetArg::TCSANOW,
                    &raw,
                );
                RawMode(Some(orig))
            }
            Err(_) => RawMode(None),
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(orig) = &self.0 {
            let stdin = std::io::stdin();
            let _ = nix::sys::termios::tcsetattr(
                stdin.as_fd(),
                nix::sys::termios::SetArg::TCSANOW,
                orig,
            );
        }
    }
}

/// The exit code in an exec's final status (0 on success).
pub fn exit_code(status: Option<&MetaStatus>) -> anyhow::Result<i32> {
    let Some(s) = status else { return Ok(0) };
    if s.status.as_deref() == Some("Success") {
        return Ok(0);
    }
    if s.reason.as_deref() == Some("NonZeroExitCode") {
        let code = s
            .details
            .iter()
            .flat_map(|d| d.causes.iter().flatten())
            .find(|c| c.reason.as_deref() == Some("ExitCode"))
            .and_then(|c| c.message.as_deref()?.parse::<i32>().ok())
            .unwrap_or(1);
        return Ok(code);
    }
    anyhow::bail!("{}", s.message.clone().unwrap_or_default())
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let Some(target) = args.target.as_deref() else {
        return errors::usage("exec", "pod, type/name or --filename must be specified");
    };
    if args.command.is_empty() {
        anyhow::bail!("you must specify at least one command for the container");
    }
    let pod = resolve_pod(ctx, target).await?;
    let phase = pod["status"]["phase"].as_str().unwrap_or_default();
    if phase == "Succeeded" || phase == "Failed" {
        anyhow::bail!("cannot exec into a container in a completed pod; current phase is {phase}");
    }
    let container = pick_container(&pod, args.container.as_deref(), args.quiet)?;
    let ns = write::ns_of(&pod).unwrap_or_default().to_string();
    let name = write::name_of(&pod).to_string();
    let tty = args.tty && args.stdin;
    if args.tty && !args.stdin && !args.quiet {
        eprintln!("Unable to use a TTY - input is not a terminal or the right kind of file");
    }
    let client = ctx.client().await?;
    let api: kube::Api<Pod> = kube::Api::namespaced(client, &ns);
    let params = AttachParams::default()
        .container(container)
        .stdin(args.stdin)
        .stdout(true)
        .stderr(!tty)
        .tty(tty);
    let proc = api
        .exec(&name, args.command.clone(), &params)
        .await
        .map_err(|e| match e {
            kube::Error::Api(_) => anyhow::Error::from(e),
            other => anyhow::anyhow!("unable to upgrade connection: {other}"),
        })?;
    let status = stream(proc, tty).await;
    let code = exit_code(status.as_ref())?;
    if code != 0 {
        if !args.quiet {
            eprintln!("command terminated with exit code {code}");
        }
        return Err(Exit(code).into());
    }
    Ok(())
}

/// Connects this terminal to an exec'd or attached process until it ends: stdin to its
/// stdin (if it has one), its stdout and stderr here, the terminal raw and its size sent
/// for `tty`. Returns the session's final status.
pub async fn stream(mut proc: kube::api::AttachedProcess, tty: bool) -> Option<MetaStatus> {
    let raw = tty.then(RawMode::enable);
    if tty {
        if let (Some(mut sizes), Some(size)) = (proc.terminal_size(), terminal_size()) {
            use futures::SinkExt as _;
            let _ = sizes.send(size).await;
        }
    }
    let stdin_task = proc.stdin().map(|mut w| {
        tokio::spawn(async move {
            let mut input = tokio::io::stdin();
            let _ = tokio::io::copy(&mut input, &mut w).await;
            let _ = w.shutdown().await;
        })
    });
    let out_task = proc.stdout().map(|mut r| {
        tokio::spawn(async move {
            let mut out = tokio::io::stdout();
            let _ = tokio::io::copy(&mut r, &mut out).await;
            let _ = out.flush().await;
        })
    });
    let err_task = proc.stderr().map(|mut r| {
        tokio::spawn(async move {
            let mut err = tokio::io::stderr();
            let _ = tokio::io::copy(&mut r, &mut err).await;
            let _ = err.flush().await;
        })
    });
    let status = match proc.take_status() {
        Some(f) => f.await,
        None => None,
    };
    if let Some(t) = out_task {
        let _ = t.await;
    }
    if let Some(t) = err_task {
        let _ = t.await;
    }
    if let Some(t) = stdin_task {
        t.abort();
    }
    drop(raw);
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exit_codes_come_from_the_status_causes() {
        let failed: MetaStatus = serde_json::from_value(json!({
            "status": "Failure", "reason": "NonZeroExitCode", "message": "command terminated with non-zero exit code",
            "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}
        }))
        .expect("status");
        assert_eq!(exit_code(Some(&failed)).ok(), Some(3));
        let ok: MetaStatus = serde_json::from_value(json!({"status": "Success"})).expect("status");
        assert_eq!(exit_code(Some(&ok)).ok(), Some(0));
        let other: MetaStatus = serde_json::from_value(json!({
            "status": "Failure", "reason": "InternalError", "message": "boom"
        }))
        .expect("status");
        assert_eq!(
            exit_code(Some(&other))
                .err()
                .map(|e| e.to_string())
                .as_deref(),
            Some("boom")
        );
    }

    #[test]
    fn picks_the_default_container() {
        let pod = json!({"metadata": {"annotations": {"kubectl.kubernetes.io/default-container": "b"}},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        assert_eq!(pick_container(&pod, None, true).ok().as_deref(), Some("b"));
        assert_eq!(
            pick_container(&pod, Some("a"), true).ok().as_deref(),
            Some("a")
        );
        let pod = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        assert_eq!(pick_container(&pod, None, true).ok().as_deref(), Some("a"));
    }
}
