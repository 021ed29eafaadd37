//! The contract every interface shares, checked against a node running in
//! this process, through a plain HTTP/1.1 client on a real socket (no
//! curl, no sleeps where a condition can be awaited): errors are
//! `{code, message}` whatever refused the request; every change event has
//! its own id and resuming from any id is exactly-once; a 404 carries the
//! empty context, so two read-modify-writes from nothing keep both values;
//! `If-None-Match: *` creates only if absent; reserved names are refused
//! alike over HTTP and ZeroMQ; lists page.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Node {
    http: SocketAddr,
    zmq: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

fn start() -> Node {
    let dir = tempfile::tempdir().expect("tmp");
    let (http, gossip, zmq) = (free_addr(), free_addr(), free_addr());
    let zmq = format!("tcp://{zmq}");
    let mut config = chorus_node::Config::new(dir.path().to_path_buf(), gossip);
    config.http = Some(http);
    config.broker = Some(chorus_node::broker::BrokerConfig::new(zmq.clone(), None));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            if let Err(e) = chorus_node::run(config, async {
                let _ = rx.await;
            })
            .await
            {
                panic!("the node failed: {e}");
            }
        });
    });
    let node = Node {
        http,
        zmq,
        stop: Some(tx),
        thread: Some(thread),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while request(&node, "GET", "/health", &[], b"").0 != 200 {
        assert!(Instant::now() < deadline, "the node did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    node
}

/// One request; the status, the headers (lower-case names) and the body.
fn request(
    node: &Node,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let Ok(mut s) = TcpStream::connect(node.http) else {
        return (0, Vec::new(), Vec::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    if s.write_all(&bytes).is_err() {
        return (0, Vec::new(), Vec::new());
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[(split + 4).min(raw.len())..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v == "chunked")
    {
        body = dechunk(&body);
    }
    (status, headers, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(nl) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..nl]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = nl + 2;
        out.extend_from_slice(&b[start..(start + size).min(b.len())]);
        b = &b[(start + size + 2).min(b.len())..];
    }
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {:?}",
            String::from_utf8_lossy(body)
                .chars()
                .take(300)
                .collect::<String>()
        )
    })
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Opens an SSE stream on every change and waits for its response head.
fn open_sse(node: &Node, last_event_id: Option<&str>) -> BufReader<TcpStream> {
    let mut s = TcpStream::connect(node.http).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let extra = last_event_id.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
    write!(
        s,
        "GET /v1/watch HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n{extra}\r\n"
    )
    .expect("send");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    loop {
        line.clear();
        assert!(r.read_line(&mut line).expect("head") > 0, "no response");
        if line.starts_with("HTTP/1.1 ") {
            assert!(line.contains(" 200 "), "{line}");
        }
        if line == "\r\n" {
            return r;
        }
    }
}

/// Reads change events (id, data) until one for `last_key`.
fn read_events(r: &mut BufReader<TcpStream>, last_key: &str) -> Vec<(String, Value)> {
    let mut events = Vec::new();
    let (mut id, mut data) = (String::new(), String::new());
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).expect("read") == 0 {
            return events;
        }
        // Chunk-size lines of the chunked encoding are not SSE fields.
        let l = line.trim_end();
        if let Some(v) = l.strip_prefix("id:") {
            id = v.trim().to_string();
        } else if let Some(v) = l.strip_prefix("data:") {
            data = v.trim().to_string();
        } else if l.is_empty() && !data.is_empty() {
            let event = json_of(data.as_bytes());
            let done = event["key"] == last_key;
            events.push((std::mem::take(&mut id), event));
            data.clear();
            if done {
                return events;
            }
        }
    }
}

