//! Copied data directories. A copy that is somewhere else (another inode
//! or device: `cp -a`, a restored backup) takes a new node id when it is
//! first opened, before anything writes; a moved directory keeps its id. A
//! copy that kept its place (a cloned disk) takes one with
//! `Store::new_identity`, which gives what it wrote after the copy point
//! new dots, so the original's writes and the copy's stay siblings.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use chorus_core::{FullPrefix, NodeId};
use chorus_store::{Former, IDENTITIES, Metadata, Options, Origin, PutOptions, PutValue, Store};

fn fp() -> FullPrefix {
    FullPrefix::parse("assets/shots").expect("full prefix")
}

fn open(dir: &Path) -> Metadata {
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

fn put(meta: &Metadata, key: &str, value: &str) {
    meta.put(
        &fp(),
        key.as_bytes(),
        PutValue::Bytes(value.as_bytes().to_vec()),
        &PutOptions::default(),
    )
    .expect("put");
}

fn values(meta: &Metadata, key: &str) -> Vec<String> {
    let object = meta
        .object(&fp(), key.as_bytes())
        .expect("read")
        .expect("present");
    let mut all: Vec<String> = object
        .values()
        .iter()
        .filter_map(|v| v.bytes().map(|b| String::from_utf8_lossy(b).into_owned()))
        .collect();
    all.sort();
    all
}

/// Copies the files of a data directory, as a backup tool would.
fn copy(from: &Path, to: &Path) {
    std::fs::create_dir(to).expect("create the copy");
    for entry in std::fs::read_dir(from).expect("list") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy a file");
    }
}

/// What a cloned disk looks like: the copy's `place` names its own
/// device and inode, with the original's record otherwise.
fn as_if_cloned(dir: &Path) {
    let meta = std::fs::metadata(dir).expect("stat");
    let path = dir.join("place");
    let text = std::fs::read_to_string(&path).expect("place");
    let since = text
        .split_whitespace()
        .skip_while(|w| *w != "since")
        .nth(1)
        .expect("since")
        .to_string();
    std::fs::write(
        &path,
        format!("dev {} ino {} since {since}\n", meta.dev(), meta.ino()),
    )
    .expect("rewrite place");
}

/// Creates a store in `dir` holding one write, closed again; its node id.
fn written(dir: &Path) -> NodeId {
    let a = open(dir);
    put(&a, "cut", "v1");
    a.store().node_id()
}

fn former_of(meta: &Metadata, id: NodeId) -> Vec<String> {
    let fp = FullPrefix::parse(IDENTITIES).expect("fp");
    let object = meta
        .object(&fp, id.to_string().as_bytes())
        .expect("read")
        .expect("a record");
    let bytes = object
        .lww_value()
        .and_then(|v| v.bytes())
        .expect("bytes")
        .to_vec();
    serde_json::from_slice::<Former>(&bytes)
        .expect("json")
        .former
}

#[test]
fn a_copied_directory_takes_a_new_identity_at_open_and_the_original_keeps_its_own() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    let original = written(&a_dir);
    copy(&a_dir, &b_dir);
    let b = open(&b_dir);
    assert_ne!(b.store().node_id(), original);
    assert_eq!(values(&b, "cut"), vec!["v1"]);
    assert_eq!(
        former_of(&b, b.store().node_id()),
        vec![original.to_string()]
    );
    // Opened again, the copy keeps the id it took.
    let copy_id = b.store().node_id();
    drop(b);
    assert_eq!(open(&b_dir).store().node_id(), copy_id);
    // The original is where it was: it keeps its id.
    assert_eq!(open(&a_dir).store().node_id(), original);
}

#[test]
fn a_moved_directory_keeps_its_identity() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (a_dir, moved) = (tmp.path().join("a"), tmp.path().join("moved"));
    let id = written(&a_dir);
    std::fs::rename(&a_dir, &moved).expect("move");
    let m = open(&moved);
    assert_eq!(m.store().node_id(), id);
    assert_eq!(values(&m, "cut"), vec!["v1"]);
}

