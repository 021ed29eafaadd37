//! In-process behaviour of the engine: reads, writes, transactions,
//! snapshots, limits, compaction and reopening.

use chorus_core::FullPrefix;
use chorus_store::{Error, Limits, Options, Store, SyncMode, Write};

mod common;
use common::open;

fn fp(s: &str) -> FullPrefix {
    FullPrefix::parse(s).expect("valid full prefix")
}

#[test]
fn open_without_create_says_how_to_init() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Store::open(&dir.path().join("none"), Options::default()).expect_err("fails");
    assert!(matches!(err, Error::NotInitialized { .. }), "{err}");
    assert!(err.to_string().contains("chorus init"), "{err}");
}

#[test]
fn put_get_delete_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    let a = fp("config/web");
    let c1 = s.put(&a, b"port", b"8080").expect("put");
    let c2 = s.put(&a, b"host", b"example").expect("put");
    assert_eq!(c2.seq, c1.seq + 1);
    assert!(c2.ts >= c1.ts);
    assert_eq!(
        s.get(&a, b"port").expect("get").as_deref(),
        Some(&b"8080"[..])
    );
    s.delete(&a, b"host").expect("delete");
    assert_eq!(s.get(&a, b"host").expect("get"), None);
    let node = s.node_id();
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.node_id(), node, "node id survives reopening");
    assert_eq!(
        s.get(&a, b"port").expect("get").as_deref(),
        Some(&b"8080"[..])
    );
    assert_eq!(s.get(&a, b"host").expect("get"), None);
    assert_eq!(s.snapshot().expect("snapshot").seq(), c2.seq + 1);
}

#[test]
fn two_handles_in_one_process_see_each_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = open(dir.path());
    let b = open(dir.path());
    let p = fp("x/y");
    a.put(&p, b"k", b"1").expect("put");
    assert_eq!(b.get(&p, b"k").expect("get").as_deref(), Some(&b"1"[..]));
    b.put(&p, b"k", b"2").expect("put");
    assert_eq!(a.get(&p, b"k").expect("get").as_deref(), Some(&b"2"[..]));
}

#[test]
fn transaction_conflict_names_the_keys_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    let p = fp("acct/main");
    s.put(&p, b"balance", b"10").expect("put");
    let mut tx = s.begin().expect("begin");
    assert_eq!(tx.get(&p, b"balance").as_deref(), Some(&b"10"[..]));
    tx.put(&p, b"balance", b"11");
    tx.put(&p, b"other", b"x");
    s.put(&p, b"balance", b"20").expect("concurrent put");
    let err = tx.commit().expect_err("conflict");
    match &err {
        Error::WriteConflict { keys } => {
            assert_eq!(keys.len(), 1);
            assert_eq!(keys[0].key, b"balance");
        }
        other => panic!("expected a conflict, got {other}"),
    }
    assert!(err.to_string().contains("acct/main/balance"), "{err}");
    assert_eq!(
        s.get(&p, b"other").expect("get"),
        None,
        "nothing of the failed commit is visible"
    );
    assert_eq!(
        s.get(&p, b"balance").expect("get").as_deref(),
        Some(&b"20"[..])
    );
}

#[test]
fn a_change_to_a_key_not_read_is_not_a_conflict() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    let p = fp("a/b");
    s.put(&p, b"x", b"1").expect("put");
    let mut tx = s.begin().expect("begin");
    tx.get(&p, b"x");
    tx.put(&p, b"y", b"2");
    s.put(&p, b"z", b"3").expect("unrelated put");
    tx.commit().expect("no conflict");
    // A key read as absent that became present is a conflict.
    let mut tx = s.begin().expect("begin");
    assert_eq!(tx.get(&p, b"new"), None);
    tx.put(&p, b"w", b"1");
    s.put(&p, b"new", b"now").expect("put");
    assert!(matches!(tx.commit(), Err(Error::WriteConflict { .. })));
}

