//! Printers for the core (`""`) group: pods, nodes, namespaces, services,
//! endpoints, config maps, secrets, service accounts, events (also
//! `events.k8s.io`), replication controllers, persistent volumes and claims,
//! resource quotas, pod templates and component statuses.

use std::collections::{BTreeSet, HashSet};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::util::{
    age, arr, deleting, format_labels, get, int_at, layout_containers, load_balancer_string,
    map_len, name, opt_bool, opt_int, opt_str, parse_time, quantity, str_at,
    translate_timestamp_since,
};
use super::{col, wide, Column, Printer, AGE, CONTAINERS, IMAGES, NAME};

pub(crate) fn printer(resource: &str, group: &str) -> Option<Printer> {
    let p: Printer = match (group, resource) {
        ("", "pods") => (POD_COLUMNS, pod_row),
        ("", "nodes") => (NODE_COLUMNS, node_row),
        ("", "namespaces") => (NAMESPACE_COLUMNS, namespace_row),
        ("", "services") => (SERVICE_COLUMNS, service_row),
        ("", "endpoints") => (ENDPOINTS_COLUMNS, endpoints_row),
        ("", "configmaps") => (CONFIGMAP_COLUMNS, configmap_row),
        ("", "secrets") => (SECRET_COLUMNS, secret_row),
        ("", "componentstatuses") => (COMPONENTSTATUS_COLUMNS, componentstatus_row),
        ("", "serviceaccounts") => (SERVICEACCOUNT_COLUMNS, serviceaccount_row),
        ("", "events") | ("events.k8s.io", "events") => (EVENT_COLUMNS, event_row),
        ("", "replicationcontrollers") => (RC_COLUMNS, rc_row),
        ("", "persistentvolumes") => (PV_COLUMNS, pv_row),
        ("", "persistentvolumeclaims") => (PVC_COLUMNS, pvc_row),
        ("", "resourcequotas") => (QUOTA_COLUMNS, quota_row),
        ("", "podtemplates") => (PODTEMPLATE_COLUMNS, podtemplate_row),
        _ => return None,
    };
    Some(p)
}

// ---------------------------------------------------------------- pods

static POD_COLUMNS: &[Column] = &[
    NAME,
    col("Ready", "string", "The aggregate readiness state of this pod for accepting traffic."),
    col("Status", "string", "The aggregate status of the containers in this pod."),
    col("Restarts", "string", "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
    AGE,
    wide("IP", "string", "podIP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated."),
    wide("Node", "string", "NodeName indicates in which node this pod is scheduled."),
    wide("Nominated Node", "string", "nominatedNodeName is set only when this pod preempts other pods on the node, but it cannot be scheduled right away as preemption victims receive their graceful termination periods."),
    wide("Readiness Gates", "string", "If specified, all readiness gates will be evaluated for pod readiness."),
];

fn present<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|x| !x.is_null())
}

/// Keeps the later of two optional timestamps (Go's `lastRestartDate.Before`).
fn later(cur: Option<DateTime<Utc>>, cand: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (cur, cand) {
        (Some(a), Some(b)) if a < b => Some(b),
        (None, b) => b,
        (a, _) => a,
    }
}

fn last_termination(status: &Value) -> Option<Option<DateTime<Utc>>> {
    let t = present(status, "lastState").and_then(|s| present(s, "terminated"))?;
    Some(parse_time(t.get("finishedAt")))
}

fn condition_true(obj: &Value, cond_type: &str) -> Option<bool> {
    arr(obj, &["status", "conditions"])
        .iter()
        .find(|c| str_at(c, &["type"]) == cond_type)
        .map(|c| str_at(c, &["status"]) == "True")
}

