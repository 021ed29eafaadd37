//! Operation logs in the store: pushes from two processes, logs from two
//! hosts merging, reducers and their errors, bad input.

use std::sync::Arc;

use chorus_core::FullPrefix;
use chorus_core::oplog::{Op, Reducer};
use chorus_store::oplog::Oplogs;
use chorus_store::{Error, Origin};
use serde_json::{Value, json};

mod common;
use common::{Worker, meta, ship};

fn fp() -> FullPrefix {
    FullPrefix::parse("ops/test").expect("valid")
}

/// GiG.fs's counting reducer: the value is the number of operations.
struct CountOps;

impl Reducer for CountOps {
    fn init(&self) -> Value {
        json!(0)
    }
    fn reduce(&self, state: Value, _op: &Op) -> Result<Value, String> {
        Ok(json!(state.as_i64().unwrap_or(0) + 1))
    }
}

/// A reducer that fails on a payload of `"boom"`.
struct Fussy;

impl Reducer for Fussy {
    fn init(&self) -> Value {
        Value::Null
    }
    fn reduce(&self, _state: Value, op: &Op) -> Result<Value, String> {
        if op.payload == "boom" {
            return Err("cannot take boom".into());
        }
        Ok(op.payload.clone())
    }
}

#[test]
fn a_user_reducer_counts_zero_then_one_then_one_on_a_fresh_read() {
    let dir = tempfile::tempdir().expect("tmp");
    let ops = Oplogs::new(&meta(dir.path()));
    ops.register("tally", Arc::new(CountOps)).expect("register");
    assert_eq!(
        ops.get(&fp(), "p").expect("get"),
        Value::Null,
        "nothing pushed"
    );
    let v = ops
        .push(&fp(), "p", "tally", json!({"any": "thing"}))
        .expect("push");
    assert_eq!(v, json!(1));
    let fresh = Oplogs::new(&meta(dir.path()));
    fresh
        .register("tally", Arc::new(CountOps))
        .expect("register");
    assert_eq!(fresh.get(&fp(), "p").expect("get"), json!(1));
    // Without the reducer, the error names the type.
    let err = Oplogs::new(&meta(dir.path()))
        .get(&fp(), "p")
        .expect_err("unknown");
    assert!(err.to_string().contains("\"tally\""), "{err}");
}

#[test]
fn a_failing_reducer_names_the_type_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let m = meta(dir.path());
    let ops = Oplogs::new(&m);
    ops.register("fussy", Arc::new(Fussy)).expect("register");
    ops.push(&fp(), "p", "fussy", json!("fine")).expect("push");
    let before = m.store().snapshot().expect("snap").seq();
    let err = ops
        .push(&fp(), "p", "fussy", json!("boom"))
        .expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("\"fussy\"") && text.contains("cannot take boom"),
        "{text}"
    );
    assert_eq!(m.store().snapshot().expect("snap").seq(), before);
    assert_eq!(ops.get(&fp(), "p").expect("get"), json!("fine"));
}

#[test]
fn bad_input_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let m = meta(dir.path());
    let ops = Oplogs::new(&m);
    ops.push(&fp(), "n", "counter", json!(1)).expect("push");
    let before = m.store().snapshot().expect("snap").seq();
    let big = json!("x".repeat(70 << 10));
    for (path, kind, payload, why) in [
        ("n", "unknown-type", json!(1), "no reducer"),
        ("n", "Bad Type", json!(1), "not a type name"),
        ("n", "counter", json!("one"), "not a number"),
        ("", "counter", json!(1), "not a path"),
        ("n", "counter", big, "limit"),
    ] {
        let err = ops.push(&fp(), path, kind, payload).expect_err(why);
        assert!(matches!(err, Error::InvalidInput(_)), "{err}");
        assert!(err.to_string().contains(why), "{why}: {err}");
    }
    // Another type than the log's clashes with what is stored.
    let err = ops.push(&fp(), "n", "max", json!(1)).expect_err("a clash");
    assert!(matches!(err, Error::Conflict(_)), "{err}");
    assert!(err.to_string().contains("has type \"counter\""), "{err}");
    let reserved = FullPrefix::parse("$cluster/x").expect("valid");
    assert!(ops.push(&reserved, "n", "counter", json!(1)).is_err());
    assert_eq!(m.store().snapshot().expect("snap").seq(), before);
    assert_eq!(ops.get(&fp(), "n").expect("get"), json!(1));
}

