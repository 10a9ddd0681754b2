//! The OCI runtime config (`config.json`) of a container: Kubernetes' rules for the
//! command line, environment and user on top of the image config, and containerd's
//! defaults for mounts, capabilities and masked paths.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use oci_spec::image::Config as ImageConfig;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, Mount as OciMount, MountBuilder, Process, RootBuilder,
    Spec, UserBuilder,
};

use crate::runtime::{ContainerConfig, SandboxStatus, SecurityConfig};

/// `PATH` when neither the image nor the pod sets one (containerd's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// containerd's default capability set for unprivileged containers.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability, in kernel number order (`CAP_CHOWN` is 0); privileged containers
/// get those the runtime itself holds (containerd's `WithAllCurrentCapabilities`).
pub const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The effective capabilities of this process (`CapEff` in `/proc/self/status`).
pub fn current_capabilities() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Paths hidden from unprivileged containers (runc's and containerd's defaults).
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths made read-only in unprivileged containers.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The process's command line by Kubernetes' rules: `command` replaces the image's
/// ENTRYPOINT (and then CMD is ignored), `args` replaces CMD.
pub fn process_args(
    command: &[String],
    args: &[String],
    entrypoint: &[String],
    cmd: &[String],
) -> Vec<String> {
    let mut argv = Vec::new();
    if !command.is_empty() {
        argv.extend_from_slice(command);
        argv.extend_from_slice(args);
    } else {
        argv.extend_from_slice(entrypoint);
        if !args.is_empty() {
            argv.extend_from_slice(args);
        } else {
            argv.extend_from_slice(cmd);
        }
    }
    argv
}

/// The environment: `HOSTNAME`, then the image's ENV, then the pod's variables, each
/// later one replacing an earlier one of the same name in place; `PATH` defaulted.
pub fn merge_env(
    hostname: Option<&str>,
    image_env: &[String],
    envs: &[(String, String)],
) -> Vec<String> {
    let mut merged: Vec<(String, String)> = Vec::new();
    let mut set = |name: &str, value: &str| {
        if let Some(entry) = merged.iter_mut().find(|(n, _)| n == name) {
            entry.1 = value.to_string();
        } else {
            merged.push((name.to_string(), value.to_string()));
        }
    };
    if let Some(hostname) = hostname {
        set("HOSTNAME", hostname);
    }
    for entry in image_env {
        match entry.split_once('=') {
            Some((name, value)) => set(name, value),
            None => set(entry, ""),
        }
    }
    for (name, value) in envs {
        set(name, value);
    }
    if !merged.iter().any(|(n, _)| n == "PATH") {
        merged.insert(0, ("PATH".to_string(), DEFAULT_PATH.to_string()));
    }
    merged
        .into_iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect()
}

/// The uid, gid and supplementary groups a container process runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub username: Option<String>,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some(PasswdEntry { name, uid, gid })
    })
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn group_entries(group: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    group.lines().filter_map(|line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let gid = fields.next()?.parse().ok()?;
        let members = fields
            .next()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .collect();
        Some(GroupEntry { name, gid, members })
    })
}

/// Resolves the user a container runs as. `run_as_user`/`run_as_group` (the pod's
/// securityContext) win over the image's USER (`name`, `uid`, `uid:gid`, `name:group`),
/// which is looked up in the rootfs's `/etc/passwd` and `/etc/group` texts.
pub fn resolve_user(
    run_as_user: Option<u32>,
    run_as_group: Option<u32>,
    image_user: Option<&str>,
    passwd: &str,
    group: &str,
) -> Result<ResolvedUser, String> {
    let (uid, mut gid, username) = match run_as_user {
        Some(uid) => {
            let entry = passwd_entries(passwd).find(|e| e.uid == uid);
            (
                uid,
                entry.as_ref().map_or(0, |e| e.gid),
                entry.map(|e| e.name.to_string()),
            )
        }
        None => {
            let spec = image_user.map(str::trim).unwrap_or("");
            let (user_part, group_part) = match spec.split_once(':') {
                Some((u, g)) => (u, Some(g)),
                None => (spec, None),
            };
            let (uid, primary_gid, username) = if user_part.is_empty() {
                let entry = passwd_entries(passwd).find(|e| e.uid == 0);
                (
                    0,
                    0,
                    Some(entry.map_or("root".to_string(), |e| e.name.to_string())),
                )
            } else if let Ok(uid) = user_part.parse::<u32>() {
                let entry = passwd_entries(passwd).find(|e| e.uid == uid);
                (
                    uid,
                    entry.as_ref().map_or(0, |e| e.gid),
                    entry.map(|e| e.name.to_string()),
                )
            } else {
                let entry = passwd_entries(passwd)
                    .find(|e| e.name == user_part)
                    .ok_or_else(|| {
                        format!(
                            "unable to find user {user_part}: no matching entries in passwd file"
                        )
                    })?;
                (entry.uid, entry.gid, Some(entry.name.to_string()))
            };
            let gid = match group_part {
                None | Some("") => primary_gid,
                Some(g) => match g.parse::<u32>() {
                    Ok(gid) => gid,
                    Err(_) => group_entries(group)
                        .find(|e| e.name == g)
                        .map(|e| e.gid)
                        .ok_or_else(|| {
                            format!("unable to find group {g}: no matching entries in group file")
                        })?,
                },
            };
            (uid, gid, username)
        }
    };
    if let Some(g) = run_as_group {
        gid = g;
    }
    let mut additional_gids = Vec::new();
    if let Some(name) = &username {
        for entry in group_entries(group) {
            if entry.members.contains(&name.as_str())
                && entry.gid != gid
                && !additional_gids.contains(&entry.gid)
            {
                additional_gids.push(entry.gid);
            }
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        username,
    })
}

