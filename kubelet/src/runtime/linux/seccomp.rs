//! `seccompProfile`: the system call filter of a container, as the OCI spec's
//! `linux.seccomp`.
//!
//! `RuntimeDefault` is rkube's own list in the spirit of the profiles Docker, containerd
//! and CRI-O ship: every call an ordinary program makes is allowed, and the calls that act
//! on the host rather than on the container are refused with EPERM unless the container
//! holds the capability that would make them legitimate (`mount` and `unshare` with
//! CAP_SYS_ADMIN, `ptrace`-adjacent calls with CAP_SYS_PTRACE, clock changes with
//! CAP_SYS_TIME, ...). Calls this libseccomp or kernel does not know are skipped when the
//! filter is loaded, so one list serves every kernel.

use std::path::Path;

use oci_spec::runtime::{Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder, LinuxSeccompOperator, LinuxSyscall};

use crate::runtime::SeccompProfile;

/// Allowed for every container.
const ALLOWED: &[&str] = &[
    // files and directories
    "access", "chdir", "chmod", "chown", "chown32", "close", "close_range", "copy_file_range", "creat", "dup", "dup2", "dup3",
    "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown",
    "fchown32", "fchownat", "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock", "fremovexattr", "fsetxattr",
    "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate", "ftruncate64", "futimesat", "getcwd",
    "getdents", "getdents64", "getxattr", "lchown", "lchown32", "lgetxattr", "link", "linkat", "listxattr", "llistxattr",
    "_llseek", "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64", "mkdir", "mkdirat", "mknod", "mknodat", "open",
    "openat", "openat2", "pread64", "preadv", "preadv2", "pwrite64", "pwritev", "pwritev2", "read", "readahead", "readlink",
    "readlinkat", "readv", "removexattr", "rename", "renameat", "renameat2", "rmdir", "sendfile", "sendfile64", "setxattr",
    "splice", "stat", "stat64", "statfs", "statfs64", "statx", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs",
    "tee", "truncate", "truncate64", "umask", "unlink", "unlinkat", "utime", "utimensat", "utimensat_time64", "utimes",
    "vmsplice", "write", "writev", "cachestat", "fanotify_mark", "name_to_handle_at",
    // file descriptors that wait or notify
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2", "epoll_wait",
    "epoll_wait_old", "eventfd", "eventfd2", "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch",
    "io_cancel", "io_destroy", "io_getevents", "io_pgetevents", "io_pgetevents_time64", "io_setup", "io_submit",
    "io_uring_enter", "io_uring_register", "io_uring_setup", "ioctl", "pipe", "pipe2", "poll", "ppoll", "ppoll_time64",
    "pselect6", "pselect6_time64", "select", "_newselect", "signalfd", "signalfd4", "timerfd_create", "timerfd_gettime",
    "timerfd_gettime64", "timerfd_settime", "timerfd_settime64",
    // memory
    "brk", "madvise", "membarrier", "memfd_create", "memfd_secret", "mincore", "mlock", "mlock2", "mlockall", "mmap", "mmap2",
    "mprotect", "mremap", "msync", "munlock", "munlockall", "munmap", "pkey_alloc", "pkey_free", "pkey_mprotect",
    "remap_file_pages", "map_shadow_stack",
    // processes, threads and signals
    "alarm", "arch_prctl", "capget", "capset", "execve", "execveat", "exit", "exit_group", "fork", "futex", "futex_requeue",
    "futex_time64", "futex_wait", "futex_waitv", "futex_wake", "get_robust_list", "get_thread_area", "getcpu", "getegid",
    "getegid32", "geteuid", "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32", "getitimer", "getpgid", "getpgrp",
    "getpid", "getppid", "getpriority", "getresgid", "getresgid32", "getresuid", "getresuid32", "getrlimit", "getrusage",
    "getsid", "gettid", "getuid", "getuid32", "ioprio_get", "ioprio_set", "kill", "nanosleep", "pause", "pidfd_getfd",
    "pidfd_open", "pidfd_send_signal", "prctl", "prlimit64", "process_mrelease", "restart_syscall", "rseq", "rt_sigaction",
    "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_get_priority_max", "sched_get_priority_min", "sched_getaffinity",
    "sched_getattr", "sched_getparam", "sched_getscheduler", "sched_rr_get_interval", "sched_rr_get_interval_time64",
    "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp",
    "set_robust_list", "set_thread_area", "set_tid_address", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid",
    "setgid32", "setgroups", "setgroups32", "setitimer", "setpgid", "setpriority", "setregid", "setregid32", "setresgid",
    "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32", "setrlimit", "setsid", "setuid", "setuid32",
    "sigaltstack", "sigprocmask", "sigreturn", "tgkill", "tkill", "ugetrlimit", "vfork", "wait4", "waitid", "waitpid",
    // time
    "clock_getres", "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep", "clock_nanosleep_time64",
    "gettimeofday", "time", "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime", "timer_gettime64",
    "timer_settime", "timer_settime64", "times",
    // sockets
    "accept", "accept4", "bind", "connect", "getpeername", "getsockname", "getsockopt", "listen", "recv", "recvfrom",
    "recvmmsg", "recvmmsg_time64", "recvmsg", "send", "sendmmsg", "sendmsg", "sendto", "setsockopt", "shutdown",
    "socketcall", "socketpair",
    // System V and POSIX IPC (the pod's own IPC namespace)
    "ipc", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive", "mq_timedreceive_time64", "mq_timedsend",
    "mq_timedsend_time64", "mq_unlink", "msgctl", "msgget", "msgrcv", "msgsnd", "semctl", "semget", "semop", "semtimedop",
    "semtimedop_time64", "shmat", "shmctl", "shmdt", "shmget",
    // the rest
    "getrandom", "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self", "sysinfo", "uname",
];

