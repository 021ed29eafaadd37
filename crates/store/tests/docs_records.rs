//! Documents as one record per revision: the incrementally kept index of
//! every host gives the same winner, conflicts and live leaves as a
//! revision tree built from scratch from the same records, for random
//! edits on several hosts merged in random orders; an update writes
//! records in proportion to the revision, not to the tree.

use chorus_core::FullPrefix;
use chorus_core::docs::{Rev, RevTree};
use chorus_store::Metadata;
use chorus_store::docs::Docs;
use proptest::prelude::*;
use serde_json::{Value, json};

mod common;
use common::{meta, ship};

const LIMIT: usize = 4;

/// A record as read: revision, parent, deleted, body, known child.
type Rec = (Rev, Option<Rev>, bool, Option<Value>, bool);

/// The test's own reading of the records: the union of each record key's
/// live siblings, built into a tree from nothing and normalized.
fn reference(m: &Metadata, fp: &FullPrefix, id: &str) -> RevTree {
    let snap = m.store().snapshot().expect("snapshot");
    let mut tree = RevTree::default();
    for (key, entry) in snap.group(fp, id.as_bytes()) {
        if key.as_bytes() == id.as_bytes() {
            continue;
        }
        let object = chorus_core::object::Object::decode(&entry.value).expect("an object");
        let mut rec: Option<Rec> = None;
        for value in object.values() {
            let Some(bytes) = value.bytes() else { continue };
            let v: Value = serde_json::from_slice(bytes).expect("a JSON record");
            assert_eq!(v["v"], json!(1));
            let rev: Rev = v["rev"].as_str().expect("rev").parse().expect("a rev");
            let parent = v["parent"].as_str().map(|p| p.parse().expect("a rev"));
            let deleted = v["deleted"].as_bool().expect("deleted");
            let body = (!v["body"].is_null()).then(|| v["body"].clone());
            let child = v["child"].as_bool().expect("child");
            rec = Some(match rec {
                None => (rev, parent, deleted, body, child),
                Some((r, p, d, b, c)) => (r, p, d, b.or(body), c || child),
            });
        }
        if let Some((rev, parent, deleted, body, child)) = rec {
            let body = if child {
                None
            } else {
                body.and_then(|b| b.as_object().cloned())
            };
            tree.insert_record(rev, parent, deleted, body, child);
        }
    }
    tree.normalize(LIMIT);
    tree
}

/// Every answer of `docs` about `id` equals the reference's.
fn agrees(docs: &Docs, m: &Metadata, id: &str) -> Result<(), TestCaseError> {
    let tree = reference(m, docs.full_prefix(), id);
    let got = docs.get(id).ok();
    prop_assert_eq!(got, tree.winner_document(id), "winner");
    let losing: Vec<String> = tree.losing_leaves().iter().map(|r| r.to_string()).collect();
    match docs.get_with_conflicts(id) {
        Ok(doc) => {
            let listed: Vec<String> = doc
                .get("_conflicts")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            prop_assert_eq!(&listed, &losing, "_conflicts");
            prop_assert_eq!(
                docs.conflicts(id).expect("conflicts"),
                tree.conflict_groups(),
                "conflict groups"
            );
            // Paging two at a time lists the same.
            let mut paged = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let page = docs
                    .conflicts_page(id, 2, after.as_deref())
                    .expect("a page");
                paged.extend(page.conflicts.iter().map(|r| r.to_string()));
                match page.next {
                    Some(n) => after = Some(n.to_string()),
                    None => break,
                }
            }
            prop_assert_eq!(&paged, &losing, "paged conflicts");
        }
        Err(_) => prop_assert!(!tree.is_live(), "a live document must read"),
    }
    let live: Vec<Rev> = tree.live_leaves().into_iter().cloned().collect();
    let mine: Vec<Rev> = docs
        .tree(id)
        .expect("tree")
        .live_leaves()
        .into_iter()
        .cloned()
        .collect();
    prop_assert_eq!(mine, live, "live leaves");
    Ok(())
}