#[test]
fn snapshots_do_not_move() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    let p = fp("a/b");
    s.put(&p, b"k", b"old").expect("put");
    let snap = s.snapshot().expect("snapshot");
    s.put(&p, b"k", b"new").expect("put");
    s.put(&p, b"k2", b"x").expect("put");
    s.compact().expect("compact");
    assert_eq!(snap.get(&p, b"k").as_deref(), Some(&b"old"[..]));
    assert_eq!(snap.get(&p, b"k2"), None);
    assert_eq!(snap.len(), 1);
    assert_eq!(s.get(&p, b"k").expect("get").as_deref(), Some(&b"new"[..]));
}

#[test]
fn limits_are_enforced_before_writing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Store::open(
        dir.path(),
        Options {
            create: true,
            limits: Limits {
                max_key_bytes: 8,
                max_value_bytes: 16,
                max_commit_bytes: 200,
                max_writes_per_commit: 3,
            },
            ..Options::default()
        },
    )
    .expect("open");
    let p = fp("a/b");
    let before = s.snapshot().expect("snapshot").seq();
    let e = s.put(&p, b"123456789", b"v").expect_err("key too long");
    assert!(e.to_string().contains("the limit is 8 bytes"), "{e}");
    let e = s.put(&p, b"k", &[0u8; 17]).expect_err("value too long");
    assert!(e.to_string().contains("the limit is 16 bytes"), "{e}");
    let e = s.put(&p, b"", b"v").expect_err("empty key");
    assert!(e.to_string().contains("empty"), "{e}");
    let writes: Vec<Write> = (0..4)
        .map(|i| Write::put(&p, format!("k{i}").as_bytes(), b"v"))
        .collect();
    let e = s.write(writes).expect_err("too many writes");
    assert!(e.to_string().contains("split it"), "{e}");
    let writes: Vec<Write> = (0..3)
        .map(|i| Write::put(&p, format!("k{i}").as_bytes(), &[7u8; 16]))
        .collect();
    s.write(writes).expect("within limits");
    assert_eq!(
        s.snapshot().expect("snapshot").seq(),
        before + 1,
        "refused commits wrote nothing"
    );
}

#[test]
fn compaction_keeps_everything_and_shrinks_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    let p = fp("a/b");
    for i in 0..200u32 {
        s.put(&p, format!("k{}", i % 20).as_bytes(), &i.to_le_bytes())
            .expect("put");
    }
    let before = s.status().expect("status");
    let other = open(dir.path());
    let r = s.compact().expect("compact");
    assert_eq!((r.old_generation, r.new_generation, r.keys), (1, 2, 20));
    assert!(r.bytes_after < r.bytes_before / 4, "{r:?}");
    let after = other.status().expect("status");
    assert_eq!(
        after.generation, 2,
        "another handle notices the new generation"
    );
    assert_eq!(after.keys, before.keys);
    assert_eq!(after.last_seq, before.last_seq);
    for i in 180..200u32 {
        assert_eq!(
            other
                .get(&p, format!("k{}", i % 20).as_bytes())
                .expect("get")
                .as_deref(),
            Some(&i.to_le_bytes()[..])
        );
    }
    other
        .put(&p, b"after", b"compaction")
        .expect("write to the new generation");
    drop((s, other));
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n == "gen-0000000001.log"),
        "old generation removed: {names:?}"
    );
    let s = open(dir.path());
    assert_eq!(
        s.get(&p, b"after").expect("get").as_deref(),
        Some(&b"compaction"[..])
    );
    assert_eq!(s.snapshot().expect("snapshot").len(), 21);
}

#[test]
fn update_runs_on_the_latest_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    let p = fp("c/n");
    s.put(&p, b"n", b"1").expect("put");
    let p2 = p.clone();
    let info = s
        .update(move |snap| {
            let n: u64 = String::from_utf8_lossy(&snap.get(&p2, b"n").unwrap_or_default())
                .parse()
                .unwrap_or(0);
            Ok(vec![Write::put(&p2, b"n", (n + 1).to_string().as_bytes())])
        })
        .expect("update");
    assert!(info.is_some());
    assert_eq!(s.get(&p, b"n").expect("get").as_deref(), Some(&b"2"[..]));
    assert_eq!(s.update(|_| Ok(vec![])).expect("empty update"), None);
}

