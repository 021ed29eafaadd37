//! `ops`: operation logs. Pushes per second for `counter` and
//! `json-merge` from one and from four processes onto one path; the time
//! to reduce a log of 100,000 operations before and after pruning; watch
//! latency from a commit in one process to the callback in another.
//!
//! `ops-history`: counter pushes onto one path from one and from four
//! processes with 100, 10,000 and 100,000 operations already in the log,
//! beside plain `put`s of one key in the same sync mode, and the log bytes
//! each push appends beside the operation's own encoded record.
//!
//! No peer runs beside these figures: GiG.fs, where operation logs come
//! from, is not packaged for any registry this machine reaches.

use std::path::Path;
use std::time::Instant;

use chorus_core::FullPrefix;
use chorus_core::oplog::{Op, OpLog, built_in};
use chorus_store::oplog::Oplogs;
use chorus_store::watch::Watched;
use chorus_store::{Metadata, SyncMode};
use serde_json::json;

use crate::engines;
use crate::harness::{
    Cfg, Kid, Outcome, Res, Row, fmt_ns, fmt_rate, hear, median, quantile, say, wall_ns,
};

fn fp() -> Res<FullPrefix> {
    Ok(FullPrefix::parse("bench/ops")?)
}

fn payload(kind: &str, id: usize, i: usize) -> serde_json::Value {
    match kind {
        "json-merge" => json!({format!("p{id}"): {"n": i, "at": i % 7}}),
        _ => json!(1),
    }
}

/// Hidden subcommand `__ops MODE PATH ID COUNT [KIND]`: `push` pushes
/// COUNT operations of KIND onto `shared` after a `go` line; `commit`
/// pushes one counter op per line received and says `ack WALL_NS` after
/// each.
pub(crate) fn child(args: &[String]) -> Res<()> {
    let [mode, path, id, count, rest @ ..] = args else {
        return Err("usage: __ops MODE PATH ID COUNT [KIND]".into());
    };
    let id: usize = id.parse()?;
    let count: usize = count.parse()?;
    let meta = Metadata::new(engines::chorus(Path::new(path), SyncMode::Always)?);
    let ops = Oplogs::new(&meta);
    let fp = fp()?;
    match mode.as_str() {
        "push" => {
            let kind = rest.first().map_or("counter", String::as_str);
            say("ready")?;
            hear()?;
            for i in 0..count {
                ops.push(&fp, "shared", kind, payload(kind, id, i))?;
            }
            say("done")
        }
        "history" | "put" => {
            // A long-lived process: its first read of the path (folding the
            // history once) happens before the clock starts, and is
            // reported.
            let start = Instant::now();
            ops.get(&fp, "shared")?;
            say(&format!("ready {}", start.elapsed().as_nanos()))?;
            hear()?;
            for i in 0..count {
                if mode == "put" {
                    meta.put(
                        &fp,
                        b"plain",
                        chorus_store::PutValue::Bytes(format!("{id}-{i}").into_bytes()),
                        &chorus_store::PutOptions::default(),
                    )?;
                } else {
                    ops.push(&fp, "shared", "counter", json!(1))?;
                }
            }
            say("done")
        }
        "commit" => {
            say("ready")?;
            while hear()?.is_some() {
                ops.push(&fp, "watched", "counter", json!(1))?;
                say(&format!("ack {}", wall_ns()))?;
            }
            Ok(())
        }
        other => Err(format!("unknown mode {other}").into()),
    }
}

fn pushes(cfg: &Cfg, kind: &str, procs: usize, count: usize) -> Res<f64> {
    let dir = cfg.tempdir("ops")?;
    engines::chorus(dir.path(), SyncMode::Always)?;
    let path = dir.path().display().to_string();
    let mut kids = (0..procs)
        .map(|id| {
            Kid::spawn(&[
                "__ops".into(),
                "push".into(),
                path.clone(),
                id.to_string(),
                count.to_string(),
                kind.into(),
            ])
        })
        .collect::<Res<Vec<_>>>()?;
    for k in &mut kids {
        k.expect("ready")?;
    }
    let start = Instant::now();
    for k in &mut kids {
        k.send("go")?;
    }
    for k in &mut kids {
        k.expect("done")?;
    }
    let rate = (procs * count) as f64 / start.elapsed().as_secs_f64();
    for k in kids {
        k.finish()?;
    }
    Ok(rate)
}

