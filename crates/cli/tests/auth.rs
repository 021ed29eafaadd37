//! Authentication on real `chorus serve --auth` processes, driven with
//! curl: every refusal with its status and message, tokens that work,
//! writes that record their token, the audit log, tokens checked on
//! another node and refused there once revoked, and no secret anywhere.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::http::{http_token, request, request_with, wait_healthy};
use common::{
    CHORUS, Node, assert_success, chorus, chorus_in, free_port, ok_json, serve, serve_logged,
    wait_until,
};

const SECRET: &str = "correct horse battery";

/// A node with auth on (and plaintext peers on loopback), its stderr in
/// `DIR.stderr`; returns it and its URL once the API answers.
fn serve_auth(dir: &Path, gossip: u16, join: Option<u16>) -> (Node, String) {
    serve_auth_with(dir, gossip, join, &[])
}

/// [`serve_auth`] with more arguments.
fn serve_auth_with(dir: &Path, gossip: u16, join: Option<u16>, more: &[&str]) -> (Node, String) {
    let http = free_port();
    let log = std::fs::File::create(stderr_path(dir)).expect("stderr file");
    let mut extra = vec!["--auth", "--insecure", "--exchange-interval", "1"];
    extra.extend_from_slice(more);
    let node = serve_logged(dir, gossip, http, join, &extra, log);
    let url = format!("http://127.0.0.1:{http}");
    wait_healthy(&url, Duration::from_secs(30));
    (node, url)
}

fn stderr_path(dir: &Path) -> PathBuf {
    let mut p = dir.as_os_str().to_owned();
    p.push(".stderr");
    PathBuf::from(p)
}

fn add_user(dir: &Path, name: &str, secret: &str) {
    let out = chorus_in(dir, &["user", "add", name], &format!("{secret}\n"), &[]);
    assert_success(&out);
}

/// A session over the CLI: (session id, session token).
fn cli_session(dir: &Path, user: &str, secret: &str) -> (String, String) {
    let out = chorus_in(
        dir,
        &[
            "--json",
            "session",
            "create",
            "--user",
            user,
            "--description",
            "test",
        ],
        &format!("{secret}\n"),
        &[],
    );
    let v = ok_json(&out);
    let (id, token) = (v["session"].as_str(), v["token"].as_str());
    (
        id.expect("session id").to_string(),
        token.expect("token").to_string(),
    )
}

/// Asserts a refusal: the status, the code, and words of the message.
#[track_caller]
fn refused(got: (u16, serde_json::Value), status: u16, words: &[&str]) {
    let (s, v) = got;
    assert_eq!(s, status, "{v}");
    let code = if status == 401 {
        "unauthorized"
    } else {
        "forbidden"
    };
    assert_eq!(v["code"], code, "{v}");
    let message = v["message"].as_str().unwrap_or_default();
    for w in words {
        assert!(message.contains(w), "{w:?} not in {message:?}");
    }
}

fn put(url: &str, path: &str, token: Option<&str>, value: &str) -> (u16, serde_json::Value) {
    let url = format!("{url}/v1/kv/{path}");
    request_with("PUT", &url, token, &["--data-binary", value])
}

fn get(url: &str, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    request("GET", &format!("{url}/v1/kv/{path}"), token, None)
}

/// Flips one character of a token's payload.
fn flip_payload(token: &str) -> String {
    let mut b = token.as_bytes().to_vec();
    let i = "chorus1.".len() + 10;
    b[i] = if b[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).expect("ascii")
}

