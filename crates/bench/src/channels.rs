//! `chorus-bench channels` (issue 19): six `chorus serve` daemons on
//! loopback, run twice per round with fresh directories:
//! - **all serving**: no channel table, every node stores and merges every
//!   write;
//! - **3 channels of 2**: channel `c{i}` is the full prefix `bench/s{i}`,
//!   served by nodes `2i` and `2i+1`; the same records are written into
//!   every node's directory before any daemon starts, so no node ever holds
//!   another channel's data.
//!
//! The load is the same in both: 4 kept-alive HTTP connections per node
//! (24 in all), each PUTting distinct keys with 100-byte values into
//! `bench/s{node / 2}` (its node's channel in the second configuration)
//! as fast as the node acknowledges. After a warm-up the benchmark reads,
//! over a fixed window, the acknowledged writes of the whole cluster, the
//! bytes the daemons sent their peers (`chorus_peer_bytes_sent_total`),
//! their store syncs and their CPU seconds (`/proc/PID/stat`), and the
//! clients' own CPU. After the load it waits until every node that serves
//! a full prefix holds every key written to it, and checks that no node
//! holds a key of a full prefix it does not serve (its store, and a GET).
//!
//! Invariant: both configurations get the same load, the same daemons and
//! the same measurement; the only difference is the channel table. A
//! violated check is reported in its row, never dropped.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chorus_core::{FullPrefix, NodeId};
use chorus_store::{Metadata, Options, PutOptions, PutValue, Store};
use serde_json::{Value, json};

use crate::cluster::{Http, Proc, chorus_binary, free_port, serve, wait_http};
use crate::harness::{Cfg, Outcome, Res, Row, VALUE_LEN, median, proc_cpu_seconds};

/// Daemons in each configuration.
const NODES: usize = 6;
/// Channels in the second configuration; channel `c` is served by nodes
/// `2c` and `2c + 1`.
const CHANNELS: usize = 3;
/// The loads, in client connections to each node: 24 in all (every
/// client waits on its node's synced commit), and 96 (more writes share a
/// commit and a broadcast, as on a busier cluster).
const LOADS: [usize; 2] = [4, 16];
/// The goal of issue 19 ("near 3x"), read as within 10% of 3x.
const THROUGHPUT_GOAL: f64 = 2.7;
/// How long the cluster may take to form, and to catch up after the load.
const FORM_LIMIT: Duration = Duration::from_secs(120);
const CATCH_UP_LIMIT: Duration = Duration::from_secs(120);

/// Which table the daemons run with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Layout {
    /// No channel table: every node serves everything.
    AllServing,
    /// Three channels of two nodes each.
    Channels,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::AllServing => "all_serving",
            Layout::Channels => "channels",
        }
    }

    /// True when `node` serves channel `c`'s full prefix.
    fn serves(self, node: usize, c: usize) -> bool {
        self == Layout::AllServing || node / 2 == c
    }
}

/// The full prefix of channel `c`: `bench/s{c}`.
fn full_prefix(c: usize) -> Res<FullPrefix> {
    Ok(FullPrefix::new("bench", &format!("s{c}"))?)
}

/// The URL path of key `key` in channel `c`.
fn key_path(c: usize, key: &str) -> String {
    format!("/v1/kv/bench/s{c}/{key}")
}

/// The key client `client` of node `node` writes `seq`-th.
fn key_name(node: usize, client: usize, seq: u64) -> String {
    format!("n{node}c{client}-{seq:09}")
}

/// Six running daemons; killed, then their directories removed, when
/// dropped (fields drop in order).
struct Cluster {
    procs: Vec<Proc>,
    urls: Vec<String>,
    dirs: Vec<PathBuf>,
    /// Seconds from the first daemon's start to the cluster formed (every
    /// node knows all six, and in channels every node's channel is ready).
    formed_s: f64,
    _tmp: tempfile::TempDir,
}

