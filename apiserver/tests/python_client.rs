//! The official Python `kubernetes` client against the in-process apiserver, on the
//! embedded store and on etcd: `tests/python/client_check.py` lists, creates, reads,
//! patches (with the client's default patch content types), watches and deletes.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context};
use support::server::{Backend, TestServer};

/// Whether `python3` can import the client; prints why the test is skipped if not.
async fn have_python_client() -> anyhow::Result<bool> {
    let found = tokio::process::Command::new("python3")
        .args(["-c", "import kubernetes"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success());
    if !found {
        support::skip_or_fail("python kubernetes client not installed; pip install kubernetes")?;
    }
    Ok(found)
}

async fn run_check(backend: Backend) -> anyhow::Result<()> {
    if !have_python_client().await? {
        return Ok(());
    }
    let Some(server) = TestServer::start(backend).await? else { return Ok(()) };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/client_check.py");
    let child = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(&server.kubeconfig)
        .env("HOME", server.dir.path())
        .env("PYTHONUNBUFFERED", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("running python3")?;
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .context("client_check.py timed out")??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    ensure!(out.status.success(), "client_check.py failed ({}) on {backend:?}:\n{stdout}\n{stderr}", out.status);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_embedded() -> anyhow::Result<()> {
    run_check(Backend::Embedded).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_etcd() -> anyhow::Result<()> {
    run_check(Backend::Etcd).await
}
