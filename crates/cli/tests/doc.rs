//! `chorus doc`: multiprocess-store's user-manager scenario end to end,
//! exit codes, stdin, and bad input.

use std::path::Path;
use std::process::Output;

use serde_json::{Value, json};

mod common;
use common::{chorus, chorus_sub, chorus_with_stdin, code, ok_json};

fn doc(dir: &Path, args: &[&str]) -> Output {
    chorus_sub(dir, "doc", args)
}

#[test]
fn the_user_manager_scenario_end_to_end() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    assert!(chorus(d, &["init"]).status.success());
    // Sign up alice; a second sign-up fails as existing (exit 3).
    let alice = ok_json(&doc(
        d,
        &[
            "create",
            "users",
            r#"{"_id": "alice", "password": "secret"}"#,
        ],
    ));
    assert_eq!(alice["_id"], "alice");
    let again = doc(
        d,
        &["create", "users", r#"{"_id": "alice", "password": "x"}"#],
    );
    assert_eq!(code(&again), 3);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    // Change her password, with the revision read, and verify it.
    let mut current = ok_json(&doc(d, &["get", "users", "alice"]));
    assert_eq!(current["_rev"], alice["_rev"]);
    current["password"] = json!("hunter2");
    let changed = ok_json(&doc(d, &["update", "users", &current.to_string()]));
    assert_ne!(changed["_rev"], alice["_rev"]);
    assert_eq!(
        ok_json(&doc(d, &["get", "users", "alice"]))["password"],
        "hunter2"
    );
    // The old revision is not current any more: a conflict (exit 3).
    let stale = doc(d, &["update", "users", &current.to_string()]);
    assert_eq!(
        code(&stale),
        3,
        "{}",
        String::from_utf8_lossy(&stale.stderr)
    );
    // Create bob and carol (carol from stdin), list all objects.
    ok_json(&doc(
        d,
        &["create", "users", r#"{"_id": "bob", "password": "123"}"#],
    ));
    ok_json(&chorus_with_stdin(
        d,
        &["doc", "create", "users", "-"],
        br#"{"_id": "carol", "password": "hunter2"}"#,
    ));
    let all = ok_json(&doc(d, &["all", "users"]));
    let ids: Vec<&str> = all
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|u| u["_id"].as_str())
        .collect();
    assert_eq!(ids, ["alice", "bob", "carol"]);
    assert!(
        all.as_array()
            .expect("array")
            .iter()
            .all(|u| u["_rev"].is_string())
    );
    // No conflicts, then delete bob with his revision.
    assert_eq!(
        ok_json(&doc(d, &["conflicts", "users", "alice"])),
        json!([])
    );
    let bob = ok_json(&doc(d, &["get", "users", "bob"]));
    ok_json(&doc(
        d,
        &["delete", "users", "bob", bob["_rev"].as_str().expect("rev")],
    ));
    assert_eq!(code(&doc(d, &["get", "users", "bob"])), 1);
    assert_eq!(
        ok_json(&doc(d, &["all", "users"])).as_array().map(Vec::len),
        Some(2)
    );
}

