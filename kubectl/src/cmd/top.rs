//! `kubectl top pods|nodes`: CPU and memory usage from the resource metrics API
//! (`metrics.k8s.io/v1beta1`), with node usage also as a share of allocatable.

use apimachinery::quantity::Quantity;
use serde_json::Value;

use crate::context::Ctx;
use crate::printers::tabwriter::TabWriter;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: Sub,
}

#[derive(clap::Subcommand, Debug)]
pub enum Sub {
    /// Display resource (CPU/memory) usage of pods
    #[command(visible_aliases = ["pods", "po"])]
    Pod(PodArgs),
    /// Display resource (CPU/memory) usage of nodes
    #[command(visible_aliases = ["nodes", "no"])]
    Node(NodeArgs),
}

#[derive(clap::Args, Debug)]
pub struct PodArgs {
    pub name: Option<String>,
    #[arg(short = 'A', long = "all-namespaces")]
    pub all_namespaces: bool,
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Print usage of containers within a pod.
    #[arg(long)]
    pub containers: bool,
    /// If present, print output without headers.
    #[arg(long = "no-headers")]
    pub no_headers: bool,
    /// If non-empty, sort pods list using specified field. The field can be either 'cpu' or 'memory'.
    #[arg(long = "sort-by")]
    pub sort_by: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    pub name: Option<String>,
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    #[arg(long = "no-headers")]
    pub no_headers: bool,
    #[arg(long = "sort-by")]
    pub sort_by: Option<String>,
}

fn millis(v: &Value) -> i128 {
    v.as_str()
        .and_then(|s| Quantity::parse(s).ok())
        .map(|q| q.to_millis())
        .unwrap_or_default()
}

fn bytes(v: &Value) -> i128 {
    v.as_str()
        .and_then(|s| Quantity::parse(s).ok())
        .map(|q| q.to_bytes())
        .unwrap_or_default()
}

fn usage_of(m: &Value) -> (i128, i128) {
    match m["containers"].as_array() {
        Some(cs) => cs.iter().fold((0, 0), |(c, b), x| {
            (
                c + millis(&x["usage"]["cpu"]),
                b + bytes(&x["usage"]["memory"]),
            )
        }),
        None => (millis(&m["usage"]["cpu"]), bytes(&m["usage"]["memory"])),
    }
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    match args.command {
        Sub::Pod(a) => pods(ctx, a).await,
        Sub::Node(a) => nodes(ctx, a).await,
    }
}

/// Each metrics item with its cpu (nanocores) and memory (bytes) usage, sorted as
/// `--sort-by` asks.
fn rows(items: Vec<Value>, by: Option<&str>) -> anyhow::Result<Vec<(Value, i128, i128)>> {
    let mut rows: Vec<(Value, i128, i128)> = items
        .into_iter()
        .map(|m| {
            let (c, b) = usage_of(&m);
            (m, c, b)
        })
        .collect();
    match by {
        None | Some("") => {}
        Some("cpu") => rows.sort_by_key(|r| std::cmp::Reverse(r.1)),
        Some("memory") => rows.sort_by_key(|r| std::cmp::Reverse(r.2)),
        Some(other) => anyhow::bail!("--sort-by accepts only cpu or memory, got {other:?}"),
    }
    Ok(rows)
}

