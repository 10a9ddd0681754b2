//! ServiceAccount tokens: JWTs signed by the apiserver (ES256, a P-256 key kept as
//! `service-account.key`), with Kubernetes' claims (`sub`
//! `system:serviceaccount:<ns>:<name>`, the `kubernetes.io` claim naming the account and
//! the pod or secret the token is bound to). This module signs and verifies; whether the
//! account and the bound object still exist is checked by the authenticator against the
//! store.

use std::path::Path;

use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde::{Deserialize, Serialize};

/// The issuer (and default audience) of tokens, as kubeadm and k3s configure it.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// Clock skew tolerated on `nbf`/`exp`, as Kubernetes' validator allows.
const LEEWAY_SECS: i64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("reading the service account key {path}")]
    ReadKey { path: String, #[source] source: component_base::pki::PkiError },
    #[error("{path} is not a PKCS#8 P-256 private key")]
    ParseKey { path: String },
    #[error("generating the service account key failed")]
    GenerateKey,
    #[error("signing a token failed")]
    Sign,
    #[error("not a JWT")]
    Malformed,
    #[error("the token was not signed by this cluster")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's issuer is not this cluster")]
    WrongIssuer,
    #[error("the token is not meant for this audience")]
    WrongAudience,
}

/// Who a token is for, as `kubernetes.io` claims name them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ObjectClaim {
    pub name: String,
    pub uid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct KubernetesClaims {
    pub namespace: String,
    pub serviceaccount: ObjectClaim,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectClaim>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ObjectClaim>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<ObjectClaim>,
}

/// The claims of a service account token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaims,
}

/// Signs and verifies service account tokens with one key.
pub struct TokenIssuer {
    key: EcdsaKeyPair,
    key_id: String,
    pub issuer: String,
    /// What a token must be meant for to authenticate to this apiserver
    /// (`--api-audiences`, defaulting to the issuer).
    pub api_audiences: Vec<String>,
    rng: SystemRandom,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer").field("key_id", &self.key_id).field("issuer", &self.issuer).finish_non_exhaustive()
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl TokenIssuer {
    /// Loads the PKCS#8 PEM key at `path`, generating it first if it does not exist.
    pub fn load_or_create(path: &Path, issuer: &str) -> Result<TokenIssuer, TokenError> {
        let shown = path.display().to_string();
        if !path.exists() {
            let rng = SystemRandom::new();
            let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).map_err(|_| TokenError::GenerateKey)?;
            let pem = component_base::pki::pem_encode("PRIVATE KEY", doc.as_ref());
            component_base::pki::write_file(path, pem.as_bytes(), 0o600).map_err(|source| TokenError::ReadKey { path: shown.clone(), source })?;
        }
        let text = std::fs::read_to_string(path)
            .map_err(|source| TokenError::ReadKey { path: shown.clone(), source: component_base::pki::PkiError::Read { path: path.to_path_buf(), source } })?;
        let der = component_base::pki::pem_blocks(&text, "PRIVATE KEY").into_iter().next().ok_or(TokenError::ParseKey { path: shown.clone() })?;
        TokenIssuer::from_pkcs8(&der, issuer).map_err(|_| TokenError::ParseKey { path: shown })
    }

    /// A signer over a PKCS#8 DER P-256 key.
    pub fn from_pkcs8(der: &[u8], issuer: &str) -> Result<TokenIssuer, TokenError> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng).map_err(|_| TokenError::ParseKey { path: String::new() })?;
        // Kubernetes' key id: the URL-safe base64 of the SHA-256 of the public key.
        let key_id = b64(ring::digest::digest(&ring::digest::SHA256, key.public_key().as_ref()).as_ref());
        Ok(TokenIssuer { key, key_id, issuer: issuer.to_string(), api_audiences: vec![issuer.to_string()], rng })
    }

    /// Signs `claims` as a compact JWS.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let header = serde_json::json!({"alg": "ES256", "kid": self.key_id});
        let header = serde_json::to_vec(&header).map_err(|_| TokenError::Sign)?;
        let payload = serde_json::to_vec(claims).map_err(|_| TokenError::Sign)?;
        let signing_input = format!("{}.{}", b64(&header), b64(&payload));
        let sig = self.key.sign(&self.rng, signing_input.as_bytes()).map_err(|_| TokenError::Sign)?;
        Ok(format!("{signing_input}.{}", b64(sig.as_ref())))
    }

    /// Checks the signature, issuer, audience and validity window of `token` at `now`
    /// (Unix seconds) and returns its claims. Whether the account still exists is the
    /// caller's question.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed);
        };
        let decode = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).map_err(|_| TokenError::Malformed);
        let header: serde_json::Value = serde_json::from_slice(&decode(header)?).map_err(|_| TokenError::Malformed)?;
        if header.get("alg").and_then(|a| a.as_str()) != Some("ES256") {
            return Err(TokenError::BadSignature);
        }
        let signing_input_len = token.len() - sig.len() - 1;
        let public = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.key.public_key().as_ref());
        public.verify(token[..signing_input_len].as_bytes(), &decode(sig)?).map_err(|_| TokenError::BadSignature)?;
        let claims: Claims = serde_json::from_slice(&decode(payload)?).map_err(|_| TokenError::Malformed)?;
        if claims.iss != self.issuer {
            return Err(TokenError::WrongIssuer);
        }
        if !claims.aud.iter().any(|a| self.api_audiences.contains(a)) {
            return Err(TokenError::WrongAudience);
        }
        if now > claims.exp + LEEWAY_SECS {
            return Err(TokenError::Expired);
        }
        if now + LEEWAY_SECS < claims.nbf {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }

    /// Whether `token` looks like a JWT this issuer signed (so that other token
    /// authenticators can be skipped), without verifying it.
    pub fn looks_like_ours(token: &str) -> bool {
        token.split('.').count() == 3 && token.starts_with("eyJ")
    }

    /// The public key as a JWK Set (`/openid/v1/jwks`).
    pub fn jwks(&self) -> serde_json::Value {
        // An uncompressed P-256 point: 0x04 || X (32 bytes) || Y (32 bytes).
        let point = self.key.public_key().as_ref();
        let (x, y) = if point.len() == 65 { (&point[1..33], &point[33..]) } else { (&point[..0], &point[..0]) };
        serde_json::json!({"keys": [{"use": "sig", "kty": "EC", "kid": self.key_id, "crv": "P-256", "alg": "ES256", "x": b64(x), "y": b64(y)}]})
    }

    /// The OpenID discovery document (`/.well-known/openid-configuration`).
    pub fn openid_configuration(&self) -> serde_json::Value {
        serde_json::json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/openid/v1/jwks", self.issuer.trim_end_matches('/')),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }
}

