//! Decoder tests: objects built with k8s-pb's prost types, encoded the way Go's
//! gogo-protobuf does (non-pointer fields present even when zero), framed, decoded.

use prost::Message;
use serde_json::{json, Value};

use k8s_pb::api::apps::v1 as apps;
use k8s_pb::api::batch::v1 as batch;
use k8s_pb::api::coordination::v1 as coordination;
use k8s_pb::api::core::v1 as core;
use k8s_pb::apimachinery::pkg::api::resource::Quantity;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;

use super::*;

fn frame(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let unknown = Unknown {
        type_meta: Some(TypeMeta { api_version: Some(api_version.into()), kind: Some(kind.into()) }),
        raw: Some(raw),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut out = MAGIC.to_vec();
    out.extend(unknown.encode_to_vec());
    out
}

/// Decodes the framed message, and checks that encoding the JSON back and decoding it
/// again gives the same JSON.
fn roundtrip(api_version: &str, kind: &str, msg: &impl Message) -> Value {
    let value = match decode(&frame(api_version, kind, msg.encode_to_vec())) {
        Ok(v) => v,
        Err(e) => panic!("decode failed: {e}"),
    };
    let again = encode(&value).and_then(|b| decode(&b));
    match again {
        Ok(v) => assert_eq!(v, value, "encode → decode changes the object"),
        Err(e) => panic!("re-encoding failed: {e}"),
    }
    value
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

/// ObjectMeta as kubectl's generators send it: name set, every other non-pointer
/// string empty, the zero creationTimestamp an empty message.
fn meta_named(name: &str) -> meta::ObjectMeta {
    meta::ObjectMeta {
        name: s(name),
        generate_name: s(""),
        namespace: s(""),
        self_link: s(""),
        uid: s(""),
        resource_version: s(""),
        generation: Some(0),
        creation_timestamp: Some(meta::Time::default()),
        ..Default::default()
    }
}

fn int_or_string_int(i: i32) -> IntOrString {
    IntOrString { r#type: Some(0), int_val: Some(i), str_val: s("") }
}

fn int_or_string_str(v: &str) -> IntOrString {
    IntOrString { r#type: Some(1), int_val: Some(0), str_val: s(v) }
}

fn container(name: &str, image: &str) -> core::Container {
    core::Container {
        name: s(name),
        image: s(image),
        working_dir: s(""),
        termination_message_path: s(""),
        image_pull_policy: s(""),
        stdin: Some(false),
        stdin_once: Some(false),
        tty: Some(false),
        resources: Some(core::ResourceRequirements::default()),
        ..Default::default()
    }
}

fn pod_spec(containers: Vec<core::Container>) -> core::PodSpec {
    core::PodSpec {
        containers,
        restart_policy: s(""),
        dns_policy: s(""),
        service_account_name: s(""),
        node_name: s(""),
        host_network: Some(false),
        host_pid: Some(false),
        host_ipc: Some(false),
        hostname: s(""),
        subdomain: s(""),
        scheduler_name: s(""),
        ..Default::default()
    }
}

#[test]
fn namespace() {
    let ns = core::Namespace {
        metadata: Some(meta_named("demo")),
        spec: Some(core::NamespaceSpec::default()),
        status: Some(core::NamespaceStatus { phase: s(""), ..Default::default() }),
    };
    let got = roundtrip("v1", "Namespace", &ns);
    assert_eq!(got, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}, "spec": {}, "status": {}}));
    let keys: Vec<&String> = got.as_object().map(|o| o.keys().collect()).unwrap_or_default();
    assert_eq!(keys, ["apiVersion", "kind", "metadata", "spec", "status"]);
}

#[test]
fn configmap_with_binary_data() {
    let cm = core::ConfigMap {
        metadata: Some(meta::ObjectMeta { labels: [("b".to_string(), "2".to_string()), ("a".to_string(), "1".to_string())].into(), ..meta_named("c") }),
        data: [("a".to_string(), "b".to_string()), ("empty".to_string(), String::new())].into(),
        binary_data: [("bin".to_string(), vec![0u8, 1, 2, 255])].into(),
        immutable: None,
    };
    let got = roundtrip("v1", "ConfigMap", &cm);
    assert_eq!(
        got,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "c", "labels": {"a": "1", "b": "2"}},
               "data": {"a": "b", "empty": ""}, "binaryData": {"bin": "AAEC/w=="}})
    );
    let label_keys: Vec<&String> = got["metadata"]["labels"].as_object().map(|o| o.keys().collect()).unwrap_or_default();
    assert_eq!(label_keys, ["a", "b"], "map keys are sorted as encoding/json writes them");
}

