//! `kubectl taint nodes NAME key=value:Effect | key:Effect- | key-`, `--overwrite`:
//! `node/n1 tainted`, `modified`, `untainted`.

use serde_json::{json, Value};

use crate::context::Ctx;
use crate::errors;
use crate::write::{self, DryRun, DryRunArg};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// NODE NAME KEY_1=VAL_1:TAINT_EFFECT_1 ... KEY_N=VAL_N:TAINT_EFFECT_N
    pub args: Vec<String>,
    /// If true, allow taints to be overwritten.
    #[arg(long)]
    pub overwrite: bool,
    /// Selector (label query) to filter on.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Select all nodes in the cluster
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub dry_run: DryRunArg,
    /// Output format: yaml, json or name.
    #[arg(short = 'o', long)]
    pub output: Option<String>,
}

struct Taint {
    key: String,
    value: Option<String>,
    effect: Option<String>,
}

fn parse_taint(spec: &str) -> anyhow::Result<Taint> {
    let (kv, effect) = match spec.split_once(':') {
        Some((kv, e)) => (kv, Some(e.to_string())),
        None => (spec, None),
    };
    if let Some(e) = &effect {
        if !matches!(
            e.as_str(),
            "NoSchedule" | "PreferNoSchedule" | "NoExecute" | ""
        ) {
            return errors::usage(
                "taint",
                format!("invalid taint effect: {e}, unsupported taint effect"),
            );
        }
    }
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k.to_string(), Some(v.to_string())),
        None => (kv.to_string(), None),
    };
    Ok(Taint {
        key,
        value,
        effect: effect.filter(|e| !e.is_empty()),
    })
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let mut resources = Vec::new();
    let mut adds = Vec::new();
    let mut removes = Vec::new();
    for a in &args.args {
        if a.contains('=') || a.contains(':') || a.ends_with('-') {
            if let Some(r) = a.strip_suffix('-') {
                removes.push(parse_taint(r)?);
            } else {
                let t = parse_taint(a)?;
                if t.effect.is_none() {
                    return errors::usage(
                        "taint",
                        format!("invalid taint spec: {a}, unknown taint effect"),
                    );
                }
                adds.push(t);
            }
        } else {
            resources.push(a.clone());
        }
    }
    if adds.is_empty() && removes.is_empty() {
        anyhow::bail!("at least one taint update is required");
    }
    let dry = args.dry_run.get()?;
    let output = write::parse_output(args.output.as_deref())?;
    let objects = write::select(ctx, &resources, args.selector.as_deref(), args.all, false).await?;
    let client = ctx.client().await?;
    let mut failures = errors::Failures::default();
    for (node, res) in objects {
        let name = write::name_of(&node).to_string();
        let mut taints: Vec<Value> = node["spec"]["taints"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let result: anyhow::Result<String> = (|| {
            let mut added = false;
            let mut modified = false;
            for t in &adds {
                let same = |x: &Value| {
                    x["key"] == t.key.as_str()
                        && x["effect"] == t.effect.as_deref().unwrap_or_default()
                };
                if let Some(existing) = taints.iter_mut().find(|x| same(x)) {
                    if !args.overwrite {
                        anyhow::bail!("node {name} already has {} taint(s) with same effect(s) and --overwrite is false", t.key);
                    }
                    *existing = taint_json(t);
                    modified = true;
                } else {
                    taints.push(taint_json(t));
                    added = true;
                }
            }
            let mut removed = false;
            for t in &removes {
                let before = taints.len();
                taints.retain(|x| {
                    !(x["key"] == t.key.as_str()
                        && t.effect.as_deref().is_none_or(|e| x["effect"] == e))
                });
                if taints.len() == before {
                    anyhow::bail!("taint {:?} not found", t.key);
                }
                removed = true;
            }
            Ok(if removed && !added && !modified {
                "untainted"
            } else if modified || (removed && added) {
                "modified"
            } else {
                "tainted"
            }
            .to_string())
        })();
        let verb = match result {
            Ok(v) => v,
            Err(e) => {
                failures.report(&e);
                continue;
            }
        };
        let patched = if dry == DryRun::Client {
            let mut n = node.clone();
            n["spec"]["taints"] = json!(taints);
            Ok(n)
        } else {
            let taints_value = if taints.is_empty() {
                Value::Null
            } else {
                json!(taints)
            };
            write::patch(
                &client,
                &res.object_url(None, &name),
                "application/strategic-merge-patch+json",
                &json!({"spec": {"taints": taints_value}}),
                dry,
                &[("fieldManager", "kubectl-taint")],
            )
            .await
        };
        match patched {
            Ok(n) => write::print_result(output.as_ref(), &n, &res, &verb, dry)?,
            Err(e) => {
                failures.report(&e);
            }
        }
    }
    failures.finish()
}

fn taint_json(t: &Taint) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("key".into(), json!(t.key));
    if let Some(v) = &t.value {
        m.insert("value".into(), json!(v));
    }
    m.insert("effect".into(), json!(t.effect.clone().unwrap_or_default()));
    Value::Object(m)
}
