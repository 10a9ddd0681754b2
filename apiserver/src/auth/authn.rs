//! Authentication: who sent a request. As in Kubernetes, the first credential that
//! proves an identity wins: the TLS client certificate (verified against the client CA
//! during the handshake; CN is the user, O the groups), then a bearer token from the
//! static token file, a bootstrap token (a Secret in kube-system) or a ServiceAccount
//! JWT. A bearer token that proves nothing is refused outright, never downgraded to
//! anonymous.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use serde_json::Value;

use super::serviceaccount::{self, TokenIssuer};
use super::{UserInfo, AUTHENTICATED_GROUP, SERVICE_ACCOUNTS_GROUP};

/// Reads objects the authenticator checks tokens against (the watch caches in the
/// apiserver; a map in unit tests).
pub trait Objects: Send + Sync {
    /// The object of core/v1 `resource` (`secrets`, `serviceaccounts`, `pods`) at
    /// `namespace/name`.
    fn core_object(&self, resource: &str, namespace: &str, name: &str) -> Option<Arc<Value>>;
}

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("reading the token file {path}")]
    Read { path: String, #[source] source: std::io::Error },
    #[error("{path}:{line}: want token,user,uid[,\"group1,group2\"]")]
    Line { path: String, line: usize },
}

/// The result of authenticating a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    User(UserInfo),
    /// No credential at all.
    Anonymous,
    /// A credential was offered and proved nothing; the string says why (for the log).
    Refused(String),
}

/// The authenticators of an apiserver.
#[derive(Default)]
pub struct Authenticator {
    static_tokens: HashMap<String, UserInfo>,
    service_accounts: Option<Arc<TokenIssuer>>,
}

impl Authenticator {
    pub fn new(static_tokens: HashMap<String, UserInfo>, service_accounts: Option<Arc<TokenIssuer>>) -> Authenticator {
        Authenticator { static_tokens, service_accounts }
    }

    /// Authenticates a request that carried `certificate_user` (from its TLS client
    /// certificate) and the `Authorization` header `authorization`.
    pub fn authenticate(&self, certificate_user: Option<&UserInfo>, authorization: Option<&str>, objects: &dyn Objects, now: i64) -> Outcome {
        if let Some(user) = certificate_user {
            return Outcome::User(with_authenticated(user.clone()));
        }
        let Some(header) = authorization else { return Outcome::Anonymous };
        let Some(token) = bearer(header) else { return Outcome::Refused("the Authorization header is not a bearer token".into()) };
        if let Some(user) = self.static_tokens.get(token) {
            return Outcome::User(with_authenticated(user.clone()));
        }
        if let Some((id, secret)) = split_bootstrap_token(token) {
            return match bootstrap_user(id, secret, objects, now) {
                Ok(user) => Outcome::User(user),
                Err(why) => Outcome::Refused(why),
            };
        }
        if let Some(issuer) = &self.service_accounts {
            if TokenIssuer::looks_like_ours(token) {
                return match service_account_user(issuer, token, objects, now) {
                    Ok(user) => Outcome::User(user),
                    Err(why) => Outcome::Refused(why),
                };
            }
        }
        Outcome::Refused("unknown bearer token".into())
    }
}

fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn with_authenticated(mut user: UserInfo) -> UserInfo {
    if !user.in_group(AUTHENTICATED_GROUP) {
        user.groups.push(AUTHENTICATED_GROUP.into());
    }
    user
}

/// Reads a static token file (`--token-auth-file`): CSV lines `token,user,uid` with an
/// optional fourth column of comma-separated groups, quoted.
pub fn read_token_file(path: &Path) -> Result<HashMap<String, UserInfo>, TokenFileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read { path: shown.clone(), source })?;
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields = csv_fields(line);
        let [token, user, uid, rest @ ..] = fields.as_slice() else {
            return Err(TokenFileError::Line { path: shown, line: i + 1 });
        };
        if token.is_empty() || user.is_empty() {
            return Err(TokenFileError::Line { path: shown, line: i + 1 });
        }
        let groups = rest.first().map(|g| g.split(',').map(str::trim).filter(|g| !g.is_empty()).map(str::to_string).collect()).unwrap_or_default();
        out.insert(token.clone(), UserInfo { name: user.clone(), uid: uid.clone(), groups, extra: BTreeMap::new() });
    }
    Ok(out)
}

