//! A real store on the in-memory file system (`MemFs`), as the simulator runs
//! it: commits survive a crash once acknowledged, a torn crash leaves a
//! prefix of them, faults apply to it, the clock is the store's own, and
//! nothing touches the disk.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chorus_core::FullPrefix;
use chorus_core::object::Hlc;
use chorus_store::fault::{FaultBackend, FaultPlan};
use chorus_store::{Backend, Clock, Error, MemFs, NodeId, Options, Store, SyncMode};

fn fp() -> FullPrefix {
    FullPrefix::parse("sim/mem").expect("valid")
}

/// A path under a real temporary directory that must never be created.
struct NoDisk {
    _tmp: tempfile::TempDir,
    path: PathBuf,
}

impl NoDisk {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("node");
        NoDisk { _tmp: tmp, path }
    }
}

impl Drop for NoDisk {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            assert!(
                !self.path.exists(),
                "a store on MemFs created {} on the real disk",
                self.path.display()
            );
        }
    }
}

fn options(backend: Arc<dyn Backend>, sync: SyncMode) -> Options {
    Options {
        create: true,
        sync,
        backend,
        ..Options::default()
    }
}

fn open(fs: &MemFs, dir: &Path, sync: SyncMode) -> Store {
    Store::open(dir, options(Arc::new(fs.clone()), sync)).expect("open on MemFs")
}

/// The keys in the store, sorted.
fn keys(store: &Store) -> Vec<String> {
    let snap = store.snapshot().expect("snapshot");
    let mut keys: Vec<String> = snap
        .iter_prefix(&fp())
        .map(|(k, _)| String::from_utf8_lossy(k.as_bytes()).into_owned())
        .collect();
    keys.sort();
    keys
}

fn key(i: usize) -> String {
    format!("k{i:04}")
}

#[test]
fn a_store_on_memfs_opens_commits_reads_and_reopens() {
    let disk = NoDisk::new();
    let fs = MemFs::new();
    let store = open(&fs, &disk.path, SyncMode::Always);
    let node = store.node_id();
    store.put(&fp(), b"port", b"8080").expect("put");
    assert_eq!(
        store.get(&fp(), b"port").expect("get").as_deref(),
        Some(&b"8080"[..])
    );
    let status = store.status().expect("status");
    assert_eq!(status.keys, 1);
    assert_eq!(status.lock_holder, None);
    drop(store);
    let store = open(&fs, &disk.path, SyncMode::Always);
    assert_eq!(store.node_id(), node);
    assert_eq!(keys(&store), ["port"]);
    store.compact().expect("compact");
    drop(store);
    let store = Store::open(
        &disk.path,
        Options {
            backend: Arc::new(fs.clone()),
            ..Options::default()
        },
    )
    .expect("open without create");
    assert_eq!(keys(&store), ["port"]);
    assert!(fs.bytes_used() > 0);
    let err = Store::open(
        &disk.path.join("other"),
        Options {
            backend: Arc::new(fs.clone()),
            ..Options::default()
        },
    )
    .expect_err("nothing there");
    assert!(matches!(err, Error::NotInitialized { .. }), "{err}");
}

#[test]
fn two_handles_on_one_memfs_see_each_others_commits() {
    let disk = NoDisk::new();
    let fs = MemFs::new();
    let a = open(&fs, &disk.path, SyncMode::Always);
    let b = open(&fs, &disk.path, SyncMode::Batch);
    a.put(&fp(), b"from-a", b"1").expect("put a");
    b.put(&fp(), b"from-b", b"2").expect("put b");
    assert_eq!(keys(&a), ["from-a", "from-b"]);
    assert_eq!(keys(&b), ["from-a", "from-b"]);
    assert_eq!(a.node_id(), b.node_id());
}

