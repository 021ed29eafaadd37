//! Operation logs over the causal store: the value at a path is the
//! reduction of its log ([`chorus_core::oplog`]).
//!
//! A path's log is one key (the path) in a full prefix, holding the
//! encoded [`OpLog`]. A push runs under the writer lock on the union of the
//! key's siblings, so pushes from processes on one machine never lose each
//! other, and writes the union back with the siblings' context; logs from
//! other nodes arrive as siblings and merge on the next read or push. A
//! push's timestamp is above every operation in the log it extends (and
//! above the directory's last commit), so it sorts after everything its
//! writer had seen.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use chorus_core::FullPrefix;
use chorus_core::object::Hlc;
use chorus_core::oplog::{MAX_PAYLOAD_BYTES, Op, OpKey, OpLog, Reducer, built_in, validate_kind};
use serde_json::Value;

use crate::metadata::{Metadata, Writer, new_object_bytes};
use crate::{Error, Result, Snapshot, Write};

/// A compiled script reducer and the stored bytes it came from.
type CompiledScript = (Vec<u8>, Arc<dyn Reducer>);

/// Operation logs in a [`Metadata`] store, with the reducers this process
/// knows (the built-in ones, and those registered).
#[derive(Clone)]
pub struct Oplogs {
    meta: Metadata,
    reducers: Arc<RwLock<BTreeMap<String, Arc<dyn Reducer>>>>,
    /// Compiled scripts by type, with the stored bytes they came from.
    scripts: Arc<Mutex<BTreeMap<String, CompiledScript>>>,
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

impl Oplogs {
    /// The logs of `meta`, with the built-in reducers.
    pub fn new(meta: &Metadata) -> Oplogs {
        Oplogs {
            meta: meta.clone(),
            reducers: Arc::default(),
            scripts: Arc::default(),
        }
    }

    /// The same logs (reducers and compiled scripts shared) through a
    /// handle whose writes record `meta` (see [`Metadata::stamped`]).
    pub fn stamped(&self, meta: chorus_core::object::Meta) -> Oplogs {
        Oplogs {
            meta: self.meta.stamped(meta),
            reducers: self.reducers.clone(),
            scripts: self.scripts.clone(),
        }
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
            return Ok(Arc::from(r));
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
    /// the value after it. The first push fixes the path's type.
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
        let (fp, key, kind) = (fp.clone(), path.as_bytes().to_vec(), kind.to_string());
        let writer = self.meta.writer();
        let node_hex = writer.node.to_string();
        let (_, value) = self.meta.store().update_returning(move |snap: &Snapshot| {
            let mut view = read_log(snap, &fp, &key)?;
            if view.log.kind().is_empty() {
                view.log = OpLog::new(&kind);
            } else if view.log.kind() != kind {
                return Err(Error::InvalidInput(format!(
                    "the log at {fp}/{} has type {:?}, not {kind:?}",
                    String::from_utf8_lossy(&key),
                    view.log.kind()
                )));
            }
            let state = view.log.state(&*reducer)?;
            let payload = reducer.prepare(&state, payload);
            let commit_ts = snap.commit_ts().unwrap_or_else(|| snap.last_ts());
            let ts = commit_ts.max(view.log.max_timestamp() + 1);
            let op = Op::new(&kind, ts, &node_hex, payload);
            // Checked before anything is written: a reducer error refuses
            // the push.
            let after = reducer.reduce(state, &op).map_err(|e| {
                Error::InvalidInput(format!(
                    "the reducer of type {kind:?} refused the operation ({}): {e}",
                    op.payload
                ))
            })?;
            if let Some(late) = view.log.push(op) {
                return Err(Error::InvalidInput(format!(
                    "the new operation {} sorts before the log's checkpoint: the clock is far behind",
                    late.id()
                )));
            }
            let encoded = new_object_bytes(snap, &fp, &key, view.log.encode(), &writer)?;
            let mut writes = late_writes(snap, &fp, &key, &view.late, &writer)?;
            writes.push(Write::put(&fp, &key, &encoded));
            Ok((writes, reducer.view(&after)))
        })?;
        Ok(value)
    }

