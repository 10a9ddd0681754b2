//! The controllers, registered by name. Each is a reconcile loop on kube-runtime's
//! `Controller`: watches feed keyed work queues, `reconcile` re-reads the object from the
//! reflector's store and returns when to look again, failures are retried with backoff.

pub mod daemonset;
pub mod deployment;
pub mod history;
pub mod podcontrol;
pub mod replicaset;
pub mod statefulset;

use std::sync::Arc;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::Config;

pub mod clusterroleaggregation;
pub mod cronjob;
pub mod csr;
pub mod csrapproving;
pub mod csrsigning;
pub mod disruption;
pub mod endpoint;
pub mod endpointslice;
pub mod garbagecollector;
pub mod hpa;
pub mod job;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod persistentvolume;
pub mod resourcequota;
pub mod resources;
pub mod rootcacert;
pub mod serviceaccount;
pub mod servicelb;
pub mod ttlafterfinished;

/// What every controller gets: an API client and the configuration.
#[derive(Clone)]
pub struct Context {
    pub client: kube::Client,
    pub config: Arc<Config>,
}

impl Context {
    /// An event sink reporting as `component` (`replicaset-controller`…), which
    /// `kubectl describe` shows in its From column.
    pub fn events(&self, component: &str) -> component_base::events::EventSink {
        component_base::events::EventSink::spawn(self.client.clone(), component)
    }
}

/// The message of a failed API call as Kubernetes' controllers put it in an event
/// (`pods "web-1" is forbidden: …`): the Status message when the apiserver sent one.
pub fn api_error_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if !s.message.is_empty() => s.message.clone(),
        other => other.to_string(),
    }
}

/// Why a controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("the API failed: {0}")]
    Api(#[from] kube::Error),
    #[error("{0}")]
    Config(String),
}

/// Runs a kube-runtime applier until `shutdown` or until its input streams end. Failed
/// reconciles are logged and requeued by each controller's error policy; what reaches
/// here (a missing object, a queue error) is only traced.
pub async fn drive<T, E, S>(controller: &'static str, applier: S, shutdown: &CancellationToken) -> Result<(), ControllerError>
where
    S: futures::Stream<Item = Result<T, E>>,
    E: std::fmt::Display,
{
    use futures::StreamExt;
    let mut applier = std::pin::pin!(applier);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            next = applier.next() => match next {
                Some(Ok(_)) => {}
                Some(Err(e)) => tracing::debug!(controller, error = %e, "reconcile loop"),
                None => return Ok(()),
            }
        }
    }
}

