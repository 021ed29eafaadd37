//! The HTTP API of `chorus serve`, driven with curl as any client would:
//! every route, bad input on every route, and a change stream resumed
//! after a disconnect.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::http::{curl_with_headers, header, json, start, start_with_gossip};
use common::{assert_success, chorus};

#[test]
fn keys_contexts_siblings_lists_hashes_and_the_service_routes() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_node, url) = start(dir.path());
    let key = format!("{url}/v1/kv/app/cfg/mode");
    let (_, status, _, body) = curl_with_headers(&["-X", "PUT", "--data-binary", "blue", &key]);
    assert_eq!(status, 200, "{body}");
    let (_, status, headers, body) = curl_with_headers(&[&key]);
    assert_eq!(status, 200);
    let read = json(&body);
    assert_eq!(read["values"][0]["value"], "blue");
    let context = header(&headers, "x-chorus-context").expect("context header");
    assert_eq!(read["context"], context.as_str());
    // Two writers with the same context: siblings.
    let ctx = format!("X-Chorus-Context: {context}");
    for v in ["green", "red"] {
        let (_, status, _, _) =
            curl_with_headers(&["-X", "PUT", "-H", &ctx, "--data-binary", v, &key]);
        assert_eq!(status, 200);
    }
    let read = json(&curl_with_headers(&[&key]).3);
    assert_eq!(read["values"].as_array().map(Vec::len), Some(2));
    let lww = json(&curl_with_headers(&[&format!("{key}?resolve=lww")]).3);
    assert_eq!(lww["values"].as_array().map(Vec::len), Some(1));
    // A key with slashes, a list with a pattern, hashes.
    assert_eq!(
        curl_with_headers(&[
            "-X",
            "PUT",
            "--data-binary",
            "x",
            &format!("{url}/v1/kv/app/cfg/a/b")
        ])
        .1,
        200
    );
    let list = json(&curl_with_headers(&[&format!("{url}/v1/kv/app/cfg?match=a*")]).3);
    assert_eq!(list["keys"][0]["key"], "a/b");
    assert_eq!(list["keys"].as_array().map(Vec::len), Some(1));
    let h1 = json(&curl_with_headers(&[&format!("{url}/v1/hash/app/cfg")]).3);
    let h2 = json(&curl_with_headers(&[&format!("{url}/v1/hash/app")]).3);
    assert_eq!(h1["hash"].as_str().map(str::len), Some(64));
    assert_eq!(h2["hash"].as_str().map(str::len), Some(64));
    // Delete, then the key is gone.
    assert_eq!(
        curl_with_headers(&["-X", "DELETE", &format!("{url}/v1/kv/app/cfg/a/b")]).1,
        200
    );
    let (_, status, _, body) = curl_with_headers(&[&format!("{url}/v1/kv/app/cfg/a/b")]);
    assert_eq!(status, 404);
    assert_eq!(json(&body)["code"], "not_found");
    // Service routes.
    assert_eq!(
        json(&curl_with_headers(&[&format!("{url}/health")]).3)["status"],
        "ok"
    );
    let cluster = json(&curl_with_headers(&[&format!("{url}/v1/cluster")]).3);
    assert!(
        cluster["node"].as_str().is_some_and(|n| n.len() == 32),
        "{cluster}"
    );
    let metrics = curl_with_headers(&[&format!("{url}/metrics")]).3;
    assert!(
        metrics.contains(
            "chorus_http_request_duration_seconds_count{route=\"/v1/kv/{prefix}/{sub}/{*key}\",status=\"200\"}"
        ),
        "{metrics}"
    );
    let counter = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    let (commits, syncs) = (
        counter("chorus_store_commits_total"),
        counter("chorus_store_syncs_total"),
    );
    assert!(commits >= 5 && syncs >= 1 && syncs <= commits, "{metrics}");
    let openapi = json(&curl_with_headers(&[&format!("{url}/openapi.json")]).3);
    let mut paths: Vec<&str> = openapi["paths"]
        .as_object()
        .map(|p| p.keys().map(String::as_str).collect())
        .unwrap_or_default();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "/health",
            "/metrics",
            "/openapi.json",
            "/v1/auth/sessions",
            "/v1/auth/sessions/{id}",
            "/v1/auth/tokens",
            "/v1/auth/tokens/{id}",
            "/v1/channels",
            "/v1/channels/{name}",
            "/v1/channels/{name}/leave",
            "/v1/channels/{name}/serve",
            "/v1/cluster",
            "/v1/cluster/join",
            "/v1/docs/{store}",
            "/v1/docs/{store}/{id}",
            "/v1/docs/{store}/{id}/conflicts",
            "/v1/docs/{store}/{id}/resolve",
            "/v1/hash/{prefix}",
            "/v1/hash/{prefix}/{subprefix}",
            "/v1/kv",
            "/v1/kv/{prefix}",
            "/v1/kv/{prefix}/{subprefix}",
            "/v1/kv/{prefix}/{subprefix}/{key}",
            "/v1/ops/{prefix}/{subprefix}/{path}",
            "/v1/sync/pull",
            "/v1/sync/push",
            "/v1/watch",
        ]
    );
}