/// A signal named by an image's STOPSIGNAL (`SIGQUIT`, `QUIT`, `15`); `None` when the
/// text names no signal.
pub fn parse_stop_signal(text: &str) -> Option<nix::sys::signal::Signal> {
    use nix::sys::signal::Signal;
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if let Ok(number) = text.parse::<i32>() {
        return Signal::try_from(number).ok();
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>().ok()
}

/// The host-side facts a container's spec is built from, besides its config.
pub struct SpecInputs<'a> {
    pub config: &'a ContainerConfig,
    pub image: Option<&'a ImageConfig>,
    pub sandbox: &'a SandboxStatus,
    /// The PID namespace to join (the pod's shared one, or a target container's); a new
    /// one when `None`.
    pub pid_namespace: Option<&'a Path>,
    /// The pod's hostname, for the `HOSTNAME` variable.
    pub hostname: Option<&'a str>,
    /// `/etc/passwd` and `/etc/group` of the container's rootfs (empty when absent).
    pub passwd: &'a str,
    pub group: &'a str,
    /// `/<cgroup_root>/<pod cgroup>/<id>`.
    pub cgroups_path: String,
    /// A new cgroup namespace is created when the host is on the unified hierarchy.
    pub cgroup_namespace: bool,
    /// The runtime's own effective capabilities (bit n = capability n), which privileged
    /// containers get (`CapEff` of `/proc/self/status`).
    pub current_caps: u64,
}

fn capability_set(names: &[String]) -> Result<HashSet<Capability>, String> {
    names
        .iter()
        .map(|name| {
            serde_json::from_value::<Capability>(serde_json::Value::String(name.clone()))
                .map_err(|_| format!("unknown capability {name:?}"))
        })
        .collect()
}

/// A non-privileged container's capabilities, as containerd derives them from
/// `securityContext.capabilities`: the default set; all of `all` if `ALL` is added; none
/// if `ALL` is dropped; then each one added, then each one dropped. Kubernetes names
/// them without the `CAP_` prefix (one written with it is taken as meant).
pub fn container_capabilities(security: &SecurityConfig, all: &[&str]) -> Vec<String> {
    let is_all = |c: &&String| c.eq_ignore_ascii_case("ALL");
    let named = |c: &String| {
        let c = c.to_ascii_uppercase();
        format!("CAP_{}", c.strip_prefix("CAP_").unwrap_or(&c))
    };
    let mut caps: Vec<String> = DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect();
    if security.add_capabilities.iter().any(|c| is_all(&c)) {
        caps = all.iter().map(|c| c.to_string()).collect();
    }
    if security.drop_capabilities.iter().any(|c| is_all(&c)) {
        caps.clear();
    }
    for cap in security.add_capabilities.iter().filter(|c| !is_all(c)).map(named) {
        if !caps.contains(&cap) {
            caps.push(cap);
        }
    }
    let dropped: Vec<String> = security
        .drop_capabilities
        .iter()
        .filter(|c| !is_all(c))
        .map(named)
        .collect();
    caps.retain(|c| !dropped.contains(c));
    caps
}

