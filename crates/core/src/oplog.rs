//! Operation logs, with no IO: the value at a path is the reduction of a
//! log of typed operations (GiG.fs's model), and logs from every device
//! merge by union instead of overwriting each other.
//!
//! - An [`Op`] is `{timestamp, node, sha, payload}` (its id is the first 16
//!   hex digits of `sha`): a hybrid timestamp that never goes backwards on
//!   a node, the node that pushed it, SHA-256 over the type, the timestamp,
//!   the node and the payload as canonical JSON.
//! - Operations apply in the order (timestamp, node, sha), the same on
//!   every node; GiG.fs ordered by wall clock alone.
//! - A [`Checkpoint`] (GiG.fs's "value") folds every operation up to a
//!   point into a value; the operations it folded are dropped.
//! - [`OpLog::merge`] is a union of operations plus the newest checkpoint:
//!   commutative, associative and idempotent (property-tested).
//!
//! An operation that arrives at or before the newest checkpoint's point,
//! and that the checkpoint did not fold, is *late*: it is not applied (the
//! order would no longer be the same everywhere); [`OpLog::merge`] and
//! [`OpLog::push`] return it so that the caller reports it, and nothing
//! disappears silently. The checkpoint keeps, per node, the greatest
//! timestamp it folded: a node's log carries all of its operations
//! together, so an operation of that node at or below it was folded, and a
//! replica that still had it is not reported. (With Chorus's pruning rule
//! a late operation can only come from a node that was not a member when
//! the checkpoint was made.)

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::docs::canonical_json;

/// How every encoded log (and log head) begins: a cheap test for "is
/// this value an operation log" before decoding anything.
pub const ENCODED_PREFIX: &[u8] = br#"{"checkpoint""#;

/// How every encoded operation record begins (see [`Op::encode_record`]).
pub const RECORD_PREFIX: &[u8] = br#"{"oprec""#;

/// Most bytes of a node id in an operation (Chorus's are 32 hex digits).
const MAX_NODE_BYTES: usize = 64;

/// Most bytes of a record besides its payload: the field names, the type
/// (64), a timestamp, the node (64, escaped at most 6 bytes each) and
/// the sha (64).
const RECORD_OVERHEAD_MAX: usize = 1024;

/// Most bytes of an operation's payload, as JSON.
pub const MAX_PAYLOAD_BYTES: usize = 64 << 10;

/// Why an oplog operation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpError {
    /// Bad input: type, payload, encoding.
    Invalid(String),
    /// A reducer failed on an operation.
    Reducer(String),
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpError::Invalid(m) | OpError::Reducer(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for OpError {}

/// Where an operation sorts: (timestamp, node, sha).
pub type OpKey = (u64, String, String);

/// One operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Op {
    /// Hybrid timestamp (milliseconds in the high bits, see `object::Hlc`).
    pub timestamp: u64,
    /// The pushing node's id, hex.
    pub node: String,
    /// SHA-256 over the type, timestamp, node and payload, hex.
    pub sha: String,
    /// What the user pushed.
    pub payload: Value,
}

impl Op {
    /// A new operation of log type `kind`.
    pub fn new(kind: &str, timestamp: u64, node: &str, payload: Value) -> Op {
        let sha = op_sha(kind, timestamp, node, &payload);
        Op {
            timestamp,
            node: node.to_string(),
            sha,
            payload,
        }
    }

    /// Its id: the first 16 hex digits of its sha.
    pub fn id(&self) -> &str {
        &self.sha[..16.min(self.sha.len())]
    }

    /// Where it sorts.
    pub fn key(&self) -> OpKey {
        (self.timestamp, self.node.clone(), self.sha.clone())
    }

    fn to_json(&self) -> Value {
        serde_json::json!({
            "id": self.id(), "timestamp": self.timestamp, "node": self.node,
            "sha": self.sha, "payload": self.payload,
        })
    }

    /// Where its record sorts within its log: the timestamp as 16 hex
    /// digits, the node and the sha, so records sort like operations.
    pub fn record_suffix(&self) -> String {
        format!("{:016x}.{}.{}", self.timestamp, self.node, self.sha)
    }

