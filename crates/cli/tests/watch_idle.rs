//! Idle watches cost the node next to nothing: 1,000 open `GET /v1/watch`
//! streams on a real `chorus serve` share one reader of the change feed
//! (the hub, `crates/node/src/events.rs`), woken on commit; no stream
//! polls on its own. The node's CPU time (utime + stime from
//! /proc/PID/stat) over 5 s of idleness stays under a generous bound; a
//! watch that polled every 25 ms, as streams once did, used 40% of a core
//! for 300 streams. Then one commit reaches every stream.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

mod common;
use common::http::{curl, start_at};
use common::{free_port, metric};

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

/// Opens a watch stream and reads its response head.
fn open_watch(http: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", http)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s.write_all(
        b"GET /v1/watch?prefix=app/cfg HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n",
    )
    .expect("request");
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
    if !raise_fd_limit(4096) {
        eprintln!(
            "skipped: the open-file hard limit is below 4,096 (`ulimit -Hn`); 1,000 streams need 1,000 descriptors on each side"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let http = free_port();
    let (node, url) = start_at(dir.path(), free_port(), http);
    let pid = node.0.id();
    let mut streams: Vec<TcpStream> = (0..STREAMS).map(|_| open_watch(http)).collect();
    assert_eq!(metric(http, "open_watches"), STREAMS as u64);

    // Settled, then idle.
    std::thread::sleep(Duration::from_secs(1));
    let before = cpu_time(pid);
    let started = Instant::now();
    std::thread::sleep(IDLE);
    let used = cpu_time(pid).saturating_sub(before);
    let over = started.elapsed();
    assert!(
        used <= CPU_MAX,
        "{STREAMS} idle watches used {used:?} of CPU over {over:?} (at most {CPU_MAX:?})"
    );
    eprintln!("{STREAMS} idle watches: the node used {used:?} of CPU over {over:?}");

    // One commit reaches every stream.
    let (code, status, body) = curl(&[
        "-X",
        "PUT",
        "--data-binary",
        "blue",
        &format!("{url}/v1/kv/app/cfg/mode"),
    ]);
    assert_eq!((code, status), (0, 200), "{body}");
    for s in &mut streams {
        // Keep-alive comments may come first; the event names the key.
        let read = read_until(s, b"\"key\":\"mode\"");
        assert!(read.contains("event: change"), "{read}");
    }
    drop(streams);
}