#[test]
fn secret_bytes_are_base64() {
    let secret = core::Secret {
        metadata: Some(meta::ObjectMeta { namespace: s("default"), ..meta_named("s") }),
        immutable: None,
        data: [("k".to_string(), b"v".to_vec())].into(),
        string_data: Default::default(),
        r#type: s("Opaque"),
    };
    let got = roundtrip("v1", "Secret", &secret);
    assert_eq!(
        got,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "default"},
               "data": {"k": "dg=="}, "type": "Opaque"})
    );
}

#[test]
fn deployment_nested_template_and_zeros() {
    let labels: std::collections::BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
    let deployment = apps::Deployment {
        metadata: Some(meta::ObjectMeta { labels: labels.clone(), ..meta_named("web") }),
        spec: Some(apps::DeploymentSpec {
            replicas: Some(0),
            selector: Some(meta::LabelSelector { match_labels: labels.clone(), match_expressions: vec![] }),
            template: Some(core::PodTemplateSpec {
                metadata: Some(meta::ObjectMeta { labels: labels.clone(), ..meta_named("") }),
                spec: Some(pod_spec(vec![container("nginx", "nginx")])),
            }),
            strategy: Some(apps::DeploymentStrategy {
                r#type: s("RollingUpdate"),
                rolling_update: Some(apps::RollingUpdateDeployment {
                    max_unavailable: Some(int_or_string_int(1)),
                    max_surge: Some(int_or_string_str("25%")),
                }),
            }),
            min_ready_seconds: Some(0),
            paused: Some(false),
            ..Default::default()
        }),
        status: Some(apps::DeploymentStatus {
            observed_generation: Some(0),
            replicas: Some(0),
            updated_replicas: Some(0),
            ready_replicas: Some(0),
            available_replicas: Some(0),
            unavailable_replicas: Some(0),
            ..Default::default()
        }),
    };
    let got = roundtrip("apps/v1", "Deployment", &deployment);
    assert_eq!(
        got,
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "nginx", "image": "nginx", "resources": {}}]}
                },
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": "25%"}}
            },
            "status": {}
        })
    );
}

#[test]
fn service_int_or_string_and_ip_names() {
    let svc = core::Service {
        metadata: Some(meta::ObjectMeta { labels: [("app".to_string(), "s2".to_string())].into(), ..meta_named("s2") }),
        spec: Some(core::ServiceSpec {
            ports: vec![core::ServicePort {
                name: s("80-8080"),
                protocol: s("TCP"),
                port: Some(80),
                target_port: Some(int_or_string_int(8080)),
                node_port: Some(0),
                ..Default::default()
            }],
            selector: [("app".to_string(), "s2".to_string())].into(),
            cluster_ip: s("10.0.0.10"),
            cluster_ips: vec!["10.0.0.10".to_string()],
            r#type: s("ClusterIP"),
            session_affinity: s(""),
            load_balancer_ip: s(""),
            external_name: s(""),
            external_traffic_policy: s(""),
            health_check_node_port: Some(0),
            publish_not_ready_addresses: Some(false),
            ..Default::default()
        }),
        status: Some(core::ServiceStatus { load_balancer: Some(core::LoadBalancerStatus::default()), conditions: vec![] }),
    };
    let got = roundtrip("v1", "Service", &svc);
    assert_eq!(
        got,
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "s2", "labels": {"app": "s2"}},
            "spec": {
                "ports": [{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080}],
                "selector": {"app": "s2"},
                "clusterIP": "10.0.0.10",
                "clusterIPs": ["10.0.0.10"],
                "type": "ClusterIP"
            },
            "status": {"loadBalancer": {}}
        })
    );
}

#[test]
fn job_with_pointers() {
    let job = batch::Job {
        metadata: Some(meta_named("j")),
        spec: Some(batch::JobSpec {
            backoff_limit: Some(6),
            parallelism: Some(0),
            template: Some(core::PodTemplateSpec {
                metadata: Some(meta_named("")),
                spec: Some(core::PodSpec { restart_policy: s("Never"), ..pod_spec(vec![container("j", "busybox")]) }),
            }),
            ..Default::default()
        }),
        status: Some(batch::JobStatus { active: Some(0), succeeded: Some(0), failed: Some(0), ..Default::default() }),
    };
    let got = roundtrip("batch/v1", "Job", &job);
    assert_eq!(
        got,
        json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "j"},
            "spec": {
                "parallelism": 0,
                "backoffLimit": 6,
                "template": {
                    "metadata": {},
                    "spec": {"containers": [{"name": "j", "image": "busybox", "resources": {}}], "restartPolicy": "Never"}
                }
            },
            "status": {}
        })
    );
}