#[test]
fn a_crash_keeps_every_acknowledged_commit_and_invents_nothing() {
    for sync in [SyncMode::Always, SyncMode::Batch] {
        let disk = NoDisk::new();
        let fs = MemFs::new();
        let store = open(&fs, &disk.path, sync);
        let mut acked = BTreeSet::new();
        // Threads, so that Batch shares frames and syncs between commits.
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|t| {
                    let store = store.clone();
                    s.spawn(move || {
                        (0..25)
                            .map(|i| {
                                let k = key(t * 25 + i);
                                store.put(&fp(), k.as_bytes(), b"v").expect("put");
                                k
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for h in handles {
                acked.extend(h.join().expect("writer"));
            }
        });
        let seq = store.snapshot().expect("snapshot").seq();
        drop(store);
        fs.crash(None);
        let store = open(&fs, &disk.path, sync);
        let after: BTreeSet<String> = keys(&store).into_iter().collect();
        assert_eq!(after, acked, "{sync:?}");
        assert_eq!(store.snapshot().expect("snapshot").seq(), seq);
    }
}

#[test]
fn a_crash_loses_what_was_never_synced() {
    let disk = NoDisk::new();
    let fs = MemFs::new();
    let store = open(&fs, &disk.path, SyncMode::Always);
    store.put(&fp(), b"synced", b"1").expect("put");
    drop(store);
    let store = open(&fs, &disk.path, SyncMode::Never);
    store.put(&fp(), b"unsynced", b"2").expect("put");
    assert_eq!(keys(&store), ["synced", "unsynced"]);
    drop(store);
    fs.crash(None);
    let store = open(&fs, &disk.path, SyncMode::Always);
    assert_eq!(keys(&store), ["synced"]);
}

#[test]
fn a_torn_crash_leaves_a_prefix_of_the_commits() {
    let mut kept = BTreeSet::new();
    for seed in 0..40 {
        let disk = NoDisk::new();
        let fs = MemFs::new();
        let store = open(&fs, &disk.path, SyncMode::Always);
        store
            .put(&fp(), key(0).as_bytes(), b"durable")
            .expect("put");
        drop(store);
        let store = open(&fs, &disk.path, SyncMode::Never);
        let value = vec![b'x'; 100];
        for i in 1..30 {
            store.put(&fp(), key(i).as_bytes(), &value).expect("put");
        }
        drop(store);
        fs.crash(Some(seed));
        let store = open(&fs, &disk.path, SyncMode::Always);
        let after = keys(&store);
        let prefix: Vec<String> = (0..after.len()).map(key).collect();
        assert_eq!(after, prefix, "seed {seed}: a prefix of the commits");
        assert!(!after.is_empty(), "seed {seed}: the synced commit stays");
        kept.insert(after.len());
        // The torn tail was cut: writing and crashing again works.
        store
            .put(&fp(), b"later", b"1")
            .expect("put after recovery");
        drop(store);
        fs.crash(Some(seed));
        let store = open(&fs, &disk.path, SyncMode::Always);
        assert_eq!(keys(&store).len(), after.len() + 1, "seed {seed}");
    }
    assert!(
        kept.len() > 3,
        "the seeds keep different prefixes: {kept:?}"
    );
}

#[test]
fn a_full_disk_on_memfs_says_so_and_changes_nothing() {
    let disk = NoDisk::new();
    let fs = MemFs::new();
    let (backend, faults) = FaultBackend::over(Arc::new(fs.clone()));
    let store = Store::open(&disk.path, options(Arc::new(backend), SyncMode::Always))
        .expect("open over MemFs");
    store.put(&fp(), b"ok", b"1").expect("healthy commit");
    let before = store.snapshot().expect("snapshot").seq();
    faults.set(FaultPlan {
        space_left: Some(20),
        ..FaultPlan::default()
    });
    // Larger than the space written ahead, so the file must grow.
    let big = vec![b'v'; 200 << 10];
    let err = store
        .put(&fp(), b"bad", &big)
        .expect_err("the disk is full");
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(err.to_string().contains("the disk is full"), "{err}");
    faults.clear();
    assert_eq!(store.snapshot().expect("snapshot").seq(), before);
    assert_eq!(keys(&store), ["ok"]);
    faults.set(FaultPlan {
        fail_sync: true,
        ..FaultPlan::default()
    });
    let err = store.put(&fp(), b"bad", b"1").expect_err("the sync fails");
    assert!(err.to_string().contains("fsync failed"), "{err}");
    faults.clear();
    assert_eq!(faults.counts().syncs_failed, 1);
    drop(store);
    fs.crash(None);
    let store = open(&fs, &disk.path, SyncMode::Always);
    assert_eq!(keys(&store), ["ok"]);
}

#[test]
fn commit_timestamps_follow_the_stores_clock() {
    let disk = NoDisk::new();
    let fs = MemFs::new();
    // 2001-09-09, far behind the real clock.
    let now = Arc::new(AtomicU64::new(1_000_000_000_000));
    let clock = {
        let now = now.clone();
        Clock::new(move || now.load(Ordering::Relaxed))
    };
    let options = Options {
        clock,
        ..options(Arc::new(fs.clone()), SyncMode::Always)
    };
    let store = Store::open(&disk.path, options.clone()).expect("open");
    let first = store.put(&fp(), b"a", b"1").expect("put");
    assert_eq!(Hlc(first.ts).ms(), 1_000_000_000_000, "{:?}", Hlc(first.ts));
    now.store(1_000_000_005_000, Ordering::Relaxed);
    let later = store.put(&fp(), b"b", b"1").expect("put");
    assert_eq!(Hlc(later.ts).ms(), 1_000_000_005_000);
    // The clock jumps back: timestamps do not.
    now.store(999_000_000_000, Ordering::Relaxed);
    let after_jump = store.put(&fp(), b"c", b"1").expect("put");
    assert!(after_jump.ts > later.ts);
    assert_eq!(Hlc(after_jump.ts).ms(), 1_000_000_005_000);
    drop(store);
    let store = Store::open(&disk.path, options).expect("reopen");
    let reopened = store.put(&fp(), b"d", b"1").expect("put");
    assert!(reopened.ts > after_jump.ts, "not behind after reopening");
}

#[test]
fn a_copy_is_the_same_node_with_its_own_future() {
    let disk = NoDisk::new();
    let fs = MemFs::new();
    let store = open(&fs, &disk.path, SyncMode::Always);
    store.put(&fp(), b"shared", b"1").expect("put");
    let copy = fs.copy();
    let twin = open(&copy, &disk.path, SyncMode::Always);
    assert_eq!(twin.node_id(), store.node_id());
    twin.put(&fp(), b"only-in-copy", b"1").expect("put");
    store.put(&fp(), b"only-in-original", b"1").expect("put");
    assert_eq!(keys(&store), ["only-in-original", "shared"]);
    assert_eq!(keys(&twin), ["only-in-copy", "shared"]);
}

#[test]
fn a_node_id_written_before_init_is_kept() {
    // How a simulator gives its nodes deterministic ids.
    let disk = NoDisk::new();
    let fs = MemFs::new();
    let id = NodeId::from_bytes([7; 16]);
    fs.create_dir_all(&disk.path).expect("mkdir");
    let file = fs.create(&disk.path.join("node-id")).expect("create");
    file.write_all_at(format!("{id}\n").as_bytes(), 0)
        .expect("write");
    file.sync_data().expect("sync");
    fs.sync_dir(&disk.path).expect("sync dir");
    let store = open(&fs, &disk.path, SyncMode::Always);
    assert_eq!(store.node_id(), id);
}

#[test]
fn a_small_store_takes_memory_in_proportion() {
    // No zeros written ahead of the log's end in memory (on disk the
    // engine extends a log by at least 64 KiB at a time).
    let disk = NoDisk::new();
    let fs = MemFs::new();
    let store = open(&fs, &disk.path, SyncMode::Always);
    for i in 0..10 {
        store.put(&fp(), key(i).as_bytes(), b"v").expect("put");
    }
    let used = fs.bytes_used();
    assert!(used < 4096, "{used} bytes for ten small keys");
}

#[test]
fn a_handle_kept_across_a_crash_cannot_write_and_a_new_one_can() {
    let disk = NoDisk::new();
    let fs = MemFs::new();
    let old = open(&fs, &disk.path, SyncMode::Always);
    old.put(&fp(), b"before", b"1").expect("put");
    fs.crash(None);
    let err = old
        .put(&fp(), b"zombie", b"1")
        .expect_err("the process died with the machine");
    assert!(err.to_string().contains("open it again"), "{err}");
    let new = open(&fs, &disk.path, SyncMode::Always);
    new.put(&fp(), b"after", b"1").expect("put");
    assert_eq!(keys(&new), ["after", "before"]);
}
