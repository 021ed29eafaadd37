//! The document store: its operations, multiprocess-store's scenarios
//! with real processes, siblings from two hosts merging to one winner, bad
//! input, and a writer killed at random moments.

use std::time::Duration;

use chorus_store::Error;
use chorus_store::docs::Docs;
use serde_json::{Value, json};

mod common;
use common::{Worker, meta, ship};

fn rev_of(doc: &Value) -> String {
    doc["_rev"].as_str().expect("_rev").to_string()
}

#[test]
fn create_get_update_upsert_delete_and_all() {
    let dir = tempfile::tempdir().expect("tmp");
    let m = meta(dir.path());
    let docs = Docs::open(&m, "hello-store").expect("store");
    assert_eq!(docs.full_prefix().to_string(), "docs/hello-store");
    let saved = docs
        .create(json!({"_id": "hello", "email": "alice@example.com"}))
        .expect("create");
    assert_eq!(saved.rev.n, 1);
    let err = docs
        .create(json!({"_id": "hello", "email": "other"}))
        .expect_err("twice");
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    assert!(err.to_string().contains("already exists"), "{err}");
    let mut doc = docs.get("hello").expect("get");
    assert_eq!(doc["email"], "alice@example.com");
    assert_eq!(doc["_id"], "hello");
    doc["email"] = json!("alice@example.org");
    let updated = docs.update(doc, false).expect("update");
    assert_eq!(updated.rev.n, 2);
    assert_eq!(
        docs.get("hello").expect("get")["email"],
        "alice@example.org"
    );
    // The first revision's body is no longer current.
    let first = docs.get_rev("hello", &saved.rev.to_string());
    assert!(matches!(first, Err(Error::NotFound(_))), "{first:?}");
    assert_eq!(
        docs.get_rev("hello", &updated.rev.to_string())
            .expect("leaf")["email"],
        "alice@example.org"
    );
    // Generated ids, upsert.
    let anon = docs.create(json!({"n": 1})).expect("create without id");
    assert_eq!(anon.id.len(), 32);
    let up = docs
        .upsert(json!({"_id": "counter", "n": 1}))
        .expect("upsert creates");
    assert_eq!(up.rev.n, 1);
    let up = docs
        .upsert(json!({"_id": "counter", "n": 2}))
        .expect("upsert updates");
    assert_eq!(up.rev.n, 2);
    let all = docs.all().expect("all");
    let ids: Vec<&str> = all.iter().filter_map(|d| d["_id"].as_str()).collect();
    let mut expected = vec!["counter", "hello", anon.id.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected);
    // Delete needs the current revision.
    let err = docs
        .delete("hello", &saved.rev.to_string())
        .expect_err("stale");
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    docs.delete("hello", &updated.rev.to_string())
        .expect("delete");
    assert!(matches!(docs.get("hello"), Err(Error::NotFound(_))));
    assert_eq!(docs.all().expect("all").len(), 2);
    // Created again after the deletion: the branch goes on.
    let again = docs
        .create(json!({"_id": "hello", "v": 2}))
        .expect("recreate");
    assert_eq!(again.rev.n, 4);
}

#[test]
fn alice_and_bob_in_two_processes_with_keep_both_leave_one_winner_and_the_pair_as_conflict() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path().to_str().expect("utf-8");
    let m = meta(dir.path());
    let docs = Docs::open(&m, "users").expect("store");
    docs.create(json!({"_id": "hello", "name": "start"}))
        .expect("create");
    let mut alice = Worker::spawn(&["doc-edit", d, "users", "hello", "name", "alice", "true"]);
    let mut bob = Worker::spawn(&["doc-edit", d, "users", "hello", "name", "bob", "true"]);
    let (ra, rb) = (alice.expect_line("read "), bob.expect_line("read "));
    assert_eq!(ra, rb, "both read the same revision");
    alice.tell("go");
    bob.tell("go");
    let a = alice.expect_line("saved ");
    let b = bob.expect_line("saved ");
    alice.finish();
    bob.finish();
    let mut pair = vec![a.clone(), b.clone()];
    pair.sort();
    // Every reader, in this process and in a fresh one, agrees.
    let groups = docs.conflicts("hello").expect("conflicts");
    let names: Vec<Vec<String>> = groups
        .iter()
        .map(|g| g.iter().map(|r| r.to_string()).collect())
        .collect();
    assert_eq!(names, vec![pair.clone()]);
    let winner = rev_of(&docs.get("hello").expect("get"));
    assert_eq!(&winner, pair.last().expect("two"));
    let fresh = meta(dir.path());
    let other = Docs::open(&fresh, "users").expect("store");
    assert_eq!(rev_of(&other.get("hello").expect("get")), winner);
    assert_eq!(
        rev_of(&other.get_with_conflicts("hello").expect("get")).len(),
        winner.len()
    );
    assert_eq!(
        other.get_with_conflicts("hello").expect("get")["_conflicts"],
        json!([pair[0]])
    );
}

#[test]
fn alice_and_bob_without_keep_both_exactly_one_succeeds() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path().to_str().expect("utf-8");
    let m = meta(dir.path());
    let docs = Docs::open(&m, "users").expect("store");
    docs.create(json!({"_id": "hello", "name": "start"}))
        .expect("create");
    let mut alice = Worker::spawn(&["doc-edit", d, "users", "hello", "name", "alice", "false"]);
    let mut bob = Worker::spawn(&["doc-edit", d, "users", "hello", "name", "bob", "false"]);
    alice.expect_line("read ");
    bob.expect_line("read ");
    alice.tell("go");
    bob.tell("go");
    let outcomes = [alice.line(), bob.line()];
    alice.finish();
    bob.finish();
    let saved = outcomes.iter().filter(|l| l.starts_with("saved ")).count();
    let conflicts = outcomes.iter().filter(|l| *l == "conflict").count();
    assert_eq!((saved, conflicts), (1, 1), "{outcomes:?}");
    assert!(docs.conflicts("hello").expect("conflicts").is_empty());
    let name = docs.get("hello").expect("get")["name"].clone();
    assert!(name == "alice" || name == "bob", "{name}");
}