/// One timed run of `__ops MODE` children on a store of `dir`: pushes (or
/// puts) per second, the children's first-read time, and log bytes added.
fn timed(dir: &Path, mode: &str, procs: usize, per: usize) -> Res<(f64, f64, u64)> {
    let path = dir.display().to_string();
    let mut kids = (0..procs)
        .map(|id| {
            Kid::spawn(&[
                "__ops".into(),
                mode.into(),
                path.clone(),
                id.to_string(),
                per.to_string(),
            ])
        })
        .collect::<Res<Vec<_>>>()?;
    let mut first_read: f64 = 0.0;
    for k in &mut kids {
        first_read = first_read.max(k.expect("ready")?.parse::<f64>()?);
    }
    let log_before = engines::chorus(dir, SyncMode::Always)?.status()?.log_bytes;
    let start = Instant::now();
    for k in &mut kids {
        k.send("go")?;
    }
    for k in &mut kids {
        k.expect("done")?;
    }
    let rate = (procs * per) as f64 / start.elapsed().as_secs_f64();
    for k in kids {
        k.finish()?;
    }
    let log_after = engines::chorus(dir, SyncMode::Always)?.status()?.log_bytes;
    Ok((rate, first_read, log_after.saturating_sub(log_before)))
}

/// One run of `ops-history`: a fresh store with `history` operations on
/// the path, then `procs` processes pushing `per` each.
fn history_run(cfg: &Cfg, history: usize, procs: usize, per: usize) -> Res<(f64, f64, u64)> {
    let fp = fp()?;
    let dir = cfg.tempdir("ops-history")?;
    {
        // The history, written fast (no sync) by one process.
        let meta = Metadata::new(engines::chorus(dir.path(), SyncMode::Never)?);
        let ops = Oplogs::new(&meta);
        for _ in 0..history.saturating_sub(1) {
            ops.push(&fp, "shared", "counter", json!(1))?;
        }
    }
    // The last one synced: the history's bytes are on disk before the
    // clock starts, not flushed by the first timed sync.
    Oplogs::new(&Metadata::new(engines::chorus(
        dir.path(),
        SyncMode::Always,
    )?))
    .push(&fp, "shared", "counter", json!(1))?;
    let run = timed(dir.path(), "history", procs, per)?;
    let value = Oplogs::new(&Metadata::new(engines::chorus(
        dir.path(),
        SyncMode::Always,
    )?))
    .get(&fp, "shared")?;
    if value != json!(history + procs * per) {
        return Err(format!("the counter is {value}, expected {}", history + procs * per).into());
    }
    Ok(run)
}

/// `ops-history`: see the module documentation.
pub(crate) fn run_history(cfg: &Cfg) -> Res<Outcome> {
    let mut rows = Vec::new();
    let mut raw = serde_json::Map::new();
    let measured = cfg.n(2000);
    let sample = Op::new("counter", 1 << 52, &"0".repeat(32), json!(1));
    let record_bytes = sample.encode_record("counter").len();
    let histories = [100usize, cfg.n(10_000), cfg.n(100_000)];
    let reps = cfg.reps(3);
    for procs in [1usize, 4] {
        let per = measured / procs;
        // Each figure is the median of `reps` runs; the runs of every
        // history and of the plain puts take turns, so a slow spell of
        // the disk falls on all of them.
        let mut plains = Vec::new();
        let mut runs: Vec<Vec<(f64, f64, u64)>> = vec![Vec::new(); histories.len()];
        for _ in 0..reps {
            let plain_dir = cfg.tempdir("ops-plain")?;
            engines::chorus(plain_dir.path(), SyncMode::Always)?;
            plains.push(timed(plain_dir.path(), "put", procs, per)?.0);
            for (h, history) in histories.iter().enumerate() {
                runs[h].push(history_run(cfg, *history, procs, per)?);
            }
        }
        let plain = median(&plains);
        raw.insert(format!("plain_put_{procs}"), json!(plains));
        let mut at_small = None;
        for (h, history) in histories.iter().enumerate() {
            let history = *history;
            let rates: Vec<f64> = runs[h].iter().map(|r| r.0).collect();
            let rate = median(&rates);
            let first_read = median(&runs[h].iter().map(|r| r.1).collect::<Vec<_>>());
            let added = median(&runs[h].iter().map(|r| r.2 as f64).collect::<Vec<_>>()) as u64;
            let per_push = added as f64 / (procs * per) as f64;
            let small = *at_small.get_or_insert(rate);
            raw.insert(
                format!("history_{procs}_{history}"),
                json!({"rates": rates, "first_read_ns": first_read, "log_bytes_per_push": per_push,
                       "record_bytes": record_bytes, "plain_put": plain}),
            );
            let label =
                format!("counter push, {procs} proc, {history} ops of history, sync=always");
            rows.push(Row::ratio_goal(
                &format!("ops-history: {label}, vs 100 ops of history"),
                fmt_rate(rate),
                "same, 100 ops of history",
                fmt_rate(small),
                rate / small,
                Some(0.9),
            ));
            rows.push(Row::ratio_goal(
                &format!("ops-history: {label}, vs a plain put of one key"),
                fmt_rate(rate),
                "plain put, same sync, same procs",
                fmt_rate(plain),
                rate / plain,
                Some(0.5),
            ));
            rows.push(Row::absolute(
                &format!("ops-history: log bytes per push, {procs} proc, {history} ops of history"),
                format!(
                    "{per_push:.0} B (record {record_bytes} B, {:.2}x)",
                    per_push / record_bytes as f64
                ),
                "none",
                "-".into(),
                "<= 3x the record",
                per_push <= 3.0 * record_bytes as f64,
            ));
            rows.push(Row::context(
                &format!(
                    "ops-history: a process's first read of the path, {history} ops of history"
                ),
                fmt_ns(first_read),
                "none",
                "-".into(),
            ));
        }
    }
    Ok(Outcome {
        rows,
        raw: serde_json::Value::Object(raw),
    })
}