fn pod_row(pod: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let init_specs = arr(pod, &["spec", "initContainers"]);
    let mut total = arr(pod, &["spec", "containers"]).len();
    let mut restartable: HashSet<&str> = HashSet::new();
    for c in init_specs {
        if str_at(c, &["restartPolicy"]) == "Always" {
            restartable.insert(str_at(c, &["name"]));
            total += 1;
        }
    }
    let mut ready = 0usize;
    let mut restarts = 0i64;
    let mut restartable_restarts = 0i64;
    let mut last_restart: Option<DateTime<Utc>> = None;
    let mut last_restartable_restart: Option<DateTime<Utc>> = None;

    let phase = str_at(pod, &["status", "phase"]);
    let status_reason = str_at(pod, &["status", "reason"]);
    let mut reason = if status_reason.is_empty() {
        phase
    } else {
        status_reason
    }
    .to_string();
    for c in arr(pod, &["status", "conditions"]) {
        if str_at(c, &["type"]) == "PodScheduled" && str_at(c, &["reason"]) == "SchedulingGated" {
            reason = "SchedulingGated".to_string();
        }
    }

    let mut initializing = false;
    for (i, cs) in arr(pod, &["status", "initContainerStatuses"])
        .iter()
        .enumerate()
    {
        restarts += int_at(cs, &["restartCount"]);
        if let Some(t) = last_termination(cs) {
            last_restart = later(last_restart, t);
        }
        let is_restartable = restartable.contains(str_at(cs, &["name"]));
        if is_restartable {
            restartable_restarts += int_at(cs, &["restartCount"]);
            if let Some(t) = last_termination(cs) {
                last_restartable_restart = later(last_restartable_restart, t);
            }
        }
        let state = cs.get("state").unwrap_or(&Value::Null);
        let terminated = present(state, "terminated");
        let waiting = present(state, "waiting");
        if terminated.is_some_and(|t| int_at(t, &["exitCode"]) == 0) {
            continue;
        }
        if is_restartable && opt_bool(cs, &["started"]) == Some(true) {
            if opt_bool(cs, &["ready"]) == Some(true) {
                ready += 1;
            }
            continue;
        }
        if let Some(t) = terminated {
            let r = str_at(t, &["reason"]);
            reason = if !r.is_empty() {
                format!("Init:{r}")
            } else if int_at(t, &["signal"]) != 0 {
                format!("Init:Signal:{}", int_at(t, &["signal"]))
            } else {
                format!("Init:ExitCode:{}", int_at(t, &["exitCode"]))
            };
        } else if let Some(r) = waiting
            .map(|w| str_at(w, &["reason"]))
            .filter(|r| !r.is_empty() && *r != "PodInitializing")
        {
            reason = format!("Init:{r}");
        } else {
            reason = format!("Init:{}/{}", i, init_specs.len());
        }
        initializing = true;
        break;
    }

    if !initializing || condition_true(pod, "Initialized") == Some(true) {
        restarts = restartable_restarts;
        last_restart = last_restartable_restart;
        let mut has_running = false;
        for cs in arr(pod, &["status", "containerStatuses"]).iter().rev() {
            restarts += int_at(cs, &["restartCount"]);
            if let Some(t) = last_termination(cs) {
                last_restart = later(last_restart, t);
            }
            let state = cs.get("state").unwrap_or(&Value::Null);
            let waiting_reason = present(state, "waiting").map(|w| str_at(w, &["reason"]));
            let terminated = present(state, "terminated");
            if let Some(r) = waiting_reason.filter(|r| !r.is_empty()) {
                reason = r.to_string();
            } else if let Some(t) = terminated {
                let r = str_at(t, &["reason"]);
                reason = if !r.is_empty() {
                    r.to_string()
                } else if int_at(t, &["signal"]) != 0 {
                    format!("Signal:{}", int_at(t, &["signal"]))
                } else {
                    format!("ExitCode:{}", int_at(t, &["exitCode"]))
                };
            } else if opt_bool(cs, &["ready"]) == Some(true) && present(state, "running").is_some()
            {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = if condition_true(pod, "Ready") == Some(true) {
                "Running"
            } else {
                "NotReady"
            }
            .to_string();
        }
    }

    if deleting(pod) && status_reason == "NodeLost" {
        reason = "Unknown".to_string();
    } else if deleting(pod) && phase != "Succeeded" && phase != "Failed" {
        reason = "Terminating".to_string();
    }

    let restarts_str = match last_restart {
        Some(t) if restarts != 0 => format!(
            "{restarts} ({} ago)",
            translate_timestamp_since(Some(t), now)
        ),
        _ => restarts.to_string(),
    };

    let mut ip = arr(pod, &["status", "podIPs"])
        .first()
        .map(|p| str_at(p, &["ip"]))
        .unwrap_or("");
    if ip.is_empty() {
        ip = str_at(pod, &["status", "podIP"]);
    }
    let gates = arr(pod, &["spec", "readinessGates"]);
    let readiness_gates = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let ok = gates
            .iter()
            .filter(|g| condition_true(pod, str_at(g, &["conditionType"])) == Some(true))
            .count();
        format!("{ok}/{}", gates.len())
    };
    vec![
        json!(name(pod)),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts_str),
        age(pod, now),
        json!(or_none(ip)),
        json!(or_none(str_at(pod, &["spec", "nodeName"]))),
        json!(or_none(str_at(pod, &["status", "nominatedNodeName"]))),
        json!(readiness_gates),
    ]
}

fn or_none(s: &str) -> &str {
    if s.is_empty() {
        "<none>"
    } else {
        s
    }
}

fn or_unknown(s: &str) -> &str {
    if s.is_empty() {
        "<unknown>"
    } else {
        s
    }
}

// ---------------------------------------------------------------- nodes

static NODE_COLUMNS: &[Column] = &[
    NAME,
    col("Status", "string", "The status of the node"),
    col("Roles", "string", "The roles of the node"),
    AGE,
    col("Version", "string", "Kubelet Version reported by the node."),
    wide("Internal-IP", "string", "List of addresses reachable to the node."),
    wide("External-IP", "string", "List of addresses reachable to the node."),
    wide("OS-Image", "string", "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy))."),
    wide("Kernel-Version", "string", "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64)."),
    wide("Container-Runtime", "string", "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2)."),
];

fn node_row(node: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let mut status: Vec<&str> = Vec::new();
    // Go keeps the last condition of a type (map assignment).
    if let Some(c) = arr(node, &["status", "conditions"])
        .iter()
        .rev()
        .find(|c| str_at(c, &["type"]) == "Ready")
    {
        status.push(if str_at(c, &["status"]) == "True" {
            "Ready"
        } else {
            "NotReady"
        });
    }
    if status.is_empty() {
        status.push("Unknown");
    }
    if opt_bool(node, &["spec", "unschedulable"]) == Some(true) {
        status.push("SchedulingDisabled");
    }
    let mut roles = BTreeSet::new();
    if let Some(labels) = get(node, &["metadata", "labels"]).and_then(Value::as_object) {
        for (k, v) in labels {
            if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                if !role.is_empty() {
                    roles.insert(role.to_string());
                }
            } else if k == "kubernetes.io/role" {
                if let Some(v) = v.as_str().filter(|v| !v.is_empty()) {
                    roles.insert(v.to_string());
                }
            }
        }
    }
    let roles = roles.into_iter().collect::<Vec<_>>().join(",");
    let address = |t: &str| {
        arr(node, &["status", "addresses"])
            .iter()
            .find(|a| str_at(a, &["type"]) == t)
            .map_or("<none>", |a| str_at(a, &["address"]))
            .to_string()
    };
    let info = |k: &str| or_unknown(str_at(node, &["status", "nodeInfo", k])).to_string();
    vec![
        json!(name(node)),
        json!(status.join(",")),
        json!(if roles.is_empty() {
            "<none>".to_string()
        } else {
            roles
        }),
        age(node, now),
        json!(str_at(node, &["status", "nodeInfo", "kubeletVersion"])),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(info("osImage")),
        json!(info("kernelVersion")),
        json!(info("containerRuntimeVersion")),
    ]
}

