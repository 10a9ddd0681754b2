//! The per-container shim: a small process, started by the kubelet from its own binary
//! (`<exe> __rkube-shim start <container dir>`), that creates and starts the container
//! with libcontainer, copies its output into the CRI log file, waits for it to end,
//! records how it ended, and deletes it. It runs in its own session, detached from the
//! kubelet, so containers outlive a kubelet restart (containerd-shim's role).
//!
//! libcontainer forks, so this must run in a single-threaded process: the binaries'
//! `main` calls [`super::shim_main_if_requested`] before anything starts a thread.
//!
//! Protocol with the kubelet, over the shim's stdout (a pipe the kubelet reads to EOF):
//! `shim <pid>` once forked, then `ok <container pid>` after `state.json` is written, or
//! `error <message>` after `exit.json` (code 128, reason `StartError`) is written.
//!
//! While the container runs, the shim also serves `attach.sock` (see [`super::attach`]):
//! it keeps the container's stdin (a pipe, or the pty master with `tty`) when the
//! container asked for one, and hands the live output to attached sessions.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use chrono::Utc;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use super::attach::{AttachServer, Interest, StdinMode};
use super::cgroups::Cgroups;
use super::executor::{start_error_message, ContainerExecutor};
use super::logs::{LineSplitter, RotatingLog, Stream, LOG_MAX_BYTES, LOG_MAX_FILES};
use super::store::{
    process_start_ticks, read_json, write_json_atomic, ContainerRecord, Durability, ExitRecord,
    StartedRecord, EXIT_FILE, META_FILE, SHIM_LOG, STATE_FILE,
};

/// The hidden first argument that turns the kubelet binary into a shim or exec helper.
pub const SHIM_SUBCOMMAND: &str = "__rkube-shim";

/// The exit code recorded when the container's process could not be started.
pub const START_ERROR_EXIT_CODE: i32 = 128;

/// Whether this process has a single thread (libcontainer's forks need that).
pub(crate) fn single_threaded() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| {
                    l.strip_prefix("Threads:")
                        .map(|v| v.trim().parse::<u32>().ok())
                })
                .flatten()
        })
        .is_some_and(|n| n == 1)
}

/// Runs the shim or exec helper if `args` (a full argv) asks for it, then exits; returns
/// otherwise.
pub fn run_if_requested(args: Vec<OsString>) {
    if args.get(1).and_then(|a| a.to_str()) != Some(SHIM_SUBCOMMAND) {
        return;
    }
    let mode = args.get(2).and_then(|a| a.to_str()).unwrap_or("");
    let code = match (mode, args.get(3)) {
        ("start", Some(dir)) => start_main(Path::new(dir)),
        ("exec", Some(dir)) => super::exec::helper_main(Path::new(dir), &args[4..]),
        ("pause", Some(target)) => super::pause::launcher_main(Path::new(target)),
        _ => {
            eprintln!("usage: {SHIM_SUBCOMMAND} start|exec <container dir> … | pause <namespace file>");
            2
        }
    };
    std::process::exit(code);
}

fn init_logging(dir: &Path) {
    let Ok(file) = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(SHIM_LOG))
    else {
        return;
    };
    // Panics and libcontainer's stray prints land in the log too.
    if let Ok(copy) = file.try_clone() {
        let _ = nix::unistd::dup2(copy.as_raw_fd(), 2);
    }
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("RKUBE_SHIM_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,libcgroups::v1::manager=error")
        });
    let _ = tracing_subscriber::fmt()
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .with_env_filter(filter)
        .try_init();
}

fn report(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// Points stdout at /dev/null: the kubelet sees EOF on the status pipe.
fn close_status_pipe() {
    if let Ok(null) = OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2(null.as_raw_fd(), 1);
    }
}

