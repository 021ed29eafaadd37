//! The writer's identity on values (issue 16, finding 8; docs/auth.md
//! "Writer identity on values"), on a real `chorus serve --auth` process:
//! a reader without scope `*` read-write sees an opaque id per (token, full
//! prefix), the same over HTTP, ZeroMQ and watches, never the token id; a
//! reader with it, and the directory's owner, see the token id.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::http::{http_token, request, request_with, wait_healthy};
use common::{chorus, chorus_in, free_port, ok_json, serve};

const SECRET: &str = "correct horse battery";

fn session(dir: &Path) -> String {
    let out = chorus_in(
        dir,
        &["--json", "session", "create", "--user", "alice"],
        &format!("{SECRET}\n"),
        &[],
    );
    ok_json(&out)["token"].as_str().expect("token").to_string()
}

/// The writer a read shows on its first value.
fn writer_of(url: &str, path: &str, token: &str) -> String {
    let (status, v) = request("GET", &format!("{url}/v1/kv/{path}"), Some(token), None);
    assert_eq!(status, 200, "{v}");
    v["values"][0]["meta"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no writer: {v}"))
        .to_string()
}

fn zmq_get(socket: &zmq::Socket, prefix: &str, token: &str) -> serde_json::Value {
    let body = serde_json::json!({"id": 1, "op": "get", "prefix": "app", "sub": prefix, "key": "k", "token": token});
    socket
        .send_multipart([&b""[..], body.to_string().as_bytes()], 0)
        .expect("send");
    let frames = socket.recv_multipart(0).expect("a reply");
    serde_json::from_slice(frames.last().expect("a body")).expect("JSON")
}

#[test]
fn writers_show_as_opaque_ids_per_full_prefix_unless_the_reader_sees_token_ids() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("n1");
    assert!(chorus(&dir, &["init"]).status.success());
    let out = chorus_in(&dir, &["user", "add", "alice"], &format!("{SECRET}\n"), &[]);
    assert!(out.status.success());
    let endpoint = format!("tcp://127.0.0.1:{}", free_port());
    let http = free_port();
    let extra = ["--auth", "--insecure", "--zmq", &endpoint];
    let _node = serve(&dir, free_port(), http, None, &extra);
    let url = format!("http://127.0.0.1:{http}");
    wait_healthy(&url, Duration::from_secs(30));
    let session = session(&dir);
    let (writer_id, writer) = http_token(&url, &session, &["app/*"], "read-write", 600);
    let (_, reader) = http_token(&url, &session, &["app/*"], "read", 600);
    let (_, admin) = http_token(&url, &session, &["*"], "read-write", 600);

    // A reader's watch, open before the writes.
    let watch = Command::new("curl")
        .args(["-s", "-N", "--max-time", "8", "-H"])
        .arg(format!("Authorization: Bearer {reader}"))
        .arg(format!("{url}/v1/watch?prefix=app"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    std::thread::sleep(Duration::from_millis(1500));

    // One token writes in two full prefixes.
    for (path, value) in [("app/a/k", "1"), ("app/b/k", "2"), ("app/a/k2", "3")] {
        let (s, v) = request_with(
            "PUT",
            &format!("{url}/v1/kv/{path}"),
            Some(&writer),
            &["--data-binary", value],
        );
        assert_eq!(s, 200, "{v}");
    }

    // A reader without scope * read-write: two unrelated ids, the same one
    // within a full prefix, neither the token id.
    let in_a = writer_of(&url, "app/a/k", &reader);
    let in_b = writer_of(&url, "app/b/k", &reader);
    assert_ne!(in_a, in_b);
    assert_eq!(writer_of(&url, "app/a/k2", &reader), in_a);
    for id in [&in_a, &in_b] {
        assert!(id.starts_with("w:") && id.len() == 18, "{id}");
        assert!(!id.contains(&writer_id), "{id}");
    }
    // The writer itself is not an admin either.
    assert_eq!(writer_of(&url, "app/a/k", &writer), in_a);
    // A list shows the same ids.
    let (_, list) = request("GET", &format!("{url}/v1/kv/app/a"), Some(&reader), None);
    let keys = list["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 2, "{list}");
    assert!(
        keys.iter()
            .all(|k| k["values"][0]["meta"]["token"] == in_a.as_str()),
        "{list}"
    );
    // ZeroMQ renders with the same function.
    let context = zmq::Context::new();
    let socket = context.socket(zmq::DEALER).expect("socket");
    socket.set_rcvtimeo(10_000).expect("timeout");
    socket.connect(&endpoint).expect("connect");
    let got = zmq_get(&socket, "b", &reader);
    assert_eq!(got["values"][0]["meta"]["token"], in_b.as_str(), "{got}");
    let got = zmq_get(&socket, "b", &admin);
    assert_eq!(
        got["values"][0]["meta"]["token"],
        writer_id.as_str(),
        "{got}"
    );

    // Scope * read-write (a session token, or a token made so), and the
    // directory's owner, see the token id.
    assert_eq!(writer_of(&url, "app/a/k", &session), writer_id);
    assert_eq!(writer_of(&url, "app/b/k", &admin), writer_id);
    let read = ok_json(&chorus(&dir, &["--json", "get", "app/a", "k"]));
    assert_eq!(
        read["values"][0]["meta"]["token"],
        writer_id.as_str(),
        "{read}"
    );

    // The reader's watch showed the opaque ids, never the token id.
    let started = Instant::now();
    let out = watch.wait_with_output().expect("curl ends");
    assert!(started.elapsed() < Duration::from_secs(30));
    let events = String::from_utf8_lossy(&out.stdout);
    assert!(events.contains(&in_a) && events.contains(&in_b), "{events}");
    assert!(!events.contains(&writer_id), "{events}");
}