#[test]
fn two_processes_pushing_a_thousand_increments_each_give_the_exact_total() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path().to_str().expect("utf-8");
    meta(dir.path());
    let a = Worker::spawn(&["op-push", d, "hits", "1000"]);
    let b = Worker::spawn(&["op-push", d, "hits", "1000"]);
    a.finish();
    b.finish();
    let ops = Oplogs::new(&meta(dir.path()));
    assert_eq!(ops.get(&fp(), "hits").expect("get"), json!(2000));
    assert_eq!(ops.log(&fp(), "hits").expect("log").log.len(), 2000);
}

#[test]
fn logs_pushed_on_two_hosts_merge_and_count_every_operation_once() {
    let (d1, d2) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let (m1, m2) = (meta(d1.path()), meta(d2.path()));
    let (o1, o2) = (Oplogs::new(&m1), Oplogs::new(&m2));
    for i in 0..50 {
        o1.push(&fp(), "c", "counter", json!(1)).expect("push");
        o2.push(&fp(), "c", "counter", json!(2)).expect("push");
        o1.push(&fp(), "s", "set", json!({"add": i % 10}))
            .expect("push");
    }
    ship(&m1, &m2, &fp());
    ship(&m2, &m1, &fp());
    for o in [&o1, &o2] {
        assert_eq!(o.get(&fp(), "c").expect("get"), json!(150));
        assert_eq!(
            o.get(&fp(), "s").expect("get"),
            json!([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
        );
    }
    // A push on one host after the merge collapses the siblings.
    o2.push(&fp(), "c", "counter", json!(1)).expect("push");
    ship(&m2, &m1, &fp());
    assert_eq!(o1.get(&fp(), "c").expect("get"), json!(151));
    assert_eq!(
        o1.log(&fp(), "c").expect("log").to_json(),
        o2.log(&fp(), "c").expect("log").to_json()
    );
}

#[test]
fn pruning_keeps_the_value_and_shortens_the_log_and_a_late_op_is_reported() {
    let dir = tempfile::tempdir().expect("tmp");
    let m = meta(dir.path());
    let ops = Oplogs::new(&m);
    for i in 0..100 {
        ops.push(&fp(), "c", "counter", json!(i)).expect("push");
        ops.push(&fp(), "l", "list", json!(i)).expect("push");
    }
    let before = (
        ops.get(&fp(), "c").expect("c"),
        ops.get(&fp(), "l").expect("l"),
    );
    // Nothing is older than an hour.
    assert_eq!(
        ops.prune_older_than(&fp(), "c", std::time::Duration::from_secs(3600))
            .expect("prune"),
        0
    );
    // With no grace, everything is folded.
    assert_eq!(
        ops.prune_older_than(&fp(), "c", std::time::Duration::ZERO)
            .expect("prune"),
        100
    );
    let upto = ops
        .log(&fp(), "l")
        .expect("log")
        .log
        .ops()
        .nth(59)
        .expect("op")
        .key();
    assert_eq!(ops.prune(&fp(), "l", &upto).expect("prune"), 60);
    assert_eq!(
        (
            ops.get(&fp(), "c").expect("c"),
            ops.get(&fp(), "l").expect("l")
        ),
        before
    );
    assert_eq!(ops.log(&fp(), "c").expect("log").log.len(), 0);
    assert_eq!(ops.log(&fp(), "l").expect("log").log.len(), 40);
    // A push after pruning counts.
    assert_eq!(
        ops.push(&fp(), "c", "counter", json!(1)).expect("push"),
        json!(4951)
    );
    // An operation from a node that was away, older than the checkpoint,
    // is not applied and is reported by `log`.
    let d2 = tempfile::tempdir().expect("tmp");
    let m2 = meta(d2.path());
    let mut old = chorus_core::oplog::OpLog::new("counter");
    assert!(
        old.push(Op::new("counter", 1, "away", json!(1000)))
            .is_none()
    );
    let object = chorus_core::object::Object::modify(
        None,
        &chorus_core::object::Context::default(),
        chorus_core::object::Value::data(
            &old.encode(),
            chorus_core::object::Hlc(1),
            m2.store().node_id(),
        ),
        m2.store().node_id(),
    );
    m.merge(Origin::Peer([3; 16]), vec![(fp(), b"c".to_vec(), object)])
        .expect("merge");
    let view = ops.log(&fp(), "c").expect("log");
    assert_eq!(view.late.len(), 1);
    assert_eq!(view.to_json()["late"][0]["payload"], json!(1000));
    assert_eq!(ops.get(&fp(), "c").expect("c"), json!(4951), "not applied");
    // The next push writes the log back over its siblings: the late
    // operation stays reported.
    ops.push(&fp(), "c", "counter", json!(1)).expect("push");
    let view = ops.log(&fp(), "c").expect("log");
    assert_eq!(view.late.len(), 1, "a write-back must not erase a late op");
    assert_eq!(view.to_json()["late"][0]["payload"], json!(1000));
    assert_eq!(ops.get(&fp(), "c").expect("c"), json!(4952));
}

#[test]
fn on_reports_the_new_value_of_a_log_changed_by_another_process_or_a_peer() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path().to_str().expect("utf-8");
    let m = meta(dir.path());
    let ops = Oplogs::new(&m);
    let (tx, rx) = std::sync::mpsc::channel();
    let _watch = ops
        .on(
            &fp(),
            chorus_store::Match::All,
            move |path, value, origin| {
                let _ = tx.send((path.to_string(), value, origin));
            },
        )
        .expect("on");
    let w = Worker::spawn(&["op-push", d, "hits", "3"]);
    w.finish();
    let wait = std::time::Duration::from_secs(10);
    let mut last = None;
    for _ in 0..3 {
        last = Some(rx.recv_timeout(wait).expect("reported"));
    }
    assert_eq!(last, Some(("hits".to_string(), json!(3), Origin::Local)));
    // From a peer: the origin says so.
    let d2 = tempfile::tempdir().expect("tmp");
    let m2 = meta(d2.path());
    Oplogs::new(&m2)
        .push(&fp(), "hits", "counter", json!(10))
        .expect("push");
    // A log is a head and a record per operation: ship them all.
    let objects = m2
        .store()
        .snapshot()
        .expect("snapshot")
        .group(&fp(), b"hits")
        .map(|(k, e)| {
            let object = chorus_core::object::Object::decode(&e.value).expect("object");
            (fp(), k.to_vec(), object)
        })
        .collect();
    m.merge(Origin::Peer([4; 16]), objects).expect("merge");
    let (path, value, origin) = rx.recv_timeout(wait).expect("reported");
    assert_eq!(
        (path.as_str(), value, origin),
        ("hits", json!(13), Origin::Peer([4; 16]))
    );
}

#[test]
fn script_reducers_are_stored_with_the_data_and_run_with_limits() {
    let dir = tempfile::tempdir().expect("tmp");
    let m = meta(dir.path());
    let ops = Oplogs::new(&m);
    ops.set_script(
        "tally",
        "fn init() { 0 } fn reduce(state, op) { state + 1 }",
    )
    .expect("set");
    assert_eq!(ops.get(&fp(), "t").expect("get"), Value::Null);
    assert_eq!(
        ops.push(&fp(), "t", "tally", json!("x")).expect("push"),
        json!(1)
    );
    // Another process (a fresh handle) finds the script in the data.
    assert_eq!(
        Oplogs::new(&meta(dir.path())).get(&fp(), "t").expect("get"),
        json!(1)
    );
    ops.set_script(
        "sum",
        "fn reduce(state, op) { if state == () { op.payload.n } else { state + op.payload.n } }",
    )
    .expect("set");
    ops.push(&fp(), "s", "sum", json!({"n": 2})).expect("push");
    assert_eq!(
        ops.push(&fp(), "s", "sum", json!({"n": 40})).expect("push"),
        json!(42)
    );
    // A script that loops forever is stopped by the operation limit; the
    // error names the type; nothing is written; the process goes on.
    ops.set_script(
        "spin",
        "fn reduce(state, op) { let n = 0; loop { n += 1; } }",
    )
    .expect("set");
    let before = m.store().snapshot().expect("snap").seq();
    let err = ops.push(&fp(), "x", "spin", json!(1)).expect_err("stopped");
    let text = err.to_string();
    assert!(text.contains("\"spin\""), "{text}");
    assert!(text.to_lowercase().contains("operations"), "{text}");
    assert_eq!(m.store().snapshot().expect("snap").seq(), before);
    ops.set_script("thrower", r#"fn reduce(state, op) { throw "no thanks" }"#)
        .expect("set");
    let err = ops
        .push(&fp(), "y", "thrower", json!(1))
        .expect_err("thrown");
    assert!(
        err.to_string().contains("no thanks") && err.to_string().contains("\"thrower\""),
        "{err}"
    );
    // Bad scripts are refused before they are stored.
    for (kind, source, why) in [
        (
            "broken",
            "fn reduce(state, op) { state + ",
            "does not parse",
        ),
        ("noreduce", "fn init() { 0 }", "no `fn reduce"),
        ("counter", "fn reduce(s, o) { s }", "built-in"),
        ("Bad Name", "fn reduce(s, o) { s }", "not a type name"),
    ] {
        let err = ops.set_script(kind, source).expect_err(why);
        assert!(err.to_string().contains(why), "{why}: {err}");
    }
    assert!(ops.push(&fp(), "z", "broken", json!(1)).is_err());
}