/// Keeps a reflector's store filled until `stop` (nothing is queued from its events);
/// watch errors are traced for `controller` and the reflector retries.
pub fn keep_filled<K, S>(controller: &'static str, events: S, stop: CancellationToken)
where
    K: Send + 'static,
    S: futures::Stream<Item = Result<kube::runtime::watcher::Event<K>, kube::runtime::watcher::Error>> + Send + 'static,
{
    component_base::reflect::keep_running(controller, events, stop, || {});
}

/// The label selector of a workload's spec, as a matcher.
pub fn selector_of(selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector) -> Result<apimachinery::Selector, String> {
    let v = serde_json::to_value(selector).map_err(|e| e.to_string())?;
    apimachinery::Selector::from_label_selector(&v).map_err(|e| e.to_string())
}

/// Starts a controller; it runs until the token is cancelled.
pub type StartFn = fn(Context, CancellationToken) -> BoxFuture<'static, Result<(), ControllerError>>;

/// A controller known by name.
pub struct Registered {
    pub name: &'static str,
    pub enabled_by_default: bool,
    pub start: StartFn,
}

/// Every controller, by the names Kubernetes' `--controllers` flag uses.
pub static CONTROLLERS: &[Registered] = &[
    Registered { name: "replicaset", enabled_by_default: true, start: replicaset::start_replicaset },
    Registered { name: "replicationcontroller", enabled_by_default: true, start: replicaset::start_replicationcontroller },
    Registered { name: "deployment", enabled_by_default: true, start: deployment::start },
    Registered { name: "daemonset", enabled_by_default: true, start: daemonset::start },
    Registered { name: "statefulset", enabled_by_default: true, start: statefulset::start },
    Registered { name: "garbagecollector", enabled_by_default: true, start: garbagecollector::start },
    Registered { name: "namespace", enabled_by_default: true, start: namespace::start },
    Registered { name: "serviceaccount", enabled_by_default: true, start: serviceaccount::start },
    Registered { name: "endpoint", enabled_by_default: true, start: endpoint::start },
    Registered { name: "endpointslice", enabled_by_default: true, start: endpointslice::start },
    Registered { name: "nodeipam", enabled_by_default: true, start: nodeipam::start },
    Registered { name: "nodelifecycle", enabled_by_default: true, start: nodelifecycle::start },
    Registered { name: "horizontalpodautoscaling", enabled_by_default: true, start: hpa::start },
    Registered { name: "job", enabled_by_default: true, start: job::start },
    Registered { name: "cronjob", enabled_by_default: true, start: cronjob::start },
    Registered { name: "ttl-after-finished", enabled_by_default: true, start: ttlafterfinished::start },
    Registered { name: "persistentvolume-binder", enabled_by_default: true, start: persistentvolume::start },
    Registered { name: "service-lb", enabled_by_default: true, start: servicelb::start },
    Registered { name: "clusterrole-aggregation", enabled_by_default: true, start: clusterroleaggregation::start },
    Registered { name: "root-ca-cert-publisher", enabled_by_default: true, start: rootcacert::start },
    Registered { name: "resourcequota", enabled_by_default: true, start: resourcequota::start },
    Registered { name: "disruption", enabled_by_default: true, start: disruption::start },
    Registered { name: "csrapproving", enabled_by_default: true, start: csrapproving::start },
    Registered { name: "csrsigning", enabled_by_default: true, start: csrsigning::start },
];

/// The controllers a `--controllers` list selects: `*` means every one enabled by
/// default, `name` adds one, `-name` removes one.
pub fn select(flags: &[String]) -> Result<Vec<&'static Registered>, String> {
    let mut all = false;
    let mut on = Vec::new();
    let mut off = Vec::new();
    for f in flags.iter().flat_map(|f| f.split(',')).map(str::trim).filter(|f| !f.is_empty()) {
        if f == "*" {
            all = true;
            continue;
        }
        let (name, list) = match f.strip_prefix('-') {
            Some(n) => (n, &mut off),
            None => (f, &mut on),
        };
        if !CONTROLLERS.iter().any(|c| c.name == name) {
            let known: Vec<&str> = CONTROLLERS.iter().map(|c| c.name).collect();
            return Err(format!("unknown controller {name:?}; known controllers: {}", known.join(", ")));
        }
        list.push(name);
    }
    Ok(CONTROLLERS
        .iter()
        .filter(|c| (on.contains(&c.name) || (all && c.enabled_by_default)) && !off.contains(&c.name))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_are_refused() {
        let err = select(&["*,nosuch".into()]).err().unwrap_or_default();
        assert!(err.contains("unknown controller \"nosuch\""), "{err}");
    }

    #[test]
    fn star_includes_service_lb() {
        let names: Vec<&str> = select(&["*".into()]).unwrap_or_default().iter().map(|c| c.name).collect();
        assert!(names.contains(&"service-lb"), "{names:?}");
        let without: Vec<&str> = select(&["*,-service-lb".into()]).unwrap_or_default().iter().map(|c| c.name).collect();
        assert!(!without.contains(&"service-lb"));
    }

    #[test]
    fn star_minus_name_excludes_it() {
        let names: Vec<&str> = select(&["*".into()]).unwrap_or_default().iter().map(|c| c.name).collect();
        let first = CONTROLLERS.iter().find(|c| c.enabled_by_default).map(|c| c.name);
        if let Some(first) = first {
            assert!(names.contains(&first));
            let without: Vec<&str> = select(&[format!("*,-{first}")]).unwrap_or_default().iter().map(|c| c.name).collect();
            assert!(!without.contains(&first));
        }
    }
}
