//! One behaviour suite for every [`Store`] backend, so the embedded store and etcd agree.
//!
//! Each case writes under its own fresh prefix and judges revisions relative to the ones
//! it observes, so cases can share one store (one etcd) and run in any order — except
//! [`compaction`], which compacts the whole store and so runs last in [`run_all`].
//! Cases return an error describing the first broken expectation.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context};
use futures::StreamExt;

use super::{KeyValue, RangeOptions, Revision, Store, StoreError, WatchEvent, WatchStream};

/// How long a case waits for an expected watch event.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a case watches to be sure no further event comes.
const QUIET_TIME: Duration = Duration::from_millis(300);

/// Runs every case against `store`, compaction last.
pub async fn run_all(store: &dyn Store) -> anyhow::Result<()> {
    crud(store, &fresh_prefix("crud"))
        .await
        .context("case crud")?;
    range_prefix_and_pagination(store, &fresh_prefix("range"))
        .await
        .context("case range_prefix_and_pagination")?;
    range_at_revision(store, &fresh_prefix("past"))
        .await
        .context("case range_at_revision")?;
    watch_replay(store, &fresh_prefix("replay"))
        .await
        .context("case watch_replay")?;
    watch_live(store, &fresh_prefix("live"))
        .await
        .context("case watch_live")?;
    concurrent_creates(store, &fresh_prefix("concurrent"), 200)
        .await
        .context("case concurrent_creates")?;
    large_range(store, &fresh_prefix("large"))
        .await
        .context("case large_range")?;
    compaction(store, &fresh_prefix("compact"))
        .await
        .context("case compaction")?;
    Ok(())
}

/// A range whose answer is far larger than one gRPC message's default limit (4 MiB):
/// a list of every pod of a big cluster must still work.
pub async fn large_range(store: &dyn Store, base: &str) -> anyhow::Result<()> {
    let value = vec![b'x'; 16 * 1024];
    let n = 400;
    let creates = (0..n).map(|i| {
        let key = format!("{base}/{i:04}");
        let value = value.clone();
        async move { store.create(&key, value).await }
    });
    for result in futures::future::join_all(creates).await {
        result?;
    }
    let listed = store.range(&format!("{base}/"), RangeOptions::default()).await?;
    ensure!(listed.kvs.len() == n, "listed {} of {n} keys", listed.kvs.len());
    ensure!(listed.kvs.iter().all(|kv| kv.value.len() == value.len()), "a value came back truncated");
    Ok(())
}

/// A prefix no earlier run used: `/registry/conformance-<random>/<name>`.
pub fn fresh_prefix(name: &str) -> String {
    format!(
        "/registry/conformance-{}/{name}",
        uuid::Uuid::new_v4().simple()
    )
}

/// The next non-progress event of `stream`.
pub async fn next_event(stream: &mut WatchStream) -> anyhow::Result<WatchEvent> {
    loop {
        let item = tokio::time::timeout(EVENT_TIMEOUT, stream.next())
            .await
            .map_err(|_| anyhow!("no watch event within {EVENT_TIMEOUT:?}"))?;
        match item {
            None => bail!("watch stream ended"),
            Some(Err(e)) => return Err(anyhow!(e).context("watch stream failed")),
            Some(Ok(WatchEvent::Progress { .. })) => continue,
            Some(Ok(event)) => return Ok(event),
        }
    }
}

/// Fails if `stream` yields anything but progress for a short while.
pub async fn expect_quiet(stream: &mut WatchStream) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + QUIET_TIME;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => return Ok(()),
            Ok(Some(Ok(WatchEvent::Progress { .. }))) => continue,
            Ok(other) => bail!("expected no more watch events, got {other:?}"),
        }
    }
}

fn expect_put(
    event: &WatchEvent,
    key: &str,
    rev: Revision,
    prev_rev: Option<Revision>,
) -> anyhow::Result<()> {
    match event {
        WatchEvent::Put { kv, prev } if kv.key == key && kv.mod_revision == rev => {
            ensure!(
                prev.as_ref().map(|p| p.mod_revision) == prev_rev,
                "put of {key} at {rev}: prev is {prev:?}, expected mod revision {prev_rev:?}"
            );
            Ok(())
        }
        other => bail!("expected put of {key} at {rev}, got {other:?}"),
    }
}

