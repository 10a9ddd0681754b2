//! A container's environment as the kubelet builds it: Service link variables, then
//! `envFrom` (ConfigMaps and Secrets, with prefixes), then `env` (literals with `$(VAR)`
//! expansion, ConfigMap/Secret keys, the downward API's fieldRef and resourceFieldRef).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service};
use kube::api::Api;

use super::resources::{resource_field_value, ResourceFieldError};

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("configmap \"{0}\" not found")]
    ConfigMapNotFound(String),
    #[error("secret \"{0}\" not found")]
    SecretNotFound(String),
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    ConfigMapKey { key: String, namespace: String, name: String },
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    SecretKey { key: String, namespace: String, name: String },
    #[error("unsupported fieldPath: {0}")]
    FieldPath(String),
    #[error(transparent)]
    ResourceField(#[from] ResourceFieldError),
    #[error("reading {what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
}

/// Reads ConfigMaps and Secrets of the pod's namespace (once per sync).
pub struct Sources {
    client: kube::Client,
    namespace: String,
    config_maps: BTreeMap<String, Option<ConfigMap>>,
    secrets: BTreeMap<String, Option<Secret>>,
}

impl Sources {
    pub fn new(client: kube::Client, namespace: &str) -> Sources {
        Sources { client, namespace: namespace.into(), config_maps: BTreeMap::new(), secrets: BTreeMap::new() }
    }

    pub async fn config_map(&mut self, name: &str) -> Result<Option<&ConfigMap>, EnvError> {
        if !self.config_maps.contains_key(name) {
            let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
            let found = api.get_opt(name).await.map_err(|source| EnvError::Api { what: format!("configmap {name:?}"), source })?;
            self.config_maps.insert(name.into(), found);
        }
        Ok(self.config_maps.get(name).and_then(Option::as_ref))
    }

    pub async fn secret(&mut self, name: &str) -> Result<Option<&Secret>, EnvError> {
        if !self.secrets.contains_key(name) {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
            let found = api.get_opt(name).await.map_err(|source| EnvError::Api { what: format!("secret {name:?}"), source })?;
            self.secrets.insert(name.into(), found);
        }
        Ok(self.secrets.get(name).and_then(Option::as_ref))
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn client(&self) -> &kube::Client {
        &self.client
    }
}

/// All of a ConfigMap's keys as strings (binaryData as lossy UTF-8, as env needs text).
pub fn config_map_entries(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> =
        cm.data.iter().flatten().map(|(k, v)| (k.clone(), v.clone().into_bytes())).collect();
    out.extend(cm.binary_data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())));
    out
}

pub fn secret_entries(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = secret.data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect();
    out.extend(secret.string_data.iter().flatten().map(|(k, v)| (k.clone(), v.clone().into_bytes())));
    out
}

