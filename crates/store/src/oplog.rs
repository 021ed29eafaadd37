//! Operation logs over the causal store: the value at a path is the
//! reduction of its log ([`chorus_core::oplog`]).
//!
//! A path's log is a group of keys in its full prefix (see
//! [`Snapshot::group`]): the **head** at the key `path` (the log's type and
//! its newest checkpoint, [`OpLog::encode_head`]; siblings from several
//! nodes merge as before) and one immutable **record** per operation at
//! `path\0{timestamp:016x}.{node}.{sha}` ([`Op::encode_record`]). A record
//! is written once by the node that pushed it, so it never has siblings,
//! and writing it again is a no-op. A push writes (and the daemon
//! broadcasts) the new record only: O(size of the operation), whatever the
//! log's length.
//!
//! A push runs under the writer lock with a timestamp above every operation
//! in the log it extends (and above the directory's last commit), and above
//! every operation a record key of the group names, tombstones included: so
//! it sorts after everything its writer had seen, even while another node's
//! prune has arrived in part (its tombstones without its head).
//!
//! **Kept values.** Each process keeps, per path it has read, the reducer's
//! state with the snapshot it reflects, and catches up from
//! [`Snapshot::changed_since`]: an operation that sorts after everything
//! already folded is applied in one reducer call; one that sorts earlier
//! (from a peer or an offline node), a new checkpoint or a removed record
//! re-folds from the newest checkpoint. So `get` and `push` cost O(what
//! changed since this process last looked), not O(the log); a process's
//! first read of a path folds from the checkpoint once. A refused push
//! leaves every kept value as it was. Kept values are bounded in paths
//! ([`KEPT_PATHS_MAX`]) and estimated bytes ([`KEPT_BYTES_MAX`]).
//!
//! **Budget.** [`Oplogs::with_budget`] bounds the reducer work of one
//! `get` or `push` in fuel (a built-in call counts one, a script call its
//! Rhai operations): one that runs out keeps the partial fold and fails
//! with [`Error::Busy`], writing nothing; the next call goes on from it.
//!
//! **Pruning** writes a new head (the checkpoint) and deletes the records
//! it folded, at most [`FOLD_PER_COMMIT_MAX`] per commit. In a cluster the
//! records become tombstones that the daemon collects; in a directory that
//! no daemon has ever served (no member under `$cluster/members`) they are
//! removed outright, and pushes prune by themselves: once a log holds more
//! than [`SOLO_PRUNE_MIN_OPS`] unfolded operations and its oldest is older
//! than the grace period ([`DEFAULT_SOLO_GRACE`]), operations older than
//! the grace period are folded (`docs/oplogs.md`). A prune's head and
//! tombstones are separate keys that may reach a peer apart: while a log
//! holds a tombstone of a record its checkpoint did not fold, the peer
//! lacks a checkpoint made elsewhere, and a prune there folds nothing (its
//! checkpoint would replace that one and drop what it folded) until the
//! head arrives.
//!
//! Logs written by earlier releases (the head with every operation inline,
//! format version 1) are read as they are and converted on their first
//! push or prune: the inline operations become records, the head loses
//! them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use chorus_core::FullPrefix;
use chorus_core::object::Hlc;
use chorus_core::oplog::{
    Budget, Checkpoint, MAX_PAYLOAD_BYTES, Metered, Op, OpKey, OpLog, RECORD_PREFIX, Reducer,
    Standing, Stopped, apply_metered, built_in, standing, validate_kind,
};
use serde_json::Value;

use crate::hamt::in_group;
use crate::metadata::{Metadata, Writer, new_object_bytes, tombstone_object_bytes};
use crate::{Bytes, Error, Result, Snapshot, Write};

/// A compiled script reducer and the stored bytes it came from.
type CompiledScript = (Vec<u8>, Arc<dyn Reducer>);

/// Most paths whose values a process keeps (least recently used first out).
pub const KEPT_PATHS_MAX: usize = 4096;
/// Most bytes the kept values of a process hold, as estimated (least
/// recently used first out; the value in use is kept whatever its size).
pub const KEPT_BYTES_MAX: usize = 64 << 20;
/// The reducer work one request may do by default where a budget is set
/// ([`Oplogs::with_budget`]; the daemon sets this one): ten calls' worth of
/// a script's operation limit ([`crate::script::MAX_OPERATIONS`]); a
/// built-in reducer's call counts one.
pub const DEFAULT_REQUEST_BUDGET: u64 = 10 * crate::script::MAX_OPERATIONS;
/// Most records one pruning commit folds; a larger prune takes several.
pub const FOLD_PER_COMMIT_MAX: usize = 10_000;
/// A directory no daemon serves prunes a log on push only past this many
/// unfolded operations.
pub const SOLO_PRUNE_MIN_OPS: usize = 1024;
/// How old an operation must be before a directory no daemon serves folds
/// it (the daemon's default tombstone grace).
pub const DEFAULT_SOLO_GRACE: Duration = Duration::from_secs(3600);

/// Operation logs in a [`Metadata`] store, with the reducers this process
/// knows (the built-in ones, and those registered).
#[derive(Clone)]
pub struct Oplogs {
    meta: Metadata,
    reducers: Arc<RwLock<BTreeMap<String, Arc<dyn Reducer>>>>,
    /// Compiled scripts by type, with the stored bytes they came from.
    scripts: Arc<Mutex<BTreeMap<String, CompiledScript>>>,
    /// Kept values by (full prefix, path).
    kept: Arc<Mutex<Kept>>,
    solo_grace: Duration,
    /// Reducer work one `get` or `push` may do (`None`: no limit).
    budget: Option<u64>,
}

impl std::fmt::Debug for Oplogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oplogs").finish_non_exhaustive()
    }
}

/// A path's log as readers see it.
#[derive(Debug, Clone)]
pub struct LogView {
    /// The merged log.
    pub log: OpLog,
    /// Operations older than the checkpoint that it did not fold: not
    /// applied, reported.
    pub late: Vec<Op>,
}

impl LogView {
    /// `{type, checkpoint, ops, late}` as JSON.
    pub fn to_json(&self) -> Value {
        let mut v = self.log.to_json();
        v["late"] = Value::Array(
            self.late
                .iter()
                .map(|op| {
                    serde_json::json!({"id": op.id(), "timestamp": op.timestamp, "node": op.node, "sha": op.sha, "payload": op.payload})
                })
                .collect(),
        );
        if let Some(m) = v.as_object_mut() {
            m.remove("v");
        }
        v
    }
}

/// The kept values of one process.
#[derive(Default)]
struct Kept {
    paths: HashMap<(FullPrefix, String), PathState>,
    /// The bound on their estimated bytes (`None`: [`KEPT_BYTES_MAX`]).
    bytes_max: Option<usize>,
    tick: u64,
    /// Per path, the operations left unfolded by its last prune by the
    /// rule for a directory no daemon serves (see `solo_prune_due`).
    pruned_alone: HashMap<(FullPrefix, String), usize>,
}