fn expect_delete(
    event: &WatchEvent,
    key: &str,
    rev: Revision,
    prev_rev: Revision,
) -> anyhow::Result<()> {
    match event {
        WatchEvent::Delete { prev, revision } if prev.key == key && *revision == rev => {
            ensure!(
                prev.mod_revision == prev_rev,
                "delete of {key}: prev is {prev:?}, expected mod {prev_rev}"
            );
            Ok(())
        }
        other => bail!("expected delete of {key} at {rev}, got {other:?}"),
    }
}

fn keys(kvs: &[KeyValue]) -> Vec<&str> {
    kvs.iter().map(|kv| kv.key.as_str()).collect()
}

/// Create, get, update with compare-and-swap, delete with and without an expected
/// revision; versions and create/mod revisions.
pub async fn crud(store: &dyn Store, base: &str) -> anyhow::Result<()> {
    let key = format!("{base}/k");
    let start = store.current_revision().await?;
    ensure!(start >= 1, "a store starts at revision 1, got {start}");
    let (missing, _) = store.get(&key).await?;
    ensure!(missing.is_none(), "fresh key exists: {missing:?}");

    let r1 = store.create(&key, b"one".to_vec()).await?;
    ensure!(r1 > start, "create revision {r1} not after {start}");
    let (kv, read_rev) = store.get(&key).await?;
    let kv = kv.ok_or_else(|| anyhow!("created key missing"))?;
    ensure!(
        read_rev >= r1,
        "get revision {read_rev} before the create {r1}"
    );
    ensure!(
        kv == KeyValue {
            key: key.clone(),
            value: b"one".to_vec(),
            create_revision: r1,
            mod_revision: r1,
            version: 1
        },
        "after create: {kv:?}"
    );
    match store.create(&key, b"again".to_vec()).await {
        Err(StoreError::AlreadyExists { key: k }) if k == key => {}
        other => bail!("second create: expected AlreadyExists, got {other:?}"),
    }

    match store.update(&key, b"stale".to_vec(), r1 - 1).await {
        Err(StoreError::Conflict {
            expected,
            current: Some(cur),
            ..
        }) if expected == r1 - 1 && cur.mod_revision == r1 => {}
        other => bail!("update with a stale revision: expected Conflict, got {other:?}"),
    }
    let r2 = store.update(&key, b"two".to_vec(), r1).await?;
    ensure!(r2 > r1, "update revision {r2} not after {r1}");
    let kv = store
        .get(&key)
        .await?
        .0
        .ok_or_else(|| anyhow!("updated key missing"))?;
    ensure!(
        kv.value == b"two" && kv.create_revision == r1 && kv.mod_revision == r2 && kv.version == 2,
        "after update: {kv:?}"
    );
    match store
        .update(&format!("{base}/absent"), b"x".to_vec(), r1)
        .await
    {
        Err(StoreError::NotFound { .. }) => {}
        other => bail!("update of a missing key: expected NotFound, got {other:?}"),
    }

    match store.delete(&key, Some(r1)).await {
        Err(StoreError::Conflict {
            current: Some(cur), ..
        }) if cur.mod_revision == r2 => {}
        other => bail!("delete with a stale revision: expected Conflict, got {other:?}"),
    }
    let (prev, r3) = store.delete(&key, Some(r2)).await?;
    ensure!(r3 > r2, "delete revision {r3} not after {r2}");
    ensure!(
        prev.mod_revision == r2 && prev.value == b"two" && prev.version == 2,
        "deleted value: {prev:?}"
    );
    ensure!(
        store.get(&key).await?.0.is_none(),
        "deleted key still there"
    );
    match store.delete(&key, None).await {
        Err(StoreError::NotFound { .. }) => {}
        other => bail!("delete of a missing key: expected NotFound, got {other:?}"),
    }

    // A re-created key starts over.
    let r4 = store.create(&key, b"three".to_vec()).await?;
    let kv = store
        .get(&key)
        .await?
        .0
        .ok_or_else(|| anyhow!("re-created key missing"))?;
    ensure!(
        kv.create_revision == r4 && kv.version == 1,
        "after re-create: {kv:?}"
    );
    let (prev, r5) = store.delete(&key, None).await?;
    ensure!(
        prev.mod_revision == r4 && r5 > r4,
        "unconditional delete: {prev:?} at {r5}"
    );
    let now = store.current_revision().await?;
    ensure!(
        now >= r5,
        "current revision {now} before the last write {r5}"
    );
    Ok(())
}

