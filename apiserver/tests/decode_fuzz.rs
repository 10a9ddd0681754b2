//! A seeded, deterministic property test of the decode path: malformed JSON and YAML
//! (truncations, byte flips, "billion laughs" aliases, tags, huge numbers, 100k-deep
//! nesting, invalid UTF-8), protobuf garbage, wrong content types, oversized bodies and
//! garbage JSON/merge/strategic/apply patches, thrown at a running apiserver over HTTPS
//! with the admin's credentials on POST, PUT and PATCH of a few resources.
//!
//! Properties: every answer is a well-formed Kubernetes `Status` with a 4xx code (never
//! a 5xx, never a dropped connection); the server still answers `/readyz` afterwards;
//! and the store is unchanged (every list, and the store's revision, are the same
//! before and after). Only bodies that must be refused are sent.
//!
//! The same generators are run straight at `codec::decode_object` and the patch
//! functions for many more cases (no panic; a refusal is a 4xx).
//!
//! `DECODE_FUZZ_SEED` and `DECODE_FUZZ_CASES` override the seed and the number of
//! HTTP cases.

mod support;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use http::{HeaderMap, HeaderValue, Method};
use http_body_util::BodyExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use support::server::{Backend, TestServer};

const DEFAULT_SEED: u64 = 0x6b75_6265_6675_7a7a;
const DEFAULT_HTTP_CASES: usize = 1500;
/// The HTTP part stops early (and says so) past this.
const HTTP_BUDGET: Duration = Duration::from_secs(60);
const UNIT_CASES: usize = 30_000;
/// Each unit-level test stops early (and says so) past this.
const UNIT_BUDGET: Duration = Duration::from_secs(20);

/// Whether a unit-level case is worth its cost: oversized bodies and alias bombs take
/// tens of milliseconds each and say nothing new after the first few.
fn worth_running(label: &str, body_len: usize, i: usize) -> bool {
    let costly = body_len > LIMIT || label.contains("billion-laughs");
    !costly || i.is_multiple_of(25)
}
const NAMESPACE: &str = "fuzz";
const LIMIT: usize = apiserver::codec::MAX_BODY_BYTES;

fn seed() -> u64 {
    std::env::var("DECODE_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_SEED)
}

/// A resource the cases write to: its collection, an existing object, and a valid
/// object to mutate.
#[derive(Debug, Clone, Copy)]
struct Resource {
    collection: &'static str,
    target: &'static str,
    kind: &'static str,
    group: &'static str,
}

const RESOURCES: &[Resource] = &[
    Resource { collection: "/api/v1/namespaces/fuzz/configmaps", target: "/api/v1/namespaces/fuzz/configmaps/target", kind: "ConfigMap", group: "" },
    Resource { collection: "/apis/apps/v1/namespaces/fuzz/deployments", target: "/apis/apps/v1/namespaces/fuzz/deployments/target", kind: "Deployment", group: "apps" },
    Resource { collection: "/api/v1/namespaces/fuzz/services", target: "/api/v1/namespaces/fuzz/services/target", kind: "Service", group: "" },
    Resource { collection: "/api/v1/namespaces/fuzz/pods", target: "/api/v1/namespaces/fuzz/pods/target", kind: "Pod", group: "" },
    Resource { collection: "/api/v1/namespaces", target: "/api/v1/namespaces/fuzz-target", kind: "Namespace", group: "" },
];

/// What the store is compared on.
const LISTS: &[&str] = &["/api/v1/configmaps", "/apis/apps/v1/deployments", "/api/v1/services", "/api/v1/pods", "/api/v1/namespaces", "/api/v1/endpoints"];

fn valid_object(r: &Resource, name: &str) -> Value {
    let meta =
        |namespaced: bool| if namespaced { json!({"name": name, "namespace": NAMESPACE, "labels": {"app": "fuzz"}}) } else { json!({"name": name, "labels": {"app": "fuzz"}}) };
    match r.kind {
        "ConfigMap" => json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(true), "data": {"a": "b", "text": "hello world"}}),
        "Deployment" => json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(true), "spec": {
            "replicas": 1, "selector": {"matchLabels": {"app": "fuzz"}},
            "template": {"metadata": {"labels": {"app": "fuzz"}}, "spec": {"containers": [{"name": "c", "image": "busybox", "ports": [{"containerPort": 80}]}]}}}}),
        "Service" => {
            json!({"apiVersion": "v1", "kind": "Service", "metadata": meta(true), "spec": {"selector": {"app": "fuzz"}, "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}})
        }
        "Pod" => json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta(true), "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}]}}),
        _ => json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta(false)}),
    }
}

/// One request of the test.
#[derive(Debug, Clone)]
struct Case {
    label: &'static str,
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    /// Made invalid on purpose (a well-formed object no apiserver may accept), rather
    /// than malformed.
    deliberate: bool,
}