/// What a process keeps of one path's log: its value at one snapshot, or
/// (`partial`) the value of the operations up to `last` of the log at that
/// snapshot, where a request's budget ran out.
#[derive(Clone)]
struct PathState {
    /// The snapshot's seq.
    seq: u64,
    /// The head key's bytes then.
    head: Option<Bytes>,
    /// The reducer used, so a new script re-folds.
    reducer: Option<Arc<dyn Reducer>>,
    kind: String,
    checkpoint: Option<Checkpoint>,
    /// The reducer's state after the checkpoint and every applied op.
    state: Value,
    /// The greatest and least operations applied.
    last: Option<OpKey>,
    /// The greatest timestamp named by a record key of the group, live or
    /// a tombstone (see [`LogRead::named_max`]).
    named_max: u64,
    first: Option<OpKey>,
    /// Shas of the operations applied (since the checkpoint).
    applied: HashSet<String>,
    /// The head holds inline operations (format version 1).
    inline: bool,
    /// The operations of the log at `seq` that sort after `last` are not
    /// folded yet: a request's budget ran out (see [`Oplogs::with_budget`]).
    partial: bool,
    /// The estimated bytes it holds (see [`PathState::estimate`]).
    bytes: usize,
    used: u64,
}

impl PathState {
    fn max_timestamp(&self) -> u64 {
        let ops = self.last.as_ref().map_or(0, |k| k.0);
        let cp = self.checkpoint.as_ref().map_or(0, |c| c.upto.0);
        ops.max(cp).max(self.named_max)
    }

    /// An estimate of the memory it holds: its state and checkpoint
    /// value, the shas it applied and its head.
    fn estimate(&self) -> usize {
        let sha = 64 + 48;
        json_bytes(&self.state)
            .saturating_add(self.checkpoint.as_ref().map_or(0, |c| json_bytes(&c.value)))
            .saturating_add(self.applied.len().saturating_mul(sha))
            .saturating_add(self.head.as_ref().map_or(0, |h| h.len()))
            .saturating_add(256)
    }
}

/// An estimate of the memory a JSON value holds (its text plus the
/// allocations around it), without recursion.
fn json_bytes(value: &Value) -> usize {
    let mut total = 0usize;
    let mut todo = vec![value];
    while let Some(v) = todo.pop() {
        total = total.saturating_add(match v {
            Value::Null | Value::Bool(_) | Value::Number(_) => 16,
            Value::String(t) => 24 + t.len(),
            Value::Array(items) => {
                todo.extend(items.iter());
                24
            }
            Value::Object(m) => {
                for (k, item) in m {
                    total = total.saturating_add(48 + k.len());
                    todo.push(item);
                }
                24
            }
        });
    }
    total
}

/// How a kept value was brought up to a snapshot.
enum CaughtUp {
    /// It reflects the snapshot.
    Done,
    /// It cannot be caught up: fold again.
    Refold,
    /// The budget ran out: it is partial (see [`PathState::partial`]).
    OutOfFuel,
}

impl Kept {
    /// Drops least recently used values beyond the bounds, never `keep`.
    fn evict(&mut self, keep: &(FullPrefix, String)) {
        let bytes_max = self.bytes_max.unwrap_or(KEPT_BYTES_MAX);
        let mut bytes: usize = self.paths.values().map(|p| p.bytes).sum();
        while self.paths.len() > KEPT_PATHS_MAX || (bytes > bytes_max && self.paths.len() > 1) {
            let victim = self
                .paths
                .iter()
                .filter(|(k, _)| *k != keep)
                .min_by_key(|(_, p)| p.used)
                .map(|(k, _)| k.clone());
            let Some(victim) = victim else { break };
            if let Some(p) = self.paths.remove(&victim) {
                bytes = bytes.saturating_sub(p.bytes);
            }
        }
    }
}

/// What a push needs of a kept value.
struct Current {
    kind: String,
    state: Value,
    checkpoint: Option<Checkpoint>,
    max_timestamp: u64,
    inline: bool,
}

/// What a push computed under the lock.
struct Pushed {
    /// The seq of the snapshot it started from.
    from_seq: u64,
    op: Op,
    after: Value,
    /// It wrote the head too (a first push, or a conversion).
    wrote_head: bool,
    /// The head's bytes, when it wrote a new log's head (a first push).
    new_head: Option<Bytes>,
}

impl Oplogs {
    /// The logs of `meta`, with the built-in reducers.
    pub fn new(meta: &Metadata) -> Oplogs {
        Oplogs {
            meta: meta.clone(),
            reducers: Arc::default(),
            scripts: Arc::default(),
            kept: Arc::default(),
            solo_grace: DEFAULT_SOLO_GRACE,
            budget: None,
        }
    }

    /// Limits the reducer work of each [`Oplogs::get`] and
    /// [`Oplogs::push`] to `units` of fuel (a built-in reducer's call
    /// counts one, a script's call the Rhai operations it runs; at least
    /// [`crate::script::MAX_OPERATIONS`], so that any operation fits in
    /// one request). A call that runs out keeps what it folded and fails
    /// with [`Error::Busy`], writing nothing: the next call goes on from
    /// there. No limit by default; the daemon sets
    /// [`DEFAULT_REQUEST_BUDGET`].
    pub fn with_budget(mut self, units: u64) -> Oplogs {
        self.budget = Some(units.max(crate::script::MAX_OPERATIONS));
        self
    }

    /// Bounds the estimated bytes of the values this process keeps (for
    /// every handle sharing them) to `bytes` instead of
    /// [`KEPT_BYTES_MAX`].
    pub fn with_kept_bytes(self, bytes: usize) -> Oplogs {
        self.kept().bytes_max = Some(bytes);
        self
    }

    /// The budget of one call.
    fn new_budget(&self) -> Budget {
        self.budget.map_or_else(Budget::unlimited, Budget::new)
    }

    /// How many paths this process keeps values of, and their estimated
    /// bytes (at most [`KEPT_PATHS_MAX`] and, but for the value in use,
    /// [`KEPT_BYTES_MAX`]).
    pub fn kept_stats(&self) -> (usize, usize) {
        let kept = self.kept();
        (kept.paths.len(), kept.paths.values().map(|p| p.bytes).sum())
    }

    /// The same logs (reducers, compiled scripts and kept values shared)
    /// through a handle whose writes record `meta` (see
    /// [`Metadata::stamped`]).
    pub fn stamped(&self, meta: chorus_core::object::Meta) -> Oplogs {
        Oplogs {
            meta: self.meta.stamped(meta),
            ..self.clone()
        }
    }

