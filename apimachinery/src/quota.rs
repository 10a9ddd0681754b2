//! Resource quota accounting (`k8s.io/kubernetes/pkg/quota/v1` and its evaluators):
//! what one object charges against a ResourceQuota, which of a quota's resource names
//! each kind answers for, quota scopes, and the resource-list arithmetic quota
//! admission and the quota controller share. Objects are `serde_json::Value`s as the
//! API serves them; quantities are exact [`Quantity`]s.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use crate::quantity::{Quantity, QuantityFormat};

/// Resource names and their quantities (`corev1.ResourceList`), in name order.
pub type ResourceList = BTreeMap<String, Quantity>;

/// `<class>.storageclass.storage.k8s.io/<resource>`: PVC usage charged to a class.
pub const STORAGE_CLASS_SUFFIX: &str = ".storageclass.storage.k8s.io/";

/// The quota resources the pod evaluator counts besides hugepages and extended ones.
const POD_RESOURCES: &[&str] = &[
    "count/pods",
    "cpu",
    "memory",
    "ephemeral-storage",
    "requests.cpu",
    "requests.memory",
    "requests.ephemeral-storage",
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
    "pods",
];

/// Resources for which a quota requires every container to state a request or limit.
const POD_VALIDATION_RESOURCES: &[&str] = &["cpu", "memory", "requests.cpu", "requests.memory", "limits.cpu", "limits.memory"];

const SERVICE_RESOURCES: &[&str] = &["count/services", "services", "services.nodeports", "services.loadbalancers"];

const PVC_RESOURCES: &[&str] = &["persistentvolumeclaims", "requests.storage"];

/// Core kinds that also answer to their bare plural (`configmaps` as well as
/// `count/configmaps`), as Kubernetes' legacy object-count evaluators do.
const LEGACY_COUNTS: &[&str] = &["configmaps", "secrets", "replicationcontrollers", "resourcequotas"];

/// `corev1.ResourceQuotaScope*`.
pub const SCOPES: &[&str] = &["Terminating", "NotTerminating", "BestEffort", "NotBestEffort", "PriorityClass", "CrossNamespacePodAffinity"];

fn one() -> Quantity {
    Quantity::from_units(1, QuantityFormat::DecimalSI)
}

fn zero() -> Quantity {
    Quantity::from_units(0, QuantityFormat::DecimalSI)
}

/// A quantity from a JSON string or number; `None` if it does not parse.
pub fn quantity_of(v: &Value) -> Option<Quantity> {
    match v {
        Value::String(s) => Quantity::parse(s).ok(),
        Value::Number(n) => Quantity::parse(&n.to_string()).ok(),
        _ => None,
    }
}

/// A resource list from a JSON map (`spec.hard`, `resources.requests`); entries that are
/// not quantities are left out.
pub fn parse_list(v: Option<&Value>) -> ResourceList {
    v.and_then(Value::as_object).into_iter().flatten().filter_map(|(k, v)| quantity_of(v).map(|q| (k.clone(), q))).collect()
}

/// A resource list as JSON, each quantity in its canonical form.
pub fn to_json(list: &ResourceList) -> Value {
    Value::Object(list.iter().map(|(k, q)| (k.clone(), Value::String(q.to_string()))).collect())
}

/// `a + b` as Kubernetes' `Quantity.Add`: a zero takes the other's format.
pub fn add_quantity(a: Quantity, b: Quantity) -> Quantity {
    if a.is_zero() {
        b + a
    } else {
        a + b
    }
}

/// `a - b` as Kubernetes' `Quantity.Sub`: a zero takes the other's format.
pub fn sub_quantity(a: Quantity, b: Quantity) -> Quantity {
    if a.is_zero() {
        zero_like(b) - b
    } else {
        a - b
    }
}

fn zero_like(q: Quantity) -> Quantity {
    Quantity::from_units(0, q.format())
}

/// Every key of either list; values of keys in both are summed (`quota.Add`).
pub fn add(a: &ResourceList, b: &ResourceList) -> ResourceList {
    let mut out = a.clone();
    for (k, v) in b {
        match out.get_mut(k) {
            Some(cur) => *cur = add_quantity(*cur, *v),
            None => {
                out.insert(k.clone(), *v);
            }
        }
    }
    out
}

/// `a - b` per key, never below zero; keys only in `b` come out as zero
/// (`quota.SubtractWithNonNegativeResult`).
pub fn subtract_non_negative(a: &ResourceList, b: &ResourceList) -> ResourceList {
    let mut out = ResourceList::new();
    for (k, v) in a {
        let d = match b.get(k) {
            Some(o) => sub_quantity(*v, *o),
            None => *v,
        };
        out.insert(k.clone(), if d.nanos() < 0 { zero_like(*v) } else { d });
    }
    for k in b.keys() {
        out.entry(k.clone()).or_insert_with(zero);
    }
    out
}

