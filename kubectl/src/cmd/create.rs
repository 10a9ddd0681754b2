//! `kubectl create -f FILE` and the generators (`create deployment|service|configmap|
//! secret generic|namespace|job|serviceaccount|token`), which build the same objects the
//! stock kubectl builds (fields in Go's struct order, so `-o json` prints alike).

use std::path::Path;

use anyhow::Context as _;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::context::Ctx;
use crate::errors;
use crate::write::{self, DryRun, DryRunArg};

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    /// Filename, directory, or URL to files to use to create the resource
    #[arg(short = 'f', long = "filename")]
    pub filename: Vec<String>,
    /// Process the directory used in -f, --filename recursively.
    #[arg(short = 'R', long)]
    pub recursive: bool,
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub generator: Option<Generator>,
}

/// The flags every create command has.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Common {
    #[command(flatten)]
    pub dry_run: DryRunArg,
    /// Output format: yaml, json or name.
    #[arg(short = 'o', long)]
    pub output: Option<String>,
    /// If true, the configuration of current object will be saved in its annotation.
    #[arg(long = "save-config")]
    pub save_config: bool,
    /// Name of the manager used to track field ownership.
    #[arg(long = "field-manager", default_value = "kubectl-create")]
    pub field_manager: String,
    /// How the server treats unknown or duplicate fields: strict (or true, the default),
    /// warn, or ignore (or false); sent as `fieldValidation`.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "strict")]
    pub validate: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
pub enum Generator {
    /// Create a deployment with the specified name
    #[command(visible_alias = "deploy")]
    Deployment(DeploymentArgs),
    /// Create a service using a specified subcommand
    #[command(visible_alias = "svc")]
    Service {
        #[command(subcommand)]
        kind: ServiceKind,
    },
    /// Create a config map from a local file, directory or literal value
    #[command(visible_alias = "cm")]
    Configmap(DataArgs),
    /// Create a secret using a specified subcommand
    Secret {
        #[command(subcommand)]
        kind: SecretKind,
    },
    /// Create a namespace with the specified name
    #[command(visible_alias = "ns")]
    Namespace(NameArgs),
    /// Create a job with the specified name
    Job(JobArgs),
    /// Create a service account with the specified name
    #[command(visible_alias = "sa")]
    Serviceaccount(NameArgs),
    /// Request a service account token
    Token(TokenArgs),
}

#[derive(clap::Args, Debug)]
pub struct DeploymentArgs {
    pub name: String,
    /// Image names to run. A deployment can have multiple images set for multi-container pod.
    #[arg(long, required = true)]
    pub image: Vec<String>,
    /// Number of replicas to create. Default is 1.
    #[arg(short = 'r', long, default_value_t = 1)]
    pub replicas: i32,
    /// The containerPort that this deployment exposes.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub port: i32,
    #[command(flatten)]
    pub common: Common,
    /// The command to run, after `--`.
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(clap::Subcommand, Debug)]
pub enum ServiceKind {
    /// Create a ClusterIP service
    Clusterip(ServiceArgs),
    /// Create a NodePort service
    Nodeport(ServiceArgs),
    /// Create a LoadBalancer service
    Loadbalancer(ServiceArgs),
}

#[derive(clap::Args, Debug)]
pub struct ServiceArgs {
    pub name: String,
    /// Port pairs can be specified as '<port>:<targetPort>'.
    #[arg(long, value_delimiter = ',')]
    pub tcp: Vec<String>,
    /// Assign your own ClusterIP or set to 'None' for a 'headless' service (no loadbalancing).
    #[arg(long)]
    pub clusterip: Option<String>,
    /// Port used to expose the service on each node in a cluster.
    #[arg(long = "node-port", default_value_t = 0)]
    pub node_port: i32,
    #[command(flatten)]
    pub common: Common,
}

#[derive(clap::Args, Debug)]
pub struct DataArgs {
    pub name: String,
    /// Specify a key and literal value to insert (i.e. mykey=somevalue)
    #[arg(long = "from-literal")]
    pub from_literal: Vec<String>,
    /// Key file can be specified using its file path, in which case file basename will be used as key.
    #[arg(long = "from-file")]
    pub from_file: Vec<String>,
    /// Specify the path to a file to read lines of key=val pairs.
    #[arg(long = "from-env-file")]
    pub from_env_file: Vec<String>,
    /// Append a hash of the data to its name.
    #[arg(long = "append-hash")]
    pub append_hash: bool,
    /// The type of secret to create (secrets only).
    #[arg(long = "type")]
    pub type_: Option<String>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(clap::Subcommand, Debug)]
pub enum SecretKind {
    /// Create a secret from a local file, directory, or literal value
    Generic(DataArgs),
}

