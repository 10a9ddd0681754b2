//! Admission: defaulting, validation and allocation for each kind, as Kubernetes' API
//! strategies and built-in admission plugins do it on create and update.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use apimachinery::validation;
use serde_json::{json, Map, Value};

use crate::errors::{ApiError, Cause};
use crate::registry::ResourceInfo;
use crate::server::ApiServer;
use crate::storage::RangeOptions;

/// Held while a new Service's addresses are chosen and stored, so that two creates
/// cannot pick the same ClusterIP or NodePort.
pub type AllocationGuard = Option<AllocationLock>;

/// Held from a Service's address and node-port allocation until its write: the
/// apiserver's own mutex, and a lock key in the store that every apiserver sharing the
/// store (an HA control plane on one etcd) takes too, so that two of them never hand
/// out the same address or port. The store key goes when the guard is dropped.
pub struct AllocationLock {
    _local: tokio::sync::OwnedMutexGuard<()>,
    store: Option<(std::sync::Arc<dyn crate::storage::Store>, crate::storage::Revision)>,
}

impl Drop for AllocationLock {
    fn drop(&mut self) {
        if let (Some((store, revision)), Ok(runtime)) = (self.store.take(), tokio::runtime::Handle::try_current()) {
            runtime.spawn(async move {
                let _ = store.delete(ALLOCATION_LOCK_KEY, Some(revision)).await;
            });
        }
    }
}

