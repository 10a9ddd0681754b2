//! Pod Security Standards: the `privileged`, `baseline` and `restricted` checks of
//! Kubernetes' PodSecurity admission (k8s.io/pod-security-admission, policy version
//! `latest`), as a pure module over pods in Kubernetes JSON, with Kubernetes' own
//! forbidden reasons, details, check order and admission messages.
//!
//! The checks run in Kubernetes' order: the baseline checks sorted by check ID, then the
//! restricted ones sorted by check ID. At `restricted` the baseline checks that a
//! restricted check replaces (`capabilities_baseline`, `hostPathVolumes`, `procMount`,
//! `seccompProfile_baseline`) are left out. Init, regular and ephemeral containers are
//! all checked, in that order, as Kubernetes' container visitor does.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};

/// The label prefix of the PodSecurity namespace labels.
pub const LABEL_PREFIX: &str = "pod-security.kubernetes.io/";
/// The namespace label holding the enforced level.
pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";
/// The namespace label pinning the enforced policy version.
pub const ENFORCE_VERSION_LABEL: &str = "pod-security.kubernetes.io/enforce-version";
/// The namespace label holding the audited level.
pub const AUDIT_LABEL: &str = "pod-security.kubernetes.io/audit";
/// The namespace label pinning the audited policy version.
pub const AUDIT_VERSION_LABEL: &str = "pod-security.kubernetes.io/audit-version";
/// The namespace label holding the level warned about.
pub const WARN_LABEL: &str = "pod-security.kubernetes.io/warn";
/// The namespace label pinning the warned policy version.
pub const WARN_VERSION_LABEL: &str = "pod-security.kubernetes.io/warn-version";
/// The policy version this module implements; it appears in every message.
pub const POLICY_VERSION: &str = "latest";

const LEVEL_DETAIL: &str = "must be one of privileged, baseline, restricted";
const VERSION_DETAIL: &str = "must be \"latest\" or \"v1.x\"";

/// Errors of parsing Pod Security levels and namespace labels.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodSecurityError {
    /// A level that is not `privileged`, `baseline` or `restricted`.
    #[error("invalid Pod Security level \"{value}\": must be one of privileged, baseline, restricted")]
    ParseLevel { value: String },
    /// Invalid `pod-security.kubernetes.io/*` namespace labels. The message is Kubernetes'
    /// field error list (`metadata.labels[…]: Invalid value: "…": …`); `fallback` is the
    /// policy Kubernetes goes on evaluating pods with: an invalid enforce level fails closed
    /// (`restricted`), an invalid audit or warn level fails open (`privileged`).
    #[error("{}", aggregate_label_errors(.errors))]
    ParseNamespaceLabels { errors: Vec<LabelError>, fallback: NamespacePolicy },
}

/// One invalid PodSecurity namespace label, as Kubernetes' `field.Invalid` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelError {
    /// The label key, e.g. `pod-security.kubernetes.io/enforce`.
    pub label: &'static str,
    /// The rejected label value.
    pub value: String,
    /// Why, e.g. `must be one of privileged, baseline, restricted`.
    pub detail: &'static str,
}

impl LabelError {
    /// The field path Kubernetes names: `metadata.labels[pod-security.kubernetes.io/enforce]`.
    pub fn field(&self) -> String {
        format!("metadata.labels[{}]", self.label)
    }

    /// The cause message without the field: `Invalid value: "bogus": must be one of …`.
    pub fn message(&self) -> String {
        format!("Invalid value: {}: {}", go_quote(&self.value), self.detail)
    }
}

impl fmt::Display for LabelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field(), self.message())
    }
}

/// Kubernetes' `ErrorList.ToAggregate()` text: the one error, or `[a, b]`.
fn aggregate_label_errors(errors: &[LabelError]) -> String {
    let all: Vec<String> = errors.iter().map(LabelError::to_string).collect();
    match all.len() {
        1 => all.concat(),
        _ => format!("[{}]", all.join(", ")),
    }
}

/// A Pod Security Standards level, ordered from least to most restrictive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Level {
    #[default]
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    /// Parses `privileged`, `baseline` or `restricted` (exactly, as Kubernetes does).
    pub fn parse(s: &str) -> Result<Level, PodSecurityError> {
        match s {
            "privileged" => Ok(Level::Privileged),
            "baseline" => Ok(Level::Baseline),
            "restricted" => Ok(Level::Restricted),
            _ => Err(PodSecurityError::ParseLevel { value: s.to_string() }),
        }
    }

    /// The level's name as it appears in labels and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = PodSecurityError;

    fn from_str(s: &str) -> Result<Level, PodSecurityError> {
        Level::parse(s)
    }
}

/// The PodSecurity policy of a namespace, from its labels.
///
/// `audit` and `warn` are `None` when that mode checks nothing: unset (Kubernetes' default
/// is `privileged`) or explicitly `privileged`.
/// As Kubernetes does, a namespace that sets `enforce` but no `warn` label warns at the
/// enforce level: that is what makes workloads (Deployments, Jobs, …) created in an
/// enforcing namespace carry a `would violate PodSecurity` warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NamespacePolicy {
    pub enforce: Level,
    pub audit: Option<Level>,
    pub warn: Option<Level>,
}