    /// How old an operation must be before a push in a directory that no
    /// daemon serves folds it (default [`DEFAULT_SOLO_GRACE`]).
    pub fn with_solo_grace(mut self, grace: Duration) -> Oplogs {
        self.solo_grace = grace;
        self
    }

    /// Registers (or replaces) the reducer of `kind` in this process.
    pub fn register(&self, kind: &str, reducer: Arc<dyn Reducer>) -> Result<()> {
        validate_kind(kind)?;
        self.reducers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(kind.to_string(), reducer);
        Ok(())
    }

    fn reducer(&self, kind: &str) -> Result<Arc<dyn Reducer>> {
        if let Some(r) = self
            .reducers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(kind)
        {
            return Ok(r.clone());
        }
        if let Some(r) = built_in(kind) {
            // Kept, so that its address identifies it in kept values.
            let r: Arc<dyn Reducer> = Arc::from(r);
            let mut all = self
                .reducers
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            return Ok(all.entry(kind.to_string()).or_insert(r).clone());
        }
        if let Some(r) = self.script(kind)? {
            return Ok(r);
        }
        Err(Error::InvalidInput(format!(
            "no reducer for type {kind:?}: use a built-in type (counter, max, min, set, list, json-merge, register), set a script (`chorus reducer set {kind} FILE`) or register one"
        )))
    }

    /// The full prefix a type's script is stored under.
    fn script_prefix(kind: &str) -> Result<FullPrefix> {
        Ok(FullPrefix::new("$reducers", kind)?)
    }

