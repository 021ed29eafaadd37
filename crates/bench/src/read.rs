//! `read`: in-process point reads through each engine's public API.

use std::hint::black_box;

use chorus_store::SyncMode;
use rusqlite::types::ValueRef;

use crate::engines;
use crate::harness::{Cfg, Outcome, Res, Rng, Row, fmt_ns, key, median, repeat};

/// Keys in each engine.
const KEYS: u64 = 100_000;
/// Distinct random keys cycled through by the random-key variant.
const RANDOM_KEYS: usize = 1 << 16;

/// Median ns per operation over `reps` timed repetitions of `ops` calls
/// (after one warm-up repetition).
fn ns_per_op<F>(reps: usize, ops: usize, mut f: F) -> Res<(f64, Vec<f64>)>
where
    F: FnMut(usize) -> Res<()>,
{
    let runs = repeat(reps, |_| f(ops))?;
    let per_op: Vec<f64> = runs.iter().map(|ns| ns / ops as f64).collect();
    Ok((median(&per_op), per_op))
}

pub(crate) fn run(cfg: &Cfg) -> Res<Outcome> {
    let reps = cfg.reps(5);
    let ops_fast = cfg.n(2_000_000);
    let ops_sqlite = cfg.n(400_000);
    let tmp = cfg.tempdir("read")?;

    let mut rng = Rng::new(0x5eed);
    let hot = key(KEYS / 2);
    let random: Vec<Vec<u8>> = (0..RANDOM_KEYS)
        .map(|_| key(rng.next_u64() % KEYS))
        .collect();
    let mask = RANDOM_KEYS - 1;

    eprintln!("read: filling Chorus, LMDB and SQLite with {KEYS} keys");
    let store = engines::chorus(&tmp.path().join("chorus"), SyncMode::Never)?;
    engines::chorus_fill(&store, KEYS, 10_000)?;
    let fp = engines::fp()?;

    let env = engines::lmdb(&tmp.path().join("lmdb"), 1 << 30)?;
    let db = engines::lmdb_db(&env)?;
    engines::lmdb_fill(&env, &db, KEYS)?;

    let mut conn = engines::sqlite(&tmp.path().join("sqlite.db"), "FULL")?;
    engines::sqlite_fill(&mut conn, KEYS)?;
    let mut select = conn.prepare("SELECT v FROM kv WHERE k = ?1")?;
    let mut sqlite_get = |k: &[u8]| -> Res<usize> {
        let len = select.query_row([k], |r| match r.get_ref(0)? {
            ValueRef::Blob(b) => Ok(b.len()),
            _ => Ok(0),
        })?;
        Ok(len)
    };

    eprintln!("read: Chorus hot key");
    let (chorus_hot, chorus_hot_all) = ns_per_op(reps, ops_fast, |ops| {
        for _ in 0..ops {
            let v = store.get(&fp, black_box(&hot))?.ok_or("missing key")?;
            black_box(v.len());
        }
        Ok(())
    })?;
    eprintln!("read: Chorus random keys");
    let (chorus_rand, chorus_rand_all) = ns_per_op(reps, ops_fast, |ops| {
        for i in 0..ops {
            let v = store
                .get(&fp, black_box(&random[i & mask]))?
                .ok_or("missing key")?;
            black_box(v.len());
        }
        Ok(())
    })?;

    eprintln!("read: LMDB hot key");
    let (lmdb_hot, lmdb_hot_all) = ns_per_op(reps, ops_fast, |ops| {
        for _ in 0..ops {
            let rtxn = env.read_txn()?;
            let v = db.get(&rtxn, black_box(&hot))?.ok_or("missing key")?;
            black_box(v.len());
        }
        Ok(())
    })?;
    eprintln!("read: LMDB random keys");
    let (lmdb_rand, lmdb_rand_all) = ns_per_op(reps, ops_fast, |ops| {
        for i in 0..ops {
            let rtxn = env.read_txn()?;
            let v = db
                .get(&rtxn, black_box(&random[i & mask]))?
                .ok_or("missing key")?;
            black_box(v.len());
        }
        Ok(())
    })?;

    eprintln!("read: SQLite hot key");
    let (sqlite_hot, sqlite_hot_all) = ns_per_op(reps, ops_sqlite, |ops| {
        for _ in 0..ops {
            black_box(sqlite_get(black_box(&hot))?);
        }
        Ok(())
    })?;
    eprintln!("read: SQLite random keys");
    let (sqlite_rand, sqlite_rand_all) = ns_per_op(reps, ops_sqlite, |ops| {
        for i in 0..ops {
            black_box(sqlite_get(black_box(&random[i & mask]))?);
        }
        Ok(())
    })?;

    let rows = vec![
        Row::ratio_goal(
            "read hot key (ns/op)",
            fmt_ns(chorus_hot),
            "LMDB (read txn + get)",
            fmt_ns(lmdb_hot),
            lmdb_hot / chorus_hot,
            Some(1.0),
        ),
        Row::ratio_goal(
            "read hot key (ns/op)",
            fmt_ns(chorus_hot),
            "SQLite WAL (prepared SELECT)",
            fmt_ns(sqlite_hot),
            sqlite_hot / chorus_hot,
            Some(20.0),
        ),
        Row::ratio_goal(
            "read random keys (ns/op)",
            fmt_ns(chorus_rand),
            "LMDB (read txn + get)",
            fmt_ns(lmdb_rand),
            lmdb_rand / chorus_rand,
            Some(1.0),
        ),
        Row::ratio_goal(
            "read random keys (ns/op)",
            fmt_ns(chorus_rand),
            "SQLite WAL (prepared SELECT)",
            fmt_ns(sqlite_rand),
            sqlite_rand / chorus_rand,
            Some(20.0),
        ),
    ];
    let raw = serde_json::json!({
        "keys": KEYS,
        "value_bytes": crate::harness::VALUE_LEN,
        "reps": reps,
        "ops_per_rep": { "chorus": ops_fast, "lmdb": ops_fast, "sqlite": ops_sqlite },
        "ns_per_op_median": {
            "chorus_hot": chorus_hot, "chorus_random": chorus_rand,
            "lmdb_hot": lmdb_hot, "lmdb_random": lmdb_rand,
            "sqlite_hot": sqlite_hot, "sqlite_random": sqlite_rand,
        },
        "ns_per_op_runs": {
            "chorus_hot": chorus_hot_all, "chorus_random": chorus_rand_all,
            "lmdb_hot": lmdb_hot_all, "lmdb_random": lmdb_rand_all,
            "sqlite_hot": sqlite_hot_all, "sqlite_random": sqlite_rand_all,
        },
    });
    Ok(Outcome { rows, raw })
}
