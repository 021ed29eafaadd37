//! The channel table as the store reads it: records under
//! `$cluster/channels`, a cached table rebuilt only when they change, and
//! every handle (and process) reading the same table.

use chorus_core::NodeId;
use chorus_store::channels::full_prefix;
use chorus_store::{Metadata, PutOptions, PutValue};

mod common;
use common::meta;

fn node(n: u8) -> NodeId {
    NodeId::from_bytes([n; 16])
}

fn record(m: &Metadata, name: &str, patterns: &[&str], nodes: &[NodeId]) {
    let value = serde_json::json!({
        "patterns": patterns,
        "nodes": nodes.iter().map(ToString::to_string).collect::<Vec<_>>(),
    });
    m.put_reserved(
        &full_prefix().expect("fp"),
        name.as_bytes(),
        PutValue::Bytes(serde_json::to_vec(&value).expect("json")),
        &PutOptions::default(),
    )
    .expect("put the record");
}

#[test]
fn the_table_follows_the_records_and_is_cached_between_changes() {
    let dir = tempfile::tempdir().expect("tmp");
    let a = meta(dir.path());
    let b = meta(dir.path());
    assert_eq!(a.channels().expect("read").table.channels().count(), 0);

    record(&a, "render", &["render/*"], &[node(1), node(2)]);
    let first = a.channels().expect("read");
    assert!(first.table.get("render").is_some());
    let again = a.channels().expect("read");
    assert!(
        std::sync::Arc::ptr_eq(&first, &again),
        "unchanged records: the cached table"
    );

    // Another handle (another process, the same way) adds a channel that
    // overlaps: every reader leaves the later name out and says so.
    record(&b, "zzz", &["render/shots"], &[node(3)]);
    record(&b, "assets", &["assets/shot*"], &[node(3)]);
    for m in [&a, &b] {
        let read = m.channels().expect("read");
        assert!(read.table.get("zzz").is_none());
        assert!(read.table.get("assets").is_some());
        assert_eq!(read.problems.len(), 1, "{:?}", read.problems);
        assert!(
            read.problems[0].contains("\"zzz\" left out"),
            "{:?}",
            read.problems
        );
    }
    let fp = chorus_core::FullPrefix::parse("render/shot1").expect("fp");
    let read = a.channels().expect("read");
    assert!(read.table.serves(&node(1), &fp));
    assert!(!read.table.serves(&node(3), &fp));
}
