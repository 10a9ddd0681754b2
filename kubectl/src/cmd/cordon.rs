//! `kubectl cordon|uncordon NODE…` (or `-l`): sets `spec.unschedulable`;
//! `node/n1 cordoned`, `node/n1 already cordoned`.

use serde_json::{json, Value};

use crate::context::Ctx;
use crate::errors;
use crate::write::{self, DryRun, DryRunArg};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// NODE…
    pub nodes: Vec<String>,
    /// Selector (label query) to filter on.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    #[command(flatten)]
    pub dry_run: DryRunArg,
}

/// The nodes named (or selected).
pub async fn nodes(
    ctx: &Ctx,
    names: &[String],
    selector: Option<&str>,
    cmd: &str,
) -> anyhow::Result<Vec<Value>> {
    if names.is_empty() && selector.is_none() {
        return errors::usage(cmd, "USAGE: ".to_string() + cmd + " NODE [flags]");
    }
    let mut args = vec!["nodes".to_string()];
    args.extend(names.iter().cloned());
    Ok(write::select(ctx, &args, selector, false, false)
        .await?
        .into_iter()
        .map(|(o, _)| o)
        .collect())
}

/// Sets `spec.unschedulable`; prints the stock message. Errors are returned.
pub async fn set_unschedulable(
    client: &kube::Client,
    node: &Value,
    value: bool,
    dry: DryRun,
) -> anyhow::Result<()> {
    let name = write::name_of(node);
    let verb = if value { "cordoned" } else { "uncordoned" };
    let current = node["spec"]["unschedulable"].as_bool().unwrap_or(false);
    if current == value {
        println!("node/{name} already {verb}");
        return Ok(());
    }
    if dry != DryRun::Client {
        let patch = if value {
            json!({"spec": {"unschedulable": true}})
        } else {
            json!({"spec": {"unschedulable": null}})
        };
        write::patch(
            client,
            &format!("/api/v1/nodes/{name}"),
            "application/strategic-merge-patch+json",
            &patch,
            dry,
            &[("fieldManager", "kubectl-cordon")],
        )
        .await?;
    }
    println!("node/{name} {verb}{}", dry.suffix());
    Ok(())
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    run_cordon(ctx, args, true).await
}

pub async fn run_uncordon(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    run_cordon(ctx, args, false).await
}

async fn run_cordon(ctx: &Ctx, args: Args, value: bool) -> anyhow::Result<()> {
    let dry = args.dry_run.get()?;
    let cmd = if value { "cordon" } else { "uncordon" };
    let nodes = nodes(ctx, &args.nodes, args.selector.as_deref(), cmd).await?;
    let client = ctx.client().await?;
    let mut failures = errors::Failures::default();
    for n in &nodes {
        if let Err(e) = set_unschedulable(&client, n, value, dry).await {
            failures.report(&e);
        }
    }
    failures.finish()
}
