//! `chorus-bench attack`: resident memory and CPU of a real `chorus serve`
//! node under each resource attack of issue 16, beside the same node idle,
//! in the same run.
//!
//! Each scenario starts a fresh node (its own directory), prepares what
//! the attack needs, measures the node idle over the window (default
//! 10 s, `--seconds`), then starts the attack, lets it settle (3 s: past
//! the gossip handshake timeout and the wait for frame memory), and
//! measures again over the same window:
//!
//! - RSS: the largest VmRSS (`/proc/PID/status`) sampled every 250 ms;
//! - CPU: utime + stime (`/proc/PID/stat`) over the window, as % of one
//!   core.
//!
//! The attacks:
//!
//! - (a) 1,000 idle gossip connections, 20 from each of 50 loopback
//!   addresses, every other one past a valid hello;
//! - (b) 20 peers announcing a 16 MiB frame after a valid hello, sending
//!   12 MiB of it and stalling (announcing alone costs nothing resident
//!   even without limits: a zeroed buffer is not touched until written);
//! - (c) 1,000 idle SSE watches (`GET /v1/watch`);
//! - (d) 10,000 requests without a token on a node with `--auth`, half
//!   for an operation log whose path is just under 8 KiB (401, audited)
//!   and half just over (414), from 4 connections as fast as they are
//!   answered;
//! - (e) reads of a 40-operation log whose type is a Rhai script reducer
//!   of about 15 ms per operation, from one client in a loop (the note
//!   gives the statuses: 429 once the client passes `--http-rate`);
//! - (f) `GET /v1/sync/pull` with a cursor from before 100,000 commits
//!   and a scope (one full prefix) that none of them touch, from one
//!   client in a loop.
//!
//! The gossip hello is written by hand here (this crate does not link the
//! node): `[u32 LE length][postcard Hello]`, Hello = magic `CHORUS01`,
//! version (varint, 1), node id (16 bytes), listen address (varint
//! length, bytes); see crates/node/src/wire.rs.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster::{Http, Proc, chorus_binary, free_port, serve, wait_http};
use crate::harness::{Cfg, Outcome, Res, Row, proc_cpu_seconds, raise_fd_limit};

/// Largest frame a peer may announce (`wire::FRAME_MAX`).
const FRAME_MAX: u32 = 16 << 20;
/// What each huge-frame announcer sends of its frame.
const ANNOUNCED_SENT: usize = 12 << 20;
/// The API's limit on a path and query (`http::URI_MAX`).
const URI_MAX: usize = 8 << 10;
/// How long an attack settles before its window.
const SETTLE: Duration = Duration::from_secs(3);

/// A node under test: its process, API address and gossip address.
struct Node {
    proc: Proc,
    http: String,
    gossip: SocketAddr,
}

impl Node {
    fn start(bin: &Path, dir: &Path, extra: &[&str]) -> Res<Node> {
        let (gossip, http) = (free_port()?, free_port()?);
        let proc = serve(bin, dir, gossip, http, None, extra)?;
        let http = format!("127.0.0.1:{http}");
        wait_http(&http)?;
        Ok(Node {
            proc,
            http,
            gossip: SocketAddr::from(([127, 0, 0, 1], gossip)),
        })
    }

    fn pid(&self) -> u32 {
        self.proc.0.id()
    }
}

/// What a window measured.
#[derive(Debug, Clone, Copy)]
struct Usage {
    rss_mb: f64,
    cpu_pct: f64,
}

/// The resident memory of `pid`, in bytes.
fn rss(pid: u32) -> Res<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or("no VmRSS in /proc/PID/status")?;
    Ok(kb * 1024)
}

/// Measures `pid` over `window`: the largest RSS sampled, and CPU.
fn measure(pid: u32, window: Duration) -> Res<Usage> {
    let cpu0 = proc_cpu_seconds(pid)?;
    let started = Instant::now();
    let mut peak = rss(pid)?;
    while started.elapsed() < window {
        std::thread::sleep(Duration::from_millis(250));
        peak = peak.max(rss(pid)?);
    }
    let cpu = proc_cpu_seconds(pid)? - cpu0;
    Ok(Usage {
        rss_mb: peak as f64 / f64::from(1 << 20),
        cpu_pct: 100.0 * cpu / started.elapsed().as_secs_f64(),
    })
}

