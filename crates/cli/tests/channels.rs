//! Channels from the outside: `chorus channel` on a directory (bad input
//! refused with the table unchanged), `not_served` from `chorus put` and
//! `chorus get`, `chorus serve --serve/--channels`, and two real daemons
//! on loopback where a node that does not serve a full prefix answers 421
//! naming the one that does, or forwards the request to it.

use std::path::Path;
use std::time::Duration;

mod common;
use common::http::{curl, curl_with_headers, header, json, wait_healthy};
use common::{Node, chorus, code, free_port, stderr, stdout, stdout_json};

/// This directory's node id.
fn node_id(dir: &Path) -> String {
    let out = chorus(dir, &["status", "--json"]);
    stdout_json(&out)["node_id"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `chorus channel ls --json` on `dir`.
fn table(dir: &Path) -> serde_json::Value {
    stdout_json(&chorus(dir, &["channel", "ls", "--json"]))
}

#[test]
fn bad_changes_are_refused_with_a_clear_error_and_leave_the_table_unchanged() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    assert_eq!(code(&chorus(d, &["init"])), 0);
    let me = node_id(d);
    let out = chorus(d, &["channel", "add", "render", "render/*", "--node", &me]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let before = table(d);
    assert_eq!(before["channels"]["render"]["patterns"][0], "render/*");
    assert_eq!(before["channels"]["render"]["nodes"][0]["id"], me.as_str());
    let unknown = "0123456789abcdef0123456789abcdef";
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec!["add", "more", "render/shot1", "--node", &me],
            3,
            "overlaps render/*",
        ),
        (
            vec!["add", "more", "a/*", "a/b", "--node", &me],
            2,
            "overlap",
        ),
        (vec!["add", "more", "--node", &me], 2, "no pattern"),
        (vec!["add", "more", "", "--node", &me], 2, "no '/'"),
        (vec!["add", "more", "$cluster/*", "--node", &me], 2, "'$'"),
        (vec!["add", "more", "$auth/x", "--node", &me], 2, "'$'"),
        (
            vec!["add", "Bad Name", "a/*", "--node", &me],
            2,
            "not a channel name",
        ),
        (vec!["add", "more", "a/*"], 2, "no node"),
        (
            vec!["add", "more", "a/*", "--node", unknown],
            2,
            "not a member",
        ),
        (
            vec!["add", "more", "a/*", "--node", "127.0.0.1:9"],
            2,
            "names no node",
        ),
        (vec!["serve", "render", unknown], 2, "not a member"),
        (vec!["serve", "nope"], 1, "no channel \"nope\""),
        (vec!["leave", "render"], 3, "only node"),
        (vec!["rm", "nope"], 1, "no channel"),
    ];
    for (args, exit, says) in cases {
        let mut all = vec!["channel"];
        all.extend(args.iter().copied());
        let out = chorus(d, &all);
        assert_eq!(code(&out), exit, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
        assert_eq!(
            stderr(&out).lines().count(),
            1,
            "one line: {}",
            stderr(&out)
        );
        assert_eq!(table(d), before, "{args:?} changed the table");
    }
    let out = chorus(d, &["channel", "leave", "render", "--json"]);
    assert_eq!(stdout_json(&out)["code"], "conflict");
    let out = chorus(d, &["channel", "rm", "render"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&chorus(d, &["channel", "ls"])).contains("no channel"));
}

/// A node on free ports with more arguments; returns it, its gossip port
/// and its URL.
fn node(dir: &Path, join: Option<u16>, extra: &[&str]) -> (Node, u16, String) {
    let (gossip, http) = (free_port(), free_port());
    let mut args = vec!["--insecure", "--exchange-interval", "1"];
    args.extend_from_slice(extra);
    let n = common::serve(dir, gossip, http, join, &args);
    let url = format!("http://127.0.0.1:{http}");
    wait_healthy(&url, Duration::from_secs(30));
    (n, gossip, url)
}

/// Runs `chorus serve` on `dir` expecting it to refuse to start; returns
/// its exit code and stderr.
fn refused_start(dir: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec![
        "serve".to_string(),
        "--insecure".to_string(),
        "--gossip".to_string(),
        format!("127.0.0.1:{}", free_port()),
        "--http".to_string(),
        format!("127.0.0.1:{}", free_port()),
    ];
    args.extend(extra.iter().map(ToString::to_string));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = chorus(dir, &refs);
    (code(&out), stderr(&out))
}

#[test]
fn serve_flags_and_a_table_file_add_this_node_and_refuse_other_patterns() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    assert_eq!(code(&chorus(d, &["init"])), 0);
    let me = node_id(d);
    let (exit, err) = refused_start(d, &["--serve", "render"]);
    assert_eq!(exit, 2, "{err}");
    assert!(err.contains("no channel \"render\""), "{err}");
    let (exit, err) = refused_start(d, &["--serve", "render="]);
    assert_eq!(exit, 2, "{err}");

    let file = d.join("table.json");
    let listed = serde_json::json!({"channels": {
        "assets": {"patterns": ["assets/shot*"], "nodes": [{"id": me}]},
    }});
    std::fs::write(&file, listed.to_string()).expect("write the table file");
    let file_arg = file.to_str().expect("utf-8");
    {
        let _n = node(
            d,
            None,
            &["--serve", "render=render/*", "--channels", file_arg],
        );
        let t = table(d);
        assert_eq!(t["channels"]["render"]["patterns"][0], "render/*", "{t}");
        assert_eq!(t["channels"]["render"]["nodes"][0]["id"], me.as_str());
        assert_eq!(
            t["channels"]["assets"]["patterns"][0], "assets/shot*",
            "{t}"
        );
        // The node's member record names its addresses.
        assert!(
            t["channels"]["render"]["nodes"][0]["http"]
                .as_str()
                .is_some_and(|h| h.starts_with("127.0.0.1:")),
            "{t}"
        );
    }
    let before = table(d);
    let (exit, err) = refused_start(d, &["--serve", "render=render/shot*"]);
    assert_eq!(exit, 2, "{err}");
    assert!(
        err.contains("render/*") && err.contains("render/shot*"),
        "both named: {err}"
    );
    let (exit, err) = refused_start(d, &["--channels", "/nonexistent/table.json"]);
    assert_eq!(exit, 2, "{err}");
    assert_eq!(table(d), before, "refused starts changed nothing");
}

