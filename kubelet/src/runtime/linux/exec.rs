//! `kubectl exec`: a process started inside a running container. The kubelet (a
//! multi-threaded process that must not fork into namespaces) spawns a helper from its
//! own binary (`<exe> __rkube-shim exec <container dir> <process.json> tty|notty`); the
//! helper joins the container with libcontainer's tenant builder, handing the process
//! its own stdio (pipes, or the slave side of a pty the kubelet allocated), waits for it
//! and exits with its status. Killing the helper kills the process (parent-death signal),
//! which is how a dropped session ends.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::task::{ready, Context, Poll};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::wait::{waitpid, WaitStatus};
use oci_spec::runtime::Spec;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use super::executor::{exec_failure_code, start_error_message, ContainerExecutor};
use super::shim::{single_threaded, SHIM_SUBCOMMAND};
use super::store::{read_json, write_json_atomic, ContainerRecord, Durability, META_FILE, SPEC_FILE};
use crate::runtime::{ExecRequest, ExecSession, Result, RuntimeError};

/// The helper's side: runs `process.json` in the container of `dir`, exits with its code.
pub(super) fn helper_main(dir: &Path, rest: &[OsString]) -> i32 {
    let (Some(process_file), Some(mode)) = (rest.first(), rest.get(1)) else {
        eprintln!("usage: {SHIM_SUBCOMMAND} exec <container dir> <process.json> tty|notty");
        return 2;
    };
    let tty = mode.to_str() == Some("tty");
    let process_file = PathBuf::from(process_file);
    let code = run_helper(dir, &process_file, tty);
    let _ = std::fs::remove_file(&process_file);
    code
}

fn run_helper(dir: &Path, process_file: &Path, tty: bool) -> i32 {
    if !single_threaded() {
        eprintln!("exec helper: not single-threaded");
        return 126;
    }
    let record: ContainerRecord = match read_json(&dir.join(META_FILE)) {
        Ok(Some(record)) => record,
        Ok(None) => {
            eprintln!("container record missing in {}", dir.display());
            return 126;
        }
        Err(e) => {
            eprintln!("{e}");
            return 126;
        }
    };
    let stdio = || -> io::Result<(OwnedFd, OwnedFd, OwnedFd)> {
        let dup = |fd: RawFd| -> io::Result<OwnedFd> {
            // SAFETY: fds 0-2 are open for the helper's lifetime; borrowing one to clone it.
            let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            borrowed.try_clone_to_owned()
        };
        Ok((dup(0)?, dup(1)?, dup(2)?))
    };
    let (stdin, stdout, stderr) = match stdio() {
        Ok(fds) => fds,
        Err(e) => {
            eprintln!("exec helper: duplicating stdio: {e}");
            return 126;
        }
    };
    // The container's filter, which the tenant builder would leave out.
    let seccomp = match Spec::load(dir.join(SPEC_FILE)) {
        Ok(spec) => spec.linux().as_ref().and_then(|l| l.seccomp().clone()),
        Err(e) => {
            eprintln!("exec helper: loading {SPEC_FILE}: {e}");
            return 126;
        }
    };
    let built = ContainerBuilder::new(record.id.clone(), SyscallType::Linux)
        .with_root_path(&record.state_root)
        .map(|b| {
            b.with_executor(ContainerExecutor {
                controlling_tty: tty,
                die_with_parent: true,
                seccomp,
            })
            .with_stdin(stdin)
            .with_stdout(stdout)
            .with_stderr(stderr)
            .as_tenant()
            .with_process(Some(process_file))
            .with_detach(false)
            .build()
        });
    let pid = match built {
        Ok(Ok(pid)) => pid,
        Ok(Err(e)) | Err(e) => {
            let message = start_error_message(&e);
            eprintln!("{message}");
            return exec_failure_code(&message);
        }
    };
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, signal, _)) => return 128 + signal as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 255,
        }
    }
}

/// The process spec of an exec: the container's user, environment, working directory
/// and capabilities, with the requested command.
pub(super) fn exec_process(
    dir: &Path,
    request: &ExecRequest,
) -> Result<oci_spec::runtime::Process> {
    let spec_path = dir.join(SPEC_FILE);
    let spec = Spec::load(&spec_path).map_err(|e| RuntimeError::Operation {
        op: "exec",
        id: request.container_id.clone(),
        message: format!("loading {}: {e}", spec_path.display()),
    })?;
    let mut process = spec
        .process()
        .clone()
        .ok_or_else(|| RuntimeError::Operation {
            op: "exec",
            id: request.container_id.clone(),
            message: "container spec has no process".to_string(),
        })?;
    let mut env = process.env().clone().unwrap_or_default();
    if request.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".to_string());
    }
    process
        .set_args(Some(request.command.clone()))
        .set_env(Some(env))
        .set_terminal(Some(false))
        .set_console_size(None);
    Ok(process)
}

