//! Opening and filling the three engines the same way everywhere.

use std::path::Path;
use std::time::Duration;

use chorus_core::FullPrefix;
use chorus_store::{Options, Store, SyncMode, Write};
use heed::types::Bytes;
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions};
use rusqlite::{Connection, ErrorCode};

use crate::harness::{Res, key, value};

/// The full prefix every Chorus benchmark writes under.
pub(crate) fn fp() -> Res<FullPrefix> {
    Ok(FullPrefix::parse("bench/kv")?)
}

/// Opens (creating if needed) a Chorus store.
pub(crate) fn chorus(dir: &Path, sync: SyncMode) -> Res<Store> {
    Ok(Store::open(
        dir,
        Options {
            create: true,
            sync,
            lock_timeout: Duration::from_secs(120),
            ..Options::default()
        },
    )?)
}

/// Writes keys `0..n` (`key(i)` = `value(i)`) in commits of `batch` keys.
pub(crate) fn chorus_fill(store: &Store, n: u64, batch: u64) -> Res<()> {
    let fp = fp()?;
    let mut i = 0;
    while i < n {
        let end = (i + batch).min(n);
        let writes = (i..end)
            .map(|j| Write::put(&fp, &key(j), &value(j)))
            .collect();
        store.write(writes)?;
        i = end;
    }
    Ok(())
}

/// The SQLite schema: a WITHOUT ROWID table keyed by the key (one B-tree,
/// the fastest layout SQLite offers for point lookups by key).
const SCHEMA: &str =
    "CREATE TABLE IF NOT EXISTS kv(k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;";

/// Opens a SQLite database in WAL mode with the given `synchronous` level
/// (`FULL`, `NORMAL`, ...) and a long busy timeout.
pub(crate) fn sqlite(path: &Path, synchronous: &str) -> Res<Connection> {
    let c = Connection::open(path)?;
    c.busy_timeout(Duration::from_secs(120))?;
    let mode: String = c.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("SQLite refused WAL mode (got {mode})").into());
    }
    c.execute_batch(&format!("PRAGMA synchronous={synchronous};"))?;
    c.execute_batch(SCHEMA)?;
    Ok(c)
}

/// Writes keys `0..n` into SQLite in one transaction.
pub(crate) fn sqlite_fill(c: &mut Connection, n: u64) -> Res<()> {
    let tx = c.transaction()?;
    {
        let mut st = tx.prepare("INSERT OR REPLACE INTO kv(k, v) VALUES (?1, ?2)")?;
        for i in 0..n {
            st.execute((key(i), value(i)))?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Runs one autocommit INSERT, retrying while SQLite says the database is
/// busy or locked; returns how many retries it took.
pub(crate) fn sqlite_insert_retry(c: &Connection, k: &[u8], v: &[u8]) -> Res<u64> {
    let mut st = c.prepare_cached("INSERT OR REPLACE INTO kv(k, v) VALUES (?1, ?2)")?;
    let mut retries = 0;
    loop {
        match st.execute((k, v)) {
            Ok(_) => return Ok(retries),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(e.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) =>
            {
                retries += 1;
                std::thread::yield_now();
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Opens (creating if needed) an LMDB environment with default (durable)
/// flags: every commit is synced before it returns.
#[allow(unsafe_code)]
pub(crate) fn lmdb(dir: &Path, map_size: usize) -> Res<Env> {
    std::fs::create_dir_all(dir)?;
    // SAFETY: heed marks opening unsafe because the files are memory mapped:
    // modifying or truncating them outside LMDB while mapped would be UB.
    // The benchmark's LMDB files live in a private temporary directory and
    // are only ever touched through LMDB itself.
    let env = unsafe {
        EnvOpenOptions::new()
            .map_size(map_size)
            .max_dbs(4)
            .open(dir)?
    };
    Ok(env)
}

/// The environment's unnamed database, raw bytes to raw bytes.
pub(crate) fn lmdb_db(env: &Env) -> Res<Database<'_, Bytes, Bytes>> {
    let wtxn = env.write_txn()?;
    let done = env.create_databases_and_commit(wtxn, |opener, wtxn| {
        opener
            .create_database::<Bytes, Bytes>(wtxn, None)
            .map(CommitOrAbort::<_, ()>::Commit)
    });
    match done? {
        CommitOrAbort::Commit(db) => Ok(db),
        CommitOrAbort::Abort(()) => Err("LMDB aborted creating the database".into()),
    }
}

/// Writes keys `0..n` into LMDB in one transaction.
pub(crate) fn lmdb_fill(env: &Env, db: &Database<'_, Bytes, Bytes>, n: u64) -> Res<()> {
    let mut wtxn = env.write_txn()?;
    for i in 0..n {
        db.put(&mut wtxn, &key(i), &value(i))?;
    }
    wtxn.commit()?;
    Ok(())
}
