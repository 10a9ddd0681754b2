//! rustls configurations for the cluster's TLS endpoints: the apiserver (client
//! certificates optional, since tokens authenticate too), the kubelet API (client
//! certificates required) and the clients that talk to them with the cluster CA as the
//! only trust root. One crypto provider (ring) for all of them.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::pki::{pem_blocks, pem_certificates, CertPair};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the certificate has no PEM certificate in it")]
    NoCertificate,
    #[error("the key is not a PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey,
    #[error("the CA bundle is unusable: {0}")]
    Roots(String),
    #[error("the TLS configuration is refused: {0}")]
    Config(#[from] rustls::Error),
}

/// Whether a server asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Verified if presented; a connection without one goes on (to token or anonymous
    /// authentication).
    Optional,
    /// A connection without a certificate signed by one of the CAs is refused.
    Required,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn chain_and_key(pair: &CertPair) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain: Vec<CertificateDer<'static>> = pem_certificates(&pair.cert_pem).into_iter().map(CertificateDer::from).collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let key = pem_blocks(&pair.key_pem, "PRIVATE KEY").into_iter().next().ok_or(TlsError::NoKey)?;
    Ok((chain, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key))))
}

fn roots(cas: &[Vec<u8>]) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for der in cas {
        roots.add(CertificateDer::from(der.clone())).map_err(|e| TlsError::Roots(e.to_string()))?;
    }
    Ok(roots)
}

/// A server configuration for `serving`, checking client certificates against
/// `client_cas` (DER), with ALPN for `alpn` (e.g. `h2`, `http/1.1`).
pub fn server_config(serving: &CertPair, client_cas: &[Vec<u8>], client_auth: ClientAuth, alpn: &[&str]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (chain, key) = chain_and_key(serving)?;
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(client_cas)?), provider());
    let verifier = match client_auth {
        ClientAuth::Optional => builder.allow_unauthenticated().build(),
        ClientAuth::Required => builder.build(),
    }
    .map_err(|e| TlsError::Roots(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}

/// A certificate chain and its key, as a server presents them for one name: PEM
/// certificates, and a PKCS#8, PKCS#1 (`RSA PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`)
/// key, as `kubectl create secret tls` takes them from openssl or cert-manager.
pub fn certified_key(cert_pem: &str, key_pem: &str) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
    use rustls::pki_types::{PrivatePkcs1KeyDer, PrivateSec1KeyDer};
    let chain: Vec<CertificateDer<'static>> = pem_certificates(cert_pem).into_iter().map(CertificateDer::from).collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let key = if let Some(der) = pem_blocks(key_pem, "PRIVATE KEY").into_iter().next() {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der))
    } else if let Some(der) = pem_blocks(key_pem, "RSA PRIVATE KEY").into_iter().next() {
        PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der))
    } else if let Some(der) = pem_blocks(key_pem, "EC PRIVATE KEY").into_iter().next() {
        PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der))
    } else {
        return Err(TlsError::NoKey);
    };
    let signing = provider().key_provider.load_private_key(key)?;
    let certified = rustls::sign::CertifiedKey::new(chain, signing);
    // A key that does not belong to the certificate would fail every handshake.
    certified.keys_match()?;
    Ok(Arc::new(certified))
}

/// A server configuration whose certificate `resolver` picks per connection (by the
/// name the client asks for), with ALPN for `alpn`.
pub fn server_config_with_resolver(resolver: Arc<dyn rustls::server::ResolvesServerCert>, alpn: &[&str]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}

/// A client configuration trusting only `cas` (DER), presenting `client` if given.
pub fn client_config(cas: &[Vec<u8>], client: Option<&CertPair>, alpn: &[&str]) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?.with_root_certificates(roots(cas)?);
    let mut config = match client {
        Some(pair) => {
            let (chain, key) = chain_and_key(pair)?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}
