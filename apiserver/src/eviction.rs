//! The `pods/eviction` subresource's PodDisruptionBudget check (what `kubectl drain`
//! relies on), as Kubernetes' eviction REST does it: a pod covered by one budget is
//! evicted only while the budget allows a disruption, and each admitted eviction takes
//! one from `status.disruptionsAllowed` and is recorded in `status.disruptedPods` until
//! the disruption controller sees the pod go. A refusal is 429 TooManyRequests (kubectl
//! retries it); a pod under two budgets cannot be evicted at all.

use std::collections::BTreeMap;

use apimachinery::labels::Selector;
use serde_json::{json, Value};

use crate::errors::ApiError;
use crate::handlers::Target;
use crate::registry::{self, ResourceInfo};
use crate::server::ApiServer;
use crate::storage::RangeOptions;

/// Kubernetes' cap on evictions admitted but not yet seen by the disruption controller.
const MAX_DISRUPTED_PODS: usize = 2000;

const REFUSED: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

/// Whether evicting `pod` may go ahead; takes one disruption from the pod's budget when
/// it counts against one (not with `dry_run`).
pub async fn admit(api: &ApiServer, pod: &Value, dry_run: bool) -> Result<(), ApiError> {
    // Pods that are done, not started, or already going count against no budget.
    let phase = pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or("Pending");
    if matches!(phase, "Succeeded" | "Failed" | "Pending") || pod.pointer("/metadata/deletionTimestamp").is_some() {
        return Ok(());
    }
    let namespace = pod.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default();
    let pod_name = pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
    let labels: BTreeMap<String, String> = pod
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default();
    let budgets = budgets_for(api, namespace, &labels).await?;
    let budget = match budgets.as_slice() {
        [] => return Ok(()),
        [one] => one,
        _ => return Err(ApiError::internal("This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.")),
    };
    let ready = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
    let res = registry::lookup("policy", "v1", "poddisruptionbudgets").ok_or_else(|| ApiError::internal("poddisruptionbudgets not registered"))?;
    let budget_name = budget.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
    let target = Target { res, namespace: Some(namespace.to_string()), name: Some(budget_name.clone()), sub: Some("status".into()) };
    api.guaranteed_update(&target, dry_run, |current, _| {
        let status = |field: &str| current.pointer(&format!("/status/{field}")).and_then(Value::as_i64).unwrap_or(0);
        if !ready {
            // A pod that is not Ready takes nothing from a budget that is met (or from
            // any with `unhealthyPodEvictionPolicy: AlwaysAllow`).
            let always = current.pointer("/spec/unhealthyPodEvictionPolicy").and_then(Value::as_str) == Some("AlwaysAllow");
            if always || (status("currentHealthy") >= status("desiredHealthy") && status("desiredHealthy") > 0) {
                return Ok(current.clone());
            }
        }
        take_disruption(res, current, &budget_name, &pod_name)
    })
    .await?;
    Ok(())
}

/// The budget after admitting one disruption of `pod_name`, or why it cannot be.
fn take_disruption(res: &ResourceInfo, current: &Value, budget_name: &str, pod_name: &str) -> Result<Value, ApiError> {
    let status = |field: &str| current.pointer(&format!("/status/{field}")).and_then(Value::as_i64).unwrap_or(0);
    let generation = current.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
    if status("observedGeneration") < generation {
        return Err(refusal(format!("The disruption budget {budget_name} is still being processed by the server.")));
    }
    let allowed = status("disruptionsAllowed");
    if allowed < 0 {
        return Err(ApiError::forbidden(res, budget_name, "pdb disruptions allowed is negative"));
    }
    let disrupted = current.pointer("/status/disruptedPods").and_then(Value::as_object).map_or(0, |m| m.len());
    if disrupted > MAX_DISRUPTED_PODS {
        return Err(ApiError::forbidden(res, budget_name, "DisruptedPods map too big - too many evictions not confirmed by PDB controller"));
    }
    if allowed == 0 {
        return Err(refusal(format!(
            "The disruption budget {budget_name} needs {} healthy pods and has {} currently",
            status("desiredHealthy"),
            status("currentHealthy")
        )));
    }
    let mut updated = current.clone();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    updated["status"]["disruptionsAllowed"] = json!(allowed - 1);
    if !updated["status"]["disruptedPods"].is_object() {
        updated["status"]["disruptedPods"] = json!({});
    }
    updated["status"]["disruptedPods"][pod_name] = json!(now);
    if allowed == 1 {
        set_disruption_allowed_false(&mut updated, &now);
    }
    Ok(updated)
}

