//! What the certificate controllers (`csrapproving`, `csrsigning`) share: the signer
//! names of Kubernetes' built-in signers, the state a CertificateSigningRequest is in
//! (its conditions), the constraints each built-in signer puts on what it signs, and a
//! per-object retry backoff.
//!
//! The constraints are Kubernetes' (`pkg/apis/certificates` validation of the kubelet
//! signers): the approver recognizes a node's request with the same check the signer
//! later enforces, so a request the approver would approve is one the signer will sign.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use component_base::pki::{RequestInfo, Usage};
use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// Client certificates for the apiserver, signed only once approved by someone.
pub const KUBE_APISERVER_CLIENT: &str = "kubernetes.io/kube-apiserver-client";
/// Kubelets' client certificates for the apiserver (`system:node:<name>`).
pub const KUBE_APISERVER_CLIENT_KUBELET: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// Kubelets' serving certificates (the apiserver verifies them when it calls a kubelet).
pub const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";

/// The prefix of a node's user name, and the group every node is in.
pub const NODE_USER_PREFIX: &str = "system:node:";
pub const NODES_GROUP: &str = "system:nodes";

/// The condition types of a CertificateSigningRequest.
pub const APPROVED: &str = "Approved";
pub const DENIED: &str = "Denied";
pub const FAILED: &str = "Failed";

/// The `spec.usages` values the built-in signers know.
pub const DIGITAL_SIGNATURE: &str = "digital signature";
pub const KEY_ENCIPHERMENT: &str = "key encipherment";
pub const CLIENT_AUTH: &str = "client auth";
pub const SERVER_AUTH: &str = "server auth";

/// Whether a condition of `type_` is there with a status `accept` takes.
fn has_condition(csr: &CertificateSigningRequest, type_: &str, accept: fn(&str) -> bool) -> bool {
    csr.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && accept(&c.status)))
}

fn not_false(status: &str) -> bool {
    status != "False"
}

/// Approved (status "True"), and not also Denied: a denial always wins.
pub fn is_approved(csr: &CertificateSigningRequest) -> bool {
    has_condition(csr, APPROVED, |s| s == "True") && !is_denied(csr)
}

/// Denied (a Denied condition not explicitly "False" counts: when in doubt, refuse).
pub fn is_denied(csr: &CertificateSigningRequest) -> bool {
    has_condition(csr, DENIED, not_false)
}

/// Failed, as [`is_denied`] reads Denied.
pub fn is_failed(csr: &CertificateSigningRequest) -> bool {
    has_condition(csr, FAILED, not_false)
}

/// Whether `status.certificate` is already set.
pub fn has_certificate(csr: &CertificateSigningRequest) -> bool {
    csr.status.as_ref().and_then(|s| s.certificate.as_ref()).is_some_and(|c| !c.0.is_empty())
}

/// The request (`spec.request`, PEM) as text.
pub fn request_pem(csr: &CertificateSigningRequest) -> Option<String> {
    String::from_utf8(csr.spec.request.0.clone()).ok()
}

pub fn signer_name(csr: &CertificateSigningRequest) -> &str {
    &csr.spec.signer_name
}

pub fn usages(csr: &CertificateSigningRequest) -> Vec<String> {
    csr.spec.usages.clone().unwrap_or_default()
}

/// A condition that is true now, appended to the request's conditions.
pub fn add_condition(csr: &mut CertificateSigningRequest, type_: &str, reason: &str, message: &str) {
    let now = Time(Timestamp::now());
    let condition = CertificateSigningRequestCondition {
        type_: type_.to_string(),
        status: "True".into(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now),
    };
    csr.status.get_or_insert_with(Default::default).conditions.get_or_insert_with(Vec::new).push(condition);
}

/// Whether `usages` has every one of `required` and nothing outside `allowed`.
fn check_usages(usages: &[String], allowed: &[&str], required: &str) -> Result<(), String> {
    let given: BTreeSet<&str> = usages.iter().map(String::as_str).collect();
    if let Some(bad) = given.iter().find(|u| !allowed.contains(u)) {
        return Err(format!("usage {bad:?} is not allowed; allowed usages: {}", allowed.join(", ")));
    }
    if !given.contains(required) {
        return Err(format!("missing required usage {required:?}"));
    }
    Ok(())
}

/// The subject every kubelet certificate must have: CN `system:node:<name>` (a name
/// after the prefix) and O exactly `system:nodes`.
fn check_node_subject(info: &RequestInfo) -> Result<(), String> {
    if info.organizations != [NODES_GROUP] {
        return Err(format!("subject organization must be exactly [{NODES_GROUP}], not {:?}", info.organizations));
    }
    match info.common_name.strip_prefix(NODE_USER_PREFIX) {
        Some(name) if !name.is_empty() => Ok(()),
        _ => Err(format!("subject common name must be {NODE_USER_PREFIX}<node name>, not {:?}", info.common_name)),
    }
}

