//! Who is asking and what they may do: the authenticated user of a request, the
//! attributes an authorizer decides on (as Kubernetes' `authorizer.Attributes`), and the
//! decisions authorizers return.

pub mod authn;
pub mod filter;
pub mod node;
pub mod policy;
pub mod rbac;
pub mod request;
pub mod reviews;
pub mod serviceaccount;

use std::collections::BTreeMap;

/// Groups every authenticated user is in, and the anonymous user's names.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";
pub const UNAUTHENTICATED_GROUP: &str = "system:unauthenticated";
pub const ANONYMOUS_USER: &str = "system:anonymous";
/// Members of this group may do anything, whatever RBAC says (as in Kubernetes).
pub const MASTERS_GROUP: &str = "system:masters";
pub const NODES_GROUP: &str = "system:nodes";
pub const NODE_USER_PREFIX: &str = "system:node:";
pub const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";
pub const SERVICE_ACCOUNTS_GROUP: &str = "system:serviceaccounts";

/// An authenticated user (Kubernetes' `user.Info`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

/// What a request wants to do, as authorizers see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    pub user: UserInfo,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`,
    /// or for non-resource requests the lower-case HTTP method (`get`, `post`…).
    pub verb: String,
    /// Whether this is a request for an API resource (`/api`, `/apis/...` with a
    /// resource) rather than a non-resource URL such as `/healthz`.
    pub resource_request: bool,
    pub namespace: String,
    pub api_group: String,
    pub api_version: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
    /// The request path (for non-resource requests).
    pub path: String,
}

/// An authorizer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Explicitly refused; later authorizers are not asked. The string is the reason.
    Deny(String),
    /// This authorizer has nothing to say; the next one decides. The string says why,
    /// for the message if no authorizer allows.
    NoOpinion(String),
}