/// `{SVC}_SERVICE_HOST`, `{SVC}_SERVICE_PORT`, and the Docker-link style variables for
/// every Service in the pod's namespace (plus `kubernetes` from `default`), as
/// `enableServiceLinks` (default true) asks.
pub async fn service_env(client: &kube::Client, pod: &Pod) -> Vec<(String, String)> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let links = pod.spec.as_ref().and_then(|s| s.enable_service_links).unwrap_or(true);
    let mut services: BTreeMap<String, Service> = BTreeMap::new();
    if let Ok(Some(k)) = Api::<Service>::namespaced(client.clone(), "default").get_opt("kubernetes").await {
        services.insert("kubernetes".into(), k);
    }
    if links {
        if let Ok(list) = Api::<Service>::namespaced(client.clone(), &namespace).list(&Default::default()).await {
            for s in list.items {
                if let Some(name) = s.metadata.name.clone() {
                    if namespace != "default" && name == "kubernetes" {
                        continue;
                    }
                    services.insert(name, s);
                }
            }
        }
    }
    let mut out = Vec::new();
    for (name, svc) in services {
        let Some(spec) = svc.spec.as_ref() else { continue };
        let Some(ip) = spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty() && *ip != "None") else { continue };
        let prefix = name.to_ascii_uppercase().replace('-', "_");
        let ports = spec.ports.clone().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        out.push((format!("{prefix}_SERVICE_HOST"), ip.to_string()));
        out.push((format!("{prefix}_SERVICE_PORT"), first.port.to_string()));
        for p in &ports {
            if let Some(pname) = &p.name {
                out.push((format!("{prefix}_SERVICE_PORT_{}", pname.to_ascii_uppercase().replace('-', "_")), p.port.to_string()));
            }
        }
        let proto = |p: &k8s_openapi::api::core::v1::ServicePort| p.protocol.clone().unwrap_or_else(|| "TCP".into());
        out.push((format!("{prefix}_PORT"), format!("{}://{ip}:{}", proto(first).to_ascii_lowercase(), first.port)));
        for p in &ports {
            let pr = proto(p);
            let base = format!("{prefix}_PORT_{}_{}", p.port, pr.to_ascii_uppercase());
            out.push((base.clone(), format!("{}://{ip}:{}", pr.to_ascii_lowercase(), p.port)));
            out.push((format!("{base}_PROTO"), pr.to_ascii_lowercase()));
            out.push((format!("{base}_PORT"), p.port.to_string()));
            out.push((format!("{base}_ADDR"), ip.to_string()));
        }
    }
    out
}

/// The value of a downward-API `fieldPath` for env and downwardAPI volumes.
pub fn field_value(pod: &Pod, path: &str) -> Result<String, EnvError> {
    let meta = &pod.metadata;
    let status = pod.status.as_ref();
    let pick = |m: &Option<BTreeMap<String, String>>, key: &str| m.as_ref().and_then(|m| m.get(key)).cloned().unwrap_or_default();
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
        "status.hostIP" => status.and_then(|s| s.host_ip.clone()).unwrap_or_default(),
        "status.podIP" => status.and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
        "status.podIPs" | "status.hostIPs" => {
            let ips = if path == "status.podIPs" {
                status.and_then(|s| s.pod_ips.clone()).unwrap_or_default().into_iter().map(|i| i.ip).collect::<Vec<_>>()
            } else {
                status.and_then(|s| s.host_ips.clone()).unwrap_or_default().into_iter().map(|i| i.ip).collect()
            };
            ips.join(",")
        }
        "metadata.labels" => render_map(meta.labels.as_ref()),
        "metadata.annotations" => render_map(meta.annotations.as_ref()),
        other => {
            if let Some(key) = subscript(other, "metadata.labels") {
                pick(&meta.labels, &key)
            } else if let Some(key) = subscript(other, "metadata.annotations") {
                pick(&meta.annotations, &key)
            } else {
                return Err(EnvError::FieldPath(other.into()));
            }
        }
    };
    Ok(value)
}

/// `metadata.labels['app']` → `app`.
fn subscript(path: &str, prefix: &str) -> Option<String> {
    let rest = path.strip_prefix(prefix)?.strip_prefix('[')?.strip_suffix(']')?;
    Some(rest.trim_matches(|c| c == '\'' || c == '"').to_string())
}

