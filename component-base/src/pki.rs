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
    /// A certificate signing request that does not parse, is not signed by its own key,
    /// or asks for something this module cannot put in a certificate.
    #[error("invalid certificate request: {0}")]
    InvalidRequest(String),
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
        leaf_usages(&mut params, usage);
        validity(&mut params, LEAF_VALIDITY);
        let cert = params.signed_by(&key, &self.issuer).map_err(issue_err)?;
        Ok(CertPair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// A client certificate for `user` in `group`.
    pub fn issue_client(&self, user: &str, group: Option<&str>) -> Result<CertPair, PkiError> {
        self.issue(user, group, &[], &[], Usage::Client)
    }
}

/// What every leaf this module signs says it is for: digital signature and key
/// encipherment, the extended key usages of `usage`, and the issuing CA's key id.
fn leaf_usages(params: &mut CertificateParams, usage: Usage) {
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = match usage {
        Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
        Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        Usage::ServerAndClient => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
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

// Certificate signing requests: kubelet TLS bootstrapping makes a key and a PKCS#10
// request, the kube-controller-manager's `csrsigning` controller signs it with the CA.

/// A new ECDSA P-256 key and a PKCS#10 request for it, subject CN `common_name` and O
/// `organization`, with the given DNS and IP SANs: `(request PEM, key PEM)`. The request
/// asks for no key usages; the signer decides them (as Kubernetes' signers do).
pub fn new_request(common_name: &str, organization: Option<&str>, dns_names: &[String], ips: &[IpAddr]) -> Result<(String, String), PkiError> {
    let request_err = |source| PkiError::Issue { subject: common_name.to_string(), source };
    let key = KeyPair::generate().map_err(PkiError::GenerateKey)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    if let Some(o) = organization {
        params.distinguished_name.push(DnType::OrganizationName, o);
    }
    for name in dns_names {
        params.subject_alt_names.push(SanType::DnsName(name.clone().try_into().map_err(request_err)?));
    }
    params.subject_alt_names.extend(ips.iter().copied().map(SanType::IpAddress));
    let csr = params.serialize_request(&key).map_err(request_err)?;
    Ok((csr.pem().map_err(request_err)?, key.serialize_pem()))
}

/// What a certificate signing request asks for: its subject (CN = user, O = groups as
/// the x509 authenticator reads them) and its subject alternative names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestInfo {
    pub common_name: String,
    pub organizations: Vec<String>,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub emails: Vec<String>,
    pub uris: Vec<String>,
}

/// The one `CERTIFICATE REQUEST` block of a PEM text, as DER.
fn request_der(csr_pem: &str) -> Result<Vec<u8>, PkiError> {
    let mut blocks = pem_blocks(csr_pem, "CERTIFICATE REQUEST").into_iter();
    match (blocks.next(), blocks.next()) {
        (Some(der), None) => Ok(der),
        (None, _) => Err(PkiError::InvalidRequest("no PEM CERTIFICATE REQUEST block".into())),
        (Some(_), Some(_)) => Err(PkiError::InvalidRequest("more than one PEM CERTIFICATE REQUEST block".into())),
    }
}

/// Parses a DER request and checks that it is signed by the key it carries.
fn parse_verified(der: &[u8]) -> Result<x509_parser::certification_request::X509CertificationRequest<'_>, PkiError> {
    use x509_parser::prelude::FromDer;
    let (rest, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(der)
        .map_err(|e| PkiError::InvalidRequest(format!("not a PKCS#10 request: {e}")))?;
    if !rest.is_empty() {
        return Err(PkiError::InvalidRequest("trailing bytes after the request".into()));
    }
    csr.verify_signature()
        .map_err(|e| PkiError::InvalidRequest(format!("the request's signature does not verify: {e}")))?;
    Ok(csr)
}

/// The subject alternative names a request asks for. Names other than DNS, IP, email
/// and URI are refused: a signer could not tell what they grant.
fn requested_sans(csr: &x509_parser::certification_request::X509CertificationRequest<'_>, info: &mut RequestInfo) -> Result<(), PkiError> {
    match csr.requested_extensions() {
        Some(extensions) => read_sans(extensions, info),
        None => Ok(()),
    }
}

/// The DNS, IP, email and URI names of the subjectAltName extensions among `extensions`.
fn read_sans<'a>(extensions: impl Iterator<Item = &'a x509_parser::extensions::ParsedExtension<'a>>, info: &mut RequestInfo) -> Result<(), PkiError> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    for ext in extensions {
        let ParsedExtension::SubjectAlternativeName(san) = ext else { continue };
        for name in &san.general_names {
            match name {
                GeneralName::DNSName(d) => info.dns_names.push(d.to_string()),
                GeneralName::RFC822Name(e) => info.emails.push(e.to_string()),
                GeneralName::URI(u) => info.uris.push(u.to_string()),
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).map(IpAddr::from).ok(),
                        16 => <[u8; 16]>::try_from(*bytes).map(IpAddr::from).ok(),
                        _ => None,
                    };
                    info.ips.push(ip.ok_or_else(|| PkiError::InvalidRequest(format!("an IP address SAN of {} bytes", bytes.len())))?);
                }
                other => return Err(PkiError::InvalidRequest(format!("unsupported subject alternative name {other}"))),
            }
        }
    }
    Ok(())
}