/// The store key of the allocation lock.
const ALLOCATION_LOCK_KEY: &str = "/registry/locks/service-allocation";
/// A lock older than this was left by an apiserver that died holding it.
const ALLOCATION_LOCK_STALE: std::time::Duration = std::time::Duration::from_secs(15);
/// How long an allocation waits for the lock.
const ALLOCATION_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Takes the allocation lock: this apiserver's mutex, then (unless `dry_run`) the
/// store's lock key, waiting while another apiserver holds it.
async fn lock_allocation(api: &ApiServer, dry_run: bool) -> Result<AllocationLock, ApiError> {
    let local = api.service_allocation.clone().lock_owned().await;
    if dry_run {
        return Ok(AllocationLock { _local: local, store: None });
    }
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    let deadline = tokio::time::Instant::now() + ALLOCATION_LOCK_WAIT;
    loop {
        let value = serde_json::to_vec(&json!({"holder": api.config.advertise_address.to_string(), "since": now()})).unwrap_or_default();
        match api.store.create(ALLOCATION_LOCK_KEY, value).await {
            Ok(revision) => return Ok(AllocationLock { _local: local, store: Some((api.store.clone(), revision)) }),
            Err(crate::storage::StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(ApiError::internal(e)),
        }
        if let Ok((Some(kv), _)) = api.store.get(ALLOCATION_LOCK_KEY).await {
            let since = serde_json::from_slice::<Value>(&kv.value).ok().and_then(|v| v["since"].as_u64()).unwrap_or(0);
            if now().saturating_sub(since) > ALLOCATION_LOCK_STALE.as_secs() {
                let _ = api.store.delete(ALLOCATION_LOCK_KEY, Some(kv.mod_revision)).await;
                continue;
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(ApiError::timeout("timed out waiting for another apiserver to finish allocating a Service address", 1));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Defaults, validates and allocates for a create. The returned guard must live until
/// the object is stored.
pub async fn admit_create(api: &ApiServer, res: &ResourceInfo, obj: &mut Value, dry_run: bool) -> Result<AllocationGuard, ApiError> {
    let name = name_of(obj);
    decode_check(res, obj, &name)?;
    crate::openapi::prune_unknown_fields(res, obj);
    prepare_for_create(res, obj);
    if res.group.is_empty() && res.kind == "Pod" {
        resolve_priority(api, res, obj).await?;
        if api.security.tokens.is_some() {
            mount_service_account_token(api, obj);
        }
        enforce_pod_security(api, obj, &name)?;
    }
    if res.group.is_empty() && res.kind == "PersistentVolumeClaim" {
        default_storage_class(api, obj).await?;
    }
    if res.group == "networking.k8s.io" && res.kind == "Ingress" {
        default_ingress_class(api, obj).await?;
    }
    default(res, obj);
    crate::quota::limit_ranger(api, res, obj, None).await?;
    let mut causes = validate(res, obj, None);
    let mut guard = None;
    if res.group.is_empty() && res.plural == "services" && causes.is_empty() {
        let g = lock_allocation(api, dry_run).await?;
        allocate_service(api, obj, &mut causes, dry_run).await?;
        guard = Some(g);
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid(res, &name, causes));
    }
    let namespace = obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default().to_string();
    if dry_run {
        crate::quota::check(api, res, &namespace, obj, None).await?;
    } else {
        crate::quota::admit(api, res, &namespace, obj, None).await?;
    }
    Ok(guard)
}

/// The Pod Security policy of `namespace` (its `pod-security.kubernetes.io/*` labels); a
/// namespace with unreadable labels gets Kubernetes' fallback policy (enforce fails
/// closed).
pub fn namespace_pod_security(api: &ApiServer, namespace: &str) -> crate::podsecurity::NamespacePolicy {
    use crate::podsecurity::{NamespacePolicy, PodSecurityError};
    let ns = crate::registry::lookup("", "v1", "namespaces").and_then(|r| api.cache(r).ok().and_then(|c| c.get(&r.key(None, namespace))));
    let labels = ns.as_ref().and_then(|n| n.pointer("/metadata/labels").and_then(Value::as_object).cloned());
    match NamespacePolicy::from_labels(labels.as_ref()) {
        Ok(p) => p,
        Err(PodSecurityError::ParseNamespaceLabels { fallback, .. }) => fallback,
        Err(_) => NamespacePolicy { enforce: crate::podsecurity::Level::Privileged, audit: None, warn: None },
    }
}

/// Pod Security admission's enforce mode: a pod that breaks its namespace's enforced
/// level is refused with Kubernetes' message.
fn enforce_pod_security(api: &ApiServer, pod: &Value, name: &str) -> Result<(), ApiError> {
    use crate::podsecurity::{check, forbidden_reason, Level};
    let namespace = pod.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default");
    let policy = namespace_pod_security(api, namespace);
    if policy.enforce == Level::Privileged {
        return Ok(());
    }
    let violations = check(policy.enforce, pod.get("metadata").unwrap_or(&Value::Null), pod.get("spec").unwrap_or(&Value::Null));
    if violations.is_empty() {
        return Ok(());
    }
    let pods = crate::registry::lookup("", "v1", "pods").ok_or_else(|| ApiError::internal("pods not registered"))?;
    Err(ApiError::forbidden(pods, name, forbidden_reason(policy.enforce, &violations)))
}

/// Pod Security admission's warn mode, for pods and workload templates: the warnings a
/// write of `obj` of `kind` into `namespace` gets.
pub fn pod_security_warnings(api: &ApiServer, kind: &str, namespace: &str, obj: &Value) -> Vec<String> {
    use crate::podsecurity::{check, pod_spec_paths, warning_message, Level};
    let policy = namespace_pod_security(api, namespace);
    let Some(level) = policy.warn.filter(|l| *l != Level::Privileged) else { return Vec::new() };
    let template = if kind == "Pod" { Some(obj) } else { pod_spec_paths(kind).and_then(|p| obj.pointer(p)) };
    let Some(template) = template else { return Vec::new() };
    let violations = check(level, template.get("metadata").unwrap_or(&Value::Null), template.get("spec").unwrap_or(&Value::Null));
    if violations.is_empty() {
        return Vec::new();
    }
    vec![warning_message(level, &violations)]
}

/// A Secret's `stringData` is write-only: its entries are base64-encoded into `data`
/// (overriding keys there) and the field is dropped, as Kubernetes does on every write.
fn fold_string_data(secret: &mut Value) {
    use base64::Engine;
    let Some(obj) = secret.as_object_mut() else { return };
    let Some(Value::Object(plain)) = obj.remove("stringData") else { return };
    let data = obj.entry("data").or_insert_with(|| json!({}));
    if data.is_null() {
        *data = json!({});
    }
    if let Some(data) = data.as_object_mut() {
        for (k, v) in plain {
            let text = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            data.insert(k, Value::String(base64::engine::general_purpose::STANDARD.encode(text)));
        }
    }
}

/// Where a pod's service account credentials appear in its containers.
pub const SERVICE_ACCOUNT_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The ServiceAccount admission plugin's token volume: unless the pod or its account
/// opts out (`automountServiceAccountToken: false`), a projected volume
/// `kube-api-access-<random>` with a bound token (refreshed by the kubelet), the cluster
/// CA (`kube-root-ca.crt`) and the namespace, mounted read-only in every container at
/// [`SERVICE_ACCOUNT_MOUNT_PATH`], as Kubernetes adds it.
fn mount_service_account_token(api: &ApiServer, pod: &mut Value) {
    let namespace = pod.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default").to_string();
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else { return };
    let account = spec
        .get("serviceAccountName")
        .or_else(|| spec.get("serviceAccount"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string();
    let automount = match spec.get("automountServiceAccountToken").and_then(Value::as_bool) {
        Some(b) => b,
        None => {
            let sa = crate::registry::lookup("", "v1", "serviceaccounts").and_then(|r| api.cache(r).ok().and_then(|c| c.get(&r.key(Some(&namespace), &account))));
            sa.and_then(|sa| sa.get("automountServiceAccountToken").and_then(Value::as_bool)).unwrap_or(true)
        }
    };
    if !automount {
        return;
    }
    let mounted_already = ["containers", "initContainers"].iter().any(|list| {
        spec.get(*list).and_then(Value::as_array).into_iter().flatten().any(|c| {
            c.get("volumeMounts").and_then(Value::as_array).into_iter().flatten().any(|m| m.get("mountPath").and_then(Value::as_str) == Some(SERVICE_ACCOUNT_MOUNT_PATH))
        })
    });
    if mounted_already {
        return;
    }
    // Kubernetes' random suffix alphabet (no vowels, no look-alikes).
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let suffix: String = (0..5).map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char).collect();
    let volume_name = format!("kube-api-access-{suffix}");
    let volume = json!({
        "name": volume_name,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    });
    if let Some(volumes) = spec.entry("volumes").or_insert_with(|| json!([])).as_array_mut() {
        volumes.push(volume);
    }
    for list in ["containers", "initContainers"] {
        for c in spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
            if let Some(mounts) = c.as_object_mut().map(|c| c.entry("volumeMounts").or_insert_with(|| json!([]))).and_then(Value::as_array_mut) {
                mounts.push(json!({"name": volume_name, "readOnly": true, "mountPath": SERVICE_ACCOUNT_MOUNT_PATH}));
            }
        }
    }
}

/// The DefaultStorageClass admission plugin: a claim that names no class gets the class
/// annotated `storageclass.kubernetes.io/is-default-class: "true"` (the newest one when
/// several are, as Kubernetes picks). An explicit `""` means "no class" and stays.
async fn default_storage_class(api: &ApiServer, pvc: &mut Value) -> Result<(), ApiError> {
    if pvc.pointer("/spec/storageClassName").is_some_and(|v| !v.is_null()) {
        return Ok(());
    }
    let default = default_class(api, "/registry/storageclasses/", "/metadata/annotations/storageclass.kubernetes.io~1is-default-class").await?;
    if let (Some(name), Some(spec)) = (default, pvc.get_mut("spec").and_then(Value::as_object_mut)) {
        spec.insert("storageClassName".into(), name);
    }
    Ok(())
}

/// The DefaultIngressClass admission plugin: an Ingress that names no class (neither
/// `spec.ingressClassName` nor the older annotation) gets the default IngressClass's.
async fn default_ingress_class(api: &ApiServer, ingress: &mut Value) -> Result<(), ApiError> {
    let named = ingress.pointer("/spec/ingressClassName").is_some_and(|v| !v.is_null())
        || ingress.pointer("/metadata/annotations/kubernetes.io~1ingress.class").is_some();
    if named {
        return Ok(());
    }
    let default = default_class(api, "/registry/ingressclasses/", "/metadata/annotations/ingressclass.kubernetes.io~1is-default-class").await?;
    if let (Some(name), Some(spec)) = (default, ingress.get_mut("spec").and_then(Value::as_object_mut)) {
        spec.insert("ingressClassName".into(), name);
    }
    Ok(())
}

/// The name of the class under `prefix` that `annotation` marks `"true"`; of several,
/// the newest, as Kubernetes picks.
async fn default_class(api: &ApiServer, prefix: &str, annotation: &str) -> Result<Option<Value>, ApiError> {
    let listed = api.store.range(prefix, RangeOptions::default()).await.map_err(ApiError::internal)?;
    let default = listed
        .kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
        .filter(|c| c.pointer(annotation).and_then(Value::as_str) == Some("true"))
        .max_by(|a, b| {
            let t = |c: &Value| c.pointer("/metadata/creationTimestamp").and_then(Value::as_str).unwrap_or("").to_string();
            t(a).cmp(&t(b))
        });
    Ok(default.and_then(|class| class.pointer("/metadata/name").cloned()))
}

/// The Priority admission plugin: a pod's `priorityClassName` (or the global default
/// class) becomes its `spec.priority`; an unknown class is refused. Classes come from the
/// watch cache, as Kubernetes' plugin reads its informer; a named class the cache has
/// not seen yet (created a moment ago) is looked up in the store before it is refused.
async fn resolve_priority(api: &ApiServer, res: &ResourceInfo, pod: &mut Value) -> Result<(), ApiError> {
    let class_name = pod.pointer("/spec/priorityClassName").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
    let classes = crate::registry::lookup("scheduling.k8s.io", "v1", "priorityclasses").ok_or_else(|| ApiError::internal("priorityclasses not registered"))?;
    let cache = api.cache(classes)?;
    let class = match &class_name {
        Some(name) => {
            let key = classes.key(None, name);
            let class = match cache.get(&key) {
                Some(class) => Some(class),
                None => {
                    let (kv, _) = api.store.get(&key).await.map_err(ApiError::internal)?;
                    kv.and_then(|kv| crate::watchcache::decode_stored(&kv.value, kv.mod_revision).ok()).map(std::sync::Arc::new)
                }
            };
            match class {
                Some(class) => Some(class),
                None => {
                    return Err(ApiError::forbidden(res, &name_of(pod), format!("no PriorityClass with name {name} was found")));
                }
            }
        }
        // Several global defaults: the lowest value wins, as in Kubernetes.
        None => cache
            .snapshot()
            .0
            .into_iter()
            .filter(|c| c.get("globalDefault").and_then(Value::as_bool).unwrap_or(false))
            .min_by_key(|c| c.get("value").and_then(Value::as_i64).unwrap_or(0)),
    };
    if let (Some(class), Some(spec)) = (class, pod.get_mut("spec").and_then(Value::as_object_mut)) {
        let value = class.get("value").cloned().unwrap_or(json!(0));
        if spec.get("priority").is_some_and(|p| *p != value && !p.is_null()) && class_name.is_some() {
            // Kubernetes refuses a pod whose priority disagrees with its class.
            return Err(ApiError::forbidden(res, &name_of(pod), "the integer value of priority must not be provided in pod spec; priority admission controller computed it from the given PriorityClass name"));
        }
        spec.insert("priority".into(), value);
        if let Some(name) = class.pointer("/metadata/name").cloned() {
            spec.insert("priorityClassName".into(), name);
        }
        if let Some(policy) = class.get("preemptionPolicy").cloned() {
            spec.insert("preemptionPolicy".into(), policy);
        }
    }
    Ok(())
}

/// Defaults and validates an update against the current object; a Service that now needs
/// node ports gets them. The returned guard must live until the object is stored.
pub async fn admit_update(api: &ApiServer, res: &ResourceInfo, obj: &mut Value, old: &Value, status_only: bool) -> Result<AllocationGuard, ApiError> {
    let name = name_of(obj);
    let mut guard = None;
    let mut causes = Vec::new();
    decode_check(res, obj, &name)?;
    crate::openapi::prune_unknown_fields(res, obj);
    default(res, obj);
    crate::quota::limit_ranger(api, res, obj, Some(old)).await?;
    if res.group.is_empty() && res.plural == "services" {
        // Allocated fields stay as they are unless the client changes them.
        for field in ["clusterIP", "clusterIPs"] {
            if obj.pointer(&format!("/spec/{field}")).is_none() {
                if let Some(v) = old.pointer(&format!("/spec/{field}")) {
                    obj["spec"][field] = v.clone();
                }
            }
        }
        let (keeps, kept) = (needs_node_ports(obj), needs_node_ports(old));
        if let (Some(new_ports), Some(old_ports)) = (obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut), old.pointer("/spec/ports").and_then(Value::as_array)) {
            let old_node_port = |p: &Value| old_ports.iter().find(|o| o.get("port") == p.get("port")).and_then(|o| o.get("nodePort")).cloned();
            if keeps {
                for p in new_ports.iter_mut() {
                    if p.get("nodePort").is_none() {
                        if let Some(np) = old_node_port(p) {
                            p["nodePort"] = np;
                        }
                    }
                }
            } else if kept && new_ports.iter().all(|p| p.get("nodePort").is_none() || p.get("nodePort").cloned() == old_node_port(p)) {
                // A type change away from NodePort/LoadBalancer drops the node ports the
                // client merely carried over (Kubernetes' dropTypeDependentFields), so that
                // `kubectl patch svc x -p '{"spec":{"type":"ClusterIP"}}'` is accepted.
                for p in new_ports.iter_mut() {
                    if let Some(p) = p.as_object_mut() {
                        p.remove("nodePort");
                    }
                }
            }
        }
        let own: HashSet<i64> = node_ports(old).collect();
        let missing = node_ports(obj).count() < obj.pointer("/spec/ports").and_then(Value::as_array).map_or(0, Vec::len);
        if !status_only && keeps && (missing || node_ports(obj).any(|p| !own.contains(&p))) {
            // A type change to NodePort or LoadBalancer, a new port, or a node port asked
            // for by number: allocated under the same lock as creates.
            let g = lock_allocation(api, false).await?;
            let (_, mut used_ports) = service_allocations(api).await?;
            allocate_node_ports(&api.config.service_ranges, obj, &mut used_ports, &own, &mut causes)?;
            guard = Some(g);
        }
    }
    if !status_only {
        causes.extend(validate(res, obj, Some(old)));
    } else if res.group == crate::certificates::GROUP {
        // A CSR's status is its certificate: checked on every write.
        crate::certificates::validate(obj, Some(old), &mut causes);
    }
    if res.group == crate::certificates::GROUP {
        crate::certificates::stamp_conditions(obj);
    }
    causes.extend(validate_immutable(res, obj, old));
    if !causes.is_empty() {
        return Err(ApiError::invalid(res, &name, causes));
    }
    let namespace = obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default().to_string();
    crate::quota::admit(api, res, &namespace, obj, Some(old)).await?;
    Ok(guard)
}

/// Whether a Service of this spec has node ports: NodePort, and LoadBalancer unless
/// `allocateLoadBalancerNodePorts: false`.
fn needs_node_ports(service: &Value) -> bool {
    match service.pointer("/spec/type").and_then(Value::as_str) {
        Some("NodePort") => true,
        Some("LoadBalancer") => service.pointer("/spec/allocateLoadBalancerNodePorts").and_then(Value::as_bool) != Some(false),
        _ => false,
    }
}

fn name_of(obj: &Value) -> String {
    obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string()
}

/// Refuses bodies that do not decode as their kind (a string where a number belongs,
/// say), with the message shape Kubernetes uses.
fn decode_check(res: &ResourceInfo, obj: &Value, _name: &str) -> Result<(), ApiError> {
    macro_rules! check {
        ($($group:literal $kind:literal => $ty:ty),* $(,)?) => {
            match (res.group, res.kind) {
                $(($group, $kind) => <$ty as serde::Deserialize>::deserialize(obj).map(|_| ()).map_err(|e| e.to_string()),)*
                _ => Ok(()),
            }
        };
    }
    use k8s_openapi::api::{apps::v1 as apps, batch::v1 as batch, core::v1 as core};
    let result = check! {
        "" "Pod" => core::Pod,
        "" "Service" => core::Service,
        "" "ConfigMap" => core::ConfigMap,
        "" "Secret" => core::Secret,
        "" "Namespace" => core::Namespace,
        "" "Node" => core::Node,
        "" "ReplicationController" => core::ReplicationController,
        "" "Endpoints" => core::Endpoints,
        "" "ServiceAccount" => core::ServiceAccount,
        "" "Event" => core::Event,
        "" "PersistentVolume" => core::PersistentVolume,
        "" "PersistentVolumeClaim" => core::PersistentVolumeClaim,
        "" "LimitRange" => core::LimitRange,
        "" "ResourceQuota" => core::ResourceQuota,
        "apps" "Deployment" => apps::Deployment,
        "apps" "ReplicaSet" => apps::ReplicaSet,
        "apps" "StatefulSet" => apps::StatefulSet,
        "apps" "DaemonSet" => apps::DaemonSet,
        "batch" "Job" => batch::Job,
        "batch" "CronJob" => batch::CronJob,
    };
    result.map_err(|e| {
        ApiError::bad_request(format!("{} in version \"{}\" cannot be handled as a {}: {e}", res.kind, res.version, res.kind))
    })
}

/// Resets what a client may not set on create (status, for kinds with a status
/// subresource), as each Kubernetes strategy's PrepareForCreate does.
fn prepare_for_create(res: &ResourceInfo, obj: &mut Value) {
    let Some(o) = obj.as_object_mut() else { return };
    match (res.group, res.plural) {
        ("", "pods") => {
            o.insert("status".into(), json!({"phase": "Pending"}));
        }
        ("", "namespaces") => {
            o.insert("status".into(), json!({"phase": "Active"}));
        }
        ("", "services") | ("", "nodes") | ("", "persistentvolumes") | ("", "persistentvolumeclaims") => {}
        _ if res.has_status() => {
            o.remove("status");
        }
        _ => {}
    }
}

fn obj_at<'a>(v: &'a mut Value, path: &[&str]) -> &'a mut Map<String, Value> {
    let mut cur = v;
    for p in path {
        if !cur.get(*p).is_some_and(Value::is_object) {
            cur[*p] = json!({});
        }
        cur = &mut cur[*p];
    }
    if !cur.is_object() {
        *cur = json!({});
    }
    // The loop above made `cur` an object.
    match cur {
        Value::Object(m) => m,
        _ => unreachable!("made an object above"),
    }
}

fn set_default(map: &mut Map<String, Value>, key: &str, value: Value) {
    if map.get(key).is_none_or(Value::is_null) {
        map.insert(key.into(), value);
    }
}

/// Kubernetes' defaults for the kinds rkube serves.
pub fn default(res: &ResourceInfo, obj: &mut Value) {
    if res.group.is_empty() && res.plural == "secrets" {
        fold_string_data(obj);
    }
    match (res.group, res.kind) {
        ("", "Pod") => {
            if let Some(spec) = obj.get_mut("spec") {
                default_pod_spec(spec);
                admit_pod_spec(spec);
            }
            let qos = qos_class(obj.get("spec").unwrap_or(&Value::Null));
            if let Some(status) = obj.get_mut("status").and_then(Value::as_object_mut) {
                set_default(status, "qosClass", json!(qos));
            }
        }
        ("apps", "Deployment") => {
            let spec = obj_at(obj, &["spec"]);
            set_default(spec, "replicas", json!(1));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "progressDeadlineSeconds", json!(600));
            let strategy = spec.entry("strategy").or_insert_with(|| json!({}));
            if let Some(s) = strategy.as_object_mut() {
                set_default(s, "type", json!("RollingUpdate"));
                if s.get("type") == Some(&json!("RollingUpdate")) {
                    let ru = s.entry("rollingUpdate").or_insert_with(|| json!({}));
                    if let Some(ru) = ru.as_object_mut() {
                        set_default(ru, "maxUnavailable", json!("25%"));
                        set_default(ru, "maxSurge", json!("25%"));
                    }
                }
            }
            default_template(obj);
        }
        ("apps", "ReplicaSet") => {
            set_default(obj_at(obj, &["spec"]), "replicas", json!(1));
            default_template(obj);
        }
        ("", "ReplicationController") => {
            set_default(obj_at(obj, &["spec"]), "replicas", json!(1));
            let labels = obj.pointer("/spec/template/metadata/labels").cloned();
            if let Some(labels) = labels {
                let spec = obj_at(obj, &["spec"]);
                set_default(spec, "selector", labels.clone());
                let meta = obj_at(obj, &["metadata"]);
                set_default(meta, "labels", labels);
            }
            default_template(obj);
        }
        ("apps", "StatefulSet") => {
            let spec = obj_at(obj, &["spec"]);
            set_default(spec, "replicas", json!(1));
            set_default(spec, "podManagementPolicy", json!("OrderedReady"));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "updateStrategy", json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}));
            set_default(spec, "persistentVolumeClaimRetentionPolicy", json!({"whenDeleted": "Retain", "whenScaled": "Retain"}));
            default_template(obj);
        }
        ("apps", "DaemonSet") => {
            let spec = obj_at(obj, &["spec"]);
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "updateStrategy", json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}));
            default_template(obj);
        }
        ("batch", "Job") => {
            default_job_spec(obj);
        }
        ("batch", "CronJob") => {
            let spec = obj_at(obj, &["spec"]);
            set_default(spec, "concurrencyPolicy", json!("Allow"));
            set_default(spec, "suspend", json!(false));
            set_default(spec, "successfulJobsHistoryLimit", json!(3));
            set_default(spec, "failedJobsHistoryLimit", json!(1));
            if let Some(tpl_spec) = obj.pointer_mut("/spec/jobTemplate/spec") {
                let job_spec = obj_at(tpl_spec, &[]);
                set_default(job_spec, "backoffLimit", json!(6));
                set_default(job_spec, "completionMode", json!("NonIndexed"));
                set_default(job_spec, "suspend", json!(false));
                if let Some(pod_spec) = tpl_spec.pointer_mut("/template/spec") {
                    default_pod_spec(pod_spec);
                }
            }
        }
        ("", "Service") => {
            let spec = obj_at(obj, &["spec"]);
            set_default(spec, "type", json!("ClusterIP"));
            set_default(spec, "sessionAffinity", json!("None"));
            let ty = spec.get("type").and_then(Value::as_str).unwrap_or("ClusterIP").to_string();
            if ty != "ExternalName" {
                set_default(spec, "internalTrafficPolicy", json!("Cluster"));
                set_default(spec, "ipFamilies", json!(["IPv4"]));
                set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
            }
            if ty == "NodePort" || ty == "LoadBalancer" {
                set_default(spec, "externalTrafficPolicy", json!("Cluster"));
            }
            if ty == "LoadBalancer" {
                set_default(spec, "allocateLoadBalancerNodePorts", json!(true));
            }
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports {
                    if let Some(p) = p.as_object_mut() {
                        set_default(p, "protocol", json!("TCP"));
                        if let Some(port) = p.get("port").cloned() {
                            set_default(p, "targetPort", port);
                        }
                    }
                }
            }
        }
        ("", "Namespace") => {
            let name = name_of(obj);
            let labels = obj_at(obj, &["metadata", "labels"]);
            labels.insert("kubernetes.io/metadata.name".into(), json!(name));
            set_default(obj_at(obj, &["spec"]), "finalizers", json!(["kubernetes"]));
        }
        ("", "Secret") => {
            if let Some(o) = obj.as_object_mut() {
                set_default(o, "type", json!("Opaque"));
            }
        }
        ("", "PersistentVolumeClaim") => {
            set_default(obj_at(obj, &["spec"]), "volumeMode", json!("Filesystem"));
            if let Some(status) = obj.as_object_mut() {
                set_default(status, "status", json!({"phase": "Pending"}));
            }
        }
        ("", "PersistentVolume") => {
            let spec = obj_at(obj, &["spec"]);
            set_default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
            set_default(spec, "volumeMode", json!("Filesystem"));
            if let Some(status) = obj.as_object_mut() {
                set_default(status, "status", json!({"phase": "Pending"}));
            }
        }
        ("", "Node") => {
            if let Some(status) = obj.as_object_mut() {
                set_default(status, "status", json!({}));
            }
        }
        _ => {}
    }
}

