//! The create-only review APIs and the TokenRequest subresource:
//! `SelfSubjectAccessReview` (`kubectl auth can-i`), `SelfSubjectRulesReview`
//! (`kubectl auth can-i --list`), `SubjectAccessReview` and `LocalSubjectAccessReview`
//! (what webhooks and kubelets ask), `SelfSubjectReview` (`kubectl auth whoami`),
//! `TokenReview`, and `serviceaccounts/<name>/token` (`kubectl create token`, and the
//! kubelet's projected tokens).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::authn::Outcome;
use super::serviceaccount::{self, Claims, KubernetesClaims, ObjectClaim};
use super::{Attributes, Decision, UserInfo, NODES_GROUP};
use crate::errors::{ApiError, Cause};
use crate::registry;
use crate::server::ApiServer;

/// Tokens live at least this long (Kubernetes refuses shorter requests).
const MIN_TOKEN_SECONDS: i64 = 600;
/// A TokenRequest without `expirationSeconds` gets an hour.
const DEFAULT_TOKEN_SECONDS: i64 = 3600;
/// And at most this long.
const MAX_TOKEN_SECONDS: i64 = 48 * 3600;

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

fn user_json(u: &UserInfo) -> Value {
    let mut out = json!({"username": u.name, "groups": u.groups});
    if !u.uid.is_empty() {
        out["uid"] = json!(u.uid);
    }
    if !u.extra.is_empty() {
        out["extra"] = json!(u.extra);
    }
    out
}

fn user_from_spec(spec: &Value) -> UserInfo {
    let strings = |p: &str| spec.pointer(p).and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect()).unwrap_or_default();
    let mut extra = BTreeMap::new();
    if let Some(map) = spec.get("extra").and_then(Value::as_object) {
        for (k, v) in map {
            let vals = v.as_array().map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect()).unwrap_or_default();
            extra.insert(k.clone(), vals);
        }
    }
    UserInfo { name: str_at(spec, "/user").to_string(), uid: str_at(spec, "/uid").to_string(), groups: strings("/groups"), extra }
}

/// The attributes an access review's spec asks about.
fn review_attributes(spec: &Value, user: UserInfo, kind: &str) -> Result<Attributes, ApiError> {
    let invalid = |field: &str, detail: &str| ApiError::invalid_kind(kind, "", vec![Cause::invalid(field, "", detail)]);
    match (spec.get("resourceAttributes"), spec.get("nonResourceAttributes")) {
        (Some(r), None) => Ok(Attributes {
            user,
            verb: str_at(r, "/verb").to_string(),
            resource_request: true,
            namespace: str_at(r, "/namespace").to_string(),
            api_group: str_at(r, "/group").to_string(),
            api_version: str_at(r, "/version").to_string(),
            resource: str_at(r, "/resource").to_string(),
            subresource: str_at(r, "/subresource").to_string(),
            name: str_at(r, "/name").to_string(),
            path: String::new(),
        }),
        (None, Some(n)) => Ok(Attributes { user, verb: str_at(n, "/verb").to_string(), path: str_at(n, "/path").to_string(), ..Default::default() }),
        (Some(_), Some(_)) => Err(invalid("spec.resourceAttributes", "cannot be specified in combination with nonResourceAttributes")),
        (None, None) => Err(invalid("spec.resourceAttributes", "exactly one of nonResourceAttributes or resourceAttributes must be specified")),
    }
}

fn access_status(decision: Decision) -> Value {
    match decision {
        Decision::Allow => json!({"allowed": true}),
        Decision::Deny(reason) => json!({"allowed": false, "denied": true, "reason": reason}),
        Decision::NoOpinion(reason) if reason.is_empty() => json!({"allowed": false}),
        Decision::NoOpinion(reason) => json!({"allowed": false, "reason": reason}),
    }
}

/// The review object returned: the request with `status` filled in.
fn answer(mut body: Value, status: Value) -> Value {
    if let Some(obj) = body.as_object_mut() {
        let meta = obj.entry("metadata").or_insert_with(|| json!({}));
        if let Some(m) = meta.as_object_mut() {
            m.entry("creationTimestamp").or_insert(Value::Null);
        }
        obj.insert("status".into(), status);
    }
    body
}

