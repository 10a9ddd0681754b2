//! `kubectl logs [-f] [-c C] [--previous] [--tail N] [--timestamps] [--since D]
//! POD | TYPE/NAME | -l SELECTOR`: the pod `log` subresource, streamed to stdout.

use std::io::Write as _;

use futures::AsyncBufReadExt as _;
use futures::TryStreamExt as _;
use serde_json::Value;

use crate::context::Ctx;
use crate::resources::parse_type_names;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// POD | TYPE/NAME [CONTAINER]
    pub target: Vec<String>,
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    #[arg(short = 'f', long)]
    pub follow: bool,
    #[arg(short = 'p', long)]
    pub previous: bool,
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub tail: i64,
    #[arg(long)]
    pub timestamps: bool,
    /// Only return logs newer than a relative duration like 5s, 2m, or 3h.
    #[arg(long)]
    pub since: Option<String>,
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Get all containers' logs in the pod(s).
    #[arg(long = "all-containers")]
    pub all_containers: bool,
    /// Prefix each log line with the log source (pod name and container name)
    #[arg(long)]
    pub prefix: bool,
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let namespace = ctx.namespace().await?;
    let client = ctx.client().await?;
    let mut pods: Vec<Value> = Vec::new();
    let mut container = args.container.clone();
    if let Some(sel) = &args.selector {
        let url = super::with_query(
            &format!("/api/v1/namespaces/{namespace}/pods"),
            &[("labelSelector", sel)],
        );
        let list = super::get_json(&client, &url).await?;
        pods.extend(list["items"].as_array().cloned().unwrap_or_default());
        if pods.is_empty() {
            eprintln!("No resources found in {namespace} namespace.");
            return Ok(());
        }
    } else {
        let Some(first) = args.target.first() else {
            return crate::errors::usage(
                "logs",
                "expected 'logs [-f] [-p] (POD | TYPE/NAME) [-c CONTAINER]'.\nPOD or TYPE/NAME is a required argument for the logs command",
            );
        };
        if container.is_none() {
            container = args.target.get(1).cloned();
        }
        if first.contains('/') {
            let discovery = ctx.discovery().await?;
            let sel = parse_type_names(&args.target[..1])?;
            let res = discovery.resolve(&sel[0].type_arg)?;
            let obj = super::get_json(&client, &res.object_url(Some(&namespace), &sel[0].names[0]))
                .await?;
            if res.kind == "Pod" {
                pods.push(obj);
            } else {
                // A workload: its first pod, found by its selector.
                let labels = &obj["spec"]["selector"]["matchLabels"];
                let labels = if labels.is_object() {
                    labels
                } else {
                    &obj["spec"]["selector"]
                };
                let selector: Vec<String> = labels
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect();
                let url = super::with_query(
                    &format!("/api/v1/namespaces/{namespace}/pods"),
                    &[("labelSelector", &selector.join(","))],
                );
                let list = super::get_json(&client, &url).await?;
                let Some(pod) = list["items"].as_array().and_then(|a| a.first()).cloned() else {
                    anyhow::bail!("timed out waiting for the condition");
                };
                pods.push(pod);
            }
        } else {
            match super::get_json(
                &client,
                &format!("/api/v1/namespaces/{namespace}/pods/{first}"),
            )
            .await
            {
                Ok(pod) => pods.push(pod),
                Err(e) if crate::errors::is_not_found(&e) => {
                    anyhow::bail!("error from server (NotFound): pods \"{first}\" not found in namespace \"{namespace}\"")
                }
                Err(e) => return Err(e),
            }
        }
    }
    let mut stdout = std::io::stdout();
    for pod in &pods {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let names: Vec<String> = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect();
        let containers: Vec<String> = if args.all_containers {
            names.clone()
        } else if let Some(c) = &container {
            vec![c.clone()]
        } else {
            let default = pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"]
                .as_str()
                .map(str::to_string)
                .or_else(|| names.first().cloned())
                .unwrap_or_default();
            if names.len() > 1 {
                eprintln!(
                    "Defaulted container \"{default}\" out of: {}",
                    names.join(", ")
                );
            }
            vec![default]
        };
        for c in containers {
            let tail = if args.tail >= 0 {
                args.tail.to_string()
            } else {
                String::new()
            };
            let since = match &args.since {
                Some(d) => super::wait::parse_duration(d)?.as_secs().max(1).to_string(),
                None => String::new(),
            };
            let url = super::with_query(
                &format!("/api/v1/namespaces/{namespace}/pods/{name}/log"),
                &[
                    ("container", &c),
                    ("follow", if args.follow { "true" } else { "" }),
                    ("previous", if args.previous { "true" } else { "" }),
                    ("tailLines", &tail),
                    ("timestamps", if args.timestamps { "true" } else { "" }),
                    ("sinceSeconds", &since),
                ],
            );
            let req = http::Request::get(url).body(Vec::new())?;
            let body = client.request_stream(req).await?;
            let mut lines = std::pin::pin!(body.lines());
            let prefix = if args.prefix {
                format!("[pod/{name}/{c}] ")
            } else {
                String::new()
            };
            while let Some(line) = lines.try_next().await? {
                writeln!(stdout, "{prefix}{line}")?;
                if args.follow {
                    stdout.flush()?;
                }
            }
        }
    }
    stdout.flush()?;
    Ok(())
}
