//! The metadata object: a dotted version vector set of values, as Riak's
//! cluster metadata defines it. A value is bytes (or a tombstone), a hybrid
//! timestamp and the node that wrote it. Concurrent writes become siblings;
//! nothing is lost until a resolver, a person or a later write settles them.
//!
//! Objects have one deterministic encoding ([`Object::encode`]); it is what
//! the store writes, and what [`Object::hash`] hashes, so equal objects hash
//! equal on every machine.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::NodeId;
use crate::dvvset::{Dvvs, Entry, VersionVector};

/// A hybrid logical timestamp: milliseconds since the Unix epoch in the high
/// 48 bits, a counter in the low 16. [`Hlc::tick`] never goes backwards, even
/// when the wall clock does.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hlc(pub u64);

impl Hlc {
    const LOGICAL_BITS: u32 = 16;

    /// The timestamp for an event at wall-clock `now_ms`, after `last`.
    pub fn tick(last: Hlc, now_ms: u64) -> Hlc {
        let wall = Hlc(now_ms.min(u64::MAX >> Self::LOGICAL_BITS) << Self::LOGICAL_BITS);
        if wall > last {
            wall
        } else {
            Hlc(last.0.saturating_add(1))
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn ms(self) -> u64 {
        self.0 >> Self::LOGICAL_BITS
    }
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.ms(), self.0 & 0xffff)
    }
}

/// Shared, immutable bytes: a range of a reference-counted buffer, so the
/// values of an object decoded from the store's copy point into that copy
/// instead of copying it. Compares, orders and hashes as its bytes.
#[derive(Clone)]
pub struct Blob {
    buf: Arc<[u8]>,
    start: usize,
    end: usize,
}

impl Blob {
    /// The bytes `start..end` of `buf`, shared.
    fn shared(buf: &Arc<[u8]>, start: usize, end: usize) -> Self {
        Blob {
            buf: buf.clone(),
            start,
            end,
        }
    }
}

impl From<&[u8]> for Blob {
    fn from(bytes: &[u8]) -> Self {
        Blob {
            buf: Arc::from(bytes),
            start: 0,
            end: bytes.len(),
        }
    }
}

impl std::ops::Deref for Blob {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
}

impl PartialEq for Blob {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Blob {}

impl PartialOrd for Blob {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Blob {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (**self).cmp(&**other)
    }
}

impl std::hash::Hash for Blob {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (**self).hash(state);
    }
}

/// What a value holds.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Content {
    /// A deletion. Ordered before any data.
    Tombstone,
    /// Bytes.
    Data(Blob),
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Content::Tombstone => write!(f, "tombstone"),
            Content::Data(b) => write!(f, "{:?}", String::from_utf8_lossy(b)),
        }
    }
}

/// One value of an object. Ordered by timestamp, then node id, then content:
/// the last-writer-wins order, the same on every node.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Value {
    /// When it was written.
    pub timestamp: Hlc,
    /// Which node wrote it.
    pub node: NodeId,
    /// Bytes or a tombstone.
    pub content: Content,
    /// How it was written (token, priority), when anything was recorded.
    pub meta: Option<Box<Meta>>,
}

/// What a value records about how it was written, beside its bytes: the id
/// of the token that wrote it and the writer's priority with the window it
/// applies in (see docs/staging.md). It travels with the value wherever the
/// value replicates. Values without it encode exactly as before it existed.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Meta {
    /// The id of the token that made the write (never the token itself).
    pub token: Option<String>,
    /// The writer's priority: on a near-simultaneous write, the higher wins.
    pub priority: u8,
    /// How close in time (ms) two writes must be for the priority to apply.
    pub window_ms: u32,
}

/// Longest token id a value records, in bytes.
pub const META_TOKEN_MAX: usize = 128;

static NO_META: Meta = Meta {
    token: None,
    priority: 0,
    window_ms: 0,
};

