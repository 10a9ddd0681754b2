//! `kubectl rollout status|history|undo|restart|pause|resume` for Deployments (status
//! and restart also for DaemonSets and StatefulSets), with the stock messages.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::context::Ctx;
use crate::errors;
use crate::printers::tabwriter::TabWriter;
use crate::resources::ResourceInfo;
use crate::write::{self, DryRunArg};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: Sub,
}

#[derive(clap::Subcommand, Debug)]
pub enum Sub {
    /// Show the status of the rollout
    Status(StatusArgs),
    /// View rollout history
    History(HistoryArgs),
    /// Undo a previous rollout
    Undo(UndoArgs),
    /// Restart a resource
    Restart(Target),
    /// Mark the provided resource as paused
    Pause(Target),
    /// Resume a paused resource
    Resume(Target),
}

#[derive(clap::Args, Debug)]
pub struct Target {
    /// TYPE NAME or TYPE/NAME
    pub resources: Vec<String>,
    #[command(flatten)]
    pub dry_run: DryRunArg,
    /// Output format: yaml, json or name.
    #[arg(short = 'o', long)]
    pub output: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    pub resources: Vec<String>,
    /// Watch the status of the rollout until it's done.
    #[arg(short = 'w', long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true")]
    pub watch: String,
    /// Pin to a specific revision for showing its status.
    #[arg(long, default_value_t = 0)]
    pub revision: i64,
    /// The length of time to wait before ending watch, zero means never.
    #[arg(long, default_value = "0s")]
    pub timeout: String,
}

#[derive(clap::Args, Debug)]
pub struct HistoryArgs {
    pub resources: Vec<String>,
    /// See the details, including podTemplate of the revision specified
    #[arg(long, default_value_t = 0)]
    pub revision: i64,
}

#[derive(clap::Args, Debug)]
pub struct UndoArgs {
    pub resources: Vec<String>,
    /// The revision to rollback to. Default to 0 (last revision).
    #[arg(long = "to-revision", default_value_t = 0)]
    pub to_revision: i64,
    #[command(flatten)]
    pub dry_run: DryRunArg,
}

const REVISION: &str = "deployment.kubernetes.io/revision";

async fn target(
    ctx: &Ctx,
    resources: &[String],
    cmd: &str,
) -> anyhow::Result<(Value, ResourceInfo)> {
    if resources.is_empty() {
        return errors::usage(&format!("rollout {cmd}"), "required resource not specified");
    }
    let mut objs = write::select(ctx, resources, None, false, false).await?;
    if objs.is_empty() {
        anyhow::bail!("no objects passed to {cmd}");
    }
    Ok(objs.remove(0))
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    match args.command {
        Sub::Status(a) => status(ctx, a).await,
        Sub::History(a) => history(ctx, a).await,
        Sub::Undo(a) => undo(ctx, a).await,
        Sub::Restart(a) => restart(ctx, a).await,
        Sub::Pause(a) => pause_resume(ctx, a, true).await,
        Sub::Resume(a) => pause_resume(ctx, a, false).await,
    }
}