impl NamespacePolicy {
    /// Reads the `pod-security.kubernetes.io/{enforce,audit,warn}` labels. The `-version`
    /// labels are validated (`latest` or `v1.x`) but otherwise ignored: every version is
    /// evaluated as `latest`.
    pub fn from_labels(labels: Option<&Map<String, Value>>) -> Result<NamespacePolicy, PodSecurityError> {
        let mut policy = NamespacePolicy::default();
        let Some(labels) = labels else {
            return Ok(policy);
        };
        let mut errors = Vec::new();
        let parse_level = |label: &'static str, errors: &mut Vec<LabelError>| -> Option<Result<Level, ()>> {
            let value = labels.get(label)?;
            let text = label_text(value);
            Some(Level::parse(&text).map_err(|_| errors.push(LabelError { label, value: text, detail: LEVEL_DETAIL })))
        };
        let check_version = |label: &'static str, errors: &mut Vec<LabelError>| {
            if let Some(value) = labels.get(label) {
                let text = label_text(value);
                if !valid_version(&text) {
                    errors.push(LabelError { label, value: text, detail: VERSION_DETAIL });
                }
            }
        };

        let mut has_enforce = false;
        match parse_level(ENFORCE_LABEL, &mut errors) {
            Some(Ok(level)) => {
                policy.enforce = level;
                has_enforce = true;
            }
            // Fail closed: an unreadable enforce level is evaluated as restricted.
            Some(Err(())) => policy.enforce = Level::Restricted,
            None => {}
        }
        check_version(ENFORCE_VERSION_LABEL, &mut errors);
        // Fail open for audit and warn.
        policy.audit = match parse_level(AUDIT_LABEL, &mut errors) {
            Some(Ok(level)) => Some(level),
            Some(Err(())) | None => None,
        };
        check_version(AUDIT_VERSION_LABEL, &mut errors);
        let has_warn = labels.contains_key(WARN_LABEL);
        policy.warn = match parse_level(WARN_LABEL, &mut errors) {
            Some(Ok(level)) => Some(level),
            Some(Err(())) | None => None,
        };
        check_version(WARN_VERSION_LABEL, &mut errors);
        if !has_warn && has_enforce && policy.enforce > policy.warn.unwrap_or(Level::Privileged) {
            policy.warn = Some(policy.enforce);
        }
        // Modes at `privileged` check nothing; keep them as "off".
        policy.audit = policy.audit.filter(|l| *l != Level::Privileged);
        policy.warn = policy.warn.filter(|l| *l != Level::Privileged);

        if errors.is_empty() {
            Ok(policy)
        } else {
            Err(PodSecurityError::ParseNamespaceLabels { errors, fallback: policy })
        }
    }
}

/// A label value as text (labels are strings; anything else is reported as its JSON).
fn label_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `latest` or `v1.<minor>` with no leading zero, as Kubernetes' `ParseVersion` accepts.
fn valid_version(version: &str) -> bool {
    if version == POLICY_VERSION {
        return true;
    }
    let Some(minor) = version.strip_prefix("v1.") else {
        return false;
    };
    !minor.is_empty()
        && minor.bytes().all(|b| b.is_ascii_digit())
        && (minor == "0" || !minor.starts_with('0'))
        && minor.parse::<i64>().is_ok()
}

/// One failed check: Kubernetes' forbidden reason and detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The Kubernetes check ID, e.g. `allowPrivilegeEscalation`, `hostNamespaces`.
    pub check: &'static str,
    /// The forbidden reason, e.g. `runAsNonRoot != true`.
    pub reason: String,
    /// The forbidden detail (may be empty), e.g. `pod or container "web" must set …`.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

type CheckFn = fn(&Value, &Value) -> Option<(String, String)>;

/// Baseline checks, sorted by ID (Go's byte order), as Kubernetes orders them.
const BASELINE_CHECKS: &[(&str, CheckFn)] = &[
    ("appArmorProfile", app_armor_profile),
    ("capabilities_baseline", capabilities_baseline),
    ("hostNamespaces", host_namespaces),
    ("hostPathVolumes", host_path_volumes),
    ("hostPorts", host_ports),
    ("hostProbesAndHostLifecycle", host_probes_and_host_lifecycle),
    ("privileged", privileged),
    ("procMount", proc_mount_baseline),
    ("seLinuxOptions", se_linux_options),
    ("seccompProfile_baseline", seccomp_profile_baseline),
    ("sysctls", sysctls),
    ("windowsHostProcess", windows_host_process),
];

/// Restricted-only checks, sorted by ID; they run after the baseline ones.
const RESTRICTED_CHECKS: &[(&str, CheckFn)] = &[
    ("allowPrivilegeEscalation", allow_privilege_escalation),
    ("capabilities_restricted", capabilities_restricted),
    ("procMount_restricted", proc_mount_restricted),
    ("restrictedVolumes", restricted_volumes),
    ("runAsNonRoot", run_as_non_root),
    ("runAsUser", run_as_user),
    ("seccompProfile_restricted", seccomp_profile_restricted),
];

/// Baseline checks a restricted check replaces at the restricted level.
const OVERRIDDEN_AT_RESTRICTED: &[&str] = &["capabilities_baseline", "hostPathVolumes", "procMount", "seccompProfile_baseline"];

/// Evaluates a pod (its `metadata` and `spec`, or a template's) against `level` and
/// returns the violations in Kubernetes' order; empty means allowed.
pub fn check(level: Level, pod_metadata: &Value, pod_spec: &Value) -> Vec<Violation> {
    let checks: Vec<&(&str, CheckFn)> = match level {
        Level::Privileged => return Vec::new(),
        Level::Baseline => BASELINE_CHECKS.iter().collect(),
        Level::Restricted => {
            BASELINE_CHECKS.iter().filter(|(id, _)| !OVERRIDDEN_AT_RESTRICTED.contains(id)).chain(RESTRICTED_CHECKS.iter()).collect()
        }
    };
    checks
        .into_iter()
        .filter_map(|(id, f)| f(pod_metadata, pod_spec).map(|(reason, detail)| Violation { check: id, reason, detail }))
        .collect()
}

/// `reason (detail), reason (detail), …`: Kubernetes' aggregated forbidden detail.
pub fn aggregate_detail(violations: &[Violation]) -> String {
    violations.iter().map(Violation::to_string).collect::<Vec<_>>().join(", ")
}

/// The `violates PodSecurity "restricted:latest": …` text that follows
/// `pods "name" is forbidden: ` in an enforce rejection.
pub fn forbidden_reason(level: Level, violations: &[Violation]) -> String {
    format!("violates PodSecurity \"{}:{}\": {}", level, POLICY_VERSION, aggregate_detail(violations))
}

/// Kubernetes' full enforce rejection message (a 403 Forbidden), e.g.
/// `pods "web" is forbidden: violates PodSecurity "restricted:latest": …`.
pub fn forbidden_message(pod_name: &str, level: Level, violations: &[Violation]) -> String {
    format!("pods {} is forbidden: {}", go_quote(pod_name), forbidden_reason(level, violations))
}

/// The `warn` mode warning (and the `audit` mode's `pod-security.kubernetes.io/audit-violations`
/// annotation): `would violate PodSecurity "restricted:latest": …`.
pub fn warning_message(level: Level, violations: &[Violation]) -> String {
    format!("would violate PodSecurity \"{}:{}\": {}", level, POLICY_VERSION, aggregate_detail(violations))
}