/// A container may trace and read its own processes, on kernels that check the filter
/// again after a tracer changed a call (4.8 and later); before that a tracer could turn
/// an allowed call into a refused one.
const TRACING: &[&str] = &["process_vm_readv", "process_vm_writev", "ptrace"];

/// Allowed only with a capability: (capability, calls).
const WITH_CAPABILITY: &[(&str, &[&str])] = &[
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick", "lookup_dcookie", "mount",
            "mount_setattr", "move_mount", "open_tree", "perf_event_open", "quotactl", "quotactl_fd", "setdomainname",
            "sethostname", "setns", "syslog", "umount", "umount2", "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    ("CAP_SYS_MODULE", &["delete_module", "finit_module", "init_module"]),
    ("CAP_SYS_PACCT", &["acct"]),
    ("CAP_SYS_PTRACE", &["kcmp", "process_vm_readv", "process_vm_writev", "ptrace"]),
    ("CAP_SYS_RAWIO", &["ioperm", "iopl"]),
    ("CAP_SYS_TIME", &["adjtimex", "clock_adjtime", "clock_adjtime64", "clock_settime", "clock_settime64", "settimeofday", "stime"]),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    ("CAP_SYS_NICE", &["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"]),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// The namespace flags of `clone` (CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS,
/// CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET): without CAP_SYS_ADMIN a
/// container may start threads and processes, not new namespaces.
const CLONE_NAMESPACE_FLAGS: u64 = 0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000;

/// `personality` domains programs set for themselves: Linux, with the 32-bit address
/// flag, `UNAME26`, both, and the query.
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// `AF_VSOCK`, host-to-guest sockets, which are not the container's network.
const AF_VSOCK: u64 = 40;

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// The filter for a container with `capabilities` (`CAP_…` names); `None` for
/// `Unconfined`. A `Localhost` profile that cannot be read or parsed is an error naming
/// its file.
pub fn linux_seccomp(profile: &SeccompProfile, capabilities: &[String]) -> Result<Option<LinuxSeccomp>, String> {
    match profile {
        SeccompProfile::Unconfined => Ok(None),
        SeccompProfile::RuntimeDefault => runtime_default(capabilities).map(Some),
        SeccompProfile::Localhost(path) => localhost(path).map(Some),
    }
}

/// A profile file in the OCI runtime spec's `linux.seccomp` format, which is also the
/// format of Docker's and of Kubernetes' tutorial profiles (`defaultAction`,
/// `architectures`, `syscalls[].names/action/errnoRet/args`).
fn localhost(path: &Path) -> Result<LinuxSeccomp, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot load seccomp profile {:?}: {e}", path.display().to_string()))?;
    serde_json::from_slice(&text).map_err(|e| format!("decoding seccomp profile {:?}: {e}", path.display().to_string()))
}