    /// The operation as an immutable record of a log of type `kind`: it
    /// starts with [`RECORD_PREFIX`] and carries everything its sha covers,
    /// so a reader can check it ([`Op::decode_record`]).
    pub fn encode_record(&self, kind: &str) -> Vec<u8> {
        let text = |s: &str| Value::String(s.to_string()).to_string();
        format!(
            r#"{{"oprec":1,"type":{},"timestamp":{},"node":{},"sha":{},"payload":{}}}"#,
            text(kind),
            self.timestamp,
            text(&self.node),
            text(&self.sha),
            self.payload
        )
        .into_bytes()
    }

    /// Reads what [`Op::encode_record`] wrote and checks it: a valid type,
    /// a node id, a record within [`MAX_PAYLOAD_BYTES`] plus its fields, and a sha that is the hash of the rest (a
    /// record cannot claim another operation's identity).
    pub fn decode_record(bytes: &[u8]) -> Result<(String, Op), OpError> {
        let bad = |why: &str| OpError::Invalid(format!("an operation record is malformed: {why}"));
        // The payload is most of a record: bounding the record bounds it
        // without writing it out again.
        if bytes.len() > MAX_PAYLOAD_BYTES + RECORD_OVERHEAD_MAX {
            return Err(bad(&format!(
                "it is {} bytes; a payload is at most {MAX_PAYLOAD_BYTES}",
                bytes.len()
            )));
        }
        let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(&e.to_string()))?;
        if v.get("oprec") != Some(&Value::from(1)) {
            return Err(bad("unknown version (expected \"oprec\": 1)"));
        }
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no type"))?;
        validate_kind(kind)?;
        let op = Op::from_json(&v).ok_or_else(|| bad("timestamp, node, sha or payload"))?;
        let node_ok = !op.node.is_empty()
            && op.node.len() <= MAX_NODE_BYTES
            && op.node != "checkpoint"
            && !op.node.chars().any(char::is_control);
        if !node_ok {
            return Err(bad(
                "the node is not a node id (1 to 64 bytes, no control characters)",
            ));
        }
        if op_sha(kind, op.timestamp, &op.node, &op.payload) != op.sha {
            return Err(bad("its sha is not the hash of its content"));
        }
        Ok((kind.to_string(), op))
    }

    fn from_json(v: &Value) -> Option<Op> {
        Some(Op {
            timestamp: v.get("timestamp")?.as_u64()?,
            node: v.get("node")?.as_str()?.to_string(),
            sha: v
                .get("sha")?
                .as_str()
                .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))?
                .to_string(),
            payload: v.get("payload")?.clone(),
        })
    }
}

fn op_sha(kind: &str, timestamp: u64, node: &str, payload: &Value) -> String {
    let mut h = Sha256::new();
    h.update(b"chorus-op-v1\0");
    h.update(kind.as_bytes());
    h.update([0]);
    h.update(timestamp.to_be_bytes());
    h.update(node.as_bytes());
    h.update([0]);
    h.update(canonical_json(payload).as_bytes());
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

/// Every operation up to `upto` folded into `value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The last operation folded.
    pub upto: OpKey,
    /// The reducer's state after it.
    pub value: Value,
    /// SHA-256 over `upto` and the value, hex.
    pub sha: String,
    /// Per node, the greatest timestamp of its operations folded so far
    /// (this checkpoint's and every earlier one's). A node's log carries
    /// all its operations together, so an operation of `node` at or below
    /// its entry was folded; one above it, yet before `upto`, is late.
    pub frontier: BTreeMap<String, u64>,
}

impl Checkpoint {
    fn new(upto: OpKey, value: Value, frontier: BTreeMap<String, u64>) -> Checkpoint {
        let mut h = Sha256::new();
        h.update(b"chorus-checkpoint-v1\0");
        h.update(upto.0.to_be_bytes());
        h.update(upto.1.as_bytes());
        h.update([0]);
        h.update(upto.2.as_bytes());
        h.update([0]);
        h.update(canonical_json(&value).as_bytes());
        for (node, t) in &frontier {
            h.update(node.as_bytes());
            h.update([0]);
            h.update(t.to_be_bytes());
        }
        Checkpoint {
            upto,
            value,
            sha: hex(&h.finalize()),
            frontier,
        }
    }
}

/// True when `newer` folded everything `older` did.
fn covers(newer: &Checkpoint, older: &Checkpoint) -> bool {
    older.upto <= newer.upto
        && older
            .frontier
            .iter()
            .all(|(node, t)| newer.frontier.get(node).is_some_and(|n| n >= t))
}