/// Prefix isolation (`pods/` vs `podsx`), limits and `start_after` continuations.
pub async fn range_prefix_and_pagination(store: &dyn Store, base: &str) -> anyhow::Result<()> {
    let pods = format!("{base}/pods/");
    for name in ["e", "b", "a", "d", "c"] {
        store
            .create(&format!("{pods}{name}"), name.as_bytes().to_vec())
            .await?;
    }
    store
        .create(&format!("{base}/podsx"), b"x".to_vec())
        .await?;
    let last = store
        .create(&format!("{base}/podsx/z"), b"x".to_vec())
        .await?;
    store.create(&format!("{base}/pod"), b"x".to_vec()).await?;

    let all = store.range(&pods, RangeOptions::default()).await?;
    let want: Vec<String> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|n| format!("{pods}{n}"))
        .collect();
    ensure!(keys(&all.kvs) == want, "range {pods}: {:?}", keys(&all.kvs));
    ensure!(
        !all.more && all.remaining == 5,
        "full range: more={} remaining={}",
        all.more,
        all.remaining
    );
    ensure!(
        all.revision >= last,
        "range revision {} before the writes",
        all.revision
    );

    let page1 = store
        .range(
            &pods,
            RangeOptions {
                limit: Some(2),
                ..Default::default()
            },
        )
        .await?;
    ensure!(
        keys(&page1.kvs) == want[..2],
        "page 1: {:?}",
        keys(&page1.kvs)
    );
    ensure!(
        page1.more && page1.remaining == 5,
        "page 1: more={} remaining={}",
        page1.more,
        page1.remaining
    );
    let page2 = store
        .range(
            &pods,
            RangeOptions {
                limit: Some(2),
                start_after: Some(want[1].clone()),
                revision: Some(page1.revision),
            },
        )
        .await?;
    ensure!(
        keys(&page2.kvs) == want[2..4],
        "page 2: {:?}",
        keys(&page2.kvs)
    );
    ensure!(
        page2.more && page2.remaining == 3,
        "page 2: more={} remaining={}",
        page2.more,
        page2.remaining
    );
    ensure!(
        page2.revision == page1.revision,
        "page 2 read at {} not {}",
        page2.revision,
        page1.revision
    );
    let page3 = store
        .range(
            &pods,
            RangeOptions {
                limit: Some(2),
                start_after: Some(want[3].clone()),
                revision: Some(page1.revision),
            },
        )
        .await?;
    ensure!(
        keys(&page3.kvs) == want[4..],
        "page 3: {:?}",
        keys(&page3.kvs)
    );
    ensure!(
        !page3.more && page3.remaining == 1,
        "page 3: more={} remaining={}",
        page3.more,
        page3.remaining
    );

    let unlimited = store
        .range(
            &pods,
            RangeOptions {
                limit: Some(0),
                ..Default::default()
            },
        )
        .await?;
    ensure!(unlimited.kvs.len() == 5, "limit 0 means no limit");
    let podsx = store
        .range(&format!("{base}/podsx/"), RangeOptions::default())
        .await?;
    ensure!(
        keys(&podsx.kvs) == [format!("{base}/podsx/z")],
        "podsx/: {:?}",
        keys(&podsx.kvs)
    );
    let none = store
        .range(&format!("{base}/nothing/"), RangeOptions::default())
        .await?;
    ensure!(
        none.kvs.is_empty() && none.remaining == 0 && !none.more,
        "empty range: {none:?}"
    );
    Ok(())
}

