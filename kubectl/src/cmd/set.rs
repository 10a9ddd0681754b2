//! `kubectl set image TYPE/NAME CONTAINER=IMAGE… ('*' for every container)`: a strategic
//! merge patch of the pod template's containers; `deployment.apps/web image updated`.

use serde_json::{json, Value};

use crate::context::Ctx;
use crate::errors::{self, Exit};
use crate::write::{self, DryRun, DryRunArg};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: Sub,
}

#[derive(clap::Subcommand, Debug)]
pub enum Sub {
    /// Update the image of a pod template
    Image(ImageArgs),
}

#[derive(clap::Args, Debug)]
pub struct ImageArgs {
    /// TYPE NAME… or TYPE/NAME… followed by CONTAINER_NAME_1=CONTAINER_IMAGE_1…
    pub args: Vec<String>,
    /// Selector (label query) to filter on.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Select all resources, in the namespace of the specified resource types
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub dry_run: DryRunArg,
    /// Output format: yaml, json or name.
    #[arg(short = 'o', long)]
    pub output: Option<String>,
}

/// The JSON path of the pod spec in an object of `kind`.
fn pod_spec_path(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "Pod" => &["spec"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template", "spec"],
        "Deployment"
        | "ReplicaSet"
        | "DaemonSet"
        | "StatefulSet"
        | "Job"
        | "ReplicationController" => &["spec", "template", "spec"],
        _ => return None,
    })
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let Sub::Image(a) = args.command;
    let mut resources = Vec::new();
    let mut images: Vec<(String, String)> = Vec::new();
    for x in &a.args {
        match x.split_once('=') {
            Some((c, i)) => images.push((c.to_string(), i.to_string())),
            None => resources.push(x.clone()),
        }
    }
    if images.is_empty() {
        return errors::usage("set image", "at least one image update is required");
    }
    let dry = a.dry_run.get()?;
    let output = write::parse_output(a.output.as_deref())?;
    let objects = write::select(ctx, &resources, a.selector.as_deref(), a.all, false).await?;
    let client = ctx.client().await?;
    let mut failed = false;
    for (obj, res) in objects {
        let Some(path) = pod_spec_path(&res.kind) else {
            eprintln!(
                "error: {}/{} the object is not a pod or does not have a pod template: {}",
                res.kind_group(),
                write::name_of(&obj),
                res.kind
            );
            failed = true;
            continue;
        };
        let mut spec = &obj;
        for p in path {
            spec = &spec[*p];
        }
        let mut patch_containers: Vec<(String, Vec<Value>)> = Vec::new();
        let mut missing = None;
        for (cname, image) in &images {
            let mut found = false;
            for list in ["initContainers", "containers"] {
                for c in spec[list].as_array().cloned().unwrap_or_default() {
                    let n = c["name"].as_str().unwrap_or_default().to_string();
                    if cname == "*" || &n == cname {
                        found = true;
                        let entry = json!({"name": n, "image": image});
                        match patch_containers.iter_mut().find(|(l, _)| l == list) {
                            Some((_, v)) => v.push(entry),
                            None => patch_containers.push((list.to_string(), vec![entry])),
                        }
                    }
                }
            }
            if !found {
                missing = Some(cname.clone());
            }
        }
        if let Some(m) = missing {
            eprintln!("error: unable to find container named {m:?}");
            failed = true;
            continue;
        }
        let mut inner = serde_json::Map::new();
        for (l, v) in patch_containers {
            inner.insert(l, Value::Array(v));
        }
        let mut patch = Value::Object(inner);
        for p in path.iter().rev() {
            patch = json!({ *p: patch });
        }
        let result = if dry == DryRun::Client {
            apimachinery::patch::strategic_merge_patch(
                &obj,
                &patch,
                &apimachinery::patch::BuiltinPatchMeta::for_kind(&res.group, &res.kind),
            )
            .map_err(|e| anyhow::anyhow!("{e}"))
        } else {
            write::patch(
                &client,
                &res.object_url(write::ns_of(&obj), write::name_of(&obj)),
                "application/strategic-merge-patch+json",
                &patch,
                dry,
                &[("fieldManager", "kubectl-set")],
            )
            .await
        };
        match result {
            Ok(o) => write::print_result(output.as_ref(), &o, &res, "image updated", dry)?,
            Err(e) => {
                eprintln!("{}", errors::message(&e));
                failed = true;
            }
        }
    }
    if failed {
        return Err(Exit(1).into());
    }
    Ok(())
}
