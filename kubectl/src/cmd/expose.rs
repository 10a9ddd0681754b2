//! `kubectl expose TYPE NAME --port --target-port --type --name`: a Service selecting
//! what a Deployment, ReplicaSet, ReplicationController, Pod or Service selects.

use serde_json::{json, Map, Value};

use crate::context::Ctx;
use crate::errors;
use crate::resources::parse_type_names;
use crate::write::{self, DryRun};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// TYPE NAME or TYPE/NAME
    pub resources: Vec<String>,
    /// The port that the service should serve on.
    #[arg(long)]
    pub port: Option<String>,
    /// Name or number for the port on the container that the service should direct traffic to.
    #[arg(long = "target-port")]
    pub target_port: Option<String>,
    /// The network protocol for the service to be created.
    #[arg(long)]
    pub protocol: Option<String>,
    /// Type for this service: ClusterIP, NodePort, LoadBalancer, or ExternalName.
    #[arg(long = "type")]
    pub type_: Option<String>,
    /// The name for the newly created object.
    #[arg(long)]
    pub name: Option<String>,
    /// A label selector to use for this service.
    #[arg(long)]
    pub selector: Option<String>,
    /// Labels to apply to the service created by this call.
    #[arg(short = 'l', long)]
    pub labels: Option<String>,
    /// ClusterIP to be assigned to the service.
    #[arg(long = "cluster-ip")]
    pub cluster_ip: Option<String>,
    #[command(flatten)]
    pub common: super::create::Common,
}

fn parse_map(s: &str) -> anyhow::Result<Map<String, Value>> {
    let mut m = Map::new();
    for pair in s.split(',') {
        let Some((k, v)) = pair.split_once('=') else {
            anyhow::bail!("invalid label spec: {pair}");
        };
        m.insert(k.to_string(), json!(v));
    }
    Ok(m)
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    if args.resources.is_empty() {
        return errors::usage(
            "expose",
            "You must provide one or more resources by argument or filename.\nExample resource specifications include:\n   '-f rsrc.yaml'\n   '--filename=rsrc.json'\n   '<resource> <name>'\n   '<resource>'",
        );
    }
    let sel = parse_type_names(&args.resources)?;
    let discovery = ctx.discovery().await?;
    let first = &sel[0];
    let res = discovery.resolve(&first.type_arg)?;
    let Some(name) = first.names.first() else {
        anyhow::bail!("resource(s) were provided, but no name was specified");
    };
    let ns = ctx.namespace().await?;
    let client = ctx.client().await?;
    let obj = write::get(&client, &res.object_url(Some(&ns), name)).await?;
    let kind = res.kind.as_str();
    if !matches!(
        kind,
        "Deployment" | "ReplicaSet" | "ReplicationController" | "Pod" | "Service"
    ) {
        anyhow::bail!(
            "cannot expose a {} {}",
            res.kind,
            if res.group.is_empty() {
                String::new()
            } else {
                res.group.to_string()
            }
        );
    }
    let selector: Map<String, Value> = match &args.selector {
        Some(s) => parse_map(s)?,
        None => {
            let v = match kind {
                "Pod" => obj["metadata"]["labels"].clone(),
                "Service" | "ReplicationController" => obj["spec"]["selector"].clone(),
                _ => {
                    if obj["spec"]["selector"]["matchExpressions"]
                        .as_array()
                        .is_some_and(|a| !a.is_empty())
                    {
                        anyhow::bail!("couldn't retrieve selectors via --selector flag or introspection: the Deployment has a non-map selector");
                    }
                    obj["spec"]["selector"]["matchLabels"].clone()
                }
            };
            match v {
                Value::Object(m) if !m.is_empty() => m,
                _ => anyhow::bail!("couldn't retrieve selectors via --selector flag or introspection: the {} has no selector", res.kind),
            }
        }
    };
    let protocol = args.protocol.clone().unwrap_or_else(|| "TCP".into());
    // Ports: --port, else the object's ports.
    let ports: Vec<(i64, Option<String>, String)> = match &args.port {
        Some(p) => {
            let n: i64 = p
                .parse()
                .map_err(|_| anyhow::anyhow!("strconv.Atoi: parsing {p:?}: invalid syntax"))?;
            vec![(n, None, protocol.clone())]
        }
        None => {
            let containers = match kind {
                "Pod" => obj["spec"]["containers"].clone(),
                "Service" => Value::Null,
                _ => obj["spec"]["template"]["spec"]["containers"].clone(),
            };
            let mut out = Vec::new();
            if kind == "Service" {
                for p in obj["spec"]["ports"].as_array().cloned().unwrap_or_default() {
                    out.push((
                        p["port"].as_i64().unwrap_or_default(),
                        p["name"].as_str().map(str::to_string),
                        p["protocol"].as_str().unwrap_or("TCP").to_string(),
                    ));
                }
            } else {
                for c in containers.as_array().cloned().unwrap_or_default() {
                    for p in c["ports"].as_array().cloned().unwrap_or_default() {
                        out.push((
                            p["containerPort"].as_i64().unwrap_or_default(),
                            p["name"].as_str().map(str::to_string),
                            p["protocol"].as_str().unwrap_or("TCP").to_string(),
                        ));
                    }
                }
            }
            if out.is_empty() {
                anyhow::bail!("couldn't find port via --port flag or introspection");
            }
            out
        }
    };
    let many = ports.len() > 1;
    let service_ports: Vec<Value> = ports
        .iter()
        .enumerate()
        .map(|(i, (port, pname, proto))| {
            let mut p = Map::new();
            if many {
                p.insert(
                    "name".into(),
                    json!(pname.clone().unwrap_or_else(|| format!("port-{}", i + 1))),
                );
            }
            p.insert("protocol".into(), json!(proto));
            p.insert("port".into(), json!(port));
            let target = match &args.target_port {
                Some(t) => match t.parse::<i64>() {
                    Ok(n) => json!(n),
                    Err(_) => json!(t),
                },
                None => json!(port),
            };
            p.insert("targetPort".into(), target);
            Value::Object(p)
        })
        .collect();
    let labels = match &args.labels {
        Some(l) => Value::Object(parse_map(l)?),
        None => obj["metadata"]["labels"].clone(),
    };
    let svc_name = args.name.clone().unwrap_or_else(|| name.clone());
    let mut meta = Map::new();
    meta.insert("name".into(), json!(svc_name));
    meta.insert("creationTimestamp".into(), Value::Null);
    if labels.is_object() {
        meta.insert("labels".into(), labels);
    }
    let mut spec = Map::new();
    spec.insert("ports".into(), json!(service_ports));
    spec.insert("selector".into(), Value::Object(selector));
    if let Some(ip) = &args.cluster_ip {
        spec.insert("clusterIP".into(), json!(ip));
    }
    if let Some(t) = &args.type_ {
        spec.insert("type".into(), json!(t));
    }
    let svc = json!({
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": meta,
        "spec": spec,
        "status": {"loadBalancer": {}}
    });
    let dry = args.common.dry_run.get()?;
    let output = write::parse_output(args.common.output.as_deref())?;
    let svc_res = discovery.resolve("services")?;
    if dry == DryRun::Client {
        return super::create::print_generated(output.as_ref(), &svc, &svc_res, "exposed", dry);
    }
    let created = write::create(
        &client,
        &svc_res.collection_url(Some(&ns)),
        &super::create::strip_nulls(svc),
        dry,
        &[("fieldManager", &args.common.field_manager)],
    )
    .await?;
    write::print_result(output.as_ref(), &created, &svc_res, "exposed", dry)
}
