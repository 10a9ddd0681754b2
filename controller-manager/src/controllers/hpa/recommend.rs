//! The HPA's decision, as a pure function of the spec, the target's current replicas,
//! the selected pods, their metrics, the HPA's history and `now` — Kubernetes'
//! `replica_calculator.go` (ratio of current to target usage, 0.1 tolerance, unready
//! and missing pods) and `horizontal.go` (min/max, stabilisation windows, scaling
//! policies, conditions), without I/O so every case is tested with a fixed clock.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use apimachinery::quantity::Quantity as ParsedQuantity;
use k8s_openapi::api::autoscaling::v2::{
    HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscalerSpec, MetricSpec, MetricStatus, MetricTarget, MetricValueStatus, ResourceMetricSource,
    ResourceMetricStatus,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::jiff::Timestamp;

/// Knobs Kubernetes exposes as kube-controller-manager flags.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// `--horizontal-pod-autoscaler-tolerance`.
    pub tolerance: f64,
    /// `--horizontal-pod-autoscaler-cpu-initialization-period`.
    pub cpu_initialization_period: Duration,
    /// `--horizontal-pod-autoscaler-initial-readiness-delay`.
    pub initial_readiness_delay: Duration,
    /// `--horizontal-pod-autoscaler-downscale-stabilization`: the scale-down window
    /// when the HPA's behavior does not set one.
    pub downscale_stabilization: Duration,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            tolerance: 0.1,
            cpu_initialization_period: Duration::from_secs(300),
            initial_readiness_delay: Duration::from_secs(30),
            downscale_stabilization: Duration::from_secs(300),
        }
    }
}

/// One pod's usage, summed over its containers, in milli-units per resource name
/// (milli-cores for cpu, milli-bytes for memory, as Kubernetes' `MilliValue`).
#[derive(Debug, Clone, PartialEq)]
pub struct PodMetric {
    pub timestamp: Timestamp,
    pub window: Duration,
    pub usage: BTreeMap<String, i64>,
}

/// Pod metrics by pod name.
pub type PodMetrics = HashMap<String, PodMetric>;

/// A recommendation made at some time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampedRecommendation {
    pub replicas: i32,
    pub at: Timestamp,
}

/// A change of replicas the HPA made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleEvent {
    pub change: i32,
    pub at: Timestamp,
    pub outdated: bool,
}

/// What the HPA remembers between syncs (Kubernetes keeps it in memory too).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    pub recommendations: Vec<TimestampedRecommendation>,
    pub scale_up_events: Vec<ScaleEvent>,
    pub scale_down_events: Vec<ScaleEvent>,
}

/// A condition to set, without its transition time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

/// Everything one decision reads.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub spec: &'a HorizontalPodAutoscalerSpec,
    /// The target's `scale.spec.replicas`.
    pub current_replicas: i32,
    /// The pods the target's selector selects.
    pub pods: &'a [Pod],
    /// Their metrics, or why they could not be fetched.
    pub metrics: Result<&'a PodMetrics, &'a str>,
    pub now: Timestamp,
    pub tuning: &'a Tuning,
}

/// What to do, and what to report.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub desired_replicas: i32,
    pub rescale: bool,
    /// Why, for the SuccessfulRescale event.
    pub reason: String,
    pub metric_statuses: Vec<MetricStatus>,
    /// Conditions in the order they were set; later ones of a type win.
    pub conditions: Vec<Condition>,
    /// Set when no metric could be computed; the HPA then leaves the scale alone.
    pub error: Option<String>,
}

fn cond(type_: &'static str, status: bool, reason: &str, message: impl Into<String>) -> Condition {
    Condition { type_, status, reason: reason.into(), message: message.into() }
}

fn plus(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(d).unwrap_or(Timestamp::MAX)
}

fn minus(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_sub(d).unwrap_or(Timestamp::MIN)
}

fn seconds(s: i32) -> Duration {
    Duration::from_secs(u64::try_from(s).unwrap_or(0))
}

/// The metrics of an HPA, defaulted as the apiserver does for v2: 80% cpu.
pub fn metrics_of(spec: &HorizontalPodAutoscalerSpec) -> Vec<MetricSpec> {
    match &spec.metrics {
        Some(m) if !m.is_empty() => m.clone(),
        _ => vec![MetricSpec {
            type_: "Resource".into(),
            resource: Some(ResourceMetricSource {
                name: "cpu".into(),
                target: MetricTarget { type_: "Utilization".into(), average_utilization: Some(80), ..Default::default() },
            }),
            ..Default::default()
        }],
    }
}

/// The scaling rules of one direction with Kubernetes' defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    pub stabilization_window: Duration,
    pub select_policy: String,
    pub policies: Vec<HPAScalingPolicy>,
    pub tolerance: Option<f64>,
}

fn policy(type_: &str, value: i32, period: i32) -> HPAScalingPolicy {
    HPAScalingPolicy { type_: type_.into(), value, period_seconds: period }
}

fn rules(given: Option<&HPAScalingRules>, window: Duration, policies: Vec<HPAScalingPolicy>) -> Rules {
    let given = given.cloned().unwrap_or_default();
    Rules {
        stabilization_window: given.stabilization_window_seconds.map(seconds).unwrap_or(window),
        select_policy: given.select_policy.unwrap_or_else(|| "Max".into()),
        policies: given.policies.filter(|p| !p.is_empty()).unwrap_or(policies),
        tolerance: given.tolerance.and_then(|q| ParsedQuantity::parse(&q.0).ok()).map(|q| q.as_f64()),
    }
}

