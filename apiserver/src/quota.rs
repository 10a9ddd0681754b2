//! The LimitRanger and ResourceQuota admission plugins, as Kubernetes runs them.
//!
//! LimitRanger fills a new pod's missing requests and limits from its namespace's
//! LimitRanges, then holds containers, pods and claims to their `min`, `max` and
//! `maxLimitRequestRatio`. ResourceQuota admission refuses a write that would take a
//! quota's usage above `spec.hard`, and otherwise charges it: `status.used` is raised in
//! the stored quota with a compare-and-swap on its revision (retried on conflict), so two
//! apiservers, or an apiserver and the quota controller, cannot both spend the same
//! room. Within one process, admissions in a namespace that has quotas also queue on a
//! per-namespace lock so that they do not conflict with each other at all. What objects
//! charge is [`apimachinery::quota`], shared with the quota controller.
//!
//! Two departures from Kubernetes, so that quotas work before (or without) the quota
//! controller: the limits are `spec.hard` (Kubernetes enforces `status.hard`, which only
//! the controller copies over), and a quota with no `status.used` yet for a resource is
//! counted from the watch caches instead of refusing with "status unknown for quota".

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock};

use apimachinery::quota::{self as q, ResourceList};
use apimachinery::Quantity;
use serde_json::{json, Map, Value};
use tracing::debug;

use crate::errors::ApiError;
use crate::registry::{self, ResourceInfo};
use crate::server::ApiServer;
use crate::storage::{RangeOptions, Revision, StoreError};

/// The annotation LimitRanger leaves on a pod whose resources it filled in.
pub const LIMIT_RANGER_ANNOTATION: &str = "kubernetes.io/limit-ranger";

/// How many times a quota charge is tried against concurrent quota writers.
const CHARGE_ATTEMPTS: usize = 5;

/// Go's `resource.MaxMilliValue`: above it LimitRanger compares whole units.
const MAX_MILLI_VALUE: i128 = (i64::MAX / 1000) as i128;

fn name_of(obj: &Value) -> String {
    obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string()
}

fn namespace_of(obj: &Value) -> &str {
    obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default()
}

fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

// ---------------------------------------------------------------- LimitRanger

/// The LimitRange API defaults of a `type: Container` item (`SetDefaults_LimitRangeItem`):
/// the default limit falls back to `max`, the default request to the default limit, then
/// to `min`.
pub fn default_limit_range(limit_range: &mut Value) {
    for item in limit_range.pointer_mut("/spec/limits").and_then(Value::as_array_mut).into_iter().flatten() {
        default_limit_item(item);
    }
}

fn default_limit_item(item: &mut Value) {
    if item.get("type").and_then(Value::as_str) != Some("Container") {
        return;
    }
    let Some(o) = item.as_object_mut() else { return };
    let map = |o: &Map<String, Value>, k: &str| o.get(k).and_then(Value::as_object).cloned().unwrap_or_default();
    let (max, min) = (map(o, "max"), map(o, "min"));
    let mut default = map(o, "default");
    let mut default_request = map(o, "defaultRequest");
    for (k, v) in max {
        default.entry(k).or_insert(v);
    }
    for (k, v) in &default {
        default_request.entry(k.clone()).or_insert_with(|| v.clone());
    }
    for (k, v) in min {
        default_request.entry(k).or_insert(v);
    }
    if !default.is_empty() {
        o.insert("default".into(), Value::Object(default));
    }
    if !default_request.is_empty() {
        o.insert("defaultRequest".into(), Value::Object(default_request));
    }
}

/// A LimitRange's items with their API defaults applied.
fn limit_items(limit_range: &Value) -> Vec<Value> {
    let mut items: Vec<Value> = limit_range.pointer("/spec/limits").and_then(Value::as_array).cloned().unwrap_or_default();
    for item in &mut items {
        default_limit_item(item);
    }
    items
}

fn item_type(item: &Value) -> &str {
    item.get("type").and_then(Value::as_str).unwrap_or_default()
}

/// The (name, quantity) entries of an item's map, in the order written.
fn item_list(item: &Value, field: &str) -> Vec<(String, Quantity)> {
    item.get(field).and_then(Value::as_object).into_iter().flatten().filter_map(|(k, v)| q::quantity_of(v).map(|q| (k.clone(), q))).collect()
}

