//! Automatic compaction: the trigger, the data across it, and a failure
//! that must neither fail nor lose the commit that triggered it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chorus_core::FullPrefix;
use chorus_store::fault::{FaultBackend, FaultPlan, Faults};
use chorus_store::{AutoCompact, Options, Store, SyncMode, check};

fn fp() -> FullPrefix {
    FullPrefix::parse("auto/keys").expect("valid")
}

fn options(slack: u64, retry_after: Duration) -> Options {
    Options {
        create: true,
        sync: SyncMode::Never,
        auto_compact: Some(AutoCompact {
            slack_bytes: slack,
            retry_after,
            ..AutoCompact::default()
        }),
        ..Options::default()
    }
}

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn assert_equals_model(store: &Store, model: &Model) {
    let snap = store.snapshot().expect("snapshot");
    let got: Model = snap
        .iter_prefix(&fp())
        .map(|(k, e)| (k.as_bytes().to_vec(), e.value.to_vec()))
        .collect();
    assert_eq!(&got, model);
}

fn put(store: &Store, model: &mut Model, key: &str, value: &[u8]) {
    store
        .put(&fp(), key.as_bytes(), value)
        .expect("the commit succeeds");
    model.insert(key.as_bytes().to_vec(), value.to_vec());
}

#[test]
fn compacts_when_the_log_passes_its_threshold_and_keeps_the_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let slack = 8 << 10;
    let store = Store::open(dir.path(), options(slack, Duration::from_secs(1))).expect("open");
    let mut model = Model::new();
    let mut compactions = 0;
    let mut before = store.status().expect("status");
    for i in 0..5_000u64 {
        let key = format!("k{}", i % 40);
        let value = vec![(i % 251) as u8; 20 + (i % 7) as usize];
        if i % 13 == 0 {
            store.delete(&fp(), key.as_bytes()).expect("delete");
            model.remove(key.as_bytes());
        } else {
            put(&store, &mut model, &key, &value);
        }
        let after = store.status().expect("status");
        let threshold = after.compact_at.expect("on");
        // The rule holds after every commit: the committing process
        // compacted before it returned whenever the log passed it.
        assert!(
            after.log_bytes <= threshold,
            "commit {i}: log {} bytes, threshold {threshold}",
            after.log_bytes
        );
        if after.generation != before.generation {
            compactions += 1;
            // Not early: only the commit that crossed the threshold compacts
            // (one commit here is under 100 bytes).
            let before_threshold = before.compact_at.expect("on");
            assert!(
                before.log_bytes + 100 > before_threshold,
                "commit {i} compacted a log of {} bytes, threshold {before_threshold}",
                before.log_bytes
            );
            assert_eq!(after.generation, before.generation + 1);
        }
        before = after;
    }
    assert!(compactions >= 10, "only {compactions} compactions");
    let stats = store.write_stats();
    assert_eq!(stats.auto_compactions, compactions);
    assert_eq!(stats.auto_compaction_failures, 0);
    let status = store.status().expect("status");
    assert_eq!(status.auto_compactions, compactions);
    assert!(status.last_auto_compaction.is_some());
    assert!(status.longest_auto_compaction >= status.last_auto_compaction);
    assert_equals_model(&store, &model);
    drop(store);
    let reopened = Store::open(dir.path(), options(slack, Duration::from_secs(1))).expect("open");
    assert_equals_model(&reopened, &model);
    assert!(
        check(dir.path(), &Options::default())
            .expect("check")
            .is_healthy()
    );
}

#[test]
fn off_means_never() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(
        dir.path(),
        Options {
            auto_compact: None,
            ..options(0, Duration::from_secs(1))
        },
    )
    .expect("open");
    for i in 0..2_000u64 {
        store.put(&fp(), b"k", &i.to_le_bytes()).expect("put");
    }
    let status = store.status().expect("status");
    assert_eq!(status.generation, 1);
    assert_eq!(status.compact_at, None);
    assert_eq!(status.auto_compactions, 0);
}

#[test]
fn the_default_threshold_is_twice_the_live_bytes_plus_64_mib() {
    let auto = AutoCompact::default();
    assert_eq!(auto.threshold(0), 64 << 20);
    assert_eq!(auto.threshold(1000), 2000 + (64 << 20));
    assert_eq!(auto.threshold(u64::MAX), u64::MAX);
    assert_eq!(Options::default().auto_compact, Some(auto));
}