fn default_template(obj: &mut Value) {
    if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
        default_pod_spec(spec);
    }
}

fn default_job_spec(obj: &mut Value) {
    let uid = obj.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default().to_string();
    let name = name_of(obj);
    let spec = obj_at(obj, &["spec"]);
    set_default(spec, "parallelism", json!(1));
    set_default(spec, "backoffLimit", json!(6));
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
    set_default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    if spec.get("completions").is_none() {
        spec.insert("completions".into(), json!(1));
    }
    let manual = spec.get("manualSelector").and_then(Value::as_bool).unwrap_or(false);
    if !manual && !uid.is_empty() && spec.get("selector").is_none() {
        // The job controller finds its pods by these labels (generated, as Kubernetes does).
        spec.insert("selector".into(), json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}));
        let labels = obj_at(obj, &["spec", "template", "metadata", "labels"]);
        labels.insert("batch.kubernetes.io/controller-uid".into(), json!(uid));
        labels.insert("batch.kubernetes.io/job-name".into(), json!(name));
        labels.insert("controller-uid".into(), json!(uid));
        labels.insert("job-name".into(), json!(name));
    }
    if let Some(pod_spec) = obj.pointer_mut("/spec/template/spec") {
        default_pod_spec(pod_spec);
    }
}

/// What the ServiceAccount and DefaultTolerationSeconds admission plugins add to a
/// pod (not to pod templates).
fn admit_pod_spec(spec: &mut Value) {
    let Some(s) = spec.as_object_mut() else { return };
    set_default(s, "preemptionPolicy", json!("PreemptLowerPriority"));
    set_default(s, "priority", json!(0));
    if s.get("serviceAccountName").is_none_or(|v| v.as_str().is_none_or(str::is_empty)) {
        let sa = s.get("serviceAccount").filter(|v| v.as_str().is_some_and(|x| !x.is_empty())).cloned().unwrap_or(json!("default"));
        s.insert("serviceAccountName".into(), sa.clone());
        s.insert("serviceAccount".into(), sa);
    }
    let tolerations = s.entry("tolerations").or_insert_with(|| json!([]));
    if let Some(t) = tolerations.as_array_mut() {
        for taint in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
            let tolerated = t.iter().any(|x| {
                x.get("key").and_then(Value::as_str) == Some(taint)
                    || (x.get("key").is_none() && x.get("operator").and_then(Value::as_str) == Some("Exists"))
            });
            if !tolerated {
                t.push(json!({"key": taint, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
            }
        }
    }
}

/// Kubernetes' API defaults for a PodSpec (pods and pod templates alike).
pub fn default_pod_spec(spec: &mut Value) {
    let Some(s) = spec.as_object_mut() else { return };
    set_default(s, "restartPolicy", json!("Always"));
    set_default(s, "terminationGracePeriodSeconds", json!(30));
    set_default(s, "dnsPolicy", json!("ClusterFirst"));
    set_default(s, "securityContext", json!({}));
    set_default(s, "schedulerName", json!("default-scheduler"));
    set_default(s, "enableServiceLinks", json!(true));
    for list in ["containers", "initContainers"] {
        if let Some(cs) = s.get_mut(list).and_then(Value::as_array_mut) {
            for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                default_container(c);
            }
        }
    }
}

fn default_container(c: &mut Map<String, Value>) {
    let image = c.get("image").and_then(Value::as_str).unwrap_or_default().to_string();
    let policy = if image_tag(&image).is_none_or(|t| t == "latest") { "Always" } else { "IfNotPresent" };
    set_default(c, "imagePullPolicy", json!(policy));
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    set_default(c, "resources", json!({}));
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(p, "protocol", json!("TCP"));
        }
    }
    // Requests default to limits where only limits are given.
    if let Some(limits) = c.get("resources").and_then(|r| r.get("limits")).and_then(Value::as_object).cloned() {
        if let Some(res) = c.get_mut("resources").and_then(Value::as_object_mut) {
            let requests = res.entry("requests").or_insert_with(|| json!({}));
            if let Some(r) = requests.as_object_mut() {
                for (k, v) in limits {
                    r.entry(k).or_insert(v);
                }
            }
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe).and_then(Value::as_object_mut) {
            set_default(p, "timeoutSeconds", json!(1));
            set_default(p, "periodSeconds", json!(10));
            set_default(p, "successThreshold", json!(1));
            set_default(p, "failureThreshold", json!(3));
            if let Some(h) = p.get_mut("httpGet").and_then(Value::as_object_mut) {
                set_default(h, "path", json!("/"));
                set_default(h, "scheme", json!("HTTP"));
            }
        }
    }
}

