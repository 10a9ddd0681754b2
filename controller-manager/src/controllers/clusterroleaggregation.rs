//! The ClusterRole aggregation controller (Kubernetes' `clusterrole-aggregation`): every
//! ClusterRole with an `aggregationRule` gets as its `rules` the union of the rules of the
//! other ClusterRoles its `clusterRoleSelectors` match (so that `admin`, `edit` and `view`
//! grow with the roles labelled `aggregate-to-*`). The union is
//! [`apimachinery::rbac::aggregate_rules`], shared with the apiserver's bootstrap policy;
//! the rules are written only when they differ. A change to any ClusterRole requeues the
//! aggregating roles that select it (before and after the change).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use apimachinery::rbac::{aggregate_rules, normalize_rules, selects, AggregationError};

use super::{Context, ControllerError};

const CONTROLLER: &str = "clusterrole-aggregation";

/// Why a ClusterRole's aggregation could not be written (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum ClusterRoleAggregationError {
    #[error("ClusterRole {name} could not be encoded as JSON")]
    Encode {
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("updating the rules of ClusterRole {name}")]
    Update {
        name: String,
        #[source]
        source: kube::Error,
    },
}

struct State {
    client: kube::Client,
    roles: Store<ClusterRole>,
}

/// Starts the ClusterRole aggregation controller.
pub fn start(ctx: Context, shutdown: CancellationToken) -> BoxFuture<'static, Result<(), ControllerError>> {
    run(ctx, shutdown).boxed()
}

/// The name and labels of a ClusterRole, all that selection looks at.
fn identity(role: &ClusterRole) -> Value {
    json!({"metadata": {"name": role.name_any(), "labels": role.labels()}})
}

/// The aggregating ClusterRoles in `store` that select any of `changed` (name and
/// labels, see [`identity`]); a role never selects itself.
fn selecting(store: &Store<ClusterRole>, changed: &[Value]) -> Vec<ObjectRef<ClusterRole>> {
    store
        .state()
        .iter()
        .filter(|r| r.aggregation_rule.is_some())
        .filter(|r| serde_json::to_value(r.as_ref()).is_ok_and(|v| changed.iter().any(|c| selects(&v, c))))
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}

/// Every aggregating ClusterRole in `store`.
fn aggregating(store: &Store<ClusterRole>) -> Vec<ObjectRef<ClusterRole>> {
    store.state().iter().filter(|r| r.aggregation_rule.is_some()).map(|r| ObjectRef::from_obj(r.as_ref())).collect()
}

async fn run(ctx: Context, shutdown: CancellationToken) -> Result<(), ControllerError> {
    let client = ctx.client.clone();
    let (reader, writer) = reflector::store::<ClusterRole>();
    let events = reflector::reflector(writer, watcher(Api::<ClusterRole>::all(client.clone()), watcher::Config::default()).default_backoff());
    // The reflector has applied each event to the store before it reaches here.
    let store = reader.clone();
    // The labels each role had when last seen, so that a role that stops matching a
    // selector requeues the role that selected it.
    let mut last_seen: HashMap<String, Value> = HashMap::new();
    let queue = events.flat_map(move |event| {
        let mut changed = |role: &ClusterRole, deleted: bool| {
            let now = identity(role);
            let before = if deleted { last_seen.remove(&role.name_any()) } else { last_seen.insert(role.name_any(), now.clone()) };
            let mut refs = if deleted { Vec::new() } else { vec![ObjectRef::from_obj(role)] };
            refs.extend(selecting(&store, &[Some(now), before].into_iter().flatten().collect::<Vec<_>>()));
            refs
        };
        let refs: Result<Vec<ObjectRef<ClusterRole>>, watcher::Error> = match event {
            Ok(watcher::Event::Apply(role)) | Ok(watcher::Event::InitApply(role)) => Ok(changed(&role, false)),
            Ok(watcher::Event::Delete(role)) => Ok(changed(&role, true)),
            // After a (re)list, what was missed while disconnected is unknown: look at
            // every aggregating role again, against the complete store.
            Ok(watcher::Event::InitDone) => Ok(aggregating(&store)),
            Ok(watcher::Event::Init) => Ok(Vec::new()),
            Err(e) => Err(e),
        };
        futures::stream::iter(match refs {
            Ok(refs) => refs.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => vec![Err(e)],
        })
    });
    let state = Arc::new(State { client, roles: reader.clone() });
    let applier = controller::applier(
        |role, st| Box::pin(reconcile(role, st)),
        |role: Arc<ClusterRole>, err: &ClusterRoleAggregationError, _| {
            warn!(controller = CONTROLLER, object = %role.name_any(), error = %err, "sync failed");
            Action::requeue(Duration::from_secs(2))
        },
        state,
        reader,
        queue,
        controller::Config::default(),
    );
    super::drive(CONTROLLER, applier, &shutdown).await
}

/// What the aggregation asks of `role` given every ClusterRole: `Ok(Some(rules))` when
/// its `rules` must become `rules`, `Ok(None)` when it has no aggregation rule or its
/// rules are already (semantically) those, an error when its aggregation rule is invalid.
pub fn rules_update(role: &Value, all: &[Value]) -> Result<Option<Vec<Value>>, AggregationError> {
    let Some(desired) = aggregate_rules(role, all.iter()) else { return Ok(None) };
    let desired = desired?;
    if normalize_rules(role.get("rules")) == desired {
        return Ok(None);
    }
    Ok(Some(desired))
}