/// The status line of a Deployment, and whether the rollout is done.
pub fn deployment_status(d: &Value) -> anyhow::Result<(String, bool)> {
    let name = write::name_of(d);
    let generation = d["metadata"]["generation"].as_i64().unwrap_or_default();
    let observed = d["status"]["observedGeneration"]
        .as_i64()
        .unwrap_or_default();
    if generation > observed {
        return Ok((
            "Waiting for deployment spec update to be observed...\n".into(),
            false,
        ));
    }
    let conditions = d["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if conditions
        .iter()
        .any(|c| c["type"] == "Progressing" && c["reason"] == "ProgressDeadlineExceeded")
    {
        anyhow::bail!("deployment {name:?} exceeded its progress deadline");
    }
    let st = &d["status"];
    let n = |v: &Value| v.as_i64().unwrap_or_default();
    let (replicas, updated, available) = (
        n(&st["replicas"]),
        n(&st["updatedReplicas"]),
        n(&st["availableReplicas"]),
    );
    if let Some(want) = d["spec"]["replicas"].as_i64() {
        if updated < want {
            return Ok((format!("Waiting for deployment {name:?} rollout to finish: {updated} out of {want} new replicas have been updated...\n"), false));
        }
    }
    if replicas > updated {
        return Ok((format!("Waiting for deployment {name:?} rollout to finish: {} old replicas are pending termination...\n", replicas - updated), false));
    }
    if available < updated {
        return Ok((format!("Waiting for deployment {name:?} rollout to finish: {available} of {updated} updated replicas are available...\n"), false));
    }
    Ok((
        format!("deployment {name:?} successfully rolled out\n"),
        true,
    ))
}

fn daemonset_status(d: &Value) -> (String, bool) {
    let name = write::name_of(d);
    let n = |v: &Value| v.as_i64().unwrap_or_default();
    let st = &d["status"];
    if n(&d["metadata"]["generation"]) > n(&st["observedGeneration"]) {
        return (
            "Waiting for daemon set spec update to be observed...\n".into(),
            false,
        );
    }
    let (desired, updated, available) = (
        n(&st["desiredNumberScheduled"]),
        n(&st["updatedNumberScheduled"]),
        n(&st["numberAvailable"]),
    );
    if updated < desired {
        return (format!("Waiting for daemon set {name:?} rollout to finish: {updated} out of {desired} new pods have been updated...\n"), false);
    }
    if available < desired {
        return (format!("Waiting for daemon set {name:?} rollout to finish: {available} of {desired} updated pods are available...\n"), false);
    }
    (
        format!("daemon set {name:?} successfully rolled out\n"),
        true,
    )
}

fn statefulset_status(d: &Value) -> (String, bool) {
    let n = |v: &Value| v.as_i64().unwrap_or_default();
    let st = &d["status"];
    if n(&d["metadata"]["generation"]) > n(&st["observedGeneration"]) {
        return (
            "Waiting for statefulset spec update to be observed...\n".into(),
            false,
        );
    }
    let want = d["spec"]["replicas"].as_i64().unwrap_or(1);
    if n(&st["readyReplicas"]) < want {
        return (
            format!(
                "Waiting for {} pods to be ready...\n",
                want - n(&st["readyReplicas"])
            ),
            false,
        );
    }
    if n(&st["updatedReplicas"]) < want && st["updateRevision"] != st["currentRevision"] {
        return (format!("Waiting for partitioned roll out to finish: {} out of {want} new pods have been updated...\n", n(&st["updatedReplicas"])), false);
    }
    (
        format!("partitioned roll out complete: {want} new pods have been updated...\n"),
        true,
    )
}

async fn status(ctx: &Ctx, a: StatusArgs) -> anyhow::Result<()> {
    let (obj, res) = target(ctx, &a.resources, "status").await?;
    let client = ctx.client().await?;
    let url = res.object_url(write::ns_of(&obj), write::name_of(&obj));
    let timeout = super::wait::parse_duration(&a.timeout)?;
    let start = Instant::now();
    let watch = a.watch != "false";
    let mut last = String::new();
    let mut obj = obj;
    loop {
        let (msg, done) = match res.kind.as_str() {
            "Deployment" => deployment_status(&obj)?,
            "DaemonSet" => daemonset_status(&obj),
            "StatefulSet" => statefulset_status(&obj),
            _ => anyhow::bail!("no status viewer has been implemented for {}", res.kind),
        };
        if msg != last {
            print!("{msg}");
            last = msg;
        }
        if done || !watch {
            return Ok(());
        }
        if !timeout.is_zero() && start.elapsed() > timeout {
            anyhow::bail!("timed out waiting for the condition");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        obj = write::get(&client, &url).await?;
    }
}

/// The ReplicaSets a Deployment owns, with their revisions, oldest first.
async fn replica_sets(client: &kube::Client, d: &Value) -> anyhow::Result<Vec<(i64, Value)>> {
    let ns = write::ns_of(d).unwrap_or("default");
    let uid = d["metadata"]["uid"].as_str().unwrap_or_default();
    let list = write::get(
        client,
        &format!("/apis/apps/v1/namespaces/{ns}/replicasets"),
    )
    .await?;
    let mut out: Vec<(i64, Value)> = list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|rs| {
            rs["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|o| o.iter().any(|r| r["uid"] == uid && r["controller"] == true))
        })
        .map(|rs| {
            let rev = rs["metadata"]["annotations"][REVISION]
                .as_str()
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            (rev, rs)
        })
        .collect();
    out.sort_by_key(|(r, _)| *r);
    Ok(out)
}

async fn history(ctx: &Ctx, a: HistoryArgs) -> anyhow::Result<()> {
    let (obj, res) = target(ctx, &a.resources, "history").await?;
    if res.kind != "Deployment" {
        anyhow::bail!("no history viewer has been implemented for {}", res.kind);
    }
    let client = ctx.client().await?;
    let sets = replica_sets(&client, &obj).await?;
    let head = crate::printers::object_name(&obj, &res);
    if a.revision > 0 {
        let Some((_, rs)) = sets.iter().find(|(r, _)| *r == a.revision) else {
            anyhow::bail!("unable to find the specified revision");
        };
        let mut template = rs["spec"]["template"].clone();
        if let Some(l) = template["metadata"]["labels"].as_object_mut() {
            l.remove("pod-template-hash");
        }
        println!("{head} with revision #{}", a.revision);
        print!(
            "Pod Template:\n{}",
            crate::printers::yaml::to_yaml(&template)
                .lines()
                .map(|l| format!("  {l}\n"))
                .collect::<String>()
        );
        return Ok(());
    }
    println!("{head} ");
    let mut tw = TabWriter::table();
    tw.row(&["REVISION".to_string(), "CHANGE-CAUSE".to_string()]);
    for (rev, rs) in &sets {
        if *rev == 0 {
            continue;
        }
        let cause = rs["metadata"]["annotations"]["kubernetes.io/change-cause"]
            .as_str()
            .unwrap_or("<none>");
        tw.row(&[rev.to_string(), cause.to_string()]);
    }
    print!("{}", tw.flush());
    println!();
    Ok(())
}

async fn undo(ctx: &Ctx, a: UndoArgs) -> anyhow::Result<()> {
    let (obj, res) = target(ctx, &a.resources, "undo").await?;
    if res.kind != "Deployment" {
        anyhow::bail!("no rollbacker has been implemented for {}", res.kind);
    }
    let dry = a.dry_run.get()?;
    let client = ctx.client().await?;
    let name = write::name_of(&obj);
    if obj["spec"]["paused"] == true {
        anyhow::bail!("you cannot rollback a paused deployment; resume it first with 'kubectl rollout resume' and try again");
    }
    let sets = replica_sets(&client, &obj).await?;
    let current: i64 = obj["metadata"]["annotations"][REVISION]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let chosen = if a.to_revision > 0 {
        match sets.iter().find(|(r, _)| *r == a.to_revision) {
            Some(s) => s,
            None => anyhow::bail!(
                "unable to find specified revision {} in history",
                a.to_revision
            ),
        }
    } else {
        match sets.iter().rev().find(|(r, _)| *r > 0 && *r != current) {
            Some(s) => s,
            None => anyhow::bail!("no rollout history found for deployment {name:?}"),
        }
    };
    let (rev, rs) = chosen;
    let mut template = rs["spec"]["template"].clone();
    if let Some(l) = template["metadata"]["labels"].as_object_mut() {
        l.remove("pod-template-hash");
    }
    let head = crate::printers::object_name(&obj, &res);
    if template == obj["spec"]["template"] {
        println!("{head} skipped rollback (current template already matches revision {rev})");
        return Ok(());
    }
    let mut annotations = obj["metadata"]["annotations"].clone();
    if !annotations.is_object() {
        annotations = json!({});
    }
    const SKIP: &[&str] = &[
        REVISION,
        "deployment.kubernetes.io/revision-history",
        "deployment.kubernetes.io/desired-replicas",
        "deployment.kubernetes.io/max-replicas",
        "kubectl.kubernetes.io/last-applied-configuration",
    ];
    if let Some(m) = rs["metadata"]["annotations"].as_object() {
        for (k, v) in m {
            if !SKIP.contains(&k.as_str()) {
                annotations[k] = v.clone();
            }
        }
    }
    let patch = json!([
        {"op": "replace", "path": "/spec/template", "value": template},
        {"op": "replace", "path": "/metadata/annotations", "value": annotations}
    ]);
    if dry != write::DryRun::Client {
        let url = res.object_url(write::ns_of(&obj), name);
        write::patch(
            &client,
            &url,
            "application/json-patch+json",
            &patch,
            dry,
            &[],
        )
        .await?;
    }
    println!("{head} rolled back{}", dry.suffix());
    Ok(())
}

async fn restart(ctx: &Ctx, a: Target) -> anyhow::Result<()> {
    let (obj, res) = target(ctx, &a.resources, "restart").await?;
    if !matches!(
        res.kind.as_str(),
        "Deployment" | "DaemonSet" | "StatefulSet"
    ) {
        anyhow::bail!("restarting is not supported");
    }
    let name = write::name_of(&obj);
    if obj["spec"]["paused"] == true {
        anyhow::bail!(
            "{} {name:?} can't restart paused deployment (run rollout resume first)",
            res.group_resource()
        );
    }
    let dry = a.dry_run.get()?;
    let output = write::parse_output(a.output.as_deref())?;
    let now = chrono::Local::now()
        .format("%Y-%m-%dT%H:%M:%S%:z")
        .to_string();
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": now}}}}});
    let result = send_patch(ctx, &obj, &res, &patch, dry).await?;
    write::print_result(output.as_ref(), &result, &res, "restarted", dry)
}

/// Sends rollout's strategic merge patch to `obj` (not for a client-side dry run, which
/// shows the object as it is) and returns what the server answered.
async fn send_patch(ctx: &Ctx, obj: &Value, res: &ResourceInfo, patch: &Value, dry: write::DryRun) -> anyhow::Result<Value> {
    if dry == write::DryRun::Client {
        return Ok(obj.clone());
    }
    let client = ctx.client().await?;
    let url = res.object_url(write::ns_of(obj), write::name_of(obj));
    write::patch(&client, &url, "application/strategic-merge-patch+json", patch, dry, &[("fieldManager", "kubectl-rollout")]).await
}

async fn pause_resume(ctx: &Ctx, a: Target, pause: bool) -> anyhow::Result<()> {
    let (obj, res) = target(ctx, &a.resources, if pause { "pause" } else { "resume" }).await?;
    if res.kind != "Deployment" {
        anyhow::bail!(
            "{} {:?} {}",
            res.group_resource(),
            write::name_of(&obj),
            if pause {
                "pausing is not supported"
            } else {
                "resuming is not supported"
            }
        );
    }
    let name = write::name_of(&obj);
    let paused = obj["spec"]["paused"] == true;
    if pause && paused {
        anyhow::bail!("{} {name:?} is already paused", res.group_resource());
    }
    if !pause && !paused {
        anyhow::bail!("{} {name:?} is not paused", res.group_resource());
    }
    let dry = a.dry_run.get()?;
    let output = write::parse_output(a.output.as_deref())?;
    let patch = if pause {
        json!({"spec": {"paused": true}})
    } else {
        json!({"spec": {"paused": null}})
    };
    let result = send_patch(ctx, &obj, &res, &patch, dry).await?;
    write::print_result(
        output.as_ref(),
        &result,
        &res,
        if pause { "paused" } else { "resumed" },
        dry,
    )
}