#[test]
fn a_directory_from_before_places_records_its_place_and_keeps_its_id() {
    let tmp = tempfile::tempdir().expect("tmp");
    let a_dir = tmp.path().join("a");
    let id = written(&a_dir);
    std::fs::remove_file(a_dir.join("place")).expect("as an older release left it");
    assert_eq!(open(&a_dir).store().node_id(), id);
    assert!(a_dir.join("place").exists());
    let mode = std::fs::metadata(a_dir.join("place")).expect("stat").mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn two_handles_opening_a_copy_at_once_agree_on_one_new_id() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    let original = written(&a_dir);
    copy(&a_dir, &b_dir);
    let ids: Vec<NodeId> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| open(&b_dir).store().node_id()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_ne!(ids[0], original);
    let b = open(&b_dir);
    assert_eq!(b.store().node_id(), ids[0]);
    assert_eq!(former_of(&b, ids[0]), vec![original.to_string()]);
}

#[test]
fn a_clone_taking_a_new_identity_keeps_shared_values_and_caps_the_old_counter() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    let a = open(&a_dir);
    put(&a, "cut", "v1");
    put(&a, "shared", "s1");
    drop(a);
    // A directory whose place was recorded after these writes (made by an
    // older release): the place's `since` is after them.
    std::fs::remove_file(a_dir.join("place")).expect("remove place");
    let a = open(&a_dir);
    let old = a.store().node_id();
    let copy_point = a.store().snapshot().expect("snapshot").last_ts();
    drop(a);
    copy(&a_dir, &b_dir);
    as_if_cloned(&b_dir);
    let (a, b) = (open(&a_dir), open(&b_dir));
    assert_eq!(b.store().node_id(), old, "a clone is not found at open");
    put(&a, "cut", "from-a");
    put(&b, "cut", "from-b");
    put(&b, "own", "b1");
    drop(b);

    let (was, new) = Store::new_identity(&b_dir, &Options::default()).expect("new identity");
    assert_eq!(was, old);
    let b = open(&b_dir);
    assert_eq!(b.store().node_id(), new);
    // What the clone wrote after the copy point is the new id's; the old
    // id's counter claims no more than the history both share.
    let cut = b.object(&fp(), b"cut").expect("read").expect("present");
    let entry_of = |object: &chorus_core::object::Object, id: NodeId| {
        object
            .clock()
            .entries()
            .iter()
            .find(|e| e.id == id)
            .cloned()
    };
    let old_entry = entry_of(&cut, old).expect("the old id's entry stays");
    assert!(old_entry.counter <= copy_point + 1);
    assert!(old_entry.values.is_empty());
    let new_entry = entry_of(&cut, new).expect("the new id's write");
    assert_eq!(new_entry.values.len(), 1);
    // A value both hold stays under the old id, with its dot.
    let shared_a = a.object(&fp(), b"shared").expect("read").expect("present");
    let shared_b = b.object(&fp(), b"shared").expect("read").expect("present");
    assert_eq!(shared_a, shared_b);
    assert!(entry_of(&shared_b, new).is_none());
    assert_eq!(
        values(&b, "own"),
        vec!["b1"],
        "the clone's own key keeps its value"
    );
    assert!(
        entry_of(
            &b.object(&fp(), b"own").expect("read").expect("present"),
            new
        )
        .is_some()
    );

    // Each merges the other's keys: both writes of "cut" stay, and the two
    // hold the same data, without any alarm.
    let all = |m: &Metadata| -> Vec<(FullPrefix, Vec<u8>, chorus_core::object::Object)> {
        ["cut", "shared", "own"]
            .iter()
            .filter_map(|k| {
                m.object(&fp(), k.as_bytes())
                    .expect("read")
                    .map(|o| (fp(), k.as_bytes().to_vec(), o))
            })
            .collect()
    };
    let (from_a, from_b) = (all(&a), all(&b));
    b.merge(Origin::Peer(*old.as_bytes()), from_a)
        .expect("merge");
    a.merge(Origin::Peer(*new.as_bytes()), from_b)
        .expect("merge");
    assert_eq!(values(&a, "cut"), vec!["from-a", "from-b"]);
    assert_eq!(values(&b, "cut"), vec!["from-a", "from-b"]);
    assert_eq!(values(&a, "shared"), vec!["s1"]);
    assert_eq!(values(&a, "own"), vec!["b1"]);
    assert_eq!(a.store().identity_conflict_count(), 0);
    assert_eq!(b.store().identity_conflict_count(), 0);
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
