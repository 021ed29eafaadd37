//! A copied directory's writes under the original's node id: a merge into
//! the original skips them and records the evidence; the copy takes a new
//! identity, keeps its data, and its merge keeps both writes as siblings.

use chorus_core::FullPrefix;
use chorus_store::{Metadata, Options, Origin, PutOptions, PutValue, Store};

fn fp() -> FullPrefix {
    FullPrefix::parse("assets/shots").expect("full prefix")
}

fn open(dir: &std::path::Path) -> Metadata {
    let store = Store::open(
        dir,
        Options {
            create: true,
            ..Options::default()
        },
    )
    .expect("open");
    Metadata::new(store)
}

fn put(meta: &Metadata, value: &str) {
    meta.put(
        &fp(),
        b"cut",
        PutValue::Bytes(value.as_bytes().to_vec()),
        &PutOptions::default(),
    )
    .expect("put");
}

fn values(meta: &Metadata) -> Vec<String> {
    let object = meta.object(&fp(), b"cut").expect("read").expect("present");
    let mut all: Vec<String> = object
        .values()
        .iter()
        .filter_map(|v| v.bytes().map(|b| String::from_utf8_lossy(b).into_owned()))
        .collect();
    all.sort();
    all
}

fn copy(from: &std::path::Path, to: &std::path::Path) {
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(ok.success());
}

#[test]
fn a_copys_write_under_this_nodes_dot_is_skipped_until_the_copy_takes_a_new_identity() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    put(&open(&a_dir), "v1");
    copy(&a_dir, &b_dir);
    let (a, b) = (open(&a_dir), open(&b_dir));
    assert_eq!(a.store().node_id(), b.store().node_id());
    put(&a, "from-a");
    put(&b, "from-b");
    let b_object = b.object(&fp(), b"cut").expect("read").expect("present");

    // The original skips the copy's object and says so.
    let from_b = Origin::Peer([2; 16]);
    let changed = a
        .merge(from_b, vec![(fp(), b"cut".to_vec(), b_object.clone())])
        .expect("merge");
    assert_eq!(changed, 0);
    assert_eq!(values(&a), vec!["from-a"]);
    let seen = a.store().identity_conflicts();
    assert_eq!(seen.len(), 1);
    assert_eq!((seen[0].origin, &seen[0].key[..]), (from_b, &b"cut"[..]));
    assert_eq!(a.store().identity_conflict_count(), 1);
    // Shared history is no evidence.
    let base = a.store().identity_conflict_count();
    drop(b);

    // The copy takes a new identity, keeping its data.
    let old = a.store().node_id();
    let (was, new) = Store::new_identity(&b_dir, &Options::default()).expect("new identity");
    assert_eq!(was, old);
    assert_ne!(new, old);
    let b = open(&b_dir);
    assert_eq!(b.store().node_id(), new);
    assert_eq!(values(&b), vec!["from-b"]);

    // The copy merges the original's object: both writes stay.
    let a_object = a.object(&fp(), b"cut").expect("read").expect("present");
    b.merge(
        Origin::Peer(*old.as_bytes()),
        vec![(fp(), b"cut".to_vec(), a_object)],
    )
    .expect("merge");
    assert_eq!(values(&b), vec!["from-a", "from-b"]);
    assert_eq!(b.store().identity_conflict_count(), 0);
    // And the original takes the copy's answer without alarm.
    let b_object = b.object(&fp(), b"cut").expect("read").expect("present");
    a.merge(
        Origin::Peer(*new.as_bytes()),
        vec![(fp(), b"cut".to_vec(), b_object)],
    )
    .expect("merge");
    assert_eq!(values(&a), vec!["from-a", "from-b"]);
    assert_eq!(a.store().identity_conflict_count(), base);
    assert_eq!(
        a.prefix_hash(&fp()).expect("hash"),
        b.prefix_hash(&fp()).expect("hash")
    );
}

#[test]
fn new_identity_refuses_a_directory_that_was_never_initialized() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("none");
    assert!(Store::new_identity(&dir, &Options::default()).is_err());
    assert!(!dir.join("node-id").exists());
}