#[test]
fn bad_input_gets_a_json_error_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_node, url) = start(dir.path());
    let key = format!("{url}/v1/kv/app/cfg/k");
    assert_eq!(
        curl_with_headers(&["-X", "PUT", "--data-binary", "v1", &key]).1,
        200
    );
    let before = curl_with_headers(&[&format!("{url}/v1/hash/app/cfg")]).3;
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'x'; 2 << 20]).expect("write");
    let big_arg = format!("@{}", big.display());
    let cases: Vec<(Vec<String>, u16, &str)> = vec![
        (
            vec![
                "-X".into(),
                "PUT".into(),
                "-H".into(),
                "X-Chorus-Context: not-a-context!".into(),
                "--data-binary".into(),
                "v2".into(),
                key.clone(),
            ],
            400,
            "bad_request",
        ),
        (
            vec![
                "-X".into(),
                "PUT".into(),
                "--data-binary".into(),
                big_arg,
                key.clone(),
            ],
            413,
            "",
        ),
        (
            vec![
                "-X".into(),
                "PUT".into(),
                "--data-binary".into(),
                "v".into(),
                format!("{url}/v1/kv/$cluster/x/k"),
            ],
            400,
            "bad_request",
        ),
        (
            vec![
                "-X".into(),
                "PUT".into(),
                "--data-binary".into(),
                "v".into(),
                format!("{url}/v1/kv/a%01b/x/k"),
            ],
            400,
            "bad_request",
        ),
        (vec![format!("{key}?resolve=newest")], 400, "bad_request"),
        (vec![format!("{url}/v1/kv/app/cfg?match=%5B")], 200, ""),
        (vec![format!("{url}/v1/nothing")], 404, "not_found"),
        (
            vec![
                "-H".into(),
                "Last-Event-ID: 1-2".into(),
                "--max-time".into(),
                "2".into(),
                format!("{url}/v1/watch"),
            ],
            400,
            "bad_request",
        ),
        (
            vec![format!("{url}/v1/watch?prefix=a%01b")],
            400,
            "bad_request",
        ),
    ];
    for (args, status, code) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (_, got, _, body) = curl_with_headers(&args);
        assert_eq!(got, status, "{args:?}: {body}");
        if !code.is_empty() {
            let err = json(&body);
            assert_eq!(err["code"], code, "{args:?}");
            assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
    }
    assert_eq!(
        curl_with_headers(&[&format!("{url}/v1/hash/app/cfg")]).3,
        before,
        "nothing changed"
    );
    assert_eq!(
        json(&curl_with_headers(&[&key]).3)["values"][0]["value"],
        "v1"
    );
}

