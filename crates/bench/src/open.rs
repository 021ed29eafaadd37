//! `open`: how long a fresh process takes to open a store of 1,000,000 keys
//! and how much memory the open store holds, against the raw data size.

use std::path::Path;
use std::time::Instant;

use chorus_store::{GetOptions, Metadata, Options, Store, SyncMode};
use rusqlite::Connection;
use rusqlite::types::ValueRef;

use crate::engines;
use crate::harness::{
    Cfg, Kid, Outcome, Res, Row, VALUE_LEN, dir_bytes, fmt_mib, fmt_ns, key, median, mem, say,
    settle, value,
};

/// Hidden subcommand `__open ENGINE PATH KEYS`: measures the open (plus one
/// read of `key(0)`, so every engine has really looked at its files) and
/// prints one JSON line.
pub(crate) fn child(args: &[String]) -> Res<()> {
    let [engine, path, keys] = args else {
        return Err("usage: __open ENGINE PATH KEYS".into());
    };
    let path = Path::new(path);
    let keys: usize = keys.parse()?;
    let first = key(0);
    let before = mem()?;
    let (ns, after, hwm_after) = match engine.as_str() {
        "chorus" => {
            let fp = engines::fp()?;
            let start = Instant::now();
            let store = Store::open(
                path,
                Options {
                    sync: SyncMode::Always,
                    ..Options::default()
                },
            )?;
            let v = store.get(&fp, &first)?;
            let ns = start.elapsed().as_nanos() as f64;
            let after = mem()?;
            if v.map(|v| v.len()) != Some(VALUE_LEN) {
                return Err("key-0000000 missing after open".into());
            }
            let len = store.snapshot()?.len();
            if len != keys {
                return Err(format!("opened store holds {len} keys, expected {keys}").into());
            }
            (ns, after, after.hwm)
        }
        "meta" => {
            // A store of metadata objects (the `meta` benchmark's): open it
            // and read `key(0)` through the metadata API.
            let fp = engines::fp()?;
            let start = Instant::now();
            let meta = Metadata::new(Store::open(
                path,
                Options {
                    sync: SyncMode::Always,
                    ..Options::default()
                },
            )?);
            let read = meta.get(&fp, &first, &GetOptions::default())?;
            let ns = start.elapsed().as_nanos() as f64;
            let after = mem()?;
            let got = read.as_ref().and_then(|r| r.values.first()?.bytes());
            if got != Some(value(0).as_slice()) {
                return Err("key-0000000 missing or wrong after open (metadata)".into());
            }
            let len = meta.store().snapshot()?.len();
            if len != keys {
                return Err(format!("opened store holds {len} keys, expected {keys}").into());
            }
            (ns, after, after.hwm)
        }
        "lmdb" => {
            let start = Instant::now();
            let env = engines::lmdb(path, 4 << 30)?;
            let db = engines::lmdb_db(&env)?;
            let rtxn = env.read_txn()?;
            let len = db.get(&rtxn, &first)?.map(<[u8]>::len);
            let ns = start.elapsed().as_nanos() as f64;
            let after = mem()?;
            if len != Some(VALUE_LEN) {
                return Err("key-0000000 missing in LMDB".into());
            }
            (ns, after, after.hwm)
        }
        "sqlite" => {
            let start = Instant::now();
            let conn = Connection::open(path)?;
            let len = conn.query_row("SELECT v FROM kv WHERE k = ?1", [&first], |r| {
                Ok(match r.get_ref(0)? {
                    ValueRef::Blob(b) => b.len(),
                    _ => 0,
                })
            })?;
            let ns = start.elapsed().as_nanos() as f64;
            let after = mem()?;
            if len != VALUE_LEN {
                return Err("key-0000000 missing in SQLite".into());
            }
            (ns, after, after.hwm)
        }
        other => return Err(format!("unknown engine {other}").into()),
    };
    let line = serde_json::json!({
        "open_ns": ns,
        "rss_before": before.rss,
        "rss_after": after.rss,
        "rss_delta": after.rss.saturating_sub(before.rss),
        "anon_delta": after.anon.saturating_sub(before.anon),
        "file_delta": after.file.saturating_sub(before.file),
        "hwm": hwm_after,
    });
    say(&format!("result {line}"))
}

/// One fresh child process opening `path`; its JSON report.
fn measure(engine: &str, path: &Path, keys: usize) -> Res<serde_json::Value> {
    let mut kid = Kid::spawn(&[
        "__open".to_string(),
        engine.to_string(),
        path.display().to_string(),
        keys.to_string(),
    ])?;
    let rest = kid.expect("result")?;
    kid.finish()?;
    Ok(serde_json::from_str(&rest)?)
}