/// Scale-up rules: no window; the larger of +4 pods and +100% per 15 s.
pub fn scale_up_rules(spec: &HorizontalPodAutoscalerSpec) -> Rules {
    let given = spec.behavior.as_ref().and_then(|b| b.scale_up.as_ref());
    rules(given, Duration::ZERO, vec![policy("Pods", 4, 15), policy("Percent", 100, 15)])
}

/// Scale-down rules: the configured window (300 s); -100% per 15 s.
pub fn scale_down_rules(spec: &HorizontalPodAutoscalerSpec, tuning: &Tuning) -> Rules {
    let given = spec.behavior.as_ref().and_then(|b| b.scale_down.as_ref());
    rules(given, tuning.downscale_stabilization, vec![policy("Percent", 100, 15)])
}

/// What one metric proposes.
struct Proposal {
    replicas: i32,
    name: String,
    status: MetricStatus,
}

/// Makes the decision and records the recommendation in `history`.
pub fn decide(input: &Input<'_>, history: &mut History) -> Decision {
    let spec = input.spec;
    let current = input.current_replicas;
    let min = spec.min_replicas.unwrap_or(1);
    let max = spec.max_replicas;
    let mut d = Decision { desired_replicas: current, rescale: false, reason: String::new(), metric_statuses: vec![], conditions: vec![], error: None };
    if current == 0 && min != 0 {
        d.desired_replicas = 0;
        d.conditions.push(cond("ScalingActive", false, "ScalingDisabled", "scaling is disabled since the replica count of the target is zero"));
        return d;
    }
    if current > max {
        d.desired_replicas = max;
        d.reason = "Current number of replicas above Spec.MaxReplicas".into();
    } else if current < min {
        d.desired_replicas = min;
        d.reason = "Current number of replicas below Spec.MinReplicas".into();
    } else {
        let metrics = metrics_of(spec);
        let mut best: Option<Proposal> = None;
        let mut invalid = 0usize;
        let mut first_error: Option<(Condition, String)> = None;
        for m in &metrics {
            match propose(input, m) {
                Ok(p) => {
                    d.metric_statuses.push(p.status.clone());
                    if best.as_ref().is_none_or(|b| p.replicas > b.replicas) {
                        best = Some(p);
                    }
                }
                Err(failure) => {
                    let (condition, err, status) = *failure;
                    d.metric_statuses.push(status);
                    if first_error.is_none() {
                        first_error = Some((condition, err));
                    }
                    invalid += 1;
                }
            }
        }
        let proposed = best.as_ref().map(|b| b.replicas).unwrap_or(0);
        if invalid >= metrics.len() || (invalid > 0 && proposed < current) {
            if let Some((condition, err)) = first_error {
                d.conditions.push(condition);
                d.error = Some(format!("invalid metrics ({invalid} invalid out of {}), first error is: {err}", metrics.len()));
            }
            d.desired_replicas = current;
            return d;
        }
        let metric_name = best.map(|b| b.name).unwrap_or_default();
        d.conditions.push(cond(
            "ScalingActive",
            true,
            "ValidMetricFound",
            format!("the HPA was able to successfully calculate a replica count from {metric_name}"),
        ));
        if proposed > current {
            d.reason = format!("{metric_name} above target");
        } else if proposed < current {
            d.reason = "All metrics below target".into();
        }
        d.desired_replicas = normalize(input, proposed, min, max, history, &mut d.conditions);
    }
    d.rescale = d.desired_replicas != current;
    d
}

type MetricFailure = Box<(Condition, String, MetricStatus)>;

fn failed(resource: &str, err: String) -> MetricFailure {
    let condition = cond("ScalingActive", false, "FailedGetResourceMetric", format!("the HPA was unable to compute the replica count: {err}"));
    let status = MetricStatus {
        type_: "Resource".into(),
        resource: Some(ResourceMetricStatus { name: resource.into(), current: MetricValueStatus::default() }),
        ..Default::default()
    };
    Box::new((condition, err, status))
}

fn propose(input: &Input<'_>, m: &MetricSpec) -> Result<Proposal, MetricFailure> {
    let Some(res) = m.resource.as_ref().filter(|_| m.type_ == "Resource") else {
        let condition = cond("ScalingActive", false, "InvalidMetricSourceType", format!("the HPA was unable to compute the replica count: unsupported metric source type {:?}", m.type_));
        let err = format!("unsupported metric source type {:?}", m.type_);
        return Err(Box::new((condition, err, MetricStatus { type_: m.type_.clone(), ..Default::default() })));
    };
    let name = res.name.as_str();
    let metrics = input.metrics.map_err(|e| failed(name, format!("unable to get metrics for resource {name}: {e}")))?;
    let target = &res.target;
    match (target.type_.as_str(), target.average_utilization, &target.average_value) {
        ("Utilization", Some(util), _) => {
            let r = resource_replicas(input, metrics, name, Target::Utilization(util)).map_err(|e| failed(name, format!("failed to get {name} utilization: {e}")))?;
            Ok(Proposal {
                replicas: r.replicas,
                name: format!("{name} resource utilization (percentage of request)"),
                status: MetricStatus {
                    type_: "Resource".into(),
                    resource: Some(ResourceMetricStatus {
                        name: name.into(),
                        current: MetricValueStatus {
                            average_utilization: Some(r.utilization as i32),
                            average_value: Some(milli_quantity(r.raw_average)),
                            value: None,
                        },
                    }),
                    ..Default::default()
                },
            })
        }
        ("AverageValue", _, Some(q)) => {
            let want = ParsedQuantity::parse(&q.0).map(|q| q.to_millis() as i64).map_err(|e| failed(name, format!("invalid averageValue {:?}: {e}", q.0)))?;
            let r = resource_replicas(input, metrics, name, Target::AverageValue(want)).map_err(|e| failed(name, format!("failed to get {name} usage: {e}")))?;
            Ok(Proposal {
                replicas: r.replicas,
                name: format!("{name} resource"),
                status: MetricStatus {
                    type_: "Resource".into(),
                    resource: Some(ResourceMetricStatus {
                        name: name.into(),
                        current: MetricValueStatus { average_value: Some(milli_quantity(r.raw_average)), ..Default::default() },
                    }),
                    ..Default::default()
                },
            })
        }
        (t, _, _) => Err(failed(name, format!("invalid resource metric target type {t:?} (or no value) for {name}"))),
    }
}