/// The list without its zero entries.
pub fn remove_zeros(list: &ResourceList) -> ResourceList {
    list.iter().filter(|(_, q)| !q.is_zero()).map(|(k, q)| (k.clone(), *q)).collect()
}

/// The entries of `list` whose names are in `names` (`quota.Mask`).
pub fn mask<'a>(list: &ResourceList, names: impl IntoIterator<Item = &'a String>) -> ResourceList {
    names.into_iter().filter_map(|n| list.get(n).map(|q| (n.clone(), *q))).collect()
}

/// Names whose value in `a` is above the one in `b` (only names in both count), sorted;
/// empty when `a <= b` (`quota.LessThanOrEqual`).
pub fn exceeded(a: &ResourceList, b: &ResourceList) -> Vec<String> {
    b.iter().filter(|(k, limit)| a.get(*k).is_some_and(|v| v > limit)).map(|(k, _)| k.clone()).collect()
}

/// Names with a negative value, sorted.
pub fn negative(list: &ResourceList) -> Vec<String> {
    list.iter().filter(|(_, q)| q.nanos() < 0).map(|(k, _)| k.clone()).collect()
}

/// Same names and equal values (`quota.Equals`).
pub fn equals(a: &ResourceList, b: &ResourceList) -> bool {
    a.len() == b.len() && a.iter().all(|(k, v)| b.get(k) == Some(v))
}

/// `limits.cpu=1,pods=2`, names sorted, as quota errors print a list.
pub fn pretty_print(list: &ResourceList) -> String {
    list.iter().map(|(k, q)| format!("{k}={q}")).collect::<Vec<_>>().join(",")
}

/// A zero for each of `names` (what a quota has used before anything is counted).
pub fn zeros<'a>(names: impl IntoIterator<Item = &'a String>) -> ResourceList {
    names.into_iter().map(|n| (n.clone(), zero())).collect()
}

/// `count/<resource>` for the core group, `count/<resource>.<group>` otherwise.
pub fn object_count_name(group: &str, resource: &str) -> String {
    if group.is_empty() {
        format!("count/{resource}")
    } else {
        format!("count/{resource}.{group}")
    }
}

/// Resources quota never charges (Kubernetes ignores events).
pub fn ignored(group: &str, resource: &str) -> bool {
    resource == "events" && (group.is_empty() || group == "events.k8s.io")
}

/// Whether an update of this resource can change what it charges: Services (a type
/// change) and PersistentVolumeClaims (a resize). Pods change only through `resize`,
/// and object counts only on create.
pub fn handles_update(group: &str, resource: &str) -> bool {
    group.is_empty() && matches!(resource, "services" | "persistentvolumeclaims")
}

// ---------------------------------------------------------------- what objects charge

/// What one object of `group`/`resource` charges, now.
pub fn usage(group: &str, resource: &str, obj: &Value) -> ResourceList {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    usage_at(group, resource, obj, now)
}

/// What one object charges at `now` (Unix seconds: a pod past its deletion grace period
/// no longer charges compute).
pub fn usage_at(group: &str, resource: &str, obj: &Value, now: i64) -> ResourceList {
    match (group, resource) {
        ("", "pods") => pod_usage(obj, now),
        ("", "services") => service_usage(obj),
        ("", "persistentvolumeclaims") => claim_usage(obj),
        _ => {
            let mut out = ResourceList::from([(object_count_name(group, resource), one())]);
            if group.is_empty() && LEGACY_COUNTS.contains(&resource) {
                out.insert(resource.to_string(), one());
            }
            out
        }
    }
}

/// Whether a pod's compute resources count: not terminal, and not stuck past its
/// deletion grace period (`QuotaV1Pod`). `count/pods` counts every stored pod.
pub fn pod_counts_compute(pod: &Value, now: i64) -> bool {
    if matches!(pod.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed")) {
        return false;
    }
    let deletion = pod.pointer("/metadata/deletionTimestamp").and_then(Value::as_str).and_then(unix_seconds);
    let grace = pod.pointer("/metadata/deletionGracePeriodSeconds").and_then(Value::as_i64);
    if let (Some(deleted), Some(grace)) = (deletion, grace) {
        if now > deleted.saturating_add(grace) {
            return false;
        }
    }
    true
}

fn pod_usage(pod: &Value, now: i64) -> ResourceList {
    let result = ResourceList::from([("count/pods".to_string(), one())]);
    if !pod_counts_compute(pod, now) {
        return result;
    }
    let requests = pod_requests(pod, true);
    let limits = pod_limits(pod, true);
    add(&result, &pod_compute_usage(&requests, &limits))
}