impl Case {
    fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(ct) = self.content_type {
            h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ct));
        }
        h
    }

    fn show(&self) -> String {
        let shown = String::from_utf8_lossy(&self.body[..self.body.len().min(300)]).into_owned();
        format!("[{}] {} {} ({:?}, {} bytes): {shown:?}", self.label, self.method, self.path, self.content_type, self.body.len())
    }
}

const OBJECT_TYPES: &[Option<&str>] = &[Some("application/json"), Some("application/yaml"), None, Some("application/vnd.kubernetes.protobuf")];
const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

fn pick<T: Clone>(rng: &mut StdRng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())].clone()
}

fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let n = rng.random_range(0..=max);
    (0..n).map(|_| rng.random::<u8>()).collect()
}

fn to_yaml(v: &Value) -> Vec<u8> {
    serde_yaml_ng::to_string(v).unwrap_or_default().into_bytes()
}

/// "Billion laughs": nine levels of nine aliases of the level below.
fn billion_laughs(levels: usize) -> Vec<u8> {
    let mut y = String::from("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: laughs}\nl0: &l0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    for i in 1..=levels {
        let p = i - 1;
        y.push_str(&format!("l{i}: &l{i} [*l{p},*l{p},*l{p},*l{p},*l{p},*l{p},*l{p},*l{p},*l{p}]\n"));
    }
    y.push_str(&format!("data: {{a: *l{levels}}}\n"));
    y.into_bytes()
}

fn deep(open: &str, close: &str, depth: usize, closed: bool) -> Vec<u8> {
    let mut s = open.repeat(depth);
    if closed {
        s.push_str(&close.repeat(depth));
    }
    s.into_bytes()
}