#[derive(Debug, Clone)]
enum Op {
    Upsert(usize, u8),
    /// Update some kept revision, keeping both.
    Branch(usize, usize, u8),
    Delete(usize, usize),
    Resolve(usize, usize),
    Ship(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    let h = 0usize..3;
    prop_oneof![
        3 => (h.clone(), 0u8..4).prop_map(|(h, v)| Op::Upsert(h, v)),
        4 => (h.clone(), 0usize..16, 0u8..4).prop_map(|(h, p, v)| Op::Branch(h, p, v)),
        1 => (h.clone(), 0usize..16).prop_map(|(h, p)| Op::Delete(h, p)),
        1 => (h.clone(), 0usize..16).prop_map(|(h, p)| Op::Resolve(h, p)),
        3 => (h.clone(), h).prop_map(|(a, b)| Op::Ship(a, b)),
    ]
}

fn body(v: u8, host: usize) -> Value {
    // Small value ranges so that some losers are subsumed by the winner.
    if v == 0 {
        json!({"_id": "page"})
    } else {
        json!({"_id": "page", "v": v, "h": host % 2})
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn every_host_agrees_with_a_tree_built_from_its_records(ops in proptest::collection::vec(op(), 1..30)) {
        let (_dirs, metas) = common::nodes(3);
        let docs: Vec<Docs> = metas
            .iter()
            .map(|m| Docs::open(m, "wiki").expect("store").with_revs_limit(LIMIT))
            .collect();
        let fp = docs[0].full_prefix().clone();
        for op in ops {
            match op {
                Op::Upsert(h, v) => {
                    docs[h].upsert(body(v, h)).expect("upsert");
                }
                Op::Branch(h, pick, v) => {
                    let tree = docs[h].tree("page").expect("tree");
                    let revs: Vec<Rev> = tree.revs().map(|(r, _)| r.clone()).collect();
                    if revs.is_empty() || !tree.is_live() {
                        continue;
                    }
                    let mut doc = body(v, h);
                    doc["_rev"] = json!(revs[pick % revs.len()].to_string());
                    // A revision only a read's self-clearing made (not
                    // stored) is refused as today: a conflict.
                    match docs[h].update(doc, true) {
                        Ok(_) | Err(chorus_store::Error::Conflict(_)) => {}
                        Err(e) => panic!("keep_both update: {e}"),
                    }
                }
                Op::Delete(h, pick) | Op::Resolve(h, pick) => {
                    let tree = docs[h].tree("page").expect("tree");
                    let live: Vec<Rev> = tree.live_leaves().into_iter().cloned().collect();
                    if live.is_empty() {
                        continue;
                    }
                    let r = live[pick % live.len()].to_string();
                    if matches!(op, Op::Delete(..)) {
                        docs[h].delete("page", &r).expect("delete");
                    } else {
                        docs[h].resolve("page", &r).expect("resolve");
                    }
                }
                Op::Ship(a, b) => {
                    if a != b {
                        ship(&metas[a], &metas[b], &fp);
                    }
                }
            }
            for (d, m) in docs.iter().zip(&metas) {
                agrees(d, m, "page")?;
            }
        }
        // A fresh process (an empty index) on each directory reads the same.
        for (d, m) in docs.iter().zip(&metas) {
            let fresh = Docs::open(&Metadata::new(m.store().clone()), "wiki")
                .expect("store")
                .with_revs_limit(LIMIT);
            prop_assert_eq!(fresh.get("page").ok(), d.get("page").ok());
            prop_assert_eq!(fresh.conflicts("page").ok(), d.conflicts("page").ok());
        }
        // After shipping everything everywhere, every host agrees.
        for a in 0..3 {
            for b in 0..3 {
                if a != b {
                    ship(&metas[a], &metas[b], &fp);
                }
            }
        }
        for a in 0..3 {
            for b in 0..3 {
                if a != b {
                    ship(&metas[a], &metas[b], &fp);
                }
            }
        }
        let first = docs[0].get("page").ok();
        for d in &docs[1..] {
            prop_assert_eq!(d.get("page").ok(), first.clone());
            prop_assert_eq!(
                d.conflicts_page("page", 1000, None).ok(),
                docs[0].conflicts_page("page", 1000, None).ok()
            );
        }
    }
}

fn log_end(m: &Metadata) -> u64 {
    m.store().status().expect("status").log_bytes
}

/// Log bytes of one update on top of the winner of a document with
/// `conflicts` conflicting revisions.
fn bytes_per_update(conflicts: usize) -> u64 {
    let dir = tempfile::tempdir().expect("tmp");
    let m = meta(dir.path());
    let docs = Docs::open(&m, "big").expect("store");
    let first = docs
        .create(json!({"_id": "d", "writer": -1}))
        .expect("create")
        .rev
        .to_string();
    for i in 0..conflicts {
        docs.update(json!({"_id": "d", "_rev": first, "writer": i}), true)
            .expect("keep_both");
    }
    let page = docs.conflicts_page("d", 10, None).expect("page");
    assert_eq!(page.conflicts.len(), (conflicts - 1).min(10));
    let mut doc = docs.get("d").expect("get");
    doc["n"] = json!(1);
    let before = log_end(&m);
    docs.update(doc, false).expect("update the winner");
    log_end(&m) - before
}

#[test]
fn an_update_writes_in_proportion_to_the_revision_not_the_tree() {
    let small = bytes_per_update(3);
    let large = bytes_per_update(300);
    assert!(large < 2048, "one update wrote {large} bytes");
    assert!(
        large <= small + 64,
        "300 conflicts: {large} bytes, 3 conflicts: {small} bytes"
    );
}

#[test]
fn bad_input_gets_a_clear_error_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let m = meta(dir.path());
    let docs = Docs::open(&m, "users").expect("store");
    let saved = docs
        .create(json!({"_id": "alice", "email": "a@example.com"}))
        .expect("create");
    let seq = || m.store().snapshot().expect("snapshot").seq();
    let before = seq();
    // A parent that does not exist, with or without keep_both.
    for keep_both in [false, true] {
        let err = docs
            .update(
                json!({"_id": "alice", "_rev": "7-0123456789abcdef0123456789abcdef", "x": 1}),
                keep_both,
            )
            .expect_err("an unknown parent");
        assert!(
            matches!(err, chorus_store::Error::Conflict(ref m) if m.contains("not a current revision")),
            "{err}"
        );
    }
    // Not a current revision, without keep_both; deleting one.
    let second = docs
        .update(
            json!({"_id": "alice", "_rev": saved.rev.to_string(), "x": 1}),
            false,
        )
        .expect("update");
    let before = before.max(seq());
    assert!(matches!(
        docs.update(
            json!({"_id": "alice", "_rev": saved.rev.to_string(), "x": 2}),
            false
        ),
        Err(chorus_store::Error::Conflict(_))
    ));
    assert!(matches!(
        docs.delete("alice", &saved.rev.to_string()),
        Err(chorus_store::Error::Conflict(_))
    ));
    // Oversized and malformed documents, bad pages.
    assert!(matches!(
        docs.upsert(json!({"_id": "alice", "big": "y".repeat(300 << 10)})),
        Err(chorus_store::Error::InvalidInput(_))
    ));
    for (limit, after) in [
        (0, None),
        (10_001, None),
        (5, Some("nope")),
        (5, Some("0-ab")),
    ] {
        let err = docs
            .conflicts_page("alice", limit, after)
            .expect_err("a bad page");
        assert!(matches!(err, chorus_store::Error::InvalidInput(_)), "{err}");
    }
    assert_eq!(seq(), before, "nothing written");
    // A damaged record is named, and an edit of its document writes
    // nothing.
    let fp = docs.full_prefix().clone();
    m.put(
        &fp,
        b"alice\x0000000000000000000003-abcdef",
        chorus_store::PutValue::Bytes(b"not json".to_vec()),
        &chorus_store::PutOptions::default(),
    )
    .expect("raw put");
    let fresh = Docs::open(&Metadata::new(m.store().clone()), "users").expect("store");
    let damaged = seq();
    let err = fresh.get("alice").expect_err("a damaged record");
    assert!(err.to_string().contains("not a document revision"), "{err}");
    assert!(
        fresh
            .update(
                json!({"_id": "alice", "_rev": second.rev.to_string(), "x": 3}),
                false
            )
            .is_err()
    );
    assert_eq!(seq(), damaged, "nothing written");
}

/// What a stage's push is checked with: every record a document store
/// wrote passes; a record whose body was changed under its id, or that
/// sits under another revision's key, is refused with the reason.
#[test]
fn revision_records_are_checked_against_their_key_and_content() {
    let dir = tempfile::tempdir().expect("tmp");
    let m = meta(dir.path());
    let docs = Docs::open(&m, "users").expect("open");
    let first = docs
        .create(json!({"_id": "alice", "n": 1}))
        .expect("create");
    let rev = first.rev.to_string();
    docs.update(json!({"_id": "alice", "_rev": rev, "n": 2}), false)
        .expect("update");
    docs.update(json!({"_id": "alice", "_rev": rev, "n": 3}), true)
        .expect("keep both");
    let fp = docs.full_prefix().clone();
    let snap = m.store().snapshot().expect("snap");
    let records: Vec<(Vec<u8>, chorus_core::object::Object)> = snap
        .group(&fp, b"alice")
        .map(|(k, e)| {
            (
                k.to_vec(),
                chorus_core::object::Object::decode(&e.value).expect("object"),
            )
        })
        .collect();
    assert_eq!(records.len(), 3);
    for (k, o) in &records {
        chorus_store::docs::validate_record(k, o).expect("a record the store wrote");
    }
    let node = m.store().node_id();
    let object = |bytes: &[u8]| {
        chorus_core::object::Object::modify(
            None,
            &chorus_core::object::Context::default(),
            chorus_core::object::Value::data(bytes, chorus_core::object::Hlc(1), node),
            node,
        )
    };
    // A leaf's record with its body changed, its id kept.
    let (leaf_key, leaf) = records
        .iter()
        .find(|(_, o)| {
            o.values().iter().any(|v| {
                v.bytes()
                    .is_some_and(|b| b.windows(4).any(|w| w == b"\"n\":"))
            })
        })
        .expect("a leaf with a body");
    let text = String::from_utf8_lossy(leaf.values()[0].bytes().expect("bytes")).into_owned();
    let forged = text
        .replacen("\"n\":2", "\"n\":99", 1)
        .replacen("\"n\":3", "\"n\":99", 1);
    let err = chorus_store::docs::validate_record(leaf_key, &object(forged.as_bytes()))
        .expect_err("forged body");
    assert!(err.to_string().contains("not the hash"), "{err}");
    // A genuine record under another revision's key.
    let other = records
        .iter()
        .find(|(k, _)| k != leaf_key)
        .expect("another");
    let err = chorus_store::docs::validate_record(&other.0, leaf).expect_err("misplaced");
    assert!(
        err.to_string().contains("not the one its key names"),
        "{err}"
    );
    // Not JSON at all.
    let err = chorus_store::docs::validate_record(leaf_key, &object(b"junk")).expect_err("junk");
    assert!(err.to_string().contains("malformed"), "{err}");
    // A key that is not a revision record passes.
    chorus_store::docs::validate_record(b"alice", &object(b"junk")).expect("not a record");
}