/// The quota resources a set of requests and limits amounts to
/// (`podComputeUsageHelper`): `pods`, `cpu` and `requests.cpu`, `limits.cpu`, the same
/// for memory and ephemeral storage, hugepages and extended resources.
pub fn pod_compute_usage(requests: &ResourceList, limits: &ResourceList) -> ResourceList {
    let mut out = ResourceList::from([("pods".to_string(), one())]);
    for r in ["cpu", "memory", "ephemeral-storage"] {
        if let Some(q) = requests.get(r) {
            out.insert(r.to_string(), *q);
            out.insert(format!("requests.{r}"), *q);
        }
        if let Some(q) = limits.get(r) {
            out.insert(format!("limits.{r}"), *q);
        }
    }
    for (name, q) in requests {
        if name.starts_with("hugepages-") {
            out.insert(name.clone(), *q);
            out.insert(format!("requests.{name}"), *q);
        }
        if is_extended_resource_name(name) {
            out.insert(format!("requests.{name}"), *q);
        }
    }
    out
}

/// A resource outside `kubernetes.io` with a domain (`example.com/gpu`), which quota
/// tracks as `requests.<name>`.
pub fn is_extended_resource_name(name: &str) -> bool {
    let native = !name.contains('/') || name.contains("kubernetes.io/");
    !native && !name.starts_with("requests.") && crate::validation::is_qualified_name(&format!("requests.{name}")).is_empty()
}

fn add_into(into: &mut ResourceList, from: &ResourceList) {
    for (k, v) in from {
        match into.get_mut(k) {
            Some(cur) => *cur = add_quantity(*cur, *v),
            None => {
                into.insert(k.clone(), *v);
            }
        }
    }
}

fn max_into(into: &mut ResourceList, from: &ResourceList) {
    for (k, v) in from {
        match into.get_mut(k) {
            Some(cur) if *cur >= *v => {}
            Some(cur) => *cur = *v,
            None => {
                into.insert(k.clone(), *v);
            }
        }
    }
}

/// The sum over app containers of `field` (`requests` or `limits`), against the largest
/// init container (each counted with the sidecars started before it; sidecars, init
/// containers with `restartPolicy: Always`, also add to the sum) — Kubernetes'
/// `AggregateContainerRequests`/`Limits`.
fn aggregate(spec: &Value, field: &str) -> ResourceList {
    let list = |c: &Value| parse_list(c.get("resources").and_then(|r| r.get(field)));
    let mut total = ResourceList::new();
    for c in spec.get("containers").and_then(Value::as_array).into_iter().flatten() {
        add_into(&mut total, &list(c));
    }
    let mut sidecars = ResourceList::new();
    let mut init = ResourceList::new();
    for c in spec.get("initContainers").and_then(Value::as_array).into_iter().flatten() {
        let own = list(c);
        if c.get("restartPolicy").and_then(Value::as_str) == Some("Always") {
            add_into(&mut total, &own);
            add_into(&mut sidecars, &own);
            max_into(&mut init, &sidecars);
        } else {
            let mut running = own;
            add_into(&mut running, &sidecars);
            max_into(&mut init, &running);
        }
    }
    max_into(&mut total, &init);
    total
}

/// Pod-level `spec.resources` override the containers' sum for cpu and memory.
fn pod_level_override(spec: &Value, field: &str, list: &mut ResourceList) {
    let pod_level = parse_list(spec.pointer(&format!("/resources/{field}")));
    for r in ["cpu", "memory"] {
        if let Some(q) = pod_level.get(r) {
            list.insert(r.to_string(), *q);
        }
    }
}

/// What a pod requests (`resourcehelper.PodRequests`), with `spec.overhead` added when
/// `overhead` is set (quota counts it; LimitRanger does not).
pub fn pod_requests(pod: &Value, overhead: bool) -> ResourceList {
    let spec = pod.get("spec").unwrap_or(&Value::Null);
    let mut reqs = aggregate(spec, "requests");
    pod_level_override(spec, "requests", &mut reqs);
    if overhead {
        add_into(&mut reqs, &parse_list(spec.get("overhead")));
    }
    reqs
}

/// A pod's limits (`resourcehelper.PodLimits`); overhead adds only to resources that
/// have a limit.
pub fn pod_limits(pod: &Value, overhead: bool) -> ResourceList {
    let spec = pod.get("spec").unwrap_or(&Value::Null);
    let mut limits = aggregate(spec, "limits");
    pod_level_override(spec, "limits", &mut limits);
    if overhead {
        for (k, v) in parse_list(spec.get("overhead")) {
            if let Some(cur) = limits.get_mut(&k) {
                *cur = add_quantity(*cur, v);
            }
        }
    }
    limits
}