/// An object body that must not decode to an object (or is refused before it is).
fn malformed_object(rng: &mut StdRng, r: &Resource, name: &str) -> (&'static str, Option<&'static str>, Vec<u8>) {
    let valid = valid_object(r, name);
    let json_text = serde_json::to_vec(&valid).unwrap_or_default();
    match rng.random_range(0..18) {
        0 => {
            let cut = rng.random_range(0..json_text.len());
            ("truncated-json", pick(rng, &[Some("application/json"), None]), json_text[..cut].to_vec())
        }
        1 => {
            let mut b = json_text.clone();
            for _ in 0..rng.random_range(1..8) {
                let i = rng.random_range(0..b.len());
                b[i] = rng.random();
            }
            ("flipped-json", pick(rng, OBJECT_TYPES), b)
        }
        2 => ("random-bytes", pick(rng, OBJECT_TYPES), random_bytes(rng, 4096)),
        3 => {
            // Invalid UTF-8 inside a string value.
            let text = String::from_utf8_lossy(&json_text).replace("hello", "hel\u{0}lo").replace("\"b\"", "\"\u{1}b\"");
            let mut b = text.into_bytes();
            let at = b.iter().position(|&c| c == b':').unwrap_or(0) + 2;
            let garbage: &[u8] = pick(rng, &[&[0xff, 0xfe][..], &[0xc3][..], &[0xed, 0xa0, 0x80][..], &[0xf8, 0x88, 0x80, 0x80, 0x80][..]]);
            b.splice(at..at, garbage.iter().copied());
            ("invalid-utf8", pick(rng, &[Some("application/json"), Some("application/yaml")]), b)
        }
        4 => {
            let depth = pick(rng, &[129, 1000, 100_000]);
            let (open, close) = pick(rng, &[("[", "]"), ("{\"a\":", "}"), ("- ", ""), ("a:\n ", "")]);
            let ct = if open.starts_with('[') || open.starts_with('{') { pick(rng, &[Some("application/json"), Some("application/yaml")]) } else { Some("application/yaml") };
            ("deep-nesting", ct, deep(open, close, depth, rng.random_bool(0.5)))
        }
        5 => {
            // Deep nesting inside an otherwise valid object.
            let depth = pick(rng, &[200, 5000, 100_000]);
            let mut b = br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"deep"},"data":"#.to_vec();
            b.extend(deep("[", "]", depth, true));
            b.push(b'}');
            ("deep-in-object", Some("application/json"), b)
        }
        6 => ("billion-laughs", Some("application/yaml"), billion_laughs(pick(rng, &[6, 9, 12]))),
        7 => {
            let tagged = pick(
                rng,
                &[
                    "apiVersion: v1\nkind: ConfigMap\nmetadata: !!python/object:os.system {name: x}\n",
                    "!!binary |\n  R0lGODlhDAAMAIQAAP//9/X17unp5WZmZgAAAOfn515eXvPz7Y6OjuDg4J+fn5\n",
                    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: !!set {a, b}\n",
                    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: !custom {a: b}\n",
                    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: !!omap [a: b]\n",
                    "--- !<tag:yaml.org,2002:js/undefined> {}\n",
                    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: &a x}\ndata: {a: *b}\n",
                    "&a [*a]\n",
                    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n? [a, b]\n: c\n",
                    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n%YAML 1.2\n---\n",
                ],
            );
            ("yaml-tags", Some("application/yaml"), tagged.as_bytes().to_vec())
        }
        8 => {
            let number = pick(rng, &["1e999", "-1e999", "123456789012345678901234567890123456789", "0x1p9999", "NaN", "Infinity", "1e-999999", "18446744073709551616"]);
            let ct = pick(rng, &[Some("application/json"), Some("application/yaml")]);
            let body = format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"num","generation":{number}}},"data":{{"a":{number}}}}}"#);
            ("huge-numbers", ct, body.into_bytes())
        }
        9 => {
            let ct = pick(
                rng,
                &[Some("text/plain"), Some("application/xml"), Some("multipart/form-data"), Some("application/x-www-form-urlencoded"), Some("application/cbor"), Some("image/png")],
            );
            ("wrong-content-type", ct, json_text)
        }
        10 => ("json-as-protobuf", Some(PROTOBUF), json_text),
        11 => {
            let mut b = b"k8s\0".to_vec();
            match rng.random_range(0..5) {
                0 => b.extend(random_bytes(rng, 512)),
                // An envelope whose raw object is garbage.
                1 => {
                    b.extend([0x0a, 0x11, 0x0a, 0x02, b'v', b'1', 0x12, 0x09]);
                    b.extend(b"ConfigMap");
                    let raw = random_bytes(rng, 200);
                    b.push(0x12);
                    b.extend(varint(raw.len() as u64));
                    b.extend(raw);
                }
                // Lengths that run past the end, or overflow.
                2 => b.extend([0x12, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01]),
                3 => b.extend([0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
                // Messages nested thousands deep.
                _ => {
                    let mut inner: Vec<u8> = Vec::new();
                    for _ in 0..rng.random_range(100..3000) {
                        let mut outer = vec![0x12];
                        outer.extend(varint(inner.len() as u64));
                        outer.extend(inner);
                        inner = outer;
                    }
                    b.extend([0x0a, 0x11, 0x0a, 0x02, b'v', b'1', 0x12, 0x09]);
                    b.extend(b"ConfigMap");
                    b.extend(inner);
                }
            }
            ("protobuf-garbage", Some(PROTOBUF), b)
        }
        12 => ("protobuf-no-magic", Some(PROTOBUF), random_bytes(rng, 256)),
        13 => {
            // Over the limit: refused with 413 whatever it holds.
            let extra = rng.random_range(1..(1 << 20));
            let mut b = br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"big"},"data":{"a":""#.to_vec();
            b.resize(LIMIT + extra, b'x');
            b.extend(b"\"}}");
            ("huge-body", pick(rng, &[Some("application/json"), Some("application/yaml")]), b)
        }
        14 => (
            "non-object",
            pick(rng, &[Some("application/json"), Some("application/yaml")]),
            pick(rng, &["[]", "null", "42", "\"x\"", "true", "[{}]", "", " ", "~"]).as_bytes().to_vec(),
        ),
        15 => {
            let mut y = to_yaml(&valid);
            let i = rng.random_range(0..y.len().max(1));
            let junk: &[u8] = pick(rng, &[b"\t", b": :", b"\n  - [", b"{", b"\"", b"&", b"*", b"!", b"|\n\t"]);
            y.splice(i..i, junk.iter().copied());
            ("broken-yaml", Some("application/yaml"), y)
        }
        16 => {
            // Two documents, or a document that is a list of objects.
            let docs = [to_yaml(&valid), b"---\n".to_vec(), to_yaml(&valid)].concat();
            ("multi-document", Some("application/yaml"), docs)
        }
        _ => ("empty", pick(rng, OBJECT_TYPES), Vec::new()),
    }
}

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