/// Reads a watch for `secs` seconds with curl; returns the stream's text.
fn watch(url: &str, last_event_id: Option<&str>, secs: &str) -> std::process::Child {
    let mut cmd = Command::new("curl");
    cmd.args(["-sN", "--max-time", secs]);
    if let Some(id) = last_event_id {
        cmd.arg("-H").arg(format!("Last-Event-ID: {id}"));
    }
    cmd.arg(format!("{url}/v1/watch?prefix=app"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl")
}

fn events(child: std::process::Child) -> Vec<(String, serde_json::Value)> {
    let out = child.wait_with_output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut found = Vec::new();
    let mut id = String::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("id: ") {
            id = v.to_string();
        }
        if let Some(v) = line.strip_prefix("data: ") {
            found.push((id.clone(), json(v)));
        }
    }
    found
}

#[test]
fn a_change_stream_reports_every_change_and_resumes_after_a_disconnect() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_node, url) = start(dir.path());
    let stream = watch(&url, None, "3");
    std::thread::sleep(Duration::from_millis(500));
    for (k, v) in [("one", "1"), ("two", "2")] {
        let path = format!("{url}/v1/kv/app/cfg/{k}");
        assert_eq!(
            curl_with_headers(&["-X", "PUT", "--data-binary", v, &path]).1,
            200
        );
    }
    // Another process, not the API, writes too: the stream shows it.
    let out = chorus(dir.path(), &["put", "app/cfg", "three", "3"]);
    assert!(out.status.success());
    assert!(
        curl_with_headers(&[
            "-X",
            "PUT",
            "--data-binary",
            "x",
            &format!("{url}/v1/kv/other/cfg/k")
        ])
        .1 == 200
    );
    let seen = events(stream);
    let keys: Vec<&str> = seen.iter().filter_map(|(_, d)| d["key"].as_str()).collect();
    assert_eq!(
        keys,
        ["one", "two", "three"],
        "in order, other prefixes left out"
    );
    assert_eq!(seen[0].1["values"][0]["value"], "1");
    assert_eq!(seen[0].1["from_peer"], false);
    // Disconnected after the first event: resuming from its id gives the rest.
    let resumed = events(watch(&url, Some(&seen[0].0), "2"));
    let keys: Vec<&str> = resumed
        .iter()
        .filter_map(|(_, d)| d["key"].as_str())
        .collect();
    assert_eq!(keys, ["two", "three"]);
}