// ---------------------------------------------------------------- namespaces

static NAMESPACE_COLUMNS: &[Column] = &[
    NAME,
    col("Status", "string", "The status of the namespace"),
    AGE,
];

fn namespace_row(ns: &Value, now: DateTime<Utc>) -> Vec<Value> {
    vec![
        json!(name(ns)),
        json!(str_at(ns, &["status", "phase"])),
        age(ns, now),
    ]
}

// ---------------------------------------------------------------- services

static SERVICE_COLUMNS: &[Column] = &[
    NAME,
    col("Type", "string", "type determines how the Service is exposed. Defaults to ClusterIP. Valid options are ExternalName, ClusterIP, NodePort, and LoadBalancer."),
    col("Cluster-IP", "string", "clusterIP is the IP address of the service and is usually assigned randomly."),
    col("External-IP", "string", "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service."),
    col("Port(s)", "string", "The list of ports that are exposed by this service."),
    AGE,
    wide("Selector", "string", "Route service traffic to pods with label keys and values matching this selector."),
];

fn service_row(svc: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let svc_type = opt_str(svc, &["spec", "type"]).unwrap_or("ClusterIP");
    let mut cluster_ip = arr(svc, &["spec", "clusterIPs"])
        .first()
        .and_then(Value::as_str)
        .unwrap_or("");
    if cluster_ip.is_empty() {
        cluster_ip = str_at(svc, &["spec", "clusterIP"]);
    }
    let external_ips: Vec<&str> = arr(svc, &["spec", "externalIPs"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let external = match svc_type {
        "ClusterIP" | "NodePort" => {
            if external_ips.is_empty() {
                "<none>".to_string()
            } else {
                external_ips.join(",")
            }
        }
        "LoadBalancer" => {
            // The server always prints wide: the LB list is never truncated.
            let lb = load_balancer_string(arr(svc, &["status", "loadBalancer", "ingress"]));
            if !external_ips.is_empty() {
                let mut all: Vec<&str> = if lb.is_empty() {
                    Vec::new()
                } else {
                    lb.split(',').collect()
                };
                all.extend(external_ips.iter());
                all.join(",")
            } else if !lb.is_empty() {
                lb
            } else {
                "<pending>".to_string()
            }
        }
        "ExternalName" => str_at(svc, &["spec", "externalName"]).to_string(),
        _ => "<unknown>".to_string(),
    };
    let ports: Vec<String> = arr(svc, &["spec", "ports"])
        .iter()
        .map(|p| {
            let port = int_at(p, &["port"]);
            let proto = opt_str(p, &["protocol"]).unwrap_or("TCP");
            let node_port = int_at(p, &["nodePort"]);
            if node_port > 0 {
                format!("{port}:{node_port}/{proto}")
            } else {
                format!("{port}/{proto}")
            }
        })
        .collect();
    let ports = if ports.is_empty() {
        "<none>".to_string()
    } else {
        ports.join(",")
    };
    vec![
        json!(name(svc)),
        json!(svc_type),
        json!(or_none(cluster_ip)),
        json!(external),
        json!(ports),
        age(svc, now),
        json!(format_labels(get(svc, &["spec", "selector"]))),
    ]
}

// ---------------------------------------------------------------- endpoints

static ENDPOINTS_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Endpoints",
        "string",
        "The set of all endpoints is the union of all subsets.",
    ),
    AGE,
];

fn join_host_port(host: &str, port: i64) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn endpoints_row(ep: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let subsets = arr(ep, &["subsets"]);
    let text = if subsets.is_empty() {
        "<none>".to_string()
    } else {
        const MAX: usize = 3;
        let mut list: Vec<String> = Vec::new();
        let mut more = false;
        let mut count = 0usize;
        for ss in subsets {
            let addrs = arr(ss, &["addresses"]);
            let ports = arr(ss, &["ports"]);
            if ports.is_empty() {
                count += addrs.len();
                for a in addrs {
                    if list.len() == MAX {
                        more = true;
                        break;
                    }
                    list.push(str_at(a, &["ip"]).to_string());
                }
                continue;
            }
            for p in ports {
                count += addrs.len();
                for a in addrs {
                    if list.len() == MAX {
                        more = true;
                        break;
                    }
                    list.push(join_host_port(str_at(a, &["ip"]), int_at(p, &["port"])));
                }
            }
        }
        let ret = list.join(",");
        if more {
            format!("{ret} + {} more...", count.saturating_sub(MAX))
        } else {
            ret
        }
    };
    vec![json!(name(ep)), json!(text), age(ep, now)]
}

// ---------------------------------------------------------------- configmaps, secrets, service accounts

static CONFIGMAP_COLUMNS: &[Column] = &[
    NAME,
    col("Data", "string", "Data contains the configuration data."),
    AGE,
];

fn configmap_row(cm: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let n = map_len(cm, &["data"]) + map_len(cm, &["binaryData"]);
    vec![json!(name(cm)), json!(n), age(cm, now)]
}

static SECRET_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Type",
        "string",
        "Used to facilitate programmatic handling of secret data.",
    ),
    col("Data", "string", "Data contains the secret data."),
    AGE,
];

fn secret_row(s: &Value, now: DateTime<Utc>) -> Vec<Value> {
    // The apiserver defaults an empty type to Opaque.
    let t = opt_str(s, &["type"])
        .filter(|t| !t.is_empty())
        .unwrap_or("Opaque");
    vec![
        json!(name(s)),
        json!(t),
        json!(map_len(s, &["data"])),
        age(s, now),
    ]
}

