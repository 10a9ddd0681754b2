//! What runs inside the container's (or an exec's) process as libcontainer's last step:
//! finds the executable the way runc does, so that a bad command fails before the
//! container counts as started with runc's message (`exec: "foo": executable file not
//! found in $PATH`), takes the terminal as controlling TTY when there is one, and
//! `execve`s the workload.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use oci_spec::runtime::{LinuxSeccomp, Spec};

use super::spec::DEFAULT_PATH;

/// The executor of containers and exec sessions.
#[derive(Clone, Debug, Default)]
pub struct ContainerExecutor {
    /// stdin is a terminal the process should own (TIOCSCTTY).
    pub controlling_tty: bool,
    /// SIGKILL the process when its parent (the exec helper) dies, so that killing the
    /// helper ends an abandoned `kubectl exec` session.
    pub die_with_parent: bool,
    /// The container's seccomp filter, for an exec: libcontainer's tenant builder does
    /// not carry `linux.seccomp` over to the processes it starts in a running container,
    /// so the executor loads it as the last step before `execve`.
    pub seccomp: Option<LinuxSeccomp>,
}

/// Loads `seccomp` on this process. By then libcontainer has dropped the capabilities,
/// and without CAP_SYS_ADMIN the kernel takes a filter only from a process with
/// no_new_privs, so that is set first when the load is refused (an exec into a filtered
/// container whose own process runs without it may then not gain privileges through
/// setuid binaries).
fn load_seccomp(seccomp: &LinuxSeccomp) -> Result<(), ExecutorError> {
    if libcontainer::seccomp::initialize_seccomp(seccomp).is_ok() {
        return Ok(());
    }
    nix::sys::prctl::set_no_new_privs().map_err(|e| ExecutorError::Other(format!("setting no_new_privs for the seccomp filter: {e}")))?;
    libcontainer::seccomp::initialize_seccomp(seccomp)
        .map(|_| ())
        .map_err(|e| ExecutorError::Other(format!("loading the container's seccomp filter: {e}")))
}

/// Checks one candidate file as `execve` would see it.
fn check_executable(path: &Path) -> Result<(), String> {
    let display = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("stat {display}: no such file or directory"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err("permission denied".to_string())
        }
        Err(e) => return Err(format!("stat {display}: {e}")),
    };
    if meta.is_dir() {
        return Err("is a directory".to_string());
    }
    if meta.permissions().mode() & 0o111 == 0
        || nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_err()
    {
        return Err("permission denied".to_string());
    }
    Ok(())
}

/// Finds `name` as Go's `exec.LookPath` (and so runc) does; the error is runc's message.
pub fn look_path(name: &str, path_var: &str) -> Result<PathBuf, String> {
    if name.contains('/') {
        return check_executable(Path::new(name))
            .map(|()| PathBuf::from(name))
            .map_err(|e| format!("exec: {name:?}: {e}"));
    }
    if !name.is_empty() {
        for dir in path_var.split(':') {
            let dir = if dir.is_empty() { "." } else { dir };
            let candidate = Path::new(dir).join(name);
            if check_executable(&candidate).is_ok() {
                return Ok(candidate);
            }
        }
    }
    Err(format!(
        "exec: {name:?}: executable file not found in $PATH"
    ))
}

/// The exit code an exec reports when its command could not be started (as runc).
pub fn exec_failure_code(message: &str) -> i32 {
    if message.contains("executable file not found")
        || message.contains("no such file or directory")
    {
        127
    } else {
        126
    }
}

/// The most useful line of a libcontainer error chain: runc's `exec: …` message when the
/// command could not be found or run, else the whole chain.
pub fn start_error_message(err: &(dyn std::error::Error + 'static)) -> String {
    let mut texts = Vec::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        texts.push(e.to_string());
        current = e.source();
    }
    for text in &texts {
        if let Some(i) = text.find("exec: \"") {
            return text[i..].trim().to_string();
        }
    }
    let mut chain: Vec<String> = Vec::new();
    for text in texts {
        if !chain.iter().any(|t| t.contains(&text)) {
            chain.push(text);
        }
    }
    chain.join(": ")
}

fn spec_args(spec: &Spec) -> Option<&Vec<String>> {
    spec.process()
        .as_ref()
        .and_then(|p| p.args().as_ref())
        .filter(|a| !a.is_empty())
}

