//! Paging documents: every live document once, in id order, whatever the
//! page size; deleted documents skipped; a run of deleted documents
//! longer than the skip bound ends a page early instead of reading on;
//! and a page never reads a document it does not show (a damaged one
//! past the page does not fail it).

use chorus_core::FullPrefix;
use chorus_store::docs::{Docs, PAGE_SKIP_MAX};
use chorus_store::{Options, Store, SyncMode, Write};
use serde_json::{Value, json};

fn open(dir: &std::path::Path) -> chorus_store::Metadata {
    chorus_store::Metadata::new(
        Store::open(
            dir,
            Options {
                create: true,
                sync: SyncMode::Never,
                ..Options::default()
            },
        )
        .expect("open"),
    )
}

fn ids(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .map(|d| d["_id"].as_str().expect("_id").to_string())
        .collect()
}

/// Every page of `limit` from the start: the ids, and how many pages.
fn every_page(docs: &Docs, limit: usize) -> (Vec<String>, usize) {
    let (mut all, mut pages, mut after) = (Vec::new(), 0, None::<String>);
    loop {
        let (page, next) = docs.page(limit, after.as_deref()).expect("page");
        assert!(page.len() <= limit);
        all.extend(ids(&page));
        pages += 1;
        match next {
            Some(n) => after = Some(n),
            None => return (all, pages),
        }
        assert!(pages < 10_000, "paging does not end");
    }
}

#[test]
fn pages_hold_every_live_document_once_in_id_order() {
    let dir = tempfile::tempdir().expect("tmp");
    let docs = Docs::open(&open(dir.path()), "users").expect("store");
    let mut live = Vec::new();
    for i in (0..40).rev() {
        let id = format!("u{i:02}");
        let saved = docs.create(json!({"_id": id})).expect("create");
        if i % 4 == 0 {
            docs.delete(&id, &saved.rev.to_string()).expect("delete");
        } else {
            live.push(id);
        }
    }
    live.sort();
    for limit in [1, 3, 7, 30, 100] {
        let (all, pages) = every_page(&docs, limit);
        assert_eq!(all, live, "limit {limit}");
        assert_eq!(pages, live.len().div_ceil(limit).max(1), "limit {limit}");
    }
    assert_eq!(ids(&docs.all().expect("all")), live);
}

#[test]
fn a_long_run_of_deleted_documents_ends_a_page_early_and_paging_goes_on() {
    let dir = tempfile::tempdir().expect("tmp");
    let docs = Docs::open(&open(dir.path()), "users").expect("store");
    docs.create(json!({"_id": "a"})).expect("create");
    for i in 0..PAGE_SKIP_MAX + 10 {
        let id = format!("d{i:05}");
        let saved = docs.create(json!({"_id": id})).expect("create");
        docs.delete(&id, &saved.rev.to_string()).expect("delete");
    }
    docs.create(json!({"_id": "z"})).expect("create");
    let (first, next) = docs.page(10, None).expect("page");
    assert_eq!(ids(&first), ["a"], "the page ends at the skip bound");
    let next = next.expect("a next page");
    let (second, last) = docs.page(10, Some(&next)).expect("page");
    assert_eq!((ids(&second), last), (vec!["z".to_string()], None));
}

#[test]
fn a_page_does_not_read_documents_past_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let m = open(dir.path());
    let docs = Docs::open(&m, "users").expect("store");
    for id in ["c", "a", "b"] {
        docs.create(json!({"_id": id})).expect("create");
    }
    // A damaged revision record of a document that sorts last.
    let fp = FullPrefix::parse("docs/users").expect("name");
    let key = b"zz\x0000000000000000000001-00000000000000000000000000000000".to_vec();
    m.store()
        .write(vec![Write::put(&fp, &key, b"not a document")])
        .expect("write");
    assert!(docs.all().is_err(), "reading everything meets the damage");
    let (page, next) = docs
        .page(2, None)
        .expect("the first page reads a, b and c only");
    assert_eq!(
        (ids(&page), next.as_deref()),
        (vec!["a".into(), "b".into()], Some("b"))
    );
}