/// The tag of an image reference, if it has one (`nginx:1.27` → `1.27`).
fn image_tag(image: &str) -> Option<&str> {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    if image.contains('@') {
        return Some("digest");
    }
    last.split_once(':').map(|(_, t)| t)
}

/// The pod's QoS class from its containers' requests and limits.
pub fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|l| spec.get(*l).and_then(Value::as_array))
        .flatten()
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let req = c.pointer("/resources/requests").and_then(Value::as_object);
        let lim = c.pointer("/resources/limits").and_then(Value::as_object);
        for r in ["cpu", "memory"] {
            let rq = req.and_then(|m| m.get(r));
            let lm = lim.and_then(|m| m.get(r));
            if rq.is_some() || lm.is_some() {
                any = true;
            }
            if lm.is_none() || (rq.is_some() && rq != lm) {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

fn name_causes(res: &ResourceInfo, name: &str) -> Vec<Cause> {
    let errs = match (res.group, res.plural) {
        ("", "namespaces") => validation::is_dns1123_label(name),
        ("", "services") => validation::is_dns1035_label(name),
        ("", "pods") | ("apps", _) | ("", "replicationcontrollers") | ("batch", _) | ("", "configmaps") | ("", "secrets") | ("", "serviceaccounts")
        | ("", "events") | ("", "endpoints") | ("", "nodes") => validation::is_dns1123_subdomain(name),
        ("rbac.authorization.k8s.io", _) => {
            if name.contains('/') || name.contains('%') || name == "." || name == ".." {
                vec![format!("may not contain '/' or '%'")]
            } else {
                vec![]
            }
        }
        _ => validation::is_dns1123_subdomain(name),
    };
    errs.into_iter().map(|e| Cause::invalid("metadata.name", name, e)).collect()
}

fn validate_meta(obj: &Value, causes: &mut Vec<Cause>) {
    if let Some(labels) = obj.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, v) in labels {
            for e in validation::is_qualified_name(k) {
                causes.push(Cause::invalid("metadata.labels", k, e));
            }
            let v = v.as_str().unwrap_or_default();
            for e in validation::is_valid_label_value(v) {
                causes.push(Cause::invalid("metadata.labels", v, e));
            }
        }
    }
    if let Some(ann) = obj.pointer("/metadata/annotations").and_then(Value::as_object) {
        let mut total = 0;
        for (k, v) in ann {
            for e in validation::is_qualified_name(&k.to_ascii_lowercase()) {
                causes.push(Cause::invalid("metadata.annotations", k, e));
            }
            total += k.len() + v.as_str().map(str::len).unwrap_or(0);
        }
        if total > 256 * 1024 {
            causes.push(Cause { reason: "FieldValueTooLong", field: "metadata.annotations".into(), message: "Too long: must have at most 262144 bytes".into() });
        }
    }
}

