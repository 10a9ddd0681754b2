//! The CSR approving controller (Kubernetes' `csrapproving`): approves, through the
//! `approval` subresource, the CertificateSigningRequests of kubelet TLS bootstrapping and
//! nothing else.
//!
//! - A node's client certificate (`kubernetes.io/kube-apiserver-client-kubelet`, CN
//!   `system:node:<name>`, O `system:nodes`, client usages; see [`super::csr`]) when a
//!   SubjectAccessReview says the requester (`spec.username`, `groups`, `uid`, `extra`,
//!   which the apiserver filled in) may `create` `certificatesigningrequests/selfnodeclient`
//!   (a node renewing its own certificate: requester = CN) or
//!   `certificatesigningrequests/nodeclient` (a bootstrap token asking for a new node), as
//!   Kubernetes does.
//! - rkube's addition (k3s approves these too, Kubernetes leaves them to an operator): a
//!   node's serving certificate (`kubernetes.io/kubelet-serving`) asked for by that node
//!   itself (requester `system:node:<name>` in `system:nodes`, CN = requester, O
//!   `system:nodes`), whose SANs are the node's own: every IP among the Node's
//!   `status.addresses` and every DNS name the node's name or one of its Hostname /
//!   InternalDNS / ExternalDNS addresses.
//!
//! A request that is already approved, denied, failed or signed is never touched, so a
//! denial is never undone. A recognized request the review does not allow is looked at
//! again with backoff (the requester's RBAC may change).

use std::net::IpAddr;
use std::sync::Arc;

use component_base::pki::{self, RequestInfo};
use futures::future::BoxFuture;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use super::csr::{self, Backoff};
use super::{Context, ControllerError};

const CONTROLLER: &str = "csrapproving";
/// The reason of the Approved conditions this controller writes (Kubernetes').
pub const AUTO_APPROVED: &str = "AutoApproved";
pub const SELF_NODE_CLIENT_MESSAGE: &str = "Auto approving self kubelet client certificate after SubjectAccessReview.";
pub const NODE_CLIENT_MESSAGE: &str = "Auto approving kubelet client certificate after SubjectAccessReview.";
pub const KUBELET_SERVING_MESSAGE: &str = "Auto approving kubelet serving certificate after checking the node's addresses.";
/// The subresources of `certificatesigningrequests` whose `create` permission the
/// SubjectAccessReviews ask about.
pub const SELF_NODE_CLIENT: &str = "selfnodeclient";
pub const NODE_CLIENT: &str = "nodeclient";
const CERTIFICATES_GROUP: &str = "certificates.k8s.io";

#[derive(Debug, thiserror::Error)]
pub enum ApproveError {
    #[error("the SubjectAccessReview for {name} failed")]
    Review { name: String, #[source] source: kube::Error },
    #[error("reading node {node} for {name} failed")]
    Node { name: String, node: String, #[source] source: kube::Error },
    #[error("approving {name} failed")]
    Approve { name: String, #[source] source: kube::Error },
}

struct State {
    client: kube::Client,
    api: Api<CertificateSigningRequest>,
    backoff: Backoff,
}

/// Starts the approver.
pub fn start(ctx: Context, shutdown: CancellationToken) -> BoxFuture<'static, Result<(), ControllerError>> {
    Box::pin(async move {
        let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
        let state = Arc::new(State { client: ctx.client.clone(), api: api.clone(), backoff: Backoff::default() });
        let shutdown_signal = shutdown.clone();
        let applier = Controller::new(api, watcher::Config::default())
            .graceful_shutdown_on(async move { shutdown_signal.cancelled().await })
            .run(reconcile, error_policy, state);
        super::drive(CONTROLLER, applier, &shutdown).await
    })
}

fn error_policy(csr: Arc<CertificateSigningRequest>, err: &ApproveError, st: Arc<State>) -> Action {
    let name = csr.name_any();
    let wait = st.backoff.failed(&name);
    warn!(controller = CONTROLLER, csr = %name, error = %err, retry_in = ?wait, "sync failed");
    Action::requeue(wait)
}

/// What kind of request the approver knows a CSR to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Recognized {
    /// A node's client certificate; `renewal` when the requester is the node itself.
    NodeClient { renewal: bool },
    /// A node's serving certificate, asked for by that node.
    KubeletServing { node: String },
    /// Anything else: never approved here.
    Other,
}

/// Whether the approver may still decide: not approved, denied or failed, no certificate.
pub fn undecided(csr: &CertificateSigningRequest) -> bool {
    let spoken = |t: &str| csr.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| cs.iter().any(|c| c.type_ == t));
    !(spoken(csr::APPROVED) || csr::is_denied(csr) || csr::is_failed(csr) || csr::has_certificate(csr))
}

