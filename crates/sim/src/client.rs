//! Simulated clients: random operations through the public store APIs
//! ([`Metadata`], [`Docs`], [`Oplogs`]), each recorded in a [`History`]
//! that the checkers ([`crate::check`]) hold the replicas' final states
//! against.
//!
//! **What is recorded.** Every operation is one [`Event`]: the node it ran
//! on, the sim time, what it did and whether it was acknowledged (only an
//! `Ok` is; a failed commit is "attempted": it may or may not have been
//! applied). Every written value is unique and names its writer
//! (`n{node}#{event}`), so a value found in a store traces back to the
//! write that made it. Before a plain write the client records what it
//! supersedes ([`KvWrite::saw`]): the writes whose values were in the
//! local object (a write without context supersedes all of them), or those
//! of the read whose context it carries. A value in a store is matched to
//! its write by (writer node, timestamp) once the write was acknowledged
//! (the stored value carries the commit's timestamp), else by (writer
//! node, bytes) ([`History::candidates`]).
//!
//! **Bounds.** The history holds one event per operation, each with at
//! most as many superseded ids as the key had siblings, plus an index of
//! the same size: memory proportional to the operations run. The clients'
//! own memory (the last read of each key, a few revisions per document) is
//! bounded by the key space of the [`Layout`].
//!
//! **Cost.** A push opens the node's [`Oplogs`] afresh (a restarted node
//! gets a new [`Metadata`]; a kept handle would read the old store), so it
//! folds the log from its newest checkpoint: O(operations since the last
//! prune).
//!
//! Nothing here reads a clock or draws an unseeded number: the operations
//! are a function of the [`Rng`] and of what the stores hold.

use std::collections::BTreeMap;

use chorus_core::object::{Content, Context, Object, Value};
use chorus_core::oplog::Op as LogOp;
use chorus_core::{FullPrefix, NodeId};
use chorus_gossip::Rng;
use chorus_store::docs::Docs;
use chorus_store::oplog::Oplogs;
use chorus_store::{GetOptions, Metadata, PutOptions, PutValue, Resolver};
use serde_json::json;

/// The index of an event in its [`History`].
pub type EventId = u64;

/// The log type the clients push (the built-in reducer adds payloads).
pub const COUNTER: &str = "counter";

/// Revisions remembered per document for stale `keep_both` updates.
const REVS_REMEMBERED: usize = 4;

/// Where the clients write: a small key space, so that writes collide.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Full prefixes of the plain keys.
    pub kv: Vec<FullPrefix>,
    /// Keys per full prefix (`k00`, `k01`, ...).
    pub keys_per_prefix: usize,
    /// The document store's name (see [`chorus_store::docs::store_prefix`]).
    pub docs: String,
    /// Documents (`d0`, `d1`, ...).
    pub doc_ids: usize,
    /// The full prefix of the operation logs.
    pub logs: FullPrefix,
    /// Log paths (`c0`, `c1`, ...), all counters.
    pub log_paths: usize,
}

impl Default for Layout {
    /// 20 keys over `sim/a` and `sim/b`, 4 documents in `sim/docs`, 3
    /// counters in `sim/logs`.
    fn default() -> Self {
        let fp = |sub: &str| FullPrefix::new("sim", sub).expect("a constant, valid full prefix");
        Layout {
            kv: vec![fp("a"), fp("b")],
            keys_per_prefix: 10,
            docs: "sim/docs".into(),
            doc_ids: 4,
            logs: fp("logs"),
            log_paths: 3,
        }
    }
}

impl Layout {
    /// How many plain keys there are.
    pub fn kv_keys(&self) -> usize {
        self.kv.len() * self.keys_per_prefix
    }

    /// Plain key number `i` (modulo [`Layout::kv_keys`]); `None` when
    /// the layout has no plain keys.
    pub fn kv_key(&self, i: usize) -> Option<(FullPrefix, Vec<u8>)> {
        let n = self.keys_per_prefix;
        if n == 0 || self.kv.is_empty() {
            return None;
        }
        let i = i % (self.kv.len() * n);
        let fp = self.kv.get(i / n)?.clone();
        Some((fp, format!("k{:02}", i % n).into_bytes()))
    }

