//! Printers for workload groups: `apps` (deployments, replica sets, stateful
//! sets, daemon sets, controller revisions), `batch` (jobs, cron jobs),
//! `autoscaling` (horizontal pod autoscalers) and `policy` (pod disruption
//! budgets).

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::util::{
    age, arr, deleting, format_label_selector, format_labels, get, human_duration, int_at,
    int_or_string, layout_containers, name, opt_bool, opt_int, opt_str, parse_time, quantity,
    selector_string, str_at, translate_timestamp_since,
};
use super::{col, wide, Column, Printer, AGE, CONTAINERS, IMAGES, NAME};

pub(crate) fn printer(resource: &str, group: &str) -> Option<Printer> {
    let p: Printer = match (group, resource) {
        ("apps", "deployments") | ("extensions", "deployments") => {
            (DEPLOYMENT_COLUMNS, deployment_row)
        }
        ("apps", "replicasets") | ("extensions", "replicasets") => {
            (REPLICASET_COLUMNS, replicaset_row)
        }
        ("apps", "statefulsets") => (STATEFULSET_COLUMNS, statefulset_row),
        ("apps", "daemonsets") | ("extensions", "daemonsets") => (DAEMONSET_COLUMNS, daemonset_row),
        ("apps", "controllerrevisions") => (CONTROLLERREVISION_COLUMNS, controllerrevision_row),
        ("batch", "jobs") => (JOB_COLUMNS, job_row),
        ("batch", "cronjobs") => (CRONJOB_COLUMNS, cronjob_row),
        ("autoscaling", "horizontalpodautoscalers") => (HPA_COLUMNS, hpa_row),
        ("policy", "poddisruptionbudgets") => (PDB_COLUMNS, pdb_row),
        _ => return None,
    };
    Some(p)
}

fn template_containers(obj: &Value) -> (String, String) {
    layout_containers(arr(obj, &["spec", "template", "spec", "containers"]))
}

// ---------------------------------------------------------------- deployments

static DEPLOYMENT_COLUMNS: &[Column] = &[
    NAME,
    col("Ready", "string", "Number of the pod with ready state"),
    col("Up-to-date", "string", "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
    col("Available", "string", "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
    AGE,
    CONTAINERS,
    IMAGES,
    wide("Selector", "string", "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment."),
];

fn deployment_row(d: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let desired = opt_int(d, &["spec", "replicas"]).unwrap_or(1);
    let ready = int_at(d, &["status", "readyReplicas"]);
    let (names, images) = template_containers(d);
    let selector =
        selector_string(get(d, &["spec", "selector"])).unwrap_or_else(|()| "<invalid>".to_string());
    vec![
        json!(name(d)),
        json!(format!("{ready}/{desired}")),
        json!(int_at(d, &["status", "updatedReplicas"])),
        json!(int_at(d, &["status", "availableReplicas"])),
        age(d, now),
        json!(names),
        json!(images),
        json!(selector),
    ]
}

// ---------------------------------------------------------------- replica sets

static REPLICASET_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Desired",
        "integer",
        "Replicas is the number of desired replicas.",
    ),
    col(
        "Current",
        "integer",
        "Replicas is the most recently observed number of replicas.",
    ),
    col(
        "Ready",
        "integer",
        "The number of ready replicas for this replica set.",
    ),
    AGE,
    CONTAINERS,
    IMAGES,
    wide(
        "Selector",
        "string",
        "Selector is a label query over pods that should match the replica count.",
    ),
];

fn replicaset_row(rs: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let (names, images) = template_containers(rs);
    vec![
        json!(name(rs)),
        json!(opt_int(rs, &["spec", "replicas"]).unwrap_or(1)),
        json!(int_at(rs, &["status", "replicas"])),
        json!(int_at(rs, &["status", "readyReplicas"])),
        age(rs, now),
        json!(names),
        json!(images),
        json!(format_label_selector(get(rs, &["spec", "selector"]))),
    ]
}

// ---------------------------------------------------------------- stateful sets

static STATEFULSET_COLUMNS: &[Column] = &[
    NAME,
    col("Ready", "string", "Number of the pod with ready state"),
    AGE,
    CONTAINERS,
    IMAGES,
];

fn statefulset_row(ss: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let desired = opt_int(ss, &["spec", "replicas"]).unwrap_or(1);
    let ready = int_at(ss, &["status", "readyReplicas"]);
    let (names, images) = template_containers(ss);
    vec![
        json!(name(ss)),
        json!(format!("{ready}/{desired}")),
        age(ss, now),
        json!(names),
        json!(images),
    ]
}

