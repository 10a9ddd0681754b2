//! Printers for the remaining groups: `coordination.k8s.io` (leases),
//! `networking.k8s.io` (ingresses, ingress classes, network policies),
//! `rbac.authorization.k8s.io` (role bindings), `storage.k8s.io` (storage
//! classes), `discovery.k8s.io` (endpoint slices), `scheduling.k8s.io`
//! (priority classes), `node.k8s.io` (runtime classes) and
//! `admissionregistration.k8s.io` (webhook configurations).

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::util::{
    age, arr, format_label_selector, get, int_at, list_with_more, load_balancer_string, name,
    opt_bool, opt_int, opt_str, str_at,
};
use super::{col, wide, Column, Printer, AGE, NAME};

pub(crate) fn printer(resource: &str, group: &str) -> Option<Printer> {
    let p: Printer = match (group, resource) {
        ("coordination.k8s.io", "leases") => (LEASE_COLUMNS, lease_row),
        ("certificates.k8s.io", "certificatesigningrequests") => (CSR_COLUMNS, csr_row),
        ("networking.k8s.io", "ingresses") | ("extensions", "ingresses") => {
            (INGRESS_COLUMNS, ingress_row)
        }
        ("networking.k8s.io", "ingressclasses") => (INGRESSCLASS_COLUMNS, ingressclass_row),
        ("networking.k8s.io", "networkpolicies") | ("extensions", "networkpolicies") => {
            (NETWORKPOLICY_COLUMNS, networkpolicy_row)
        }
        ("rbac.authorization.k8s.io", "rolebindings") => (ROLEBINDING_COLUMNS, binding_row),
        ("rbac.authorization.k8s.io", "clusterrolebindings") => {
            (CLUSTERROLEBINDING_COLUMNS, binding_row)
        }
        ("storage.k8s.io", "storageclasses") => (STORAGECLASS_COLUMNS, storageclass_row),
        ("discovery.k8s.io", "endpointslices") => (ENDPOINTSLICE_COLUMNS, endpointslice_row),
        ("scheduling.k8s.io", "priorityclasses") => (PRIORITYCLASS_COLUMNS, priorityclass_row),
        ("node.k8s.io", "runtimeclasses") => (RUNTIMECLASS_COLUMNS, runtimeclass_row),
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations")
        | ("admissionregistration.k8s.io", "validatingwebhookconfigurations") => {
            (WEBHOOK_COLUMNS, webhook_row)
        }
        _ => return None,
    };
    Some(p)
}

// ---------------------------------------------------------------- leases

static LEASE_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Holder",
        "string",
        "holderIdentity contains the identity of the holder of a current lease.",
    ),
    AGE,
];

fn lease_row(l: &Value, now: DateTime<Utc>) -> Vec<Value> {
    vec![
        json!(name(l)),
        json!(str_at(l, &["spec", "holderIdentity"])),
        age(l, now),
    ]
}

// ---------------------------------------------------------------- certificate signing requests

static CSR_COLUMNS: &[Column] = &[
    NAME,
    AGE,
    col("SignerName", "string", "Only one signer may sign a request: the signer named here."),
    col("Requestor", "string", "Name of the user which made this request."),
    col("RequestedDuration", "string", "Length of time the certificate is asked to be valid for."),
    col("Condition", "string", "Condition indicates if the certificate has been approved or denied."),
];

fn csr_row(csr: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let duration = opt_int(csr, &["spec", "expirationSeconds"])
        .map(|s| super::util::human_duration(chrono::Duration::seconds(s)))
        .unwrap_or_else(|| "<none>".into());
    let signer = opt_str(csr, &["spec", "signerName"]).filter(|s| !s.is_empty()).unwrap_or("<none>");
    vec![
        json!(name(csr)),
        age(csr, now),
        json!(signer),
        json!(str_at(csr, &["spec", "username"])),
        json!(duration),
        json!(crate::certificates::condition_summary(csr)),
    ]
}

// ---------------------------------------------------------------- ingresses

static INGRESS_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Class",
        "string",
        "The name of the IngressClass resource that should be used for additional configuration",
    ),
    col(
        "Hosts",
        "string",
        "Hosts that incoming requests are matched against before the ingress rule",
    ),
    col(
        "Address",
        "string",
        "Address is a list containing ingress points for the load-balancer",
    ),
    col("Ports", "string", "Ports of TLS configurations that open"),
    AGE,
];