/// A well-formed object that no apiserver may accept.
fn invalid_object(rng: &mut StdRng, r: &Resource, name: &str) -> (&'static str, Vec<u8>) {
    let mut v = valid_object(r, name);
    let label = match rng.random_range(0..14) {
        0 => {
            v["kind"] = json!(pick(rng, &["Secret", "", "configmap", "Nonsense"]));
            "wrong-kind"
        }
        1 => {
            v["apiVersion"] = json!(pick(rng, &["v2", "apps/v9", "", "nonsense.example.com/v1"]));
            "wrong-api-version"
        }
        2 => {
            v["metadata"] = pick(rng, &[json!([]), json!(5), json!("x"), json!(null)]);
            "metadata-not-an-object"
        }
        3 => {
            v["metadata"]["name"] = json!(pick(rng, &["UPPER", "-lead", "trail-", "has space", "a/b", "..", "ü", ""]));
            "invalid-name"
        }
        4 => {
            v["metadata"]["name"] = json!("n".repeat(300));
            "long-name"
        }
        5 => {
            v["metadata"]["namespace"] = json!("other-namespace");
            if r.kind == "Namespace" {
                v["metadata"]["name"] = json!("UPPER");
            }
            "namespace-mismatch"
        }
        6 => {
            v["metadata"]["labels"] = pick(rng, &[json!({"bad key!": "x"}), json!({"a": 5}), json!({"a": "v".repeat(100)}), json!("labels")]);
            "invalid-labels"
        }
        7 => {
            v["metadata"]["annotations"] = pick(rng, &[json!({"a": 5}), json!({"a": {"b": "c"}}), json!(["x"]), json!({"": "x"})]);
            "invalid-annotations"
        }
        8 => {
            v["metadata"]["name"] = json!(5);
            "name-not-a-string"
        }
        9 => {
            match r.kind {
                "ConfigMap" => v["data"] = pick(rng, &[json!({"a": 5}), json!({"a": {"b": "c"}}), json!(["x"]), json!({"bad key!": "x"})]),
                "Deployment" => v["spec"]["replicas"] = pick(rng, &[json!(-1), json!("three"), json!(1e300), json!(99999999999999i64)]),
                "Service" => v["spec"]["ports"][0]["port"] = pick(rng, &[json!(0), json!(70000), json!("http"), json!(-5)]),
                "Pod" => v["spec"]["containers"] = pick(rng, &[json!([]), json!({}), json!([{"name": "c"}]), json!([{"image": "busybox"}])]),
                _ => v["spec"] = json!({"finalizers": [5]}),
            }
            "invalid-field-type"
        }
        10 => {
            // (Only refused on updates: a create ignores the resourceVersion it is sent.)
            v["metadata"]["resourceVersion"] = json!(pick(rng, &["abc", "-1", "99999999999999999999999"]));
            "bad-resource-version"
        }
        11 => {
            v["metadata"]["generateName"] = json!("UPPER-");
            v["metadata"].as_object_mut().map(|m| m.remove("name"));
            "invalid-generate-name"
        }
        12 => {
            // Valid JSON, but deeper than the decoder accepts, under an annotation.
            let mut inner = json!("x");
            for _ in 0..200 {
                inner = json!([inner]);
            }
            v["metadata"]["annotations"] = json!({"deep": inner});
            "too-deep-value"
        }
        _ => {
            v["metadata"]["labels"] = json!({"app": "fuzz", "a": ["list"]});
            "label-not-a-string"
        }
    };
    let body = if rng.random_bool(0.8) { serde_json::to_vec(&v).unwrap_or_default() } else { to_yaml(&v) };
    (label, body)
}