fn service_usage(svc: &Value) -> ResourceList {
    let ports = svc.pointer("/spec/ports").and_then(Value::as_array).map_or(0, Vec::len) as i64;
    let count = |n: i64| Quantity::from_units(n, QuantityFormat::DecimalSI);
    let mut out = ResourceList::from([
        ("count/services".to_string(), one()),
        ("services".to_string(), one()),
        ("services.loadbalancers".to_string(), zero()),
        ("services.nodeports".to_string(), zero()),
    ]);
    match svc.pointer("/spec/type").and_then(Value::as_str) {
        Some("NodePort") => {
            out.insert("services.nodeports".into(), count(ports));
        }
        Some("LoadBalancer") => {
            let node_ports = if svc.pointer("/spec/allocateLoadBalancerNodePorts").and_then(Value::as_bool) == Some(false) {
                let with = svc.pointer("/spec/ports").and_then(Value::as_array).into_iter().flatten();
                with.filter(|p| p.get("nodePort").and_then(Value::as_i64).is_some_and(|n| n != 0)).count() as i64
            } else {
                ports
            };
            out.insert("services.nodeports".into(), count(node_ports));
            out.insert("services.loadbalancers".into(), one());
        }
        _ => {}
    }
    out
}

/// The storage class a claim names: the beta annotation first, then the field.
fn claim_class(pvc: &Value) -> Option<&str> {
    pvc.pointer("/metadata/annotations/volume.beta.kubernetes.io~1storage-class")
        .and_then(Value::as_str)
        .or_else(|| pvc.pointer("/spec/storageClassName").and_then(Value::as_str))
        .filter(|s| !s.is_empty())
}

fn round_up_bytes(q: Quantity) -> Quantity {
    if q.nanos() % 1_000_000_000 == 0 {
        q
    } else {
        Quantity::from_units(q.to_units().clamp(i64::MIN as i128, i64::MAX as i128) as i64, q.format())
    }
}

fn claim_usage(pvc: &Value) -> ResourceList {
    let mut out = ResourceList::from([("persistentvolumeclaims".to_string(), one()), ("count/persistentvolumeclaims".to_string(), one())]);
    let class = claim_class(pvc);
    if let Some(class) = class {
        out.insert(format!("{class}{STORAGE_CLASS_SUFFIX}persistentvolumeclaims"), one());
    }
    let requested = pvc.pointer("/spec/resources/requests/storage").and_then(quantity_of);
    let allocated = pvc.pointer("/status/allocatedResources/storage").and_then(quantity_of);
    let storage = match (requested, allocated) {
        (Some(r), Some(a)) if a > r => Some(a),
        (Some(r), _) => Some(r),
        (None, a) => a,
    };
    if let Some(storage) = storage.map(round_up_bytes) {
        out.insert("requests.storage".into(), storage);
        if let Some(class) = class {
            out.insert(format!("{class}{STORAGE_CLASS_SUFFIX}requests.storage"), storage);
        }
    }
    out
}

// ---------------------------------------------------------------- which quotas apply

/// Which of a quota's resource `names` objects of `group`/`resource` are counted
/// against (an evaluator's `MatchingResources`).
pub fn matching_resources(group: &str, resource: &str, names: &[String]) -> Vec<String> {
    let count = object_count_name(group, resource);
    names
        .iter()
        .filter(|n| {
            let n = n.as_str();
            match (group, resource) {
                ("", "pods") => {
                    POD_RESOURCES.contains(&n)
                        || n.starts_with("hugepages-")
                        || n.starts_with("requests.hugepages-")
                        || n.strip_prefix("requests.").is_some_and(is_extended_resource_name)
                }
                ("", "services") => SERVICE_RESOURCES.contains(&n),
                ("", "persistentvolumeclaims") => {
                    n == count || PVC_RESOURCES.contains(&n) || PVC_RESOURCES.iter().any(|r| n.ends_with(&format!("{STORAGE_CLASS_SUFFIX}{r}")))
                }
                _ => n == count || (group.is_empty() && LEGACY_COUNTS.contains(&resource) && n == resource),
            }
        })
        .cloned()
        .collect()
}

/// The kinds (group, resource) whose objects a quota with these resource names counts.
pub fn tracked_kinds(names: &[String]) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let core = ["pods", "services", "persistentvolumeclaims", "configmaps", "secrets", "replicationcontrollers", "resourcequotas"];
    for name in names {
        if let Some(counted) = name.strip_prefix("count/") {
            let (resource, group) = counted.split_once('.').unwrap_or((counted, ""));
            if !resource.is_empty() && !ignored(group, resource) {
                out.insert((group.to_string(), resource.to_string()));
            }
            continue;
        }
        for r in core {
            if !matching_resources("", r, std::slice::from_ref(name)).is_empty() {
                out.insert((String::new(), r.to_string()));
            }
        }
    }
    out
}

