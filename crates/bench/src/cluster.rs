//! `chorus-bench cluster`: a 3-node Chorus cluster (`chorus serve`, HTTP)
//! beside a 3-member etcd cluster (its v3 JSON gateway), both on loopback,
//! started by the benchmark, measured with the same HTTP/1.1 client:
//! acknowledged PUT latency, GET latency, how soon a PUT on node 1 is
//! visible on nodes 2 and 3, PUT throughput from 16 connections (and the
//! servers' CPU time per PUT), and syncs per write with 8 concurrent
//! clients (each system's own counters in `/metrics`, read before and
//! after). etcd is installed with apt-get (`etcd-server`) when it is not
//! on PATH.
//!
//! Chorus acknowledges a PUT after its local commit (synced) and
//! replicates after; etcd acknowledges after a quorum has it. GETs: Chorus
//! reads its local copy; etcd's default GET is linearizable (through the
//! leader), and its serializable GET reads the member's copy; both are
//! measured.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Cfg, Outcome, Res, Row, proc_cpu_seconds};

/// A process killed when dropped.
pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A minimal HTTP/1.1 client on one kept-alive connection.
pub(crate) struct Http {
    reader: BufReader<TcpStream>,
    host: String,
}

impl Http {
    pub(crate) fn connect(addr: &str) -> Res<Http> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(Http {
            reader: BufReader::new(stream),
            host: addr.to_string(),
        })
    }

    pub(crate) fn request(&mut self, method: &str, path: &str, body: &[u8]) -> Res<(u16, Vec<u8>)> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nContent-Type: application/json\r\n\r\n",
            self.host,
            body.len()
        );
        let s = self.reader.get_mut();
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {line:?}"))?;
        let (mut length, mut chunked) = (0usize, false);
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let lower = l.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse()?;
            }
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.reader.read_line(&mut line)?;
                let n = usize::from_str_radix(line.trim(), 16)?;
                let mut chunk = vec![0u8; n + 2];
                self.reader.read_exact(&mut chunk)?;
                chunk.truncate(n);
                body.extend_from_slice(&chunk);
                if n == 0 {
                    break;
                }
            }
        } else {
            body.resize(length, 0);
            self.reader.read_exact(&mut body)?;
        }
        Ok((status, body))
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum System {
    Chorus,
    Etcd,
}

/// How a GET reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Read_ {
    Default,
    Local,
}

fn put(c: &mut Http, sys: System, key: &str, value: &[u8]) -> Res<()> {
    let (status, body) = match sys {
        System::Chorus => c.request("PUT", &format!("/v1/kv/bench/data/{key}"), value)?,
        System::Etcd => {
            let req = json!({"key": b64(key.as_bytes()), "value": b64(value)}).to_string();
            c.request("POST", "/v3/kv/put", req.as_bytes())?
        }
    };
    if status != 200 {
        return Err(format!("PUT {key}: {status} {}", String::from_utf8_lossy(&body)).into());
    }
    Ok(())
}

fn get(c: &mut Http, sys: System, key: &str, how: Read_) -> Res<Option<Vec<u8>>> {
    match sys {
        System::Chorus => {
            let (status, body) = c.request("GET", &format!("/v1/kv/bench/data/{key}"), b"")?;
            if status == 404 {
                return Ok(None);
            }
            let v: Value = serde_json::from_slice(&body)?;
            Ok(v["values"][0]["value"]
                .as_str()
                .map(|s| s.as_bytes().to_vec()))
        }
        System::Etcd => {
            let req = json!({"key": b64(key.as_bytes()), "serializable": how == Read_::Local})
                .to_string();
            let (_, body) = c.request("POST", "/v3/kv/range", req.as_bytes())?;
            let v: Value = serde_json::from_slice(&body)?;
            let Some(value) = v["kvs"][0]["value"].as_str() else {
                return Ok(None);
            };
            use base64::Engine as _;
            Ok(Some(
                base64::engine::general_purpose::STANDARD.decode(value)?,
            ))
        }
    }
}