    /// Refuses a layout with nothing to write to.
    pub fn validate(&self) -> Result<(), String> {
        if self.kv_keys() == 0 || self.doc_ids == 0 || self.log_paths == 0 {
            return Err(format!(
                "the client layout has {} plain keys, {} documents and {} logs: give each at least one",
                self.kv_keys(),
                self.doc_ids,
                self.log_paths
            ));
        }
        self.docs_prefix()
            .map_err(|e| format!("the documents' store name: {e}"))?;
        Ok(())
    }

    /// Document number `i`'s id.
    pub fn doc_id(&self, i: usize) -> String {
        format!("d{}", i % self.doc_ids.max(1))
    }

    /// Log number `i`'s path.
    pub fn log_path(&self, i: usize) -> String {
        format!("c{}", i % self.log_paths.max(1))
    }

    /// The documents' full prefix.
    pub fn docs_prefix(&self) -> chorus_store::Result<FullPrefix> {
        chorus_store::docs::store_prefix(&self.docs)
    }
}

/// One operation a client can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Put plain key `key` without context: supersedes the local object.
    Put {
        /// The key's number ([`Layout::kv_key`]).
        key: usize,
    },
    /// Put with the context of the last read of the key (from any node),
    /// or the empty context if none.
    PutWithContext {
        /// The key's number.
        key: usize,
    },
    /// Read a key (siblings unresolved) and remember its context.
    Read {
        /// The key's number.
        key: usize,
    },
    /// Delete without context.
    Delete {
        /// The key's number.
        key: usize,
    },
    /// Delete with the context of the last read.
    DeleteWithContext {
        /// The key's number.
        key: usize,
    },
    /// Read with the last-writer-wins resolver, writing the winner back
    /// when there were siblings (`allow_put`).
    Resolve {
        /// The key's number.
        key: usize,
    },
    /// Create a document.
    DocCreate {
        /// The document's number.
        doc: usize,
    },
    /// Update a document's current winner.
    DocUpdate {
        /// The document's number.
        doc: usize,
    },
    /// Update a remembered (maybe stale) revision with `keep_both`.
    DocBranch {
        /// The document's number.
        doc: usize,
    },
    /// Delete a document's current winner.
    DocDelete {
        /// The document's number.
        doc: usize,
    },
    /// Push onto a counter.
    Push {
        /// The log's number.
        log: usize,
    },
}

impl Action {
    /// The plain key this action names, if it names one.
    pub fn kv_key(&self) -> Option<usize> {
        match *self {
            Action::Put { key }
            | Action::PutWithContext { key }
            | Action::Read { key }
            | Action::Delete { key }
            | Action::DeleteWithContext { key }
            | Action::Resolve { key } => Some(key),
            _ => None,
        }
    }

    /// A random action over `layout`.
    pub fn random(rng: &mut Rng, layout: &Layout) -> Action {
        let key = rng.below(layout.kv_keys().max(1));
        let doc = rng.below(layout.doc_ids.max(1));
        let log = rng.below(layout.log_paths.max(1));
        match rng.below(100) {
            0..20 => Action::Put { key },
            20..35 => Action::PutWithContext { key },
            35..50 => Action::Read { key },
            50..55 => Action::Delete { key },
            55..60 => Action::DeleteWithContext { key },
            60..70 => Action::Resolve { key },
            70..74 => Action::DocCreate { doc },
            74..80 => Action::DocUpdate { doc },
            80..84 => Action::DocBranch { doc },
            84..86 => Action::DocDelete { doc },
            _ => Action::Push { log },
        }
    }
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It returned `Ok`: acknowledged.
    Acknowledged,
    /// It returned this error: attempted, maybe applied, maybe not.
    Failed(String),
}

impl Outcome {
    /// True when the client got an `Ok`.
    pub fn acknowledged(&self) -> bool {
        matches!(self, Outcome::Acknowledged)
    }
}