#[test]
fn pod_with_resources_times_and_volumes() {
    let mut c = container("p", "busybox");
    c.resources = Some(core::ResourceRequirements {
        limits: [("cpu".to_string(), Quantity { string: s("500m") }), ("memory".to_string(), Quantity { string: s("128Mi") })].into(),
        requests: [("cpu".to_string(), Quantity { string: s("100m") })].into(),
        claims: vec![],
    });
    c.command = vec!["sleep".into(), "3600".into()];
    let mut spec = pod_spec(vec![c]);
    spec.volumes = vec![core::Volume {
        name: s("scratch"),
        volume_source: Some(core::VolumeSource { empty_dir: Some(core::EmptyDirVolumeSource::default()), ..Default::default() }),
    }];
    spec.termination_grace_period_seconds = Some(0);
    let pod = core::Pod {
        metadata: Some(meta::ObjectMeta {
            creation_timestamp: Some(meta::Time { seconds: Some(1_700_000_000), nanos: Some(0) }),
            ..meta_named("p")
        }),
        spec: Some(spec),
        status: Some(core::PodStatus {
            phase: s("Pending"),
            conditions: vec![core::PodCondition {
                r#type: s("PodScheduled"),
                status: s("True"),
                last_probe_time: Some(meta::Time::default()),
                last_transition_time: Some(meta::Time { seconds: Some(0), nanos: Some(0) }),
                reason: s(""),
                message: s(""),
                ..Default::default()
            }],
            ..Default::default()
        }),
    };
    let got = roundtrip("v1", "Pod", &pod);
    assert_eq!(
        got,
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "creationTimestamp": "2023-11-14T22:13:20Z"},
            "spec": {
                "volumes": [{"name": "scratch", "emptyDir": {}}],
                "containers": [{
                    "name": "p", "image": "busybox", "command": ["sleep", "3600"],
                    "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}, "requests": {"cpu": "100m"}}
                }],
                "terminationGracePeriodSeconds": 0
            },
            "status": {
                "phase": "Pending",
                "conditions": [{"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": "1970-01-01T00:00:00Z"}]
            }
        })
    );
}

#[test]
fn lease_micro_time() {
    let lease = coordination::Lease {
        metadata: Some(meta::ObjectMeta { namespace: s("kube-node-lease"), ..meta_named("n1") }),
        spec: Some(coordination::LeaseSpec {
            holder_identity: s("n1"),
            lease_duration_seconds: Some(40),
            renew_time: Some(meta::MicroTime { seconds: Some(1_700_000_000), nanos: Some(123_456_789) }),
            ..Default::default()
        }),
    };
    let got = roundtrip("coordination.k8s.io/v1", "Lease", &lease);
    assert_eq!(got["spec"], json!({"holderIdentity": "n1", "leaseDurationSeconds": 40, "renewTime": "2023-11-14T22:13:20.123456Z"}));
}

#[test]
fn role_rules_and_negative_int32() {
    use k8s_pb::api::rbac::v1 as rbac;
    let role = rbac::Role {
        metadata: Some(meta_named("r")),
        rules: vec![rbac::PolicyRule {
            verbs: vec!["get".into(), "list".into()],
            api_groups: vec![String::new()],
            resources: vec!["pods".into()],
            ..Default::default()
        }],
    };
    let got = roundtrip("rbac.authorization.k8s.io/v1", "Role", &role);
    assert_eq!(got["rules"], json!([{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}]));

    let mut c = container("c", "i");
    c.ports = vec![core::ContainerPort { container_port: Some(-5), ..Default::default() }];
    let pod = core::Pod { metadata: Some(meta_named("p")), spec: Some(pod_spec(vec![c])), status: None };
    let got = roundtrip("v1", "Pod", &pod);
    assert_eq!(got["spec"]["containers"][0]["ports"], json!([{"containerPort": -5}]));
}

#[test]
fn delete_options_fall_back_to_meta() {
    let opts = meta::DeleteOptions { propagation_policy: s("Foreground"), ..Default::default() };
    let got = roundtrip("v1", "DeleteOptions", &opts);
    assert_eq!(got, json!({"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Foreground"}));
}

#[test]
fn errors() {
    assert!(matches!(decode(b"{}"), Err(ProtobufError::BadMagic)));
    assert!(matches!(decode(&frame("v1", "NoSuchKind", vec![])), Err(ProtobufError::UnknownKind { .. })));
    assert!(matches!(decode(&frame("", "", vec![])), Err(ProtobufError::MissingTypeMeta)));
    let mut truncated = frame("v1", "Namespace", meta_named("x").encode_to_vec());
    truncated.truncate(truncated.len() - 2);
    assert!(decode(&truncated).is_err());
    // Namespace.metadata (field 1) sent as a varint.
    assert!(matches!(decode(&frame("v1", "Namespace", vec![0x08, 0x01])), Err(ProtobufError::WireTypeMismatch { .. })));
}

