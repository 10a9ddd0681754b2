//! Joining a node to a cluster, as kubeadm and k3s do it, from one token.
//!
//! The server keeps a join token at `DIR/server/token`:
//! `K10<sha256 of the cluster CA's public key, hex>::<id>.<secret>`. The part after `::`
//! is a Kubernetes bootstrap token (a Secret `bootstrap-token-<id>` in kube-system); the
//! hash pins the CA. An agent:
//!
//! 1. opens TLS to the server without trusting anything yet, takes the CA the server
//!    presents in its chain, and goes on only if its public key has the token's hash
//!    (so the bootstrap token is never sent to an impostor);
//! 2. with the bootstrap token (group `system:bootstrappers`), asks for a kubelet client
//!    certificate with a CertificateSigningRequest (signer
//!    `kubernetes.io/kube-apiserver-client-kubelet`), which the controller-manager's
//!    `csrapproving` approves and `csrsigning` signs;
//! 3. as the node, asks for its kubelet serving certificate the same way (signer
//!    `kubernetes.io/kubelet-serving`).

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::api::{Api, PostParams};
use rand::Rng as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::prelude::FromDer as _;

/// The groups a join token's user is in besides `system:bootstrappers`, as kubeadm
/// names its default node token's.
pub const TOKEN_GROUP: &str = "system:bootstrappers:rkube:default-node-token";

/// How long an agent waits for its certificate to be approved and signed.
const CSR_TIMEOUT: Duration = Duration::from_secs(300);

/// A join token: the CA's public-key hash and a bootstrap token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the CA certificate's SubjectPublicKeyInfo, lower-case hex.
    pub ca_hash: String,
    pub id: String,
    pub secret: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken").field("ca_hash", &self.ca_hash).field("id", &self.id).finish_non_exhaustive()
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "K10{}::{}.{}", self.ca_hash, self.id, self.secret)
    }
}