static COMPONENTSTATUS_COLUMNS: &[Column] = &[
    NAME,
    col("Status", "string", "Status of the component conditions"),
    col("Message", "string", "Message of the component conditions"),
    col("Error", "string", "Error of the component conditions"),
];

/// The first `Healthy` condition's status, message and error, as Kubernetes prints it.
fn componentstatus_row(c: &Value, _now: DateTime<Utc>) -> Vec<Value> {
    let healthy = arr(c, &["conditions"]).iter().find(|cond| str_at(cond, &["type"]) == "Healthy");
    let (status, message, error) = match healthy {
        Some(cond) => (
            if str_at(cond, &["status"]) == "True" { "Healthy" } else { "Unhealthy" },
            str_at(cond, &["message"]),
            str_at(cond, &["error"]),
        ),
        None => ("Unknown", "", ""),
    };
    vec![json!(name(c)), json!(status), json!(message), json!(error)]
}

static SERVICEACCOUNT_COLUMNS: &[Column] = &[
    NAME,
    col("Secrets", "string", "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use."),
    AGE,
];

fn serviceaccount_row(sa: &Value, now: DateTime<Utc>) -> Vec<Value> {
    vec![
        json!(name(sa)),
        json!(arr(sa, &["secrets"]).len()),
        age(sa, now),
    ]
}

// ---------------------------------------------------------------- events

static EVENT_COLUMNS: &[Column] = &[
    col("Last Seen", "string", "The time at which the most recent occurrence of this event was recorded."),
    col("Type", "string", "Type of this event (Normal, Warning), new types could be added in the future"),
    col("Reason", "string", "This should be a short, machine understandable string that gives the reason for the transition into the object's current status."),
    col("Object", "string", "The object that this event is about."),
    wide("Subobject", "string", "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement, such as desiredState.manifest.containers[2]."),
    wide("Source", "string", "The component reporting this event. Should be a short machine understandable string."),
    col("Message", "string", "A human-readable description of the status of this operation."),
    wide("First Seen", "string", "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)"),
    wide("Count", "string", "The number of times this event has occurred."),
    Column { priority: 1, ..NAME },
];

fn event_row(ev: &Value, now: DateTime<Utc>) -> Vec<Value> {
    // core/v1 and events.k8s.io/v1 name the same fields differently.
    let v1 = str_at(ev, &["apiVersion"]).starts_with("events.k8s.io/");
    let field = |core: &'static str, new: &'static str| if v1 { new } else { core };
    let first = parse_time(get(
        ev,
        &[field("firstTimestamp", "deprecatedFirstTimestamp")],
    ));
    let mut first_str = translate_timestamp_since(first, now);
    if first.is_none() {
        first_str = translate_timestamp_since(parse_time(get(ev, &["eventTime"])), now);
    }
    let last = parse_time(get(
        ev,
        &[field("lastTimestamp", "deprecatedLastTimestamp")],
    ));
    let mut last_str = match last {
        Some(t) => translate_timestamp_since(Some(t), now),
        None => first_str.clone(),
    };
    let mut count = int_at(ev, &[field("count", "deprecatedCount")]);
    if let Some(series) = get(ev, &["series"]) {
        last_str = translate_timestamp_since(parse_time(get(series, &["lastObservedTime"])), now);
        count = int_at(series, &["count"]);
    } else if count == 0 {
        count = 1;
    }
    let involved = field("involvedObject", "regarding");
    let kind = str_at(ev, &[involved, "kind"]).to_lowercase();
    let obj_name = str_at(ev, &[involved, "name"]);
    let target = if obj_name.is_empty() {
        kind
    } else {
        format!("{kind}/{obj_name}")
    };
    let source = field("source", "deprecatedSource");
    let component = first_non_empty(
        str_at(ev, &[source, "component"]),
        str_at(ev, &[field("reportingComponent", "reportingController")]),
    );
    let host = first_non_empty(
        str_at(ev, &[source, "host"]),
        str_at(ev, &["reportingInstance"]),
    );
    let source_str = if host.is_empty() {
        component.to_string()
    } else {
        format!("{component}, {host}")
    };
    vec![
        json!(last_str),
        json!(str_at(ev, &["type"])),
        json!(str_at(ev, &["reason"])),
        json!(target),
        json!(str_at(ev, &[involved, "fieldPath"])),
        json!(source_str),
        json!(str_at(ev, &[field("message", "note")]).trim()),
        json!(first_str),
        json!(count),
        json!(name(ev)),
    ]
}

fn first_non_empty<'a>(a: &'a str, b: &'a str) -> &'a str {
    if a.is_empty() {
        b
    } else {
        a
    }
}

// ---------------------------------------------------------------- replication controllers

static RC_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Desired",
        "integer",
        "Replicas is the number of desired replicas.",
    ),
    col(
        "Current",
        "integer",
        "Replicas is the most recently observed number of replicas.",
    ),
    col(
        "Ready",
        "integer",
        "The number of ready replicas for this replication controller.",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    wide(
        "Selector",
        "string",
        "Selector is a label query over pods that should match the Replicas count.",
    ),
];

fn rc_row(rc: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let (names, images) = layout_containers(arr(rc, &["spec", "template", "spec", "containers"]));
    vec![
        json!(name(rc)),
        json!(opt_int(rc, &["spec", "replicas"]).unwrap_or(1)),
        json!(int_at(rc, &["status", "replicas"])),
        json!(int_at(rc, &["status", "readyReplicas"])),
        age(rc, now),
        json!(names),
        json!(images),
        json!(format_labels(get(rc, &["spec", "selector"]))),
    ]
}

// ---------------------------------------------------------------- persistent volumes and claims

