//! What reads and pushes of operation logs cost: the reducer runs once per
//! operation a process has not folded yet, whoever pushed it; a refused
//! push costs later reads nothing; a budget bounds the reducer work of one
//! call, keeps what it folded, and writes nothing; kept values stay within
//! their byte bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chorus_core::FullPrefix;
use chorus_core::oplog::{Op, Reducer, built_in};
use chorus_store::Error;
use chorus_store::oplog::Oplogs;
use serde_json::{Value, json};

mod common;
use common::{Worker, meta};

fn fp() -> FullPrefix {
    FullPrefix::parse("ops/test").expect("valid")
}

/// Counts its calls, and reduces as the reducer it wraps.
struct Counting {
    inner: Box<dyn Reducer>,
    calls: Arc<AtomicUsize>,
}

impl Reducer for Counting {
    fn init(&self) -> Value {
        self.inner.init()
    }
    fn reduce(&self, state: Value, op: &Op) -> Result<Value, String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.reduce(state, op)
    }
}

/// A counting reducer registered as `kind` (reducing as the built-in
/// counter), and its call counter.
fn counting(ops: &Oplogs, kind: &str) -> Arc<AtomicUsize> {
    let calls = Arc::new(AtomicUsize::new(0));
    let reducer = Counting {
        inner: built_in("counter").expect("counter"),
        calls: calls.clone(),
    };
    ops.register(kind, Arc::new(reducer)).expect("register");
    calls
}

fn calls(c: &AtomicUsize) -> usize {
    c.load(Ordering::SeqCst)
}

#[test]
fn reading_an_unchanged_log_runs_the_reducer_once_per_operation() {
    let dir = tempfile::tempdir().expect("tmp");
    let writer = Oplogs::new(&meta(dir.path()));
    counting(&writer, "tally");
    for _ in 0..20 {
        writer.push(&fp(), "p", "tally", json!(1)).expect("push");
    }
    // A second handle on the directory (its own store, its own kept
    // values): its first read folds the log once, later reads nothing.
    let reader = Oplogs::new(&meta(dir.path()));
    let c = counting(&reader, "tally");
    for _ in 0..10 {
        assert_eq!(reader.get(&fp(), "p").expect("get"), json!(20));
    }
    assert_eq!(calls(&c), 20, "one fold of twenty operations");
    // A push folds only the new operation; the read after it nothing.
    reader.push(&fp(), "p", "tally", json!(1)).expect("push");
    assert_eq!(calls(&c), 21);
    assert_eq!(reader.get(&fp(), "p").expect("get"), json!(21));
    assert_eq!(calls(&c), 21);
}

#[test]
fn another_process_push_is_caught_up_with_one_call_per_new_operation() {
    let dir = tempfile::tempdir().expect("tmp");
    let ops = Oplogs::new(&meta(dir.path()));
    let c = counting(&ops, "counter");
    for _ in 0..10 {
        ops.push(&fp(), "c", "counter", json!(1)).expect("push");
    }
    assert_eq!(ops.get(&fp(), "c").expect("get"), json!(10));
    let before = calls(&c);
    // A real process pushes five more (with its own built-in counter).
    let mut w = Worker::spawn(&["op-push", &dir.path().to_string_lossy(), "c", "5"]);
    assert_eq!(w.expect_line("pushed"), "5");
    w.finish();
    assert_eq!(ops.get(&fp(), "c").expect("get"), json!(15));
    assert_eq!(
        calls(&c),
        before + 5,
        "the five new operations, not a re-fold"
    );
    assert_eq!(ops.get(&fp(), "c").expect("get"), json!(15));
    assert_eq!(calls(&c), before + 5);
}

#[test]
fn a_refused_push_costs_later_reads_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let ops = Oplogs::new(&meta(dir.path()));
    let c = counting(&ops, "tally");
    for _ in 0..30 {
        ops.push(&fp(), "p", "tally", json!(1)).expect("push");
    }
    ops.push(&fp(), "q", "tally", json!(1)).expect("push");
    assert_eq!(ops.get(&fp(), "p").expect("get"), json!(30));
    assert_eq!(ops.get(&fp(), "q").expect("get"), json!(1));
    let before = calls(&c);
    // Refused pushes: a type clash on one log, a payload the reducer
    // refuses on another. Neither writes, neither touches what is kept.
    let clash = ops
        .push(&fp(), "p", "counter", json!(1))
        .expect_err("type clash");
    assert!(matches!(clash, Error::Conflict(_)), "{clash}");
    let bad = ops
        .push(&fp(), "q", "tally", json!("x"))
        .expect_err("not a number");
    assert!(matches!(bad, Error::InvalidInput(_)), "{bad}");
    assert_eq!(calls(&c), before + 1, "the refused payload's one call");
    assert_eq!(ops.get(&fp(), "p").expect("get"), json!(30));
    assert_eq!(ops.get(&fp(), "q").expect("get"), json!(1));
    assert_eq!(
        calls(&c),
        before + 1,
        "no log was folded again after the refusals"
    );
}