/// A patch body that must be refused, and its content type.
fn bad_patch(rng: &mut StdRng, r: &Resource) -> (&'static str, &'static str, Vec<u8>) {
    const JSON_PATCH: &str = "application/json-patch+json";
    const MERGE: &str = "application/merge-patch+json";
    const STRATEGIC: &str = "application/strategic-merge-patch+json";
    const APPLY: &str = "application/apply-patch+yaml";
    match rng.random_range(0..9) {
        0 => {
            let ct = pick(rng, &[JSON_PATCH, MERGE, STRATEGIC, APPLY]);
            ("patch-random-bytes", ct, random_bytes(rng, 2048))
        }
        1 => {
            let ct = pick(rng, &[JSON_PATCH, MERGE, STRATEGIC]);
            let text = pick(rng, &["{", "[{\"op\":", "{\"metadata\":{\"labels\":{\"a\":\"b\"}}", "\u{0}", "{\"a\":1,}", "[1,2", "{'a': 1}", "{\"a\":\"\\ud800\"}"]);
            ("patch-malformed-json", ct, text.as_bytes().to_vec())
        }
        2 => {
            let op = pick(
                rng,
                &[
                    json!([{"op": "frobnicate", "path": "/metadata/labels/x", "value": "y"}]),
                    json!([{"op": "add", "value": "y"}]),
                    json!([{"op": "add", "path": "metadata/labels/x", "value": "y"}]),
                    json!([{"op": "add", "path": "/metadata/name/x", "value": "y"}]),
                    json!([{"op": "remove", "path": "/metadata/labels/does-not-exist"}]),
                    json!([{"op": "replace", "path": "/nope/nope", "value": 1}]),
                    json!([{"op": "test", "path": "/metadata/name", "value": "something-else"}]),
                    json!([{"op": "move", "from": "/metadata/missing", "path": "/metadata/labels/x"}]),
                    json!([{"op": "copy", "from": "/metadata", "path": "/metadata/labels/x"}]),
                    json!([{"op": "add", "path": "/metadata/finalizers/99999999999999999999", "value": "x"}]),
                    json!([{"op": "add", "path": "/metadata/labels/~2", "value": "y"}]),
                    json!([{"op": "add", "path": "/metadata/labels/x"}]),
                    json!([{"op": "replace", "path": "/kind", "value": "Secret"}]),
                    json!([{"op": "replace", "path": "/apiVersion", "value": "v9"}]),
                    json!([{"op": "remove", "path": "/metadata/name"}, {"op": "test", "path": "/metadata/name", "value": "x"}]),
                    json!([{"op": "add", "path": "/metadata/labels/a", "value": 5}]),
                    json!({"op": "add", "path": "/metadata/labels/x", "value": "y"}),
                    json!([5]),
                    json!([{"op": "add", "path": "/metadata/labels/x", "value": "y"}, {"op": "test", "path": "/metadata/labels/x", "value": "z"}]),
                ],
            );
            ("json-patch-invalid-op", JSON_PATCH, serde_json::to_vec(&op).unwrap_or_default())
        }
        3 => {
            let patch = pick(
                rng,
                &[
                    json!({"kind": "Secret"}),
                    json!({"apiVersion": "v9"}),
                    json!({"metadata": 5}),
                    json!({"metadata": {"labels": {"bad key!": "x"}}}),
                    json!({"metadata": {"labels": {"a": 5}}}),
                    json!({"metadata": {"annotations": {"a": {"b": 1}}}}),
                    json!({"metadata": {"resourceVersion": "1"}}),
                    json!([1, 2, 3]),
                    json!("string"),
                ],
            );
            ("merge-patch-invalid", pick(rng, &[MERGE, STRATEGIC]), serde_json::to_vec(&patch).unwrap_or_default())
        }
        4 => {
            let patch = pick(
                rng,
                &[
                    json!({"$patch": "bogus"}),
                    json!({"metadata": {"$patch": "bogus"}}),
                    json!({"metadata": {"$setElementOrder/finalizers": 5, "labels": {"a": 5}}}),
                    json!({"metadata": {"$retainKeys": "x", "labels": {"a": 5}}}),
                    json!({"metadata": {"$deleteFromPrimitiveList/finalizers": "x", "labels": {"a": 5}}}),
                    json!({"spec": {"$patch": "delete"}, "kind": "Secret"}),
                    // A list element without its merge key, in each resource's own list.
                    match r.kind {
                        "Pod" => json!({"spec": {"containers": [{"image": "x"}]}}),
                        "Deployment" => json!({"spec": {"template": {"spec": {"containers": [{"$patch": "bogus"}]}}}}),
                        "Service" => json!({"spec": {"ports": [{"name": "no-port", "$patch": "delete"}], "selector": 5}}),
                        _ => json!({"metadata": {"finalizers": ["x"], "labels": {"a": 5}}}),
                    },
                ],
            );
            ("strategic-directive-garbage", STRATEGIC, serde_json::to_vec(&patch).unwrap_or_default())
        }
        5 => {
            let text = pick(
                rng,
                &[
                    "{",
                    "a: [",
                    "- 1\n- 2\n",
                    "null",
                    "apiVersion: v1\nkind: Secret\nmetadata: {name: target}\n",
                    "apiVersion: v9\nkind: ConfigMap\nmetadata: {name: target}\n",
                    "apiVersion: v1\nkind: ConfigMap\nmetadata: 5\n",
                    "\t\tbad: indent\n",
                ],
            );
            ("apply-invalid", APPLY, text.as_bytes().to_vec())
        }
        6 => ("apply-billion-laughs", APPLY, billion_laughs(pick(rng, &[9, 12]))),
        7 => {
            let ct = pick(rng, &[JSON_PATCH, MERGE, STRATEGIC, APPLY]);
            let (open, close) = if ct == APPLY { ("- ", "") } else { ("[", "]") };
            ("patch-deep-nesting", ct, deep(open, close, pick(rng, &[200, 100_000]), rng.random_bool(0.5)))
        }
        _ => {
            let ct = pick(rng, &["application/json", "text/plain", "application/yaml", PROTOBUF, "application/apply-patch+json"]);
            let _ = r;
            ("patch-wrong-content-type", ct, br#"{"metadata":{"labels":{"x":"y"}}}"#.to_vec())
        }
    }
}

/// The next case of the HTTP test.
fn next_case(rng: &mut StdRng) -> Case {
    let r = pick(rng, RESOURCES);
    let target_name = r.target.rsplit('/').next().unwrap_or("target");
    match rng.random_range(0..10) {
        // POST of a malformed body to the collection.
        0..=3 => {
            let (label, ct, body) = malformed_object(rng, &r, "fuzz-made");
            Case { label, method: Method::POST, path: r.collection.into(), content_type: ct, body, deliberate: false }
        }
        // PUT of a malformed body to the existing object.
        4 | 5 => {
            let (label, ct, body) = malformed_object(rng, &r, target_name);
            Case { label, method: Method::PUT, path: r.target.into(), content_type: ct, body, deliberate: false }
        }
        // A well-formed but invalid object.
        6 => {
            let method = pick(rng, &[Method::POST, Method::PUT]);
            let (mut label, mut body) = invalid_object(rng, &r, if method == Method::POST { "fuzz-made" } else { target_name });
            while method == Method::POST && label == "bad-resource-version" {
                (label, body) = invalid_object(rng, &r, "fuzz-made");
            }
            let path = if method == Method::POST { r.collection } else { r.target };
            Case { label, method, path: path.into(), content_type: Some(if body.first() == Some(&b'{') { "application/json" } else { "application/yaml" }), body, deliberate: true }
        }
        // PATCH garbage.
        _ => {
            let (label, ct, body) = bad_patch(rng, &r);
            let query = if ct.starts_with("application/apply-patch") && rng.random_bool(0.8) { "?fieldManager=fuzz" } else { "" };
            Case { label, method: Method::PATCH, path: format!("{}{query}", r.target), content_type: Some(ct), body, deliberate: true }
        }
    }
}

/// Whether `body` is a Kubernetes `Status` for a failure with `code`.
fn check_status(code: u16, body: &[u8]) -> Result<(), String> {
    if !(400..500).contains(&code) {
        return Err(format!("answered {code}: {}", String::from_utf8_lossy(&body[..body.len().min(500)])));
    }
    let status: Value =
        serde_json::from_slice(body).map_err(|e| format!("{code} with a body that is not JSON ({e}): {:?}", String::from_utf8_lossy(&body[..body.len().min(300)])))?;
    let ok = status["kind"] == "Status"
        && status["apiVersion"] == "v1"
        && status["status"] == "Failure"
        && status["code"] == code
        && status["reason"].as_str().is_some_and(|r| !r.is_empty())
        && status["message"].is_string();
    if !ok {
        return Err(format!("{code} with a malformed Status: {status}"));
    }
    Ok(())
}

async fn send(client: &kube::Client, method: Method, path: &str, content_type: Option<&str>, body: Vec<u8>) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut req = http::Request::builder().method(method).uri(path);
    if let Some(ct) = content_type {
        req = req.header(http::header::CONTENT_TYPE, ct);
    }
    let answer = client.send(req.body(kube::client::Body::from(body))?).await?;
    let code = answer.status().as_u16();
    Ok((code, answer.into_body().collect().await?.to_bytes().to_vec()))
}

