//! `kubectl apply -f FILE|DIR|-`: client-side apply as the stock kubectl does it by
//! default (the `kubectl.kubernetes.io/last-applied-configuration` annotation and a
//! three-way strategic merge patch; `created`, `configured`, `unchanged`), or
//! `--server-side` (an apply patch with field manager `kubectl`, `--force-conflicts`).

use serde_json::{json, Value};

use crate::context::Ctx;
use crate::errors;
use crate::threeway;
use crate::write::{self, DryRun, DryRunArg, Resolved};

pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The files that contain the configurations to apply.
    #[arg(short = 'f', long = "filename")]
    pub filename: Vec<String>,
    /// Process the directory used in -f, --filename recursively.
    #[arg(short = 'R', long)]
    pub recursive: bool,
    #[command(flatten)]
    pub dry_run: DryRunArg,
    /// Output format: yaml, json or name.
    #[arg(short = 'o', long)]
    pub output: Option<String>,
    /// If true, apply runs in the server instead of the client.
    #[arg(long = "server-side")]
    pub server_side: bool,
    /// If true, server-side apply will force the changes against conflicts.
    #[arg(long = "force-conflicts")]
    pub force_conflicts: bool,
    /// Name of the manager used to track field ownership.
    #[arg(long = "field-manager")]
    pub field_manager: Option<String>,
    /// How the server treats unknown or duplicate fields: strict (or true, the default),
    /// warn, or ignore (or false); sent as `fieldValidation`.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "strict")]
    pub validate: Option<String>,
    /// Accepted for compatibility (ignored).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub overwrite: Option<String>,
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    if args.filename.is_empty() {
        anyhow::bail!("must specify one of -f and -k");
    }
    let dry = args.dry_run.get()?;
    let output = write::parse_output(args.output.as_deref())?;
    if args.force_conflicts && !args.server_side {
        anyhow::bail!("--force-conflicts only works with --server-side");
    }
    let objects = write::resolve_files(ctx, &args.filename, args.recursive).await?;
    if objects.is_empty() {
        anyhow::bail!("no objects passed to apply");
    }
    let client = ctx.client().await?;
    let mut failures = errors::Failures::default();
    for r in &objects {
        let result = if args.server_side {
            server_side(&client, r, &args, dry, output.as_ref()).await
        } else {
            client_side(&client, r, &args, dry, output.as_ref()).await
        };
        if let Err(e) = result {
            failures.report(&e);
        }
    }
    failures.finish()
}

async fn server_side(
    client: &kube::Client,
    r: &Resolved,
    args: &Args,
    dry: DryRun,
    output: Option<&crate::printers::Output>,
) -> anyhow::Result<()> {
    let manager = args.field_manager.as_deref().unwrap_or("kubectl");
    let mut obj = r.obj.clone();
    if let Some(ns) = &r.namespace {
        obj["metadata"]["namespace"] = json!(ns);
    }
    if dry == DryRun::Client {
        return write::print_result(output, &obj, &r.res, "serverside-applied", dry);
    }
    let force = if args.force_conflicts { "true" } else { "" };
    let validation = write::field_validation(args.validate.as_deref())?;
    let result = write::patch(
        client,
        &r.url(),
        "application/apply-patch+yaml",
        &obj,
        dry,
        &[("fieldManager", manager), ("force", force), ("fieldValidation", validation)],
    )
    .await;
    match result {
        Ok(live) => write::print_result(output, &live, &r.res, "serverside-applied", dry),
        Err(e) if errors::api_status(&e).is_some_and(|s| s.code == 409) => {
            let msg = errors::api_status(&e)
                .map(|s| s.message.clone())
                .unwrap_or_default();
            anyhow::bail!(
                "{msg}\nPlease review the fields above--they currently have other managers. Here\nare the ways you can resolve this warning:\n* If you intend to manage all of these fields, please re-run the apply\n  command with the `--force-conflicts` flag.\n* If you do not intend to manage all of the fields, please edit your\n  manifest to remove references to the fields that should keep their\n  current managers.\n* You may co-own fields by updating your manifest to match the existing\n  value; in this case, you'll become the manager if the other manager(s)\n  stop managing the field (remove it from their configuration).\nSee https://kubernetes.io/docs/reference/using-api/server-side-apply/#conflicts"
            )
        }
        Err(e) => Err(e),
    }
}