/// A checkpoint another one replaced without covering it, as a late
/// "operation" for reports: its node is `checkpoint`, its payload the
/// folded value and frontier.
fn checkpoint_as_op(c: &Checkpoint) -> Op {
    Op {
        timestamp: c.upto.0,
        node: "checkpoint".into(),
        sha: c.sha.clone(),
        payload: serde_json::json!({"checkpoint": c.value, "frontier": c.frontier}),
    }
}

/// Where an operation stands against a log's checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// After the checkpoint (or there is none): it applies.
    Applies,
    /// The checkpoint folded it: already in the value.
    Folded,
    /// At or before the checkpoint, not folded by it: reported, not applied.
    Late,
}

/// Where `op` stands against `checkpoint`.
pub fn standing(checkpoint: Option<&Checkpoint>, op: &Op) -> Standing {
    match checkpoint {
        Some(cp) if (op.timestamp, &op.node, &op.sha) <= (cp.upto.0, &cp.upto.1, &cp.upto.2) => {
            if cp
                .frontier
                .get(&op.node)
                .is_some_and(|t| op.timestamp <= *t)
            {
                Standing::Folded
            } else {
                Standing::Late
            }
        }
        _ => Standing::Applies,
    }
}

/// `state` after `op`, with an error that names the type and the operation.
pub fn apply(reducer: &dyn Reducer, kind: &str, state: Value, op: &Op) -> Result<Value, OpError> {
    reducer
        .reduce(state, op)
        .map_err(|e| reducer_failed(kind, op, &e))
}

fn reducer_failed(kind: &str, op: &Op, e: &str) -> OpError {
    OpError::Reducer(format!(
        "the reducer of type {kind:?} failed on operation {} ({}): {e}",
        op.id(),
        op.payload
    ))
}

/// The reducer work one request may still do, in units of fuel: a call of
/// a reducer that does not meter itself (the built-in ones) costs one, a
/// script's call the operations it ran (see [`Reducer::reduce_metered`]).
/// Fuel is counted, never timed: the same work stops at the same point on
/// every machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    left: u64,
    spent: u64,
}

impl Budget {
    /// `units` of fuel.
    pub fn new(units: u64) -> Budget {
        Budget {
            left: units,
            spent: 0,
        }
    }

    /// No limit.
    pub fn unlimited() -> Budget {
        Budget::new(u64::MAX)
    }

    /// Fuel left.
    pub fn left(&self) -> u64 {
        self.left
    }

    /// Fuel spent so far.
    pub fn spent(&self) -> u64 {
        self.spent
    }

    /// Takes `cost` (at least one unit) from what is left; a cost beyond
    /// it uses the budget up.
    pub fn charge(&mut self, cost: u64) {
        let cost = cost.max(1).min(self.left);
        self.left -= cost;
        self.spent = self.spent.saturating_add(cost);
    }

    /// Uses up what is left.
    pub fn exhaust(&mut self) {
        self.charge(self.left);
    }
}

/// Why [`apply_metered`] stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum Stopped {
    /// The reducer failed on the operation (as [`apply`] would).
    Failed(OpError),
    /// The budget ran out before the operation was applied: the
    /// operation is not at fault. Holds the state before it, unchanged.
    OutOfFuel(Value),
}

/// What a metered reducer call ended with (see [`Reducer::reduce_metered`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Metered {
    /// The new state and the fuel it cost (at least 1).
    Done(Value, u64),
    /// The reducer refused or failed on the operation.
    Failed(String),
    /// The fuel given ran out first: the state before the call, unchanged.
    OutOfFuel(Value),
}

/// [`apply`] within `budget`: the state after `op`, the fuel it cost
/// taken from the budget; or, when the budget runs out first, the state
/// before it (nothing is half applied).
pub fn apply_metered(
    reducer: &dyn Reducer,
    kind: &str,
    state: Value,
    op: &Op,
    budget: &mut Budget,
) -> Result<Value, Stopped> {
    match reducer.reduce_metered(state, op, budget.left) {
        Metered::Done(state, cost) => {
            budget.charge(cost);
            Ok(state)
        }
        Metered::Failed(e) => Err(Stopped::Failed(reducer_failed(kind, op, &e))),
        Metered::OutOfFuel(state) => {
            budget.exhaust();
            Err(Stopped::OutOfFuel(state))
        }
    }
}