/// Splits a CSV line, honouring double quotes (`""` is a quote inside quotes).
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    fields.push(field);
    fields.into_iter().map(|f| f.trim().to_string()).collect()
}

/// `abcdef.0123456789abcdef` → (`abcdef`, `0123456789abcdef`).
pub fn split_bootstrap_token(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}

fn secret_field(secret: &Value, key: &str) -> Option<String> {
    let encoded = secret.pointer(&format!("/data/{key}"))?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
    String::from_utf8(bytes).ok()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The user of a bootstrap token, checked against its Secret as Kubernetes' bootstrap
/// token authenticator does.
fn bootstrap_user(id: &str, secret: &str, objects: &dyn Objects, now: i64) -> Result<UserInfo, String> {
    let name = format!("bootstrap-token-{id}");
    let obj = objects.core_object("secrets", "kube-system", &name).ok_or_else(|| format!("no bootstrap token secret {name}"))?;
    if obj.get("type").and_then(Value::as_str) != Some("bootstrap.kubernetes.io/token") {
        return Err(format!("secret {name} is not of type bootstrap.kubernetes.io/token"));
    }
    if obj.pointer("/metadata/deletionTimestamp").is_some() {
        return Err(format!("secret {name} is being deleted"));
    }
    if secret_field(&obj, "token-id").as_deref() != Some(id) {
        return Err(format!("secret {name} has a different token-id"));
    }
    let stored = secret_field(&obj, "token-secret").unwrap_or_default();
    if !constant_time_eq(stored.as_bytes(), secret.as_bytes()) {
        return Err(format!("wrong secret for bootstrap token {id}"));
    }
    if secret_field(&obj, "usage-bootstrap-authentication").as_deref() != Some("true") {
        return Err(format!("bootstrap token {id} is not for authentication"));
    }
    if let Some(expiration) = secret_field(&obj, "expiration") {
        let expires = chrono::DateTime::parse_from_rfc3339(expiration.trim()).map_err(|_| format!("bootstrap token {id} has an unreadable expiration"))?;
        if expires.timestamp() <= now {
            return Err(format!("bootstrap token {id} expired at {expiration}"));
        }
    }
    let mut groups = vec!["system:bootstrappers".to_string()];
    for g in secret_field(&obj, "auth-extra-groups").unwrap_or_default().split(',').map(str::trim).filter(|g| !g.is_empty()) {
        if !g.starts_with("system:bootstrappers:") {
            return Err(format!("bootstrap token {id} names group {g}, which is not under system:bootstrappers:"));
        }
        groups.push(g.to_string());
    }
    groups.push(AUTHENTICATED_GROUP.into());
    Ok(UserInfo { name: format!("system:bootstrap:{id}"), uid: String::new(), groups, extra: BTreeMap::new() })
}

/// The user of a ServiceAccount JWT: the signature and times from the issuer, then the
/// account (and the pod or secret the token is bound to) must still exist with the UIDs
/// the token names, so deleting a pod revokes its tokens.
fn service_account_user(issuer: &TokenIssuer, token: &str, objects: &dyn Objects, now: i64) -> Result<UserInfo, String> {
    let claims = issuer.verify(token, now).map_err(|e| e.to_string())?;
    let k = &claims.kubernetes;
    let (ns, name) = serviceaccount::split_user_name(&claims.sub).ok_or("the token's subject is not a service account")?;
    if ns != k.namespace || name != k.serviceaccount.name {
        return Err("the token's subject and kubernetes.io claims disagree".into());
    }
    let uid_of = |obj: &Value| obj.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default().to_string();
    let sa = objects.core_object("serviceaccounts", ns, name).ok_or_else(|| format!("service account {ns}/{name} does not exist"))?;
    if uid_of(&sa) != k.serviceaccount.uid {
        return Err(format!("service account {ns}/{name} was recreated since the token was issued"));
    }
    let mut extra = BTreeMap::new();
    if let Some(pod) = &k.pod {
        let obj = objects.core_object("pods", ns, &pod.name).ok_or_else(|| format!("the pod {ns}/{} the token is bound to does not exist", pod.name))?;
        if uid_of(&obj) != pod.uid {
            return Err(format!("the pod {ns}/{} the token is bound to was recreated", pod.name));
        }
        extra.insert("authentication.kubernetes.io/pod-name".to_string(), vec![pod.name.clone()]);
        extra.insert("authentication.kubernetes.io/pod-uid".to_string(), vec![pod.uid.clone()]);
    }
    if let Some(secret) = &k.secret {
        let obj = objects.core_object("secrets", ns, &secret.name).ok_or_else(|| format!("the secret {ns}/{} the token is bound to does not exist", secret.name))?;
        if uid_of(&obj) != secret.uid {
            return Err(format!("the secret {ns}/{} the token is bound to was recreated", secret.name));
        }
    }
    if let Some(node) = &k.node {
        extra.insert("authentication.kubernetes.io/node-name".to_string(), vec![node.name.clone()]);
        extra.insert("authentication.kubernetes.io/node-uid".to_string(), vec![node.uid.clone()]);
    }
    extra.insert("authentication.kubernetes.io/credential-id".to_string(), vec![format!("JTI={}", claims.jti)]);
    Ok(UserInfo {
        name: claims.sub.clone(),
        uid: k.serviceaccount.uid.clone(),
        groups: vec![SERVICE_ACCOUNTS_GROUP.into(), format!("{SERVICE_ACCOUNTS_GROUP}:{ns}"), AUTHENTICATED_GROUP.into()],
        extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Default)]
    struct Map(HashMap<String, Arc<Value>>);

    impl Objects for Map {
        fn core_object(&self, resource: &str, namespace: &str, name: &str) -> Option<Arc<Value>> {
            self.0.get(&format!("{resource}/{namespace}/{name}")).cloned()
        }
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn bootstrap_secret(expiration: &str) -> Map {
        let mut m = Map::default();
        m.0.insert(
            "secrets/kube-system/bootstrap-token-abcdef".into(),
            Arc::new(json!({
                "metadata": {"name": "bootstrap-token-abcdef", "namespace": "kube-system"},
                "type": "bootstrap.kubernetes.io/token",
                "data": {"token-id": b64("abcdef"), "token-secret": b64("0123456789abcdef"), "expiration": b64(expiration),
                         "usage-bootstrap-authentication": b64("true"), "auth-extra-groups": b64("system:bootstrappers:rkube:default-node-token")},
            })),
        );
        m
    }

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn bootstrap_tokens_are_checked_against_their_secret_and_expiry() {
        let a = Authenticator::default();
        let fresh = bootstrap_secret("2099-01-01T00:00:00Z");
        match a.authenticate(None, Some("Bearer abcdef.0123456789abcdef"), &fresh, NOW) {
            Outcome::User(u) => {
                assert_eq!(u.name, "system:bootstrap:abcdef");
                assert_eq!(u.groups, ["system:bootstrappers", "system:bootstrappers:rkube:default-node-token", "system:authenticated"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(a.authenticate(None, Some("Bearer abcdef.0123456789abcdee"), &fresh, NOW), Outcome::Refused(_)));
        let expired = bootstrap_secret("2020-01-01T00:00:00Z");
        match a.authenticate(None, Some("Bearer abcdef.0123456789abcdef"), &expired, NOW) {
            Outcome::Refused(why) => assert!(why.contains("expired"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(a.authenticate(None, Some("Bearer abcdef.0123456789abcdef"), &Map::default(), NOW), Outcome::Refused(_)));
    }

    #[test]
    fn static_tokens_certificates_and_no_credentials() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("tokens.csv");
        std::fs::write(&file, "# comment\ns3cret,jane,42,\"dev,qa\"\nother,bob,7\n").expect("write");
        let tokens = read_token_file(&file).expect("parse");
        let a = Authenticator::new(tokens, None);
        match a.authenticate(None, Some("Bearer s3cret"), &Map::default(), NOW) {
            Outcome::User(u) => assert_eq!((u.name.as_str(), u.uid.as_str(), u.groups.clone()), ("jane", "42", vec!["dev".into(), "qa".into(), "system:authenticated".into()])),
            other => panic!("{other:?}"),
        }
        assert!(matches!(a.authenticate(None, Some("Bearer nope"), &Map::default(), NOW), Outcome::Refused(_)));
        assert!(matches!(a.authenticate(None, Some("Basic Zm9vOmJhcg=="), &Map::default(), NOW), Outcome::Refused(_)));
        assert_eq!(a.authenticate(None, None, &Map::default(), NOW), Outcome::Anonymous);
        let cert_user = UserInfo { name: "admin".into(), groups: vec!["system:masters".into()], ..Default::default() };
        match a.authenticate(Some(&cert_user), None, &Map::default(), NOW) {
            Outcome::User(u) => assert_eq!(u.groups, ["system:masters", "system:authenticated"]),
            other => panic!("{other:?}"),
        }
        std::fs::write(&file, "onlytoken\n").expect("write");
        assert!(read_token_file(&file).expect_err("bad line").to_string().contains(":1:"));
    }

    #[test]
    fn service_account_tokens_die_with_their_account_or_pod() {
        let dir = tempfile::tempdir().expect("tmp");
        let issuer = Arc::new(TokenIssuer::load_or_create(&dir.path().join("sa.key"), serviceaccount::DEFAULT_ISSUER).expect("issuer"));
        let a = Authenticator::new(HashMap::new(), Some(issuer.clone()));
        let claims = serviceaccount::Claims {
            iss: serviceaccount::DEFAULT_ISSUER.into(),
            sub: serviceaccount::user_name("ns1", "app"),
            aud: vec![serviceaccount::DEFAULT_ISSUER.into()],
            exp: NOW + 600,
            iat: NOW,
            nbf: NOW,
            jti: "j1".into(),
            kubernetes: serviceaccount::KubernetesClaims {
                namespace: "ns1".into(),
                serviceaccount: serviceaccount::ObjectClaim { name: "app".into(), uid: "sa-uid".into() },
                pod: Some(serviceaccount::ObjectClaim { name: "web".into(), uid: "pod-uid".into() }),
                ..Default::default()
            },
        };
        let header = format!("Bearer {}", issuer.sign(&claims).expect("sign"));
        let mut m = Map::default();
        m.0.insert("serviceaccounts/ns1/app".into(), Arc::new(json!({"metadata": {"uid": "sa-uid"}})));
        m.0.insert("pods/ns1/web".into(), Arc::new(json!({"metadata": {"uid": "pod-uid"}})));
        match a.authenticate(None, Some(&header), &m, NOW) {
            Outcome::User(u) => {
                assert_eq!(u.name, "system:serviceaccount:ns1:app");
                assert_eq!(u.groups, ["system:serviceaccounts", "system:serviceaccounts:ns1", "system:authenticated"]);
                assert_eq!(u.extra["authentication.kubernetes.io/pod-name"], ["web"]);
            }
            other => panic!("{other:?}"),
        }
        m.0.insert("pods/ns1/web".into(), Arc::new(json!({"metadata": {"uid": "another-pod"}})));
        assert!(matches!(a.authenticate(None, Some(&header), &m, NOW), Outcome::Refused(_)));
        m.0.remove("pods/ns1/web");
        assert!(matches!(a.authenticate(None, Some(&header), &m, NOW), Outcome::Refused(_)));
    }
}