#[test]
fn batch_mode_group_commits_threads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Store::open(
        dir.path(),
        Options {
            create: true,
            sync: SyncMode::Batch,
            ..Options::default()
        },
    )
    .expect("open");
    let p = fp("t/b");
    std::thread::scope(|scope| {
        for t in 0..8 {
            let s = s.clone();
            let p = p.clone();
            scope.spawn(move || {
                for i in 0..100 {
                    s.put(&p, format!("{t}-{i}").as_bytes(), b"v").expect("put");
                }
            });
        }
    });
    let snap = s.snapshot().expect("snapshot");
    assert_eq!(snap.len(), 800);
    assert_eq!(snap.seq(), 800);
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.snapshot().expect("snapshot").len(), 800);
}

#[test]
fn a_panicking_update_fails_alone_and_the_store_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    let p = fp("u/p");
    let err = s
        .update(|_| -> chorus_store::Result<Vec<Write>> { panic!("boom") })
        .expect_err("the panic becomes an error");
    assert!(err.to_string().contains("panicked (boom)"), "{err}");
    s.put(&p, b"k", b"v").expect("the handle still writes");
    assert_eq!(s.snapshot().expect("snapshot").len(), 1);
}

#[test]
fn prefix_hashes_are_equal_for_equal_data_whatever_the_order() {
    let d1 = tempfile::tempdir().expect("tempdir");
    let d2 = tempfile::tempdir().expect("tempdir");
    let (s1, s2) = (open(d1.path()), open(d2.path()));
    let (a, b) = (fp("cfg/a"), fp("cfg/b"));
    let empty = s1.snapshot().expect("snapshot").prefix_hash(&a);
    for i in 0..50u32 {
        s1.put(&a, format!("k{i}").as_bytes(), &i.to_le_bytes())
            .expect("put");
    }
    s1.put(&b, b"x", b"1").expect("put");
    // The same data in another order, with detours: overwrites and deletes.
    s2.put(&b, b"x", b"0").expect("put");
    s2.put(&a, b"gone", b"soon").expect("put");
    for i in (0..50u32).rev() {
        s2.put(&a, format!("k{i}").as_bytes(), b"first")
            .expect("put");
        s2.put(&a, format!("k{i}").as_bytes(), &i.to_le_bytes())
            .expect("put");
    }
    s2.delete(&a, b"gone").expect("delete");
    s2.put(&b, b"x", b"1").expect("put");
    let (h1, h2) = (
        s1.snapshot().expect("snapshot"),
        s2.snapshot().expect("snapshot"),
    );
    assert_eq!(h1.prefix_hash(&a), h2.prefix_hash(&a));
    assert_eq!(h1.prefix_hash(&b), h2.prefix_hash(&b));
    assert_eq!(h1.prefix_hash_all("cfg"), h2.prefix_hash_all("cfg"));
    assert_ne!(h1.prefix_hash(&a), h1.prefix_hash(&b));
    assert_ne!(h1.prefix_hash(&a), empty);
    // Any change changes it; undoing the change restores it.
    s1.put(&a, b"k7", b"changed").expect("put");
    let changed = s1.snapshot().expect("snapshot");
    assert_ne!(changed.prefix_hash(&a), h2.prefix_hash(&a));
    assert_ne!(changed.prefix_hash_all("cfg"), h2.prefix_hash_all("cfg"));
    s1.put(&a, b"k7", &7u32.to_le_bytes()).expect("put");
    assert_eq!(
        s1.snapshot().expect("snapshot").prefix_hash(&a),
        h2.prefix_hash(&a)
    );
    // Other processes, reopening and compaction agree.
    s1.compact().expect("compact");
    drop(s1);
    assert_eq!(
        open(d1.path())
            .snapshot()
            .expect("snapshot")
            .prefix_hash(&a),
        h2.prefix_hash(&a)
    );
}