/// `kubernetes.io/kube-apiserver-client-kubelet`: a node's subject, no SANs at all,
/// usages within digital signature, key encipherment and client auth, with client auth.
pub fn check_kubelet_client(info: &RequestInfo, usages: &[String]) -> Result<(), String> {
    check_node_subject(info)?;
    let sans = [("DNS", info.dns_names.len()), ("email", info.emails.len()), ("IP", info.ips.len()), ("URI", info.uris.len())];
    if let Some((kind, _)) = sans.iter().find(|(_, n)| *n > 0) {
        return Err(format!("{kind} subjectAltNames are not allowed"));
    }
    check_usages(usages, &[DIGITAL_SIGNATURE, KEY_ENCIPHERMENT, CLIENT_AUTH], CLIENT_AUTH)
}

/// `kubernetes.io/kubelet-serving`: a node's subject, at least one DNS or IP SAN and no
/// email or URI SANs, usages within digital signature, key encipherment and server
/// auth, with server auth.
pub fn check_kubelet_serving(info: &RequestInfo, usages: &[String]) -> Result<(), String> {
    check_node_subject(info)?;
    if !info.emails.is_empty() {
        return Err("email subjectAltNames are not allowed".into());
    }
    if !info.uris.is_empty() {
        return Err("URI subjectAltNames are not allowed".into());
    }
    if info.dns_names.is_empty() && info.ips.is_empty() {
        return Err("at least one DNS or IP subjectAltName is required".into());
    }
    check_usages(usages, &[DIGITAL_SIGNATURE, KEY_ENCIPHERMENT, SERVER_AUTH], SERVER_AUTH)
}

/// `kubernetes.io/kube-apiserver-client`: any subject (its approver vouched for it),
/// usages within digital signature, key encipherment and client auth, with client auth.
pub fn check_kube_apiserver_client(_info: &RequestInfo, usages: &[String]) -> Result<(), String> {
    check_usages(usages, &[DIGITAL_SIGNATURE, KEY_ENCIPHERMENT, CLIENT_AUTH], CLIENT_AUTH)
}

/// Whether `signer` is one of the signers this controller-manager signs for.
pub fn is_built_in_signer(signer: &str) -> bool {
    [KUBE_APISERVER_CLIENT, KUBE_APISERVER_CLIENT_KUBELET, KUBELET_SERVING].contains(&signer)
}

/// One signer's constraint check.
type Check = fn(&RequestInfo, &[String]) -> Result<(), String>;

/// For one of the built-in signers: whether the request meets that signer's constraints,
/// and what the certificate is then for. `None`: not a signer of this controller-manager.
pub fn check_signer(signer: &str, info: &RequestInfo, usages: &[String]) -> Option<Result<Usage, String>> {
    let (check, usage): (Check, Usage) = match signer {
        KUBE_APISERVER_CLIENT => (check_kube_apiserver_client, Usage::Client),
        KUBE_APISERVER_CLIENT_KUBELET => (check_kubelet_client, Usage::Client),
        KUBELET_SERVING => (check_kubelet_serving, Usage::Server),
        _ => return None,
    };
    Some(check(info, usages).map(|()| usage))
}