/// Which kind of plain write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteKind {
    /// A put without context.
    Put,
    /// A put with a read's context.
    PutWithContext,
    /// A delete without context.
    Delete,
    /// A delete with a read's context.
    DeleteWithContext,
    /// A resolver's write-back of the winner (bytes, or a tombstone).
    WriteBack,
}

/// A read of a plain key.
#[derive(Clone, Debug)]
pub struct KvRead {
    /// Where.
    pub full_prefix: FullPrefix,
    /// Which key.
    pub key: Vec<u8>,
    /// The writes whose values it found.
    pub found: Vec<EventId>,
}

/// A write of a plain key.
#[derive(Clone, Debug)]
pub struct KvWrite {
    /// Which kind.
    pub kind: WriteKind,
    /// Where.
    pub full_prefix: FullPrefix,
    /// Which key.
    pub key: Vec<u8>,
    /// The bytes written; `None` for a tombstone.
    pub bytes: Option<Vec<u8>>,
    /// The writes it supersedes (sorted, no duplicates).
    pub saw: Vec<EventId>,
    /// The stored value's timestamp, known when acknowledged.
    pub ts: Option<u64>,
}

impl KvWrite {
    /// True when it writes a tombstone.
    pub fn is_delete(&self) -> bool {
        self.bytes.is_none()
    }
}

/// Which document operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DocKind {
    /// `create`.
    Create,
    /// `update` of the current winner.
    Update,
    /// `update` of a remembered revision with `keep_both`.
    Branch,
    /// `delete` of the current winner.
    Delete,
}

/// A document operation.
#[derive(Clone, Debug)]
pub struct DocOp {
    /// Which.
    pub kind: DocKind,
    /// The document's id.
    pub id: String,
    /// The revision it edits.
    pub base: Option<String>,
    /// The body's `v` (the unique value).
    pub marker: String,
    /// The revision it made, when acknowledged.
    pub rev: Option<String>,
}

/// A push onto an operation log.
#[derive(Clone, Debug)]
pub struct Push {
    /// The log's path.
    pub path: String,
    /// The number pushed (unique: the event's id plus one).
    pub payload: u64,
    /// The operation's timestamp and sha, when acknowledged and found.
    pub stamp: Option<(u64, String)>,
}

/// What an event did.
#[derive(Clone, Debug)]
pub enum EventOp {
    /// A read of a plain key (also a resolving read that had nothing to
    /// resolve).
    Read(KvRead),
    /// A write of a plain key.
    Write(KvWrite),
    /// A document operation.
    Doc(DocOp),
    /// A push.
    Push(Push),
}

/// One operation of one client.
#[derive(Clone, Debug)]
pub struct Event {
    /// The simulated node it ran on.
    pub node: u32,
    /// That node's id (what its values record).
    pub writer: NodeId,
    /// Sim time.
    pub at_ms: u64,
    /// What it did.
    pub op: EventOp,
    /// How it ended.
    pub outcome: Outcome,
}

impl Event {
    /// The plain write, if it is one.
    pub fn write(&self) -> Option<&KvWrite> {
        match &self.op {
            EventOp::Write(w) => Some(w),
            _ => None,
        }
    }

    /// One line for a report.
    pub fn describe(&self) -> String {
        let what = match &self.op {
            EventOp::Read(r) => format!(
                "read {}/{} found {:?}",
                r.full_prefix,
                String::from_utf8_lossy(&r.key),
                r.found
            ),
            EventOp::Write(w) => format!(
                "{:?} {}/{} = {} saw {:?} ts {:?}",
                w.kind,
                w.full_prefix,
                String::from_utf8_lossy(&w.key),
                w.bytes
                    .as_deref()
                    .map_or("tombstone".into(), |b| String::from_utf8_lossy(b)
                        .into_owned()),
                w.saw,
                w.ts
            ),
            EventOp::Doc(d) => format!(
                "doc {:?} {} from {:?} v {} -> {:?}",
                d.kind, d.id, d.base, d.marker, d.rev
            ),
            EventOp::Push(p) => format!("push {} +{} {:?}", p.path, p.payload, p.stamp),
        };
        format!(
            "node {} at {} ms: {what}: {:?}",
            self.node, self.at_ms, self.outcome
        )
    }
}

