//! The storage conformance suite against both backends — the embedded store in a temp
//! dir and a real etcd (one member, and a three-member cluster losing a member) started
//! from `etcd` on PATH — plus the embedded store's durability tests: reopen after
//! concurrent writes, a torn log tail, a corrupt log, and a writer killed with SIGKILL.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::etcd::start_etcd;

use anyhow::{anyhow, bail, ensure};
use apiserver::storage::conformance;
use apiserver::storage::embedded::{EmbeddedStore, LOG_FILE};
use apiserver::storage::{RangeOptions, Store, StoreError};

// ---------------------------------------------------------------------------------------
// The suite against both backends

#[tokio::test]
async fn embedded_conformance() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = EmbeddedStore::open(dir.path()).await?;
    ensure!(
        store.current_revision().await? == 1,
        "a fresh store is at revision 1, like etcd"
    );
    ensure!(store.compacted_revision().await? == 0);
    conformance::run_all(&store).await
}

#[tokio::test]
async fn etcd_conformance() -> anyhow::Result<()> {
    let Some(mut cluster) = start_etcd(1)? else {
        return Ok(());
    };
    let store = cluster.connect().await?;
    ensure!(store.compacted_revision().await? == 0);
    conformance::run_all(&store).await
}

#[tokio::test]
async fn etcd_cluster_survives_member_loss() -> anyhow::Result<()> {
    let Some(mut cluster) = start_etcd(3)? else {
        return Ok(());
    };
    let store = cluster.connect().await?;
    let base = conformance::fresh_prefix("cluster");
    for i in 0..10 {
        store
            .create(&format!("{base}/before-{i}"), b"x".to_vec())
            .await?;
    }
    // `kubectl get cs` lists each member as etcd-0, etcd-1…: all three answer.
    let health = store.member_health().await;
    ensure!(health.iter().all(Result::is_ok), "every member healthy: {health:?}");
    ensure!(health.len() == 3, "one entry per member: {health:?}");
    cluster.members[0].kill();
    // If the killed member led, the others answer "leader changed" until they elect a
    // new leader (etcd's own /health says unhealthy meanwhile too); then only the killed
    // member is unhealthy.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let health = store.member_health().await;
        ensure!(health[0].is_err(), "the killed member unhealthy: {health:?}");
        if health[1..].iter().all(Result::is_ok) {
            break;
        }
        ensure!(Instant::now() < deadline, "the other members healthy again after an election: {health:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Writes go on through the other members (after a new election, if the leader died).
    for i in 0..20 {
        let key = format!("{base}/after-{i}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match store.create(&key, b"x".to_vec()).await {
                Ok(_) => break,
                // A retried create whose first try did commit.
                Err(StoreError::AlreadyExists { .. }) => break,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("create {key} failed, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    return Err(anyhow!(e).context(format!("create {key} with one member down")))
                }
            }
        }
    }
    let listed = store
        .range(&format!("{base}/"), RangeOptions::default())
        .await?;
    ensure!(listed.kvs.len() == 30, "{} keys listed", listed.kvs.len());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Embedded durability

async fn create_many(
    store: &EmbeddedStore,
    prefix: &str,
    n: usize,
) -> anyhow::Result<Vec<(String, i64)>> {
    let results = futures::future::join_all((0..n).map(|i| async move {
        let key = format!("{prefix}/{i:04}");
        let rev = store.create(&key, key.as_bytes().to_vec()).await?;
        anyhow::Ok((key, rev))
    }))
    .await;
    results.into_iter().collect()
}

async fn check_present(store: &EmbeddedStore, acked: &[(String, i64)]) -> anyhow::Result<()> {
    for (key, rev) in acked {
        let kv = store
            .get(key)
            .await?
            .0
            .ok_or_else(|| anyhow!("acknowledged key {key} lost"))?;
        ensure!(
            kv.mod_revision == *rev && kv.value == key.as_bytes(),
            "{key}: {kv:?}, acknowledged at {rev}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn embedded_reopen_keeps_acknowledged_writes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = EmbeddedStore::open(dir.path()).await?;
    let acked = create_many(&store, "/registry/durable", 300).await?;
    let revision = store.current_revision().await?;
    store.close().await;

    let store = EmbeddedStore::open(dir.path()).await?;
    ensure!(store.current_revision().await? == revision);
    check_present(&store, &acked).await?;
    // Dropping without close also loses nothing acknowledged.
    let more = create_many(&store, "/registry/durable2", 50).await?;
    drop(store);
    let store = EmbeddedStore::open(dir.path()).await?;
    check_present(&store, &acked).await?;
    check_present(&store, &more).await
}

#[tokio::test]
async fn embedded_torn_tail_is_cut_off() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = EmbeddedStore::open(dir.path()).await?;
    let acked = create_many(&store, "/registry/torn", 20).await?;
    let revision = store.current_revision().await?;
    store.close().await;
    let log = dir.path().join(LOG_FILE);
    let good_len = std::fs::metadata(&log)?.len();
    {
        let mut f = std::fs::OpenOptions::new().append(true).open(&log)?;
        // A frame header promising more than is there, as a crash mid-append leaves it.
        f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, b'g', b'a', b'r', b'b'])?;
    }
    let store = EmbeddedStore::open(dir.path()).await?;
    ensure!(store.current_revision().await? == revision);
    check_present(&store, &acked).await?;
    ensure!(
        std::fs::metadata(&log)?.len() == good_len,
        "torn tail not cut off"
    );
    let next = store.create("/registry/torn/after", b"x".to_vec()).await?;
    ensure!(next == revision + 1);
    store.close().await;
    let store = EmbeddedStore::open(dir.path()).await?;
    ensure!(store.get("/registry/torn/after").await?.0.is_some());
    Ok(())
}

