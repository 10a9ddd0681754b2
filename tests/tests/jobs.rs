//! Batch controllers against an in-process cluster with fake nodes whose kubelet finishes
//! pods with the exit code of their `rkube.test/exit-code` annotation: Jobs complete
//! with parallelism, fail at backoffLimit, give Indexed pods their indexes, are deleted
//! `ttlSecondsAfterFinished` after finishing (pods and all, by the garbage collector),
//! and a CronJob's template runs through the stock `kubectl create job --from`, with
//! `kubectl wait --for=condition=complete` and `kubectl get jobs` against it.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Pod;
use futures::TryStreamExt as _;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::ResourceExt;
use rkube_tests::cluster::{eventually, Cluster};
use rkube_tests::fakenode::{create_node, run_fake_kubelet, run_fake_scheduler, NodeShape, EXIT_CODE_ANNOTATION, RUN_MILLIS_ANNOTATION};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);
const NS: &str = "default";

/// A cluster with two fake nodes and every controller, the Job backoff cut to 200 ms.
async fn setup() -> anyhow::Result<Cluster> {
    let cluster = Cluster::start().await?;
    let nodes = vec!["node-a".to_string(), "node-b".to_string()];
    for n in &nodes {
        create_node(&cluster.client, n, &NodeShape::default()).await?;
    }
    run_fake_kubelet(cluster.client.clone(), nodes.clone(), cluster.shutdown.clone());
    run_fake_scheduler(cluster.client.clone(), nodes, cluster.shutdown.clone());
    let config = controller_manager::Config {
        kubeconfig: Some(cluster.kubeconfig.clone()),
        controllers: vec!["*".into()],
        leader_elect: false,
        cluster_cidr: Some("10.42.0.0/16".into()),
        job_pod_failure_backoff: Duration::from_millis(200),
        ..Default::default()
    };
    let token = cluster.shutdown.child_token();
    tokio::spawn(async move {
        if let Err(e) = controller_manager::run(config, token).await {
            eprintln!("controller-manager stopped: {e:#}");
        }
    });
    Ok(cluster)
}

fn job_json(name: &str, exit_code: i32, extra: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({
        "template": {
            "metadata": {"annotations": {EXIT_CODE_ANNOTATION: exit_code.to_string(), RUN_MILLIS_ANNOTATION: "300"}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox:1", "command": ["true"]}]},
        },
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec})
}

async fn create_job(client: &kube::Client, body: serde_json::Value) -> anyhow::Result<Job> {
    let api: Api<Job> = Api::namespaced(client.clone(), NS);
    Ok(api.create(&PostParams::default(), &serde_json::from_value(body)?).await?)
}

fn condition(job: &Job, type_: &str) -> Option<(String, String)> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
}

/// Waits until the job has a True condition of `type_`.
async fn wait_condition(client: &kube::Client, name: &str, type_: &str) -> anyhow::Result<Job> {
    let api: Api<Job> = Api::namespaced(client.clone(), NS);
    eventually(WAIT, &format!("job {name} {type_}"), || async {
        let j = api.get(name).await?;
        Ok(condition(&j, type_).is_some_and(|(s, _)| s == "True").then_some(j))
    })
    .await
}

async fn pods_of(client: &kube::Client, job: &str) -> anyhow::Result<Vec<Pod>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    Ok(api.list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}"))).await?.items)
}

fn phase(p: &Pod) -> String {
    p.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default()
}

/// Runs the stock kubectl against the cluster; returns stdout, failing on a non-zero exit.
async fn kubectl(cluster: &Cluster, args: &[&str]) -> anyhow::Result<String> {
    let kubeconfig = cluster.kubeconfig.clone();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("kubectl").args(&args).env("KUBECONFIG", &kubeconfig).output().context("running kubectl")?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        anyhow::ensure!(out.status.success(), "kubectl {args:?} failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        Ok(stdout)
    })
    .await?
}