/// Every list the store is compared on, and the store's revision.
async fn snapshot(client: &kube::Client) -> anyhow::Result<Vec<(String, Value)>> {
    let mut out = Vec::new();
    for path in LISTS {
        let (code, body) = send(client, Method::GET, path, None, Vec::new()).await?;
        ensure!(code == 200, "listing {path}: {code}");
        let list: Value = serde_json::from_slice(&body)?;
        // The items with their resourceVersions, not the list's: the store's revision
        // moves on its own (the apiserver renews its lease every 10 s).
        out.push((path.to_string(), list["items"].clone()));
    }
    Ok(out)
}

/// A client that does not retry (kube-rs retries 429/503/504 by default).
async fn admin_client(server: &TestServer) -> anyhow::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(&server.kubeconfig)?;
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    config.default_retry = false;
    config.read_timeout = Some(Duration::from_secs(60));
    Ok(kube::Client::try_from(config)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_get_4xx_statuses_and_change_nothing() -> anyhow::Result<()> {
    let Some(server) = TestServer::start(Backend::Embedded).await? else { return Ok(()) };
    let client = admin_client(&server).await?;
    // The objects the PUTs and PATCHes aim at.
    let ns = valid_object(&RESOURCES[4], NAMESPACE);
    ensure!(send(&client, Method::POST, "/api/v1/namespaces", Some("application/json"), serde_json::to_vec(&ns)?).await?.0 == 201);
    for r in RESOURCES {
        let name = r.target.rsplit('/').next().context("name")?;
        let (code, body) = send(&client, Method::POST, r.collection, Some("application/json"), serde_json::to_vec(&valid_object(r, name))?).await?;
        ensure!(code == 201, "creating {}: {code} {}", r.target, String::from_utf8_lossy(&body));
    }
    let before = snapshot(&client).await?;

    let cases: usize = std::env::var("DECODE_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_HTTP_CASES);
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let mut failures: Vec<String> = Vec::new();
    let mut by_label: std::collections::BTreeMap<&str, (usize, std::collections::BTreeSet<u16>)> = Default::default();
    let (mut sent, mut skipped) = (0, 0);
    for i in 0..cases {
        if started.elapsed() > HTTP_BUDGET {
            eprintln!("stopping after {i} cases: the time budget is spent");
            break;
        }
        let case = next_case(&mut rng);
        // Only bodies that must be refused: a malformed body that happens to decode to an
        // object (a flipped byte inside a string) might be a valid one; skip it.
        if !case.deliberate && apiserver::codec::decode_object(&case.headers(), &case.body).is_ok() {
            skipped += 1;
            continue;
        }
        match send(&client, case.method.clone(), &case.path, case.content_type, case.body.clone()).await {
            Ok((code, body)) => {
                let entry = by_label.entry(case.label).or_default();
                entry.0 += 1;
                entry.1.insert(code);
                if let Err(why) = check_status(code, &body) {
                    failures.push(format!("case {i} (seed {seed}) {}\n    {why}", case.show()));
                }
            }
            Err(e) => failures.push(format!("case {i} (seed {seed}) {}\n    the request failed: {e:#}", case.show())),
        }
        sent += 1;
    }
    let took = started.elapsed();
    eprintln!("{sent} HTTP cases in {took:?} ({:.0}/s), {skipped} skipped as possibly valid, seed {seed}", sent as f64 / took.as_secs_f64());
    for (label, (n, codes)) in &by_label {
        eprintln!("  {label:28} {n:5}  {codes:?}");
    }

    let (code, body) = send(&client, Method::GET, "/readyz", None, Vec::new()).await?;
    ensure!(code == 200 && body == b"ok", "/readyz after the cases: {code} {}", String::from_utf8_lossy(&body));
    let after = snapshot(&client).await?;
    for ((what, was), (_, now)) in before.iter().zip(&after) {
        if was != now {
            failures.push(format!("the store changed: {what}\n    before: {was}\n    after:  {now}"));
        }
    }
    if !failures.is_empty() {
        let n = failures.len();
        failures.truncate(30);
        bail!("{n} failures:\n{}", failures.join("\n"));
    }
    Ok(())
}

/// Runs `f`, turning a panic into a failure that names the case.
fn no_panic<T>(what: &str, f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Result<T, String> {
    std::panic::catch_unwind(f).map_err(|p| {
        let message = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
        format!("{what}: panicked: {message}")
    })
}

#[test]
fn decode_object_refuses_garbage_without_panicking() -> anyhow::Result<()> {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut failures = Vec::new();
    let (mut refused, mut ran) = (0, 0);
    let started = Instant::now();
    for i in 0..UNIT_CASES {
        if started.elapsed() > UNIT_BUDGET {
            eprintln!("decode: stopping after {i} cases: the time budget is spent");
            break;
        }
        let r = pick(&mut rng, RESOURCES);
        let (label, ct, body) = if rng.random_bool(0.8) {
            malformed_object(&mut rng, &r, "unit")
        } else {
            let (label, body) = invalid_object(&mut rng, &r, "unit");
            (label, Some("application/json"), body)
        };
        if !worth_running(label, body.len(), i) {
            continue;
        }
        ran += 1;
        let case = Case { label, method: Method::POST, path: r.collection.into(), content_type: ct, body, deliberate: false };
        let headers = case.headers();
        match no_panic(&case.show(), || apiserver::codec::decode_object(&headers, &case.body)) {
            Err(why) => failures.push(format!("case {i} (seed {seed}): {why}")),
            Ok(Ok(v)) if !v.is_object() => failures.push(format!("case {i}: decoded to a non-object: {}", case.show())),
            Ok(Ok(_)) => {}
            Ok(Err(e)) if (400..500).contains(&e.code) => refused += 1,
            Ok(Err(e)) => failures.push(format!("case {i}: {e} for {}", case.show())),
        }
    }
    eprintln!("{ran} decode cases in {:?}, {refused} refused, seed {seed}", started.elapsed());
    ensure!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.iter().take(20).cloned().collect::<Vec<_>>().join("\n"));
    Ok(())
}

#[test]
fn patch_functions_refuse_garbage_without_panicking() -> anyhow::Result<()> {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed ^ 0xa7c4);
    let mut failures = Vec::new();
    let started = Instant::now();
    let mut ran = 0;
    for i in 0..UNIT_CASES {
        if started.elapsed() > UNIT_BUDGET {
            eprintln!("patch: stopping after {i} cases: the time budget is spent");
            break;
        }
        let r = pick(&mut rng, RESOURCES);
        let base = valid_object(&r, "target");
        let (label, ct, body) = bad_patch(&mut rng, &r);
        if !worth_running(label, body.len(), i) {
            continue;
        }
        ran += 1;
        let patch = match ct {
            "application/apply-patch+yaml" => apiserver::codec::decode_yaml(&body),
            _ => apiserver::codec::decode_json(&body),
        };
        let Ok(patch) = patch else { continue };
        let meta = apimachinery::patch::BuiltinPatchMeta::for_kind(r.group, r.kind);
        let what = format!("case {i} (seed {seed}) [{label}] {ct}: {}", String::from_utf8_lossy(&body[..body.len().min(200)]));
        // (The apiserver answers any patch error 422, whatever `http_status` says.)
        let result = no_panic(&what, || match ct {
            "application/json-patch+json" => apimachinery::patch::json_patch(&base, &patch).map(|_| ()),
            "application/merge-patch+json" => apimachinery::patch::merge_patch(&base, &patch).map(|_| ()),
            _ => apimachinery::patch::strategic_merge_patch(&base, &patch, &meta).map(|_| ()),
        });
        if let Err(why) = result {
            failures.push(why);
        }
    }
    eprintln!("{ran} patch cases in {:?}, seed {seed}", started.elapsed());
    ensure!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.iter().take(20).cloned().collect::<Vec<_>>().join("\n"));
    Ok(())
}

