//! The one boundary between rkube and the kernel's packet filter: a batch of nft
//! commands applied as one transaction. kube-proxy's Service table and the kubelet's pod
//! egress masquerade both go through [`Nft`]: [`NftCommand`] feeds the batch to
//! `nft -f -`, [`RecordingNft`] keeps it for tests of the logic around it.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("running {program}")]
    Spawn { program: String, #[source] source: std::io::Error },
    #[error("`nft -f -` failed ({status}): {stderr}")]
    Failed { status: String, stderr: String },
}

/// Applies nft batches; each call is all-or-nothing in the kernel.
pub trait Nft: Send + Sync {
    fn apply(&self, batch: &str) -> Result<(), NftError>;
}

/// The `nft` program, in the calling thread's network namespace.
#[derive(Debug, Clone)]
pub struct NftCommand {
    pub program: PathBuf,
}

impl Default for NftCommand {
    /// `nft` from PATH or the sbin directories, which a non-login root shell may lack.
    fn default() -> Self {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let program = std::env::split_paths(&path)
            .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
            .map(|dir| dir.join("nft"))
            .find(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("nft"));
        NftCommand { program }
    }
}

impl Nft for NftCommand {
    fn apply(&self, batch: &str) -> Result<(), NftError> {
        let spawn_error = |source| NftError::Spawn { program: self.program.display().to_string(), source };
        let mut child = Command::new(&self.program)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_error)?;
        if let Some(mut stdin) = child.stdin.take() {
            // A write error means nft exited early; its status and stderr say why.
            let _ = stdin.write_all(batch.as_bytes());
        }
        let output = child.wait_with_output().map_err(spawn_error)?;
        if output.status.success() {
            return Ok(());
        }
        // nft echoes the offending line and a caret line; the first lines say enough.
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stderr: Vec<&str> = stderr.trim().lines().take(6).collect();
        Err(NftError::Failed { status: output.status.to_string(), stderr: stderr.join("\n") })
    }
}

/// Removes the `ip` table `table` if it exists.
pub fn delete_table(nft: &dyn Nft, table: &str) -> Result<(), NftError> {
    nft.apply(&format!("add table ip {table}\ndelete table ip {table}\n"))
}

/// Keeps every batch it is given, failing the first `fail_next` of them.
#[derive(Debug, Default)]
pub struct RecordingNft {
    batches: Mutex<Vec<String>>,
    pub fail_next: AtomicUsize,
}

impl RecordingNft {
    /// A recorder whose first `failures` batches fail.
    pub fn failing(failures: usize) -> RecordingNft {
        RecordingNft { fail_next: AtomicUsize::new(failures), ..Default::default() }
    }

    /// Every batch so far, failed ones included.
    pub fn batches(&self) -> Vec<String> {
        self.batches.lock().map(|b| b.clone()).unwrap_or_else(|e| e.into_inner().clone())
    }
}

impl Nft for RecordingNft {
    fn apply(&self, batch: &str) -> Result<(), NftError> {
        self.batches.lock().unwrap_or_else(|e| e.into_inner()).push(batch.to_string());
        let failing = self.fail_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if failing {
            return Err(NftError::Failed { status: "exit status: 1".into(), stderr: "injected failure".into() });
        }
        Ok(())
    }
}