fn rule(names: &[&str], action: LinuxSeccompAction, errno: Option<u32>, args: Vec<LinuxSeccompArg>) -> LinuxSyscall {
    let mut syscall = LinuxSyscall::default();
    syscall
        .set_names(names.iter().map(|n| n.to_string()).collect())
        .set_action(action)
        .set_errno_ret(errno)
        .set_args((!args.is_empty()).then_some(args));
    syscall
}

fn arg(index: usize, op: LinuxSeccompOperator, value: u64, value_two: Option<u64>) -> Result<LinuxSeccompArg, String> {
    let mut builder = LinuxSeccompArgBuilder::default().index(index).op(op).value(value);
    if let Some(two) = value_two {
        builder = builder.value_two(two);
    }
    builder.build().map_err(|e| format!("seccomp argument: {e}"))
}

/// Whether the running kernel's release is `major.minor` or later.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let Ok(uts) = nix::sys::utsname::uname() else { return false };
    let release = uts.release().to_string_lossy().into_owned();
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

fn architectures() -> Vec<Arch> {
    if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        vec![Arch::ScmpArchNative]
    }
}

/// `RuntimeDefault` for a container holding `capabilities`.
pub fn runtime_default(capabilities: &[String]) -> Result<LinuxSeccomp, String> {
    use LinuxSeccompAction::{ScmpActAllow as Allow, ScmpActErrno as Errno};
    let holds = |cap: &str| capabilities.iter().any(|c| c == cap);
    let mut allowed: Vec<&str> = ALLOWED.to_vec();
    if kernel_at_least(4, 8) {
        allowed.extend(TRACING);
    }
    for (cap, calls) in WITH_CAPABILITY {
        if holds(cap) {
            allowed.extend(calls.iter().copied());
        }
    }
    allowed.sort_unstable();
    allowed.dedup();
    let mut syscalls = vec![rule(&allowed, Allow, None, vec![])];
    for &persona in PERSONALITIES {
        syscalls.push(rule(&["personality"], Allow, None, vec![arg(0, LinuxSeccompOperator::ScmpCmpEq, persona, None)?]));
    }
    syscalls.push(rule(&["socket"], Allow, None, vec![arg(0, LinuxSeccompOperator::ScmpCmpNe, AF_VSOCK, None)?]));
    if !holds("CAP_SYS_ADMIN") {
        // Threads and processes, without new namespaces; clone3 passes its flags in
        // memory a filter cannot read, so it answers ENOSYS and libc falls back to clone.
        syscalls.push(rule(&["clone"], Allow, None, vec![arg(0, LinuxSeccompOperator::ScmpCmpMaskedEq, CLONE_NAMESPACE_FLAGS, Some(0))?]));
        syscalls.push(rule(&["clone3"], Errno, Some(ENOSYS), vec![]));
    }
    let mut seccomp = LinuxSeccomp::default();
    seccomp
        .set_default_action(Errno)
        .set_default_errno_ret(Some(EPERM))
        .set_architectures(Some(architectures()))
        .set_syscalls(Some(syscalls));
    Ok(seccomp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(seccomp: &LinuxSeccomp) -> Vec<String> {
        seccomp
            .syscalls()
            .iter()
            .flatten()
            .filter(|s| s.action() == LinuxSeccompAction::ScmpActAllow && s.args().is_none())
            .flat_map(|s| s.names().clone())
            .collect()
    }

    #[test]
    fn runtime_default_refuses_host_calls_unless_a_capability_allows_them() {
        let plain = runtime_default(&["CAP_CHOWN".into(), "CAP_NET_BIND_SERVICE".into()]).expect("builds");
        assert_eq!(plain.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(plain.default_errno_ret(), Some(EPERM));
        let calls = allowed(&plain);
        for call in ["read", "execve", "clock_gettime", "epoll_wait", "socketpair", "futex"] {
            assert!(calls.iter().any(|c| c == call), "{call} refused");
        }
        for call in ["mount", "unshare", "setns", "keyctl", "add_key", "init_module", "reboot", "settimeofday", "clone3", "bpf"] {
            assert!(!calls.iter().any(|c| c == call), "{call} allowed without its capability");
        }
        let syscalls = plain.syscalls().clone().unwrap_or_default();
        let clone = syscalls.iter().find(|s| s.names() == &["clone".to_string()]).expect("a clone rule");
        let only = clone.args().clone().unwrap_or_default();
        assert_eq!(only.len(), 1);
        assert_eq!((only[0].op(), only[0].value(), only[0].value_two()), (LinuxSeccompOperator::ScmpCmpMaskedEq, CLONE_NAMESPACE_FLAGS, Some(0)));
        let clone3 = syscalls.iter().find(|s| s.names() == &["clone3".to_string()]).expect("a clone3 rule");
        assert_eq!((clone3.action(), clone3.errno_ret()), (LinuxSeccompAction::ScmpActErrno, Some(ENOSYS)));

        let admin = runtime_default(&["CAP_SYS_ADMIN".into(), "CAP_SYS_TIME".into()]).expect("builds");
        let calls = allowed(&admin);
        for call in ["mount", "unshare", "setns", "clone", "clone3", "settimeofday"] {
            assert!(calls.iter().any(|c| c == call), "{call} refused with its capability");
        }
        assert!(!calls.iter().any(|c| c == "keyctl"));
        assert!(admin.syscalls().iter().flatten().all(|s| s.names() != &["clone3".to_string()] || s.action() == LinuxSeccompAction::ScmpActAllow));
    }

    #[test]
    fn localhost_profiles_load_from_their_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("violation.json");
        std::fs::write(&path, r#"{"defaultAction": "SCMP_ACT_ERRNO"}"#).expect("write");
        let profile = linux_seccomp(&SeccompProfile::Localhost(path.clone()), &[]).expect("loads").expect("a filter");
        assert_eq!(profile.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert!(profile.syscalls().is_none());

        let fine = dir.path().join("fine-grained.json");
        std::fs::write(
            &fine,
            r#"{"defaultAction": "SCMP_ACT_LOG", "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [{"names": ["accept4", "epoll_wait"], "action": "SCMP_ACT_ALLOW"}]}"#,
        )
        .expect("write");
        let profile = linux_seccomp(&SeccompProfile::Localhost(fine), &[]).expect("loads").expect("a filter");
        assert_eq!(allowed(&profile), ["accept4", "epoll_wait"]);

        let missing = dir.path().join("missing.json");
        let err = linux_seccomp(&SeccompProfile::Localhost(missing.clone()), &[]).expect_err("a missing file");
        assert!(err.starts_with(&format!("cannot load seccomp profile {:?}", missing.display().to_string())), "{err}");
        std::fs::write(&path, "{not json").expect("write");
        let err = linux_seccomp(&SeccompProfile::Localhost(path), &[]).expect_err("bad JSON");
        assert!(err.contains("violation.json"), "{err}");
        assert_eq!(linux_seccomp(&SeccompProfile::Unconfined, &[]), Ok(None));
    }
}
