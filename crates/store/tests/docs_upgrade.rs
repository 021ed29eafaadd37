//! Upgrade: a data directory written by the release before records (one
//! key per document holding its whole revision tree; fixture made by
//! commit 9701d46's build, see `fixtures/docs-v1-expected.json` for what
//! that build read back) opens and reads the same; the first edit of a
//! document converts it to one record per revision in the same commit.

use std::path::Path;

use chorus_core::FullPrefix;
use chorus_store::docs::Docs;
use chorus_store::{Metadata, Options, Store};
use serde_json::{Value, json};

/// What the old build printed for every document of the fixture.
const EXPECTED: &str = include_str!("fixtures/docs-v1-expected.json");
const IDS: [&str; 6] = ["alice", "bob", "carol", "dave", "erin", "t1"];

fn copy_fixture(to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/docs-v1");
    for entry in std::fs::read_dir(&from).expect("the fixture directory") {
        let entry = entry.expect("an entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

fn open(dir: &Path) -> Metadata {
    Metadata::new(Store::open(dir, Options::default()).expect("open the old directory"))
}

fn reads(d: &Docs) -> Value {
    let mut docs = serde_json::Map::new();
    for id in IDS {
        let get = d.get_with_conflicts(id).ok();
        let groups = d.conflicts(id).ok().map(|g| {
            g.iter()
                .map(|x| x.iter().map(|r| r.to_string()).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        });
        docs.insert(id.into(), json!({"get": get, "conflicts": groups}));
    }
    json!({"docs": docs, "all": d.all().expect("all")})
}

fn live_values(m: &Metadata, fp: &FullPrefix, key: &[u8]) -> usize {
    m.object(fp, key).expect("read").map_or(0, |o| {
        o.values().iter().filter(|v| v.bytes().is_some()).count()
    })
}

#[test]
fn an_old_directory_reads_the_same_and_its_documents_convert_on_first_edit() {
    let expected: Value = serde_json::from_str(EXPECTED).expect("expected JSON");
    let dir = tempfile::tempdir().expect("tmp");
    copy_fixture(dir.path());
    let m = open(dir.path());
    for store in ["users", "app/things"] {
        let d = Docs::open(&m, store).expect("store");
        assert_eq!(
            reads(&d),
            expected[store],
            "{store} reads as the old build did"
        );
    }
    let users = Docs::open(&m, "users").expect("users");
    let fp = users.full_prefix().clone();
    let snap = m.store().snapshot().expect("snapshot");
    assert_eq!(
        snap.group(&fp, b"alice").count(),
        1,
        "one key: the old tree"
    );

    // The first edit converts: records for every kept revision, the old
    // key deleted, in one commit.
    let before = m.store().snapshot().expect("snapshot").seq();
    let mut alice = users.get("alice").expect("alice");
    alice["age"] = json!(32);
    let saved = users.update(alice, false).expect("update alice");
    let after = m.store().snapshot().expect("snapshot");
    assert_eq!(after.seq(), before + 1, "one commit");
    assert_eq!(
        live_values(&m, &fp, b"alice"),
        0,
        "the old key is a tombstone"
    );
    let records = after.group(&fp, b"alice").count() - 1;
    assert!(records >= 4, "one record per kept revision, got {records}");
    let got = users.get_with_conflicts("alice").expect("alice");
    assert_eq!(got["_rev"], json!(saved.rev.to_string()));
    assert_eq!(got["age"], json!(32));
    assert_eq!(
        got["_conflicts"], expected["users"]["docs"]["alice"]["get"]["_conflicts"],
        "the losing branch is still a conflict"
    );
    assert_eq!(
        json!(
            users
                .conflicts("alice")
                .expect("groups")
                .iter()
                .map(|g| g.iter().map(|r| r.to_string()).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        ),
        expected["users"]["docs"]["alice"]["conflicts"],
        "the same pair collided"
    );

    // A deleted document comes back on its deleted branch; a document
    // whose winner was deleted keeps its other branch's winner.
    let bob = users
        .create(json!({"_id": "bob", "email": "bob@example.com"}))
        .expect("recreate bob");
    assert_eq!(bob.rev.n, 3, "continues the deleted branch");
    let dave = users.get_with_conflicts("dave").expect("dave");
    assert_eq!(dave, expected["users"]["docs"]["dave"]["get"]);
    users
        .delete("dave", dave["_rev"].as_str().expect("rev"))
        .expect("delete dave's winner");
    assert!(users.get("dave").is_ok(), "another branch is still live");

    // A fresh process (an empty index) reads what this one does.
    let fresh = Docs::open(&open_again(&m), "users").expect("users");
    assert_eq!(reads(&fresh), reads(&users));
    // Untouched documents still read as the old build did.
    for id in ["carol", "erin"] {
        assert_eq!(
            reads(&fresh)["docs"][id],
            expected["users"]["docs"][id],
            "{id}"
        );
    }
    let things = Docs::open(&m, "app/things").expect("things");
    assert_eq!(reads(&things), expected["app/things"]);
}

fn open_again(m: &Metadata) -> Metadata {
    Metadata::new(m.store().clone())
}