/// A milli-value as a canonical quantity (`66m`, `104857600`).
pub fn milli_quantity(milli: i64) -> Quantity {
    Quantity(ParsedQuantity::from_millis(milli).to_string())
}

#[derive(Debug, Clone, Copy)]
enum Target {
    /// Percent of the pods' requests.
    Utilization(i32),
    /// Milli-units per pod.
    AverageValue(i64),
}

#[derive(Debug)]
struct Computed {
    replicas: i32,
    /// Percent of requests (Utilization) or milli-units per pod (AverageValue).
    utilization: i64,
    raw_average: i64,
}

fn is_ready_condition(pod: &Pod) -> Option<(bool, Option<Timestamp>)> {
    let c = pod.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")?;
    Some((c.status == "True", c.last_transition_time.as_ref().map(|t| t.0)))
}

/// Sorts the pods as Kubernetes' `groupPods`: ready (with metrics), unready, missing
/// metrics, ignored (deleted or failed).
fn group_pods(input: &Input<'_>, metrics: &PodMetrics, resource: &str) -> (usize, HashSet<String>, HashSet<String>, HashSet<String>) {
    let (mut ready, mut unready, mut missing, mut ignored) = (0, HashSet::new(), HashSet::new(), HashSet::new());
    for pod in input.pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if pod.metadata.deletion_timestamp.is_some() || phase == Some("Failed") {
            ignored.insert(name);
            continue;
        }
        if phase == Some("Pending") {
            unready.insert(name);
            continue;
        }
        let Some(metric) = metrics.get(&name).filter(|m| m.usage.contains_key(resource)) else {
            missing.insert(name);
            continue;
        };
        if resource == "cpu" {
            let start = pod.status.as_ref().and_then(|s| s.start_time.as_ref()).map(|t| t.0);
            let is_unready = match (is_ready_condition(pod), start) {
                (Some((ready_now, Some(transition))), Some(start)) => {
                    if plus(start, input.tuning.cpu_initialization_period) > input.now {
                        // Still initialising: unready, or ready too recently for this
                        // sample to be trusted.
                        !ready_now || metric.timestamp < plus(transition, metric.window)
                    } else {
                        !ready_now && plus(start, input.tuning.initial_readiness_delay) > transition
                    }
                }
                _ => true,
            };
            if is_unready {
                unready.insert(name);
                continue;
            }
        }
        ready += 1;
    }
    (ready, unready, missing, ignored)
}

/// Each pod's request for `resource` (sum over its containers), in milli-units.
fn pod_requests(pods: &[Pod], resource: &str) -> Result<HashMap<String, i64>, String> {
    let mut out = HashMap::new();
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let mut total = 0i64;
        for c in pod.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default() {
            let req = c.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get(resource));
            let Some(q) = req.and_then(|q| ParsedQuantity::parse(&q.0).ok()) else {
                return Err(format!("missing request for {resource} in container {} of Pod {name}", c.name));
            };
            total = total.saturating_add(q.to_millis() as i64);
        }
        out.insert(name, total);
    }
    Ok(out)
}

/// (usage ratio, utilization, raw average) of `usage` against `target`.
fn ratio(usage: &HashMap<String, i64>, requests: &HashMap<String, i64>, target: Target) -> Result<(f64, i64, i64), String> {
    match target {
        Target::Utilization(percent) => {
            let (mut used, mut requested, mut n) = (0i64, 0i64, 0i64);
            for (pod, u) in usage {
                if let Some(r) = requests.get(pod) {
                    used += u;
                    requested += r;
                    n += 1;
                }
            }
            if requested == 0 || n == 0 {
                return Err("no metrics returned matched known pods".into());
            }
            let utilization = used * 100 / requested;
            Ok((utilization as f64 / f64::from(percent.max(1)), utilization, used / n))
        }
        Target::AverageValue(per_pod) => {
            let n = usage.len() as i64;
            if n == 0 {
                return Err("no metrics returned matched known pods".into());
            }
            let avg = usage.values().sum::<i64>() / n;
            Ok((avg as f64 / per_pod.max(1) as f64, avg, avg))
        }
    }
}

