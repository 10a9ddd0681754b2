//! HTTPS for Ingresses with `spec.tls`: the certificate of a connection is picked by the
//! name the client asks for (SNI) among the `tls` entries of the served Ingresses, from
//! the `kubernetes.io/tls` Secret each names in the Ingress's namespace. A name no entry
//! covers, or a Secret that is missing or unusable, gets the controller's own
//! self-signed certificate, as ingress-nginx answers with its "fake certificate".

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::ObjectRef;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::routes::host_rank;
use crate::Caches;

/// The Secret (namespace, name) whose certificate serves `sni`: the entry with the most
/// specific host (exact before wildcard; an entry without hosts covers any name, last),
/// oldest Ingress first.
pub fn secret_for(caches: &Caches, sni: &str) -> Option<(String, String)> {
    let mut best: Option<(u8, (String, String))> = None;
    let served = caches.served();
    for ingress in crate::routes::by_age(&served) {
        let namespace = ingress.metadata.namespace.clone().unwrap_or_default();
        for tls in ingress.spec.iter().flat_map(|s| s.tls.iter().flatten()) {
            let Some(secret) = tls.secret_name.clone().filter(|s| !s.is_empty()) else { continue };
            let hosts = tls.hosts.clone().unwrap_or_default();
            let rank = if hosts.is_empty() {
                Some(0)
            } else {
                hosts.iter().filter_map(|h| host_rank(Some(h), sni).filter(|r| *r > 0)).max()
            };
            if let Some(rank) = rank {
                if best.as_ref().is_none_or(|(r, _)| rank > *r) {
                    best = Some((rank, (namespace.clone(), secret)));
                }
            }
        }
    }
    best.map(|(_, secret)| secret)
}

/// Parsed keys by Secret (namespace, name), with the resourceVersion they were parsed at.
type ParsedKeys = HashMap<(String, String), (String, Arc<CertifiedKey>)>;

/// Picks each connection's certificate from the served Ingresses' Secrets.
pub struct SecretResolver {
    caches: Caches,
    fallback: Arc<CertifiedKey>,
    parsed: Mutex<ParsedKeys>,
}

impl std::fmt::Debug for SecretResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretResolver").finish_non_exhaustive()
    }
}

impl SecretResolver {
    pub fn new(caches: Caches, fallback: Arc<CertifiedKey>) -> SecretResolver {
        SecretResolver { caches, fallback, parsed: Mutex::new(HashMap::new()) }
    }

    fn load(&self, namespace: &str, name: &str) -> Result<Arc<CertifiedKey>, String> {
        let secret = self
            .caches
            .secrets
            .get(&ObjectRef::<Secret>::new(name).within(namespace))
            .ok_or_else(|| format!("secret \"{namespace}/{name}\" not found"))?;
        let version = secret.metadata.resource_version.clone().unwrap_or_default();
        let key = (namespace.to_string(), name.to_string());
        if let Ok(parsed) = self.parsed.lock() {
            if let Some((v, certified)) = parsed.get(&key) {
                if *v == version {
                    return Ok(certified.clone());
                }
            }
        }
        let field = |f: &str| secret.data.as_ref().and_then(|d| d.get(f)).map(|b| String::from_utf8_lossy(&b.0).into_owned());
        let (Some(cert), Some(private)) = (field("tls.crt"), field("tls.key")) else {
            return Err(format!("secret \"{namespace}/{name}\" has no tls.crt and tls.key"));
        };
        let certified = component_base::tls::certified_key(&cert, &private).map_err(|e| format!("secret \"{namespace}/{name}\": {e}"))?;
        if let Ok(mut parsed) = self.parsed.lock() {
            // Forget the keys of Secrets that are gone.
            parsed.retain(|(ns, n), _| self.caches.secrets.get(&ObjectRef::<Secret>::new(n).within(ns)).is_some());
            parsed.insert(key, (version, certified.clone()));
        }
        Ok(certified)
    }
}

impl ResolvesServerCert for SecretResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(sni) = hello.server_name().map(str::to_ascii_lowercase) else { return Some(self.fallback.clone()) };
        let Some((namespace, name)) = secret_for(&self.caches, &sni) else { return Some(self.fallback.clone()) };
        match self.load(&namespace, &name) {
            Ok(certified) => Some(certified),
            Err(message) => {
                tracing::warn!(%sni, "ingress: {message}; serving the default certificate");
                Some(self.fallback.clone())
            }
        }
    }
}

/// The certificate for names no Ingress covers: self-signed, made at each start.
pub fn fallback_certificate() -> Result<Arc<CertifiedKey>, String> {
    use component_base::pki::{CertificateAuthority, Usage};
    let issuer = CertificateAuthority::generate("rkube ingress default certificate").map_err(|e| e.to_string())?;
    let pair = issuer.issue("ingress.local", None, &["ingress.local".to_string()], &[], Usage::Server).map_err(|e| e.to_string())?;
    component_base::tls::certified_key(&pair.cert_pem, &pair.key_pem).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
    use kube::runtime::reflector::store;
    use kube::runtime::watcher::Event;

    fn filled<K>(objects: Vec<serde_json::Value>) -> kube::runtime::reflector::Store<K>
    where
        K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + 'static,
    {
        let (reader, mut writer) = store::<K>();
        for object in objects {
            writer.apply_watcher_event(&Event::Apply(serde_json::from_value(object).expect("an object")));
        }
        reader
    }

    #[test]
    fn the_most_specific_tls_entry_names_the_secret() {
        let class = serde_json::json!({"metadata": {"name": "rkube", "annotations": {crate::routes::DEFAULT_CLASS_ANNOTATION: "true"}}, "spec": {"controller": crate::CONTROLLER}});
        let ingress = |name: &str, created: &str, tls: serde_json::Value| {
            serde_json::json!({"metadata": {"name": name, "namespace": "shop", "creationTimestamp": created}, "spec": {"ingressClassName": "rkube", "tls": tls}})
        };
        let caches = Caches {
            ingresses: filled::<Ingress>(vec![
                ingress("wild", "2026-01-01T00:00:00Z", serde_json::json!([{"hosts": ["*.shop.local"], "secretName": "wild-tls"}, {"secretName": "any-tls"}])),
                ingress("exact", "2026-02-01T00:00:00Z", serde_json::json!([{"hosts": ["pay.shop.local"], "secretName": "pay-tls"}])),
                serde_json::json!({"metadata": {"name": "other", "namespace": "shop"}, "spec": {"ingressClassName": "nginx", "tls": [{"hosts": ["x.other.local"], "secretName": "nginx-tls"}]}}),
            ]),
            classes: filled::<IngressClass>(vec![class]),
            services: filled(vec![]),
            slices: filled(vec![]),
            secrets: filled(vec![]),
        };
        let secret = |name: &str| Some(("shop".to_string(), name.to_string()));
        assert_eq!(secret_for(&caches, "pay.shop.local"), secret("pay-tls"));
        assert_eq!(secret_for(&caches, "cart.shop.local"), secret("wild-tls"));
        assert_eq!(secret_for(&caches, "x.other.local"), secret("any-tls"), "another class's entry is not ours; a host-less entry covers any name");
    }
}
