//! A core/v1 Event recorder, as client-go's `record.EventRecorder`: `kubectl describe`
//! reads these. Repeats of the same reason and message about the same object within ten
//! minutes bump `count` and `lastTimestamp` on one Event instead of creating another.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};

const AGGREGATION_WINDOW: Duration = Duration::from_secs(600);

/// Who reports (`kubelet` on `node-1`, `deployment-controller`…).
pub struct EventRecorder {
    client: kube::Client,
    component: String,
    host: Option<String>,
    seen: Mutex<HashMap<(String, String, String), Seen>>,
}

struct Seen {
    name: String,
    count: i32,
    last: Instant,
}

impl EventRecorder {
    pub fn new(client: kube::Client, component: &str, host: Option<&str>) -> EventRecorder {
        EventRecorder { client, component: component.into(), host: host.map(str::to_string), seen: Mutex::new(HashMap::new()) }
    }

    /// Records an event about `object` (whose namespace the Event lives in). Failures are
    /// logged, never returned: an event is not worth failing the caller's work for.
    pub async fn record(&self, object: &ObjectReference, type_: &str, reason: &str, message: &str) {
        let namespace = object.namespace.clone().unwrap_or_else(|| "default".into());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let key = (object.uid.clone().unwrap_or_default(), reason.to_string(), message.to_string());
        let now = Timestamp::now();
        let repeat = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.retain(|_, s| s.last.elapsed() < AGGREGATION_WINDOW);
            seen.get_mut(&key).map(|s| {
                s.count += 1;
                s.last = Instant::now();
                (s.name.clone(), s.count)
            })
        };
        if let Some((name, count)) = repeat {
            let patch = serde_json::json!({"count": count, "lastTimestamp": Time(now)});
            match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => return,
                Err(e) => tracing::debug!(error = %e, event = %name, "event count update failed; recording a new event"),
            }
        }
        let object_name = object.name.clone().unwrap_or_default();
        let name = format!("{}.{:x}", object_name, now.as_nanosecond());
        let event = Event {
            metadata: ObjectMeta { name: Some(name.clone()), namespace: Some(namespace), ..Default::default() },
            involved_object: object.clone(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some(type_.into()),
            source: Some(EventSource { component: Some(self.component.clone()), host: self.host.clone() }),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.host.clone().unwrap_or_else(|| self.component.clone())),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            count: Some(1),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &event).await {
            Ok(_) => {
                let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                seen.insert(key, Seen { name, count: 1, last: Instant::now() });
            }
            Err(e) => tracing::debug!(error = %e, reason, "event not recorded"),
        }
    }
}

/// The most events an [`EventSink`] holds for sending; more are dropped, as client-go's
/// broadcaster drops them when its queue is full.
const SINK_QUEUE: usize = 1000;

/// A recorder that does not make its caller wait: events queue for one task that
/// records them in order (so repeats still aggregate), as client-go's broadcaster does
/// for the controllers. A controller creating a hundred pods sends a hundred events
/// without holding its sync for them.
#[derive(Clone)]
pub struct EventSink {
    tx: tokio::sync::mpsc::Sender<(ObjectReference, &'static str, String, String)>,
}

impl EventSink {
    /// Starts the recording task (it ends when every clone of the sink is gone); needs a
    /// Tokio runtime.
    pub fn spawn(client: kube::Client, component: &str) -> EventSink {
        let recorder = EventRecorder::new(client, component, None);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(ObjectReference, &'static str, String, String)>(SINK_QUEUE);
        tokio::spawn(async move {
            while let Some((object, type_, reason, message)) = rx.recv().await {
                recorder.record(&object, type_, &reason, &message).await;
            }
        });
        EventSink { tx }
    }

    /// Queues a `Normal` event about `object`.
    pub fn normal(&self, object: ObjectReference, reason: &str, message: impl Into<String>) {
        self.send(object, "Normal", reason, message.into());
    }

    /// Queues a `Warning` event about `object`.
    pub fn warning(&self, object: ObjectReference, reason: &str, message: impl Into<String>) {
        self.send(object, "Warning", reason, message.into());
    }

    fn send(&self, object: ObjectReference, type_: &'static str, reason: &str, message: String) {
        if let Err(e) = self.tx.try_send((object, type_, reason.to_string(), message)) {
            tracing::debug!(reason, error = %e, "event dropped");
        }
    }
}
