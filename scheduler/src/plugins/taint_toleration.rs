//! TaintToleration: a node's NoSchedule and NoExecute taints keep off pods that do not
//! tolerate them; untolerated PreferNoSchedule taints lower a node's score.

use k8s_openapi::api::core::v1::Taint;

use crate::framework::{default_normalize, Filter, PluginState, Score, Unfit};
use crate::types::{tolerates, NodeInfo, PodInfo};

pub const NAME: &str = "TaintToleration";

pub struct TaintToleration;

/// The first NoSchedule/NoExecute taint the pod does not tolerate.
pub fn untolerated<'a>(pod: &PodInfo, node: &'a NodeInfo) -> Option<&'a Taint> {
    node.taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|t| !pod.tolerations.iter().any(|tol| tolerates(tol, t)))
}

/// How many PreferNoSchedule taints the pod does not tolerate.
pub fn intolerable_prefer_no_schedule(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let tolerations: Vec<_> = pod.tolerations.iter().filter(|t| t.effect.as_deref().is_none_or(|e| e.is_empty() || e == "PreferNoSchedule")).collect();
    node.taints.iter().filter(|t| t.effect == "PreferNoSchedule" && !tolerations.iter().any(|tol| tolerates(tol, t))).count() as i64
}

impl Filter for TaintToleration {
    fn name(&self) -> &'static str {
        NAME
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo, _: &PluginState) -> Result<(), Unfit> {
        match untolerated(pod, node) {
            None => Ok(()),
            Some(t) => Err(Unfit::unresolvable(format!("node(s) had untolerated taint {{{}: {}}}", t.key, t.value.as_deref().unwrap_or_default()))),
        }
    }
}

impl Score for TaintToleration {
    fn name(&self) -> &'static str {
        NAME
    }

    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: &PluginState) -> i64 {
        intolerable_prefer_no_schedule(pod, node)
    }

    fn normalize(&self, scores: &mut [i64]) {
        default_normalize(scores, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::testing::{node, pod};
    use k8s_openapi::api::core::v1::Toleration;

    fn taint(key: &str, value: &str, effect: &str) -> Taint {
        Taint { key: key.into(), value: Some(value.into()), effect: effect.into(), time_added: None }
    }

    #[test]
    fn no_schedule_taints_need_a_toleration() {
        let mut n = node("n", "1", "1Gi", "10", &[]);
        n.taints.push(taint("node-role.kubernetes.io/control-plane", "", "NoSchedule"));
        let mut p = pod("p", "", "");
        let err = TaintToleration.filter(&p, &n, &None).unwrap_err();
        assert_eq!(err.reasons, vec!["node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }"]);
        p.tolerations.push(Toleration { key: Some("node-role.kubernetes.io/control-plane".into()), operator: Some("Exists".into()), effect: Some("NoSchedule".into()), ..Default::default() });
        assert!(untolerated(&p, &n).is_none());
        n.taints.push(taint("dedicated", "gpu", "NoExecute"));
        assert!(untolerated(&p, &n).is_some());
        p.tolerations.push(Toleration { key: Some("dedicated".into()), value: Some("gpu".into()), ..Default::default() });
        assert!(untolerated(&p, &n).is_none());
    }

    #[test]
    fn prefer_no_schedule_lowers_the_score() {
        let mut n = node("n", "1", "1Gi", "10", &[]);
        n.taints.push(taint("a", "", "PreferNoSchedule"));
        n.taints.push(taint("b", "", "PreferNoSchedule"));
        let p = pod("p", "", "");
        assert!(untolerated(&p, &n).is_none());
        assert_eq!(intolerable_prefer_no_schedule(&p, &n), 2);
        let mut scores = vec![2, 0, 1];
        TaintToleration.normalize(&mut scores);
        assert_eq!(scores, vec![0, 100, 50]);
    }
}