/// The JSON pointer of the pod template (an object with `metadata` and `spec`) inside a
/// workload of this kind; `None` for kinds without one (including `Pod` itself, whose
/// own `metadata` and `spec` are checked). Kubernetes only warns and audits on these,
/// never rejects.
pub fn pod_spec_paths(kind: &str) -> Option<&'static str> {
    match kind {
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job" | "ReplicationController" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        "PodTemplate" => Some("/template"),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// JSON helpers: a key that is absent or `null` is Go's nil pointer.

fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|x| !x.is_null())
}

fn get_str<'a>(v: &'a Value, key: &str) -> &'a str {
    get(v, key).and_then(Value::as_str).unwrap_or("")
}

fn get_bool(v: &Value, key: &str) -> Option<bool> {
    get(v, key).and_then(Value::as_bool)
}

fn get_array<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    get(v, key).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

/// Init containers, then containers, then ephemeral containers (Kubernetes' visitor order).
fn containers(spec: &Value) -> impl Iterator<Item = &Value> {
    get_array(spec, "initContainers").iter().chain(get_array(spec, "containers")).chain(get_array(spec, "ephemeralContainers"))
}

fn container_name(c: &Value) -> String {
    get_str(c, "name").to_string()
}

fn security_context(v: &Value) -> Option<&Value> {
    get(v, "securityContext")
}

fn is_windows(spec: &Value) -> bool {
    get(spec, "os").map(|os| get_str(os, "name")) == Some("windows")
}

/// `hostUsers: false`: the pod runs in a user namespace.
fn in_user_namespace(spec: &Value) -> bool {
    get_bool(spec, "hostUsers") == Some(false)
}

/// Go's `joinQuote`: `"a", "b"`, or nothing for no items.
fn join_quote<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        return String::new();
    }
    let inner: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    format!("\"{}\"", inner.join("\", \""))
}

fn pluralize(singular: &'static str, plural: &'static str, count: usize) -> &'static str {
    if count == 1 {
        singular
    } else {
        plural
    }
}

/// `container "a"` / `containers "a", "b"`.
fn containers_phrase(names: &[String]) -> String {
    format!("{} {}", pluralize("container", "containers", names.len()), join_quote(names))
}