/// `runAsNonRoot`, checked as the kubelet does before creating the container: from
/// `runAsUser` if set, else from the image's user, which must then be numeric.
pub fn verify_non_root(config: &ContainerConfig, image_user: Option<&str>) -> Result<(), String> {
    if !config.security.run_as_non_root {
        return Ok(());
    }
    let label = |key: &str| config.labels.get(key).map(String::as_str).unwrap_or("");
    let pod = format!(
        "\"{}_{}({})\"",
        label(crate::runtime::LABEL_POD_NAME),
        label(crate::runtime::LABEL_POD_NAMESPACE),
        label(crate::runtime::LABEL_POD_UID)
    );
    let whose = format!("(pod: {pod}, container: {})", config.name);
    if let Some(uid) = config.run_as_user {
        return match uid {
            0 => Err(format!("container's runAsUser breaks non-root policy {whose}")),
            _ => Ok(()),
        };
    }
    let user = image_user.map(str::trim).unwrap_or("");
    let user = user.split_once(':').map_or(user, |(u, _)| u);
    match user.parse::<u32>() {
        Ok(0) => Err(format!("container has runAsNonRoot and image will run as root {whose}")),
        Ok(_) => Ok(()),
        Err(_) if user.is_empty() => Err(format!("container has runAsNonRoot and image will run as root {whose}")),
        Err(_) => Err(format!(
            "container has runAsNonRoot and image has non-numeric user ({user}), cannot verify user is non-root {whose}"
        )),
    }
}

fn mount(
    destination: &str,
    typ: &str,
    source: &Path,
    options: &[&str],
) -> Result<OciMount, String> {
    MountBuilder::default()
        .destination(PathBuf::from(destination))
        .typ(typ.to_string())
        .source(source.to_path_buf())
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(|e| format!("mount {destination}: {e}"))
}

fn namespace(typ: LinuxNamespaceType, path: Option<&Path>) -> Result<LinuxNamespace, String> {
    let mut builder = LinuxNamespaceBuilder::default().typ(typ);
    if let Some(path) = path {
        builder = builder.path(path.to_path_buf());
    }
    builder
        .build()
        .map_err(|e| format!("namespace {typ:?}: {e}"))
}

/// The working directory: the pod's, else the image's, else `/`.
pub fn working_dir(config: &ContainerConfig, image: Option<&ImageConfig>) -> String {
    config
        .working_dir
        .clone()
        .filter(|d| !d.is_empty())
        .or_else(|| {
            image
                .and_then(|c| c.working_dir().clone())
                .filter(|d| !d.is_empty())
        })
        .unwrap_or_else(|| "/".to_string())
}

