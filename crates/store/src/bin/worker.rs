//! A worker process for the engine's multi-process and crash tests.
//!
//! Each command opens the store given as the first argument and reports on
//! stdout, one line per event, flushed at once so that a parent that kills
//! the worker knows exactly what was acknowledged:
//!
//! - `write DIR TAG COUNT SYNC`: COUNT commits of key `TAG-i`; prints `ack i`.
//!   Then waits for a line on stdin and prints `sees N` (keys it can see).
//! - `counter DIR COUNT`: COUNT read-modify-write increments of `c/n/count`
//!   in transactions, retrying on conflicts; prints `conflicts N`.
//! - `torture DIR SYNC COMPACT_EVERY`: commits forever; commit i writes
//!   `i-a`, `i-b`, `i-c` = i; prints `ack i`. Compacts every COMPACT_EVERY.
//! - `readwrite DIR TAG COUNT`: writes TAG-i and reads each back, checking
//!   every earlier key of its own; prints `generation G` at the end.
//! - `hold DIR MILLIS`: holds the writer lock for MILLIS; prints `locked`.
//! - `meta-put-after-read DIR KEY VALUE`: reads KEY (metadata API), prints
//!   `read`, waits for a line on stdin, puts VALUE with the context it read.
//! - `meta-values DIR KEY`: prints `values N` (siblings of KEY).
//! - `meta-churn DIR COUNT`: inserts and deletes `churn-i` keys COUNT times.
//! - `doc-edit DIR STORE ID FIELD VALUE KEEP_BOTH`: reads document ID,
//!   prints `read REV`, waits for a line on stdin, then updates that
//!   revision with FIELD = VALUE; prints `saved REV` or `conflict`.
//! - `op-push DIR PATH COUNT`: COUNT pushes of counter +1 at PATH in
//!   `ops/test`; prints `pushed COUNT`.
//! - `auto-churn DIR TAG COUNT KEYS SLACK`: COUNT overwrites of keys
//!   `TAG-(i % KEYS)` = i with automatic compaction at a slack of SLACK
//!   bytes (sync `never`); after each it reads the key back, and every
//!   KEYS commits reads every key of its own. Prints `longest_commit_ms N`,
//!   `longest_read_ms N`, `most_over N` (the largest amount by which the
//!   committed log length exceeded its threshold after a commit, 0 if never),
//!   `compactions N` (its own), then `done`.
//! - `doc-churn DIR STORE ID`: upserts document ID forever with fields
//!   `a` = `b` = i and a filler of i % 500 bytes; prints `ack i`.

use std::io::{BufRead, Write as _};
use std::process::ExitCode;
use std::time::Duration;

use chorus_core::FullPrefix;
use chorus_store::{
    AutoCompact, Error, GetOptions, Metadata, Options, PutOptions, PutValue, Store, SyncMode, Write,
};

