//! The CSR signing controller (Kubernetes' `csrsigning`): signs approved
//! CertificateSigningRequests of the built-in signers `kubernetes.io/kube-apiserver-client`,
//! `kubernetes.io/kube-apiserver-client-kubelet` and `kubernetes.io/kubelet-serving` with
//! the cluster CA (`--cluster-signing-cert-file`, `--cluster-signing-key-file`) and writes
//! the certificate to `status.certificate` through the `status` subresource. A request
//! that breaks its signer's constraints (see [`super::csr`]) gets a `Failed` condition
//! with reason `SignerValidationFailure` instead. Requests that are not approved, are
//! denied or failed, already have a certificate, or name another signer are left alone.
//! Without both files the controller does not run.

use std::sync::Arc;
use std::time::Duration;

use component_base::pki::{self, CertificateAuthority, PkiError, Usage};
use futures::future::BoxFuture;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use super::csr::{self, Backoff};
use super::{Context, ControllerError};

const CONTROLLER: &str = "csrsigning";
/// The reason of the Failed condition for a request its signer refuses (Kubernetes').
pub const SIGNER_VALIDATION_FAILURE: &str = "SignerValidationFailure";
/// The shortest certificate a request may ask for (`spec.expirationSeconds`, as
/// Kubernetes: 10 minutes).
pub const MIN_EXPIRATION: Duration = Duration::from_secs(600);
/// `--cluster-signing-duration`'s default: one year.
pub const DEFAULT_SIGNING_DURATION: Duration = Duration::from_secs(8760 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("signing {name} failed")]
    Sign { name: String, #[source] source: PkiError },
    #[error("writing the status of {name} failed")]
    Update { name: String, #[source] source: kube::Error },
}

struct State {
    api: Api<CertificateSigningRequest>,
    ca: CertificateAuthority,
    max_duration: Duration,
    backoff: Backoff,
}

/// Starts the signer, unless the signing CA's files are not configured.
pub fn start(ctx: Context, shutdown: CancellationToken) -> BoxFuture<'static, Result<(), ControllerError>> {
    Box::pin(async move {
        let (cert, key) = match (&ctx.config.cluster_signing_cert_file, &ctx.config.cluster_signing_key_file) {
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
            (None, None) => {
                info!(controller = CONTROLLER, "not starting: no --cluster-signing-cert-file and --cluster-signing-key-file given");
                return Ok(());
            }
            _ => {
                return Err(ControllerError::Config(
                    "--cluster-signing-cert-file and --cluster-signing-key-file must be given together".into(),
                ))
            }
        };
        let ca = CertificateAuthority::load(&cert, &key).map_err(|e| ControllerError::Config(format!("the cluster signing CA: {e}")))?;
        let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
        let state = Arc::new(State { api: api.clone(), ca, max_duration: ctx.config.cluster_signing_duration, backoff: Backoff::default() });
        let shutdown_signal = shutdown.clone();
        let applier = Controller::new(api, watcher::Config::default())
            .graceful_shutdown_on(async move { shutdown_signal.cancelled().await })
            .run(reconcile, error_policy, state);
        super::drive(CONTROLLER, applier, &shutdown).await
    })
}

fn error_policy(csr: Arc<CertificateSigningRequest>, err: &SignError, st: Arc<State>) -> Action {
    let name = csr.name_any();
    let wait = st.backoff.failed(&name);
    warn!(controller = CONTROLLER, csr = %name, error = %err, retry_in = ?wait, "sync failed");
    Action::requeue(wait)
}

/// How long the certificate for a request is valid: what it asks for
/// (`spec.expirationSeconds`, at least [`MIN_EXPIRATION`]) but at most `max`
/// (`--cluster-signing-duration`).
pub fn lifetime(expiration_seconds: Option<i32>, max: Duration) -> Duration {
    match expiration_seconds {
        Some(s) => Duration::from_secs(u64::try_from(s).unwrap_or(0)).max(MIN_EXPIRATION).min(max),
        None => max,
    }
}

