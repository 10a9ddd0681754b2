//! `kubectl run NAME --image=IMAGE [--restart] [--port] [--env] [--labels] [-- ARGS]`:
//! creates the one Pod the stock kubectl creates; with `-i`/`-t`/`--attach` it waits for
//! the pod to run, attaches to it (falling back to its logs if it has already ended),
//! and with `--rm` deletes it afterwards, exiting with the container's exit code.

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
    /// Keep stdin open on the container in the pod, even if nothing is attached.
    #[arg(short = 'i', long)]
    pub stdin: bool,
    /// Allocate a TTY for the container in the pod.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Wait for the Pod to start running, then attach to it (default with -i).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub attach: Option<bool>,
    /// Delete the pod after it exits. Only valid when attaching to the container.
    #[arg(long)]
    pub rm: bool,
    /// If true, suppress prompt messages.
    #[arg(short = 'q', long)]
    pub quiet: bool,
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
    if args.stdin {
        c.insert("stdin".into(), json!(true));
        c.insert("stdinOnce".into(), json!(true));
    }
    if args.tty {
        c.insert("tty".into(), json!(true));
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
    let attach = args.attach.unwrap_or(args.stdin);
    if args.rm && !attach {
        anyhow::bail!("--rm should only be used for attached containers");
    }
    if !attach {
        return super::create::create_generated(ctx, pod, &args.common, None).await;
    }
    if args.common.dry_run.get()? != crate::write::DryRun::None {
        anyhow::bail!("--dry-run=[server|client] can't be used with attached containers options (--attach, --stdin, or --tty)");
    }
    run_attached(ctx, &args, pod).await
}

/// Creates the pod, waits for it to run, attaches (or streams its logs if it ended
/// first), deletes it for `--rm`, and exits with the container's exit code.
async fn run_attached(ctx: &Ctx, args: &Args, pod: Value) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Pod;
    let client = ctx.client().await?;
    let ns = ctx.namespace().await?;
    let pods: kube::Api<Pod> = kube::Api::namespaced(client, &ns);
    let pod: Pod = serde_json::from_value(super::create::strip_nulls(pod))?;
    pods.create(&Default::default(), &pod).await?;
    let name = args.name.clone();
    // Running, or already ended (a short command), within the stock kubectl's
    // --pod-running-timeout (1 minute).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let phase = loop {
        let current = pods.get(&name).await?;
        let phase = current.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        if matches!(phase.as_str(), "Running" | "Succeeded" | "Failed") {
            break phase;
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("timed out waiting for the condition");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let tty = args.tty && args.stdin;
    let mut attached = false;
    if phase == "Running" {
        if tty && !args.quiet {
            eprintln!("If you don't see a command prompt, try pressing enter.");
        }
        let params = kube::api::AttachParams::default().container(name.as_str()).stdin(args.stdin).stdout(true).stderr(!tty).tty(tty);
        match pods.attach(&name, &params).await {
            Ok(proc) => {
                super::exec::stream(proc, tty).await;
                attached = true;
            }
            Err(e) => eprintln!("warning: couldn't attach to pod/{name}, falling back to streaming logs: {e}"),
        }
    }
    if !attached {
        let logs = pods.logs(&name, &Default::default()).await?;
        print!("{logs}");
    }
    // The container's exit code, once it has one (Never and OnFailure pods end).
    let (mut code, mut reason) = (0, String::new());
    if args.restart != "Always" {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while tokio::time::Instant::now() < deadline {
            let current = pods.get(&name).await?;
            let terminated = current
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|cs| cs.first())
                .and_then(|c| c.state.as_ref())
                .and_then(|s| s.terminated.as_ref())
                .map(|t| (t.exit_code, t.reason.clone().unwrap_or_default()));
            if let Some((c, why)) = terminated {
                (code, reason) = (c, why);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    if args.rm {
        pods.delete(&name, &Default::default()).await?;
        println!("pod \"{name}\" deleted");
    }
    if code != 0 {
        eprintln!("pod {ns}/{name} terminated ({reason})");
        return Err(crate::errors::Exit(code).into());
    }
    Ok(())
}