/// `key="value"` lines, sorted, as the downward API writes labels and annotations.
fn render_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Expands `$(VAR)` from `vars`; `$$(VAR)` escapes to `$(VAR)`; unknown references stay
/// as written (Kubernetes' expansion rules).
pub fn expand(input: &str, vars: &BTreeMap<String, String>) -> String {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() {
            if bytes[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if bytes[i + 1] == b'(' {
                if let Some(end) = input[i + 2..].find(')') {
                    let name = &input[i + 2..i + 2 + end];
                    match vars.get(name) {
                        Some(v) => out.push_str(v),
                        None => out.push_str(&input[i..i + 3 + end]),
                    }
                    i += 3 + end;
                    continue;
                }
            }
        }
        let ch = input[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// The container's environment, in order, with later names overriding earlier ones.
pub async fn container_env(
    pod: &Pod,
    container: &Container,
    service_vars: &[(String, String)],
    node_allocatable: &BTreeMap<String, String>,
    sources: &mut Sources,
) -> Result<Vec<(String, String)>, EnvError> {
    let mut order: Vec<String> = Vec::new();
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let set = |order: &mut Vec<String>, vars: &mut BTreeMap<String, String>, k: String, v: String| {
        if !vars.contains_key(&k) {
            order.push(k.clone());
        }
        vars.insert(k, v);
    };
    for (k, v) in service_vars {
        set(&mut order, &mut vars, k.clone(), v.clone());
    }
    let namespace = sources.namespace().to_string();
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match sources.config_map(&r.name).await? {
                Some(cm) => {
                    for (k, v) in config_map_entries(cm) {
                        set(&mut order, &mut vars, format!("{prefix}{k}"), String::from_utf8_lossy(&v).into_owned());
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(EnvError::ConfigMapNotFound(r.name.clone())),
            }
        }
        if let Some(r) = &from.secret_ref {
            match sources.secret(&r.name).await? {
                Some(s) => {
                    for (k, v) in secret_entries(s) {
                        set(&mut order, &mut vars, format!("{prefix}{k}"), String::from_utf8_lossy(&v).into_owned());
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(EnvError::SecretNotFound(r.name.clone())),
            }
        }
    }
    for e in container.env.iter().flatten() {
        let value = if let Some(from) = &e.value_from {
            if let Some(r) = &from.config_map_key_ref {
                let optional = r.optional == Some(true);
                match sources.config_map(&r.name).await? {
                    Some(cm) => match config_map_entries(cm).remove(&r.key) {
                        Some(v) => String::from_utf8_lossy(&v).into_owned(),
                        None if optional => continue,
                        None => return Err(EnvError::ConfigMapKey { key: r.key.clone(), namespace, name: r.name.clone() }),
                    },
                    None if optional => continue,
                    None => return Err(EnvError::ConfigMapNotFound(r.name.clone())),
                }
            } else if let Some(r) = &from.secret_key_ref {
                let optional = r.optional == Some(true);
                match sources.secret(&r.name).await? {
                    Some(s) => match secret_entries(s).remove(&r.key) {
                        Some(v) => String::from_utf8_lossy(&v).into_owned(),
                        None if optional => continue,
                        None => return Err(EnvError::SecretKey { key: r.key.clone(), namespace, name: r.name.clone() }),
                    },
                    None if optional => continue,
                    None => return Err(EnvError::SecretNotFound(r.name.clone())),
                }
            } else if let Some(f) = &from.field_ref {
                field_value(pod, &f.field_path)?
            } else if let Some(r) = &from.resource_field_ref {
                resource_field_value(pod, container, r, node_allocatable)?
            } else {
                String::new()
            }
        } else {
            expand(e.value.as_deref().unwrap_or(""), &vars)
        };
        set(&mut order, &mut vars, e.name.clone(), value);
    }
    Ok(order.into_iter().filter_map(|k| vars.remove(&k).map(|v| (k, v))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let vars: BTreeMap<String, String> = [("A".to_string(), "x".to_string())].into_iter().collect();
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &vars), "x-$(B)-$(A)-$");
        assert_eq!(expand("héllo $(A)", &vars), "héllo x");
        assert_eq!(expand("$(A", &vars), "$(A");
    }

    #[test]
    fn field_paths() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"app": "web", "tier": "fe"}},
            "spec": {"nodeName": "n1", "containers": []},
            "status": {"podIP": "10.42.0.5"}
        }))
        .expect("pod");
        assert_eq!(field_value(&pod, "metadata.name").expect("name"), "p");
        assert_eq!(field_value(&pod, "metadata.labels['app']").expect("label"), "web");
        assert_eq!(field_value(&pod, "metadata.labels").expect("labels"), "app=\"web\"\ntier=\"fe\"");
        assert_eq!(field_value(&pod, "status.podIP").expect("ip"), "10.42.0.5");
        assert!(field_value(&pod, "spec.bogus").is_err());
    }
}