fn start_main(dir: &Path) -> i32 {
    if !single_threaded() {
        report("error the shim must run in a single-threaded process");
        return 1;
    }
    // Detach: the launcher exits at once (the kubelet reaps it), the shim lives on with
    // init (or the nearest subreaper) as its parent, in a session of its own.
    // SAFETY: the process is single-threaded (checked above), so the child may do anything.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Parent { .. }) => return 0,
        Ok(ForkResult::Child) => {}
        Err(e) => {
            report(&format!("error forking the shim: {e}"));
            return 1;
        }
    }
    let _ = nix::unistd::setsid();
    let _ = std::env::set_current_dir("/");
    let _ = nix::sys::prctl::set_child_subreaper(true);
    report(&format!("shim {}", std::process::id()));
    init_logging(dir);

    let record: ContainerRecord = match read_json(&dir.join(META_FILE)) {
        Ok(Some(record)) => record,
        Ok(None) => return fail_start(dir, None, "container record missing"),
        Err(e) => return fail_start(dir, None, &e.to_string()),
    };
    let _span = tracing::info_span!("shim", container = %record.id).entered();
    let log_offset = fs::metadata(dir.join(SHIM_LOG)).map_or(0, |m| m.len());
    match run(dir, &record) {
        Ok(code) => code,
        Err(message) => {
            let message = match first_logged_error(&dir.join(SHIM_LOG), log_offset) {
                Some(detail) if !message.starts_with("exec: ") => format!("{message}: {detail}"),
                _ => message,
            };
            fail_start(dir, Some(&record), &message)
        }
    }
}

/// The first error libcontainer logged (from any of its processes) since `offset`: its
/// error values cross process boundaries as bare summaries ("failed syscall"), the log
/// line says what failed.
fn first_logged_error(log: &Path, offset: u64) -> Option<String> {
    let text = fs::read(log).ok()?;
    let text = String::from_utf8_lossy(text.get(offset as usize..)?);
    text.lines()
        .filter(|l| l.contains(" ERROR "))
        .find_map(|line| {
            // `<time> ERROR <span>: <target>: <message>`
            let rest = line.split_once(" ERROR ")?.1;
            let mut parts = rest.splitn(3, ": ");
            let (_span, _target, message) = (parts.next()?, parts.next()?, parts.next()?);
            Some(message.trim().to_string())
        })
}

/// A container whose init process went silent after loading a seccomp filter was most
/// likely stopped by the filter (Kubernetes' tutorial `violation.json` refuses every
/// call): say so, since libcontainer only reports a broken channel.
fn with_seccomp_hint(message: String, config: &crate::runtime::ContainerConfig) -> String {
    use crate::runtime::SeccompProfile;
    let profile = match &config.security.seccomp {
        SeccompProfile::Unconfined => return message,
        _ if config.privileged => return message,
        SeccompProfile::RuntimeDefault => "RuntimeDefault".to_string(),
        SeccompProfile::Localhost(path) => format!("{:?}", path.display().to_string()),
    };
    if message.contains("BrokenChannel") {
        format!("{message} (the seccomp profile {profile} refused calls the container's init needs before it starts the process)")
    } else {
        message
    }
}

fn fail_start(dir: &Path, record: Option<&ContainerRecord>, message: &str) -> i32 {
    tracing::error!(%message, "container failed to start");
    let exit = ExitRecord {
        exit_code: START_ERROR_EXIT_CODE,
        finished_at: Utc::now(),
        oom_killed: false,
        reason: Some("StartError".to_string()),
        message: Some(message.to_string()),
    };
    if let Err(e) = write_json_atomic(&dir.join(EXIT_FILE), &exit, Durability::Volatile) {
        tracing::error!(error = %e, "writing exit record");
    }
    if let Some(record) = record {
        // libcontainer removes what it made when `build` fails; this catches a failure
        // of `start` after a successful build.
        delete_container(record, record.cgroups().as_ref());
    }
    reap_children();
    report(&format!("error {}", message.replace('\n', " ")));
    close_status_pipe();
    1
}