/// What the signer does with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not for this controller, or not (or no longer) to be signed.
    Skip,
    /// Mark it Failed with this message.
    Fail(String),
    /// Sign its request, for `usage`, valid for `lifetime`.
    Sign { pem: String, usage: Usage, lifetime: Duration },
}

/// The signer's decision for a request, from the request alone.
pub fn decide(csr: &CertificateSigningRequest, max_duration: Duration) -> Decision {
    if !csr::is_approved(csr) || csr::is_failed(csr) || csr::has_certificate(csr) {
        return Decision::Skip;
    }
    let signer = csr::signer_name(csr);
    if !csr::is_built_in_signer(signer) {
        return Decision::Skip;
    }
    let Some(pem) = csr::request_pem(csr) else {
        return Decision::Fail("spec.request is not a PEM certificate request".into());
    };
    let info = match pki::parse_request(&pem) {
        Ok(info) => info,
        Err(e) => return Decision::Fail(e.to_string()),
    };
    match csr::check_signer(signer, &info, &csr::usages(csr)) {
        None => Decision::Skip,
        Some(Err(message)) => Decision::Fail(message),
        Some(Ok(usage)) => {
            let expiration = csr.spec.expiration_seconds;
            Decision::Sign { pem, usage, lifetime: lifetime(expiration, max_duration) }
        }
    }
}

async fn reconcile(csr: Arc<CertificateSigningRequest>, st: Arc<State>) -> Result<Action, SignError> {
    let name = csr.name_any();
    let span = info_span!("sync", controller = CONTROLLER, csr = %name);
    async move {
        let action = sync(&csr, &st, &name).await?;
        st.backoff.succeeded(&name);
        Ok(action)
    }
    .instrument(span)
    .await
}