impl ApiServer {
    /// Serves a POST of one of the review kinds (`resource` in `group`) by `requester`.
    pub fn serve_review(&self, group: &str, resource: &str, namespace: Option<&str>, requester: &UserInfo, body: Value) -> Result<Value, ApiError> {
        let kind = body.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
        let spec = body.get("spec").cloned().unwrap_or(Value::Null);
        match (group, resource) {
            ("authorization.k8s.io", "selfsubjectaccessreviews") => {
                let attrs = review_attributes(&spec, requester.clone(), &kind)?;
                Ok(answer(body, access_status(self.authorize(&attrs))))
            }
            ("authorization.k8s.io", "subjectaccessreviews") => {
                let attrs = review_attributes(&spec, user_from_spec(&spec), &kind)?;
                Ok(answer(body, access_status(self.authorize(&attrs))))
            }
            ("authorization.k8s.io", "localsubjectaccessreviews") => {
                let ns = namespace.unwrap_or_default();
                let attrs = review_attributes(&spec, user_from_spec(&spec), &kind)?;
                if !attrs.resource_request || attrs.namespace != ns {
                    return Err(ApiError::invalid_kind(&kind, "", vec![Cause::invalid("spec.resourceAttributes.namespace", &attrs.namespace, "must match metadata.namespace")]));
                }
                Ok(answer(body, access_status(self.authorize(&attrs))))
            }
            ("authorization.k8s.io", "selfsubjectrulesreviews") => {
                let ns = str_at(&spec, "/namespace");
                let mut resource_rules = Vec::new();
                let mut non_resource_rules = Vec::new();
                for rule in self.rules_for(requester, ns) {
                    if rule.get("nonResourceURLs").is_some_and(|u| u.as_array().is_some_and(|a| !a.is_empty())) {
                        non_resource_rules.push(json!({"verbs": rule["verbs"], "nonResourceURLs": rule["nonResourceURLs"]}));
                    } else {
                        let mut r = Map::new();
                        for key in ["verbs", "apiGroups", "resources", "resourceNames"] {
                            if let Some(v) = rule.get(key) {
                                r.insert(key.into(), v.clone());
                            }
                        }
                        resource_rules.push(Value::Object(r));
                    }
                }
                // Members of system:masters and nodes are allowed by authorizers that
                // cannot list rules; the answer says it is incomplete then.
                let incomplete = requester.in_group(super::MASTERS_GROUP) || requester.in_group(NODES_GROUP);
                Ok(answer(body, json!({"resourceRules": resource_rules, "nonResourceRules": non_resource_rules, "incomplete": incomplete})))
            }
            ("authentication.k8s.io", "selfsubjectreviews") => Ok(answer(body, json!({"userInfo": user_json(requester)}))),
            ("authentication.k8s.io", "tokenreviews") => {
                let token = str_at(&spec, "/token");
                let header = format!("Bearer {token}");
                let status = match self.security.authenticator.authenticate(None, Some(&header), self, chrono::Utc::now().timestamp()) {
                    Outcome::User(u) => json!({"authenticated": true, "user": user_json(&u), "audiences": spec.get("audiences").cloned().unwrap_or(json!([]))}),
                    Outcome::Refused(why) => json!({"authenticated": false, "error": why}),
                    Outcome::Anonymous => json!({"authenticated": false}),
                };
                Ok(answer(body, status))
            }
            _ => Err(ApiError::method_not_allowed(format!("{resource}.{group} can only be created"))),
        }
    }