/// Removes what a container leaves once its process has been reaped: its cgroup on every
/// hierarchy (releasing the memory still charged to it first, see
/// [`super::cgroups::release_memory`]) and libcontainer's state directory. That is all
/// libcontainer's own delete does for a container without OCI hooks (the specs here have
/// none), but its cgroup v1 manager finds each controller's hierarchy by reading
/// `/proc/self/mountinfo` again, twelve reads per container, for hierarchies the shim
/// already knows. Without them (detection failed), libcontainer deletes.
fn delete_container(record: &ContainerRecord, cgroups: Option<&Cgroups>) {
    let state_dir = record.state_root.join(&record.id);
    let Some(cgroups) = cgroups else {
        match Container::load(state_dir) {
            Ok(mut container) => {
                if let Err(e) = container.delete(true) {
                    tracing::warn!(error = %e, "deleting container state");
                }
            }
            Err(e) => tracing::warn!(error = %e, "loading container state"),
        }
        return;
    };
    for error in cgroups.remove(&record.cgroups_path) {
        tracing::warn!(%error, "removing the container's cgroup");
    }
    if let Err(e) = fs::remove_dir_all(&state_dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(error = %e, "removing libcontainer's state");
        }
    }
}

fn reap_children() {
    while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if matches!(status, WaitStatus::StillAlive) {
            break;
        }
    }
}

/// One output source of the container: a pipe (stdout or stderr) or a pty master.
struct Source {
    fd: OwnedFd,
    split: LineSplitter,
    open: bool,
}

fn open_log(path: &Path) -> Result<RotatingLog, String> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    RotatingLog::open(path, LOG_MAX_BYTES, LOG_MAX_FILES).map_err(|e| format!("opening log file {}: {e}", path.display()))
}

fn run(dir: &Path, record: &ContainerRecord) -> Result<i32, String> {
    let mut log = open_log(&record.config.log_path)?;
    let null = OpenOptions::new()
        .read(true)
        .open("/dev/null")
        .map_err(|e| format!("opening /dev/null: {e}"))?;

    let tty = record.config.tty;
    let want_stdin = record.config.stdin;
    let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| format!("dup: {e}"));
    // What the attach server keeps: the container's stdin and the terminal to resize.
    let (keep_stdin, terminal): (Option<OwnedFd>, Option<OwnedFd>);
    let (stdin, stdout, stderr, sources): (OwnedFd, OwnedFd, OwnedFd, Vec<Source>) = if tty {
        let pty = nix::pty::openpty(None, None).map_err(|e| format!("allocating a pty: {e}"))?;
        let (a, b) = (dup(&pty.slave)?, dup(&pty.slave)?);
        keep_stdin = if want_stdin {
            Some(dup(&pty.master)?)
        } else {
            None
        };
        terminal = Some(dup(&pty.master)?);
        let master = Source {
            fd: pty.master,
            split: LineSplitter::new(Stream::Stdout),
            open: true,
        };
        (pty.slave, a, b, vec![master])
    } else {
        let (out_r, out_w) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("creating a pipe: {e}"))?;
        let (err_r, err_w) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("creating a pipe: {e}"))?;
        let sources = vec![
            Source {
                fd: out_r,
                split: LineSplitter::new(Stream::Stdout),
                open: true,
            },
            Source {
                fd: err_r,
                split: LineSplitter::new(Stream::Stderr),
                open: true,
            },
        ];
        terminal = None;
        let stdin = if want_stdin {
            let (in_r, in_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
                .map_err(|e| format!("creating a pipe: {e}"))?;
            keep_stdin = Some(in_w);
            in_r
        } else {
            keep_stdin = None;
            OwnedFd::from(null)
        };
        (stdin, out_w, err_w, sources)
    };
    let mode = match (want_stdin, tty) {
        (false, _) => StdinMode::None,
        (true, false) => StdinMode::Pipe,
        (true, true) => StdinMode::Tty,
    };
    // Bound before the container starts, so that an attach right after start finds it.
    let mut attach =
        match AttachServer::bind(dir, mode, keep_stdin, record.config.stdin_once, terminal) {
            Ok(server) => Some(server),
            Err(e) => {
                tracing::warn!(error = %e, "cannot serve attach sessions");
                None
            }
        };

    let builder = ContainerBuilder::new(record.id.clone(), SyscallType::Linux)
        .with_root_path(&record.state_root)
        .map_err(|e| format!("state directory: {e}"))?
        .with_executor(ContainerExecutor {
            controlling_tty: tty,
            die_with_parent: false,
            // libcontainer loads the spec's filter itself for a container's own process.
            seccomp: None,
        })
        .with_stdin(stdin)
        .with_stdout(stdout)
        .with_stderr(stderr)
        .as_init(dir)
        .with_systemd(false)
        .with_detach(true);
    let mut container = builder.build().map_err(|e| with_seccomp_hint(start_error_message(&e), &record.config))?;
    // The write ends now live only in the container's process.
    let pid = match container.pid() {
        Some(pid) => pid,
        None => return Err("libcontainer reported no pid".to_string()),
    };
    if let Err(e) = container.start() {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = waitpid(pid, None);
        return Err(start_error_message(&e));
    }
    let started_at = Utc::now();
    let raw_pid = pid.as_raw() as u32;
    let started = StartedRecord {
        pid: raw_pid,
        pid_start_ticks: process_start_ticks(raw_pid).unwrap_or(0),
        shim_pid: std::process::id(),
        shim_start_ticks: process_start_ticks(std::process::id()).unwrap_or(0),
        started_at,
    };
    if let Err(e) = write_json_atomic(&dir.join(STATE_FILE), &started, Durability::Volatile) {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = waitpid(pid, None);
        return Err(format!("writing {STATE_FILE}: {e}"));
    }
    tracing::info!(pid = raw_pid, "container started");
    report(&format!("ok {raw_pid}"));
    close_status_pipe();
    // Before the wait: for a record without the kubelet's hierarchies the whole mount
    // table is read, better while the container runs than between its exit and the
    // exit record.
    let cgroups = record.cgroups();

    let status = serve_until_exit(pid, sources, &mut log, attach.as_mut());
    let (exit_code, by_sigkill) = match status {
        WaitStatus::Exited(_, code) => (code, false),
        WaitStatus::Signaled(_, signal, _) => (
            128 + signal as i32,
            signal == nix::sys::signal::Signal::SIGKILL,
        ),
        _ => (255, false),
    };
    let oom_killed = cgroups
        .as_ref()
        .is_some_and(|cg| cg.oom_killed(&record.cgroups_path, by_sigkill));
    let exit = ExitRecord {
        exit_code,
        finished_at: Utc::now(),
        oom_killed,
        reason: None,
        message: None,
    };
    if let Err(e) = write_json_atomic(&dir.join(EXIT_FILE), &exit, Durability::Volatile) {
        tracing::error!(error = %e, "writing exit record");
    }
    tracing::info!(exit_code, oom_killed, "container exited");
    if let Some(attach) = attach.as_mut() {
        attach.finish(exit_code);
    }
    delete_container(record, cgroups.as_ref());
    reap_children();
    Ok(0)
}

