//! `kubectl scale TYPE NAME --replicas=N [--current-replicas=M]`: a merge patch of the
//! `scale` subresource; `deployment.apps/web scaled`.

use serde_json::json;

use crate::context::Ctx;
use crate::errors;
use crate::write::{self, DryRun, DryRunArg};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// TYPE NAME… or TYPE/NAME…
    pub resources: Vec<String>,
    /// The new desired number of replicas. Required.
    #[arg(long)]
    pub replicas: Option<i64>,
    /// Precondition for current size.
    #[arg(long = "current-replicas", default_value_t = -1, allow_negative_numbers = true)]
    pub current_replicas: i64,
    /// Precondition for resource version.
    #[arg(long = "resource-version")]
    pub resource_version: Option<String>,
    /// Selector (label query) to filter on.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Select all resources in the namespace of the specified resource types
    #[arg(long)]
    pub all: bool,
    /// Files identifying the resources.
    #[arg(short = 'f', long = "filename")]
    pub filename: Vec<String>,
    #[command(flatten)]
    pub dry_run: DryRunArg,
    /// Output format: yaml, json or name.
    #[arg(short = 'o', long)]
    pub output: Option<String>,
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let Some(replicas) = args.replicas else {
        anyhow::bail!("required flag(s) \"replicas\" not set");
    };
    if replicas < 0 {
        anyhow::bail!(
            "The --replicas=COUNT flag is required, and COUNT must be greater than or equal to 0"
        );
    }
    let dry = args.dry_run.get()?;
    let output = write::parse_output(args.output.as_deref())?;
    if args.resources.is_empty() && args.filename.is_empty() {
        return errors::usage("scale", "You must provide one or more resources by argument or filename.\nExample resource specifications include:\n   '-f rsrc.yaml'\n   '--filename=rsrc.json'\n   '<resource> <name>'\n   '<resource>'");
    }
    let client = ctx.client().await?;
    let objects = if args.filename.is_empty() {
        write::select(
            ctx,
            &args.resources,
            args.selector.as_deref(),
            args.all,
            false,
        )
        .await?
    } else {
        let mut out = Vec::new();
        for r in write::resolve_files(ctx, &args.filename, false).await? {
            out.push((write::get(&client, &r.url()).await?, r.res));
        }
        out
    };
    let mut failures = errors::Failures::default();
    for (obj, res) in objects {
        let url = format!(
            "{}/scale",
            res.object_url(write::ns_of(&obj), write::name_of(&obj))
        );
        let result = async {
            if args.current_replicas >= 0 || args.resource_version.is_some() {
                let scale = write::get(&client, &url).await?;
                let current = scale["spec"]["replicas"].as_i64().unwrap_or_default();
                if args.current_replicas >= 0 && current != args.current_replicas {
                    anyhow::bail!(
                        "Expected replicas to be {}, was {current}",
                        args.current_replicas
                    );
                }
                if let Some(rv) = &args.resource_version {
                    if scale["metadata"]["resourceVersion"].as_str() != Some(rv) {
                        anyhow::bail!(
                            "Expected resource version to be {rv}, was {}",
                            scale["metadata"]["resourceVersion"]
                                .as_str()
                                .unwrap_or_default()
                        );
                    }
                }
            }
            if dry != DryRun::Client {
                write::patch(
                    &client,
                    &url,
                    "application/merge-patch+json",
                    &json!({"spec": {"replicas": replicas}}),
                    dry,
                    &[("fieldManager", "kubectl-scale")],
                )
                .await?;
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => write::print_result(output.as_ref(), &obj, &res, "scaled", dry)?,
            Err(e) => {
                failures.report(&e);
            }
        }
    }
    failures.finish()
}