/// The user name of a service account.
pub fn user_name(namespace: &str, name: &str) -> String {
    format!("{}{namespace}:{name}", super::SERVICE_ACCOUNT_PREFIX)
}

/// Splits `system:serviceaccount:<ns>:<name>`.
pub fn split_user_name(user: &str) -> Option<(&str, &str)> {
    let rest = user.strip_prefix(super::SERVICE_ACCOUNT_PREFIX)?;
    let (ns, name) = rest.split_once(':')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains(':')).then_some((ns, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(now: i64) -> Claims {
        Claims {
            iss: DEFAULT_ISSUER.into(),
            sub: user_name("default", "app"),
            aud: vec![DEFAULT_ISSUER.into()],
            exp: now + 3600,
            iat: now,
            nbf: now,
            jti: "1".into(),
            kubernetes: KubernetesClaims { namespace: "default".into(), serviceaccount: ObjectClaim { name: "app".into(), uid: "u1".into() }, ..Default::default() },
        }
    }

    fn issuer(dir: &Path) -> TokenIssuer {
        TokenIssuer::load_or_create(&dir.join("sa.key"), DEFAULT_ISSUER).expect("issuer")
    }

    #[test]
    fn a_signed_token_verifies_and_survives_a_key_reload() {
        let dir = tempfile::tempdir().expect("tmp");
        let now = 1_800_000_000;
        let token = issuer(dir.path()).sign(&claims(now)).expect("sign");
        // The key was written, and a second load uses it.
        let again = issuer(dir.path());
        assert_eq!(again.verify(&token, now + 10).expect("verify"), claims(now));
    }

    #[test]
    fn tampered_expired_and_foreign_tokens_are_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let other = tempfile::tempdir().expect("tmp");
        let now = 1_800_000_000;
        let ours = issuer(dir.path());
        let token = ours.sign(&claims(now)).expect("sign");
        assert!(matches!(ours.verify(&token, now + 3600 + LEEWAY_SECS + 1), Err(TokenError::Expired)));
        assert!(matches!(ours.verify(&token, now - LEEWAY_SECS - 1), Err(TokenError::NotYetValid)));
        assert!(matches!(issuer(other.path()).verify(&token, now), Err(TokenError::BadSignature)));
        // Change the payload, keep the signature.
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        let mut c = claims(now);
        c.sub = user_name("kube-system", "admin");
        parts[1] = b64(&serde_json::to_vec(&c).expect("json"));
        assert!(matches!(ours.verify(&parts.join("."), now), Err(TokenError::BadSignature)));
        let mut c = claims(now);
        c.aud = vec!["vault".into()];
        assert!(matches!(ours.verify(&ours.sign(&c).expect("sign"), now), Err(TokenError::WrongAudience)));
        assert!(matches!(ours.verify("abc.def", now), Err(TokenError::Malformed)));
        assert!(matches!(ours.verify("", now), Err(TokenError::Malformed)));
    }

    #[test]
    fn service_account_user_names() {
        assert_eq!(split_user_name("system:serviceaccount:ns:app"), Some(("ns", "app")));
        assert_eq!(split_user_name("system:serviceaccount:ns"), None);
        assert_eq!(split_user_name("jane"), None);
    }
}