/// The object to send with its last-applied annotation: the configuration (namespace
/// filled in, the annotation itself removed) as sorted compact JSON and a newline.
pub fn with_last_applied(obj: &Value, namespace: Option<&str>) -> Value {
    let mut config = obj.clone();
    if let Some(ns) = namespace {
        config["metadata"]["namespace"] = json!(ns);
    }
    if !config["metadata"]["annotations"].is_object() {
        config["metadata"]["annotations"] = json!({});
    }
    if let Some(a) = config["metadata"]["annotations"].as_object_mut() {
        a.remove(LAST_APPLIED);
    }
    let text = format!(
        "{}\n",
        serde_json::to_string(&write::sorted(&config)).unwrap_or_default()
    );
    let mut modified = config;
    write::set_meta_entry(&mut modified, "annotations", LAST_APPLIED, &text);
    modified
}

async fn client_side(
    client: &kube::Client,
    r: &Resolved,
    args: &Args,
    dry: DryRun,
    output: Option<&crate::printers::Output>,
) -> anyhow::Result<()> {
    let manager = args
        .field_manager
        .as_deref()
        .unwrap_or("kubectl-client-side-apply");
    let validation = write::field_validation(args.validate.as_deref())?;
    let modified = with_last_applied(&r.obj, r.namespace.as_deref());
    let current = match write::get(client, &r.url()).await {
        Ok(c) if !r.name.is_empty() => Some(c),
        Ok(_) => None,
        Err(e) if errors::is_not_found(&e) => None,
        Err(e) => {
            return Err(write::prefix_api_error(
                e,
                &format!(
                    "error when retrieving current configuration of:\nResource: \"{}\", GroupVersionKind: \"{}, Kind={}\"\nName: \"{}\", Namespace: \"{}\"\nfrom server for: \"{}\": ",
                    resource_text(r),
                    group_version(r),
                    r.res.kind,
                    r.name,
                    r.namespace.as_deref().unwrap_or_default(),
                    r.source
                ),
            ))
        }
    };
    let Some(current) = current else {
        if dry == DryRun::Client {
            return write::print_result(output, &modified, &r.res, "created", dry);
        }
        let created = write::create(
            client,
            &r.collection_url(),
            &modified,
            dry,
            &[("fieldManager", manager), ("fieldValidation", validation)],
        )
        .await
        .map_err(|e| {
            write::prefix_api_error(e, &format!("error when creating \"{}\": ", r.source))
        })?;
        return write::print_result(output, &created, &r.res, "created", dry);
    };
    let original: Option<Value> = current["metadata"]["annotations"][LAST_APPLIED]
        .as_str()
        .and_then(|s| serde_json::from_str(s).ok());
    if original.is_none() {
        eprintln!(
            "Warning: resource {}/{} is missing the {LAST_APPLIED} annotation which is required by kubectl apply. kubectl apply should only be used on resources created declaratively by either kubectl create --save-config or kubectl apply. The missing annotation will be patched automatically.",
            r.res.plural, r.name
        );
    }
    let content_type = write::smp_or_merge(&r.res);
    let patch = if content_type.starts_with("application/strategic") {
        let meta = apimachinery::patch::BuiltinPatchMeta::for_kind(&r.res.group, &r.res.kind);
        threeway::three_way(original.as_ref(), &modified, &current, &meta)
    } else {
        threeway::three_way(original.as_ref(), &modified, &current, &threeway::Atomic)
    };
    if patch.as_object().is_some_and(|m| m.is_empty()) {
        return write::print_result(output, &current, &r.res, "unchanged", dry);
    }
    if dry == DryRun::Client {
        let meta = apimachinery::patch::BuiltinPatchMeta::for_kind(&r.res.group, &r.res.kind);
        let merged = apimachinery::patch::strategic_merge_patch(&current, &patch, &meta)
            .unwrap_or(current.clone());
        return write::print_result(output, &merged, &r.res, "configured", dry);
    }
    let patched = write::patch(
        client,
        &r.url(),
        content_type,
        &patch,
        dry,
        &[("fieldManager", manager), ("fieldValidation", validation)],
    )
    .await
    .map_err(|e| {
        write::prefix_api_error(
            e,
            &format!(
                "error when applying patch:\n{}\nto:\nResource: \"{}\", GroupVersionKind: \"{}, Kind={}\"\nName: \"{}\", Namespace: \"{}\"\nfor: \"{}\": error when patching \"{}\": ",
                serde_json::to_string(&patch).unwrap_or_default(),
                resource_text(r),
                group_version(r),
                r.res.kind,
                r.name,
                r.namespace.as_deref().unwrap_or_default(),
                r.source,
                r.source
            ),
        )
    })?;
    write::print_result(output, &patched, &r.res, "configured", dry)
}

/// `apps/v1, Resource=deployments`, as Go prints a GroupVersionResource.
fn resource_text(r: &Resolved) -> String {
    format!("{}, Resource={}", group_version(r), r.res.plural)
}

/// `apps/v1`, `/v1` for the core group (Go's GroupVersion in these messages).
fn group_version(r: &Resolved) -> String {
    format!("{}/{}", r.res.group, r.res.version)
}
