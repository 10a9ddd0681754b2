//! The cluster's certificates: one CA per cluster (kept under a directory as `ca.crt` and
//! `ca.key`, as kubeadm keeps `/etc/kubernetes/pki`), serving certificates for the
//! apiserver and kubelets, client certificates whose subject says who a component is
//! (CN = user, O = groups, as Kubernetes' x509 authenticator reads them), and kubeconfig
//! files that carry all of it inline so one file is all a client needs.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// How long the CA is valid (kubeadm: 10 years).
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long the leaf certificates this module issues are valid (kubeadm: 1 year).
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Certificates start being valid a little in the past, so a peer whose clock is slightly
/// behind does not refuse a certificate issued a second ago.
const BACKDATE: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("reading {path}")]
    Read { path: PathBuf, #[source] source: std::io::Error },
    #[error("writing {path}")]
    Write { path: PathBuf, #[source] source: std::io::Error },
    #[error("{path} is not a usable PEM private key: {source}")]
    ParseKey { path: PathBuf, #[source] source: rcgen::Error },
    #[error("{path} is not a usable PEM CA certificate: {source}")]
    ParseCert { path: PathBuf, #[source] source: rcgen::Error },
    #[error("{path}: no PEM certificate in it")]
    NoCertificate { path: PathBuf },
    #[error("generating a key pair failed")]
    GenerateKey(#[source] rcgen::Error),
    #[error("issuing the certificate for {subject} failed")]
    Issue { subject: String, #[source] source: rcgen::Error },
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertPair").field("cert_pem", &self.cert_pem).field("key_pem", &"<redacted>").finish()
    }
}

impl CertPair {
    /// Writes `DIR/NAME.crt` and `DIR/NAME.key` (the key private to its owner).
    pub fn write(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), PkiError> {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        write_file(&cert, self.cert_pem.as_bytes(), 0o644)?;
        write_file(&key, self.key_pem.as_bytes(), 0o600)?;
        Ok((cert, key))
    }

    /// Reads `DIR/NAME.crt` and `DIR/NAME.key` if both exist.
    pub fn read(dir: &Path, name: &str) -> Result<Option<CertPair>, PkiError> {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        if !cert.exists() || !key.exists() {
            return Ok(None);
        }
        Ok(Some(CertPair { cert_pem: read_file(&cert)?, key_pem: read_file(&key)? }))
    }
}

/// A certificate authority that can issue certificates.
pub struct CertificateAuthority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
    /// Both (a kubelet serves its API and may be a client too).
    ServerAndClient,
}

impl CertificateAuthority {
    /// Loads `DIR/ca.crt` and `DIR/ca.key`, creating a new CA named `common_name` there
    /// first if neither exists. One of the two without the other is an error rather than
    /// a silent replacement: certificates signed by the old CA would stop working.
    pub fn load_or_create(dir: &Path, common_name: &str) -> Result<CertificateAuthority, PkiError> {
        let cert = dir.join("ca.crt");
        let key = dir.join("ca.key");
        match (cert.exists(), key.exists()) {
            (true, true) => CertificateAuthority::load(&cert, &key),
            (false, false) => {
                let ca = CertificateAuthority::generate(common_name)?;
                write_file(&key, ca.issuer.key().serialize_pem().as_bytes(), 0o600)?;
                write_file(&cert, ca.cert_pem.as_bytes(), 0o644)?;
                Ok(ca)
            }
            (true, false) => Err(PkiError::Read { path: key, source: std::io::Error::from(std::io::ErrorKind::NotFound) }),
            (false, true) => Err(PkiError::Read { path: cert, source: std::io::Error::from(std::io::ErrorKind::NotFound) }),
        }
    }

    /// Loads a CA from its PEM certificate and key files.
    pub fn load(cert: &Path, key: &Path) -> Result<CertificateAuthority, PkiError> {
        let cert_pem = read_file(cert)?;
        let key_pem = read_file(key)?;
        let key_pair = KeyPair::from_pem(&key_pem).map_err(|source| PkiError::ParseKey { path: key.to_path_buf(), source })?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key_pair).map_err(|source| PkiError::ParseCert { path: cert.to_path_buf(), source })?;
        Ok(CertificateAuthority { cert_pem, issuer })
    }

    /// A new self-signed CA (ECDSA P-256).
    pub fn generate(common_name: &str) -> Result<CertificateAuthority, PkiError> {
        let key = KeyPair::generate().map_err(PkiError::GenerateKey)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        validity(&mut params, CA_VALIDITY);
        let cert = params.self_signed(&key).map_err(|source| PkiError::Issue { subject: common_name.to_string(), source })?;
        let cert_pem = cert.pem();
        Ok(CertificateAuthority { cert_pem, issuer: Issuer::new(params, key) })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a certificate with a new key: subject CN `common_name` and O `organization`
    /// (the user's group), the given DNS and IP SANs, for `usage`, valid for
    /// `LEAF_VALIDITY`. (rcgen writes at most one attribute of a type into a subject, so
    /// certificates issued here carry one group; the authenticator reads every O of a
    /// certificate issued elsewhere.)
    pub fn issue(&self, common_name: &str, organization: Option<&str>, dns_names: &[String], ips: &[IpAddr], usage: Usage) -> Result<CertPair, PkiError> {
        let issue_err = |source| PkiError::Issue { subject: common_name.to_string(), source };
        let key = KeyPair::generate().map_err(PkiError::GenerateKey)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, common_name);
        if let Some(o) = organization {
            params.distinguished_name.push(DnType::OrganizationName, o);
        }
        let mut sans = Vec::new();
        for name in dns_names {
            sans.push(SanType::DnsName(name.clone().try_into().map_err(issue_err)?));
        }
        sans.extend(ips.iter().copied().map(SanType::IpAddress));
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = match usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::ServerAndClient => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, LEAF_VALIDITY);
        let cert = params.signed_by(&key, &self.issuer).map_err(issue_err)?;
        Ok(CertPair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// A client certificate for `user` in `group`.
    pub fn issue_client(&self, user: &str, group: Option<&str>) -> Result<CertPair, PkiError> {
        self.issue(user, group, &[], &[], Usage::Client)
    }
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + lifetime;
}

/// A kubeconfig for `server` that trusts `ca_pem` and authenticates with `client`, all
/// inline (`certificate-authority-data`, `client-certificate-data`, `client-key-data`).
pub fn kubeconfig(server: &str, cluster: &str, user: &str, ca_pem: &str, client: &CertPair) -> String {
    let credentials = format!("\n    client-certificate-data: {}\n    client-key-data: {}", b64(&client.cert_pem), b64(&client.key_pem));
    kubeconfig_text(server, cluster, user, Some(ca_pem), &credentials)
}

/// A kubeconfig for `server` that trusts `ca_pem` and authenticates with a bearer token.
pub fn token_kubeconfig(server: &str, cluster: &str, user: &str, ca_pem: &str, token: &str) -> String {
    kubeconfig_text(server, cluster, user, Some(ca_pem), &format!("\n    token: {token}"))
}

/// A kubeconfig with no credentials at all (a plain-HTTP server that checks nothing).
pub fn anonymous_kubeconfig(server: &str, cluster: &str, user: &str) -> String {
    kubeconfig_text(server, cluster, user, None, " {}")
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

/// One cluster, one user, one context named after the cluster (namespace `default`);
/// `user_body` follows `user:` verbatim.
fn kubeconfig_text(server: &str, cluster: &str, user: &str, ca_pem: Option<&str>, user_body: &str) -> String {
    let ca = ca_pem.map(|pem| format!("    certificate-authority-data: {}\n", b64(pem))).unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n{ca}    server: {server}\n  name: {cluster}\ncontexts:\n- context:\n    cluster: {cluster}\n    user: {user}\n    namespace: default\n  name: {cluster}\ncurrent-context: {cluster}\npreferences: {{}}\nusers:\n- name: {user}\n  user:{user_body}\n"
    )
}

/// Writes `text` to `path` atomically (a temporary file renamed over it) with `mode`,
/// creating the parent directory.
pub fn write_file(path: &Path, text: &[u8], mode: u32) -> Result<(), PkiError> {
    let err = |source| PkiError::Write { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp).map_err(err)?;
        f.write_all(text).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)
}

fn read_file(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Read { path: path.to_path_buf(), source })
}

/// The subject of a DER certificate as Kubernetes' x509 authenticator reads it: the
/// common name (the user) and the organizations (the groups). `None` if it does not parse.
pub fn subject_of(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let cn = subject.iter_common_name().next()?.as_str().ok()?.to_string();
    let orgs = subject.iter_organization().filter_map(|o| o.as_str().ok().map(str::to_string)).collect();
    Some((cn, orgs))
}

/// The DER bytes of every PEM block labelled `label` (`CERTIFICATE`, `PRIVATE KEY`).
pub fn pem_blocks(pem_text: &str, label: &str) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem_text.as_bytes()).flatten().filter(|b| b.label == label).map(|b| b.contents).collect()
}