impl Meta {
    /// True when nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self == &NO_META
    }

    /// The same, with an empty token id dropped and a long one cut to
    /// [`META_TOKEN_MAX`] bytes (at a character boundary), so that every
    /// meta has an encoding.
    fn normalized(mut self) -> Meta {
        if let Some(t) = &mut self.token {
            if t.len() > META_TOKEN_MAX {
                let mut end = META_TOKEN_MAX;
                while !t.is_char_boundary(end) {
                    end -= 1;
                }
                t.truncate(end);
            }
            if t.is_empty() {
                self.token = None;
            }
        }
        self
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?}@{:?}/{}",
            self.content,
            self.timestamp,
            &self.node.to_string()[..8]
        )
    }
}

impl Value {
    /// Data written by `node` at `timestamp`.
    pub fn data(bytes: &[u8], timestamp: Hlc, node: NodeId) -> Self {
        Value {
            timestamp,
            node,
            content: Content::Data(Blob::from(bytes)),
            meta: None,
        }
    }

    /// A tombstone written by `node` at `timestamp`.
    pub fn tombstone(timestamp: Hlc, node: NodeId) -> Self {
        Value {
            timestamp,
            node,
            content: Content::Tombstone,
            meta: None,
        }
    }

    /// What the value records about how it was written (empty if nothing).
    pub fn meta(&self) -> &Meta {
        self.meta.as_deref().unwrap_or(&NO_META)
    }

    /// The same value recording `meta` (see [`Meta`]; an empty meta
    /// records nothing).
    pub fn with_meta(mut self, meta: Meta) -> Value {
        let meta = meta.normalized();
        self.meta = (!meta.is_empty()).then(|| Box::new(meta));
        self
    }

    /// The bytes, or `None` for a tombstone.
    pub fn bytes(&self) -> Option<&[u8]> {
        match &self.content {
            Content::Data(b) => Some(b),
            Content::Tombstone => None,
        }
    }
}

/// The version vector a reader saw; handed to clients as an opaque string.
pub type Context = VersionVector<NodeId>;

/// Why an object operation or a decoding failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    /// `value` was asked of an object with siblings.
    #[error(
        "the object has {0} sibling values: read them all, or resolve them (lww or a function)"
    )]
    Siblings(usize),
    /// Bytes that are not an object encoding.
    #[error("not an object encoding: {0}")]
    BadEncoding(String),
    /// A context string that is not one Chorus made.
    #[error("malformed context {0:?}: pass the context string exactly as a read returned it")]
    BadContext(String),
}

/// A metadata object: the causal history of one key and its values.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Object {
    clock: Dvvs<NodeId, Value>,
}

impl fmt::Debug for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Object{:?}", self.clock)
    }
}

/// What a read needs of an encoded object, decoded without building its
/// clock: see [`Object::decode_summary`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Every value, in [`Object::values`] order (anonymous ones first).
    pub values: Vec<Value>,
    /// The object's context.
    pub context: Context,
    /// Index in `values` of the value [`Object::resolve_lww`] keeps.
    pub lww: Option<usize>,
}

/// Largest counter an object may carry: no node makes 2^62 writes to one
/// key, and the bound keeps a crafted object from overflowing a dot.
const MAX_COUNTER: u64 = 1 << 62;

/// Version of [`Object::encode`] and of context strings.
const ENCODING_VERSION: u8 = 1;

impl Object {
    /// `modify`: the object after `node` writes `value` having read
    /// `context`. Values of `current` that `context` does not cover stay as
    /// siblings; with the current object's own context the write supersedes
    /// every value.
    ///
    /// When `node` holds no value of the key, the new dot is numbered
    /// above the value's hybrid timestamp, not from 1: a key whose
    /// tombstone was collected has lost its history, and a dot numbered
    /// from it again would name a different value by a dot some replica
    /// still holds (or remembers as collected), which a merge takes for
    /// the same value and drops. A node's hybrid timestamps grow with
    /// every commit (by at least one even when its wall clock stands still
    /// or goes back), and a key's counter grows by one per write between
    /// jumps, one write per commit: so a jump always lands above every dot
    /// the node gave the key before, and its dots are never given twice.
    pub fn modify(
        current: Option<&Object>,
        context: &Context,
        value: Value,
        node: NodeId,
    ) -> Object {
        let floor = value.timestamp.0;
        let new = Dvvs::new_with(context, vec![value]);
        let clock = match current {
            None => new.update_with_floor(&Dvvs::default(), &node, floor),
            Some(obj) => new.update_with_floor(&obj.clock, &node, floor),
        };
        Object {
            // A clock made by `new_with` holds exactly one value, so update
            // cannot refuse it.
            clock: clock.unwrap_or_default(),
        }
    }