static PV_COLUMNS: &[Column] = &[
    NAME,
    col("Capacity", "string", "capacity is the description of the persistent volume's resources and capacity."),
    col("Access Modes", "string", "accessModes contains all ways the volume can be mounted."),
    col("Reclaim Policy", "string", "persistentVolumeReclaimPolicy defines what happens to a persistent volume when released from its claim."),
    col("Status", "string", "phase indicates if a volume is available, bound to a claim, or released by a claim."),
    col("Claim", "string", "claimRef is part of a bi-directional binding between PersistentVolume and PersistentVolumeClaim."),
    col("StorageClass", "string", "StorageClass of the pv"),
    col("VolumeAttributesClass", "string", "VolumeAttributesClass of the pv"),
    col("Reason", "string", "reason is a brief CamelCase string that describes any failure and is meant for machine parsing and tidy display in the CLI."),
    AGE,
    wide("VolumeMode", "string", "volumeMode defines if a volume is intended to be used with a formatted filesystem or to remain in raw block state."),
];

fn access_modes(modes: &[Value]) -> String {
    let has = |m: &str| modes.iter().any(|x| x.as_str() == Some(m));
    [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ]
    .iter()
    .filter(|(m, _)| has(m))
    .map(|(_, s)| *s)
    .collect::<Vec<_>>()
    .join(",")
}

const BETA_STORAGE_CLASS: &str = "volume.beta.kubernetes.io/storage-class";

fn volume_class(obj: &Value) -> String {
    if let Some(Value::String(c)) = get(obj, &["metadata", "annotations", BETA_STORAGE_CLASS]) {
        return c.clone();
    }
    str_at(obj, &["spec", "storageClassName"]).to_string()
}

fn pv_row(pv: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let claim = match get(pv, &["spec", "claimRef"]) {
        Some(c) => format!("{}/{}", str_at(c, &["namespace"]), str_at(c, &["name"])),
        None => String::new(),
    };
    let phase = if deleting(pv) {
        "Terminating"
    } else {
        str_at(pv, &["status", "phase"])
    };
    vec![
        json!(name(pv)),
        json!(quantity(get(pv, &["spec", "capacity", "storage"]))),
        json!(access_modes(arr(pv, &["spec", "accessModes"]))),
        json!(opt_str(pv, &["spec", "persistentVolumeReclaimPolicy"]).unwrap_or("Retain")),
        json!(phase),
        json!(claim),
        json!(volume_class(pv)),
        json!(opt_str(pv, &["spec", "volumeAttributesClassName"]).unwrap_or("<unset>")),
        json!(str_at(pv, &["status", "reason"])),
        age(pv, now),
        json!(opt_str(pv, &["spec", "volumeMode"]).unwrap_or("Filesystem")),
    ]
}

static PVC_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Status",
        "string",
        "phase represents the current phase of PersistentVolumeClaim.",
    ),
    col(
        "Volume",
        "string",
        "volumeName is the binding reference to the PersistentVolume backing this claim.",
    ),
    col(
        "Capacity",
        "string",
        "capacity represents the actual resources of the underlying volume.",
    ),
    col(
        "Access Modes",
        "string",
        "accessModes contains the actual access modes the volume backing the PVC has.",
    ),
    col("StorageClass", "string", "StorageClass of the pvc"),
    col(
        "VolumeAttributesClass",
        "string",
        "VolumeAttributesClass of the pvc",
    ),
    AGE,
    wide(
        "VolumeMode",
        "string",
        "volumeMode defines what type of volume is required by the claim.",
    ),
];

fn pvc_row(pvc: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let phase = if deleting(pvc) {
        "Terminating"
    } else {
        str_at(pvc, &["status", "phase"])
    };
    let volume = str_at(pvc, &["spec", "volumeName"]);
    let (capacity, modes) = if volume.is_empty() {
        (String::new(), String::new())
    } else {
        (
            quantity(get(pvc, &["status", "capacity", "storage"])),
            access_modes(arr(pvc, &["status", "accessModes"])),
        )
    };
    vec![
        json!(name(pvc)),
        json!(phase),
        json!(volume),
        json!(capacity),
        json!(modes),
        json!(volume_class(pvc)),
        json!(opt_str(pvc, &["spec", "volumeAttributesClassName"]).unwrap_or("<unset>")),
        age(pvc, now),
        json!(opt_str(pvc, &["spec", "volumeMode"]).unwrap_or("Filesystem")),
    ]
}

// ---------------------------------------------------------------- resource quotas

static QUOTA_COLUMNS: &[Column] = &[
    NAME,
    col("Request", "string", "Request represents a minimum amount of cpu/memory that a container may consume."),
    col("Limit", "string", "Limits control the maximum amount of cpu/memory that a container may use independent of contention on the node."),
    AGE,
];

fn quota_row(q: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let mut requests = Vec::new();
    let mut limits = Vec::new();
    if let Some(hard) = get(q, &["status", "hard"]).and_then(Value::as_object) {
        let mut keys: Vec<&String> = hard.keys().collect();
        keys.sort();
        for k in keys {
            let used = quantity(get(q, &["status", "used", k.as_str()]));
            let text = format!("{k}: {used}/{}", quantity(hard.get(k.as_str())));
            let mut pieces = k.split('.');
            if pieces.next() == Some("limits") && pieces.next().is_some() {
                limits.push(text);
            } else {
                requests.push(text);
            }
        }
    }
    vec![
        json!(name(q)),
        json!(requests.join(", ")),
        json!(limits.join(", ")),
        age(q, now),
    ]
}

// ---------------------------------------------------------------- pod templates

static PODTEMPLATE_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Containers",
        "string",
        "Names of each container in the template.",
    ),
    col(
        "Images",
        "string",
        "Images referenced by each container in the template.",
    ),
    col("Pod Labels", "string", "The labels for the pod template."),
];

