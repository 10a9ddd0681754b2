//! `rkube server`: the lab's process, open to other nodes. Besides what `rkube up` runs,
//! it keeps a join token (the bootstrap token Secret, and `DIR/server/token` for the
//! operator, as k3s keeps `node-token`) and publishes what agents need to know about
//! the cluster in the `kube-public/cluster-info` ConfigMap (kubeadm's name): the
//! server's address and CA, and the pod, Service and DNS addresses.

use std::path::PathBuf;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, Patch, PatchParams, PostParams};

use crate::join::JoinToken;
use crate::lab::{Lab, LabSettings};

/// The ConfigMap agents read (namespace, name).
pub const CLUSTER_INFO: (&str, &str) = ("kube-public", "cluster-info");

/// Where the server keeps its join token.
pub fn token_file(lab: &Lab) -> PathBuf {
    lab.dir.join("server").join("token")
}

/// Makes the cluster joinable: the join token (kept across restarts while the CA stays
/// the same), its bootstrap Secret, and cluster-info with who may read it. Prints how
/// to join.
pub async fn open_for_agents(lab: &Lab, settings: &LabSettings, advertised: &str, etcd_servers: &[String]) -> anyhow::Result<()> {
    let client = component_base::client::client(Some(&lab.kubeconfig())).await?;
    let ca = apiserver::server::cluster_ca(&lab.dir).context("loading the cluster CA")?;
    let ca_der = component_base::pki::pem_certificates(ca.cert_pem()).into_iter().next().context("the cluster CA file holds no certificate")?;
    let path = token_file(lab);
    let hash = crate::join::ca_hash(&ca_der)?;
    let token = match std::fs::read_to_string(&path).ok().and_then(|t| t.parse::<JoinToken>().ok()) {
        Some(t) if t.ca_hash == hash => t,
        _ => {
            let t = JoinToken::generate(&ca_der)?;
            component_base::pki::write_file(&path, format!("{t}\n").as_bytes(), 0o600).with_context(|| format!("writing {}", path.display()))?;
            t
        }
    };
    if !etcd_servers.is_empty() {
        // Other servers on this etcd join with the same token.
        crate::bootstrap::publish(etcd_servers, &token, &apiserver::server::pki_dir(&lab.dir)).await.context("storing the cluster secrets in etcd")?;
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "kube-system");
    let secret: Secret = serde_json::from_value(token.secret_object())?;
    let name = format!("bootstrap-token-{}", token.id);
    // Replaced, not merged: a Secret left from an older token must not keep its secret.
    if secrets.get_opt(&name).await?.is_some() {
        secrets.replace(&name, &PostParams::default(), &secret).await?;
    } else {
        secrets.create(&PostParams::default(), &secret).await?;
    }

    let (namespace, info_name) = CLUSTER_INFO;
    let dns = crate::up::cluster_dns_ip(settings).map(|ip| ip.to_string()).unwrap_or_default();
    let params = PatchParams::apply("rkube").force();
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let body = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": info_name, "namespace": namespace},
        "data": {
            "server": advertised,
            "ca.crt": ca.cert_pem(),
            "cluster-cidr": settings.cluster_cidr,
            "service-cidr": settings.service_cidr,
            "cluster-dns": dns,
        },
    });
    config_maps.patch(info_name, &params, &Patch::Apply(&body)).await?;
    let reader = "rkube:cluster-info-reader";
    let roles: Api<Role> = Api::namespaced(client.clone(), namespace);
    let role = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": reader, "namespace": namespace},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [info_name], "verbs": ["get"]}],
    });
    roles.patch(reader, &params, &Patch::Apply(&role)).await?;
    let bindings: Api<RoleBinding> = Api::namespaced(client, namespace);
    let binding = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": reader, "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": reader},
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:bootstrappers"},
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"},
        ],
    });
    bindings.patch(reader, &params, &Patch::Apply(&binding)).await?;
    println!("agents join with:");
    println!("  rkube agent --server {advertised} --token $(cat {})", path.display());
    Ok(())
}
