//! `threads`: 8 threads of one process committing at once, each its own keys.

use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use chorus_store::SyncMode;

use crate::engines;
use crate::harness::{
    Cfg, Outcome, Res, Row, Task, fmt_rate, interleaved, median, paired_ratio, value,
};

const THREADS: usize = 8;

/// Runs `threads` threads that each set up their own state (untimed), wait
/// on a common barrier, then make `per` commits; returns the nanoseconds
/// from the barrier's release until the last thread finished.
fn timed<S, Setup, Op>(threads: usize, per: usize, setup: Setup, op: Op) -> Res<f64>
where
    Setup: Fn(usize) -> Res<S> + Sync,
    Op: Fn(&mut S, usize, usize) -> Res<()> + Sync,
{
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, setup, op) = (&barrier, &setup, &op);
                s.spawn(move || -> Res<()> {
                    let state = setup(t);
                    barrier.wait();
                    let mut state = state?;
                    for i in 0..per {
                        op(&mut state, t, i)?;
                    }
                    Ok(())
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        for h in handles {
            h.join().map_err(|_| "a bench thread panicked")??;
        }
        Ok(start.elapsed().as_nanos() as f64)
    })
}

fn k(rep: usize, t: usize, i: usize) -> Vec<u8> {
    format!("t{t}-r{rep}-{i:06}").into_bytes()
}

pub(crate) fn run(cfg: &Cfg) -> Res<Outcome> {
    let rounds = cfg.n(10).max(3);
    let per = cfg.n(250);
    let total = THREADS * per;
    let tmp = cfg.tempdir("threads")?;

    let store = engines::chorus(&tmp.path().join("chorus"), SyncMode::Batch)?;
    let fp = engines::fp()?;
    let path = tmp.path().join("sqlite.db");
    drop(engines::sqlite(&path, "FULL")?);
    let retries = AtomicU64::new(0);

    eprintln!("threads: {THREADS} threads x {per} commits, {rounds} rounds, engines interleaved");
    let mut tasks: Vec<Task<'_>> = vec![
        (
            "Chorus SyncMode::Batch, one Store shared by 8 threads",
            Box::new(|rep| {
                let ns = timed(
                    THREADS,
                    per,
                    |_| Ok(store.clone()),
                    |store, t, i| {
                        store.put(&fp, &k(rep, t, i), &value(i as u64))?;
                        Ok(())
                    },
                )?;
                Ok(Some(ns))
            }),
        ),
        (
            "SQLite WAL FULL, 8 connections",
            Box::new(|rep| {
                let ns = timed(
                    THREADS,
                    per,
                    |_| engines::sqlite(&path, "FULL"),
                    |conn, t, i| {
                        let r =
                            engines::sqlite_insert_retry(conn, &k(rep, t, i), &value(i as u64))?;
                        retries.fetch_add(r, Ordering::Relaxed);
                        Ok(())
                    },
                )?;
                Ok(Some(ns))
            }),
        ),
    ];
    let runs = interleaved(rounds, &mut tasks)?;
    drop(tasks);
    let [chorus, sqlite] = &runs[..] else {
        return Err("wrong number of results".into());
    };

    let expect = (rounds + 1) * total;
    let keys = store.snapshot()?.len();
    if keys != expect {
        return Err(format!("Chorus holds {keys} keys, expected {expect}").into());
    }
    let conn = engines::sqlite(&path, "FULL")?;
    let rows_in: i64 = conn.query_row("SELECT count(*) FROM kv", [], |r| r.get(0))?;
    if rows_in as usize != expect {
        return Err(format!("SQLite holds {rows_in} rows, expected {expect}").into());
    }

    let c = total as f64 / (median(chorus) / 1e9);
    let s = total as f64 / (median(sqlite) / 1e9);
    let rows = vec![Row::ratio_goal(
        "commit, 8 threads, 1 process (total commits/s)",
        format!("{} (Batch)", fmt_rate(c)),
        "SQLite WAL FULL, 8 connections",
        fmt_rate(s),
        paired_ratio(chorus, sqlite),
        Some(3.0),
    )];
    let raw = serde_json::json!({
        "threads": THREADS,
        "commits_per_thread": per,
        "rounds": rounds,
        "commits_per_s_median": { "chorus_batch": c, "sqlite_wal_full": s },
        "paired_ratio": paired_ratio(chorus, sqlite),
        "round_ns": { "chorus_batch": chorus, "sqlite_wal_full": sqlite },
        "sqlite_busy_retries": retries.load(Ordering::Relaxed),
    });
    Ok(Outcome { rows, raw })
}