#[tokio::test]
async fn job_with_parallelism_completes() -> anyhow::Result<()> {
    let cluster = setup().await?;
    let client = &cluster.client;
    let created = create_job(client, job_json("pi", 0, json!({"completions": 3, "parallelism": 2}))).await?;
    let uid = created.uid().unwrap_or_default();

    // Never more than 2 pods run at once.
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    let max_running = std::cell::Cell::new(0usize);
    let job = eventually(WAIT, "job pi complete", || {
        let api = api.clone();
        let jobs: Api<Job> = Api::namespaced(client.clone(), NS);
        let max_running = &max_running;
        async move {
            let pods = api.list(&ListParams::default().labels("job-name=pi")).await?.items;
            let running = pods.iter().filter(|p| !matches!(phase(p).as_str(), "Succeeded" | "Failed")).count();
            max_running.set(max_running.get().max(running));
            let j = jobs.get("pi").await?;
            Ok(condition(&j, "Complete").is_some_and(|(s, _)| s == "True").then_some(j))
        }
    })
    .await?;
    let max_running = max_running.get();
    assert!(max_running <= 2, "at most parallelism pods at once, saw {max_running}");
    let status = job.status.clone().unwrap_or_default();
    assert_eq!(status.succeeded, Some(3));
    assert_eq!(status.active.unwrap_or(0), 0);
    assert!(status.start_time.is_some() && status.completion_time.is_some());
    assert_eq!(condition(&job, "Complete").map(|c| c.1).as_deref(), Some("CompletionsReached"));
    assert_eq!(condition(&job, "SuccessCriteriaMet").map(|c| c.0).as_deref(), Some("True"));

    let pods = pods_of(client, "pi").await?;
    assert_eq!(pods.len(), 3, "exactly 3 pods ran");
    for p in &pods {
        assert_eq!(phase(p), "Succeeded");
        let labels = p.labels();
        assert_eq!(labels.get("batch.kubernetes.io/controller-uid"), Some(&uid));
        assert_eq!(labels.get("controller-uid"), Some(&uid));
        assert_eq!(labels.get("job-name").map(String::as_str), Some("pi"));
        let owner = p.owner_references().first().cloned().context("pod without owner")?;
        assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.controller), ("Job", "pi", Some(true)));
    }

    // The stock kubectl sees it complete.
    let out = kubectl(&cluster, &["wait", "--for=condition=complete", "job/pi", "--timeout=30s"]).await?;
    assert!(out.contains("job.batch/pi condition met"), "{out}");
    let out = kubectl(&cluster, &["get", "jobs", "pi"]).await?;
    assert!(out.contains("Complete") && out.contains("3/3"), "{out}");
    let mut lines: Vec<(&str, &str, String)> = pods.iter().map(|p| ("SuccessfulCreate", "job-controller", format!("Created pod: {}", p.name_any()))).collect();
    lines.push(("Completed", "job-controller", "Job completed".into()));
    let lines: Vec<(&str, &str, &str)> = lines.iter().map(|(r, f, m)| (*r, *f, m.as_str())).collect();
    cluster.describe_shows(&["job", "pi"], &lines).await?;
    Ok(())
}

#[tokio::test]
async fn failing_job_stops_at_backoff_limit() -> anyhow::Result<()> {
    let cluster = setup().await?;
    let client = &cluster.client;
    create_job(client, job_json("boom", 1, json!({"backoffLimit": 1}))).await?;
    let job = wait_condition(client, "boom", "Failed").await?;
    assert_eq!(condition(&job, "Failed").map(|c| c.1).as_deref(), Some("BackoffLimitExceeded"));
    assert_eq!(condition(&job, "FailureTarget").map(|c| c.1).as_deref(), Some("BackoffLimitExceeded"));
    assert_eq!(condition(&job, "Complete"), None);
    let status = job.status.clone().unwrap_or_default();
    assert_eq!(status.failed, Some(2), "backoffLimit 1: one retry, then failed");
    assert_eq!(status.succeeded.unwrap_or(0), 0);
    // No further pods after failing.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let pods = pods_of(client, "boom").await?;
    assert_eq!(pods.len(), 2, "{:?}", pods.iter().map(|p| (p.name_any(), phase(p))).collect::<Vec<_>>());
    assert!(pods.iter().all(|p| phase(p) == "Failed"));
    let out = kubectl(&cluster, &["get", "jobs", "boom"]).await?;
    assert!(out.contains("Failed") && out.contains("0/1"), "{out}");
    cluster.describe_shows(&["job", "boom"], &[("BackoffLimitExceeded", "job-controller", "Job has reached the specified backoff limit")]).await?;
    Ok(())
}

