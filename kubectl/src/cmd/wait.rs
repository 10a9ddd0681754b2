//! `kubectl wait --for=condition=X[=V] | --for=delete | --for=jsonpath='{…}'=V`:
//! polls the named objects (or those a selector picks) until each meets the condition,
//! printing `deployment.apps/web condition met`, or times out with the stock error.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::context::Ctx;
use crate::errors;
use crate::printers::jsonpath::{self, Template};
use crate::resources::{parse_type_names, ResourceInfo};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// TYPE NAME... or TYPE/NAME...
    pub resources: Vec<String>,
    /// The condition to wait on: [delete|condition=condition-name[=condition-value]|jsonpath='{JSONPath expression}'=[JSONPath value]].
    #[arg(long = "for")]
    pub for_: Option<String>,
    /// The length of time to wait before giving up (e.g. 30s, 5m, 1h).
    #[arg(long, default_value = "30s")]
    pub timeout: String,
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Select all resources in the namespace of the specified resource types
    #[arg(long)]
    pub all: bool,
    #[arg(short = 'A', long = "all-namespaces")]
    pub all_namespaces: bool,
}

enum Condition {
    Delete,
    Status {
        kind: String,
        value: String,
    },
    JsonPath {
        template: Template,
        value: Option<String>,
    },
}

fn parse_for(spec: &str) -> anyhow::Result<Condition> {
    if spec.eq_ignore_ascii_case("delete") {
        return Ok(Condition::Delete);
    }
    if let Some(rest) = spec.strip_prefix("condition=") {
        let (kind, value) = match rest.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (rest.to_string(), "true".to_string()),
        };
        return Ok(Condition::Status { kind, value });
    }
    if let Some(rest) = spec.strip_prefix("jsonpath=") {
        // The expression is `{…}` optionally followed by `=value`.
        let (expr, value) = match rest.rfind("}=") {
            Some(i) => (&rest[..=i], Some(rest[i + 2..].to_string())),
            None => (rest, None),
        };
        let expr = if expr.starts_with('{') {
            expr.to_string()
        } else {
            format!("{{{expr}}}")
        };
        let template = Template::parse(&expr).map_err(anyhow::Error::msg)?;
        return Ok(Condition::JsonPath { template, value });
    }
    anyhow::bail!("unrecognized condition: \"{spec}\"")
}

/// Go's duration syntax (`30s`, `1m30s`, `2h`, `500ms`); a bare number is seconds.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    let mut total = 0f64;
    let mut num = String::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            i += 1;
            continue;
        }
        let mut unit = String::new();
        while i < chars.len() && !chars[i].is_ascii_digit() {
            unit.push(chars[i]);
            i += 1;
        }
        let n: f64 = num
            .parse()
            .map_err(|_| anyhow::anyhow!("time: invalid duration \"{s}\""))?;
        num.clear();
        total += n * match unit.as_str() {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => anyhow::bail!("time: unknown unit \"{unit}\" in duration \"{s}\""),
        };
    }
    if !num.is_empty() {
        anyhow::bail!("time: missing unit in duration \"{s}\"");
    }
    Ok(Duration::from_secs_f64(total))
}

fn met(cond: &Condition, obj: &Value) -> bool {
    match cond {
        Condition::Delete => false,
        Condition::Status { kind, value } => obj["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| {
                c["type"]
                    .as_str()
                    .is_some_and(|t| t.eq_ignore_ascii_case(kind))
                    && c["status"]
                        .as_str()
                        .is_some_and(|s| s.eq_ignore_ascii_case(value))
            }),
        Condition::JsonPath { template, value } => {
            let values = template.values(obj);
            match value {
                None => !values.is_empty(),
                Some(v) => values.len() == 1 && jsonpath::text(&values[0]) == *v,
            }
        }
    }
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let Some(spec) = args.for_.as_deref() else {
        anyhow::bail!("--for must be specified");
    };
    let cond = parse_for(spec)?;
    let timeout = parse_duration(&args.timeout)?;
    let discovery = ctx.discovery().await?;
    let namespace = ctx.namespace().await?;
    let client = ctx.client().await?;
    let mut targets: Vec<(ResourceInfo, Option<String>, String)> = Vec::new();
    for sel in parse_type_names(&args.resources)? {
        let res = discovery.resolve(&sel.type_arg)?;
        let ns = (res.namespaced && !args.all_namespaces).then(|| namespace.clone());
        if sel.names.is_empty() {
            if args.selector.is_none() && !args.all {
                anyhow::bail!("resource(s) were provided, but no name was specified");
            }
            let url = super::with_query(
                &res.collection_url(ns.as_deref()),
                &[("labelSelector", args.selector.as_deref().unwrap_or(""))],
            );
            let list = super::get_json(&client, &url).await?;
            for o in list["items"].as_array().into_iter().flatten() {
                let ons = o["metadata"]["namespace"].as_str().map(str::to_string);
                targets.push((
                    res.clone(),
                    ons,
                    o["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                ));
            }
            continue;
        }
        for n in sel.names {
            targets.push((res.clone(), ns.clone(), n));
        }
    }
    if targets.is_empty() {
        anyhow::bail!("no matching resources found");
    }
    let deadline = Instant::now() + timeout;
    for (res, ns, name) in targets {
        let url = res.object_url(ns.as_deref(), &name);
        loop {
            match super::get_json(&client, &url).await {
                Ok(obj) if met(&cond, &obj) => {
                    println!("{}/{name} condition met", res.kind_group());
                    break;
                }
                Ok(_) => {}
                Err(e) if errors::is_not_found(&e) => {
                    if matches!(cond, Condition::Delete) {
                        break;
                    }
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "timed out waiting for the condition on {}/{name}",
                    res.plural
                );
            }
            tokio::time::sleep(
                Duration::from_millis(500).min(deadline.saturating_duration_since(Instant::now())),
            )
            .await;
        }
    }
    Ok(())
}