/// LimitRanger's admission of a pod: every LimitRange's container defaults are filled in
/// first (what a container states is kept; the pod is annotated with what was set), then
/// each LimitRange's constraints are checked; the messages of the first LimitRange the
/// pod breaks are returned, worded as Kubernetes words them.
pub fn apply_limit_ranges(pod: &mut Value, ranges: &[Arc<Value>]) -> Result<(), Vec<String>> {
    let all: Vec<Vec<Value>> = ranges.iter().map(|r| limit_items(r)).collect();
    let mut changed = false;
    for items in &all {
        changed |= merge_container_defaults(pod, items);
    }
    if changed {
        // The QoS class was computed before the defaults filled resources in.
        let qos = crate::admission::qos_class(pod.get("spec").unwrap_or(&Value::Null));
        if let Some(status) = pod.get_mut("status").and_then(Value::as_object_mut) {
            status.insert("qosClass".into(), json!(qos));
        }
    }
    for items in &all {
        let errors = validate_pod(pod, items);
        if !errors.is_empty() {
            return Err(errors);
        }
    }
    Ok(())
}

/// Fills missing container requests and limits from one LimitRange's `type: Container`
/// defaults (`mergePodResourceRequirements`); returns whether anything was set.
fn merge_container_defaults(pod: &mut Value, items: &[Value]) -> bool {
    let mut requests = Map::new();
    let mut limits = Map::new();
    for item in items.iter().filter(|i| item_type(i) == "Container") {
        for (k, v) in item_list(item, "defaultRequest") {
            requests.insert(k, json!(v.to_string()));
        }
        for (k, v) in item_list(item, "default") {
            limits.insert(k, json!(v.to_string()));
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return false;
    }
    let mut notes = Vec::new();
    for (list, prefix) in [("containers", "container"), ("initContainers", "init container")] {
        let Some(containers) = pod.pointer_mut(&format!("/spec/{list}")).and_then(Value::as_array_mut) else { continue };
        for c in containers.iter_mut() {
            let name = name_of_container(c);
            let Some(c) = c.as_object_mut() else { continue };
            let resources = c.entry("resources").or_insert_with(|| json!({}));
            if !resources.is_object() {
                *resources = json!({});
            }
            let set_limits = fill_missing(resources, "limits", &limits);
            let set_requests = fill_missing(resources, "requests", &requests);
            if !set_requests.is_empty() {
                notes.push(format!("{} request for {prefix} {name}", set_requests.join(", ")));
            }
            if !set_limits.is_empty() {
                notes.push(format!("{} limit for {prefix} {name}", set_limits.join(", ")));
            }
        }
    }
    if notes.is_empty() {
        return false;
    }
    if let Some(meta) = pod.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
        if !annotations.is_object() {
            *annotations = json!({});
        }
        if let Some(a) = annotations.as_object_mut() {
            a.insert(LIMIT_RANGER_ANNOTATION.into(), json!(format!("LimitRanger plugin set: {}", notes.join("; "))));
        }
    }
    true
}

fn name_of_container(c: &Value) -> String {
    c.get("name").and_then(Value::as_str).unwrap_or_default().to_string()
}

/// Adds the `defaults` missing from `resources[field]`; returns their names, sorted.
fn fill_missing(resources: &mut Value, field: &str, defaults: &Map<String, Value>) -> Vec<String> {
    let mut set = Vec::new();
    let Some(r) = resources.as_object_mut() else { return set };
    for (k, v) in defaults {
        let present = r.get(field).and_then(Value::as_object).is_some_and(|m| m.contains_key(k));
        if present {
            continue;
        }
        let entry = r.entry(field).or_insert_with(|| json!({}));
        if !entry.is_object() {
            *entry = json!({});
        }
        if let Some(m) = entry.as_object_mut() {
            m.insert(k.clone(), v.clone());
            set.push(k.clone());
        }
    }
    set.sort();
    set
}

/// The request, limit and bound at one precision (`requestLimitEnforcedValues`):
/// thousandths unless a value is too large for them.
fn comparable(request: Option<&Quantity>, limit: Option<&Quantity>, enforced: &Quantity) -> (i128, i128, i128) {
    let units = |q: Option<&Quantity>| q.map_or(0, Quantity::to_units);
    let (r, l, e) = (units(request), units(limit), enforced.to_units());
    if r <= MAX_MILLI_VALUE && l <= MAX_MILLI_VALUE && e <= MAX_MILLI_VALUE {
        let millis = |q: Option<&Quantity>| q.map_or(0, Quantity::to_millis);
        (millis(request), millis(limit), enforced.to_millis())
    } else {
        (r, l, e)
    }
}

