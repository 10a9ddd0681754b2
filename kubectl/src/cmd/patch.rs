//! `kubectl patch TYPE NAME -p PATCH [--type strategic|merge|json] [--subresource]`:
//! sends the patch as given; `patched`, or `patched (no change)` when the object did not
//! change.

use serde_json::Value;

use crate::context::Ctx;
use crate::errors;
use crate::write::{self, DryRun, DryRunArg};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// TYPE NAME or TYPE/NAME
    pub resources: Vec<String>,
    /// The patch to be applied to the resource JSON file.
    #[arg(short = 'p', long)]
    pub patch: Option<String>,
    /// A file containing a patch to be applied to the resource.
    #[arg(long = "patch-file")]
    pub patch_file: Option<String>,
    /// The type of patch being provided; one of [json merge strategic]
    #[arg(long = "type", default_value = "strategic")]
    pub type_: String,
    /// If specified, patch will operate on the subresource of the requested object.
    #[arg(long)]
    pub subresource: Option<String>,
    /// Files identifying the resources.
    #[arg(short = 'f', long = "filename")]
    pub filename: Vec<String>,
    /// If true, patch will operate on the content of the file, not the server-side resource.
    #[arg(long)]
    pub local: bool,
    #[command(flatten)]
    pub dry_run: DryRunArg,
    /// Output format: yaml, json or name.
    #[arg(short = 'o', long)]
    pub output: Option<String>,
    /// Name of the manager used to track field ownership.
    #[arg(long = "field-manager", default_value = "kubectl-patch")]
    pub field_manager: String,
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let content_type = match args.type_.to_lowercase().as_str() {
        "strategic" => "application/strategic-merge-patch+json",
        "merge" => "application/merge-patch+json",
        "json" => "application/json-patch+json",
        other => anyhow::bail!("--type must be one of [json merge strategic], not \"{other}\""),
    };
    let patch_text = match (&args.patch, &args.patch_file) {
        (Some(p), None) => p.clone(),
        (None, Some(f)) => std::fs::read_to_string(f).map_err(|_| {
            anyhow::anyhow!("unable to read patch file: open {f}: no such file or directory")
        })?,
        (Some(_), Some(_)) => anyhow::bail!("cannot specify --patch and --patch-file together"),
        (None, None) => {
            anyhow::bail!(
                "must specify --patch or --patch-file containing the contents of the patch"
            )
        }
    };
    // YAML patches become JSON (JSON is YAML).
    let body: Vec<u8> = match serde_yaml_ng::from_str::<Value>(&patch_text) {
        Ok(v)
            if !patch_text.trim_start().starts_with('{')
                && !patch_text.trim_start().starts_with('[') =>
        {
            serde_json::to_vec(&v)?
        }
        _ => patch_text.clone().into_bytes(),
    };
    let dry = args.dry_run.get()?;
    let output = write::parse_output(args.output.as_deref())?;
    if args.resources.is_empty() && args.filename.is_empty() {
        return errors::usage("patch", "You must provide one or more resources by argument or filename.\nExample resource specifications include:\n   '-f rsrc.yaml'\n   '--filename=rsrc.json'\n   '<resource> <name>'\n   '<resource>'");
    }
    let client = ctx.client().await?;
    let objects = if args.filename.is_empty() {
        write::select(ctx, &args.resources, None, false, false).await?
    } else {
        let mut out = Vec::new();
        for r in write::resolve_files(ctx, &args.filename, false).await? {
            out.push((write::get(&client, &r.url()).await?, r.res));
        }
        out
    };
    let mut failures = errors::Failures::default();
    for (obj, res) in objects {
        let mut url = res.object_url(write::ns_of(&obj), write::name_of(&obj));
        let mut shown_res = res.clone();
        if let Some(sub) = &args.subresource {
            url = format!("{url}/{sub}");
            if sub == "scale" {
                shown_res.kind = "Scale".into();
                shown_res.group = "autoscaling".into();
            }
        }
        let before = if args.subresource.is_some() {
            write::get(&client, &url).await.unwrap_or(Value::Null)
        } else {
            obj.clone()
        };
        let result = if dry == DryRun::Client {
            Ok(before.clone())
        } else {
            write::send(
                &client,
                http::Method::PATCH,
                &write::url_with(&url, dry, &[("fieldManager", &args.field_manager)]),
                Some((content_type, body.clone())),
            )
            .await
        };
        match result {
            Ok(after) => {
                let same = before["metadata"]["resourceVersion"]
                    == after["metadata"]["resourceVersion"]
                    && dry == DryRun::None;
                let verb = if same {
                    "patched (no change)"
                } else {
                    "patched"
                };
                write::print_result(output.as_ref(), &after, &shown_res, verb, dry)?;
            }
            Err(e) => {
                failures.report(&e);
            }
        }
    }
    failures.finish()
}