/// What a PEM certificate signing request asks for, once its self-signature verifies.
pub fn parse_request(csr_pem: &str) -> Result<RequestInfo, PkiError> {
    let der = request_der(csr_pem)?;
    let csr = parse_verified(&der)?;
    let subject = &csr.certification_request_info.subject;
    let text = |a: &x509_parser::x509::AttributeTypeAndValue<'_>| {
        a.as_str().map(str::to_string).map_err(|e| PkiError::InvalidRequest(format!("a subject attribute is not text: {e}")))
    };
    let mut info = RequestInfo {
        common_name: subject.iter_common_name().next().map(text).transpose()?.unwrap_or_default(),
        organizations: subject.iter_organization().map(text).collect::<Result<_, _>>()?,
        ..Default::default()
    };
    requested_sans(&csr, &mut info)?;
    Ok(info)
}

/// The subject and subject alternative names of a PEM certificate (its first), read as
/// [`parse_request`] reads a request's: what a signed certificate ended up naming.
pub fn certificate_names(cert_pem: &str) -> Result<RequestInfo, PkiError> {
    let bad = |e: String| PkiError::InvalidRequest(format!("not a certificate: {e}"));
    let der = pem_certificates(cert_pem).into_iter().next().ok_or_else(|| bad("no PEM CERTIFICATE block".into()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| bad(e.to_string()))?;
    let text = |a: &x509_parser::x509::AttributeTypeAndValue<'_>| a.as_str().map(str::to_string).map_err(|e| bad(e.to_string()));
    let mut info = RequestInfo {
        common_name: cert.subject().iter_common_name().next().map(text).transpose()?.unwrap_or_default(),
        organizations: cert.subject().iter_organization().map(text).collect::<Result<_, _>>()?,
        ..Default::default()
    };
    read_sans(cert.extensions().iter().map(|e| e.parsed_extension()), &mut info)?;
    Ok(info)
}

/// The subject of a request, as rcgen writes it again into the certificate. rcgen keeps
/// at most one attribute of each type (see [`CertificateAuthority::issue`]), so a subject
/// with two attributes of one type (two O's) or a multi-valued RDN is refused rather
/// than signed with some of its attributes silently dropped.
fn request_subject(name: &x509_parser::x509::X509Name<'_>) -> Result<DistinguishedName, PkiError> {
    use x509_parser::der_parser::asn1_rs::Tag;
    let mut dn = DistinguishedName::new();
    for rdn in name.iter() {
        let mut attrs = rdn.iter();
        let (Some(attr), None) = (attrs.next(), attrs.next()) else {
            return Err(PkiError::InvalidRequest("a multi-valued relative distinguished name in the subject".into()));
        };
        let oid: Vec<u64> = attr.attr_type().iter().ok_or_else(|| PkiError::InvalidRequest("an unreadable attribute type in the subject".into()))?.collect();
        let ty = DnType::from_oid(&oid);
        if dn.get(&ty).is_some() {
            return Err(PkiError::InvalidRequest(format!("more than one {} attribute in the subject", attr.attr_type())));
        }
        let value = attr.as_str().map_err(|e| PkiError::InvalidRequest(format!("a subject attribute is not text: {e}")))?;
        let value = match attr.attr_value().header.tag() {
            Tag::PrintableString => rcgen::DnValue::PrintableString(
                value.try_into().map_err(|e| PkiError::InvalidRequest(format!("subject attribute {value:?}: {e}")))?,
            ),
            _ => rcgen::DnValue::Utf8String(value.to_string()),
        };
        dn.push(ty, value);
    }
    Ok(dn)
}

/// A random positive 16-byte serial number (RFC 5280: unique per CA, at most 20 bytes).
fn random_serial() -> Result<rcgen::SerialNumber, PkiError> {
    let mut serial = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut serial)
        .map_err(|_| PkiError::GenerateKey(rcgen::Error::RingUnspecified))?;
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    Ok(serial.to_vec().into())
}

