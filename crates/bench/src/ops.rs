//! `ops`: operation logs. Pushes per second for `counter` and
//! `json-merge` from one and from four processes onto one path; the time
//! to reduce a log of 100,000 operations before and after pruning; watch
//! latency from a commit in one process to the callback in another.
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
use crate::harness::{Cfg, Kid, Outcome, Res, Row, fmt_ns, fmt_rate, hear, quantile, say, wall_ns};

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