fn ingress_row(ing: &Value, now: DateTime<Utc>) -> Vec<Value> {
    const MAX: usize = 3;
    let rules = arr(ing, &["spec", "rules"]);
    let mut hosts: Vec<&str> = Vec::new();
    let mut more = false;
    for r in rules {
        if hosts.len() == MAX {
            more = true;
        }
        let h = str_at(r, &["host"]);
        if !more && !h.is_empty() {
            hosts.push(h);
        }
    }
    let hosts = if hosts.is_empty() {
        "*".to_string()
    } else if more {
        format!("{} + {} more...", hosts.join(","), rules.len() - MAX)
    } else {
        hosts.join(",")
    };
    let ports = if arr(ing, &["spec", "tls"]).is_empty() {
        "80"
    } else {
        "80, 443"
    };
    vec![
        json!(name(ing)),
        json!(opt_str(ing, &["spec", "ingressClassName"]).unwrap_or("<none>")),
        json!(hosts),
        json!(load_balancer_string(arr(
            ing,
            &["status", "loadBalancer", "ingress"]
        ))),
        json!(ports),
        age(ing, now),
    ]
}

static INGRESSCLASS_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Controller",
        "string",
        "Controller that is responsible for handling this class",
    ),
    col(
        "Parameters",
        "string",
        "A reference to a resource with additional parameters",
    ),
    AGE,
];

fn ingressclass_row(ic: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let params = match get(ic, &["spec", "parameters"]) {
        None => "<none>".to_string(),
        Some(p) => {
            let mut s = str_at(p, &["kind"]).to_string();
            if let Some(g) = opt_str(p, &["apiGroup"]) {
                s = format!("{s}.{g}");
            }
            format!("{s}/{}", str_at(p, &["name"]))
        }
    };
    vec![
        json!(name(ic)),
        json!(str_at(ic, &["spec", "controller"])),
        json!(params),
        age(ic, now),
    ]
}

// ---------------------------------------------------------------- network policies

static NETWORKPOLICY_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Pod-Selector",
        "string",
        "Selects the pods to which this NetworkPolicy object applies.",
    ),
    AGE,
];

fn networkpolicy_row(np: &Value, now: DateTime<Utc>) -> Vec<Value> {
    // podSelector is a non-pointer struct in Go: missing means empty.
    let sel = get(np, &["spec", "podSelector"])
        .cloned()
        .unwrap_or_else(|| json!({}));
    vec![
        json!(name(np)),
        json!(format_label_selector(Some(&sel))),
        age(np, now),
    ]
}

// ---------------------------------------------------------------- role bindings

static ROLEBINDING_COLUMNS: &[Column] = &[
    NAME,
    col("Role", "string", "RoleRef can reference a Role in the current namespace or a ClusterRole in the global namespace."),
    AGE,
    wide("Users", "string", "Users in the roleBinding"),
    wide("Groups", "string", "Groups in the roleBinding"),
    wide("ServiceAccounts", "string", "ServiceAccounts in the roleBinding"),
];

static CLUSTERROLEBINDING_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Role",
        "string",
        "RoleRef can only reference a ClusterRole in the global namespace.",
    ),
    AGE,
    wide("Users", "string", "Users in the clusterRoleBinding"),
    wide("Groups", "string", "Groups in the clusterRoleBinding"),
    wide(
        "ServiceAccounts",
        "string",
        "ServiceAccounts in the clusterRoleBinding",
    ),
];

fn binding_row(b: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let role = format!(
        "{}/{}",
        str_at(b, &["roleRef", "kind"]),
        str_at(b, &["roleRef", "name"])
    );
    let (mut users, mut groups, mut sas) = (Vec::new(), Vec::new(), Vec::new());
    for s in arr(b, &["subjects"]) {
        let n = str_at(s, &["name"]);
        match str_at(s, &["kind"]) {
            "User" => users.push(n.to_string()),
            "Group" => groups.push(n.to_string()),
            "ServiceAccount" => sas.push(format!("{}/{n}", str_at(s, &["namespace"]))),
            _ => {}
        }
    }
    vec![
        json!(name(b)),
        json!(role),
        age(b, now),
        json!(users.join(", ")),
        json!(groups.join(", ")),
        json!(sas.join(", ")),
    ]
}

// ---------------------------------------------------------------- storage classes

static STORAGECLASS_COLUMNS: &[Column] = &[
    NAME,
    col("Provisioner", "string", "provisioner indicates the type of the provisioner."),
    col("ReclaimPolicy", "string", "reclaimPolicy controls the reclaimPolicy for dynamically provisioned PersistentVolumes of this storage class. Defaults to Delete."),
    col("VolumeBindingMode", "string", "volumeBindingMode indicates how PersistentVolumeClaims should be provisioned and bound.  When unset, VolumeBindingImmediate is used."),
    col("AllowVolumeExpansion", "string", "allowVolumeExpansion shows whether the storage class allow volume expand."),
    AGE,
];