/// The DER bytes of every certificate in a PEM text.
pub fn pem_certificates(pem_text: &str) -> Vec<Vec<u8>> {
    pem_blocks(pem_text, "CERTIFICATE")
}

/// PEM text of one DER block.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Reads the certificates of a PEM file (a CA bundle).
pub fn read_certificates(path: &Path) -> Result<Vec<Vec<u8>>, PkiError> {
    let certs = pem_certificates(&read_file(path)?);
    if certs.is_empty() {
        return Err(PkiError::NoCertificate { path: path.to_path_buf() });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_certificate_names_its_user_and_groups() {
        let ca = CertificateAuthority::generate("rkube-ca").expect("ca");
        let pair = ca.issue_client("jane", Some("dev")).expect("issue");
        let der = pem_certificates(&pair.cert_pem);
        assert_eq!(der.len(), 1);
        let (cn, groups) = subject_of(&der[0]).expect("subject");
        assert_eq!(cn, "jane");
        assert_eq!(groups, vec!["dev".to_string()]);
        // The leaf names the CA as its issuer.
        let (_, leaf) = x509_parser::parse_x509_certificate(&der[0]).expect("parse");
        let ca_der = pem_certificates(ca.cert_pem());
        let (_, root) = x509_parser::parse_x509_certificate(&ca_der[0]).expect("parse ca");
        assert_eq!(leaf.issuer(), root.subject());
        assert!(leaf.verify_signature(Some(root.public_key())).is_ok());
    }

    #[test]
    fn the_ca_survives_a_reload_and_keeps_signing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = CertificateAuthority::load_or_create(dir.path(), "rkube-ca").expect("create");
        let again = CertificateAuthority::load_or_create(dir.path(), "other").expect("load");
        assert_eq!(first.cert_pem(), again.cert_pem());
        let pair = again.issue("apiserver", None, &["localhost".into()], &["127.0.0.1".parse().expect("ip")], Usage::Server).expect("issue");
        let leaf_der = pem_certificates(&pair.cert_pem);
        let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der[0]).expect("parse");
        let ca_der = pem_certificates(first.cert_pem());
        let (_, root) = x509_parser::parse_x509_certificate(&ca_der[0]).expect("parse ca");
        assert!(leaf.verify_signature(Some(root.public_key())).is_ok());
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(dir.path().join("ca.key")).expect("key").permissions());
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn kubeconfigs_read_back_with_their_credentials() {
        let ca = CertificateAuthority::generate("rkube-ca").expect("ca");
        let pair = ca.issue_client("jane", None).expect("issue");
        let read = |text: String| kube::config::Kubeconfig::from_yaml(&text).expect("a kubeconfig");
        let with_cert = read(kubeconfig("https://10.0.0.1:6443", "lab", "jane", ca.cert_pem(), &pair));
        let cluster = with_cert.clusters[0].cluster.clone().expect("cluster");
        assert_eq!(cluster.server.as_deref(), Some("https://10.0.0.1:6443"));
        assert!(cluster.certificate_authority_data.is_some());
        let auth = with_cert.auth_infos[0].auth_info.clone().expect("user");
        assert!(auth.client_certificate_data.is_some() && auth.client_key_data.is_some());
        let with_token = read(token_kubeconfig("https://10.0.0.1:6443", "lab", "sa", ca.cert_pem(), "t0ken"));
        let auth = with_token.auth_infos[0].auth_info.clone().expect("user");
        assert!(auth.token.is_some());
        let anonymous = read(anonymous_kubeconfig("http://127.0.0.1:8080", "lab", "admin"));
        assert!(anonymous.clusters[0].cluster.clone().expect("cluster").certificate_authority_data.is_none());
        assert_eq!(anonymous.current_context.as_deref(), Some("lab"));
    }

    #[test]
    fn half_a_ca_is_an_error_not_a_new_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        CertificateAuthority::load_or_create(dir.path(), "rkube-ca").expect("create");
        std::fs::remove_file(dir.path().join("ca.key")).expect("rm");
        let err = CertificateAuthority::load_or_create(dir.path(), "rkube-ca").expect_err("half a CA");
        assert!(err.to_string().contains("ca.key"), "{err}");
    }
}