#[test]
fn prefix_hashes_survive_compaction_across_checkpoint_frames() {
    let d1 = tempfile::tempdir().expect("tempdir");
    let d2 = tempfile::tempdir().expect("tempdir");
    let (s1, s2) = (open(d1.path()), open(d2.path()));
    let (big, small) = (fp("h/big"), fp("h/small"));
    // 10 MiB in one prefix: its checkpoint spans several 4 MiB frames.
    let value = vec![7u8; 100 << 10];
    for s in [&s1, &s2] {
        for i in 0..100u32 {
            let mut v = value.clone();
            v[..4].copy_from_slice(&i.to_le_bytes());
            s.put(&big, format!("k{i}").as_bytes(), &v).expect("put");
        }
        s.put(&small, b"x", b"1").expect("put");
    }
    s1.compact().expect("compact");
    s1.put(&small, b"y", b"2").expect("put after compaction");
    s2.put(&small, b"y", b"2").expect("put");
    drop(s1);
    let reopened = open(d1.path()).snapshot().expect("snapshot");
    let never_compacted = s2.snapshot().expect("snapshot");
    assert!(reopened.generation() > 1);
    for p in [&big, &small] {
        assert_eq!(
            reopened.prefix_hash(p),
            never_compacted.prefix_hash(p),
            "{p}"
        );
    }
    assert_eq!(
        reopened.prefix_hash_all("h"),
        never_compacted.prefix_hash_all("h")
    );
}