fn min_constraint(kind: &str, resource: &str, enforced: &Quantity, requests: &ResourceList, limits: &ResourceList) -> Option<String> {
    let (req, lim) = (requests.get(resource), limits.get(resource));
    let (r, l, e) = comparable(req, lim, enforced);
    match (req, lim) {
        (None, _) => Some(format!("minimum {resource} usage per {kind} is {enforced}.  No request is specified")),
        (Some(req), _) if r < e => Some(format!("minimum {resource} usage per {kind} is {enforced}, but request is {req}")),
        (_, Some(lim)) if l < e => Some(format!("minimum {resource} usage per {kind} is {enforced}, but limit is {lim}")),
        _ => None,
    }
}

fn max_constraint(kind: &str, resource: &str, enforced: &Quantity, requests: &ResourceList, limits: &ResourceList) -> Option<String> {
    let (req, lim) = (requests.get(resource), limits.get(resource));
    let (r, l, e) = comparable(req, lim, enforced);
    match (req, lim) {
        (_, None) => Some(format!("maximum {resource} usage per {kind} is {enforced}.  No limit is specified")),
        (_, Some(lim)) if l > e => Some(format!("maximum {resource} usage per {kind} is {enforced}, but limit is {lim}")),
        (Some(req), _) if r > e => Some(format!("maximum {resource} usage per {kind} is {enforced}, but request is {req}")),
        _ => None,
    }
}

fn max_request_constraint(kind: &str, resource: &str, enforced: &Quantity, requests: &ResourceList) -> Option<String> {
    let req = requests.get(resource);
    let (r, _, e) = comparable(req, None, enforced);
    match req {
        None => Some(format!("maximum {resource} usage per {kind} is {enforced}.  No request is specified")),
        Some(req) if r > e => Some(format!("maximum {resource} usage per {kind} is {enforced}, but request is {req}")),
        _ => None,
    }
}

fn ratio_constraint(kind: &str, resource: &str, enforced: &Quantity, requests: &ResourceList, limits: &ResourceList) -> Option<String> {
    let (req, lim) = (requests.get(resource), limits.get(resource));
    let (r, l, _) = comparable(req, lim, enforced);
    if req.is_none() || r == 0 {
        return Some(format!("{resource} max limit to request ratio per {kind} is {enforced}, but no request is specified or request is 0"));
    }
    if lim.is_none() || l == 0 {
        return Some(format!("{resource} max limit to request ratio per {kind} is {enforced}, but no limit is specified or limit is 0"));
    }
    let shown = l as f64 / r as f64;
    let (observed, bound) =
        if enforced.to_units() <= MAX_MILLI_VALUE { (shown * 1000.0, enforced.to_millis() as f64) } else { (shown, enforced.to_units() as f64) };
    (observed > bound).then(|| format!("{resource} max limit to request ratio per {kind} is {enforced}, but provided ratio is {shown:.6}"))
}

/// One item's min, max and ratio checks of a set of requests and limits.
fn check_item(item: &Value, requests: &ResourceList, limits: &ResourceList, errors: &mut Vec<String>) {
    let kind = item_type(item);
    for (k, v) in item_list(item, "min") {
        errors.extend(min_constraint(kind, &k, &v, requests, limits));
    }
    for (k, v) in item_list(item, "max") {
        errors.extend(max_constraint(kind, &k, &v, requests, limits));
    }
    for (k, v) in item_list(item, "maxLimitRequestRatio") {
        errors.extend(ratio_constraint(kind, &k, &v, requests, limits));
    }
}

/// `PodValidateLimitFunc`: `type: Container` items per container (app, then init), and
/// `type: Pod` items against the pod's total.
fn validate_pod(pod: &Value, items: &[Value]) -> Vec<String> {
    let mut errors = Vec::new();
    let spec = pod.get("spec").unwrap_or(&Value::Null);
    for item in items {
        match item_type(item) {
            "Container" => {
                for list in ["containers", "initContainers"] {
                    for c in spec.get(list).and_then(Value::as_array).into_iter().flatten() {
                        let requests = q::parse_list(c.pointer("/resources/requests"));
                        let limits = q::parse_list(c.pointer("/resources/limits"));
                        check_item(item, &requests, &limits, &mut errors);
                    }
                }
            }
            "Pod" => check_item(item, &q::pod_requests(pod, false), &q::pod_limits(pod, false), &mut errors),
            _ => {}
        }
    }
    errors
}

