//! `chorus-bench`: measures Chorus side by side with SQLite (WAL mode) and
//! LMDB (heed) in the same run, on the same filesystem, and prints a
//! markdown table of figures, ratios and goals. Speed goals live here and in
//! BENCHMARKS.md, never in tests.
//!
//! ```text
//! chorus-bench [all|read|commit|threads|procs|open|visibility|meta|cluster|antientropy|channels|docs|docs-conflicts|ops|ops-history|compaction|watch-fanout|attack] [--quick] [--json FILE] [--dir DIR]
//!              [--streams N] [--rate N] [--seconds S]
//! ```

mod attack;
mod channels;
mod cluster;
mod commit;
mod compaction;
mod docs;
mod docs_conflicts;
mod engines;
mod harness;
mod meta;
mod open;
mod ops;
mod procs;
mod read;
mod threads;
mod visibility;
mod watch;
mod zmqload;

use std::path::PathBuf;
use std::time::Instant;

use harness::{Cfg, Outcome, Res, Row, print_table};

const USAGE: &str = "usage: chorus-bench [all|read|commit|threads|procs|open|visibility|meta|cluster|antientropy|channels|docs|docs-conflicts|ops|ops-history|compaction|watch-fanout|attack] [--quick] [--json FILE] [--dir DIR]
       [--streams N] [--rate N] [--seconds S]

  all         run every benchmark (the default)
  read        point reads in-process: Chorus get vs LMDB vs SQLite WAL
  commit      durable single-key commits, 1 thread (+ fdatasync floor)
  threads     8 threads committing in one process
  procs       4 processes committing into one store, then verify nothing lost
  open        open a store of 1,000,000 keys in a fresh process: time and memory
  visibility  how soon another process sees a commit
  meta        metadata API: get (1 value, 3 siblings + lww) vs engine get,
              iterate 1,000,000 keys vs SQLite, object size for 1/2/5 writers
  cluster     (not in all) 3 chorus serve nodes vs a 3-member etcd over HTTP:
              PUT/GET latency, visibility on the other nodes, PUT throughput
              and server CPU per PUT (16 conns), syncs per write (8 conns);
              needs `cargo build --release -p chorus-cli`; installs
              etcd-server with apt-get if etcd is not on PATH
  antientropy (not in all) two chorus serve daemons whose stores of 1,000,000
              keys differ in 1%: time to equal hashes, bytes between them
  channels    (not in all) 6 chorus serve daemons, all serving everything
              beside 3 channels of 2 nodes (issue 19), 3 rounds: cluster PUT
              throughput from 24 and 96 conns, peer bytes, CPU and syncs per write,
              and that a channel's keys are on its members only; needs
              `cargo build --release -p chorus-cli` (--seconds S: the window)

  docs        (not in all) the document store beside multiprocess-store (npm,
              installed by the run; needs node and npm): create, get and
              update of 1 KiB documents from 1 and 4 processes, and one
              document's size after 10,000 updates
  docs-conflicts (not in all) one document with 100 / 10,000 / 1,000,000
              conflicting revisions: time and log bytes per update on top
              of the winner, process memory

  ops         (not in all) operation logs: pushes/s (counter, json-merge; 1 and
              4 processes on one path), reducing 100,000 ops before and
              after pruning, watch latency across processes
  ops-history (not in all) counter pushes with 100 / 10,000 / 100,000 ops of
              history (1 and 4 processes) beside plain puts of one key, and
              log bytes per push beside the operation's record

  compaction  (not in all) 1,000 keys overwritten 1,000,000 times with
              automatic compaction on, then off (SyncMode::Never): largest
              log against 3x live + 64 MiB, commit latency p50/p99/max

  watch-fanout (not in all) one chorus serve node, 1,000 SSE streams on
              /v1/watch: node CPU with no writes, then 1,000 writes/s for
              10 s: every event on every stream, delivery latency p50/p99;
              needs `cargo build --release -p chorus-cli`

  attack      (not in all) one chorus serve node per resource attack of issue
              16 (idle gossip connections, huge-frame announcers, idle SSE
              watches, refused long-URL requests, slow-reducer log reads,
              old-cursor sync pulls): RSS and CPU beside the same node idle;
              needs `cargo build --release -p chorus-cli`

  --quick     about 10x smaller counts (smoke run)
  --json FILE also write the raw results as JSON
  --dir DIR   where to create the temporary stores (default: the system temp dir)
  --streams N, --rate N, --seconds S
              watch-fanout: streams, writes per second, seconds per phase;
              attack and channels: --seconds is the window of each measurement (10)";

const BENCHES: [&str; 7] = [
    "read",
    "commit",
    "threads",
    "procs",
    "open",
    "visibility",
    "meta",
];