fn storageclass_row(sc: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let is_default = [
        "storageclass.kubernetes.io/is-default-class",
        "storageclass.beta.kubernetes.io/is-default-class",
    ]
    .iter()
    .any(|k| get(sc, &["metadata", "annotations", k]).and_then(Value::as_str) == Some("true"));
    let mut n = name(sc).to_string();
    if is_default {
        n.push_str(" (default)");
    }
    vec![
        json!(n),
        json!(str_at(sc, &["provisioner"])),
        json!(opt_str(sc, &["reclaimPolicy"]).unwrap_or("Delete")),
        json!(opt_str(sc, &["volumeBindingMode"]).unwrap_or("Immediate")),
        json!(opt_bool(sc, &["allowVolumeExpansion"]).unwrap_or(false)),
        age(sc, now),
    ]
}

// ---------------------------------------------------------------- endpoint slices

static ENDPOINTSLICE_COLUMNS: &[Column] = &[
    NAME,
    col(
        "AddressType",
        "string",
        "addressType specifies the type of address carried by this EndpointSlice.",
    ),
    col(
        "Ports",
        "string",
        "ports specifies the list of network ports exposed by each endpoint in this slice.",
    ),
    col(
        "Endpoints",
        "string",
        "endpoints is a list of unique endpoints in this slice.",
    ),
    AGE,
];

fn endpointslice_row(es: &Value, now: DateTime<Utc>) -> Vec<Value> {
    const MAX: usize = 3;
    let ports = arr(es, &["ports"]);
    let port_list: Vec<String> = ports
        .iter()
        .take(MAX)
        .map(|p| match (opt_int(p, &["port"]), opt_str(p, &["name"])) {
            (Some(n), _) => n.to_string(),
            (None, Some(nm)) => nm.to_string(),
            (None, None) => "*".to_string(),
        })
        .collect();
    let addrs: Vec<&str> = arr(es, &["endpoints"])
        .iter()
        .flat_map(|e| arr(e, &["addresses"]).iter().filter_map(Value::as_str))
        .collect();
    let addr_list: Vec<String> = addrs.iter().take(MAX).map(|s| s.to_string()).collect();
    vec![
        json!(name(es)),
        json!(str_at(es, &["addressType"])),
        json!(list_with_more(&port_list, ports.len(), MAX)),
        json!(list_with_more(&addr_list, addrs.len(), MAX)),
        age(es, now),
    ]
}

// ---------------------------------------------------------------- priority classes, runtime classes, webhooks

static PRIORITYCLASS_COLUMNS: &[Column] = &[
    NAME,
    col("Value", "integer", "value represents the integer value of this priority class."),
    col("Global-Default", "boolean", "globalDefault specifies whether this PriorityClass should be considered as the default priority for pods that do not have any priority class."),
    AGE,
    col("PreemptionPolicy", "string", "preemptionPolicy is the Policy for preempting pods with lower priority."),
];

fn priorityclass_row(pc: &Value, now: DateTime<Utc>) -> Vec<Value> {
    vec![
        json!(name(pc)),
        json!(int_at(pc, &["value"])),
        json!(opt_bool(pc, &["globalDefault"]).unwrap_or(false)),
        age(pc, now),
        json!(opt_str(pc, &["preemptionPolicy"]).unwrap_or("PreemptLowerPriority")),
    ]
}

static RUNTIMECLASS_COLUMNS: &[Column] = &[
    NAME,
    col("Handler", "string", "handler specifies the underlying runtime and configuration that the CRI implementation will use to handle pods of this class."),
    AGE,
];

fn runtimeclass_row(rc: &Value, now: DateTime<Utc>) -> Vec<Value> {
    vec![
        json!(name(rc)),
        json!(str_at(rc, &["handler"])),
        age(rc, now),
    ]
}

static WEBHOOK_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Webhooks",
        "integer",
        "Webhooks indicates the number of webhooks registered in this configuration",
    ),
    AGE,
];

fn webhook_row(w: &Value, now: DateTime<Utc>) -> Vec<Value> {
    vec![
        json!(name(w)),
        json!(arr(w, &["webhooks"]).len()),
        age(w, now),
    ]
}

#[cfg(test)]
mod tests {
    use super::super::test_support::now;
    use super::super::{columns, row};
    use serde_json::json;

    const RBAC: &str = "rbac.authorization.k8s.io";
    const NET: &str = "networking.k8s.io";