#[test]
fn a_node_that_does_not_serve_a_prefix_names_the_node_that_does_and_forwards_on_request() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().expect("tmp")).collect();
    let (a, b) = (dirs[0].path(), dirs[1].path());
    let (na, gossip_a, url_a) = node(a, None, &[]);
    // B forwards by default (`--forward`); `?forward=false` asks it not to.
    let (_nb, _, url_b) = node(b, Some(gossip_a), &["--forward"]);
    let id_a = node_id(a);
    let http_a = url_a.trim_start_matches("http://").to_string();
    // Once A's member record reached B, the channel can name A by its
    // HTTP address there.
    common::wait_until(Duration::from_secs(30), || {
        code(&chorus(
            b,
            &["channel", "add", "render", "render/*", "--node", &http_a],
        )) == 0
    });
    assert_eq!(
        table(b)["channels"]["render"]["nodes"][0]["id"],
        id_a.as_str()
    );

    // The CLI on B's directory: not served, naming A and its address.
    for args in [
        vec!["put", "render/shot1", "k", "v"],
        vec!["get", "render/shot1", "k"],
    ] {
        let out = chorus(b, &args);
        assert_eq!(code(&out), 1, "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("render/shot1 is not served on this node")
                && err.contains(&id_a)
                && err.contains(&http_a),
            "{args:?}: {err}"
        );
        let mut with_json = args.clone();
        with_json.push("--json");
        let doc = stdout_json(&chorus(b, &with_json));
        assert_eq!(doc["code"], "not_served", "{doc}");
        assert_eq!(doc["nodes"][0]["id"], id_a.as_str(), "{doc}");
    }

    // HTTP on B without forwarding: 421 naming A (id and address).
    let key_b = format!("{url_b}/v1/kv/render/shot1/k");
    let (_, status, body) = curl(&[
        "-X",
        "PUT",
        "--data-binary",
        "v1",
        &format!("{key_b}?forward=false"),
    ]);
    assert_eq!(status, 421, "{body}");
    let e = json(&body);
    assert_eq!(e["code"], "not_served", "{e}");
    assert_eq!(e["channel"], "render", "{e}");
    assert_eq!(e["nodes"][0]["id"], id_a.as_str(), "{e}");
    assert_eq!(e["nodes"][0]["http"], http_a.as_str(), "{e}");
    assert!(
        e["message"].as_str().is_some_and(|m| m.contains(&http_a)),
        "{e}"
    );

    // Forwarded: A answers, A holds the value, and the answer says so.
    let (_, status, headers, body) = curl_with_headers(&[
        "-X",
        "PUT",
        "--data-binary",
        "from-b",
        &format!("{key_b}?forward=true"),
    ]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "x-chorus-answered-by"), Some(id_a.clone()));
    assert_eq!(
        common::get(a, "render/shot1", "k").as_deref(),
        Some("from-b")
    );
    // B's node setting forwards a plain GET; the answer is A's.
    let (_, status, headers, body) = curl_with_headers(&[&key_b]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "x-chorus-answered-by"), Some(id_a.clone()));
    assert!(header(&headers, "x-chorus-context").is_some(), "{headers}");
    assert_eq!(json(&body)["values"][0]["value"], "from-b", "{body}");
    let (_, status, body) = curl(&[&format!("{url_b}/v1/kv/render/shot1?forward=true")]);
    assert_eq!(status, 200, "a forwarded listing: {body}");
    let (_, status, body) = curl(&[&format!("{key_b}?forward=maybe")]);
    assert_eq!(status, 400, "{body}");

    // A request that was forwarded once is never forwarded again.
    let (_, status, body) = curl(&["-H", "X-Chorus-Forwarded-By: somewhere", &key_b]);
    assert_eq!(status, 421, "{body}");

    // A served prefix is answered by B itself, with or without forward.
    let (_, status, headers, body) = curl_with_headers(&[
        "-X",
        "PUT",
        "--data-binary",
        "x",
        &format!("{url_b}/v1/kv/other/a/k?forward=true"),
    ]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "x-chorus-answered-by"), None);

    // A down: a clear 502 naming it.
    drop(na);
    let (_, status, body) = curl(&[&key_b]);
    assert_eq!(status, 502, "{body}");
    let e = json(&body);
    assert_eq!(e["code"], "unreachable", "{e}");
    assert!(
        e["message"].as_str().is_some_and(|m| m.contains(&id_a)),
        "{e}"
    );
}