fn podtemplate_row(pt: &Value, _now: DateTime<Utc>) -> Vec<Value> {
    let (names, images) = layout_containers(arr(pt, &["template", "spec", "containers"]));
    vec![
        json!(name(pt)),
        json!(names),
        json!(images),
        json!(format_labels(get(pt, &["template", "metadata", "labels"]))),
    ]
}

#[cfg(test)]
mod tests {
    use super::super::test_support::now;
    use super::super::{columns, row};
    use serde_json::{json, Value};

    fn names(resource: &str) -> Vec<&'static str> {
        columns(resource, "").iter().map(|c| c.name).collect()
    }

    fn pod(status: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-0", "namespace": "default", "creationTimestamp": "2025-01-01T11:00:00Z"},
            "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": "nginx"}, {"name": "sidecar", "image": "envoy"}]},
            "status": status,
        })
    }

    #[test]
    fn pod_columns() {
        assert_eq!(
            names("pods"),
            [
                "Name",
                "Ready",
                "Status",
                "Restarts",
                "Age",
                "IP",
                "Node",
                "Nominated Node",
                "Readiness Gates"
            ]
        );
        let prio: Vec<i32> = columns("pods", "").iter().map(|c| c.priority).collect();
        assert_eq!(prio, [0, 0, 0, 0, 0, 1, 1, 1, 1]);
        assert_eq!(columns("pods", "")[3].type_, "string");
    }

    #[test]
    fn pod_crash_loop_back_off() {
        let p = pod(json!({
            "phase": "Running", "podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}],
            "conditions": [{"type": "Ready", "status": "False"}, {"type": "Initialized", "status": "True"}],
            "containerStatuses": [
                {"name": "app", "ready": false, "restartCount": 5,
                 "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 2m40s"}},
                 "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                     "finishedAt": "2025-01-01T11:55:00Z"}}},
                {"name": "sidecar", "ready": true, "restartCount": 0, "state": {"running": {"startedAt": "2025-01-01T11:00:05Z"}}}
            ]
        }));
        let r = row("pods", "", &p, now());
        assert_eq!(
            r,
            vec![
                json!("web-0"),
                json!("1/2"),
                json!("CrashLoopBackOff"),
                json!("5 (5m ago)"),
                json!("60m"),
                json!("10.244.1.5"),
                json!("node-1"),
                json!("<none>"),
                json!("<none>")
            ]
        );
    }

    #[test]
    fn pod_running_pending_and_terminating() {
        let running = pod(json!({
            "phase": "Running", "podIPs": [{"ip": "10.0.0.9"}],
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [
                {"name": "app", "ready": true, "restartCount": 0, "state": {"running": {}}},
                {"name": "sidecar", "ready": true, "restartCount": 0, "state": {"running": {}}}
            ]
        }));
        let r = row("pods", "", &running, now());
        assert_eq!(r[1], json!("2/2"));
        assert_eq!(r[2], json!("Running"));
        assert_eq!(r[3], json!("0"));

        let mut term = running.clone();
        term["metadata"]["deletionTimestamp"] = json!("2025-01-01T11:59:00Z");
        assert_eq!(row("pods", "", &term, now())[2], json!("Terminating"));

        let pending = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]},
            "status": {"phase": "Pending"}});
        let r = row("pods", "", &pending, now());
        assert_eq!(r[1], json!("0/1"));
        assert_eq!(r[2], json!("Pending"));
        assert_eq!(r[4], json!("<unknown>"));
        assert_eq!(r[6], json!("<none>"));

        let pulling = pod(json!({"phase": "Pending", "containerStatuses": [
            {"name": "app", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ErrImagePull"}}}]}));
        assert_eq!(row("pods", "", &pulling, now())[2], json!("ErrImagePull"));

        let oom = pod(json!({"phase": "Running", "containerStatuses": [
            {"name": "app", "ready": false, "restartCount": 1, "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}));
        let r = row("pods", "", &oom, now());
        assert_eq!(r[2], json!("OOMKilled"));
        assert_eq!(r[3], json!("1"), "no lastState, no '(ago)' suffix");

        let sig = pod(json!({"phase": "Running", "containerStatuses": [
            {"name": "app", "ready": false, "state": {"terminated": {"exitCode": 0, "signal": 9}}}]}));
        assert_eq!(row("pods", "", &sig, now())[2], json!("Signal:9"));
    }

    #[test]
    fn pod_completed_and_evicted() {
        let done = pod(json!({"phase": "Succeeded", "containerStatuses": [
            {"name": "app", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}));
        assert_eq!(row("pods", "", &done, now())[2], json!("Completed"));
        // One container completed, another still running: Running / NotReady.
        let mixed = pod(
            json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [
                {"name": "app", "ready": true, "state": {"running": {}}},
                {"name": "sidecar", "ready": false, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}),
        );
        assert_eq!(row("pods", "", &mixed, now())[2], json!("NotReady"));
        let evicted = pod(json!({"phase": "Failed", "reason": "Evicted"}));
        assert_eq!(row("pods", "", &evicted, now())[2], json!("Evicted"));
        let gated = pod(json!({"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]}));
        assert_eq!(row("pods", "", &gated, now())[2], json!("SchedulingGated"));
    }

    #[test]
    fn pod_init_containers() {
        let mut p = pod(json!({"phase": "Pending",
            "initContainerStatuses": [
                {"name": "init-db", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                {"name": "init-cfg", "ready": false, "restartCount": 0, "state": {"running": {}}}],
            "containerStatuses": [{"name": "app", "ready": false, "state": {"waiting": {"reason": "PodInitializing"}}}]}));
        p["spec"]["initContainers"] = json!([{"name": "init-db"}, {"name": "init-cfg"}]);
        assert_eq!(row("pods", "", &p, now())[2], json!("Init:1/2"));

        p["status"]["initContainerStatuses"][1]["state"] =
            json!({"waiting": {"reason": "CrashLoopBackOff"}});
        p["status"]["initContainerStatuses"][1]["restartCount"] = json!(3);
        let r = row("pods", "", &p, now());
        assert_eq!(r[2], json!("Init:CrashLoopBackOff"));
        assert_eq!(r[3], json!("3"));

        p["status"]["initContainerStatuses"][1]["state"] = json!({"terminated": {"exitCode": 2}});
        assert_eq!(row("pods", "", &p, now())[2], json!("Init:ExitCode:2"));

        // A native sidecar (restartPolicy: Always) counts towards READY.
        let mut s = pod(
            json!({"phase": "Running", "conditions": [{"type": "Initialized", "status": "True"}],
            "initContainerStatuses": [{"name": "proxy", "ready": true, "started": true, "restartCount": 1,
                "state": {"running": {}}, "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2025-01-01T11:00:00Z"}}}],
            "containerStatuses": [
                {"name": "app", "ready": true, "state": {"running": {}}},
                {"name": "sidecar", "ready": true, "state": {"running": {}}}]}),
        );
        s["spec"]["initContainers"] = json!([{"name": "proxy", "restartPolicy": "Always"}]);
        let r = row("pods", "", &s, now());
        assert_eq!(r[1], json!("3/3"));
        assert_eq!(r[2], json!("Running"));
        assert_eq!(r[3], json!("1 (60m ago)"));
    }

    #[test]
    fn pod_readiness_gates() {
        let mut p = pod(
            json!({"phase": "Running", "conditions": [{"type": "example.com/lb", "status": "True"}],
            "nominatedNodeName": "node-2"}),
        );
        p["spec"]["readinessGates"] =
            json!([{"conditionType": "example.com/lb"}, {"conditionType": "example.com/x"}]);
        let r = row("pods", "", &p, now());
        assert_eq!(r[7], json!("node-2"));
        assert_eq!(r[8], json!("1/2"));
    }

    #[test]
    fn node_not_ready_and_cordoned() {
        assert_eq!(
            names("nodes"),
            [
                "Name",
                "Status",
                "Roles",
                "Age",
                "Version",
                "Internal-IP",
                "External-IP",
                "OS-Image",
                "Kernel-Version",
                "Container-Runtime"
            ]
        );
        let node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "worker-1", "creationTimestamp": "2024-12-30T09:00:00Z",
                "labels": {"node-role.kubernetes.io/worker": "", "node-role.kubernetes.io/control-plane": "", "kubernetes.io/hostname": "worker-1"}},
            "spec": {"unschedulable": true},
            "status": {
                "conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "Unknown"}],
                "addresses": [{"type": "InternalIP", "address": "192.168.64.5"}, {"type": "Hostname", "address": "worker-1"}],
                "nodeInfo": {"kubeletVersion": "v1.32.0", "osImage": "Ubuntu 24.04 LTS", "kernelVersion": "6.8.0-31-generic",
                    "containerRuntimeVersion": "rkube://0.1.0"}}
        });
        assert_eq!(
            row("nodes", "", &node, now()),
            vec![
                json!("worker-1"),
                json!("NotReady,SchedulingDisabled"),
                json!("control-plane,worker"),
                json!("2d3h"),
                json!("v1.32.0"),
                json!("192.168.64.5"),
                json!("<none>"),
                json!("Ubuntu 24.04 LTS"),
                json!("6.8.0-31-generic"),
                json!("rkube://0.1.0")
            ]
        );
        let bare = json!({"metadata": {"name": "n"}});
        let r = row("nodes", "", &bare, now());
        assert_eq!(r[1], json!("Unknown"));
        assert_eq!(r[2], json!("<none>"));
        assert_eq!(r[7], json!("<unknown>"));
        let ready = json!({"metadata": {"name": "n", "labels": {"kubernetes.io/role": "master"}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        let r = row("nodes", "", &ready, now());
        assert_eq!(r[1], json!("Ready"));
        assert_eq!(r[2], json!("master"));
    }

    #[test]
    fn services() {
        assert_eq!(
            names("services"),
            [
                "Name",
                "Type",
                "Cluster-IP",
                "External-IP",
                "Port(s)",
                "Age",
                "Selector"
            ]
        );
        let np = json!({"metadata": {"name": "web", "creationTimestamp": "2025-01-01T11:59:55Z"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.12.7", "clusterIPs": ["10.96.12.7"],
                "selector": {"app": "web"},
                "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080, "protocol": "TCP"},
                          {"port": 53, "protocol": "UDP", "nodePort": 30053}]}});
        assert_eq!(
            row("services", "", &np, now()),
            vec![
                json!("web"),
                json!("NodePort"),
                json!("10.96.12.7"),
                json!("<none>"),
                json!("80:30080/TCP,53:30053/UDP"),
                json!("5s"),
                json!("app=web")
            ]
        );
        let lb = json!({"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer", "clusterIPs": ["10.96.0.20"],
            "ports": [{"port": 443, "protocol": "TCP", "nodePort": 31443}]}});
        assert_eq!(row("services", "", &lb, now())[3], json!("<pending>"));
        let mut lb2 = lb.clone();
        lb2["status"] = json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}, {"hostname": "a.example.com"}]}});
        assert_eq!(
            row("services", "", &lb2, now())[3],
            json!("203.0.113.10,a.example.com")
        );
        let headless = json!({"metadata": {"name": "db"}, "spec": {"clusterIP": "None", "clusterIPs": ["None"]}});
        let r = row("services", "", &headless, now());
        assert_eq!(r[1], json!("ClusterIP"));
        assert_eq!(r[2], json!("None"));
        assert_eq!(r[4], json!("<none>"));
        assert_eq!(r[6], json!("<none>"));
        let ext = json!({"metadata": {"name": "x"}, "spec": {"type": "ExternalName", "externalName": "example.com"}});
        let r = row("services", "", &ext, now());
        assert_eq!(r[2], json!("<none>"));
        assert_eq!(r[3], json!("example.com"));
    }

    #[test]
    fn endpoints_and_small_kinds() {
        let ep = json!({"metadata": {"name": "web"}, "subsets": [
            {"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}], "ports": [{"port": 80}, {"port": 443}]}]});
        assert_eq!(
            row("endpoints", "", &ep, now())[1],
            json!("10.0.0.1:80,10.0.0.2:80,10.0.0.1:443 + 1 more...")
        );
        assert_eq!(
            row("endpoints", "", &json!({"metadata": {"name": "e"}}), now())[1],
            json!("<none>")
        );

        let cm = json!({"metadata": {"name": "cfg"}, "data": {"a": "1", "b": "2"}, "binaryData": {"c": "AA=="}});
        assert_eq!(row("configmaps", "", &cm, now())[1], json!(3));
        let sec = json!({"metadata": {"name": "tls"}, "type": "kubernetes.io/tls", "data": {"tls.crt": "", "tls.key": ""}});
        assert_eq!(
            row("secrets", "", &sec, now())[1..3],
            [json!("kubernetes.io/tls"), json!(2)]
        );
        let sa = json!({"metadata": {"name": "default"}});
        assert_eq!(row("serviceaccounts", "", &sa, now())[1], json!(0));
        let ns = json!({"metadata": {"name": "kube-system", "creationTimestamp": "2025-01-01T11:58:00Z"}, "status": {"phase": "Active"}});
        assert_eq!(
            row("namespaces", "", &ns, now()),
            vec![json!("kube-system"), json!("Active"), json!("2m")]
        );
    }

    #[test]
    fn events() {
        assert_eq!(
            names("events"),
            [
                "Last Seen",
                "Type",
                "Reason",
                "Object",
                "Subobject",
                "Source",
                "Message",
                "First Seen",
                "Count",
                "Name"
            ]
        );
        let ev = json!({"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "web-0.17a", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "web-0", "fieldPath": "spec.containers{app}"},
            "reason": "BackOff", "message": "Back-off restarting failed container\n", "type": "Warning",
            "source": {"component": "kubelet", "host": "node-1"},
            "firstTimestamp": "2025-01-01T11:00:00Z", "lastTimestamp": "2025-01-01T11:59:30Z", "count": 12});
        assert_eq!(
            row("events", "", &ev, now()),
            vec![
                json!("30s"),
                json!("Warning"),
                json!("BackOff"),
                json!("pod/web-0"),
                json!("spec.containers{app}"),
                json!("kubelet, node-1"),
                json!("Back-off restarting failed container"),
                json!("60m"),
                json!(12),
                json!("web-0.17a")
            ]
        );
        let new = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e2"},
            "regarding": {"kind": "Deployment", "name": "web"}, "reason": "ScalingReplicaSet",
            "note": "Scaled up", "type": "Normal", "reportingController": "deployment-controller",
            "eventTime": "2025-01-01T11:59:50.000000Z"});
        let r = row("events", "events.k8s.io", &new, now());
        assert_eq!(r[0], json!("10s"));
        assert_eq!(r[3], json!("deployment/web"));
        assert_eq!(r[5], json!("deployment-controller"));
        assert_eq!(r[6], json!("Scaled up"));
        assert_eq!(r[8], json!(1));
    }

    #[test]
    fn volumes_quota_rc() {
        let pv = json!({"metadata": {"name": "pv1", "creationTimestamp": "2025-01-01T11:00:00Z"},
            "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteMany", "ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "local",
                "claimRef": {"namespace": "default", "name": "data"}},
            "status": {"phase": "Bound"}});
        assert_eq!(
            row("persistentvolumes", "", &pv, now()),
            vec![
                json!("pv1"),
                json!("10Gi"),
                json!("RWO,RWX"),
                json!("Delete"),
                json!("Bound"),
                json!("default/data"),
                json!("local"),
                json!("<unset>"),
                json!(""),
                json!("60m"),
                json!("Filesystem")
            ]
        );
        let pvc = json!({"metadata": {"name": "data"}, "spec": {"storageClassName": "local"}, "status": {"phase": "Pending"}});
        let r = row("persistentvolumeclaims", "", &pvc, now());
        assert_eq!(
            r[1..7],
            [
                json!("Pending"),
                json!(""),
                json!(""),
                json!(""),
                json!("local"),
                json!("<unset>")
            ]
        );

        let q = json!({"metadata": {"name": "q"}, "status": {
            "hard": {"pods": "10", "limits.cpu": "4", "requests.memory": "1Gi"},
            "used": {"pods": "2", "limits.cpu": "500m"}}});
        let r = row("resourcequotas", "", &q, now());
        assert_eq!(r[1], json!("pods: 2/10, requests.memory: 0/1Gi"));
        assert_eq!(r[2], json!("limits.cpu: 500m/4"));

        let rc = json!({"metadata": {"name": "rc"}, "spec": {"replicas": 3, "selector": {"app": "x"},
            "template": {"spec": {"containers": [{"name": "a", "image": "i"}]}}}, "status": {"replicas": 3, "readyReplicas": 2}});
        assert_eq!(
            row("replicationcontrollers", "", &rc, now())[1..4],
            [json!(3), json!(3), json!(2)]
        );
        assert_eq!(
            row("replicationcontrollers", "", &rc, now())[7],
            json!("app=x")
        );
    }
}
