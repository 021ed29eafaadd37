//! Reads of a real node do work bounded by the request, not by the data:
//!
//! - `GET /v1/sync/pull?cursor=` does a bounded scan whatever the scope:
//!   an old cursor with a narrow scope on a long log is answered after at
//!   most `PULL_SCAN_COMMITS_MAX` (10,000) commits, with `more` and a
//!   cursor that moves past what was read even when nothing in it was in
//!   scope; following the cursors returns each in-scope change once.
//! - `GET /v1/docs/{store}?limit=` reads the documents of its page, not
//!   every document of the store (a damaged one past the page does not
//!   fail it).

use std::collections::BTreeSet;

use chorus_core::FullPrefix;
use chorus_store::{Metadata, Options, PutOptions, PutValue, Store, SyncMode, Write};

mod common;
use common::http::{curl, json, start};

/// Commits a pull with a cursor reads at most (the node's bound).
const SCAN_MAX: u64 = 10_000;
/// Commits in the log.
const COMMITS: u64 = 25_000;

fn seq_of(cursor: &str) -> u64 {
    cursor
        .rsplit('-')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a cursor GENERATION-OFFSET-SEQ: {cursor:?}"))
}

#[test]
fn an_old_cursor_with_a_narrow_scope_is_answered_after_a_bounded_scan_and_resumes_exactly() {
    let dir = tempfile::tempdir().expect("tmp");
    // The log is written before the node starts (the node reads it as any
    // process on the directory would).
    let store = Store::open(
        dir.path(),
        Options {
            create: true,
            sync: SyncMode::Never,
            ..Options::default()
        },
    )
    .expect("open");
    let from = store.cursor().expect("cursor").to_string();
    let meta = Metadata::new(store);
    let noise = FullPrefix::new("noise", "n").expect("name");
    let narrow = FullPrefix::new("app", "narrow").expect("name");
    let mut expected = BTreeSet::new();
    for i in 0..COMMITS {
        // Four in-scope commits, all past the first two scans.
        let (fp, key) = if i > 20_000 && i % 1000 == 0 {
            expected.insert(format!("k{i}"));
            (&narrow, format!("k{i}"))
        } else {
            (&noise, format!("n{}", i % 100))
        };
        meta.put(
            fp,
            key.as_bytes(),
            PutValue::Bytes(b"v".to_vec()),
            &PutOptions::default(),
        )
        .expect("put");
    }
    drop(meta);
    assert_eq!(expected.len(), 4);
    let (_node, url) = start(dir.path());

    let mut cursor = from;
    let mut seen = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..20 {
        let (code, status, body) = curl(&[&format!(
            "{url}/v1/sync/pull?prefix=app&sub=narrow&cursor={cursor}"
        )]);
        assert_eq!((code, status), (0, 200), "{body}");
        let answer = json(&body);
        let next = answer["cursor"].as_str().expect("a cursor").to_string();
        let more = answer["more"].as_bool().expect("more");
        let scanned = seq_of(&next) - seq_of(&cursor);
        assert!(
            scanned <= SCAN_MAX,
            "one request read {scanned} commits (at most {SCAN_MAX})"
        );
        for o in answer["objects"].as_array().expect("objects") {
            assert_eq!(
                (o["prefix"].as_str(), o["sub"].as_str()),
                (Some("app"), Some("narrow"))
            );
            seen.push(o["key"].as_str().expect("key").to_string());
        }
        answers.push((answer["objects"].as_array().map_or(0, Vec::len), more));
        if !more {
            break;
        }
        assert!(seq_of(&next) > seq_of(&cursor), "the cursor moves on");
        cursor = next;
    }
    assert!(
        answers.len() >= 3,
        "{COMMITS} commits take several bounded scans: {answers:?}"
    );
    assert_eq!(
        answers[0],
        (0, true),
        "the first scan found nothing in scope, and says to go on"
    );
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "each change once: {seen:?}");
    assert_eq!(unique, expected);
}

#[test]
fn a_page_of_documents_reads_only_its_documents() {
    let dir = tempfile::tempdir().expect("tmp");
    {
        let meta = Metadata::new(
            Store::open(
                dir.path(),
                Options {
                    create: true,
                    ..Options::default()
                },
            )
            .expect("open"),
        );
        let docs = chorus_store::docs::Docs::open(&meta, "users").expect("store");
        for id in ["c", "a", "b"] {
            docs.create(serde_json::json!({"_id": id})).expect("create");
        }
        // A damaged revision record of a document that sorts last.
        let fp = FullPrefix::new("docs", "users").expect("name");
        let key = b"zz\x0000000000000000000001-00000000000000000000000000000000";
        meta.store()
            .write(vec![Write::put(&fp, key, b"not a document")])
            .expect("write");
    }
    let (_node, url) = start(dir.path());
    let (code, status, body) = curl(&[&format!("{url}/v1/docs/users?limit=2")]);
    assert_eq!((code, status), (0, 200), "{body}");
    let page = json(&body);
    let ids: Vec<&str> = page["docs"]
        .as_array()
        .expect("docs")
        .iter()
        .filter_map(|d| d["_id"].as_str())
        .collect();
    assert_eq!(
        (ids, page["next"].as_str()),
        (vec!["a", "b"], Some("b")),
        "{page}"
    );
}