/// Benchmarks run only when named: they start daemons or need a peer
/// installed from outside Rust.
const EXTRA: [&str; 10] = [
    "cluster",
    "antientropy",
    "channels",
    "docs",
    "docs-conflicts",
    "ops",
    "ops-history",
    "compaction",
    "watch-fanout",
    "attack",
];

fn run_one(name: &str, cfg: &Cfg) -> Res<Outcome> {
    match name {
        "read" => read::run(cfg),
        "commit" => commit::run(cfg),
        "threads" => threads::run(cfg),
        "procs" => procs::run(cfg),
        "open" => open::run(cfg),
        "visibility" => visibility::run(cfg),
        "meta" => meta::run(cfg),
        "cluster" => cluster::run(cfg),
        "antientropy" => cluster::run_ae(cfg),
        "channels" => channels::run(cfg),
        "docs" => docs::run(cfg),
        "docs-conflicts" => docs_conflicts::run(cfg),
        "ops" => ops::run(cfg),
        "ops-history" => ops::run_history(cfg),
        "compaction" => compaction::run(cfg),
        "watch-fanout" => watch::run(cfg),
        "attack" => attack::run(cfg),
        other => Err(format!("unknown benchmark {other:?}\n{USAGE}").into()),
    }
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("chorus-bench: error: {e}");
        std::process::exit(1);
    }
}

fn real_main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Hidden subcommands: the children the benchmarks start.
    match args.first().map(String::as_str) {
        Some("__commit") => return procs::child(&args[1..]),
        Some("__open") => return open::child(&args[1..]),
        Some("__writer") => return visibility::child(&args[1..]),
        Some("__docs") => return docs::child(&args[1..]),
        Some("__ops") => return ops::child(&args[1..]),
        Some("__zmq-load") => return zmqload::child(&args[1..]),
        _ => {}
    }

    let mut which: Option<String> = None;
    let mut quick = false;
    let mut json: Option<PathBuf> = None;
    let mut dir: Option<PathBuf> = None;
    let (mut streams, mut rate, mut seconds) = (None, None, None);
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--json" => json = Some(it.next().ok_or("--json needs a FILE")?.into()),
            "--dir" => dir = Some(it.next().ok_or("--dir needs a DIR")?.into()),
            "--streams" => streams = Some(it.next().ok_or("--streams needs N")?.parse()?),
            "--rate" => rate = Some(it.next().ok_or("--rate needs N")?.parse()?),
            "--seconds" => seconds = Some(it.next().ok_or("--seconds needs S")?.parse()?),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            s if s.starts_with('-') => return Err(format!("unknown option {s}\n{USAGE}").into()),
            s if which.is_none() => which = Some(s.to_string()),
            s => return Err(format!("unexpected argument {s}\n{USAGE}").into()),
        }
    }
    let which = which.unwrap_or_else(|| "all".to_string());
    let names: Vec<&str> = if which == "all" {
        BENCHES.to_vec()
    } else if BENCHES.contains(&which.as_str()) || EXTRA.contains(&which.as_str()) {
        vec![which.as_str()]
    } else {
        return Err(format!("unknown benchmark {which:?}\n{USAGE}").into());
    };

    let base = dir.unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base)?;
    let cfg = Cfg {
        quick,
        base,
        streams,
        rate,
        seconds,
    };
    let machine = harness::machine(&cfg.base);
    eprintln!(
        "chorus-bench{}: {} cpus ({}), temp dir {} on {} ({}), SQLite {}, LMDB {}",
        if quick { " --quick" } else { "" },
        machine["nproc"],
        machine["cpu"].as_str().unwrap_or("?"),
        machine["dir"].as_str().unwrap_or("?"),
        machine["fs"].as_str().unwrap_or("?"),
        machine["device"].as_str().unwrap_or("?"),
        machine["sqlite"].as_str().unwrap_or("?"),
        machine["lmdb"].as_str().unwrap_or("?"),
    );

    let started = Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    let mut raw = serde_json::Map::new();
    for name in names {
        let t = Instant::now();
        let out = run_one(name, &cfg)?;
        eprintln!("{name}: done in {:.1} s", t.elapsed().as_secs_f64());
        rows.extend(out.rows);
        raw.insert(name.to_string(), out.raw);
    }
    print_table(&rows);
    let total_s = started.elapsed().as_secs_f64();
    eprintln!("total: {total_s:.1} s");

    if let Some(path) = json {
        let doc = serde_json::json!({
            "quick": quick,
            "machine": machine,
            "unix_time": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            "total_seconds": total_s,
            "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
            "raw": raw,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n")?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
