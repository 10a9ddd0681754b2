//! Test doubles for the kubelet API: a [`Runtime`] that runs exec'd commands as host
//! processes (with a pseudo-terminal for TTY sessions) and connects port-forwards to
//! 127.0.0.1, a [`PodResolver`] over a fixed table of pods, and a [`Pty`] for driving
//! interactive clients. They exercise the protocol layers without containers; the
//! kubelet and apiserver tests share them.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;
use rustix::termios::Winsize;

use super::{choose_container, ContainerTarget, PodResolver, ServerError};
use crate::runtime::{
    ContainerConfig, ContainerState, ContainerStats, ContainerStatus, ExecRequest, ExecSession, Result, Runtime, RuntimeError, SandboxConfig, SandboxStatus,
};

/// A CRI-format log with a partial line and both streams, as the kubelet and apiserver
/// tests read it through `kubectl logs` and the kubelet API.
pub const SAMPLE_CRI_LOG: &str = "\
2024-05-01T10:00:00.000000001Z stdout F first
2024-05-01T10:00:01.000000000Z stderr P sec
2024-05-01T10:00:01.500000000Z stderr F ond
2024-05-01T10:00:02.000000000Z stdout F third
";

/// A pseudo-terminal pair.
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

impl Pty {
    /// Opens a pty of `cols` × `rows`.
    pub fn open(cols: u16, rows: u16) -> io::Result<Pty> {
        let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
        rustix::pty::grantpt(&master)?;
        rustix::pty::unlockpt(&master)?;
        let name = rustix::pty::ptsname(&master, Vec::new())?;
        let slave = rustix::fs::open(name.as_c_str(), OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC, Mode::empty())?;
        let pty = Pty { master, slave };
        pty.resize(cols, rows)?;
        Ok(pty)
    }

    /// Sets the terminal size (what a terminal emulator does when its window changes).
    pub fn resize(&self, cols: u16, rows: u16) -> io::Result<()> {
        resize_fd(&self.master, cols, rows)
    }

    /// The terminal side, for a child's stdin, stdout or stderr.
    pub fn slave_stdio(&self) -> io::Result<Stdio> {
        Ok(Stdio::from(self.slave.try_clone()?))
    }

    /// An async reader of what the child writes to its terminal (EIO once it is gone).
    pub fn reader(&self) -> io::Result<tokio::fs::File> {
        Ok(tokio::fs::File::from_std(std::fs::File::from(self.master.try_clone()?)))
    }

    /// An async writer of what the child reads as typed input.
    pub fn writer(&self) -> io::Result<tokio::fs::File> {
        Ok(tokio::fs::File::from_std(std::fs::File::from(self.master.try_clone()?)))
    }

    /// Runs `program args…` as a session leader with this terminal as its controlling
    /// terminal and stdio (through `setsid --ctty`, so no code runs between fork and exec).
    pub fn spawn(&self, program: &str, args: &[&str], envs: &[(&str, &Path)]) -> io::Result<tokio::process::Child> {
        let mut cmd = tokio::process::Command::new("setsid");
        cmd.arg("-w").arg("-c").arg(program).args(args).stdin(self.slave_stdio()?).stdout(self.slave_stdio()?).stderr(self.slave_stdio()?).kill_on_drop(true);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.spawn()
    }
}

fn resize_fd(fd: impl AsFd, cols: u16, rows: u16) -> io::Result<()> {
    rustix::termios::tcsetwinsize(fd, Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 })?;
    Ok(())
}