    /// The script reducer of `kind`, compiled once per stored version.
    fn script(&self, kind: &str) -> Result<Option<Arc<dyn Reducer>>> {
        let fp = Self::script_prefix(kind)?;
        let read = self.meta.get(
            &fp,
            b"script",
            &crate::GetOptions {
                resolver: crate::Resolver::Lww,
                ..crate::GetOptions::default()
            },
        )?;
        let Some(source) = read
            .filter(|r| !r.tombstone)
            .and_then(|r| r.values.first().and_then(|v| v.bytes().map(<[u8]>::to_vec)))
        else {
            return Ok(None);
        };
        let mut cache = self.scripts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, r)) = cache.get(kind).filter(|(b, _)| *b == source) {
            return Ok(Some(r.clone()));
        }
        let text = String::from_utf8(source.clone()).map_err(|_| {
            Error::InvalidInput(format!("the stored script for type {kind:?} is not UTF-8"))
        })?;
        let compiled: Arc<dyn Reducer> =
            Arc::new(crate::script::ScriptReducer::compile(kind, &text)?);
        cache.insert(kind.to_string(), (source, compiled.clone()));
        Ok(Some(compiled))
    }

    /// Stores `source` as the reducer script of `kind` (it replicates with
    /// the data); refuses a built-in type and a script that does not
    /// compile or has no `reduce(state, op)`.
    pub fn set_script(&self, kind: &str, source: &str) -> Result<()> {
        validate_kind(kind)?;
        if built_in(kind).is_some() {
            return Err(Error::InvalidInput(format!(
                "{kind:?} is a built-in type: give the script another name"
            )));
        }
        crate::script::ScriptReducer::compile(kind, source)?;
        self.meta.put_reserved(
            &Self::script_prefix(kind)?,
            b"script",
            crate::PutValue::Bytes(source.as_bytes().to_vec()),
            &crate::PutOptions::default(),
        )?;
        Ok(())
    }

    /// Pushes an operation of type `kind` onto the log at `path`; returns
    /// the value after it. The first push fixes the path's type. Writes the
    /// operation's record (and, on the first push, the head).
    pub fn push(&self, fp: &FullPrefix, path: &str, kind: &str, payload: Value) -> Result<Value> {
        validate_path(path)?;
        validate_kind(kind)?;
        if fp.is_reserved() {
            return Err(Error::InvalidInput(format!(
                "{fp} is reserved for Chorus itself (names starting with '$')"
            )));
        }
        let size = payload.to_string().len();
        if size > MAX_PAYLOAD_BYTES {
            return Err(Error::InvalidInput(format!(
                "the payload is {size} bytes of JSON; the limit is {MAX_PAYLOAD_BYTES}"
            )));
        }
        let reducer = self.reducer(kind)?;
        let mut budget = self.new_budget();
        // Caught up on a committed view first, so that the push itself
        // rarely has anything to catch up on.
        let snap = self.meta.store().snapshot()?;
        self.meta.store().refuse_unserved_at(&snap, fp)?;
        self.with_current(&snap, fp, path, &mut budget, |_| Ok(()))?;
        let (fp2, path2, kind2) = (fp.clone(), path.to_string(), kind.to_string());
        let writer = self.meta.writer();
        let this = self.clone();
        let in_closure = reducer.clone();
        let result = self.meta.store().update_returning(move |snap: &Snapshot| {
            let mut budget = budget;
            // A refusal is the push's answer, not the commit's failure:
            // it writes nothing and leaves the batch alone.
            Ok(
                match this.push_locked(
                    snap,
                    &fp2,
                    &path2,
                    &kind2,
                    &in_closure,
                    payload,
                    &writer,
                    &mut budget,
                ) {
                    Ok((writes, pushed)) => (writes, Ok(pushed)),
                    Err(e) => (Vec::new(), Err(e)),
                },
            )
        });
        let slot = (fp.clone(), path.to_string());
        let (info, pushed) = match result {
            Ok((info, Ok(pushed))) => (info, pushed),
            Ok((_, Err(refused))) => {
                // Nothing was written, and other paths' kept values were
                // not touched. This one may have caught up inside a batch
                // that then failed: dropped if it is ahead of what is
                // committed.
                let committed = self.meta.store().snapshot().map(|s| s.seq());
                let mut kept = self.kept();
                if kept
                    .paths
                    .get(&slot)
                    .is_some_and(|p| committed.as_ref().is_ok_and(|c| p.seq > *c))
                {
                    kept.paths.remove(&slot);
                }
                return Err(refused);
            }
            Err(e) => {
                // Kept values may have caught up on a batch that failed:
                // every one is folded again.
                self.kept().paths.clear();
                return Err(e);
            }
        };
        let value = reducer.view(&pushed.after);
        let mut pushed_len = 0;
        let solo_prune = {
            let mut kept = self.kept();
            let floor = kept.pruned_alone.get(&slot).copied().unwrap_or(0);
            // The kept value is the one the push started from, and the
            // push's commit is the next: it moves to the commit.
            let next_seq = info.as_ref().map(|i| i.seq);
            let follows = |p: &PathState| {
                !p.partial && p.seq == pushed.from_seq && next_seq == Some(p.seq + 1)
            };
            if pushed.wrote_head {
                match (kept.paths.get_mut(&slot), &pushed.new_head) {
                    // A new log: its head and first operation are known.
                    (Some(p), Some(head)) if p.kind.is_empty() && follows(p) => {
                        p.head = Some(head.clone());
                        p.kind = kind.to_string();
                        p.reducer = Some(reducer.clone());
                        p.checkpoint = None;
                        p.applied.clear();
                        p.first = None;
                        p.last = None;
                    }
                    // A conversion: folded again from the new head on
                    // the next read.
                    _ => {
                        kept.paths.remove(&slot);
                    }
                }
            }
            let due = match (kept.paths.get_mut(&slot), next_seq) {
                (Some(p), Some(seq)) if follows(p) => {
                    p.seq = seq;
                    p.applied.insert(pushed.op.sha.clone());
                    p.first.get_or_insert_with(|| pushed.op.key());
                    p.last = Some(pushed.op.key());
                    p.state = pushed.after;
                    p.bytes = p.estimate();
                    pushed_len = p.applied.len();
                    Some(self.solo_prune_due(p, floor))
                }
                _ => None,
            };
            if due.is_some() {
                kept.evict(&slot);
            }
            due.unwrap_or(false)
        };
        if solo_prune {
            // The push is committed: a prune that fails (a reducer error,
            // a full disk) is reported, not returned, and tried again on a
            // later push.
            match self.prunes_alone() {
                Ok(true) => match self.prune_older_than(fp, path, self.solo_grace) {
                    Ok(n) => {
                        let left = pushed_len.saturating_sub(n);
                        let mut kept = self.kept();
                        if kept.pruned_alone.len() >= KEPT_PATHS_MAX {
                            kept.pruned_alone.clear();
                        }
                        kept.pruned_alone.insert(slot, left);
                    }
                    Err(e) => {
                        tracing::warn!(full_prefix = %fp, path, error = %e, "cannot prune the operation log");
                    }
                },
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(full_prefix = %fp, path, error = %e, "cannot tell whether this directory prunes alone");
                }
            }
        }
        Ok(value)
    }

    /// The body of a push, under the writer lock.
    #[allow(clippy::too_many_arguments)]
    fn push_locked(
        &self,
        snap: &Snapshot,
        fp: &FullPrefix,
        path: &str,
        kind: &str,
        reducer: &Arc<dyn Reducer>,
        payload: Value,
        writer: &Writer,
        budget: &mut Budget,
    ) -> Result<(Vec<Write>, Pushed)> {
        let st = self.with_current(snap, fp, path, budget, |p| {
            Ok(Current {
                kind: p.kind.clone(),
                state: p.state.clone(),
                checkpoint: p.checkpoint.clone(),
                max_timestamp: p.max_timestamp(),
                inline: p.inline,
            })
        })?;
        if !st.kind.is_empty() && st.kind != kind {
            return Err(Error::Conflict(format!(
                "the log at {fp}/{path} has type {:?}, not {kind:?}",
                st.kind
            )));
        }
        let state = if st.kind.is_empty() {
            reducer.init()
        } else {
            st.state
        };
        let payload = reducer.prepare(&state, payload);
        let commit_ts = snap.commit_ts().unwrap_or_else(|| snap.last_ts());
        let ts = commit_ts.max(st.max_timestamp.saturating_add(1));
        let op = Op::new(kind, ts, &writer.node.to_string(), payload);
        // Checked before anything is written: a reducer error refuses the
        // push.
        let after = match reducer.reduce_metered(state, &op, budget.left()) {
            Metered::Done(after, cost) => {
                budget.charge(cost);
                after
            }
            Metered::Failed(e) => {
                return Err(Error::InvalidInput(format!(
                    "the reducer of type {kind:?} refused the operation ({}): {e}",
                    op.payload
                )));
            }
            Metered::OutOfFuel(_) => {
                budget.exhaust();
                return Err(Error::Busy(format!(
                    "the push to {fp}/{path} ran out of its reducer budget ({} units) before applying the new operation, after catching the log up: nothing was written; push again (what was folded is kept)",
                    budget.spent()
                )));
            }
        };
        if standing(st.checkpoint.as_ref(), &op) != Standing::Applies {
            return Err(Error::InvalidInput(format!(
                "the new operation {} sorts before the log's checkpoint: the clock is far behind",
                op.id()
            )));
        }
        let key = path.as_bytes();
        let mut writes = Vec::new();
        let mut new_head = None;
        if st.inline {
            writes = convert_inline(snap, fp, key, writer)?;
        } else if snap.get(fp, key).is_none() {
            let head = OpLog::new(kind).encode_head();
            let encoded = new_object_bytes(snap, fp, key, head, writer)?;
            writes.push(Write::put(fp, key, &encoded));
            new_head = Some(Bytes::from(encoded));
        }
        let rkey = record_key(key, &op);
        let encoded = new_object_bytes(snap, fp, &rkey, op.encode_record(kind), writer)?;
        writes.push(Write::put(fp, &rkey, &encoded));
        let wrote_head = writes.len() > 1;
        Ok((
            writes,
            Pushed {
                from_seq: snap.seq(),
                op,
                after,
                wrote_head,
                new_head: new_head.filter(|_| st.kind.is_empty()),
            },
        ))
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// True when no daemon has served this directory (it lists no member)
    /// and it is not a stage (`$stage`): nobody else can hold its
    /// operations, so it may prune by itself and remove what it folds.
    fn prunes_alone(&self) -> Result<bool> {
        let snap = self.meta.store().snapshot()?;
        let members = FullPrefix::parse("$cluster/members")?;
        let stage = FullPrefix::parse("$stage/state")?;
        Ok(snap.len_in(&members) == 0 && snap.len_in(&stage) == 0)
    }

    /// True when a push should look for operations to fold by the rule for
    /// a directory no daemon serves: enough of them (more than
    /// [`SOLO_PRUNE_MIN_OPS`], and twice what the last such prune left, so
    /// that its cost is spread over as many pushes as it reads), the
    /// oldest old enough.
    fn solo_prune_due(&self, p: &PathState, floor: usize) -> bool {
        if p.applied.len() <= SOLO_PRUNE_MIN_OPS.max(floor.saturating_mul(2)) {
            return false;
        }
        let cutoff_ms =
            now_ms(self.meta.store()).saturating_sub(self.solo_grace.as_millis() as u64);
        p.first.as_ref().is_some_and(|k| Hlc(k.0).ms() < cutoff_ms)
    }

    /// Runs `f` on the kept value of a path brought up to `snap`: caught
    /// up from what changed since it was kept, or folded again from the
    /// checkpoint (or from where a partial fold stopped). `f` runs under
    /// the lock of the kept values (nothing is copied but what it copies).
    /// Reducer work is taken from `budget`; when it runs out, what was
    /// folded is kept and the answer is [`Error::Busy`].
    fn with_current<R>(
        &self,
        snap: &Snapshot,
        fp: &FullPrefix,
        path: &str,
        budget: &mut Budget,
        f: impl FnOnce(&PathState) -> Result<R>,
    ) -> Result<R> {
        let slot = (fp.clone(), path.to_string());
        let mut kept = self.kept();
        kept.tick += 1;
        let tick = kept.tick;
        if kept.paths.get(&slot).is_some_and(|p| p.seq > snap.seq()) {
            // Kept at a later commit than this view: another thread's
            // newer read, or a history that went back (a repair). Folded
            // again rather than trusted when the seqs meet later.
            kept.paths.remove(&slot);
        }
        let mut resume = None;
        if let Some(p) = kept.paths.get_mut(&slot) {
            p.used = tick;
            if p.partial {
                // Finished below, without holding the kept values.
                resume = Some(p.clone());
            } else if p.seq == snap.seq() {
                return f(p);
            } else {
                match self.catch_up(p, snap, fp, path, budget) {
                    Ok(CaughtUp::Done) => {
                        p.bytes = p.estimate();
                        kept.evict(&slot);
                        return match kept.paths.get(&slot) {
                            Some(p) => f(p),
                            None => Err(vanished(fp, path)),
                        };
                    }
                    Ok(CaughtUp::OutOfFuel) => {
                        p.bytes = p.estimate();
                        let folded = p.applied.len();
                        kept.evict(&slot);
                        return Err(out_of_fuel(fp, path, budget, folded));
                    }
                    Ok(CaughtUp::Refold) => {
                        kept.paths.remove(&slot);
                    }
                    Err(e) => {
                        // Part of it may be applied: never kept half done.
                        kept.paths.remove(&slot);
                        return Err(e);
                    }
                }
            }
        }
        // Folded without holding the kept values: a long fold must not
        // hold up a push of this process that waits under the directory's
        // writer lock.
        drop(kept);
        let mut p = self.fold(snap, fp, path, resume, budget)?;
        p.used = tick;
        p.bytes = p.estimate();
        kept = self.kept();
        let keep = match kept.paths.get(&slot) {
            None => true,
            // Another thread kept a newer value meanwhile, or one as new
            // and further along with the same reducer: this one is
            // answered without replacing it.
            Some(old) => {
                let same_reducer = match (&old.reducer, &p.reducer) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    _ => false,
                };
                old.seq < p.seq
                    || (old.seq == p.seq
                        && old.partial
                        && (!p.partial || !same_reducer || old.applied.len() <= p.applied.len()))
            }
        };
        if p.partial {
            let folded = p.applied.len();
            if keep {
                kept.paths.insert(slot.clone(), p);
                kept.evict(&slot);
            }
            return Err(out_of_fuel(fp, path, budget, folded));
        }
        if !keep {
            return f(&p);
        }
        kept.paths.insert(slot.clone(), p);
        kept.evict(&slot);
        match kept.paths.get(&slot) {
            Some(p) => f(p),
            None => Err(vanished(fp, path)),
        }
    }

    /// Applies to `p` the operations written since it was kept, if they
    /// all sort after what it folded; `Refold` when it must be folded
    /// again, `OutOfFuel` when the budget ran out (`p` is then partial,
    /// at `snap`).
    fn catch_up(
        &self,
        p: &mut PathState,
        snap: &Snapshot,
        fp: &FullPrefix,
        path: &str,
        budget: &mut Budget,
    ) -> Result<CaughtUp> {
        let Some(changes) = snap.changed_since(p.seq) else {
            return Ok(CaughtUp::Refold);
        };
        let base = path.as_bytes();
        let mut new: BTreeMap<OpKey, Op> = BTreeMap::new();
        for (_, f, k) in changes {
            if f != fp || !in_group(k, base) {
                continue;
            }
            if k.as_bytes() == base {
                if snap.get(fp, base) != p.head {
                    return Ok(CaughtUp::Refold);
                }
                continue;
            }
            if let Some(named) = named_op(k.as_bytes()) {
                p.named_max = p.named_max.max(named.timestamp);
            }
            match read_record(snap, fp, k) {
                Record::Op(_, _) if p.kind.is_empty() => {
                    // Records of a log this value had not seen (perhaps
                    // before its head): folded from scratch.
                    return Ok(CaughtUp::Refold);
                }
                Record::Op(kind, op) => {
                    if kind != p.kind || p.applied.contains(&op.sha) {
                        continue;
                    }
                    match standing(p.checkpoint.as_ref(), &op) {
                        Standing::Applies if p.last.as_ref().is_none_or(|l| op.key() > *l) => {
                            new.insert(op.key(), op);
                        }
                        Standing::Applies => return Ok(CaughtUp::Refold),
                        Standing::Folded | Standing::Late => {}
                    }
                }
                Record::Gone => {
                    if record_sha(k).is_some_and(|sha| p.applied.contains(sha)) {
                        return Ok(CaughtUp::Refold);
                    }
                }
                Record::Malformed => {}
            }
        }
        if p.kind.is_empty() {
            // Nothing was pushed when it was kept, and nothing since.
            p.seq = snap.seq();
            return Ok(CaughtUp::Done);
        }
        let reducer = self.reducer(&p.kind)?;
        if !p.reducer.as_ref().is_some_and(|r| Arc::ptr_eq(r, &reducer)) {
            return Ok(CaughtUp::Refold);
        }
        // Every new operation sorts after what `p` folded: applied in
        // order, `p` is the fold of the log at `snap` up to the last one
        // applied, whether or not the budget lasts.
        p.seq = snap.seq();
        for (key, op) in new {
            match apply_metered(
                &*reducer,
                &p.kind,
                std::mem::take(&mut p.state),
                &op,
                budget,
            ) {
                Ok(state) => p.state = state,
                Err(Stopped::OutOfFuel(state)) => {
                    p.state = state;
                    p.partial = true;
                    return Ok(CaughtUp::OutOfFuel);
                }
                Err(Stopped::Failed(e)) => return Err(e.into()),
            }
            p.applied.insert(op.sha);
            p.first.get_or_insert_with(|| key.clone());
            p.last = Some(key);
        }
        Ok(CaughtUp::Done)
    }

    /// The value of a path folded from its checkpoint and records, or
    /// from `resume` (a partial fold kept earlier) when the log still
    /// holds exactly the operations it folded, under the same head and
    /// reducer. Partial (see [`PathState::partial`]) when the budget ran
    /// out.
    fn fold(
        &self,
        snap: &Snapshot,
        fp: &FullPrefix,
        path: &str,
        resume: Option<PathState>,
        budget: &mut Budget,
    ) -> Result<PathState> {
        let LogRead {
            view,
            inline,
            named_max,
            ..
        } = read_log_inline(snap, fp, path.as_bytes())?;
        let log = &view.log;
        let head = snap.get(fp, path.as_bytes());
        let mut p = PathState {
            seq: snap.seq(),
            head,
            reducer: None,
            kind: log.kind().to_string(),
            checkpoint: log.checkpoint().cloned(),
            state: Value::Null,
            last: None,
            first: None,
            named_max,
            applied: HashSet::new(),
            inline,
            partial: false,
            bytes: 0,
            used: 0,
        };
        if p.kind.is_empty() {
            return Ok(p);
        }
        let reducer = self.reducer(&p.kind)?;
        match resume.filter(|r| resumes(r, &p, &reducer, log)) {
            Some(r) => {
                p.state = r.state;
                p.applied = r.applied;
                p.first = r.first;
                p.last = r.last;
            }
            None => {
                p.state = log
                    .checkpoint()
                    .map_or_else(|| reducer.init(), |c| c.value.clone());
            }
        }
        p.reducer = Some(reducer.clone());
        let from = p.last.clone();
        for op in log
            .ops()
            .filter(|op| from.as_ref().is_none_or(|l| op.key() > *l))
        {
            match apply_metered(&*reducer, &p.kind, std::mem::take(&mut p.state), op, budget) {
                Ok(state) => p.state = state,
                Err(Stopped::OutOfFuel(state)) => {
                    p.state = state;
                    p.partial = true;
                    return Ok(p);
                }
                Err(Stopped::Failed(e)) => return Err(e.into()),
            }
            p.applied.insert(op.sha.clone());
            p.first.get_or_insert_with(|| op.key());
            p.last = Some(op.key());
        }
        Ok(p)
    }

    /// Folds every operation of the log at `path` up to `upto` (in the
    /// (timestamp, node, sha) order) into a checkpoint; returns how many
    /// were folded. The value is unchanged; the log is shorter. The caller
    /// decides when this is safe (see `docs/oplogs.md`): every current
    /// member must already have these operations. Folds at most
    /// [`FOLD_PER_COMMIT_MAX`] operations per commit, in as many commits
    /// as it takes.
    pub fn prune(&self, fp: &FullPrefix, path: &str, upto: &OpKey) -> Result<usize> {
        validate_path(path)?;
        let mut total = 0;
        loop {
            let n = self.prune_some(fp, path, upto)?;
            total += n;
            if n < FOLD_PER_COMMIT_MAX {
                return Ok(total);
            }
        }
    }

    /// One commit of [`Oplogs::prune`].
    fn prune_some(&self, fp: &FullPrefix, path: &str, upto: &OpKey) -> Result<usize> {
        let (fp, key, upto) = (fp.clone(), path.as_bytes().to_vec(), upto.clone());
        let writer = self.meta.writer();
        let this = self.clone();
        let outright = self.prunes_alone()?;
        let (_, n) = self.meta.store().update_returning(move |snap: &Snapshot| {
            let LogRead {
                mut view,
                inline,
                folded,
                missing,
                ..
            } = read_log_inline(snap, &fp, &key)?;
            // Another node's prune arrived in part (its tombstones before
            // its head): a checkpoint made now would lack what that one
            // folded and replace it. Anti-entropy brings the head soon.
            if view.log.kind().is_empty() || missing {
                return Ok((vec![], 0));
            }
            let reducer = this.reducer(view.log.kind())?;
            // At most FOLD_PER_COMMIT_MAX operations in this commit.
            let folding: Vec<(OpKey, String)> = view
                .log
                .ops()
                .take_while(|op| op.key() <= upto)
                .take(FOLD_PER_COMMIT_MAX)
                .map(|op| (op.key(), op.sha.clone()))
                .collect();
            let Some((bound, _)) = folding.last().cloned() else {
                return Ok((vec![], 0));
            };
            let n = view.log.prune(&bound, &*reducer)?;
            let mut writes = Vec::new();
            let head = new_object_bytes(snap, &fp, &key, view.log.encode_head(), &writer)?;
            writes.push(Write::put(&fp, &key, &head));
            // The records of the operations folded now or before, and of
            // those that are late (recorded as reports below), are
            // deleted: their keys name their shas, so nothing is decoded
            // again.
            let gone: HashSet<&str> = folding
                .iter()
                .map(|(_, sha)| sha.as_str())
                .chain(folded.iter().map(String::as_str))
                .chain(view.late.iter().map(|op| op.sha.as_str()))
                .collect();
            for (k, _) in snap.group(&fp, &key) {
                if k.as_bytes() == key.as_slice()
                    || !record_sha(k).is_some_and(|s| gone.contains(s))
                {
                    continue;
                }
                writes.push(if outright {
                    Write::delete(&fp, k)
                } else {
                    let t = tombstone_object_bytes(snap, &fp, k, &writer)?;
                    Write::put(&fp, k, &t)
                });
            }
            if inline {
                // Inline operations not folded become records.
                for op in view.log.ops() {
                    let rkey = record_key(&key, op);
                    if snap.get(&fp, &rkey).is_none() {
                        let bytes = op.encode_record(view.log.kind());
                        let encoded = new_object_bytes(snap, &fp, &rkey, bytes, &writer)?;
                        writes.push(Write::put(&fp, &rkey, &encoded));
                    }
                }
            }
            writes.extend(late_writes(snap, &fp, &key, &view.late, &writer)?);
            Ok((writes, n))
        })?;
        Ok(n)
    }

    /// [`Oplogs::prune`] of every operation older than `grace` (by its
    /// timestamp): the rule for a node with no peers.
    pub fn prune_older_than(&self, fp: &FullPrefix, path: &str, grace: Duration) -> Result<usize> {
        validate_path(path)?;
        let snap = self.meta.store().snapshot()?;
        let view = read_log_inline(&snap, fp, path.as_bytes())?.view;
        let cutoff_ms = now_ms(self.meta.store()).saturating_sub(grace.as_millis() as u64);
        let upto = view
            .log
            .ops()
            .take_while(|op| Hlc(op.timestamp).ms() < cutoff_ms)
            .last()
            .map(Op::key);
        match upto {
            Some(k) => self.prune(fp, path, &k),
            None => Ok(0),
        }
    }

    /// Calls `callback(path, value, origin)` on a thread of its own each
    /// time a log in `fp` whose path `matching` accepts changes (by any
    /// process on the directory, or merged from a peer), until the
    /// returned watch is dropped. A log whose type has no reducer here is
    /// reported with its error as the value (`{"error": ...}`).
    pub fn on<F>(
        &self,
        fp: &FullPrefix,
        matching: crate::Match,
        mut callback: F,
    ) -> Result<crate::watch::Watch>
    where
        F: FnMut(&str, Value, crate::Origin) + Send + 'static,
    {
        let only = fp.clone();
        let this = self.clone();
        // A commit that wrote a head and a record reports its path once.
        let mut last: Option<(u64, Vec<u8>)> = None;
        self.meta.store().on(
            Box::new(move |f, key| *f == only && matching.matches(crate::group_base(key))),
            move |w| {
                if let crate::watch::Watched::Change(e) = w {
                    let base = crate::group_base(&e.key);
                    if last.as_ref().is_some_and(|(s, b)| *s == e.seq && b == base) {
                        return Ok(());
                    }
                    last = Some((e.seq, base.to_vec()));
                    let path = String::from_utf8_lossy(base).into_owned();
                    let value = this
                        .get(&e.full_prefix, &path)
                        .unwrap_or_else(|err| serde_json::json!({"error": err.to_string()}));
                    callback(&path, value, e.origin);
                }
                Ok(())
            },
        )
    }

    /// The value at `path` (`null` if nothing was pushed). Costs what
    /// changed since this process last read the path, not the log's
    /// length (see the module documentation).
    pub fn get(&self, fp: &FullPrefix, path: &str) -> Result<Value> {
        validate_path(path)?;
        let snap = self.meta.store().snapshot()?;
        self.meta.store().refuse_unserved_at(&snap, fp)?;
        let mut budget = self.new_budget();
        self.with_current(&snap, fp, path, &mut budget, |p| {
            if p.kind.is_empty() {
                return Ok(Value::Null);
            }
            Ok(self.reducer(&p.kind)?.view(&p.state))
        })
    }

    /// The merged log at `path`, with any late operations.
    pub fn log(&self, fp: &FullPrefix, path: &str) -> Result<LogView> {
        validate_path(path)?;
        let snap = self.meta.store().snapshot()?;
        self.meta.store().refuse_unserved_at(&snap, fp)?;
        let mut view = read_log_inline(&snap, fp, path.as_bytes())?.view;
        // Reports of late operations whose records a prune deleted.
        for op in recorded_late(&snap, fp, path.as_bytes())? {
            if !view.late.iter().any(|l| l.sha == op.sha) {
                view.late.push(op);
            }
        }
        view.late.sort_by_key(Op::key);
        Ok(view)
    }
}