pub(crate) fn run(cfg: &Cfg) -> Res<Outcome> {
    let mut rows = Vec::new();
    let mut raw = serde_json::Map::new();
    // Pushes onto one path: every push rewrites the path's log, so the
    // count is kept where the log stays small enough to matter little.
    let count = cfg.n(1000);
    for kind in ["counter", "json-merge"] {
        for procs in [1usize, 4] {
            let per = count / procs;
            let rate = pushes(cfg, kind, procs, per)?;
            raw.insert(format!("push_{kind}_{procs}"), json!(rate));
            rows.push(Row::context(
                &format!("ops: push {kind}, {procs} proc, one path, sync=always ({count} ops)"),
                fmt_rate(rate),
                "none",
                "-".into(),
            ));
        }
    }
    // Reduce a log of 100,000 operations, before and after pruning.
    let n = cfg.n(100_000);
    let counter = built_in("counter").ok_or("no counter")?;
    let mut log = OpLog::new("counter");
    for i in 0..n {
        if log
            .push(Op::new("counter", i as u64 + 1, "node", json!(1)))
            .is_some()
        {
            return Err("an op was late".into());
        }
    }
    let time = |log: &OpLog| -> Res<f64> {
        let start = Instant::now();
        let mut v = json!(null);
        for _ in 0..5 {
            v = log.value(&*counter)?;
        }
        if v != json!(n) {
            return Err(format!("reduced to {v}, expected {n}").into());
        }
        Ok(start.elapsed().as_nanos() as f64 / 5.0)
    };
    let before = time(&log)?;
    let encoded_before = log.encode().len();
    let upto = log.ops().nth(n - 101).map(Op::key).ok_or("short log")?;
    log.prune(&upto, &*counter)?;
    let after = time(&log)?;
    let encoded_after = log.encode().len();
    raw.insert(
        "reduce_ns".into(),
        json!({"before": before, "after": after, "ops": n,
        "bytes_before": encoded_before, "bytes_after": encoded_after}),
    );
    rows.push(Row::context(
        &format!("ops: reduce a {n}-op counter log, before pruning"),
        format!("{} ({encoded_before} B stored)", fmt_ns(before)),
        "none",
        "-".into(),
    ));
    rows.push(Row::context(
        "ops: the same log after pruning (100 ops left)",
        format!("{} ({encoded_after} B stored)", fmt_ns(after)),
        "none",
        "-".into(),
    ));
    // Watch latency across processes.
    let dir = cfg.tempdir("ops-watch")?;
    let meta = Metadata::new(engines::chorus(dir.path(), SyncMode::Always)?);
    let mut watcher = meta.store().watcher(Box::new(|_, key| key == b"watched"))?;
    let mut kid = Kid::spawn(&[
        "__ops".into(),
        "commit".into(),
        dir.path().display().to_string(),
        "0".into(),
        "0".into(),
    ])?;
    kid.expect("ready")?;
    let rounds = cfg.n(500);
    let mut lat = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        kid.send("go")?;
        let event = loop {
            match watcher.next(std::time::Duration::from_secs(10))? {
                Some(Watched::Change(_)) => break wall_ns(),
                Some(Watched::Gap { .. }) => continue,
                None => return Err("no watch event within 10 s".into()),
            }
        };
        let acked: i128 = kid.expect("ack")?.parse()?;
        lat.push((event - acked) as f64);
    }
    kid.finish()?;
    let (p50, p99) = (quantile(&lat, 0.5), quantile(&lat, 0.99));
    raw.insert(
        "watch_latency_ns".into(),
        json!({"p50": p50, "p99": p99, "rounds": rounds}),
    );
    rows.push(Row::context(
        "ops: watch latency, commit acked in one process -> event in another, p50",
        fmt_ns(p50),
        "none",
        "-".into(),
    ));
    rows.push(Row::context(
        "ops: watch latency, p99",
        fmt_ns(p99),
        "none",
        "-".into(),
    ));
    Ok(Outcome {
        rows,
        raw: serde_json::Value::Object(raw),
    })
}