async fn sync(csr: &CertificateSigningRequest, st: &State, name: &str) -> Result<Action, SignError> {
    let mut updated = csr.clone();
    match decide(csr, st.max_duration) {
        Decision::Skip => return Ok(Action::await_change()),
        Decision::Fail(message) => {
            warn!(%message, "the request breaks its signer's constraints");
            csr::add_condition(&mut updated, csr::FAILED, SIGNER_VALIDATION_FAILURE, &message);
        }
        Decision::Sign { pem, usage, lifetime } => match st.ca.sign_request(&pem, usage, lifetime) {
            Ok(cert) => {
                info!(signer = csr::signer_name(csr), ?lifetime, "signed the certificate");
                updated.status.get_or_insert_with(Default::default).certificate = Some(ByteString(cert.into_bytes()));
            }
            // Something in the request the CA cannot put in a certificate: retrying will
            // not change that.
            Err(PkiError::InvalidRequest(message)) => {
                warn!(%message, "the request cannot be signed");
                csr::add_condition(&mut updated, csr::FAILED, SIGNER_VALIDATION_FAILURE, &message);
            }
            Err(source) => return Err(SignError::Sign { name: name.to_string(), source }),
        },
    }
    // The update carries the resourceVersion the decision was made on: if the request
    // changed meanwhile (denied, say), the write conflicts and the watch brings the new
    // version back here.
    match st.api.replace_subresource("status", name, &PostParams::default(), &updated).await {
        Ok(_) => Ok(Action::await_change()),
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(Action::await_change()),
        Err(source) => Err(SignError::Update { name: name.to_string(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::certificates::v1::CertificateSigningRequestSpec;

    fn csr(signer: &str, pem: &str, usages: &[&str], expiration: Option<i32>) -> CertificateSigningRequest {
        CertificateSigningRequest {
            spec: CertificateSigningRequestSpec {
                signer_name: signer.into(),
                request: ByteString(pem.as_bytes().to_vec()),
                usages: Some(usages.iter().map(|s| s.to_string()).collect()),
                expiration_seconds: expiration,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn approved(mut c: CertificateSigningRequest) -> CertificateSigningRequest {
        csr::add_condition(&mut c, csr::APPROVED, "AutoApproved", "test");
        c
    }

    const CLIENT: &[&str] = &[csr::DIGITAL_SIGNATURE, csr::KEY_ENCIPHERMENT, csr::CLIENT_AUTH];

    #[test]
    fn lifetimes_are_clamped() {
        let year = DEFAULT_SIGNING_DURATION;
        assert_eq!(lifetime(None, year), year);
        assert_eq!(lifetime(Some(3600), year), Duration::from_secs(3600));
        assert_eq!(lifetime(Some(10), year), MIN_EXPIRATION);
        assert_eq!(lifetime(Some(-5), year), MIN_EXPIRATION);
        assert_eq!(lifetime(Some(i32::MAX), year), year);
        assert_eq!(lifetime(Some(7200), Duration::from_secs(3600)), Duration::from_secs(3600));
    }

    #[test]
    fn only_approved_requests_of_built_in_signers_are_signed() {
        let (pem, _) = pki::new_request("system:node:n1", Some(csr::NODES_GROUP), &[], &[]).expect("request");
        let kubelet = csr(csr::KUBE_APISERVER_CLIENT_KUBELET, &pem, CLIENT, Some(3600));
        assert_eq!(decide(&kubelet, DEFAULT_SIGNING_DURATION), Decision::Skip, "not approved yet");
        let ok = approved(kubelet.clone());
        assert_eq!(
            decide(&ok, DEFAULT_SIGNING_DURATION),
            Decision::Sign { pem: pem.clone(), usage: Usage::Client, lifetime: Duration::from_secs(3600) }
        );
        let mut denied = ok.clone();
        csr::add_condition(&mut denied, csr::DENIED, "AdminDenied", "no");
        assert_eq!(decide(&denied, DEFAULT_SIGNING_DURATION), Decision::Skip);
        let mut failed = ok.clone();
        csr::add_condition(&mut failed, csr::FAILED, SIGNER_VALIDATION_FAILURE, "no");
        assert_eq!(decide(&failed, DEFAULT_SIGNING_DURATION), Decision::Skip);
        let mut signed = ok.clone();
        signed.status.get_or_insert_with(Default::default).certificate = Some(ByteString(b"cert".to_vec()));
        assert_eq!(decide(&signed, DEFAULT_SIGNING_DURATION), Decision::Skip);
        let other = approved(csr("example.com/signer", &pem, CLIENT, None));
        assert_eq!(decide(&other, DEFAULT_SIGNING_DURATION), Decision::Skip);
    }

    #[test]
    fn constraint_violations_fail_the_request() {
        let (masters, _) = pki::new_request("system:node:n1", Some("system:masters"), &[], &[]).expect("request");
        let bad = approved(csr(csr::KUBE_APISERVER_CLIENT_KUBELET, &masters, CLIENT, None));
        assert!(matches!(decide(&bad, DEFAULT_SIGNING_DURATION), Decision::Fail(m) if m.contains("organization")));
        let (serving, _) = pki::new_request("system:node:n1", Some(csr::NODES_GROUP), &["n1".into()], &[]).expect("request");
        let wrong_usage = approved(csr(csr::KUBELET_SERVING, &serving, CLIENT, None));
        assert!(matches!(decide(&wrong_usage, DEFAULT_SIGNING_DURATION), Decision::Fail(_)));
        let right = approved(csr(csr::KUBELET_SERVING, &serving, &[csr::SERVER_AUTH], None));
        assert!(matches!(decide(&right, DEFAULT_SIGNING_DURATION), Decision::Sign { usage: Usage::Server, .. }));
        let garbage = approved(csr(csr::KUBE_APISERVER_CLIENT, "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", CLIENT, None));
        assert!(matches!(decide(&garbage, DEFAULT_SIGNING_DURATION), Decision::Fail(_)));
    }
}