fn validate_pod_spec(spec: Option<&Value>, path: &str, causes: &mut Vec<Cause>) {
    let Some(spec) = spec else {
        causes.push(Cause::required(format!("{path}.containers")));
        return;
    };
    let containers = spec.get("containers").and_then(Value::as_array);
    if containers.is_none_or(Vec::is_empty) {
        causes.push(Cause::required(format!("{path}.containers")));
    }
    let mut seen = std::collections::HashSet::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in spec.get(list).and_then(Value::as_array).into_iter().flatten().enumerate() {
            let p = format!("{path}.{list}[{i}]");
            match c.get("name").and_then(Value::as_str) {
                None | Some("") => causes.push(Cause::required(format!("{p}.name"))),
                Some(n) => {
                    for e in validation::is_dns1123_label(n) {
                        causes.push(Cause::invalid(format!("{p}.name"), n, e));
                    }
                    if !seen.insert(n.to_string()) {
                        causes.push(Cause::duplicate(format!("{p}.name"), n));
                    }
                }
            }
            if c.get("image").and_then(Value::as_str).is_none_or(|s| s.trim().is_empty()) {
                causes.push(Cause::required(format!("{p}.image")));
            }
            for (j, port) in c.get("ports").and_then(Value::as_array).into_iter().flatten().enumerate() {
                let cp = port.get("containerPort").and_then(Value::as_i64).unwrap_or(0);
                if !(1..=65535).contains(&cp) {
                    causes.push(Cause::invalid(format!("{p}.ports[{j}].containerPort"), cp, "must be between 1 and 65535, inclusive"));
                }
            }
            if let Some(policy) = c.get("imagePullPolicy").and_then(Value::as_str) {
                if !["Always", "IfNotPresent", "Never"].contains(&policy) {
                    causes.push(Cause::not_supported(format!("{p}.imagePullPolicy"), policy, &["Always", "IfNotPresent", "Never"]));
                }
            }
            validate_seccomp_profile(c.pointer("/securityContext/seccompProfile"), &format!("{p}.securityContext.seccompProfile"), causes);
        }
    }
    validate_seccomp_profile(spec.pointer("/securityContext/seccompProfile"), &format!("{path}.securityContext.seccompProfile"), causes);
    if let Some(policy) = spec.get("restartPolicy").and_then(Value::as_str) {
        if !["Always", "OnFailure", "Never"].contains(&policy) {
            causes.push(Cause::not_supported(format!("{path}.restartPolicy"), policy, &["Always", "OnFailure", "Never"]));
        }
    }
}

/// A `seccompProfile`: a known type, and a `localhostProfile` (a relative path under the
/// kubelet's seccomp directory) exactly when the type is `Localhost`.
fn validate_seccomp_profile(profile: Option<&Value>, path: &str, causes: &mut Vec<Cause>) {
    let Some(profile) = profile.filter(|p| !p.is_null()) else { return };
    let localhost = profile.get("localhostProfile").and_then(Value::as_str);
    let ty = profile.get("type").and_then(Value::as_str).unwrap_or_default();
    match ty {
        "Localhost" => match localhost {
            None => causes.push(Cause {
                reason: "FieldValueRequired",
                field: format!("{path}.localhostProfile"),
                message: "Required value: must be set when seccomp type is Localhost".into(),
            }),
            Some(file) => {
                let field = format!("{path}.localhostProfile");
                if file.starts_with('/') {
                    causes.push(Cause::invalid(&field, file, "must be a relative path"));
                }
                if file.split('/').any(|part| part == "..") {
                    causes.push(Cause::invalid(&field, file, "must not contain '..'"));
                }
            }
        },
        "RuntimeDefault" | "Unconfined" => {
            if let Some(file) = localhost {
                causes.push(Cause::invalid(format!("{path}.localhostProfile"), file, "can only be set when seccomp type is Localhost"));
            }
        }
        other => causes.push(Cause::not_supported(format!("{path}.type"), other, &["Localhost", "RuntimeDefault", "Unconfined"])),
    }
}

/// An Ingress host (a rule's or a TLS entry's): a DNS subdomain or a `*.` wildcard of
/// one, not an IP address.
fn validate_ingress_host(host: &str, field: &str, causes: &mut Vec<Cause>) {
    if host.parse::<std::net::IpAddr>().is_ok() {
        causes.push(Cause::invalid(field, host, "must be a DNS name, not an IP address"));
        return;
    }
    match host.strip_prefix("*.") {
        Some(rest) => {
            if !validation::is_dns1123_subdomain(rest).is_empty() {
                causes.push(Cause::invalid(field, host, "a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain, which must consist of lower case alphanumeric characters, '-' or '.' and end with an alphanumeric character (e.g. '*.example.com', regex used for validation is '\\*\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"));
            }
        }
        None => {
            for e in validation::is_dns1123_subdomain(host) {
                causes.push(Cause::invalid(field, host, e));
            }
        }
    }
}

/// An Ingress backend: a Service (a DNS-1035 name and a port by number or by name) or a
/// resource, exactly one.
fn validate_ingress_backend(backend: &Value, field: &str, causes: &mut Vec<Cause>) {
    let service = backend.get("service").filter(|v| !v.is_null());
    let resource = backend.get("resource").filter(|v| !v.is_null());
    match (service, resource) {
        (Some(_), Some(_)) => causes.push(Cause::invalid(field, "", "cannot set both resource and service backends")),
        (None, None) => causes.push(Cause::invalid(field, "", "one backend (`service` or `resource`) must be specified")),
        (None, Some(_)) => {}
        (Some(service), None) => {
            let name = service.get("name").and_then(Value::as_str).unwrap_or_default();
            if name.is_empty() {
                causes.push(Cause::required(format!("{field}.service.name")));
            } else {
                for e in validation::is_dns1035_label(name) {
                    causes.push(Cause::invalid(format!("{field}.service.name"), name, e));
                }
            }
            let port = service.get("port");
            let number = port.and_then(|p| p.get("number")).and_then(Value::as_i64);
            let port_name = port.and_then(|p| p.get("name")).and_then(Value::as_str).filter(|n| !n.is_empty());
            let at = format!("{field}.service.port");
            match (number, port_name) {
                (Some(_), Some(_)) => causes.push(Cause::invalid(&at, "", "cannot set both port name & port number")),
                (None, None) => causes.push(Cause::invalid(&at, "", "port name or number is required")),
                (Some(n), None) if !(1..=65535).contains(&n) => causes.push(Cause::invalid(format!("{at}.number"), n, "must be between 1 and 65535, inclusive")),
                (None, Some(n)) => {
                    for e in validation::is_dns1123_label(n) {
                        causes.push(Cause::invalid(format!("{at}.name"), n, e));
                    }
                }
                _ => {}
            }
        }
    }
}

/// Kubernetes' Ingress validation: rules or a default backend; hosts; each path's type
/// and shape; backends; TLS hosts.
fn validate_ingress(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    let rules = spec.get("rules").and_then(Value::as_array).cloned().unwrap_or_default();
    let default_backend = spec.get("defaultBackend").filter(|v| !v.is_null());
    if rules.is_empty() && default_backend.is_none() {
        causes.push(Cause::invalid("spec", "", "either `defaultBackend` or `rules` must be specified"));
    }
    if let Some(backend) = default_backend {
        validate_ingress_backend(backend, "spec.defaultBackend", causes);
    }
    for (i, rule) in rules.iter().enumerate() {
        if let Some(host) = rule.get("host").and_then(Value::as_str).filter(|h| !h.is_empty()) {
            validate_ingress_host(host, &format!("spec.rules[{i}].host"), causes);
        }
        let Some(http) = rule.get("http").filter(|v| !v.is_null()) else { continue };
        let paths = http.get("paths").and_then(Value::as_array).cloned().unwrap_or_default();
        if paths.is_empty() {
            causes.push(Cause::required(format!("spec.rules[{i}].http.paths")));
        }
        for (j, path) in paths.iter().enumerate() {
            let at = format!("spec.rules[{i}].http.paths[{j}]");
            let p = path.get("path").and_then(Value::as_str).unwrap_or_default();
            match path.get("pathType").and_then(Value::as_str) {
                None | Some("") => causes.push(Cause { reason: "FieldValueRequired", field: format!("{at}.pathType"), message: "Required value: pathType must be specified".into() }),
                Some("Exact" | "Prefix") => {
                    if !p.starts_with('/') {
                        causes.push(Cause::invalid(format!("{at}.path"), p, "must be an absolute path"));
                    }
                    for bad in ["//", "/./", "/../", "%2f", "%2F"] {
                        if p.contains(bad) {
                            causes.push(Cause::invalid(format!("{at}.path"), p, format!("must not contain '{bad}'")));
                        }
                    }
                    for bad in ["/..", "/."] {
                        if p.ends_with(bad) {
                            causes.push(Cause::invalid(format!("{at}.path"), p, format!("cannot end with '{bad}'")));
                        }
                    }
                }
                Some("ImplementationSpecific") => {
                    if !p.is_empty() && !p.starts_with('/') {
                        causes.push(Cause::invalid(format!("{at}.path"), p, "must be an absolute path"));
                    }
                }
                Some(other) => causes.push(Cause::not_supported(format!("{at}.pathType"), other, &["Exact", "ImplementationSpecific", "Prefix"])),
            }
            validate_ingress_backend(path.get("backend").unwrap_or(&Value::Null), &format!("{at}.backend"), causes);
        }
    }
    for (i, tls) in spec.get("tls").and_then(Value::as_array).into_iter().flatten().enumerate() {
        for (j, host) in tls.get("hosts").and_then(Value::as_array).into_iter().flatten().enumerate() {
            if let Some(host) = host.as_str() {
                validate_ingress_host(host, &format!("spec.tls[{i}].hosts[{j}]"), causes);
            }
        }
    }
}