/// Per-object exponential backoff for failed syncs: 1 s doubling up to 5 minutes,
/// forgotten once the object syncs.
#[derive(Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(300);

    /// The wait before retrying `key` after one more failure.
    pub fn failed(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(key.to_string()).or_insert(0);
        let wait = Self::FIRST.saturating_mul(1u32 << (*n).min(16)).min(Self::MAX);
        *n = n.saturating_add(1);
        wait
    }

    pub fn succeeded(&self, key: &str) {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_request(cn: &str, orgs: &[&str]) -> RequestInfo {
        RequestInfo { common_name: cn.into(), organizations: orgs.iter().map(|s| s.to_string()).collect(), ..Default::default() }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn kubelet_client_requests_name_a_node_and_nothing_else() {
        let ok = node_request("system:node:n1", &[NODES_GROUP]);
        let usages = strings(&[DIGITAL_SIGNATURE, KEY_ENCIPHERMENT, CLIENT_AUTH]);
        assert_eq!(check_kubelet_client(&ok, &usages), Ok(()));
        assert_eq!(check_kubelet_client(&ok, &strings(&[CLIENT_AUTH])), Ok(()));
        for (info, why) in [
            (node_request("system:node:", &[NODES_GROUP]), "common name"),
            (node_request("jane", &[NODES_GROUP]), "common name"),
            (node_request("system:node:n1", &[]), "organization"),
            (node_request("system:node:n1", &[NODES_GROUP, "system:masters"]), "organization"),
            (node_request("system:node:n1", &["system:masters"]), "organization"),
            (RequestInfo { dns_names: strings(&["n1"]), ..ok.clone() }, "DNS"),
            (RequestInfo { ips: vec!["10.0.0.1".parse().expect("ip")], ..ok.clone() }, "IP"),
            (RequestInfo { emails: strings(&["a@b"]), ..ok.clone() }, "email"),
            (RequestInfo { uris: strings(&["spiffe://x"]), ..ok.clone() }, "URI"),
        ] {
            let err = check_kubelet_client(&info, &usages).expect_err(why);
            assert!(err.contains(why), "{why}: {err}");
        }
        assert!(check_kubelet_client(&ok, &strings(&[DIGITAL_SIGNATURE, KEY_ENCIPHERMENT])).expect_err("no client auth").contains("missing"));
        assert!(check_kubelet_client(&ok, &strings(&[CLIENT_AUTH, SERVER_AUTH])).expect_err("server auth").contains("not allowed"));
    }

    #[test]
    fn kubelet_serving_requests_need_an_address_and_server_auth() {
        let base = node_request("system:node:n1", &[NODES_GROUP]);
        let usages = strings(&[DIGITAL_SIGNATURE, KEY_ENCIPHERMENT, SERVER_AUTH]);
        let with_ip = RequestInfo { ips: vec!["10.0.0.1".parse().expect("ip")], ..base.clone() };
        let with_dns = RequestInfo { dns_names: strings(&["n1"]), ..base.clone() };
        assert_eq!(check_kubelet_serving(&with_ip, &usages), Ok(()));
        assert_eq!(check_kubelet_serving(&with_dns, &usages), Ok(()));
        assert!(check_kubelet_serving(&base, &usages).expect_err("no SAN").contains("at least one"));
        assert!(check_kubelet_serving(&RequestInfo { emails: strings(&["a@b"]), ..with_ip.clone() }, &usages).is_err());
        assert!(check_kubelet_serving(&RequestInfo { uris: strings(&["https://x"]), ..with_ip.clone() }, &usages).is_err());
        assert!(check_kubelet_serving(&with_ip, &strings(&[CLIENT_AUTH, SERVER_AUTH])).is_err());
        assert!(check_kubelet_serving(&with_ip, &strings(&[DIGITAL_SIGNATURE])).is_err());
        assert!(check_kubelet_serving(&RequestInfo { organizations: vec![], ..with_ip }, &usages).is_err());
    }

    #[test]
    fn each_signer_has_its_constraints_and_usage() {
        let any = node_request("jane", &["dev", "ops"]);
        assert_eq!(check_signer(KUBE_APISERVER_CLIENT, &any, &strings(&[CLIENT_AUTH])), Some(Ok(Usage::Client)));
        assert!(matches!(check_signer(KUBE_APISERVER_CLIENT, &any, &strings(&[SERVER_AUTH])), Some(Err(_))));
        assert!(matches!(check_signer(KUBE_APISERVER_CLIENT, &any, &[]), Some(Err(_))));
        assert!(matches!(check_signer(KUBE_APISERVER_CLIENT_KUBELET, &any, &strings(&[CLIENT_AUTH])), Some(Err(_))));
        let serving = RequestInfo { dns_names: strings(&["n1"]), ..node_request("system:node:n1", &[NODES_GROUP]) };
        assert_eq!(check_signer(KUBELET_SERVING, &serving, &strings(&[SERVER_AUTH])), Some(Ok(Usage::Server)));
        assert_eq!(check_signer("example.com/other", &any, &strings(&[CLIENT_AUTH])), None);
        assert_eq!(check_signer("kubernetes.io/legacy-unknown", &any, &strings(&[CLIENT_AUTH])), None);
    }

    #[test]
    fn conditions_say_where_a_request_is() {
        let mut csr = CertificateSigningRequest::default();
        assert!(!is_approved(&csr) && !is_denied(&csr) && !is_failed(&csr) && !has_certificate(&csr));
        add_condition(&mut csr, APPROVED, "AutoApproved", "ok");
        assert!(is_approved(&csr));
        add_condition(&mut csr, DENIED, "No", "no");
        assert!(!is_approved(&csr) && is_denied(&csr));
        let mut failed = CertificateSigningRequest::default();
        add_condition(&mut failed, FAILED, "SignerValidationFailure", "bad");
        assert!(is_failed(&failed));
    }

    #[test]
    fn backoff_doubles_up_to_a_limit_and_resets() {
        let b = Backoff::default();
        assert_eq!(b.failed("a"), Duration::from_secs(1));
        assert_eq!(b.failed("a"), Duration::from_secs(2));
        assert_eq!(b.failed("a"), Duration::from_secs(4));
        assert_eq!(b.failed("b"), Duration::from_secs(1));
        for _ in 0..20 {
            b.failed("a");
        }
        assert_eq!(b.failed("a"), Duration::from_secs(300));
        b.succeeded("a");
        assert_eq!(b.failed("a"), Duration::from_secs(1));
    }
}