async fn reconcile(role: Arc<ClusterRole>, st: Arc<State>) -> Result<Action, ClusterRoleAggregationError> {
    let name = role.name_any();
    let span = info_span!("sync", controller = CONTROLLER, object = %name);
    sync(role, st, name).instrument(span).await
}

async fn sync(role: Arc<ClusterRole>, st: Arc<State>, name: String) -> Result<Action, ClusterRoleAggregationError> {
    if role.aggregation_rule.is_none() {
        return Ok(Action::await_change());
    }
    let encode = |r: &ClusterRole| serde_json::to_value(r).map_err(|source| ClusterRoleAggregationError::Encode { name: r.name_any(), source });
    let own = encode(&role)?;
    let all = st.roles.state().iter().map(|r| encode(r)).collect::<Result<Vec<_>, _>>()?;
    let rules = match rules_update(&own, &all) {
        Ok(Some(rules)) => rules,
        Ok(None) => return Ok(Action::await_change()),
        Err(e) => {
            // Kubernetes leaves the role as it is; a fix to the role requeues it.
            warn!(error = %e, "invalid aggregation rule");
            return Ok(Action::await_change());
        }
    };
    // The resourceVersion makes the write conditional on the role read from the cache.
    let patch = json!({"metadata": {"resourceVersion": role.resource_version()}, "rules": rules});
    let api: Api<ClusterRole> = Api::all(st.client.clone());
    match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => {
            info!(rules = rules.len(), "updated aggregated rules");
            Ok(Action::await_change())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => {
            debug!("role gone");
            Ok(Action::await_change())
        }
        Err(source) => Err(ClusterRoleAggregationError::Update { name, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(name: &str, labels: Value, rules: Value) -> Value {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name, "labels": labels}, "rules": rules})
    }

    fn view(rules: Value) -> Value {
        let mut v = role("view", json!({}), rules);
        v["aggregationRule"] = json!({"clusterRoleSelectors": [{"matchLabels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}}]});
        v
    }

    #[test]
    fn aggregation_result_and_write_only_on_change() {
        let pods = json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]});
        let widgets = json!({"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get"]});
        let a = role("a-view", json!({"rbac.authorization.k8s.io/aggregate-to-view": "true"}), json!([pods]));
        let w = role("widgets-view", json!({"rbac.authorization.k8s.io/aggregate-to-view": "true"}), json!([widgets, pods]));
        let unrelated = role("secrets-reader", json!({}), json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["secrets"]}]));
        let empty = view(json!(null));
        let all = vec![a.clone(), w.clone(), unrelated.clone(), empty.clone()];
        let want = vec![pods.clone(), json!({"verbs": ["get"], "apiGroups": ["example.com"], "resources": ["widgets"]})];
        assert_eq!(rules_update(&empty, &all).ok().flatten(), Some(want.clone()));
        // Already aggregated (in another key order, with empty lists spelled out): no write.
        let done = view(json!([
            {"resources": ["pods"], "apiGroups": [""], "verbs": ["get", "list"], "resourceNames": []},
            {"verbs": ["get"], "apiGroups": ["example.com"], "resources": ["widgets"]},
        ]));
        assert_eq!(rules_update(&done, &all).ok().flatten(), None);
        // A role without an aggregation rule is never touched.
        assert_eq!(rules_update(&unrelated, &all).ok().flatten(), None);
        // A label removed: the rules shrink.
        let w2 = role("widgets-view", json!({}), json!([widgets]));
        assert_eq!(rules_update(&done, &[a, w2, unrelated, done.clone()]).ok().flatten(), Some(vec![pods]));
    }

    #[test]
    fn a_change_requeues_the_roles_that_selected_it_before_or_after() {
        let typed = |v: Value| serde_json::from_value::<ClusterRole>(v).unwrap_or_default();
        let (store, mut writer) = reflector::store::<ClusterRole>();
        for r in [view(json!([])), role("other", json!({}), json!([]))] {
            writer.apply_watcher_event(&watcher::Event::Apply(typed(r)));
        }
        let names = |refs: Vec<ObjectRef<ClusterRole>>| refs.into_iter().map(|r| r.name).collect::<Vec<_>>();
        let labelled = typed(role("w", json!({"rbac.authorization.k8s.io/aggregate-to-view": "true"}), json!([])));
        let unlabelled = typed(role("w", json!({}), json!([])));
        assert_eq!(names(selecting(&store, &[identity(&labelled)])), vec!["view"]);
        assert!(selecting(&store, &[identity(&unlabelled)]).is_empty());
        // The label removed: the old labels still select it.
        assert_eq!(names(selecting(&store, &[identity(&unlabelled), identity(&labelled)])), vec!["view"]);
        assert_eq!(names(aggregating(&store)), vec!["view"]);
    }

    #[test]
    fn invalid_aggregation_rule_is_an_error() {
        let mut bad = role("bad", json!({}), json!([]));
        bad["aggregationRule"] = json!({"clusterRoleSelectors": [{"matchExpressions": [{"key": "x", "operator": "Sometimes"}]}]});
        assert!(rules_update(&bad, &[]).is_err());
    }
}