/// The kubelet's side: spawns the helper and wires its stdio into an [`ExecSession`].
pub(super) async fn start_session(
    shim_binary: &Path,
    dir: &Path,
    request: &ExecRequest,
) -> Result<ExecSession> {
    let op_err = |message: String| RuntimeError::Operation {
        op: "exec",
        id: request.container_id.clone(),
        message,
    };
    if request.command.is_empty() {
        return Err(op_err("no command given".to_string()));
    }
    let process = exec_process(dir, request)?;
    let process_file = dir.join(format!("exec-{}.json", uuid::Uuid::new_v4().simple()));
    write_json_atomic(&process_file, &process, Durability::Volatile)
        .map_err(|e| RuntimeError::io(format!("writing {}", process_file.display()), e))?;

    let mut command = tokio::process::Command::new(shim_binary);
    command
        .arg(SHIM_SUBCOMMAND)
        .arg("exec")
        .arg(dir)
        .arg(&process_file)
        .arg(if request.tty { "tty" } else { "notty" });
    let mut master = None;
    if request.tty {
        let pty =
            nix::pty::openpty(None, None).map_err(|e| op_err(format!("allocating a pty: {e}")))?;
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| RuntimeError::io("dup pty", e));
        command
            .stdin(Stdio::from(dup(&pty.slave)?))
            .stdout(Stdio::from(dup(&pty.slave)?))
            .stderr(Stdio::from(pty.slave));
        master = Some(pty.master);
    } else {
        command
            .stdin(if request.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
    }
    let spawned = command.spawn();
    // The slave side must live only in the helper, or the master never sees the end.
    drop(command);
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            let _ = std::fs::remove_file(&process_file);
            return Err(RuntimeError::io(
                format!("spawning {}", shim_binary.display()),
                e,
            ));
        }
    };

    let done = CancellationToken::new();
    let mut session = ExecSession {
        stdin: None,
        stdout: None,
        stderr: None,
        exit: tokio::sync::oneshot::channel().1,
        resize: None,
    };
    if let Some(master) = master {
        let resize_fd = master
            .try_clone()
            .map_err(|e| RuntimeError::io("dup pty", e))?;
        let pty = PtyMaster::new(master).map_err(|e| RuntimeError::io("pty", e))?;
        let (reader, writer) = tokio::io::split(pty);
        session.stdout = Some(Box::new(reader));
        if request.stdin {
            session.stdin = Some(Box::new(writer));
        }
        let (resize_tx, mut resize_rx) = tokio::sync::mpsc::channel::<(u16, u16)>(8);
        let done_resize = done.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = done_resize.cancelled() => break,
                    size = resize_rx.recv() => match size {
                        Some((cols, rows)) => set_window_size(&resize_fd, cols, rows),
                        None => break,
                    },
                }
            }
        });
        session.resize = Some(resize_tx);
    } else {
        if let Some(stdin) = child.stdin.take() {
            session.stdin = Some(Box::new(stdin));
        }
        if let Some(stdout) = child.stdout.take() {
            session.stdout = Some(Box::new(stdout));
        }
        if let Some(stderr) = child.stderr.take() {
            session.stderr = Some(Box::new(stderr));
        }
    }

    let (exit_tx, exit_rx) = tokio::sync::oneshot::channel();
    session.exit = exit_rx;
    let mut exit_tx = exit_tx;
    tokio::spawn(async move {
        let status = tokio::select! {
            status = child.wait() => status,
            _ = exit_tx.closed() => {
                // Nobody waits for the result any more: end the process.
                let _ = child.start_kill();
                child.wait().await
            }
        };
        done.cancel();
        let _ = std::fs::remove_file(&process_file);
        let code = match status {
            Ok(status) => {
                use std::os::unix::process::ExitStatusExt;
                status
                    .code()
                    .or_else(|| status.signal().map(|s| 128 + s))
                    .unwrap_or(255)
            }
            Err(_) => 255,
        };
        let _ = exit_tx.send(code);
    });
    Ok(session)
}

fn set_window_size(fd: &OwnedFd, cols: u16, rows: u16) {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which is valid for the
    // call; the fd is a pty master we own.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TIOCSWINSZ,
            &size as *const libc::winsize,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "resizing the exec terminal");
    }
}

/// The master side of a pty as an async reader/writer (EIO, which a master reads once
/// the slave side is closed, is end of file).
struct PtyMaster {
    fd: AsyncFd<OwnedFd>,
}

impl PtyMaster {
    fn new(fd: OwnedFd) -> io::Result<Self> {
        let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(io::Error::from)?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
        // SAFETY: an OwnedFd's raw fd is valid, open and unchanged for as long as the
        // AsyncFd owns it.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        Ok(PtyMaster { fd })
    }
}

impl AsyncRead for PtyMaster {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|inner| {
                nix::unistd::read(inner.get_ref().as_raw_fd(), unfilled).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for PtyMaster {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard
                .try_io(|inner| nix::unistd::write(inner.get_ref(), data).map_err(io::Error::from))
            {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