#[tokio::test]
async fn job_over_its_active_deadline_fails() -> anyhow::Result<()> {
    let cluster = setup().await?;
    let client = &cluster.client;
    let mut body = job_json("slow", 0, json!({"activeDeadlineSeconds": 1}));
    body["spec"]["template"]["metadata"]["annotations"][RUN_MILLIS_ANNOTATION] = json!("60000");
    create_job(client, body).await?;
    let job = wait_condition(client, "slow", "Failed").await?;
    assert_eq!(condition(&job, "Failed").map(|c| c.1).as_deref(), Some("DeadlineExceeded"));
    // Its running pod was deleted.
    eventually(WAIT, "the slow job's pod gone", || async { Ok(pods_of(client, "slow").await?.is_empty().then_some(())) }).await?;
    Ok(())
}

#[tokio::test]
async fn indexed_job_runs_each_index_once() -> anyhow::Result<()> {
    let cluster = setup().await?;
    let client = &cluster.client;
    create_job(client, job_json("idx", 0, json!({"completions": 4, "parallelism": 2, "completionMode": "Indexed"}))).await?;
    let job = wait_condition(client, "idx", "Complete").await?;
    let status = job.status.clone().unwrap_or_default();
    assert_eq!(status.succeeded, Some(4));
    assert_eq!(status.completed_indexes.as_deref(), Some("0-3"));
    let pods = pods_of(client, "idx").await?;
    let mut indexes = BTreeSet::new();
    for p in &pods {
        let i = p.annotations().get("batch.kubernetes.io/job-completion-index").cloned().context("pod without index")?;
        assert_eq!(p.labels().get("batch.kubernetes.io/job-completion-index"), Some(&i));
        assert_eq!(p.spec.as_ref().and_then(|s| s.hostname.clone()), Some(format!("idx-{i}")));
        assert!(p.name_any().starts_with(&format!("idx-{i}-")), "{}", p.name_any());
        let env = p.spec.as_ref().and_then(|s| s.containers.first()).and_then(|c| c.env.clone()).unwrap_or_default();
        assert!(env.iter().any(|e| e.name == "JOB_COMPLETION_INDEX"), "{env:?}");
        assert!(indexes.insert(i.parse::<i32>()?), "index {i} ran twice");
    }
    assert_eq!(indexes, (0..4).collect::<BTreeSet<i32>>());
    Ok(())
}

#[tokio::test]
async fn finished_job_is_deleted_after_its_ttl() -> anyhow::Result<()> {
    let cluster = setup().await?;
    let client = &cluster.client;
    let created = create_job(client, job_json("short", 0, json!({"ttlSecondsAfterFinished": 1}))).await?;
    // Condition times are whole seconds, so a one-second TTL can delete the Job within
    // milliseconds of its Complete condition: watch it rather than poll for that window.
    let api: Api<Job> = Api::namespaced(client.clone(), NS);
    let params = WatchParams::default().fields("metadata.name=short").timeout(60);
    let events = api.watch(&params, &created.resource_version().unwrap_or_default()).await?;
    let mut events = std::pin::pin!(events);
    let mut completed: Option<Job> = None;
    loop {
        let event = tokio::time::timeout(WAIT, events.try_next()).await.context("no event for a minute")??;
        match event.context("watch ended before job short was deleted")? {
            WatchEvent::Modified(job) if condition(&job, "Complete").is_some_and(|(s, _)| s == "True") => completed = Some(job),
            WatchEvent::Deleted(_) => break,
            WatchEvent::Error(e) => anyhow::bail!("watch error: {e:?}"),
            _ => {}
        }
    }
    let job = completed.context("job short was deleted without having completed")?;
    assert_eq!(job.status.as_ref().and_then(|s| s.succeeded), Some(1));
    eventually(WAIT, "pods of short collected", || async { Ok(pods_of(client, "short").await?.is_empty().then_some(())) }).await?;
    Ok(())
}

