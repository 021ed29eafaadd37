//! The fault-injecting backend: a failed sync, a short write, a full disk
//! and a failed undo give an error and leave the store readable, with
//! nothing half-applied.

use std::sync::Arc;

use chorus_core::FullPrefix;
use chorus_store::fault::{FaultBackend, FaultPlan, Faults};
use chorus_store::{Error, Options, Store, SyncMode, Write, check};

fn fp() -> FullPrefix {
    FullPrefix::parse("fault/inj").expect("valid")
}

fn faulty(dir: &std::path::Path, sync: SyncMode) -> (Store, Faults) {
    let (backend, faults) = FaultBackend::new();
    let store = Store::open(
        dir,
        Options {
            create: true,
            sync,
            backend: Arc::new(backend),
            ..Options::default()
        },
    )
    .expect("open");
    (store, faults)
}

fn plain(dir: &std::path::Path) -> Store {
    Store::open(dir, Options::default()).expect("open with the real backend")
}

fn two_keys(tag: &str, value_len: usize) -> Vec<Write> {
    let value = vec![b'v'; value_len];
    vec![
        Write::put(&fp(), format!("{tag}-1").as_bytes(), b"one"),
        Write::put(&fp(), format!("{tag}-2").as_bytes(), &value),
    ]
}

/// Runs a failing commit under `plan` and checks that nothing of it is
/// visible, here or in a fresh handle, and that writing works afterwards.
fn failed_commit_changes_nothing(plan: FaultPlan, bad_value_len: usize, expect_in_error: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, faults) = faulty(dir.path(), SyncMode::Always);
    store.write(two_keys("ok", 3)).expect("healthy commit");
    let before = store.snapshot().expect("snapshot");
    faults.set(plan);
    let err = store
        .write(two_keys("bad", bad_value_len))
        .expect_err("the commit fails");
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(err.to_string().contains(expect_in_error), "{err}");
    faults.clear();
    let after = store.snapshot().expect("still readable");
    assert_eq!(after.len(), before.len());
    assert_eq!(after.seq(), before.seq());
    assert_eq!(store.get(&fp(), b"bad-1").expect("get"), None);
    let other = plain(dir.path());
    assert_eq!(
        other.get(&fp(), b"bad-1").expect("get"),
        None,
        "another handle sees nothing either"
    );
    assert_eq!(
        other.get(&fp(), b"ok-2").expect("get").as_deref(),
        Some(&b"vvv"[..])
    );
    store
        .write(two_keys("later", 3))
        .expect("writing works again");
    drop((store, other));
    let reopened = plain(dir.path());
    let snap = reopened.snapshot().expect("snapshot");
    assert_eq!(snap.len(), 4);
    assert_eq!(snap.get(&fp(), b"bad-2"), None);
    assert!(
        check(dir.path(), &Options::default())
            .expect("check")
            .findings
            .is_empty()
    );
}

#[test]
fn a_failed_sync_changes_nothing() {
    failed_commit_changes_nothing(
        FaultPlan {
            fail_sync: true,
            ..FaultPlan::default()
        },
        100,
        "fsync failed",
    );
}

#[test]
fn a_short_write_changes_nothing() {
    failed_commit_changes_nothing(
        FaultPlan {
            short_write: Some(11),
            ..FaultPlan::default()
        },
        100,
        "short write",
    );
}

#[test]
fn a_full_disk_changes_nothing_and_says_so() {
    failed_commit_changes_nothing(
        FaultPlan {
            space_left: Some(20),
            ..FaultPlan::default()
        },
        // Larger than the space written ahead, so the file must grow.
        200 << 10,
        "the disk is full",
    );
}

#[test]
fn a_failed_group_commit_fails_every_commit_in_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, faults) = faulty(dir.path(), SyncMode::Batch);
    faults.set(FaultPlan {
        fail_sync: true,
        ..FaultPlan::default()
    });
    std::thread::scope(|s| {
        for t in 0..4 {
            let store = store.clone();
            s.spawn(move || {
                let r = store.put(&fp(), format!("t{t}").as_bytes(), b"v");
                assert!(matches!(r, Err(Error::Io { .. })), "{r:?}");
            });
        }
    });
    faults.clear();
    assert_eq!(store.snapshot().expect("snapshot").len(), 0);
    assert_eq!(plain(dir.path()).snapshot().expect("snapshot").len(), 0);
}