    #[test]
    fn leases_and_ingresses() {
        let l =
            json!({"metadata": {"name": "kube-scheduler"}, "spec": {"holderIdentity": "cp-1_abc"}});
        assert_eq!(
            row("leases", "coordination.k8s.io", &l, now())[1],
            json!("cp-1_abc")
        );

        let names: Vec<&str> = columns("ingresses", NET).iter().map(|c| c.name).collect();
        assert_eq!(names, ["Name", "Class", "Hosts", "Address", "Ports", "Age"]);
        let ing = json!({"metadata": {"name": "web"}, "spec": {"ingressClassName": "nginx",
            "rules": [{"host": "a.example.com"}, {"host": "b.example.com"}, {}, {"host": "c.example.com"}, {"host": "d.example.com"}],
            "tls": [{"hosts": ["a.example.com"]}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.168.64.10"}]}}});
        assert_eq!(
            row("ingresses", NET, &ing, now())[1..5],
            [
                json!("nginx"),
                json!("a.example.com,b.example.com,c.example.com + 2 more..."),
                json!("192.168.64.10"),
                json!("80, 443")
            ]
        );
        let bare = json!({"metadata": {"name": "x"}, "spec": {"rules": [{}]}});
        assert_eq!(
            row("ingresses", NET, &bare, now())[1..5],
            [json!("<none>"), json!("*"), json!(""), json!("80")]
        );
        let ic = json!({"metadata": {"name": "nginx"}, "spec": {"controller": "k8s.io/ingress-nginx",
            "parameters": {"apiGroup": "k8s.example.com", "kind": "IngressParameters", "name": "p"}}});
        assert_eq!(
            row("ingressclasses", NET, &ic, now())[2],
            json!("IngressParameters.k8s.example.com/p")
        );
    }

    #[test]
    fn network_policies_and_bindings() {
        let np = json!({"metadata": {"name": "deny"}, "spec": {"podSelector": {}}});
        assert_eq!(row("networkpolicies", NET, &np, now())[1], json!("<none>"));
        let np = json!({"metadata": {"name": "db"}, "spec": {"podSelector": {"matchLabels": {"role": "db"}}}});
        assert_eq!(row("networkpolicies", NET, &np, now())[1], json!("role=db"));

        let rb = json!({"metadata": {"name": "read"}, "roleRef": {"kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "User", "name": "jane"}, {"kind": "Group", "name": "devs"},
                         {"kind": "ServiceAccount", "name": "ci", "namespace": "tools"}, {"kind": "User", "name": "bob"}]});
        let r = row("rolebindings", RBAC, &rb, now());
        assert_eq!(r[1], json!("ClusterRole/view"));
        assert_eq!(
            r[3..6],
            [json!("jane, bob"), json!("devs"), json!("tools/ci")]
        );
        assert_eq!(row("clusterrolebindings", RBAC, &rb, now()).len(), 6);
    }

    #[test]
    fn storage_classes_and_slices() {
        let sc = json!({"metadata": {"name": "local-path",
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": "rancher.io/local-path", "volumeBindingMode": "WaitForFirstConsumer"});
        assert_eq!(
            row("storageclasses", "storage.k8s.io", &sc, now())[0..5],
            [
                json!("local-path (default)"),
                json!("rancher.io/local-path"),
                json!("Delete"),
                json!("WaitForFirstConsumer"),
                json!(false)
            ]
        );
        let es = json!({"metadata": {"name": "web-abc"}, "addressType": "IPv4",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "named"}],
            "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]}, {"addresses": ["10.0.0.3"]}, {"addresses": ["10.0.0.4"]}]});
        assert_eq!(
            row("endpointslices", "discovery.k8s.io", &es, now())[1..4],
            [
                json!("IPv4"),
                json!("80,named"),
                json!("10.0.0.1,10.0.0.2,10.0.0.3 + 1 more...")
            ]
        );
        let empty = json!({"metadata": {"name": "e"}, "addressType": "IPv4"});
        assert_eq!(
            row("endpointslices", "discovery.k8s.io", &empty, now())[2..4],
            [json!("<unset>"), json!("<unset>")]
        );
    }

    #[test]
    fn priority_runtime_webhooks() {
        let pc = json!({"metadata": {"name": "system-cluster-critical"}, "value": 2000000000});
        assert_eq!(
            row("priorityclasses", "scheduling.k8s.io", &pc, now())[1..3],
            [json!(2000000000), json!(false)]
        );
        let rc = json!({"metadata": {"name": "gvisor"}, "handler": "runsc"});
        assert_eq!(
            row("runtimeclasses", "node.k8s.io", &rc, now())[1],
            json!("runsc")
        );
        let wh = json!({"metadata": {"name": "w"}, "webhooks": [{"name": "a"}, {"name": "b"}]});
        assert_eq!(
            row(
                "validatingwebhookconfigurations",
                "admissionregistration.k8s.io",
                &wh,
                now()
            )[1],
            json!(2)
        );
    }
}
