//! `procs`: 4 processes committing at once into one store, then a check
//! that every commit each of them was acknowledged is there.

use std::path::Path;
use std::time::Instant;

use chorus_store::SyncMode;

use crate::engines;
use crate::harness::{
    Cfg, Kid, Outcome, Res, Row, Task, fmt_rate, hear, interleaved, median, paired_ratio, say,
    value,
};

const PROCS: usize = 4;

fn child_key(id: usize, j: usize) -> Vec<u8> {
    format!("p{id}-{j:07}").into_bytes()
}

fn child_value(id: usize, j: usize) -> Vec<u8> {
    value((id * 10_000_000 + j) as u64)
}

/// Hidden subcommand `__commit ENGINE PATH ID COUNT`: opens the engine,
/// says `ready`, waits for a line, makes COUNT commits, says
/// `done COMMITTED RETRIES`.
pub(crate) fn child(args: &[String]) -> Res<()> {
    let [engine, path, id, count] = args else {
        return Err("usage: __commit ENGINE PATH ID COUNT".into());
    };
    let path = Path::new(path);
    let id: usize = id.parse()?;
    let count: usize = count.parse()?;
    match engine.as_str() {
        "chorus" => {
            let store = engines::chorus(path, SyncMode::Always)?;
            let fp = engines::fp()?;
            say("ready")?;
            hear()?;
            for j in 0..count {
                store.put(&fp, &child_key(id, j), &child_value(id, j))?;
            }
            say(&format!("done {count} 0"))
        }
        "sqlite" => {
            let conn = engines::sqlite(path, "FULL")?;
            say("ready")?;
            hear()?;
            let mut retries = 0;
            for j in 0..count {
                retries +=
                    engines::sqlite_insert_retry(&conn, &child_key(id, j), &child_value(id, j))?;
            }
            say(&format!("done {count} {retries}"))
        }
        other => Err(format!("unknown engine {other}").into()),
    }
}

/// Starts the children, releases them together, and returns the elapsed
/// nanoseconds and each child's acknowledged commit count and retries.
fn run_round(engine: &str, path: &Path, count: usize) -> Res<(f64, Vec<usize>, u64)> {
    let mut kids = (0..PROCS)
        .map(|id| {
            Kid::spawn(&[
                "__commit".to_string(),
                engine.to_string(),
                path.display().to_string(),
                id.to_string(),
                count.to_string(),
            ])
        })
        .collect::<Res<Vec<_>>>()?;
    for kid in &mut kids {
        kid.expect("ready")?;
    }
    let start = Instant::now();
    for kid in &mut kids {
        kid.send("go")?;
    }
    let mut committed = Vec::new();
    let mut retries = 0;
    for kid in &mut kids {
        let rest = kid.expect("done")?;
        let mut it = rest.split_whitespace();
        committed.push(it.next().ok_or("no count")?.parse()?);
        retries += it.next().ok_or("no retries")?.parse::<u64>()?;
    }
    let ns = start.elapsed().as_nanos() as f64;
    for kid in kids {
        kid.finish()?;
    }
    Ok((ns, committed, retries))
}

/// Checks every acknowledged key is present with its value, and nothing else.
fn verify_chorus(dir: &Path, committed: &[usize]) -> Res<usize> {
    let store = engines::chorus(dir, SyncMode::Always)?;
    let fp = engines::fp()?;
    let mut found = 0;
    for (id, &n) in committed.iter().enumerate() {
        for j in 0..n {
            let v = store.get(&fp, &child_key(id, j))?;
            if v.as_deref() != Some(&child_value(id, j)[..]) {
                return Err(format!("Chorus lost update: process {id} commit {j}").into());
            }
            found += 1;
        }
    }
    let len = store.snapshot()?.len();
    if len != found {
        return Err(format!("Chorus holds {len} keys; the children acknowledged {found}").into());
    }
    Ok(found)
}

fn verify_sqlite(path: &Path, committed: &[usize]) -> Res<usize> {
    let conn = engines::sqlite(path, "FULL")?;
    let mut st = conn.prepare("SELECT v FROM kv WHERE k = ?1")?;
    let mut found = 0;
    for (id, &n) in committed.iter().enumerate() {
        for j in 0..n {
            let v: Option<Vec<u8>> = st
                .query_row([child_key(id, j)], |r| r.get(0))
                .map(Some)
                .or_else(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok(None),
                    e => Err(e),
                })?;
            if v.as_deref() != Some(&child_value(id, j)[..]) {
                return Err(format!("SQLite lost update: process {id} commit {j}").into());
            }
            found += 1;
        }
    }
    let len: i64 = conn.query_row("SELECT count(*) FROM kv", [], |r| r.get(0))?;
    if len as usize != found {
        return Err(format!("SQLite holds {len} rows; the children acknowledged {found}").into());
    }
    Ok(found)
}

pub(crate) fn run(cfg: &Cfg) -> Res<Outcome> {
    let rounds = cfg.n(7).max(3);
    let per = cfg.n(250);
    let total = PROCS * per;
    let tmp = cfg.tempdir("procs")?;
    let base = tmp.path();

    let mut verified_chorus = 0;
    let mut verified_sqlite = 0;
    let mut sqlite_retries = 0;
    eprintln!("procs: {PROCS} processes x {per} commits, {rounds} rounds, engines interleaved");
    let mut tasks: Vec<Task<'_>> = vec![
        (
            "Chorus SyncMode::Always, a Store per process",
            Box::new(|round| {
                let dir = base.join(format!("chorus-{round}"));
                drop(engines::chorus(&dir, SyncMode::Always)?);
                let (ns, committed, _) = run_round("chorus", &dir, per)?;
                verified_chorus += verify_chorus(&dir, &committed)?;
                std::fs::remove_dir_all(&dir)?;
                Ok(Some(ns))
            }),
        ),
        (
            "SQLite WAL FULL, a connection per process",
            Box::new(|round| {
                let path = base.join(format!("sqlite-{round}.db"));
                drop(engines::sqlite(&path, "FULL")?);
                let (ns, committed, retries) = run_round("sqlite", &path, per)?;
                verified_sqlite += verify_sqlite(&path, &committed)?;
                sqlite_retries += retries;
                Ok(Some(ns))
            }),
        ),
    ];
    let runs = interleaved(rounds, &mut tasks)?;
    drop(tasks);
    let [chorus, sqlite] = &runs[..] else {
        return Err("wrong number of results".into());
    };

    let c = total as f64 / (median(chorus) / 1e9);
    let s = total as f64 / (median(sqlite) / 1e9);
    let rows = vec![Row::ratio_goal(
        "commit, 4 processes (total commits/s; 0 lost updates verified)",
        format!("{} (Always)", fmt_rate(c)),
        "SQLite WAL FULL, 4 processes",
        fmt_rate(s),
        paired_ratio(chorus, sqlite),
        Some(1.0),
    )];
    let raw = serde_json::json!({
        "processes": PROCS,
        "commits_per_process": per,
        "rounds": rounds,
        "commits_per_s_median": { "chorus_always": c, "sqlite_wal_full": s },
        "paired_ratio": paired_ratio(chorus, sqlite),
        "round_ns": { "chorus_always": chorus, "sqlite_wal_full": sqlite },
        "verified_keys": { "chorus": verified_chorus, "sqlite": verified_sqlite },
        "lost_updates": 0,
        "sqlite_busy_retries": sqlite_retries,
    });
    Ok(Outcome { rows, raw })
}
