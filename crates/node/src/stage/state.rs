//! What a stage remembers in its own directory, under `$stage/state`, and
//! what `chorus stage status` reads: how far it has pushed (a feed
//! cursor, advanced only once the upstream acknowledged), where each
//! followed prefix's pull stands, the last push and the last error.
//! Reports of near-simultaneous writes are under `$stage/reports`.

use std::collections::BTreeMap;
use std::path::Path;

use chorus_core::FullPrefix;
use chorus_store::stage_request;
use chorus_store::{
    Cursor, Feed, GetOptions, IterOptions, Metadata, Origin, PutOptions, PutValue, Resolver, Scope,
    Store,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Error;
use crate::sync_http::REPORTS;

/// Where the daemon's state lives in the stage directory.
pub(crate) const STATE: (&str, &str) = ("$stage", "state");
/// Its key.
const STATE_KEY: &[u8] = b"daemon";
/// How many reports `status` shows.
const RECENT_REPORTS: usize = 10;

/// The last push that the upstream acknowledged.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct PushRecord {
    pub(crate) time_ms: u64,
    pub(crate) keys: usize,
    pub(crate) requests: usize,
    pub(crate) reports: usize,
}

/// The last failure talking to the upstream.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ErrorRecord {
    pub(crate) time_ms: u64,
    pub(crate) message: String,
}

/// Where the pull of one followed prefix stands.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct PullState {
    /// The upstream's feed cursor up to which its changes are merged here;
    /// `None`: pull everything (first time, or compaction outran it).
    pub(crate) cursor: Option<String>,
    /// During a full pull: the next page's token, and the cursor the
    /// first page returned, to continue from once every page is in.
    #[serde(default)]
    pub(crate) after: Option<String>,
    #[serde(default)]
    pub(crate) full_cursor: Option<String>,
}

/// The daemon's state, stored as JSON.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Saved {
    pub(crate) upstream: String,
    pub(crate) upstream_node: Option<String>,
    /// Everything local before this point of the stage's feed is upstream.
    /// `None`: nothing was ever pushed (the first push sends every key).
    pub(crate) push_cursor: Option<String>,
    /// The full prefixes pushed to (followed when no --follow is given).
    pub(crate) pushed_prefixes: Vec<String>,
    pub(crate) pulls: BTreeMap<String, PullState>,
    pub(crate) last_push: Option<PushRecord>,
    pub(crate) last_error: Option<ErrorRecord>,
    pub(crate) pushes_total: u64,
    pub(crate) requests_total: u64,
    pub(crate) keys_pushed_total: u64,
    pub(crate) reports_total: u64,
    pub(crate) full_pushes: u64,
    pub(crate) pid: u32,
    pub(crate) started_ms: u64,
    pub(crate) config: Value,
}

fn state_fp() -> Result<FullPrefix, Error> {
    FullPrefix::new(STATE.0, STATE.1).map_err(|e| Error::Config(e.to_string()))
}

pub(crate) fn reports_fp() -> Result<FullPrefix, Error> {
    FullPrefix::new(REPORTS.0, REPORTS.1).map_err(|e| Error::Config(e.to_string()))
}

impl Saved {
    /// The state stored in the directory (default if none).
    pub(crate) fn load(meta: &Metadata) -> Result<Saved, Error> {
        let opts = GetOptions {
            resolver: Resolver::Lww,
            ..GetOptions::default()
        };
        let Some(read) = meta.get(&state_fp()?, STATE_KEY, &opts)? else {
            return Ok(Saved::default());
        };
        let Some(bytes) = read.values.first().and_then(|v| v.bytes()) else {
            return Ok(Saved::default());
        };
        serde_json::from_slice(bytes).map_err(|e| {
            Error::Config(format!(
                "the stage state in {} is not readable ({e}); delete nothing, report it",
                meta.store().dir().display()
            ))
        })
    }

    /// Stores it (one commit).
    pub(crate) fn save(&self, meta: &Metadata) -> Result<(), Error> {
        let bytes = serde_json::to_vec(self)
            .map_err(|e| Error::Config(format!("cannot encode the stage state: {e}")))?;
        meta.put_reserved(
            &state_fp()?,
            STATE_KEY,
            PutValue::Bytes(bytes),
            &PutOptions::default(),
        )?;
        Ok(())
    }
}

