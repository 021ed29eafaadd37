//! Operation logs kept as a head and a record per operation: the value a
//! long-lived handle keeps incrementally equals a full replay of the log,
//! whatever pushes, offline merges and checkpoints happen in between; a
//! push writes bytes in proportion to the operation; bad records change
//! nothing.

use chorus_core::FullPrefix;
use chorus_core::oplog::{Op, OpLog, built_in};
use chorus_store::oplog::Oplogs;
use chorus_store::{Metadata, Origin};
use proptest::prelude::*;
use serde_json::{Value, json};

mod common;
use common::{meta, ship};

fn fp() -> FullPrefix {
    FullPrefix::parse("app/ops").expect("valid")
}

/// What a process that never read the path computes: every head and
/// record folded from scratch.
fn replayed(m: &Metadata, path: &str) -> Value {
    Oplogs::new(m).get(&fp(), path).expect("replay")
}

#[derive(Debug, Clone)]
enum Action {
    Push {
        node: usize,
        path: usize,
        n: i64,
    },
    Ship {
        from: usize,
        to: usize,
    },
    Prune {
        node: usize,
        path: usize,
        keep: usize,
    },
    Read {
        node: usize,
        path: usize,
    },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => (0usize..3, 0usize..3, -5i64..50).prop_map(|(node, path, n)| Action::Push { node, path, n }),
        2 => (0usize..3, 0usize..3).prop_map(|(from, to)| Action::Ship { from, to }),
        1 => (0usize..3, 0usize..3, 0usize..6).prop_map(|(node, path, keep)| Action::Prune { node, path, keep }),
        3 => (0usize..3, 0usize..3).prop_map(|(node, path)| Action::Read { node, path }),
    ]
}

const PATHS: [(&str, &str); 3] = [("c", "counter"), ("l", "list"), ("r", "register")];

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Several nodes push, merge offline and prune in random orders; a
    /// handle that keeps values incrementally always agrees with a full
    /// replay, and after everyone has everything all nodes agree.
    #[test]
    fn the_kept_value_equals_a_full_replay(actions in proptest::collection::vec(action(), 1..40)) {
        let (_dirs, metas) = common::nodes(3);
        let kept: Vec<Oplogs> = metas.iter().map(Oplogs::new).collect();
        for a in actions {
            match a {
                Action::Push { node, path, n } => {
                    let (p, kind) = PATHS[path];
                    kept[node].push(&fp(), p, kind, json!(n)).expect("push");
                }
                Action::Ship { from, to } => {
                    if from != to {
                        ship(&metas[from], &metas[to], &fp());
                    }
                }
                Action::Prune { node, path, keep } => {
                    let (p, _) = PATHS[path];
                    let log = kept[node].log(&fp(), p).expect("log").log;
                    let n = log.len().saturating_sub(keep);
                    if let Some(upto) = log.ops().nth(n.saturating_sub(1)).filter(|_| n > 0).map(Op::key) {
                        kept[node].prune(&fp(), p, &upto).expect("prune");
                    }
                }
                Action::Read { node, path } => {
                    let (p, _) = PATHS[path];
                    prop_assert_eq!(kept[node].get(&fp(), p).expect("get"), replayed(&metas[node], p));
                }
            }
        }
        for from in 0..3 {
            for to in 0..3 {
                if from != to {
                    ship(&metas[from], &metas[to], &fp());
                }
            }
        }
        for (p, _) in PATHS {
            let first = replayed(&metas[0], p);
            for node in 0..3 {
                prop_assert_eq!(kept[node].get(&fp(), p).expect("get"), replayed(&metas[node], p));
                prop_assert_eq!(replayed(&metas[node], p), first.clone(), "node {} converged on {}", node, p);
            }
            // The log's own fold (core) agrees with the store's.
            let view = kept[0].log(&fp(), p).expect("log");
            if !view.log.kind().is_empty() {
                let r = built_in(view.log.kind()).expect("built in");
                prop_assert_eq!(view.log.value(&*r).expect("value"), first);
            }
        }
    }
}

/// A push writes the new operation's record, not the log: the bytes one
/// push appends do not grow with the log's length.
#[test]
fn a_push_writes_bytes_in_proportion_to_the_operation() {
    let dir = tempfile::tempdir().expect("tmp");
    let m = meta(dir.path());
    let ops = Oplogs::new(&m);
    let size = |m: &Metadata| m.store().status().expect("status").log_bytes;
    let mut first = 0;
    for i in 0..2000 {
        let before = size(&m);
        ops.push(&fp(), "c", "counter", json!(1)).expect("push");
        let written = size(&m) - before;
        if i == 10 {
            first = written;
        }
        if i > 10 {
            assert!(
                written <= first + 16,
                "push {i} wrote {written} bytes; push 10 wrote {first}"
            );
        }
    }
    assert_eq!(ops.get(&fp(), "c").expect("get"), json!(2000));
    assert_eq!(replayed(&m, "c"), json!(2000));
}