    /// The single value; an error when there are siblings.
    pub fn value(&self) -> Result<&Value, ObjectError> {
        match self.clock.values().as_slice() {
            [one] => Ok(one),
            all => Err(ObjectError::Siblings(all.len())),
        }
    }

    /// Every value (siblings).
    pub fn values(&self) -> Vec<&Value> {
        self.clock.values()
    }

    /// How many values.
    pub fn value_count(&self) -> usize {
        self.clock.size()
    }

    /// The version vector of the object's history.
    pub fn context(&self) -> Context {
        self.clock.join()
    }

    /// The context of a key never read: a write with it adds a sibling.
    pub fn empty_context() -> Context {
        Vec::new()
    }

    /// True when every value is a tombstone.
    pub fn is_tombstone(&self) -> bool {
        self.clock
            .values()
            .iter()
            .all(|v| v.content == Content::Tombstone)
    }

    /// `reconcile`: merges `remote` into `local`. `None` when `remote` is
    /// equal to or older than `local` (nothing to do).
    pub fn reconcile(remote: &Object, local: Option<&Object>) -> Option<Object> {
        match local {
            None => Some(remote.clone()),
            Some(local) if remote.clock.less(&local.clock) || remote.clock.equal(&local.clock) => {
                None
            }
            Some(local) => Some(Object {
                clock: local.clock.sync(&remote.clock),
            }),
        }
    }

    /// `resolve(lww)`: keeps the newest value by (timestamp, node, content),
    /// so every node picks the same one. The result may hold it as an
    /// anonymous value; store it with [`Object::modify`] under the
    /// result's context.
    pub fn resolve_lww(&self) -> Object {
        Object {
            clock: self.clock.lww(|a, b| a <= b),
        }
    }

    /// The value `resolve_lww` keeps, if the object has any.
    pub fn lww_value(&self) -> Option<&Value> {
        self.clock.last(|a, b| a <= b)
    }

    /// `resolve(F)`: replaces the siblings with `f(siblings)`.
    pub fn resolve_with(&self, f: impl FnOnce(Vec<&Value>) -> Value) -> Object {
        Object {
            clock: self.clock.reconcile(f),
        }
    }

    /// `is_stale`: true when this object's history already covers
    /// `remote_context` (an update carrying it brings nothing new).
    pub fn is_stale(&self, remote_context: &Context) -> bool {
        descends(&self.context(), remote_context)
    }

    /// `equal_context`: the object's context is exactly `context`.
    pub fn equal_context(&self, context: &Context) -> bool {
        &self.context() == context
    }

    /// The SHA-256 of the deterministic encoding.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }

    /// The deterministic encoding (version 1):
    ///
    /// ```text
    /// object = 0x01 | varint n | entry{n} | varint m | value{m}   (m anonymous values)
    /// entry  = node[16] | counter u64le | varint k | value{k}     (entries sorted by node)
    /// value  = timestamp u64le | node[16] | content
    /// content = 0x00 (tombstone) | 0x01 varint len bytes
    ///         | 0x02 meta (tombstone) | 0x03 meta varint len bytes
    /// meta   = flags u8 (bit 0: token, bit 1: priority; never 0)
    ///          [varint len token]  [priority u8 | varint window_ms]
    /// ```
    ///
    /// Values with no [`Meta`] use tags 0 and 1 only, so their encoding
    /// (and every hash over it) is what it was before metadata existed.
    ///
    /// Varints are LEB128 in their minimal form and counters lie in
    /// `1..=2^62`; decoding refuses anything else, so an object has exactly
    /// one encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![ENCODING_VERSION];
        put_varint(&mut out, self.clock.entries().len() as u64);
        for e in self.clock.entries() {
            out.extend_from_slice(e.id.as_bytes());
            out.extend_from_slice(&e.counter.to_le_bytes());
            put_values(&mut out, &e.values);
        }
        put_values(&mut out, self.clock.anonymous());
        out
    }

    /// Decodes [`Object::encode`]'s output, checking every field.
    pub fn decode(bytes: &[u8]) -> Result<Object, ObjectError> {
        let mut r = Reader {
            bytes,
            at: 0,
            shared: None,
        };
        let version = r.byte()?;
        if version != ENCODING_VERSION {
            return Err(r.bad(format!(
                "encoding version {version}, this build reads {ENCODING_VERSION}"
            )));
        }
        let n = r.count()?;
        let mut entries: Vec<Entry<NodeId, Value>> = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let id = r.node()?;
            let counter = r.counter()?;
            let values = r.values()?;
            if (values.len() as u64) > counter {
                return Err(r.bad(format!(
                    "an entry holds {} values but only {counter} dots",
                    values.len()
                )));
            }
            if entries.last().is_some_and(|last| last.id >= id) {
                return Err(r.bad("entries are not sorted by node id".into()));
            }
            entries.push(Entry {
                id,
                counter,
                values,
            });
        }
        let anonymous = r.values()?;
        if r.at != bytes.len() {
            return Err(r.bad(format!("{} bytes after the object", bytes.len() - r.at)));
        }
        Ok(Object {
            clock: Dvvs::from_parts(entries, anonymous),
        })
    }

    /// Decodes what a read needs (values, context, the last-writer-wins
    /// pick) with two allocations, validating exactly as
    /// [`Object::decode`] does: `decode_summary(b)` agrees with
    /// `decode(b)` on every input.
    pub fn decode_summary(bytes: &[u8]) -> Result<Summary, ObjectError> {
        Self::summary_from(Reader {
            bytes,
            at: 0,
            shared: None,
        })
    }

    /// [`Object::decode_summary`] of a shared buffer: the values point into
    /// `buf` instead of copying their bytes.
    pub fn decode_summary_shared(buf: &Arc<[u8]>) -> Result<Summary, ObjectError> {
        Self::summary_from(Reader {
            bytes: buf,
            at: 0,
            shared: Some(buf),
        })
    }

    fn summary_from(mut r: Reader<'_>) -> Result<Summary, ObjectError> {
        let bytes = r.bytes;
        let version = r.byte()?;
        if version != ENCODING_VERSION {
            return Err(r.bad(format!(
                "encoding version {version}, this build reads {ENCODING_VERSION}"
            )));
        }
        let n = r.count()?;
        let mut context: Context = Vec::with_capacity(n);
        let mut values: Vec<Value> = Vec::with_capacity(n.max(1));
        // The lww pick among each entry's newest value, then the anonymous
        // values, as `Dvvs::last` makes it.
        let mut lww: Option<usize> = None;
        let pick = |lww: Option<usize>, c: usize, values: &[Value]| match lww {
            Some(w) if values[w] > values[c] => Some(w),
            _ => Some(c),
        };
        for _ in 0..n {
            let id = r.node()?;
            let counter = r.counter()?;
            let before = values.len();
            r.values_into(&mut values)?;
            let held = (values.len() - before) as u64;
            if held > counter {
                return Err(r.bad(format!(
                    "an entry holds {held} values but only {counter} dots"
                )));
            }
            if context.last().is_some_and(|(last, _)| *last >= id) {
                return Err(r.bad("entries are not sorted by node id".into()));
            }
            if held > 0 {
                lww = pick(lww, before, &values);
            }
            context.push((id, counter));
        }
        let dotted = values.len();
        r.values_into(&mut values)?;
        if r.at != bytes.len() {
            return Err(r.bad(format!("{} bytes after the object", bytes.len() - r.at)));
        }
        for c in dotted..values.len() {
            lww = pick(lww, c, &values);
        }
        // `values()` lists the anonymous values first.
        let anonymous = values.len() - dotted;
        values.rotate_right(anonymous);
        let lww = lww.map(|i| {
            if i >= dotted {
                i - dotted
            } else {
                i + anonymous
            }
        });
        Ok(Summary {
            values,
            context,
            lww,
        })
    }

    /// The underlying clock.
    pub fn clock(&self) -> &Dvvs<NodeId, Value> {
        &self.clock
    }

    /// An object from a clock built by hand (a checked copy of another
    /// object's, say), refused unless it is one [`Object::decode`] would
    /// accept: counters in `1..=2^62`, no entry holding more values than
    /// dots, one entry per node.
    pub fn from_clock(clock: Dvvs<NodeId, Value>) -> Result<Object, ObjectError> {
        let bad = |what: String| Err(ObjectError::BadEncoding(what));
        let entries = clock.entries();
        for (i, e) in entries.iter().enumerate() {
            if e.counter == 0 || e.counter > MAX_COUNTER {
                return bad(format!(
                    "a counter of {}, outside 1..={MAX_COUNTER}",
                    e.counter
                ));
            }
            if e.values.len() as u64 > e.counter {
                return bad(format!(
                    "an entry holds {} values but only {} dots",
                    e.values.len(),
                    e.counter
                ));
            }
            if i > 0 && entries[i - 1].id == e.id {
                return bad(format!("two entries for node {}", e.id));
            }
        }
        Ok(Object { clock })
    }
}

