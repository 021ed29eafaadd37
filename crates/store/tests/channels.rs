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

/// A store where this node does not serve `render/*` (node 9 does) and
/// serves `mine/*`.
fn unserved(dir: &std::path::Path) -> Metadata {
    let m = meta(dir);
    let me = m.store().node_id();
    record(&m, "render", &["render/*"], &[node(9)]);
    record(&m, "mine", &["mine/*"], &[me, node(9)]);
    m
}

fn not_served(outcome: Result<impl std::fmt::Debug, chorus_store::Error>, what: &str) {
    match outcome {
        Err(chorus_store::Error::NotServed { channel, nodes, .. }) => {
            assert_eq!(channel, "render", "{what}");
            assert_eq!(nodes, vec![node(9)], "{what}");
        }
        other => panic!("{what}: expected not_served, got {other:?}"),
    }
}

#[test]
fn every_local_write_and_read_of_an_unserved_full_prefix_is_refused()
-> Result<(), Box<dyn std::error::Error>> {
    use chorus_core::FullPrefix;
    use chorus_store::{GetOptions, IterOptions, Scope, Write};
    let dir = tempfile::tempdir()?;
    let m = unserved(dir.path());
    let fp = FullPrefix::parse("render/shot1")?;
    let bytes = || PutValue::Bytes(b"v".to_vec());
    let opts = PutOptions::default();

    let e = m.put(&fp, b"k", bytes(), &opts).map(|_| ());
    let message = format!("{:?}", e.as_ref().err().map(ToString::to_string));
    not_served(e, "put");
    assert!(
        message.contains("render/shot1 is not served on this node")
            && message.contains(&node(9).to_string())
            && message.contains("forward=true")
            && message.contains("chorus channel serve render"),
        "{message}"
    );
    let kind = m.put(&fp, b"k", bytes(), &opts).err().map(|e| e.kind());
    assert_eq!(kind, Some(chorus_core::Kind::NotServed));
    not_served(m.delete(&fp, b"k", &opts), "delete");
    not_served(
        m.put(&fp, b"k", PutValue::Function(Box::new(|_| Ok(None))), &opts),
        "write function",
    );
    let puts = m.put_all(vec![chorus_store::BatchPut {
        full_prefix: fp.clone(),
        key: b"k".to_vec(),
        value: bytes(),
        options: PutOptions::default(),
        meta: chorus_core::object::Meta::default(),
    }]);
    for outcome in puts {
        not_served(outcome, "put_all");
    }
    let mut tx = m.begin()?;
    not_served(tx.put(&fp, b"k", b"v", None), "transaction put");
    not_served(tx.get(&fp, b"k"), "transaction get");
    // The engine refuses too, whatever API wrote: a raw put, a raw
    // transaction, an update closure.
    not_served(m.store().put(&fp, b"k", b"v"), "raw put");
    let mut raw = m.store().begin()?;
    raw.put(&fp, b"k", b"v");
    not_served(raw.commit(), "raw transaction");
    let f = fp.clone();
    not_served(
        m.store()
            .update(move |_| Ok(vec![Write::put(&f, b"k", b"v")])),
        "update closure",
    );
    not_served(m.get(&fp, b"k", &GetOptions::default()), "get");
    not_served(m.store().get(&fp, b"k"), "raw get");
    not_served(m.prefix_hash(&fp), "prefix hash");
    not_served(m.prefix_hash_all("render"), "hash of the prefix");
    not_served(
        m.iter(&Scope::FullPrefix(fp.clone()), &IterOptions::default())
            .map(|_| ()),
        "iteration",
    );
    not_served(
        m.iter(&Scope::Prefix("render".into()), &IterOptions::default())
            .map(|_| ()),
        "iteration of the prefix",
    );
    let docs = chorus_store::docs::Docs::open(&m, "render/docs")?;
    not_served(docs.create(serde_json::json!({"_id": "a"})), "doc create");
    not_served(docs.get("a"), "doc get");
    not_served(docs.page(10, None), "doc page");
    let logs = chorus_store::oplog::Oplogs::new(&m);
    not_served(
        logs.push(&fp, "n", "counter", serde_json::json!(1)),
        "op push",
    );
    not_served(logs.get(&fp, "n"), "op get");
    not_served(logs.log(&fp, "n"), "op log");
    Ok(())
}

#[test]
fn what_a_node_serves_merges_and_purges_pass() -> Result<(), Box<dyn std::error::Error>> {
    use chorus_core::FullPrefix;
    use chorus_core::object::{Hlc, Object, Value};
    use chorus_store::{GetOptions, IterOptions, Origin, Scope, Write};
    let dir = tempfile::tempdir()?;
    let m = unserved(dir.path());
    let opts = PutOptions::default();
    for served in ["mine/a", "other/a"] {
        let fp = FullPrefix::parse(served)?;
        m.put(&fp, b"k", PutValue::Bytes(b"v".to_vec()), &opts)?;
        assert!(m.get(&fp, b"k", &GetOptions::default())?.is_some());
    }
    // A peer's object is merged (the replica decides what it keeps), and
    // a removal (tombstone collection, dropping a channel's data) passes.
    let fp = FullPrefix::parse("render/shot1")?;
    let object = Object::modify(
        None,
        &Object::empty_context(),
        Value::data(b"from a peer", Hlc(1), node(9)),
        node(9),
    );
    let merged = m.merge(
        Origin::Peer(*node(9).as_bytes()),
        vec![(fp.clone(), b"k".to_vec(), object)],
    )?;
    assert_eq!(merged, 1);
    assert!(m.object(&fp, b"k")?.is_some(), "the replica reads it");
    let all = m.to_list(&Scope::All, &IterOptions::default())?;
    assert!(
        all.iter().any(|i| i.full_prefix == fp),
        "iterating everything is not refused"
    );
    m.store().write(vec![Write::delete(&fp, b"k")])?;
    assert!(m.object(&fp, b"k")?.is_none(), "purged");
    Ok(())
}