/// A script whose every call runs about 360,000 Rhai operations (well
/// within the per-call limit of 1,000,000).
const HEAVY: &str =
    "fn init() { 0 } fn reduce(state, op) { let n = 0; while n < 60000 { n += 1; } state + 1 }";

#[test]
fn a_fold_over_the_budget_is_refused_keeps_its_progress_and_finishes_when_asked_again() {
    let dir = tempfile::tempdir().expect("tmp");
    let m = meta(dir.path());
    let unlimited = Oplogs::new(&m);
    unlimited.set_script("heavy", HEAVY).expect("set");
    for _ in 0..12 {
        unlimited.push(&fp(), "h", "heavy", json!(1)).expect("push");
    }
    let seq = m.store().snapshot().expect("snap").seq();
    // A budget of one call's limit folds a few operations per call.
    let budgeted = Oplogs::new(&meta(dir.path())).with_budget(1_000_000);
    let mut refused = 0;
    let value = loop {
        match budgeted.get(&fp(), "h") {
            Ok(v) => break v,
            Err(Error::Busy(message)) => {
                assert!(message.contains("ask again"), "{message}");
                assert!(message.contains("ops/test/h"), "{message}");
                refused += 1;
                assert!(refused < 12, "no progress: {message}");
            }
            Err(e) => panic!("unexpected: {e}"),
        }
    };
    assert_eq!(value, json!(12));
    assert!(
        refused >= 2,
        "the fold took several calls ({refused} refused)"
    );
    assert_eq!(
        m.store().snapshot().expect("snap").seq(),
        seq,
        "reads wrote nothing"
    );
    // Unchanged since: answered at once.
    assert_eq!(budgeted.get(&fp(), "h").expect("get"), json!(12));
}

#[test]
fn a_runaway_script_is_refused_by_the_budget_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let m = meta(dir.path());
    let unlimited = Oplogs::new(&m);
    // Each call runs about 720,000 operations: one per call fits the
    // budget below, two do not.
    unlimited
        .set_script(
            "runaway",
            "fn init() { 0 } fn reduce(state, op) { let n = 0; while n < 120000 { n += 1; } state + 1 }",
        )
        .expect("set");
    for _ in 0..4 {
        unlimited
            .push(&fp(), "r", "runaway", json!(1))
            .expect("push");
    }
    let budgeted = Oplogs::new(&meta(dir.path())).with_budget(1_000_000);
    let seq = m.store().snapshot().expect("snap").seq();
    let err = budgeted
        .push(&fp(), "r", "runaway", json!(1))
        .expect_err("over budget");
    let Error::Busy(message) = &err else {
        panic!("not busy: {err}");
    };
    assert!(message.contains("ops/test/r"), "{message}");
    assert!(message.contains("ask again"), "{message}");
    assert_eq!(
        m.store().snapshot().expect("snap").seq(),
        seq,
        "nothing was written"
    );
    // Asked again, it goes on from what it kept, and lands once.
    let mut tries = 1;
    let value = loop {
        match budgeted.push(&fp(), "r", "runaway", json!(1)) {
            Ok(v) => break v,
            Err(Error::Busy(_)) => {
                tries += 1;
                assert!(tries < 10, "no progress");
            }
            Err(e) => panic!("unexpected: {e}"),
        }
    };
    assert_eq!(value, json!(5));
    assert_eq!(unlimited.get(&fp(), "r").expect("get"), json!(5));
    assert_eq!(m.store().snapshot().expect("snap").seq(), seq + 1);
}

#[test]
fn kept_values_stay_within_their_byte_bound() {
    let dir = tempfile::tempdir().expect("tmp");
    let ops = Oplogs::new(&meta(dir.path())).with_kept_bytes(1 << 20);
    let big = "x".repeat(60 << 10);
    for i in 0..40 {
        ops.push(&fp(), &format!("r{i}"), "register", json!(big))
            .expect("push");
        ops.get(&fp(), &format!("r{i}")).expect("get");
    }
    let (paths, bytes) = ops.kept_stats();
    assert!(bytes <= 1 << 20, "{bytes} bytes kept");
    assert!(paths > 0 && paths < 40, "{paths} paths kept");
    // Evicted values are folded again when read.
    assert_eq!(ops.get(&fp(), "r0").expect("get"), json!(big));
}