/// Reads at past revisions see the store as it was; future revisions fail.
pub async fn range_at_revision(store: &dyn Store, base: &str) -> anyhow::Result<()> {
    let (k1, k2) = (format!("{base}/1"), format!("{base}/2"));
    let r1 = store.create(&k1, b"v1".to_vec()).await?;
    let r2 = store.update(&k1, b"v2".to_vec(), r1).await?;
    let r3 = store.create(&k2, b"w".to_vec()).await?;
    let (_, r4) = store.delete(&k1, None).await?;
    let at = |rev: Revision| RangeOptions {
        revision: Some(rev),
        ..Default::default()
    };
    let expect = [
        (r1 - 1, vec![]),
        (r1, vec![(k1.as_str(), b"v1".as_slice())]),
        (r2, vec![(k1.as_str(), b"v2".as_slice())]),
        (
            r3,
            vec![
                (k1.as_str(), b"v2".as_slice()),
                (k2.as_str(), b"w".as_slice()),
            ],
        ),
        (r4, vec![(k2.as_str(), b"w".as_slice())]),
    ];
    for (rev, want) in expect {
        let got = store.range(&format!("{base}/"), at(rev)).await?;
        let got_pairs: Vec<(&str, &[u8])> = got
            .kvs
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.as_slice()))
            .collect();
        ensure!(got_pairs == want, "range at {rev}: {got_pairs:?}");
        ensure!(
            got.revision == rev,
            "range at {rev} says it read at {}",
            got.revision
        );
    }
    let now = store.current_revision().await?;
    match store.range(&format!("{base}/"), at(now + 1000)).await {
        Err(StoreError::FutureRevision { .. }) => {}
        other => bail!("range at a future revision: expected FutureRevision, got {other:?}"),
    }
    Ok(())
}

/// A watch from a past revision replays exactly the later events under its prefix, in
/// order, then continues live; deletes carry the previous value.
pub async fn watch_replay(store: &dyn Store, base: &str) -> anyhow::Result<()> {
    let prefix = format!("{base}/w/");
    let (a, b, c) = (
        format!("{prefix}a"),
        format!("{prefix}b"),
        format!("{prefix}c"),
    );
    let r0 = store.current_revision().await?;
    let r1 = store.create(&a, b"1".to_vec()).await?;
    store
        .create(&format!("{base}/wx"), b"noise".to_vec())
        .await?;
    let r2 = store.update(&a, b"2".to_vec(), r1).await?;
    let r3 = store.create(&b, b"1".to_vec()).await?;
    let (_, r4) = store.delete(&a, Some(r2)).await?;

    let mut all = store.watch(&prefix, r0).await?;
    expect_put(&next_event(&mut all).await?, &a, r1, None)?;
    expect_put(&next_event(&mut all).await?, &a, r2, Some(r1))?;
    expect_put(&next_event(&mut all).await?, &b, r3, None)?;
    let event = next_event(&mut all).await?;
    expect_delete(&event, &a, r4, r2)?;
    if let WatchEvent::Delete { prev, .. } = &event {
        ensure!(prev.value == b"2", "delete event carries {prev:?}");
    }
    expect_quiet(&mut all).await?;

    let mut later = store.watch(&prefix, r2).await?;
    expect_put(&next_event(&mut later).await?, &b, r3, None)?;
    expect_delete(&next_event(&mut later).await?, &a, r4, r2)?;
    expect_quiet(&mut later).await?;

    // Both continue with live events, without gap or repeat.
    let r5 = store.create(&c, b"1".to_vec()).await?;
    expect_put(&next_event(&mut all).await?, &c, r5, None)?;
    expect_put(&next_event(&mut later).await?, &c, r5, None)?;
    expect_quiet(&mut all).await?;

    // Watching from the current revision replays nothing.
    let mut now = store.watch(&prefix, r5).await?;
    expect_quiet(&mut now).await?;
    Ok(())
}

/// Writes made while a watch is open arrive in order.
pub async fn watch_live(store: &dyn Store, base: &str) -> anyhow::Result<()> {
    let prefix = format!("{base}/");
    let key = format!("{prefix}k");
    let start = store.current_revision().await?;
    let mut stream = store.watch(&prefix, start).await?;
    const UPDATES: usize = 20;
    let writer = async {
        let mut revs = vec![store.create(&key, b"0".to_vec()).await?];
        for i in 1..UPDATES {
            let last = revs[revs.len() - 1];
            revs.push(store.update(&key, i.to_string().into_bytes(), last).await?);
        }
        let last = revs[revs.len() - 1];
        revs.push(store.delete(&key, Some(last)).await?.1);
        anyhow::Ok(revs)
    };
    let reader = async {
        let mut events = Vec::new();
        for _ in 0..=UPDATES {
            events.push(next_event(&mut stream).await?);
        }
        anyhow::Ok(events)
    };
    let (revs, events) = futures::try_join!(writer, reader)?;
    for (i, (event, rev)) in events.iter().zip(&revs).enumerate() {
        if i == UPDATES {
            expect_delete(event, &key, *rev, revs[i - 1])?;
        } else {
            expect_put(event, &key, *rev, i.checked_sub(1).map(|p| revs[p]))?;
        }
    }
    expect_quiet(&mut stream).await
}

