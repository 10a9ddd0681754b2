//! `kubectl describe`: a page per object, laid out as the stock kubectl lays it out
//! (one tab-aligned text, `Labels:` one per line, Events at the end) for the common
//! kinds — pods, deployments, replicasets, services, nodes, namespaces, configmaps,
//! secrets, service accounts — and a generic field dump for the rest. A name that
//! matches no object describes every object whose name starts with it, as stock.

use apimachinery::quantity::Quantity;
use apimachinery::quota::{self, ResourceList};
use serde_json::Value;

use crate::context::Ctx;
use crate::errors::{self, Exit};
use crate::printers::table::{age, format_labels};
use crate::printers::tabwriter::TabWriter;
use crate::resources::{parse_type_names, ResourceInfo};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// TYPE [NAME_PREFIX] or TYPE/NAME
    pub resources: Vec<String>,
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    #[arg(short = 'A', long = "all-namespaces")]
    pub all_namespaces: bool,
    /// If true, display events related to the described object.
    #[arg(long = "show-events", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub show_events: bool,
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    if args.resources.is_empty() {
        anyhow::bail!("You must specify the type of resource to describe. Use \"kubectl api-resources\" for a complete list of supported resources.");
    }
    let discovery = ctx.discovery().await?;
    let namespace = ctx.namespace().await?;
    let client = ctx.client().await?;
    // Each object, and whether it was found by name prefix (printed with a single
    // trailing blank line, as stock, instead of the separator between objects).
    let mut objects: Vec<(Value, ResourceInfo, bool)> = Vec::new();
    let mut failed = false;
    let mut any_named = false;
    let mut last_res = None;
    for sel in parse_type_names(&args.resources)? {
        let res = discovery.resolve(&sel.type_arg)?;
        last_res = Some(res.clone());
        let ns = (res.namespaced && !args.all_namespaces).then_some(namespace.as_str());
        let list_url = super::with_query(
            &res.collection_url(ns),
            &[("labelSelector", args.selector.as_deref().unwrap_or(""))],
        );
        if sel.names.is_empty() {
            let list = super::get_json(&client, &list_url).await?;
            objects.extend(
                list["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|o| (o.clone(), res.clone(), false)),
            );
            continue;
        }
        any_named = true;
        for name in &sel.names {
            match super::get_json(&client, &res.object_url(ns, name)).await {
                Ok(o) => objects.push((o, res.clone(), false)),
                Err(e) if errors::is_not_found(&e) => {
                    let list = super::get_json(&client, &list_url).await?;
                    let matches: Vec<Value> = list["items"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|o| {
                            o["metadata"]["name"]
                                .as_str()
                                .is_some_and(|n| n.starts_with(name.as_str()))
                        })
                        .cloned()
                        .collect();
                    if matches.is_empty() {
                        eprintln!("{}", errors::message(&e));
                        failed = true;
                    }
                    objects.extend(matches.into_iter().map(|o| (o, res.clone(), true)));
                }
                Err(e) => return Err(e),
            }
        }
    }
    if objects.is_empty() && !failed && !any_named {
        // The stock message names the namespace even for cluster-scoped types.
        let _ = last_res;
        let ns = (!args.all_namespaces).then_some(namespace.as_str());
        eprintln!("{}", crate::printers::no_resources_message(ns));
    }
    let mut first = true;
    for (obj, res, by_prefix) in &objects {
        let events = if args.show_events {
            events_for(&client, obj).await.unwrap_or_default()
        } else {
            Vec::new()
        };
        let text = describe(&client, obj, res, &events, args.show_events).await?;
        if *by_prefix {
            println!("{text}");
            continue;
        }
        if !first {
            print!("\n\n");
        }
        first = false;
        print!("{text}");
    }
    if failed {
        return Err(Exit(1).into());
    }
    Ok(())
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

fn or_none(v: &Value) -> String {
    match v {
        Value::Null => "<none>".into(),
        Value::String(x) if x.is_empty() => "<none>".into(),
        Value::String(x) => x.clone(),
        other => other.to_string(),
    }
}

/// How much of an annotation's value describe shows.
const MAX_ANNOTATION_LEN: usize = 140;

/// `Name:\tvalue`-style lines for one describe page.
struct Page {
    tw: TabWriter,
}

impl Page {
    fn new() -> Page {
        Page {
            tw: TabWriter::describe(),
        }
    }

    /// A line at `level` (two spaces each): `key:\tvalue` or a bare line.
    fn line(&mut self, level: usize, text: &str) {
        let indent = "  ".repeat(level);
        self.tw.write(&format!("{indent}{text}\n"));
    }

    fn field(&mut self, level: usize, key: &str, value: &str) {
        self.line(level, &format!("{key}:\t{value}"));
    }

    /// `Labels:\ta=b` then `\tc=d` lines; `<none>` for none.
    fn map(&mut self, level: usize, key: &str, map: &Value, skip: &[&str]) {
        let mut entries: Vec<(&String, &Value)> = match map {
            Value::Object(m) => m
                .iter()
                .filter(|(k, _)| !skip.contains(&k.as_str()))
                .collect(),
            _ => Vec::new(),
        };
        entries.sort_by(|a, b| a.0.cmp(b.0));
        if entries.is_empty() {
            self.field(level, key, "<none>");
            return;
        }
        let annotations = key == "Annotations";
        let sep = if annotations { ": " } else { "=" };
        for (i, (k, v)) in entries.iter().enumerate() {
            let value = s(v);
            // Long or multi-line annotations go on their own lines, cut at 140
            // characters, as stock.
            let long =
                annotations && (value.chars().count() > MAX_ANNOTATION_LEN || value.contains('\n'));
            let text = if long {
                format!("{k}:")
            } else {
                format!("{k}{sep}{value}")
            };
            if i == 0 {
                self.field(level, key, &text);
            } else {
                self.line(level, &format!("\t{text}"));
            }
            if long {
                // Stock shows 138 characters of a longer value, then `...`.
                let mut shown: String = value.chars().take(MAX_ANNOTATION_LEN - 2).collect();
                if value.chars().count() > MAX_ANNOTATION_LEN {
                    shown.push_str("...");
                }
                for l in shown.split('\n') {
                    self.line(level, &format!("\t  {l}"));
                }
            }
        }
    }

    fn meta(&mut self, obj: &Value, namespaced: bool) {
        let m = &obj["metadata"];
        self.field(0, "Name", s(&m["name"]));
        if namespaced {
            self.field(0, "Namespace", s(&m["namespace"]));
        }
        self.map(0, "Labels", &m["labels"], &[]);
        self.map(
            0,
            "Annotations",
            &m["annotations"],
            &["kubectl.kubernetes.io/last-applied-configuration"],
        );
    }

    fn events(&mut self, events: &[Value], show: bool) {
        if !show {
            return;
        }
        if events.is_empty() {
            self.field(0, "Events", "<none>");
            return;
        }
        self.line(0, "Events:");
        self.line(1, "Type\tReason\tAge\tFrom\tMessage");
        self.line(1, "----\t------\t----\t----\t-------");
        for e in events {
            let count = e["count"]
                .as_i64()
                .or_else(|| e["series"]["count"].as_i64())
                .unwrap_or(1);
            let first = e["firstTimestamp"]
                .as_str()
                .or(e["eventTime"].as_str())
                .or(e["metadata"]["creationTimestamp"].as_str());
            let last = e["lastTimestamp"]
                .as_str()
                .or(e["series"]["lastObservedTime"].as_str())
                .or(first);
            let age_text = if count > 1 {
                format!("{} (x{count} over {})", age(last), age(first))
            } else {
                age(first)
            };
            // The component only, as kubectl 1.32 prints it (`kubelet`, not `kubelet, node-1`).
            let from = [s(&e["source"]["component"]), s(&e["reportingComponent"])]
                .into_iter()
                .find(|x| !x.is_empty())
                .unwrap_or_default()
                .to_string();
            self.line(
                1,
                &format!(
                    "{}\t{}\t{age_text}\t{from}\t{}",
                    s(&e["type"]),
                    s(&e["reason"]),
                    s(&e["message"]).trim()
                ),
            );
        }
    }

    fn finish(mut self) -> String {
        self.tw.flush()
    }
}

async fn events_for(client: &kube::Client, obj: &Value) -> anyhow::Result<Vec<Value>> {
    let m = &obj["metadata"];
    // A kubelet refers to its Node by name where the uid belongs, the node controller by
    // uid: a node's page shows both, as the stock kubectl's does.
    let mut uids = vec![s(&m["uid"])];
    if obj["kind"].as_str() == Some("Node") {
        uids.push(s(&m["name"]));
    }
    let mut events: Vec<Value> = Vec::new();
    for uid in uids {
        let mut selector = format!("involvedObject.name={},involvedObject.uid={uid}", s(&m["name"]));
        let url = match m["namespace"].as_str() {
            Some(ns) => {
                selector.push_str(&format!(",involvedObject.namespace={ns}"));
                format!("/api/v1/namespaces/{ns}/events")
            }
            None => "/api/v1/events".into(),
        };
        let list = super::get_json(client, &super::with_query(&url, &[("fieldSelector", &selector)])).await?;
        events.extend(list["items"].as_array().cloned().unwrap_or_default());
    }
    let key = |e: &Value| {
        e["lastTimestamp"]
            .as_str()
            .or(e["eventTime"].as_str())
            .or(e["metadata"]["creationTimestamp"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    events.sort_by_key(key);
    Ok(events)
}

/// `Sun, 22 Nov 2026 14:09:47 +0000`: the time format of describe pages.
fn time_text(v: &Value) -> String {
    match v
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    {
        Some(t) => t.format("%a, %d %b %Y %H:%M:%S %z").to_string(),
        None => "<unknown>".into(),
    }
}

async fn describe(
    client: &kube::Client,
    obj: &Value,
    res: &ResourceInfo,
    events: &[Value],
    show_events: bool,
) -> anyhow::Result<String> {
    let mut p = Page::new();
    match (res.group.as_str(), res.kind.as_str()) {
        ("", "ConfigMap") => {
            p.meta(obj, true);
            p.line(0, "");
            p.line(0, "Data");
            p.line(0, "====");
            let mut keys: Vec<&String> = obj["data"]
                .as_object()
                .map(|m| m.keys().collect())
                .unwrap_or_default();
            keys.sort();
            for k in keys {
                p.line(0, &format!("{k}:"));
                p.line(0, "----");
                p.line(0, s(&obj["data"][k]));
                p.line(0, "");
            }
            p.line(0, "");
            p.line(0, "BinaryData");
            p.line(0, "====");
            let mut keys: Vec<&String> = obj["binaryData"]
                .as_object()
                .map(|m| m.keys().collect())
                .unwrap_or_default();
            keys.sort();
            for k in keys {
                let len = base64_len(s(&obj["binaryData"][k]));
                p.line(0, &format!("{k}: {len} bytes"));
            }
            p.line(0, "");
            p.events(events, show_events);
        }
        ("", "Secret") => {
            p.meta(obj, true);
            p.line(0, "");
            p.field(0, "Type", s(&obj["type"]));
            p.line(0, "");
            p.line(0, "Data");
            p.line(0, "====");
            let mut keys: Vec<&String> = obj["data"]
                .as_object()
                .map(|m| m.keys().collect())
                .unwrap_or_default();
            keys.sort();
            for k in keys {
                p.line(
                    0,
                    &format!("{k}:\t{} bytes", base64_len(s(&obj["data"][k]))),
                );
            }
        }
        ("", "Namespace") => {
            p.field(0, "Name", s(&obj["metadata"]["name"]));
            p.map(0, "Labels", &obj["metadata"]["labels"], &[]);
            p.map(
                0,
                "Annotations",
                &obj["metadata"]["annotations"],
                &["kubectl.kubernetes.io/last-applied-configuration"],
            );
            p.field(0, "Status", s(&obj["status"]["phase"]));
            let name = s(&obj["metadata"]["name"]);
            let quotas =
                super::get_json(client, &format!("/api/v1/namespaces/{name}/resourcequotas"))
                    .await?;
            let limits =
                super::get_json(client, &format!("/api/v1/namespaces/{name}/limitranges")).await?;
            p.line(0, "");
            if quotas["items"].as_array().is_none_or(|a| a.is_empty()) {
                p.line(0, "No resource quota.");
            } else {
                for q in quotas["items"].as_array().into_iter().flatten() {
                    p.line(0, "Resource Quotas");
                    p.line(1, &format!("Name:\t{}", s(&q["metadata"]["name"])));
                    p.line(1, "Resource\tUsed\tHard");
                    p.line(1, "--------\t---\t---");
                    let mut keys: Vec<&String> = q["status"]["hard"]
                        .as_object()
                        .map(|m| m.keys().collect())
                        .unwrap_or_default();
                    keys.sort();
                    for k in keys {
                        p.line(
                            1,
                            &format!(
                                "{k}\t{}\t{}",
                                s(&q["status"]["used"][k]),
                                s(&q["status"]["hard"][k])
                            ),
                        );
                    }
                }
            }
            p.line(0, "");
            if limits["items"].as_array().is_none_or(|a| a.is_empty()) {
                p.line(0, "No LimitRange resource.");
            } else {
                p.line(0, "Resource Limits");
            }
        }
        ("", "ServiceAccount") => {
            p.meta(obj, true);
            let names = |v: &Value| -> String {
                let n: Vec<&str> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|x| s(&x["name"]))
                    .collect();
                if n.is_empty() {
                    "<none>".into()
                } else {
                    n.join(", ")
                }
            };
            p.field(0, "Image pull secrets", &names(&obj["imagePullSecrets"]));
            p.field(0, "Mountable secrets", &names(&obj["secrets"]));
            p.field(0, "Tokens", "<none>");
            p.events(events, show_events);
        }
        ("", "Service") => {
            describe_service(client, &mut p, obj).await?;
            p.events(events, show_events);
        }
        ("", "Pod") => {
            describe_pod(&mut p, obj);
            p.events(events, show_events);
        }
        ("apps", "Deployment") => {
            describe_deployment(client, &mut p, obj).await?;
            p.events(events, show_events);
        }
        ("apps", "ReplicaSet") => {
            describe_replicaset(client, &mut p, obj).await?;
            p.events(events, show_events);
        }
        ("", "Node") => {
            let name = s(&obj["metadata"]["name"]);
            let lease = super::get_json(client, &format!("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}")).await.map_err(|e| match e.downcast_ref::<kube::Error>() {
                Some(kube::Error::Api(status)) => status.message.clone(),
                _ => e.to_string(),
            });
            // As the stock kubectl: the node's pods that have not finished, from every namespace.
            let selector = format!("spec.nodeName={name},status.phase!=Succeeded,status.phase!=Failed");
            let pods = super::get_json(client, &super::with_query("/api/v1/pods", &[("fieldSelector", &selector)])).await.ok();
            describe_node(&mut p, obj, lease, pods.as_ref().and_then(|l| l["items"].as_array()).map(Vec::as_slice));
            p.events(events, show_events);
        }
        _ => {
            generic(&mut p, obj, res);
            p.events(events, show_events);
        }
    }
    Ok(p.finish())
}

fn base64_len(data: &str) -> usize {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(data)
        .map(|d| d.len())
        .unwrap_or(0)
}

async fn describe_service(client: &kube::Client, p: &mut Page, obj: &Value) -> anyhow::Result<()> {
    p.meta(obj, true);
    let spec = &obj["spec"];
    let selector = format_selector_map(&spec["selector"]);
    p.field(0, "Selector", &selector);
    p.field(0, "Type", s(&spec["type"]));
    if let Some(policy) = spec["ipFamilyPolicy"].as_str() {
        p.field(0, "IP Family Policy", policy);
    }
    let fams: Vec<&str> = spec["ipFamilies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !fams.is_empty() {
        p.field(0, "IP Families", &fams.join(","));
    }
    p.field(0, "IP", s(&spec["clusterIP"]));
    let ips: Vec<&str> = spec["clusterIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !ips.is_empty() {
        p.field(0, "IPs", &ips.join(","));
    }
    let ingress: Vec<&str> = obj["status"]["loadBalancer"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["ip"].as_str().or(i["hostname"].as_str()))
        .collect();
    if !ingress.is_empty() {
        p.field(0, "LoadBalancer Ingress", &ingress.join(", "));
    }
    let name = s(&obj["metadata"]["name"]);
    let ns = s(&obj["metadata"]["namespace"]);
    let slices = super::get_json(
        client,
        &super::with_query(
            &format!("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"),
            &[(
                "labelSelector",
                &format!("kubernetes.io/service-name={name}"),
            )],
        ),
    )
    .await
    .unwrap_or(Value::Null);
    for port in spec["ports"].as_array().into_iter().flatten() {
        let pname = port["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .unwrap_or("<unset>");
        let proto = port["protocol"].as_str().unwrap_or("TCP");
        p.field(0, "Port", &format!("{pname}  {}/{proto}", port["port"]));
        let target = match &port["targetPort"] {
            Value::Number(n) => format!("{n}/{proto}"),
            Value::String(t) => format!("{t}/{proto}"),
            _ => format!("{}/{proto}", port["port"]),
        };
        p.field(0, "TargetPort", &target);
        if let Some(np) = port["nodePort"].as_i64() {
            p.field(0, "NodePort", &format!("{pname}  {np}/{proto}"));
        }
        let mut eps = Vec::new();
        for slice in slices["items"].as_array().into_iter().flatten() {
            let slice_port = slice["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|sp| s(&sp["name"]) == s(&port["name"]));
            let Some(sp) = slice_port.and_then(|sp| sp["port"].as_i64()) else {
                continue;
            };
            for ep in slice["endpoints"].as_array().into_iter().flatten() {
                if ep["conditions"]["ready"] == false {
                    continue;
                }
                for a in ep["addresses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    eps.push(format!("{a}:{sp}"));
                }
            }
        }
        p.field(0, "Endpoints", &eps.join(","));
    }
    if let Some(aff) = spec["sessionAffinity"].as_str() {
        p.field(0, "Session Affinity", aff);
    }
    if let Some(pol) = spec["externalTrafficPolicy"].as_str() {
        p.field(0, "External Traffic Policy", pol);
    }
    if let Some(pol) = spec["internalTrafficPolicy"].as_str() {
        p.field(0, "Internal Traffic Policy", pol);
    }
    Ok(())
}

fn format_selector_map(v: &Value) -> String {
    match v {
        Value::Object(m) if !m.is_empty() => {
            let mut e: Vec<_> = m.iter().collect();
            e.sort_by(|a, b| a.0.cmp(b.0));
            e.iter()
                .map(|(k, v)| format!("{k}={}", s(v)))
                .collect::<Vec<_>>()
                .join(",")
        }
        _ => "<none>".into(),
    }
}

/// A LabelSelector as `a=b,c in (x,y)`.
fn format_label_selector(sel: &Value) -> String {
    let mut parts = Vec::new();
    if let Value::Object(m) = &sel["matchLabels"] {
        let mut e: Vec<_> = m.iter().collect();
        e.sort_by(|a, b| a.0.cmp(b.0));
        parts.extend(e.iter().map(|(k, v)| format!("{k}={}", s(v))));
    }
    for expr in sel["matchExpressions"].as_array().into_iter().flatten() {
        let values: Vec<&str> = expr["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let key = s(&expr["key"]);
        parts.push(match s(&expr["operator"]) {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            op => format!("{key} {op}"),
        });
    }
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

fn controlled_by(p: &mut Page, obj: &Value) {
    for owner in obj["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if owner["controller"] == true {
            p.field(
                0,
                "Controlled By",
                &format!("{}/{}", s(&owner["kind"]), s(&owner["name"])),
            );
        }
    }
}

fn describe_pod(p: &mut Page, obj: &Value) {
    let m = &obj["metadata"];
    let spec = &obj["spec"];
    let status = &obj["status"];
    p.field(0, "Name", s(&m["name"]));
    p.field(0, "Namespace", s(&m["namespace"]));
    p.field(
        0,
        "Priority",
        &spec["priority"].as_i64().unwrap_or(0).to_string(),
    );
    if let Some(pc) = spec["priorityClassName"].as_str() {
        p.field(0, "Priority Class Name", pc);
    }
    p.field(0, "Service Account", s(&spec["serviceAccountName"]));
    let node = match (spec["nodeName"].as_str(), status["hostIP"].as_str()) {
        (Some(n), Some(ip)) => format!("{n}/{ip}"),
        (Some(n), None) => n.to_string(),
        _ => "<none>".into(),
    };
    p.field(0, "Node", &node);
    if status["startTime"].is_string() {
        p.field(0, "Start Time", &time_text(&status["startTime"]));
    }
    p.map(0, "Labels", &m["labels"], &[]);
    p.map(0, "Annotations", &m["annotations"], &[]);
    if m["deletionTimestamp"].is_string() {
        p.field(
            0,
            "Status",
            &format!(
                "Terminating (lasts {})",
                age(m["deletionTimestamp"].as_str())
            ),
        );
    } else {
        p.field(0, "Status", s(&status["phase"]));
    }
    if let Some(r) = status["reason"].as_str() {
        p.field(0, "Reason", r);
    }
    if let Some(msg) = status["message"].as_str() {
        p.field(0, "Message", msg);
    }
    p.field(0, "IP", s(&status["podIP"]));
    let ips: Vec<&str> = status["podIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| s(&i["ip"]))
        .collect();
    if ips.is_empty() {
        p.field(0, "IPs", "<none>");
    } else {
        p.line(0, "IPs:");
        for ip in ips {
            p.field(1, "IP", ip);
        }
    }
    controlled_by(p, obj);
    let statuses = |key: &str| status[key].as_array().cloned().unwrap_or_default();
    if let Some(init) = spec["initContainers"].as_array().filter(|a| !a.is_empty()) {
        p.line(0, "Init Containers:");
        for c in init {
            container(p, c, &statuses("initContainerStatuses"));
        }
    }
    p.line(0, "Containers:");
    for c in spec["containers"].as_array().into_iter().flatten() {
        container(p, c, &statuses("containerStatuses"));
    }
    if let Some(conds) = status["conditions"].as_array().filter(|a| !a.is_empty()) {
        p.line(0, "Conditions:");
        p.line(1, "Type\tStatus");
        for c in conds {
            p.line(1, &format!("{} \t{} ", s(&c["type"]), s(&c["status"])));
        }
    }
    volumes(p, &spec["volumes"], 0);
    let qos = status["qosClass"].as_str().unwrap_or("BestEffort");
    p.field(0, "QoS Class", qos);
    p.field(0, "Node-Selectors", &node_selectors(&spec["nodeSelector"]));
    tolerations(p, &spec["tolerations"], 0);
}

fn node_selectors(v: &Value) -> String {
    format_selector_map(v)
}

/// The `Optional: true|false` line of a volume source (false when unset).
fn optional_field(p: &mut Page, level: usize, source: &Value) {
    p.field(level, "Optional", &source["optional"].as_bool().unwrap_or(false).to_string());
}

fn tolerations(p: &mut Page, v: &Value, level: usize) {
    let items: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let mut text = s(&t["key"]).to_string();
            if let Some(val) = t["value"].as_str().filter(|x| !x.is_empty()) {
                text.push('=');
                text.push_str(val);
            }
            if let Some(e) = t["effect"].as_str().filter(|x| !x.is_empty()) {
                text.push(':');
                text.push_str(e);
            }
            if t["operator"] == "Exists" && t["value"].as_str().is_none_or(str::is_empty) {
                if text.is_empty() {
                    text = "op=Exists".into();
                } else {
                    text.push_str(" op=Exists");
                }
            }
            if let Some(secs) = t["tolerationSeconds"].as_i64() {
                text.push_str(&format!(" for {secs}s"));
            }
            text
        })
        .collect();
    if items.is_empty() {
        p.field(level, "Tolerations", "<none>");
        return;
    }
    for (i, t) in items.iter().enumerate() {
        if i == 0 {
            p.field(level, "Tolerations", t);
        } else {
            p.line(level, &format!("\t{t}"));
        }
    }
}

fn container(p: &mut Page, c: &Value, statuses: &[Value]) {
    let name = s(&c["name"]);
    let st = statuses.iter().find(|x| s(&x["name"]) == name);
    p.line(1, &format!("{name}:"));
    if let Some(st) = st {
        p.field(2, "Container ID", s(&st["containerID"]));
    }
    p.field(2, "Image", s(&c["image"]));
    if let Some(st) = st {
        p.field(2, "Image ID", s(&st["imageID"]));
    }
    ports(p, &c["ports"], 2);
    command_lines(p, "Command", &c["command"]);
    command_lines(p, "Args", &c["args"]);
    if let Some(st) = st {
        state(p, "State", &st["state"]);
        if st["lastState"].as_object().is_some_and(|m| !m.is_empty()) {
            state(p, "Last State", &st["lastState"]);
        }
        p.field(
            2,
            "Ready",
            &st["ready"]
                .as_bool()
                .unwrap_or(false)
                .to_string()
                .replace("true", "True")
                .replace("false", "False"),
        );
        p.field(
            2,
            "Restart Count",
            &st["restartCount"].as_i64().unwrap_or(0).to_string(),
        );
    }
    resources_block(p, &c["resources"]);
    probes(p, c);
    env(p, c);
    mounts(p, &c["volumeMounts"]);
}

fn ports(p: &mut Page, v: &Value, level: usize) {
    let list: Vec<&Value> = v.as_array().into_iter().flatten().collect();
    let port_text = |f: &str| -> String {
        if list.is_empty() {
            return "<none>".into();
        }
        list.iter()
            .map(|x| {
                format!(
                    "{}/{}",
                    x[f].as_i64().unwrap_or(0),
                    x["protocol"].as_str().unwrap_or("TCP")
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (port, host) = (port_text("containerPort"), port_text("hostPort"));
    p.field(level, if list.len() > 1 { "Ports" } else { "Port" }, &port);
    p.field(
        level,
        if list.len() > 1 {
            "Host Ports"
        } else {
            "Host Port"
        },
        &host,
    );
}

fn command_lines(p: &mut Page, key: &str, v: &Value) {
    let Some(items) = v.as_array().filter(|a| !a.is_empty()) else {
        return;
    };
    p.line(2, &format!("{key}:"));
    for i in items {
        for line in s(i).split('\n') {
            p.line(3, line);
        }
    }
}

fn state(p: &mut Page, key: &str, st: &Value) {
    if let Some(r) = st.get("running").filter(|x| !x.is_null()) {
        p.field(2, key, "Running");
        p.field(3, "Started", &time_text(&r["startedAt"]));
    } else if let Some(w) = st.get("waiting").filter(|x| !x.is_null()) {
        p.field(2, key, "Waiting");
        if let Some(r) = w["reason"].as_str() {
            p.field(3, "Reason", r);
        }
    } else if let Some(t) = st.get("terminated").filter(|x| !x.is_null()) {
        p.field(2, key, "Terminated");
        if let Some(r) = t["reason"].as_str() {
            p.field(3, "Reason", r);
        }
        if let Some(m) = t["message"].as_str() {
            p.field(3, "Message", m);
        }
        p.field(
            3,
            "Exit Code",
            &t["exitCode"].as_i64().unwrap_or(0).to_string(),
        );
        p.field(3, "Started", &time_text(&t["startedAt"]));
        p.field(3, "Finished", &time_text(&t["finishedAt"]));
    } else {
        p.field(2, key, "Waiting");
    }
}

fn resources_block(p: &mut Page, r: &Value) {
    for (key, title) in [("limits", "Limits"), ("requests", "Requests")] {
        if let Value::Object(m) = &r[key] {
            if m.is_empty() {
                continue;
            }
            p.line(2, &format!("{title}:"));
            let mut e: Vec<_> = m.iter().collect();
            e.sort_by(|a, b| a.0.cmp(b.0));
            for (k, v) in e {
                p.field(3, k, s(v));
            }
        }
    }
}

fn probes(p: &mut Page, c: &Value) {
    for (key, title) in [
        ("livenessProbe", "Liveness"),
        ("readinessProbe", "Readiness"),
        ("startupProbe", "Startup"),
    ] {
        let probe = &c[key];
        if !probe.is_object() {
            continue;
        }
        let action = if let Some(h) = probe.get("httpGet") {
            let scheme = h["scheme"].as_str().unwrap_or("HTTP").to_lowercase();
            let port = match &h["port"] {
                Value::String(x) => x.clone(),
                other => other.to_string(),
            };
            format!(
                "http-get {scheme}://{}:{port}{}",
                s(&h["host"]),
                s(&h["path"])
            )
        } else if let Some(t) = probe.get("tcpSocket") {
            let port = match &t["port"] {
                Value::String(x) => x.clone(),
                other => other.to_string(),
            };
            format!("tcp-socket {}:{port}", s(&t["host"]))
        } else if let Some(e) = probe.get("exec") {
            let cmd: Vec<&str> = e["command"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            format!("exec [{}]", cmd.join(" "))
        } else if let Some(g) = probe.get("grpc") {
            format!(
                "grpc <pod>:{} {}",
                g["port"],
                g["service"].as_str().unwrap_or("")
            )
        } else {
            "unknown".into()
        };
        let n = |f: &str, d: i64| probe[f].as_i64().unwrap_or(d);
        p.field(
            2,
            title,
            &format!(
                "{action} delay={}s timeout={}s period={}s #success={} #failure={}",
                n("initialDelaySeconds", 0),
                n("timeoutSeconds", 1),
                n("periodSeconds", 10),
                n("successThreshold", 1),
                n("failureThreshold", 3)
            ),
        );
    }
}

fn env(p: &mut Page, c: &Value) {
    if let Some(from) = c["envFrom"].as_array().filter(|a| !a.is_empty()) {
        p.line(2, "Environment Variables from:");
        for f in from {
            let (name, kind) = if f["configMapRef"].is_object() {
                (s(&f["configMapRef"]["name"]), "ConfigMap")
            } else {
                (s(&f["secretRef"]["name"]), "Secret")
            };
            let optional = f["configMapRef"]["optional"]
                .as_bool()
                .or(f["secretRef"]["optional"].as_bool())
                .unwrap_or(false);
            p.line(3, &format!("{name}\t{kind}\tOptional: {optional}"));
        }
    }
    let Some(vars) = c["env"].as_array().filter(|a| !a.is_empty()) else {
        p.field(2, "Environment", "<none>");
        return;
    };
    p.line(2, "Environment:");
    for e in vars {
        let name = s(&e["name"]);
        if let Some(v) = e["value"].as_str() {
            p.line(3, &format!("{name}:\t{v}"));
        } else if let Some(r) = e.get("valueFrom") {
            let text = if r["fieldRef"].is_object() {
                format!(
                    "({}:{})",
                    r["fieldRef"]["apiVersion"].as_str().unwrap_or("v1"),
                    s(&r["fieldRef"]["fieldPath"])
                )
            } else if r["configMapKeyRef"].is_object() {
                format!(
                    "<set to the key '{}' of config map '{}'>",
                    s(&r["configMapKeyRef"]["key"]),
                    s(&r["configMapKeyRef"]["name"])
                )
            } else if r["secretKeyRef"].is_object() {
                format!(
                    "<set to the key '{}' in secret '{}'>",
                    s(&r["secretKeyRef"]["key"]),
                    s(&r["secretKeyRef"]["name"])
                )
            } else {
                String::new()
            };
            p.line(3, &format!("{name}:\t{text}\tOptional: false"));
        } else {
            p.line(3, &format!("{name}:\t"));
        }
    }
}

fn mounts(p: &mut Page, v: &Value) {
    let Some(list) = v.as_array().filter(|a| !a.is_empty()) else {
        p.field(2, "Mounts", "<none>");
        return;
    };
    p.line(2, "Mounts:");
    for mnt in list {
        let mode = if mnt["readOnly"] == true { "ro" } else { "rw" };
        let sub = mnt["subPath"]
            .as_str()
            .map(|x| format!(",path=\"{x}\""))
            .unwrap_or_default();
        p.line(
            3,
            &format!(
                "{} from {} ({mode}{sub})",
                s(&mnt["mountPath"]),
                s(&mnt["name"])
            ),
        );
    }
}

fn volumes(p: &mut Page, v: &Value, level: usize) {
    let Some(list) = v.as_array().filter(|a| !a.is_empty()) else {
        p.field(level, "Volumes", "<none>");
        return;
    };
    p.line(level, "Volumes:");
    for vol in list {
        p.line(level + 1, &format!("{}:", s(&vol["name"])));
        let l = level + 2;
        if let Some(pr) = vol.get("projected") {
            p.field(
                l,
                "Type",
                "Projected (a volume that contains injected data from multiple sources)",
            );
            for src in pr["sources"].as_array().into_iter().flatten() {
                if let Some(t) = src.get("serviceAccountToken") {
                    p.field(
                        l,
                        "TokenExpirationSeconds",
                        &t["expirationSeconds"].as_i64().unwrap_or(3600).to_string(),
                    );
                }
                if let Some(c) = src.get("configMap") {
                    p.field(l, "ConfigMapName", s(&c["name"]));
                    optional_field(p, l, c);
                }
                if src.get("downwardAPI").is_some() {
                    p.field(l, "DownwardAPI", "true");
                }
                if let Some(sec) = src.get("secret") {
                    p.field(l, "SecretName", s(&sec["name"]));
                    optional_field(p, l, sec);
                }
            }
        } else if let Some(c) = vol.get("configMap") {
            p.field(l, "Type", "ConfigMap (a volume populated by a ConfigMap)");
            p.field(l, "Name", s(&c["name"]));
            optional_field(p, l, c);
        } else if let Some(sec) = vol.get("secret") {
            p.field(l, "Type", "Secret (a volume populated by a Secret)");
            p.field(l, "SecretName", s(&sec["secretName"]));
            optional_field(p, l, sec);
        } else if let Some(e) = vol.get("emptyDir") {
            p.field(
                l,
                "Type",
                "EmptyDir (a temporary directory that shares a pod's lifetime)",
            );
            p.field(l, "Medium", s(&e["medium"]));
            p.field(l, "SizeLimit", e["sizeLimit"].as_str().unwrap_or("<unset>"));
        } else if let Some(h) = vol.get("hostPath") {
            p.field(l, "Type", "HostPath (bare host directory volume)");
            p.field(l, "Path", s(&h["path"]));
            p.field(l, "HostPathType", s(&h["type"]));
        } else if let Some(c) = vol.get("persistentVolumeClaim") {
            p.field(l, "Type", "PersistentVolumeClaim (a reference to a PersistentVolumeClaim in the same namespace)");
            p.field(l, "ClaimName", s(&c["claimName"]));
            p.field(
                l,
                "ReadOnly",
                &c["readOnly"].as_bool().unwrap_or(false).to_string(),
            );
        }
    }
}

fn pod_template(p: &mut Page, t: &Value) {
    p.line(0, "Pod Template:");
    p.map(1, "Labels", &t["metadata"]["labels"], &[]);
    if t["metadata"]["annotations"]
        .as_object()
        .is_some_and(|m| !m.is_empty())
    {
        p.map(1, "Annotations", &t["metadata"]["annotations"], &[]);
    }
    if let Some(sa) = t["spec"]["serviceAccountName"].as_str() {
        p.field(1, "Service Account", sa);
    }
    if let Some(init) = t["spec"]["initContainers"]
        .as_array()
        .filter(|a| !a.is_empty())
    {
        p.line(1, "Init Containers:");
        for c in init {
            template_container(p, c);
        }
    }
    p.line(1, "Containers:");
    for c in t["spec"]["containers"].as_array().into_iter().flatten() {
        template_container(p, c);
    }
    volumes(p, &t["spec"]["volumes"], 1);
    p.field(
        1,
        "Node-Selectors",
        &node_selectors(&t["spec"]["nodeSelector"]),
    );
    tolerations(p, &t["spec"]["tolerations"], 1);
}

/// A container of a pod template: one space deeper than `Containers:`, as stock.
fn template_container(p: &mut Page, c: &Value) {
    p.line(1, &format!(" {}:", s(&c["name"])));
    p.field(2, "Image", s(&c["image"]));
    ports(p, &c["ports"], 2);
    command_lines(p, "Command", &c["command"]);
    command_lines(p, "Args", &c["args"]);
    resources_block(p, &c["resources"]);
    probes(p, c);
    env(p, c);
    mounts(p, &c["volumeMounts"]);
}

async fn owned_replicasets(client: &kube::Client, obj: &Value) -> anyhow::Result<Vec<Value>> {
    let ns = s(&obj["metadata"]["namespace"]);
    let uid = s(&obj["metadata"]["uid"]);
    let list = super::get_json(
        client,
        &format!("/apis/apps/v1/namespaces/{ns}/replicasets"),
    )
    .await?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|rs| {
            rs["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|o| o["uid"] == uid)
        })
        .cloned()
        .collect())
}

async fn describe_deployment(
    client: &kube::Client,
    p: &mut Page,
    obj: &Value,
) -> anyhow::Result<()> {
    let m = &obj["metadata"];
    let spec = &obj["spec"];
    let st = &obj["status"];
    p.field(0, "Name", s(&m["name"]));
    p.field(0, "Namespace", s(&m["namespace"]));
    p.field(0, "CreationTimestamp", &time_text(&m["creationTimestamp"]));
    p.map(0, "Labels", &m["labels"], &[]);
    p.map(
        0,
        "Annotations",
        &m["annotations"],
        &["kubectl.kubernetes.io/last-applied-configuration"],
    );
    p.field(0, "Selector", &format_label_selector(&spec["selector"]));
    let n = |v: &Value| v.as_i64().unwrap_or(0);
    p.field(
        0,
        "Replicas",
        &format!(
            "{} desired | {} updated | {} total | {} available | {} unavailable",
            spec["replicas"].as_i64().unwrap_or(1),
            n(&st["updatedReplicas"]),
            n(&st["replicas"]),
            n(&st["availableReplicas"]),
            n(&st["unavailableReplicas"])
        ),
    );
    let strategy = s(&spec["strategy"]["type"]);
    p.field(0, "StrategyType", strategy);
    p.field(
        0,
        "MinReadySeconds",
        &n(&spec["minReadySeconds"]).to_string(),
    );
    if strategy == "RollingUpdate" {
        let ru = &spec["strategy"]["rollingUpdate"];
        let v = |x: &Value| match x {
            Value::String(t) => t.clone(),
            other => other.to_string(),
        };
        p.field(
            0,
            "RollingUpdateStrategy",
            &format!(
                "{} max unavailable, {} max surge",
                v(&ru["maxUnavailable"]),
                v(&ru["maxSurge"])
            ),
        );
    }
    pod_template(p, &spec["template"]);
    if let Some(conds) = st["conditions"].as_array().filter(|a| !a.is_empty()) {
        p.line(0, "Conditions:");
        p.line(1, "Type\tStatus\tReason");
        p.line(1, "----\t------\t------");
        for c in conds {
            p.line(
                1,
                &format!(
                    "{}\t{}\t{}",
                    s(&c["type"]),
                    s(&c["status"]),
                    s(&c["reason"])
                ),
            );
        }
    }
    let revision = m["annotations"]["deployment.kubernetes.io/revision"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let sets = owned_replicasets(client, obj).await?;
    let rs_text = |rs: &Value| {
        format!(
            "{} ({}/{} replicas created)",
            s(&rs["metadata"]["name"]),
            n(&rs["status"]["replicas"]),
            rs["spec"]["replicas"].as_i64().unwrap_or(0)
        )
    };
    let template_hash = |rs: &Value| {
        rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let (new, old): (Vec<&Value>, Vec<&Value>) =
        sets.iter().partition(|rs| template_hash(rs) == revision);
    let old: Vec<String> = old
        .into_iter()
        .filter(|rs| n(&rs["spec"]["replicas"]) > 0 || n(&rs["status"]["replicas"]) > 0)
        .map(rs_text)
        .collect();
    p.field(
        0,
        "OldReplicaSets",
        &if old.is_empty() {
            "<none>".into()
        } else {
            old.join(", ")
        },
    );
    p.field(
        0,
        "NewReplicaSet",
        &new.first()
            .map(|rs| rs_text(rs))
            .unwrap_or_else(|| "<none>".into()),
    );
    Ok(())
}

async fn describe_replicaset(
    client: &kube::Client,
    p: &mut Page,
    obj: &Value,
) -> anyhow::Result<()> {
    let m = &obj["metadata"];
    p.field(0, "Name", s(&m["name"]));
    p.field(0, "Namespace", s(&m["namespace"]));
    p.field(
        0,
        "Selector",
        &format_label_selector(&obj["spec"]["selector"]),
    );
    p.map(0, "Labels", &m["labels"], &[]);
    p.map(0, "Annotations", &m["annotations"], &[]);
    controlled_by(p, obj);
    let n = |v: &Value| v.as_i64().unwrap_or(0);
    p.field(
        0,
        "Replicas",
        &format!(
            "{} current / {} desired",
            n(&obj["status"]["replicas"]),
            obj["spec"]["replicas"].as_i64().unwrap_or(1)
        ),
    );
    let ns = s(&m["namespace"]);
    let uid = s(&m["uid"]);
    let pods = super::get_json(client, &format!("/api/v1/namespaces/{ns}/pods")).await?;
    let mut counts = [0; 4];
    for pod in pods["items"].as_array().into_iter().flatten() {
        if !pod["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|o| o["uid"] == uid)
        {
            continue;
        }
        match s(&pod["status"]["phase"]) {
            "Running" => counts[0] += 1,
            "Succeeded" => counts[2] += 1,
            "Failed" => counts[3] += 1,
            _ => counts[1] += 1,
        }
    }
    p.field(
        0,
        "Pods Status",
        &format!(
            "{} Running / {} Waiting / {} Succeeded / {} Failed",
            counts[0], counts[1], counts[2], counts[3]
        ),
    );
    pod_template(p, &obj["spec"]["template"]);
    if let Some(conds) = obj["status"]["conditions"]
        .as_array()
        .filter(|a| !a.is_empty())
    {
        p.line(0, "Conditions:");
        p.line(1, "Type\tStatus\tReason");
        p.line(1, "----\t------\t------");
        for c in conds {
            p.line(
                1,
                &format!(
                    "{}\t{}\t{}",
                    s(&c["type"]),
                    s(&c["status"]),
                    s(&c["reason"])
                ),
            );
        }
    }
    Ok(())
}

fn describe_node(p: &mut Page, obj: &Value, lease: Result<Value, String>, pods: Option<&[Value]>) {
    let m = &obj["metadata"];
    let st = &obj["status"];
    p.field(0, "Name", s(&m["name"]));
    let roles = node_roles(&m["labels"]);
    p.field(0, "Roles", &if roles.is_empty() { "<none>".into() } else { roles.join(",") });
    p.map(0, "Labels", &m["labels"], &[]);
    p.map(0, "Annotations", &m["annotations"], &[]);
    p.field(0, "CreationTimestamp", &time_text(&m["creationTimestamp"]));
    let taints: Vec<String> = obj["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let v = t["value"]
                .as_str()
                .map(|v| format!("={v}"))
                .unwrap_or_default();
            format!("{}{v}:{}", s(&t["key"]), s(&t["effect"]))
        })
        .collect();
    p.field(
        0,
        "Taints",
        &if taints.is_empty() {
            "<none>".into()
        } else {
            taints.join("\n\t")
        },
    );
    p.field(
        0,
        "Unschedulable",
        &obj["spec"]["unschedulable"]
            .as_bool()
            .unwrap_or(false)
            .to_string(),
    );
    match lease {
        Ok(lease) => {
            p.line(0, "Lease:");
            let spec = &lease["spec"];
            p.field(1, "HolderIdentity", spec["holderIdentity"].as_str().unwrap_or("<unset>"));
            for (key, title) in [("acquireTime", "AcquireTime"), ("renewTime", "RenewTime")] {
                let text = if spec[key].is_string() { time_text(&spec[key]) } else { "<unset>".into() };
                p.field(1, title, &text);
            }
        }
        Err(message) => p.field(0, "Lease", &format!("Failed to get lease: {message}")),
    }
    p.line(0, "Conditions:");
    p.line(
        1,
        "Type\tStatus\tLastHeartbeatTime\tLastTransitionTime\tReason\tMessage",
    );
    p.line(
        1,
        "----\t------\t-----------------\t------------------\t------\t-------",
    );
    // A time the node left out prints as Go's zero time, as the stock kubectl's does.
    let condition_time = |v: &Value| if v.is_string() { time_text(v) } else { "Mon, 01 Jan 0001 00:00:00 +0000".into() };
    for c in st["conditions"].as_array().into_iter().flatten() {
        p.line(
            1,
            &format!(
                "{} \t{} \t{} \t{} \t{} \t{}",
                s(&c["type"]),
                s(&c["status"]),
                condition_time(&c["lastHeartbeatTime"]),
                condition_time(&c["lastTransitionTime"]),
                s(&c["reason"]),
                s(&c["message"])
            ),
        );
    }
    p.line(0, "Addresses:");
    for a in st["addresses"].as_array().into_iter().flatten() {
        p.field(1, s(&a["type"]), s(&a["address"]));
    }
    for (key, title) in [("capacity", "Capacity"), ("allocatable", "Allocatable")] {
        if let Value::Object(c) = &st[key] {
            p.line(0, &format!("{title}:"));
            let mut e: Vec<_> = c.iter().collect();
            e.sort_by(|a, b| a.0.cmp(b.0));
            for (k, v) in e {
                p.field(1, k, s(v));
            }
        }
    }
    // The stock kubectl writes these at the top level with their own indent, so they
    // line up with PodCIDR and what follows.
    let info = &st["nodeInfo"];
    p.line(0, "System Info:");
    for (k, title) in [
        ("machineID", "Machine ID"),
        ("systemUUID", "System UUID"),
        ("bootID", "Boot ID"),
        ("kernelVersion", "Kernel Version"),
        ("osImage", "OS Image"),
        ("operatingSystem", "Operating System"),
        ("architecture", "Architecture"),
        ("containerRuntimeVersion", "Container Runtime Version"),
        ("kubeletVersion", "Kubelet Version"),
        ("kubeProxyVersion", "Kube-Proxy Version"),
    ] {
        p.line(0, &format!("  {title}:\t{}", s(&info[k])));
    }
    if let Some(cidr) = obj["spec"]["podCIDR"].as_str().filter(|c| !c.is_empty()) {
        p.field(0, "PodCIDR", cidr);
    }
    let cidrs: Vec<&str> = obj["spec"]["podCIDRs"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    if !cidrs.is_empty() {
        p.field(0, "PodCIDRs", &cidrs.join(","));
    }
    if let Some(id) = obj["spec"]["providerID"].as_str().filter(|c| !c.is_empty()) {
        p.field(0, "ProviderID", id);
    }
    if let Some(pods) = pods {
        node_resources(p, st, pods);
    }
}

/// The node's roles from its `node-role.kubernetes.io/<role>` and `kubernetes.io/role`
/// labels, sorted.
fn node_roles(labels: &Value) -> Vec<String> {
    let mut roles: Vec<String> = labels
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| match k.strip_prefix("node-role.kubernetes.io/") {
            Some(role) if !role.is_empty() => Some(role.to_string()),
            Some(_) => None,
            None if k == "kubernetes.io/role" => v.as_str().filter(|v| !v.is_empty()).map(str::to_string),
            None => None,
        })
        .collect();
    roles.sort();
    roles.dedup();
    roles
}

/// `100m (5%)`: a quantity and its share of what the node can allocate, truncated as the
/// stock kubectl's `int64(fraction)`.
fn share(q: Option<&Quantity>, of: Option<&Quantity>, millis: bool) -> String {
    let zero = Quantity::from_units(0, apimachinery::quantity::QuantityFormat::DecimalSI);
    let q = q.copied().unwrap_or(zero);
    let (v, total) = match (millis, of) {
        (true, Some(of)) => (q.to_millis() as f64, of.to_millis() as f64),
        (false, Some(of)) => (q.to_bytes() as f64, of.to_bytes() as f64),
        (_, None) => (0.0, 0.0),
    };
    let percent = if total == 0.0 { 0 } else { (v / total * 100.0) as i64 };
    format!("{q} ({percent}%)")
}

/// The node's pods with their requests and limits, and the totals against what it can
/// allocate (the stock kubectl's `describeNodeResource`).
fn node_resources(p: &mut Page, status: &Value, pods: &[Value]) {
    let allocatable_value = if status["allocatable"].as_object().is_some_and(|a| !a.is_empty()) { &status["allocatable"] } else { &status["capacity"] };
    let allocatable = quota::parse_list(Some(allocatable_value));
    let (cpu, memory) = (allocatable.get("cpu"), allocatable.get("memory"));
    p.field(0, "Non-terminated Pods", &format!("({} in total)", pods.len()));
    p.line(1, "Namespace\tName\t\tCPU Requests\tCPU Limits\tMemory Requests\tMemory Limits\tAge");
    p.line(1, "---------\t----\t\t------------\t----------\t---------------\t-------------\t---");
    let mut requests = ResourceList::new();
    let mut limits = ResourceList::new();
    for pod in pods {
        // kubectl's `PodRequestsAndLimits`: containers, init containers, sidecars, overhead.
        let (req, lim) = (quota::pod_requests(pod, true), quota::pod_limits(pod, true));
        p.line(
            1,
            &format!(
                "{}\t{}\t\t{}\t{}\t{}\t{}\t{}",
                s(&pod["metadata"]["namespace"]),
                s(&pod["metadata"]["name"]),
                share(req.get("cpu"), cpu, true),
                share(lim.get("cpu"), cpu, true),
                share(req.get("memory"), memory, false),
                share(lim.get("memory"), memory, false),
                age(pod["metadata"]["creationTimestamp"].as_str()),
            ),
        );
        requests = quota::add(&requests, &req);
        limits = quota::add(&limits, &lim);
    }
    p.line(0, "Allocated resources:");
    p.line(0, "  (Total limits may be over 100 percent, i.e., overcommitted.)");
    p.line(1, "Resource\tRequests\tLimits");
    p.line(1, "--------\t--------\t------");
    for (name, millis) in [("cpu", true), ("memory", false), ("ephemeral-storage", false)] {
        let of = allocatable.get(name);
        p.line(1, &format!("{name}\t{}\t{}", share(requests.get(name), of, millis), share(limits.get(name), of, millis)));
    }
    for name in allocatable.keys().filter(|n| n.starts_with("hugepages-")) {
        let of = allocatable.get(name);
        p.line(1, &format!("{name}\t{}\t{}", share(requests.get(name), of, false), share(limits.get(name), of, false)));
    }
    let standard = |n: &str| matches!(n, "cpu" | "memory" | "ephemeral-storage" | "pods") || n.starts_with("hugepages-") || n.starts_with("requests.") || n.starts_with("limits.");
    for name in allocatable.keys().filter(|n| !standard(n)) {
        let text = |list: &ResourceList| list.get(name).map_or_else(|| "0".to_string(), |q| q.to_string());
        p.line(1, &format!("{name}\t{}\t{}", text(&requests), text(&limits)));
    }
}

/// The generic page: metadata, then every other top-level field as nested `Key:  value`.
fn generic(p: &mut Page, obj: &Value, res: &ResourceInfo) {
    p.meta(obj, res.namespaced);
    p.field(0, "API Version", s(&obj["apiVersion"]));
    p.field(0, "Kind", s(&obj["kind"]));
    let Value::Object(m) = obj else { return };
    let mut keys: Vec<&String> = m
        .keys()
        .filter(|k| !matches!(k.as_str(), "apiVersion" | "kind"))
        .collect();
    keys.sort();
    for k in keys {
        if k == "metadata" {
            let meta = &m[k];
            p.line(0, "Metadata:");
            let mut mk: Vec<&String> = meta
                .as_object()
                .map(|x| x.keys().collect())
                .unwrap_or_default();
            mk.sort();
            for key in mk {
                if matches!(
                    key.as_str(),
                    "name" | "namespace" | "labels" | "annotations" | "managedFields"
                ) {
                    continue;
                }
                field_tree(p, 1, key, &meta[key]);
            }
            continue;
        }
        field_tree(p, 0, k, &m[k]);
    }
}

fn title_case(key: &str) -> String {
    let mut out = String::new();
    for (i, c) in key.chars().enumerate() {
        if i == 0 {
            out.extend(c.to_uppercase());
        } else if c.is_uppercase() {
            out.push(' ');
            out.push(c);
        } else {
            out.push(c);
        }
    }
    out
}

fn field_tree(p: &mut Page, level: usize, key: &str, v: &Value) {
    let title = title_case(key);
    match v {
        Value::Object(m) => {
            p.line(level, &format!("{title}:"));
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            for k in keys {
                field_tree(p, level + 1, k, &m[k]);
            }
        }
        Value::Array(a) => {
            p.line(level, &format!("{title}:"));
            for item in a {
                match item {
                    Value::Object(m) => {
                        let mut keys: Vec<&String> = m.keys().collect();
                        keys.sort();
                        for k in keys {
                            field_tree(p, level + 1, k, &m[k]);
                        }
                    }
                    other => p.line(level + 1, &or_none(other)),
                }
            }
        }
        other => p.field(level, &title, &or_none(other)),
    }
}

#[allow(dead_code)]
fn labels_text(v: &Value) -> String {
    format_labels(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shares_truncate_and_survive_a_missing_total() {
        let q = |s: &str| Quantity::parse(s).ok();
        assert_eq!(share(q("150m").as_ref(), q("2").as_ref(), true), "150m (7%)");
        assert_eq!(share(None, q("2").as_ref(), true), "0 (0%)");
        assert_eq!(share(q("96Mi").as_ref(), q("24683656Ki").as_ref(), false), "96Mi (0%)");
        assert_eq!(share(q("1Gi").as_ref(), None, false), "1Gi (0%)");
    }

    #[test]
    fn node_roles_come_from_role_labels() {
        let labels = json!({"node-role.kubernetes.io/control-plane": "true", "node-role.kubernetes.io/": "x", "kubernetes.io/role": "worker", "other": "y"});
        assert_eq!(node_roles(&labels), ["control-plane", "worker"]);
        assert!(node_roles(&json!({})).is_empty());
    }
}