/// One scope requirement of a quota: `spec.scopes` entries (operator `Exists`) and
/// `spec.scopeSelector.matchExpressions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeRequirement {
    pub scope_name: String,
    pub operator: String,
    pub values: Vec<String>,
}

/// Every scope requirement of a quota (`getScopeSelectorsFromQuota`).
pub fn scope_requirements(quota: &Value) -> Vec<ScopeRequirement> {
    let mut out: Vec<ScopeRequirement> = quota
        .pointer("/spec/scopes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|s| ScopeRequirement { scope_name: s.to_string(), operator: "Exists".into(), values: vec![] })
        .collect();
    for e in quota.pointer("/spec/scopeSelector/matchExpressions").and_then(Value::as_array).into_iter().flatten() {
        let text = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        let values = e.get("values").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect();
        out.push(ScopeRequirement { scope_name: text("scopeName"), operator: text("operator"), values });
    }
    out
}

/// Whether an object falls within a quota's scopes: always without scopes; only pods
/// with them (other kinds have no scopes to match).
pub fn matches_scopes(quota: &Value, group: &str, resource: &str, obj: &Value) -> bool {
    let requirements = scope_requirements(quota);
    if requirements.is_empty() {
        return true;
    }
    if !(group.is_empty() && resource == "pods") {
        return false;
    }
    requirements.iter().all(|r| pod_matches_scope(r, obj))
}

/// Whether a pod is in one scope (`podMatchesScopeFunc`).
pub fn pod_matches_scope(req: &ScopeRequirement, pod: &Value) -> bool {
    match req.scope_name.as_str() {
        "Terminating" => is_terminating(pod),
        "NotTerminating" => !is_terminating(pod),
        "BestEffort" => is_best_effort(pod),
        "NotBestEffort" => !is_best_effort(pod),
        "PriorityClass" => {
            let class = pod.pointer("/spec/priorityClassName").and_then(Value::as_str).filter(|s| !s.is_empty());
            match req.operator.as_str() {
                "Exists" => class.is_some(),
                "DoesNotExist" => class.is_none(),
                "In" => class.is_some_and(|c| req.values.iter().any(|v| v == c)),
                "NotIn" => class.is_none_or(|c| !req.values.iter().any(|v| v == c)),
                _ => false,
            }
        }
        "CrossNamespacePodAffinity" => uses_cross_namespace_affinity(pod),
        _ => false,
    }
}

/// A pod with `activeDeadlineSeconds >= 0`.
pub fn is_terminating(pod: &Value) -> bool {
    pod.pointer("/spec/activeDeadlineSeconds").and_then(Value::as_i64).is_some_and(|s| s >= 0)
}

/// A pod with no cpu or memory request or limit above zero, in any container or at pod
/// level: QoS class BestEffort.
pub fn is_best_effort(pod: &Value) -> bool {
    let spec = pod.get("spec").unwrap_or(&Value::Null);
    let positive = |res: Option<&Value>| {
        let list = parse_list(res);
        ["cpu", "memory"].iter().any(|r| list.get(*r).is_some_and(|q| q.nanos() > 0))
    };
    let pod_level = ["requests", "limits"].iter().any(|f| positive(spec.pointer(&format!("/resources/{f}"))));
    let containers = ["containers", "initContainers"].iter().flat_map(|l| spec.get(*l).and_then(Value::as_array).into_iter().flatten());
    let any = containers.into_iter().any(|c| ["requests", "limits"].iter().any(|f| positive(c.get("resources").and_then(|r| r.get(*f)))));
    !(pod_level || any)
}

fn uses_cross_namespace_affinity(pod: &Value) -> bool {
    let cross = |term: &Value| {
        term.get("namespaceSelector").is_some_and(|s| !s.is_null()) || term.get("namespaces").and_then(Value::as_array).is_some_and(|n| !n.is_empty())
    };
    ["podAffinity", "podAntiAffinity"].iter().any(|kind| {
        let Some(a) = pod.pointer(&format!("/spec/affinity/{kind}")) else { return false };
        let required = a.get("requiredDuringSchedulingIgnoredDuringExecution").and_then(Value::as_array).into_iter().flatten().any(cross);
        let preferred = a
            .get("preferredDuringSchedulingIgnoredDuringExecution")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|w| w.get("podAffinityTerm"))
            .any(cross);
        required || preferred
    })
}