/// A reducer: how a type's operations make its value.
pub trait Reducer: Send + Sync {
    /// The state before any operation.
    fn init(&self) -> Value;
    /// The state after `op`.
    fn reduce(&self, state: Value, op: &Op) -> Result<Value, String>;
    /// The payload to record for a push made on `state` (unchanged by
    /// default; `set` records which adds a remove has seen).
    fn prepare(&self, state: &Value, payload: Value) -> Value {
        let _ = state;
        payload
    }
    /// What readers see of a state (the state itself by default).
    fn view(&self, state: &Value) -> Value {
        state.clone()
    }
    /// [`Reducer::reduce`] with at most `fuel` units of work. The default,
    /// for reducers that do not meter their work, costs one unit a call
    /// (and runs out only at zero); a script reducer counts the
    /// operations it runs and stops when `fuel` is spent. Running out is
    /// never the operation's fault: the same operation with more fuel
    /// gives the same state.
    fn reduce_metered(&self, state: Value, op: &Op, fuel: u64) -> Metered {
        if fuel == 0 {
            return Metered::OutOfFuel(state);
        }
        match self.reduce(state, op) {
            Ok(state) => Metered::Done(state, 1),
            Err(e) => Metered::Failed(e),
        }
    }
}

/// The log of one path.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OpLog {
    kind: String,
    ops: BTreeMap<OpKey, Op>,
    checkpoint: Option<Checkpoint>,
}

impl OpLog {
    /// An empty log of type `kind`.
    pub fn new(kind: &str) -> OpLog {
        OpLog {
            kind: kind.to_string(),
            ..OpLog::default()
        }
    }

    /// Its type.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The operations not yet folded, in application order.
    pub fn ops(&self) -> impl Iterator<Item = &Op> {
        self.ops.values()
    }

    /// Number of operations not yet folded.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when no operation waits to be folded.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The newest checkpoint.
    pub fn checkpoint(&self) -> Option<&Checkpoint> {
        self.checkpoint.as_ref()
    }

    /// The greatest timestamp in the log (a push must go above it).
    pub fn max_timestamp(&self) -> u64 {
        let ops = self.ops.keys().next_back().map_or(0, |k| k.0);
        let cp = self.checkpoint.as_ref().map_or(0, |c| c.upto.0);
        ops.max(cp)
    }

    /// Adds an operation (a no-op if it is there). Returns it back if it
    /// is late (at or before the checkpoint, and not folded by it).
    #[must_use = "a late operation must be reported, not dropped silently"]
    pub fn push(&mut self, op: Op) -> Option<Op> {
        match standing(self.checkpoint.as_ref(), &op) {
            Standing::Folded => None,
            Standing::Late => Some(op),
            Standing::Applies => {
                self.ops.insert(op.key(), op);
                None
            }
        }
    }

    /// The checkpoint and type only, the operations taken out.
    pub fn take_ops(&mut self) -> BTreeMap<OpKey, Op> {
        std::mem::take(&mut self.ops)
    }

    /// Union of operations plus the newest checkpoint; returns the late
    /// operations it met. Logs of different types keep the type that sorts
    /// first; the other's operations are returned as late (two nodes
    /// created the path with different types).
    #[must_use = "late operations must be reported, not dropped silently"]
    pub fn merge(&mut self, other: &OpLog) -> Vec<Op> {
        if other.kind != self.kind && !other.kind.is_empty() {
            if self.kind.is_empty() || other.kind < self.kind {
                let mine = std::mem::replace(self, other.clone());
                return mine.ops.into_values().collect();
            }
            return other.ops.values().cloned().collect();
        }
        let mut late = Vec::new();
        let newer = match (&self.checkpoint, &other.checkpoint) {
            (None, Some(c)) => Some(c.clone()),
            (Some(a), Some(b)) if (&b.upto, &b.sha) > (&a.upto, &a.sha) => Some(b.clone()),
            _ => None,
        };
        if let Some(cp) = newer {
            // The checkpoint left behind folded operations the new one may
            // not have (two nodes that pruned alone, then met): if so, it
            // is reported like a late operation instead of vanishing.
            if let Some(old) = self.checkpoint.take().filter(|o| !covers(&cp, o)) {
                late.push(checkpoint_as_op(&old));
            }
            self.checkpoint = Some(cp);
            let ops = std::mem::take(&mut self.ops);
            late.extend(ops.into_values().filter_map(|op| self.push(op)));
        }
        if let (Some(mine), Some(theirs)) = (&self.checkpoint, &other.checkpoint)
            && mine != theirs
            && !covers(mine, theirs)
        {
            late.push(checkpoint_as_op(theirs));
        }
        for op in other.ops.values() {
            late.extend(self.push(op.clone()));
        }
        late
    }