#[derive(clap::Args, Debug)]
pub struct NameArgs {
    pub name: String,
    #[command(flatten)]
    pub common: Common,
}

#[derive(clap::Args, Debug)]
pub struct JobArgs {
    pub name: String,
    /// Image name to run.
    #[arg(long)]
    pub image: Option<String>,
    /// The name of the resource to create a Job from (only cronjob is supported).
    #[arg(long)]
    pub from: Option<String>,
    #[command(flatten)]
    pub common: Common,
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    pub service_account: String,
    /// Requested lifetime of the issued token.
    #[arg(long)]
    pub duration: Option<String>,
    /// Audience of the requested token.
    #[arg(long)]
    pub audience: Vec<String>,
    #[command(flatten)]
    pub common: Common,
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let Some(generator) = args.generator else {
        if args.filename.is_empty() {
            anyhow::bail!("must specify one of -f and -k");
        }
        return from_files(ctx, &args.filename, args.recursive, &args.common).await;
    };
    // (The stock generators word server errors each their own way.)
    let (obj, common, prefix) = match generator {
        Generator::Deployment(a) => (
            deployment(&a),
            a.common,
            Some("failed to create deployment: ".to_string()),
        ),
        Generator::Service { kind } => {
            let (t, a) = match kind {
                ServiceKind::Clusterip(a) => ("ClusterIP", a),
                ServiceKind::Nodeport(a) => ("NodePort", a),
                ServiceKind::Loadbalancer(a) => ("LoadBalancer", a),
            };
            (
                service(t, &a)?,
                a.common,
                Some(format!("failed to create {t} service: ")),
            )
        }
        Generator::Configmap(a) => (
            data_object("ConfigMap", &a)?,
            a.common,
            Some("failed to create configmap: ".to_string()),
        ),
        Generator::Secret {
            kind: SecretKind::Generic(a),
        } => (
            data_object("Secret", &a)?,
            a.common,
            Some("failed to create secret ".to_string()),
        ),
        Generator::Namespace(a) => (
            json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": a.name, "creationTimestamp": null}, "spec": {}, "status": {}}),
            a.common,
            None,
        ),
        Generator::Serviceaccount(a) => (
            json!({"kind": "ServiceAccount", "apiVersion": "v1", "metadata": {"name": a.name, "creationTimestamp": null}}),
            a.common,
            Some("failed to create serviceaccount: ".to_string()),
        ),
        Generator::Job(a) => (
            job(&a)?,
            a.common,
            Some("failed to create job: ".to_string()),
        ),
        Generator::Token(a) => return token(ctx, &a).await,
    };
    create_generated(ctx, obj, &common, prefix.as_deref()).await
}

/// Sends (or, with `--dry-run=client`, prints) a generated object.
pub async fn create_generated(
    ctx: &Ctx,
    obj: Value,
    common: &Common,
    error_prefix: Option<&str>,
) -> anyhow::Result<()> {
    let dry = common.dry_run.get()?;
    let output = write::parse_output(common.output.as_deref())?;
    let discovery = ctx.discovery().await?;
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    let res = discovery
        .for_kind(api_version, kind)
        .with_context(|| format!("no resource for {api_version} {kind}"))?;
    let ns = ctx.namespace().await?;
    let mut obj = obj;
    if common.save_config {
        obj = super::apply::with_last_applied(&obj, None);
    }
    if dry == DryRun::Client {
        return print_generated(output.as_ref(), &obj, &res, "created", dry);
    }
    let client = ctx.client().await?;
    let created = write::create(
        &client,
        &res.collection_url(Some(&ns)),
        &strip_nulls(obj),
        dry,
        &[("fieldManager", &common.field_manager), ("fieldValidation", write::field_validation(common.validate.as_deref())?)],
    )
    .await
    .map_err(|e| match errors::api_status(&e) {
        // The generators of `create` word server errors their own way.
        Some(s) => match error_prefix {
            Some(p) => anyhow::anyhow!("{p}{}", s.message),
            None => e,
        },
        _ => e,
    })?;
    write::print_result(output.as_ref(), &created, &res, "created", dry)
}

/// Prints a generated object: `-o json` keeps the fields in Go's struct order.
pub fn print_generated(
    output: Option<&crate::printers::Output>,
    obj: &Value,
    res: &crate::resources::ResourceInfo,
    verb: &str,
    dry: DryRun,
) -> anyhow::Result<()> {
    match output {
        Some(crate::printers::Output::Json) => {
            print!("{}", crate::printers::json::to_json_in_order(obj));
            Ok(())
        }
        _ => write::print_result(output, obj, res, verb, dry),
    }
}