/// A quota's limits (`spec.hard`).
pub fn hard_of(quota: &Value) -> ResourceList {
    parse_list(quota.pointer("/spec/hard"))
}

/// What one object charges against one quota: `None` when the quota does not apply to it
/// (tracks none of the kind's resources, or its scopes leave the object out); otherwise
/// the object's usage limited to the quota's resources.
pub fn usage_for_quota(quota: &Value, group: &str, resource: &str, obj: &Value, now: i64) -> Option<ResourceList> {
    let names: Vec<String> = hard_of(quota).into_keys().collect();
    let matched = matching_resources(group, resource, &names);
    if matched.is_empty() || !matches_scopes(quota, group, resource, obj) {
        return None;
    }
    Some(mask(&usage_at(group, resource, obj, now), &matched))
}

/// The quota admission rule inherited from before QoS: when a quota limits cpu or memory,
/// every container must state the matching request or limit. `required` are the quota's
/// resources the pod evaluator matched. The message is Kubernetes'
/// (`must specify limits.cpu for: web; requests.memory for: app,web`).
pub fn pod_constraints(pod: &Value, required: &[String]) -> Result<(), String> {
    let required: BTreeSet<&str> = required.iter().map(String::as_str).filter(|r| POD_VALIDATION_RESOURCES.contains(r)).collect();
    if required.is_empty() {
        return Ok(());
    }
    let mut missing: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let spec = pod.get("spec").unwrap_or(&Value::Null);
    for list in ["containers", "initContainers"] {
        for c in spec.get(list).and_then(Value::as_array).into_iter().flatten() {
            let requests = parse_list(c.pointer("/resources/requests"));
            let limits = parse_list(c.pointer("/resources/limits"));
            let has = pod_compute_usage(&requests, &limits);
            let name = c.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
            for r in required.iter().filter(|r| !has.contains_key(**r)) {
                missing.entry(r).or_default().insert(name.clone());
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let parts: Vec<String> = missing.iter().map(|(r, names)| format!("{r} for: {}", names.iter().cloned().collect::<Vec<_>>().join(","))).collect();
    Err(format!("must specify {}", parts.join("; ")))
}

/// A quota's `status` for a usage: `hard` is `spec.hard`, `used` has each of its
/// resources (zero when nothing counted).
pub fn status_for(quota: &Value, used: &ResourceList) -> Value {
    let hard = hard_of(quota);
    let mut full = zeros(hard.keys());
    for (k, v) in mask(used, hard.keys()) {
        full.insert(k, v);
    }
    json!({"hard": to_json(&hard), "used": to_json(&full)})
}

/// Seconds since the Unix epoch of an RFC 3339 time (`2024-05-01T09:00:00Z`, with an
/// optional fraction and offset).
pub fn unix_seconds(ts: &str) -> Option<i64> {
    let b = ts.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| ts.get(r).filter(|s| s.bytes().all(|c| c.is_ascii_digit())).and_then(|s| s.parse::<i64>().ok());
    let (y, mo, d, h, mi, s) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = ts.get(19..)?;
    if let Some(frac) = rest.strip_prefix('.') {
        rest = frac.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first() {
                Some(b'+') => 1,
                Some(b'-') => -1,
                _ => return None,
            };
            let (oh, om) = rest.get(1..)?.split_once(':')?;
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60)
        }
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + s - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn list(pairs: &[(&str, &str)]) -> ResourceList {
        pairs.iter().map(|(k, v)| (k.to_string(), q(v))).collect()
    }

    fn shown(l: &ResourceList) -> String {
        pretty_print(l)
    }

    #[test]
    fn pod_usage_counts_requests_and_limits() {
        let pod = json!({"spec": {"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "200m", "memory": "128Mi"}}},
            {"name": "b", "resources": {"requests": {"cpu": "300m", "example.com/gpu": "1", "hugepages-2Mi": "4Mi"}, "limits": {"cpu": "1"}}},
        ]}});
        let u = usage_at("", "pods", &pod, 0);
        assert_eq!(
            shown(&u),
            "count/pods=1,cpu=400m,hugepages-2Mi=4Mi,limits.cpu=1200m,limits.memory=128Mi,memory=64Mi,pods=1,\
             requests.cpu=400m,requests.example.com/gpu=1,requests.hugepages-2Mi=4Mi,requests.memory=64Mi"
        );
    }

    #[test]
    fn init_containers_count_as_the_max_against_the_sum() {
        // App containers sum to 300m; the big init container needs 500m alone.
        let pod = json!({"spec": {
            "initContainers": [{"name": "init", "resources": {"requests": {"cpu": "500m", "memory": "10Mi"}}}],
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "100Mi"}}},
                {"name": "b", "resources": {"requests": {"cpu": "200m", "memory": "100Mi"}}},
            ],
        }});
        let u = usage_at("", "pods", &pod, 0);
        assert_eq!(u.get("requests.cpu"), Some(&q("500m")));
        assert_eq!(u.get("requests.memory"), Some(&q("200Mi")));
        // A sidecar (restartPolicy Always) adds to the sum and to every later init container.
        let pod = json!({"spec": {
            "initContainers": [
                {"name": "proxy", "restartPolicy": "Always", "resources": {"requests": {"cpu": "100m"}}},
                {"name": "migrate", "resources": {"requests": {"cpu": "450m"}}},
            ],
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "200m"}}}],
        }});
        let u = usage_at("", "pods", &pod, 0);
        assert_eq!(u.get("requests.cpu"), Some(&q("550m")), "max(200m + 100m, 100m + 450m)");
        // Overhead adds to requests, and to limits only where there is one.
        let pod = json!({"spec": {"overhead": {"cpu": "10m", "memory": "1Mi"}, "containers": [{"name": "a", "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "100m"}}}]}});
        let u = usage_at("", "pods", &pod, 0);
        assert_eq!(
            shown(&mask(&u, &["requests.cpu".to_string(), "limits.cpu".to_string(), "requests.memory".to_string(), "limits.memory".to_string()])),
            "limits.cpu=110m,requests.cpu=110m,requests.memory=1Mi"
        );
    }

    #[test]
    fn terminal_and_long_deleted_pods_charge_only_their_count() {
        let mut pod = json!({"spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}]}, "status": {"phase": "Succeeded"}});
        assert_eq!(shown(&usage_at("", "pods", &pod, 0)), "count/pods=1");
        pod["status"]["phase"] = json!("Failed");
        assert_eq!(shown(&usage_at("", "pods", &pod, 0)), "count/pods=1");
        pod["status"]["phase"] = json!("Running");
        assert_eq!(usage_at("", "pods", &pod, 0).get("pods"), Some(&q("1")));
        // Deleted at 09:00:00 with 30 s grace: charged until 09:00:30, then not.
        pod["metadata"] = json!({"deletionTimestamp": "2024-05-01T09:00:00Z", "deletionGracePeriodSeconds": 30});
        let deleted = unix_seconds("2024-05-01T09:00:00Z").unwrap_or_default();
        assert_eq!(deleted, 1_714_554_000);
        assert!(usage_at("", "pods", &pod, deleted + 30).contains_key("cpu"));
        assert_eq!(shown(&usage_at("", "pods", &pod, deleted + 31)), "count/pods=1");
    }

    #[test]
    fn services_claims_and_counts() {
        let svc = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 443}]}});
        assert_eq!(shown(&usage_at("", "services", &svc, 0)), "count/services=1,services=1,services.loadbalancers=0,services.nodeports=2");
        let lb = json!({"spec": {"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false, "ports": [{"port": 80, "nodePort": 30001}, {"port": 81}]}});
        assert_eq!(shown(&usage_at("", "services", &lb, 0)), "count/services=1,services=1,services.loadbalancers=1,services.nodeports=1");
        let pvc =
            json!({"spec": {"storageClassName": "fast", "resources": {"requests": {"storage": "1Gi"}}}, "status": {"allocatedResources": {"storage": "2Gi"}}});
        assert_eq!(
            shown(&usage_at("", "persistentvolumeclaims", &pvc, 0)),
            "count/persistentvolumeclaims=1,fast.storageclass.storage.k8s.io/persistentvolumeclaims=1,\
             fast.storageclass.storage.k8s.io/requests.storage=2Gi,persistentvolumeclaims=1,requests.storage=2Gi"
        );
        assert_eq!(shown(&usage_at("", "configmaps", &json!({}), 0)), "configmaps=1,count/configmaps=1");
        assert_eq!(shown(&usage_at("apps", "deployments", &json!({}), 0)), "count/deployments.apps=1");
        assert!(ignored("", "events") && !ignored("", "pods"));
    }

    #[test]
    fn matching_and_tracked_kinds() {
        let names: Vec<String> = [
            "pods",
            "limits.cpu",
            "services",
            "requests.storage",
            "gold.storageclass.storage.k8s.io/requests.storage",
            "count/deployments.apps",
            "configmaps",
            "requests.example.com/gpu",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(matching_resources("", "pods", &names), vec!["pods", "limits.cpu", "requests.example.com/gpu"]);
        assert_eq!(matching_resources("", "persistentvolumeclaims", &names), vec!["requests.storage", "gold.storageclass.storage.k8s.io/requests.storage"]);
        assert_eq!(matching_resources("apps", "deployments", &names), vec!["count/deployments.apps"]);
        assert_eq!(matching_resources("", "configmaps", &names), vec!["configmaps"]);
        let kinds: Vec<String> = tracked_kinds(&names).into_iter().map(|(g, r)| format!("{r}.{g}")).collect();
        assert_eq!(kinds, vec!["configmaps.", "persistentvolumeclaims.", "pods.", "services.", "deployments.apps"]);
    }

    #[test]
    fn scopes() {
        let best_effort = json!({"spec": {"containers": [{"name": "a"}]}});
        let burstable =
            json!({"spec": {"activeDeadlineSeconds": 60, "priorityClassName": "high", "containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}]}});
        let quota = |spec: Value| json!({"spec": spec});
        let be = quota(json!({"hard": {"pods": "1"}, "scopes": ["BestEffort"]}));
        assert!(matches_scopes(&be, "", "pods", &best_effort));
        assert!(!matches_scopes(&be, "", "pods", &burstable));
        assert!(!matches_scopes(&be, "", "services", &json!({})), "scoped quotas only match pods");
        let term = quota(json!({"scopes": ["Terminating", "NotBestEffort"]}));
        assert!(matches_scopes(&term, "", "pods", &burstable));
        assert!(!matches_scopes(&term, "", "pods", &best_effort));
        let prio = quota(json!({"scopeSelector": {"matchExpressions": [{"scopeName": "PriorityClass", "operator": "In", "values": ["high", "medium"]}]}}));
        assert!(matches_scopes(&prio, "", "pods", &burstable));
        assert!(!matches_scopes(&prio, "", "pods", &best_effort));
        let not_in = quota(json!({"scopeSelector": {"matchExpressions": [{"scopeName": "PriorityClass", "operator": "NotIn", "values": ["high"]}]}}));
        assert!(matches_scopes(&not_in, "", "pods", &best_effort));
        assert!(!matches_scopes(&not_in, "", "pods", &burstable));
        assert!(matches_scopes(&quota(json!({"hard": {"pods": "1"}})), "", "services", &json!({})));
    }

    #[test]
    fn constraints_name_the_containers_missing_requests() {
        let pod = json!({"spec": {"containers": [
            {"name": "web", "resources": {"requests": {"memory": "1Gi"}}},
            {"name": "app", "resources": {"limits": {"cpu": "1"}}},
        ]}});
        let required = vec!["limits.cpu".to_string(), "requests.memory".to_string(), "pods".to_string()];
        assert_eq!(pod_constraints(&pod, &required), Err("must specify limits.cpu for: web; requests.memory for: app".to_string()));
        assert_eq!(pod_constraints(&pod, &["pods".to_string()]), Ok(()));
    }

    #[test]
    fn arithmetic() {
        let used = list(&[("limits.cpu", "700m"), ("pods", "2")]);
        let requested = list(&[("limits.cpu", "500m"), ("pods", "1")]);
        let hard = list(&[("limits.cpu", "1"), ("pods", "2")]);
        let new = add(&used, &requested);
        assert_eq!(shown(&new), "limits.cpu=1200m,pods=3");
        assert_eq!(exceeded(&new, &hard), vec!["limits.cpu", "pods"]);
        assert!(exceeded(&used, &hard).is_empty());
        // A zero takes the other's format: 0 + 1Gi prints 1Gi, not 1073741824.
        let z = zeros(&["requests.storage".to_string()]);
        assert_eq!(shown(&add(&z, &list(&[("requests.storage", "1Gi")]))), "requests.storage=1Gi");
        let delta = subtract_non_negative(
            &list(&[("services.nodeports", "1"), ("services", "1")]),
            &list(&[("services.nodeports", "2"), ("services", "1"), ("x", "1")]),
        );
        assert!(remove_zeros(&delta).is_empty(), "{}", shown(&delta));
        assert_eq!(to_json(&list(&[("memory", "1024Mi")])), json!({"memory": "1Gi"}));
        assert!(equals(&list(&[("cpu", "1")]), &list(&[("cpu", "1000m")])));
        let status = status_for(&json!({"spec": {"hard": {"pods": "2", "cpu": "1"}}}), &list(&[("pods", "1"), ("other", "3")]));
        assert_eq!(status, json!({"hard": {"pods": "2", "cpu": "1"}, "used": {"cpu": "0", "pods": "1"}}));
    }

    #[test]
    fn timestamps() {
        assert_eq!(unix_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(unix_seconds("2000-03-01T00:00:00.5Z"), Some(951_868_800));
        assert_eq!(unix_seconds("2024-05-01T11:00:00+02:00"), unix_seconds("2024-05-01T09:00:00Z"));
        assert_eq!(unix_seconds("yesterday"), None);
    }
}