#[test]
fn every_refusal_has_its_status_and_message_and_a_valid_token_works() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path().join("n1");
    assert!(chorus(&d, &["init"]).status.success());
    add_user(&d, "alice", SECRET);
    let (_node, url) = serve_auth(&d, free_port(), None);

    // Open routes stay open.
    assert_eq!(request("GET", &format!("{url}/health"), None, None).0, 200);
    assert_eq!(
        request("GET", &format!("{url}/openapi.json"), None, None).0,
        200
    );
    // No token.
    refused(
        put(&url, "app/cfg/mode", None, "x"),
        401,
        &["requires a token", "Authorization: Bearer"],
    );
    refused(get(&url, "app/cfg/mode", None), 401, &["requires a token"]);

    // A session over HTTP; a wrong secret is refused without saying which part.
    let body = |secret: &str, ttl: u64| {
        serde_json::json!({"user": "alice", "secret": secret, "description": "t", "ttl_secs": ttl})
            .to_string()
    };
    let sessions = format!("{url}/v1/auth/sessions");
    let (s, v) = request("POST", &sessions, None, Some(&body("wrong secret!", 60)));
    assert_eq!((s, v["code"].as_str()), (401, Some("unauthorized")), "{v}");
    // A malformed body is refused without quoting it (it holds a secret).
    let (s, v) = request(
        "POST",
        &sessions,
        None,
        Some(r#"{"user": "alice", "secret": 4711471147114711}"#),
    );
    assert_eq!(s, 400, "{v}");
    assert!(!v.to_string().contains("4711471147114711"), "{v}");
    let (s, v) = request("POST", &sessions, None, Some(&body(SECRET, 3600)));
    assert_eq!(s, 201, "{v}");
    let session = v["token"].as_str().expect("session token").to_string();
    let session_id = v["session"].as_str().expect("id").to_string();

    let (_, rw) = http_token(&url, &session, &["app/*"], "read-write", 600);
    let (_, ro) = http_token(&url, &session, &["app/*"], "read", 600);
    let (short_id, short) = http_token(&url, &session, &["app/*"], "read", 1);

    // A valid token works; nothing was written by the refused put.
    assert_eq!(get(&url, "app/cfg/mode", Some(&rw)).0, 404);
    assert_eq!(put(&url, "app/cfg/mode", Some(&rw), "blue").0, 200);
    let (s, v) = get(&url, "app/cfg/mode", Some(&ro));
    assert_eq!((s, v["values"][0]["value"].as_str()), (200, Some("blue")));

    // Out of scope, on a key and on the whole node.
    refused(
        put(&url, "other/x/k", Some(&rw), "x"),
        403,
        &["other/x", "app/*"],
    );
    refused(
        request("GET", &format!("{url}/v1/cluster"), Some(&rw), None),
        403,
        &["scope *"],
    );
    assert_eq!(
        request("GET", &format!("{url}/v1/cluster"), Some(&session), None).0,
        200
    );
    // Reserved names are no token's, and $auth is never served.
    refused(
        get(&url, "$auth/keys/hmac", Some(&session)),
        403,
        &["$auth"],
    );
    // Read-only writing.
    refused(
        put(&url, "app/cfg/mode", Some(&ro), "red"),
        403,
        &["read-only", "app/cfg"],
    );
    // A derived token does not manage sessions.
    refused(
        request("GET", &sessions, Some(&rw), None),
        403,
        &["session token"],
    );

    // Forged: a flipped payload byte; a token of another cluster's key.
    refused(
        get(&url, "app/cfg/mode", Some(&flip_payload(&rw))),
        401,
        &["invalid"],
    );
    let other = dir.path().join("other");
    assert!(chorus(&other, &["init"]).status.success());
    add_user(&other, "alice", SECRET);
    let (_, foreign) = cli_session(&other, "alice", SECRET);
    refused(get(&url, "app/cfg/mode", Some(&foreign)), 401, &["invalid"]);

    // Expired.
    std::thread::sleep(Duration::from_millis(1500));
    refused(
        get(&url, "app/cfg/mode", Some(&short)),
        401,
        &["expired at", &short_id],
    );

    // Revoked by its session (over the CLI, on the node's directory).
    let listed = request("GET", &sessions, Some(&session), None).1;
    assert_eq!(listed["sessions"][0]["id"], session_id.as_str(), "{listed}");
    assert!(!listed.to_string().contains("chorus1."), "{listed}");
    let out = chorus(&d, &["session", "revoke", &session_id]);
    assert_success(&out);
    refused(
        get(&url, "app/cfg/mode", Some(&rw)),
        401,
        &["revoked", &session_id],
    );
    refused(get(&url, "app/cfg/mode", Some(&session)), 401, &["revoked"]);

    // Revoked by a master secret change: a session made before it, and its
    // tokens, are refused; one made after works.
    let (_, s2) = cli_session(&d, "alice", SECRET);
    let (_, t2) = http_token(&url, &s2, &["*"], "read-write", 600);
    assert_eq!(get(&url, "app/cfg/mode", Some(&t2)).0, 200);
    let out = chorus_in(&d, &["user", "passwd", "alice"], "new secret 2\n", &[]);
    assert_success(&out);
    refused(
        get(&url, "app/cfg/mode", Some(&t2)),
        401,
        &["revoked", "master secret changed"],
    );
    refused(get(&url, "app/cfg/mode", Some(&s2)), 401, &["revoked"]);
    let (_, s3) = cli_session(&d, "alice", "new secret 2");
    assert_eq!(get(&url, "app/cfg/mode", Some(&s3)).0, 200);

    // A token revoked on its own over HTTP; the other tokens of the session stay.
    let (id4, t4) = http_token(&url, &s3, &["app/*"], "read", 600);
    let (_, t5) = http_token(&url, &s3, &["app/*"], "read", 600);
    let (s, v) = request(
        "DELETE",
        &format!("{url}/v1/auth/tokens/{id4}"),
        Some(&s3),
        None,
    );
    assert_eq!(s, 200, "{v}");
    refused(
        get(&url, "app/cfg/mode", Some(&t4)),
        401,
        &["revoked", &id4],
    );
    assert_eq!(get(&url, "app/cfg/mode", Some(&t5)).0, 200);
}

