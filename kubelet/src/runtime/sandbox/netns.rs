//! Namespaces that outlive every process: a short-lived OS thread unshares new network,
//! IPC and UTS namespaces (which changes only that thread), sets the hostname, and
//! bind-mounts its `/proc/thread-self/ns/*` files onto files in the sandbox directory, as
//! `ip netns add` does. Containers later join them by path; [`in_netns`] runs code on a
//! fresh thread inside a network namespace. No tokio worker ever changes namespaces.
//!
//! A PID namespace cannot be kept that way (one whose PID 1 has exited takes no new
//! process), so a pod that shares one gets a pause process as its PID 1, started from the
//! shim binary (see [`crate::runtime::linux::pause`]) and bound at `DIR/pid` the same way.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::runtime::linux::shim::SHIM_SUBCOMMAND;
use crate::runtime::linux::store::{process_alive, process_start_ticks};
use crate::runtime::ProcessRef;

/// A namespace a sandbox owns; its file is `DIR/<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NsKind {
    Net,
    Ipc,
    Uts,
}

impl NsKind {
    pub const ALL: [NsKind; 3] = [NsKind::Net, NsKind::Ipc, NsKind::Uts];

    /// The name under `/proc/<pid>/ns/` and in [`crate::runtime::SandboxStatus::namespaces`].
    pub fn name(self) -> &'static str {
        match self {
            NsKind::Net => "net",
            NsKind::Ipc => "ipc",
            NsKind::Uts => "uts",
        }
    }

    fn clone_flag(self) -> CloneFlags {
        match self {
            NsKind::Net => CloneFlags::CLONE_NEWNET,
            NsKind::Ipc => CloneFlags::CLONE_NEWIPC,
            NsKind::Uts => CloneFlags::CLONE_NEWUTS,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NsError {
    #[error("{op} {path}: {source}")]
    Sys {
        op: &'static str,
        path: String,
        #[source]
        source: Errno,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("invalid hostname {0:?}: must be 1 to 64 bytes")]
    InvalidHostname(String),
    #[error("the namespace thread {0}")]
    Thread(&'static str),
    #[error("starting the pause process: {0}")]
    Pause(String),
}

fn sys(op: &'static str, path: impl AsRef<Path>) -> impl FnOnce(Errno) -> NsError {
    let path = path.as_ref().display().to_string();
    move |source| NsError::Sys { op, path, source }
}

/// The namespace operations the sandbox manager needs (the OS boundary; faked in tests).
pub trait NamespaceOps: Send + Sync {
    /// Creates one new namespace of each kind, kept alive at `dir/<kind>`; with a UTS
    /// namespace its hostname is set to `hostname`. All or nothing.
    fn create(
        &self,
        dir: &Path,
        kinds: &[NsKind],
        hostname: &str,
    ) -> Result<BTreeMap<NsKind, PathBuf>, NsError>;
    /// Unmounts every namespace file under `dir` (MNT_DETACH); fine if none is mounted.
    fn release(&self, dir: &Path) -> Result<(), NsError>;
    /// Whether the file still holds a namespace (false after a reboot, say).
    fn is_alive(&self, path: &Path) -> bool;
    /// Starts a pause process as PID 1 of a new PID namespace kept at `dir/pid`, with
    /// `helper` (a binary whose `main` runs the shim: `helper __rkube-shim pause <file>`).
    fn create_pid(&self, helper: &Path, dir: &Path) -> Result<(PathBuf, ProcessRef), NsError>;
    /// Kills that pause process, and so every process of its namespace, if it still runs.
    fn kill_pid_holder(&self, holder: ProcessRef);
    /// Whether the pause process still runs.
    fn pid_holder_alive(&self, holder: ProcessRef) -> bool;
}

/// The file under a sandbox's namespace directory that keeps its shared PID namespace.
pub const PID_NS: &str = "pid";

/// The real thing: unshare on a dedicated thread, bind mounts, umount2.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxNamespaces;

impl NamespaceOps for LinuxNamespaces {
    fn create(
        &self,
        dir: &Path,
        kinds: &[NsKind],
        hostname: &str,
    ) -> Result<BTreeMap<NsKind, PathBuf>, NsError> {
        if kinds.contains(&NsKind::Uts) && (hostname.is_empty() || hostname.len() > 64) {
            return Err(NsError::InvalidHostname(hostname.to_string()));
        }
        fs::create_dir_all(dir).map_err(|source| NsError::Io {
            context: format!("creating {}", dir.display()),
            source,
        })?;
        let mut targets = BTreeMap::new();
        for kind in kinds {
            let target = dir.join(kind.name());
            // The mount point must exist; an empty read-only file, as `ip netns add` makes.
            if let Err(source) = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&target)
            {
                remove_files(targets.values());
                return Err(NsError::Io {
                    context: format!("creating {}", target.display()),
                    source,
                });
            }
            targets.insert(*kind, target);
        }
        let thread_targets = targets.clone();
        let hostname = hostname.to_string();
        let result = std::thread::Builder::new()
            .name("rkube-unshare".into())
            .spawn(move || unshare_and_bind(&thread_targets, &hostname))
            .map_err(|source| NsError::Io {
                context: "spawning the namespace thread".into(),
                source,
            })
            .and_then(|handle| handle.join().map_err(|_| NsError::Thread("panicked")))
            .and_then(|r| r);
        if let Err(e) = result {
            remove_files(targets.values());
            return Err(e);
        }
        Ok(targets)
    }

    fn release(&self, dir: &Path) -> Result<(), NsError> {
        for name in NsKind::ALL.map(NsKind::name).into_iter().chain([PID_NS]) {
            unmount_all(&dir.join(name))?;
        }
        Ok(())
    }

    fn is_alive(&self, path: &Path) -> bool {
        nix::sys::statfs::statfs(path)
            .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
    }

    fn create_pid(&self, helper: &Path, dir: &Path) -> Result<(PathBuf, ProcessRef), NsError> {
        let target = dir.join(PID_NS);
        fs::create_dir_all(dir)
            .and_then(|()| {
                fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&target)
            })
            .map_err(|source| NsError::Io {
                context: format!("creating {}", target.display()),
                source,
            })?;
        let output = Command::new(helper)
            .args([SHIM_SUBCOMMAND, "pause"])
            .arg(&target)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|source| NsError::Io {
                context: format!("running {}", helper.display()),
                source,
            })?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.lines().next().unwrap_or_default();
        let holder = line
            .strip_prefix("ok ")
            .and_then(|pid| pid.trim().parse::<u32>().ok())
            .and_then(|pid| {
                let start_ticks = process_start_ticks(pid)?;
                Some(ProcessRef { pid, start_ticks })
            });
        match holder {
            Some(holder) if output.status.success() => Ok((target, holder)),
            _ => {
                let _ = unmount_all(&target);
                let _ = fs::remove_file(&target);
                let message = line.strip_prefix("error ").unwrap_or(line);
                Err(NsError::Pause(if message.is_empty() {
                    format!("the pause launcher {}", output.status)
                } else {
                    message.to_string()
                }))
            }
        }
    }

    fn kill_pid_holder(&self, holder: ProcessRef) {
        if process_alive(holder.pid, holder.start_ticks) {
            if let Ok(pid) = i32::try_from(holder.pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }

    fn pid_holder_alive(&self, holder: ProcessRef) -> bool {
        process_alive(holder.pid, holder.start_ticks)
    }
}

fn remove_files<'a>(paths: impl Iterator<Item = &'a PathBuf>) {
    for path in paths {
        let _ = fs::remove_file(path);
    }
}

/// Runs on a thread of its own, which it leaves in the new namespaces; it then ends.
fn unshare_and_bind(targets: &BTreeMap<NsKind, PathBuf>, hostname: &str) -> Result<(), NsError> {
    let flags = targets
        .keys()
        .fold(CloneFlags::empty(), |flags, kind| flags | kind.clone_flag());
    nix::sched::unshare(flags).map_err(sys("unshare", "/proc/thread-self/ns"))?;
    if targets.contains_key(&NsKind::Uts) {
        nix::unistd::sethostname(hostname).map_err(sys("sethostname", hostname))?;
    }
    let mut mounted: Vec<&PathBuf> = Vec::new();
    for (kind, target) in targets {
        let source = PathBuf::from("/proc/thread-self/ns").join(kind.name());
        let bound = nix::mount::mount(
            Some(&source),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        );
        if let Err(errno) = bound {
            for done in mounted {
                let _ = unmount_all(done);
            }
            return Err(NsError::Sys {
                op: "bind-mounting",
                path: target.display().to_string(),
                source: errno,
            });
        }
        mounted.push(target);
    }
    Ok(())
}

/// Unmounts whatever is mounted on `path` (stacked mounts too); missing or unmounted is fine.
pub fn unmount_all(path: &Path) -> Result<(), NsError> {
    for _ in 0..16 {
        match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => return Ok(()),
            Err(errno) => {
                return Err(NsError::Sys {
                    op: "unmounting",
                    path: path.display().to_string(),
                    source: errno,
                })
            }
        }
    }
    Ok(())
}