/// The budget's `DisruptionAllowed` condition once it has none left to give.
fn set_disruption_allowed_false(budget: &mut Value, now: &str) {
    let condition = json!({
        "type": "DisruptionAllowed",
        "status": "False",
        "reason": "InsufficientPods",
        "message": "",
        "lastTransitionTime": now,
        "observedGeneration": budget.pointer("/metadata/generation").cloned().unwrap_or(json!(0)),
    });
    let conditions = budget["status"]["conditions"].as_array_mut();
    match conditions {
        Some(list) => match list.iter_mut().find(|c| c["type"] == "DisruptionAllowed") {
            Some(existing) if existing["status"] == "False" => {}
            Some(existing) => *existing = condition,
            None => list.push(condition),
        },
        None => budget["status"]["conditions"] = json!([condition]),
    }
}

fn refusal(cause: String) -> ApiError {
    ApiError::too_many_requests_because(REFUSED, "DisruptionBudget", cause)
}

/// The budgets in `namespace` whose selector matches `labels`, read from the store (a
/// budget created a moment ago applies at once).
async fn budgets_for(api: &ApiServer, namespace: &str, labels: &BTreeMap<String, String>) -> Result<Vec<Value>, ApiError> {
    let res = registry::lookup("policy", "v1", "poddisruptionbudgets").ok_or_else(|| ApiError::internal("poddisruptionbudgets not registered"))?;
    let listed = api.store.range(&res.namespace_prefix(Some(namespace)), RangeOptions::default()).await.map_err(ApiError::internal)?;
    Ok(listed
        .kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
        .filter(|budget| {
            // policy/v1: a missing selector matches nothing, an empty one every pod.
            let selector = budget.pointer("/spec/selector").cloned().unwrap_or(Value::Null);
            Selector::from_label_selector(&selector).is_ok_and(|s| s.matches(labels))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdbs() -> &'static ResourceInfo {
        registry::lookup("policy", "v1", "poddisruptionbudgets").unwrap_or_else(|| panic!("poddisruptionbudgets not registered"))
    }

    fn budget(allowed: i64, generation: i64, observed: i64) -> Value {
        json!({
            "metadata": {"name": "web", "generation": generation},
            "status": {"observedGeneration": observed, "disruptionsAllowed": allowed, "currentHealthy": 3, "desiredHealthy": 2,
                       "conditions": [{"type": "DisruptionAllowed", "status": "True", "reason": "SufficientPods"}]}
        })
    }

    #[test]
    fn an_admitted_eviction_takes_one_disruption_and_is_recorded() -> Result<(), ApiError> {
        let after = take_disruption(pdbs(), &budget(2, 1, 1), "web", "web-a")?;
        assert_eq!(after["status"]["disruptionsAllowed"], 1);
        assert!(after["status"]["disruptedPods"]["web-a"].is_string());
        assert_eq!(after["status"]["conditions"][0]["status"], "True");
        let last = take_disruption(pdbs(), &after, "web", "web-b")?;
        assert_eq!(last["status"]["disruptionsAllowed"], 0);
        assert_eq!(last["status"]["conditions"][0]["reason"], "InsufficientPods");
        assert_eq!(last["status"]["disruptedPods"].as_object().map(|m| m.len()), Some(2));
        Ok(())
    }

    #[test]
    fn refusals_are_too_many_requests_with_the_budgets_cause() {
        let refused = take_disruption(pdbs(), &budget(0, 1, 1), "web", "web-a").err().map(|e| e.status());
        let status = refused.unwrap_or_default();
        assert_eq!(status["code"], 429);
        assert_eq!(status["reason"], "TooManyRequests");
        assert_eq!(status["message"], REFUSED);
        assert_eq!(status["details"]["causes"][0]["reason"], "DisruptionBudget");
        assert_eq!(status["details"]["causes"][0]["message"], "The disruption budget web needs 2 healthy pods and has 3 currently");
        let stale = take_disruption(pdbs(), &budget(1, 2, 1), "web", "web-a").err().map(|e| e.status()).unwrap_or_default();
        assert_eq!(stale["details"]["causes"][0]["message"], "The disruption budget web is still being processed by the server.");
        let negative = take_disruption(pdbs(), &budget(-1, 1, 1), "web", "web-a").err().map(|e| e.code);
        assert_eq!(negative, Some(403));
    }
}
