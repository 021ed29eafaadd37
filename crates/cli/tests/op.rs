//! `chorus op`: pushes, values and logs through the command line, and bad
//! input.

use std::process::Output;

use serde_json::{Value, json};

mod common;
use common::chorus;

fn ok(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

#[test]
fn push_get_and_log_through_the_cli() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    assert!(chorus(d, &["init"]).status.success());
    assert_eq!(
        ok(&chorus(d, &["op", "get", "app/stats", "visits"])),
        Value::Null
    );
    assert_eq!(
        ok(&chorus(
            d,
            &["op", "push", "app/stats", "visits", "counter", "1"]
        )),
        json!(1)
    );
    assert_eq!(
        ok(&chorus(
            d,
            &["op", "push", "app/stats", "visits", "counter", "41"]
        )),
        json!(42)
    );
    assert_eq!(
        ok(&chorus(d, &["op", "get", "app/stats", "visits"])),
        json!(42)
    );
    let patch = r#"{"theme": "dark", "lang": "en"}"#;
    ok(&chorus(
        d,
        &["op", "push", "app/prefs", "alice", "json-merge", patch],
    ));
    let v = ok(&chorus(
        d,
        &[
            "op",
            "push",
            "app/prefs",
            "alice",
            "json-merge",
            r#"{"lang": null}"#,
        ],
    ));
    assert_eq!(v, json!({"theme": "dark"}));
    let log = ok(&chorus(d, &["op", "log", "app/stats", "visits"]));
    assert_eq!(log["type"], "counter");
    let ops = log["ops"].as_array().expect("ops");
    assert_eq!(ops.len(), 2);
    assert!(ops[0]["timestamp"].as_u64() < ops[1]["timestamp"].as_u64());
    assert_eq!(ops[0]["sha"].as_str().map(str::len), Some(64));
    assert_eq!(log["late"], json!([]));
}

#[test]
fn bad_input_exits_2_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    assert!(chorus(d, &["init"]).status.success());
    ok(&chorus(
        d,
        &["op", "push", "app/stats", "n", "counter", "1"],
    ));
    for (args, why) in [
        (
            vec!["app/stats", "n", "counter", "{not json"],
            "not valid JSON",
        ),
        (vec!["app/stats", "n", "nosuchtype", "1"], "no reducer"),
        (vec!["app/stats", "n", "max", "1"], "has type"),
        (vec!["app/stats", "n", "counter", "\"one\""], "not a number"),
        (vec!["$cluster/x", "n", "counter", "1"], "reserved"),
        (vec!["nofullprefix", "n", "counter", "1"], ""),
    ] {
        let mut all = vec!["op", "push"];
        all.extend(args.iter().copied());
        let out = chorus(d, &all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(why), "{args:?}: {err}");
    }
    assert_eq!(ok(&chorus(d, &["op", "get", "app/stats", "n"])), json!(1));
}