// ---------------------------------------------------------------- daemon sets

static DAEMONSET_COLUMNS: &[Column] = &[
    NAME,
    col("Desired", "integer", "The total number of nodes that should be running the daemon pod (including nodes correctly running the daemon pod)."),
    col("Current", "integer", "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod."),
    col("Ready", "integer", "numberReady is the number of nodes that should be running the daemon pod and have one or more of the daemon pod running with a Ready Condition."),
    col("Up-to-date", "integer", "The total number of nodes that are running updated daemon pod"),
    col("Available", "integer", "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)"),
    col("Node Selector", "string", "NodeSelector is a selector which must be true for the pod to fit on a node."),
    AGE,
    CONTAINERS,
    IMAGES,
    wide("Selector", "string", "A label query over pods that are managed by the daemon set."),
];

fn daemonset_row(ds: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let (names, images) = template_containers(ds);
    vec![
        json!(name(ds)),
        json!(int_at(ds, &["status", "desiredNumberScheduled"])),
        json!(int_at(ds, &["status", "currentNumberScheduled"])),
        json!(int_at(ds, &["status", "numberReady"])),
        json!(int_at(ds, &["status", "updatedNumberScheduled"])),
        json!(int_at(ds, &["status", "numberAvailable"])),
        json!(format_labels(get(
            ds,
            &["spec", "template", "spec", "nodeSelector"]
        ))),
        age(ds, now),
        json!(names),
        json!(images),
        json!(format_label_selector(get(ds, &["spec", "selector"]))),
    ]
}

// ---------------------------------------------------------------- controller revisions

static CONTROLLERREVISION_COLUMNS: &[Column] = &[
    NAME,
    col("Controller", "string", "Controller of the object"),
    col(
        "Revision",
        "string",
        "Revision indicates the revision of the state represented by Data.",
    ),
    AGE,
];

fn controllerrevision_row(cr: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let controller = arr(cr, &["metadata", "ownerReferences"])
        .iter()
        .find(|o| opt_bool(o, &["controller"]) == Some(true))
        .map_or_else(
            || "<none>".to_string(),
            |o| {
                let api_version = str_at(o, &["apiVersion"]);
                let group = match api_version.split_once('/') {
                    Some((g, _)) => g,
                    None => "",
                };
                let kind = str_at(o, &["kind"]);
                let gk = if group.is_empty() {
                    kind.to_string()
                } else {
                    format!("{kind}.{group}")
                };
                let owner = str_at(o, &["name"]);
                if gk.is_empty() {
                    owner.to_string()
                } else {
                    format!("{}/{owner}", gk.to_lowercase())
                }
            },
        );
    vec![
        json!(name(cr)),
        json!(controller),
        json!(int_at(cr, &["revision"])),
        age(cr, now),
    ]
}

// ---------------------------------------------------------------- jobs

static JOB_COLUMNS: &[Column] = &[
    NAME,
    col("Status", "string", "Status of the job."),
    col(
        "Completions",
        "string",
        "The number of pods which reached phase Succeeded.",
    ),
    col("Duration", "string", "Time required to complete the job."),
    AGE,
    CONTAINERS,
    IMAGES,
    wide(
        "Selector",
        "string",
        "A label query over pods that should match the pod count.",
    ),
];

fn job_condition(job: &Value, t: &str) -> bool {
    arr(job, &["status", "conditions"])
        .iter()
        .find(|c| str_at(c, &["type"]) == t)
        .is_some_and(|c| str_at(c, &["status"]) == "True")
}

