//! `certificates.k8s.io/v1` CertificateSigningRequests, as Kubernetes' registry treats
//! them: the apiserver records who asked (`spec.username`, `groups`, `uid`, `extra`,
//! never what the body claims), checks that `spec.request` is a PKCS#10 request, keeps
//! the spec immutable, and guards the two subresources a CSR's life runs through:
//! `approval` (Approved/Denied conditions, for those who may `approve` on the `signers`
//! resource named by the CSR's signerName) and `status` (the issued certificate, for
//! those who may `sign`). The approving and signing themselves are controllers'.

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use serde_json::{json, Value};
use x509_parser::prelude::FromDer as _;

use crate::auth::{Attributes, Decision, UserInfo};
use crate::errors::{ApiError, Cause};
use crate::handlers::Target;
use crate::ApiServer;

pub const GROUP: &str = "certificates.k8s.io";

/// The key usages a CSR may ask for (Kubernetes' `KeyUsage` values).
const USAGES: &[&str] = &[
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
];

/// The shortest certificate a CSR may ask for (`spec.expirationSeconds`).
const MIN_EXPIRATION_SECONDS: i64 = 600;

/// Whether `target` is a CertificateSigningRequest.
pub fn is_csr(target: &Target) -> bool {
    target.res.group == GROUP && target.res.plural == "certificatesigningrequests"
}

/// Applies what only the request knows (who sent it) before the REST path: on create the
/// requester goes into the spec; a write to `approval` or `status` needs the signer
/// permission for the CSR's signerName. Returns the body to serve.
pub async fn prepare(api: &ApiServer, method: &Method, target: &Target, headers: &mut HeaderMap, body: Bytes, user: &UserInfo) -> Result<Bytes, ApiError> {
    match (method, target.name.as_deref(), target.sub.as_deref()) {
        (&Method::POST, None, None) => {
            let mut obj = crate::codec::decode_object(headers, &body)?;
            set_requester(&mut obj, user);
            headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Ok(Bytes::from(serde_json::to_vec(&obj).map_err(ApiError::internal)?))
        }
        (&Method::PUT | &Method::PATCH, Some(name), Some(sub @ ("approval" | "status"))) => {
            let (current, _) = api.read(target).await?;
            let signer = current.pointer("/spec/signerName").and_then(Value::as_str).unwrap_or_default();
            let verb = if sub == "approval" { "approve" } else { "sign" };
            if !may_use_signer(api, user, verb, signer) {
                return Err(ApiError::forbidden(target.res, name, format!("user not permitted to {verb} requests with signerName \"{signer}\"")));
            }
            Ok(body)
        }
        _ => Ok(body),
    }
}

/// The requester, as authenticated, replaces whatever the body claims.
fn set_requester(obj: &mut Value, user: &UserInfo) {
    let Some(o) = obj.as_object_mut() else { return };
    let spec = o.entry("spec").or_insert_with(|| json!({}));
    let Some(spec) = spec.as_object_mut() else { return };
    spec.insert("username".into(), json!(user.name));
    for (field, empty) in [("uid", user.uid.is_empty()), ("groups", user.groups.is_empty()), ("extra", user.extra.is_empty())] {
        if empty {
            spec.remove(field);
        }
    }
    if !user.uid.is_empty() {
        spec.insert("uid".into(), json!(user.uid));
    }
    if !user.groups.is_empty() {
        spec.insert("groups".into(), json!(user.groups));
    }
    if !user.extra.is_empty() {
        spec.insert("extra".into(), json!(user.extra));
    }
}

/// Whether `user` may `verb` (approve, sign) on `signers` named `signer`, or on the
/// signer's whole domain (`example.com/*`), as Kubernetes checks it.
fn may_use_signer(api: &ApiServer, user: &UserInfo, verb: &str, signer: &str) -> bool {
    let domain_wildcard = signer.split_once('/').map(|(domain, _)| format!("{domain}/*"));
    [Some(signer.to_string()), domain_wildcard].into_iter().flatten().any(|name| {
        let attrs = Attributes {
            user: user.clone(),
            verb: verb.into(),
            resource_request: true,
            api_group: GROUP.into(),
            api_version: "*".into(),
            resource: "signers".into(),
            name,
            ..Default::default()
        };
        api.authorize(&attrs) == Decision::Allow
    })
}

