//! A prune reaches a peer in pieces: the new head (the checkpoint) and
//! the tombstones of the records it folded are separate keys, and
//! broadcast may deliver the tombstones first (the head's message was
//! lost; anti-entropy brings it later). Meanwhile the peer holds a log
//! that lacks the folded operations and their checkpoint. Found by the
//! simulator (`chorus sim --faults standard --seed 22` and `--seed 266`):
//!
//! - a push there must still sort after the operations whose records it
//!   held (their tombstones name them), or it is late once the
//!   checkpoint arrives;
//! - a prune there must wait for the checkpoint, or its own checkpoint
//!   replaces the missing one: silently when it covers it by the
//!   frontier, as a late "checkpoint" otherwise; either way the folded
//!   operations leave the value.

use chorus_core::FullPrefix;
use chorus_core::object::Object;
use chorus_store::oplog::Oplogs;
use chorus_store::{Clock, Metadata, Options, Origin, PutOptions, PutValue, Store};
use serde_json::json;

mod common;
use common::{meta, ship};

fn fp() -> FullPrefix {
    FullPrefix::parse("app/ops").expect("valid")
}

/// Marks a directory as served by a daemon: prunes leave tombstones.
fn served(m: &Metadata) {
    m.put_reserved(
        &FullPrefix::parse("$cluster/members").expect("fp"),
        b"x",
        PutValue::Bytes(b"{}".to_vec()),
        &PutOptions::default(),
    )
    .expect("member marker");
}

/// Ships the keys of `fp` whose bytes `pick` accepts (the others' messages
/// were lost).
fn ship_some(from: &Metadata, to: &Metadata, pick: impl Fn(&[u8]) -> bool) {
    let snap = from.store().snapshot().expect("snapshot");
    let objects: Vec<_> = snap
        .iter_prefix(&fp())
        .filter(|(k, _)| pick(k.as_bytes()))
        .map(|(k, e)| {
            (
                fp(),
                k.as_bytes().to_vec(),
                Object::decode(&e.value).expect("an object"),
            )
        })
        .collect();
    to.merge(Origin::Peer([9; 16]), objects).expect("merge");
}

/// Only the records' tombstones, not the head.
fn records_only(key: &[u8]) -> bool {
    key != b"c"
}

/// Two nodes' stores, both served (prunes leave tombstones).
fn served_pair() -> (Vec<tempfile::TempDir>, Vec<Metadata>) {
    let (dirs, metas) = common::nodes(2);
    metas.iter().for_each(served);
    (dirs, metas)
}

/// Both nodes give `value` for the log, with nothing reported late.
fn both_agree(a: &Oplogs, b: &Oplogs, value: serde_json::Value) {
    for (name, ops) in [("a", a), ("b", b)] {
        let view = ops.log(&fp(), "c").expect("log");
        assert!(view.late.is_empty(), "{name}: nothing is late: {view:?}");
        assert_eq!(ops.get(&fp(), "c").expect("get"), value, "{name}");
    }
}

fn last_key(ops: &Oplogs) -> chorus_core::oplog::OpKey {
    ops.log(&fp(), "c")
        .expect("log")
        .log
        .ops()
        .last()
        .expect("an operation")
        .key()
}

/// A node whose clock is a day behind the other's.
fn behind(dir: &std::path::Path) -> Metadata {
    let day_ago = chorus_store::Clock::system().now_ms() - 86_400_000;
    let store = Store::open(
        dir,
        Options {
            create: true,
            clock: Clock::new(move || day_ago),
            ..Options::default()
        },
    )
    .expect("open");
    Metadata::new(store)
}

#[test]
fn a_push_after_the_tombstones_of_a_prune_sorts_after_what_they_folded() {
    let (da, db) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let (ma, mb) = (meta(da.path()), behind(db.path()));
    served(&ma);
    served(&mb);
    let (a, b) = (Oplogs::new(&ma), Oplogs::new(&mb));
    a.push(&fp(), "c", "counter", json!(1)).expect("push");
    a.push(&fp(), "c", "counter", json!(2)).expect("push");
    ship(&ma, &mb, &fp());
    assert_eq!(b.get(&fp(), "c").expect("get"), json!(3));
    // A folds both; B gets the tombstones, not the new head.
    assert_eq!(a.prune(&fp(), "c", &last_key(&a)).expect("prune"), 2);
    ship_some(&ma, &mb, records_only);
    // B's clock is behind: its push must still sort after what it held.
    b.push(&fp(), "c", "counter", json!(4)).expect("push");
    ship(&ma, &mb, &fp());
    ship(&mb, &ma, &fp());
    both_agree(&a, &b, json!(7));
}

#[test]
fn a_prune_waits_for_the_checkpoint_whose_tombstones_arrived() {
    let (_dirs, metas) = served_pair();
    let (ma, mb) = (&metas[0], &metas[1]);
    let (a, b) = (Oplogs::new(ma), Oplogs::new(mb));
    a.push(&fp(), "c", "counter", json!(1)).expect("push");
    let first = last_key(&a);
    a.push(&fp(), "c", "counter", json!(2)).expect("push");
    ship(ma, mb, &fp());
    // A folds its first operation; B gets the tombstone, not the head.
    assert_eq!(a.prune(&fp(), "c", &first).expect("prune"), 1);
    ship_some(ma, mb, records_only);
    // B may not fold the second one over a log that lacks the first.
    let second = last_key(&b);
    assert_eq!(
        b.prune(&fp(), "c", &second).expect("prune"),
        0,
        "B waits for A's checkpoint"
    );
    ship(ma, mb, &fp());
    assert_eq!(b.prune(&fp(), "c", &second).expect("prune"), 1);
    ship(mb, ma, &fp());
    both_agree(&a, &b, json!(3));
}

/// A later prune (here or on another node) leaves the tombstones of
/// records folded before as they are: a new version of a tombstone would
/// restart its wait to be collected and go back to the nodes that had
/// collected it.
#[test]
fn a_prune_does_not_write_over_the_tombstones_of_records_folded_before() {
    let (_dirs, metas) = served_pair();
    let (ma, mb) = (&metas[0], &metas[1]);
    let (a, b) = (Oplogs::new(ma), Oplogs::new(mb));
    a.push(&fp(), "c", "counter", json!(1)).expect("push");
    let first = last_key(&a);
    assert_eq!(a.prune(&fp(), "c", &first).expect("prune"), 1);
    ship(ma, mb, &fp());
    let records = |m: &Metadata| -> Vec<(Vec<u8>, Vec<u8>)> {
        let snap = m.store().snapshot().expect("snapshot");
        snap.iter_prefix(&fp())
            .filter(|(k, _)| k.as_bytes() != b"c")
            .map(|(k, e)| (k.as_bytes().to_vec(), e.value.to_vec()))
            .collect()
    };
    let tombstones = records(mb);
    assert!(
        !tombstones.is_empty(),
        "the folded record's tombstone arrived"
    );
    // Later operations are folded on both nodes.
    b.push(&fp(), "c", "counter", json!(2)).expect("push");
    ship(mb, ma, &fp());
    let second = last_key(&b);
    assert_eq!(b.prune(&fp(), "c", &second).expect("prune"), 1);
    assert_eq!(a.prune(&fp(), "c", &second).expect("prune"), 1);
    for (name, m) in [("a", ma), ("b", mb)] {
        let now = records(m);
        for (key, value) in &tombstones {
            let held = now.iter().find(|(k, _)| k == key).map(|(_, v)| v);
            assert_eq!(
                held,
                Some(value),
                "{name}: the tombstone of {} was written over",
                String::from_utf8_lossy(key)
            );
        }
    }
}