    /// The reducer's state: the checkpoint's value (or `init`), then every
    /// operation in order.
    pub fn state(&self, reducer: &dyn Reducer) -> Result<Value, OpError> {
        let mut state = self
            .checkpoint
            .as_ref()
            .map_or_else(|| reducer.init(), |c| c.value.clone());
        for op in self.ops.values() {
            state = apply(reducer, &self.kind, state, op)?;
        }
        Ok(state)
    }

    /// What readers see.
    pub fn value(&self, reducer: &dyn Reducer) -> Result<Value, OpError> {
        Ok(reducer.view(&self.state(reducer)?))
    }

    /// Folds every operation with key `<= upto` into a new checkpoint. The
    /// value afterwards is the same as before (only the log is shorter).
    pub fn prune(&mut self, upto: &OpKey, reducer: &dyn Reducer) -> Result<usize, OpError> {
        let keep = self
            .ops
            .split_off(&(upto.0, upto.1.clone(), format!("{}~", upto.2)));
        let folded_ops = std::mem::replace(&mut self.ops, keep);
        if folded_ops.is_empty() {
            return Ok(0);
        }
        let mut state = self
            .checkpoint
            .as_ref()
            .map_or_else(|| reducer.init(), |c| c.value.clone());
        for op in folded_ops.values() {
            state = reducer.reduce(state, op).map_err(|e| {
                OpError::Reducer(format!(
                    "the reducer of type {:?} failed on operation {}: {e}",
                    self.kind,
                    op.id()
                ))
            })?;
        }
        let last = folded_ops
            .keys()
            .next_back()
            .cloned()
            .unwrap_or_else(|| upto.clone());
        let mut frontier = self
            .checkpoint
            .as_ref()
            .map(|c| c.frontier.clone())
            .unwrap_or_default();
        for op in folded_ops.values() {
            let t = frontier.entry(op.node.clone()).or_insert(0);
            *t = (*t).max(op.timestamp);
        }
        let n = folded_ops.len();
        self.checkpoint = Some(Checkpoint::new(last, state, frontier));
        Ok(n)
    }

    /// The log as JSON (what [`OpLog::decode`] reads).
    pub fn to_json(&self) -> Value {
        let ops: Vec<Value> = self.ops.values().map(Op::to_json).collect();
        let checkpoint = self.checkpoint.as_ref().map_or(Value::Null, |c| {
            serde_json::json!({
                "timestamp": c.upto.0, "node": c.upto.1, "upto": c.upto.2,
                "sha": c.sha, "value": c.value, "frontier": c.frontier,
            })
        });
        // "checkpoint" first both in key order and in insertion order, so
        // the encoding starts with ENCODED_PREFIX whatever serde_json's
        // map features.
        serde_json::json!({"checkpoint": checkpoint, "ops": ops, "type": self.kind, "v": 1})
    }

    /// Bytes for storage; they start with [`ENCODED_PREFIX`]. This is the
    /// first format (version 1: the operations inline), which Chorus now
    /// only reads; it stores a log as a head ([`OpLog::encode_head`]) and
    /// one record per operation.
    pub fn encode(&self) -> Vec<u8> {
        self.to_json().to_string().into_bytes()
    }

    /// The log's head: its type and checkpoint, no operation (version 2).
    /// Starts with [`ENCODED_PREFIX`].
    pub fn encode_head(&self) -> Vec<u8> {
        let mut v = self.to_json();
        if let Some(m) = v.as_object_mut() {
            m.remove("ops");
            m.insert("v".into(), Value::from(2));
        }
        v.to_string().into_bytes()
    }

