//! A data directory written before operation logs had records (every
//! operation inline in the value at the path, format 1) opens, reads the
//! same values and logs, and is converted on each log's first push.
//! `fixtures/oplogs-v1` was written by the operation-log code of commit
//! e015a10; `fixtures/oplogs-v1-expected.json` is what that build read back.

use std::path::Path;

use chorus_core::FullPrefix;
use chorus_store::oplog::Oplogs;
use chorus_store::{Metadata, Options, Store};
use serde_json::{Value, json};

fn copy_fixture(to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/oplogs-v1");
    for name in ["current", "gen-0000000001.log", "node-id"] {
        std::fs::copy(from.join(name), to.join(name)).expect("copy the fixture");
    }
}

fn expected() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/oplogs-v1-expected.json");
    serde_json::from_slice(&std::fs::read(path).expect("read")).expect("json")
}

#[test]
fn a_version_one_directory_reads_the_same_and_converts_on_push() {
    let dir = tempfile::tempdir().expect("tmp");
    copy_fixture(dir.path());
    let m =
        Metadata::new(Store::open(dir.path(), Options::default()).expect("open the old directory"));
    let ops = Oplogs::new(&m);
    let fp = FullPrefix::parse("app/stats").expect("fp");
    let want = expected();
    for path in ["visits", "tags", "events", "cfg"] {
        assert_eq!(
            ops.get(&fp, path).expect("get"),
            want[path]["value"],
            "{path}"
        );
        assert_eq!(
            ops.log(&fp, path).expect("log").to_json(),
            want[path]["log"],
            "{path}"
        );
    }
    // The first push converts: the head loses its operations, each becomes
    // a record, and the value goes on from where it was.
    assert_eq!(
        ops.push(&fp, "visits", "counter", json!(5)).expect("push"),
        json!(15)
    );
    assert_eq!(
        ops.push(&fp, "tags", "set", json!({"add": "d"}))
            .expect("push"),
        json!(["a", "c", "d"])
    );
    let events = ops
        .push(&fp, "events", "list", json!({"i": 6}))
        .expect("push");
    assert_eq!(events.as_array().map(Vec::len), Some(7));
    let snap = m.store().snapshot().expect("snap");
    for (path, records) in [("visits", 5), ("tags", 5), ("events", 3)] {
        let keys = snap.group(&fp, path.as_bytes()).count();
        assert_eq!(keys, 1 + records, "{path}: the head and {records} records");
        let head =
            chorus_core::object::Object::decode(&snap.get(&fp, path.as_bytes()).expect("head"))
                .expect("object");
        for v in head.values() {
            let text = String::from_utf8_lossy(v.bytes().expect("bytes")).into_owned();
            assert!(
                !text.contains("\"ops\""),
                "{path}: the head holds no operations: {text}"
            );
        }
    }
    // The checkpoint the old build made is kept.
    let log = ops.log(&fp, "events").expect("log").to_json();
    assert_eq!(log["checkpoint"], want["events"]["log"]["checkpoint"]);
    // A fresh process reads the converted logs the same.
    let again = Oplogs::new(&Metadata::new(
        Store::open(dir.path(), Options::default()).expect("reopen"),
    ));
    assert_eq!(again.get(&fp, "visits").expect("get"), json!(15));
    assert_eq!(again.get(&fp, "cfg").expect("get"), want["cfg"]["value"]);
}