/// What a value holds: its bytes, `None` for a tombstone.
type Written = Option<Vec<u8>>;

/// The writes of one plain key, indexed to match stored values to them.
#[derive(Clone, Debug, Default)]
pub struct KeyWrites {
    /// Every write of the key, in order.
    pub writes: Vec<EventId>,
    /// Acknowledged writes by (writer, timestamp, bytes or `None`) of the
    /// stored value (several only if two directories share a node id).
    by_stamp: BTreeMap<(NodeId, u64, Written), Vec<EventId>>,
    /// Writes with no known timestamp by (writer, bytes or `None`).
    unstamped: BTreeMap<(NodeId, Written), Vec<EventId>>,
}

/// Everything the clients did, in order.
#[derive(Clone, Debug)]
pub struct History {
    layout: Layout,
    events: Vec<Event>,
    /// Plain writes by key.
    keys: BTreeMap<(FullPrefix, Vec<u8>), KeyWrites>,
    /// Document operations and pushes by (full prefix, document id or
    /// path).
    groups: BTreeMap<(FullPrefix, Vec<u8>), Vec<EventId>>,
}

impl History {
    /// An empty history of clients writing to `layout`.
    pub fn new(layout: Layout) -> History {
        History {
            layout,
            events: Vec::new(),
            keys: BTreeMap::new(),
            groups: BTreeMap::new(),
        }
    }

    /// Where the clients write.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Every event, in order.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// One event.
    pub fn event(&self, id: EventId) -> Option<&Event> {
        usize::try_from(id).ok().and_then(|i| self.events.get(i))
    }

    /// How many events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// True when nothing happened yet.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The plain keys written, with their writes.
    pub fn keys(&self) -> impl Iterator<Item = (&(FullPrefix, Vec<u8>), &KeyWrites)> {
        self.keys.iter()
    }

    /// The writes of one plain key, in order.
    pub fn writes_to(&self, fp: &FullPrefix, key: &[u8]) -> &[EventId] {
        self.keys
            .get(&(fp.clone(), key.to_vec()))
            .map_or(&[], |k| k.writes.as_slice())
    }

    /// The document operations or pushes on a document or path.
    pub fn group_events(&self, fp: &FullPrefix, base: &[u8]) -> &[EventId] {
        self.groups
            .get(&(fp.clone(), base.to_vec()))
            .map_or(&[], Vec::as_slice)
    }

    /// The first event on a stored key: a plain key's first write, or the
    /// first operation on the document or log the key belongs to.
    pub fn first_event_on(&self, fp: &FullPrefix, key: &[u8]) -> Option<EventId> {
        self.writes_to(fp, key)
            .first()
            .or_else(|| self.group_events(fp, chorus_store::group_base(key)).first())
            .copied()
    }

    /// The writes a stored value of the key may be: one when the value
    /// matches an acknowledged write's (writer, timestamp, bytes); else
    /// the unacknowledged writes of its writer with its bytes (several
    /// only for tombstones); empty when no client wrote it.
    pub fn candidates(&self, fp: &FullPrefix, key: &[u8], value: &Value) -> Vec<EventId> {
        let Some(k) = self.keys.get(&(fp.clone(), key.to_vec())) else {
            return Vec::new();
        };
        let bytes = match &value.content {
            Content::Tombstone => None,
            Content::Data(b) => Some(b.to_vec()),
        };
        if let Some(ids) = k
            .by_stamp
            .get(&(value.node, value.timestamp.0, bytes.clone()))
        {
            return ids.clone();
        }
        k.unstamped
            .get(&(value.node, bytes))
            .cloned()
            .unwrap_or_default()
    }