/// A TCP connection to `to` from the loopback address `from`.
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    use rustix::net::{AddressFamily, SocketType, bind, connect, socket};
    let fd = socket(AddressFamily::INET, SocketType::STREAM, None)?;
    bind(&fd, &SocketAddr::new(IpAddr::V4(from), 0))?;
    connect(&fd, &to)?;
    Ok(TcpStream::from(fd))
}

/// The frame of a hello from peer number `n` (it claims an address of
/// its own).
fn hello_frame(n: u32) -> Vec<u8> {
    let listen = format!("127.0.9.9:{}", 20_000 + n % 40_000);
    let mut payload = b"CHORUS01".to_vec();
    payload.push(1); // protocol version 1, a varint
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&n.to_le_bytes());
    id[15] = 0xB7;
    payload.extend_from_slice(&id);
    payload.push(u8::try_from(listen.len()).unwrap_or(0)); // < 128: one varint byte
    payload.extend_from_slice(listen.as_bytes());
    let mut frame = u32::try_from(payload.len())
        .unwrap_or(0)
        .to_le_bytes()
        .to_vec();
    frame.extend_from_slice(&payload);
    frame
}

/// Connections the attack holds, shut down when dropped.
struct Held(Vec<TcpStream>);

impl Drop for Held {
    fn drop(&mut self) {
        for s in &self.0 {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// (a) 1,000 idle gossip connections from 50 addresses.
fn idle_gossip(node: &Node) -> Res<(Held, String)> {
    let mut held = Vec::new();
    let mut failed = 0;
    for source in 1..=50u8 {
        for i in 0..20u32 {
            let n = u32::from(source) * 100 + i;
            match connect_from(Ipv4Addr::new(127, 0, 1, source), node.gossip) {
                Ok(mut s) => {
                    if i.is_multiple_of(2) {
                        // A refused connection may already be closed.
                        let _ = s.write_all(&hello_frame(n));
                    }
                    held.push(s);
                }
                Err(_) => failed += 1,
            }
        }
    }
    let note = format!("{} connected, {failed} failed to connect", held.len());
    Ok((Held(held), note))
}

/// (b) 20 peers announcing 16 MiB frames, sending 12 MiB and stalling.
fn huge_frames(node: &Node) -> Res<(Held, String)> {
    let body = Arc::new(vec![0x5Au8; ANNOUNCED_SENT]);
    let sent = Arc::new(AtomicU64::new(0));
    let mut held = Vec::new();
    for i in 0..20u8 {
        let mut s = connect_from(Ipv4Addr::new(127, 0, 3, i + 1), node.gossip)?;
        held.push(s.try_clone()?);
        let (body, sent) = (body.clone(), sent.clone());
        std::thread::spawn(move || {
            let all = s
                .write_all(&hello_frame(60_000 + u32::from(i)))
                .and_then(|()| s.write_all(&FRAME_MAX.to_le_bytes()))
                .and_then(|()| s.write_all(&body));
            if all.is_ok() {
                sent.fetch_add(1, Ordering::Relaxed);
            }
            // Then nothing; the socket is shut down at the end.
        });
    }
    std::thread::sleep(SETTLE);
    let note = format!(
        "{} of 20 had sent their 12 MiB when the window began",
        sent.load(Ordering::Relaxed)
    );
    Ok((Held(held), note))
}

/// (c) 1,000 idle SSE watches.
fn idle_watches(node: &Node) -> Res<(Held, String)> {
    let mut held = Vec::new();
    let mut answered = 0;
    for _ in 0..1000 {
        let mut s = TcpStream::connect(&node.http)?;
        write!(
            s,
            "GET /v1/watch HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
            node.http
        )?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut first = [0u8; 12];
        if s.read_exact(&mut first).is_ok() && first.starts_with(b"HTTP/1.1 200") {
            answered += 1;
        }
        held.push(s);
    }
    Ok((
        Held(held),
        format!("{answered} of 1,000 streams answered 200"),
    ))
}

/// What a flood did: requests, their statuses (0: the connection
/// failed), and how long it took.
struct Flooded {
    done: u64,
    statuses: Vec<(u16, u64)>,
    secs: f64,
}

/// Runs `work` on `threads` threads until it returns false or `stop` is
/// set; returns the requests done and the statuses seen.
fn flood(
    threads: usize,
    stop: &Arc<AtomicBool>,
    work: impl Fn(&mut Http, u64) -> Res<u16> + Send + Sync + 'static,
    addr: &str,
    limit: u64,
) -> std::thread::JoinHandle<Flooded> {
    let (stop, addr) = (stop.clone(), addr.to_string());
    let work = Arc::new(work);
    std::thread::spawn(move || {
        let started = Instant::now();
        let done = Arc::new(AtomicU64::new(0));
        let statuses = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (stop, addr, work) = (stop.clone(), addr.clone(), work.clone());
                let (done, statuses) = (done.clone(), statuses.clone());
                std::thread::spawn(move || {
                    let Ok(mut http) = Http::connect(&addr) else {
                        return;
                    };
                    while !stop.load(Ordering::Relaxed) {
                        let n = done.fetch_add(1, Ordering::Relaxed);
                        if n >= limit {
                            return;
                        }
                        let status = match work(&mut http, n) {
                            Ok(s) => s,
                            Err(_) => match Http::connect(&addr) {
                                Ok(h) => {
                                    http = h;
                                    0
                                }
                                Err(_) => return,
                            },
                        };
                        *statuses
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .entry(status)
                            .or_insert(0u64) += 1;
                    }
                })
            })
            .collect();
        for h in handles {
            let _ = h.join();
        }
        let statuses = statuses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(s, n)| (*s, *n))
            .collect::<Vec<_>>();
        Flooded {
            done: statuses.iter().map(|(_, n)| n).sum(),
            statuses,
            secs: started.elapsed().as_secs_f64(),
        }
    })
}

