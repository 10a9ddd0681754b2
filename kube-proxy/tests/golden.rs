//! The generated ruleset against golden text, and the incremental batches against what a
//! single change should touch. `UPDATE_GOLDEN=1 cargo test -p kube-proxy --test golden`
//! rewrites the golden files after a deliberate change (review the diff).

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube_proxy::model::{self, ServicePort};
use kube_proxy::proxier::{self, ProxyRules};
use serde_json::json;

fn service(v: serde_json::Value) -> Service {
    serde_json::from_value(v).expect("Service")
}

fn slice(v: serde_json::Value) -> EndpointSlice {
    serde_json::from_value(v).expect("EndpointSlice")
}

fn rules() -> ProxyRules {
    ProxyRules { cluster_cidr: Some("10.42.0.0/16".parse().expect("cidr")) }
}

/// A cluster with one of everything kube-proxy treats differently.
fn sample_ports() -> (Vec<ServicePort>, Vec<model::HostPort>) {
    let web = service(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "10.43.0.20", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }));
    let web_slice = slice(json!({
        "metadata": {"name": "web-x1", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["10.42.0.5"], "conditions": {"ready": true}, "nodeName": "node-a"},
            {"addresses": ["10.42.1.7"], "conditions": {"ready": true}, "nodeName": "node-b"},
            {"addresses": ["10.42.0.9"], "conditions": {"ready": false, "serving": true, "terminating": true}, "nodeName": "node-a"}
        ]
    }));
    let dns = service(json!({
        "metadata": {"name": "kube-dns", "namespace": "kube-system"},
        "spec": {"clusterIP": "10.43.0.10", "sessionAffinity": "ClientIP",
                 "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                 "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}
    }));
    let dns_slice = slice(json!({
        "metadata": {"name": "kube-dns-1", "namespace": "kube-system", "labels": {"kubernetes.io/service-name": "kube-dns"}},
        "addressType": "IPv4",
        "ports": [{"name": "dns", "port": 10053, "protocol": "UDP"}, {"name": "dns-tcp", "port": 10053, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["192.168.1.2"], "conditions": {"ready": true}}]
    }));
    let shop = service(json!({
        "metadata": {"name": "shop", "namespace": "apps"},
        "spec": {"type": "NodePort", "clusterIP": "10.43.0.30", "externalIPs": ["192.0.2.9"],
                 "externalTrafficPolicy": "Local",
                 "ports": [{"port": 8000, "nodePort": 30080}]}
    }));
    let shop_slice = slice(json!({
        "metadata": {"name": "shop-1", "namespace": "apps", "labels": {"kubernetes.io/service-name": "shop"}},
        "addressType": "IPv4",
        "ports": [{"port": 8000, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["10.42.0.11"], "nodeName": "node-a"},
            {"addresses": ["10.42.1.12"], "nodeName": "node-b"}
        ]
    }));
    let lb = service(json!({
        "metadata": {"name": "edge", "namespace": "apps"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.43.0.40", "ports": [{"port": 443, "nodePort": 31443}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "192.168.1.240"}]}}
    }));
    let empty = service(json!({
        "metadata": {"name": "nobody", "namespace": "default"},
        "spec": {"type": "NodePort", "clusterIP": "10.43.0.50", "ports": [{"port": 80, "nodePort": 30050}]}
    }));
    let mut ports = Vec::new();
    ports.extend(model::service_ports(&web, &[&web_slice], "node-a"));
    ports.extend(model::service_ports(&dns, &[&dns_slice], "node-a"));
    ports.extend(model::service_ports(&shop, &[&shop_slice], "node-a"));
    ports.extend(model::service_ports(&lb, &[], "node-a"));
    ports.extend(model::service_ports(&empty, &[], "node-a"));
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "ingress-0", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 8081}]}]},
        "status": {"phase": "Running", "podIP": "10.42.0.33"}
    }))
    .expect("Pod");
    (ports, model::host_ports(&pod))
}

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("writing golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    if expected != actual {
        panic!("{} differs from the generated ruleset:\n--- expected\n{expected}\n--- actual\n{actual}", path.display());
    }
}

#[test]
fn full_ruleset_matches_golden_text() {
    let (ports, host_ports) = sample_ports();
    let ruleset = proxier::build(&ports, &host_ports, &rules());
    golden("sample.nft", &ruleset.render("kube-proxy"));
}

#[test]
fn scaling_one_service_touches_only_its_chains() {
    let (ports, host_ports) = sample_ports();
    let before = proxier::build(&ports, &host_ports, &rules());
    let mut scaled = ports.clone();
    let web = scaled.iter_mut().find(|p| p.name.name == "web").expect("web");
    web.endpoints.retain(|e| e.ip.to_string() != "10.42.1.7");
    let after = proxier::build(&scaled, &host_ports, &rules());
    golden("scale-down-web.batch", &after.diff_batch(&before, "kube-proxy"));
}

#[test]
fn losing_the_last_endpoint_switches_to_reject() {
    let (ports, host_ports) = sample_ports();
    let before = proxier::build(&ports, &host_ports, &rules());
    let mut emptied = ports.clone();
    for p in emptied.iter_mut().filter(|p| p.name.name == "kube-dns") {
        p.endpoints.clear();
    }
    let after = proxier::build(&emptied, &host_ports, &rules());
    golden("kube-dns-no-endpoints.batch", &after.diff_batch(&before, "kube-proxy"));
}

/// The kernel accepts the generated text (nft's check mode, no change to the ruleset).
#[test]
fn nft_accepts_the_full_batch_linux() {
    if !nix_is_root() {
        if std::env::var_os("CI").is_some() {
            panic!("CI runs as root; this test needs root for nft --check");
        }
        eprintln!("skipping nft_accepts_the_full_batch_linux: needs root (nft --check talks to the kernel)");
        return;
    }
    let (ports, host_ports) = sample_ports();
    let ruleset = proxier::build(&ports, &host_ports, &rules());
    let table = format!("rkube-golden-{}", std::process::id());
    let mut child = std::process::Command::new("nft")
        .args(["--check", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running nft");
    use std::io::Write as _;
    child.stdin.take().expect("stdin").write_all(ruleset.full_batch(&table).as_bytes()).expect("writing batch");
    let out = child.wait_with_output().expect("nft");
    assert!(out.status.success(), "nft --check rejected the batch: {}", String::from_utf8_lossy(&out.stderr));
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}