#[test]
fn when_the_undo_fails_too_the_handle_stops_and_the_next_writer_cuts_the_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, faults) = faulty(dir.path(), SyncMode::Always);
    store.put(&fp(), b"kept", b"1").expect("put");
    faults.set(FaultPlan {
        fail_sync: true,
        fail_set_len: true,
        ..FaultPlan::default()
    });
    assert!(matches!(
        store.put(&fp(), b"lost", b"2"),
        Err(Error::Io { .. })
    ));
    faults.clear();
    let err = store.put(&fp(), b"more", b"3").expect_err("poisoned");
    assert!(matches!(err, Error::Poisoned(_)), "{err}");
    assert!(err.to_string().contains("reopen"), "{err}");
    assert_eq!(
        store
            .get(&fp(), b"kept")
            .expect("reads still work")
            .as_deref(),
        Some(&b"1"[..])
    );
    let other = plain(dir.path());
    assert_eq!(other.get(&fp(), b"lost").expect("get"), None);
    other
        .put(&fp(), b"next", b"4")
        .expect("the next writer cuts the unacknowledged bytes");
    let snap = plain(dir.path()).snapshot().expect("snapshot");
    assert_eq!(snap.len(), 2);
    assert_eq!(snap.get(&fp(), b"lost"), None);
}

#[test]
fn a_failed_compaction_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, faults) = faulty(dir.path(), SyncMode::Always);
    for i in 0..10 {
        store
            .put(&fp(), format!("k{i}").as_bytes(), b"v")
            .expect("put");
    }
    faults.set(FaultPlan {
        fail_sync: true,
        ..FaultPlan::default()
    });
    assert!(store.compact().is_err());
    faults.clear();
    let snap = store.snapshot().expect("snapshot");
    assert_eq!((snap.len(), snap.generation()), (10, 1));
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.ends_with(".tmp")),
        "no temporary file left: {names:?}"
    );
    store.put(&fp(), b"after", b"v").expect("put");
    assert_eq!(
        store
            .compact()
            .expect("compaction works again")
            .new_generation,
        2
    );
    assert_eq!(plain(dir.path()).snapshot().expect("snapshot").len(), 11);
}

#[test]
fn a_group_commit_split_into_frames_fails_whole_and_leaves_no_frame_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, faults) = faulty(dir.path(), SyncMode::Batch);
    store.put(&fp(), b"before", b"1").expect("put");
    // 20 commits of ~900 KB: more than the 16 MiB commit limit in all, so
    // the batch is written as two frames; then its one sync fails.
    let updates: Vec<(chorus_store::Origin, chorus_store::UpdateFn)> = (0..20u8)
        .map(|i| {
            let f: chorus_store::UpdateFn = Box::new(move |_: &chorus_store::Snapshot| {
                Ok(vec![Write::put(&fp(), &[i], &vec![i; 900_000])])
            });
            (chorus_store::Origin::Local, f)
        })
        .collect();
    faults.set(FaultPlan {
        fail_sync: true,
        ..FaultPlan::default()
    });
    let outcomes = store.update_all(updates);
    faults.clear();
    assert!(
        outcomes.iter().all(|o| matches!(o, Err(Error::Io { .. }))),
        "{outcomes:?}"
    );
    assert_eq!(
        store.snapshot().expect("snapshot").len(),
        1,
        "nothing of the batch"
    );
    let reopened = plain(dir.path());
    assert_eq!(reopened.snapshot().expect("snapshot").len(), 1);
    reopened
        .put(&fp(), b"after", b"2")
        .expect("the next writer goes on");
    assert_eq!(plain(dir.path()).snapshot().expect("snapshot").len(), 2);
}