fn assert_error(got: &(u16, Vec<(String, String)>, Vec<u8>), status: u16, code: &str) {
    assert_eq!(got.0, status, "{}", String::from_utf8_lossy(&got.2));
    assert!(
        header(&got.1, "content-type").is_some_and(|v| v.starts_with("application/json")),
        "{:?}",
        got.1
    );
    let body = json_of(&got.2);
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[test]
fn every_error_is_code_and_message_whatever_refused_it() {
    let node = start();
    let cases: Vec<(&str, String, Vec<u8>, u16, &str)> = vec![
        (
            "POST",
            "/v1/kv/app/cfg/k".into(),
            b"x".to_vec(),
            405,
            "method_not_allowed",
        ),
        (
            "PUT",
            "/v1/kv/app/cfg/k".into(),
            vec![b'x'; (1 << 20) + 1],
            413,
            "too_large",
        ),
        (
            "GET",
            format!("/v1/kv/app/cfg/{}", "k".repeat(9000)),
            Vec::new(),
            414,
            "uri_too_long",
        ),
        (
            "GET",
            "/v1/kv/app/cfg?limit=1&limit=2".into(),
            Vec::new(),
            400,
            "bad_request",
        ),
        (
            "GET",
            "/v1/kv/app/cfg?limit=many".into(),
            Vec::new(),
            400,
            "bad_request",
        ),
        (
            "GET",
            "/v1/kv/app/cfg?nonsense=1".into(),
            Vec::new(),
            400,
            "bad_request",
        ),
        (
            "GET",
            "/v1/kv/app/%FF/k".into(),
            Vec::new(),
            400,
            "bad_request",
        ),
        (
            "GET",
            "/v1/kv/app/cfg/k?resolve=best".into(),
            Vec::new(),
            400,
            "bad_request",
        ),
        (
            "GET",
            "/v1/kv/app/cfg/absent".into(),
            Vec::new(),
            404,
            "not_found",
        ),
        ("GET", "/v1/nothing".into(), Vec::new(), 404, "not_found"),
        (
            "PUT",
            "/v1/kv/$cluster/x/k".into(),
            b"x".to_vec(),
            400,
            "bad_request",
        ),
        (
            "GET",
            "/v1/kv/$cluster/members".into(),
            Vec::new(),
            400,
            "bad_request",
        ),
        (
            "GET",
            "/v1/kv/$auth/users/x".into(),
            Vec::new(),
            403,
            "forbidden",
        ),
        (
            "GET",
            "/v1/docs/users/x?rev=".into(),
            Vec::new(),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/cluster/join".into(),
            b"{\"peer\": \"example.com:1\"}".to_vec(),
            400,
            "bad_request",
        ),
    ];
    for (method, target, body, status, code) in cases {
        let got = request(&node, method, &target, &[], &body);
        assert_error(&got, status, code);
        if status == 405 {
            assert!(
                header(&got.1, "allow").is_some(),
                "405 names the methods: {:?}",
                got.1
            );
        }
    }
    // Nothing was written by any of them.
    let list = request(&node, "GET", "/v1/kv", &[], b"");
    assert_eq!(json_of(&list.2)["prefixes"], json!([]));
}

#[test]
fn a_404_carries_the_empty_context_so_two_creates_from_nothing_keep_both() {
    let node = start();
    let read = |n: &Node| request(n, "GET", "/v1/kv/app/cfg/color", &[], b"");
    let (a, b) = (read(&node), read(&node));
    assert_eq!((a.0, b.0), (404, 404));
    let (ca, cb) = (
        header(&a.1, "x-chorus-context")
            .expect("a context")
            .to_string(),
        header(&b.1, "x-chorus-context")
            .expect("a context")
            .to_string(),
    );
    assert_eq!(json_of(&a.2)["context"], ca.as_str());
    for (ctx, value) in [(&ca, "red"), (&cb, "blue")] {
        let w = request(
            &node,
            "PUT",
            "/v1/kv/app/cfg/color",
            &[("X-Chorus-Context", ctx)],
            value.as_bytes(),
        );
        assert_eq!(w.0, 200, "{}", String::from_utf8_lossy(&w.2));
    }
    let both = json_of(&read(&node).2);
    let mut values: Vec<&str> = both["values"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["value"].as_str())
        .collect();
    values.sort_unstable();
    assert_eq!(values, ["blue", "red"], "{both}");

    // If-None-Match: * creates only if absent.
    let create = |n: &Node| {
        request(
            n,
            "PUT",
            "/v1/kv/app/cfg/owner",
            &[("If-None-Match", "*")],
            b"me",
        )
    };
    assert_eq!(create(&node).0, 201);
    assert_error(&create(&node), 409, "conflict");
}

#[test]
fn every_event_has_its_own_id_and_resuming_from_any_is_exactly_once() {
    let node = start();
    let mut live = open_sse(&node, None);
    // A document update writes two keys in one commit (the new revision
    // and its parent's stub); the creates write one each.
    let created = request(
        &node,
        "POST",
        "/v1/docs/users",
        &[],
        br#"{"_id": "a", "n": 1}"#,
    );
    assert_eq!(created.0, 201, "{}", String::from_utf8_lossy(&created.2));
    let rev = json_of(&created.2)["_rev"]
        .as_str()
        .expect("rev")
        .to_string();
    let updated = request(
        &node,
        "PUT",
        "/v1/docs/users/a",
        &[],
        format!(r#"{{"_rev": "{rev}", "n": 2}}"#).as_bytes(),
    );
    assert_eq!(updated.0, 200, "{}", String::from_utf8_lossy(&updated.2));
    for k in ["x", "y"] {
        assert_eq!(
            request(&node, "PUT", &format!("/v1/kv/app/cfg/{k}"), &[], b"v").0,
            200
        );
    }
    let all = read_events(&mut live, "y");
    assert!(all.len() >= 4, "{all:?}");
    let ids: Vec<&str> = all.iter().map(|(id, _)| id.as_str()).collect();
    let unique: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "every event its own id: {ids:?}");
    for (id, data) in &all {
        assert_eq!(data["id"], id.as_str(), "the id is in the data too");
    }
    for i in 0..all.len() - 1 {
        // Replayed, the same ids, from the one after the given one.
        let rest = read_events(&mut open_sse(&node, Some(&all[i].0)), "y");
        let got: Vec<&str> = rest.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(got, ids[i + 1..].to_vec(), "after {}", all[i].0);
    }
}

#[test]
fn lists_page_and_reserved_names_are_refused_alike_over_zeromq() {
    let node = start();
    for i in 0..5 {
        assert_eq!(
            request(&node, "PUT", &format!("/v1/kv/app/cfg/k{i}"), &[], b"v").0,
            200
        );
    }
    assert_eq!(
        request(&node, "PUT", "/v1/kv/app/other/k", &[], b"v").0,
        200
    );
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let q = if after.is_empty() {
            "/v1/kv/app/cfg?limit=2".to_string()
        } else {
            format!("/v1/kv/app/cfg?limit=2&after={after}")
        };
        let page = json_of(&request(&node, "GET", &q, &[], b"").2);
        seen.extend(
            page["keys"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|k| k["key"].as_str().map(str::to_string)),
        );
        match page["next"].as_str() {
            Some(n) => after = n.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, ["k0", "k1", "k2", "k3", "k4"]);
    let subs = json_of(&request(&node, "GET", "/v1/kv/app", &[], b"").2);
    assert_eq!(subs["subprefixes"][0]["subprefix"], "cfg", "{subs}");
    assert_eq!(subs["subprefixes"][0]["keys"], 5, "{subs}");
    let prefixes = json_of(&request(&node, "GET", "/v1/kv", &[], b"").2);
    assert_eq!(prefixes["prefixes"], json!(["app"]), "{prefixes}");
    // Documents page in id order, whatever order they were made in.
    for id in ["c", "a", "b"] {
        let body = format!(r#"{{"_id": "{id}"}}"#);
        assert_eq!(
            request(&node, "POST", "/v1/docs/users", &[], body.as_bytes()).0,
            201
        );
    }
    let first = json_of(&request(&node, "GET", "/v1/docs/users?limit=2", &[], b"").2);
    let ids: Vec<&str> = first["docs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["_id"].as_str())
        .collect();
    assert_eq!(
        (ids, first["next"].as_str()),
        (vec!["a", "b"], Some("b")),
        "{first}"
    );
    let rest = json_of(&request(&node, "GET", "/v1/docs/users?limit=2&after=b", &[], b"").2);
    assert_eq!(rest["docs"][0]["_id"], "c", "{rest}");
    assert!(rest["next"].is_null(), "{rest}");

    // ZeroMQ: the same errors for the same requests.
    let ctx = zmq::Context::new();
    let s = ctx.socket(zmq::DEALER).expect("socket");
    s.set_rcvtimeo(10_000).expect("timeout");
    s.connect(&node.zmq).expect("connect");
    let call = |body: Value| -> Value {
        s.send(body.to_string().as_bytes(), 0).expect("send");
        json_of(&s.recv_bytes(0).expect("a reply"))
    };
    let http = json_of(&request(&node, "GET", "/v1/kv/$cluster/members/x", &[], b"").2);
    let z = call(json!({"id": 1, "op": "get", "prefix": "$cluster", "sub": "members", "key": "x"}));
    assert_eq!(z["ok"], false, "{z}");
    assert_eq!(z["error"], http, "one error, one shape");
    let absent = call(json!({"id": 2, "op": "get", "prefix": "app", "sub": "cfg", "key": "none"}));
    let http_absent = json_of(&request(&node, "GET", "/v1/kv/app/cfg/none", &[], b"").2);
    assert_eq!(absent["error"], http_absent, "{absent}");
    let page = call(json!({"id": 3, "op": "list", "prefix": "app", "sub": "cfg", "limit": 2}));
    assert_eq!(page["next"], "k1", "{page}");
    let created = call(
        json!({"id": 4, "op": "put", "prefix": "app", "sub": "cfg", "key": "k0", "value": "w", "if_absent": true}),
    );
    assert_eq!(created["error"]["code"], "conflict", "{created}");
}

/// Clients nobody here wrote: prometheus_client parses /metrics, and
/// sseclient-py resumes a watch with Last-Event-ID exactly once
/// (tests/clients.py, which installs them).
#[test]
fn prometheus_client_and_an_sse_client_library_agree_with_the_node() {
    let node = start();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(format!("http://{}", node.http))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