/// Runs `work` on a new thread that has joined the network namespace at `netns`. Sockets
/// it creates and processes it spawns belong to that namespace.
pub fn in_netns<T, F>(netns: &Path, work: F) -> Result<T, NsError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let netns = netns.to_path_buf();
    let handle = std::thread::Builder::new()
        .name("rkube-netns".into())
        .spawn(move || -> Result<T, NsError> {
            let file = fs::File::open(&netns).map_err(|source| NsError::Io {
                context: format!("opening {}", netns.display()),
                source,
            })?;
            nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(sys("setns", &netns))?;
            Ok(work())
        })
        .map_err(|source| NsError::Io {
            context: "spawning the netns thread".into(),
            source,
        })?;
    handle.join().map_err(|_| NsError::Thread("panicked"))?
}

/// How long a connection to a pod's loopback may take (it is local: refused or accepted).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A TCP connection to `127.0.0.1:port` inside `netns` (on the host without one).
pub fn connect_loopback(netns: Option<&Path>, port: u16) -> Result<TcpStream, NsError> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let connect = move || {
        TcpStream::connect_timeout(&address, CONNECT_TIMEOUT).map_err(|source| NsError::Io {
            context: format!("connecting to {address}"),
            source,
        })
    };
    match netns {
        Some(netns) => in_netns(netns, connect)?,
        None => connect(),
    }
}