/// The stage lock: held by the daemon for its whole life, so that two
/// daemons never push from one directory at once, and so that
/// `chorus stage status` and push requests see whether one runs
/// ([`chorus_store::stage_request::daemon_running`]).
pub(crate) fn lock(dir: &Path) -> Result<std::fs::File, Error> {
    // `status` takes the lock for an instant to see whether it is free.
    for _ in 0..40 {
        if let Some(file) = stage_request::lock_daemon(dir)? {
            return Ok(file);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Err(Error::Config(format!(
        "another `chorus stage` runs on {} (it holds {}): stop it first",
        dir.display(),
        dir.join(stage_request::LOCK_FILE).display()
    )))
}

/// The keys of the stage's local commits after `cursor` (the ones a push
/// has not sent yet), up to `limit`; `None` when compaction outran the
/// cursor (every key waits).
pub(crate) fn waiting_after(store: &Store, cursor: Cursor) -> Result<Option<usize>, Error> {
    let mut keys = std::collections::BTreeSet::new();
    let mut at = cursor;
    loop {
        match store.changes_since(&at, 256)? {
            Feed::Gap { .. } => return Ok(None),
            Feed::Changes { changes, next } => {
                if changes.is_empty() {
                    return Ok(Some(keys.len()));
                }
                for c in changes.into_iter().filter(|c| c.origin == Origin::Local) {
                    for k in c.keys {
                        if !k.full_prefix.is_reserved() {
                            keys.insert((k.full_prefix, k.key));
                        }
                    }
                }
                at = next;
            }
        }
    }
}

/// Every key of the directory outside reserved prefixes.
pub(crate) fn all_keys(store: &Store) -> Result<Vec<(FullPrefix, Vec<u8>)>, Error> {
    let snap = store.snapshot()?;
    Ok(snap
        .iter()
        .filter(|(fp, _, _)| !fp.is_reserved())
        .map(|(fp, k, _)| (fp.clone(), k.as_bytes().to_vec()))
        .collect())
}

/// The reports of near-simultaneous writes in the directory, oldest first.
pub(crate) fn reports(meta: &Metadata) -> Result<Vec<Value>, Error> {
    let items = meta.to_list(
        &Scope::FullPrefix(reports_fp()?),
        &IterOptions {
            resolver: Resolver::Lww,
            ..IterOptions::default()
        },
    )?;
    let mut out: Vec<(Vec<u8>, Value)> = items
        .into_iter()
        .filter_map(|i| {
            let bytes = i.read.values.first()?.bytes()?;
            Some((i.key, serde_json::from_slice(bytes).ok()?))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out.into_iter().map(|(_, v)| v).collect())
}

/// What `chorus stage status` shows, read from the stage directory: works
/// whether the daemon runs or not.
pub fn status(store: &Store) -> Result<Value, Error> {
    let meta = Metadata::new(store.clone());
    let saved = Saved::load(&meta)?;
    let waiting = match saved.push_cursor.as_deref().map(Cursor::parse).transpose() {
        Ok(Some(c)) => waiting_after(store, c)?,
        _ => None,
    };
    let (waiting, note) = match waiting {
        Some(n) => (n, None),
        None => (
            all_keys(store)?.len(),
            Some(if saved.push_cursor.is_none() {
                "nothing was pushed yet: the first push sends every key"
            } else {
                "compaction outran the push cursor: the next push sends every key"
            }),
        ),
    };
    let reports = reports(&meta)?;
    let recent: Vec<Value> = reports
        .iter()
        .skip(reports.len().saturating_sub(RECENT_REPORTS))
        .cloned()
        .collect();
    let mut out = json!({
        "dir": store.dir(),
        "node": store.node_id().to_string(),
        "running": stage_request::daemon_running(store.dir()),
        "upstream": if saved.upstream.is_empty() { Value::Null } else { json!(saved.upstream) },
        "upstream_node": saved.upstream_node,
        "waiting": waiting,
        "push_cursor": saved.push_cursor,
        "last_push": saved.last_push,
        "last_error": saved.last_error,
        "pushes_total": saved.pushes_total,
        "requests_total": saved.requests_total,
        "keys_pushed_total": saved.keys_pushed_total,
        "full_pushes": saved.full_pushes,
        "pushed_prefixes": saved.pushed_prefixes,
        "pulls": saved.pulls.iter().map(|(k, v)| (k.clone(), json!(v.cursor))).collect::<BTreeMap<_, _>>(),
        "reports_total": reports.len(),
        "recent_reports": recent,
        "pid": (saved.pid != 0).then_some(saved.pid),
        "started_ms": (saved.started_ms != 0).then_some(saved.started_ms),
        "config": saved.config,
    });
    if let Some(n) = note {
        out["waiting_note"] = json!(n);
    }
    Ok(out)
}