    /// The writes behind every value of an object (sorted, no duplicates).
    fn sources(&self, fp: &FullPrefix, key: &[u8], values: &[&Value]) -> Vec<EventId> {
        let mut out: Vec<EventId> = values
            .iter()
            .flat_map(|v| self.candidates(fp, key, v))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    fn next_id(&self) -> EventId {
        self.events.len() as EventId
    }

    /// Appends an event, indexing it; returns its id.
    fn record(&mut self, event: Event) -> EventId {
        let id = self.next_id();
        match &event.op {
            EventOp::Write(w) => {
                let k = self
                    .keys
                    .entry((w.full_prefix.clone(), w.key.clone()))
                    .or_default();
                k.writes.push(id);
                match (w.ts, event.outcome.acknowledged()) {
                    (Some(ts), true) => k
                        .by_stamp
                        .entry((event.writer, ts, w.bytes.clone()))
                        .or_default()
                        .push(id),
                    _ => k
                        .unstamped
                        .entry((event.writer, w.bytes.clone()))
                        .or_default()
                        .push(id),
                }
            }
            EventOp::Doc(d) => {
                if let Ok(fp) = self.layout.docs_prefix() {
                    self.groups
                        .entry((fp, d.id.clone().into_bytes()))
                        .or_default()
                        .push(id);
                }
            }
            EventOp::Push(p) => self
                .groups
                .entry((self.layout.logs.clone(), p.path.clone().into_bytes()))
                .or_default()
                .push(id),
            EventOp::Read(_) => {}
        }
        self.events.push(event);
        id
    }
}

/// What one step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// The event it recorded.
    pub event: EventId,
    /// The action run.
    pub action: Action,
    /// True when it was acknowledged (reads: when they succeeded).
    pub acknowledged: bool,
}

/// The simulated clients of every node, and their history.
#[derive(Clone, Debug)]
pub struct Clients {
    history: History,
    /// The last read of each plain key (from any node): its context and
    /// the writes it found.
    reads: BTreeMap<(FullPrefix, Vec<u8>), (Context, Vec<EventId>)>,
    /// The last few revisions seen of each document.
    revs: BTreeMap<String, Vec<String>>,
}

/// Who runs an operation, and when.
struct At<'a> {
    node: u32,
    meta: &'a Metadata,
    now_ms: u64,
}

impl Clients {
    /// Clients writing to `layout`, with an empty history; refuses a
    /// layout with nothing to write to ([`Layout::validate`]).
    pub fn new(layout: Layout) -> Result<Clients, String> {
        layout.validate()?;
        Ok(Clients {
            history: History::new(layout),
            reads: BTreeMap::new(),
            revs: BTreeMap::new(),
        })
    }

    /// Plain key number `i`.
    fn kv_key(&self, i: usize) -> (FullPrefix, Vec<u8>) {
        self.history
            .layout
            .kv_key(i)
            .expect("Clients::new validated that the layout has plain keys")
    }

    /// Runs one random operation on `node` (whose store `meta` is) and
    /// records it.
    pub fn step(&mut self, node: u32, meta: &Metadata, rng: &mut Rng, now_ms: u64) -> Step {
        let action = Action::random(rng, &self.history.layout);
        self.apply(node, meta, action, now_ms)
    }

    /// Runs `action` on `node` and records it.
    pub fn apply(&mut self, node: u32, meta: &Metadata, action: Action, now_ms: u64) -> Step {
        let at = At { node, meta, now_ms };
        let event = match action {
            Action::Put { key } => self.put(&at, key, Some(false), false),
            Action::PutWithContext { key } => self.put(&at, key, Some(true), false),
            Action::Delete { key } => self.put(&at, key, None, false),
            Action::DeleteWithContext { key } => self.put(&at, key, None, true),
            Action::Read { key } => self.read(&at, key),
            Action::Resolve { key } => self.resolve(&at, key),
            Action::DocCreate { doc } => self.doc(&at, doc, DocKind::Create),
            Action::DocUpdate { doc } => self.doc(&at, doc, DocKind::Update),
            Action::DocBranch { doc } => self.doc(&at, doc, DocKind::Branch),
            Action::DocDelete { doc } => self.doc(&at, doc, DocKind::Delete),
            Action::Push { log } => self.push(&at, log),
        };
        let acknowledged = self
            .history
            .event(event)
            .is_some_and(|e| e.outcome.acknowledged());
        Step {
            event,
            action,
            acknowledged,
        }
    }