/// Builds the container's `config.json`.
pub fn build_spec(inputs: &SpecInputs<'_>) -> Result<Spec, String> {
    let cfg = inputs.config;
    let image = inputs.image;
    let empty = Vec::new();
    let entrypoint = image
        .and_then(|c| c.entrypoint().as_ref())
        .unwrap_or(&empty);
    let cmd = image.and_then(|c| c.cmd().as_ref()).unwrap_or(&empty);
    let args = process_args(&cfg.command, &cfg.args, entrypoint, cmd);
    if args.is_empty() {
        return Err("no command specified".to_string());
    }
    let image_env = image.and_then(|c| c.env().as_ref()).unwrap_or(&empty);
    let mut env = merge_env(inputs.hostname, image_env, &cfg.envs);
    // As containerd does for `tty: true`, unless the image or pod sets it.
    if cfg.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".to_string());
    }
    let cwd = working_dir(cfg, image);
    let image_user = image.and_then(|c| c.user().as_deref());
    let user = resolve_user(
        cfg.run_as_user,
        cfg.run_as_group,
        image_user,
        inputs.passwd,
        inputs.group,
    )?;

    let mut user_builder = UserBuilder::default().uid(user.uid).gid(user.gid);
    let mut additional_gids = user.additional_gids.clone();
    for gid in &cfg.security.supplemental_groups {
        if !additional_gids.contains(gid) {
            additional_gids.push(*gid);
        }
    }
    if !additional_gids.is_empty() {
        user_builder = user_builder.additional_gids(additional_gids);
    }
    let oci_user = user_builder.build().map_err(|e| format!("user: {e}"))?;

    let current: Vec<&str> = ALL_CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(bit, _)| inputs.current_caps & (1u64 << bit) != 0)
        .map(|(_, name)| *name)
        .collect();
    let cap_names = if cfg.privileged {
        current.iter().map(|c| c.to_string()).collect()
    } else {
        container_capabilities(&cfg.security, &current)
    };
    // Privileged containers run unconfined, as with containerd and CRI-O.
    let seccomp = if cfg.privileged {
        None
    } else {
        super::seccomp::linux_seccomp(&cfg.security.seccomp, &cap_names)?
    };
    let caps = capability_set(&cap_names)?;
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .build()
        .map_err(|e| format!("capabilities: {e}"))?;
    let mut capabilities = capabilities;
    capabilities.set_inheritable(None).set_ambient(None);

    let mut process = Process::default();
    process
        .set_terminal(Some(false))
        .set_user(oci_user)
        .set_args(Some(args))
        .set_env(Some(env))
        .set_cwd(PathBuf::from(cwd))
        .set_capabilities(Some(capabilities))
        // Unset rather than false: libcontainer then loads a seccomp filter while the
        // process still holds CAP_SYS_ADMIN, which a filter needs without no_new_privs.
        .set_no_new_privileges((cfg.security.no_new_privileges && !cfg.privileged).then_some(true))
        .set_rlimits(None)
        .set_oom_score_adj(None);

    // Mounts: the container's own /proc, /dev, /sys …, the pod's etc files, then volumes
    // with parents before children.
    let sys_options: &[&str] = if cfg.privileged {
        &["nosuid", "noexec", "nodev", "rw"]
    } else {
        &["nosuid", "noexec", "nodev", "ro"]
    };
    let mut mounts = vec![
        mount(
            "/proc",
            "proc",
            Path::new("proc"),
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/dev",
            "tmpfs",
            Path::new("tmpfs"),
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            Path::new("devpts"),
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            Path::new("shm"),
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            Path::new("mqueue"),
            &["nosuid", "noexec", "nodev"],
        )?,
        mount("/sys", "sysfs", Path::new("sysfs"), sys_options)?,
    ];
    let user_destinations: BTreeSet<&str> = cfg
        .mounts
        .iter()
        .map(|m| m.container_path.trim_end_matches('/'))
        .collect();
    for (destination, source) in &inputs.sandbox.etc_files {
        if user_destinations.contains(destination.as_str()) {
            continue;
        }
        mounts.push(mount(
            destination,
            "bind",
            source,
            &["rbind", "rprivate", "rw"],
        )?);
    }
    let mut volumes: Vec<&crate::runtime::Mount> = cfg.mounts.iter().collect();
    volumes.sort_by_key(|m| Path::new(&m.container_path).components().count());
    for volume in volumes {
        if !volume.container_path.starts_with('/') {
            return Err(format!(
                "mount path {:?} is not absolute",
                volume.container_path
            ));
        }
        let mode = if volume.readonly { "ro" } else { "rw" };
        mounts.push(mount(
            &volume.container_path,
            "bind",
            &volume.host_path,
            &["rbind", "rprivate", mode],
        )?);
    }

    // Namespaces: own mount (and cgroup on v2); net, ipc, uts of the pod; pid of its
    // own, or the one it was given.
    let mut namespaces = vec![
        namespace(LinuxNamespaceType::Pid, inputs.pid_namespace)?,
        namespace(LinuxNamespaceType::Mount, None)?,
    ];
    if inputs.cgroup_namespace {
        namespaces.push(namespace(LinuxNamespaceType::Cgroup, None)?);
    }
    for (name, typ) in [
        ("net", LinuxNamespaceType::Network),
        ("ipc", LinuxNamespaceType::Ipc),
        ("uts", LinuxNamespaceType::Uts),
    ] {
        if let Some(path) = inputs.sandbox.namespaces.get(name) {
            namespaces.push(namespace(typ, Some(path))?);
        }
    }

    // Resources.
    let res = &cfg.resources;
    let device_rule = LinuxDeviceCgroupBuilder::default()
        .allow(cfg.privileged)
        .access("rwm".to_string())
        .build()
        .map_err(|e| format!("devices: {e}"))?;
    let mut resources = LinuxResourcesBuilder::default().devices(vec![device_rule]);
    if res.cpu_shares.is_some() || res.cpu_quota.is_some() || res.cpu_period.is_some() {
        let mut cpu = LinuxCpuBuilder::default();
        if let Some(shares) = res.cpu_shares {
            cpu = cpu.shares(shares);
        }
        if let Some(quota) = res.cpu_quota {
            cpu = cpu.quota(quota);
        }
        if let Some(period) = res.cpu_period {
            cpu = cpu.period(period);
        }
        resources = resources.cpu(cpu.build().map_err(|e| format!("cpu: {e}"))?);
    }
    if let Some(limit) = res.memory_limit.filter(|l| *l > 0) {
        // No swap on top of the limit, as the kubelet configures it.
        let memory = LinuxMemoryBuilder::default()
            .limit(limit)
            .swap(limit)
            .build()
            .map_err(|e| format!("memory: {e}"))?;
        resources = resources.memory(memory);
    }
    if let Some(limit) = res.pids_limit.filter(|l| *l > 0) {
        let pids = LinuxPidsBuilder::default()
            .limit(limit)
            .build()
            .map_err(|e| format!("pids: {e}"))?;
        resources = resources.pids(pids);
    }
    let resources = resources.build().map_err(|e| format!("resources: {e}"))?;

    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources)
        .cgroups_path(PathBuf::from(&inputs.cgroups_path))
        .build()
        .map_err(|e| format!("linux: {e}"))?;
    linux.set_seccomp(seccomp);
    if cfg.privileged {
        linux.set_masked_paths(None).set_readonly_paths(None);
    } else {
        linux
            .set_masked_paths(Some(MASKED_PATHS.iter().map(|p| p.to_string()).collect()))
            .set_readonly_paths(Some(READONLY_PATHS.iter().map(|p| p.to_string()).collect()));
    }

    let root = RootBuilder::default()
        .path(PathBuf::from("rootfs"))
        .readonly(cfg.security.readonly_rootfs)
        .build()
        .map_err(|e| format!("root: {e}"))?;

    let mut spec = Spec::default();
    spec.set_version("1.0.2".to_string())
        .set_root(Some(root))
        .set_process(Some(process))
        .set_hostname(None)
        .set_mounts(Some(mounts))
        .set_annotations(Some(cfg.annotations.clone().into_iter().collect()))
        .set_linux(Some(linux));
    Ok(spec)
}

