//! `compaction` (not in `all`): 1,000 keys overwritten 1,000,000 times
//! (100,000 with `--quick`) with automatic compaction on, at its defaults,
//! then the same with it off, both in `SyncMode::Never`: with a sync per
//! commit the disk's flush time (milliseconds on a virtual disk) would
//! hide the pause, and 2,000,000 synced commits take hours there. The log's
//! committed length is sampled after every commit; the goal is that it
//! never exceeds 3x the live data + the slack (64 MiB, the default; 6.4 MiB
//! with `--quick`, so that the smaller run compacts too). Commit latency
//! (p50/p99/max) is reported beside the run without automatic compaction:
//! the commit that triggers a compaction pays its pause.

use std::time::Instant;

use chorus_store::{AutoCompact, Options, Status, Store, SyncMode};

use crate::engines;
use crate::harness::{Cfg, Outcome, Res, Row, fmt_mib, fmt_ns, fmt_ratio, key, quantile, value};

const KEYS: u64 = 1_000;

/// What one run measured.
struct Run {
    latencies_ns: Vec<f64>,
    max_log: u64,
    /// Live bytes when the log was longest.
    live_at_max: u64,
    /// (commit number, committed log length), about 50 points.
    samples: Vec<(u64, u64)>,
    last: Status,
    compactions: u64,
    longest_pause_ns: f64,
    seconds: f64,
}

fn run_one(store: &Store, overwrites: u64) -> Res<Run> {
    let fp = engines::fp()?;
    let mut latencies_ns = Vec::with_capacity(overwrites as usize);
    let (mut max_log, mut live_at_max) = (0u64, 0u64);
    let mut samples = Vec::new();
    let every = (overwrites / 50).max(1);
    let started = Instant::now();
    for i in 0..overwrites {
        let (k, v) = (key(i % KEYS), value(i));
        let t = Instant::now();
        store.put(&fp, &k, &v)?;
        latencies_ns.push(t.elapsed().as_nanos() as f64);
        let s = store.status()?;
        if s.log_bytes > max_log {
            max_log = s.log_bytes;
            live_at_max = s.live_bytes;
        }
        if i % every == 0 {
            samples.push((i, s.log_bytes));
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let stats = store.write_stats();
    Ok(Run {
        latencies_ns,
        max_log,
        live_at_max,
        samples,
        last: store.status()?,
        compactions: stats.auto_compactions,
        longest_pause_ns: stats.longest_auto_compaction.as_nanos() as f64,
        seconds,
    })
}

fn open(dir: &std::path::Path, auto_compact: Option<AutoCompact>) -> Res<Store> {
    Ok(Store::open(
        dir,
        Options {
            create: true,
            sync: SyncMode::Never,
            lock_timeout: std::time::Duration::from_secs(120),
            auto_compact,
            ..Options::default()
        },
    )?)
}

pub(crate) fn run(cfg: &Cfg) -> Res<Outcome> {
    let overwrites = cfg.n(1_000_000) as u64;
    let tmp = cfg.tempdir("compaction")?;
    let mut auto = AutoCompact::default();
    if cfg.quick {
        auto.slack_bytes /= 10;
    }
    let slack_mib = auto.slack_bytes as f64 / f64::from(1 << 20);
    eprintln!(
        "compaction: {KEYS} keys x {overwrites} overwrites, SyncMode::Never, automatic compaction on (slack {slack_mib:.1} MiB) then off"
    );
    let on_store = open(&tmp.path().join("auto-on"), Some(auto))?;
    let on = run_one(&on_store, overwrites)?;
    // The exact size of the live data: what a compaction writes now.
    let live_exact = on_store.compact()?.bytes_after;
    drop(on_store);
    eprintln!(
        "compaction: auto on: {:.1} s, {} compactions; now off",
        on.seconds, on.compactions
    );
    let off_store = open(&tmp.path().join("auto-off"), None)?;
    let off = run_one(&off_store, overwrites)?;
    drop(off_store);

    for (i, bytes) in &on.samples {
        eprintln!("compaction: after {i} overwrites the log is {bytes} bytes");
    }
    let bound = 3 * on.live_at_max + auto.slack_bytes;
    let bound_ratio = on.max_log as f64 / bound as f64;
    let bench = format!("auto compaction, {KEYS} keys x {overwrites} overwrites, Never");
    let q = |r: &Run, p: f64| quantile(&r.latencies_ns, p);
    let max = |r: &Run| r.latencies_ns.iter().copied().fold(0.0, f64::max);
    let mut rows = vec![Row::absolute(
        &format!("{bench}: largest log"),
        format!(
            "{} (live {}; {} compactions)",
            fmt_mib(on.max_log as f64),
            fmt_mib(on.live_at_max as f64),
            on.compactions
        ),
        &format!("bound: 3x live + {slack_mib:.1} MiB"),
        format!("{} (log / bound = {bound_ratio:.3})", fmt_mib(bound as f64)),
        &format!("never above 3x live + {slack_mib:.1} MiB"),
        on.max_log <= bound,
    )];
    for (what, p) in [("p50", 0.5), ("p99", 0.99)] {
        rows.push(Row::ratio_goal(
            &format!("{bench}: commit latency {what}"),
            format!("{} (auto on)", fmt_ns(q(&on, p))),
            "same, auto compaction off",
            fmt_ns(q(&off, p)),
            q(&off, p) / q(&on, p),
            None,
        ));
    }
    rows.push(Row::ratio_goal(
        &format!("{bench}: commit latency max"),
        format!(
            "{} (auto on; longest compaction {})",
            fmt_ns(max(&on)),
            fmt_ns(on.longest_pause_ns)
        ),
        "same, auto compaction off",
        fmt_ns(max(&off)),
        max(&off) / max(&on),
        None,
    ));
    rows.push(Row::context(
        &format!("{bench}: log at the end"),
        format!(
            "{} (live exactly {})",
            fmt_mib(on.last.log_bytes as f64),
            fmt_mib(live_exact as f64)
        ),
        "auto compaction off",
        format!(
            "{} ({} the live data)",
            fmt_mib(off.last.log_bytes as f64),
            fmt_ratio(off.last.log_bytes as f64 / live_exact.max(1) as f64)
        ),
    ));
    let lat = |r: &Run| {
        serde_json::json!({
            "p50_ns": q(r, 0.5), "p99_ns": q(r, 0.99), "p999_ns": q(r, 0.999), "max_ns": max(r),
            "seconds": r.seconds, "max_log_bytes": r.max_log, "live_bytes_at_max": r.live_at_max,
            "final_log_bytes": r.last.log_bytes, "compactions": r.compactions,
            "longest_compaction_ns": r.longest_pause_ns, "samples": r.samples,
        })
    };
    let raw = serde_json::json!({
        "keys": KEYS,
        "overwrites": overwrites,
        "sync": "never",
        "slack_bytes": auto.slack_bytes,
        "dead_percent": auto.dead_percent,
        "bound_bytes": bound,
        "log_over_bound": bound_ratio,
        "live_bytes_exact": live_exact,
        "auto_on": lat(&on),
        "auto_off": lat(&off),
    });
    Ok(Outcome { rows, raw })
}