/// Opens a daemon's store beside it, for checks (no compaction from here).
fn open_store(dir: &Path) -> Res<Store> {
    Ok(Store::open(
        dir,
        Options {
            auto_compact: None,
            ..Options::default()
        },
    )?)
}

/// Writes the channel table into `dir`'s store: channel `c{i}` is
/// `bench/s{i}` served by nodes `2i` and `2i + 1`.
fn write_table(dir: &Path, ids: &[NodeId]) -> Res<()> {
    let meta = Metadata::new(open_store(dir)?);
    let fp = chorus_store::channels::full_prefix()?;
    for c in 0..CHANNELS {
        let record = json!({
            "patterns": [format!("bench/s{c}")],
            "nodes": [ids[2 * c].to_string(), ids[2 * c + 1].to_string()],
        });
        meta.put_reserved(
            &fp,
            format!("c{c}").as_bytes(),
            PutValue::Bytes(record.to_string().into_bytes()),
            &PutOptions::default(),
        )?;
    }
    Ok(())
}

/// `GET /v1/cluster` of a node as JSON.
fn cluster_view(url: &str) -> Res<Value> {
    let (status, body) = Http::connect(url)?.request("GET", "/v1/cluster", b"")?;
    if status != 200 {
        return Err(format!("{url} /v1/cluster: {status}").into());
    }
    Ok(serde_json::from_slice(&body)?)
}

/// True when node `node` knows the five others as up members (a node does
/// not list itself) and, with channels, reports its channel ready.
fn formed(url: &str, node: usize, layout: Layout) -> Res<bool> {
    let view = cluster_view(url)?;
    let up = view["members"]
        .as_array()
        .map_or(0, |m| m.iter().filter(|m| m[1] == "up").count());
    if up < NODES - 1 {
        return Ok(false);
    }
    if layout == Layout::AllServing {
        return Ok(true);
    }
    let name = format!("c{}", node / 2);
    Ok(view["channels"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["name"] == name.as_str() && c["state"] == "ready")
    }))
}

