//! The scheduling queue: pods waiting to be scheduled, highest `spec.priority` first and
//! then oldest; pods that did not fit wait as unschedulable until the cluster changes
//! (a node added or updated, a pod deleted) and then sit out an exponential backoff
//! (1 s doubling to 10 s) before they are tried again, as kube-scheduler's
//! activeQ/backoffQ/unschedulablePods.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::types::PodInfo;

/// How long an unschedulable pod waits at most for a cluster event before it is retried
/// anyway (`podMaxInUnschedulablePodsDuration`).
pub const MAX_UNSCHEDULABLE_WAIT: Duration = Duration::from_secs(300);

#[derive(Debug, PartialEq, Eq)]
struct ActiveEntry {
    priority: i32,
    created: i64,
    seq: u64,
    key: String,
}

impl Ord for ActiveEntry {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap pops the greatest: higher priority, then older, then first queued.
        self.priority
            .cmp(&other.priority)
            .then_with(|| other.created.cmp(&self.created))
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for ActiveEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Active(u64),
    Backoff(Instant),
    Unschedulable(Instant),
    InFlight(u64),
}

#[derive(Debug)]
struct Queued {
    info: Arc<PodInfo>,
    state: State,
    attempts: u32,
    last_failure: Option<Instant>,
}

/// A pod handed out for one scheduling attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub info: Arc<PodInfo>,
    pub attempts: u32,
    /// The cluster-change counter when the attempt started.
    pub cycle: u64,
}

#[derive(Debug)]
pub struct Queue {
    pods: HashMap<String, Queued>,
    active: BinaryHeap<ActiveEntry>,
    backoff: BinaryHeap<Reverse<(Instant, String)>>,
    seq: u64,
    move_cycle: u64,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for Queue {
    fn default() -> Queue {
        Queue {
            pods: HashMap::new(),
            active: BinaryHeap::new(),
            backoff: BinaryHeap::new(),
            seq: 0,
            move_cycle: 0,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
        }
    }
}

fn created(info: &PodInfo) -> i64 {
    info.pod.metadata.creation_timestamp.as_ref().map_or(0, |t| t.0.as_millisecond())
}

impl Queue {
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.pods.contains_key(key)
    }

    fn push_active(&mut self, key: &str) {
        let Some(q) = self.pods.get_mut(key) else { return };
        self.seq += 1;
        q.state = State::Active(self.seq);
        self.active.push(ActiveEntry { priority: q.info.priority, created: created(&q.info), seq: self.seq, key: key.to_string() });
    }

    fn backoff_until(&self, q: &Queued) -> Option<Instant> {
        let last = q.last_failure?;
        let shift = q.attempts.saturating_sub(1).min(16);
        let d = self.initial_backoff.saturating_mul(1 << shift).min(self.max_backoff);
        Some(last + d)
    }

    /// Active if its backoff is over, else into the backoff queue.
    fn activate_or_backoff(&mut self, key: &str, now: Instant) {
        let Some(q) = self.pods.get(key) else { return };
        match self.backoff_until(q) {
            Some(until) if until > now => {
                if let Some(q) = self.pods.get_mut(key) {
                    q.state = State::Backoff(until);
                }
                self.backoff.push(Reverse((until, key.to_string())));
            }
            _ => self.push_active(key),
        }
    }

    /// A new or updated unscheduled pod.
    pub fn add_or_update(&mut self, info: Arc<PodInfo>, now: Instant) {
        let key = info.key.clone();
        match self.pods.get_mut(&key) {
            None => {
                self.pods.insert(key.clone(), Queued { info, state: State::Active(0), attempts: 0, last_failure: None });
                self.push_active(&key);
            }
            Some(q) => {
                let priority_changed = q.info.priority != info.priority;
                q.info = info;
                match q.state {
                    State::Active(_) if priority_changed => self.push_active(&key),
                    // An update may make it fit (new tolerations, smaller requests).
                    State::Unschedulable(_) => self.activate_or_backoff(&key, now),
                    _ => {}
                }
            }
        }
    }

    pub fn remove(&mut self, key: &str) {
        self.pods.remove(key);
    }

    /// Moves backoff pods whose time is up to the active queue.
    fn flush_backoff(&mut self, now: Instant) {
        while let Some(Reverse((until, _))) = self.backoff.peek() {
            if *until > now {
                break;
            }
            let Some(Reverse((until, key))) = self.backoff.pop() else { break };
            if self.pods.get(&key).is_some_and(|q| q.state == State::Backoff(until)) {
                self.push_active(&key);
            }
        }
    }

