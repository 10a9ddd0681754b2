//! The one boundary between kube-proxy and the kernel's packet filter: a batch of nft
//! commands applied as one transaction. [`NftCommand`] feeds it to `nft -f -`;
//! [`RecordingNft`] keeps the batches for tests of the sync logic.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("running {program}")]
    Spawn { program: String, #[source] source: std::io::Error },
    #[error("nft rejected the batch: {stderr}")]
    Rejected { stderr: String },
}

/// Applies nft batches; each call is all-or-nothing in the kernel.
pub trait Nft: Send + Sync {
    fn apply(&self, batch: &str) -> Result<(), NftError>;
}

/// The `nft` program.
#[derive(Debug, Clone)]
pub struct NftCommand {
    pub program: String,
}

impl Default for NftCommand {
    fn default() -> Self {
        NftCommand { program: "nft".into() }
    }
}

impl Nft for NftCommand {
    fn apply(&self, batch: &str) -> Result<(), NftError> {
        let spawn_error = |source| NftError::Spawn { program: self.program.clone(), source };
        let mut child = Command::new(&self.program)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_error)?;
        if let Some(mut stdin) = child.stdin.take() {
            // A write error means nft exited early; its stderr says why.
            let _ = stdin.write_all(batch.as_bytes());
        }
        let output = child.wait_with_output().map_err(spawn_error)?;
        if output.status.success() {
            Ok(())
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr);
            // nft echoes the offending line and a caret line; the first lines say enough.
            let stderr: Vec<&str> = stderr.lines().take(6).collect();
            Err(NftError::Rejected { stderr: stderr.join("\n") })
        }
    }
}

/// Removes `table` if it exists (a clean shutdown, `rkube down`).
pub fn delete_table(nft: &dyn Nft, table: &str) -> Result<(), NftError> {
    nft.apply(&format!("add table ip {table}\ndelete table ip {table}\n"))
}

/// Keeps every batch; fails the next ones on request.
#[derive(Debug, Default)]
pub struct RecordingNft {
    pub batches: Mutex<Vec<String>>,
    pub fail_next: Mutex<usize>,
}

impl RecordingNft {
    pub fn batches(&self) -> Vec<String> {
        self.batches.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

impl Nft for RecordingNft {
    fn apply(&self, batch: &str) -> Result<(), NftError> {
        if let Ok(mut fail) = self.fail_next.lock() {
            if *fail > 0 {
                *fail -= 1;
                return Err(NftError::Rejected { stderr: "injected failure".into() });
            }
        }
        if let Ok(mut batches) = self.batches.lock() {
            batches.push(batch.to_string());
        }
        Ok(())
    }
}