fn describe(f: &Flooded) -> String {
    let by: Vec<String> = f
        .statuses
        .iter()
        .map(|(s, n)| format!("{s}: {n}"))
        .collect();
    format!(
        "{} requests in {:.1} s ({:.0}/s; {})",
        f.done,
        f.secs,
        f.done as f64 / f.secs.max(1e-9),
        by.join(", ")
    )
}

/// A path of `len` bytes under /v1/ops/app/cfg/: refused for want of a
/// token (401, audited) under [`URI_MAX`], as too long (414) over it.
fn long_path(len: usize) -> String {
    let head = "/v1/ops/app/cfg/";
    format!("{head}{}", "k".repeat(len.saturating_sub(head.len())))
}

/// The slow reducer: about 15 ms of Rhai per operation on a 2020s core.
const SLOW_REDUCER: &str =
    "fn init() { 0 }\nfn reduce(s, op) { let i = 0; while i < 60000 { i += 1; } s + 1 }\n";

/// (e) prepares a 40-operation log with a slow script reducer.
fn prepare_slow_log(bin: &Path, dir: &Path, node: &Node) -> Res<()> {
    let script = dir.with_extension("slow.rhai");
    std::fs::write(&script, SLOW_REDUCER)?;
    let out = Command::new(bin)
        .arg("--dir")
        .arg(dir)
        .args(["reducer", "set", "slow"])
        .arg(&script)
        .stdout(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "chorus reducer set failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let mut http = Http::connect(&node.http)?;
    for _ in 0..40 {
        let body = json!({"type": "slow", "payload": 1}).to_string();
        let (status, reply) = http.request("POST", "/v1/ops/bench/slow/log", body.as_bytes())?;
        if status != 200 {
            return Err(format!(
                "an operation push answered {status}: {}",
                String::from_utf8_lossy(&reply)
            )
            .into());
        }
    }
    Ok(())
}

/// (f) prepares `commits` commits after a cursor, none in narrow/x;
/// returns the cursor.
fn prepare_commits(dir: &Path, node: &Node, commits: u64) -> Res<String> {
    let mut http = Http::connect(&node.http)?;
    let (status, _) = http.request("PUT", "/v1/kv/narrow/x/only", b"one")?;
    if status != 200 && status != 201 {
        return Err(format!("the first PUT answered {status}").into());
    }
    let (status, body) = http.request("GET", "/v1/sync/pull?prefix=narrow&sub=x", b"")?;
    let pulled: Value = serde_json::from_slice(&body)?;
    let cursor = pulled["cursor"]
        .as_str()
        .ok_or_else(|| format!("the pull answered {status} without a cursor: {pulled}"))?
        .to_string();
    let meta =
        chorus_store::Metadata::new(crate::engines::chorus(dir, chorus_store::SyncMode::Never)?);
    let fp = chorus_core::FullPrefix::new("bulk", "data")?;
    for i in 0..commits {
        meta.put(
            &fp,
            format!("k{i:08}").as_bytes(),
            chorus_store::PutValue::Bytes(b"v".to_vec()),
            &chorus_store::PutOptions::default(),
        )?;
    }
    // Let the node read its feed to the end before the idle window.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(120) {
        let (_, text) = http.request("GET", "/metrics", b"")?;
        let text = String::from_utf8_lossy(&text);
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("chorus_{name} ")))
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        if value("feed_seq").is_some() && value("feed_seq") >= value("store_last_seq") {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(cursor)
}