fn spec_path_var(spec: &Spec) -> String {
    spec.process()
        .as_ref()
        .and_then(|p| p.env().as_ref())
        .and_then(|env| {
            env.iter()
                .find_map(|e| e.strip_prefix("PATH=").map(str::to_string))
        })
        .unwrap_or_else(|| DEFAULT_PATH.to_string())
}

impl Executor for ContainerExecutor {
    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        let args = spec_args(spec).ok_or_else(|| {
            ExecutorValidationError::ArgValidationError("no command specified".to_string())
        })?;
        look_path(&args[0], &spec_path_var(spec))
            .map(|_| ())
            .map_err(ExecutorValidationError::ArgValidationError)
    }

    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        let args = spec_args(spec).ok_or(ExecutorError::InvalidArg)?;
        let program = look_path(&args[0], &spec_path_var(spec)).map_err(ExecutorError::Other)?;
        let program = CString::new(program.as_os_str().as_encoded_bytes())
            .map_err(|_| ExecutorError::InvalidArg)?;
        let argv: Vec<CString> = args
            .iter()
            .map(|a| CString::new(a.as_bytes()).map_err(|_| ExecutorError::InvalidArg))
            .collect::<Result<_, _>>()?;

        // The shim ignores SIGPIPE (Rust does by default) and ignored signals survive
        // execve: give the workload the default, as any shell would.
        // SAFETY: setting a signal's disposition to SIG_DFL installs no handler code; this
        // process is single-threaded and about to execve.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
        if self.controlling_tty {
            // SAFETY: TIOCSCTTY takes an integer argument and only changes this session's
            // controlling terminal; fd 0 is the terminal the caller handed us.
            let rc = unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
            if rc != 0 {
                return Err(ExecutorError::Other(format!(
                    "setting the controlling terminal: {}",
                    std::io::Error::last_os_error()
                )));
            }
        }
        if self.die_with_parent {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(|e| {
                ExecutorError::Other(format!("setting the parent-death signal: {e}"))
            })?;
        }
        if let Some(seccomp) = &self.seccomp {
            load_seccomp(seccomp)?;
        }
        let err = nix::unistd::execv(&program, &argv).err();
        Err(ExecutorError::Other(format!(
            "exec: {:?}: {}",
            args[0],
            err.map_or_else(|| "unknown error".to_string(), |e| e.desc().to_string())
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn looks_up_like_runc() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).expect("mkdir");
        let tool = bin.join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let data = bin.join("data");
        std::fs::write(&data, "x").expect("write");
        let path_var = format!("/nonexistent:{}", bin.display());

        assert_eq!(look_path("tool", &path_var), Ok(tool.clone()));
        assert_eq!(
            look_path("foo", &path_var),
            Err("exec: \"foo\": executable file not found in $PATH".to_string())
        );
        assert_eq!(
            look_path("data", &path_var),
            Err("exec: \"data\": executable file not found in $PATH".to_string())
        );
        let data_text = data.display().to_string();
        assert_eq!(
            look_path(&data_text, &path_var),
            Err(format!("exec: {data_text:?}: permission denied"))
        );
        let missing = format!("{}/missing", bin.display());
        assert_eq!(
            look_path(&missing, &path_var),
            Err(format!(
                "exec: {missing:?}: stat {missing}: no such file or directory"
            ))
        );
        let bin_text = bin.display().to_string();
        assert_eq!(
            look_path(&bin_text, &path_var),
            Err(format!("exec: {bin_text:?}: is a directory"))
        );
        assert_eq!(
            exec_failure_code("exec: \"foo\": executable file not found in $PATH"),
            127
        );
        assert_eq!(exec_failure_code("exec: \"/etc\": is a directory"), 126);
    }

    #[derive(Debug, thiserror::Error)]
    #[error("failed to create container: {0}")]
    struct Outer(#[source] Inner);
    #[derive(Debug, thiserror::Error)]
    #[error("exec process failed with error error in executing process : exec: \"foo\": executable file not found in $PATH")]
    struct Inner;

    #[test]
    fn start_errors_keep_runcs_message() {
        assert_eq!(
            start_error_message(&Outer(Inner)),
            "exec: \"foo\": executable file not found in $PATH"
        );
    }
}