#[test]
fn batch_mode_group_commits_update_closures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Store::open(
        dir.path(),
        Options {
            create: true,
            sync: SyncMode::Batch,
            ..Options::default()
        },
    )
    .expect("open");
    let p = fp("t/u");
    std::thread::scope(|scope| {
        // The first update holds the writer lock for a while, so the
        // others queue behind it and the next batch takes them together.
        let first = s.clone();
        let q = p.clone();
        scope.spawn(move || {
            first
                .update(move |_| {
                    std::thread::sleep(std::time::Duration::from_millis(300));
                    Ok(vec![Write::put(&q, b"first", b"v")])
                })
                .expect("update")
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        for t in 0..8 {
            let s = s.clone();
            let p = p.clone();
            scope.spawn(move || {
                s.update(move |snap| {
                    // Each closure sees the commits before it in its batch.
                    let n = snap.len();
                    Ok(vec![Write::put(
                        &p,
                        format!("t{t}").as_bytes(),
                        &n.to_le_bytes(),
                    )])
                })
                .expect("update")
            });
        }
    });
    let stats = s.write_stats();
    assert_eq!(stats.commits, 9);
    assert!(
        stats.syncs < stats.commits,
        "update closures that queue together share a sync: {stats:?}"
    );
    let snap = s.snapshot().expect("snapshot");
    assert_eq!(snap.len(), 9);
    let mut seen: Vec<u64> = (0..8)
        .map(|t| {
            let v = snap.get(&p, format!("t{t}").as_bytes()).expect("written");
            u64::from_le_bytes(v[..8].try_into().expect("8 bytes"))
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (1..9).collect::<Vec<u64>>(),
        "every closure saw the state before it"
    );
}

#[test]
fn a_group_commit_larger_than_the_commit_limit_is_split_into_frames() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = Options {
        create: true,
        sync: SyncMode::Batch,
        limits: chorus_store::Limits {
            max_commit_bytes: 8 << 10,
            ..chorus_store::Limits::default()
        },
        ..Options::default()
    };
    let s = Store::open(dir.path(), options.clone()).expect("open");
    let p = fp("t/big");
    std::thread::scope(|scope| {
        let first = s.clone();
        let q = p.clone();
        scope.spawn(move || {
            first
                .update(move |_| {
                    std::thread::sleep(std::time::Duration::from_millis(300));
                    Ok(vec![Write::put(&q, b"first", &[1u8; 6000])])
                })
                .expect("update")
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        for t in 0..6u8 {
            let s = s.clone();
            let p = p.clone();
            scope.spawn(move || {
                s.update(move |_| Ok(vec![Write::put(&p, &[t], &[t; 6000])]))
                    .expect("update")
            });
        }
    });
    let stats = s.write_stats();
    assert_eq!(stats.commits, 7);
    assert!(stats.syncs < stats.commits, "{stats:?}");
    assert_eq!(
        stats.frames, 7,
        "no two 6000-byte commits fit one 8 KiB frame"
    );
    drop(s);
    let report = chorus_store::check(dir.path(), &options).expect("check");
    assert!(report.is_healthy(), "{report:?}");
    assert_eq!((report.frames, report.commits), (7, 7));
    let s = Store::open(dir.path(), options).expect("reopen");
    let snap = s.snapshot().expect("snapshot");
    assert_eq!(snap.len(), 7);
    for t in 0..6u8 {
        assert_eq!(snap.get(&p, &[t]).expect("kept").as_ref(), &[t; 6000][..]);
    }
}

#[test]
fn update_all_queues_its_commits_together_and_each_fails_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Store::open(
        dir.path(),
        Options {
            create: true,
            sync: SyncMode::Batch,
            ..Options::default()
        },
    )
    .expect("open");
    let p = fp("t/all");
    let mut updates: Vec<(chorus_store::Origin, chorus_store::UpdateFn)> = Vec::new();
    for i in 0..10u8 {
        let p = p.clone();
        let origin = if i % 2 == 0 {
            chorus_store::Origin::Local
        } else {
            chorus_store::Origin::Peer([i; 16])
        };
        updates.push((
            origin,
            Box::new(move |snap: &chorus_store::Snapshot| {
                if i == 3 {
                    return Err(chorus_store::Error::InvalidInput("no".into()));
                }
                if i == 5 {
                    return Ok(vec![]);
                }
                Ok(vec![Write::put(
                    &p,
                    &[i],
                    &(snap.len() as u64).to_le_bytes(),
                )])
            }),
        ));
    }
    let cursor = s.cursor().expect("cursor");
    let outcomes = s.update_all(updates);
    assert_eq!(outcomes.len(), 10);
    assert!(matches!(
        outcomes[3],
        Err(chorus_store::Error::InvalidInput(_))
    ));
    assert!(matches!(outcomes[5], Ok(None)));
    let seqs: Vec<u64> = outcomes
        .iter()
        .filter_map(|o| o.as_ref().ok().copied().flatten())
        .map(|info| info.seq)
        .collect();
    assert_eq!(
        seqs,
        (1..=8).collect::<Vec<u64>>(),
        "in order, one commit each"
    );
    let stats = s.write_stats();
    assert_eq!((stats.commits, stats.frames, stats.syncs), (8, 1, 1));
    // Each function saw the commits queued before it.
    let snap = s.snapshot().expect("snapshot");
    assert_eq!(
        snap.get(&p, &[9]).expect("written").as_ref(),
        &7u64.to_le_bytes()[..]
    );
    // Each commit keeps its own origin.
    let chorus_store::Feed::Changes { changes, .. } = s.changes_since(&cursor, 100).expect("feed")
    else {
        panic!("no gap expected");
    };
    let origins: Vec<chorus_store::Origin> = changes.iter().map(|c| c.origin).collect();
    let expected: Vec<chorus_store::Origin> = [0u8, 1, 2, 4, 6, 7, 8, 9]
        .iter()
        .map(|&i| {
            if i % 2 == 0 {
                chorus_store::Origin::Local
            } else {
                chorus_store::Origin::Peer([i; 16])
            }
        })
        .collect();
    assert_eq!(origins, expected);
}

#[test]
fn many_threads_with_small_batches_all_finish_and_count_exactly() {
    // Leadership passes from batch to batch: with 32 threads and batches
    // of 3, every hand-off path runs many times.
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Store::open(
        dir.path(),
        Options {
            create: true,
            sync: SyncMode::Batch,
            max_batch: 3,
            ..Options::default()
        },
    )
    .expect("open");
    let p = fp("t/n");
    std::thread::scope(|scope| {
        for t in 0..32 {
            let s = s.clone();
            let p = p.clone();
            scope.spawn(move || {
                for i in 0..50 {
                    if i % 2 == 0 {
                        let p = p.clone();
                        s.update(move |snap| {
                            let n = snap.get(&p, b"counter").map_or(0, |v| {
                                u64::from_le_bytes(v[..8].try_into().unwrap_or([0; 8]))
                            });
                            Ok(vec![Write::put(&p, b"counter", &(n + 1).to_le_bytes())])
                        })
                        .expect("update");
                    } else {
                        s.put(&p, format!("{t}-{i}").as_bytes(), b"v").expect("put");
                    }
                }
            });
        }
    });
    let snap = s.snapshot().expect("snapshot");
    assert_eq!(snap.seq(), 32 * 50);
    let counter = snap.get(&p, b"counter").expect("counter");
    assert_eq!(
        u64::from_le_bytes(counter[..8].try_into().expect("8 bytes")),
        32 * 25
    );
    assert_eq!(snap.len(), 32 * 25 + 1);
    let stats = s.write_stats();
    assert_eq!(stats.commits, 32 * 50);
    assert!(stats.syncs >= stats.commits / 3, "{stats:?}");
}

/// A group (`base` and `base\0...`) comes back whole and in key order, and
/// `changed_since` names exactly the keys written after a point.
#[test]
fn groups_and_changes_since() {
    let dir = tempfile::tempdir().expect("ok");
    let store = Store::open(
        dir.path(),
        Options {
            create: true,
            ..Options::default()
        },
    )
    .expect("ok");
    let fp = FullPrefix::new("app", "docs").expect("ok");
    for i in 0..200u32 {
        store
            .put(&fp, format!("other{i}").as_bytes(), b"x")
            .expect("ok");
    }
    let before = store.snapshot().expect("ok").seq();
    for key in [&b"doc\0b"[..], b"doc", b"doc\0a", b"doc2\0a", b"docs"] {
        store.put(&fp, key, b"v").expect("ok");
    }
    let snap = store.snapshot().expect("ok");
    let group: Vec<Vec<u8>> = snap.group(&fp, b"doc").map(|(k, _)| k.to_vec()).collect();
    assert_eq!(
        group,
        vec![b"doc".to_vec(), b"doc\0a".to_vec(), b"doc\0b".to_vec()]
    );
    assert_eq!(snap.group(&fp, b"nothing").count(), 0);
    let changed: Vec<Vec<u8>> = snap
        .changed_since(before)
        .expect("recent writes are remembered")
        .map(|(_, _, k)| k.to_vec())
        .collect();
    assert_eq!(changed.len(), 5);
    assert_eq!(changed[0], b"doc\0b".to_vec());
    assert_eq!(snap.changed_since(snap.seq()).expect("ok").count(), 0);
    store.delete(&fp, b"doc\0a").expect("ok");
    let snap = store.snapshot().expect("ok");
    let group: Vec<Vec<u8>> = snap.group(&fp, b"doc").map(|(k, _)| k.to_vec()).collect();
    assert_eq!(group, vec![b"doc".to_vec(), b"doc\0b".to_vec()]);
    // A handle that loads a compacted generation remembers nothing before
    // it (one that replays frames remembers what it replayed).
    store.compact().expect("ok");
    drop(store);
    let again = Store::open(dir.path(), Options::default()).expect("ok");
    let snap = again.snapshot().expect("ok");
    assert!(snap.changed_since(before).is_none());
}

/// Only keys shaped like a document revision's or an operation's record
/// count as records; a plain key holding a zero byte does not.
#[test]
fn split_record_knows_records_from_plain_keys() {
    use chorus_store::split_record;
    let rev = b"doc\x0000000000000000000002-abcdef".as_slice();
    assert_eq!(split_record(rev), Some((&b"doc"[..], &rev[4..])));
    let op = b"path\x0001a23b593ee50000.d448.88f0".as_slice();
    assert_eq!(split_record(op), Some((&b"path"[..], &op[5..])));
    assert_eq!(split_record(b"plain\x00key"), None);
    assert_eq!(split_record(b"plain"), None);
    assert_eq!(split_record(b"doc\x00"), None);
}
