//! `kubectl delete (TYPE NAME… | TYPE/NAME… | -f FILE | -l SELECTOR | --all)`: deletes
//! with the stock DeleteOptions (`--grace-period`, `--now`, `--force`, `--cascade`), then
//! (`--wait`, the default) waits until each object is gone.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::context::Ctx;
use crate::errors::{self, Exit};
use crate::resources::{parse_type_names, ResourceInfo};
use crate::write::{self, DryRun, DryRunArg};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// TYPE NAME…, TYPE/NAME…
    pub resources: Vec<String>,
    /// containing the resource to delete.
    #[arg(short = 'f', long = "filename")]
    pub filename: Vec<String>,
    /// Process the directory used in -f, --filename recursively.
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// Selector (label query) to filter on.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Selector (field query) to filter on.
    #[arg(long = "field-selector")]
    pub field_selector: Option<String>,
    /// Delete all resources, in the namespace of the specified resource types.
    #[arg(long)]
    pub all: bool,
    /// If present, list the requested object(s) across all namespaces.
    #[arg(short = 'A', long = "all-namespaces")]
    pub all_namespaces: bool,
    /// Period of time in seconds given to the resource to terminate gracefully.
    #[arg(long = "grace-period", default_value_t = -1, allow_negative_numbers = true)]
    pub grace_period: i64,
    /// If true, resources are signaled for immediate shutdown (same as --grace-period=1).
    #[arg(long)]
    pub now: bool,
    /// If true, immediately remove resources from API and bypass graceful deletion.
    #[arg(long)]
    pub force: bool,
    /// Must be "background", "orphan", or "foreground".
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "background", default_value = "background")]
    pub cascade: String,
    /// If true, wait for resources to be gone before returning.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true")]
    pub wait: String,
    /// The length of time to wait before giving up on a delete, zero means determine a timeout from the size of the object
    #[arg(long, default_value = "0s")]
    pub timeout: String,
    /// Treat "resource not found" as a successful delete.
    #[arg(long = "ignore-not-found")]
    pub ignore_not_found: bool,
    #[command(flatten)]
    pub dry_run: DryRunArg,
    /// Output mode. Use "-o name" for shorter output (resource/name).
    #[arg(short = 'o', long)]
    pub output: Option<String>,
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let propagation = match args.cascade.as_str() {
        "background" | "true" => "Background",
        "foreground" => "Foreground",
        "orphan" | "false" => "Orphan",
        other => anyhow::bail!(
            "invalid cascade value ({other}). Must be \"background\", \"foreground\", or \"orphan\""
        ),
    };
    let dry = args.dry_run.get()?;
    let name_output = match args.output.as_deref() {
        None | Some("") => false,
        Some("name") => true,
        Some(o) => anyhow::bail!("unexpected -o output mode: {o}. We only support '-o name'"),
    };
    let wait = args.wait != "false";
    if args.resources.is_empty() && args.filename.is_empty() {
        anyhow::bail!("You must provide one or more resources by argument or filename.\nExample resource specifications include:\n   '-f rsrc.yaml'\n   '--filename=rsrc.json'\n   '<resource> <name>'\n   '<resource>'");
    }
    let mut grace = args.grace_period;
    if args.now {
        if grace != -1 {
            anyhow::bail!("--now and --grace-period cannot be specified together");
        }
        grace = 1;
    }
    if args.force {
        eprintln!("Warning: Immediate deletion does not wait for confirmation that the running resource has been terminated. The resource may continue to run on the cluster indefinitely.");
        if grace < 0 {
            grace = 0;
        }
    } else if grace == 0 {
        grace = 1;
    }
    let client = ctx.client().await?;
    let mut failures = errors::Failures::default();
    // What to delete: (url, object-ish for names, resource, source file)
    let mut targets: Vec<(Value, ResourceInfo, Option<String>)> = Vec::new();
    if !args.filename.is_empty() {
        for r in write::resolve_files(ctx, &args.filename, args.recursive).await? {
            let mut obj = r.obj.clone();
            if let Some(ns) = &r.namespace {
                obj["metadata"]["namespace"] = json!(ns);
            }
            targets.push((obj, r.res, Some(r.source)));
        }
    } else {
        let discovery = ctx.discovery().await?;
        let namespace = ctx.namespace().await?;
        let selections = parse_type_names(&args.resources)?;
        for sel in &selections {
            let res = discovery.resolve(&sel.type_arg)?;
            let ns = (res.namespaced && !args.all_namespaces).then_some(namespace.clone());
            if sel.names.is_empty() {
                if args.selector.is_none() && !args.all && args.field_selector.is_none() {
                    anyhow::bail!("resource(s) were provided, but no name was specified");
                }
                let url = super::with_query(
                    &res.collection_url(ns.as_deref()),
                    &[
                        (
                            "labelSelector",
                            args.selector.as_deref().unwrap_or_default(),
                        ),
                        (
                            "fieldSelector",
                            args.field_selector.as_deref().unwrap_or_default(),
                        ),
                    ],
                );
                let list = write::get(&client, &url).await?;
                for item in list["items"].as_array().cloned().unwrap_or_default() {
                    targets.push((item, res.clone(), None));
                }
            } else {
                if args.all || args.selector.is_some() {
                    anyhow::bail!("name cannot be provided when a selector is specified");
                }
                for n in &sel.names {
                    let mut meta = json!({"name": n});
                    if let Some(ns) = &ns {
                        meta["namespace"] = json!(ns);
                    }
                    targets.push((json!({ "metadata": meta }), res.clone(), None));
                }
            }
        }
        if targets.is_empty() {
            println!("No resources found");
            return Ok(());
        }
    }
    let mut options =
        json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation});
    if grace >= 0 {
        options["gracePeriodSeconds"] = json!(grace);
    }
    let mut deleted: Vec<(String, String, String)> = Vec::new(); // (url, uid, display)
    for (obj, res, source) in &targets {
        let name = write::name_of(obj).to_string();
        let url = res.object_url(write::ns_of(obj), &name);
        let display = format!("{} \"{name}\"", res.kind_group());
        let result = if dry == DryRun::Client {
            write::get(&client, &url).await
        } else {
            let mut opts = options.clone();
            if dry == DryRun::Server {
                opts["dryRun"] = json!(["All"]);
            }
            write::send(
                &client,
                http::Method::DELETE,
                &write::url_with(&url, dry, &[]),
                Some(("application/json", serde_json::to_vec(&opts)?)),
            )
            .await
        };
        match result {
            Ok(resp) => {
                if name_output {
                    println!("{}/{name}", res.kind_group());
                } else if args.force && grace == 0 {
                    println!("{display} force deleted{}", dry.suffix());
                } else {
                    println!("{display} deleted{}", dry.suffix());
                }
                let uid = resp["metadata"]["uid"]
                    .as_str()
                    .or(resp["details"]["uid"].as_str())
                    .unwrap_or_default()
                    .to_string();
                deleted.push((url, uid, display));
            }
            Err(e) if errors::is_not_found(&e) && args.ignore_not_found => {}
            Err(e) => {
                let e = match source {
                    Some(s) => {
                        write::prefix_api_error(e, &format!("error when deleting \"{s}\": "))
                    }
                    None => e,
                };
                failures.report(&e);
            }
        }
    }
    if wait && dry == DryRun::None && !(args.force && grace == 0) {
        let timeout = match super::wait::parse_duration(&args.timeout)? {
            d if d.is_zero() => Duration::from_secs(7 * 24 * 3600),
            d => d,
        };
        let start = Instant::now();
        for (url, uid, display) in &deleted {
            loop {
                match write::get(&client, url).await {
                    Err(e) if errors::is_not_found(&e) => break,
                    Ok(o) if !uid.is_empty() && o["metadata"]["uid"].as_str() != Some(uid) => break,
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
                if start.elapsed() > timeout {
                    eprintln!("error: timed out waiting for the condition on {display}");
                    return Err(Exit(1).into());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    failures.finish()
}