/// Two gaps the fuzzer found: a patch that renamed its object was accepted and the name
/// quietly kept, and unknown fields (allowed with a warning) were stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patches_cannot_rename_and_unknown_fields_are_dropped() -> anyhow::Result<()> {
    let Some(server) = TestServer::start(Backend::Embedded).await? else { return Ok(()) };
    let client = admin_client(&server).await?;
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "keep", "bogus": 1}, "data": {"a": "1"}, "extra": {"x": 1}});
    let (code, body) = send(&client, Method::POST, "/api/v1/namespaces/default/configmaps", Some("application/json"), serde_json::to_vec(&cm)?).await?;
    ensure!(code == 201, "create: {code} {}", String::from_utf8_lossy(&body));
    let created: Value = serde_json::from_slice(&body)?;
    ensure!(created.get("extra").is_none() && created["metadata"].get("bogus").is_none(), "unknown fields were kept: {created}");

    for (ct, patch) in [
        ("application/merge-patch+json", json!({"metadata": {"name": "renamed"}})),
        ("application/strategic-merge-patch+json", json!({"metadata": {"name": "renamed"}})),
        ("application/json-patch+json", json!([{"op": "replace", "path": "/metadata/name", "value": "renamed"}])),
    ] {
        let (code, body) = send(&client, Method::PATCH, "/api/v1/namespaces/default/configmaps/keep", Some(ct), serde_json::to_vec(&patch)?).await?;
        let text = String::from_utf8_lossy(&body);
        ensure!(code == 400 && text.contains("does not match the name on the URL"), "{ct} rename: {code} {text}");
    }
    let patch = json!({"data": {"b": "2"}, "surprise": true});
    let (code, body) = send(&client, Method::PATCH, "/api/v1/namespaces/default/configmaps/keep", Some("application/strategic-merge-patch+json"), serde_json::to_vec(&patch)?).await?;
    ensure!(code == 200, "patch: {code} {}", String::from_utf8_lossy(&body));
    let (_, body) = send(&client, Method::GET, "/api/v1/namespaces/default/configmaps/keep", None, Vec::new()).await?;
    let stored: Value = serde_json::from_slice(&body)?;
    ensure!(stored["data"] == json!({"a": "1", "b": "2"}) && stored.get("surprise").is_none(), "after the patch: {stored}");

    // A JSON patch's unknown fields are found in the object it makes: a warning by
    // default (Warn), and the field is not stored.
    let ops = json!([{"op": "add", "path": "/unheard", "value": 1}, {"op": "add", "path": "/data/c", "value": "3"}]);
    let req = http::Request::builder()
        .method(Method::PATCH)
        .uri("/api/v1/namespaces/default/configmaps/keep")
        .header(http::header::CONTENT_TYPE, "application/json-patch+json")
        .body(kube::client::Body::from(serde_json::to_vec(&ops)?))?;
    let answer = client.send(req).await?;
    ensure!(answer.status() == 200, "json patch: {}", answer.status());
    let warnings: Vec<String> = answer.headers().get_all(http::header::WARNING).iter().filter_map(|v| v.to_str().ok().map(str::to_string)).collect();
    ensure!(warnings.iter().any(|w| w.contains("unknown field \\\"unheard\\\"")), "warnings: {warnings:?}");
    let (_, body) = send(&client, Method::GET, "/api/v1/namespaces/default/configmaps/keep", None, Vec::new()).await?;
    let stored: Value = serde_json::from_slice(&body)?;
    ensure!(stored["data"]["c"] == "3" && stored.get("unheard").is_none(), "after the JSON patch: {stored}");
    Ok(())
}