    /// The history so far.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// The history, ending the clients.
    pub fn into_history(self) -> History {
        self.history
    }

    fn record(&mut self, at: &At<'_>, op: EventOp, outcome: Outcome) -> EventId {
        self.history.record(Event {
            node: at.node,
            writer: at.meta.store().node_id(),
            at_ms: at.now_ms,
            op,
            outcome,
        })
    }

    fn unique(&self, node: u32) -> String {
        format!("n{node}#{}", self.history.next_id())
    }

    /// A failed read of the local object, recorded as such.
    fn failed_read(&mut self, at: &At<'_>, fp: FullPrefix, key: Vec<u8>, e: String) -> EventId {
        let op = EventOp::Read(KvRead {
            full_prefix: fp,
            key,
            found: Vec::new(),
        });
        self.record(at, op, Outcome::Failed(e))
    }

    /// A put (`data: Some(with_context)`) or a delete (`data: None`,
    /// `delete_context`).
    fn put(
        &mut self,
        at: &At<'_>,
        key: usize,
        data: Option<bool>,
        delete_context: bool,
    ) -> EventId {
        let (fp, key) = self.kv_key(key);
        let with_context = data.unwrap_or(delete_context);
        let (context, saw) = if with_context {
            match self.reads.get(&(fp.clone(), key.clone())) {
                Some((c, saw)) => (Some(c.clone()), saw.clone()),
                None => (Some(Object::empty_context()), Vec::new()),
            }
        } else {
            match at.meta.object(&fp, &key) {
                Ok(o) => {
                    let values = o.as_ref().map(Object::values).unwrap_or_default();
                    (None, self.history.sources(&fp, &key, &values))
                }
                Err(e) => return self.failed_read(at, fp, key, e.to_string()),
            }
        };
        let bytes = data.map(|_| self.unique(at.node).into_bytes());
        let value = match &bytes {
            Some(b) => PutValue::Bytes(b.clone()),
            None => PutValue::Tombstone,
        };
        let opts = PutOptions {
            context,
            ..PutOptions::default()
        };
        let (ts, outcome) = match at.meta.put(&fp, &key, value, &opts) {
            Ok(info) => (Some(info.ts), Outcome::Acknowledged),
            Err(e) => (None, Outcome::Failed(e.to_string())),
        };
        let kind = match (data, with_context) {
            (Some(false), _) => WriteKind::Put,
            (Some(true), _) => WriteKind::PutWithContext,
            (None, false) => WriteKind::Delete,
            (None, true) => WriteKind::DeleteWithContext,
        };
        let op = EventOp::Write(KvWrite {
            kind,
            full_prefix: fp,
            key,
            bytes,
            saw,
            ts,
        });
        self.record(at, op, outcome)
    }

    /// Reads a key as a client would (siblings unresolved) and remembers
    /// its context; a deleted key's context comes from its object.
    fn read(&mut self, at: &At<'_>, key: usize) -> EventId {
        let (fp, key) = self.kv_key(key);
        let read = at.meta.get(&fp, &key, &GetOptions::default());
        let (context, values) = match read {
            Ok(Some(r)) => (r.context, r.values),
            Ok(None) => match at.meta.object(&fp, &key) {
                Ok(Some(o)) => (o.context(), o.values().into_iter().cloned().collect()),
                Ok(None) => (Object::empty_context(), Vec::new()),
                Err(e) => return self.failed_read(at, fp, key, e.to_string()),
            },
            Err(e) => return self.failed_read(at, fp, key, e.to_string()),
        };
        let refs: Vec<&Value> = values.iter().collect();
        let found = self.history.sources(&fp, &key, &refs);
        self.reads
            .insert((fp.clone(), key.clone()), (context, found.clone()));
        let op = EventOp::Read(KvRead {
            full_prefix: fp,
            key,
            found,
        });
        self.record(at, op, Outcome::Acknowledged)
    }