fn validate_workload(obj: &Value, causes: &mut Vec<Cause>, selector_required: bool) {
    if let Some(r) = obj.pointer("/spec/replicas").and_then(Value::as_i64) {
        if r < 0 {
            causes.push(Cause::invalid("spec.replicas", r, "must be greater than or equal to 0"));
        }
    }
    let selector = obj.pointer("/spec/selector");
    let template_labels = obj.pointer("/spec/template/metadata/labels").and_then(Value::as_object);
    match selector {
        None if selector_required => causes.push(Cause::required("spec.selector")),
        Some(sel) => match apimachinery::labels::Selector::from_label_selector(sel) {
            Ok(s) if s.is_empty() && selector_required => {
                causes.push(Cause::invalid("spec.selector", "{}", "empty selector is invalid for deployment"));
            }
            Ok(s) => {
                if !s.matches_json(template_labels) {
                    let labels = template_labels.map(|m| {
                        m.iter().map(|(k, v)| format!("{k}:{}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(",")
                    });
                    causes.push(Cause::invalid(
                        "spec.template.metadata.labels",
                        format!("map[{}]", labels.unwrap_or_default()),
                        "`selector` does not match template `labels`",
                    ));
                }
            }
            Err(e) => causes.push(Cause::invalid("spec.selector", sel, e.to_string())),
        },
        None => {}
    }
    validate_pod_spec(obj.pointer("/spec/template/spec"), "spec.template.spec", causes);
}

/// Validation of a new or updated object; `old` is the stored object on update.
pub fn validate(res: &ResourceInfo, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = name_of(obj);
    if old.is_none() {
        causes.extend(name_causes(res, &name));
    }
    validate_meta(obj, &mut causes);
    match (res.group, res.kind) {
        ("", "Namespace") => {
            if let Err(crate::podsecurity::PodSecurityError::ParseNamespaceLabels { errors, .. }) =
                crate::podsecurity::NamespacePolicy::from_labels(obj.pointer("/metadata/labels").and_then(Value::as_object))
            {
                for e in errors {
                    causes.push(Cause::invalid(e.field(), &e.value, e.detail));
                }
            }
        }
        ("", "Pod") => validate_pod_spec(obj.get("spec"), "spec", &mut causes),
        ("apps", "Deployment") | ("apps", "ReplicaSet") | ("apps", "StatefulSet") | ("apps", "DaemonSet") => {
            validate_workload(obj, &mut causes, true);
            if res.kind == "Deployment" {
                if let Some(t) = obj.pointer("/spec/strategy/type").and_then(Value::as_str) {
                    if !["RollingUpdate", "Recreate"].contains(&t) {
                        causes.push(Cause::not_supported("spec.strategy.type", t, &["Recreate", "RollingUpdate"]));
                    }
                    if t == "Recreate" && obj.pointer("/spec/strategy/rollingUpdate").is_some_and(|r| !r.is_null()) {
                        causes.push(Cause::forbidden("spec.strategy.rollingUpdate", "may not be specified when strategy `type` is 'Recreate'"));
                    }
                }
            }
        }
        ("", "ReplicationController") => validate_workload(obj, &mut causes, false),
        ("batch", "Job") => validate_pod_spec(obj.pointer("/spec/template/spec"), "spec.template.spec", &mut causes),
        ("batch", "CronJob") => {
            if obj.pointer("/spec/schedule").and_then(Value::as_str).is_none_or(str::is_empty) {
                causes.push(Cause::required("spec.schedule"));
            }
            validate_pod_spec(obj.pointer("/spec/jobTemplate/spec/template/spec"), "spec.jobTemplate.spec.template.spec", &mut causes);
        }
        ("", "Service") => validate_service(obj, &mut causes),
        ("networking.k8s.io", "Ingress") => validate_ingress(obj, &mut causes),
        ("certificates.k8s.io", "CertificateSigningRequest") => crate::certificates::validate(obj, old, &mut causes),
        ("", "ConfigMap") | ("", "Secret") => {
            for field in ["data", "binaryData", "stringData"] {
                for key in obj.get(field).and_then(Value::as_object).into_iter().flat_map(|m| m.keys()) {
                    let ok = !key.is_empty() && key.len() <= 253 && key != "." && key != ".." && !key.starts_with("..")
                        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
                    if !ok {
                        causes.push(Cause::invalid(format!("{field}[{key}]"), key, "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"));
                    }
                }
            }
        }
        _ => {}
    }
    causes
}

fn validate_service(obj: &Value, causes: &mut Vec<Cause>) {
    let ty = obj.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP");
    let supported = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
    if !supported.contains(&ty) {
        causes.push(Cause::not_supported("spec.type", ty, &supported));
    }
    let headless = obj.pointer("/spec/clusterIP").and_then(Value::as_str) == Some("None");
    let ports = obj.pointer("/spec/ports").and_then(Value::as_array);
    if ty != "ExternalName" && !headless && ports.is_none_or(Vec::is_empty) {
        causes.push(Cause::required("spec.ports"));
    }
    let many = ports.is_some_and(|p| p.len() > 1);
    let mut names = std::collections::HashSet::new();
    for (i, p) in ports.into_iter().flatten().enumerate() {
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&port) {
            causes.push(Cause::invalid(format!("spec.ports[{i}].port"), port, "must be between 1 and 65535, inclusive"));
        }
        let name = p.get("name").and_then(Value::as_str).unwrap_or("");
        if many && name.is_empty() {
            causes.push(Cause::required(format!("spec.ports[{i}].name")));
        }
        if !name.is_empty() && !names.insert(name.to_string()) {
            causes.push(Cause::duplicate(format!("spec.ports[{i}].name"), name));
        }
        if let Some(proto) = p.get("protocol").and_then(Value::as_str) {
            if !["TCP", "UDP", "SCTP"].contains(&proto) {
                causes.push(Cause::not_supported(format!("spec.ports[{i}].protocol"), proto, &["SCTP", "TCP", "UDP"]));
            }
        }
        if let Some(np) = p.get("nodePort").and_then(Value::as_i64) {
            if ty == "ClusterIP" && np != 0 {
                causes.push(Cause::forbidden(format!("spec.ports[{i}].nodePort"), "may not be used when `type` is 'ClusterIP'"));
            }
        }
    }
}

fn validate_immutable(res: &ResourceInfo, obj: &Value, old: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let same = |p: &str| obj.pointer(p) == old.pointer(p);
    match (res.group, res.kind) {
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") if !same("/spec/selector") => {
            causes.push(Cause::invalid("spec.selector", obj.pointer("/spec/selector").cloned().unwrap_or(Value::Null), "field is immutable"));
        }
        ("batch", "Job") if !same("/spec/selector") => {
            causes.push(Cause::invalid("spec.selector", obj.pointer("/spec/selector").cloned().unwrap_or(Value::Null), "field is immutable"));
        }
        ("", "Service") => {
            let old_ip = old.pointer("/spec/clusterIP").and_then(Value::as_str).unwrap_or("");
            let new_ip = obj.pointer("/spec/clusterIP").and_then(Value::as_str).unwrap_or("");
            if !old_ip.is_empty() && old_ip != new_ip && obj.pointer("/spec/type").and_then(Value::as_str) != Some("ExternalName") {
                causes.push(Cause::invalid("spec.clusterIPs[0]", new_ip, "may not change once set"));
            }
        }
        ("", "Pod") => {
            if let (Some(new_spec), Some(old_spec)) = (obj.get("spec"), old.get("spec")) {
                if !pod_spec_update_allowed(new_spec, old_spec) {
                    causes.push(pod_update_forbidden());
                }
            }
        }
        _ => {}
    }
    causes
}