/// Starts `command` as a host process in `dir`, with pipes or (for `tty`) a pty.
pub fn spawn_host_process(command: &[String], tty: bool, stdin: bool, dir: Option<&Path>) -> Result<ExecSession> {
    let (program, args) = command.split_first().ok_or_else(|| RuntimeError::InvalidConfig("empty command".into()))?;
    let spawn_err = |e: io::Error| RuntimeError::Operation { op: "exec", id: program.clone(), message: e.to_string() };
    let mut pty = None;
    let mut cmd = if tty {
        let terminal = Pty::open(80, 24).map_err(spawn_err)?;
        let mut cmd = tokio::process::Command::new("setsid");
        cmd.arg("-w").arg("-c").arg(program).args(args);
        cmd.stdin(terminal.slave_stdio().map_err(spawn_err)?)
            .stdout(terminal.slave_stdio().map_err(spawn_err)?)
            .stderr(terminal.slave_stdio().map_err(spawn_err)?);
        cmd.env("TERM", "xterm");
        pty = Some(terminal);
        cmd
    } else {
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args).stdin(if stdin { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd
    };
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let mut child = cmd.spawn().map_err(spawn_err)?;
    let (exit_tx, exit) = tokio::sync::oneshot::channel();
    let mut session = ExecSession { stdin: None, stdout: None, stderr: None, exit, resize: None };
    match pty {
        Some(terminal) => {
            let Pty { master, slave } = terminal;
            // Only the child keeps the terminal side open, so its end is our EOF.
            drop(slave);
            let clone = |fd: &OwnedFd| fd.try_clone().map(|fd| tokio::fs::File::from_std(std::fs::File::from(fd))).map_err(spawn_err);
            session.stdout = Some(Box::new(clone(&master)?));
            if stdin {
                session.stdin = Some(Box::new(clone(&master)?));
            }
            let (resize_tx, mut resize_rx) = tokio::sync::mpsc::channel::<(u16, u16)>(4);
            session.resize = Some(resize_tx);
            tokio::spawn(async move {
                while let Some((cols, rows)) = resize_rx.recv().await {
                    let _ = resize_fd(&master, cols, rows);
                }
            });
        }
        None => {
            session.stdin = child.stdin.take().map(|s| Box::new(s) as _);
            session.stdout = child.stdout.take().map(|s| Box::new(s) as _);
            session.stderr = child.stderr.take().map(|s| Box::new(s) as _);
        }
    }
    tokio::spawn(async move {
        let code = match child.wait().await {
            Ok(status) => {
                use std::os::unix::process::ExitStatusExt;
                status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(255)
            }
            Err(_) => 255,
        };
        let _ = exit_tx.send(code);
    });
    Ok(session)
}

/// A runtime whose exec runs host processes (in `workdir`, if set) and whose
/// port-forwards connect to 127.0.0.1. Containers are `Running` unless marked otherwise;
/// everything else is unsupported.
#[derive(Default)]
pub struct HostRuntime {
    workdir: Option<PathBuf>,
    states: Mutex<HashMap<String, ContainerState>>,
}

impl HostRuntime {
    pub fn new(workdir: Option<PathBuf>) -> HostRuntime {
        HostRuntime { workdir, states: Mutex::new(HashMap::new()) }
    }

    /// Marks a container as running or exited (ends `kubectl logs -f`).
    pub fn set_state(&self, container_id: &str, state: ContainerState) {
        if let Ok(mut states) = self.states.lock() {
            states.insert(container_id.to_string(), state);
        }
    }

    fn unsupported(op: &'static str) -> RuntimeError {
        RuntimeError::Operation { op, id: String::new(), message: "not supported by the host-process test runtime".into() }
    }
}

#[async_trait]
impl Runtime for HostRuntime {
    async fn run_pod_sandbox(&self, _config: &SandboxConfig) -> Result<SandboxStatus> {
        Err(Self::unsupported("run_pod_sandbox"))
    }
    async fn stop_pod_sandbox(&self, _id: &str) -> Result<()> {
        Err(Self::unsupported("stop_pod_sandbox"))
    }
    async fn remove_pod_sandbox(&self, _id: &str) -> Result<()> {
        Err(Self::unsupported("remove_pod_sandbox"))
    }
    async fn list_pod_sandboxes(&self) -> Result<Vec<SandboxStatus>> {
        Ok(vec![])
    }
    async fn update_pod_cidr(&self, _cidr: &str) -> Result<()> {
        Ok(())
    }
    async fn teardown(&self) -> Result<()> {
        Ok(())
    }
    async fn create_container(&self, _sandbox_id: &str, _config: &ContainerConfig) -> Result<String> {
        Err(Self::unsupported("create_container"))
    }
    async fn start_container(&self, _id: &str) -> Result<()> {
        Err(Self::unsupported("start_container"))
    }
    async fn stop_container(&self, _id: &str, _grace: Duration) -> Result<()> {
        Err(Self::unsupported("stop_container"))
    }
    async fn remove_container(&self, _id: &str) -> Result<()> {
        Err(Self::unsupported("remove_container"))
    }
    async fn list_containers(&self) -> Result<Vec<ContainerStatus>> {
        Ok(vec![])
    }
    async fn container_status(&self, id: &str) -> Result<ContainerStatus> {
        let state = self.states.lock().ok().and_then(|s| s.get(id).copied()).unwrap_or(ContainerState::Running);
        Ok(ContainerStatus {
            id: id.to_string(),
            sandbox_id: String::new(),
            name: id.to_string(),
            attempt: 0,
            state,
            created_at: chrono::Utc::now(),
            started_at: None,
            finished_at: None,
            exit_code: None,
            reason: None,
            message: None,
            image: String::new(),
            image_ref: String::new(),
            labels: BTreeMap::new(),
            log_path: PathBuf::new(),
            pid: None,
        })
    }
    async fn container_stats(&self, id: &str) -> Result<ContainerStats> {
        Ok(ContainerStats { id: id.to_string(), ..Default::default() })
    }
    async fn exec(&self, request: ExecRequest) -> Result<ExecSession> {
        spawn_host_process(&request.command, request.tty, request.stdin, self.workdir.as_deref())
    }
    async fn port_forward(&self, _sandbox_id: &str, port: u16) -> Result<tokio::net::TcpStream> {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| RuntimeError::io(format!("dial tcp4 127.0.0.1:{port}"), e))
    }
}

