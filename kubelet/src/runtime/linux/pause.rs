//! The pause process of a pod that shares one PID namespace between its containers
//! (`shareProcessNamespace: true`): PID 1 of that namespace, which reaps the orphans of
//! every container, as the pause container does in a real cluster.
//!
//! The kubelet starts `<exe> __rkube-shim pause <target>`; that launcher unshares a new PID
//! namespace, forks the pause process into it (its first child is PID 1 there),
//! bind-mounts the namespace on `<target>` so containers can join it by path, prints
//! `ok <host pid of the pause process>` (or `error <message>`) and exits. The pause
//! process lives on in a session of its own, with init as its parent, until it is killed
//! or receives SIGTERM or SIGINT (from inside the pod, `kill 1`, as the real pause).
//! Killing it ends every process of the namespace.
#![allow(unsafe_code)]

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

/// The launcher: returns its exit code.
pub fn launcher_main(target: &Path) -> i32 {
    if !super::shim::single_threaded() {
        println!("error the pause launcher must run in a single-threaded process");
        return 1;
    }
    if let Err(e) = nix::sched::unshare(CloneFlags::CLONE_NEWPID) {
        println!("error unsharing a PID namespace: {e}");
        return 1;
    }
    // SAFETY: the process is single-threaded (checked above), so the child may do anything.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => hold(),
        Ok(ForkResult::Parent { child }) => {
            let source = format!("/proc/{child}/ns/pid");
            let bound = nix::mount::mount(
                Some(source.as_str()),
                target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            );
            match bound {
                Ok(()) => {
                    println!("ok {child}");
                    0
                }
                Err(e) => {
                    let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                    println!("error bind-mounting {source} on {}: {e}", target.display());
                    1
                }
            }
        }
        Err(e) => {
            println!("error forking the pause process: {e}");
            1
        }
    }
}

/// PID 1 of the namespace: reaps whatever is reparented to it, until told to stop.
fn hold() -> ! {
    let _ = nix::unistd::setsid();
    let _ = std::env::set_current_dir("/");
    // The launcher's caller reads its stdout to the end: let go of it.
    if let Ok(null) = OpenOptions::new().read(true).write(true).open("/dev/null") {
        for fd in 0..=2 {
            let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
        }
    }
    let _ = nix::sys::prctl::set_name(c"pause");
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT] {
        signals.add(signal);
    }
    // Blocked, the signals wait in the pending set for `wait` below: none is lost between
    // the reaping and the wait. (PID 1 of a namespace gets no signal from inside it that
    // it has no handler for, but a blocked one is delivered.)
    let _ = signals.thread_block();
    loop {
        while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            if matches!(status, WaitStatus::StillAlive) {
                break;
            }
        }
        if let Ok(Signal::SIGTERM | Signal::SIGINT) = signals.wait() {
            std::process::exit(0);
        }
    }
}
