//! `kubectl run NAME --image=IMAGE [--restart] [--port] [--env] [--labels] [-- ARGS]`:
//! creates the one Pod the stock kubectl creates (non-interactive).

use serde_json::{json, Map, Value};

use crate::context::Ctx;

#[derive(clap::Args, Debug)]
pub struct Args {
    pub name: String,
    /// The image for the container to run.
    #[arg(long)]
    pub image: Option<String>,
    /// The restart policy for this Pod. Legal values [Always, OnFailure, Never].
    #[arg(long, default_value = "Always")]
    pub restart: String,
    /// The port that this container exposes.
    #[arg(long)]
    pub port: Option<String>,
    /// Environment variables to set in the container.
    #[arg(long)]
    pub env: Vec<String>,
    /// Comma separated labels to apply to the pod. Will override previous values.
    #[arg(short = 'l', long)]
    pub labels: Option<String>,
    /// If true and extra arguments are present, use them as the 'command' field in the container.
    #[arg(long)]
    pub command: bool,
    /// The image pull policy for the container.
    #[arg(long = "image-pull-policy")]
    pub image_pull_policy: Option<String>,
    /// Annotations to apply to the pod.
    #[arg(long)]
    pub annotations: Vec<String>,
    #[command(flatten)]
    pub common: super::create::Common,
    /// Arguments (or, with --command, the command) after `--`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let Some(image) = args.image.as_deref().filter(|i| !i.is_empty()) else {
        anyhow::bail!("required flag(s) \"image\" not set");
    };
    if !matches!(args.restart.as_str(), "Always" | "OnFailure" | "Never") {
        anyhow::bail!("invalid restart policy: {}", args.restart);
    }
    let mut labels = Map::new();
    match &args.labels {
        Some(l) => {
            for pair in l.split(',') {
                let Some((k, v)) = pair.split_once('=') else {
                    anyhow::bail!("invalid label spec: {pair}");
                };
                labels.insert(k.to_string(), json!(v));
            }
        }
        None => {
            labels.insert("run".into(), json!(args.name));
        }
    }
    let mut c = Map::new();
    c.insert("name".into(), json!(args.name));
    c.insert("image".into(), json!(image));
    if !args.args.is_empty() {
        let key = if args.command { "command" } else { "args" };
        c.insert(key.into(), json!(args.args));
    }
    if let Some(p) = &args.port {
        let port: i32 = p
            .parse()
            .map_err(|_| anyhow::anyhow!("strconv.Atoi: parsing {p:?}: invalid syntax"))?;
        c.insert("ports".into(), json!([{"containerPort": port}]));
    }
    if !args.env.is_empty() {
        let env: Vec<Value> = args
            .env
            .iter()
            .map(|e| {
                let (k, v) = e.split_once('=').unwrap_or((e, ""));
                json!({"name": k, "value": v})
            })
            .collect();
        c.insert("env".into(), json!(env));
    }
    c.insert("resources".into(), json!({}));
    if let Some(p) = &args.image_pull_policy {
        c.insert("imagePullPolicy".into(), json!(p));
    }
    let mut meta = Map::new();
    meta.insert("name".into(), json!(args.name));
    meta.insert("creationTimestamp".into(), Value::Null);
    meta.insert("labels".into(), Value::Object(labels));
    if !args.annotations.is_empty() {
        let a: Map<String, Value> = args
            .annotations
            .iter()
            .map(|a| {
                let (k, v) = a.split_once('=').unwrap_or((a, ""));
                (k.to_string(), json!(v))
            })
            .collect();
        meta.insert("annotations".into(), Value::Object(a));
    }
    let pod = json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": meta,
        "spec": {"containers": [c], "restartPolicy": args.restart, "dnsPolicy": "ClusterFirst"},
        "status": {}
    });
    super::create::create_generated(ctx, pod, &args.common, None).await
}