fn resource_replicas(input: &Input<'_>, metrics: &PodMetrics, resource: &str, target: Target) -> Result<Computed, String> {
    let current = input.current_replicas;
    if input.pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    let (ready, unready, missing, ignored) = group_pods(input, metrics, resource);
    let mut usage: HashMap<String, i64> = metrics
        .iter()
        .filter(|(name, _)| !unready.contains(*name) && !ignored.contains(*name))
        .filter(|(name, _)| input.pods.iter().any(|p| p.metadata.name.as_deref() == Some(name.as_str())))
        .filter_map(|(name, m)| m.usage.get(resource).map(|u| (name.clone(), *u)))
        .collect();
    if usage.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let requests = match target {
        Target::Utilization(_) => pod_requests(input.pods, resource)?,
        Target::AverageValue(_) => HashMap::new(),
    };
    let (usage_ratio, utilization, raw) = ratio(&usage, &requests, target)?;
    let tolerance = input.tuning.tolerance;
    let done = |replicas| Ok(Computed { replicas, utilization, raw_average: raw });
    let scale_up_with_unready = !unready.is_empty() && usage_ratio > 1.0;
    if !scale_up_with_unready && missing.is_empty() {
        if (1.0 - usage_ratio).abs() <= tolerance {
            return done(current);
        }
        return done((usage_ratio * ready as f64).ceil() as i32);
    }
    if !missing.is_empty() {
        for pod in &missing {
            let assumed = if usage_ratio < 1.0 {
                // Missing pods are assumed at the target (at least 100% of request) when
                // scaling down, so they never make the HPA scale down further.
                match target {
                    Target::Utilization(percent) => requests.get(pod).copied().unwrap_or(0) * i64::from(percent.max(100)) / 100,
                    Target::AverageValue(v) => v,
                }
            } else {
                0
            };
            usage.insert(pod.clone(), assumed);
        }
    }
    if scale_up_with_unready {
        for pod in &unready {
            usage.insert(pod.clone(), 0);
        }
    }
    let (new_ratio, _, _) = ratio(&usage, &requests, target)?;
    if (1.0 - new_ratio).abs() <= tolerance || (usage_ratio < 1.0 && new_ratio > 1.0) || (usage_ratio > 1.0 && new_ratio < 1.0) {
        return done(current);
    }
    let replicas = (new_ratio * usage.len() as f64).ceil() as i32;
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return done(current);
    }
    done(replicas)
}

/// Applies the stabilisation windows and the scaling policies to a proposal, and clamps
/// it to min/max (`normalizeDesiredReplicasWithBehaviors`).
fn normalize(input: &Input<'_>, proposed: i32, min: i32, max: i32, history: &mut History, conditions: &mut Vec<Condition>) -> i32 {
    let up = scale_up_rules(input.spec);
    let down = scale_down_rules(input.spec, input.tuning);
    let current = input.current_replicas;
    let stabilized = stabilize(history, input.now, current, proposed, &up, &down);
    if stabilized.0 != proposed {
        conditions.push(cond("AbleToScale", true, stabilized.1, stabilized.2));
    } else {
        conditions.push(cond("AbleToScale", true, "ReadyForNewScale", "recommended size matches current size"));
    }
    let (desired, reason, message) = limit_rate(history, input.now, current, stabilized.0, min, max, &up, &down);
    conditions.push(cond("ScalingLimited", desired != stabilized.0, reason, message));
    desired
}

fn stabilize(history: &mut History, now: Timestamp, current: i32, desired: i32, up: &Rules, down: &Rules) -> (i32, &'static str, &'static str) {
    let up_cutoff = minus(now, up.stabilization_window);
    let down_cutoff = minus(now, down.stabilization_window);
    let (mut up_rec, mut down_rec) = (desired, desired);
    let mut old = None;
    for (i, r) in history.recommendations.iter().enumerate() {
        if r.at > up_cutoff {
            up_rec = up_rec.min(r.replicas);
        }
        if r.at > down_cutoff {
            down_rec = down_rec.max(r.replicas);
        }
        if r.at < up_cutoff && r.at < down_cutoff {
            old = Some(i);
        }
    }
    let mut recommendation = current.max(up_rec);
    recommendation = recommendation.min(down_rec);
    let sample = TimestampedRecommendation { replicas: desired, at: now };
    match old {
        Some(i) => history.recommendations[i] = sample,
        None => history.recommendations.push(sample),
    }
    if recommendation < desired {
        (recommendation, "ScaleUpStabilized", "recent recommendations were lower than current one, applying the lowest recent recommendation")
    } else {
        (recommendation, "ScaleDownStabilized", "recent recommendations were higher than current one, applying the highest recent recommendation")
    }
}

fn change_in_period(now: Timestamp, period_seconds: i32, events: &[ScaleEvent]) -> i32 {
    let cutoff = minus(now, seconds(period_seconds));
    events.iter().filter(|e| e.at > cutoff).map(|e| e.change).sum()
}

/// The most replicas the scale-up policies allow now.
pub fn scale_up_limit(now: Timestamp, current: i32, history: &History, rules: &Rules) -> i32 {
    let (mut result, pick): (i32, fn(i32, i32) -> i32) = match rules.select_policy.as_str() {
        "Disabled" => return current,
        "Min" => (i32::MAX, std::cmp::min),
        _ => (i32::MIN, std::cmp::max),
    };
    for p in &rules.policies {
        let start = current - change_in_period(now, p.period_seconds, &history.scale_up_events) + change_in_period(now, p.period_seconds, &history.scale_down_events);
        let proposed = match p.type_.as_str() {
            "Pods" => start + p.value,
            _ => (f64::from(start) * (1.0 + f64::from(p.value) / 100.0)).ceil() as i32,
        };
        result = pick(result, proposed);
    }
    result
}