/// Whether a partial fold `r` can go on as the fold of `p` (the same
/// path read now): the same head (type and checkpoint) and reducer, and
/// the operations of `log` up to where it stopped are exactly those it
/// applied.
fn resumes(r: &PathState, p: &PathState, reducer: &Arc<dyn Reducer>, log: &OpLog) -> bool {
    if !r.partial
        || r.head != p.head
        || r.kind != p.kind
        || !r.reducer.as_ref().is_some_and(|x| Arc::ptr_eq(x, reducer))
    {
        return false;
    }
    let Some(last) = &r.last else {
        return r.applied.is_empty();
    };
    let mut upto = 0usize;
    for op in log.ops().take_while(|op| op.key() <= *last) {
        if !r.applied.contains(&op.sha) {
            return false;
        }
        upto += 1;
    }
    upto == r.applied.len()
}

fn vanished(fp: &FullPrefix, path: &str) -> Error {
    Error::Internal(format!(
        "the kept value of {fp}/{path} vanished (a bug): read it again"
    ))
}

/// The answer of a call whose reducer budget ran out.
fn out_of_fuel(fp: &FullPrefix, path: &str, budget: &Budget, folded: usize) -> Error {
    Error::Busy(format!(
        "the operation log at {fp}/{path} needs more reducer work than one request may do ({} units): {folded} operations are folded and kept; ask again to go on (each request folds up to the budget). A log that needs this often wants pruning, or a cheaper reducer",
        budget.spent()
    ))
}