pub(crate) fn free_port() -> Res<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until `addr` answers `GET /health` (both systems serve it).
pub(crate) fn wait_http(addr: &str) -> Res<()> {
    let start = Instant::now();
    loop {
        let ok = Http::connect(addr).and_then(|mut c| c.request("GET", "/health", b""));
        if matches!(ok, Ok((200, _))) {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(30) {
            return Err(format!("{addr} never came up").into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts `chorus serve --insecure` on loopback ports, output discarded.
pub(crate) fn serve(
    bin: &Path,
    dir: &Path,
    gossip: u16,
    http: u16,
    join: Option<u16>,
    extra: &[&str],
) -> Res<Proc> {
    let mut cmd = Command::new(bin);
    cmd.arg("--dir")
        .arg(dir)
        .args(["serve", "--insecure"])
        .args(extra)
        .arg("--gossip")
        .arg(format!("127.0.0.1:{gossip}"))
        .arg("--http")
        .arg(format!("127.0.0.1:{http}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(j) = join {
        cmd.arg("--join").arg(format!("127.0.0.1:{j}"));
    }
    Ok(Proc(cmd.spawn()?))
}

fn start_chorus(bin: &Path, base: &Path) -> Res<(Vec<Proc>, Vec<String>)> {
    let mut procs = Vec::new();
    let mut urls = Vec::new();
    let first_gossip = free_port()?;
    for i in 0..3 {
        let gossip = if i == 0 { first_gossip } else { free_port()? };
        let http = free_port()?;
        let dir = base.join(format!("chorus-{i}"));
        let join = (i > 0).then_some(first_gossip);
        procs.push(serve(bin, &dir, gossip, http, join, &[])?);
        urls.push(format!("127.0.0.1:{http}"));
    }
    for u in &urls {
        wait_http(u)?;
    }
    Ok((procs, urls))
}

/// Installs etcd (Debian's `etcd-server`) unless `etcd` runs already.
fn ensure_etcd() -> Res<()> {
    let runs = || {
        Command::new("etcd")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if runs() {
        return Ok(());
    }
    crate::harness::apt_install(&["etcd-server"])?;
    if !runs() {
        return Err("etcd-server is installed but `etcd --version` does not run".into());
    }
    Ok(())
}

fn start_etcd(base: &Path) -> Res<(Vec<Proc>, Vec<String>)> {
    ensure_etcd()?;
    let ports: Vec<(u16, u16)> = (0..3)
        .map(|_| Ok((free_port()?, free_port()?)))
        .collect::<Res<_>>()?;
    let initial: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
        .collect();
    let mut procs = Vec::new();
    let mut urls = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let cmd = Command::new("etcd")
            .arg("--name")
            .arg(format!("e{i}"))
            .arg("--data-dir")
            .arg(base.join(format!("etcd-{i}")))
            .arg("--listen-client-urls")
            .arg(format!("http://127.0.0.1:{client}"))
            .arg("--advertise-client-urls")
            .arg(format!("http://127.0.0.1:{client}"))
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{peer}"))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://127.0.0.1:{peer}"))
            .arg("--initial-cluster")
            .arg(initial.join(","))
            .arg("--initial-cluster-state")
            .arg("new")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start etcd: {e}"))?;
        procs.push(Proc(cmd));
        urls.push(format!("127.0.0.1:{client}"));
    }
    for u in &urls {
        wait_http(u)?;
    }
    // A first write waits for a leader.
    let mut c = Http::connect(&urls[0])?;
    let start = Instant::now();
    while put(&mut c, System::Etcd, "warmup", b"x").is_err() {
        if start.elapsed() > Duration::from_secs(30) {
            return Err("etcd elected no leader".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((procs, urls))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Figures {
    put_us: (f64, f64),
    get_us: (f64, f64),
    get_local_us: (f64, f64),
    visible_ms: (f64, f64),
    put_per_s: f64,
    /// CPU time of the three servers per PUT in the throughput phase:
    /// (the node the clients write to, all three), microseconds.
    cpu_us_per_put: (f64, f64),
    /// With 8 concurrent clients: PUTs/s, and the syncs per write (the
    /// node written to, all three nodes).
    put8_per_s: f64,
    syncs_per_write: (f64, f64),
    /// The raw counter differences of that phase, per node.
    sync_counters: Vec<HashMap<String, f64>>,
    /// The node written to, over the sequential PUTs: Chorus's mean
    /// server-side time per PUT (`chorus_http_request_duration_seconds` of
    /// the key route, status 200, summed into `chorus_http_put_seconds`), etcd's mean
    /// WAL fsync; and the raw counter differences.
    sequential_us: f64,
    sequential_counters: HashMap<String, f64>,
}

/// A server's `/metrics` (Prometheus text): every sample by its name,
/// labels included.
fn metrics(url: &str) -> Res<HashMap<String, f64>> {
    let (_, body) = Http::connect(url)?.request("GET", "/metrics", b"")?;
    let text = String::from_utf8_lossy(&body);
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.trim().to_string(), value.trim().parse().ok()?))
        })
        .collect())
}

/// The counters that say how many writes a node synced, and in how many
/// syncs: Chorus's store counters, and etcd's WAL fsyncs and backend
/// (bbolt) commits.
const SYNC_COUNTERS: [&str; 8] = [
    "chorus_store_syncs_total",
    "chorus_store_commits_total",
    "chorus_http_put_seconds_count",
    "chorus_http_put_seconds_sum",
    "etcd_disk_wal_fsync_duration_seconds_count",
    "etcd_disk_wal_fsync_duration_seconds_sum",
    "etcd_disk_backend_commit_duration_seconds_count",
    "etcd_disk_backend_commit_duration_seconds_sum",
];

/// `after - before` for every counter in `after`.
fn diff(before: &HashMap<String, f64>, after: &HashMap<String, f64>) -> HashMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .collect()
}

/// The key route's HTTP latency histogram, answered 200 (the node has no
/// per-method label: in the phases read here the client only PUTs).
const KEY_ROUTE: &str = r#"{route="/v1/kv/{prefix}/{sub}/{*key}",status="200"}"#;

fn sync_counters(url: &str) -> Res<HashMap<String, f64>> {
    let mut m = metrics(url)?;
    for part in ["count", "sum"] {
        let name = format!("chorus_http_request_duration_seconds_{part}{KEY_ROUTE}");
        if let Some(v) = m.get(&name).copied() {
            m.insert(format!("chorus_http_put_seconds_{part}"), v);
        }
    }
    Ok(SYNC_COUNTERS
        .iter()
        .filter_map(|name| Some((name.to_string(), *m.get(*name)?)))
        .collect())
}

/// The syncs that acknowledge a write: Chorus's store syncs, etcd's WAL
/// fsyncs (its backend commits run on a 100 ms timer, apart).
fn syncs(c: &HashMap<String, f64>, sys: System) -> f64 {
    let name = match sys {
        System::Chorus => "chorus_store_syncs_total",
        System::Etcd => "etcd_disk_wal_fsync_duration_seconds_count",
    };
    c.get(name).copied().unwrap_or(0.0)
}

/// `threads` connections to `url`, each making `per` PUTs one after the
/// other; returns the seconds from start to the last reply.
fn concurrent_puts(url: &str, sys: System, threads: usize, per: usize, tag: &str) -> Res<f64> {
    let value = vec![b'v'; 100];
    let t = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|th| {
            let (url, value, tag) = (url.to_string(), value.clone(), tag.to_string());
            std::thread::spawn(move || -> Result<(), String> {
                let mut c = Http::connect(&url).map_err(|e| e.to_string())?;
                for i in 0..per {
                    put(&mut c, sys, &format!("{tag}-{th}-{i}"), &value)
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| "a client thread panicked")??;
    }
    Ok(t.elapsed().as_secs_f64())
}

fn p50_p99(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (percentile(&v, 0.5), percentile(&v, 0.99))
}

fn measure(sys: System, urls: &[String], pids: &[u32], n: usize) -> Res<Figures> {
    let value = vec![b'v'; 100];
    let mut c = Http::connect(&urls[0])?;
    let mut puts = Vec::with_capacity(n);
    let seq0 = sync_counters(&urls[0])?;
    for i in 0..n {
        let t = Instant::now();
        put(&mut c, sys, &format!("lat-{i}"), &value)?;
        puts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let sequential_counters = diff(&seq0, &sync_counters(&urls[0])?);
    let mean = |sum: &str, count: &str| {
        let c = sequential_counters.get(count).copied().unwrap_or(0.0);
        sequential_counters.get(sum).copied().unwrap_or(0.0) / c.max(1.0) * 1e6
    };
    let sequential_us = match sys {
        System::Chorus => mean(
            "chorus_http_put_seconds_sum",
            "chorus_http_put_seconds_count",
        ),
        System::Etcd => mean(
            "etcd_disk_wal_fsync_duration_seconds_sum",
            "etcd_disk_wal_fsync_duration_seconds_count",
        ),
    };
    let mut gets = Vec::with_capacity(2 * n);
    let mut locals = Vec::with_capacity(2 * n);
    for i in 0..2 * n {
        let key = format!("lat-{}", i % n);
        let t = Instant::now();
        get(&mut c, sys, &key, Read_::Default)?;
        gets.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        get(&mut c, sys, &key, Read_::Local)?;
        locals.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let mut others: Vec<Http> = urls[1..]
        .iter()
        .map(|u| Http::connect(u))
        .collect::<Res<_>>()?;
    let mut visible = Vec::new();
    for i in 0..(n / 5).max(10) {
        let key = format!("vis-{i}");
        let t = Instant::now();
        put(&mut c, sys, &key, &value)?;
        for o in &mut others {
            while get(o, sys, &key, Read_::Local)?.is_none() {
                if t.elapsed() > Duration::from_secs(30) {
                    return Err(format!("{key} never became visible").into());
                }
            }
        }
        visible.push(t.elapsed().as_secs_f64() * 1e3);
    }
    // Throughput: 16 connections; the servers' CPU time over the phase.
    let threads = 16;
    let per = (n / 2).max(50);
    let cpu = |pids: &[u32]| -> Res<f64> { pids.iter().map(|p| proc_cpu_seconds(*p)).sum() };
    let (cpu_first0, cpu_all0) = (cpu(&pids[..1])?, cpu(pids)?);
    let secs = concurrent_puts(&urls[0], sys, threads, per, "tp")?;
    let cpu_first1 = cpu(&pids[..1])?;
    // Replicas finish merging the last writes just after the last reply.
    std::thread::sleep(Duration::from_millis(500));
    let cpu_all1 = cpu(pids)?;
    let puts_made = (threads * per) as f64;
    let put_per_s = puts_made / secs;
    let cpu_us_per_put = (
        (cpu_first1 - cpu_first0) / puts_made * 1e6,
        (cpu_all1 - cpu_all0) / puts_made * 1e6,
    );
    // Syncs per write: 8 connections, counters read before and after on
    // every node (replicas sync what they merge too).
    std::thread::sleep(Duration::from_millis(500));
    let (threads8, per8) = (8, (n / 2).max(50));
    let before: Vec<_> = urls.iter().map(|u| sync_counters(u)).collect::<Res<_>>()?;
    let secs8 = concurrent_puts(&urls[0], sys, threads8, per8, "sync")?;
    // The replicas' merges of the last writes land just after the last
    // acknowledgement.
    std::thread::sleep(Duration::from_secs(1));
    let after: Vec<_> = urls.iter().map(|u| sync_counters(u)).collect::<Res<_>>()?;
    let writes8 = (threads8 * per8) as f64;
    let diffs: Vec<HashMap<String, f64>> =
        before.iter().zip(&after).map(|(b, a)| diff(b, a)).collect();
    let syncs_per_write = (
        syncs(&diffs[0], sys) / writes8,
        diffs.iter().map(|d| syncs(d, sys)).sum::<f64>() / writes8,
    );
    Ok(Figures {
        put_us: p50_p99(puts),
        get_us: p50_p99(gets),
        get_local_us: p50_p99(locals),
        visible_ms: p50_p99(visible),
        put_per_s,
        cpu_us_per_put,
        put8_per_s: writes8 / secs8,
        syncs_per_write,
        sync_counters: diffs,
        sequential_us,
        sequential_counters,
    })
}

pub(crate) fn chorus_binary() -> Res<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("chorus");
    if !bin.exists() {
        return Err(format!(
            "{} is missing: build it first with `cargo build --release -p chorus-cli`",
            bin.display()
        )
        .into());
    }
    Ok(bin)
}

pub(crate) fn run(cfg: &Cfg) -> Res<Outcome> {
    let n = if cfg.quick { 200 } else { 2000 };
    let bin = chorus_binary()?;
    let dir = tempfile::tempdir_in(&cfg.base)?;
    let (chorus_procs, chorus_urls) = start_chorus(&bin, dir.path())?;
    let (etcd_procs, etcd_urls) = start_etcd(dir.path())?;
    let pids = |procs: &[Proc]| procs.iter().map(|p| p.0.id()).collect::<Vec<_>>();
    let ch = measure(System::Chorus, &chorus_urls, &pids(&chorus_procs), n)?;
    drop(chorus_procs);
    let et = measure(System::Etcd, &etcd_urls, &pids(&etcd_procs), n)?;
    drop(etcd_procs);
    let time = |name: &str, unit: &str, c: f64, e: f64, goal: Option<f64>| {
        let prec = if unit == "ms" { 2 } else { 0 };
        Row::ratio_goal(
            name,
            format!("{c:.prec$} {unit}"),
            "etcd",
            format!("{e:.prec$} {unit}"),
            e / c,
            goal,
        )
    };
    let rows = vec![
        time(
            "cluster: PUT p50, acknowledged",
            "us",
            ch.put_us.0,
            et.put_us.0,
            Some(5.0),
        ),
        time("cluster: PUT p99", "us", ch.put_us.1, et.put_us.1, None),
        Row::context(
            "cluster: sequential PUT, inside the server (mean)",
            format!("{:.0} us in the handler", ch.sequential_us),
            "etcd: its mean WAL fsync",
            format!("{:.0} us", et.sequential_us),
        ),
        time(
            "cluster: GET p50 (etcd linearizable)",
            "us",
            ch.get_us.0,
            et.get_us.0,
            Some(5.0),
        ),
        time(
            "cluster: GET p99 (etcd linearizable)",
            "us",
            ch.get_us.1,
            et.get_us.1,
            None,
        ),
        time(
            "cluster: GET p50 (etcd serializable)",
            "us",
            ch.get_local_us.0,
            et.get_local_us.0,
            None,
        ),
        time(
            "cluster: visible on 2 others, p50",
            "ms",
            ch.visible_ms.0,
            et.visible_ms.0,
            None,
        ),
        time(
            "cluster: visible on 2 others, p99",
            "ms",
            ch.visible_ms.1,
            et.visible_ms.1,
            None,
        ),
        Row::ratio_goal(
            "cluster: PUT throughput, 16 conns",
            format!("{:.0}/s", ch.put_per_s),
            "etcd",
            format!("{:.0}/s", et.put_per_s),
            ch.put_per_s / et.put_per_s,
            Some(5.0),
        ),
        time(
            "cluster: server CPU per PUT (16 conns), node written to",
            "us",
            ch.cpu_us_per_put.0,
            et.cpu_us_per_put.0,
            None,
        ),
        time(
            "cluster: server CPU per PUT (16 conns), all 3 nodes",
            "us",
            ch.cpu_us_per_put.1,
            et.cpu_us_per_put.1,
            None,
        ),
        Row::ratio_goal(
            "cluster: PUT throughput, 8 conns",
            format!("{:.0}/s", ch.put8_per_s),
            "etcd",
            format!("{:.0}/s", et.put8_per_s),
            ch.put8_per_s / et.put8_per_s,
            None,
        ),
        Row::ratio_goal(
            "cluster: syncs per write (8 conns), node written to",
            format!("{:.3}", ch.syncs_per_write.0),
            "etcd (WAL fsyncs)",
            format!("{:.3}", et.syncs_per_write.0),
            et.syncs_per_write.0 / ch.syncs_per_write.0,
            None,
        ),
        Row::ratio_goal(
            "cluster: syncs per write (8 conns), all 3 nodes",
            format!("{:.3}", ch.syncs_per_write.1),
            "etcd (WAL fsyncs)",
            format!("{:.3}", et.syncs_per_write.1),
            et.syncs_per_write.1 / ch.syncs_per_write.1,
            None,
        ),
    ];
    let fig = |f: &Figures| {
        json!({"put_us": f.put_us, "get_us": f.get_us, "get_local_us": f.get_local_us,
            "visible_ms": f.visible_ms, "put_per_s": f.put_per_s,
            "cpu_us_per_put": f.cpu_us_per_put, "put8_per_s": f.put8_per_s,
            "syncs_per_write": f.syncs_per_write, "sync_counters_8_conns": f.sync_counters,
            "sequential_server_us": f.sequential_us, "sequential_counters": f.sequential_counters})
    };
    let raw = json!({"chorus": fig(&ch), "etcd": fig(&et)});
    Ok(Outcome { rows, raw })
}

/// Reads a node's `chorus_peer_bytes_sent_total`.
fn bytes_sent(url: &str) -> Res<u64> {
    Ok(metrics(url)?
        .get("chorus_peer_bytes_sent_total")
        .map_or(0, |v| *v as u64))
}

fn prefix_hashes(url: &str) -> Res<String> {
    let mut c = Http::connect(url)?;
    let mut all = String::new();
    for p in ["app", "infra"] {
        let (_, body) = c.request("GET", &format!("/v1/hash/{p}"), b"")?;
        all.push_str(&String::from_utf8_lossy(&body));
    }
    Ok(all)
}

/// `chorus-bench antientropy`: two daemons whose stores hold 1,000,000
/// keys each, 1% different (as after a healed partition): time from both
/// serving to equal hashes, and the bytes they sent each other.
pub(crate) fn run_ae(cfg: &Cfg) -> Res<Outcome> {
    let keys = if cfg.quick { 100_000 } else { 1_000_000 };
    let bin = chorus_binary()?;
    let dir = tempfile::tempdir_in(&cfg.base)?;
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    let setup = Instant::now();
    let differing = chorus_sim::exchange::build_pair(&a_dir, &b_dir, keys, 0.01, 1)?;
    eprintln!(
        "antientropy: stores built in {:.1} s",
        setup.elapsed().as_secs_f64()
    );
    let (ga, gb, ha, hb) = (free_port()?, free_port()?, free_port()?, free_port()?);
    let every_second = ["--exchange-interval", "1"];
    let _a = serve(&bin, &a_dir, ga, ha, None, &every_second)?;
    let _b = serve(&bin, &b_dir, gb, hb, Some(ga), &every_second)?;
    let (ua, ub) = (format!("127.0.0.1:{ha}"), format!("127.0.0.1:{hb}"));
    wait_http(&ua)?;
    wait_http(&ub)?;
    let t = Instant::now();
    loop {
        if prefix_hashes(&ua)? == prefix_hashes(&ub)? {
            break;
        }
        if t.elapsed() > Duration::from_secs(300) {
            return Err("the two daemons did not converge in 300 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let converged_s = t.elapsed().as_secs_f64();
    let bytes = bytes_sent(&ua)? + bytes_sent(&ub)?;
    let rows = vec![Row::context(
        "antientropy: 1% of keys differ, to equal",
        format!("{converged_s:.2} s, {:.1} MB", bytes as f64 / 1e6),
        "none",
        format!("{differing} differing keys of {keys}"),
    )];
    let raw = json!({"keys": keys, "differing": differing, "converged_s": converged_s, "bytes": bytes, "exchange_interval_s": 1});
    Ok(Outcome { rows, raw })
}