/// Another process's compaction is followed without reloading: the state
/// it keeps is the one it had (same data), at the new generation.
#[test]
fn another_handle_follows_a_compaction_and_sees_the_same_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let writer = Store::open(dir.path(), options(4 << 10, Duration::from_secs(1))).expect("open");
    let reader = Store::open(dir.path(), options(4 << 10, Duration::from_secs(1))).expect("open");
    let mut model = Model::new();
    for i in 0..3_000u64 {
        put(
            &writer,
            &mut model,
            &format!("k{}", i % 25),
            &i.to_le_bytes(),
        );
        if i % 7 == 0 {
            assert_equals_model(&reader, &model);
            assert_eq!(
                reader.snapshot().expect("snapshot").generation(),
                writer.snapshot().expect("snapshot").generation()
            );
        }
    }
    assert!(writer.write_stats().auto_compactions > 5);
    assert_equals_model(&reader, &model);
    let a = reader.snapshot().expect("snapshot");
    let b = writer.snapshot().expect("snapshot");
    assert_eq!(a.prefix_hash(&fp()), b.prefix_hash(&fp()));
    assert_eq!(a.seq(), b.seq());
}

fn fault_store(dir: &Path, retry_after: Duration) -> (Store, Faults) {
    let (backend, faults) = FaultBackend::new();
    let store = Store::open(
        dir,
        Options {
            sync: SyncMode::Always,
            backend: Arc::new(backend),
            ..options(4 << 10, retry_after)
        },
    )
    .expect("open");
    (store, faults)
}

/// Commits until one triggers a compaction that fails: each commit's own
/// sync passes and every sync after it fails, as on a disk with no room
/// for a new generation. Returns how many commits it made.
fn until_a_compaction_fails(store: &Store, faults: &Faults, model: &mut Model) -> u64 {
    let mut i = 0u64;
    while store.write_stats().auto_compaction_failures == 0 {
        faults.set(FaultPlan {
            fail_sync_after: Some(1),
            ..FaultPlan::default()
        });
        put(store, model, &format!("k{}", i % 20), &i.to_le_bytes());
        i += 1;
        assert!(i < 10_000, "no compaction was ever attempted");
    }
    i
}

#[test]
fn a_failing_sync_during_auto_compaction_fails_no_commit_and_is_retried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let retry_after = Duration::from_millis(300);
    let (store, faults) = fault_store(dir.path(), retry_after);
    let mut model = Model::new();
    let mut i = until_a_compaction_fails(&store, &faults, &mut model);
    faults.clear();
    assert!(faults.counts().syncs_failed > 0);
    let status = store.status().expect("status");
    assert_eq!(
        status.generation, 1,
        "the failed compaction switched nothing"
    );
    assert_eq!(status.auto_compaction_failures, 1);
    assert_eq!(status.auto_compactions, 0);
    assert!(status.log_bytes > status.compact_at.expect("on"));
    assert_equals_model(&store, &model);

    // Within the back-off, commits go on and nothing is attempted.
    for _ in 0..5 {
        put(
            &store,
            &mut model,
            &format!("k{}", i % 20),
            &i.to_le_bytes(),
        );
        i += 1;
    }
    assert_eq!(store.write_stats().auto_compaction_failures, 1);
    assert_eq!(store.status().expect("status").generation, 1);

    // After it, the next commit compacts.
    std::thread::sleep(retry_after + Duration::from_millis(50));
    put(
        &store,
        &mut model,
        &format!("k{}", i % 20),
        &i.to_le_bytes(),
    );
    let status = store.status().expect("status");
    assert_eq!(status.generation, 2);
    assert_eq!(status.auto_compactions, 1);
    assert_eq!(status.auto_compaction_failures, 0);
    assert!(status.log_bytes <= status.compact_at.expect("on"));
    assert_equals_model(&store, &model);
    drop(store);
    let (reopened, _) = fault_store(dir.path(), retry_after);
    assert_equals_model(&reopened, &model);
    assert!(
        check(dir.path(), &Options::default())
            .expect("check")
            .is_healthy()
    );
}

#[test]
fn a_full_disk_backs_off_instead_of_compacting_at_every_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let retry_after = Duration::from_secs(60);
    let (store, faults) = fault_store(dir.path(), retry_after);
    let mut model = Model::new();
    let first = until_a_compaction_fails(&store, &faults, &mut model);
    for i in first..first + 200 {
        faults.set(FaultPlan {
            fail_sync_after: Some(1),
            ..FaultPlan::default()
        });
        put(
            &store,
            &mut model,
            &format!("k{}", i % 20),
            &i.to_le_bytes(),
        );
    }
    assert_eq!(
        store.write_stats().auto_compaction_failures,
        1,
        "one attempt per back-off, not one per commit"
    );
    faults.clear();
    assert_equals_model(&store, &model);
}