impl CertificateAuthority {
    /// Signs a PEM certificate signing request: the certificate keeps the request's
    /// subject, public key and subject alternative names (DNS, IP, email, URI), is never
    /// a CA, has the key usages `issue` gives `usage` (whatever the request asked), a
    /// random serial, and is valid from now (backdated as `issue` does) for `lifetime`,
    /// but never past the CA's own notAfter (nor before its notBefore).
    pub fn sign_request(&self, csr_pem: &str, usage: Usage, lifetime: Duration) -> Result<String, PkiError> {
        let der = request_der(csr_pem)?;
        let csr = parse_verified(&der)?;
        let info = &csr.certification_request_info;
        let subject = info.subject.to_string();
        let issue_err = |source| PkiError::Issue { subject: subject.clone(), source };
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(info.subject_pki.raw)
            .map_err(|e| PkiError::InvalidRequest(format!("unsupported public key: {e}")))?;
        let mut sans = RequestInfo::default();
        requested_sans(&csr, &mut sans)?;

        let mut params = CertificateParams::default();
        params.distinguished_name = request_subject(&info.subject)?;
        for name in sans.dns_names {
            params.subject_alt_names.push(SanType::DnsName(name.try_into().map_err(issue_err)?));
        }
        params.subject_alt_names.extend(sans.ips.into_iter().map(SanType::IpAddress));
        for email in sans.emails {
            params.subject_alt_names.push(SanType::Rfc822Name(email.try_into().map_err(issue_err)?));
        }
        for uri in sans.uris {
            params.subject_alt_names.push(SanType::URI(uri.try_into().map_err(issue_err)?));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        leaf_usages(&mut params, usage);
        validity(&mut params, lifetime);
        let (ca_not_before, ca_not_after) = self.validity_window()?;
        params.not_before = params.not_before.max(ca_not_before);
        params.not_after = params.not_after.min(ca_not_after);
        params.serial_number = Some(random_serial()?);
        let cert = params.signed_by(&public_key, &self.issuer).map_err(issue_err)?;
        Ok(cert.pem())
    }

    /// When the CA certificate itself is valid.
    fn validity_window(&self) -> Result<(time::OffsetDateTime, time::OffsetDateTime), PkiError> {
        let not_ca = || PkiError::NoCertificate { path: PathBuf::from("<the CA certificate>") };
        let der = pem_certificates(&self.cert_pem).into_iter().next().ok_or_else(not_ca)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|_| not_ca())?;
        Ok((cert.validity().not_before.to_datetime(), cert.validity().not_after.to_datetime()))
    }
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

#[cfg(test)]
mod request_tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, UnixTime};

    fn parse_cert(pem: &str) -> Vec<u8> {
        pem_certificates(pem).into_iter().next().expect("a certificate")
    }

    /// Whether the apiserver's client-certificate check (rustls/webpki, the CA as the
    /// only root) accepts `cert_pem`.
    fn client_verifies(ca: &CertificateAuthority, cert_pem: &str) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(parse_cert(ca.cert_pem()))).expect("root");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(std::sync::Arc::new(roots), provider).build().expect("verifier");
        verifier.verify_client_cert(&CertificateDer::from(parse_cert(cert_pem)), &[], UnixTime::now()).map(|_| ())
    }

    #[test]
    fn a_request_round_trips_to_a_certificate_the_ca_vouches_for() {
        let ca = CertificateAuthority::generate("rkube-ca").expect("ca");
        let ip: IpAddr = "10.0.0.5".parse().expect("ip");
        let (csr, key) = new_request("system:node:n1", Some("system:nodes"), &["n1.local".into()], &[ip]).expect("request");
        assert!(csr.contains("BEGIN CERTIFICATE REQUEST") && key.contains("PRIVATE KEY"));
        let info = parse_request(&csr).expect("parse");
        assert_eq!(info.common_name, "system:node:n1");
        assert_eq!(info.organizations, ["system:nodes"]);
        assert_eq!(info.dns_names, ["n1.local"]);
        assert_eq!(info.ips, [ip]);
        assert!(info.emails.is_empty() && info.uris.is_empty());

        let cert_pem = ca.sign_request(&csr, Usage::Client, Duration::from_secs(3600)).expect("sign");
        client_verifies(&ca, &cert_pem).expect("webpki accepts the client certificate");
        let der = parse_cert(&cert_pem);
        assert_eq!(subject_of(&der), Some(("system:node:n1".to_string(), vec!["system:nodes".to_string()])));
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parse");
        let root_der = parse_cert(ca.cert_pem());
        let (_, root) = x509_parser::parse_x509_certificate(&root_der).expect("parse ca");
        assert!(cert.verify_signature(Some(root.public_key())).is_ok());
        let san = cert.subject_alternative_name().expect("san ext").expect("a SAN");
        let names: Vec<String> = san.value.general_names.iter().map(|n| n.to_string()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names[0].contains("n1.local"), "{names:?}");
        let names = certificate_names(&cert_pem).expect("names");
        assert_eq!(names, info, "the certificate names what the request asked for");
        let eku = cert.extended_key_usage().expect("eku").expect("an EKU").value;
        assert!(eku.client_auth && !eku.server_auth);
        let bc = cert.basic_constraints().expect("bc").expect("basic constraints").value;
        assert!(!bc.ca);
        // The key in the certificate is the request's.
        use rcgen::PublicKeyData;
        let key_pair = KeyPair::from_pem(&key).expect("key");
        assert_eq!(cert.public_key().raw, key_pair.subject_public_key_info().as_slice());
        // Valid for about the hour asked for, backdated a little.
        let now = time::OffsetDateTime::now_utc();
        let not_after = cert.validity().not_after.to_datetime();
        assert!(not_after <= now + Duration::from_secs(3600) && not_after > now + Duration::from_secs(3500), "{not_after}");
        assert!(cert.validity().not_before.to_datetime() < now);
    }

    #[test]
    fn signing_keeps_within_the_ca_and_ignores_what_the_request_asks_to_be() {
        let ca = CertificateAuthority::generate("rkube-ca").expect("ca");
        // A request that asks to be a CA that may sign certificates.
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "sneaky");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let csr = params.serialize_request(&key).expect("request").pem().expect("pem");
        let cert_pem = ca.sign_request(&csr, Usage::Server, Duration::from_secs(100 * 365 * 24 * 3600)).expect("sign");
        let der = parse_cert(&cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parse");
        assert!(!cert.basic_constraints().expect("bc").expect("basic constraints").value.ca);
        let ku = cert.key_usage().expect("ku").expect("key usage").value;
        assert!(!ku.key_cert_sign() && ku.digital_signature());
        // Never valid past the CA.
        let root_der = parse_cert(ca.cert_pem());
        let (_, root) = x509_parser::parse_x509_certificate(&root_der).expect("parse ca");
        assert_eq!(cert.validity().not_after, root.validity().not_after);
        // Two signatures of one request are two certificates (random serials).
        let again = ca.sign_request(&csr, Usage::Server, Duration::from_secs(3600)).expect("sign");
        let again_der = parse_cert(&again);
        let (_, second) = x509_parser::parse_x509_certificate(&again_der).expect("parse");
        assert_ne!(cert.raw_serial(), second.raw_serial());
    }

    #[test]
    fn a_tampered_request_is_refused() {
        let ca = CertificateAuthority::generate("rkube-ca").expect("ca");
        let (csr, _) = new_request("system:node:n1", Some("system:nodes"), &[], &[]).expect("request");
        let mut der = pem_blocks(&csr, "CERTIFICATE REQUEST").remove(0);
        let at = der.windows(14).position(|w| w == b"system:node:n1").expect("the CN bytes");
        der[at + 13] = b'2';
        let tampered = pem_encode("CERTIFICATE REQUEST", &der);
        let err = parse_request(&tampered).expect_err("tampered");
        assert!(matches!(err, PkiError::InvalidRequest(_)), "{err}");
        assert!(ca.sign_request(&tampered, Usage::Client, LEAF_VALIDITY).is_err());
        assert!(parse_request("not pem").is_err());
        assert!(parse_request(ca.cert_pem()).is_err());
    }

    #[test]
    fn a_subject_rcgen_cannot_keep_whole_is_refused_not_trimmed() {
        let ca = CertificateAuthority::generate("rkube-ca").expect("ca");
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "jane");
        params.distinguished_name.push(DnType::OrganizationName, "dev");
        // The organizationName OID again, as a second attribute.
        params.distinguished_name.push(DnType::CustomDnType(vec![2, 5, 4, 10]), "system:masters");
        let csr = params.serialize_request(&key).expect("request").pem().expect("pem");
        let info = parse_request(&csr).expect("parse");
        assert_eq!(info.organizations, ["dev", "system:masters"]);
        let err = ca.sign_request(&csr, Usage::Client, LEAF_VALIDITY).expect_err("two O's");
        assert!(err.to_string().contains("more than one"), "{err}");
    }
}