#[test]
fn edits_from_two_hosts_merge_as_siblings_and_every_host_agrees() {
    // Two directories stand for two hosts; their objects meet through
    // `Metadata::merge`, as replication delivers them.
    let (d1, d2) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let (m1, m2) = (meta(d1.path()), meta(d2.path()));
    let (h1, h2) = (
        Docs::open(&m1, "wiki").expect("s"),
        Docs::open(&m2, "wiki").expect("s"),
    );
    let fp = h1.full_prefix().clone();
    let created = h1
        .create(json!({"_id": "page", "text": "v0"}))
        .expect("create");
    ship(&m1, &m2, &fp);
    let base = created.rev.to_string();
    h1.update(
        json!({"_id": "page", "_rev": base, "text": "host one", "one": true}),
        false,
    )
    .expect("edit on one");
    h2.update(
        json!({"_id": "page", "_rev": base, "text": "host two", "two": true}),
        false,
    )
    .expect("edit on two");
    ship(&m1, &m2, &fp);
    ship(&m2, &m1, &fp);
    let (g1, g2) = (h1.get("page").expect("get"), h2.get("page").expect("get"));
    assert_eq!(g1, g2, "the same winner on both hosts");
    let (c1, c2) = (
        h1.conflicts("page").expect("c"),
        h2.conflicts("page").expect("c"),
    );
    assert_eq!(c1, c2);
    assert_eq!(c1.len(), 1);
    assert_eq!(c1[0].iter().map(|r| r.n).collect::<Vec<_>>(), vec![2, 2]);
    // Resolving on one host settles it on both after the next exchange.
    let winner = rev_of(&g1);
    h1.resolve("page", &winner).expect("resolve");
    ship(&m1, &m2, &fp);
    assert!(h2.conflicts("page").expect("c").is_empty());
    assert_eq!(h1.get("page").expect("g"), h2.get("page").expect("g"));
}

#[test]
fn bad_input_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let m = meta(dir.path());
    let docs = Docs::open(&m, "users").expect("store");
    let before = m.store().snapshot().expect("snap").seq();
    let long = "x".repeat(600);
    for doc in [
        json!({"_id": "../x"}),
        json!({"_id": "a/b"}),
        json!({"_id": ""}),
        json!({"_id": long}),
        json!({"_id": "ok", "_rev": "not-a-rev"}),
        json!({"_id": "ok", "_secret": 1}),
        json!("just a string"),
        json!({"_id": "ok", "big": "y".repeat(300 << 10)}),
    ] {
        let err = docs.create(doc.clone()).expect_err("refused");
        assert!(matches!(err, Error::InvalidInput(_)), "{doc}: {err}");
        let err = docs.upsert(doc.clone()).expect_err("refused");
        assert!(matches!(err, Error::InvalidInput(_)), "{doc}: {err}");
    }
    for id in ["../x", "a/b", ""] {
        assert!(matches!(docs.get(id), Err(Error::InvalidInput(_))), "{id}");
        assert!(
            matches!(docs.delete(id, "1-ab"), Err(Error::InvalidInput(_))),
            "{id}"
        );
    }
    assert!(matches!(
        docs.delete("ok", "nope"),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        docs.update(json!({"_id": "ok"}), false),
        Err(Error::InvalidInput(_))
    ));
    for name in ["", "a/b/c", "$cluster/x", "$cluster", "x/$y", "../x"] {
        assert!(Docs::open(&m, name).is_err(), "{name}");
    }
    assert_eq!(
        m.store().snapshot().expect("snap").seq(),
        before,
        "nothing written"
    );
}

#[test]
fn a_reader_never_sees_a_half_written_document_when_the_writer_is_killed() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path().to_str().expect("utf-8");
    let m = meta(dir.path());
    let docs = Docs::open(&m, "churn").expect("store");
    let mut acked = 0u64;
    for round in 0..20u64 {
        let mut w = Worker::spawn(&["doc-churn", d, "churn", "doc"]);
        // Let it write for a moment that varies by round, reading as it goes.
        let until = std::time::Instant::now() + Duration::from_millis(20 + (round * 37) % 120);
        while std::time::Instant::now() < until {
            let line = w.line();
            if let Some(i) = line.strip_prefix("ack ") {
                acked = i.parse().expect("number");
            }
            if let Ok(doc) = docs.get("doc") {
                assert_eq!(doc["a"], doc["b"], "a torn document: {doc}");
                let i = doc["a"].as_u64().expect("a");
                assert_eq!(
                    doc["filler"].as_str().map(str::len),
                    Some((i % 500) as usize)
                );
            }
        }
        w.child.kill().expect("SIGKILL");
        w.child.wait().expect("reap");
        // What was acknowledged is there, whole.
        let doc = Docs::open(&meta(dir.path()), "churn")
            .expect("store")
            .get("doc")
            .expect("get");
        assert_eq!(doc["a"], doc["b"]);
        assert!(
            doc["a"].as_u64().expect("a") >= acked,
            "{doc} < ack {acked}"
        );
    }
    assert!(acked > 20, "the writer made progress: {acked}");
}