/// Warm-up child, then `reps` children; the median of each field.
/// `engine` is `chorus`, `meta` (a store of metadata objects), `lmdb` or
/// `sqlite`.
pub(crate) fn measure_median(
    engine: &str,
    path: &Path,
    keys: usize,
    reps: usize,
) -> Res<serde_json::Value> {
    measure(engine, path, keys)?;
    let runs = (0..reps)
        .map(|_| measure(engine, path, keys))
        .collect::<Res<Vec<_>>>()?;
    let field = |name: &str| -> Vec<f64> {
        runs.iter()
            .map(|r| r[name].as_f64().unwrap_or(f64::NAN))
            .collect()
    };
    let mut out = serde_json::Map::new();
    for name in [
        "open_ns",
        "rss_before",
        "rss_after",
        "rss_delta",
        "anon_delta",
        "file_delta",
        "hwm",
    ] {
        out.insert(name.to_string(), serde_json::json!(median(&field(name))));
    }
    out.insert("runs".to_string(), serde_json::json!(runs));
    Ok(serde_json::Value::Object(out))
}

pub(crate) fn run(cfg: &Cfg) -> Res<Outcome> {
    let keys: usize = cfg.n(1_000_000);
    let reps = cfg.reps(5);
    let tmp = cfg.tempdir("open")?;
    let raw_bytes = (keys * (key(0).len() + VALUE_LEN)) as f64;

    eprintln!(
        "open: building a Chorus store of {keys} keys (batches of 10,000, SyncMode::Never, then compact)"
    );
    let t = Instant::now();
    let dir = tmp.path().join("chorus");
    let store = engines::chorus(&dir, SyncMode::Never)?;
    engines::chorus_fill(&store, keys as u64, 10_000)?;
    let fill_ns = t.elapsed().as_nanos() as f64;
    let t = Instant::now();
    let report = store.compact()?;
    let compact_ns = t.elapsed().as_nanos() as f64;
    drop(store);
    let chorus_disk = dir_bytes(&dir);

    eprintln!("open: building LMDB and SQLite copies (context only)");
    let lmdb_dir = tmp.path().join("lmdb");
    {
        let env = engines::lmdb(&lmdb_dir, 4 << 30)?;
        let db = engines::lmdb_db(&env)?;
        engines::lmdb_fill(&env, &db, keys as u64)?;
        env.force_sync()?;
    }
    let sqlite_path = tmp.path().join("sqlite.db");
    {
        let mut conn = engines::sqlite(&sqlite_path, "FULL")?;
        engines::sqlite_fill(&mut conn, keys as u64)?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    }
    settle();

    eprintln!("open: Chorus Store::open in a fresh process (1 warm-up + {reps})");
    let chorus = measure_median("chorus", &dir, keys, reps)?;
    eprintln!("open: LMDB and SQLite open in a fresh process (context)");
    let lmdb = measure_median("lmdb", &lmdb_dir, keys, reps)?;
    let sqlite = measure_median("sqlite", &sqlite_path, keys, reps)?;

    let get = |v: &serde_json::Value, name: &str| v[name].as_f64().unwrap_or(f64::NAN);
    let open_ns = get(&chorus, "open_ns");
    let delta = get(&chorus, "rss_delta");
    let hwm = get(&chorus, "hwm");
    let k = keys / 1000;
    let bench = format!("open {k}k keys in a fresh process");
    let not_comparable = "not comparable: does not load into memory";
    let rows = vec![
        Row::absolute(
            &format!("{bench} (wall time)"),
            fmt_ns(open_ns),
            &format!("LMDB env open + 1 get ({not_comparable})"),
            fmt_ns(get(&lmdb, "open_ns")),
            "< 1 s",
            open_ns < 1e9,
        ),
        Row::absolute(
            &format!("{bench} (wall time)"),
            fmt_ns(open_ns),
            &format!("SQLite open + 1 SELECT ({not_comparable})"),
            fmt_ns(get(&sqlite, "open_ns")),
            "< 1 s",
            open_ns < 1e9,
        ),
        Row::absolute(
            &format!("{bench}: RSS after open - RSS before / raw data"),
            format!("{} = {:.3}x raw", fmt_mib(delta), delta / raw_bytes),
            "raw key+value bytes",
            fmt_mib(raw_bytes),
            "< 2.5x",
            delta / raw_bytes < 2.5,
        ),
        Row::absolute(
            &format!("{bench}: peak RSS (VmHWM) / raw data"),
            format!("{} = {:.3}x raw", fmt_mib(hwm), hwm / raw_bytes),
            "raw key+value bytes",
            fmt_mib(raw_bytes),
            "< 2.5x",
            hwm / raw_bytes < 2.5,
        ),
    ];
    let raw = serde_json::json!({
        "keys": keys,
        "raw_bytes": raw_bytes,
        "reps": reps,
        "chorus_build": {
            "fill_ns": fill_ns,
            "compact_ns": compact_ns,
            "log_bytes_before_compact": report.bytes_before,
            "log_bytes_after_compact": report.bytes_after,
            "dir_bytes": chorus_disk,
        },
        "lmdb_dir_bytes": dir_bytes(&lmdb_dir),
        "sqlite_file_bytes": std::fs::metadata(&sqlite_path).map(|m| m.len()).unwrap_or(0),
        "chorus": chorus,
        "lmdb": lmdb,
        "sqlite": sqlite,
    });
    Ok(Outcome { rows, raw })
}