#[test]
fn deep_nesting_is_refused() {
    // JSONSchemaProps.not (field 28, length-delimited) nested far past the limit.
    let mut raw = Vec::new();
    for _ in 0..(MAX_DEPTH + 10) {
        let mut outer = Vec::new();
        encode::put_varint(&mut outer, (28 << 3) | 2);
        encode::put_varint(&mut outer, raw.len() as u64);
        outer.extend(raw);
        raw = outer;
    }
    let Some(idx) = message_index("k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1.JSONSchemaProps") else {
        panic!("JSONSchemaProps is in the table");
    };
    assert!(matches!(decode_message(idx, &raw, 0), Err(ProtobufError::TooDeep)));
}

#[test]
fn tables_are_sorted_for_binary_search() {
    assert!(MESSAGES.windows(2).all(|w| w[0].name < w[1].name));
    assert!(GROUP_VERSIONS.windows(2).all(|w| w[0].0 < w[1].0));
    for gv in ["v1", "apps/v1", "batch/v1", "networking.k8s.io/v1", "rbac.authorization.k8s.io/v1", "apiextensions.k8s.io/v1"] {
        assert!(GROUP_VERSIONS.iter().any(|(g, _)| *g == gv), "{gv}");
    }
}

#[test]
fn go_durations() {
    assert_eq!(go_duration(0), "0s");
    assert_eq!(go_duration(1), "1ns");
    assert_eq!(go_duration(1_500), "1.5µs");
    assert_eq!(go_duration(300_000_000), "300ms");
    assert_eq!(go_duration(1_500_000_000), "1.5s");
    assert_eq!(go_duration(60_000_000_000), "1m0s");
    assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
    assert_eq!(go_duration(-90_000_000_000), "-1m30s");
}

#[test]
fn raw_extension_and_int_or_string() {
    let Some(idx) = message_index("k8s.io.apimachinery.pkg.runtime.RawExtension") else { panic!("RawExtension in the table") };
    let raw = k8s_pb::apimachinery::pkg::runtime::RawExtension { raw: Some(br#"{"a":[1,2]}"#.to_vec()) }.encode_to_vec();
    assert_eq!(decode_message(idx, &raw, 0).ok(), Some(json!({"a": [1, 2]})));
    assert_eq!(decode_message(idx, &[], 0).ok(), Some(Value::Null));
    let Some(idx) = message_index("k8s.io.apimachinery.pkg.util.intstr.IntOrString") else { panic!("IntOrString in the table") };
    assert_eq!(decode_message(idx, &int_or_string_str("50%").encode_to_vec(), 0).ok(), Some(json!("50%")));
    assert_eq!(decode_message(idx, &int_or_string_int(-3).encode_to_vec(), 0).ok(), Some(json!(-3)));
}

#[test]
fn every_message_decodes_from_empty_and_reencodes() {
    for (i, m) in MESSAGES.iter().enumerate() {
        let Ok(idx) = u16::try_from(i) else { panic!("table too large") };
        let zero = match decode_message(idx, &[], 0) {
            Ok(v) => v,
            Err(e) => panic!("{}: {e}", m.name),
        };
        let bytes = match encode::encode_message_for_test(idx, &zero) {
            Ok(b) => b,
            Err(e) => panic!("{}: {e}", m.name),
        };
        assert_eq!(decode_message(idx, &bytes, 0).ok(), Some(zero), "{}", m.name);
    }
}

#[test]
fn go_duration_parse_roundtrip() {
    for d in [0, 1, 1_500, 300_000_000, 1_500_000_000, 60_000_000_000, 3_600_000_000_000, -90_000_000_000, 5_445_000_000_123] {
        assert_eq!(crate::codec::parse_go_duration(&go_duration(d)), Some(d), "{d}");
    }
    assert_eq!(crate::codec::parse_go_duration("1h30m"), Some(5_400_000_000_000));
    assert_eq!(crate::codec::parse_go_duration("10"), None);
    assert_eq!(crate::codec::parse_go_duration(""), None);
}

#[test]
fn encode_matches_gogo_layout() {
    // A Namespace named "demo": fields in number order, the envelope's empty strings written.
    let value = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}});
    let Ok(bytes) = encode(&value) else { panic!("encodes") };
    let ns = core::Namespace { metadata: Some(meta::ObjectMeta { name: s("demo"), ..Default::default() }), spec: None, status: None };
    assert_eq!(bytes, frame("v1", "Namespace", ns.encode_to_vec()));
    assert!(matches!(encode(&json!({"kind": "Pod"})), Err(ProtobufError::MissingTypeMeta)));
    assert!(matches!(
        encode(&json!({"apiVersion": "v1", "kind": "Pod", "spec": {"containers": "x"}})),
        Err(ProtobufError::JsonType { .. })
    ));
}