fn set_nonblocking(fd: &OwnedFd) {
    if let Ok(flags) = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL) {
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        let _ = fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags));
    }
}

/// What one read of an output source gave.
enum Pumped {
    /// This many bytes, now at the start of the buffer (and in the log).
    Data(usize),
    /// Nothing for now.
    Nothing,
    /// The source reached its end.
    End,
}

/// Reads what is available from `source` into the log.
fn pump(source: &mut Source, log: &mut RotatingLog, buf: &mut [u8]) -> Pumped {
    match nix::unistd::read(source.fd.as_raw_fd(), buf) {
        Ok(0) | Err(nix::errno::Errno::EIO) => {
            let mut out = Vec::new();
            let _ = source.split.finish(Utc::now(), &mut out);
            let _ = log.write_all(&out);
            Pumped::End
        }
        Ok(n) => {
            let mut out = Vec::new();
            let _ = source.split.push(&buf[..n], Utc::now(), &mut out);
            if let Err(e) = log.write_all(&out) {
                tracing::warn!(error = %e, "writing the container log");
            }
            Pumped::Data(n)
        }
        Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => Pumped::Nothing,
        Err(e) => {
            tracing::warn!(error = %e, stream = source.split.stream().as_str(), "reading output");
            Pumped::End
        }
    }
}

/// What a polled descriptor is.
#[derive(Clone, Copy)]
enum Slot {
    Source(usize),
    Exited,
    Attach(Interest),
}

/// A pollable descriptor that becomes readable when `pid` ends (none on kernels before
/// 5.3: the loop then looks every 100 ms).
fn exit_notifier(pid: Pid) -> Option<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid.as_raw())?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
}