#[test]
fn writes_record_their_token_and_neither_the_audit_log_nor_output_holds_a_secret() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path().join("n1");
    assert!(chorus(&d, &["init"]).status.success());
    add_user(&d, "bob", SECRET);
    let (node, url) = serve_auth(&d, free_port(), None);

    // The session over the CLI: the token once, in "token"; no secret.
    let out = chorus_in(
        &d,
        &[
            "--json", "session", "create", "--user", "bob", "--ttl", "1h",
        ],
        &format!("{SECRET}\n"),
        &[],
    );
    let v = ok_json(&out);
    let session = v["token"].as_str().expect("token").to_string();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains(SECRET) && !String::from_utf8_lossy(&out.stderr).contains(SECRET));
    // A token over the CLI, from $CHORUS_TOKEN.
    let out = chorus_in(
        &d,
        &[
            "--json", "token", "create", "--scope", "app/*", "docs/*", "--ttl", "10m",
        ],
        "",
        &[("CHORUS_TOKEN", &session)],
    );
    let v = ok_json(&out);
    let (id, token) = (
        v["id"].as_str().expect("id").to_string(),
        v["token"].as_str().expect("token").to_string(),
    );
    assert_eq!(v["access"], "read-write");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&session));

    // A key, a document and a refused write.
    assert_eq!(put(&url, "app/cfg/color", Some(&token), "green").0, 200);
    let (s, v) = request(
        "POST",
        &format!("{url}/v1/docs/users"),
        Some(&token),
        Some(r#"{"_id": "bob", "email": "bob@example.com"}"#),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(put(&url, "app/cfg/color", None, "red").0, 401);

    // The value records the token's id, not the token.
    let read = ok_json(&chorus(&d, &["--json", "get", "app/cfg", "color"]));
    assert_eq!(read["values"][0]["value"], "green", "{read}");
    assert_eq!(read["values"][0]["meta"]["token"], id.as_str(), "{read}");
    // Over HTTP too, to a session token (scope * read-write; a narrower
    // token sees an opaque id: tests/writer_ids.rs).
    let (_, v) = get(&url, "app/cfg/color", Some(&session));
    assert_eq!(v["values"][0]["meta"]["token"], id.as_str(), "{v}");

    // The audit log: the write with its token id and user, the refusal,
    // and no secret, session token or token.
    let audit = std::fs::read_to_string(d.join("audit.log")).expect("audit.log");
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert!(
        lines.iter().any(|l| l["op"] == "put"
            && l["token"] == id.as_str()
            && l["user"] == "bob"
            && l["outcome"] == "ok"
            && l["target"] == "app/cfg"),
        "{audit}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["op"] == "doc.create" && l["token"] == id.as_str()),
        "{audit}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["op"] == "put" && l["outcome"] == "refused" && l["status"] == 401),
        "{audit}"
    );
    for secret in [SECRET, &session, &token] {
        assert!(!audit.contains(secret), "a secret in the audit log");
    }
    drop(node);
    let stderr = std::fs::read_to_string(stderr_path(&d)).expect("stderr");
    for secret in [SECRET, &session, &token] {
        assert!(!stderr.contains(secret), "a secret on stderr: {stderr}");
    }
    // The key never shows through the CLI either.
    let out = chorus(&d, &["--json", "get", "$auth/keys", "hmac"]);
    assert_eq!(out.status.code(), Some(2));
    // With --json, stdout is the error object alone.
    let err: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(err["code"], "bad_request", "{err}");
    assert_eq!(
        err.as_object().map(|o| o.len()),
        Some(2),
        "code and message only: {err}"
    );
}

#[test]
fn bad_user_input_exits_2_and_writes_nothing_and_auth_routes_need_auth_on() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path().join("n1");
    assert!(chorus(&d, &["init"]).status.success());
    let seq = || ok_json(&chorus(&d, &["--json", "status"]))["last_seq"].clone();
    let before = seq();
    for name in ["bad name", "", "é", &"x".repeat(65), "a/b"] {
        let out = chorus_in(&d, &["user", "add", name], &format!("{SECRET}\n"), &[]);
        assert_eq!(out.status.code(), Some(2), "{name:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("user name"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Too short a secret, and none at all.
    assert_eq!(
        chorus_in(&d, &["user", "add", "carol"], "short\n", &[])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        chorus_in(&d, &["user", "add", "carol"], "", &[])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(seq(), before, "a refused command wrote");
    assert!(!d.join("audit.log").exists());
    // Not found, exists, bad durations and scopes.
    assert_eq!(
        chorus_in(&d, &["user", "passwd", "nobody"], "long enough\n", &[])
            .status
            .code(),
        Some(1)
    );
    add_user(&d, "carol", SECRET);
    assert_eq!(
        chorus_in(&d, &["user", "add", "carol"], &format!("{SECRET}\n"), &[])
            .status
            .code(),
        Some(3)
    );
    let out = chorus_in(
        &d,
        &["session", "create", "--user", "carol", "--ttl", "31d"],
        &format!("{SECRET}\n"),
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    let out = chorus_in(
        &d,
        &["session", "create", "--user", "carol", "--ttl", "5x"],
        &format!("{SECRET}\n"),
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    let (_, session) = cli_session(&d, "carol", SECRET);
    let out = chorus_in(
        &d,
        &["token", "create", "--scope", "$auth/*"],
        &format!("{session}\n"),
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reserved"));
    let out = chorus_in(
        &d,
        &["token", "create", "--scope", "app/*"],
        "chorus1.garbage.x\n",
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid"));
    assert_eq!(
        chorus(&d, &["session", "revoke", "0123456789abcdef"])
            .status
            .code(),
        Some(1)
    );
    assert_eq!(
        chorus(&d, &["session", "revoke", "nope"]).status.code(),
        Some(2)
    );

    // A PUB socket cannot check tokens: with auth on it is refused.
    let mut child = Command::new(CHORUS)
        .arg("--dir")
        .arg(&d)
        .args(["serve", "--auth", "--insecure", "--zmq"])
        .arg(format!("tcp://127.0.0.1:{}", free_port()))
        .arg("--zmq-pub")
        .arg(format!("tcp://127.0.0.1:{}", free_port()))
        .arg("--gossip")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--http")
        .arg(format!("127.0.0.1:{}", free_port()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chorus serve");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("serve --auth --zmq-pub kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(2));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("read stderr");
    assert!(err.contains("subscribers cannot present tokens"), "{err}");

    // Auth off: no token needed, the auth routes say auth is off, $auth is
    // still not served.
    let (gossip, http) = (free_port(), free_port());
    let _node = serve(&d, gossip, http, None, &["--insecure"]);
    let url = format!("http://127.0.0.1:{http}");
    wait_healthy(&url, Duration::from_secs(30));
    assert_eq!(put(&url, "app/cfg/k", None, "v").0, 200);
    let (s, v) = request(
        "GET",
        &format!("{url}/v1/auth/sessions"),
        Some(&session),
        None,
    );
    assert_eq!(s, 404);
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("authentication is off"),
        "{v}"
    );
    assert_eq!(get(&url, "$auth/users/carol", None).0, 403);
}

#[test]
fn a_token_from_node_1_is_accepted_on_node_2_and_refused_there_once_revoked() {
    let dir = tempfile::tempdir().expect("tmp");
    let (d1, d2) = (dir.path().join("n1"), dir.path().join("n2"));
    for d in [&d1, &d2] {
        assert!(chorus(d, &["init"]).status.success());
    }
    add_user(&d1, "dave", SECRET);
    let p1 = free_port();
    let (_n1, url1) = serve_auth(&d1, p1, None);
    // Node 2 joins with a join token made on node 1, and receives its key.
    let out = chorus(&d1, &["--json", "cluster", "join-token", "create"]);
    let token_file = dir.path().join("join.token");
    std::fs::write(&token_file, ok_json(&out)["token"].as_str().expect("token")).expect("write");
    let token_file = token_file.to_str().expect("utf-8 path");
    let (_n2, url2) = serve_auth_with(
        &d2,
        free_port(),
        Some(p1),
        &["--join-token-file", token_file],
    );
    // Made on node 1: node 2 accepts it once the key has replicated.
    let (session_id, session) = cli_session(&d1, "dave", SECRET);
    let (token_id, token) = http_token(&url1, &session, &["app/*"], "read-write", 600);
    let started = Instant::now();
    wait_until(Duration::from_secs(30), || {
        put(&url2, "app/x/k", Some(&token), "from node 2").0 == 200
    });
    eprintln!("node 2 accepted the token after {:?}", started.elapsed());
    // The write made on node 2 reaches node 1 with the token's id (shown
    // to a session token).
    wait_until(Duration::from_secs(30), || {
        get(&url1, "app/x/k", Some(&session)).1["values"][0]["meta"]["token"] == token_id.as_str()
    });
    // Revoked on node 1: refused on node 2 once that replicates.
    let out = chorus(&d1, &["session", "revoke", &session_id]);
    assert_success(&out);
    refused(get(&url1, "app/x/k", Some(&token)), 401, &["revoked"]);
    wait_until(Duration::from_secs(30), || {
        get(&url2, "app/x/k", Some(&token)).0 == 401
    });
    refused(
        get(&url2, "app/x/k", Some(&token)),
        401,
        &["revoked", &session_id],
    );
    // A master change on node 1 refuses, on node 2, a session made before.
    let (_, s2) = cli_session(&d1, "dave", SECRET);
    wait_until(Duration::from_secs(30), || {
        get(&url2, "app/x/k", Some(&s2)).0 == 200
    });
    let out = chorus_in(&d1, &["user", "passwd", "dave"], "another secret\n", &[]);
    assert!(out.status.success());
    wait_until(Duration::from_secs(30), || {
        get(&url2, "app/x/k", Some(&s2)).0 == 401
    });
}

/// One request to the broker over a DEALER socket: the reply's JSON.
fn zmq_call(socket: &zmq::Socket, body: serde_json::Value) -> serde_json::Value {
    socket
        .send_multipart([&b""[..], body.to_string().as_bytes()], 0)
        .expect("send");
    let frames = socket.recv_multipart(0).expect("a reply");
    serde_json::from_slice(frames.last().expect("a body")).expect("JSON")
}

#[track_caller]
fn zmq_refused(reply: &serde_json::Value, code: &str, words: &[&str]) {
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"]["code"], code, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    for w in words {
        assert!(message.contains(w), "{w:?} not in {message:?}");
    }
}

#[test]
fn the_zeromq_broker_checks_tokens_as_http_does_and_records_them() {
    let root = tempfile::tempdir().expect("tempdir");
    let d = root.path().join("n1");
    assert!(chorus(&d, &["init"]).status.success());
    add_user(&d, "alice", SECRET);
    let endpoint = format!("tcp://127.0.0.1:{}", free_port());
    let http = free_port();
    let extra = ["--auth", "--insecure", "--zmq", &endpoint];
    let _node = serve(&d, free_port(), http, None, &extra);
    let url = format!("http://127.0.0.1:{http}");
    wait_healthy(&url, Duration::from_secs(30));
    let (_, session) = cli_session(&d, "alice", SECRET);
    let (rw_id, rw) = http_token(&url, &session, &["app/*"], "read-write", 600);
    let (_, ro) = http_token(&url, &session, &["app/*"], "read", 600);
    let context = zmq::Context::new();
    let s = context.socket(zmq::DEALER).expect("socket");
    s.set_rcvtimeo(10_000).expect("timeout");
    s.connect(&endpoint).expect("connect");
    let put = |token: Option<&str>, prefix: &str| {
        let mut body = serde_json::json!({"id": 1, "op": "put", "prefix": prefix, "sub": "cfg", "key": "k", "value": "v"});
        if let Some(t) = token {
            body["token"] = serde_json::json!(t);
        }
        zmq_call(&s, body)
    };

    // ping needs no token; everything else does.
    assert_eq!(
        zmq_call(&s, serde_json::json!({"id": 0, "op": "ping"}))["ok"],
        true
    );
    zmq_refused(&put(None, "app"), "unauthorized", &["token"]);
    zmq_refused(
        &put(Some(&flip_payload(&rw)), "app"),
        "unauthorized",
        &["invalid"],
    );
    zmq_refused(&put(Some(&ro), "app"), "forbidden", &["read"]);
    zmq_refused(&put(Some(&rw), "other"), "forbidden", &["other/cfg"]);
    let doc = serde_json::json!({"id": 2, "op": "doc.create", "store": "users", "doc": {"_id": "a"}, "token": rw});
    zmq_refused(&zmq_call(&s, doc), "forbidden", &["docs/users"]);
    let bad = serde_json::json!({"id": 3, "op": "get", "prefix": "app", "sub": "cfg", "key": "k", "token": 5});
    zmq_refused(&zmq_call(&s, bad), "bad_request", &["token"]);
    // Nothing was written by the refused requests.
    let got = zmq_call(
        &s,
        serde_json::json!({"id": 4, "op": "get", "prefix": "app", "sub": "cfg", "key": "k", "token": ro}),
    );
    zmq_refused(&got, "not_found", &[]);

    // A valid token writes (key and operation log) and reads.
    let reply = put(Some(&rw), "app");
    assert_eq!(reply["ok"], true, "{reply}");
    let pushed = zmq_call(
        &s,
        serde_json::json!({"id": 5, "op": "op.push", "prefix": "app", "sub": "counts", "path": "n", "type": "counter", "payload": 2, "token": rw}),
    );
    assert_eq!(pushed["value"], 2, "{pushed}");
    let got = zmq_call(
        &s,
        serde_json::json!({"id": 6, "op": "get", "prefix": "app", "sub": "cfg", "key": "k", "token": ro}),
    );
    assert_eq!(got["values"][0]["value"], "v", "{got}");
    // A read-only token sees an opaque writer id, not the token id.
    let writer = got["values"][0]["meta"]["token"]
        .as_str()
        .unwrap_or_default();
    assert!(writer.starts_with("w:") && writer != rw_id, "{got}");
    let read = ok_json(&chorus(&d, &["--json", "get", "app/counts", "n"]));
    assert!(read.to_string().contains(&rw_id), "{read}");

    // The audit log names the broker and the token id, never the token.
    let audit = std::fs::read_to_string(d.join("audit.log")).expect("audit.log");
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"zmq\"") && l.contains(&rw_id) && l.contains("app/cfg")),
        "{audit}"
    );
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"zmq\"") && l.contains("refused")),
        "{audit}"
    );
    assert!(!audit.contains(&rw) && !audit.contains(&ro) && !audit.contains(SECRET));
    // Each line names its source: the ZeroMQ peer's routing id, the HTTP
    // client's address, or the command line.
    for l in audit.lines() {
        let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
        let source = v["source"].as_str().unwrap_or_default();
        match v["iface"].as_str() {
            Some("zmq") => assert!(source.len() > 4 && source.starts_with("zmq:"), "{l}"),
            Some("http") => assert_eq!(source, "127.0.0.1", "{l}"),
            _ => assert_eq!(source, "local", "{l}"),
        }
    }
}