    /// Folds every operation of the log at `path` up to `upto` (in the
    /// (timestamp, node, sha) order) into a checkpoint; returns how many
    /// were folded. The value is unchanged; the log is shorter. The caller
    /// decides when this is safe (see `docs/oplogs.md`): every current
    /// member must already have these operations.
    pub fn prune(&self, fp: &FullPrefix, path: &str, upto: &OpKey) -> Result<usize> {
        validate_path(path)?;
        let (fp, key, upto) = (fp.clone(), path.as_bytes().to_vec(), upto.clone());
        let writer = self.meta.writer();
        let this = self.clone();
        let (_, n) = self.meta.store().update_returning(move |snap: &Snapshot| {
            let mut view = read_log(snap, &fp, &key)?;
            if view.log.kind().is_empty() {
                return Ok((vec![], 0));
            }
            let reducer = this.reducer(view.log.kind())?;
            let n = view.log.prune(&upto, &*reducer)?;
            if n == 0 {
                return Ok((vec![], 0));
            }
            let encoded = new_object_bytes(snap, &fp, &key, view.log.encode(), &writer)?;
            let mut writes = late_writes(snap, &fp, &key, &view.late, &writer)?;
            writes.push(Write::put(&fp, &key, &encoded));
            Ok((writes, n))
        })?;
        Ok(n)
    }

    /// [`Oplogs::prune`] of every operation older than `grace` (by its
    /// timestamp): the rule for a node with no peers.
    pub fn prune_older_than(
        &self,
        fp: &FullPrefix,
        path: &str,
        grace: std::time::Duration,
    ) -> Result<usize> {
        let view = self.log(fp, path)?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let cutoff_ms = now_ms.saturating_sub(grace.as_millis() as u64);
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
        self.meta.store().on(
            Box::new(move |f, key| *f == only && matching.matches(key)),
            move |w| {
                if let crate::watch::Watched::Change(e) = w {
                    let path = String::from_utf8_lossy(&e.key).into_owned();
                    let value = this
                        .get(&e.full_prefix, &path)
                        .unwrap_or_else(|err| serde_json::json!({"error": err.to_string()}));
                    callback(&path, value, e.origin);
                }
                Ok(())
            },
        )
    }

    /// The value at `path` (`null` if nothing was pushed).
    pub fn get(&self, fp: &FullPrefix, path: &str) -> Result<Value> {
        let view = self.log(fp, path)?;
        if view.log.kind().is_empty() {
            return Ok(Value::Null);
        }
        let reducer = self.reducer(view.log.kind())?;
        Ok(view.log.value(&*reducer)?)
    }

    /// The merged log at `path`, with any late operations.
    pub fn log(&self, fp: &FullPrefix, path: &str) -> Result<LogView> {
        validate_path(path)?;
        let snap = self.meta.store().snapshot()?;
        read_log(&snap, fp, path.as_bytes())
    }
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
                        sha: j.get("sha")?.as_str()?.to_string(),
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

/// The union of the logs in every sibling of the key, with the late
/// operations met now and those recorded earlier.
fn read_log(snap: &Snapshot, fp: &FullPrefix, key: &[u8]) -> Result<LogView> {
    let mut view = LogView {
        log: OpLog::default(),
        late: Vec::new(),
    };
    let Some(bytes) = snap.get(fp, key) else {
        return Ok(view);
    };
    let bad = |e: &dyn std::fmt::Display| {
        Error::InvalidInput(format!(
            "{fp}/{} is not an operation log: {e}",
            String::from_utf8_lossy(key)
        ))
    };
    let object = chorus_core::object::Object::decode(&bytes).map_err(|e| bad(&e))?;
    for value in object.values() {
        if let Some(b) = value.bytes() {
            let log = OpLog::decode(b).map_err(|e| bad(&e))?;
            view.late.extend(view.log.merge(&log));
        }
    }
    for op in recorded_late(snap, fp, key)? {
        if !view.late.iter().any(|l| l.sha == op.sha) {
            view.late.push(op);
        }
    }
    view.late.sort_by_key(Op::key);
    Ok(view)
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