/// A record whose sha does not match its content, or whose key names
/// another operation, is refused by validation and ignored by reads.
#[test]
fn forged_and_malformed_records_are_refused_and_ignored() {
    let dir = tempfile::tempdir().expect("tmp");
    let m = meta(dir.path());
    let ops = Oplogs::new(&m);
    ops.push(&fp(), "c", "counter", json!(5)).expect("push");
    let node = m.store().node_id();
    let mut op = Op::new("counter", 1 << 40, "aa", json!(1000));
    let good_key = chorus_store::oplog::record_key(b"c", &op);
    let object = |bytes: &[u8]| {
        chorus_core::object::Object::modify(
            None,
            &chorus_core::object::Context::default(),
            chorus_core::object::Value::data(bytes, chorus_core::object::Hlc(1), node),
            node,
        )
    };
    // Forged: the payload changed, the sha kept.
    op.payload = json!(1_000_000);
    let forged = object(&op.encode_record("counter"));
    let err = chorus_store::oplog::validate_record(&good_key, &forged).expect_err("forged");
    assert!(err.to_string().contains("sha"), "{err}");
    // A genuine record under another operation's key.
    let genuine = Op::new("counter", 1 << 40, "bb", json!(7));
    let err =
        chorus_store::oplog::validate_record(&good_key, &object(&genuine.encode_record("counter")))
            .expect_err("misplaced");
    assert!(err.to_string().contains("names operation"), "{err}");
    // Malformed bytes that look like a record.
    let err = chorus_store::oplog::validate_record(
        &good_key,
        &object(br#"{"oprec":1,"type":"counter"}"#),
    )
    .expect_err("malformed");
    assert!(err.to_string().contains("malformed"), "{err}");
    // Merged anyway (a peer that does not check): reads ignore them.
    m.merge(
        Origin::Peer([7; 16]),
        vec![(fp(), good_key.clone(), forged)],
    )
    .expect("merge");
    assert_eq!(ops.get(&fp(), "c").expect("get"), json!(5));
    assert_eq!(replayed(&m, "c"), json!(5));
    // Oversized: a payload past the limit, whatever its sha.
    let big = Op::new("counter", 1 << 40, "aa", json!("x".repeat(70 << 10)));
    let err = chorus_store::oplog::validate_record(
        &chorus_store::oplog::record_key(b"c", &big),
        &object(&big.encode_record("counter")),
    )
    .expect_err("oversized");
    assert!(err.to_string().contains("at most"), "{err}");
    // A key that is not a record passes.
    chorus_store::oplog::validate_record(b"c", &object(b"anything")).expect("not a record");
}

/// A log written in the first format (the head holding every operation)
/// reads the same, and its first push converts it.
#[test]
fn a_version_one_log_is_read_then_converted_on_push() {
    let dir = tempfile::tempdir().expect("tmp");
    let m = meta(dir.path());
    let mut old = OpLog::new("list");
    for (i, n) in [3, 1, 4].iter().enumerate() {
        assert!(
            old.push(Op::new("list", i as u64 + 1, "ab", json!(n)))
                .is_none()
        );
    }
    let node = m.store().node_id();
    let object = chorus_core::object::Object::modify(
        None,
        &chorus_core::object::Context::default(),
        chorus_core::object::Value::data(&old.encode(), chorus_core::object::Hlc(1), node),
        node,
    );
    m.merge(Origin::Local, vec![(fp(), b"l".to_vec(), object)])
        .expect("write v1");
    let ops = Oplogs::new(&m);
    assert_eq!(ops.get(&fp(), "l").expect("get"), json!([3, 1, 4]));
    assert_eq!(
        ops.push(&fp(), "l", "list", json!(1)).expect("push"),
        json!([3, 1, 4, 1])
    );
    let snap = m.store().snapshot().expect("snap");
    let keys: Vec<Vec<u8>> = snap.group(&fp(), b"l").map(|(k, _)| k.to_vec()).collect();
    assert_eq!(keys.len(), 5, "the head and four records");
    let head =
        chorus_core::object::Object::decode(&snap.get(&fp(), b"l").expect("head")).expect("object");
    let bytes = head.values()[0].bytes().expect("bytes").to_vec();
    assert!(
        !String::from_utf8_lossy(&bytes).contains("\"ops\""),
        "the head holds no ops"
    );
    assert_eq!(replayed(&m, "l"), json!([3, 1, 4, 1]));
}

/// Without a daemon, pushes fold old operations by themselves and remove
/// their records; a stage directory (`$stage/state`) and a directory a
/// daemon served (`$cluster/members`) never do.
#[test]
fn a_directory_no_daemon_serves_prunes_on_push_and_a_stage_does_not() {
    let pushes = chorus_store::oplog::SOLO_PRUNE_MIN_OPS + 10;
    let mut unfolded = Vec::new();
    for marker in [None, Some("$stage/state"), Some("$cluster/members")] {
        let dir = tempfile::tempdir().expect("tmp");
        let m = meta(dir.path());
        if let Some(fp) = marker {
            m.put_reserved(
                &FullPrefix::parse(fp).expect("fp"),
                b"x",
                chorus_store::PutValue::Bytes(b"{}".to_vec()),
                &chorus_store::PutOptions::default(),
            )
            .expect("marker");
        }
        let ops = Oplogs::new(&m).with_solo_grace(std::time::Duration::ZERO);
        for _ in 0..pushes {
            ops.push(&fp(), "c", "counter", json!(1)).expect("push");
        }
        assert_eq!(ops.get(&fp(), "c").expect("get"), json!(pushes));
        assert_eq!(replayed(&m, "c"), json!(pushes));
        let records = m
            .store()
            .snapshot()
            .expect("snap")
            .group(&fp(), b"c")
            .count()
            - 1;
        unfolded.push((ops.log(&fp(), "c").expect("log").log.len(), records));
    }
    assert!(unfolded[0].0 < 100, "pruned alone: {unfolded:?}");
    assert_eq!(
        unfolded[0].0, unfolded[0].1,
        "folded records are removed: {unfolded:?}"
    );
    assert_eq!(
        unfolded[1],
        (pushes, pushes),
        "a stage keeps every operation"
    );
    assert_eq!(
        unfolded[2],
        (pushes, pushes),
        "a served directory waits for its daemon"
    );
}

/// A process that read a path before anything was there, then received
/// a peer's records before their head, counts them.
#[test]
fn records_that_arrive_before_their_head_are_counted() {
    let (d1, d2) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let (m1, m2) = (meta(d1.path()), meta(d2.path()));
    let ops = Oplogs::new(&m1);
    assert_eq!(ops.get(&fp(), "c").expect("get"), Value::Null);
    let other = Oplogs::new(&m2);
    for _ in 0..3 {
        other.push(&fp(), "c", "counter", json!(2)).expect("push");
    }
    let snap = m2.store().snapshot().expect("snap");
    let records: Vec<_> = snap
        .group(&fp(), b"c")
        .filter(|(k, _)| k.as_bytes() != b"c")
        .map(|(k, e)| {
            (
                fp(),
                k.to_vec(),
                chorus_core::object::Object::decode(&e.value).expect("object"),
            )
        })
        .collect();
    m1.merge(Origin::Peer([5; 16]), records).expect("merge");
    assert_eq!(ops.get(&fp(), "c").expect("get"), json!(6));
    assert_eq!(
        ops.push(&fp(), "c", "counter", json!(1)).expect("push"),
        json!(7)
    );
}

/// A record that comes back from a peer after its operation was folded
/// (the peer had not pruned) is ignored by reads and deleted by the next
/// prune.
#[test]
fn a_folded_record_that_comes_back_is_deleted_by_the_next_prune() {
    let (_dirs, metas) = common::nodes(2);
    let a = Oplogs::new(&metas[0]);
    for _ in 0..10 {
        a.push(&fp(), "c", "counter", json!(1)).expect("push");
    }
    ship(&metas[0], &metas[1], &fp());
    let last = a
        .log(&fp(), "c")
        .expect("log")
        .log
        .ops()
        .last()
        .expect("op")
        .key();
    assert_eq!(a.prune(&fp(), "c", &last).expect("prune"), 10);
    let records = |m: &Metadata| {
        m.store()
            .snapshot()
            .expect("snap")
            .group(&fp(), b"c")
            .count()
            - 1
    };
    assert_eq!(records(&metas[0]), 0);
    ship(&metas[1], &metas[0], &fp());
    assert_eq!(records(&metas[0]), 10, "the peer's copies are back");
    assert_eq!(
        a.get(&fp(), "c").expect("get"),
        json!(10),
        "and not counted twice"
    );
    a.push(&fp(), "c", "counter", json!(1)).expect("push");
    let last = a
        .log(&fp(), "c")
        .expect("log")
        .log
        .ops()
        .last()
        .expect("op")
        .key();
    assert_eq!(a.prune(&fp(), "c", &last).expect("prune"), 1);
    assert_eq!(records(&metas[0]), 0, "the stale copies went with it");
    assert_eq!(a.get(&fp(), "c").expect("get"), json!(11));
    assert_eq!(replayed(&metas[0], "c"), json!(11));
}