    /// Reads what [`OpLog::encode`] wrote; refuses anything else.
    pub fn decode(bytes: &[u8]) -> Result<OpLog, OpError> {
        let bad = |why: &str| OpError::Invalid(format!("a stored operation log is damaged: {why}"));
        let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(&e.to_string()))?;
        let version = v.get("v").and_then(Value::as_u64);
        if version != Some(1) && version != Some(2) {
            return Err(bad("unknown version"));
        }
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("type"))?;
        let mut log = OpLog::new(kind);
        let list = |name: &str| -> Result<Vec<Op>, OpError> {
            v.get(name)
                .and_then(Value::as_array)
                .ok_or_else(|| bad(name))?
                .iter()
                .map(|o| Op::from_json(o).ok_or_else(|| bad(name)))
                .collect()
        };
        match v.get("checkpoint") {
            Some(Value::Null) => {}
            Some(c) => {
                let get = |k: &str| c.get(k).ok_or_else(|| bad("checkpoint"));
                let upto = (
                    get("timestamp")?
                        .as_u64()
                        .ok_or_else(|| bad("checkpoint"))?,
                    get("node")?
                        .as_str()
                        .ok_or_else(|| bad("checkpoint"))?
                        .to_string(),
                    get("upto")?
                        .as_str()
                        .ok_or_else(|| bad("checkpoint"))?
                        .to_string(),
                );
                let frontier = get("frontier")?
                    .as_object()
                    .ok_or_else(|| bad("checkpoint"))?
                    .iter()
                    .map(|(n, t)| {
                        t.as_u64()
                            .map(|t| (n.clone(), t))
                            .ok_or_else(|| bad("checkpoint"))
                    })
                    .collect::<Result<BTreeMap<_, _>, _>>()?;
                log.checkpoint = Some(Checkpoint::new(upto, get("value")?.clone(), frontier));
            }
            None => return Err(bad("checkpoint")),
        }
        if version == Some(1) {
            for op in list("ops")? {
                log.ops.insert(op.key(), op);
            }
        } else if v.get("ops").is_some() {
            return Err(bad("a version 2 head holds no operations"));
        }
        Ok(log)
    }
}

/// Checks a type name: 1 to 64 bytes of `[a-z0-9_-]`.
pub fn validate_kind(kind: &str) -> Result<(), OpError> {
    let ok = !kind.is_empty()
        && kind.len() <= 64
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(OpError::Invalid(format!(
            "{kind:?} is not a type name: use 1 to 64 of a-z, 0-9, '-' and '_' (built in: {})",
            BUILT_IN.join(", ")
        )))
    }
}

/// The built-in types.
pub const BUILT_IN: [&str; 7] = [
    "counter",
    "max",
    "min",
    "set",
    "list",
    "json-merge",
    "register",
];

/// A built-in reducer by name.
pub fn built_in(kind: &str) -> Option<Box<dyn Reducer>> {
    Some(match kind {
        "counter" => Box::new(Counter),
        "max" => Box::new(Extreme { max: true }),
        "min" => Box::new(Extreme { max: false }),
        "set" => Box::new(Set),
        "list" => Box::new(List),
        "json-merge" => Box::new(JsonMerge),
        "register" => Box::new(Register),
        _ => return None,
    })
}

/// `counter`: payloads are numbers, added.
struct Counter;

impl Reducer for Counter {
    fn init(&self) -> Value {
        Value::from(0)
    }
    fn reduce(&self, state: Value, op: &Op) -> Result<Value, String> {
        let add = number(&op.payload)?;
        Ok(add_numbers(&state, add))
    }
}

enum Num {
    Int(i64),
    Float(f64),
}

fn number(v: &Value) -> Result<Num, String> {
    if let Some(i) = v.as_i64() {
        return Ok(Num::Int(i));
    }
    v.as_f64()
        .map(Num::Float)
        .ok_or_else(|| format!("the payload {v} is not a number"))
}

fn add_numbers(state: &Value, add: Num) -> Value {
    match (state.as_i64(), add) {
        (Some(s), Num::Int(a)) => match s.checked_add(a) {
            Some(sum) => Value::from(sum),
            None => Value::from(s as f64 + a as f64),
        },
        (_, Num::Int(a)) => Value::from(state.as_f64().unwrap_or(0.0) + a as f64),
        (_, Num::Float(a)) => Value::from(state.as_f64().unwrap_or(0.0) + a),
    }
}

/// `max` / `min`: payloads are numbers; the greatest or least so far.
struct Extreme {
    max: bool,
}

impl Reducer for Extreme {
    fn init(&self) -> Value {
        Value::Null
    }
    fn reduce(&self, state: Value, op: &Op) -> Result<Value, String> {
        let n = op
            .payload
            .as_f64()
            .ok_or_else(|| format!("the payload {} is not a number", op.payload))?;
        let Some(s) = state.as_f64() else {
            return Ok(op.payload.clone());
        };
        let better = if self.max { n > s } else { n < s };
        Ok(if better { op.payload.clone() } else { state })
    }
}

