//! `commit`: durable single-key commits from one thread, plus the floor a
//! bare append + fdatasync loop sets on this disk. All engines run
//! interleaved, round by round (see [`interleaved`]).

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::FileExt;

use chorus_store::SyncMode;

use crate::engines;
use crate::harness::{
    Cfg, Outcome, Res, Row, Task, VALUE_LEN, fmt_rate, interleaved, median, paired_ratio, value,
};

/// Commits per second from the median of the timed rounds.
fn rate(runs: &[f64], n: usize) -> f64 {
    n as f64 / (median(runs) / 1e9)
}

/// Keys unique across the whole run: `c-<engine>-<counter>`.
struct Keys {
    tag: &'static str,
    next: u64,
}

impl Keys {
    fn fresh(&mut self) -> (Vec<u8>, Vec<u8>) {
        self.next += 1;
        (
            format!("c-{}-{:09}", self.tag, self.next).into_bytes(),
            value(self.next),
        )
    }
}

pub(crate) fn run(cfg: &Cfg) -> Res<Outcome> {
    let rounds = cfg.n(15).max(3);
    let n = cfg.n(200);
    let tmp = cfg.tempdir("commit")?;
    let buf = value(0);

    // Floor 1: append 100 bytes to a growing file, fdatasync (the file size
    // changes, so ext4 also commits its journal, as for a log append).
    let mut append = OpenOptions::new()
        .create(true)
        .append(true)
        .open(tmp.path().join("floor-append"))?;
    // Floor 2: overwrite 100 bytes inside a preallocated, synced file (no
    // size change: only the data block and the disk's cache flush).
    let overwrite = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(tmp.path().join("floor-overwrite"))?;
    overwrite.write_all_at(&vec![0u8; n * VALUE_LEN], 0)?;
    overwrite.sync_all()?;

    let fp = engines::fp()?;
    let always = engines::chorus(&tmp.path().join("chorus"), SyncMode::Always)?;
    let never = engines::chorus(&tmp.path().join("chorus-never"), SyncMode::Never)?;
    let conn = engines::sqlite(&tmp.path().join("sqlite.db"), "FULL")?;
    let env = engines::lmdb(&tmp.path().join("lmdb"), 1 << 30)?;
    let db = engines::lmdb_db(&env)?;

    let mut ka = Keys { tag: "a", next: 0 };
    let mut kn = Keys { tag: "n", next: 0 };
    let mut ks = Keys { tag: "s", next: 0 };
    let mut kl = Keys { tag: "l", next: 0 };
    eprintln!("commit: {rounds} rounds x {n} commits per engine, interleaved");
    let mut tasks: Vec<Task<'_>> = vec![
        (
            "floor: append + fdatasync",
            Box::new(|_| {
                for _ in 0..n {
                    append.write_all(&buf)?;
                    append.sync_data()?;
                }
                Ok(None)
            }),
        ),
        (
            "floor: overwrite + fdatasync",
            Box::new(|_| {
                for i in 0..n {
                    overwrite.write_all_at(&buf, (i * VALUE_LEN) as u64)?;
                    overwrite.sync_data()?;
                }
                Ok(None)
            }),
        ),
        (
            "Chorus SyncMode::Always",
            Box::new(|_| {
                for _ in 0..n {
                    let (k, v) = ka.fresh();
                    always.put(&fp, &k, &v)?;
                }
                Ok(None)
            }),
        ),
        (
            "Chorus SyncMode::Never (context)",
            Box::new(|_| {
                for _ in 0..n {
                    let (k, v) = kn.fresh();
                    never.put(&fp, &k, &v)?;
                }
                Ok(None)
            }),
        ),
        (
            "SQLite WAL synchronous=FULL",
            Box::new(|_| {
                for _ in 0..n {
                    let (k, v) = ks.fresh();
                    engines::sqlite_insert_retry(&conn, &k, &v)?;
                }
                Ok(None)
            }),
        ),
        (
            "LMDB default durable flags",
            Box::new(|_| {
                for _ in 0..n {
                    let (k, v) = kl.fresh();
                    let mut wtxn = env.write_txn()?;
                    db.put(&mut wtxn, &k, &v)?;
                    wtxn.commit()?;
                }
                Ok(None)
            }),
        ),
    ];
    let runs = interleaved(rounds, &mut tasks)?;
    drop(tasks);
    let [
        floor_append,
        floor_overwrite,
        chorus,
        chorus_never,
        sqlite,
        lmdb,
    ] = &runs[..]
    else {
        return Err("wrong number of results".into());
    };

    let c = rate(chorus, n);
    let s = rate(sqlite, n);
    let l = rate(lmdb, n);
    let fa = rate(floor_append, n);
    let fo = rate(floor_overwrite, n);
    let cn = rate(chorus_never, n);
    let bench = "commit, 1 thread, 1 key (commits/s)";
    let chorus_fig = format!("{} (Always)", fmt_rate(c));
    let rows = vec![
        Row::ratio_goal(
            bench,
            chorus_fig.clone(),
            "SQLite WAL, synchronous=FULL",
            fmt_rate(s),
            paired_ratio(chorus, sqlite),
            Some(1.0),
        ),
        Row::ratio_goal(
            bench,
            chorus_fig.clone(),
            "LMDB, default durable flags",
            fmt_rate(l),
            paired_ratio(chorus, lmdb),
            None,
        ),
        Row::ratio_goal(
            bench,
            chorus_fig.clone(),
            "floor: bare 100 B append + fdatasync",
            fmt_rate(fa),
            paired_ratio(chorus, floor_append),
            None,
        ),
        Row::ratio_goal(
            bench,
            chorus_fig,
            "floor: 100 B overwrite in place + fdatasync",
            fmt_rate(fo),
            paired_ratio(chorus, floor_overwrite),
            None,
        ),
    ];
    let raw = serde_json::json!({
        "commits_per_round": n,
        "rounds": rounds,
        "commits_per_s_median": {
            "chorus_always": c, "chorus_never": cn, "sqlite_wal_full": s, "lmdb_durable": l,
            "floor_append_fdatasync": fa, "floor_overwrite_fdatasync": fo,
        },
        "paired_ratio_chorus_over": {
            "sqlite_wal_full": paired_ratio(chorus, sqlite),
            "lmdb_durable": paired_ratio(chorus, lmdb),
            "floor_append_fdatasync": paired_ratio(chorus, floor_append),
            "floor_overwrite_fdatasync": paired_ratio(chorus, floor_overwrite),
        },
        "round_ns": {
            "chorus_always": chorus, "chorus_never": chorus_never, "sqlite_wal_full": sqlite,
            "lmdb_durable": lmdb, "floor_append_fdatasync": floor_append,
            "floor_overwrite_fdatasync": floor_overwrite,
        },
    });
    Ok(Outcome { rows, raw })
}