#[test]
fn review_holes_stay_closed_query_tricks_open_streams_hash_and_directory_mode() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path().join("n1");
    assert!(chorus(&d, &["init"]).status.success());
    add_user(&d, "alice", SECRET);
    let (_node, url) = serve_auth(&d, free_port(), None);
    // The directory holds the cluster key: its owner's only.
    let mode = std::fs::metadata(&d).expect("dir").permissions().mode();
    assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    let (_, session) = cli_session(&d, "alice", SECRET);
    let (_, rw) = http_token(&url, &session, &["app/*"], "read-write", 600);
    let (ro_id, ro) = http_token(&url, &session, &["app/*"], "read", 600);
    assert_eq!(put(&url, "app/cfg/k", Some(&rw), "v").0, 200);

    // A repeated parameter the guard reads must not turn a write-back
    // (allow_put) into a plain read for a read-only token.
    let tricked = format!("{url}/v1/kv/app/cfg/k?resolve=lww&allow_put=true&prefix=a&prefix=b");
    let (s, v) = request("GET", &tricked, Some(&ro), None);
    assert_eq!(s, 400, "{v}");
    let honest = format!("{url}/v1/kv/app/cfg/k?resolve=lww&allow_put=true");
    refused(request("GET", &honest, Some(&ro), None), 403, &["read"]);

    // An open watch ends once its token is revoked.
    let mut watch = Command::new("curl")
        .args(["-s", "-N", "--max-time", "20", "-H"])
        .arg(format!("Authorization: Bearer {ro}"))
        .arg(format!("{url}/v1/watch?prefix=app"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    // Time for curl to connect on a busy machine: a change made before the
    // stream opens would not be in it.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(put(&url, "app/cfg/k", Some(&rw), "seen").0, 200);
    std::thread::sleep(Duration::from_millis(500));
    let out = chorus_in(&d, &["token", "revoke", &ro_id], "", &[]);
    assert_success(&out);
    let started = Instant::now();
    let status = loop {
        if let Some(s) = watch.try_wait().expect("wait") {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the stream outlived its token"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut text = String::new();
    std::io::Read::read_to_string(&mut watch.stdout.take().expect("stdout"), &mut text)
        .expect("read");
    assert!(status.success(), "curl ended with {status}: {text}");
    assert!(text.contains("seen"), "{text}");
    assert!(
        text.contains("the stream ends") && text.contains("revoked"),
        "{text}"
    );

    // `chorus hash` refuses $auth as a bare prefix too.
    let out = chorus(&d, &["hash", "$auth"]);
    assert_eq!(out.status.code(), Some(2));
}