/// What the request is, given what it asks for (`info`, its parsed request).
pub fn recognize(csr: &CertificateSigningRequest, info: &RequestInfo) -> Recognized {
    let spec = &csr.spec;
    let usages = csr::usages(csr);
    let requester = spec.username.as_deref().unwrap_or_default();
    match spec.signer_name.as_str() {
        csr::KUBE_APISERVER_CLIENT_KUBELET if csr::check_kubelet_client(info, &usages).is_ok() => {
            Recognized::NodeClient { renewal: requester == info.common_name }
        }
        csr::KUBELET_SERVING if csr::check_kubelet_serving(info, &usages).is_ok() => {
            let in_nodes_group = spec.groups.as_ref().is_some_and(|g| g.iter().any(|g| g == csr::NODES_GROUP));
            match requester.strip_prefix(csr::NODE_USER_PREFIX) {
                Some(node) if !node.is_empty() && in_nodes_group && requester == info.common_name => {
                    Recognized::KubeletServing { node: node.to_string() }
                }
                _ => Recognized::Other,
            }
        }
        _ => Recognized::Other,
    }
}

/// Whether a serving certificate's SANs are the node's own. With no Node object yet, any
/// SANs pass: the agent asks for its serving certificate before its kubelet registers
/// the Node, and the request comes from that node's own credentials, which only name
/// that node.
pub fn serving_sans_match(info: &RequestInfo, node_name: &str, node: Option<&Node>) -> Result<(), String> {
    let Some(node) = node else { return Ok(()) };
    let addresses = node.status.as_ref().and_then(|s| s.addresses.clone()).unwrap_or_default();
    let ips: Vec<IpAddr> = addresses.iter().filter_map(|a| a.address.parse().ok()).collect();
    if let Some(ip) = info.ips.iter().find(|ip| !ips.contains(ip)) {
        return Err(format!("IP address {ip} is not among node {node_name}'s addresses"));
    }
    let names: Vec<&str> = std::iter::once(node_name)
        .chain(addresses.iter().filter(|a| matches!(a.type_.as_str(), "Hostname" | "InternalDNS" | "ExternalDNS")).map(|a| a.address.as_str()))
        .collect();
    if let Some(dns) = info.dns_names.iter().find(|d| !names.iter().any(|n| n.eq_ignore_ascii_case(d))) {
        return Err(format!("DNS name {dns} is neither node {node_name}'s name nor one of its addresses"));
    }
    Ok(())
}

