//! `kubectl label` (and, through [`run_meta`], `kubectl annotate`): `key=value` and
//! `key-` updates of labels or annotations, `--overwrite`, `-l`/`--all`, `--list`, sent
//! as a JSON merge patch; `labeled`, `unlabeled`, `not labeled`, `annotated`.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::context::Ctx;
use crate::errors;
use crate::write::{self, DryRun, DryRunArg};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// TYPE NAME KEY_1=VAL_1 ... KEY_N=VAL_N, or TYPE/NAME KEY=VAL ...; KEY- removes.
    pub args: Vec<String>,
    /// If true, allow labels/annotations to be overwritten.
    #[arg(long)]
    pub overwrite: bool,
    /// Selector (label query) to filter on.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Select all resources, in the namespace of the specified resource types.
    #[arg(long)]
    pub all: bool,
    /// If true, check the specified action in all namespaces.
    #[arg(short = 'A', long = "all-namespaces")]
    pub all_namespaces: bool,
    /// If true, display the labels/annotations for a given resource.
    #[arg(long)]
    pub list: bool,
    /// Only update if the resource version matches.
    #[arg(long = "resource-version")]
    pub resource_version: Option<String>,
    /// Files identifying the resources.
    #[arg(short = 'f', long = "filename")]
    pub filename: Vec<String>,
    #[command(flatten)]
    pub dry_run: DryRunArg,
    /// Output format: yaml, json or name.
    #[arg(short = 'o', long)]
    pub output: Option<String>,
    /// Name of the manager used to track field ownership.
    #[arg(long = "field-manager", default_value = "kubectl-label")]
    pub field_manager: String,
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    run_meta(ctx, args, "labels").await
}

/// `label` (`field` = `labels`) and `annotate` (`annotations`).
pub async fn run_meta(ctx: &Ctx, args: Args, field: &str) -> anyhow::Result<()> {
    let (cmd, noun, past) = if field == "labels" {
        ("label", "label", "labeled")
    } else {
        ("annotate", "annotation", "annotated")
    };
    // The first arguments without '=' or a trailing '-' name the objects.
    let mut resources = Vec::new();
    let mut updates = Vec::new();
    for a in &args.args {
        if updates.is_empty() && !a.contains('=') && !a.ends_with('-') {
            resources.push(a.clone());
        } else {
            updates.push(a.clone());
        }
    }
    if resources.is_empty() && args.filename.is_empty() {
        return errors::usage(
            cmd,
            "one or more resources must be specified as <resource> <name> or <resource>/<name>",
        );
    }
    let mut add: Vec<(String, String)> = Vec::new();
    let mut remove: Vec<String> = Vec::new();
    for u in &updates {
        if let Some((k, v)) = u.split_once('=') {
            add.push((k.to_string(), v.to_string()));
        } else if let Some(k) = u.strip_suffix('-') {
            remove.push(k.to_string());
        } else {
            anyhow::bail!("invalid {noun} format: {u}");
        }
    }
    if add.is_empty() && remove.is_empty() && !args.list {
        anyhow::bail!("at least one {noun} update is required");
    }
    if let Some(k) = add.iter().map(|(k, _)| k).find(|k| remove.contains(k)) {
        anyhow::bail!("can not both modify and remove {noun} in the same command: {k}");
    }
    let dry = args.dry_run.get()?;
    let output = write::parse_output(args.output.as_deref())?;
    let objects: Vec<(Value, crate::resources::ResourceInfo)> = if args.filename.is_empty() {
        write::select(
            ctx,
            &resources,
            args.selector.as_deref(),
            args.all,
            args.all_namespaces,
        )
        .await?
    } else {
        let client = ctx.client().await?;
        let mut out = Vec::new();
        for r in write::resolve_files(ctx, &args.filename, false).await? {
            out.push((write::get(&client, &r.url()).await?, r.res));
        }
        out
    };
    let client = ctx.client().await?;
    let mut failures = errors::Failures::default();
    for (obj, res) in objects {
        let current: BTreeMap<String, String> = obj["metadata"][field]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        if args.list {
            for (k, v) in &current {
                println!("{k}={v}");
            }
            continue;
        }
        if !args.overwrite {
            for (k, v) in &add {
                if let Some(old) = current.get(k) {
                    if field == "annotations" {
                        anyhow::bail!("--overwrite is false but found the following declared annotation(s): '{k}' already has a value ({old})");
                    }
                    if old != v {
                        anyhow::bail!(
                            "'{k}' already has a value ({old}), and --overwrite is false"
                        );
                    }
                }
            }
        }
        let mut patch_map = Map::new();
        let mut changed = false;
        for (k, v) in &add {
            if current.get(k) != Some(v) {
                changed = true;
            }
            patch_map.insert(k.clone(), json!(v));
        }
        let mut removed_any = false;
        for k in &remove {
            if current.contains_key(k) {
                removed_any = true;
                changed = true;
                patch_map.insert(k.clone(), Value::Null);
            } else if field == "labels" {
                println!("label \"{k}\" not found.");
            }
        }
        let mut meta = json!({ field: patch_map });
        if let Some(rv) = &args.resource_version {
            meta["resourceVersion"] = json!(rv);
        }
        let verb = if field == "annotations" {
            past.to_string()
        } else if !changed {
            "not labeled".to_string()
        } else if add.is_empty() && removed_any {
            "unlabeled".to_string()
        } else {
            past.to_string()
        };
        let url = res.object_url(write::ns_of(&obj), write::name_of(&obj));
        let result = if dry == DryRun::Client || (!changed && args.resource_version.is_none()) {
            apimachinery::patch::merge_patch(&obj, &json!({ "metadata": meta }))
                .map_err(|e| anyhow::anyhow!("{e}"))
        } else {
            write::patch(
                &client,
                &url,
                "application/merge-patch+json",
                &json!({ "metadata": meta }),
                dry,
                &[("fieldManager", &args.field_manager)],
            )
            .await
        };
        match result {
            Ok(o) => write::print_result(output.as_ref(), &o, &res, &verb, dry)?,
            Err(e) => {
                failures.report(&e);
            }
        }
    }
    failures.finish()
}