    /// A read with the last-writer-wins resolver that writes the winner
    /// back when there are siblings.
    fn resolve(&mut self, at: &At<'_>, key: usize) -> EventId {
        let (fp, key) = self.kv_key(key);
        let object = match at.meta.object(&fp, &key) {
            Ok(o) => o,
            Err(e) => return self.failed_read(at, fp, key, e.to_string()),
        };
        let values = object.as_ref().map(Object::values).unwrap_or_default();
        let saw = self.history.sources(&fp, &key, &values);
        let winner = object
            .as_ref()
            .and_then(Object::lww_value)
            .map(|v| v.bytes().map(<[u8]>::to_vec));
        let opts = GetOptions {
            resolver: Resolver::Lww,
            allow_put: true,
            ..GetOptions::default()
        };
        let result = at.meta.get(&fp, &key, &opts);
        let (Some(bytes), true) = (winner, values.len() > 1) else {
            // Nothing to resolve: a plain read.
            let outcome = match result {
                Ok(_) => Outcome::Acknowledged,
                Err(e) => Outcome::Failed(e.to_string()),
            };
            let op = EventOp::Read(KvRead {
                full_prefix: fp,
                key,
                found: saw,
            });
            return self.record(at, op, outcome);
        };
        let writer = at.meta.store().node_id();
        let (ts, outcome) = match result {
            // The stored value is the newest this node wrote to the key.
            Ok(_) => match at.meta.object(&fp, &key) {
                Ok(Some(o)) => (
                    o.values()
                        .iter()
                        .filter(|v| v.node == writer)
                        .map(|v| v.timestamp.0)
                        .max(),
                    Outcome::Acknowledged,
                ),
                Ok(None) => (None, Outcome::Acknowledged),
                Err(e) => (None, Outcome::Failed(e.to_string())),
            },
            Err(e) => (None, Outcome::Failed(e.to_string())),
        };
        let op = EventOp::Write(KvWrite {
            kind: WriteKind::WriteBack,
            full_prefix: fp,
            key,
            bytes,
            saw,
            ts,
        });
        self.record(at, op, outcome)
    }

    fn remember_rev(&mut self, id: &str, rev: &str) {
        let revs = self.revs.entry(id.to_string()).or_default();
        if revs.iter().any(|r| r == rev) {
            return;
        }
        if revs.len() >= REVS_REMEMBERED {
            revs.remove(0);
        }
        revs.push(rev.to_string());
    }