/// `n` concurrent creates are all acknowledged, at distinct revisions, and all stored.
pub async fn concurrent_creates(store: &dyn Store, base: &str, n: usize) -> anyhow::Result<()> {
    let creates = (0..n).map(|i| {
        let key = format!("{base}/{i:04}");
        async move { store.create(&key, key.as_bytes().to_vec()).await }
    });
    let results = futures::future::join_all(creates).await;
    let mut revs = BTreeSet::new();
    for (i, result) in results.into_iter().enumerate() {
        let rev = result.with_context(|| format!("create {i}"))?;
        ensure!(revs.insert(rev), "revision {rev} acknowledged twice");
    }
    let listed = store
        .range(&format!("{base}/"), RangeOptions::default())
        .await?;
    ensure!(
        listed.kvs.len() == n,
        "{} of {n} keys stored",
        listed.kvs.len()
    );
    let stored: BTreeSet<Revision> = listed.kvs.iter().map(|kv| kv.mod_revision).collect();
    ensure!(
        stored == revs,
        "stored revisions differ from acknowledged ones"
    );
    Ok(())
}

/// Compaction: older ranges and watches fail with `Compacted`, the compacted revision
/// itself stays readable and watchable, re-compacting lower is a no-op, compacting the
/// future fails. Compacts the whole store.
pub async fn compaction(store: &dyn Store, base: &str) -> anyhow::Result<()> {
    let key = format!("{base}/k");
    let r1 = store.create(&key, b"1".to_vec()).await?;
    let r2 = store.update(&key, b"2".to_vec(), r1).await?;
    let r3 = store.update(&key, b"3".to_vec(), r2).await?;
    store.compact(r2).await?;
    let compacted = store.compacted_revision().await?;
    ensure!(
        compacted == r2,
        "compacted revision is {compacted}, compacted at {r2}"
    );

    let at = |rev: Revision| RangeOptions {
        revision: Some(rev),
        ..Default::default()
    };
    match store.range(&format!("{base}/"), at(r1)).await {
        Err(StoreError::Compacted {
            requested,
            compacted,
        }) if requested == r1 && compacted == r2 => {}
        other => bail!("range below the compacted revision: expected Compacted, got {other:?}"),
    }
    let at_r2 = store.range(&format!("{base}/"), at(r2)).await?;
    ensure!(
        at_r2.kvs.len() == 1 && at_r2.kvs[0].value == b"2",
        "range at the compacted revision: {at_r2:?}"
    );
    let latest = store
        .range(&format!("{base}/"), RangeOptions::default())
        .await?;
    ensure!(
        latest.kvs.len() == 1 && latest.kvs[0].mod_revision == r3,
        "latest after compaction: {latest:?}"
    );

    match store.watch(&format!("{base}/"), r1 - 1).await {
        Err(StoreError::Compacted { .. }) => {}
        Ok(mut s) => bail!(
            "watch from below the compacted revision succeeded: {:?}",
            s.next().await
        ),
        Err(e) => bail!("watch below the compacted revision: expected Compacted, got {e:?}"),
    }
    let mut from_compacted = store.watch(&format!("{base}/"), r2 - 1).await?;
    // etcd cannot give this event's prev (it is below the compaction): check the rest.
    let event = next_event(&mut from_compacted).await?;
    ensure!(
        matches!(&event, WatchEvent::Put { kv, .. } if kv.key == key && kv.mod_revision == r2),
        "watch from the compacted revision: expected the put at {r2}, got {event:?}"
    );
    let mut after = store.watch(&format!("{base}/"), r2).await?;
    expect_put(&next_event(&mut after).await?, &key, r3, Some(r2))?;

    store
        .compact(r1)
        .await
        .context("compacting below the compacted revision")?;
    ensure!(
        store.compacted_revision().await? == r2,
        "a lower compaction moved the compacted revision"
    );
    let now = store.current_revision().await?;
    match store.compact(now + 1000).await {
        Err(StoreError::FutureRevision { .. }) => {}
        other => bail!("compacting a future revision: expected FutureRevision, got {other:?}"),
    }
    Ok(())
}