/// The fewest replicas the scale-down policies allow now.
pub fn scale_down_limit(now: Timestamp, current: i32, history: &History, rules: &Rules) -> i32 {
    let (mut result, pick): (i32, fn(i32, i32) -> i32) = match rules.select_policy.as_str() {
        "Disabled" => return current,
        "Min" => (i32::MIN, std::cmp::max),
        _ => (i32::MAX, std::cmp::min),
    };
    for p in &rules.policies {
        let start = current - change_in_period(now, p.period_seconds, &history.scale_up_events) + change_in_period(now, p.period_seconds, &history.scale_down_events);
        let proposed = match p.type_.as_str() {
            "Pods" => start - p.value,
            _ => (f64::from(start) * (1.0 - f64::from(p.value) / 100.0)) as i32,
        };
        result = pick(result, proposed);
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn limit_rate(history: &History, now: Timestamp, current: i32, desired: i32, min: i32, max: i32, up: &Rules, down: &Rules) -> (i32, &'static str, &'static str) {
    if desired > current {
        let limit = scale_up_limit(now, current, history, up).max(current);
        let (allowed, reason, message) = if max > limit {
            (limit, "ScaleUpLimit", "the desired replica count is increasing faster than the maximum scale rate")
        } else {
            (max, "TooManyReplicas", "the desired replica count is more than the maximum replica count")
        };
        if desired > allowed {
            return (allowed, reason, message);
        }
    } else if desired < current {
        let limit = scale_down_limit(now, current, history, down).min(current);
        let (allowed, reason, message) = if min < limit {
            (limit, "ScaleDownLimit", "the desired replica count is decreasing faster than the maximum scale rate")
        } else {
            (min, "TooFewReplicas", "the desired replica count is less than the minimum replica count")
        };
        if desired < allowed {
            return (allowed, reason, message);
        }
    }
    (desired, "DesiredWithinRange", "the desired count is within the acceptable range")
}

impl History {
    /// Records a rescale from `previous` to `new` at `now` (`storeScaleEvent`), reusing
    /// an event older than the longest policy period of its direction.
    pub fn record_scale(&mut self, spec: &HorizontalPodAutoscalerSpec, tuning: &Tuning, previous: i32, new: i32, now: Timestamp) {
        let (events, rules) = if new > previous {
            (&mut self.scale_up_events, scale_up_rules(spec))
        } else if new < previous {
            (&mut self.scale_down_events, scale_down_rules(spec, tuning))
        } else {
            return;
        };
        let longest = rules.policies.iter().map(|p| p.period_seconds).max().unwrap_or(0);
        let cutoff = minus(now, seconds(longest));
        for e in events.iter_mut() {
            if e.at < cutoff {
                e.outdated = true;
            }
        }
        let event = ScaleEvent { change: (new - previous).abs(), at: now, outdated: false };
        match events.iter().position(|e| e.outdated) {
            Some(i) => events[i] = event,
            None => events.push(event),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerBehavior;
    use k8s_openapi::api::core::v1::{Container, PodCondition, PodSpec, PodStatus, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    /// A running pod requesting 100m cpu and 100Mi memory, ready since `ready_at`
    /// (started 10 minutes before t(0), so past the cpu initialisation period).
    fn pod(name: &str, ready: bool, ready_at: i64) -> Pod {
        let requests: BTreeMap<String, Quantity> = [("cpu".to_string(), Quantity("100m".into())), ("memory".to_string(), Quantity("100Mi".into()))].into();
        Pod {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            spec: Some(PodSpec {
                containers: vec![Container { name: "c".into(), resources: Some(ResourceRequirements { requests: Some(requests), ..Default::default() }), ..Default::default() }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                start_time: Some(Time(t(-600))),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    last_transition_time: Some(Time(t(ready_at))),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn pods(n: usize) -> Vec<Pod> {
        (0..n).map(|i| pod(&format!("p{i}"), true, -500)).collect()
    }

    /// Every named pod uses `cpu_milli` milli-cores.
    fn metrics(names: &[&str], cpu_milli: i64) -> PodMetrics {
        names
            .iter()
            .map(|n| (n.to_string(), PodMetric { timestamp: t(0), window: Duration::from_secs(10), usage: [("cpu".to_string(), cpu_milli)].into() }))
            .collect()
    }

    fn all_metrics(pods: &[Pod], cpu_milli: i64) -> PodMetrics {
        let names: Vec<&str> = pods.iter().filter_map(|p| p.metadata.name.as_deref()).collect();
        metrics(&names, cpu_milli)
    }

    fn spec(min: i32, max: i32, cpu_percent: i32) -> HorizontalPodAutoscalerSpec {
        let mut s = HorizontalPodAutoscalerSpec { min_replicas: Some(min), max_replicas: max, ..Default::default() };
        s.metrics = Some(vec![MetricSpec {
            type_: "Resource".into(),
            resource: Some(ResourceMetricSource {
                name: "cpu".into(),
                target: MetricTarget { type_: "Utilization".into(), average_utilization: Some(cpu_percent), ..Default::default() },
            }),
            ..Default::default()
        }]);
        s
    }

    fn run(spec: &HorizontalPodAutoscalerSpec, current: i32, pods: &[Pod], m: &PodMetrics, now: Timestamp, history: &mut History) -> Decision {
        let tuning = Tuning::default();
        decide(&Input { spec, current_replicas: current, pods, metrics: Ok(m), now, tuning: &tuning }, history)
    }

    fn condition<'a>(d: &'a Decision, type_: &str) -> Option<&'a Condition> {
        d.conditions.iter().rev().find(|c| c.type_ == type_)
    }

    #[test]
    fn scales_up_by_the_usage_ratio() {
        let ps = pods(2);
        // 100m used of 100m requested = 100%, target 50% → ratio 2 → 4 replicas.
        let d = run(&spec(1, 10, 50), 2, &ps, &all_metrics(&ps, 100), t(0), &mut History::default());
        assert_eq!((d.desired_replicas, d.rescale), (4, true));
        assert_eq!(d.reason, "cpu resource utilization (percentage of request) above target");
        let current = &d.metric_statuses[0].resource.as_ref().map(|r| r.current.clone()).unwrap_or_default();
        assert_eq!(current.average_utilization, Some(100));
        assert_eq!(current.average_value, Some(Quantity("100m".into())));
        assert_eq!(condition(&d, "ScalingActive").map(|c| (c.status, c.reason.as_str())), Some((true, "ValidMetricFound")));
        assert_eq!(condition(&d, "ScalingLimited").map(|c| (c.status, c.reason.as_str())), Some((false, "DesiredWithinRange")));
    }

    #[test]
    fn within_tolerance_nothing_changes() {
        let ps = pods(3);
        // 54% against 50%: ratio 1.08, inside the 0.1 tolerance.
        let d = run(&spec(1, 10, 50), 3, &ps, &all_metrics(&ps, 54), t(0), &mut History::default());
        assert_eq!((d.desired_replicas, d.rescale), (3, false));
        // 56%: ratio 1.12 → ceil(3.36) = 4.
        let d = run(&spec(1, 10, 50), 3, &ps, &all_metrics(&ps, 56), t(0), &mut History::default());
        assert_eq!(d.desired_replicas, 4);
    }

    #[test]
    fn max_replicas_clamps_with_too_many_replicas() {
        let ps = pods(2);
        let d = run(&spec(1, 3, 50), 2, &ps, &all_metrics(&ps, 100), t(0), &mut History::default());
        assert_eq!(d.desired_replicas, 3);
        assert_eq!(condition(&d, "ScalingLimited").map(|c| (c.status, c.reason.as_str())), Some((true, "TooManyReplicas")));
    }

    #[test]
    fn min_replicas_clamps_with_too_few_replicas() {
        let ps = pods(4);
        let mut s = spec(3, 10, 50);
        s.behavior = Some(HorizontalPodAutoscalerBehavior {
            scale_down: Some(HPAScalingRules { stabilization_window_seconds: Some(0), ..Default::default() }),
            ..Default::default()
        });
        // 5% against 50% → 1 replica wanted; min is 3.
        let d = run(&s, 4, &ps, &all_metrics(&ps, 5), t(0), &mut History::default());
        assert_eq!(d.desired_replicas, 3);
        assert_eq!(d.reason, "All metrics below target");
        assert_eq!(condition(&d, "ScalingLimited").map(|c| (c.status, c.reason.as_str())), Some((true, "TooFewReplicas")));
    }

    #[test]
    fn outside_min_max_is_corrected_without_metrics() {
        let ps = pods(1);
        let empty = PodMetrics::new();
        let d = run(&spec(2, 5, 50), 1, &ps, &empty, t(0), &mut History::default());
        assert_eq!((d.desired_replicas, d.rescale, d.reason.as_str()), (2, true, "Current number of replicas below Spec.MinReplicas"));
        let d = run(&spec(2, 5, 50), 7, &ps, &empty, t(0), &mut History::default());
        assert_eq!((d.desired_replicas, d.reason.as_str()), (5, "Current number of replicas above Spec.MaxReplicas"));
        let d = run(&spec(2, 5, 50), 0, &ps, &empty, t(0), &mut History::default());
        assert_eq!((d.desired_replicas, d.rescale), (0, false));
        assert_eq!(condition(&d, "ScalingActive").map(|c| c.reason.as_str()), Some("ScalingDisabled"));
    }

    #[test]
    fn the_stabilisation_window_holds_a_scale_down() {
        let ps = pods(4);
        let s = spec(1, 10, 50);
        let mut h = History::default();
        // At t=0 the load needs 4; at t=60 it needs 1, but the 300 s window remembers 4.
        let d = run(&s, 4, &ps, &all_metrics(&ps, 50), t(0), &mut h);
        assert_eq!(d.desired_replicas, 4);
        let d = run(&s, 4, &ps, &all_metrics(&ps, 10), t(60), &mut h);
        assert_eq!((d.desired_replicas, d.rescale), (4, false));
        assert_eq!(condition(&d, "AbleToScale").map(|c| c.reason.as_str()), Some("ScaleDownStabilized"));
        // After the window, the low recommendations are all that remain.
        let d = run(&s, 4, &ps, &all_metrics(&ps, 10), t(200), &mut h);
        assert_eq!(d.desired_replicas, 4, "the t=0 sample is still inside the window");
        let d = run(&s, 4, &ps, &all_metrics(&ps, 10), t(301), &mut h);
        assert_eq!((d.desired_replicas, d.rescale), (1, true));
        assert_eq!(condition(&d, "AbleToScale").map(|c| c.reason.as_str()), Some("ReadyForNewScale"));
    }

    #[test]
    fn a_zero_window_scales_down_at_once() {
        let ps = pods(4);
        let mut s = spec(1, 10, 50);
        s.behavior = Some(HorizontalPodAutoscalerBehavior {
            scale_down: Some(HPAScalingRules { stabilization_window_seconds: Some(0), ..Default::default() }),
            ..Default::default()
        });
        let mut h = History::default();
        run(&s, 4, &ps, &all_metrics(&ps, 50), t(0), &mut h);
        // 20% of 4 pods at a 50% target → ceil(1.6) = 2.
        let d = run(&s, 4, &ps, &all_metrics(&ps, 20), t(1), &mut h);
        assert_eq!(d.desired_replicas, 2);
    }

    #[test]
    fn default_scale_up_policy_allows_the_larger_of_four_pods_and_double() {
        let ps = pods(2);
        // 1000% against 50% → 40 wanted; 2 replicas may grow to max(2+4, 2*2) = 6.
        let d = run(&spec(1, 100, 50), 2, &ps, &all_metrics(&ps, 1000), t(0), &mut History::default());
        assert_eq!(d.desired_replicas, 6);
        assert_eq!(condition(&d, "ScalingLimited").map(|c| (c.status, c.reason.as_str())), Some((true, "ScaleUpLimit")));
        let ps = pods(10);
        let d = run(&spec(1, 100, 50), 10, &ps, &all_metrics(&ps, 1000), t(0), &mut History::default());
        assert_eq!(d.desired_replicas, 20);
    }

    #[test]
    fn policies_count_recent_scale_events() {
        let ps = pods(4);
        let mut s = spec(1, 100, 50);
        s.behavior = Some(HorizontalPodAutoscalerBehavior {
            scale_up: Some(HPAScalingRules { policies: Some(vec![policy("Pods", 2, 60)]), ..Default::default() }),
            ..Default::default()
        });
        let tuning = Tuning::default();
        let mut h = History::default();
        // Scaled 2 → 4 at t=0: within the 60 s period no more pods may be added.
        h.record_scale(&s, &tuning, 2, 4, t(0));
        let d = run(&s, 4, &ps, &all_metrics(&ps, 200), t(30), &mut h);
        assert_eq!(d.desired_replicas, 4);
        assert_eq!(condition(&d, "ScalingLimited").map(|c| c.reason.as_str()), Some("ScaleUpLimit"));
        // Once the period has passed, two more.
        let d = run(&s, 4, &ps, &all_metrics(&ps, 200), t(61), &mut h);
        assert_eq!(d.desired_replicas, 6);
    }

    #[test]
    fn select_policy_min_and_disabled() {
        let now = t(0);
        let h = History::default();
        let mut r = Rules { stabilization_window: Duration::ZERO, select_policy: "Min".into(), policies: vec![policy("Pods", 1, 15), policy("Percent", 50, 15)], tolerance: None };
        assert_eq!(scale_up_limit(now, 10, &h, &r), 11);
        assert_eq!(scale_down_limit(now, 10, &h, &r), 9);
        r.select_policy = "Max".into();
        assert_eq!(scale_up_limit(now, 10, &h, &r), 15);
        assert_eq!(scale_down_limit(now, 10, &h, &r), 5);
        r.select_policy = "Disabled".into();
        assert_eq!(scale_up_limit(now, 10, &h, &r), 10);
        assert_eq!(scale_down_limit(now, 10, &h, &r), 10);
    }

    #[test]
    fn scale_down_disabled_keeps_replicas() {
        let ps = pods(4);
        let mut s = spec(1, 10, 50);
        s.behavior = Some(HorizontalPodAutoscalerBehavior {
            scale_down: Some(HPAScalingRules { select_policy: Some("Disabled".into()), stabilization_window_seconds: Some(0), ..Default::default() }),
            ..Default::default()
        });
        let d = run(&s, 4, &ps, &all_metrics(&ps, 5), t(0), &mut History::default());
        assert_eq!((d.desired_replicas, d.rescale), (4, false));
        assert_eq!(condition(&d, "ScalingLimited").map(|c| (c.status, c.reason.as_str())), Some((true, "ScaleDownLimit")));
    }

    #[test]
    fn missing_metrics_damp_a_scale_up() {
        let ps = pods(4);
        // Two pods at 100% of a 50% target, two without metrics (assumed 0 on scale up):
        // the average is 50% → exactly at target → no change.
        let d = run(&spec(1, 10, 50), 4, &ps, &metrics(&["p0", "p1"], 100), t(0), &mut History::default());
        assert_eq!(d.desired_replicas, 4);
        // At 150% the two known pods alone would want 6; with the missing ones at 0, 75%
        // average → ceil(1.5 * 4) = 6.
        let d = run(&spec(1, 10, 50), 4, &ps, &metrics(&["p0", "p1"], 150), t(0), &mut History::default());
        assert_eq!(d.desired_replicas, 6);
    }

    #[test]
    fn missing_metrics_damp_a_scale_down() {
        let ps = pods(4);
        let mut s = spec(1, 10, 50);
        s.behavior = Some(HorizontalPodAutoscalerBehavior {
            scale_down: Some(HPAScalingRules { stabilization_window_seconds: Some(0), ..Default::default() }),
            ..Default::default()
        });
        // Two pods at 10%, two missing assumed at 100%: (10+10+100+100)/4 = 55% → ratio
        // 1.1 crosses 1 → no scale down.
        let d = run(&s, 4, &ps, &metrics(&["p0", "p1"], 10), t(0), &mut History::default());
        assert_eq!(d.desired_replicas, 4);
    }

    #[test]
    fn unready_pods_count_as_zero_on_scale_up() {
        // p0 and p1 ready at 100%, p2 never ready since it started (its metric is
        // ignored), 50% target.
        let mut ps = pods(2);
        ps.push(pod("p2", false, -590));
        let m = all_metrics(&ps, 100);
        // Without p2: ratio 2 → but p2 counts as 0 → (100+100+0)/300 = 66% → ratio 1.33
        // → ceil(1.33 * 3) = 4.
        let d = run(&spec(1, 10, 50), 3, &ps, &m, t(0), &mut History::default());
        assert_eq!(d.desired_replicas, 4);
    }

    #[test]
    fn recently_ready_pods_are_unready_during_cpu_initialisation() {
        let mut p = pod("p0", true, -5);
        if let Some(s) = p.status.as_mut() {
            s.start_time = Some(Time(t(-20)));
        }
        let ps = vec![p];
        // The sample (t=0, 10 s window) began before the pod was ready (t=-5).
        let tuning = Tuning::default();
        let m = all_metrics(&ps, 100);
        let s = spec(1, 10, 50);
        let d = decide(&Input { spec: &s, current_replicas: 1, pods: &ps, metrics: Ok(&m), now: t(0), tuning: &tuning }, &mut History::default());
        assert!(d.error.as_deref().is_some_and(|e| e.contains("did not receive metrics for targeted pods")), "{:?}", d.error);
        assert_eq!(condition(&d, "ScalingActive").map(|c| (c.status, c.reason.as_str())), Some((false, "FailedGetResourceMetric")));
        assert!(!d.rescale);
    }

    #[test]
    fn failed_and_deleted_pods_are_ignored() {
        let mut ps = pods(2);
        let mut failed = pod("p2", true, -500);
        if let Some(s) = failed.status.as_mut() {
            s.phase = Some("Failed".into());
        }
        ps.push(failed);
        let d = run(&spec(1, 10, 50), 3, &ps, &all_metrics(&ps, 100), t(0), &mut History::default());
        // Only p0 and p1 count: ratio 2 over 2 ready pods → 4.
        assert_eq!(d.desired_replicas, 4);
    }

    #[test]
    fn missing_requests_are_an_error() {
        let mut ps = pods(1);
        if let Some(c) = ps[0].spec.as_mut().and_then(|s| s.containers.first_mut()) {
            c.resources = None;
        }
        let d = run(&spec(1, 10, 50), 1, &ps, &all_metrics(&ps, 100), t(0), &mut History::default());
        let msg = condition(&d, "ScalingActive").map(|c| c.message.clone()).unwrap_or_default();
        assert!(msg.contains("missing request for cpu in container c of Pod p0"), "{msg}");
        assert_eq!(d.metric_statuses.len(), 1);
    }

    #[test]
    fn metrics_errors_are_reported() {
        let ps = pods(1);
        let tuning = Tuning::default();
        let s = spec(1, 10, 50);
        let d = decide(&Input { spec: &s, current_replicas: 1, pods: &ps, metrics: Err("the server is unavailable"), now: t(0), tuning: &tuning }, &mut History::default());
        let c = condition(&d, "ScalingActive").cloned();
        assert_eq!(c.as_ref().map(|c| c.reason.as_str()), Some("FailedGetResourceMetric"));
        assert!(c.is_some_and(|c| c.message.contains("unable to get metrics for resource cpu: the server is unavailable")));
    }

    #[test]
    fn average_value_targets_and_memory() {
        let ps = pods(2);
        let mut s = spec(1, 10, 50);
        s.metrics = Some(vec![MetricSpec {
            type_: "Resource".into(),
            resource: Some(ResourceMetricSource {
                name: "memory".into(),
                target: MetricTarget { type_: "AverageValue".into(), average_value: Some(Quantity("50Mi".into())), ..Default::default() },
            }),
            ..Default::default()
        }]);
        let mib = 1024 * 1024 * 1000i64;
        let m: PodMetrics = ["p0", "p1"]
            .iter()
            .map(|n| (n.to_string(), PodMetric { timestamp: t(0), window: Duration::from_secs(10), usage: [("memory".to_string(), 150 * mib)].into() }))
            .collect();
        let d = run(&s, 2, &ps, &m, t(0), &mut History::default());
        assert_eq!(d.desired_replicas, 6);
        assert_eq!(d.reason, "memory resource above target");
        let current = d.metric_statuses[0].resource.as_ref().map(|r| r.current.clone()).unwrap_or_default();
        assert_eq!(current.average_value, Some(Quantity("157286400".into())));
    }

    #[test]
    fn the_highest_metric_proposal_wins() {
        let ps = pods(2);
        let mut s = spec(1, 10, 50);
        if let Some(ms) = s.metrics.as_mut() {
            ms.push(MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "memory".into(),
                    target: MetricTarget { type_: "Utilization".into(), average_utilization: Some(50), ..Default::default() },
                }),
                ..Default::default()
            });
        }
        // cpu wants 4 (100% vs 50%); memory has no metrics at all → one invalid metric,
        // but the valid proposal is a scale up, so it is acted on.
        let d = run(&s, 2, &ps, &all_metrics(&ps, 100), t(0), &mut History::default());
        assert_eq!(d.desired_replicas, 4);
        assert_eq!(d.metric_statuses.len(), 2);
    }
}
