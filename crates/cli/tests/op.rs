//! `chorus op`: pushes, values and logs through the command line, and bad
//! input.

use serde_json::{Value, json};

mod common;
use common::{chorus, ok_json};

#[test]
fn push_get_and_log_through_the_cli() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    assert!(chorus(d, &["init"]).status.success());
    assert_eq!(
        ok_json(&chorus(d, &["op", "get", "app/stats", "visits"])),
        Value::Null
    );
    assert_eq!(
        ok_json(&chorus(
            d,
            &["op", "push", "app/stats", "visits", "counter", "1"]
        )),
        json!(1)
    );
    assert_eq!(
        ok_json(&chorus(
            d,
            &["op", "push", "app/stats", "visits", "counter", "41"]
        )),
        json!(42)
    );
    assert_eq!(
        ok_json(&chorus(d, &["op", "get", "app/stats", "visits"])),
        json!(42)
    );
    let patch = r#"{"theme": "dark", "lang": "en"}"#;
    ok_json(&chorus(
        d,
        &["op", "push", "app/prefs", "alice", "json-merge", patch],
    ));
    let v = ok_json(&chorus(
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
    let log = ok_json(&chorus(d, &["op", "log", "app/stats", "visits"]));
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
    ok_json(&chorus(
        d,
        &["op", "push", "app/stats", "n", "counter", "1"],
    ));
    for (args, why) in [
        (
            vec!["app/stats", "n", "counter", "{not json"],
            "not valid JSON",
        ),
        (vec!["app/stats", "n", "nosuchtype", "1"], "no reducer"),
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
    // Another type than the log's clashes with what is stored: exit 3.
    let out = chorus(d, &["op", "push", "app/stats", "n", "max", "1"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has type"));
    assert_eq!(
        ok_json(&chorus(d, &["op", "get", "app/stats", "n"])),
        json!(1)
    );
}

#[test]
fn chorus_watch_prints_a_line_per_matching_change_by_another_process() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    assert!(chorus(d, &["init"]).status.success());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_chorus"))
        .arg("--dir")
        .arg(d)
        .args(["watch", "app/cfg", "--match", "a*"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    // The first line says where the watch starts.
    let first: Value =
        serde_json::from_str(&lines.next().expect("a line").expect("read")).expect("JSON");
    assert_eq!(first["watching"], "app/cfg");
    for (key, value) in [("b1", "no"), ("a1", "yes"), ("other", "no"), ("a2", "too")] {
        assert!(chorus(d, &["put", "app/cfg", key, value]).status.success());
    }
    assert!(
        chorus(d, &["put", "app/elsewhere", "a9", "no"])
            .status
            .success()
    );
    let mut seen = Vec::new();
    for _ in 0..2 {
        let line = lines.next().expect("a line").expect("read");
        let v: Value = serde_json::from_str(&line).expect("JSON line");
        assert_eq!(v["from_peer"], false);
        assert_eq!(v["full_prefix"], "app/cfg");
        seen.push((
            v["key"].as_str().map(String::from),
            v["values"][0]["value"].clone(),
        ));
    }
    child.kill().expect("stop");
    let _ = child.wait();
    assert_eq!(
        seen,
        vec![
            (Some("a1".into()), json!("yes")),
            (Some("a2".into()), json!("too"))
        ]
    );
}

#[test]
fn a_script_reducer_set_from_a_file_is_used_by_pushes() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    assert!(chorus(d, &["init"]).status.success());
    let script = d.join("avg.rhai");
    std::fs::write(
        &script,
        "fn init() { #{ n: 0, sum: 0 } }\nfn reduce(s, op) { s.n += 1; s.sum += op.payload; s }\n",
    )
    .expect("write");
    let path = script.to_str().expect("utf-8");
    ok_json(&chorus(d, &["reducer", "set", "avg", path]));
    ok_json(&chorus(d, &["op", "push", "app/m", "latency", "avg", "10"]));
    let v = ok_json(&chorus(d, &["op", "push", "app/m", "latency", "avg", "30"]));
    assert_eq!(v, json!({"n": 2, "sum": 40}));
    let bad = d.join("bad.rhai");
    std::fs::write(&bad, "fn reduce(s, op) { loop { } }").expect("write");
    ok_json(&chorus(
        d,
        &["reducer", "set", "spin", bad.to_str().expect("utf-8")],
    ));
    let out = chorus(d, &["op", "push", "app/m", "x", "spin", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"spin\""));
    let out = chorus(d, &["reducer", "set", "counter", path]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a built-in type cannot be replaced"
    );
}