#[test]
fn a_table_change_by_another_handle_takes_effect_at_once() -> Result<(), Box<dyn std::error::Error>>
{
    use chorus_core::FullPrefix;
    let dir = tempfile::tempdir()?;
    let a = meta(dir.path());
    let b = meta(dir.path());
    let fp = FullPrefix::parse("render/x")?;
    let put = |m: &Metadata| {
        m.put(
            &fp,
            b"k",
            PutValue::Bytes(b"v".to_vec()),
            &PutOptions::default(),
        )
    };
    put(&b)?;
    record(&a, "render", &["render/*"], &[node(9)]);
    not_served(put(&b), "after another handle added the channel");
    let me = b.store().node_id();
    record(&a, "render", &["render/*"], &[node(9), me]);
    put(&b)?;
    Ok(())
}

fn members(
    m: &Metadata,
) -> impl FnOnce(&chorus_store::Snapshot) -> chorus_store::Result<std::collections::BTreeSet<NodeId>>
+ Send
+ 'static {
    let me = m.store().node_id();
    move |_| Ok(std::collections::BTreeSet::from([me, node(2)]))
}

#[test]
fn table_changes_are_validated_and_a_refused_one_writes_nothing()
-> Result<(), Box<dyn std::error::Error>> {
    use chorus_store::channels::Change;
    use std::collections::BTreeSet;
    let dir = tempfile::tempdir()?;
    let m = meta(dir.path());
    let me = m.store().node_id();
    let add = |name: &str, patterns: &[&str], nodes: &[NodeId]| Change::Add {
        name: name.into(),
        patterns: patterns.iter().map(ToString::to_string).collect(),
        nodes: nodes.iter().copied().collect::<BTreeSet<_>>(),
    };
    let t = m.change_channels(add("render", &["render/*"], &[me]), members(&m))?;
    assert!(t.table.get("render").is_some());
    let records = || {
        m.store()
            .snapshot()
            .map(|s| s.prefix_hash(&full_prefix().expect("fp")))
    };
    let before = records()?;
    let cases = [
        (add("more", &["render/x"], &[me]), "overlaps render/*", 3),
        (add("more", &["a/*", "a/b"], &[me]), "overlap", 2),
        (add("more", &[], &[me]), "no pattern", 2),
        (add("more", &["a"], &[me]), "no '/'", 2),
        (add("more", &["$cluster/*"], &[me]), "'$'", 2),
        (add("Bad Name", &["a/*"], &[me]), "not a channel name", 2),
        (add("more", &["a/*"], &[node(7)]), "not a member", 2),
        (add("more", &["a/*"], &[]), "no node", 2),
        (add("render", &["a/*"], &[me]), "exists", 3),
        (
            Change::Remove {
                name: "nope".into(),
            },
            "no channel",
            1,
        ),
        (
            Change::Serve {
                name: "render".into(),
                node: node(7),
            },
            "not a member",
            2,
        ),
        (
            Change::Leave {
                name: "render".into(),
                node: me,
            },
            "only node",
            3,
        ),
    ];
    for (change, says, exit) in cases {
        let e = m
            .change_channels(change.clone(), members(&m))
            .err()
            .ok_or_else(|| format!("{change:?} was accepted"))?;
        assert!(e.to_string().contains(says), "{change:?}: {e}");
        assert_eq!(e.kind().exit_code(), exit, "{change:?}: {e}");
        assert_eq!(records()?, before, "{change:?} changed the records");
    }
    let t = m.change_channels(
        Change::Serve {
            name: "render".into(),
            node: node(2),
        },
        members(&m),
    )?;
    assert_eq!(t.table.get("render").map(|c| c.nodes.len()), Some(2));
    let t = m.change_channels(
        Change::Leave {
            name: "render".into(),
            node: me,
        },
        members(&m),
    )?;
    assert!(
        !t.table
            .serves(&me, &chorus_core::FullPrefix::parse("render/a")?)
    );
    let t = m.change_channels(
        Change::Remove {
            name: "render".into(),
        },
        members(&m),
    )?;
    assert!(t.table.get("render").is_none());
    assert_eq!(m.channels()?.table.channels().count(), 0);
    Ok(())
}

#[test]
fn two_overlapping_additions_at_once_never_both_pass() -> Result<(), Box<dyn std::error::Error>> {
    use chorus_store::channels::Change;
    for round in 0..20 {
        let dir = tempfile::tempdir()?;
        let handles: Vec<Metadata> = (0..2).map(|_| meta(dir.path())).collect();
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let threads: Vec<_> = handles
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let me = m.store().node_id();
                    let change = Change::Add {
                        name: format!("c{i}"),
                        patterns: vec![if i == 0 { "a/*".into() } else { "a/x".into() }],
                        nodes: [me].into_iter().collect(),
                    };
                    barrier.wait();
                    m.change_channels(change, members(&m)).is_ok()
                })
            })
            .collect();
        let passed = threads
            .into_iter()
            .map(|t| t.join().unwrap_or(false))
            .filter(|ok| *ok)
            .count();
        assert_eq!(passed, 1, "round {round}");
        let m = meta(dir.path());
        let read = m.channels()?;
        assert_eq!(read.table.channels().count(), 1);
        assert!(read.problems.is_empty(), "{:?}", read.problems);
    }
    Ok(())
}
