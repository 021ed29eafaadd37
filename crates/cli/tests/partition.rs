//! Five `chorus serve` nodes partitioned 2/3 by a fault-injecting TCP
//! proxy in front of each node: writes on both sides, then a heal; every
//! node must end with the same data, concurrent writes as siblings, and no
//! acknowledged write missing.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;

mod common;
use common::http::curl;
use common::{Node, chorus, free_port, serve, wait_until};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A TCP proxy in front of one node. It reads the dialler's hello (the
/// first frame, which names the address the dialler advertises) and
/// refuses, or cuts, connections from blocked addresses.
#[derive(Clone)]
struct Proxy {
    blocked: Arc<Mutex<HashSet<String>>>,
    open: Arc<Mutex<Vec<(String, TcpStream)>>>,
}

impl Proxy {
    fn start(port: u16, target: u16) -> Proxy {
        let proxy = Proxy {
            blocked: Arc::default(),
            open: Arc::default(),
        };
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("proxy listens");
        let p = proxy.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let p = p.clone();
                std::thread::spawn(move || p.serve(client, target));
            }
        });
        proxy
    }

    fn serve(&self, mut client: TcpStream, target: u16) {
        let Some((hello, from)) = read_hello(&mut client) else {
            return;
        };
        if self.is_blocked(&from) {
            return;
        }
        let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)) else {
            return;
        };
        if server.write_all(&hello).is_err() {
            return;
        }
        for s in [&client, &server] {
            if let Ok(c) = s.try_clone() {
                lock(&self.open).push((from.clone(), c));
            }
        }
        let (Ok(mut c2), Ok(mut s2)) = (client.try_clone(), server.try_clone()) else {
            return;
        };
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut s2, &mut c2);
            let _ = c2.shutdown(Shutdown::Both);
        });
        let _ = std::io::copy(&mut client, &mut server);
        let _ = server.shutdown(Shutdown::Both);
    }

    fn is_blocked(&self, from: &str) -> bool {
        lock(&self.blocked).contains(from)
    }

    /// Refuses new connections from `from` and cuts the open ones.
    fn block(&self, from: &[String]) {
        lock(&self.blocked).extend(from.iter().cloned());
        for (source, stream) in lock(&self.open).iter() {
            if from.contains(source) {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }

    fn heal(&self) {
        lock(&self.blocked).clear();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Reads the first frame ([u32 len][postcard Hello]) and the advertised
/// address in it: magic (8 bytes), version (varint), node id (16 bytes),
/// listen address (varint length, bytes).
fn read_hello(s: &mut TcpStream) -> Option<(Vec<u8>, String)> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let n = u32::from_le_bytes(len) as usize;
    if n > 4096 {
        return None;
    }
    let mut body = vec![0u8; n];
    s.read_exact(&mut body).ok()?;
    let mut at = 8;
    while *body.get(at)? & 0x80 != 0 {
        at += 1;
    }
    at += 1 + 16;
    let (mut strlen, mut shift) = (0usize, 0);
    loop {
        let b = *body.get(at)?;
        at += 1;
        strlen |= usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            break;
        }
    }
    let from = String::from_utf8(body.get(at..at + strlen)?.to_vec()).ok()?;
    let mut frame = len.to_vec();
    frame.extend_from_slice(&body);
    Some((frame, from))
}

fn put(dir: &Path, key: &str, value: &str) {
    common::put(dir, "test/keys", key, value);
}

fn has(dir: &Path, key: &str) -> bool {
    common::get(dir, "test/keys", key).is_some()
}

#[test]
fn after_a_partition_heals_all_nodes_agree_keep_concurrent_writes_and_lose_nothing() {
    let n = 5;
    let dirs: Vec<tempfile::TempDir> = (0..n).map(|_| tempfile::tempdir().expect("tmp")).collect();
    for d in &dirs {
        assert!(chorus(d.path(), &["init"]).status.success());
    }
    let (listen, fronts): (Vec<u16>, Vec<u16>) = (0..n).map(|_| (free_port(), free_port())).unzip();
    let proxies: Vec<Proxy> = (0..n).map(|i| Proxy::start(fronts[i], listen[i])).collect();
    let http: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let addr = |i: usize| format!("127.0.0.1:{}", fronts[i]);
    let _nodes: Vec<Node> = (0..n)
        .map(|i| {
            let advertise = addr(i);
            let args = [
                "--insecure",
                "--exchange-interval",
                "1",
                "--advertise",
                &advertise,
            ];
            // Peers dial node 0 through its proxy.
            serve(
                dirs[i].path(),
                listen[i],
                http[i],
                (i > 0).then_some(fronts[0]),
                &args,
            )
        })
        .collect();
    // Warm up: one write reaches everyone, and every node knows every
    // member (the member list is data; anti-entropy picks from it).
    put(dirs[0].path(), "warm", "up");
    wait_until(Duration::from_secs(30), || {
        dirs.iter().all(|d| has(d.path(), "warm"))
    });
    wait_until(Duration::from_secs(30), || {
        (0..n).all(|i| {
            let text = curl(&[&format!("http://127.0.0.1:{}/v1/cluster", http[i])]).2;
            (0..n).filter(|&j| j != i).all(|j| text.contains(&addr(j)))
        })
    });

    let (left, right) = ((0..2).collect::<Vec<_>>(), (2..n).collect::<Vec<_>>());
    let names = |side: &[usize]| side.iter().map(|&i| addr(i)).collect::<Vec<_>>();
    for &i in &left {
        proxies[i].block(&names(&right));
    }
    for &i in &right {
        proxies[i].block(&names(&left));
    }
    std::thread::sleep(Duration::from_millis(500));
    put(dirs[0].path(), "same", "left");
    put(dirs[3].path(), "same", "right");
    for k in 0..10 {
        put(dirs[1].path(), &format!("left-{k}"), "v");
        put(dirs[4].path(), &format!("right-{k}"), "v");
    }
    // The right side replicates within itself (by broadcast or, where the
    // cut left its overlay in pieces, by anti-entropy)...
    wait_until(Duration::from_secs(30), || has(dirs[2].path(), "right-0"));
    // ...and nothing crosses the cut.
    assert!(
        !has(dirs[0].path(), "right-0"),
        "the partition let data through"
    );

    for p in &proxies {
        p.heal();
    }
    let hash = |d: &tempfile::TempDir| chorus(d.path(), &["hash", "test/keys"]).stdout;
    wait_until(Duration::from_secs(60), || {
        let first = hash(&dirs[0]);
        dirs.iter().all(|d| hash(d) == first)
    });
    for d in &dirs {
        let out = chorus(d.path(), &["--json", "get", "test/keys", "same"]);
        let read: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let mut values: Vec<&str> = read["values"]
            .as_array()
            .map(|v| v.iter().filter_map(|x| x["value"].as_str()).collect())
            .unwrap_or_default();
        values.sort_unstable();
        assert_eq!(values, ["left", "right"], "concurrent writes are siblings");
        for k in 0..10 {
            assert!(has(d.path(), &format!("left-{k}")) && has(d.path(), &format!("right-{k}")));
        }
    }
}
