//! The change feed: every commit, by any process, in order, with its
//! origin; across compaction; bad positions refused.

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Command, Stdio};

use chorus_core::FullPrefix;
use chorus_store::{Cursor, Error, Feed, Origin, Store, Write};

const WORKER: &str = env!("CARGO_BIN_EXE_chorus-store-worker");

mod common;
use common::open;

fn fp() -> FullPrefix {
    FullPrefix::parse("test/keys").expect("valid")
}

/// Reads the feed to its end from `cursor`, `max` commits at a time.
fn drain(store: &Store, mut cursor: Cursor, max: usize) -> (Vec<chorus_store::Change>, Cursor) {
    let mut all = Vec::new();
    loop {
        match store.changes_since(&cursor, max).expect("feed") {
            Feed::Changes { changes, next } => {
                if changes.is_empty() {
                    return (all, next);
                }
                assert!(changes.len() <= max.max(1) + 64, "a read stops near max");
                all.extend(changes);
                cursor = next;
            }
            Feed::Gap { .. } => panic!("unexpected gap"),
        }
    }
}

#[test]
fn the_feed_returns_every_commit_in_order_with_its_keys_and_origin() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = open(dir.path());
    store.put(&fp(), b"before", b"0").expect("put");
    let start = store.cursor().expect("cursor");
    assert_eq!(start.seq(), 1);
    store
        .write(vec![
            Write::put(&fp(), b"a", b"1"),
            Write::put(&fp(), b"b", b"2"),
        ])
        .expect("write");
    store.delete(&fp(), b"a").expect("delete");
    store
        .write_from(Origin::Peer([9; 16]), vec![Write::put(&fp(), b"c", b"3")])
        .expect("merge");
    let (changes, end) = drain(&store, start, 100);
    let seqs: Vec<u64> = changes.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, [2, 3, 4], "only what came after the cursor");
    type Written = Vec<(Vec<u8>, Option<Vec<u8>>)>;
    let keys: Vec<Written> = changes
        .iter()
        .map(|c| {
            c.keys
                .iter()
                .map(|k| (k.key.clone(), k.value.as_deref().map(<[u8]>::to_vec)))
                .collect()
        })
        .collect();
    assert_eq!(
        keys,
        vec![
            vec![
                (b"a".to_vec(), Some(b"1".to_vec())),
                (b"b".to_vec(), Some(b"2".to_vec()))
            ],
            vec![(b"a".to_vec(), None)],
            vec![(b"c".to_vec(), Some(b"3".to_vec()))],
        ]
    );
    assert_eq!(changes[0].origin, Origin::Local);
    assert_eq!(changes[2].origin, Origin::Peer([9; 16]));
    assert!(changes.windows(2).all(|w| w[0].ts <= w[1].ts));
    assert_eq!(end, store.cursor().expect("cursor"));
    // The printed position parses back to the same place.
    assert_eq!(Cursor::parse(&end.to_string()).expect("parse"), end);
}

#[test]
fn a_reader_sees_the_commits_of_another_process_and_reads_in_bounded_steps() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = open(dir.path());
    let start = store.cursor().expect("cursor");
    let mut child = Command::new(WORKER)
        .args([
            "write",
            dir.path().to_str().expect("utf-8"),
            "w",
            "200",
            "never",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("worker");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    while out.read_line(&mut line).expect("read") > 0 {
        if line.trim() == "done" {
            break;
        }
        line.clear();
    }
    let (changes, _) = drain(&store, start, 7);
    writeln!(child.stdin.take().expect("stdin")).expect("release worker");
    child.wait().expect("wait");
    assert_eq!(changes.len(), 200);
    for (i, c) in changes.iter().enumerate() {
        assert_eq!(c.seq, i as u64 + 1);
        assert_eq!(c.keys[0].key, format!("w-{i}").into_bytes());
        assert_eq!(c.origin, Origin::Local);
    }
}

#[test]
fn an_up_to_date_reader_continues_across_compaction_and_a_late_one_is_told_of_the_gap() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = open(dir.path());
    let early = store.cursor().expect("cursor");
    for i in 0..10u8 {
        store.put(&fp(), &[b'k', i], b"v").expect("put");
    }
    let current = store.cursor().expect("cursor");
    store.compact().expect("compact");
    store.put(&fp(), b"after", b"v").expect("put");
    let (changes, _) = drain(&store, current, 100);
    let seqs: Vec<u64> = changes.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, [11], "only the commit after compaction");
    match store.changes_since(&early, 100).expect("feed") {
        Feed::Gap { first_seq, resume } => {
            assert_eq!(first_seq, 11);
            assert_eq!(resume, store.cursor().expect("cursor"));
        }
        other => panic!("expected a gap, got {other:?}"),
    }
}

#[test]
fn a_position_from_elsewhere_or_malformed_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = open(dir.path());
    store.put(&fp(), b"k", b"v").expect("put");
    for bad in ["", "1-2", "a-b-c", "1-2-3-4", "-1-64-0"] {
        assert!(
            matches!(Cursor::parse(bad), Err(Error::InvalidInput(_))),
            "{bad:?} parsed"
        );
    }
    for far in ["99-64-0", "1-999999-5", "1-3-0", "1-70-0"] {
        let cursor = Cursor::parse(far).expect("well-formed");
        assert!(
            matches!(
                store.changes_since(&cursor, 10),
                Err(Error::InvalidInput(_))
            ),
            "{far} accepted"
        );
    }
    assert_eq!(store.cursor().expect("cursor").seq(), 1, "nothing changed");
}