async fn from_files(
    ctx: &Ctx,
    files: &[String],
    recursive: bool,
    common: &Common,
) -> anyhow::Result<()> {
    let dry = common.dry_run.get()?;
    let output = write::parse_output(common.output.as_deref())?;
    let objects = write::resolve_files(ctx, files, recursive).await?;
    let client = ctx.client().await?;
    let mut failures = errors::Failures::default();
    for r in &objects {
        let mut obj = r.obj.clone();
        if common.save_config {
            obj = super::apply::with_last_applied(&obj, None);
        }
        if dry == DryRun::Client {
            write::print_result(output.as_ref(), &obj, &r.res, "created", dry)?;
            continue;
        }
        match write::create(
            &client,
            &r.collection_url(),
            &obj,
            dry,
            &[("fieldManager", &common.field_manager), ("fieldValidation", write::field_validation(common.validate.as_deref())?)],
        )
        .await
        {
            Ok(created) => write::print_result(output.as_ref(), &created, &r.res, "created", dry)?,
            Err(e) => {
                let e =
                    write::prefix_api_error(e, &format!("error when creating \"{}\": ", r.source));
                failures.report(&e);
            }
        }
    }
    failures.finish()
}

/// The object without `null` fields (the generators' `creationTimestamp: null`).
pub fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}

/// The container name the stock kubectl derives from an image: its last path
/// component without tag or digest.
pub fn container_name(image: &str) -> String {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    let no_tag = last.split(':').next().unwrap_or(last);
    no_tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

fn deployment(a: &DeploymentArgs) -> Value {
    let labels = json!({"app": a.name});
    let containers: Vec<Value> = a
        .image
        .iter()
        .map(|image| {
            let mut c = Map::new();
            c.insert("name".into(), json!(container_name(image)));
            c.insert("image".into(), json!(image));
            if !a.command.is_empty() {
                c.insert("command".into(), json!(a.command));
            }
            if a.port >= 0 {
                c.insert("ports".into(), json!([{"containerPort": a.port}]));
            }
            c.insert("resources".into(), json!({}));
            Value::Object(c)
        })
        .collect();
    json!({
        "kind": "Deployment",
        "apiVersion": "apps/v1",
        "metadata": {"name": a.name, "creationTimestamp": null, "labels": labels},
        "spec": {
            "replicas": a.replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"creationTimestamp": null, "labels": labels},
                "spec": {"containers": containers}
            },
            "strategy": {}
        },
        "status": {}
    })
}

fn service(type_: &str, a: &ServiceArgs) -> anyhow::Result<Value> {
    let mut ports = Vec::new();
    for spec in &a.tcp {
        let (port, target) = spec.split_once(':').unwrap_or((spec, spec));
        let port: i32 = port.parse().map_err(|_| {
            anyhow::anyhow!(
                "error parsing port number {spec}: strconv.Atoi: parsing {port:?}: invalid syntax"
            )
        })?;
        let name = if spec.contains(':') {
            format!("{port}-{target}")
        } else {
            port.to_string()
        };
        let target: Value = match target.parse::<i32>() {
            Ok(n) => json!(n),
            Err(_) => json!(target),
        };
        let mut p = Map::new();
        p.insert("name".into(), json!(name));
        p.insert("protocol".into(), json!("TCP"));
        p.insert("port".into(), json!(port));
        p.insert("targetPort".into(), target);
        if a.node_port > 0 {
            p.insert("nodePort".into(), json!(a.node_port));
        }
        ports.push(Value::Object(p));
    }
    let mut spec = Map::new();
    if !ports.is_empty() {
        spec.insert("ports".into(), json!(ports));
    }
    spec.insert("selector".into(), json!({"app": a.name}));
    if let Some(ip) = &a.clusterip {
        spec.insert("clusterIP".into(), json!(ip));
    }
    spec.insert("type".into(), json!(type_));
    Ok(json!({
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {"name": a.name, "creationTimestamp": null, "labels": {"app": a.name}},
        "spec": spec,
        "status": {"loadBalancer": {}}
    }))
}