/// The SubjectAccessReview: may the requester `create` `certificatesigningrequests/<subresource>`?
pub fn review(csr: &CertificateSigningRequest, subresource: &str) -> SubjectAccessReview {
    let spec = csr.spec.clone();
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: spec.username,
            groups: spec.groups,
            uid: spec.uid,
            extra: spec.extra,
            resource_attributes: Some(ResourceAttributes {
                group: Some(CERTIFICATES_GROUP.into()),
                resource: Some("certificatesigningrequests".into()),
                subresource: Some(subresource.into()),
                verb: Some("create".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn reconcile(csr: Arc<CertificateSigningRequest>, st: Arc<State>) -> Result<Action, ApproveError> {
    let name = csr.name_any();
    let span = info_span!("sync", controller = CONTROLLER, csr = %name);
    async move {
        let action = sync(&csr, &st, &name).await?;
        if action == Action::await_change() {
            st.backoff.succeeded(&name);
        }
        Ok(action)
    }
    .instrument(span)
    .await
}

async fn sync(csr: &CertificateSigningRequest, st: &State, name: &str) -> Result<Action, ApproveError> {
    if !undecided(csr) {
        return Ok(Action::await_change());
    }
    let signer = csr::signer_name(csr);
    if signer != csr::KUBE_APISERVER_CLIENT_KUBELET && signer != csr::KUBELET_SERVING {
        return Ok(Action::await_change());
    }
    let info = match csr::request_pem(csr).ok_or_else(|| "not text".to_string()).and_then(|pem| pki::parse_request(&pem).map_err(|e| e.to_string())) {
        Ok(info) => info,
        Err(e) => {
            debug!(error = %e, "the request does not parse; not approving it");
            return Ok(Action::await_change());
        }
    };
    let message = match recognize(csr, &info) {
        Recognized::Other => return Ok(Action::await_change()),
        Recognized::NodeClient { renewal } => {
            let mut allowed = None;
            let tries = if renewal { &[(SELF_NODE_CLIENT, SELF_NODE_CLIENT_MESSAGE), (NODE_CLIENT, NODE_CLIENT_MESSAGE)][..] } else { &[(NODE_CLIENT, NODE_CLIENT_MESSAGE)][..] };
            for (subresource, message) in tries {
                if st.reviews_allow(csr, subresource, name).await? {
                    allowed = Some(*message);
                    break;
                }
            }
            match allowed {
                Some(message) => message,
                None => {
                    let wait = st.backoff.failed(name);
                    info!(requester = csr.spec.username.as_deref().unwrap_or_default(), retry_in = ?wait,
                        "a node client certificate request, but the requester may not create certificatesigningrequests/nodeclient");
                    return Ok(Action::requeue(wait));
                }
            }
        }
        Recognized::KubeletServing { node } => {
            let nodes: Api<Node> = Api::all(st.client.clone());
            let found = nodes.get_opt(&node).await.map_err(|source| ApproveError::Node { name: name.to_string(), node: node.clone(), source })?;
            if let Err(why) = serving_sans_match(&info, &node, found.as_ref()) {
                // The node may not have reported its addresses yet.
                let wait = st.backoff.failed(name);
                info!(%why, retry_in = ?wait, "not approving the kubelet serving certificate request");
                return Ok(Action::requeue(wait));
            }
            KUBELET_SERVING_MESSAGE
        }
    };
    let mut approved = csr.clone();
    csr::add_condition(&mut approved, csr::APPROVED, AUTO_APPROVED, message);
    // The resourceVersion of what was checked goes with the update: a request denied
    // meanwhile conflicts instead of being approved.
    match st.api.replace_subresource("approval", name, &PostParams::default(), &approved).await {
        Ok(_) => {
            info!(signer, %message, "approved");
            Ok(Action::await_change())
        }
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(Action::await_change()),
        Err(source) => Err(ApproveError::Approve { name: name.to_string(), source }),
    }
}

impl State {
    async fn reviews_allow(&self, csr: &CertificateSigningRequest, subresource: &str, name: &str) -> Result<bool, ApproveError> {
        let reviews: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer = reviews
            .create(&PostParams::default(), &review(csr, subresource))
            .await
            .map_err(|source| ApproveError::Review { name: name.to_string(), source })?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::certificates::v1::CertificateSigningRequestSpec;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};
    use k8s_openapi::ByteString;

    const CLIENT: &[&str] = &[csr::DIGITAL_SIGNATURE, csr::KEY_ENCIPHERMENT, csr::CLIENT_AUTH];
    const SERVING: &[&str] = &[csr::DIGITAL_SIGNATURE, csr::KEY_ENCIPHERMENT, csr::SERVER_AUTH];

    fn request(signer: &str, (requester, groups): (&str, &[&str]), cn: &str, org: Option<&str>, dns: &[&str], ips: &[&str], usages: &[&str]) -> (CertificateSigningRequest, RequestInfo) {
        let dns: Vec<String> = dns.iter().map(|s| s.to_string()).collect();
        let ips: Vec<IpAddr> = ips.iter().map(|s| s.parse().expect("ip")).collect();
        let (pem, _) = pki::new_request(cn, org, &dns, &ips).expect("request");
        let info = pki::parse_request(&pem).expect("parse");
        let csr = CertificateSigningRequest {
            spec: CertificateSigningRequestSpec {
                signer_name: signer.into(),
                request: ByteString(pem.into_bytes()),
                usages: Some(usages.iter().map(|s| s.to_string()).collect()),
                username: Some(requester.into()),
                groups: Some(groups.iter().map(|s| s.to_string()).collect()),
                ..Default::default()
            },
            ..Default::default()
        };
        (csr, info)
    }

    const BOOTSTRAPPER: &str = "system:bootstrap:abcdef";
    const BOOTSTRAP_GROUPS: &[&str] = &["system:bootstrappers", "system:bootstrappers:rkube:default-node-token", "system:authenticated"];
    const NODE_GROUPS: &[&str] = &["system:nodes", "system:authenticated"];

    #[test]
    fn node_client_requests_are_recognized_and_renewals_told_apart() {
        let (c, i) = request(csr::KUBE_APISERVER_CLIENT_KUBELET, (BOOTSTRAPPER, BOOTSTRAP_GROUPS), "system:node:n1", Some("system:nodes"), &[], &[], CLIENT);
        assert_eq!(recognize(&c, &i), Recognized::NodeClient { renewal: false });
        let (c, i) = request(csr::KUBE_APISERVER_CLIENT_KUBELET, ("system:node:n1", NODE_GROUPS), "system:node:n1", Some("system:nodes"), &[], &[], CLIENT);
        assert_eq!(recognize(&c, &i), Recognized::NodeClient { renewal: true });
        // Another node's name from a node is still a node client request, checked
        // against nodeclient (not selfnodeclient), which nodes do not have.
        let (c, i) = request(csr::KUBE_APISERVER_CLIENT_KUBELET, ("system:node:n2", NODE_GROUPS), "system:node:n1", Some("system:nodes"), &[], &[], CLIENT);
        assert_eq!(recognize(&c, &i), Recognized::NodeClient { renewal: false });
    }

    #[test]
    fn anything_but_a_node_identity_is_not_recognized() {
        for (signer, cn, org, dns, usages) in [
            (csr::KUBE_APISERVER_CLIENT_KUBELET, "system:node:n1", Some("system:masters"), &[][..], CLIENT),
            (csr::KUBE_APISERVER_CLIENT_KUBELET, "admin", Some("system:nodes"), &[][..], CLIENT),
            (csr::KUBE_APISERVER_CLIENT_KUBELET, "system:node:n1", None, &[][..], CLIENT),
            (csr::KUBE_APISERVER_CLIENT_KUBELET, "system:node:n1", Some("system:nodes"), &["n1"][..], CLIENT),
            (csr::KUBE_APISERVER_CLIENT_KUBELET, "system:node:n1", Some("system:nodes"), &[][..], SERVING),
            (csr::KUBE_APISERVER_CLIENT, "system:node:n1", Some("system:nodes"), &[][..], CLIENT),
            ("example.com/any", "system:node:n1", Some("system:nodes"), &[][..], CLIENT),
        ] {
            let (c, i) = request(signer, (BOOTSTRAPPER, BOOTSTRAP_GROUPS), cn, org, dns, &[], usages);
            assert_eq!(recognize(&c, &i), Recognized::Other, "{signer} {cn} {org:?} {dns:?} {usages:?}");
        }
    }

    #[test]
    fn serving_requests_only_from_the_node_they_name() {
        let serving = |requester: &str, groups: &[&str], cn: &str| {
            request(csr::KUBELET_SERVING, (requester, groups), cn, Some("system:nodes"), &["n1"], &["10.0.0.1"], SERVING)
        };
        let (c, i) = serving("system:node:n1", NODE_GROUPS, "system:node:n1");
        assert_eq!(recognize(&c, &i), Recognized::KubeletServing { node: "n1".into() });
        for (requester, groups, cn) in [
            ("system:node:n2", NODE_GROUPS, "system:node:n1"),
            ("system:node:n1", &["system:authenticated"][..], "system:node:n1"),
            (BOOTSTRAPPER, BOOTSTRAP_GROUPS, "system:node:n1"),
            ("system:node:", NODE_GROUPS, "system:node:"),
        ] {
            let (c, i) = serving(requester, groups, cn);
            assert_eq!(recognize(&c, &i), Recognized::Other, "{requester} {groups:?} {cn}");
        }
        let (c, i) = request(csr::KUBELET_SERVING, ("system:node:n1", NODE_GROUPS), "system:node:n1", Some("system:nodes"), &["n1"], &[], CLIENT);
        assert_eq!(recognize(&c, &i), Recognized::Other, "client usages");
    }

    #[test]
    fn serving_sans_must_be_the_nodes_own() {
        let node = Node {
            status: Some(NodeStatus {
                addresses: Some(vec![
                    NodeAddress { type_: "InternalIP".into(), address: "10.0.0.1".into() },
                    NodeAddress { type_: "Hostname".into(), address: "host1".into() },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let info = |dns: &[&str], ips: &[&str]| RequestInfo {
            dns_names: dns.iter().map(|s| s.to_string()).collect(),
            ips: ips.iter().map(|s| s.parse().expect("ip")).collect(),
            ..Default::default()
        };
        assert_eq!(serving_sans_match(&info(&["n1", "host1"], &["10.0.0.1"]), "n1", Some(&node)), Ok(()));
        assert!(serving_sans_match(&info(&["n1"], &["10.0.0.2"]), "n1", Some(&node)).is_err());
        assert!(serving_sans_match(&info(&["kubernetes.default.svc"], &[]), "n1", Some(&node)).is_err());
        assert!(serving_sans_match(&info(&[], &["10.0.0.1"]), "n1", Some(&Node::default())).is_err(), "no addresses reported yet");
        // Not registered yet: the node's own request is trusted.
        assert_eq!(serving_sans_match(&info(&["n1"], &["10.9.9.9"]), "n1", None), Ok(()));
    }

    #[test]
    fn decided_requests_are_left_alone() {
        let (mut c, _) = request(csr::KUBE_APISERVER_CLIENT_KUBELET, (BOOTSTRAPPER, BOOTSTRAP_GROUPS), "system:node:n1", Some("system:nodes"), &[], &[], CLIENT);
        assert!(undecided(&c));
        let mut denied = c.clone();
        csr::add_condition(&mut denied, csr::DENIED, "AdminDenied", "no");
        assert!(!undecided(&denied));
        let mut failed = c.clone();
        csr::add_condition(&mut failed, csr::FAILED, "SignerValidationFailure", "no");
        assert!(!undecided(&failed));
        csr::add_condition(&mut c, csr::APPROVED, AUTO_APPROVED, NODE_CLIENT_MESSAGE);
        assert!(!undecided(&c));
    }

    #[test]
    fn the_review_asks_about_the_requester() {
        let (mut c, _) = request(csr::KUBE_APISERVER_CLIENT_KUBELET, (BOOTSTRAPPER, BOOTSTRAP_GROUPS), "system:node:n1", Some("system:nodes"), &[], &[], CLIENT);
        c.spec.uid = Some("u-1".into());
        c.spec.extra = Some([("k".to_string(), vec!["v".to_string()])].into());
        let r = review(&c, NODE_CLIENT);
        assert_eq!(r.spec.user.as_deref(), Some(BOOTSTRAPPER));
        assert_eq!(r.spec.groups.as_deref().map(<[String]>::len), Some(3));
        assert_eq!(r.spec.uid.as_deref(), Some("u-1"));
        assert!(r.spec.extra.is_some());
        let attrs = r.spec.resource_attributes.expect("attributes");
        assert_eq!(
            (attrs.group.as_deref(), attrs.resource.as_deref(), attrs.subresource.as_deref(), attrs.verb.as_deref()),
            (Some("certificates.k8s.io"), Some("certificatesigningrequests"), Some("nodeclient"), Some("create"))
        );
    }
}