    /// The next pod to schedule, if one is ready.
    pub fn pop(&mut self, now: Instant) -> Option<Attempt> {
        self.flush_backoff(now);
        while let Some(entry) = self.active.pop() {
            let Some(q) = self.pods.get_mut(&entry.key) else { continue };
            if q.state != State::Active(entry.seq) {
                continue;
            }
            q.state = State::InFlight(entry.seq);
            return Some(Attempt { info: q.info.clone(), attempts: q.attempts, cycle: self.move_cycle });
        }
        None
    }

    /// The pod was bound (or assumed and handed to the binder): it leaves the queue.
    pub fn done(&mut self, key: &str) {
        self.pods.remove(key);
    }

    /// The pod fit nowhere. If the cluster changed during the attempt it goes straight to
    /// backoff, otherwise it waits for a change.
    pub fn unschedulable(&mut self, attempt: &Attempt, now: Instant) {
        let key = &attempt.info.key;
        let Some(q) = self.pods.get_mut(key) else { return };
        q.attempts += 1;
        q.last_failure = Some(now);
        if self.move_cycle > attempt.cycle {
            self.activate_or_backoff(key, now);
        } else if let Some(q) = self.pods.get_mut(key) {
            q.state = State::Unschedulable(now);
        }
    }

    /// A pod whose binding failed: back in with backoff.
    pub fn requeue(&mut self, info: Arc<PodInfo>, attempts: u32, now: Instant) {
        let key = info.key.clone();
        self.pods.insert(key.clone(), Queued { info, state: State::Active(0), attempts: attempts + 1, last_failure: Some(now) });
        self.activate_or_backoff(&key, now);
    }

    /// The cluster changed: every unschedulable pod gets another chance after its backoff.
    pub fn move_all_unschedulable(&mut self, now: Instant) {
        self.move_cycle += 1;
        let keys: Vec<String> = self.pods.iter().filter(|(_, q)| matches!(q.state, State::Unschedulable(_))).map(|(k, _)| k.clone()).collect();
        for k in keys {
            self.activate_or_backoff(&k, now);
        }
    }

    /// Retries pods that have waited longer than [`MAX_UNSCHEDULABLE_WAIT`].
    pub fn flush_unschedulable_leftover(&mut self, now: Instant) {
        let keys: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, q)| matches!(q.state, State::Unschedulable(since) if now.duration_since(since) >= MAX_UNSCHEDULABLE_WAIT))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.activate_or_backoff(&k, now);
        }
    }

    /// When the earliest backoff ends, if any pod is backing off.
    pub fn next_backoff_expiry(&self) -> Option<Instant> {
        self.backoff.peek().map(|Reverse((t, _))| *t)
    }

    /// Whether a pod is ready to pop now (without flushing).
    pub fn has_active(&self) -> bool {
        !self.active.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::testing::{pod, pod_spec};
    use k8s_openapi::api::core::v1::PodSpec;

    fn prio(name: &str, p: i32) -> Arc<PodInfo> {
        Arc::new(pod_spec(name, PodSpec { priority: Some(p), ..Default::default() }, &[]))
    }

    #[test]
    fn higher_priority_first_then_fifo() {
        let mut q = Queue::default();
        let now = Instant::now();
        q.add_or_update(prio("low", 0), now);
        q.add_or_update(prio("high", 100), now);
        q.add_or_update(prio("low2", 0), now);
        let order: Vec<String> = std::iter::from_fn(|| q.pop(now)).map(|a| a.info.name.clone()).collect();
        assert_eq!(order, vec!["high", "low", "low2"]);
    }

    #[test]
    fn unschedulable_pods_wait_for_a_cluster_change_and_back_off() {
        let mut q = Queue::default();
        let now = Instant::now();
        q.add_or_update(Arc::new(pod("p", "", "")), now);
        let a = q.pop(now).unwrap();
        q.unschedulable(&a, now);
        assert!(q.pop(now + Duration::from_secs(60)).is_none(), "waits for a change");
        q.move_all_unschedulable(now + Duration::from_millis(100));
        assert!(q.pop(now + Duration::from_millis(500)).is_none(), "still backing off");
        let a = q.pop(now + Duration::from_secs(1)).unwrap();
        assert_eq!(a.attempts, 1);
        // A change during the attempt sends it straight to backoff (2 s after 2 failures).
        q.move_all_unschedulable(now + Duration::from_secs(1));
        let t = now + Duration::from_secs(1);
        q.unschedulable(&a, t);
        assert_eq!(q.next_backoff_expiry(), Some(t + Duration::from_secs(2)));
        assert!(q.pop(t + Duration::from_secs(2)).is_some());
    }

    #[test]
    fn removed_pods_are_not_handed_out() {
        let mut q = Queue::default();
        let now = Instant::now();
        q.add_or_update(Arc::new(pod("p", "", "")), now);
        q.remove("default/p");
        assert!(q.pop(now).is_none());
        assert!(q.is_empty());
    }
}