/// LimitRanger's check of a PersistentVolumeClaim's storage request against the
/// `type: PersistentVolumeClaim` items; the messages of the first LimitRange it breaks.
pub fn check_claim_limit_ranges(claim: &Value, ranges: &[Arc<Value>]) -> Result<(), Vec<String>> {
    let requests = q::parse_list(claim.pointer("/spec/resources/requests"));
    for range in ranges {
        let mut errors = Vec::new();
        for item in limit_items(range).iter().filter(|i| item_type(i) == "PersistentVolumeClaim") {
            for (k, v) in item_list(item, "min") {
                errors.extend(min_constraint("PersistentVolumeClaim", &k, &v, &requests, &ResourceList::new()));
            }
            for (k, v) in item_list(item, "max") {
                errors.extend(max_request_constraint("PersistentVolumeClaim", &k, &v, &requests));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
    }
    Ok(())
}

/// Several errors as Go's `utilerrors.NewAggregate` prints them: one alone, more (with
/// repeats dropped) as `[a, b]`.
pub fn aggregate_message(errors: &[String]) -> String {
    let mut seen = HashSet::new();
    let unique: Vec<&str> = errors.iter().map(String::as_str).filter(|e| seen.insert(*e)).collect();
    match unique.as_slice() {
        [one] => one.to_string(),
        many => format!("[{}]", many.join(", ")),
    }
}

/// Whether the watch cache holds any object of `res` in `namespace`. Most namespaces
/// have no quota or LimitRange, and asking the cache first spares every create there a
/// store read (an etcd round trip); only an object created in the last moments, before
/// the cache saw it, can be missed, where the store read would have found it.
fn cached_in_namespace(api: &ApiServer, res: &ResourceInfo, namespace: &str) -> bool {
    match api.cache(res) {
        Ok(cache) => cache.objects().0.iter().any(|o| o.selectable().namespace() == Some(namespace)),
        Err(_) => true,
    }
}

/// The LimitRanges of a namespace, read from the store (a LimitRange created a moment
/// ago applies at once).
async fn limit_ranges(api: &ApiServer, namespace: &str) -> Result<Vec<Arc<Value>>, ApiError> {
    let res = registry::lookup("", "v1", "limitranges").ok_or_else(|| ApiError::internal("limitranges not registered"))?;
    if !cached_in_namespace(api, res, namespace) {
        return Ok(Vec::new());
    }
    let listed = api.store.range(&res.namespace_prefix(Some(namespace)), RangeOptions::default()).await.map_err(ApiError::internal)?;
    Ok(listed.kvs.iter().filter_map(|kv| crate::watchcache::decode_stored(&kv.value, kv.mod_revision).ok()).map(Arc::new).collect())
}

/// The LimitRanger plugin on a create (`old` None) or update: a LimitRange gets its API
/// defaults, a new pod its defaults and checks, a claim its storage checks. Refusals are
/// 403 Forbidden with Kubernetes' message (`pods "web" is forbidden: maximum cpu usage
/// per Container is 500m, but limit is 1`).
pub async fn limit_ranger(api: &ApiServer, res: &ResourceInfo, obj: &mut Value, old: Option<&Value>) -> Result<(), ApiError> {
    if !res.group.is_empty() {
        return Ok(());
    }
    let pod = res.plural == "pods" && old.is_none();
    let claim = res.plural == "persistentvolumeclaims";
    if res.plural == "limitranges" {
        default_limit_range(obj);
        return Ok(());
    }
    if !(pod || claim) || old.is_some_and(|o| o.pointer("/metadata/deletionTimestamp").is_some()) {
        return Ok(());
    }
    let ranges = limit_ranges(api, namespace_of(obj)).await?;
    if ranges.is_empty() {
        return Ok(());
    }
    let checked = if pod { apply_limit_ranges(obj, &ranges) } else { check_claim_limit_ranges(obj, &ranges) };
    checked.map_err(|errors| {
        debug!(resource = res.plural, name = %name_of(obj), ?errors, "refused by a LimitRange");
        ApiError::forbidden(res, &name_of(obj), aggregate_message(&errors))
    })
}

// ---------------------------------------------------------------- ResourceQuota

/// What one object of `res` charges against quotas (`count/pods`, `requests.cpu`, …).
pub fn usage_of(obj: &Value, res: &ResourceInfo) -> ResourceList {
    q::usage_at(res.group, res.plural, obj, now_unix())
}

/// One quota's answer to a charge of `delta` (already the object's usage, or its growth
/// on update) when it has `used` of `hard`: `None` when it tracks none of `delta`, the
/// new usage when it fits, Kubernetes' message when it does not
/// (`exceeded quota: compute, requested: limits.cpu=500m, used: limits.cpu=700m,
/// limited: limits.cpu=1`).
pub fn charge(quota_name: &str, hard: &ResourceList, used: &ResourceList, delta: &ResourceList) -> Result<Option<ResourceList>, String> {
    let requested = q::mask(delta, hard.keys());
    if requested.is_empty() {
        return Ok(None);
    }
    let new_used = q::add(used, &requested);
    let over = q::exceeded(&q::mask(&new_used, requested.keys()), hard);
    if over.is_empty() {
        return Ok(Some(new_used));
    }
    Err(format!(
        "exceeded quota: {quota_name}, requested: {}, used: {}, limited: {}",
        q::pretty_print(&q::mask(&requested, &over)),
        q::pretty_print(&q::mask(used, &over)),
        q::pretty_print(&q::mask(hard, &over)),
    ))
}

/// Serialises quota admission per namespace within this process, so that concurrent
/// creates do not race each other's compare-and-swap (the swap still guards against
/// other apiservers and the quota controller).
static NAMESPACE_LOCKS: LazyLock<std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> = LazyLock::new(Default::default);

fn namespace_lock(namespace: &str) -> Arc<tokio::sync::Mutex<()>> {
    let mut locks = NAMESPACE_LOCKS.lock().unwrap_or_else(|e| e.into_inner());
    // Forget the locks nobody holds or waits on.
    locks.retain(|ns, lock| ns == namespace || Arc::strong_count(lock) > 1);
    locks.entry(namespace.to_string()).or_default().clone()
}

struct StoredQuota {
    key: String,
    revision: Revision,
    object: Value,
}

async fn quotas_in(api: &ApiServer, namespace: &str) -> Result<Vec<StoredQuota>, ApiError> {
    let res = registry::lookup("", "v1", "resourcequotas").ok_or_else(|| ApiError::internal("resourcequotas not registered"))?;
    if !cached_in_namespace(api, res, namespace) {
        return Ok(Vec::new());
    }
    let listed = api.store.range(&res.namespace_prefix(Some(namespace)), RangeOptions::default()).await.map_err(ApiError::internal)?;
    Ok(listed
        .kvs
        .into_iter()
        .filter_map(|kv| {
            let object = serde_json::from_slice(&kv.value).ok()?;
            Some(StoredQuota { key: kv.key, revision: kv.mod_revision, object })
        })
        .collect())
}

/// What the objects in the namespace charge against a quota now, from the watch caches:
/// the usage of a quota that has none recorded for some resource yet (no quota
/// controller has counted since it was created or its `spec.hard` grew).
fn observed_usage(api: &ApiServer, quota: &Value, namespace: &str, now: i64) -> ResourceList {
    let names: Vec<String> = q::hard_of(quota).into_keys().collect();
    let mut used = q::zeros(&names);
    for (group, resource) in q::tracked_kinds(&names) {
        let mut seen = HashSet::new();
        for info in registry::RESOURCES.iter().filter(|r| r.group == group && r.plural == resource && r.namespaced) {
            if !seen.insert(info.storage_resource) {
                continue;
            }
            let Ok(cache) = api.cache(info) else { continue };
            let (objects, _) = cache.objects();
            for o in objects.iter().filter(|o| o.selectable().namespace() == Some(namespace)) {
                if let Some(u) = q::usage_for_quota(quota, &group, &resource, &o.value(), now) {
                    used = q::add(&used, &u);
                }
            }
        }
    }
    used
}

/// ResourceQuota admission of a create (`old` None) or update of `obj` in `namespace`:
/// refuses with 403 Forbidden what would exceed a quota, or what lacks a request or
/// limit a quota requires of pods; otherwise charges every quota that applies.
pub async fn admit(api: &ApiServer, res: &ResourceInfo, namespace: &str, obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    evaluate(api, res, namespace, obj, old, true).await
}

/// [`admit`] for a dry run: the same checks, nothing charged.
pub async fn check(api: &ApiServer, res: &ResourceInfo, namespace: &str, obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    evaluate(api, res, namespace, obj, old, false).await
}

async fn evaluate(api: &ApiServer, res: &ResourceInfo, namespace: &str, obj: &Value, old: Option<&Value>, charge_quotas: bool) -> Result<(), ApiError> {
    if !res.namespaced || namespace.is_empty() || q::ignored(res.group, res.plural) {
        return Ok(());
    }
    if old.is_some() && !q::handles_update(res.group, res.plural) {
        return Ok(());
    }
    // No quota in the namespace (the usual case): no usage to work out.
    let quotas = registry::lookup("", "v1", "resourcequotas").ok_or_else(|| ApiError::internal("resourcequotas not registered"))?;
    if !cached_in_namespace(api, quotas, namespace) {
        return Ok(());
    }
    let name = name_of(obj);
    let now = now_unix();
    let usage = q::usage_at(res.group, res.plural, obj, now);
    let negative = q::negative(&usage);
    let delta = match old {
        Some(old) => q::remove_zeros(&q::subtract_non_negative(&usage, &q::usage_at(res.group, res.plural, old, now))),
        None => q::remove_zeros(&usage),
    };
    // Nothing to charge (most updates), or no quota here: no further work.
    if (delta.is_empty() && negative.is_empty()) || quotas_in(api, namespace).await?.is_empty() {
        return Ok(());
    }
    if !negative.is_empty() {
        return Err(ApiError::forbidden(res, &name, format!("quota usage is negative for resource(s): {}", negative.join(","))));
    }
    let lock = namespace_lock(namespace);
    let _serial = lock.lock().await;
    // A create of a name that is taken fails with AlreadyExists after admission: check it,
    // but charge nothing for it.
    let taken = old.is_none() && api.store.get(&res.key(Some(namespace), &name)).await.map_err(ApiError::internal)?.0.is_some();
    let is_pod = res.group.is_empty() && res.plural == "pods";
    let mut charged: HashSet<String> = HashSet::new();
    let mut last_conflict = String::new();
    for _ in 0..CHARGE_ATTEMPTS {
        let mut writes = Vec::new();
        for stored in quotas_in(api, namespace).await? {
            let quota = &stored.object;
            let quota_name = name_of(quota);
            let hard = q::hard_of(quota);
            let names: Vec<String> = hard.keys().cloned().collect();
            let matched = q::matching_resources(res.group, res.plural, &names);
            if matched.is_empty() || !q::matches_scopes(quota, res.group, res.plural, obj) {
                continue;
            }
            if is_pod {
                q::pod_constraints(obj, &matched).map_err(|m| ApiError::forbidden(res, &name, format!("failed quota: {quota_name}: {m}")))?;
            }
            if charged.contains(&stored.key) {
                continue;
            }
            let mut used = q::parse_list(quota.pointer("/status/used"));
            if matched.iter().any(|r| !used.contains_key(r)) {
                used = observed_usage(api, quota, namespace, now);
                debug!(quota = %stored.key, used = %q::pretty_print(&used), "counted a quota's usage at admission");
            }
            match charge(&quota_name, &hard, &used, &delta) {
                Ok(Some(new_used)) => writes.push((stored, hard, new_used)),
                Ok(None) => {}
                Err(why) => return Err(ApiError::forbidden(res, &name, why)),
            }
        }
        if !charge_quotas || taken || writes.is_empty() {
            return Ok(());
        }
        let mut conflicted = false;
        for (stored, hard, new_used) in writes {
            let mut updated = stored.object;
            if let Some(o) = updated.as_object_mut() {
                o.insert("status".into(), json!({"hard": q::to_json(&hard), "used": q::to_json(&new_used)}));
            }
            match api.store.update(&stored.key, crate::handlers::to_stored(&updated), stored.revision).await {
                Ok(revision) => {
                    debug!(quota = %stored.key, revision, object = %name, used = %q::pretty_print(&new_used), "charged quota");
                    charged.insert(stored.key);
                }
                Err(StoreError::Conflict { .. }) => {
                    conflicted = true;
                    last_conflict = name_of(&updated);
                }
                // Deleted meanwhile: nothing left to charge.
                Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(ApiError::internal(e)),
            }
        }
        if !conflicted {
            return Ok(());
        }
    }
    let quotas = registry::lookup("", "v1", "resourcequotas").ok_or_else(|| ApiError::internal("resourcequotas not registered"))?;
    Err(ApiError::stale(quotas, &last_conflict))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(spec: Value) -> Arc<Value> {
        Arc::new(json!({"metadata": {"name": "limits", "namespace": "ns"}, "spec": {"limits": [spec]}}))
    }

    fn pod(containers: Value) -> Value {
        json!({"metadata": {"name": "web", "namespace": "ns"}, "spec": {"containers": containers}, "status": {"phase": "Pending", "qosClass": "BestEffort"}})
    }

    fn list(pairs: &[(&str, &str)]) -> ResourceList {
        pairs.iter().filter_map(|(k, v)| Quantity::parse(v).ok().map(|q| (k.to_string(), q))).collect()
    }

    #[test]
    fn limit_range_defaults_fill_missing_requests_and_limits() {
        let ranges = [range(json!({"type": "Container", "default": {"cpu": "200m"}, "max": {"cpu": "500m", "memory": "1Gi"}}))];
        let mut p = pod(
            json!([{"name": "web", "image": "nginx"}, {"name": "log", "image": "busybox", "resources": {"limits": {"cpu": "100m"}, "requests": {"cpu": "100m"}}}]),
        );
        assert_eq!(apply_limit_ranges(&mut p, &ranges), Ok(()));
        // Defaults: the default limit, the max where there is no default, requests as the
        // limits; what a container states is kept.
        assert_eq!(p["spec"]["containers"][0]["resources"], json!({"limits": {"cpu": "200m", "memory": "1Gi"}, "requests": {"cpu": "200m", "memory": "1Gi"}}));
        assert_eq!(p["spec"]["containers"][1]["resources"], json!({"limits": {"cpu": "100m", "memory": "1Gi"}, "requests": {"cpu": "100m", "memory": "1Gi"}}));
        assert_eq!(
            p["metadata"]["annotations"][LIMIT_RANGER_ANNOTATION],
            "LimitRanger plugin set: cpu, memory request for container web; cpu, memory limit for container web; memory request for container log; memory limit for container log"
        );
        assert_eq!(p["status"]["qosClass"], "Guaranteed");

        let ranges = [range(json!({"type": "Container", "default": {"cpu": "200m"}, "defaultRequest": {"cpu": "100m"}, "max": {"cpu": "500m"}}))];
        let mut p = pod(json!([{"name": "web", "image": "nginx"}]));
        assert_eq!(apply_limit_ranges(&mut p, &ranges), Ok(()));
        assert_eq!(p["spec"]["containers"][0]["resources"], json!({"limits": {"cpu": "200m"}, "requests": {"cpu": "100m"}}));
        assert_eq!(p["status"]["qosClass"], "Burstable");
    }

    #[test]
    fn limit_range_min_max_and_ratio_messages() {
        let ranges = [range(json!({"type": "Container", "default": {"cpu": "200m"}, "max": {"cpu": "500m"}}))];
        let mut p = pod(json!([{"name": "web", "image": "nginx", "resources": {"limits": {"cpu": "1"}, "requests": {"cpu": "1"}}}]));
        let errors = apply_limit_ranges(&mut p, &ranges).err().unwrap_or_default();
        assert_eq!(errors, vec!["maximum cpu usage per Container is 500m, but limit is 1"]);
        let forbidden = ApiError::forbidden(registry::lookup("", "v1", "pods").expect("pods"), "web", aggregate_message(&errors));
        assert_eq!(forbidden.message, "pods \"web\" is forbidden: maximum cpu usage per Container is 500m, but limit is 1");
        assert_eq!(forbidden.code, 403);

        let ranges = [range(json!({"type": "Container", "min": {"memory": "64Mi"}, "maxLimitRequestRatio": {"cpu": "2"}}))];
        let mut p = pod(
            json!([{"name": "web", "image": "nginx", "resources": {"requests": {"memory": "32Mi", "cpu": "100m"}, "limits": {"memory": "32Mi", "cpu": "300m"}}}]),
        );
        let errors = apply_limit_ranges(&mut p, &ranges).err().unwrap_or_default();
        assert_eq!(
            errors,
            vec![
                "minimum memory usage per Container is 64Mi, but request is 32Mi",
                "cpu max limit to request ratio per Container is 2, but provided ratio is 3.000000"
            ]
        );
        assert_eq!(
            aggregate_message(&errors),
            "[minimum memory usage per Container is 64Mi, but request is 32Mi, cpu max limit to request ratio per Container is 2, but provided ratio is 3.000000]"
        );
        // The min defaults the request; a request below the min with no limit.
        let mut p = pod(json!([{"name": "web", "image": "nginx"}]));
        assert_eq!(apply_limit_ranges(&mut p, &[range(json!({"type": "Container", "min": {"memory": "64Mi"}}))]), Ok(()));
        assert_eq!(p["spec"]["containers"][0]["resources"]["requests"]["memory"], "64Mi");

        // type: Pod sums the containers.
        let ranges = [range(json!({"type": "Pod", "max": {"cpu": "1"}}))];
        let mut p = pod(json!([
            {"name": "a", "image": "nginx", "resources": {"limits": {"cpu": "600m"}}},
            {"name": "b", "image": "nginx", "resources": {"limits": {"cpu": "600m"}}},
        ]));
        assert_eq!(apply_limit_ranges(&mut p, &ranges), Err(vec!["maximum cpu usage per Pod is 1, but limit is 1200m".to_string()]));
        let ranges = [range(json!({"type": "Pod", "max": {"memory": "1Gi"}}))];
        assert_eq!(apply_limit_ranges(&mut p, &ranges), Err(vec!["maximum memory usage per Pod is 1Gi.  No limit is specified".to_string()]));
    }

    #[test]
    fn claims_are_held_to_storage_bounds() {
        let ranges = [range(json!({"type": "PersistentVolumeClaim", "min": {"storage": "1Gi"}, "max": {"storage": "10Gi"}}))];
        let claim = |size: &str| json!({"spec": {"resources": {"requests": {"storage": size}}}});
        assert_eq!(check_claim_limit_ranges(&claim("5Gi"), &ranges), Ok(()));
        assert_eq!(
            check_claim_limit_ranges(&claim("20Gi"), &ranges),
            Err(vec!["maximum storage usage per PersistentVolumeClaim is 10Gi, but request is 20Gi".to_string()])
        );
        assert_eq!(
            check_claim_limit_ranges(&claim("500Mi"), &ranges),
            Err(vec!["minimum storage usage per PersistentVolumeClaim is 1Gi, but request is 500Mi".to_string()])
        );
    }

    #[test]
    fn limit_range_api_defaults() {
        let mut lr = json!({"spec": {"limits": [{"type": "Container", "max": {"cpu": "1"}, "min": {"memory": "1Mi"}}, {"type": "Pod", "max": {"cpu": "2"}}]}});
        default_limit_range(&mut lr);
        assert_eq!(lr["spec"]["limits"][0]["default"], json!({"cpu": "1"}));
        assert_eq!(lr["spec"]["limits"][0]["defaultRequest"], json!({"cpu": "1", "memory": "1Mi"}));
        assert!(lr["spec"]["limits"][1].get("default").is_none());
    }

    #[test]
    fn quota_charges_or_refuses_with_kubernetes_message() {
        let hard = list(&[("pods", "2"), ("limits.cpu", "1")]);
        let used = list(&[("pods", "1"), ("limits.cpu", "200m")]);
        let pod_usage = list(&[("pods", "1"), ("count/pods", "1"), ("limits.cpu", "500m"), ("requests.cpu", "500m")]);
        let new = charge("compute", &hard, &used, &pod_usage).ok().flatten().unwrap_or_default();
        assert_eq!(q::pretty_print(&new), "limits.cpu=700m,pods=2");
        let refused = charge("compute", &hard, &new, &pod_usage).err().unwrap_or_default();
        assert_eq!(refused, "exceeded quota: compute, requested: limits.cpu=500m,pods=1, used: limits.cpu=700m,pods=2, limited: limits.cpu=1,pods=2");
        let pods = registry::lookup("", "v1", "pods").expect("pods");
        assert_eq!(
            ApiError::forbidden(pods, "web", refused).message,
            "pods \"web\" is forbidden: exceeded quota: compute, requested: limits.cpu=500m,pods=1, used: limits.cpu=700m,pods=2, limited: limits.cpu=1,pods=2"
        );
        // A quota that tracks none of it is untouched.
        assert_eq!(charge("objects", &list(&[("configmaps", "1")]), &ResourceList::new(), &pod_usage), Ok(None));
    }

    #[test]
    fn usage_of_a_pod() {
        let pods = registry::lookup("", "v1", "pods").expect("pods");
        let p = json!({"spec": {"containers": [{"name": "a", "resources": {"limits": {"cpu": "1"}, "requests": {"cpu": "500m"}}}]}, "status": {"phase": "Running"}});
        assert_eq!(q::pretty_print(&usage_of(&p, pods)), "count/pods=1,cpu=500m,limits.cpu=1,pods=1,requests.cpu=500m");
    }
}
