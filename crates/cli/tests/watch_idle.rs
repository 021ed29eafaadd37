//! Idle watches cost the node next to nothing: 1,000 open `GET /v1/watch`
//! streams on a real `chorus serve` share one reader of the change feed
//! (the hub, `crates/node/src/events.rs`), woken on commit; no stream
//! polls on its own. The node's CPU time (utime + stime from
//! /proc/PID/stat) over 5 s of idleness stays under a generous bound; a
//! watch that polled every 25 ms, as streams once did, used 40% of a core
//! for 300 streams. Then one commit reaches every stream. With auth on,
//! each stream checks its token again once a second, and the bound holds.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

mod common;
use common::http::{curl, start_at, wait_healthy};
use common::{chorus_in, free_port, metric, ok_json, serve};

/// Streams held open.
const STREAMS: usize = 1000;
/// How long the node is watched idle.
const IDLE: Duration = Duration::from_secs(5);
/// The most CPU the node may use over [`IDLE`] (10% of one core).
const CPU_MAX: Duration = Duration::from_millis(500);

/// Raises this process's open-file limit (the node started afterwards
/// inherits it) to hold `needed` descriptors; false if the hard limit is
/// too low.
fn raise_fd_limit(needed: u64) -> bool {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    let hard = lim.maximum.unwrap_or(u64::MAX);
    if hard < needed {
        return false;
    }
    if lim.current.is_some_and(|c| c < needed) {
        lim.current = Some(needed.min(hard));
        if setrlimit(Resource::Nofile, lim).is_err() {
            return false;
        }
    }
    true
}

/// The CPU time (user + system) the process `pid` has used.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name (which may hold spaces) start at
    // field 3 (state): utime is field 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("a command name") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_secs_f64(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// Opens a watch stream (with `token`, if any) and reads its response head.
fn open_watch(http: u16, token: Option<&str>) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", http)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "GET /v1/watch?prefix=app/cfg HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n{auth}\r\n"
    );
    s.write_all(request.as_bytes()).expect("request");
    let head = read_until(&mut s, b"\r\n\r\n");
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "the watch was refused: {head}"
    );
    s
}

/// Reads from `s` until `end` has been read; returns what was read.
fn read_until(s: &mut TcpStream, end: &[u8]) -> String {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(end) {
        match s.read(&mut byte) {
            Ok(1) => got.push(byte[0]),
            other => panic!(
                "the stream ended or stalled ({other:?}) after {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn a_thousand_idle_watches_cost_the_node_little_cpu_and_all_see_a_commit() {
    let dir = tempfile::tempdir().expect("tmp");
    let http = free_port();
    if !raise_fd_limit(8192) {
        eprintln!("{SKIPPED}");
        return;
    }
    let (node, url) = start_at(dir.path(), free_port(), http);
    idle_watches(&node, http, &url, None);
}

#[test]
fn a_thousand_idle_watches_with_tokens_cost_the_node_little_cpu() {
    let dir = tempfile::tempdir().expect("tmp");
    if !raise_fd_limit(8192) {
        eprintln!("{SKIPPED}");
        return;
    }
    let secret = "correct horse battery";
    let init = common::chorus(dir.path(), &["init"]);
    assert!(init.status.success(), "{init:?}");
    let added = chorus_in(
        dir.path(),
        &["user", "add", "alice"],
        &format!("{secret}\n"),
        &[],
    );
    assert!(added.status.success(), "{added:?}");
    let session = chorus_in(
        dir.path(),
        &["--json", "session", "create", "--user", "alice"],
        &format!("{secret}\n"),
        &[],
    );
    let token = ok_json(&session)["token"]
        .as_str()
        .expect("a session token")
        .to_string();
    let http = free_port();
    let node = serve(
        dir.path(),
        free_port(),
        http,
        None,
        &["--auth", "--insecure"],
    );
    let url = format!("http://127.0.0.1:{http}");
    wait_healthy(&url, Duration::from_secs(20));
    idle_watches(&node, http, &url, Some(&token));
}

const SKIPPED: &str = "skipped: the open-file hard limit is below 8,192 (`ulimit -Hn`); each test holds 1,000 streams, with a descriptor on each side";

/// Opens [`STREAMS`] watches, measures the node's CPU over [`IDLE`], then
/// checks that one commit reaches every stream.
fn idle_watches(node: &common::Node, http: u16, url: &str, token: Option<&str>) {
    let pid = node.0.id();
    let mut streams: Vec<TcpStream> = (0..STREAMS).map(|_| open_watch(http, token)).collect();
    if token.is_none() {
        assert_eq!(metric(http, "open_watches"), STREAMS as u64);
    }

    // Settled, then idle.
    std::thread::sleep(Duration::from_secs(1));
    let before = cpu_time(pid);
    let started = Instant::now();
    std::thread::sleep(IDLE);
    let used = cpu_time(pid).saturating_sub(before);
    let over = started.elapsed();
    let auth = if token.is_some() { " (auth on)" } else { "" };
    assert!(
        used <= CPU_MAX,
        "{STREAMS} idle watches{auth} used {used:?} of CPU over {over:?} (at most {CPU_MAX:?})"
    );
    eprintln!("{STREAMS} idle watches{auth}: the node used {used:?} of CPU over {over:?}");

    // One commit reaches every stream.
    let mut put = vec!["-X", "PUT", "--data-binary", "blue"];
    let header = token.map(|t| format!("Authorization: Bearer {t}"));
    if let Some(h) = &header {
        put.extend(["-H", h.as_str()]);
    }
    let target = format!("{url}/v1/kv/app/cfg/mode");
    put.push(&target);
    let (code, status, body) = curl(&put);
    assert_eq!((code, status), (0, 200), "{body}");
    for s in &mut streams {
        // Keep-alive comments may come first; the event names the key.
        let read = read_until(s, b"\"key\":\"mode\"");
        assert!(read.contains("event: change"), "{read}");
    }
}