fn is_token_part(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl std::str::FromStr for JoinToken {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<JoinToken> {
        let s = s.trim();
        let Some((head, bootstrap)) = s.strip_prefix("K10").and_then(|rest| rest.split_once("::")) else {
            bail!("a join token has the form K10<ca-hash>::<id>.<secret> (the server prints it and keeps it in DATA_DIR/server/token)");
        };
        ensure!(head.len() == 64 && head.bytes().all(|b| b.is_ascii_hexdigit()), "the join token's CA hash must be 64 hex digits");
        let (id, secret) = bootstrap.split_once('.').context("the join token's bootstrap part must be <id>.<secret>")?;
        ensure!(is_token_part(id, 6) && is_token_part(secret, 16), "the join token's bootstrap part must be 6 and 16 characters of [a-z0-9], joined by a dot");
        Ok(JoinToken { ca_hash: head.to_ascii_lowercase(), id: id.into(), secret: secret.into() })
    }
}

impl JoinToken {
    /// A fresh token for the CA `ca_der`.
    pub fn generate(ca_der: &[u8]) -> anyhow::Result<JoinToken> {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::rng();
        let mut pick = |n: usize| -> String { (0..n).map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())])).collect() };
        Ok(JoinToken { ca_hash: ca_hash(ca_der)?, id: pick(6), secret: pick(16) })
    }

    /// The bearer token (`<id>.<secret>`).
    pub fn bearer(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    /// The bootstrap token Secret that makes the bearer token authenticate.
    pub fn secret_object(&self) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": format!("bootstrap-token-{}", self.id), "namespace": "kube-system"},
            "type": "bootstrap.kubernetes.io/token",
            "stringData": {
                "description": "The rkube server's node join token.",
                "token-id": self.id,
                "token-secret": self.secret,
                "usage-bootstrap-authentication": "true",
                "auth-extra-groups": TOKEN_GROUP,
            },
        })
    }
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo, hex (what kubeadm's
/// `--discovery-token-ca-cert-hash sha256:…` holds).
pub fn ca_hash(der: &[u8]) -> anyhow::Result<String> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).map_err(|e| anyhow::anyhow!("not a certificate: {e}"))?;
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.tbs_certificate.subject_pki.raw);
    Ok(digest.as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

/// Remembers the chain the server presents and accepts it: only for [`discover_ca`],
/// which then checks the chain against the token's hash itself. The handshake's
/// signature is still verified, so the server holds the key of the certificate it shows.
#[derive(Debug)]
struct RecordChain {
    chain: Mutex<Vec<Vec<u8>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for RecordChain {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = self.chain.lock().unwrap_or_else(|e| e.into_inner());
        *chain = std::iter::once(end_entity).chain(intermediates).map(|c| c.as_ref().to_vec()).collect();
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &rustls::DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &rustls::DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The cluster CA (PEM) of the apiserver at `server` (`https://host:port`), taken from
/// its TLS handshake and accepted only if its public key hashes to `ca_hash`.
pub async fn discover_ca(server: &str, ca_hash_hex: &str) -> anyhow::Result<String> {
    let url: http::Uri = server.parse().with_context(|| format!("--server {server}: not a URL"))?;
    ensure!(url.scheme_str() == Some("https"), "--server {server}: must be an https:// URL");
    let host = url.host().with_context(|| format!("--server {server}: no host"))?.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = url.port_u16().unwrap_or(6443);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let recorder = Arc::new(RecordChain { chain: Mutex::new(Vec::new()), provider: provider.clone() });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(host.clone()).with_context(|| format!("--server {server}: {host} is not a host name or address"))?;
    let tcp = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect((host.as_str(), port)))
        .await
        .with_context(|| format!("connecting to {host}:{port} timed out"))?
        .with_context(|| format!("connecting to {host}:{port}"))?;
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .with_context(|| format!("the TLS handshake with {host}:{port} timed out"))?
        .with_context(|| format!("the TLS handshake with {host}:{port} failed"))?;
    let chain = recorder.chain.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for der in &chain {
        if ca_hash(der).is_ok_and(|h| h.eq_ignore_ascii_case(ca_hash_hex)) {
            return Ok(component_base::pki::pem_encode("CERTIFICATE", der));
        }
    }
    bail!(
        "{server} did not present a CA whose public key matches the join token ({} certificates in its chain): \
         is this the right server, and the token from its DATA_DIR/server/token?",
        chain.len()
    )
}

/// The key usages rkube asks for: ECDSA keys sign, they do not encipher.
fn usages(server: bool) -> Vec<String> {
    let auth = if server { "server auth" } else { "client auth" };
    vec!["digital signature".into(), auth.into()]
}

/// Asks for a certificate with a CSR and waits for it to be signed: a new key, the
/// request, and the certificate (PEM) once the signer has written it.
pub async fn request_certificate(
    client: kube::Client,
    common_name: &str,
    organization: Option<&str>,
    dns: &[String],
    ips: &[IpAddr],
    signer: &str,
) -> anyhow::Result<component_base::pki::CertPair> {
    let (request_pem, key_pem) = component_base::pki::new_request(common_name, organization, dns, ips).context("making a certificate request")?;
    let server = signer == apiserver::auth::policy::SIGNER_KUBELET_SERVING;
    let csr: CertificateSigningRequest = serde_json::from_value(serde_json::json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"generateName": if server { "csr-" } else { "node-csr-" }},
        "spec": {
            "request": base64_encode(request_pem.as_bytes()),
            "signerName": signer,
            "usages": usages(server),
        },
    }))?;
    let csrs: Api<CertificateSigningRequest> = Api::all(client);
    let created = csrs.create(&PostParams::default(), &csr).await.with_context(|| format!("creating a CertificateSigningRequest for {common_name}"))?;
    let name = created.metadata.name.clone().unwrap_or_default();
    tracing::info!(csr = %name, signer, "asked for a certificate for {common_name}");
    let started = Instant::now();
    let mut told = false;
    loop {
        let csr = csrs.get(&name).await.with_context(|| format!("reading CertificateSigningRequest {name}"))?;
        let status = csr.status.unwrap_or_default();
        for c in status.conditions.iter().flatten() {
            if matches!(c.type_.as_str(), "Denied" | "Failed") && c.status == "True" {
                bail!("CertificateSigningRequest {name} was {}: {}", c.type_.to_lowercase(), c.message.clone().unwrap_or_default());
            }
        }
        if let Some(cert) = status.certificate.filter(|c| !c.0.is_empty()) {
            let cert_pem = String::from_utf8(cert.0).context("the issued certificate is not PEM text")?;
            return Ok(component_base::pki::CertPair { cert_pem, key_pem });
        }
        if !told && started.elapsed() > Duration::from_secs(10) {
            told = true;
            tracing::warn!(csr = %name, "still waiting for the certificate; approve it on the server with: kubectl certificate approve {name}");
        }
        if started.elapsed() > CSR_TIMEOUT {
            bail!("CertificateSigningRequest {name} was not signed within {}s (is the controller-manager running with --cluster-signing-cert-file?)", CSR_TIMEOUT.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Whether the certificate (PEM) at `path` is usable for a while yet: it parses, more
/// than a fifth of its validity is left (renewed at 80%, as the kubelet renews), and
/// `check` accepts it.
pub fn still_good(path: &Path, check: impl Fn(&x509_parser::certificate::X509Certificate<'_>) -> bool) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else { return false };
    let Some(der) = component_base::pki::pem_certificates(&text).into_iter().next() else { return false };
    let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(&der) else { return false };
    let validity = cert.validity();
    let (from, to) = (validity.not_before.timestamp(), validity.not_after.timestamp());
    let now = chrono::Utc::now().timestamp();
    now < to && (to - now) * 5 > (to - from) && check(&cert)
}

/// The IP addresses a certificate names.
pub fn certificate_ips(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<IpAddr> {
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::IPAddress(bytes) = name {
                match bytes.len() {
                    4 => out.push(IpAddr::from(<[u8; 4]>::try_from(*bytes).unwrap_or_default())),
                    16 => out.push(IpAddr::from(<[u8; 16]>::try_from(*bytes).unwrap_or_default())),
                    _ => {}
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_bad_ones_say_why() {
        let ca = component_base::pki::CertificateAuthority::generate("test-ca").expect("ca");
        let der = component_base::pki::pem_certificates(ca.cert_pem()).remove(0);
        let token = JoinToken::generate(&der).expect("token");
        let text = token.to_string();
        assert!(text.starts_with("K10") && text.contains("::"), "{text}");
        assert_eq!(text.parse::<JoinToken>().expect("parses"), token);
        assert_eq!(token.ca_hash, ca_hash(&der).expect("hash"));
        assert_eq!(token.ca_hash.len(), 64);
        for bad in ["abcdef.0123456789abcdef", "K10abc::abcdef.0123456789abcdef", &format!("K10{}::ABCDEF.0123456789abcdef", token.ca_hash), &format!("K10{}::abcdef", token.ca_hash)] {
            assert!(bad.parse::<JoinToken>().is_err(), "{bad} parsed");
        }
        // The Debug form never shows the secret.
        assert!(!format!("{token:?}").contains(&token.secret));
    }
}
