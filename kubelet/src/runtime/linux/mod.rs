//! Real containers: OCI bundles on overlayfs run by youki's `libcontainer` under a small
//! per-container shim process that keeps logs and the exit status.
//!
//! On-disk layout under the kubelet's root (`ROOT`):
//! - `ROOT/containers/<id>/`: the OCI bundle of a container — `config.json`, `rootfs/`
//!   (the overlay mount), `upper/` and `work/` (its writable layer), and the records
//!   `meta.json` (at create), `state.json` (the shim, once running: pid, started_at),
//!   `exit.json` (the shim, at the end: exit code, finished_at, oom_killed), `shim.log`,
//!   and `attach.sock` while it runs (the shim's attach endpoint, see [`attach`]);
//! - `ROOT/libcontainer-state/<id>/`: libcontainer's own state while the container runs;
//! - `ROOT/sandbox-meta/<sandbox id>.json`: the `SandboxConfig` a sandbox was created
//!   with (its containers' pod cgroup and hostname).
//!
//! A container's cgroup is `/<cgroup_root>/<pod cgroup>/<id>` on every hierarchy.
//! Containers run under a shim (see [`shim`]) detached from the kubelet, so a kubelet
//! restart finds them still running from the records alone.

pub mod attach;
pub mod cgroups;
pub mod exec;
pub mod executor;
pub mod logs;
pub mod pause;
pub mod rootfs;
pub mod seccomp;
pub mod shim;
pub mod spec;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use sha2::Digest;
use tokio::io::{AsyncBufReadExt, BufReader};

use self::cgroups::Cgroups;
use self::store::{
    process_alive, read_json, write_json_atomic, ContainerRecord, Durability, ExitRecord,
    StartedRecord, EXIT_FILE, META_FILE, ROOTFS_DIR, SHIM_LOG, SPEC_FILE, STATE_FILE,
};
use super::image::{ImageStore, ResolvedImage};
use super::sandbox::{self, SandboxManager};
use super::{
    ContainerConfig, ContainerState, ContainerStats, ContainerStatus, ExecRequest, ExecSession,
    PidNamespace, PodMeta, Result, Runtime, RuntimeError, SandboxConfig, SandboxState, SandboxStatus,
};

pub use self::shim::SHIM_SUBCOMMAND;

/// How long `start_container` waits for the shim to report.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long to wait for a SIGKILLed container (or its shim) to be gone.
const KILL_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The pause before re-check `n` (0, 1, …) of a wait: 1 ms, doubling up to
/// [`POLL_INTERVAL`]. A shim's cleanup after its container exits takes a few
/// milliseconds; polling every 20 ms from the start made every remove wait ~20 ms.
fn poll_delay(n: u32) -> Duration {
    Duration::from_millis(1u64 << n.min(5)).min(POLL_INTERVAL)
}

/// Waits up to `timeout` for process `pid` (started at `start_ticks`) to end, woken by a
/// pidfd when it does; `Some(false)` on timeout, `None` when no pidfd could be had.
#[allow(unsafe_code)] // registering the pidfd with tokio's reactor
async fn wait_pid_gone(pid: u32, start_ticks: u64, timeout: Duration) -> Option<bool> {
    let raw = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
    let fd = match rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::NONBLOCK) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Some(true),
        Err(_) => return None,
    };
    // Checked once the pidfd is held: if the pid had been reused before, the start time
    // differs, and the pidfd cannot be for the recorded process.
    if !process_alive(pid, start_ticks) {
        return Some(true);
    }
    // SAFETY: an OwnedFd's raw fd is valid, open and unchanged for as long as the
    // AsyncFd owns it.
    let fd = unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.ok()?;
    // A pidfd turns readable when its process ends, and stays readable.
    Some(tokio::time::timeout(timeout, fd.readable()).await.is_ok())
}

/// Created (exclusively) when a start begins, so that a container starts at most once.
const START_MARKER: &str = "start.marker";

/// If this process was started as a shim or exec helper (`argv[1]` is
/// [`SHIM_SUBCOMMAND`]), runs it and exits; otherwise returns at once. The `kubelet` and
/// `rkube` binaries call this first thing in `main`, before any thread exists.
pub fn shim_main_if_requested() {
    shim::run_if_requested(std::env::args_os().collect());
}

/// Like [`shim_main_if_requested`] with an explicit argv (for test binaries that hook in
/// before `main`).
pub fn run_shim_if_requested(args: Vec<std::ffi::OsString>) {
    shim::run_if_requested(args);
}