#[tokio::test]
async fn cronjob_template_runs_via_kubectl_create_job_from() -> anyhow::Result<()> {
    let cluster = setup().await?;
    let client = &cluster.client;
    // A schedule that will not fire during the test (February 30th never comes).
    let cj = json!({
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "nightly"},
        "spec": {
            "schedule": "0 0 30 2 *",
            "jobTemplate": {"spec": {"template": {
                "metadata": {"annotations": {EXIT_CODE_ANNOTATION: "0", RUN_MILLIS_ANNOTATION: "300"}},
                "spec": {"restartPolicy": "OnFailure", "containers": [{"name": "c", "image": "busybox:1", "command": ["date"]}]},
            }}},
        },
    });
    let api: Api<CronJob> = Api::namespaced(client.clone(), NS);
    api.create(&PostParams::default(), &serde_json::from_value(cj)?).await?;
    kubectl(&cluster, &["create", "job", "--from=cronjob/nightly", "manual-1"]).await?;
    let out = kubectl(&cluster, &["wait", "--for=condition=complete", "job/manual-1", "--timeout=60s"]).await?;
    assert!(out.contains("job.batch/manual-1 condition met"), "{out}");
    let job: Job = Api::namespaced(client.clone(), NS).get("manual-1").await?;
    assert_eq!(job.status.as_ref().and_then(|s| s.succeeded), Some(1));
    let owner = job.owner_references().first().cloned().context("job without owner")?;
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("CronJob", "nightly"));
    let out = kubectl(&cluster, &["get", "jobs", "manual-1"]).await?;
    assert!(out.contains("Complete") && out.contains("1/1"), "{out}");
    // The schedule did not fire: nothing was created by the controller.
    let cj = api.get("nightly").await?;
    assert!(cj.status.as_ref().and_then(|s| s.last_schedule_time.clone()).is_none());
    Ok(())
}