fn job_row(job: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let succeeded = int_at(job, &["status", "succeeded"]);
    let parallelism_set = get(job, &["spec", "parallelism"]).is_some();
    // Defaulting sets completions=1 when neither completions nor parallelism is given.
    let completions = match opt_int(job, &["spec", "completions"]) {
        Some(c) => Some(c),
        None if !parallelism_set => Some(1),
        None => None,
    };
    let completions = match completions {
        Some(c) => format!("{succeeded}/{c}"),
        None => {
            let parallelism = opt_int(job, &["spec", "parallelism"]).unwrap_or(0);
            if parallelism > 1 {
                format!("{succeeded}/1 of {parallelism}")
            } else {
                format!("{succeeded}/1")
            }
        }
    };
    let start = parse_time(get(job, &["status", "startTime"]));
    let end = parse_time(get(job, &["status", "completionTime"]));
    let duration = match (start, end) {
        (None, _) => String::new(),
        (Some(s), None) => human_duration(now.signed_duration_since(s)),
        (Some(s), Some(e)) => human_duration(e.signed_duration_since(s)),
    };
    let status = if job_condition(job, "Complete") {
        "Complete"
    } else if job_condition(job, "Failed") {
        "Failed"
    } else if deleting(job) {
        "Terminating"
    } else if job_condition(job, "Suspended") {
        "Suspended"
    } else if job_condition(job, "FailureTarget") {
        "FailureTarget"
    } else {
        "Running"
    };
    let (names, images) = template_containers(job);
    vec![
        json!(name(job)),
        json!(status),
        json!(completions),
        json!(duration),
        age(job, now),
        json!(names),
        json!(images),
        json!(format_label_selector(get(job, &["spec", "selector"]))),
    ]
}

// ---------------------------------------------------------------- cron jobs

static CRONJOB_COLUMNS: &[Column] = &[
    NAME,
    col("Schedule", "string", "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron."),
    col("Timezone", "string", "The time zone name for the given schedule, see https://en.wikipedia.org/wiki/List_of_tz_database_time_zones."),
    col("Suspend", "boolean", "This flag tells the controller to suspend subsequent executions, it does not apply to already started executions."),
    col("Active", "integer", "A list of pointers to currently running jobs."),
    col("Last Schedule", "string", "Information when was the last time the job was successfully scheduled."),
    AGE,
    CONTAINERS,
    IMAGES,
    wide("Selector", "string", "A label query over pods that should match the pod count."),
];

fn cronjob_row(cj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let last = match get(cj, &["status", "lastScheduleTime"]) {
        Some(t) => translate_timestamp_since(parse_time(Some(t)), now),
        None => "<none>".to_string(),
    };
    // Defaulting sets suspend=false.
    let suspend = if opt_bool(cj, &["spec", "suspend"]).unwrap_or(false) {
        "True"
    } else {
        "False"
    };
    let tmpl = &[
        "spec",
        "jobTemplate",
        "spec",
        "template",
        "spec",
        "containers",
    ];
    let (names, images) = layout_containers(arr(cj, tmpl));
    vec![
        json!(name(cj)),
        json!(str_at(cj, &["spec", "schedule"])),
        json!(opt_str(cj, &["spec", "timeZone"]).unwrap_or("<none>")),
        json!(suspend),
        json!(arr(cj, &["status", "active"]).len()),
        json!(last),
        age(cj, now),
        json!(names),
        json!(images),
        json!(format_label_selector(get(
            cj,
            &["spec", "jobTemplate", "spec", "selector"]
        ))),
    ]
}

// ---------------------------------------------------------------- horizontal pod autoscalers

static HPA_COLUMNS: &[Column] = &[
    NAME,
    col("Reference", "string", "reference to scaled resource; horizontal pod autoscaler will learn the current resource consumption and will set the desired number of pods by modifying its spec."),
    col("Targets", "string", "metrics contains the specifications for which to use to calculate the desired replica count."),
    col("MinPods", "string", "minReplicas is the lower limit for the number of replicas to which the autoscaler can scale down."),
    col("MaxPods", "string", "maxReplicas is the upper limit for the number of replicas to which the autoscaler can scale up."),
    col("Replicas", "string", "currentReplicas is current number of replicas of pods managed by this autoscaler."),
    AGE,
];

fn q_or(v: Option<&Value>, missing: &str) -> String {
    match v {
        Some(x) => quantity(Some(x)),
        None => missing.to_string(),
    }
}