/// Copies the container's output into its log (and to attached sessions), serves attach
/// sessions, until the process ends; returns how it ended.
fn serve_until_exit(
    pid: Pid,
    mut sources: Vec<Source>,
    log: &mut RotatingLog,
    mut attach: Option<&mut AttachServer>,
) -> WaitStatus {
    let mut buf = vec![0u8; 64 * 1024];
    let exited = exit_notifier(pid);
    let status = loop {
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut slots: Vec<Slot> = Vec::new();
        for (i, source) in sources.iter().enumerate().filter(|(_, s)| s.open) {
            fds.push(libc::pollfd {
                fd: source.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            slots.push(Slot::Source(i));
        }
        if let Some(fd) = &exited {
            fds.push(libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            slots.push(Slot::Exited);
        }
        if let Some(server) = attach.as_deref() {
            for (fd, events, interest) in server.interests() {
                fds.push(libc::pollfd {
                    fd,
                    events,
                    revents: 0,
                });
                slots.push(Slot::Attach(interest));
            }
        }
        let timeout = if exited.is_some() || sources.iter().any(|s| s.open) {
            1000
        } else {
            100
        };
        // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfd
        // structs for the duration of the call, and every fd in it is open (owned by
        // `sources`, `exited` or the attach server, none of which changes during the call).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n > 0 {
            for (pollfd, slot) in fds.iter().zip(slots.iter()) {
                if pollfd.revents == 0 {
                    continue;
                }
                match *slot {
                    Slot::Source(i) => match pump(&mut sources[i], log, &mut buf) {
                        Pumped::Data(n) => {
                            if let Some(server) = attach.as_deref_mut() {
                                server.output(sources[i].split.stream(), &buf[..n]);
                            }
                        }
                        Pumped::Nothing => {}
                        Pumped::End => sources[i].open = false,
                    },
                    Slot::Exited => {}
                    Slot::Attach(interest) => {
                        if let Some(server) = attach.as_deref_mut() {
                            server.ready(interest, pollfd.revents);
                        }
                    }
                }
            }
        }
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => break status,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => break WaitStatus::Exited(pid, 255),
        }
    };
    // Drain what the process (and its dying children) left in the pipes.
    for source in sources.iter_mut().filter(|s| s.open) {
        set_nonblocking(&source.fd);
        for _ in 0..1024 {
            match nix::unistd::read(source.fd.as_raw_fd(), &mut buf) {
                Ok(n) if n > 0 => {
                    let mut out = Vec::new();
                    let _ = source.split.push(&buf[..n], Utc::now(), &mut out);
                    let _ = log.write_all(&out);
                    if let Some(server) = attach.as_deref_mut() {
                        server.output(source.split.stream(), &buf[..n]);
                    }
                }
                _ => break,
            }
        }
        let mut out = Vec::new();
        let _ = source.split.finish(Utc::now(), &mut out);
        let _ = log.write_all(&out);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_logged_error_explains_a_bare_failure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join(SHIM_LOG);
        let old = "2026-01-01T00:00:00Z ERROR shim{container=a}: x::y: an older failure\n";
        let new = "2026-01-01T00:00:01Z  INFO shim{container=a}: libcgroups::common: v1\n\
                   2026-01-01T00:00:02Z ERROR shim{container=a}: libcontainer::process::init::process: failed to drop capabilities err=SetCaps(\"capset: EPERM\")\n\
                   2026-01-01T00:00:03Z ERROR shim{container=a}: libcontainer::x: failed syscall\n";
        fs::write(&log, format!("{old}{new}")).expect("write");
        assert_eq!(
            first_logged_error(&log, old.len() as u64).as_deref(),
            Some("failed to drop capabilities err=SetCaps(\"capset: EPERM\")")
        );
        assert_eq!(
            first_logged_error(&log, (old.len() + new.len()) as u64),
            None
        );
    }

    #[test]
    fn tests_run_multi_threaded() {
        // The test harness has threads: the shim's guard would refuse to fork here.
        let handle = std::thread::spawn(single_threaded);
        assert!(!handle.join().unwrap_or(true));
    }
}