    /// The document's current winner's revision at this node.
    fn current_rev(&mut self, docs: &Docs, id: &str) -> Result<String, String> {
        let doc = docs.get(id).map_err(|e| e.to_string())?;
        let rev = doc
            .get("_rev")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| format!("document {id} has no _rev"))?
            .to_string();
        self.remember_rev(id, &rev);
        Ok(rev)
    }

    fn doc(&mut self, at: &At<'_>, doc: usize, kind: DocKind) -> EventId {
        let id = self.history.layout.doc_id(doc);
        let marker = self.unique(at.node);
        let mut op = DocOp {
            kind,
            id: id.clone(),
            base: None,
            marker: marker.clone(),
            rev: None,
        };
        let result = self.doc_edit(at, &mut op);
        let outcome = match result {
            Ok(rev) => {
                self.remember_rev(&id, &rev);
                op.rev = Some(rev);
                Outcome::Acknowledged
            }
            Err(e) => Outcome::Failed(e),
        };
        self.record(at, EventOp::Doc(op), outcome)
    }

    /// Runs a document operation; the revision it made.
    fn doc_edit(&mut self, at: &At<'_>, op: &mut DocOp) -> Result<String, String> {
        let docs = Docs::open(at.meta, &self.history.layout.docs).map_err(|e| e.to_string())?;
        let id = op.id.clone();
        let saved = match op.kind {
            DocKind::Create => docs.create(json!({"_id": id, "v": op.marker})),
            DocKind::Update | DocKind::Branch => {
                let stale = match op.kind {
                    DocKind::Branch => self.revs.get(&id).and_then(|r| r.first()).cloned(),
                    _ => None,
                };
                let base = match stale {
                    Some(rev) => rev,
                    None => self.current_rev(&docs, &id)?,
                };
                op.base = Some(base.clone());
                let doc = json!({"_id": id, "_rev": base, "v": op.marker});
                docs.update(doc, op.kind == DocKind::Branch)
            }
            DocKind::Delete => {
                let base = self.current_rev(&docs, &id)?;
                op.base = Some(base.clone());
                docs.delete(&id, &base)
            }
        };
        saved.map(|s| s.rev.to_string()).map_err(|e| e.to_string())
    }

    fn push(&mut self, at: &At<'_>, log: usize) -> EventId {
        let path = self.history.layout.log_path(log);
        let payload = self.history.next_id() + 1;
        let fp = self.history.layout.logs.clone();
        let oplogs = Oplogs::new(at.meta);
        let before = at.meta.store().snapshot().map(|s| s.seq());
        let result = oplogs.push(&fp, &path, COUNTER, json!(payload));
        let (stamp, outcome) = match result {
            Ok(_) => {
                let writer = at.meta.store().node_id().to_string();
                let stamp = before
                    .ok()
                    .and_then(|seq| pushed_since(at.meta, seq, &fp, &path, &writer, payload))
                    .or_else(|| pushed_in_log(&oplogs, &fp, &path, &writer, payload));
                (stamp, Outcome::Acknowledged)
            }
            Err(e) => (None, Outcome::Failed(e.to_string())),
        };
        let op = EventOp::Push(Push {
            path,
            payload,
            stamp,
        });
        self.record(at, op, outcome)
    }
}

/// The (timestamp, sha) of the operation `writer` pushed with `payload`,
/// among the records committed after `seq`.
fn pushed_since(
    meta: &Metadata,
    seq: u64,
    fp: &FullPrefix,
    path: &str,
    writer: &str,
    payload: u64,
) -> Option<(u64, String)> {
    let snap = meta.store().snapshot().ok()?;
    let changed = snap.changed_since(seq)?;
    for (_, f, key) in changed {
        if f != fp {
            continue;
        }
        let Some((base, name)) = chorus_store::split_record(key.as_bytes()) else {
            continue;
        };
        if base != path.as_bytes() {
            continue;
        }
        if let Some(stamp) = parse_record_name(name, writer, payload) {
            return Some(stamp);
        }
    }
    None
}

/// A record name `tttttttttttttttt.node.sha` if it is the operation
/// `writer` pushed with `payload`: (timestamp, sha).
fn parse_record_name(name: &[u8], writer: &str, payload: u64) -> Option<(u64, String)> {
    let name = std::str::from_utf8(name).ok()?;
    let mut parts = name.splitn(3, '.');
    let ts = u64::from_str_radix(parts.next()?, 16).ok()?;
    let node = parts.next()?;
    let sha = parts.next()?;
    let op = LogOp::new(COUNTER, ts, node, json!(payload));
    (node == writer && op.sha == sha).then(|| (ts, sha.to_string()))
}

/// The operation `writer` pushed with `payload`, looked for in the whole
/// log (when the commit's changes are no longer remembered).
fn pushed_in_log(
    oplogs: &Oplogs,
    fp: &FullPrefix,
    path: &str,
    writer: &str,
    payload: u64,
) -> Option<(u64, String)> {
    let view = oplogs.log(fp, path).ok()?;
    view.log
        .ops()
        .chain(view.late.iter())
        .find(|op| op.node == writer && op.payload == json!(payload))
        .map(|op| (op.timestamp, op.sha.clone()))
}