/// `formatHPAMetrics` over autoscaling/v2 `spec.metrics` and `status.currentMetrics`.
fn format_hpa_metrics(specs: &[Value], statuses: &[Value]) -> String {
    if specs.is_empty() {
        return "<none>".to_string();
    }
    let mut list: Vec<String> = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let st = statuses.get(i);
        let text = match str_at(spec, &["type"]) {
            "External" | "Object" => {
                let key = if str_at(spec, &["type"]) == "External" {
                    "external"
                } else {
                    "object"
                };
                let cur = st.and_then(|s| get(s, &[key]));
                if let Some(target) = get(spec, &[key, "target", "averageValue"]) {
                    let current = cur
                        .and_then(|c| get(c, &["current", "averageValue"]))
                        .map_or_else(|| "<unknown>".to_string(), |q| quantity(Some(q)));
                    format!("{current}/{} (avg)", quantity(Some(target)))
                } else {
                    let current = cur.map_or_else(
                        || "<unknown>".to_string(),
                        |c| quantity(get(c, &["current", "value"])),
                    );
                    format!(
                        "{current}/{}",
                        quantity(get(spec, &[key, "target", "value"]))
                    )
                }
            }
            "Pods" => {
                let current = st.and_then(|s| get(s, &["pods"])).map_or_else(
                    || "<unknown>".to_string(),
                    |c| quantity(get(c, &["current", "averageValue"])),
                );
                format!(
                    "{current}/{}",
                    quantity(get(spec, &["pods", "target", "averageValue"]))
                )
            }
            "Resource" | "ContainerResource" => {
                let key = if str_at(spec, &["type"]) == "Resource" {
                    "resource"
                } else {
                    "containerResource"
                };
                let res = str_at(spec, &[key, "name"]);
                let cur = st.and_then(|s| get(s, &[key]));
                if let Some(target) = get(spec, &[key, "target", "averageValue"]) {
                    let current = cur.map_or_else(
                        || "<unknown>".to_string(),
                        |c| q_or(get(c, &["current", "averageValue"]), "<nil>"),
                    );
                    format!("{res}: {current}/{}", quantity(Some(target)))
                } else {
                    let current = cur
                        .and_then(|c| opt_int(c, &["current", "averageUtilization"]))
                        .map_or_else(|| "<unknown>".to_string(), |u| format!("{u}%"));
                    let target = opt_int(spec, &[key, "target", "averageUtilization"])
                        .map_or_else(|| "<auto>".to_string(), |u| format!("{u}%"));
                    format!("{res}: {current}/{target}")
                }
            }
            _ => "<unknown type>".to_string(),
        };
        list.push(text);
    }
    const MAX: usize = 2;
    let count = list.len();
    if count > MAX {
        list.truncate(MAX);
        return format!("{} + {} more...", list.join(", "), count - MAX);
    }
    list.join(", ")
}

const DEFAULT_CPU_UTILIZATION: i64 = 80;

fn hpa_row(hpa: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let reference = format!(
        "{}/{}",
        str_at(hpa, &["spec", "scaleTargetRef", "kind"]),
        str_at(hpa, &["spec", "scaleTargetRef", "name"])
    );
    let metrics = if str_at(hpa, &["apiVersion"]) == "autoscaling/v1" {
        // v1 converts to a single cpu Utilization metric (80% when unset).
        let t = opt_int(hpa, &["spec", "targetCPUUtilizationPercentage"])
            .unwrap_or(DEFAULT_CPU_UTILIZATION);
        let current = opt_int(hpa, &["status", "currentCPUUtilizationPercentage"])
            .map_or_else(|| "<unknown>".to_string(), |u| format!("{u}%"));
        format!("cpu: {current}/{t}%")
    } else if get(hpa, &["spec", "metrics"]).is_none() {
        // Defaulting gives a v2 HPA without metrics an 80% cpu target.
        let default = [json!({"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": DEFAULT_CPU_UTILIZATION}}})];
        format_hpa_metrics(&default, arr(hpa, &["status", "currentMetrics"]))
    } else {
        format_hpa_metrics(
            arr(hpa, &["spec", "metrics"]),
            arr(hpa, &["status", "currentMetrics"]),
        )
    };
    // Defaulting sets minReplicas=1.
    let min = opt_int(hpa, &["spec", "minReplicas"])
        .unwrap_or(1)
        .to_string();
    vec![
        json!(name(hpa)),
        json!(reference),
        json!(metrics),
        json!(min),
        json!(int_at(hpa, &["spec", "maxReplicas"])),
        json!(int_at(hpa, &["status", "currentReplicas"])),
        age(hpa, now),
    ]
}

// ---------------------------------------------------------------- pod disruption budgets

static PDB_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Min Available",
        "string",
        "The minimum number of pods that must be available.",
    ),
    col(
        "Max Unavailable",
        "string",
        "The maximum number of pods that may be unavailable.",
    ),
    col(
        "Allowed Disruptions",
        "integer",
        "Calculated number of pods that may be disrupted at this time.",
    ),
    AGE,
];