fn start(cfg: &Cfg, bin: &Path, layout: Layout) -> Res<Cluster> {
    let tmp = cfg.tempdir(&format!("channels-{}", layout.name()))?;
    let dirs: Vec<PathBuf> = (0..NODES)
        .map(|i| tmp.path().join(format!("n{i}")))
        .collect();
    let create = Options {
        create: true,
        ..Options::default()
    };
    let ids: Vec<NodeId> = dirs
        .iter()
        .map(|d| Ok(Store::init(d, &create)?.0))
        .collect::<Res<_>>()?;
    if layout == Layout::Channels {
        for d in &dirs {
            write_table(d, &ids)?;
        }
    }
    let t = Instant::now();
    let first_gossip = free_port()?;
    let mut procs = Vec::with_capacity(NODES);
    let mut urls = Vec::with_capacity(NODES);
    for (i, dir) in dirs.iter().enumerate() {
        let gossip = if i == 0 { first_gossip } else { free_port()? };
        let http = free_port()?;
        let join = (i > 0).then_some(first_gossip);
        procs.push(serve(bin, dir, gossip, http, join, &[])?);
        urls.push(format!("127.0.0.1:{http}"));
    }
    for u in &urls {
        wait_http(u)?;
    }
    for (node, u) in urls.iter().enumerate() {
        while !formed(u, node, layout)? {
            if t.elapsed() > FORM_LIMIT {
                return Err(format!(
                    "{}: node {node} ({u}) did not see the cluster formed within {FORM_LIMIT:?}: {}",
                    layout.name(),
                    cluster_view(u)?
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(Cluster {
        procs,
        urls,
        dirs,
        formed_s: t.elapsed().as_secs_f64(),
        _tmp: tmp,
    })
}

/// The shared state of the clients.
struct Load {
    stop: AtomicBool,
    /// Acknowledged writes, per node.
    acked: Vec<AtomicU64>,
}

/// One client: PUTs into its node's channel until told to stop; returns
/// how many writes were acknowledged (keys `0..n` of its name).
fn client(url: String, node: usize, client: usize, load: Arc<Load>) -> Result<u64, String> {
    let mut http = Http::connect(&url).map_err(|e| format!("{url}: {e}"))?;
    let value = vec![b'v'; VALUE_LEN];
    let mut seq = 0u64;
    while !load.stop.load(Ordering::Relaxed) {
        let path = key_path(node / 2, &key_name(node, client, seq));
        let (status, body) = http
            .request("PUT", &path, &value)
            .map_err(|e| format!("PUT {path} on {url}: {e}"))?;
        if status != 200 {
            return Err(format!(
                "PUT {path} on {url}: {status} {}",
                String::from_utf8_lossy(&body)
            ));
        }
        seq += 1;
        load.acked[node].fetch_add(1, Ordering::Relaxed);
    }
    Ok(seq)
}

/// One reading of every counter the figures are differences of.
struct Reading {
    at: Instant,
    acked: Vec<u64>,
    daemon_cpu_s: f64,
    client_cpu_s: f64,
    /// `COUNTERS`, summed over the nodes.
    counters: Vec<f64>,
    /// The whole machine's (busy, iowait) CPU seconds: other processes on
    /// a shared machine show as busy beyond the daemons and the clients.
    machine_cpu_s: (f64, f64),
}

/// The machine's (busy, iowait) CPU seconds since boot, from the first
/// line of `/proc/stat` (user nice system idle iowait irq softirq steal).
fn machine_cpu_seconds() -> Res<(f64, f64)> {
    let text = std::fs::read_to_string("/proc/stat")?;
    let line = text.lines().next().ok_or("/proc/stat is empty")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let at = |i: usize| -> Res<f64> {
        Ok(*ticks.get(i).ok_or("/proc/stat's cpu line is too short")? as f64)
    };
    let busy = at(0)? + at(1)? + at(2)? + at(5)? + at(6)? + at(7)?;
    let hz = rustix::param::clock_ticks_per_second() as f64;
    Ok((busy / hz, at(4)? / hz))
}

/// The named samples of a node's `/metrics`, in the order of `names`
/// (0 for one it does not show).
fn metric_values(url: &str, names: &[&str]) -> Res<Vec<f64>> {
    let (status, body) = Http::connect(url)?.request("GET", "/metrics", b"")?;
    if status != 200 {
        return Err(format!("{url} /metrics: {status}").into());
    }
    let text = String::from_utf8_lossy(&body);
    let mut out = vec![0.0; names.len()];
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if let Some(i) = names.iter().position(|n| *n == name.trim()) {
            out[i] = value.trim().parse()?;
        }
    }
    Ok(out)
}

/// The daemons' counters read before and after the window: the first two
/// are the figures' (bytes to peers, store syncs), the rest explain them.
const COUNTERS: [&str; 12] = [
    "chorus_peer_bytes_sent_total",
    "chorus_store_syncs_total",
    "chorus_store_commits_total",
    "chorus_objects_received_total",
    "chorus_broadcasts_sent_total",
    "chorus_duplicates_total",
    "chorus_grafts_total",
    "chorus_keys_repaired_total",
    "chorus_exchanges_total",
    "chorus_frames_dropped_total",
    "chorus_unserved_objects_dropped_total",
    "chorus_unserved_frames_dropped_total",
];

fn read(cluster: &Cluster, load: &Load) -> Res<Reading> {
    let at = Instant::now();
    let acked = load
        .acked
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .collect();
    let mut daemon_cpu_s = 0.0;
    for p in &cluster.procs {
        daemon_cpu_s += proc_cpu_seconds(p.0.id())?;
    }
    let client_cpu_s = proc_cpu_seconds(std::process::id())?;
    let mut counters = vec![0.0; COUNTERS.len()];
    for u in &cluster.urls {
        for (sum, v) in counters.iter_mut().zip(metric_values(u, &COUNTERS)?) {
            *sum += v;
        }
    }
    Ok(Reading {
        at,
        acked,
        daemon_cpu_s,
        client_cpu_s,
        counters,
        machine_cpu_s: machine_cpu_seconds()?,
    })
}

/// What one configuration measured.
#[derive(Debug, Clone)]
struct Figures {
    /// Client connections to each node.
    conns: usize,
    writes_per_s: f64,
    /// Per node, acknowledged writes per second.
    node_writes_per_s: Vec<f64>,
    peer_bytes_per_write: f64,
    daemon_cpu_us_per_write: f64,
    client_cpu_us_per_write: f64,
    syncs_per_write: f64,
    /// CPU seconds per second of all daemons and the clients together.
    cores_busy: f64,
    /// CPU seconds per second of everything else on the machine (other
    /// users of a shared machine), and of the machine waiting on the disk.
    others_cores_busy: f64,
    iowait_cores: f64,
    /// `COUNTERS`' differences over the window, per write.
    counters_per_write: Vec<(&'static str, f64)>,
    formed_s: f64,
    /// Seconds from the end of the load to every member holding every key.
    caught_up_s: f64,
    keys_written: Vec<u64>,
    /// What the checks found wrong (empty: nothing).
    problems: Vec<String>,
    loadavg_before: String,
}

impl Figures {
    /// A counter of `COUNTERS` per write over the window (0 if absent).
    fn counter(&self, name: &str) -> f64 {
        self.counters_per_write
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0.0, |(_, v)| *v)
    }

    fn to_json(&self) -> Value {
        let counters: serde_json::Map<String, Value> = self
            .counters_per_write
            .iter()
            .map(|(n, v)| (n.to_string(), json!(v)))
            .collect();
        json!({
            "connections_per_node": self.conns,
            "writes_per_s": self.writes_per_s,
            "node_writes_per_s": self.node_writes_per_s,
            "peer_bytes_per_write": self.peer_bytes_per_write,
            "daemon_cpu_us_per_write": self.daemon_cpu_us_per_write,
            "client_cpu_us_per_write": self.client_cpu_us_per_write,
            "syncs_per_write": self.syncs_per_write,
            "cores_busy": self.cores_busy,
            "others_cores_busy": self.others_cores_busy,
            "iowait_cores": self.iowait_cores,
            "counters_per_write": counters,
            "formed_s": self.formed_s,
            "caught_up_s": self.caught_up_s,
            "keys_written_per_channel": self.keys_written,
            "problems": self.problems,
            "loadavg_before": self.loadavg_before,
        })
    }
}

fn figures(conns: usize, a: &Reading, b: &Reading) -> Figures {
    let secs = b.at.duration_since(a.at).as_secs_f64();
    let node: Vec<f64> = a
        .acked
        .iter()
        .zip(&b.acked)
        .map(|(x, y)| (y - x) as f64)
        .collect();
    let writes = node.iter().sum::<f64>().max(1.0);
    let cpu_daemons = b.daemon_cpu_s - a.daemon_cpu_s;
    let cpu_clients = b.client_cpu_s - a.client_cpu_s;
    let per_write: Vec<f64> = a
        .counters
        .iter()
        .zip(&b.counters)
        .map(|(x, y)| (y - x) / writes)
        .collect();
    Figures {
        conns,
        writes_per_s: writes / secs,
        node_writes_per_s: node.iter().map(|w| w / secs).collect(),
        peer_bytes_per_write: per_write[0],
        daemon_cpu_us_per_write: cpu_daemons / writes * 1e6,
        client_cpu_us_per_write: cpu_clients / writes * 1e6,
        syncs_per_write: per_write[1],
        cores_busy: (cpu_daemons + cpu_clients) / secs,
        others_cores_busy: ((b.machine_cpu_s.0 - a.machine_cpu_s.0) - cpu_daemons - cpu_clients)
            .max(0.0)
            / secs,
        iowait_cores: (b.machine_cpu_s.1 - a.machine_cpu_s.1) / secs,
        counters_per_write: COUNTERS.iter().copied().zip(per_write).collect(),
        formed_s: 0.0,
        caught_up_s: 0.0,
        keys_written: Vec::new(),
        problems: Vec::new(),
        loadavg_before: String::new(),
    }
}

/// Keys of channel `c` that node `dir` holds.
fn held(dir: &Path, c: usize) -> Res<usize> {
    Ok(open_store(dir)?.snapshot()?.len_in(&full_prefix(c)?))
}

/// Waits until every node serving channel `c` holds `written[c]` keys;
/// returns the seconds it took, or a problem per node that did not.
fn catch_up(cluster: &Cluster, layout: Layout, written: &[u64]) -> Res<(f64, Vec<String>)> {
    let t = Instant::now();
    loop {
        let mut behind = Vec::new();
        for (node, dir) in cluster.dirs.iter().enumerate() {
            for (c, want) in written.iter().enumerate() {
                if !layout.serves(node, c) {
                    continue;
                }
                let has = held(dir, c)? as u64;
                if has != *want {
                    behind.push(format!(
                        "node {node} holds {has} of the {want} keys written to bench/s{c}"
                    ));
                }
            }
        }
        if behind.is_empty() {
            return Ok((t.elapsed().as_secs_f64(), behind));
        }
        if t.elapsed() > CATCH_UP_LIMIT {
            let mut problems = vec![format!(
                "replication did not catch up within {CATCH_UP_LIMIT:?} of the load's end"
            )];
            problems.extend(behind);
            return Ok((t.elapsed().as_secs_f64(), problems));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Checks a sample over HTTP: the last key of every client on every node
/// serving its channel (present, with its value), and on every node that
/// does not serve it (absent or refused); and no key of a channel in a
/// non-member's store.
fn check(cluster: &Cluster, layout: Layout, last: &[Wrote]) -> Res<Vec<String>> {
    let mut problems = Vec::new();
    let value = vec![b'v'; VALUE_LEN];
    for (node, url) in cluster.urls.iter().enumerate() {
        let mut http = Http::connect(url)?;
        for &(writer, client, n) in last {
            let c = writer / 2;
            let path = key_path(c, &key_name(writer, client, n.saturating_sub(1)));
            let (status, body) = http.request("GET", &path, b"")?;
            let got: Option<Value> = serde_json::from_slice(&body).ok();
            let got_value = got
                .as_ref()
                .and_then(|v| v["values"][0]["value"].as_str())
                .map(|s| s.as_bytes() == value.as_slice());
            match (layout.serves(node, c), status) {
                (true, 200) if got_value == Some(true) => {}
                (true, _) => problems.push(format!(
                    "node {node} serves bench/s{c} but GET {path} answered {status} {}",
                    String::from_utf8_lossy(&body)
                )),
                (false, 200) => problems.push(format!(
                    "node {node} does not serve bench/s{c} but GET {path} found it: {}",
                    String::from_utf8_lossy(&body)
                )),
                (false, s) if s >= 500 => problems.push(format!(
                    "node {node}: GET {path} of a channel it does not serve failed: {s} {}",
                    String::from_utf8_lossy(&body)
                )),
                (false, _) => {}
            }
        }
    }
    for (node, dir) in cluster.dirs.iter().enumerate() {
        for c in (0..CHANNELS).filter(|c| !layout.serves(node, *c)) {
            let n = held(dir, c)?;
            if n != 0 {
                problems.push(format!(
                    "node {node} does not serve bench/s{c} but its store holds {n} of its keys"
                ));
            }
        }
    }
    Ok(problems)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A client that ran: its node, its number there, and how many writes it
/// had acknowledged (its keys `0..n`).
type Wrote = (usize, usize, u64);

/// A client's thread: its acknowledged writes, or why it stopped.
type Running = JoinHandle<Result<u64, String>>;

/// Starts the clients, measures the window after the warm-up, stops them.
fn drive(
    cluster: &Cluster,
    conns: usize,
    warmup: Duration,
    window: Duration,
) -> Res<(Figures, Vec<Wrote>)> {
    let load = Arc::new(Load {
        stop: AtomicBool::new(false),
        acked: (0..NODES).map(|_| AtomicU64::new(0)).collect(),
    });
    let mut clients: Vec<(usize, usize, Running)> = Vec::with_capacity(NODES * conns);
    for (node, url) in cluster.urls.iter().enumerate() {
        for c in 0..conns {
            let (url, load) = (url.clone(), Arc::clone(&load));
            clients.push((
                node,
                c,
                std::thread::spawn(move || client(url, node, c, load)),
            ));
        }
    }
    let measured = (|| -> Res<Figures> {
        std::thread::sleep(warmup);
        let before = read(cluster, &load)?;
        std::thread::sleep(window);
        let after = read(cluster, &load)?;
        Ok(figures(conns, &before, &after))
    })();
    load.stop.store(true, Ordering::Relaxed);
    let mut last = Vec::with_capacity(clients.len());
    let mut failed = Vec::new();
    for (node, c, h) in clients {
        match h.join() {
            Ok(Ok(n)) => last.push((node, c, n)),
            Ok(Err(e)) => failed.push(e),
            Err(_) => failed.push(format!("client {c} of node {node} panicked")),
        }
    }
    if !failed.is_empty() {
        return Err(format!("{} clients failed: {}", failed.len(), failed.join("; ")).into());
    }
    Ok((measured?, last))
}

/// One configuration, from fresh directories to the checks.
fn run_layout(
    cfg: &Cfg,
    bin: &Path,
    layout: Layout,
    conns: usize,
    (warmup, window): (Duration, Duration),
) -> Res<Figures> {
    let loadavg_before = loadavg();
    let cluster = start(cfg, bin, layout)?;
    eprintln!(
        "  {}: 6 daemons formed in {:.1} s; {conns} connections per node, {warmup:?} warm-up + {window:?}",
        layout.name(),
        cluster.formed_s
    );
    let (mut f, last) = drive(&cluster, conns, warmup, window)?;
    let mut written = vec![0u64; CHANNELS];
    for &(node, _, n) in &last {
        written[node / 2] += n;
    }
    let (caught_up_s, mut problems) = catch_up(&cluster, layout, &written)?;
    problems.extend(check(&cluster, layout, &last)?);
    for p in &problems {
        eprintln!("  {}: PROBLEM: {p}", layout.name());
    }
    eprintln!(
        "  {}: {:.0} writes/s, {:.0} peer bytes/write, {:.0} us daemon CPU/write, {:.2} cores busy (+{:.2} by other processes, {:.2} in iowait), caught up {caught_up_s:.1} s after",
        layout.name(),
        f.writes_per_s,
        f.peer_bytes_per_write,
        f.daemon_cpu_us_per_write,
        f.cores_busy,
        f.others_cores_busy,
        f.iowait_cores
    );
    f.formed_s = cluster.formed_s;
    f.caught_up_s = caught_up_s;
    f.keys_written = written;
    f.problems = problems;
    f.loadavg_before = loadavg_before;
    Ok(f)
}

pub(crate) fn run(cfg: &Cfg) -> Res<Outcome> {
    let bin = chorus_binary()?;
    let (rounds, warmup, window) = if cfg.quick {
        (1, Duration::from_secs(1), Duration::from_secs(3))
    } else {
        (3, Duration::from_secs(3), Duration::from_secs(10))
    };
    let window = match cfg.seconds {
        None => window,
        Some(s) if s.is_finite() && (0.5..=3600.0).contains(&s) => Duration::from_secs_f64(s),
        Some(s) => {
            return Err(format!(
                "--seconds {s}: give the measured window in seconds, from 0.5 to 3600"
            )
            .into());
        }
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    eprintln!("channels: {NODES} daemons and their clients share {cores} cores; {rounds} rounds");
    let mut runs: Vec<Pair> = Vec::with_capacity(rounds * LOADS.len());
    for round in 0..rounds {
        for (load, conns) in LOADS.into_iter().enumerate() {
            // Alternate which configuration goes first, per load.
            let order = if (round + load) % 2 == 0 {
                [Layout::AllServing, Layout::Channels]
            } else {
                [Layout::Channels, Layout::AllServing]
            };
            let mut got = Vec::with_capacity(2);
            for layout in order {
                eprintln!(
                    "channels: round {} of {rounds}, {}, {conns} connections per node",
                    round + 1,
                    layout.name()
                );
                got.push((
                    layout,
                    run_layout(cfg, &bin, layout, conns, (warmup, window))?,
                ));
            }
            let take = |l: Layout| got.iter().find(|(x, _)| *x == l).map(|(_, f)| f.clone());
            let (Some(all), Some(channels)) = (take(Layout::AllServing), take(Layout::Channels))
            else {
                return Err("a round lost one of its configurations".into());
            };
            runs.push(Pair { all, channels });
        }
    }
    Ok(outcome(&runs, cores, window))
}

/// One round at one load: both configurations.
struct Pair {
    all: Figures,
    channels: Figures,
}

/// A figure of a configuration.
type Pick = fn(&Figures) -> f64;

/// The figures of one load over its rounds.
struct Rounds<'a>(Vec<&'a Pair>);

impl Rounds<'_> {
    /// `x / y / z` over the rounds, of channels (`chan`) or all serving.
    fn each(&self, f: Pick, chan: bool, prec: usize) -> String {
        self.0
            .iter()
            .map(|p| format!("{:.prec$}", f(if chan { &p.channels } else { &p.all })))
            .collect::<Vec<_>>()
            .join(" / ")
    }

    /// The median over rounds of channels / all serving.
    fn ratio(&self, f: Pick) -> f64 {
        let v: Vec<f64> = self.0.iter().map(|p| f(&p.channels) / f(&p.all)).collect();
        median(&v)
    }

    fn median(&self, f: Pick, chan: bool) -> f64 {
        let v: Vec<f64> = self
            .0
            .iter()
            .map(|p| f(if chan { &p.channels } else { &p.all }))
            .collect();
        median(&v)
    }

    fn rows(&self, conns: usize, cores: usize) -> Vec<Row> {
        let peer = "6 nodes all serving everything";
        let tput: Pick = |f| f.writes_per_s;
        let bytes: Pick = |f| f.peer_bytes_per_write;
        let cpu: Pick = |f| f.daemon_cpu_us_per_write;
        let syncs: Pick = |f| f.syncs_per_write;
        let clients: Pick = |f| f.client_cpu_us_per_write;
        let busy: Pick = |f| f.cores_busy;
        let others: Pick = |f| f.others_cores_busy;
        let load = format!("{} conns", NODES * conns);
        // Costs: the ratio column keeps the table's convention (> 1:
        // channels better), so it is all serving / channels.
        let cost = |name: &str, f: Pick, unit: &str, prec: usize| {
            Row::ratio_goal(
                &format!("channels, {load}: {name} (ratio: all / channels)"),
                format!("{}{unit}", self.each(f, true, prec)),
                peer,
                format!("{}{unit}", self.each(f, false, prec)),
                1.0 / self.ratio(f),
                None,
            )
        };
        let context = |chan: bool| {
            format!(
                "{} us; {} cores; {}",
                self.each(clients, chan, 0),
                self.each(busy, chan, 2),
                self.each(others, chan, 2)
            )
        };
        let broadcast = |chan: bool| {
            [
                self.each(|f| f.counter("chorus_objects_received_total"), chan, 2),
                self.each(|f| f.counter("chorus_duplicates_total"), chan, 2),
                self.each(|f| f.counter("chorus_grafts_total"), chan, 2),
                self.each(|f| f.counter("chorus_frames_dropped_total"), chan, 3),
            ]
            .join("; ")
        };
        vec![
            Row::ratio_goal(
                &format!("channels, {load}: cluster PUT throughput (6 daemons, {cores} cores)"),
                format!("{}/s", self.each(tput, true, 0)),
                peer,
                format!("{}/s", self.each(tput, false, 0)),
                self.ratio(tput),
                Some(THROUGHPUT_GOAL),
            ),
            cost("bytes between peers per write", bytes, " B", 0),
            cost("daemons' CPU per write", cpu, " us", 0),
            cost("store syncs per write", syncs, "", 2),
            Row::context(
                &format!(
                    "channels, {load}: clients' CPU per write; cores busy (daemons + clients; other processes)"
                ),
                context(true),
                peer,
                context(false),
            ),
            Row::context(
                &format!(
                    "channels, {load}: per write, objects received / duplicates / grafts / frames dropped (all nodes)"
                ),
                broadcast(true),
                peer,
                broadcast(false),
            ),
        ]
    }

    fn to_json(&self) -> Value {
        let fig = |chan: bool| {
            json!({
                "writes_per_s": self.median(|f| f.writes_per_s, chan),
                "peer_bytes_per_write": self.median(|f| f.peer_bytes_per_write, chan),
                "daemon_cpu_us_per_write": self.median(|f| f.daemon_cpu_us_per_write, chan),
                "syncs_per_write": self.median(|f| f.syncs_per_write, chan),
            })
        };
        json!({
            "all_serving": fig(false),
            "channels": fig(true),
            "ratios_channels_over_all": {
                "throughput": self.ratio(|f| f.writes_per_s),
                "peer_bytes_per_write": self.ratio(|f| f.peer_bytes_per_write),
                "daemon_cpu_per_write": self.ratio(|f| f.daemon_cpu_us_per_write),
                "syncs_per_write": self.ratio(|f| f.syncs_per_write),
            },
            "rounds": self.0.iter().map(|p| json!({
                "all_serving": p.all.to_json(),
                "channels": p.channels.to_json(),
            })).collect::<Vec<_>>(),
        })
    }
}

fn outcome(runs: &[Pair], cores: usize, window: Duration) -> Outcome {
    let mut rows = Vec::new();
    let mut loads = serde_json::Map::new();
    for conns in LOADS {
        let of_load = Rounds(runs.iter().filter(|p| p.all.conns == conns).collect());
        rows.extend(of_load.rows(conns, cores));
        loads.insert(format!("{}_connections", NODES * conns), of_load.to_json());
    }
    let problems: Vec<String> = runs
        .iter()
        .flat_map(|p| {
            let all = p
                .all
                .problems
                .iter()
                .map(|x| format!("all serving, {} conns/node: {x}", p.all.conns));
            let ch = p
                .channels
                .problems
                .iter()
                .map(|x| format!("channels, {} conns/node: {x}", p.channels.conns));
            all.chain(ch)
        })
        .collect();
    rows.push(Row::absolute(
        "channels: a channel's keys only on its members; every member caught up",
        if problems.is_empty() {
            "checked after every run".to_string()
        } else {
            format!("{} problems: {}", problems.len(), problems.join("; "))
        },
        "6 nodes all serving everything",
        "every node caught up".to_string(),
        "no key on a non-member, none missing",
        problems.is_empty(),
    ));
    let raw = json!({
        "nodes": NODES,
        "channels": CHANNELS,
        "value_bytes": VALUE_LEN,
        "window_s": window.as_secs_f64(),
        "cores": cores,
        "note": format!("{NODES} daemons and their client threads share {cores} cores: \
                 the throughput ratio is bounded by CPU per write (clients included), \
                 which is what channels save"),
        "loads": loads,
        "problems": problems,
    });
    Outcome { rows, raw }
}