#[cfg(test)]
pub(super) mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::runtime::{Mount, PodMeta, Resources, SandboxState};

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn args_follow_kubernetes_rules() {
        let ep = strings(&["/entry"]);
        let cmd = strings(&["--default"]);
        // (command, args) → argv
        let table: Vec<(Vec<String>, Vec<String>, Vec<String>)> = vec![
            (vec![], vec![], strings(&["/entry", "--default"])),
            (strings(&["sh", "-c"]), vec![], strings(&["sh", "-c"])),
            (vec![], strings(&["--x"]), strings(&["/entry", "--x"])),
            (
                strings(&["sh"]),
                strings(&["-c", "true"]),
                strings(&["sh", "-c", "true"]),
            ),
        ];
        for (command, args, want) in table {
            assert_eq!(
                process_args(&command, &args, &ep, &cmd),
                want,
                "{command:?} {args:?}"
            );
        }
        // No ENTRYPOINT: CMD alone, or args alone.
        assert_eq!(process_args(&[], &[], &[], &cmd), cmd);
        assert_eq!(
            process_args(&[], &strings(&["a"]), &[], &cmd),
            strings(&["a"])
        );
    }

    #[test]
    fn env_merges_by_name_and_defaults_path() {
        let image = strings(&["PATH=/bin", "A=1", "B=2"]);
        let envs = vec![
            ("B".to_string(), "x".to_string()),
            ("C".to_string(), "3".to_string()),
        ];
        assert_eq!(
            merge_env(Some("web"), &image, &envs),
            strings(&["HOSTNAME=web", "PATH=/bin", "A=1", "B=x", "C=3"])
        );
        assert_eq!(
            merge_env(None, &[], &[("X".into(), "a=b".into())]),
            vec![format!("PATH={DEFAULT_PATH}"), "X=a=b".to_string()]
        );
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        www:x:33:33:www:/var/www:/bin/sh\n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\nwww:x:33:\nstaff:x:50:www,daemon\nnogroup:x:65534:\n";

    #[test]
    fn user_resolution() {
        let r = |rau, rag, u| resolve_user(rau, rag, u, PASSWD, GROUP);
        assert_eq!(r(None, None, None).map(|u| (u.uid, u.gid)), Ok((0, 0)));
        let www = r(None, None, Some("www")).expect("www");
        assert_eq!(
            (www.uid, www.gid, www.additional_gids.clone()),
            (33, 33, vec![50])
        );
        assert_eq!(
            r(None, None, Some("33")).map(|u| (u.uid, u.gid)),
            Ok((33, 33))
        );
        assert_eq!(
            r(None, None, Some("1000")).map(|u| (u.uid, u.gid)),
            Ok((1000, 0))
        );
        assert_eq!(
            r(None, None, Some("1000:2000")).map(|u| (u.uid, u.gid)),
            Ok((1000, 2000))
        );
        assert_eq!(
            r(None, None, Some("www:nogroup")).map(|u| (u.uid, u.gid)),
            Ok((33, 65534))
        );
        assert_eq!(
            r(None, None, Some("nobody:staff")).map(|u| (u.uid, u.gid)),
            Ok((65534, 50))
        );
        assert!(
            r(None, None, Some("ghost")).is_err_and(|e| e.contains("unable to find user ghost"))
        );
        assert!(
            r(None, None, Some("www:ghosts")).is_err_and(|e| e.contains("unable to find group"))
        );
        // runAsUser wins over the image's USER; the primary group comes from passwd.
        assert_eq!(
            r(Some(33), None, Some("nobody")).map(|u| (u.uid, u.gid)),
            Ok((33, 33))
        );
        assert_eq!(
            r(Some(4242), None, Some("www")).map(|u| (u.uid, u.gid)),
            Ok((4242, 0))
        );
        assert_eq!(
            r(Some(33), Some(7), None).map(|u| (u.uid, u.gid)),
            Ok((33, 7))
        );
        assert_eq!(
            r(None, Some(7), Some("www")).map(|u| (u.uid, u.gid)),
            Ok((33, 7))
        );
    }

    #[test]
    fn stop_signals() {
        use nix::sys::signal::Signal;
        assert_eq!(parse_stop_signal("SIGQUIT"), Some(Signal::SIGQUIT));
        assert_eq!(parse_stop_signal("quit"), Some(Signal::SIGQUIT));
        assert_eq!(parse_stop_signal("15"), Some(Signal::SIGTERM));
        assert_eq!(parse_stop_signal("SIGWINCH"), Some(Signal::SIGWINCH));
        assert_eq!(parse_stop_signal("SIGNOPE"), None);
        assert_eq!(parse_stop_signal(""), None);
        assert_eq!(parse_stop_signal("999"), None);
    }

    /// A container with something in every field, for tests of what is built from one.
    pub(in crate::runtime::linux) fn sample_config() -> ContainerConfig {
        ContainerConfig {
            name: "web".into(),
            attempt: 0,
            image: "busybox".into(),
            command: vec![],
            args: strings(&["-f", "-p", "8080"]),
            working_dir: None,
            envs: vec![("MODE".into(), "test".into())],
            mounts: vec![
                Mount {
                    host_path: "/var/lib/data/sub".into(),
                    container_path: "/data/sub".into(),
                    readonly: false,
                },
                Mount {
                    host_path: "/var/lib/data".into(),
                    container_path: "/data".into(),
                    readonly: true,
                },
            ],
            log_path: "/var/log/pods/x/web/0.log".into(),
            resources: Resources {
                cpu_shares: Some(512),
                cpu_quota: Some(50_000),
                cpu_period: Some(100_000),
                memory_limit: Some(64 << 20),
                pids_limit: Some(100),
            },
            run_as_user: None,
            run_as_group: None,
            privileged: false,
            tty: false,
            stdin: false,
            stdin_once: false,
            pid_namespace: Default::default(),
            security: Default::default(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }

    fn sample_sandbox() -> SandboxStatus {
        SandboxStatus {
            id: "sb".into(),
            pod: PodMeta {
                name: "p".into(),
                namespace: "default".into(),
                uid: "u1".into(),
            },
            state: SandboxState::Ready,
            ip: Some("10.0.0.2".into()),
            created_at: chrono::Utc::now(),
            labels: BTreeMap::new(),
            namespaces: [
                ("net".to_string(), PathBuf::from("/run/sb/net")),
                ("ipc".to_string(), PathBuf::from("/run/sb/ipc")),
                ("uts".to_string(), PathBuf::from("/run/sb/uts")),
            ]
            .into_iter()
            .collect(),
            etc_files: [("/etc/hosts".to_string(), PathBuf::from("/run/sb/hosts"))]
                .into_iter()
                .collect(),
            pid_holder: None,
        }
    }

    #[test]
    fn capabilities_follow_add_and_drop_as_containerd_does() {
        let all = ["CAP_CHOWN", "CAP_NET_ADMIN", "CAP_SYS_TIME", "CAP_KILL"];
        let security = |add: &[&str], drop: &[&str]| SecurityConfig {
            add_capabilities: strings(add),
            drop_capabilities: strings(drop),
            ..Default::default()
        };
        let defaults: Vec<String> = strings(DEFAULT_CAPABILITIES);
        assert_eq!(container_capabilities(&security(&[], &[]), &all), defaults);
        let added = container_capabilities(&security(&["NET_ADMIN", "sys_time"], &["KILL"]), &all);
        assert!(added.contains(&"CAP_NET_ADMIN".to_string()) && added.contains(&"CAP_SYS_TIME".to_string()));
        assert!(!added.contains(&"CAP_KILL".to_string()));
        assert_eq!(added.len(), defaults.len() + 1);
        assert_eq!(container_capabilities(&security(&["NET_BIND_SERVICE"], &["ALL"]), &all), ["CAP_NET_BIND_SERVICE"]);
        assert_eq!(container_capabilities(&security(&["ALL"], &["CHOWN"]), &all), ["CAP_NET_ADMIN", "CAP_SYS_TIME", "CAP_KILL"]);
        let prefixed = container_capabilities(&security(&["CAP_NET_ADMIN"], &[]), &all);
        assert_eq!(prefixed.len(), defaults.len() + 1);
        assert!(prefixed.contains(&"CAP_NET_ADMIN".to_string()));
        let unknown = container_capabilities(&security(&["NOT_A_CAPABILITY"], &[]), &all);
        let err = capability_set(&unknown).expect_err("unknown capability");
        assert_eq!(err, "unknown capability \"CAP_NOT_A_CAPABILITY\"");
    }

    #[test]
    fn run_as_non_root_is_checked_from_the_user_or_the_image() {
        let mut cfg = sample_config();
        cfg.labels = [("io.kubernetes.pod.name", "p"), ("io.kubernetes.pod.namespace", "default"), ("io.kubernetes.pod.uid", "u1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        cfg.run_as_user = None;
        assert_eq!(verify_non_root(&cfg, None), Ok(()), "not asked for");
        cfg.security.run_as_non_root = true;
        let whose = "(pod: \"p_default(u1)\", container: web)";
        assert_eq!(verify_non_root(&cfg, None), Err(format!("container has runAsNonRoot and image will run as root {whose}")));
        assert_eq!(verify_non_root(&cfg, Some("0:0")), Err(format!("container has runAsNonRoot and image will run as root {whose}")));
        assert_eq!(verify_non_root(&cfg, Some("1000:1000")), Ok(()));
        assert_eq!(
            verify_non_root(&cfg, Some("nobody")),
            Err(format!("container has runAsNonRoot and image has non-numeric user (nobody), cannot verify user is non-root {whose}"))
        );
        cfg.run_as_user = Some(65534);
        assert_eq!(verify_non_root(&cfg, Some("root")), Ok(()));
        cfg.run_as_user = Some(0);
        assert_eq!(verify_non_root(&cfg, Some("1000")), Err(format!("container's runAsUser breaks non-root policy {whose}")));
    }

    #[test]
    fn security_context_reaches_the_spec() {
        let mut cfg = sample_config();
        cfg.security = SecurityConfig {
            readonly_rootfs: true,
            no_new_privileges: true,
            supplemental_groups: vec![2000, 33, 4000],
            ..Default::default()
        };
        let sandbox = sample_sandbox();
        let inputs = SpecInputs {
            config: &cfg,
            image: None,
            sandbox: &sandbox,
            hostname: None,
            passwd: PASSWD,
            group: GROUP,
            cgroups_path: "/x".into(),
            pid_namespace: Some(Path::new("/proc/42/ns/pid")),
            cgroup_namespace: false,
            current_caps: 0,
        };
        let spec = build_spec(&inputs).expect("spec");
        assert_eq!(spec.root().as_ref().and_then(|r| r.readonly()), Some(true));
        let process = spec.process().as_ref().expect("process");
        assert_eq!(process.no_new_privileges(), Some(true));
        let gids = process.user().additional_gids().clone().unwrap_or_default();
        assert!(gids.contains(&2000) && gids.contains(&4000), "{gids:?}");
        assert!(gids.iter().all(|g| gids.iter().filter(|h| *h == g).count() == 1), "{gids:?}");
        let pid = spec.linux().as_ref().and_then(|l| l.namespaces().clone()).unwrap_or_default().into_iter().find(|n| n.typ() == LinuxNamespaceType::Pid).expect("pid namespace");
        assert_eq!(pid.path().as_deref(), Some(Path::new("/proc/42/ns/pid")));
    }

    #[test]
    fn spec_for_a_sample_container() {
        let cfg = sample_config();
        let sandbox = sample_sandbox();
        let mut image = ImageConfig::default();
        image
            .set_entrypoint(Some(strings(&["httpd"])))
            .set_cmd(Some(strings(&["-h", "/www"])))
            .set_env(Some(strings(&["PATH=/usr/bin:/bin"])))
            .set_working_dir(Some("/www".into()))
            .set_user(Some("www".into()));
        let inputs = SpecInputs {
            config: &cfg,
            image: Some(&image),
            sandbox: &sandbox,
            hostname: Some("p"),
            passwd: PASSWD,
            group: GROUP,
            cgroups_path: "/rkube/podu1/abc".into(),
            pid_namespace: None,
            cgroup_namespace: false,
            current_caps: 0x1ff_feff_ffff,
        };
        let spec = build_spec(&inputs).expect("spec");
        let process = spec.process().as_ref().expect("process");
        assert_eq!(
            process.args().as_ref().expect("args"),
            &strings(&["httpd", "-f", "-p", "8080"])
        );
        assert_eq!(process.cwd(), Path::new("/www"));
        assert_eq!((process.user().uid(), process.user().gid()), (33, 33));
        let env = process.env().as_ref().expect("env");
        assert!(env.contains(&"MODE=test".to_string()) && env.contains(&"HOSTNAME=p".to_string()));
        let caps = process.capabilities().as_ref().expect("caps");
        assert_eq!(
            caps.bounding().as_ref().map(|c| c.len()),
            Some(DEFAULT_CAPABILITIES.len())
        );
        assert!(caps.ambient().is_none() && caps.inheritable().is_none());
        assert!(process.rlimits().is_none());

        let linux = spec.linux().as_ref().expect("linux");
        let ns: Vec<(LinuxNamespaceType, Option<PathBuf>)> = linux
            .namespaces()
            .as_ref()
            .expect("namespaces")
            .iter()
            .map(|n| (n.typ(), n.path().clone()))
            .collect();
        assert_eq!(
            ns,
            vec![
                (LinuxNamespaceType::Pid, None),
                (LinuxNamespaceType::Mount, None),
                (LinuxNamespaceType::Network, Some("/run/sb/net".into())),
                (LinuxNamespaceType::Ipc, Some("/run/sb/ipc".into())),
                (LinuxNamespaceType::Uts, Some("/run/sb/uts".into())),
            ]
        );
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/rkube/podu1/abc"))
        );
        let resources = linux.resources().as_ref().expect("resources");
        let cpu = resources.cpu().as_ref().expect("cpu");
        assert_eq!(
            (cpu.shares(), cpu.quota(), cpu.period()),
            (Some(512), Some(50_000), Some(100_000))
        );
        assert_eq!(
            resources.memory().as_ref().and_then(|m| m.limit()),
            Some(64 << 20)
        );
        assert_eq!(resources.pids().as_ref().map(|p| p.limit()), Some(100));
        assert!(linux
            .masked_paths()
            .as_ref()
            .is_some_and(|p| p.contains(&"/proc/kcore".to_string())));

        let mounts: Vec<(String, String, Vec<String>)> = spec
            .mounts()
            .as_ref()
            .expect("mounts")
            .iter()
            .map(|m| {
                (
                    m.destination().display().to_string(),
                    m.typ().clone().unwrap_or_default(),
                    m.options().clone().unwrap_or_default(),
                )
            })
            .collect();
        let dests: Vec<&str> = mounts.iter().map(|m| m.0.as_str()).collect();
        assert_eq!(
            dests,
            vec![
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/etc/hosts",
                "/data",
                "/data/sub"
            ]
        );
        assert!(mounts[5].2.contains(&"ro".to_string()));
        assert!(
            mounts[7].2.contains(&"ro".to_string()),
            "readonly volume: {:?}",
            mounts[7]
        );
        assert!(mounts[8].2.contains(&"rw".to_string()));

        // Privileged: every capability the kernel has, nothing masked, /sys writable.
        let mut privileged = cfg.clone();
        privileged.privileged = true;
        let inputs = SpecInputs {
            config: &privileged,
            cgroup_namespace: true,
            ..inputs
        };
        let spec = build_spec(&inputs).expect("privileged spec");
        let caps = spec
            .process()
            .as_ref()
            .and_then(|p| p.capabilities().clone())
            .expect("caps");
        assert_eq!(caps.bounding().as_ref().map(|c| c.len()), Some(40));
        assert!(caps
            .bounding()
            .as_ref()
            .is_some_and(|c| !c.contains(&Capability::SysResource)));
        let linux = spec.linux().as_ref().expect("linux");
        assert!(linux.masked_paths().is_none() && linux.readonly_paths().is_none());
        assert!(linux
            .namespaces()
            .as_ref()
            .is_some_and(|n| n.iter().any(|n| n.typ() == LinuxNamespaceType::Cgroup)));
    }

    #[test]
    fn spec_without_a_command_is_refused() {
        let mut cfg = sample_config();
        cfg.args.clear();
        let sandbox = sample_sandbox();
        let inputs = SpecInputs {
            config: &cfg,
            image: None,
            sandbox: &sandbox,
            hostname: None,
            passwd: "",
            group: "",
            cgroups_path: "/x".into(),
            pid_namespace: None,
            cgroup_namespace: false,
            current_caps: 0x1ff_feff_ffff,
        };
        assert_eq!(
            build_spec(&inputs).err().as_deref(),
            Some("no command specified")
        );
    }
}
