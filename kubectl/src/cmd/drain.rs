//! `kubectl drain NODE`: cordons the node, then evicts its pods (`--ignore-daemonsets`,
//! `--delete-emptydir-data`, `--force` for pods without a controller,
//! `--disable-eviction` to delete instead), waiting until they are gone.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::context::Ctx;
use crate::errors::{self, Exit};
use crate::write::{self, DryRun, DryRunArg};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// NODE
    pub nodes: Vec<String>,
    /// Continue even if there are pods that do not declare a controller.
    #[arg(long)]
    pub force: bool,
    /// Ignore DaemonSet-managed pods.
    #[arg(long = "ignore-daemonsets")]
    pub ignore_daemonsets: bool,
    /// Continue even if there are pods using emptyDir (local data that will be deleted when the node is drained).
    #[arg(long = "delete-emptydir-data")]
    pub delete_emptydir_data: bool,
    /// Period of time in seconds given to each pod to terminate gracefully.
    #[arg(long = "grace-period", default_value_t = -1, allow_negative_numbers = true)]
    pub grace_period: i64,
    /// The length of time to wait before giving up, zero means infinite
    #[arg(long, default_value = "0s")]
    pub timeout: String,
    /// Force drain to use delete, even if eviction is supported.
    #[arg(long = "disable-eviction")]
    pub disable_eviction: bool,
    /// Label selector to filter pods on the node
    #[arg(long = "pod-selector")]
    pub pod_selector: Option<String>,
    /// Selector (label query) to filter on.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    #[command(flatten)]
    pub dry_run: DryRunArg,
}