/// Now by the store's clock ([`crate::Options::clock`]).
fn now_ms(store: &crate::Store) -> u64 {
    store.options().clock.now_ms()
}

/// The key of an operation's record in the log at `path`.
pub fn record_key(path: &[u8], op: &Op) -> Vec<u8> {
    let mut k = path.to_vec();
    k.push(0);
    k.extend_from_slice(op.record_suffix().as_bytes());
    k
}

/// The sha a record key names (its text after the last '.').
fn record_sha(key: &[u8]) -> Option<&str> {
    let at = key.iter().rposition(|b| *b == b'.')?;
    std::str::from_utf8(&key[at + 1..]).ok()
}

/// The operation a record key (`path\0{timestamp:016x}.{node}.{sha}`)
/// names, without its payload: what a tombstone of a pruned record still
/// tells.
fn named_op(key: &[u8]) -> Option<Op> {
    let (_, name) = crate::split_record(key)?;
    let mut parts = std::str::from_utf8(name).ok()?.splitn(3, '.');
    let timestamp = u64::from_str_radix(parts.next()?, 16).ok()?;
    let node = parts.next()?;
    let sha = parts.next()?;
    Some(Op {
        timestamp,
        node: node.to_string(),
        sha: sha.to_string(),
        payload: Value::Null,
    })
}

