//! The ZeroMQ broker of `chorus serve`: driven by pyzmq through the example
//! client (a client nobody here wrote), by 64 concurrent libzmq clients for
//! group commit and a SIGKILL, and with bad endpoints.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod common;
use common::{Node, chorus, free_port, metric, serve, wait_until};

/// Starts a node with the broker on `router` (and events on `publish`).
fn serve_zmq(dir: &Path, router: &str, publish: Option<&str>) -> (Node, u16) {
    let (gossip, http) = (free_port(), free_port());
    let mut extra = vec!["--insecure", "--zmq", router];
    if let Some(p) = publish {
        extra.extend(["--zmq-pub", p]);
    }
    let node = serve(dir, gossip, http, None, &extra);
    wait_until(Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", http)).is_ok()
    });
    (node, http)
}

/// One request over a DEALER socket; the reply's JSON.
fn request(socket: &zmq::Socket, body: &serde_json::Value) -> Option<serde_json::Value> {
    socket
        .send_multipart([&b""[..], body.to_string().as_bytes()], 0)
        .ok()?;
    let frames = socket.recv_multipart(0).ok()?;
    serde_json::from_slice(frames.last()?).ok()
}

fn dealer(context: &zmq::Context, endpoint: &str) -> zmq::Socket {
    let s = context.socket(zmq::DEALER).expect("socket");
    s.set_linger(0).expect("linger");
    s.set_rcvtimeo(5000).expect("timeout");
    s.connect(endpoint).expect("connect");
    s
}

#[test]
fn a_pyzmq_client_puts_gets_siblings_documents_oplogs_and_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let router = format!("tcp://127.0.0.1:{}", free_port());
    let publish = format!("tcp://127.0.0.1:{}", free_port());
    let (_node, _) = serve_zmq(dir.path(), &router, Some(&publish));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/zmq_client.py");
    let out = Command::new("python3")
        .arg(&script)
        .args([&router, &publish])
        .output()
        .expect("run python3 (scripts/test.sh installs pyzmq)");
    assert!(
        out.status.success(),
        "the pyzmq client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

#[test]
fn sixty_four_clients_share_syncs_and_every_acknowledged_write_survives_a_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let router = format!("tcp://127.0.0.1:{}", free_port());
    let (mut node, http) = serve_zmq(dir.path(), &router, None);
    let context = zmq::Context::new();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..64)
        .map(|c| {
            let (context, router, stop) = (context.clone(), router.clone(), stop.clone());
            std::thread::spawn(move || {
                let s = dealer(&context, &router);
                let mut acked = Vec::new();
                for i in 0u64.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let body = serde_json::json!({
                        "id": i, "op": "put", "prefix": "gc", "sub": "keys",
                        "key": format!("c{c}-{i}"), "value": format!("v{i}"),
                    });
                    match request(&s, &body) {
                        Some(r) if r["ok"] == true && r["id"] == i => acked.push(i),
                        // The broker died: what was not acknowledged may
                        // or may not be there.
                        _ => break,
                    }
                }
                (c, acked)
            })
        })
        .collect();
    // Let the clients run, then read the counters while they still do.
    wait_until(Duration::from_secs(60), || {
        metric(http, "zmq_writes_total") >= 3000
    });
    let writes = metric(http, "zmq_writes_total");
    let syncs = metric(http, "store_syncs_total");
    assert!(
        syncs * 4 < writes,
        "group commit: {syncs} syncs for {writes} writes"
    );
    // SIGKILL in the middle of the writes.
    node.0.kill().expect("SIGKILL");
    let _ = node.0.wait();
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<(usize, Vec<u64>)> = clients
        .into_iter()
        .map(|t| t.join().expect("client"))
        .collect();
    let total: usize = acked.iter().map(|(_, a)| a.len()).sum();
    assert!(total >= 3000, "only {total} writes acknowledged");
    let store = chorus_store::Store::open(dir.path(), chorus_store::Options::default())
        .expect("open after the kill");
    let meta = chorus_store::Metadata::new(store);
    let fp = chorus_core::FullPrefix::new("gc", "keys").expect("valid");
    let mut missing = Vec::new();
    for (c, list) in &acked {
        for i in list {
            let key = format!("c{c}-{i}");
            let read = meta
                .get(&fp, key.as_bytes(), &chorus_store::GetOptions::default())
                .expect("read");
            let value =
                read.and_then(|r| r.values.first().and_then(|v| v.bytes().map(<[u8]>::to_vec)));
            if value.as_deref() != Some(format!("v{i}").as_bytes()) {
                missing.push(key);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}

#[test]
fn an_ipc_endpoint_serves_and_bad_endpoints_are_refused_before_anything_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ipc = format!("ipc://{}", dir.path().join("broker.sock").display());
    let data = dir.path().join("data");
    let (_node, _) = serve_zmq(&data, &ipc, None);
    let context = zmq::Context::new();
    let s = dealer(&context, &ipc);
    let started = Instant::now();
    let reply = loop {
        if let Some(r) = request(&s, &serde_json::json!({"id": "p", "op": "ping"})) {
            break r;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no reply over ipc"
        );
    };
    assert_eq!(reply["ok"], true);
    assert_eq!(reply["id"], "p");
    // A REQ socket (with its own envelope) is answered too.
    let req = context.socket(zmq::REQ).expect("socket");
    req.set_rcvtimeo(5000).expect("timeout");
    req.connect(&ipc).expect("connect");
    req.send(
        serde_json::json!({"id": 7, "op": "put", "prefix": "a", "sub": "b", "key": "k", "value": "v"})
            .to_string()
            .as_bytes(),
        0,
    )
    .expect("send");
    let reply: serde_json::Value =
        serde_json::from_slice(&req.recv_bytes(0).expect("reply")).expect("JSON");
    assert_eq!(reply["ok"], true, "{reply}");

    let other = tempfile::tempdir().expect("tempdir");
    for (args, says) in [
        (
            vec![
                "--zmq",
                "tcp://127.0.0.1:7801",
                "--zmq-pub",
                "tcp://0.0.0.0:7802",
            ],
            "loopback or ipc://",
        ),
        (
            vec!["--zmq", "udp://127.0.0.1:7801"],
            "tcp://IP:PORT or ipc://PATH",
        ),
        (vec!["--zmq", "tcp://localhost:7801"], "numeric address"),
        (vec!["--zmq-pub", "tcp://127.0.0.1:7802"], "--zmq"),
    ] {
        let mut all = vec![
            "serve",
            "--insecure",
            "--gossip",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ];
        all.extend(args.iter().copied());
        let out = chorus(other.path(), &all);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