fn controller_of(pod: &Value) -> Option<Value> {
    pod["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"] == true)
        .cloned()
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let dry = args.dry_run.get()?;
    let nodes = super::cordon::nodes(ctx, &args.nodes, args.selector.as_deref(), "drain").await?;
    let client = ctx.client().await?;
    let timeout = super::wait::parse_duration(&args.timeout)?;
    for node in &nodes {
        let name = write::name_of(node).to_string();
        super::cordon::set_unschedulable(&client, node, true, dry).await?;
        let url = super::with_query(
            "/api/v1/pods",
            &[
                ("fieldSelector", &format!("spec.nodeName={name}")),
                (
                    "labelSelector",
                    args.pod_selector.as_deref().unwrap_or_default(),
                ),
            ],
        );
        let pods = write::get(&client, &url).await?;
        let mut to_evict = Vec::new();
        let mut ignored_ds = Vec::new();
        let mut errors_by_kind: Vec<(String, Vec<String>)> = Vec::new();
        let mut add_err =
            |kind: &str, id: String| match errors_by_kind.iter_mut().find(|(k, _)| k == kind) {
                Some((_, v)) => v.push(id),
                None => errors_by_kind.push((kind.to_string(), vec![id])),
            };
        let mut warnings: Vec<(String, Vec<String>)> = Vec::new();
        for pod in pods["items"].as_array().cloned().unwrap_or_default() {
            let id = format!(
                "{}/{}",
                write::ns_of(&pod).unwrap_or_default(),
                write::name_of(&pod)
            );
            let phase = pod["status"]["phase"].as_str().unwrap_or_default();
            let finished = phase == "Succeeded" || phase == "Failed";
            if pod["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_string() {
                continue;
            }
            let controller = controller_of(&pod);
            if let Some(c) = controller.as_ref().filter(|c| c["kind"] == "DaemonSet") {
                let ds = c["name"].as_str().unwrap_or_default();
                let pod_ns = write::ns_of(&pod).unwrap_or_default();
                let url = format!("/apis/apps/v1/namespaces/{pod_ns}/daemonsets/{ds}");
                match write::get(&client, &url).await {
                    // An orphan of a deleted DaemonSet: only --force evicts it.
                    Err(e) if errors::is_not_found(&e) => {
                        if !args.force {
                            add_err(&format!("daemonsets.apps {ds:?} not found"), id);
                            continue;
                        }
                    }
                    Err(e) => return Err(e),
                    Ok(_) => {
                        if args.ignore_daemonsets {
                            ignored_ds.push(id);
                        } else {
                            add_err(
                                "cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore)",
                                id,
                            );
                        }
                        continue;
                    }
                }
            }
            let orphan_ds = controller
                .as_ref()
                .is_some_and(|c| c["kind"] == "DaemonSet");
            if controller.is_none() && !finished && !orphan_ds {
                if args.force {
                    match warnings
                        .iter_mut()
                        .find(|(k, _)| k == "deleting Pods that declare no controller")
                    {
                        Some((_, v)) => v.push(id.clone()),
                        None => warnings.push((
                            "deleting Pods that declare no controller".into(),
                            vec![id.clone()],
                        )),
                    }
                } else {
                    add_err(
                        "cannot delete Pods that declare no controller (use --force to override)",
                        id,
                    );
                    continue;
                }
            }
            let empty_dir = pod["spec"]["volumes"]
                .as_array()
                .is_some_and(|v| v.iter().any(|v| v["emptyDir"].is_object()));
            if empty_dir && !finished {
                if args.delete_emptydir_data {
                    match warnings
                        .iter_mut()
                        .find(|(k, _)| k == "deleting Pods with local storage")
                    {
                        Some((_, v)) => v.push(id.clone()),
                        None => warnings
                            .push(("deleting Pods with local storage".into(), vec![id.clone()])),
                    }
                } else {
                    add_err("cannot delete Pods with local storage (use --delete-emptydir-data to override)", id);
                    continue;
                }
            }
            to_evict.push(pod);
        }
        if !errors_by_kind.is_empty() {
            let text: Vec<String> = errors_by_kind
                .iter()
                .map(|(k, ids)| format!("cannot delete {k}: {}", ids.join(", ")))
                .collect();
            eprintln!(
                "error: unable to drain node {name:?} due to error: [{}], continuing command...",
                text.join(", ")
            );
            eprintln!("There are pending nodes to be drained:\n {name}");
            for t in &text {
                eprintln!("{t}");
            }
            return Err(Exit(1).into());
        }
        if !ignored_ds.is_empty() {
            warnings.insert(0, ("ignoring DaemonSet-managed Pods".into(), ignored_ds));
        }
        if !warnings.is_empty() {
            let text: Vec<String> = warnings
                .iter()
                .map(|(k, ids)| format!("{k}: {}", ids.join(", ")))
                .collect();
            eprintln!("Warning: {}", text.join("; "));
        }
        let start = Instant::now();
        for pod in &to_evict {
            let ns = write::ns_of(pod).unwrap_or_default().to_string();
            let pname = write::name_of(pod).to_string();
            println!("evicting pod {ns}/{pname}{}", dry.suffix());
            let pod_url = format!("/api/v1/namespaces/{ns}/pods/{pname}");
            if dry != DryRun::Client {
                let mut opts = json!({});
                if args.grace_period >= 0 {
                    opts["gracePeriodSeconds"] = json!(args.grace_period);
                }
                if dry == DryRun::Server {
                    opts["dryRun"] = json!(["All"]);
                }
                loop {
                    let result = if args.disable_eviction {
                        write::send(
                            &client,
                            http::Method::DELETE,
                            &write::url_with(&pod_url, dry, &[]),
                            Some(("application/json", serde_json::to_vec(&opts)?)),
                        )
                        .await
                    } else {
                        let eviction = json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pname, "namespace": ns}, "deleteOptions": opts});
                        write::create(&client, &format!("{pod_url}/eviction"), &eviction, dry, &[])
                            .await
                    };
                    match result {
                        Ok(_) => break,
                        Err(e) if errors::is_not_found(&e) => break,
                        Err(e) if errors::api_status(&e).is_some_and(|s| s.code == 429) => {
                            eprintln!("error when evicting pods/\"{pname}\" -n \"{ns}\" (will retry after 5s): {}", errors::api_status(&e).map(|s| s.message.clone()).unwrap_or_default());
                            tokio::time::sleep(Duration::from_secs(5)).await;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        if dry == DryRun::None {
            for pod in &to_evict {
                let ns = write::ns_of(pod).unwrap_or_default();
                let pname = write::name_of(pod);
                let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
                let pod_url = format!("/api/v1/namespaces/{ns}/pods/{pname}");
                loop {
                    match write::get(&client, &pod_url).await {
                        Err(e) if errors::is_not_found(&e) => break,
                        Ok(p) if p["metadata"]["uid"].as_str() != Some(uid) => break,
                        Ok(_) => {}
                        Err(e) => return Err(e),
                    }
                    if !timeout.is_zero() && start.elapsed() > timeout {
                        anyhow::bail!("drain did not complete within {}", args.timeout);
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                println!("pod/{pname} evicted");
            }
        }
        println!("node/{name} drained{}", dry.suffix());
    }
    Ok(())
}