#[tokio::test]
async fn suspended_job_runs_no_pods_until_resumed() -> anyhow::Result<()> {
    let cluster = setup().await?;
    let client = &cluster.client;
    create_job(client, job_json("later", 0, json!({"suspend": true}))).await?;
    let job = wait_condition(client, "later", "Suspended").await?;
    assert_eq!(condition(&job, "Suspended").map(|c| c.1).as_deref(), Some("JobSuspended"));
    assert!(pods_of(client, "later").await?.is_empty());
    let api: Api<Job> = Api::namespaced(client.clone(), NS);
    api.patch("later", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&json!({"spec": {"suspend": false}}))).await?;
    let job = wait_condition(client, "later", "Complete").await?;
    assert_eq!(condition(&job, "Suspended"), Some(("False".into(), "JobResumed".into())));
    cluster
        .describe_shows(
            &["job", "later"],
            &[("Suspended", "job-controller", "Job suspended"), ("Resumed", "job-controller", "Job resumed"), ("Completed", "job-controller", "Job completed")],
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn cronjob_creates_the_due_job_tracks_it_and_trims_history() -> anyhow::Result<()> {
    let cluster = setup().await?;
    let client = &cluster.client;
    let cj = json!({
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "tick"},
        "spec": {
            "schedule": "* * * * *",
            "timeZone": "Asia/Tokyo",
            "concurrencyPolicy": "Forbid",
            "jobTemplate": {
                "metadata": {"labels": {"app": "tick"}},
                "spec": {"template": {
                    "metadata": {"annotations": {EXIT_CODE_ANNOTATION: "0", RUN_MILLIS_ANNOTATION: "1500"}},
                    "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox:1", "command": ["date"]}]},
                }},
            },
        },
    });
    let api: Api<CronJob> = Api::namespaced(client.clone(), NS);
    api.create(&PostParams::default(), &serde_json::from_value(cj)?).await?;
    // Pretend the last run was three minutes ago: the most recent minute is due now,
    // without waiting for the clock.
    let earlier = k8s_openapi::jiff::Timestamp::now().as_second() - 180;
    let earlier = k8s_openapi::jiff::Timestamp::from_second(earlier - earlier.rem_euclid(60))?;
    api.patch_status("tick", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&json!({"status": {"lastScheduleTime": earlier.to_string()}}))).await?;

    let jobs: Api<Job> = Api::namespaced(client.clone(), NS);
    let job = eventually(WAIT, "a job of tick", || async {
        Ok(jobs.list(&ListParams::default().labels("app=tick")).await?.items.into_iter().next())
    })
    .await?;
    // The controller creates the Job first and writes the CronJob's status after it, as
    // Kubernetes' does: wait for lastScheduleTime to move past the pretended last run.
    let last = eventually(WAIT, "tick's lastScheduleTime to move", || async {
        let cj = api.get("tick").await?;
        let last = cj.status.and_then(|s| s.last_schedule_time);
        Ok(last.filter(|t| t.0.as_second() > earlier.as_second()))
    })
    .await?;
    assert_eq!(last.0.as_second() % 60, 0, "{last:?}");
    let stamp = job.annotations().get("batch.kubernetes.io/cronjob-scheduled-timestamp").cloned().unwrap_or_default();
    assert!(stamp.ends_with("+09:00"), "scheduled timestamp in the CronJob's zone: {stamp}");
    let scheduled: k8s_openapi::jiff::Timestamp = stamp.parse()?;
    assert!(scheduled.as_second() > earlier.as_second() && scheduled <= last.0, "{stamp} vs {last:?}");
    assert_eq!(job.name_any(), format!("tick-{}", scheduled.as_second() / 60));
    let owner = job.owner_references().first().cloned().context("job without owner")?;
    assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.controller), ("CronJob", "tick", Some(true)));
    let active = eventually(WAIT, "tick's job active", || async {
        let cj = api.get("tick").await?;
        Ok(cj.status.and_then(|s| s.active).filter(|a| !a.is_empty()))
    })
    .await?;
    assert!(active.iter().all(|r| r.name.as_deref().is_some_and(|n| n.starts_with("tick-"))), "{active:?}");

    // Once it completes: off the active list, lastSuccessfulTime set.
    eventually(WAIT, "tick's job done", || async {
        let cj = api.get("tick").await?;
        let s = cj.status.unwrap_or_default();
        Ok((s.active.unwrap_or_default().is_empty() && s.last_successful_time.is_some()).then_some(()))
    })
    .await?;
    let out = kubectl(&cluster, &["get", "cronjobs", "tick"]).await?;
    assert!(out.contains("* * * * *") && out.contains("Asia/Tokyo"), "{out}");

    // No successful history kept: the finished job goes.
    api.patch("tick", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&json!({"spec": {"successfulJobsHistoryLimit": 0, "suspend": true}}))).await?;
    eventually(WAIT, "tick's finished job deleted", || async { Ok(jobs.get_opt(&job.name_any()).await?.is_none().then_some(())) }).await?;
    let job_name = job.name_any();
    cluster
        .describe_shows(
            &["cronjob", "tick"],
            &[
                ("SuccessfulCreate", "cronjob-controller", &format!("Created job {job_name}")),
                ("SawCompletedJob", "cronjob-controller", &format!("Saw completed job: {job_name}, condition: Complete")),
                ("SuccessfulDelete", "cronjob-controller", &format!("Deleted job {job_name}")),
            ],
        )
        .await?;
    Ok(())
}