fn pdb_row(pdb: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let field = |k: &str| get(pdb, &["spec", k]).map_or_else(|| "N/A".to_string(), int_or_string);
    vec![
        json!(name(pdb)),
        json!(field("minAvailable")),
        json!(field("maxUnavailable")),
        json!(int_at(pdb, &["status", "disruptionsAllowed"])),
        age(pdb, now),
    ]
}

#[cfg(test)]
mod tests {
    use super::super::test_support::now;
    use super::super::{columns, row};
    use serde_json::json;

    fn names(resource: &str, group: &str) -> Vec<&'static str> {
        columns(resource, group).iter().map(|c| c.name).collect()
    }

    #[test]
    fn deployment_mid_rollout() {
        assert_eq!(
            names("deployments", "apps"),
            [
                "Name",
                "Ready",
                "Up-to-date",
                "Available",
                "Age",
                "Containers",
                "Images",
                "Selector"
            ]
        );
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "creationTimestamp": "2025-01-01T11:57:00Z"},
            "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"}, {"name": "log", "image": "fluent-bit:3"}]}}},
            "status": {"replicas": 5, "updatedReplicas": 2, "readyReplicas": 3, "availableReplicas": 3, "unavailableReplicas": 2}});
        assert_eq!(
            row("deployments", "apps", &d, now()),
            vec![
                json!("web"),
                json!("3/4"),
                json!(2),
                json!(3),
                json!("3m"),
                json!("nginx,log"),
                json!("nginx:1.27,fluent-bit:3"),
                json!("app=web")
            ]
        );
        let fresh = json!({"metadata": {"name": "x"}, "spec": {}});
        let r = row("deployments", "apps", &fresh, now());
        assert_eq!(r[1], json!("0/1"));
        assert_eq!(r[7], json!(""));
    }

    #[test]
    fn replicasets_statefulsets_daemonsets() {
        let rs = json!({"metadata": {"name": "web-5d4f"}, "spec": {"replicas": 2,
            "selector": {"matchLabels": {"app": "web", "pod-template-hash": "5d4f"}}},
            "status": {"replicas": 2, "readyReplicas": 1}});
        assert_eq!(
            row("replicasets", "apps", &rs, now())[1..4],
            [json!(2), json!(2), json!(1)]
        );
        assert_eq!(
            row("replicasets", "apps", &rs, now())[7],
            json!("app=web,pod-template-hash=5d4f")
        );

        assert_eq!(
            names("statefulsets", "apps"),
            ["Name", "Ready", "Age", "Containers", "Images"]
        );
        let ss = json!({"metadata": {"name": "db"}, "spec": {"replicas": 3}, "status": {"readyReplicas": 1}});
        assert_eq!(row("statefulsets", "apps", &ss, now())[1], json!("1/3"));

        assert_eq!(
            names("daemonsets", "apps"),
            [
                "Name",
                "Desired",
                "Current",
                "Ready",
                "Up-to-date",
                "Available",
                "Node Selector",
                "Age",
                "Containers",
                "Images",
                "Selector"
            ]
        );
        let ds = json!({"metadata": {"name": "kube-proxy"},
            "spec": {"selector": {"matchLabels": {"k8s-app": "kube-proxy"}},
                "template": {"spec": {"nodeSelector": {"kubernetes.io/os": "linux"},
                    "containers": [{"name": "kube-proxy", "image": "rkube/kube-proxy"}]}}},
            "status": {"desiredNumberScheduled": 3, "currentNumberScheduled": 3, "numberReady": 2,
                "updatedNumberScheduled": 3, "numberAvailable": 2}});
        assert_eq!(
            row("daemonsets", "apps", &ds, now())[1..11],
            [
                json!(3),
                json!(3),
                json!(2),
                json!(3),
                json!(2),
                json!("kubernetes.io/os=linux"),
                json!("<unknown>"),
                json!("kube-proxy"),
                json!("rkube/kube-proxy"),
                json!("k8s-app=kube-proxy")
            ]
        );
    }

    #[test]
    fn controller_revisions() {
        let cr = json!({"metadata": {"name": "web-7b9", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web", "controller": true, "uid": "u"}]},
            "revision": 2});
        assert_eq!(
            row("controllerrevisions", "apps", &cr, now())[1..3],
            [json!("statefulset.apps/web"), json!(2)]
        );
        let orphan = json!({"metadata": {"name": "x"}, "revision": 1});
        assert_eq!(
            row("controllerrevisions", "apps", &orphan, now())[1],
            json!("<none>")
        );
    }

    #[test]
    fn jobs_and_cronjobs() {
        assert_eq!(
            names("jobs", "batch"),
            [
                "Name",
                "Status",
                "Completions",
                "Duration",
                "Age",
                "Containers",
                "Images",
                "Selector"
            ]
        );
        let job = json!({"metadata": {"name": "pi", "creationTimestamp": "2025-01-01T11:50:00Z"},
            "spec": {"completions": 1, "parallelism": 1,
                "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "abc"}},
                "template": {"spec": {"containers": [{"name": "pi", "image": "perl:5.34"}]}}},
            "status": {"succeeded": 1, "startTime": "2025-01-01T11:50:00Z", "completionTime": "2025-01-01T11:50:42Z",
                "conditions": [{"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True"}]}});
        assert_eq!(
            row("jobs", "batch", &job, now()),
            vec![
                json!("pi"),
                json!("Complete"),
                json!("1/1"),
                json!("42s"),
                json!("10m"),
                json!("pi"),
                json!("perl:5.34"),
                json!("batch.kubernetes.io/controller-uid=abc")
            ]
        );
        let running = json!({"metadata": {"name": "q"}, "spec": {"parallelism": 3},
            "status": {"startTime": "2025-01-01T11:57:00Z", "active": 3}});
        let r = row("jobs", "batch", &running, now());
        assert_eq!(r[1..4], [json!("Running"), json!("0/1 of 3"), json!("3m")]);
        let failed = json!({"metadata": {"name": "f"}, "spec": {"completions": 5},
            "status": {"failed": 6, "conditions": [{"type": "Failed", "status": "True"}]}});
        assert_eq!(
            row("jobs", "batch", &failed, now())[1..4],
            [json!("Failed"), json!("0/5"), json!("")]
        );

        assert_eq!(
            names("cronjobs", "batch"),
            [
                "Name",
                "Schedule",
                "Timezone",
                "Suspend",
                "Active",
                "Last Schedule",
                "Age",
                "Containers",
                "Images",
                "Selector"
            ]
        );
        let cj = json!({"metadata": {"name": "hello"}, "spec": {"schedule": "*/5 * * * *", "suspend": false,
            "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "hello", "image": "busybox"}]}}}}},
            "status": {"active": [{"name": "hello-1"}], "lastScheduleTime": "2025-01-01T11:55:00Z"}});
        assert_eq!(
            row("cronjobs", "batch", &cj, now())[1..7],
            [
                json!("*/5 * * * *"),
                json!("<none>"),
                json!("False"),
                json!(1),
                json!("5m"),
                json!("<unknown>")
            ]
        );
        let idle = json!({"metadata": {"name": "n"}, "spec": {"schedule": "@daily", "timeZone": "Etc/UTC", "suspend": true}});
        assert_eq!(
            row("cronjobs", "batch", &idle, now())[2..6],
            [json!("Etc/UTC"), json!("True"), json!(0), json!("<none>")]
        );
    }

    #[test]
    fn hpas_and_pdbs() {
        let hpa = json!({"apiVersion": "autoscaling/v2", "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "minReplicas": 2, "maxReplicas": 10,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}},
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "500Mi"}}},
                    {"type": "Pods", "pods": {"metric": {"name": "qps"}, "target": {"type": "AverageValue", "averageValue": "1k"}}}]},
            "status": {"currentReplicas": 3, "currentMetrics": [
                {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 33, "averageValue": "66m"}}}]}});
        assert_eq!(
            row("horizontalpodautoscalers", "autoscaling", &hpa, now())[1..6],
            [
                json!("Deployment/web"),
                json!("cpu: 33%/50%, memory: <unknown>/500Mi + 1 more..."),
                json!("2"),
                json!(10),
                json!(3)
            ]
        );
        let v1 = json!({"apiVersion": "autoscaling/v1", "metadata": {"name": "w"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "w"}, "maxReplicas": 5, "targetCPUUtilizationPercentage": 70}});
        assert_eq!(
            row("horizontalpodautoscalers", "autoscaling", &v1, now())[2..4],
            [json!("cpu: <unknown>/70%"), json!("1")]
        );

        let pdb = json!({"metadata": {"name": "p"}, "spec": {"minAvailable": "50%"}, "status": {"disruptionsAllowed": 1}});
        assert_eq!(
            row("poddisruptionbudgets", "policy", &pdb, now())[1..4],
            [json!("50%"), json!("N/A"), json!(1)]
        );
    }
}