/// The approval subresource changes the conditions and nothing else.
pub fn with_approval(new: &Value, current: &Value) -> Value {
    let mut out = current.clone();
    match new.pointer("/status/conditions") {
        Some(conditions) => {
            if !out.get("status").is_some_and(Value::is_object) {
                out["status"] = json!({});
            }
            out["status"]["conditions"] = conditions.clone();
        }
        None => {
            if let Some(status) = out.get_mut("status").and_then(Value::as_object_mut) {
                status.remove("conditions");
            }
        }
    }
    out
}

/// Conditions written without times get the time of the write, as Kubernetes stamps
/// them (`lastUpdateTime`, and `lastTransitionTime` for a new condition).
pub fn stamp_conditions(obj: &mut Value) {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for c in obj.pointer_mut("/status/conditions").and_then(Value::as_array_mut).into_iter().flatten() {
        let Some(c) = c.as_object_mut() else { continue };
        for field in ["lastUpdateTime", "lastTransitionTime"] {
            if c.get(field).is_none_or(Value::is_null) {
                c.insert(field.into(), json!(now));
            }
        }
    }
}

/// The bytes of a `[]byte` field (base64 in JSON).
fn bytes_at(obj: &Value, pointer: &str) -> Option<Result<Vec<u8>, base64::DecodeError>> {
    obj.pointer(pointer).and_then(Value::as_str).map(|s| base64::engine::general_purpose::STANDARD.decode(s))
}