/// One pod of [`StaticPods`].
#[derive(Debug, Clone, Default)]
pub struct TestPod {
    pub sandbox_id: String,
    /// Containers in spec order.
    pub containers: Vec<(String, ContainerTarget)>,
    pub init_containers: Vec<String>,
    /// The `kubectl.kubernetes.io/default-container` annotation.
    pub default_container: Option<String>,
    /// What `attach` runs in place of the container's main process.
    pub attach_command: Vec<String>,
}

/// A resolver over a fixed table of pods.
#[derive(Default)]
pub struct StaticPods {
    pods: Mutex<HashMap<(String, String), TestPod>>,
}

impl StaticPods {
    pub fn new() -> StaticPods {
        StaticPods::default()
    }

    pub fn insert(&self, namespace: &str, name: &str, pod: TestPod) {
        if let Ok(mut pods) = self.pods.lock() {
            pods.insert((namespace.to_string(), name.to_string()), pod);
        }
    }

    fn get(&self, namespace: &str, name: &str) -> Result<TestPod, ServerError> {
        self.pods
            .lock()
            .ok()
            .and_then(|p| p.get(&(namespace.to_string(), name.to_string())).cloned())
            .ok_or_else(|| ServerError::NotFound(format!("pod {name:?} does not exist")))
    }
}

#[async_trait]
impl PodResolver for StaticPods {
    async fn container(&self, namespace: &str, pod: &str, container: Option<&str>) -> Result<ContainerTarget, ServerError> {
        let p = self.get(namespace, pod)?;
        let names: Vec<&str> = p.containers.iter().map(|(n, _)| n.as_str()).collect();
        let inits: Vec<&str> = p.init_containers.iter().map(String::as_str).collect();
        let name = choose_container(pod, container, &names, &inits, p.default_container.as_deref())?.to_string();
        p.containers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| t.clone())
            .ok_or_else(|| ServerError::NotStarted(format!("container {name:?} in pod {pod:?} is waiting to start: PodInitializing")))
    }

    async fn sandbox(&self, namespace: &str, pod: &str) -> Result<String, ServerError> {
        Ok(self.get(namespace, pod)?.sandbox_id)
    }

    async fn attach(&self, target: &ContainerTarget, stdin: bool, tty: bool) -> Result<ExecSession, ServerError> {
        let command = self
            .pods
            .lock()
            .ok()
            .and_then(|pods| pods.values().find(|p| p.containers.iter().any(|(_, t)| t.container_id == target.container_id)).map(|p| p.attach_command.clone()))
            .filter(|c| !c.is_empty())
            .ok_or_else(|| ServerError::NotSupported("this test pod has no attach command".into()))?;
        spawn_host_process(&command, tty, stdin, None).map_err(|source| ServerError::Runtime { context: "attach".into(), source })
    }
}