/// One scenario's figures.
struct Scenario {
    name: &'static str,
    idle: Usage,
    attack: Usage,
    note: String,
}

fn ratio(a: f64, b: f64) -> String {
    if b <= 0.0 {
        return "—".into();
    }
    crate::harness::fmt_ratio(a / b)
}

pub(crate) fn run(cfg: &Cfg) -> Res<Outcome> {
    let window = Duration::from_secs_f64(cfg.seconds.unwrap_or(if cfg.quick { 3.0 } else { 10.0 }));
    let commits = if cfg.quick { 10_000 } else { 100_000 };
    let limit = raise_fd_limit()?;
    if limit < 4096 {
        return Err(format!(
            "the open-files limit is {limit}: the attacks hold over 2,000 connections (raise it: ulimit -n)"
        )
        .into());
    }
    let bin = chorus_binary()?;
    let base = tempfile::tempdir_in(&cfg.base)?;
    let mut scenarios = Vec::new();
    let names = [
        "(a) 1,000 idle gossip connections",
        "(b) 20 huge-frame announcers",
        "(c) 1,000 idle SSE watches",
        "(d) 10,000 refused requests with 8 KiB URLs (--auth)",
        "(e) reads of a 40-op log, slow script reducer",
        "(f) sync pull, old cursor, narrow scope",
    ];
    for (i, name) in names.into_iter().enumerate() {
        let dir = base.path().join(format!("node-{i}"));
        let auth: &[&str] = if i == 3 { &["--auth"] } else { &[] };
        let node = Node::start(&bin, &dir, auth)?;
        eprintln!("attack {name}: preparing");
        let cursor = match i {
            4 => {
                prepare_slow_log(&bin, &dir, &node)?;
                None
            }
            5 => Some(prepare_commits(&dir, &node, commits)?),
            _ => None,
        };
        std::thread::sleep(Duration::from_secs(1));
        let idle = measure(node.pid(), window)?;
        eprintln!("attack {name}: idle {idle:?}; attacking");
        let stop = Arc::new(AtomicBool::new(false));
        let (held, flooding) = match i {
            0 => (Some(idle_gossip(&node)?), None),
            1 => (Some(huge_frames(&node)?), None),
            2 => (Some(idle_watches(&node)?), None),
            3 => {
                let work = |http: &mut Http, n: u64| -> Res<u16> {
                    let len = if n.is_multiple_of(2) {
                        URI_MAX - 64
                    } else {
                        URI_MAX + 64
                    };
                    Ok(http.request("GET", &long_path(len), b"")?.0)
                };
                (None, Some(flood(4, &stop, work, &node.http, 10_000)))
            }
            4 => {
                let work = |http: &mut Http, _: u64| -> Res<u16> {
                    Ok(http.request("GET", "/v1/ops/bench/slow/log", b"")?.0)
                };
                (None, Some(flood(1, &stop, work, &node.http, u64::MAX)))
            }
            _ => {
                let path = format!(
                    "/v1/sync/pull?prefix=narrow&sub=x&cursor={}",
                    cursor.unwrap_or_default()
                );
                let work = move |http: &mut Http, _: u64| -> Res<u16> {
                    Ok(http.request("GET", &path, b"")?.0)
                };
                (None, Some(flood(1, &stop, work, &node.http, u64::MAX)))
            }
        };
        if held.is_some() {
            std::thread::sleep(SETTLE);
        }
        let attack = measure(node.pid(), window)?;
        stop.store(true, Ordering::Relaxed);
        let note = match (held, flooding) {
            (Some((held, note)), _) => {
                drop(held);
                note
            }
            (None, Some(f)) => describe(&f.join().map_err(|_| "a flood thread panicked")?),
            (None, None) => String::new(),
        };
        eprintln!("attack {name}: {attack:?}; {note}");
        drop(node);
        scenarios.push(Scenario {
            name,
            idle,
            attack,
            note,
        });
    }
    println!();
    println!(
        "| attack | RSS MB idle | RSS MB attacked | ratio | CPU % idle | CPU % attacked | ratio | what the attack did |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    let mut raw = Vec::new();
    for s in &scenarios {
        println!(
            "| {} | {:.1} | {:.1} | {} | {:.1} | {:.1} | {} | {} |",
            s.name,
            s.idle.rss_mb,
            s.attack.rss_mb,
            ratio(s.attack.rss_mb, s.idle.rss_mb),
            s.idle.cpu_pct,
            s.attack.cpu_pct,
            ratio(s.attack.cpu_pct, s.idle.cpu_pct),
            s.note
        );
        rows.push(Row {
            bench: format!("attack {}", s.name),
            chorus: format!(
                "RSS {:.1} MB, CPU {:.1}%",
                s.attack.rss_mb, s.attack.cpu_pct
            ),
            peer: "the same node idle".into(),
            peer_figure: format!("RSS {:.1} MB, CPU {:.1}%", s.idle.rss_mb, s.idle.cpu_pct),
            ratio: None,
            goal: "none (context)".into(),
            met: None,
        });
        raw.push(json!({
            "attack": s.name,
            "idle": {"rss_mb": s.idle.rss_mb, "cpu_pct": s.idle.cpu_pct},
            "attacked": {"rss_mb": s.attack.rss_mb, "cpu_pct": s.attack.cpu_pct},
            "note": s.note,
        }));
    }
    println!();
    println!(
        "RSS: the largest VmRSS sampled every 250 ms over a {:.0} s window; CPU: utime + stime over the window, % of one core; ratio: attacked / idle.",
        window.as_secs_f64()
    );
    Ok(Outcome {
        rows,
        raw: json!({"window_s": window.as_secs_f64(), "scenarios": raw}),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hand_written_hello_has_the_wire_layout() {
        let frame = hello_frame(7);
        let len = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
        assert_eq!(len, frame.len() - 4);
        assert_eq!(&frame[4..12], b"CHORUS01");
        assert_eq!(frame[12], 1);
        let listen = &frame[30..];
        assert_eq!(usize::from(frame[29]), listen.len());
        assert_eq!(listen, b"127.0.9.9:20007");
    }

    #[test]
    fn long_paths_straddle_the_uri_limit() {
        assert_eq!(long_path(URI_MAX - 64).len(), URI_MAX - 64);
        assert_eq!(long_path(URI_MAX + 64).len(), URI_MAX + 64);
    }
}
