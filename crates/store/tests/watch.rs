//! Watches: commits by another process and merges from a peer are
//! reported, with their origin, in order, filtered.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use chorus_core::FullPrefix;
use chorus_store::watch::Watched;
use chorus_store::{Metadata, Origin};

mod common;
use common::{Worker, open};

#[test]
fn a_commit_by_another_process_is_reported_within_milliseconds() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path().to_str().expect("utf-8");
    let store = open(dir.path());
    let (tx, rx) = mpsc::channel();
    let only_test = FullPrefix::parse("test/keys").expect("valid");
    let _watch = store
        .on(Box::new(move |fp, _| *fp == only_test), move |w| {
            let _ = tx.send((Instant::now(), w));
            Ok(())
        })
        .expect("watch");
    // Another prefix first: filtered out.
    store
        .put(&FullPrefix::parse("other/x").expect("valid"), b"k", b"v")
        .expect("put");
    let mut w = Worker::spawn(&["write", d, "w", "5", "always"]);
    let mut acks = Vec::new();
    for _ in 0..5 {
        w.expect_line("ack ");
        acks.push(Instant::now());
    }
    w.expect_line("done");
    w.tell("go");
    w.finish();
    let mut worst = Duration::ZERO;
    for (i, acked) in acks.iter().enumerate() {
        let (at, event) = rx.recv_timeout(Duration::from_secs(10)).expect("reported");
        let Watched::Change(e) = event else {
            panic!("unexpected {event:?}");
        };
        assert_eq!(e.key, format!("w-{i}").as_bytes(), "in order, filtered");
        assert_eq!(e.origin, Origin::Local);
        worst = worst.max(at.saturating_duration_since(*acked));
    }
    // The goal is milliseconds (POLL_INTERVAL is 2 ms); the bound here is
    // generous because the machine is shared.
    assert!(worst < Duration::from_secs(1), "{worst:?}");
    assert!(rx.try_recv().is_err(), "nothing else");
}

#[test]
fn a_merge_from_a_peer_is_reported_with_its_origin_and_drop_stops_the_watch() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = open(dir.path());
    let meta = Metadata::new(store.clone());
    let mut watcher = store.watcher(Box::new(|_, _| true)).expect("watcher");
    let fp = FullPrefix::parse("cfg/web").expect("valid");
    let remote_dir = tempfile::tempdir().expect("tmp");
    let remote = Metadata::new(open(remote_dir.path()));
    remote
        .put(
            &fp,
            b"port",
            chorus_store::PutValue::Bytes(b"8080".to_vec()),
            &Default::default(),
        )
        .expect("put");
    let object = chorus_core::object::Object::decode(
        &remote
            .store()
            .get(&fp, b"port")
            .expect("get")
            .expect("there"),
    )
    .expect("object");
    meta.merge(
        Origin::Peer([5; 16]),
        vec![(fp.clone(), b"port".to_vec(), object)],
    )
    .expect("merge");
    let Some(Watched::Change(e)) = watcher.next(Duration::from_secs(5)).expect("next") else {
        panic!("no event");
    };
    assert_eq!(e.origin, Origin::Peer([5; 16]));
    assert_eq!(e.key, b"port");
    assert!(e.value.is_some());
    assert_eq!(watcher.next(Duration::from_millis(20)).expect("next"), None);
    // A callback watch stops when dropped.
    let (tx, rx) = mpsc::channel();
    let watch = store
        .on(Box::new(|_, _| true), move |w| {
            let _ = tx.send(w);
            Ok(())
        })
        .expect("watch");
    watch.stop().expect("stopped cleanly");
    store.put(&fp, b"after", b"1").expect("put");
    std::thread::sleep(Duration::from_millis(50));
    assert!(rx.try_recv().is_err(), "a stopped watch reports nothing");
}

#[test]
fn a_watcher_reads_past_batches_its_filter_refuses_and_resumes_exactly() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = open(dir.path());
    let x = FullPrefix::parse("app/x").expect("valid");
    let y = FullPrefix::parse("app/y").expect("valid");
    let only_x = x.clone();
    let mut watcher = store
        .watcher(Box::new(move |fp, _| *fp == only_x))
        .expect("watcher");
    for i in 0..300u32 {
        store.put(&y, &i.to_le_bytes(), b"v").expect("put");
    }
    store.put(&x, b"first", b"1").expect("put");
    store.put(&x, b"second", b"2").expect("put");
    let Some(Watched::Change(first)) = watcher.next(Duration::from_secs(5)).expect("next") else {
        panic!("the change after 300 filtered commits was missed");
    };
    assert_eq!(first.key, b"first");
    // Resuming from the first event's position gives the second.
    let mut resumed = store
        .watcher_from(first.cursor, Box::new(|_, _| true))
        .expect("watcher");
    let Some(Watched::Change(second)) = resumed.next(Duration::from_secs(5)).expect("next") else {
        panic!("nothing after the first event's position");
    };
    assert_eq!(second.key, b"second");
}

/// Every key of a commit has its own event id, the same however the feed
/// is read; resuming from any id reports each later event exactly once.
#[test]
fn event_ids_are_stable_and_resuming_from_any_of_them_is_exactly_once() {
    use chorus_store::{EventId, Write};
    let dir = tempfile::tempdir().expect("tmp");
    let store = open(dir.path());
    let fp = FullPrefix::parse("ids/x").expect("valid");
    let start = store.cursor().expect("cursor");
    // Three commits of three keys each.
    for c in 0..3 {
        let writes = (0..3)
            .map(|k| Write::put(&fp, format!("c{c}k{k}").as_bytes(), b"v"))
            .collect();
        store.write(writes).expect("write");
    }
    let drain = |mut w: chorus_store::watch::Watcher| {
        let mut seen = Vec::new();
        while let Some(Watched::Change(e)) = w.next(Duration::from_millis(50)).expect("next") {
            seen.push((e.id.to_string(), String::from_utf8(e.key).expect("utf-8")));
        }
        seen
    };
    let all = drain(
        store
            .watcher_from(start, Box::new(|_, _| true))
            .expect("watch"),
    );
    assert_eq!(all.len(), 9, "{all:?}");
    let ids: std::collections::BTreeSet<_> = all.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids.len(), 9, "every event has its own id: {all:?}");
    for (i, (id, _)) in all.iter().enumerate() {
        let parsed = EventId::parse(id).expect("parses");
        assert_eq!(parsed.to_string(), *id, "prints as parsed");
        let rest = drain(
            store
                .watcher_after(parsed, Box::new(|_, _| true))
                .expect("watch"),
        );
        assert_eq!(
            rest,
            all[i + 1..].to_vec(),
            "resumed after {id}: same ids, once each"
        );
    }
    // A narrower watch shows the same ids for the events it keeps.
    let only = drain(
        store
            .watcher_from(start, Box::new(|_, k| k.ends_with(b"k1")))
            .expect("watch"),
    );
    let expected: Vec<_> = all
        .iter()
        .filter(|(_, k)| k.ends_with("k1"))
        .cloned()
        .collect();
    assert_eq!(only, expected);
    assert!(EventId::parse("1-2-3.x").is_err());
    assert!(EventId::parse("nonsense").is_err());
}