/// The data of `--from-literal`, `--from-file` and `--from-env-file`: text and binary.
fn collect_data(a: &DataArgs) -> anyhow::Result<(Map<String, Value>, Map<String, Value>)> {
    let mut data: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |k: String, v: Vec<u8>| -> anyhow::Result<()> {
        if data.iter().any(|(dk, _)| dk == &k) {
            anyhow::bail!("cannot add key {k}, another key by that name already exists in Data for ConfigMap \"{}\"", a.name);
        }
        data.push((k, v));
        Ok(())
    };
    for lit in &a.from_literal {
        let Some((k, v)) = lit.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            anyhow::bail!("invalid literal source {lit}, expected key=value");
        };
        add(k.to_string(), v.as_bytes().to_vec())?;
    }
    for f in &a.from_file {
        let (key, path) = match f.split_once('=') {
            Some((k, p)) => (Some(k.to_string()), p),
            None => (None, f.as_str()),
        };
        let p = Path::new(path);
        if !p.exists() {
            anyhow::bail!("error reading {path}: no such file or directory");
        }
        if p.is_dir() {
            if key.is_some() {
                anyhow::bail!("cannot give a key name for a directory path");
            }
            let mut entries: Vec<_> = std::fs::read_dir(p)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|e| e.is_file())
                .collect();
            entries.sort();
            for e in entries {
                let name = e
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                add(name, std::fs::read(&e)?)?;
            }
        } else {
            let name = key.unwrap_or_else(|| {
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
            add(name, std::fs::read(p)?)?;
        }
    }
    for f in &a.from_env_file {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading {f}"))?;
        for line in text.lines() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line.split_once('=').unwrap_or((line, ""));
            let v = if line.contains('=') {
                v.to_string()
            } else {
                std::env::var(k).unwrap_or_default()
            };
            add(k.to_string(), v.into_bytes())?;
        }
    }
    data.sort_by(|a, b| a.0.cmp(&b.0));
    let mut text = Map::new();
    let mut binary = Map::new();
    for (k, v) in data {
        match String::from_utf8(v) {
            Ok(s) => {
                text.insert(k, json!(s));
            }
            Err(e) => {
                binary.insert(k, json!(e.into_bytes()));
            }
        }
    }
    Ok((text, binary))
}

fn data_object(kind: &str, a: &DataArgs) -> anyhow::Result<Value> {
    let (text, binary) = collect_data(a)?;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut obj = Map::new();
    obj.insert("kind".into(), json!(kind));
    obj.insert("apiVersion".into(), json!("v1"));
    obj.insert(
        "metadata".into(),
        json!({"name": a.name, "creationTimestamp": null}),
    );
    if kind == "ConfigMap" {
        if !text.is_empty() {
            obj.insert("data".into(), Value::Object(text));
        }
        if !binary.is_empty() {
            let enc: Map<String, Value> = binary
                .into_iter()
                .map(|(k, v)| {
                    let bytes: Vec<u8> = serde_json::from_value(v).unwrap_or_default();
                    (k, json!(b64(&bytes)))
                })
                .collect();
            obj.insert("binaryData".into(), Value::Object(enc));
        }
    } else {
        let mut all: Vec<(String, Vec<u8>)> = text
            .into_iter()
            .map(|(k, v)| (k, v.as_str().unwrap_or_default().as_bytes().to_vec()))
            .chain(
                binary
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::from_value(v).unwrap_or_default())),
            )
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        if !all.is_empty() {
            let enc: Map<String, Value> =
                all.into_iter().map(|(k, v)| (k, json!(b64(&v)))).collect();
            obj.insert("data".into(), Value::Object(enc));
        }
        if let Some(t) = a.type_.as_deref().filter(|t| !t.is_empty()) {
            obj.insert("type".into(), json!(t));
        }
    }
    Ok(Value::Object(obj))
}

fn job(a: &JobArgs) -> anyhow::Result<Value> {
    if a.from.is_some() {
        anyhow::bail!("--from is not supported by rkube's kubectl yet");
    }
    let Some(image) = &a.image else {
        anyhow::bail!("either --image or --from must be specified");
    };
    let mut c = Map::new();
    c.insert("name".into(), json!(a.name));
    c.insert("image".into(), json!(image));
    if !a.command.is_empty() {
        c.insert("command".into(), json!(a.command));
    }
    c.insert("resources".into(), json!({}));
    Ok(json!({
        "kind": "Job",
        "apiVersion": "batch/v1",
        "metadata": {"name": a.name, "creationTimestamp": null},
        "spec": {"template": {"metadata": {"creationTimestamp": null}, "spec": {"containers": [c], "restartPolicy": "Never"}}},
        "status": {}
    }))
}

async fn token(ctx: &Ctx, a: &TokenArgs) -> anyhow::Result<()> {
    let ns = ctx.namespace().await?;
    let client = ctx.client().await?;
    let mut spec = Map::new();
    spec.insert("audiences".into(), json!(a.audience));
    if let Some(d) = &a.duration {
        let secs = super::wait::parse_duration(d)?.as_secs();
        spec.insert("expirationSeconds".into(), json!(secs));
    }
    let req =
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
    let url = format!(
        "/api/v1/namespaces/{ns}/serviceaccounts/{}/token",
        a.service_account
    );
    let resp = write::create(&client, &url, &req, DryRun::None, &[])
        .await
        .map_err(|e| match errors::api_status(&e) {
            Some(s) => anyhow::anyhow!("failed to create token: {}", s.message),
            None => e,
        })?;
    println!("{}", resp["status"]["token"].as_str().unwrap_or_default());
    Ok(())
}