/// What a record key holds.
enum Record {
    /// An operation of this type.
    Op(String, Op),
    /// Nothing, or a tombstone.
    Gone,
    /// Something that is not a valid record (skipped).
    Malformed,
}

fn read_record(snap: &Snapshot, fp: &FullPrefix, key: &[u8]) -> Record {
    let Some(bytes) = snap.get(fp, key) else {
        return Record::Gone;
    };
    let Ok(object) = chorus_core::object::Object::decode(&bytes) else {
        return Record::Malformed;
    };
    let Some(b) = object.values().into_iter().find_map(|v| v.bytes()) else {
        return Record::Gone;
    };
    match Op::decode_record(b) {
        Ok((kind, op)) if key.ends_with(op.record_suffix().as_bytes()) => Record::Op(kind, op),
        _ => Record::Malformed,
    }
}

/// Checks an object received for a key of an operation log's group (a
/// peer's or a stage's push): a record key must hold records of the
/// operation its key names. Other keys are not records and pass.
pub fn validate_record(key: &[u8], object: &chorus_core::object::Object) -> Result<()> {
    let base = crate::group_base(key);
    if base.len() == key.len() {
        return Ok(());
    }
    for v in object.values() {
        let Some(b) = v.bytes() else { continue };
        if !b.starts_with(RECORD_PREFIX) {
            continue;
        }
        let (_, op) = Op::decode_record(b)?;
        if key[base.len() + 1..] != *op.record_suffix().as_bytes() {
            return Err(Error::InvalidInput(format!(
                "the operation record at {:?} names operation {} ({}): a record's key is its path, a zero byte and its timestamp.node.sha",
                String::from_utf8_lossy(&key[..key.len().min(80)]),
                op.id(),
                op.record_suffix()
            )));
        }
    }
    Ok(())
}