/// Go's `%q` for a string: double-quoted with Go escapes.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => {
                if (c as u32) <= 0xffff {
                    out.push_str(&format!("\\u{:04x}", c as u32));
                } else {
                    out.push_str(&format!("\\U{:08x}", c as u32));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn annotations(metadata: &Value) -> impl Iterator<Item = (&String, String)> {
    get(metadata, "annotations").and_then(Value::as_object).into_iter().flat_map(|m| m.iter()).map(|(k, v)| (k, label_text(v)))
}

// ---------------------------------------------------------------------------------------
// Baseline checks.

const APPARMOR_ANNOTATION_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";

fn app_armor_profile(metadata: &Value, spec: &Value) -> Option<(String, String)> {
    let allowed_type = |t: &str| t == "RuntimeDefault" || t == "Localhost";
    let mut bad_setters = Vec::new();
    let mut bad_values = BTreeSet::new();
    if let Some(profile) = security_context(spec).and_then(|sc| get(sc, "appArmorProfile")) {
        let t = get_str(profile, "type");
        if !allowed_type(t) {
            bad_setters.push("pod".to_string());
            bad_values.insert(t.to_string());
        }
    }
    let mut bad_containers = Vec::new();
    for c in containers(spec) {
        if let Some(profile) = security_context(c).and_then(|sc| get(sc, "appArmorProfile")) {
            let t = get_str(profile, "type");
            if !allowed_type(t) {
                bad_containers.push(container_name(c));
                bad_values.insert(t.to_string());
            }
        }
    }
    if !bad_containers.is_empty() {
        bad_setters.push(containers_phrase(&bad_containers));
    }
    let mut forbidden_annotations: Vec<String> = annotations(metadata)
        .filter(|(k, v)| {
            k.starts_with(APPARMOR_ANNOTATION_PREFIX) && !(v.is_empty() || v == "runtime/default" || v.starts_with("localhost/"))
        })
        .map(|(k, v)| format!("{}={}", k, go_quote(&v)))
        .collect();
    let mut bad_value_list: Vec<String> = bad_values.into_iter().collect();
    if !forbidden_annotations.is_empty() {
        forbidden_annotations.sort();
        bad_setters.push(pluralize("annotation", "annotations", forbidden_annotations.len()).to_string());
        bad_value_list.extend(forbidden_annotations);
    }
    if bad_setters.is_empty() {
        return None;
    }
    Some((
        pluralize("forbidden AppArmor profile", "forbidden AppArmor profiles", bad_value_list.len()).to_string(),
        format!("{} must not set AppArmor profile type to {}", bad_setters.join(" and "), join_quote(&bad_value_list)),
    ))
}

const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

fn capabilities_baseline(_metadata: &Value, spec: &Value) -> Option<(String, String)> {
    let mut bad_containers = Vec::new();
    let mut non_default = BTreeSet::new();
    for c in containers(spec) {
        let Some(caps) = security_context(c).and_then(|sc| get(sc, "capabilities")) else {
            continue;
        };
        let mut valid = true;
        for cap in get_array(caps, "add") {
            let cap = label_text(cap);
            if !BASELINE_CAPABILITIES.contains(&cap.as_str()) {
                valid = false;
                non_default.insert(cap);
            }
        }
        if !valid {
            bad_containers.push(container_name(c));
        }
    }
    if bad_containers.is_empty() {
        return None;
    }
    let non_default: Vec<String> = non_default.into_iter().collect();
    Some((
        "non-default capabilities".to_string(),
        format!("{} must not include {} in securityContext.capabilities.add", containers_phrase(&bad_containers), join_quote(&non_default)),
    ))
}

fn host_namespaces(_metadata: &Value, spec: &Value) -> Option<(String, String)> {
    let shared: Vec<&str> = [("hostNetwork", "hostNetwork=true"), ("hostPID", "hostPID=true"), ("hostIPC", "hostIPC=true")]
        .into_iter()
        .filter(|(field, _)| get_bool(spec, field) == Some(true))
        .map(|(_, text)| text)
        .collect();
    if shared.is_empty() {
        return None;
    }
    Some(("host namespaces".to_string(), shared.join(", ")))
}

fn host_path_volumes(_metadata: &Value, spec: &Value) -> Option<(String, String)> {
    let host: Vec<String> =
        get_array(spec, "volumes").iter().filter(|v| get(v, "hostPath").is_some()).map(|v| get_str(v, "name").to_string()).collect();
    if host.is_empty() {
        return None;
    }
    Some(("hostPath volumes".to_string(), format!("{} {}", pluralize("volume", "volumes", host.len()), join_quote(&host))))
}

fn host_ports(_metadata: &Value, spec: &Value) -> Option<(String, String)> {
    let mut bad_containers = Vec::new();
    let mut ports = BTreeSet::new();
    for c in containers(spec) {
        let mut valid = true;
        for port in get_array(c, "ports") {
            let host_port = get(port, "hostPort").and_then(Value::as_i64).unwrap_or(0);
            if host_port != 0 {
                valid = false;
                ports.insert(host_port.to_string());
            }
        }
        if !valid {
            bad_containers.push(container_name(c));
        }
    }
    if bad_containers.is_empty() {
        return None;
    }
    let ports: Vec<String> = ports.into_iter().collect();
    Some((
        "hostPort".to_string(),
        format!(
            "{} {} {} {}",
            containers_phrase(&bad_containers),
            pluralize("uses", "use", bad_containers.len()),
            pluralize("hostPort", "hostPorts", ports.len()),
            ports.join(", ")
        ),
    ))
}

fn host_probes_and_host_lifecycle(_metadata: &Value, spec: &Value) -> Option<(String, String)> {
    // Both are sets in Kubernetes: sorted and without repeats.
    let mut bad_containers = BTreeSet::new();
    let mut hosts = BTreeSet::new();
    let handler_hosts = |handler: &Value| -> Vec<String> {
        ["httpGet", "tcpSocket"]
            .into_iter()
            .filter_map(|kind| get(handler, kind))
            .map(|action| get_str(action, "host"))
            .filter(|host| !host.is_empty())
            .map(str::to_string)
            .collect()
    };
    for c in containers(spec) {
        let probes = ["livenessProbe", "readinessProbe", "startupProbe"].into_iter().filter_map(|p| get(c, p));
        let lifecycle = get(c, "lifecycle");
        let hooks = ["postStart", "preStop"].into_iter().filter_map(|h| lifecycle.and_then(|l| get(l, h)));
        for handler in probes.chain(hooks) {
            let bad = handler_hosts(handler);
            if !bad.is_empty() {
                bad_containers.insert(container_name(c));
                hosts.extend(bad);
            }
        }
    }
    if bad_containers.is_empty() {
        return None;
    }
    let bad_containers: Vec<String> = bad_containers.into_iter().collect();
    let hosts: Vec<String> = hosts.into_iter().collect();
    Some((
        "probe or lifecycle host".to_string(),
        format!(
            "{} {} {} {}",
            containers_phrase(&bad_containers),
            pluralize("uses", "use", bad_containers.len()),
            pluralize("probe or lifecycle host", "probe or lifecycle hosts", hosts.len()),
            join_quote(&hosts)
        ),
    ))
}

fn privileged(_metadata: &Value, spec: &Value) -> Option<(String, String)> {
    let bad: Vec<String> = containers(spec)
        .filter(|c| security_context(c).and_then(|sc| get_bool(sc, "privileged")) == Some(true))
        .map(container_name)
        .collect();
    if bad.is_empty() {
        return None;
    }
    Some(("privileged".to_string(), format!("{} must not set securityContext.privileged=true", containers_phrase(&bad))))
}

fn proc_mount_any(spec: &Value) -> Option<(String, String)> {
    let mut bad_containers = Vec::new();
    let mut types = BTreeSet::new();
    for c in containers(spec) {
        let Some(proc_mount) = security_context(c).and_then(|sc| get(sc, "procMount")) else {
            continue;
        };
        let proc_mount = label_text(proc_mount);
        if proc_mount != "Default" {
            bad_containers.push(container_name(c));
            types.insert(proc_mount);
        }
    }
    if bad_containers.is_empty() {
        return None;
    }
    let types: Vec<String> = types.into_iter().collect();
    Some((
        "procMount".to_string(),
        format!("{} must not set securityContext.procMount to {}", containers_phrase(&bad_containers), join_quote(&types)),
    ))
}

fn proc_mount_baseline(_metadata: &Value, spec: &Value) -> Option<(String, String)> {
    if in_user_namespace(spec) {
        return None;
    }
    proc_mount_any(spec)
}

const SELINUX_ALLOWED_TYPES: &[&str] = &["", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"];

fn se_linux_options(_metadata: &Value, spec: &Value) -> Option<(String, String)> {
    let mut bad_types = BTreeSet::new();
    let mut set_user = false;
    let mut set_role = false;
    let mut valid = |opts: &Value| -> bool {
        let mut ok = true;
        let t = get_str(opts, "type");
        if !SELINUX_ALLOWED_TYPES.contains(&t) {
            ok = false;
            bad_types.insert(t.to_string());
        }
        if !get_str(opts, "user").is_empty() {
            ok = false;
            set_user = true;
        }
        if !get_str(opts, "role").is_empty() {
            ok = false;
            set_role = true;
        }
        ok
    };
    let mut bad_setters = Vec::new();
    if let Some(opts) = security_context(spec).and_then(|sc| get(sc, "seLinuxOptions")) {
        if !valid(opts) {
            bad_setters.push("pod".to_string());
        }
    }
    let mut bad_containers = Vec::new();
    for c in containers(spec) {
        if let Some(opts) = security_context(c).and_then(|sc| get(sc, "seLinuxOptions")) {
            if !valid(opts) {
                bad_containers.push(container_name(c));
            }
        }
    }
    if !bad_containers.is_empty() {
        bad_setters.push(containers_phrase(&bad_containers));
    }
    if bad_setters.is_empty() {
        return None;
    }
    let mut bad_data = Vec::new();
    if !bad_types.is_empty() {
        let types: Vec<String> = bad_types.into_iter().collect();
        bad_data.push(format!("{} {}", pluralize("type", "types", types.len()), join_quote(&types)));
    }
    if set_user {
        bad_data.push("user may not be set".to_string());
    }
    if set_role {
        bad_data.push("role may not be set".to_string());
    }
    Some((
        "seLinuxOptions".to_string(),
        format!("{} set forbidden securityContext.seLinuxOptions: {}", bad_setters.join(" and "), bad_data.join("; ")),
    ))
}

fn valid_seccomp(t: &str) -> bool {
    t == "Localhost" || t == "RuntimeDefault"
}

/// The pod- and container-level seccomp profiles shared by the baseline and restricted
/// checks: (explicitly bad setters, bad values, containers with no profile, pod set a valid one).
struct SeccompScan {
    bad_setters: Vec<String>,
    bad_values: BTreeSet<String>,
    unset_containers: Vec<String>,
    pod_valid: bool,
}

fn scan_seccomp(spec: &Value) -> SeccompScan {
    let mut scan = SeccompScan { bad_setters: Vec::new(), bad_values: BTreeSet::new(), unset_containers: Vec::new(), pod_valid: false };
    if let Some(profile) = security_context(spec).and_then(|sc| get(sc, "seccompProfile")) {
        let t = get_str(profile, "type");
        if valid_seccomp(t) {
            scan.pod_valid = true;
        } else {
            scan.bad_setters.push("pod".to_string());
            scan.bad_values.insert(t.to_string());
        }
    }
    let mut bad_containers = Vec::new();
    for c in containers(spec) {
        match security_context(c).and_then(|sc| get(sc, "seccompProfile")) {
            Some(profile) => {
                let t = get_str(profile, "type");
                if !valid_seccomp(t) {
                    bad_containers.push(container_name(c));
                    scan.bad_values.insert(t.to_string());
                }
            }
            None => scan.unset_containers.push(container_name(c)),
        }
    }
    if !bad_containers.is_empty() {
        scan.bad_setters.push(containers_phrase(&bad_containers));
    }
    scan
}

fn seccomp_explicit_violation(scan: &SeccompScan) -> Option<(String, String)> {
    if scan.bad_setters.is_empty() {
        return None;
    }
    let values: Vec<&str> = scan.bad_values.iter().map(String::as_str).collect();
    Some((
        "seccompProfile".to_string(),
        format!("{} must not set securityContext.seccompProfile.type to {}", scan.bad_setters.join(" and "), join_quote(&values)),
    ))
}

fn seccomp_profile_baseline(_metadata: &Value, spec: &Value) -> Option<(String, String)> {
    seccomp_explicit_violation(&scan_seccomp(spec))
}

fn sysctls(_metadata: &Value, spec: &Value) -> Option<(String, String)> {
    const ALLOWED: &[&str] = &[
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
        "net.ipv4.tcp_rmem",
        "net.ipv4.tcp_wmem",
        "net.ipv4.tcp_slow_start_after_idle",
        "net.ipv4.tcp_notsent_lowat",
    ];
    let forbidden: Vec<&str> = security_context(spec)
        .map(|sc| get_array(sc, "sysctls"))
        .unwrap_or(&[])
        .iter()
        .map(|s| get_str(s, "name"))
        .filter(|name| !ALLOWED.contains(name))
        .collect();
    if forbidden.is_empty() {
        return None;
    }
    Some(("forbidden sysctls".to_string(), forbidden.join(", ")))
}

fn windows_host_process(_metadata: &Value, spec: &Value) -> Option<(String, String)> {
    let host_process =
        |v: &Value| security_context(v).and_then(|sc| get(sc, "windowsOptions")).and_then(|w| get_bool(w, "hostProcess")) == Some(true);
    let bad_containers: Vec<String> = containers(spec).filter(|c| host_process(c)).map(container_name).collect();
    let mut setters = Vec::new();
    if host_process(spec) {
        setters.push("pod".to_string());
    }
    if !bad_containers.is_empty() {
        setters.push(containers_phrase(&bad_containers));
    }
    if setters.is_empty() {
        return None;
    }
    Some(("hostProcess".to_string(), format!("{} must not set securityContext.windowsOptions.hostProcess=true", setters.join(" and "))))
}

// ---------------------------------------------------------------------------------------
// Restricted checks.

fn allow_privilege_escalation(_metadata: &Value, spec: &Value) -> Option<(String, String)> {
    if is_windows(spec) {
        return None;
    }
    let bad: Vec<String> = containers(spec)
        .filter(|c| security_context(c).and_then(|sc| get_bool(sc, "allowPrivilegeEscalation")) != Some(false))
        .map(container_name)
        .collect();
    if bad.is_empty() {
        return None;
    }
    Some((
        "allowPrivilegeEscalation != false".to_string(),
        format!("{} must set securityContext.allowPrivilegeEscalation=false", containers_phrase(&bad)),
    ))
}

fn capabilities_restricted(_metadata: &Value, spec: &Value) -> Option<(String, String)> {
    if is_windows(spec) {
        return None;
    }
    let mut missing_drop_all = Vec::new();
    let mut adding_forbidden = Vec::new();
    let mut forbidden = BTreeSet::new();
    for c in containers(spec) {
        let Some(caps) = security_context(c).and_then(|sc| get(sc, "capabilities")) else {
            missing_drop_all.push(container_name(c));
            continue;
        };
        if !get_array(caps, "drop").iter().any(|cap| cap.as_str() == Some("ALL")) {
            missing_drop_all.push(container_name(c));
        }
        let mut added_forbidden = false;
        for cap in get_array(caps, "add") {
            let cap = label_text(cap);
            if cap != "NET_BIND_SERVICE" {
                added_forbidden = true;
                forbidden.insert(cap);
            }
        }
        if added_forbidden {
            adding_forbidden.push(container_name(c));
        }
    }
    let mut details = Vec::new();
    if !missing_drop_all.is_empty() {
        details.push(format!("{} must set securityContext.capabilities.drop=[\"ALL\"]", containers_phrase(&missing_drop_all)));
    }
    if !adding_forbidden.is_empty() {
        let forbidden: Vec<String> = forbidden.into_iter().collect();
        details.push(format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&adding_forbidden),
            join_quote(&forbidden)
        ));
    }
    if details.is_empty() {
        return None;
    }
    Some(("unrestricted capabilities".to_string(), details.join("; ")))
}

