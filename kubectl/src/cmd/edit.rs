//! `kubectl edit TYPE NAME…`: the objects as YAML in `$KUBE_EDITOR`/`$EDITOR` (else `vi`),
//! then a strategic merge patch (merge patch for custom resources) from what was fetched
//! to what was saved; on a server error the file is re-opened with the failures in
//! comments, as the stock kubectl does.

use std::io::Write as _;

use serde_json::Value;

use crate::context::Ctx;
use crate::errors::{self, Exit};
use crate::printers;
use crate::resources::ResourceInfo;
use crate::threeway;
use crate::write;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// TYPE NAME… or TYPE/NAME…
    pub resources: Vec<String>,
    /// Output format for editing: yaml (default) or json.
    #[arg(short = 'o', long)]
    pub output: Option<String>,
    /// Selector (label query) to filter on.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Name of the manager used to track field ownership.
    #[arg(long = "field-manager", default_value = "kubectl-edit")]
    pub field_manager: String,
    /// If specified, edit will operate on the subresource of the requested object.
    #[arg(long)]
    pub subresource: Option<String>,
}

const HEADER: &str = "# Please edit the object below. Lines beginning with a '#' will be ignored,\n# and an empty file will abort the edit. If an error occurs while saving this file will be\n# reopened with the relevant failures.\n#\n";

fn editor_command() -> String {
    for var in ["KUBE_EDITOR", "EDITOR"] {
        if let Ok(e) = std::env::var(var) {
            if !e.trim().is_empty() {
                return e;
            }
        }
    }
    "vi".to_string()
}

fn run_editor(path: &std::path::Path) -> anyhow::Result<()> {
    let editor = editor_command();
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(path)
        .status()?;
    if !status.success() {
        anyhow::bail!("there was a problem with the editor \"{editor}\"");
    }
    Ok(())
}

/// The text without comment lines.
fn content(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn temp_path(json: bool) -> std::path::PathBuf {
    let n: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64 % 10_000_000_000)
        .unwrap_or_default();
    let ext = if json { "json" } else { "yaml" };
    std::env::temp_dir().join(format!("kubectl-edit-{}{n}.{ext}", std::process::id()))
}

/// The error comment the stock kubectl puts above a re-opened file.
fn error_comment(e: &anyhow::Error, res: &ResourceInfo, name: &str) -> String {
    let mut out = format!("# {} \"{name}\" was not valid:\n", res.group_resource());
    match errors::api_status(e) {
        Some(s) if s.details.as_ref().is_some_and(|d| !d.causes.is_empty()) => {
            for c in s.details.iter().flat_map(|d| d.causes.iter()) {
                let value = c
                    .message
                    .strip_prefix("Invalid value: ")
                    .and_then(|r| r.strip_prefix('"'))
                    .and_then(|r| r.split_once('"'))
                    .map(|(v, _)| v.to_string())
                    .unwrap_or_else(|| c.message.clone());
                out.push_str(&format!("# * {}: {value}\n", c.field));
            }
        }
        Some(s) => out.push_str(&format!("# * {}\n", s.message)),
        None => out.push_str(&format!("# * {e:#}\n")),
    }
    out.push_str("#\n");
    out
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    if args.resources.is_empty() {
        return errors::usage("edit", "You must provide one or more resources by argument or filename.\nExample resource specifications include:\n   '-f rsrc.yaml'\n   '--filename=rsrc.json'\n   '<resource> <name>'\n   '<resource>'");
    }
    let json_mode = args.output.as_deref() == Some("json");
    let objects =
        write::select(ctx, &args.resources, args.selector.as_deref(), false, false).await?;
    let client = ctx.client().await?;
    let mut failed = false;
    for (mut obj, res) in objects {
        printers::strip_managed_fields(&mut obj);
        let original = printers::with_type(obj, &res);
        let name = write::name_of(&original).to_string();
        let render = |v: &Value| {
            if json_mode {
                printers::json::to_json(v)
            } else {
                printers::yaml::to_yaml(v)
            }
        };
        let path = temp_path(json_mode);
        let mut body = render(&original);
        let mut comment = String::new();
        let mut last_error: Option<anyhow::Error> = None;
        loop {
            {
                let mut f = std::fs::File::create(&path)?;
                write!(f, "{HEADER}{comment}{body}")?;
            }
            run_editor(&path)?;
            let edited_text = std::fs::read_to_string(&path)?;
            let edited = content(&edited_text);
            if edited.trim().is_empty() {
                let _ = std::fs::remove_file(&path);
                eprintln!("Edit cancelled, no changes made.");
                break;
            }
            if edited == content(&body) {
                let _ = std::fs::remove_file(&path);
                match last_error.take() {
                    None => eprintln!("Edit cancelled, no changes made."),
                    Some(e) => {
                        let keep = temp_path(json_mode);
                        std::fs::write(&keep, &edited_text)?;
                        let short = match errors::api_status(&e) {
                            Some(s) if s.code == 422 => {
                                format!("{} \"{name}\" is invalid", res.group_resource())
                            }
                            _ => errors::message(&e)
                                .trim_start_matches("error: ")
                                .to_string(),
                        };
                        eprintln!("error: {short}");
                        eprintln!(
                            "A copy of your changes has been stored to \"{}\"",
                            keep.display()
                        );
                        eprintln!("error: Edit cancelled, no valid changes were saved.");
                        failed = true;
                    }
                }
                break;
            }
            let parsed: Result<Value, String> = if json_mode {
                serde_json::from_str(&edited).map_err(|e| e.to_string())
            } else {
                serde_yaml_ng::from_str(&edited).map_err(|e| e.to_string())
            };
            let new = match parsed {
                Ok(v) => v,
                Err(e) => {
                    comment = format!("# The edited file had a syntax error: {e}\n#\n");
                    body = edited;
                    last_error = Some(anyhow::anyhow!("{e}"));
                    continue;
                }
            };
            let content_type = write::smp_or_merge(&res);
            let patch = if content_type.starts_with("application/strategic") {
                let meta = apimachinery::patch::BuiltinPatchMeta::for_kind(&res.group, &res.kind);
                threeway::two_way(&original, &new, &meta)
            } else {
                threeway::two_way(&original, &new, &threeway::Atomic)
            };
            let url = res.object_url(write::ns_of(&original), &name);
            let url = match &args.subresource {
                Some(s) => format!("{url}/{s}"),
                None => url,
            };
            match write::patch(
                &client,
                &url,
                content_type,
                &patch,
                write::DryRun::None,
                &[("fieldManager", &args.field_manager)],
            )
            .await
            {
                Ok(_) => {
                    let _ = std::fs::remove_file(&path);
                    println!("{} edited", printers::object_name(&original, &res));
                    break;
                }
                Err(e) => {
                    comment = error_comment(&e, &res, &name);
                    body = edited;
                    last_error = Some(e);
                }
            }
        }
    }
    if failed {
        return Err(Exit(1).into());
    }
    Ok(())
}