/// The writes that turn a head with inline operations (format version 1)
/// into a head and one record per operation.
fn convert_inline(
    snap: &Snapshot,
    fp: &FullPrefix,
    key: &[u8],
    writer: &Writer,
) -> Result<Vec<Write>> {
    let view = read_log_inline(snap, fp, key)?.view;
    let kind = view.log.kind().to_string();
    let mut writes = Vec::new();
    let head = new_object_bytes(snap, fp, key, view.log.encode_head(), writer)?;
    writes.push(Write::put(fp, key, &head));
    for op in view
        .log
        .ops()
        .chain(view.late.iter().filter(|op| op.node != "checkpoint"))
    {
        let rkey = record_key(key, op);
        if snap.get(fp, &rkey).is_none() {
            let encoded = new_object_bytes(snap, fp, &rkey, op.encode_record(&kind), writer)?;
            writes.push(Write::put(fp, &rkey, &encoded));
        }
    }
    let checkpoints: Vec<Op> = view
        .late
        .iter()
        .filter(|op| op.node == "checkpoint")
        .cloned()
        .collect();
    writes.extend(late_writes(snap, fp, key, &checkpoints, writer)?);
    Ok(writes)
}

/// Where late operations are recorded, so that a write-back of the log,
/// which supersedes its siblings, does not erase them: one key per late
/// operation, `{full prefix}/{path}#{sha}`, replicated like any data.
fn late_prefix() -> Result<FullPrefix> {
    Ok(FullPrefix::new("$oplogs", "late")?)
}

fn late_key(fp: &FullPrefix, key: &[u8], sha: &str) -> Vec<u8> {
    let mut k = format!("{fp}/").into_bytes();
    k.extend_from_slice(key);
    k.push(b'#');
    k.extend_from_slice(sha.as_bytes());
    k
}

/// The writes that record `late` operations not recorded yet.
fn late_writes(
    snap: &Snapshot,
    fp: &FullPrefix,
    key: &[u8],
    late: &[Op],
    writer: &Writer,
) -> Result<Vec<Write>> {
    let lp = late_prefix()?;
    let mut writes = Vec::new();
    for op in late {
        let k = late_key(fp, key, &op.sha);
        if snap.get(&lp, &k).is_some() {
            continue;
        }
        let record = serde_json::json!({
            "id": op.id(), "timestamp": op.timestamp, "node": op.node, "sha": op.sha, "payload": op.payload,
        });
        let encoded = new_object_bytes(snap, &lp, &k, record.to_string().into_bytes(), writer)?;
        writes.push(Write::put(&lp, &k, &encoded));
    }
    Ok(writes)
}

/// The late operations recorded for the log at `key`.
fn recorded_late(snap: &Snapshot, fp: &FullPrefix, key: &[u8]) -> Result<Vec<Op>> {
    let lp = late_prefix()?;
    let prefix = late_key(fp, key, "");
    let mut out = Vec::new();
    for (k, e) in snap.iter_prefix(&lp) {
        if !k.as_bytes().starts_with(&prefix) {
            continue;
        }
        let Ok(object) = chorus_core::object::Object::decode(&e.value) else {
            continue;
        };
        for v in object.values() {
            let Some(op) = v
                .bytes()
                .and_then(|b| serde_json::from_slice::<Value>(b).ok())
                .and_then(|j| {
                    Some(Op {
                        timestamp: j.get("timestamp")?.as_u64()?,
                        node: j.get("node")?.as_str()?.to_string(),
                        sha: j
                            .get("sha")?
                            .as_str()
                            .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))?
                            .to_string(),
                        payload: j.get("payload")?.clone(),
                    })
                })
            else {
                continue;
            };
            out.push(op);
            break;
        }
    }
    Ok(out)
}

/// What [`read_log_inline`] read of a log.
struct LogRead {
    /// The merged log, with the late operations met now (not those
    /// recorded earlier under `$oplogs/late`: [`Oplogs::log`] adds them).
    view: LogView,
    /// A head held inline operations (format version 1).
    inline: bool,
    /// Shas of records the checkpoint already folded.
    folded: Vec<String>,
    /// The greatest timestamp a record key of the group names, whether
    /// the record is live or a tombstone: a prune elsewhere deletes the
    /// records it folds, and its tombstones may arrive before its head, so
    /// a push must go above them too to sort after what its node had seen.
    named_max: u64,
    /// Some record is a tombstone whose operation the checkpoint did not
    /// fold (nor would report late): another node folded it into a
    /// checkpoint that has not arrived yet.
    missing: bool,
}

/// The merged log at `key`: the heads in every sibling of the key, then
/// every record of its group.
fn read_log_inline(snap: &Snapshot, fp: &FullPrefix, key: &[u8]) -> Result<LogRead> {
    let mut view = LogView {
        log: OpLog::default(),
        late: Vec::new(),
    };
    let mut inline = false;
    let mut folded = Vec::new();
    let mut named_max = 0;
    let mut missing = false;
    let bad = |e: &dyn std::fmt::Display| {
        Error::Conflict(format!(
            "{fp}/{} is not an operation log: {e}",
            String::from_utf8_lossy(key)
        ))
    };
    if let Some(bytes) = snap.get(fp, key) {
        let object = chorus_core::object::Object::decode(&bytes).map_err(|e| bad(&e))?;
        for value in object.values() {
            if let Some(b) = value.bytes() {
                let log = OpLog::decode(b).map_err(|e| bad(&e))?;
                inline |= !log.is_empty();
                view.late.extend(view.log.merge(&log));
            }
        }
    }
    for (k, _) in snap.group(fp, key) {
        if k.as_bytes() == key {
            continue;
        }
        let named = named_op(k.as_bytes());
        if let Some(n) = &named {
            named_max = named_max.max(n.timestamp);
        }
        let op = match read_record(snap, fp, k) {
            Record::Op(kind, op) => (kind, op),
            Record::Gone => {
                missing |=
                    named.is_some_and(|n| standing(view.log.checkpoint(), &n) == Standing::Applies);
                continue;
            }
            Record::Malformed => continue,
        };
        let (kind, op) = op;
        if view.log.kind().is_empty() {
            view.log = OpLog::new(&kind);
        }
        if kind != view.log.kind() {
            view.late.push(op);
        } else if standing(view.log.checkpoint(), &op) == Standing::Folded {
            // Already in the checkpoint: a record a prune did not delete
            // here (a peer's copy that arrived after it).
            folded.push(op.sha);
        } else {
            view.late.extend(view.log.push(op));
        }
    }
    view.late.sort_by_key(Op::key);
    view.late.dedup_by(|a, b| a.sha == b.sha);
    Ok(LogRead {
        view,
        inline,
        folded,
        named_max,
        missing,
    })
}

/// A path: 1 to 1,024 bytes, no control characters.
fn validate_path(path: &str) -> Result<()> {
    if path.is_empty() || path.len() > 1024 || path.chars().any(char::is_control) {
        return Err(Error::InvalidInput(format!(
            "{:?} is not a path: use 1 to 1,024 bytes without control characters",
            path.chars().take(64).collect::<String>()
        )));
    }
    Ok(())
}

impl From<chorus_core::oplog::OpError> for Error {
    fn from(e: chorus_core::oplog::OpError) -> Self {
        Error::InvalidInput(e.to_string())
    }
}