/// Kubernetes' refusal of a pod update that changes more than it may.
pub fn pod_update_forbidden() -> Cause {
    Cause::forbidden("spec", "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)")
}

/// Whether an update of the pod itself (not its subresource) changes its ephemeral
/// containers, which only `pods/ephemeralcontainers` may.
pub fn changes_ephemeral_containers(new: &Value, old: &Value) -> bool {
    let list = |v: &Value| v.pointer("/spec/ephemeralContainers").filter(|l| l.as_array().is_some_and(|a| !a.is_empty())).cloned();
    list(new) != list(old)
}

fn pod_spec_update_allowed(new: &Value, old: &Value) -> bool {
    let mut a = new.clone();
    let mut b = old.clone();
    for s in [&mut a, &mut b] {
        if let Some(o) = s.as_object_mut() {
            // Changed only through pods/ephemeralcontainers (checked there); a main pod
            // update that changes them is refused by the handler (see
            // `pod_update_forbidden`).
            o.remove("ephemeralContainers");
            o.remove("activeDeadlineSeconds");
            o.remove("tolerations");
            o.remove("terminationGracePeriodSeconds");
            for list in ["containers", "initContainers"] {
                if let Some(cs) = o.get_mut(list).and_then(Value::as_array_mut) {
                    for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                        c.remove("image");
                    }
                }
            }
        }
    }
    // nodeName may be set once (binding through an update, as some schedulers do).
    if old.get("nodeName").is_none() {
        if let Some(o) = a.as_object_mut() {
            o.remove("nodeName");
        }
    }
    a == b
}

/// What Kubernetes checks of a write to `pods/{name}/ephemeralcontainers` (`kubectl
/// debug`): ephemeral containers are only added, never changed or removed; each new one
/// has a unique DNS-1123 name and an image, none of what a debugging container may not
/// have (ports, probes, lifecycle hooks, resources), and a target that is one of the
/// pod's containers.
pub fn validate_ephemeral_containers(new: &Value, old: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let list = |pod: &Value, field: &str| pod.pointer(&format!("/spec/{field}")).and_then(Value::as_array).cloned().unwrap_or_default();
    let (ephemeral, before) = (list(new, "ephemeralContainers"), list(old, "ephemeralContainers"));
    let name_of = |c: &Value| c.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
    for was in &before {
        if !ephemeral.iter().any(|c| c == was) {
            causes.push(Cause::forbidden("spec.ephemeralContainers", format!("existing ephemeral containers {:?} may not be changed", name_of(was))));
        }
    }
    let regular: Vec<String> = list(new, "containers").iter().chain(list(new, "initContainers").iter()).map(name_of).collect();
    let mut seen: Vec<String> = regular.clone();
    for (i, c) in ephemeral.iter().enumerate() {
        if before.contains(c) {
            seen.push(name_of(c));
            continue;
        }
        let at = |field: &str| format!("spec.ephemeralContainers[{i}].{field}");
        let name = name_of(c);
        if name.is_empty() {
            causes.push(Cause::required(at("name")));
        } else {
            for e in validation::is_dns1123_label(&name) {
                causes.push(Cause::invalid(at("name"), &name, e));
            }
            if seen.contains(&name) {
                causes.push(Cause::duplicate(at("name"), &name));
            }
            seen.push(name);
        }
        if c.get("image").and_then(Value::as_str).is_none_or(str::is_empty) {
            causes.push(Cause::required(at("image")));
        }
        for field in ["ports", "livenessProbe", "readinessProbe", "startupProbe", "lifecycle", "resources"] {
            if c.get(field).is_some_and(|v| !v.is_null() && v != &json!({}) && v != &json!([])) {
                causes.push(Cause::forbidden(at(field), "cannot be set for an Ephemeral Container"));
            }
        }
        validate_seccomp_profile(c.pointer("/securityContext/seccompProfile"), &at("securityContext.seccompProfile"), &mut causes);
        if let Some(target) = c.get("targetContainerName").and_then(Value::as_str).filter(|t| !t.is_empty()) {
            if !regular.iter().any(|n| n == target) {
                causes.push(Cause { reason: "FieldValueNotFound", field: at("targetContainerName"), message: format!("Not found: {target:?}") });
            }
        }
    }
    causes
}

/// Whether an update left an object with a deletionTimestamp, no grace period and no
/// finalizers: it is then removed from the store.
pub fn finalized(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp").is_some()
        && obj.pointer("/metadata/deletionGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(0) == 0
        && obj.pointer("/metadata/finalizers").and_then(Value::as_array).is_none_or(Vec::is_empty)
}

/// Marks a pod for graceful deletion when it needs one (it is on a node and not
/// finished); returns whether it did. Other kinds are deleted at once.
pub fn graceful_delete(res: &ResourceInfo, obj: &mut Value, requested: Option<i64>) -> bool {
    if !(res.group.is_empty() && res.plural == "pods") {
        return false;
    }
    let on_node = obj.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
    let finished = matches!(obj.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"));
    let spec_grace = obj.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(30);
    let grace = requested.unwrap_or(spec_grace).max(0);
    if !on_node || finished || grace == 0 {
        return false;
    }
    let current = obj.pointer("/metadata/deletionGracePeriodSeconds").and_then(Value::as_i64);
    if let Some(cur) = current {
        // A graceful delete may only shorten the grace period.
        if grace >= cur {
            return true;
        }
    }
    let when = chrono::Utc::now() + chrono::Duration::seconds(grace);
    obj["metadata"]["deletionTimestamp"] = json!(when.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    obj["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
    true
}

/// Frees what an object held once it is deleted (nothing yet: Service allocations are
/// derived from the stored Services).
pub async fn release(_api: &ApiServer, _res: &ResourceInfo, _obj: &Value) {}

/// The `autoscaling/v1` Scale of a scalable object.
pub fn scale_of(res: &ResourceInfo, obj: &Value) -> Result<Value, ApiError> {
    let selector = match obj.pointer("/spec/selector") {
        Some(sel) if res.kind == "ReplicationController" => sel
            .as_object()
            .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(","))
            .unwrap_or_default(),
        Some(sel) => apimachinery::labels::Selector::from_label_selector(sel).map(|s| s.to_string()).unwrap_or_default(),
        None => String::new(),
    };
    let meta = obj.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let mut scale_meta = json!({});
    for f in ["name", "namespace", "uid", "resourceVersion", "creationTimestamp"] {
        if let Some(v) = meta.get(f) {
            scale_meta[f] = v.clone();
        }
    }
    Ok(json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": scale_meta,
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
        "status": {"replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)), "selector": selector},
    }))
}

/// Sets (or adds) a pod condition.
pub fn set_pod_condition(pod: &mut Value, ty: &str, status: &str, reason: Option<&str>, message: Option<&str>) {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut cond = json!({"type": ty, "status": status, "lastProbeTime": null, "lastTransitionTime": now});
    if let Some(r) = reason {
        cond["reason"] = json!(r);
    }
    if let Some(m) = message {
        cond["message"] = json!(m);
    }
    let conditions = obj_at(pod, &["status"]).entry("conditions").or_insert_with(|| json!([]));
    if let Some(list) = conditions.as_array_mut() {
        match list.iter_mut().find(|c| c.get("type").and_then(Value::as_str) == Some(ty)) {
            Some(existing) if existing.get("status").and_then(Value::as_str) == Some(status) => {}
            Some(existing) => *existing = cond,
            None => list.push(cond),
        }
    }
}

/// The ClusterIP and NodePort ranges Services draw from.
#[derive(Debug, Clone)]
pub struct ServiceRanges {
    pub cluster_ip_base: Ipv4Addr,
    pub cluster_ip_prefix: u8,
    pub node_ports: (u16, u16),
}

impl ServiceRanges {
    pub fn parse(cidr: &str, node_ports: &str) -> Result<ServiceRanges, String> {
        let (ip, prefix) = cidr.split_once('/').ok_or_else(|| format!("invalid CIDR {cidr:?}: missing /prefix"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|e| format!("invalid CIDR {cidr:?}: {e}"))?;
        let prefix: u8 = prefix.parse().map_err(|e| format!("invalid CIDR {cidr:?}: {e}"))?;
        if !(8..=30).contains(&prefix) {
            return Err(format!("invalid CIDR {cidr:?}: the prefix must be between /8 and /30"));
        }
        let mask = u32::MAX << (32 - prefix);
        let base = Ipv4Addr::from(u32::from(ip) & mask);
        let (lo, hi) = node_ports.split_once('-').ok_or_else(|| format!("invalid port range {node_ports:?}: want LOW-HIGH"))?;
        let lo: u16 = lo.trim().parse().map_err(|e| format!("invalid port range {node_ports:?}: {e}"))?;
        let hi: u16 = hi.trim().parse().map_err(|e| format!("invalid port range {node_ports:?}: {e}"))?;
        if lo == 0 || lo > hi {
            return Err(format!("invalid port range {node_ports:?}"));
        }
        Ok(ServiceRanges { cluster_ip_base: base, cluster_ip_prefix: prefix, node_ports: (lo, hi) })
    }

    fn size(&self) -> u32 {
        1u32 << (32 - self.cluster_ip_prefix)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.cluster_ip_prefix);
        u32::from(ip) & mask == u32::from(self.cluster_ip_base)
    }

    /// The address of the `kubernetes` Service: the first in the range.
    pub fn first(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cluster_ip_base) + 1)
    }
}