async fn pods(ctx: &Ctx, a: PodArgs) -> anyhow::Result<()> {
    let client = ctx.client().await?;
    let ns = ctx.namespace().await?;
    let base = if a.all_namespaces {
        "/apis/metrics.k8s.io/v1beta1/pods".to_string()
    } else {
        format!("/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods")
    };
    let items: Vec<Value> = match &a.name {
        Some(n) => vec![super::get_json(&client, &format!("{base}/{n}")).await?],
        None => {
            let url = super::with_query(
                &base,
                &[("labelSelector", a.selector.as_deref().unwrap_or_default())],
            );
            super::get_json(&client, &url).await?["items"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        }
    };
    if items.is_empty() {
        // Pods without metrics are an error, as with the stock kubectl.
        let pods_url = if a.all_namespaces {
            "/api/v1/pods".to_string()
        } else {
            format!("/api/v1/namespaces/{ns}/pods")
        };
        let url = super::with_query(
            &pods_url,
            &[("labelSelector", a.selector.as_deref().unwrap_or_default())],
        );
        let pods = super::get_json(&client, &url).await?;
        let oldest = pods["items"].as_array().and_then(|i| {
            i.iter().min_by_key(|p| {
                p["metadata"]["creationTimestamp"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
        });
        if let Some(p) = oldest {
            let created = p["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap_or_default();
            let age = chrono::DateTime::parse_from_rfc3339(created)
                .map(|t| (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds())
                .unwrap_or_default();
            anyhow::bail!(
                "Metrics not available for pod {}/{}, age: {}",
                p["metadata"]["namespace"].as_str().unwrap_or_default(),
                p["metadata"]["name"].as_str().unwrap_or_default(),
                go_duration(age)
            );
        }
        let msg = if a.all_namespaces {
            "No resources found".to_string()
        } else {
            format!("No resources found in {ns} namespace.")
        };
        eprintln!("{msg}");
        return Ok(());
    }
    let rows = rows(items, a.sort_by.as_deref())?;
    let mut tw = TabWriter::table();
    if !a.no_headers {
        let mut h: Vec<&str> = Vec::new();
        if a.all_namespaces {
            h.push("NAMESPACE");
        }
        if a.containers {
            h.extend(["POD", "NAME"]);
        } else {
            h.push("NAME");
        }
        h.extend(["CPU(cores)", "MEMORY(bytes)", ""]);
        tw.row(&h);
    }
    for (m, c, b) in &rows {
        let ns = m["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let name = m["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if a.containers {
            for cont in m["containers"].as_array().cloned().unwrap_or_default() {
                let mut r = Vec::new();
                if a.all_namespaces {
                    r.push(ns.clone());
                }
                r.push(name.clone());
                r.push(cont["name"].as_str().unwrap_or_default().to_string());
                r.push(format!("{}m", millis(&cont["usage"]["cpu"])));
                r.push(format!(
                    "{}Mi",
                    bytes(&cont["usage"]["memory"]) / (1024 * 1024)
                ));
                r.push(String::new());
                tw.row(&r);
            }
        } else {
            let mut r = Vec::new();
            if a.all_namespaces {
                r.push(ns);
            }
            r.extend([
                name,
                format!("{c}m"),
                format!("{}Mi", b / (1024 * 1024)),
                String::new(),
            ]);
            tw.row(&r);
        }
    }
    print!("{}", tw.flush());
    Ok(())
}

async fn nodes(ctx: &Ctx, a: NodeArgs) -> anyhow::Result<()> {
    let client = ctx.client().await?;
    let sel = a.selector.as_deref().unwrap_or_default();
    let (metrics, nodes): (Vec<Value>, Vec<Value>) = match &a.name {
        Some(n) => (
            vec![
                super::get_json(&client, &format!("/apis/metrics.k8s.io/v1beta1/nodes/{n}"))
                    .await?,
            ],
            vec![super::get_json(&client, &format!("/api/v1/nodes/{n}")).await?],
        ),
        None => {
            let m = super::get_json(
                &client,
                &super::with_query(
                    "/apis/metrics.k8s.io/v1beta1/nodes",
                    &[("labelSelector", sel)],
                ),
            )
            .await?;
            let n = super::get_json(
                &client,
                &super::with_query("/api/v1/nodes", &[("labelSelector", sel)]),
            )
            .await?;
            (
                m["items"].as_array().cloned().unwrap_or_default(),
                n["items"].as_array().cloned().unwrap_or_default(),
            )
        }
    };
    if metrics.is_empty() {
        anyhow::bail!("metrics not available yet");
    }
    let rows = rows(metrics, a.sort_by.as_deref())?;
    let mut tw = TabWriter::table();
    if !a.no_headers {
        tw.row(&[
            "NAME",
            "CPU(cores)",
            "CPU(%)",
            "MEMORY(bytes)",
            "MEMORY(%)",
            "",
        ]);
    }
    let mut seen = Vec::new();
    for (m, c, b) in &rows {
        let name = m["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let node = nodes
            .iter()
            .find(|n| n["metadata"]["name"] == name.as_str());
        let Some(node) = node else { continue };
        seen.push(name.clone());
        let alloc = &node["status"]["allocatable"];
        let (ac, am) = (millis(&alloc["cpu"]), bytes(&alloc["memory"]));
        let pct = |u: i128, t: i128| {
            if t > 0 {
                format!("{}%", u * 100 / t)
            } else {
                "<unknown>".into()
            }
        };
        tw.row(&[
            name,
            format!("{c}m"),
            pct(*c, ac),
            format!("{}Mi", b / (1024 * 1024)),
            pct(*b, am),
            String::new(),
        ]);
    }
    for n in &nodes {
        let name = n["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if !seen.contains(&name) {
            let u = "<unknown>".to_string();
            tw.row(&[name, u.clone(), u.clone(), u.clone(), u, String::new()]);
        }
    }
    print!("{}", tw.flush());
    Ok(())
}

/// Seconds as Go prints a `time.Duration` (`1h2m3s`, `7m20s`, `5s`).
fn go_duration(secs: i64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}