fn proc_mount_restricted(_metadata: &Value, spec: &Value) -> Option<(String, String)> {
    proc_mount_any(spec)
}

/// Inline volume sources the restricted level allows.
const ALLOWED_VOLUME_SOURCES: &[&str] =
    &["configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "image", "persistentVolumeClaim", "projected", "secret"];

/// Inline volume sources the restricted level forbids, in Kubernetes' precedence order.
const RESTRICTED_VOLUME_SOURCES: &[&str] = &[
    "hostPath",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "gitRepo",
    "nfs",
    "iscsi",
    "glusterfs",
    "rbd",
    "flexVolume",
    "cinder",
    "cephfs",
    "flocker",
    "fc",
    "azureFile",
    "vsphereVolume",
    "quobyte",
    "azureDisk",
    "photonPersistentDisk",
    "portworxVolume",
    "scaleIO",
    "storageos",
];

fn restricted_volumes(_metadata: &Value, spec: &Value) -> Option<(String, String)> {
    let mut bad_volumes = Vec::new();
    let mut bad_types = BTreeSet::new();
    for volume in get_array(spec, "volumes") {
        if ALLOWED_VOLUME_SOURCES.iter().any(|s| get(volume, s).is_some()) {
            continue;
        }
        // A volume naming no known source is defaulted to emptyDir by the API server
        // before admission (SetDefaults_Volume), so it is allowed.
        if let Some(kind) = RESTRICTED_VOLUME_SOURCES.iter().find(|s| get(volume, s).is_some()) {
            bad_volumes.push(get_str(volume, "name").to_string());
            bad_types.insert(*kind);
        }
    }
    if bad_volumes.is_empty() {
        return None;
    }
    let bad_types: Vec<&str> = bad_types.into_iter().collect();
    Some((
        "restricted volume types".to_string(),
        format!(
            "{} {} {} {} {}",
            pluralize("volume", "volumes", bad_volumes.len()),
            join_quote(&bad_volumes),
            pluralize("uses", "use", bad_volumes.len()),
            pluralize("restricted volume type", "restricted volume types", bad_types.len()),
            join_quote(&bad_types)
        ),
    ))
}

fn run_as_non_root(_metadata: &Value, spec: &Value) -> Option<(String, String)> {
    if in_user_namespace(spec) {
        return None;
    }
    let reason = "runAsNonRoot != true".to_string();
    let mut bad_setters = Vec::new();
    let mut pod_non_root = false;
    match security_context(spec).and_then(|sc| get_bool(sc, "runAsNonRoot")) {
        Some(false) => bad_setters.push("pod".to_string()),
        Some(true) => pod_non_root = true,
        None => {}
    }
    let mut explicitly_bad = Vec::new();
    let mut implicitly_bad = Vec::new();
    for c in containers(spec) {
        match security_context(c).and_then(|sc| get_bool(sc, "runAsNonRoot")) {
            Some(false) => explicitly_bad.push(container_name(c)),
            Some(true) => {}
            None if !pod_non_root => implicitly_bad.push(container_name(c)),
            None => {}
        }
    }
    if !explicitly_bad.is_empty() {
        bad_setters.push(containers_phrase(&explicitly_bad));
    }
    if !bad_setters.is_empty() {
        return Some((reason, format!("{} must not set securityContext.runAsNonRoot=false", bad_setters.join(" and "))));
    }
    if !implicitly_bad.is_empty() {
        return Some((reason, format!("pod or {} must set securityContext.runAsNonRoot=true", containers_phrase(&implicitly_bad))));
    }
    None
}

fn run_as_user(_metadata: &Value, spec: &Value) -> Option<(String, String)> {
    if in_user_namespace(spec) {
        return None;
    }
    let root = |v: &Value| security_context(v).and_then(|sc| get(sc, "runAsUser")).and_then(Value::as_i64) == Some(0);
    let mut bad_setters = Vec::new();
    if root(spec) {
        bad_setters.push("pod".to_string());
    }
    let bad: Vec<String> = containers(spec).filter(|c| root(c)).map(container_name).collect();
    if !bad.is_empty() {
        bad_setters.push(containers_phrase(&bad));
    }
    if bad_setters.is_empty() {
        return None;
    }
    Some(("runAsUser=0".to_string(), format!("{} must not set runAsUser=0", bad_setters.join(" and "))))
}

fn seccomp_profile_restricted(_metadata: &Value, spec: &Value) -> Option<(String, String)> {
    if is_windows(spec) {
        return None;
    }
    let scan = scan_seccomp(spec);
    if let Some(violation) = seccomp_explicit_violation(&scan) {
        return Some(violation);
    }
    if scan.pod_valid || scan.unset_containers.is_empty() {
        return None;
    }
    Some((
        "seccompProfile".to_string(),
        format!(
            "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
            containers_phrase(&scan.unset_containers)
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn busybox() -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web"},
            "spec": {"containers": [{"name": "web", "image": "busybox", "command": ["sleep", "3600"]}]}
        })
    }

    fn run(level: Level, pod: &Value) -> Vec<Violation> {
        check(level, &pod["metadata"], &pod["spec"])
    }

    fn restricted_pod() -> Value {
        json!({
            "metadata": {"name": "ok"},
            "spec": {
                "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                "initContainers": [{"name": "init", "image": "busybox", "securityContext": {
                    "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}],
                "containers": [{"name": "web", "image": "nginx", "ports": [{"containerPort": 80}], "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
                    "runAsUser": 1000}}],
                "volumes": [
                    {"name": "cfg", "configMap": {"name": "cfg"}},
                    {"name": "scratch", "emptyDir": {}},
                    {"name": "token", "projected": {"sources": []}}
                ]
            }
        })
    }

    #[test]
    fn check_order_is_sorted_like_kubernetes() {
        for list in [BASELINE_CHECKS, RESTRICTED_CHECKS] {
            let ids: Vec<&str> = list.iter().map(|(id, _)| *id).collect();
            let mut sorted = ids.clone();
            sorted.sort();
            assert_eq!(ids, sorted);
        }
    }

    #[test]
    fn busybox_passes_baseline_and_privileged() {
        assert!(run(Level::Baseline, &busybox()).is_empty());
        assert!(run(Level::Privileged, &busybox()).is_empty());
    }

    #[test]
    fn busybox_fails_restricted_with_the_usual_four() {
        let v = run(Level::Restricted, &busybox());
        let ids: Vec<&str> = v.iter().map(|v| v.check).collect();
        assert_eq!(ids, ["allowPrivilegeEscalation", "capabilities_restricted", "runAsNonRoot", "seccompProfile_restricted"]);
        assert_eq!(
            forbidden_message("web", Level::Restricted, &v),
            "pods \"web\" is forbidden: violates PodSecurity \"restricted:latest\": \
             allowPrivilegeEscalation != false (container \"web\" must set securityContext.allowPrivilegeEscalation=false), \
             unrestricted capabilities (container \"web\" must set securityContext.capabilities.drop=[\"ALL\"]), \
             runAsNonRoot != true (pod or container \"web\" must set securityContext.runAsNonRoot=true), \
             seccompProfile (pod or container \"web\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
        );
        assert!(warning_message(Level::Restricted, &v)
            .starts_with("would violate PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false (container \"web\" must set"));
    }

    #[test]
    fn host_network_fails_baseline() {
        let mut pod = busybox();
        pod["spec"]["hostNetwork"] = json!(true);
        pod["spec"]["hostPID"] = json!(false);
        let v = run(Level::Baseline, &pod);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].to_string(), "host namespaces (hostNetwork=true)");
        pod["spec"]["hostIPC"] = json!(true);
        assert_eq!(run(Level::Baseline, &pod)[0].detail, "hostNetwork=true, hostIPC=true");
    }

    #[test]
    fn privileged_fails_baseline() {
        let mut pod = busybox();
        pod["spec"]["containers"][0]["securityContext"] = json!({"privileged": true});
        let v = run(Level::Baseline, &pod);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].check, "privileged");
        assert_eq!(v[0].to_string(), "privileged (container \"web\" must not set securityContext.privileged=true)");
        // Baseline checks apply at restricted too, before the restricted ones.
        let r = run(Level::Restricted, &pod);
        assert_eq!(r[0].check, "privileged");
    }

    #[test]
    fn fully_restricted_pod_passes() {
        let pod = restricted_pod();
        assert_eq!(run(Level::Restricted, &pod), vec![]);
        assert_eq!(run(Level::Baseline, &pod), vec![]);
    }

    #[test]
    fn init_and_ephemeral_containers_are_checked_in_visitor_order() {
        let mut pod = busybox();
        pod["spec"]["initContainers"] = json!([{"name": "init", "image": "busybox"}]);
        pod["spec"]["ephemeralContainers"] = json!([{"name": "debug", "image": "busybox", "securityContext": {"privileged": true}}]);
        let v = run(Level::Baseline, &pod);
        assert_eq!(v[0].detail, "container \"debug\" must not set securityContext.privileged=true");
        let r = run(Level::Restricted, &pod);
        assert_eq!(
            r.iter().find(|v| v.check == "allowPrivilegeEscalation").map(|v| v.detail.as_str()),
            Some("containers \"init\", \"web\", \"debug\" must set securityContext.allowPrivilegeEscalation=false")
        );
    }

    #[test]
    fn host_path_and_restricted_volumes() {
        let mut pod = busybox();
        pod["spec"]["volumes"] = json!([
            {"name": "x", "hostPath": {"path": "/"}},
            {"name": "ok", "emptyDir": {}},
            {"name": "n", "nfs": {"server": "s", "path": "/"}},
            {"name": "defaulted"}
        ]);
        let v = run(Level::Baseline, &pod);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].to_string(), "hostPath volumes (volume \"x\")");
        let r = run(Level::Restricted, &pod);
        assert!(r.iter().all(|v| v.check != "hostPathVolumes"));
        let rv = r.iter().find(|v| v.check == "restrictedVolumes").map(Violation::to_string);
        assert_eq!(rv.as_deref(), Some("restricted volume types (volumes \"x\", \"n\" use restricted volume types \"hostPath\", \"nfs\")"));
    }

    #[test]
    fn host_ports_are_listed() {
        let mut pod = busybox();
        pod["spec"]["containers"][0]["ports"] = json!([{"containerPort": 80, "hostPort": 8080}, {"containerPort": 81}]);
        let v = run(Level::Baseline, &pod);
        assert_eq!(v[0].to_string(), "hostPort (container \"web\" uses hostPort 8080)");
        pod["spec"]["containers"][0]["ports"] = json!([{"containerPort": 80, "hostPort": 8080}, {"containerPort": 81, "hostPort": 10000}]);
        assert_eq!(run(Level::Baseline, &pod)[0].detail, "container \"web\" uses hostPorts 10000, 8080");
    }

    #[test]
    fn capabilities_baseline_and_restricted() {
        let mut pod = restricted_pod();
        pod["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] = json!(["NET_BIND_SERVICE", "CHOWN", "SYS_ADMIN"]);
        let b = run(Level::Baseline, &pod);
        assert_eq!(
            b[0].to_string(),
            "non-default capabilities (container \"web\" must not include \"SYS_ADMIN\" in securityContext.capabilities.add)"
        );
        let r = run(Level::Restricted, &pod);
        assert_eq!(r.len(), 1);
        assert_eq!(
            r[0].to_string(),
            "unrestricted capabilities (container \"web\" must not include \"CHOWN\", \"SYS_ADMIN\" in securityContext.capabilities.add)"
        );
        pod["spec"]["containers"][0]["securityContext"]["capabilities"]["drop"] = json!(["NET_RAW"]);
        assert_eq!(
            run(Level::Restricted, &pod)[0].detail,
            "container \"web\" must set securityContext.capabilities.drop=[\"ALL\"]; \
             container \"web\" must not include \"CHOWN\", \"SYS_ADMIN\" in securityContext.capabilities.add"
        );
    }

    #[test]
    fn explicit_bad_settings_in_restricted() {
        let mut pod = restricted_pod();
        pod["spec"]["securityContext"] = json!({"runAsNonRoot": false, "runAsUser": 0, "seccompProfile": {"type": "Unconfined"}});
        let r = run(Level::Restricted, &pod);
        let text: Vec<String> = r.iter().map(Violation::to_string).collect();
        assert_eq!(
            text,
            [
                "runAsNonRoot != true (pod must not set securityContext.runAsNonRoot=false)",
                "runAsUser=0 (pod must not set runAsUser=0)",
                "seccompProfile (pod must not set securityContext.seccompProfile.type to \"Unconfined\")",
            ]
        );
        // Baseline only forbids the explicit bad seccomp profile.
        let b = run(Level::Baseline, &pod);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].check, "seccompProfile_baseline");
    }

    #[test]
    fn user_namespace_and_windows_relaxations() {
        let mut pod = busybox();
        pod["spec"]["hostUsers"] = json!(false);
        let ids: Vec<&str> = run(Level::Restricted, &pod).iter().map(|v| v.check).collect();
        assert_eq!(ids, ["allowPrivilegeEscalation", "capabilities_restricted", "seccompProfile_restricted"]);
        let mut win = busybox();
        win["spec"]["os"] = json!({"name": "windows"});
        let ids: Vec<&str> = run(Level::Restricted, &win).iter().map(|v| v.check).collect();
        assert_eq!(ids, ["runAsNonRoot"]);
    }

    #[test]
    fn sysctls_proc_mount_selinux_apparmor_probes() {
        let mut pod = busybox();
        pod["metadata"]["annotations"] = json!({
            "container.apparmor.security.beta.kubernetes.io/web": "unconfined",
            "container.apparmor.security.beta.kubernetes.io/other": "runtime/default"
        });
        pod["spec"]["securityContext"] = json!({
            "sysctls": [{"name": "kernel.msgmax", "value": "1"}, {"name": "net.ipv4.tcp_syncookies", "value": "1"}],
            "seLinuxOptions": {"type": "spc_t", "user": "root"}
        });
        pod["spec"]["containers"][0]["securityContext"] = json!({"procMount": "Unmasked", "appArmorProfile": {"type": "Unconfined"}});
        pod["spec"]["containers"][0]["livenessProbe"] = json!({"httpGet": {"host": "10.0.0.1", "port": 80}});
        let text: Vec<String> = run(Level::Baseline, &pod).iter().map(Violation::to_string).collect();
        assert_eq!(
            text,
            [
                "forbidden AppArmor profiles (container \"web\" and annotation must not set AppArmor profile type to \
                 \"Unconfined\", \"container.apparmor.security.beta.kubernetes.io/web=\"unconfined\"\")",
                "probe or lifecycle host (container \"web\" uses probe or lifecycle host \"10.0.0.1\")",
                "procMount (container \"web\" must not set securityContext.procMount to \"Unmasked\")",
                "seLinuxOptions (pod set forbidden securityContext.seLinuxOptions: type \"spc_t\"; user may not be set)",
                "forbidden sysctls (kernel.msgmax)",
            ]
        );
    }

    #[test]
    fn namespace_labels_parse() {
        assert_eq!(NamespacePolicy::from_labels(None), Ok(NamespacePolicy::default()));
        let labels = json!({
            "pod-security.kubernetes.io/enforce": "baseline",
            "pod-security.kubernetes.io/enforce-version": "v1.30",
            "pod-security.kubernetes.io/warn": "restricted",
            "pod-security.kubernetes.io/warn-version": "latest",
            "pod-security.kubernetes.io/audit": "restricted",
            "app": "x"
        });
        let p = NamespacePolicy::from_labels(labels.as_object());
        assert_eq!(p, Ok(NamespacePolicy { enforce: Level::Baseline, audit: Some(Level::Restricted), warn: Some(Level::Restricted) }));
        // warn defaults to the enforce level when not set.
        let labels = json!({"pod-security.kubernetes.io/enforce": "restricted"});
        assert_eq!(
            NamespacePolicy::from_labels(labels.as_object()),
            Ok(NamespacePolicy { enforce: Level::Restricted, audit: None, warn: Some(Level::Restricted) })
        );
        assert_eq!(Level::parse("baseline"), Ok(Level::Baseline));
        assert!(Level::parse("Baseline").is_err());
        assert!(Level::Restricted > Level::Baseline && Level::Baseline > Level::Privileged);
    }

    #[test]
    fn bad_label_values_error_with_kubernetes_message() {
        let labels = json!({"pod-security.kubernetes.io/enforce": "strict"});
        let err = NamespacePolicy::from_labels(labels.as_object()).err();
        let Some(PodSecurityError::ParseNamespaceLabels { errors, fallback }) = err.clone() else {
            panic!("expected a label error, got {err:?}");
        };
        assert_eq!(fallback.enforce, Level::Restricted);
        assert_eq!(errors[0].field(), "metadata.labels[pod-security.kubernetes.io/enforce]");
        assert_eq!(errors[0].message(), "Invalid value: \"strict\": must be one of privileged, baseline, restricted");
        assert_eq!(
            err.map(|e| e.to_string()).unwrap_or_default(),
            "metadata.labels[pod-security.kubernetes.io/enforce]: Invalid value: \"strict\": must be one of privileged, baseline, restricted"
        );

        let labels = json!({"pod-security.kubernetes.io/warn": "nope", "pod-security.kubernetes.io/audit-version": "v1.05"});
        let err = NamespacePolicy::from_labels(labels.as_object()).err();
        assert_eq!(
            err.as_ref().map(|e| e.to_string()).unwrap_or_default(),
            "[metadata.labels[pod-security.kubernetes.io/audit-version]: Invalid value: \"v1.05\": must be \"latest\" or \"v1.x\", \
             metadata.labels[pod-security.kubernetes.io/warn]: Invalid value: \"nope\": must be one of privileged, baseline, restricted]"
        );
        let Some(PodSecurityError::ParseNamespaceLabels { fallback, .. }) = err else {
            panic!("expected a label error");
        };
        assert_eq!(fallback.warn, None);
    }

    #[test]
    fn version_labels() {
        for ok in ["latest", "v1.0", "v1.9", "v1.30"] {
            assert!(valid_version(ok), "{ok}");
        }
        for bad in ["", "v1", "v1.", "v2.1", "v1.01", "1.30", "v1.x", "Latest"] {
            assert!(!valid_version(bad), "{bad}");
        }
    }

    #[test]
    fn workload_templates() {
        assert_eq!(pod_spec_paths("Deployment"), Some("/spec/template"));
        assert_eq!(pod_spec_paths("ReplicationController"), Some("/spec/template"));
        assert_eq!(pod_spec_paths("CronJob"), Some("/spec/jobTemplate/spec/template"));
        assert_eq!(pod_spec_paths("Pod"), None);
        assert_eq!(pod_spec_paths("ConfigMap"), None);
        let cj = json!({"spec": {"jobTemplate": {"spec": {"template": busybox()}}}});
        let template = pod_spec_paths("CronJob").and_then(|p| cj.pointer(p)).cloned().unwrap_or_default();
        assert_eq!(run(Level::Restricted, &template).len(), 4);
    }

    #[test]
    fn go_quote_escapes() {
        assert_eq!(go_quote("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
        assert_eq!(join_quote::<String>(&[]), "");
    }
}