type Failure = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("worker {args:?}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn say(line: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

fn sync_mode(s: &str) -> Result<SyncMode, Failure> {
    match s {
        "always" => Ok(SyncMode::Always),
        "batch" => Ok(SyncMode::Batch),
        "never" => Ok(SyncMode::Never),
        other => Err(format!("unknown sync mode {other}").into()),
    }
}

fn arg(args: &[String], i: usize) -> Result<&str, Failure> {
    args.get(i)
        .map(String::as_str)
        .ok_or_else(|| format!("missing argument {i}").into())
}

fn open(dir: &str, sync: SyncMode) -> Result<Store, Failure> {
    Ok(Store::open(
        dir.as_ref(),
        Options {
            create: true,
            sync,
            lock_timeout: Duration::from_secs(60),
            ..Options::default()
        },
    )?)
}

fn run(args: &[String]) -> Result<(), Failure> {
    let dir = arg(args, 1)?;
    let fp = FullPrefix::parse("test/keys")?;
    match arg(args, 0)? {
        "write" => {
            let tag = arg(args, 2)?;
            let count: u64 = arg(args, 3)?.parse()?;
            let store = open(dir, sync_mode(arg(args, 4)?)?)?;
            for i in 0..count {
                store.put(&fp, format!("{tag}-{i}").as_bytes(), &i.to_le_bytes())?;
                say(&format!("ack {i}"))?;
            }
            say("done")?;
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            say(&format!("sees {}", store.snapshot()?.len()))?;
        }
        "counter" => {
            let count: u64 = arg(args, 2)?.parse()?;
            let store = open(dir, SyncMode::Always)?;
            let c = FullPrefix::parse("c/n")?;
            let mut conflicts = 0u64;
            for _ in 0..count {
                loop {
                    let mut tx = store.begin()?;
                    let n = tx.get(&c, b"count").map_or(0, |v| decode(&v));
                    tx.put(&c, b"count", &(n + 1).to_le_bytes());
                    match tx.commit() {
                        Ok(_) => break,
                        Err(Error::WriteConflict { .. }) => conflicts += 1,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            say(&format!("conflicts {conflicts}"))?;
        }
        "torture" => {
            let store = open(dir, sync_mode(arg(args, 2)?)?)?;
            let compact_every: u64 = arg(args, 3)?.parse()?;
            let mut i = store.snapshot()?.len() as u64 / 3;
            loop {
                let v = i.to_le_bytes();
                let writes = ["a", "b", "c"]
                    .iter()
                    .map(|s| Write::put(&fp, format!("{i}-{s}").as_bytes(), &v))
                    .collect();
                store.write(writes)?;
                say(&format!("ack {i}"))?;
                i += 1;
                if compact_every > 0 && i.is_multiple_of(compact_every) {
                    store.compact()?;
                }
            }
        }
        "readwrite" => {
            let tag = arg(args, 2)?;
            let count: u64 = arg(args, 3)?.parse()?;
            let store = open(dir, SyncMode::Always)?;
            for i in 0..count {
                let key = format!("{tag}-{i}");
                store.put(&fp, key.as_bytes(), &i.to_le_bytes())?;
                for j in (0..=i).step_by(7) {
                    let key = format!("{tag}-{j}");
                    if store.get(&fp, key.as_bytes())?.is_none() {
                        return Err(format!("{key} vanished").into());
                    }
                }
            }
            say(&format!("generation {}", store.snapshot()?.generation()))?;
        }
        "hold" => {
            let millis: u64 = arg(args, 2)?.parse()?;
            let store = open(dir, SyncMode::Always)?;
            store.update(move |_| {
                let _ = say("locked");
                std::thread::sleep(Duration::from_millis(millis));
                Ok(vec![])
            })?;
        }
        "meta-put-after-read" => {
            let (key, value) = (arg(args, 2)?, arg(args, 3)?);
            let meta = Metadata::new(open(dir, SyncMode::Always)?);
            let read = meta.get(&fp, key.as_bytes(), &GetOptions::default())?;
            let context = read.map(|r| r.context).unwrap_or_default();
            say("read")?;
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            let opts = PutOptions {
                context: Some(context),
                ..Default::default()
            };
            meta.put(
                &fp,
                key.as_bytes(),
                PutValue::Bytes(value.as_bytes().to_vec()),
                &opts,
            )?;
            say("done")?;
        }
        "meta-values" => {
            let meta = Metadata::new(open(dir, SyncMode::Always)?);
            let read = meta.get(&fp, arg(args, 2)?.as_bytes(), &GetOptions::default())?;
            say(&format!("values {}", read.map_or(0, |r| r.values.len())))?;
        }
        "meta-churn" => {
            let count: u64 = arg(args, 2)?.parse()?;
            let meta = Metadata::new(open(dir, SyncMode::Never)?);
            for i in 0..count {
                let key = format!("churn-{}", i % 50);
                meta.put(
                    &fp,
                    key.as_bytes(),
                    PutValue::Bytes(i.to_le_bytes().to_vec()),
                    &PutOptions::default(),
                )?;
                if i % 3 == 0 {
                    meta.delete(&fp, key.as_bytes(), &PutOptions::default())?;
                }
            }
            say("done")?;
        }
        "doc-edit" => {
            let (store_name, id, field, value) =
                (arg(args, 2)?, arg(args, 3)?, arg(args, 4)?, arg(args, 5)?);
            let keep_both = arg(args, 6)? == "true";
            let meta = Metadata::new(open(dir, SyncMode::Always)?);
            let docs = chorus_store::docs::Docs::open(&meta, store_name)?;
            let mut doc = docs.get(id)?;
            say(&format!("read {}", doc["_rev"].as_str().unwrap_or("?")))?;
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            doc[field] = serde_json::Value::String(value.to_string());
            match docs.update(doc, keep_both) {
                Ok(saved) => say(&format!("saved {}", saved.rev))?,
                Err(Error::Conflict(_)) => say("conflict")?,
                Err(e) => return Err(e.into()),
            }
        }
        "op-push" => {
            let (path, count) = (arg(args, 2)?, arg(args, 3)?.parse::<u64>()?);
            let meta = Metadata::new(open(dir, SyncMode::Batch)?);
            let ops = chorus_store::oplog::Oplogs::new(&meta);
            let fp = FullPrefix::parse("ops/test")?;
            for _ in 0..count {
                ops.push(&fp, path, "counter", serde_json::json!(1))?;
            }
            say(&format!("pushed {count}"))?;
        }
        "auto-churn" => {
            let tag = arg(args, 2)?;
            let count: u64 = arg(args, 3)?.parse()?;
            let keys: u64 = arg(args, 4)?.parse::<u64>()?.max(1);
            let slack: u64 = arg(args, 5)?.parse()?;
            let store = Store::open(
                dir.as_ref(),
                Options {
                    create: true,
                    sync: SyncMode::Never,
                    lock_timeout: Duration::from_secs(60),
                    auto_compact: Some(AutoCompact {
                        slack_bytes: slack,
                        ..AutoCompact::default()
                    }),
                    ..Options::default()
                },
            )?;
            let (mut longest_commit, mut longest_read) = (Duration::ZERO, Duration::ZERO);
            let mut most_over = 0u64;
            for i in 0..count {
                let key = format!("{tag}-{}", i % keys);
                let started = std::time::Instant::now();
                store.put(&fp, key.as_bytes(), &i.to_le_bytes())?;
                longest_commit = longest_commit.max(started.elapsed());
                let started = std::time::Instant::now();
                let back = store.get(&fp, key.as_bytes())?;
                if back.as_deref() != Some(&i.to_le_bytes()[..]) {
                    return Err(format!("{key} reads {back:?} right after writing {i}").into());
                }
                if i % keys == keys - 1 {
                    for j in i + 1 - keys..=i {
                        let key = format!("{tag}-{}", j % keys);
                        let got = store.get(&fp, key.as_bytes())?.map(|v| decode(&v));
                        if got != Some(j) {
                            return Err(format!("{key} reads {got:?}, last written {j}").into());
                        }
                    }
                }
                longest_read = longest_read.max(started.elapsed());
                let status = store.status()?;
                let threshold = status.compact_at.ok_or("automatic compaction is off")?;
                most_over = most_over.max(status.log_bytes.saturating_sub(threshold));
            }
            say(&format!("longest_commit_ms {}", longest_commit.as_millis()))?;
            say(&format!("longest_read_ms {}", longest_read.as_millis()))?;
            say(&format!("most_over {most_over}"))?;
            say(&format!(
                "compactions {}",
                store.write_stats().auto_compactions
            ))?;
            say("done")?;
        }
        "doc-churn" => {
            let (store_name, id) = (arg(args, 2)?, arg(args, 3)?);
            let meta = Metadata::new(open(dir, SyncMode::Always)?);
            let docs = chorus_store::docs::Docs::open(&meta, store_name)?;
            let start = docs.get(id).ok().and_then(|d| d["a"].as_u64()).unwrap_or(0);
            for i in start + 1.. {
                let filler = "x".repeat((i % 500) as usize);
                docs.upsert(serde_json::json!({"_id": id, "a": i, "b": i, "filler": filler}))?;
                say(&format!("ack {i}"))?;
            }
        }
        other => return Err(format!("unknown command {other}").into()),
    }
    Ok(())
}

fn decode(v: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = v.len().min(8);
    b[..n].copy_from_slice(&v[..n]);
    u64::from_le_bytes(b)
}