fn condition_types(obj: &Value) -> Vec<(String, String)> {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    let field = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
                    (field("type"), field("status"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Validation of a CSR (`old` on update).
pub fn validate(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    match bytes_at(obj, "/spec/request") {
        None => causes.push(Cause::required("spec.request")),
        Some(Err(_)) => causes.push(Cause::invalid("spec.request", "<request>", "must be base64-encoded bytes")),
        Some(Ok(der_or_pem)) => {
            let text = String::from_utf8_lossy(&der_or_pem);
            let blocks = component_base::pki::pem_blocks(&text, "CERTIFICATE REQUEST");
            match blocks.first() {
                None => causes.push(Cause::invalid("spec.request", "[]byte{...}", "PEM block type must be CERTIFICATE REQUEST")),
                Some(der) => {
                    if x509_parser::certification_request::X509CertificationRequest::from_der(der).is_err() {
                        causes.push(Cause::invalid("spec.request", "[]byte{...}", "the certificate request is not valid PKCS#10"));
                    }
                }
            }
        }
    }
    match obj.pointer("/spec/signerName").and_then(Value::as_str) {
        None | Some("") => causes.push(Cause::required("spec.signerName")),
        Some(signer) => {
            let ok = signer.split_once('/').is_some_and(|(domain, path)| {
                !domain.is_empty() && !path.is_empty() && domain.len() <= 253 && domain.split('.').all(apimachinery_label_ok) && !path.contains('/')
            });
            if !ok {
                causes.push(Cause::invalid("spec.signerName", signer, "must be a fully qualified domain and path of the form 'example.com/signer-name'"));
            }
        }
    }
    match obj.pointer("/spec/usages").and_then(Value::as_array) {
        None => causes.push(Cause::required("spec.usages")),
        Some(usages) if usages.is_empty() => causes.push(Cause::required("spec.usages")),
        Some(usages) => {
            for (i, u) in usages.iter().enumerate() {
                let u = u.as_str().unwrap_or_default();
                if !USAGES.contains(&u) {
                    causes.push(Cause::not_supported(format!("spec.usages[{i}]"), u, USAGES));
                }
            }
        }
    }
    if let Some(seconds) = obj.pointer("/spec/expirationSeconds").and_then(Value::as_i64) {
        if seconds < MIN_EXPIRATION_SECONDS {
            causes.push(Cause::invalid("spec.expirationSeconds", seconds, format!("may not specify a duration less than {MIN_EXPIRATION_SECONDS} seconds")));
        }
    }
    let conditions = condition_types(obj);
    let has = |t: &str| conditions.iter().any(|(ty, _)| ty == t);
    for (i, (ty, status)) in conditions.iter().enumerate() {
        if ty.is_empty() {
            causes.push(Cause::required(format!("status.conditions[{i}].type")));
        }
        if matches!(ty.as_str(), "Approved" | "Denied") && status != "True" {
            causes.push(Cause::not_supported(format!("status.conditions[{i}].status"), status, &["True"]));
        }
        if matches!(ty.as_str(), "Approved" | "Denied" | "Failed") && conditions[..i].iter().any(|(t, _)| t == ty) {
            causes.push(Cause::duplicate(format!("status.conditions[{i}].type"), ty));
        }
    }
    if has("Approved") && has("Denied") {
        causes.push(Cause::invalid("status.conditions", "[Approved Denied]", "Approved and Denied conditions are mutually exclusive"));
    }
    if let Some(old) = old {
        if obj.get("spec") != old.get("spec") {
            causes.push(Cause::invalid("spec", "", "field is immutable"));
        }
        let before = condition_types(old);
        for ty in ["Approved", "Denied"] {
            if before.iter().any(|(t, _)| t == ty) && !has(ty) {
                causes.push(Cause::forbidden("status.conditions", format!("updates may not remove a condition of type \"{ty}\"")));
            }
        }
    }
    match bytes_at(obj, "/status/certificate") {
        None => {}
        Some(Err(_)) => causes.push(Cause::invalid("status.certificate", "<certificate>", "must be base64-encoded bytes")),
        Some(Ok(pem)) if pem.is_empty() => {}
        Some(Ok(pem)) => {
            let previous = old.and_then(|o| bytes_at(o, "/status/certificate")).and_then(Result::ok).filter(|p| !p.is_empty());
            if let Some(previous) = previous {
                if previous != pem {
                    causes.push(Cause::forbidden("status.certificate", "updates may not modify existing certificate content"));
                }
            } else if !has("Approved") || has("Denied") || has("Failed") {
                causes.push(Cause::invalid("status.certificate", "<certificate>", "certificate may only be set if the Approved condition is present and neither Denied nor Failed is"));
            }
            if component_base::pki::pem_certificates(&String::from_utf8_lossy(&pem)).is_empty() {
                causes.push(Cause::invalid("status.certificate", "<certificate>", "must contain at least one CERTIFICATE PEM block"));
            }
        }
    }
}

/// A DNS label (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters).
fn apimachinery_label_ok(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

/// The CONDITION column of `kubectl get csr`: Pending, Approved or Denied, then Failed
/// and Issued when they apply.
pub fn condition_summary(obj: &Value) -> String {
    let conditions = condition_types(obj);
    let has = |t: &str| conditions.iter().any(|(ty, _)| ty == t);
    let mut out = String::from(if has("Denied") {
        "Denied"
    } else if has("Approved") {
        "Approved"
    } else {
        "Pending"
    });
    if has("Failed") {
        out.push_str(",Failed");
    }
    if obj.pointer("/status/certificate").and_then(Value::as_str).is_some_and(|c| !c.is_empty()) {
        out.push_str(",Issued");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr(request_pem: &str) -> Value {
        json!({
            "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
            "metadata": {"name": "node-csr-1"},
            "spec": {
                "request": base64::engine::general_purpose::STANDARD.encode(request_pem),
                "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
                "usages": ["digital signature", "client auth"],
            },
        })
    }

    fn request_pem() -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, "system:node:n1");
        params.serialize_request(&key).expect("csr").pem().expect("pem")
    }

    fn causes(obj: &Value, old: Option<&Value>) -> Vec<String> {
        let mut out = Vec::new();
        validate(obj, old, &mut out);
        out.into_iter().map(|c| format!("{}: {}", c.field, c.message)).collect()
    }

    #[test]
    fn a_well_formed_request_is_valid() {
        assert_eq!(causes(&csr(&request_pem()), None), Vec::<String>::new());
    }

    #[test]
    fn a_request_that_is_not_a_csr_is_refused() {
        let got = causes(&csr("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), None);
        assert!(got.iter().any(|c| c.contains("spec.request") && c.contains("CERTIFICATE REQUEST")), "{got:?}");
        let mut bad = csr(&request_pem());
        bad["spec"]["signerName"] = json!("no-slash");
        bad["spec"]["usages"] = json!(["client auth", "flying"]);
        bad["spec"]["expirationSeconds"] = json!(60);
        let got = causes(&bad, None);
        assert!(got.iter().any(|c| c.starts_with("spec.signerName")), "{got:?}");
        assert!(got.iter().any(|c| c.starts_with("spec.usages[1]")), "{got:?}");
        assert!(got.iter().any(|c| c.starts_with("spec.expirationSeconds")), "{got:?}");
    }

    #[test]
    fn approval_is_final_and_certificates_need_it() {
        let pending = csr(&request_pem());
        let mut approved = pending.clone();
        approved["status"] = json!({"conditions": [{"type": "Approved", "status": "True", "reason": "R"}]});
        assert!(causes(&approved, Some(&pending)).is_empty());
        // Approved then Denied, or the approval taken back: refused.
        let mut both = approved.clone();
        both["status"]["conditions"].as_array_mut().expect("conditions").push(json!({"type": "Denied", "status": "True"}));
        assert!(causes(&both, Some(&approved)).iter().any(|c| c.contains("mutually exclusive")));
        assert!(causes(&pending, Some(&approved)).iter().any(|c| c.contains("may not remove")));
        // A certificate on a pending CSR: refused; on an approved one: accepted, and then fixed.
        let cert = base64::engine::general_purpose::STANDARD.encode("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
        let mut issued_pending = pending.clone();
        issued_pending["status"] = json!({"certificate": cert});
        assert!(causes(&issued_pending, Some(&pending)).iter().any(|c| c.contains("Approved condition")));
        let mut issued = approved.clone();
        issued["status"]["certificate"] = json!(cert);
        assert!(causes(&issued, Some(&approved)).is_empty());
        let mut changed = issued.clone();
        changed["status"]["certificate"] = json!(base64::engine::general_purpose::STANDARD.encode("-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n"));
        assert!(causes(&changed, Some(&issued)).iter().any(|c| c.contains("may not modify")));
        // The spec never changes.
        let mut respec = pending.clone();
        respec["spec"]["usages"] = json!(["client auth"]);
        assert!(causes(&respec, Some(&pending)).iter().any(|c| c.starts_with("spec:")));
    }

    #[test]
    fn the_requester_replaces_what_the_body_claims() {
        let mut obj = csr(&request_pem());
        obj["spec"]["username"] = json!("system:admin");
        obj["spec"]["groups"] = json!(["system:masters"]);
        let user = UserInfo { name: "system:bootstrap:abcdef".into(), groups: vec!["system:bootstrappers".into(), "system:authenticated".into()], ..Default::default() };
        set_requester(&mut obj, &user);
        assert_eq!(obj["spec"]["username"], "system:bootstrap:abcdef");
        assert_eq!(obj["spec"]["groups"], json!(["system:bootstrappers", "system:authenticated"]));
        assert!(obj["spec"].get("uid").is_none());
    }

    #[test]
    fn the_condition_column_reads_as_kubectl_shows_it() {
        let mut obj = csr(&request_pem());
        assert_eq!(condition_summary(&obj), "Pending");
        obj["status"] = json!({"conditions": [{"type": "Approved", "status": "True"}], "certificate": "QUFB"});
        assert_eq!(condition_summary(&obj), "Approved,Issued");
        obj["status"] = json!({"conditions": [{"type": "Denied", "status": "True"}, {"type": "Failed", "status": "True"}]});
        assert_eq!(condition_summary(&obj), "Denied,Failed");
    }
}