/// `set`: `{"add": x}` or `{"remove": x, "seen": [add ids]}`, an
/// observed-remove set. A remove cancels only the adds it has seen: the
/// push fills `seen` with the ids of the adds of `x` in the state the
/// pusher read ([`Reducer::prepare`]), so a concurrent add it had not seen
/// survives. A remove without `seen` cancels every add applied before it.
struct Set;

impl Reducer for Set {
    fn init(&self) -> Value {
        Value::Object(Map::new())
    }
    fn prepare(&self, state: &Value, payload: Value) -> Value {
        let (Some(x), None) = (payload.get("remove"), payload.get("seen")) else {
            return payload;
        };
        let adds = state
            .get(canonical_json(x))
            .and_then(|m| m.get("adds"))
            .cloned()
            .unwrap_or(Value::Array(Vec::new()));
        let mut out = payload.clone();
        out["seen"] = adds;
        out
    }
    fn reduce(&self, state: Value, op: &Op) -> Result<Value, String> {
        let Value::Object(mut members) = state else {
            return Err("the set's state is not an object".into());
        };
        let bad = || {
            format!(
                "the payload {} is not {{\"add\": x}} or {{\"remove\": x}}",
                op.payload
            )
        };
        let (add, elem) = match (op.payload.get("add"), op.payload.get("remove")) {
            (Some(x), None) => (true, x.clone()),
            (None, Some(x)) => (false, x.clone()),
            _ => return Err(bad()),
        };
        let key = canonical_json(&elem);
        let mut entry = members
            .remove(&key)
            .unwrap_or_else(|| serde_json::json!({"elem": elem, "adds": []}));
        let mut adds: Vec<Value> = entry["adds"].as_array().cloned().unwrap_or_default();
        if add {
            adds.push(Value::String(op.id().to_string()));
        } else {
            match op.payload.get("seen").and_then(Value::as_array) {
                Some(seen) => adds.retain(|a| !seen.contains(a)),
                None if op.payload.get("seen").is_some() => return Err(bad()),
                None => adds.clear(),
            }
        }
        if !adds.is_empty() {
            entry["adds"] = Value::Array(adds);
            members.insert(key, entry);
        }
        Ok(Value::Object(members))
    }
    fn view(&self, state: &Value) -> Value {
        let mut elems: Vec<(&String, &Value)> = state
            .as_object()
            .map(|m| m.iter().collect())
            .unwrap_or_default();
        elems.sort_by(|a, b| a.0.cmp(b.0));
        Value::Array(elems.into_iter().map(|(_, v)| v["elem"].clone()).collect())
    }
}

/// `list`: every payload appended.
struct List;

impl Reducer for List {
    fn init(&self) -> Value {
        Value::Array(Vec::new())
    }
    fn reduce(&self, state: Value, op: &Op) -> Result<Value, String> {
        let Value::Array(mut items) = state else {
            return Err("the list's state is not an array".into());
        };
        items.push(op.payload.clone());
        Ok(Value::Array(items))
    }
}

/// `json-merge`: each payload is an RFC 7386 merge patch.
struct JsonMerge;

impl Reducer for JsonMerge {
    fn init(&self) -> Value {
        Value::Null
    }
    fn reduce(&self, state: Value, op: &Op) -> Result<Value, String> {
        Ok(merge_patch(state, &op.payload))
    }
}

/// RFC 7386: objects merge key by key, `null` removes, anything else
/// replaces.
pub fn merge_patch(target: Value, patch: &Value) -> Value {
    let Value::Object(patch) = patch else {
        return patch.clone();
    };
    let mut target = match target {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    for (k, v) in patch {
        if v.is_null() {
            target.remove(k);
        } else {
            let current = target.remove(k).unwrap_or(Value::Null);
            target.insert(k.clone(), merge_patch(current, v));
        }
    }
    Value::Object(target)
}

/// `register`: the last payload.
struct Register;

impl Reducer for Register {
    fn init(&self) -> Value {
        Value::Null
    }
    fn reduce(&self, _state: Value, op: &Op) -> Result<Value, String> {
        Ok(op.payload.clone())
    }
}