/// The ClusterIPs and node ports every stored Service holds.
async fn service_allocations(api: &ApiServer) -> Result<(HashSet<Ipv4Addr>, HashSet<i64>), ApiError> {
    let listed = api
        .store
        .range("/registry/services/", RangeOptions::default())
        .await
        .map_err(ApiError::internal)?;
    let mut used_ips = HashSet::new();
    let mut used_ports = HashSet::new();
    for kv in &listed.kvs {
        let Ok(svc) = serde_json::from_slice::<Value>(&kv.value) else { continue };
        if let Some(ip) = svc.pointer("/spec/clusterIP").and_then(Value::as_str).and_then(|s| s.parse::<Ipv4Addr>().ok()) {
            used_ips.insert(ip);
        }
        used_ports.extend(node_ports(&svc));
    }
    Ok((used_ips, used_ports))
}

fn node_ports(service: &Value) -> impl Iterator<Item = i64> + '_ {
    service.pointer("/spec/ports").and_then(Value::as_array).into_iter().flatten().filter_map(|p| p.get("nodePort").and_then(Value::as_i64))
}

async fn allocate_service(api: &ApiServer, obj: &mut Value, causes: &mut Vec<Cause>, dry_run: bool) -> Result<(), ApiError> {
    let _ = dry_run;
    let ranges = &api.config.service_ranges;
    let (used_ips, mut used_ports) = service_allocations(api).await?;
    let ty = obj.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP").to_string();
    if ty != "ExternalName" {
        match obj.pointer("/spec/clusterIP").and_then(Value::as_str).unwrap_or("") {
            "None" => {
                obj["spec"]["clusterIPs"] = json!(["None"]);
            }
            "" => {
                let size = ranges.size();
                let base = u32::from(ranges.cluster_ip_base);
                // Random start, as Kubernetes allocates, so addresses are not reused at once.
                let start = 2 + rand::random::<u32>() % (size - 3).max(1);
                let mut chosen = None;
                for i in 0..size - 3 {
                    let offset = 2 + (start - 2 + i) % (size - 3);
                    let ip = Ipv4Addr::from(base + offset);
                    if !used_ips.contains(&ip) {
                        chosen = Some(ip);
                        break;
                    }
                }
                match chosen {
                    Some(ip) => {
                        obj["spec"]["clusterIP"] = json!(ip.to_string());
                        obj["spec"]["clusterIPs"] = json!([ip.to_string()]);
                    }
                    None => return Err(ApiError::internal("failed to allocate a serviceIP: range is full")),
                }
            }
            given => match given.parse::<Ipv4Addr>() {
                Ok(ip) if !ranges.contains(ip) => causes.push(Cause::invalid(
                    "spec.clusterIPs",
                    given,
                    format!("failed to allocate IP {given}: the provided IP ({given}) is not in the valid range. The range of valid IPs is {}/{}", ranges.cluster_ip_base, ranges.cluster_ip_prefix),
                )),
                Ok(ip) if used_ips.contains(&ip) => causes.push(Cause::invalid(
                    "spec.clusterIPs",
                    given,
                    format!("failed to allocate IP {given}: provided IP is already allocated"),
                )),
                Ok(_) => obj["spec"]["clusterIPs"] = json!([given]),
                Err(_) => causes.push(Cause::invalid("spec.clusterIPs[0]", given, "must be a valid IP address, (e.g. 10.9.128.0)")),
            },
        }
    }
    if needs_node_ports(obj) {
        allocate_node_ports(ranges, obj, &mut used_ports, &HashSet::new(), causes)?;
    }
    Ok(())
}

/// Gives every port of `obj` without a node port a free one, and checks the ones it
/// names: in range, and not held by another Service (`own` are the ones this Service
/// already holds, which it may keep).
fn allocate_node_ports(ranges: &ServiceRanges, obj: &mut Value, used_ports: &mut HashSet<i64>, own: &HashSet<i64>, causes: &mut Vec<Cause>) -> Result<(), ApiError> {
    let (lo, hi) = ranges.node_ports;
    let span = (hi - lo + 1) as i64;
    let Some(ports) = obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut) else { return Ok(()) };
    for (i, p) in ports.iter_mut().enumerate() {
        match p.get("nodePort").and_then(Value::as_i64).filter(|n| *n != 0) {
            Some(np) if own.contains(&np) => {}
            Some(np) => {
                if np < lo as i64 || np > hi as i64 {
                    causes.push(Cause::invalid(format!("spec.ports[{i}].nodePort"), np, format!("provided port is not in the valid range. The range of valid ports is {lo}-{hi}")));
                } else if !used_ports.insert(np) {
                    causes.push(Cause::invalid(format!("spec.ports[{i}].nodePort"), np, "provided port is already allocated"));
                }
            }
            None => {
                // Random start (as Kubernetes allocates), kept within 0..span.
                let start = (rand::random::<u64>() % span as u64) as i64;
                let free = (0..span).map(|k| lo as i64 + (start + k) % span).find(|n| !used_ports.contains(n));
                match free {
                    Some(np) => {
                        used_ports.insert(np);
                        p["nodePort"] = json!(np);
                    }
                    None => return Err(ApiError::internal("failed to allocate a nodePort: range is full")),
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::lookup;

    #[test]
    fn node_ports_are_allocated_within_the_range_and_never_twice() {
        let ranges = ServiceRanges::parse("10.43.0.0/16", "30000-30009").expect("ranges");
        let ports: Vec<Value> = (0..10).map(|i| json!({"port": 80 + i})).collect();
        let mut svc = json!({"spec": {"type": "NodePort", "ports": ports}});
        let mut used = HashSet::new();
        let mut causes = Vec::new();
        allocate_node_ports(&ranges, &mut svc, &mut used, &HashSet::new(), &mut causes).expect("ten free ports");
        let mut got: Vec<i64> = node_ports(&svc).collect();
        got.sort();
        assert_eq!(got, (30000..30010).collect::<Vec<i64>>());
        assert!(causes.is_empty());
        let mut another = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}]}});
        assert!(allocate_node_ports(&ranges, &mut another, &mut used, &HashSet::new(), &mut causes).is_err(), "the range is full");
        // A port the Service already holds is its own to keep; another's is refused.
        let mut update = json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30003}, {"port": 81, "nodePort": 30004}]}});
        allocate_node_ports(&ranges, &mut update, &mut used, &HashSet::from([30003]), &mut causes).expect("checked");
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "spec.ports[1].nodePort");
    }

    #[test]
    fn deployment_defaults_match_kubernetes() {
        let res = lookup("apps", "v1", "deployments").expect("deployments");
        let mut d = json!({"metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}});
        default(res, &mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
        assert!(validate(res, &d, None).is_empty());
    }

    #[test]
    fn selector_must_match_template() {
        let res = lookup("apps", "v1", "deployments").expect("deployments");
        let d = json!({"metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}});
        let causes = validate(res, &d, None);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "spec.template.metadata.labels");
    }

    #[test]
    fn pinned_tags_pull_if_not_present() {
        assert_eq!(image_tag("nginx:1.27"), Some("1.27"));
        assert_eq!(image_tag("localhost:5000/app"), None);
        assert_eq!(image_tag("localhost:5000/app:v1"), Some("v1"));
    }

    #[test]
    fn qos_classes() {
        assert_eq!(qos_class(&json!({"containers": [{"name": "a"}]})), "BestEffort");
        assert_eq!(qos_class(&json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1", "memory": "1Gi"}}}]})), "Guaranteed");
        assert_eq!(qos_class(&json!({"containers": [{"resources": {"requests": {"cpu": "1"}}}]})), "Burstable");
    }

    #[test]
    fn service_ranges_parse() {
        let r = ServiceRanges::parse("10.43.0.0/16", "30000-32767").expect("parse");
        assert_eq!(r.first(), Ipv4Addr::new(10, 43, 0, 1));
        assert!(r.contains(Ipv4Addr::new(10, 43, 200, 1)));
        assert!(!r.contains(Ipv4Addr::new(10, 44, 0, 1)));
        assert!(ServiceRanges::parse("10.43.0.0", "1-2").is_err());
    }
}