/// The runtime of real containers.
#[derive(Clone)]
pub struct LinuxRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    containers_dir: PathBuf,
    state_root: PathBuf,
    sandbox_meta_dir: PathBuf,
    images: Arc<ImageStore>,
    sandboxes: Arc<SandboxManager>,
    cgroup_root: String,
    shim_binary: PathBuf,
    cgroups: Cgroups,
    /// Teardown takes it exclusively; every other state change shares it.
    lock: tokio::sync::RwLock<()>,
    /// One lock per container: start, stop and remove of the same container take turns.
    container_locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn op_error(op: &'static str, id: &str, message: impl Into<String>) -> RuntimeError {
    RuntimeError::Operation {
        op,
        id: id.to_string(),
        message: message.into(),
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A relative cgroup name with only plain components (`kubepods/burstable/pod<uid>`).
fn sanitize_cgroup(name: &str) -> String {
    name.split('/')
        .filter(|c| !c.is_empty() && *c != "." && *c != "..")
        .collect::<Vec<_>>()
        .join("/")
}

impl LinuxRuntime {
    /// A runtime over `root` (the kubelet's root dir); containers' cgroups live under
    /// `/<cgroup_root>/` on every hierarchy.
    pub fn new(
        root: PathBuf,
        images: Arc<ImageStore>,
        sandboxes: Arc<SandboxManager>,
        cgroup_root: String,
    ) -> Result<Self> {
        let cgroup_root = sanitize_cgroup(&cgroup_root);
        if cgroup_root.is_empty() {
            return Err(RuntimeError::InvalidConfig(
                "cgroup root must not be empty".into(),
            ));
        }
        let containers_dir = root.join("containers");
        let state_root = root.join("libcontainer-state");
        let sandbox_meta_dir = root.join("sandbox-meta");
        for dir in [&containers_dir, &state_root, &sandbox_meta_dir] {
            fs::create_dir_all(dir)
                .map_err(|e| RuntimeError::io(format!("creating {}", dir.display()), e))?;
        }
        let cgroups =
            Cgroups::detect().map_err(|e| RuntimeError::io("reading /proc/self/mountinfo", e))?;
        let shim_binary = std::env::current_exe()
            .map_err(|e| RuntimeError::io("locating the kubelet binary", e))?;
        Ok(LinuxRuntime {
            inner: Arc::new(Inner {
                root,
                containers_dir,
                state_root,
                sandbox_meta_dir,
                images,
                sandboxes,
                cgroup_root,
                shim_binary,
                cgroups,
                lock: tokio::sync::RwLock::new(()),
                container_locks: std::sync::Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Uses another binary as shim and exec helper (its `main` must call
    /// [`shim_main_if_requested`]); the default is the running binary. Call it on the
    /// runtime `new` returned, before cloning it (a shared runtime keeps its binary).
    pub fn with_shim_binary(mut self, path: PathBuf) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.shim_binary = path;
        }
        self
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The directory of a container's bundle and records.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.inner.containers_dir.join(id)
    }

    /// Creates a container from an already resolved image in a sandbox described by its
    /// status and config (what `create_container` does after looking both up).
    pub async fn create_container_with_image(
        &self,
        sandbox: &SandboxStatus,
        sandbox_config: &SandboxConfig,
        image: ResolvedImage,
        config: &ContainerConfig,
    ) -> Result<String> {
        let _guard = self.inner.lock.read().await;
        let inner = self.inner.clone();
        let sandbox = sandbox.clone();
        let sandbox_config = sandbox_config.clone();
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            inner.create_blocking(&sandbox, &sandbox_config, &image, &config)
        })
        .await
        .map_err(|e| RuntimeError::CreateContainer {
            id: String::new(),
            message: e.to_string(),
        })?
    }
}

impl Inner {
    async fn lock_container(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self
                .container_locks
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            locks.entry(id.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }

    fn forget_container_lock(&self, id: &str) {
        self.container_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.containers_dir.join(id)
    }

    fn load(&self, id: &str) -> Result<ContainerRecord> {
        if !valid_id(id) {
            return Err(RuntimeError::NotFound(format!("container {id:?}")));
        }
        read_json(&self.dir(id).join(META_FILE))?
            .ok_or_else(|| RuntimeError::NotFound(format!("container {id}")))
    }

    fn pod_cgroup(config: &SandboxConfig) -> String {
        let parent = sanitize_cgroup(&config.cgroup_parent);
        if parent.is_empty() {
            format!("pod{}", sanitize_cgroup(&config.pod.uid))
        } else {
            parent
        }
    }

    fn create_blocking(
        &self,
        sandbox: &SandboxStatus,
        sandbox_config: &SandboxConfig,
        image: &ResolvedImage,
        config: &ContainerConfig,
    ) -> Result<String> {
        let image_user = image.config.config().as_ref().and_then(|c| c.user().as_deref());
        spec::verify_non_root(config, image_user).map_err(RuntimeError::InvalidConfig)?;
        let id = store::new_id();
        let dir = self.dir(&id);
        fs::create_dir(&dir)
            .map_err(|e| RuntimeError::io(format!("creating {}", dir.display()), e))?;
        match self.prepare_bundle(&id, &dir, sandbox, sandbox_config, image, config) {
            Ok(()) => {
                tracing::info!(container = %id, name = %config.name, sandbox = %sandbox.id, "container created");
                Ok(id)
            }
            Err(message) => {
                let _ = rootfs::unmount(&dir.join(ROOTFS_DIR));
                if !rootfs::is_mount_point(&dir.join(ROOTFS_DIR)) {
                    let _ = fs::remove_dir_all(&dir);
                }
                Err(RuntimeError::CreateContainer { id, message })
            }
        }
    }

    fn prepare_bundle(
        &self,
        id: &str,
        dir: &Path,
        sandbox: &SandboxStatus,
        sandbox_config: &SandboxConfig,
        image: &ResolvedImage,
        config: &ContainerConfig,
    ) -> Result<(), String> {
        if config.name.is_empty() {
            return Err("container name is empty".into());
        }
        if !config.log_path.is_absolute() {
            return Err(format!("log path {:?} is not absolute", config.log_path));
        }
        let rootfs = rootfs::mount_overlay(&image.layers, dir)?;
        let image_config = image.config.config().as_ref();
        let passwd = rootfs::read_rootfs_file(&rootfs, "/etc/passwd");
        let group = rootfs::read_rootfs_file(&rootfs, "/etc/group");
        let cgroups_path = format!(
            "/{}/{}/{}",
            self.cgroup_root,
            Self::pod_cgroup(sandbox_config),
            id
        );
        let hostname =
            (!sandbox_config.hostname.is_empty()).then_some(sandbox_config.hostname.as_str());
        let current_caps = if config.privileged {
            spec::current_capabilities().ok_or("reading the runtime's capabilities")?
        } else {
            0
        };
        let pid_namespace = self.pid_namespace(sandbox, config)?;
        let inputs = spec::SpecInputs {
            config,
            image: image_config,
            sandbox,
            pid_namespace: pid_namespace.as_deref(),
            hostname,
            passwd: &passwd,
            group: &group,
            cgroups_path: cgroups_path.clone(),
            cgroup_namespace: self.cgroups.is_unified(),
            current_caps,
        };
        let oci = spec::build_spec(&inputs)?;
        let cwd = spec::working_dir(config, image_config);
        rootfs::ensure_dir(&rootfs, &cwd)?;
        oci.save(dir.join(SPEC_FILE))
            .map_err(|e| format!("writing {SPEC_FILE}: {e}"))?;
        let record = ContainerRecord {
            id: id.to_string(),
            sandbox_id: sandbox.id.clone(),
            config: config.clone(),
            image_ref: image
                .info
                .repo_digests
                .first()
                .cloned()
                .unwrap_or_else(|| image.info.id.clone()),
            image_id: image.info.id.clone(),
            created_at: Utc::now(),
            stop_signal: image_config.and_then(|c| c.stop_signal().clone()),
            cgroups_path,
            state_root: self.state_root.clone(),
            cgroup_hierarchies: Some(self.cgroups.hierarchies().to_vec()),
        };
        write_json_atomic(&dir.join(META_FILE), &record, Durability::Durable)
            .map_err(|e| format!("writing {META_FILE}: {e}"))
    }

    /// The PID namespace file a container joins; `None` for a new one of its own.
    fn pid_namespace(
        &self,
        sandbox: &SandboxStatus,
        config: &ContainerConfig,
    ) -> Result<Option<PathBuf>, String> {
        match &config.pid_namespace {
            PidNamespace::Container => Ok(None),
            PidNamespace::Pod => sandbox
                .namespaces
                .get(sandbox::netns::PID_NS)
                .cloned()
                .map(Some)
                .ok_or_else(|| "the pod sandbox has no shared PID namespace".to_string()),
            PidNamespace::Target(target) => {
                let record = self.load(target).map_err(|e| e.to_string())?;
                if record.sandbox_id != sandbox.id {
                    return Err(format!(
                        "target container {:?} is not in this pod's sandbox",
                        record.config.name
                    ));
                }
                match self.status(&record).map_err(|e| e.to_string())? {
                    ContainerStatus {
                        state: ContainerState::Running,
                        pid: Some(pid),
                        ..
                    } => Ok(Some(PathBuf::from(format!("/proc/{pid}/ns/pid")))),
                    _ => Err(format!(
                        "target container {:?} is not running",
                        record.config.name
                    )),
                }
            }
        }
    }

    /// The records the shim keeps, read consistently: exit.json wins. They are not
    /// fsync'd ([`Durability::Volatile`]): after a host crash one may be empty or cut
    /// short, and the container then reads as exited with an unknown status, which is
    /// what it is.
    fn runtime_records(&self, id: &str) -> Result<(Option<StartedRecord>, Option<ExitRecord>)> {
        let dir = self.dir(id);
        let exit = read_runtime_record::<ExitRecord>(&dir.join(EXIT_FILE))?;
        let started = read_runtime_record::<StartedRecord>(&dir.join(STATE_FILE))?;
        let unreadable = |message: String| ExitRecord {
            exit_code: 255,
            finished_at: Utc::now(),
            oom_killed: false,
            reason: Some("Unknown".into()),
            message: Some(format!(
                "{message}; the host probably stopped before the record reached the disk"
            )),
        };
        Ok(match (started, exit) {
            (started, Ok(Some(exit))) => (started.ok().flatten(), Some(exit)),
            (Ok(started), Ok(None)) => (started, None),
            (started, Err(message)) => (started.ok().flatten(), Some(unreadable(message))),
            (Err(message), Ok(None)) => (None, Some(unreadable(message))),
        })
    }

    fn status(&self, record: &ContainerRecord) -> Result<ContainerStatus> {
        let (started, mut exit) = self.runtime_records(&record.id)?;
        let mut state = ContainerState::Created;
        let mut pid = None;
        if exit.is_none() {
            if let Some(s) = &started {
                if process_alive(s.pid, s.pid_start_ticks)
                    || process_alive(s.shim_pid, s.shim_start_ticks)
                {
                    state = ContainerState::Running;
                    pid = Some(s.pid);
                } else {
                    // The shim may have written exit.json just now.
                    exit = read_json(&self.dir(&record.id).join(EXIT_FILE))?;
                    if exit.is_none() {
                        exit = Some(ExitRecord {
                            exit_code: 255,
                            finished_at: Utc::now(),
                            oom_killed: false,
                            reason: Some("Unknown".into()),
                            message: Some(
                                "the container's process and shim vanished without an exit status"
                                    .into(),
                            ),
                        });
                    }
                }
            }
        }
        let (mut exit_code, mut finished_at, mut reason, mut message) = (None, None, None, None);
        if let Some(exit) = exit {
            state = ContainerState::Exited;
            exit_code = Some(exit.exit_code);
            finished_at = Some(exit.finished_at);
            reason = Some(exit.reason.clone().unwrap_or_else(|| {
                if exit.oom_killed {
                    "OOMKilled".to_string()
                } else if exit.exit_code == 0 {
                    "Completed".to_string()
                } else {
                    "Error".to_string()
                }
            }));
            message = exit.message;
        }
        Ok(ContainerStatus {
            id: record.id.clone(),
            sandbox_id: record.sandbox_id.clone(),
            name: record.config.name.clone(),
            attempt: record.config.attempt,
            state,
            created_at: record.created_at,
            started_at: started.map(|s| s.started_at),
            finished_at,
            exit_code,
            reason,
            message,
            image: record.config.image.clone(),
            image_ref: record.image_ref.clone(),
            labels: record.config.labels.clone(),
            log_path: record.config.log_path.clone(),
            pid,
        })
    }

    fn records(&self) -> Result<Vec<ContainerRecord>> {
        let mut records = Vec::new();
        let entries = match fs::read_dir(&self.containers_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(records),
            Err(e) => {
                return Err(RuntimeError::io(
                    format!("reading {}", self.containers_dir.display()),
                    e,
                ))
            }
        };
        for entry in entries.flatten() {
            let path = entry.path().join(META_FILE);
            match read_json::<ContainerRecord>(&path) {
                Ok(Some(record)) => records.push(record),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "skipping unreadable container record"),
            }
        }
        records.sort_by_key(|r| r.created_at);
        Ok(records)
    }

    /// Waits until the container has exited (exit.json, or process and shim gone).
    async fn wait_exited(&self, id: &str, started: &StartedRecord, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let exit_path = self.dir(id).join(EXIT_FILE);
        let mut checks = 0;
        loop {
            if exit_path.exists() {
                return true;
            }
            if !process_alive(started.pid, started.pid_start_ticks)
                && !process_alive(started.shim_pid, started.shim_start_ticks)
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(poll_delay(checks)).await;
            checks += 1;
        }
    }

    /// Waits (bounded) for the shim to finish its cleanup and exit: woken by a pidfd the
    /// moment it exits, or by polling where pidfds are missing (kernels before 5.3).
    async fn wait_shim_gone(&self, started: &StartedRecord, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        if let Some(gone) = wait_pid_gone(started.shim_pid, started.shim_start_ticks, timeout).await {
            return gone;
        }
        let mut checks = 0;
        while process_alive(started.shim_pid, started.shim_start_ticks) {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(poll_delay(checks)).await;
            checks += 1;
        }
        true
    }

    fn signal(started: &StartedRecord, signal: Signal) {
        if process_alive(started.pid, started.pid_start_ticks) {
            let _ = nix::sys::signal::kill(Pid::from_raw(started.pid as i32), signal);
        }
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        let record = self.load(id)?;
        let (started, exit) = self.runtime_records(id)?;
        let (Some(started), None) = (started, exit) else {
            return Ok(());
        };
        let stop_signal = record
            .stop_signal
            .as_deref()
            .and_then(spec::parse_stop_signal)
            .unwrap_or(Signal::SIGTERM);
        if !grace.is_zero() {
            tracing::info!(container = %id, signal = %stop_signal, ?grace, "stopping container");
            Self::signal(&started, stop_signal);
            if self.wait_exited(id, &started, grace).await {
                return Ok(());
            }
        }
        tracing::info!(container = %id, "killing container");
        Self::signal(&started, Signal::SIGKILL);
        if self.wait_exited(id, &started, KILL_TIMEOUT).await {
            Ok(())
        } else {
            Err(op_error(
                "stop",
                id,
                "the container did not exit after SIGKILL",
            ))
        }
    }

    async fn remove(&self, id: &str, force: bool) -> Result<()> {
        let record = match self.load(id) {
            Ok(record) => record,
            Err(RuntimeError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let status = self.status(&record)?;
        if status.state == ContainerState::Running {
            if !force {
                return Err(op_error(
                    "remove",
                    id,
                    "the container is running; stop it first",
                ));
            }
            self.stop(id, Duration::ZERO).await?;
        }
        let (started, _) = self.runtime_records(id)?;
        if let Some(started) = &started {
            if !self.wait_shim_gone(started, KILL_TIMEOUT).await {
                tracing::warn!(container = %id, pid = started.shim_pid, "shim still running; killing it");
                if process_alive(started.shim_pid, started.shim_start_ticks) {
                    let _ = nix::sys::signal::kill(
                        Pid::from_raw(started.shim_pid as i32),
                        Signal::SIGKILL,
                    );
                }
            }
        }
        let dir = self.dir(id);
        let state_dir = self.state_root.join(id);
        let cgroups = self.cgroups.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            // What a vanished shim would have removed. The pod's cgroup stays until its
            // sandbox is removed, as the kubelet's pod cgroup does.
            if state_dir.exists() {
                let _ = fs::remove_dir_all(&state_dir);
            }
            for error in cgroups.remove(&record.cgroups_path) {
                tracing::warn!(container = %record.id, %error, "removing container cgroup");
            }
            let rootfs_dir = dir.join(ROOTFS_DIR);
            rootfs::unmount(&rootfs_dir).map_err(|m| op_error("remove", &record.id, m))?;
            if rootfs::is_mount_point(&rootfs_dir) {
                return Err(op_error("remove", &record.id, "the rootfs is still mounted"));
            }
            fs::remove_dir_all(&dir).map_err(|e| RuntimeError::io(format!("removing {}", dir.display()), e))
        })
        .await
        .map_err(|e| op_error("remove", id, e.to_string()))??;
        tracing::info!(container = %id, "container removed");
        Ok(())
    }

    async fn start(&self, id: &str) -> Result<()> {
        let record = self.load(id)?;
        let (started, exit) = self.runtime_records(id)?;
        let dir = self.dir(id);
        // A container starts once: the marker is created exclusively, and stays.
        let marker = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dir.join(START_MARKER));
        match marker {
            _ if started.is_some() || exit.is_some() => {
                return Err(op_error("start", id, "the container was already started"))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(op_error("start", id, "the container was already started"))
            }
            Err(e) => {
                return Err(RuntimeError::io(
                    format!("writing {}", dir.join(START_MARKER).display()),
                    e,
                ))
            }
            Ok(_) => {}
        }
        let child = tokio::process::Command::new(&self.shim_binary)
            .arg(SHIM_SUBCOMMAND)
            .arg("start")
            .arg(&dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(e) => {
                let message = format!("spawning the shim {}: {e}", self.shim_binary.display());
                self.abandon_start(&record, None, &message).await;
                return Err(op_error("start", id, message));
            }
        };
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| op_error("start", id, "shim without stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let mut shim_pid: Option<i32> = None;
        let outcome = tokio::time::timeout(START_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(pid) = line.strip_prefix("shim ") {
                    shim_pid = pid.trim().parse().ok();
                } else if let Some(pid) = line.strip_prefix("ok ") {
                    return Ok(pid.trim().to_string());
                } else if let Some(message) = line.strip_prefix("error ") {
                    return Err(message.to_string());
                }
            }
            Err(String::new())
        })
        .await;
        // The launcher exits as soon as it has forked the shim.
        let _ = child.wait().await;
        match outcome {
            Ok(Ok(pid)) => {
                tracing::info!(container = %id, name = %record.config.name, %pid, "container started");
                Ok(())
            }
            Ok(Err(message)) if !message.is_empty() => {
                // The shim recorded the failure and removed what libcontainer made.
                let _ = rootfs::unmount(&dir.join(ROOTFS_DIR));
                Err(op_error("start", id, message))
            }
            Ok(Err(_)) => {
                let log = fs::read_to_string(dir.join(SHIM_LOG)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                let message = format!("the shim exited without reporting: {}", tail.join(" | "));
                self.abandon_start(&record, shim_pid, &message).await;
                Err(op_error("start", id, message))
            }
            Err(_) => {
                let message = "timed out waiting for the shim to start the container".to_string();
                self.abandon_start(&record, shim_pid, &message).await;
                Err(op_error("start", id, message))
            }
        }
    }

    /// Undoes a start the shim could not finish or report: kills the shim and whatever
    /// runs in the container's cgroup, removes libcontainer's state, records a
    /// `StartError` and unmounts the rootfs.
    async fn abandon_start(&self, record: &ContainerRecord, shim_pid: Option<i32>, message: &str) {
        if let Some(pid) = shim_pid {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let dir = self.dir(&record.id);
        let state_dir = self.state_root.join(&record.id);
        let cgroups = self.cgroups.clone();
        let cgroups_path = record.cgroups_path.clone();
        let exit = ExitRecord {
            exit_code: shim::START_ERROR_EXIT_CODE,
            finished_at: Utc::now(),
            oom_killed: false,
            reason: Some("StartError".into()),
            message: Some(message.to_string()),
        };
        let _ = tokio::task::spawn_blocking(move || {
            let _ = cgroups.remove(&cgroups_path);
            let _ = fs::remove_dir_all(&state_dir);
            if !dir.join(EXIT_FILE).exists() {
                let _ = write_json_atomic(&dir.join(EXIT_FILE), &exit, Durability::Volatile);
            }
            let _ = rootfs::unmount(&dir.join(ROOTFS_DIR));
        })
        .await;
    }

    fn sandbox_meta_path(&self, id: &str) -> PathBuf {
        self.sandbox_meta_dir.join(format!("{id}.json"))
    }

    fn sandbox_config(&self, status: &SandboxStatus) -> SandboxConfig {
        match read_json::<SandboxConfig>(&self.sandbox_meta_path(&status.id)) {
            Ok(Some(config)) => config,
            _ => SandboxConfig {
                pod: status.pod.clone(),
                hostname: status.pod.name.chars().take(63).collect(),
                host_aliases: Vec::new(),
                dns: Default::default(),
                host_network: !status.namespaces.contains_key("net"),
                port_mappings: Vec::new(),
                labels: status.labels.clone(),
                annotations: BTreeMap::new(),
                cgroup_parent: String::new(),
                share_process_namespace: status.pid_holder.is_some(),
            },
        }
    }
}

/// A runtime record: `Ok(Err(message))` when the file is there but is not a whole record.
fn read_runtime_record<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<std::result::Result<Option<T>, String>> {
    match read_json(path) {
        Ok(record) => Ok(Ok(record)),
        Err(RuntimeError::Io { context, source })
            if source.kind() == std::io::ErrorKind::InvalidData =>
        {
            Ok(Err(format!("{context}: {source}")))
        }
        Err(e) => Err(e),
    }
}

fn sandbox_id(pod: &PodMeta, n: u32) -> String {
    hex::encode(sha2::Sha256::digest(
        format!("{}/{}/{}/{n}", pod.uid, pod.namespace, pod.name).as_bytes(),
    ))
}

#[async_trait]
impl Runtime for LinuxRuntime {
    async fn run_pod_sandbox(&self, config: &SandboxConfig) -> Result<SandboxStatus> {
        let inner = &self.inner;
        for n in 0..10_000u32 {
            let id = sandbox_id(&config.pod, n);
            let meta = inner.sandbox_meta_path(&id);
            if meta.exists() {
                match inner.sandboxes.get(&id).await {
                    Ok(status) if status.state == SandboxState::Ready => return Ok(status),
                    _ => continue,
                }
            }
            // The sandbox (its namespaces) does not outlive a host crash either.
            write_json_atomic(&meta, config, Durability::Volatile)
                .map_err(|e| RuntimeError::io(format!("writing {}", meta.display()), e))?;
            return match inner.sandboxes.create(&id, config).await {
                Ok(status) => Ok(status),
                Err(e) => {
                    let _ = fs::remove_file(&meta);
                    Err(e)
                }
            };
        }
        Err(RuntimeError::CreateSandbox {
            id: config.pod.uid.clone(),
            message: "too many sandboxes for this pod".into(),
        })
    }

    async fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let _guard = self.inner.lock.read().await;
        for record in self
            .inner
            .records()?
            .into_iter()
            .filter(|r| r.sandbox_id == id)
        {
            let _container = self.inner.lock_container(&record.id).await;
            self.inner.stop(&record.id, Duration::ZERO).await?;
        }
        self.inner.sandboxes.stop(id).await
    }

    async fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let _guard = self.inner.lock.read().await;
        for record in self
            .inner
            .records()?
            .into_iter()
            .filter(|r| r.sandbox_id == id)
        {
            let _container = self.inner.lock_container(&record.id).await;
            self.inner.remove(&record.id, true).await?;
            self.inner.forget_container_lock(&record.id);
        }
        self.inner.sandboxes.remove(id).await?;
        let meta = self.inner.sandbox_meta_path(id);
        // The pod's cgroup lives as long as its sandbox: containers restarting in it do
        // not remove and recreate it on every hierarchy.
        if let Ok(Some(config)) = read_json::<SandboxConfig>(&meta) {
            let inner = self.inner.clone();
            let pod_cgroup = format!("/{}/{}", inner.cgroup_root, Inner::pod_cgroup(&config));
            let _ = tokio::task::spawn_blocking(move || {
                inner
                    .cgroups
                    .remove_empty(&pod_cgroup, &format!("/{}", inner.cgroup_root))
            })
            .await;
        }
        match fs::remove_file(&meta) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RuntimeError::io(format!("removing {}", meta.display()), e)),
        }
    }

    async fn list_pod_sandboxes(&self) -> Result<Vec<SandboxStatus>> {
        self.inner.sandboxes.list().await
    }

    async fn update_pod_cidr(&self, cidr: &str) -> Result<()> {
        self.inner.sandboxes.set_pod_cidr(cidr).await
    }

    async fn teardown(&self) -> Result<()> {
        let inner = &self.inner;
        let _guard = inner.lock.write().await;
        let mut errors = Vec::new();
        let records = inner.records()?;
        // Kill everything first, then wait, so that containers die in parallel.
        for record in &records {
            if let Ok((Some(started), None)) = inner.runtime_records(&record.id) {
                Inner::signal(&started, Signal::SIGKILL);
            }
        }
        for record in &records {
            let _container = inner.lock_container(&record.id).await;
            if let Err(e) = inner.remove(&record.id, true).await {
                errors.push(e.to_string());
            }
            inner.forget_container_lock(&record.id);
        }
        let containers_dir = inner.containers_dir.clone();
        let state_root = inner.state_root.clone();
        let sandbox_meta_dir = inner.sandbox_meta_dir.clone();
        let cgroups = inner.cgroups.clone();
        let cgroup_root = inner.cgroup_root.clone();
        let leftovers = tokio::task::spawn_blocking(move || {
            let mut errors = Vec::new();
            for point in rootfs::mounts_under(&containers_dir) {
                if let Err(e) = rootfs::unmount(&point) {
                    errors.push(e);
                }
            }
            for dir in [&state_root, &sandbox_meta_dir] {
                if let Err(e) = fs::remove_dir_all(dir) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        errors.push(format!("removing {}: {e}", dir.display()));
                    }
                }
            }
            errors.extend(cgroups.remove(&cgroup_root));
            errors
        })
        .await
        .map_err(|e| op_error("teardown", "", e.to_string()))?;
        errors.extend(leftovers);
        if let Err(e) = inner.sandboxes.teardown().await {
            errors.push(e.to_string());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(op_error("teardown", &inner.cgroup_root, errors.join("; ")))
        }
    }

    async fn create_container(&self, sandbox_id: &str, config: &ContainerConfig) -> Result<String> {
        let sandbox = self.inner.sandboxes.get(sandbox_id).await?;
        let sandbox_config = self.inner.sandbox_config(&sandbox);
        let images = self.inner.images.clone();
        let reference = config.image.clone();
        let resolved = tokio::task::spawn_blocking(move || images.resolve(&reference))
            .await
            .map_err(|e| RuntimeError::Image {
                reference: config.image.clone(),
                message: e.to_string(),
            })??;
        let image = resolved.ok_or_else(|| RuntimeError::Image {
            reference: config.image.clone(),
            message: "image not present".to_string(),
        })?;
        self.create_container_with_image(&sandbox, &sandbox_config, image, config)
            .await
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        let _guard = self.inner.lock.read().await;
        let _container = self.inner.lock_container(id).await;
        self.inner.start(id).await
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<()> {
        let _guard = self.inner.lock.read().await;
        let _container = self.inner.lock_container(id).await;
        self.inner.stop(id, grace).await
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        let _guard = self.inner.lock.read().await;
        let _container = self.inner.lock_container(id).await;
        // Make sure it exists for a clear error.
        self.inner.load(id)?;
        self.inner.remove(id, false).await?;
        self.inner.forget_container_lock(id);
        Ok(())
    }

    async fn list_containers(&self) -> Result<Vec<ContainerStatus>> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            inner
                .records()?
                .iter()
                .map(|r| inner.status(r))
                .collect::<Result<Vec<_>>>()
        })
        .await
        .map_err(|e| op_error("list", "", e.to_string()))?
    }

    async fn container_status(&self, id: &str) -> Result<ContainerStatus> {
        let record = self.inner.load(id)?;
        self.inner.status(&record)
    }

    async fn container_stats(&self, id: &str) -> Result<ContainerStats> {
        let record = self.inner.load(id)?;
        let status = self.inner.status(&record)?;
        let (cpu, memory) = if status.state == ContainerState::Running {
            self.inner.cgroups.stats(&record.cgroups_path)
        } else {
            (0, 0)
        };
        Ok(ContainerStats {
            id: id.to_string(),
            cpu_usage_nanos: cpu,
            memory_working_set_bytes: memory,
        })
    }

    async fn exec(&self, request: ExecRequest) -> Result<ExecSession> {
        let record = self.inner.load(&request.container_id)?;
        let status = self.inner.status(&record)?;
        if status.state != ContainerState::Running {
            return Err(op_error(
                "exec",
                &request.container_id,
                "the container is not running",
            ));
        }
        exec::start_session(
            &self.inner.shim_binary,
            &self.inner.dir(&record.id),
            &request,
        )
        .await
    }

    async fn attach(&self, container_id: &str, stdin: bool, _tty: bool) -> Result<ExecSession> {
        let record = self.inner.load(container_id)?;
        let status = self.inner.status(&record)?;
        if status.state != ContainerState::Running {
            return Err(op_error(
                "attach",
                container_id,
                "the container is not running",
            ));
        }
        attach::open_session(
            &self.inner.dir(&record.id),
            &record.id,
            stdin,
            record.config.stdin,
            record.config.tty,
        )
        .await
    }

    async fn port_forward(&self, sandbox_id: &str, port: u16) -> Result<tokio::net::TcpStream> {
        self.inner.sandboxes.connect(sandbox_id, port).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_names_are_sanitized() {
        assert_eq!(
            sanitize_cgroup("/kubepods//burstable/../pod1/"),
            "kubepods/burstable/pod1"
        );
        assert_eq!(sanitize_cgroup(".."), "");
    }

    #[test]
    fn waits_poll_soon_then_back_off() {
        let delays: Vec<u64> = (0..8).map(|n| poll_delay(n).as_millis() as u64).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 20, 20, 20]);
        assert_eq!(poll_delay(u32::MAX), POLL_INTERVAL);
    }

    #[tokio::test]
    async fn a_process_end_wakes_its_waiter() {
        let mut child = std::process::Command::new("sleep").arg("0.3").spawn().expect("sleep");
        let ticks = store::process_start_ticks(child.id()).expect("start time");
        let t = Instant::now();
        assert_eq!(wait_pid_gone(child.id(), ticks, Duration::from_secs(10)).await, Some(true));
        let waited = t.elapsed();
        assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(5), "{waited:?}");
        let _ = child.wait();

        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("sleep");
        let ticks = store::process_start_ticks(child.id()).expect("start time");
        assert_eq!(wait_pid_gone(child.id(), ticks, Duration::from_millis(50)).await, Some(false), "still running");
        assert_eq!(wait_pid_gone(child.id(), ticks + 1, Duration::from_secs(10)).await, Some(true), "another process's pid");
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn sandbox_ids_are_stable_per_pod_and_counter() {
        let pod = PodMeta {
            name: "p".into(),
            namespace: "default".into(),
            uid: "u".into(),
        };
        assert_eq!(sandbox_id(&pod, 0), sandbox_id(&pod, 0));
        assert_ne!(sandbox_id(&pod, 0), sandbox_id(&pod, 1));
        assert_eq!(sandbox_id(&pod, 0).len(), 64);
        assert!(valid_id(&sandbox_id(&pod, 3)));
        assert!(!valid_id("../etc"));
    }
}