#[tokio::test]
async fn embedded_corruption_is_reported() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = EmbeddedStore::open(dir.path()).await?;
    for i in 0..5 {
        store
            .create(&format!("/registry/c/{i}"), b"value".to_vec())
            .await?;
    }
    store.close().await;
    let log = dir.path().join(LOG_FILE);
    let mut data = std::fs::read(&log)?;
    data[12] ^= 0xff; // inside the first frame's payload; four valid frames follow
    std::fs::write(&log, &data)?;
    match EmbeddedStore::open(dir.path()).await {
        Err(StoreError::Corrupt(_)) => Ok(()),
        Err(e) => bail!("expected Corrupt, got {e}"),
        Ok(_) => bail!("a corrupt log opened"),
    }
}

/// Set in the child process of [`embedded_survives_sigkill`].
const CRASH_DIR_ENV: &str = "RKUBE_STORAGE_CRASH_DIR";

/// Child half of [`embedded_survives_sigkill`]: writes until killed, printing each
/// acknowledged write. Does nothing unless run by that test.
#[tokio::test]
#[ignore = "run as a child process by embedded_survives_sigkill"]
async fn crash_child_writer() -> anyhow::Result<()> {
    let Some(dir) = std::env::var_os(CRASH_DIR_ENV) else {
        return Ok(());
    };
    let store = EmbeddedStore::open(Path::new(&dir)).await?;
    let store = &store;
    let writers = (0..8).map(|w| async move {
        for i in 0.. {
            let key = format!("/registry/crash/{w}-{i:06}");
            let rev = store.create(&key, key.as_bytes().to_vec()).await?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "ACK {key} {rev}")?;
            out.flush()?;
        }
        anyhow::Ok(())
    });
    futures::future::try_join_all(writers).await?;
    Ok(())
}

#[tokio::test]
async fn embedded_survives_sigkill() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "crash_child_writer",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_DIR_ENV, dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no child stdout"))?;
    let reader = std::thread::spawn(move || {
        let mut acked = Vec::new();
        let mut killer = Some(child);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let mut parts = line.split(' ');
            if let (Some("ACK"), Some(key), Some(rev)) = (parts.next(), parts.next(), parts.next())
            {
                if let Ok(rev) = rev.parse::<i64>() {
                    acked.push((key.to_string(), rev));
                }
            }
            if acked.len() == 500 {
                if let Some(mut child) = killer.take() {
                    let _ = child.kill(); // SIGKILL, mid-commit
                    let _ = child.wait();
                }
            }
        }
        if let Some(mut child) = killer {
            let _ = child.kill();
            let _ = child.wait();
        }
        acked
    });
    let acked = reader
        .join()
        .map_err(|_| anyhow!("reader thread panicked"))?;
    ensure!(
        acked.len() >= 500,
        "child acknowledged only {} writes",
        acked.len()
    );
    let store = EmbeddedStore::open(dir.path()).await?;
    check_present(&store, &acked).await?;
    Ok(())
}