    /// `POST serviceaccounts/<name>/token`: a signed token for the account, bound to a
    /// pod or secret if the request names one.
    pub fn serve_token_request(&self, namespace: &str, name: &str, requester: &UserInfo, body: Value) -> Result<Value, ApiError> {
        let tokens = self.security.tokens.clone().ok_or_else(|| ApiError::service_unavailable("this apiserver has no service account signing key"))?;
        let sa_res = registry::lookup("", "v1", "serviceaccounts").ok_or_else(|| ApiError::internal("serviceaccounts not registered"))?;
        let sa = self.cache(sa_res)?.get(&sa_res.key(Some(namespace), name)).ok_or_else(|| ApiError::not_found(sa_res, name))?;
        let spec = body.get("spec").cloned().unwrap_or(Value::Null);
        let invalid = |field: &str, value: &str, detail: &str| ApiError::invalid_kind("TokenRequest", name, vec![Cause::invalid(field, value, detail)]);
        let seconds = spec.get("expirationSeconds").and_then(Value::as_i64).unwrap_or(DEFAULT_TOKEN_SECONDS);
        if seconds < MIN_TOKEN_SECONDS {
            return Err(invalid("spec.expirationSeconds", &seconds.to_string(), "may not specify a duration less than 10 minutes"));
        }
        let seconds = seconds.min(MAX_TOKEN_SECONDS);
        let audiences: Vec<String> = match spec.get("audiences").and_then(Value::as_array) {
            Some(a) if !a.is_empty() => a.iter().filter_map(Value::as_str).map(str::to_string).collect(),
            _ => tokens.api_audiences.clone(),
        };
        let mut claims = KubernetesClaims {
            namespace: namespace.into(),
            serviceaccount: ObjectClaim { name: name.into(), uid: str_at(&sa, "/metadata/uid").into() },
            ..Default::default()
        };
        let bound = spec.get("boundObjectRef").filter(|b| !b.is_null());
        let requester_node = requester.in_group(NODES_GROUP).then(|| requester.name.strip_prefix(super::NODE_USER_PREFIX)).flatten();
        if let Some(r) = bound {
            let kind = str_at(r, "/kind");
            let bound_name = str_at(r, "/name");
            let plural = match kind {
                "Pod" => "pods",
                "Secret" => "secrets",
                other => return Err(invalid("spec.boundObjectRef.kind", other, "supported values: \"Pod\", \"Secret\"")),
            };
            let res = registry::lookup("", "v1", plural).ok_or_else(|| ApiError::internal("not registered"))?;
            let obj = self.cache(res)?.get(&res.key(Some(namespace), bound_name)).ok_or_else(|| ApiError::not_found(res, bound_name))?;
            let uid = str_at(&obj, "/metadata/uid");
            let asked_uid = str_at(r, "/uid");
            if !asked_uid.is_empty() && asked_uid != uid {
                return Err(ApiError::conflict(res, bound_name, &format!("the UID in the bound object reference ({asked_uid}) does not match the UID in record. The object might have been deleted and then recreated")));
            }
            let claim = ObjectClaim { name: bound_name.into(), uid: uid.into() };
            if kind == "Pod" {
                let pod_sa = str_at(&obj, "/spec/serviceAccountName");
                if pod_sa != name {
                    return Err(ApiError::bad_request(format!("cannot bind token for serviceaccount \"{name}\" to pod running with different serviceaccount name.")));
                }
                let node = str_at(&obj, "/spec/nodeName");
                if let Some(own) = requester_node {
                    if node != own {
                        return Err(ApiError::forbidden_request("", "serviceaccounts", name, &format!("node \"{own}\" can only request tokens for pods bound to itself")));
                    }
                }
                if !node.is_empty() {
                    let node_res = registry::lookup("", "v1", "nodes").ok_or_else(|| ApiError::internal("not registered"))?;
                    let node_uid = self.cache(node_res)?.get(&node_res.key(None, node)).map(|n| str_at(&n, "/metadata/uid").to_string()).unwrap_or_default();
                    claims.node = Some(ObjectClaim { name: node.into(), uid: node_uid });
                }
                claims.pod = Some(claim);
            } else {
                claims.secret = Some(claim);
            }
        } else if let Some(own) = requester_node {
            return Err(ApiError::forbidden_request("", "serviceaccounts", name, &format!("node \"{own}\" can only request tokens bound to pods")));
        }
        let now = chrono::Utc::now();
        let claims = Claims {
            iss: tokens.issuer.clone(),
            sub: serviceaccount::user_name(namespace, name),
            aud: audiences.clone(),
            exp: now.timestamp() + seconds,
            iat: now.timestamp(),
            nbf: now.timestamp(),
            jti: uuid::Uuid::new_v4().to_string(),
            kubernetes: claims,
        };
        let token = tokens.sign(&claims).map_err(ApiError::internal)?;
        let expires = (now + chrono::Duration::seconds(seconds)).format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let mut out = json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": Value::Null},
            "spec": {"audiences": audiences, "expirationSeconds": seconds, "boundObjectRef": bound.cloned().unwrap_or(Value::Null)},
            "status": {"token": token, "expirationTimestamp": expires},
        });
        if bound.is_none() {
            if let Some(s) = out.get_mut("spec").and_then(Value::as_object_mut) {
                s.remove("boundObjectRef");
            }
        }
        Ok(out)
    }
}