/// `descends`: `a` has seen everything `b` has.
pub fn descends(a: &Context, b: &Context) -> bool {
    b.iter()
        .all(|(node, n)| a.iter().any(|(m, k)| m == node && k >= n))
}

/// A context as the opaque string clients carry (base64url, versioned).
pub fn context_to_string(context: &Context) -> String {
    let mut out = vec![ENCODING_VERSION];
    put_varint(&mut out, context.len() as u64);
    for (node, counter) in context {
        out.extend_from_slice(node.as_bytes());
        put_varint(&mut out, *counter);
    }
    URL_SAFE_NO_PAD.encode(out)
}

/// Parses [`context_to_string`]'s output.
pub fn context_from_string(text: &str) -> Result<Context, ObjectError> {
    let bad = || ObjectError::BadContext(text.chars().take(80).collect());
    let bytes = URL_SAFE_NO_PAD.decode(text.trim()).map_err(|_| bad())?;
    let mut r = Reader {
        bytes: &bytes,
        at: 0,
        shared: None,
    };
    if r.byte().map_err(|_| bad())? != ENCODING_VERSION {
        return Err(bad());
    }
    let n = r.count().map_err(|_| bad())?;
    let mut context: Context = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let node = r.node().map_err(|_| bad())?;
        let counter = r.varint().map_err(|_| bad())?;
        if context.last().is_some_and(|(last, _)| *last >= node) || counter == 0 {
            return Err(bad());
        }
        context.push((node, counter));
    }
    if r.at != bytes.len() {
        return Err(bad());
    }
    Ok(context)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_values(out: &mut Vec<u8>, values: &[Value]) {
    put_varint(out, values.len() as u64);
    for v in values {
        out.extend_from_slice(&v.timestamp.0.to_le_bytes());
        out.extend_from_slice(v.node.as_bytes());
        let with_meta = if v.meta.is_some() { 2 } else { 0 };
        match &v.content {
            Content::Tombstone => out.push(with_meta),
            Content::Data(_) => out.push(with_meta + 1),
        }
        if let Some(m) = &v.meta {
            put_meta(out, m);
        }
        if let Content::Data(b) = &v.content {
            put_varint(out, b.len() as u64);
            out.extend_from_slice(b);
        }
    }
}

const META_TOKEN: u8 = 1;
const META_PRIORITY: u8 = 2;