#[test]
fn the_channel_routes_change_the_table_and_refuse_bad_input() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_n, _, url) = node(dir.path(), None, &[]);
    let me = node_id(dir.path());
    let put = |name: &str, body: &str| {
        common::http::request(
            "PUT",
            &format!("{url}/v1/channels/{name}"),
            None,
            Some(body),
        )
    };
    let body = serde_json::json!({"patterns": ["render/*"], "nodes": [me]}).to_string();
    let (status, v) = put("render", &body);
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["channels"]["render"]["patterns"][0], "render/*");
    let (status, listed) = common::http::request("GET", &format!("{url}/v1/channels"), None, None);
    assert_eq!(status, 200);
    assert_eq!(listed, v);
    for (name, body, want, says) in [
        (
            "more",
            r#"{"patterns": ["render/x"], "nodes": []}"#,
            400,
            "no node",
        ),
        (
            "more",
            &*serde_json::json!({"patterns": ["render/x"], "nodes": [me]}).to_string(),
            409,
            "overlaps",
        ),
        (
            "more",
            &*serde_json::json!({"patterns": ["$auth/*"], "nodes": [me]}).to_string(),
            400,
            "'$'",
        ),
        (
            "more",
            r#"{"patterns": ["a/*"], "nodes": ["nobody"]}"#,
            400,
            "names no node",
        ),
        ("more", r#"{"patterns": ["a/*"]}"#, 400, "nodes"),
    ] {
        let (status, e) = put(name, body);
        assert_eq!(status, want, "{body}: {e}");
        assert!(
            e["message"].as_str().is_some_and(|m| m.contains(says)),
            "{body}: {e}"
        );
    }
    let leave = common::http::request(
        "POST",
        &format!("{url}/v1/channels/render/leave"),
        None,
        Some(&serde_json::json!({"node": me}).to_string()),
    );
    assert_eq!(leave.0, 409, "the last node: {}", leave.1);
    let (status, after) = common::http::request("GET", &format!("{url}/v1/channels"), None, None);
    assert_eq!((status, &after), (200, &v), "refusals changed nothing");
    let (status, e) =
        common::http::request("POST", &format!("{url}/v1/channels/nope/serve"), None, None);
    assert_eq!(status, 404, "{e}");
    let (status, gone) =
        common::http::request("DELETE", &format!("{url}/v1/channels/render"), None, None);
    assert_eq!(status, 200, "{gone}");
    assert_eq!(gone["channels"], serde_json::json!({}));
}