#[test]
fn a_node_told_to_join_over_http_receives_the_clusters_writes() {
    let (d1, d2) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let (_n1, url1, gossip1) = start_with_gossip(d1.path());
    let (_n2, url2, _) = start_with_gossip(d2.path());
    let join = format!("{url2}/v1/cluster/join");
    for (body, status) in [
        ("{\"peer\": \"not an address\"}", 400),
        ("{\"peer\": \"10.0.0.1:7900\"}", 400),
        ("peer=1", 400),
    ] {
        let (_, got, _, out) = curl_with_headers(&[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "--data",
            body,
            &join,
        ]);
        assert_eq!(got, status, "{body}: {out}");
        assert_eq!(json(&out)["code"], "bad_request");
    }
    let body = format!("{{\"peer\": \"{gossip1}\"}}");
    let (_, status, _, out) = curl_with_headers(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "--data",
        &body,
        &join,
    ]);
    assert_eq!(status, 202, "{out}");
    assert_eq!(
        curl_with_headers(&[
            "-X",
            "PUT",
            "--data-binary",
            "v",
            &format!("{url1}/v1/kv/app/cfg/k")
        ])
        .1,
        200
    );
    let started = Instant::now();
    while curl_with_headers(&[&format!("{url2}/v1/kv/app/cfg/k")]).1 != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never replicated"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The view is published on the feed's tick: wait for the one after
    // the join.
    let started = Instant::now();
    loop {
        let cluster = json(&curl_with_headers(&[&format!("{url2}/v1/cluster")]).3);
        if cluster["active"][0] == gossip1.as_str() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "node 2's active view never showed node 1: {cluster}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_node_that_leaves_stops_and_the_others_record_it_as_left() {
    let (d1, d2) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let (_n1, url1, gossip1) = start_with_gossip(d1.path());
    let (mut n2, url2, gossip2) = start_with_gossip(d2.path());
    let body = format!("{{\"peer\": \"{gossip1}\"}}");
    let join = format!("{url2}/v1/cluster/join");
    assert_eq!(
        curl_with_headers(&[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "--data",
            &body,
            &join
        ])
        .1,
        202
    );
    let members_of =
        |url: &str| json(&curl_with_headers(&[&format!("{url}/v1/cluster")]).3)["members"].clone();
    let started = Instant::now();
    while !members_of(&url1).to_string().contains(&gossip2) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "node 2 never became a member"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_success(&chorus(d2.path(), &["leave"]));
    let started = Instant::now();
    while n2.0.try_wait().ok().flatten().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the daemon kept running after leave"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let expected = serde_json::json!([gossip2, "left"]);
    while !members_of(&url1)
        .as_array()
        .is_some_and(|m| m.contains(&expected))
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "node 1 never saw node 2 leave: {}",
            members_of(&url1)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // It cannot come back with its old data.
    let out = chorus(
        d2.path(),
        &[
            "serve",
            "--insecure",
            "--gossip",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("left the cluster"));
    // A directory that never served is in no cluster.
    let lone = tempfile::tempdir().expect("tmp");
    let _ = chorus(lone.path(), &["init"]);
    let out = chorus(lone.path(), &["leave"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn a_node_that_moves_to_another_address_serves_again_and_its_old_address_is_left() {
    let dir = tempfile::tempdir().expect("tmp");
    let (first, url1, gossip1) = start_with_gossip(dir.path());
    drop(first);
    let _ = url1;
    let (_second, url2, gossip2) = start_with_gossip(dir.path());
    let members = json(&curl_with_headers(&[&format!("{url2}/v1/cluster")]).3)["members"].clone();
    assert!(
        members
            .as_array()
            .is_some_and(|m| m.contains(&serde_json::json!([gossip1, "left"]))),
        "the old address is left: {members}"
    );
    // A third start at yet another address works too.
    drop(_second);
    let (_third, url3, _) = start_with_gossip(dir.path());
    let members = json(&curl_with_headers(&[&format!("{url3}/v1/cluster")]).3)["members"].clone();
    assert!(
        members
            .as_array()
            .is_some_and(|m| m.contains(&serde_json::json!([gossip2, "left"]))),
        "{members}"
    );
}

#[test]
fn documents_over_http_with_revisions_conflicts_and_bad_input() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_node, url) = start(dir.path());
    let base = format!("{url}/v1/docs/users");
    let send = |method: &str, url: &str, body: &str| {
        curl_with_headers(&[
            "-X",
            method,
            "-H",
            "content-type: application/json",
            "--data-binary",
            body,
            url,
        ])
    };
    // Create (POST and PUT), then a second create of the same id: 409.
    let (_, status, _, body) = send(
        "POST",
        &base,
        r#"{"_id": "alice", "email": "a@example.com"}"#,
    );
    assert_eq!(status, 201, "{body}");
    let first = json(&body)["_rev"].as_str().expect("rev").to_string();
    let (_, status, _, body) = send("PUT", &format!("{base}/bob"), r#"{"n": 1}"#);
    assert_eq!(status, 201, "{body}");
    let (_, status, _, body) = send("POST", &base, r#"{"_id": "alice"}"#);
    assert_eq!(
        (status, json(&body)["code"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    // Read, update with the revision, a stale update is 409, keep_both
    // makes a branch that shows in conflicts.
    let (_, status, _, body) = curl_with_headers(&[&format!("{base}/alice")]);
    assert_eq!(status, 200);
    assert_eq!(json(&body)["_rev"], first.as_str());
    let update = |email: &str, keep: bool| {
        let target = format!("{base}/alice{}", if keep { "?keep_both=true" } else { "" });
        send(
            "PUT",
            &target,
            &format!(r#"{{"_rev": "{first}", "email": "{email}"}}"#),
        )
    };
    let (_, status, _, body) = update("b@example.com", false);
    assert_eq!(status, 200, "{body}");
    assert_eq!(update("c@example.com", false).1, 409);
    let (_, status, _, body) = update("c@example.com", true);
    assert_eq!(status, 200, "{body}");
    let groups = json(&curl_with_headers(&[&format!("{base}/alice/conflicts")]).3);
    assert_eq!(
        groups["conflicts"].as_array().map(Vec::len),
        Some(1),
        "{groups}"
    );
    let with = json(&curl_with_headers(&[&format!("{base}/alice?conflicts=true")]).3);
    let loser = with["_conflicts"][0].as_str().expect("a loser").to_string();
    let old = json(&curl_with_headers(&[&format!("{base}/alice?rev={loser}")]).3);
    assert_eq!(old["_rev"], loser.as_str());
    // Conflicts are paged with ?limit= and ?after=; bad values are 400.
    let page = json(&curl_with_headers(&[&format!("{base}/alice/conflicts?limit=1")]).3);
    assert_eq!(page["conflicts"], serde_json::json!([loser]), "{page}");
    assert!(page["next"].is_null(), "{page}");
    assert_eq!(page["_rev"], with["_rev"], "{page}");
    let rest =
        json(&curl_with_headers(&[&format!("{base}/alice/conflicts?limit=5&after={loser}")]).3);
    assert_eq!(rest["conflicts"], serde_json::json!([]), "{rest}");
    for query in [
        "limit=0",
        "limit=x",
        "limit=10001",
        "limit=2&after=nope",
        "after=1-ab",
    ] {
        let (_, status, _, reply) =
            curl_with_headers(&[&format!("{base}/alice/conflicts?{query}")]);
        assert_eq!(status, 400, "{query}: {reply}");
        assert_eq!(json(&reply)["code"], "bad_request", "{query}: {reply}");
    }
    // Resolve, list, delete.
    let winner = with["_rev"].as_str().expect("rev").to_string();
    let (_, status, _, body) =
        curl_with_headers(&["-X", "POST", &format!("{base}/alice/resolve?rev={winner}")]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json(&curl_with_headers(&[&format!("{base}/alice/conflicts")]).3),
        serde_json::json!({"conflicts": []})
    );
    let all = json(&curl_with_headers(&[&base]).3);
    assert_eq!(all["docs"].as_array().map(Vec::len), Some(2), "{all}");
    let bob_rev = json(&curl_with_headers(&[&format!("{base}/bob")]).3)["_rev"]
        .as_str()
        .expect("rev")
        .to_string();
    assert_eq!(
        curl_with_headers(&["-X", "DELETE", &format!("{base}/bob?rev={bob_rev}")]).1,
        200
    );
    assert_eq!(curl_with_headers(&[&format!("{base}/bob")]).1, 404);
    // Bad input: 400 with a JSON error, nothing written.
    let before = curl_with_headers(&[&format!("{url}/v1/hash/docs/users")]).3;
    let long = "x".repeat(600);
    for (method, target, body) in [
        ("POST", base.clone(), "{not json".to_string()),
        ("POST", base.clone(), r#"{"_id": "../x"}"#.to_string()),
        ("POST", base.clone(), r#"{"_id": ""}"#.to_string()),
        ("POST", base.clone(), format!(r#"{{"_id": "{long}"}}"#)),
        (
            "POST",
            base.clone(),
            r#"{"_id": "z", "_rev": "nope"}"#.to_string(),
        ),
        (
            "PUT",
            format!("{base}/carol"),
            r#"{"_id": "dave"}"#.to_string(),
        ),
        ("PUT", format!("{base}/carol"), "[1]".to_string()),
        ("DELETE", format!("{base}/alice"), String::new()),
        ("DELETE", format!("{base}/alice?rev=bad"), String::new()),
        ("GET", format!("{base}/alice?rev=1-zz"), String::new()),
        ("POST", format!("{url}/v1/docs/$cluster"), "{}".to_string()),
    ] {
        let (_, status, _, reply) = send(method, &target, &body);
        assert_eq!(status, 400, "{method} {target} {body}: {reply}");
        assert_eq!(json(&reply)["code"], "bad_request", "{reply}");
    }
    assert_eq!(
        curl_with_headers(&[&format!("{url}/v1/hash/docs/users")]).3,
        before
    );
}

#[test]
fn operation_logs_over_http() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_node, url) = start(dir.path());
    let at = format!("{url}/v1/ops/app/stats/visits/today");
    let push = |body: &str| {
        curl_with_headers(&[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "--data-binary",
            body,
            &at,
        ])
    };
    assert_eq!(
        json(&curl_with_headers(&[&at]).3),
        serde_json::json!({"value": null})
    );
    assert_eq!(
        json(&push(r#"{"type": "counter", "payload": 2}"#).3)["value"],
        2
    );
    assert_eq!(
        json(&push(r#"{"type": "counter", "payload": 3}"#).3)["value"],
        5
    );
    assert_eq!(json(&curl_with_headers(&[&at]).3)["value"], 5);
    let log = json(&curl_with_headers(&[&format!("{at}?log=true")]).3);
    assert_eq!(log["type"], "counter");
    assert_eq!(log["ops"].as_array().map(Vec::len), Some(2));
    for body in [
        "{not json",
        r#"{"payload": 1}"#,
        r#"{"type": "counter"}"#,
        r#"{"type": "nosuch", "payload": 1}"#,
        r#"{"type": "counter", "payload": "x"}"#,
    ] {
        let (_, status, _, reply) = push(body);
        assert_eq!(status, 400, "{body}: {reply}");
        assert_eq!(json(&reply)["code"], "bad_request");
    }
    // Another type than the log's clashes with what is stored: a conflict.
    let (_, status, _, reply) = push(r#"{"type": "set", "payload": {"add": 1}}"#);
    assert_eq!(status, 409, "{reply}");
    assert_eq!(json(&reply)["code"], "conflict");
    assert_eq!(
        json(&curl_with_headers(&[&at]).3)["value"],
        5,
        "nothing written"
    );
}