fn put_meta(out: &mut Vec<u8>, m: &Meta) {
    let mut flags = 0;
    if m.token.is_some() {
        flags |= META_TOKEN;
    }
    if (m.priority, m.window_ms) != (0, 0) {
        flags |= META_PRIORITY;
    }
    out.push(flags);
    if let Some(t) = &m.token {
        put_varint(out, t.len() as u64);
        out.extend_from_slice(t.as_bytes());
    }
    if flags & META_PRIORITY != 0 {
        out.push(m.priority);
        put_varint(out, u64::from(m.window_ms));
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    /// When set, `bytes` is this buffer and values share it.
    shared: Option<&'a Arc<[u8]>>,
}

impl Reader<'_> {
    fn bad(&self, what: String) -> ObjectError {
        ObjectError::BadEncoding(format!("{what} (at byte {})", self.at))
    }

    fn take(&mut self, n: usize) -> Result<&[u8], ObjectError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.bytes.len());
        let Some(end) = end else {
            return Err(self.bad(format!("{n} bytes needed, the input ends first")));
        };
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, ObjectError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, ObjectError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    fn node(&mut self) -> Result<NodeId, ObjectError> {
        let mut b = [0u8; 16];
        b.copy_from_slice(self.take(16)?);
        Ok(NodeId::from_bytes(b))
    }

    /// A LEB128 varint in its one minimal form, so that equal objects have
    /// equal bytes (and equal hashes) everywhere.
    fn varint(&mut self) -> Result<u64, ObjectError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                return Err(self.bad("a varint longer than 64 bits".into()));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                if b == 0 && shift > 0 {
                    return Err(self.bad("a varint with a redundant zero byte".into()));
                }
                return Ok(v);
            }
        }
        Err(self.bad("a varint longer than 64 bits".into()))
    }

    /// An entry's counter: at least 1, and far from overflowing.
    fn counter(&mut self) -> Result<u64, ObjectError> {
        let counter = self.u64()?;
        if counter == 0 || counter > MAX_COUNTER {
            return Err(self.bad(format!("a counter of {counter}, outside 1..={MAX_COUNTER}")));
        }
        Ok(counter)
    }

    /// A count of items that each take at least one byte: never more than
    /// the bytes left, so a corrupt count cannot make us allocate wildly.
    fn count(&mut self) -> Result<usize, ObjectError> {
        let n = self.varint()?;
        let left = (self.bytes.len() - self.at) as u64;
        if n > left {
            return Err(self.bad(format!("a count of {n} with {left} bytes left")));
        }
        Ok(n as usize)
    }

    fn values(&mut self) -> Result<Vec<Value>, ObjectError> {
        let mut out = Vec::new();
        self.values_into(&mut out)?;
        Ok(out)
    }

    fn values_into(&mut self, out: &mut Vec<Value>) -> Result<(), ObjectError> {
        let n = self.count()?;
        out.reserve(n);
        for _ in 0..n {
            let timestamp = Hlc(self.u64()?);
            let node = self.node()?;
            let tag = self.byte()?;
            if tag > 3 {
                return Err(self.bad(format!("value tag {tag}")));
            }
            let meta = if tag >= 2 {
                Some(Box::new(self.meta()?))
            } else {
                None
            };
            let content = match tag & 1 {
                0 => Content::Tombstone,
                _ => {
                    let len = self.count()?;
                    let start = self.at;
                    let shared = self.shared;
                    let bytes = self.take(len)?;
                    match shared {
                        Some(buf) => Content::Data(Blob::shared(buf, start, start + len)),
                        None => Content::Data(Blob::from(bytes)),
                    }
                }
            };
            out.push(Value {
                timestamp,
                node,
                content,
                meta,
            });
        }
        Ok(())
    }

    /// A value's [`Meta`], refusing every form [`put_meta`] would not
    /// write (so each meta has one encoding).
    fn meta(&mut self) -> Result<Meta, ObjectError> {
        let flags = self.byte()?;
        if flags == 0 || flags & !(META_TOKEN | META_PRIORITY) != 0 {
            return Err(self.bad(format!("value meta flags {flags:#04x}")));
        }
        let mut meta = Meta::default();
        if flags & META_TOKEN != 0 {
            let len = self.count()?;
            if len == 0 || len > META_TOKEN_MAX {
                return Err(self.bad(format!("a token id of {len} bytes")));
            }
            let bytes = self.take(len)?;
            let Ok(text) = std::str::from_utf8(bytes) else {
                return Err(self.bad("a token id that is not UTF-8".into()));
            };
            meta.token = Some(text.to_owned());
        }
        if flags & META_PRIORITY != 0 {
            meta.priority = self.byte()?;
            let window = self.varint()?;
            meta.window_ms = u32::try_from(window)
                .map_err(|_| self.bad(format!("a priority window of {window} ms")))?;
            if (meta.priority, meta.window_ms) == (0, 0) {
                return Err(self.bad("a priority flag with no priority".into()));
            }
        }
        Ok(meta)
    }
}

#[cfg(test)]
mod tests;