#[test]
fn keep_both_then_conflicts_then_resolve() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    assert!(chorus(d, &["init"]).status.success());
    let hello = ok_json(&doc(d, &["create", "s", r#"{"_id": "hello", "n": 0}"#]));
    let base = hello["_rev"].as_str().expect("rev");
    let edit = |n: u32, keep: bool| {
        let body = json!({"_id": "hello", "_rev": base, "n": n}).to_string();
        let mut args = vec!["update", "s", body.as_str()];
        if keep {
            args.push("--keep-both");
        }
        doc(d, &args)
    };
    let a = ok_json(&edit(1, false));
    assert_eq!(code(&edit(2, false)), 3);
    let b = ok_json(&edit(2, true));
    let groups = ok_json(&doc(d, &["conflicts", "s", "hello"]));
    let mut pair = vec![a["_rev"].clone(), b["_rev"].clone()];
    pair.sort_by(|x, y| x.as_str().cmp(&y.as_str()));
    assert_eq!(groups, json!([pair]));
    let with = ok_json(&doc(d, &["get", "s", "hello", "--conflicts"]));
    assert_eq!(with["_rev"], pair[1]);
    assert_eq!(with["_conflicts"], json!([pair[0]]));
    let loser = pair[0].as_str().expect("rev");
    assert_eq!(
        ok_json(&doc(d, &["get", "s", "hello", "--rev", loser]))["_rev"],
        loser
    );
    ok_json(&doc(d, &["resolve", "s", "hello", loser]));
    assert_eq!(ok_json(&doc(d, &["conflicts", "s", "hello"])), json!([]));
    assert_eq!(ok_json(&doc(d, &["get", "s", "hello"]))["_rev"], loser);
}

#[test]
fn bad_input_exits_2_with_the_reason_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    assert!(chorus(d, &["init"]).status.success());
    let long = format!(r#"{{"_id": "{}"}}"#, "x".repeat(600));
    for (json, why) in [
        (r#"{"_id": "../x"}"#, "'/'"),
        (r#"{"_id": "a/b"}"#, "'/'"),
        (r#"{"_id": ""}"#, "empty"),
        (long.as_str(), "512"),
        ("{not json", "not valid JSON"),
        (r#"{"_id": "a", "_rev": "x-1"}"#, "N-hash"),
        ("[1]", "JSON object"),
    ] {
        for cmd in ["create", "upsert", "update"] {
            let out = doc(d, &[cmd, "users", json]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(code(&out), 2, "{cmd} {json}: {err}");
            assert!(err.contains(why), "{cmd} {json}: {err}");
        }
    }
    assert_eq!(code(&doc(d, &["get", "users", "a/b"])), 2);
    assert_eq!(code(&doc(d, &["delete", "users", "a", "nope"])), 2);
    assert_eq!(code(&doc(d, &["get", "users", "nobody"])), 1);
    assert_eq!(code(&doc(d, &["get", "a/b/c", "x"])), 2);
    assert_eq!(ok_json(&doc(d, &["all", "users"])), json!([]));
    let status = chorus(d, &["--json", "status"]);
    let status: Value = serde_json::from_slice(&status.stdout).expect("status");
    assert_eq!(status["keys"], 0, "nothing was written: {status}");
}

#[test]
fn conflicts_are_paged_with_limit_and_after() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    assert!(chorus(d, &["init"]).status.success());
    let first = ok_json(&doc(d, &["create", "s", r#"{"_id": "d", "w": -1}"#]));
    let first = first["_rev"].as_str().expect("rev").to_string();
    for w in 0..5 {
        let body = json!({"_id": "d", "_rev": first, "w": w}).to_string();
        ok_json(&doc(d, &["update", "s", &body, "--keep-both"]));
    }
    let with = ok_json(&doc(d, &["get", "s", "d", "--conflicts"]));
    let all = with["_conflicts"].as_array().expect("_conflicts").clone();
    assert_eq!(all.len(), 4, "{with}");
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut args = vec!["conflicts", "s", "d", "--limit", "3"];
        if let Some(a) = after.as_deref() {
            args.extend(["--after", a]);
        }
        let page = ok_json(&doc(d, &args));
        assert_eq!(page["_rev"], with["_rev"], "{page}");
        paged.extend(page["conflicts"].as_array().expect("conflicts").clone());
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
    }
    assert_eq!(paged, all);
    for args in [
        vec!["conflicts", "s", "d", "--limit", "0"],
        vec!["conflicts", "s", "d", "--limit", "10001"],
        vec!["conflicts", "s", "d", "--limit", "x"],
        vec!["conflicts", "s", "d", "--limit", "2", "--after", "nope"],
        vec!["conflicts", "s", "d", "--after", &first],
    ] {
        let out = doc(d, &args);
        assert_eq!(
            code(&out),
            2,
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        code(&doc(d, &["conflicts", "s", "nobody", "--limit", "2"])),
        1
    );
}
