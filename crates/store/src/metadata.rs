//! The cluster-metadata API (Riak's, shared/seeds/002) over the engine:
//! every key holds an [`Object`], a dotted version vector set of values, so
//! concurrent writes become siblings instead of overwriting each other.
//!
//! Three ways to write, and what a concurrent writer makes of each:
//! - [`Metadata::put`] without a context supersedes every value current
//!   when it commits;
//! - with the context of an earlier read it supersedes what that read saw;
//!   anything written since stays as a sibling;
//! - a [`MetaTransaction`] fails with a write conflict if any key it read
//!   changed before it commits.

use std::collections::BTreeMap;
use std::sync::Arc;

use chorus_core::object::{Content, Context, Hlc, Meta, Object, Summary, Value};
use chorus_core::{FullPrefix, NodeId};

use crate::error::{ConflictKey, Error, Result};
use crate::hamt::OwnedIter;
use crate::index::{Bytes, Entry, Snapshot};
use crate::key::Key;
use crate::store::{CommitInfo, Store, Write};

/// A function that settles siblings: it receives every value and returns
/// the bytes of the one that replaces them (`None` for a tombstone).
pub type ResolveFn = Arc<dyn Fn(&[Value]) -> Option<Vec<u8>> + Send + Sync>;

/// Computes a write from the current siblings, under the writer lock; an
/// error fails the write (nothing is written) with that error.
pub type WriteFn = Box<dyn FnOnce(&[Value]) -> Result<Option<Vec<u8>>> + Send>;

/// How a read settles siblings.
#[derive(Clone, Default)]
pub enum Resolver {
    /// Return every sibling.
    #[default]
    None,
    /// Keep the newest by (timestamp, node id, bytes): every node picks the
    /// same value.
    Lww,
    /// Replace the siblings by what the function returns.
    Function(ResolveFn),
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resolver::None => write!(f, "None"),
            Resolver::Lww => write!(f, "Lww"),
            Resolver::Function(_) => write!(f, "Function"),
        }
    }
}

/// Options of a read.
#[derive(Clone, Debug, Default)]
pub struct GetOptions {
    /// Returned (as one value) when the key is absent or deleted.
    pub default: Option<Vec<u8>>,
    /// How siblings are settled.
    pub resolver: Resolver,
    /// Write the resolved value back when the resolver settled siblings, so
    /// the next reader (in any process) finds one value.
    pub allow_put: bool,
}

/// What a read found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    /// The values: one, or several siblings.
    pub values: Vec<Value>,
    /// The context to write back with, to supersede exactly these values.
    pub context: Context,
    /// True when every value is a tombstone (the key is deleted).
    pub tombstone: bool,
}

/// What a write puts.
pub enum PutValue {
    /// These bytes.
    Bytes(Vec<u8>),
    /// A tombstone (what `delete` writes).
    Tombstone,
    /// Computed under the writer lock from the current siblings (empty when
    /// the key is absent): resolve on write. `None` writes a tombstone; an
    /// error fails the write.
    Function(WriteFn),
}

/// Options of a write.
#[derive(Clone, Debug, Default)]
pub struct PutOptions {
    /// The context of an earlier read: values written since stay as
    /// siblings. `None`: supersede whatever is current at commit. The
    /// empty context ([`Object::empty_context`]) is what a read of an
    /// absent key returns: a write with it supersedes nothing, so two
    /// writers who both started from nothing leave two siblings.
    pub context: Option<Context>,
    /// Write only if the key holds no live value at commit (HTTP
    /// `If-None-Match: *`); otherwise the write fails with
    /// [`Error::Conflict`] and nothing is written.
    pub if_absent: bool,
}

/// Which keys an iteration visits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Match {
    /// Every key.
    #[default]
    All,
    /// One key.
    Exact(Vec<u8>),
    /// Keys starting with these bytes.
    Prefix(Vec<u8>),
    /// Keys matching a glob: `*` any run of bytes, `?` one byte, `\` escapes.
    Glob(String),
}

impl Match {
    /// True when `key` is visited.
    pub fn matches(&self, key: &[u8]) -> bool {
        match self {
            Match::All => true,
            Match::Exact(k) => key == k.as_slice(),
            Match::Prefix(p) => key.starts_with(p),
            Match::Glob(g) => glob(g.as_bytes(), key),
        }
    }
}

fn glob(pattern: &[u8], key: &[u8]) -> bool {
    // Iterative matcher with one backtrack point for the last `*`.
    let (mut p, mut k) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while k < key.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, k));
                p += 1;
                continue;
            }
            Some(b'?') => {
                p += 1;
                k += 1;
                continue;
            }
            Some(b'\\') if pattern.get(p + 1) == Some(&key[k]) => {
                p += 2;
                k += 1;
                continue;
            }
            Some(&c) if c != b'\\' && c == key[k] => {
                p += 1;
                k += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((sp, sk)) => {
                p = sp + 1;
                k = sk + 1;
                star = Some((sp, sk + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|c| *c == b'*')
}

/// Which part of the store an iteration covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One full prefix.
    FullPrefix(FullPrefix),
    /// Every subprefix of a prefix.
    Prefix(String),
    /// Everything.
    All,
}

/// Options of an iteration.
#[derive(Clone, Debug, Default)]
pub struct IterOptions {
    /// Which keys.
    pub matching: Match,
    /// How siblings are settled.
    pub resolver: Resolver,
    /// Write resolved values back.
    pub allow_put: bool,
    /// Visit deleted keys too; with `default` set, they show the default.
    pub tombstones: bool,
    /// What a deleted key shows when `tombstones` is set.
    pub default: Option<Vec<u8>>,
}

/// One key visited by an iteration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// Its full prefix.
    pub full_prefix: FullPrefix,
    /// The key.
    pub key: Vec<u8>,
    /// What a read of it returns.
    pub read: Read,
}

/// The cluster-metadata API over one data directory.
#[derive(Clone, Debug)]
pub struct Metadata {
    store: Store,
    /// What the values this handle writes record (see [`Metadata::stamped`]).
    stamp: Option<Arc<Meta>>,
    /// The documents' per-process index, shared by every handle made from
    /// this one (see [`crate::docs`]).
    doc_cache: Arc<crate::docs::DocCache>,
}

/// One write of [`Metadata::put_all`].
pub struct BatchPut {
    /// Where.
    pub full_prefix: FullPrefix,
    /// Which key.
    pub key: Vec<u8>,
    /// Bytes or a tombstone.
    pub value: PutValue,
    /// The context read, if any (as for `put`).
    pub options: PutOptions,
    /// What the value records (empty: the handle's own stamp).
    pub meta: Meta,
}

/// Who writes: this node, and what its values record.
#[derive(Clone, Debug)]
pub(crate) struct Writer {
    pub(crate) node: NodeId,
    stamp: Option<Arc<Meta>>,
}

impl Writer {
    /// The value `bytes` (a tombstone when `None`) written at `timestamp`.
    fn value(&self, bytes: Option<Vec<u8>>, timestamp: Hlc) -> Value {
        let value = match bytes {
            Some(b) => Value::data(&b, timestamp, self.node),
            None => Value::tombstone(timestamp, self.node),
        };
        match &self.stamp {
            Some(meta) => value.with_meta(Meta::clone(meta)),
            None => value,
        }
    }
}

impl Metadata {
    /// Wraps an open store.
    pub fn new(store: Store) -> Self {
        Metadata {
            store,
            stamp: None,
            doc_cache: Arc::default(),
        }
    }

    /// The same store, through a handle whose writes record `meta` on
    /// their values (the token that made them, a writer priority): puts,
    /// deletes, resolver write-backs, and the documents and operation logs
    /// built on this handle. Merged (replicated) values keep their own.
    pub fn stamped(&self, meta: Meta) -> Metadata {
        Metadata {
            store: self.store.clone(),
            stamp: (!meta.is_empty()).then(|| Arc::new(meta)),
            doc_cache: self.doc_cache.clone(),
        }
    }

    /// Who this handle writes as.
    pub(crate) fn writer(&self) -> Writer {
        Writer {
            node: self.node(),
            stamp: self.stamp.clone(),
        }
    }

    /// The documents' index this handle shares.
    pub(crate) fn doc_cache(&self) -> Arc<crate::docs::DocCache> {
        self.doc_cache.clone()
    }

    /// The engine underneath.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The object stored under a key, undecoded reads included, whatever
    /// the channels say (the replica sends what it holds).
    pub fn object(&self, fp: &FullPrefix, key: &[u8]) -> Result<Option<Object>> {
        match self.store.get_anywhere(fp, key)? {
            Some(bytes) => decode(fp, key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Reads a key. `None` when it is absent (or deleted) and no default is
    /// given. Refused ([`Error::NotServed`]) in a full prefix of a channel
    /// this node does not serve.
    pub fn get(&self, fp: &FullPrefix, key: &[u8], opts: &GetOptions) -> Result<Option<Read>> {
        let Some(bytes) = self.store.get(fp, key)? else {
            return Ok(opts.default.as_ref().map(|d| default_read(d, self.node())));
        };
        let read = self.settle(
            fp,
            key,
            summary(fp, key, &bytes)?,
            &opts.resolver,
            opts.allow_put,
        )?;
        if read.tombstone {
            return Ok(opts.default.as_ref().map(|d| Read {
                values: vec![default_value(d, self.node())],
                context: read.context.clone(),
                tombstone: false,
            }));
        }
        Ok(Some(read))
    }

    /// A read with no resolver and no default, answered from memory alone
    /// ([`Store::get_in_memory`]): `None` when the log must be read first
    /// (then call [`Metadata::get`]). Otherwise what `get` returns: `None`
    /// inside for an absent or deleted key.
    pub fn get_in_memory(&self, fp: &FullPrefix, key: &[u8]) -> Option<Result<Option<Read>>> {
        let bytes = match self.store.get_in_memory(fp, key)? {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Some(Ok(None)),
            Err(e) => return Some(Err(e)),
        };
        Some(summary(fp, key, &bytes).map(
            |Summary {
                 values, context, ..
             }| {
                let tombstone = values.iter().all(|v| v.content == Content::Tombstone);
                (!tombstone).then_some(Read {
                    values,
                    context,
                    tombstone,
                })
            },
        ))
    }

    /// Writes a key; see the module documentation for what a concurrent
    /// writer makes of it. Names starting with `$` are refused.
    pub fn put(
        &self,
        fp: &FullPrefix,
        key: &[u8],
        value: PutValue,
        opts: &PutOptions,
    ) -> Result<CommitInfo> {
        refuse_reserved(fp)?;
        self.store.refuse_unserved(fp)?;
        self.write(fp, key, value, opts)
    }

    /// Several puts, each its own commit, queued together so that they
    /// share one log append and one sync (in `SyncMode::Batch`): what a
    /// broker that collected many clients' writes hands the store. Each
    /// write records its own `meta` (or this handle's, when empty); each
    /// fails or succeeds alone, and the outcomes come back in order.
    pub fn put_all(&self, writes: Vec<BatchPut>) -> Vec<Result<CommitInfo>> {
        let mut outcomes: Vec<Option<Result<CommitInfo>>> = Vec::with_capacity(writes.len());
        let mut updates: Vec<(crate::Origin, crate::store::UpdateFn)> = Vec::new();
        for w in writes {
            if let Err(e) = refuse_reserved(&w.full_prefix)
                .and_then(|()| self.store.refuse_unserved(&w.full_prefix))
            {
                outcomes.push(Some(Err(e)));
                continue;
            }
            let writer = if w.meta.is_empty() {
                self.writer()
            } else {
                self.stamped(w.meta).writer()
            };
            let BatchPut {
                full_prefix: fp,
                key,
                value,
                options,
                ..
            } = w;
            outcomes.push(None);
            updates.push((
                crate::Origin::Local,
                Box::new(move |snap: &Snapshot| {
                    let object = new_object(
                        snap,
                        &fp,
                        &key,
                        (options.context.as_ref(), options.if_absent),
                        value,
                        &writer,
                    )?;
                    Ok(vec![Write::put(&fp, &key, &object.encode())])
                }),
            ));
        }
        let mut committed = self.store.update_all(updates).into_iter();
        outcomes
            .into_iter()
            .map(|o| match o {
                Some(refused) => refused,
                None => match committed.next() {
                    Some(Ok(Some(info))) => Ok(info),
                    Some(Ok(None)) => Err(Error::Internal("the write made no commit".into())),
                    Some(Err(e)) => Err(e),
                    None => Err(Error::Internal("a batched write got no outcome".into())),
                },
            })
            .collect()
    }

    /// Writes a tombstone (same options as `put`).
    pub fn delete(&self, fp: &FullPrefix, key: &[u8], opts: &PutOptions) -> Result<CommitInfo> {
        self.put(fp, key, PutValue::Tombstone, opts)
    }

    /// Writes under a reserved (`$`) prefix: for Chorus's own services.
    pub fn put_reserved(
        &self,
        fp: &FullPrefix,
        key: &[u8],
        value: PutValue,
        opts: &PutOptions,
    ) -> Result<CommitInfo> {
        self.write(fp, key, value, opts)
    }

    fn write(
        &self,
        fp: &FullPrefix,
        key: &[u8],
        value: PutValue,
        opts: &PutOptions,
    ) -> Result<CommitInfo> {
        self.write_returning(fp, key, value, opts)
            .map(|(info, _)| info)
    }

    /// Writes a key and returns the object the commit stored.
    fn write_returning(
        &self,
        fp: &FullPrefix,
        key: &[u8],
        value: PutValue,
        opts: &PutOptions,
    ) -> Result<(CommitInfo, Object)> {
        let (fp, key, context) = (fp.clone(), key.to_vec(), opts.context.clone());
        let if_absent = opts.if_absent;
        let writer = self.writer();
        let (info, object) = self.store.update_returning(move |snap| {
            let object = new_object(
                snap,
                &fp,
                &key,
                (context.as_ref(), if_absent),
                value,
                &writer,
            )?;
            let encoded = object.encode();
            Ok((vec![Write::put(&fp, &key, &encoded)], object))
        })?;
        let info = info.ok_or_else(|| Error::Internal("the write produced no commit".into()))?;
        Ok((info, object))
    }

    /// An iterator over every key in `scope` that `opts` selects. It owns a
    /// snapshot taken now, so it visits each key once, whatever other
    /// processes write meanwhile, and decodes one key per step.
    pub fn iter(&self, scope: &Scope, opts: &IterOptions) -> Result<MetaIter> {
        self.iter_snapshot(self.store.snapshot()?, scope, opts)
    }

    /// [`Metadata::iter`] over a snapshot taken earlier
    /// ([`Store::snapshot`]): the keys as they were then.
    pub fn iter_snapshot(
        &self,
        snapshot: Snapshot,
        scope: &Scope,
        opts: &IterOptions,
    ) -> Result<MetaIter> {
        match scope {
            Scope::FullPrefix(fp) => self.store.refuse_unserved_at(&snapshot, fp)?,
            Scope::Prefix(p) => self.store.refuse_unserved_prefix_at(&snapshot, p)?,
            Scope::All => {}
        }
        let prefixes: Vec<FullPrefix> = match scope {
            Scope::FullPrefix(fp) => vec![fp.clone()],
            Scope::Prefix(p) => snapshot
                .prefixes()
                .filter(|fp| fp.prefix() == p)
                .cloned()
                .collect(),
            Scope::All => snapshot.prefixes().cloned().collect(),
        };
        Ok(MetaIter {
            meta: self.clone(),
            opts: opts.clone(),
            snapshot,
            prefixes: prefixes.into_iter(),
            current: None,
        })
    }

    /// The keys [`Metadata::iter`] visits, collected (Riak's `to_list`).
    pub fn to_list(&self, scope: &Scope, opts: &IterOptions) -> Result<Vec<Item>> {
        self.iter(scope, opts)?.collect()
    }

    /// Folds `f` over the keys [`Metadata::iter`] visits, one at a time.
    pub fn fold<A>(
        &self,
        scope: &Scope,
        opts: &IterOptions,
        init: A,
        mut f: impl FnMut(A, Item) -> A,
    ) -> Result<A> {
        let mut acc = init;
        for item in self.iter(scope, opts)? {
            acc = f(acc, item?);
        }
        Ok(acc)
    }

    /// What an iteration yields for one key: `None` when it is skipped.
    fn item(
        &self,
        opts: &IterOptions,
        fp: &FullPrefix,
        key: Key,
        entry: Entry,
    ) -> Result<Option<Item>> {
        if !opts.matching.matches(&key) {
            return Ok(None);
        }
        let found = summary(fp, &key, &entry.value)?;
        let mut read = self.settle(fp, &key, found, &opts.resolver, opts.allow_put)?;
        if read.tombstone {
            if !opts.tombstones {
                return Ok(None);
            }
            if let Some(d) = &opts.default {
                read.values = vec![default_value(d, self.node())];
                read.tombstone = false;
            }
        }
        Ok(Some(Item {
            full_prefix: fp.clone(),
            key: key.to_vec(),
            read,
        }))
    }

    /// The hash of a full prefix's data: equal on stores with equal data.
    /// Refused in a full prefix this node does not serve.
    pub fn prefix_hash(&self, fp: &FullPrefix) -> Result<[u8; 32]> {
        let snapshot = self.store.snapshot()?;
        self.store.refuse_unserved_at(&snapshot, fp)?;
        Ok(snapshot.prefix_hash(fp))
    }

    /// The hash of all the data under a prefix. Refused when a channel
    /// this node does not serve has a pattern under it.
    pub fn prefix_hash_all(&self, prefix: &str) -> Result<[u8; 32]> {
        let snapshot = self.store.snapshot()?;
        self.store.refuse_unserved_prefix_at(&snapshot, prefix)?;
        Ok(snapshot.prefix_hash_all(prefix))
    }

    /// Starts a transaction over a snapshot taken now.
    pub fn begin(&self) -> Result<MetaTransaction> {
        Ok(MetaTransaction {
            meta: self.clone(),
            snapshot: self.store.snapshot()?,
            reads: BTreeMap::new(),
            writes: Vec::new(),
        })
    }

    /// Merges objects received from a peer (by broadcast or anti-entropy)
    /// into the local ones, as one commit recorded as coming from `origin`.
    /// Each is reconciled with the local object: nothing is written where
    /// the local object already covers it, and concurrent values become
    /// siblings. A key listed twice gets both. Reserved prefixes are
    /// merged too: replication carries everything. Returns how many keys
    /// changed. The objects must fit one commit
    /// ([`crate::Limits::max_commit_bytes`]); split larger batches.
    pub fn merge(
        &self,
        origin: crate::Origin,
        objects: Vec<(FullPrefix, Vec<u8>, Object)>,
    ) -> Result<usize> {
        self.merge_all(vec![(origin, objects)])
            .pop()
            .unwrap_or(Ok(0))
    }

    /// Several [`Metadata::merge`]s (one commit each, each with its own
    /// origin) queued together, so that they share one sync when the
    /// store is in [`crate::SyncMode::Batch`]. Outcomes come back in order.
    pub fn merge_all(&self, groups: Vec<(crate::Origin, Vec<Incoming>)>) -> Vec<Result<usize>> {
        let counts: Vec<Arc<std::sync::atomic::AtomicUsize>> =
            groups.iter().map(|_| Arc::default()).collect();
        let me = self.node();
        let updates = groups
            .into_iter()
            .zip(counts.iter().cloned())
            .map(|((origin, objects), count)| {
                let sink = self.store.identity_sink();
                let f: crate::UpdateFn = Box::new(move |snap| {
                    let (writes, conflicts) = merge_writes(snap, objects, me)?;
                    for (full_prefix, key) in conflicts {
                        sink.record(crate::identity::IdentityConflict {
                            origin,
                            full_prefix,
                            key,
                        });
                    }
                    count.store(writes.len(), std::sync::atomic::Ordering::Relaxed);
                    Ok(writes)
                });
                (origin, f)
            })
            .collect();
        self.store
            .update_all(updates)
            .into_iter()
            .zip(counts)
            .map(|(outcome, count)| {
                outcome.map(|_| count.load(std::sync::atomic::Ordering::Relaxed))
            })
            .collect()
    }

    fn node(&self) -> NodeId {
        self.store.node_id()
    }

    /// Applies a resolver; with `allow_put`, writes the result back (with
    /// the context of what was resolved, so later writes stay siblings).
    fn settle(
        &self,
        fp: &FullPrefix,
        key: &[u8],
        found: Summary,
        resolver: &Resolver,
        allow_put: bool,
    ) -> Result<Read> {
        let Summary {
            mut values,
            context,
            lww,
        } = found;
        let resolved = match resolver {
            Resolver::None => None,
            _ if values.len() <= 1 => None,
            Resolver::Lww => lww.map(|i| values.swap_remove(i)),
            Resolver::Function(f) => {
                let newest = values.iter().map(|v| v.timestamp).max().unwrap_or_default();
                Some(self.writer().value(f(&values), newest))
            }
        };
        let Some(value) = resolved else {
            let tombstone = values.iter().all(|v| v.content == Content::Tombstone);
            return Ok(Read {
                values,
                context,
                tombstone,
            });
        };
        if allow_put {
            let put = match value.bytes() {
                Some(b) => PutValue::Bytes(b.to_vec()),
                None => PutValue::Tombstone,
            };
            let opts = PutOptions {
                context: Some(context),
                ..Default::default()
            };
            // What the read returns is what was stored: its value (with the
            // commit's timestamp) and its context, so a client writing back
            // with that context supersedes it.
            let (_, stored) = self.write_returning(fp, key, put, &opts)?;
            let values: Vec<Value> = stored.values().into_iter().cloned().collect();
            let tombstone = stored.is_tombstone();
            return Ok(Read {
                values,
                context: stored.context(),
                tombstone,
            });
        }
        values.clear();
        let tombstone = value.content == Content::Tombstone;
        values.push(value);
        Ok(Read {
            values,
            context,
            tombstone,
        })
    }
}

/// The iterator [`Metadata::iter`] returns; an item is an error when a key
/// does not hold an object, or a resolution could not be written back.
pub struct MetaIter {
    meta: Metadata,
    opts: IterOptions,
    snapshot: Snapshot,
    prefixes: std::vec::IntoIter<FullPrefix>,
    current: Option<(FullPrefix, OwnedIter<Entry>)>,
}

impl Iterator for MetaIter {
    type Item = Result<Item>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((fp, keys)) = &mut self.current {
                match keys.next() {
                    Some((key, entry)) => match self.meta.item(&self.opts, fp, key, entry) {
                        Ok(Some(item)) => return Some(Ok(item)),
                        Ok(None) => continue,
                        Err(e) => return Some(Err(e)),
                    },
                    None => self.current = None,
                }
            }
            let fp = self.prefixes.next()?;
            if let Some(keys) = self.snapshot.state.index.owned_keys(&fp) {
                self.current = Some((fp, keys));
            }
        }
    }
}

/// An object received from a peer: its full prefix, key and object.
pub type Incoming = (FullPrefix, Vec<u8>, Object);

/// A key by its full prefix.
type Slot = (FullPrefix, Vec<u8>);

/// The writes that reconcile `objects` with the local ones in `snap` (see
/// [`Metadata::merge`]), and the keys skipped because the peer's object
/// holds a value under one of `me`'s dots that `me` never wrote (a copy
/// of this directory wrote it: see `identity.rs`). Objects in conflict
/// with a former id of `me` are merged with the local values under that
/// id given new dots of `me`.
fn merge_writes(
    snap: &Snapshot,
    objects: Vec<(FullPrefix, Vec<u8>, Object)>,
    me: NodeId,
) -> Result<(Vec<Write>, Vec<Slot>)> {
    let former = crate::identity::former_ids(snap, me);
    let ts = Hlc(snap.commit_ts().unwrap_or_else(|| snap.last_ts()));
    let mut merged: BTreeMap<(FullPrefix, Vec<u8>), Object> = BTreeMap::new();
    let mut conflicts = Vec::new();
    for (fp, key, remote) in objects {
        let slot = (fp, key);
        let local = match merged.get(&slot) {
            Some(pending) => Some(pending.clone()),
            None => match snap.get(&slot.0, &slot.1) {
                Some(bytes) => Some(decode(&slot.0, &slot.1, &bytes)?),
                None => None,
            },
        };
        if let Some(local) = &local {
            if crate::identity::conflicting(me, local, &remote) {
                conflicts.push(slot);
                continue;
            }
            if let Some(old) = former
                .iter()
                .find(|old| crate::identity::conflicting(**old, local, &remote))
            {
                let result = crate::identity::remint(local, &remote, *old, me, ts)
                    .map_err(|e| not_an_object(&slot.0, &slot.1, e))?;
                merged.insert(slot, result);
                continue;
            }
        }
        if let Some(result) = Object::reconcile(&remote, local.as_ref()) {
            merged.insert(slot, result);
        }
    }
    let writes = merged
        .iter()
        .map(|((fp, key), object)| Write::put(fp, key, &object.encode()))
        .collect();
    Ok((writes, conflicts))
}

/// Refuses a client write to a reserved (`$`) full prefix, with the
/// message every interface shows.
pub fn refuse_reserved(fp: &FullPrefix) -> Result<()> {
    if fp.is_reserved() {
        return Err(Error::InvalidInput(format!(
            "{fp} is reserved for Chorus itself (names starting with '$'); pick a name without '$'"
        )));
    }
    Ok(())
}

/// The bytes of the value a last-write-wins read of `bytes` (a stored
/// object) returns: `None` when it is a tombstone.
pub(crate) fn lww_bytes(fp: &FullPrefix, key: &[u8], bytes: &Bytes) -> Result<Option<Vec<u8>>> {
    let Summary { values, lww, .. } = summary(fp, key, bytes)?;
    Ok(lww
        .and_then(|i| values.get(i))
        .and_then(|v| v.bytes().map(<[u8]>::to_vec)))
}

fn decode(fp: &FullPrefix, key: &[u8], bytes: &[u8]) -> Result<Object> {
    Object::decode(bytes).map_err(|e| not_an_object(fp, key, e))
}

/// What a read needs of the object in `bytes`; its values share `bytes`.
fn summary(fp: &FullPrefix, key: &[u8], bytes: &Bytes) -> Result<Summary> {
    Object::decode_summary_shared(bytes).map_err(|e| not_an_object(fp, key, e))
}

fn not_an_object(fp: &FullPrefix, key: &[u8], e: chorus_core::object::ObjectError) -> Error {
    Error::InvalidInput(format!(
        "{fp}/{} does not hold a metadata object ({e}): it was written with the raw engine API",
        String::from_utf8_lossy(key)
    ))
}

fn default_value(bytes: &[u8], node: NodeId) -> Value {
    Value::data(bytes, Hlc::default(), node)
}

fn default_read(bytes: &[u8], node: NodeId) -> Read {
    Read {
        values: vec![default_value(bytes, node)],
        context: Object::empty_context(),
        tombstone: false,
    }
}

/// The object a write produces, computed under the writer lock.
fn new_object(
    snap: &Snapshot,
    fp: &FullPrefix,
    key: &[u8],
    (context, if_absent): (Option<&Context>, bool),
    value: PutValue,
    writer: &Writer,
) -> Result<Object> {
    let current = match snap.get(fp, key) {
        Some(bytes) => Some(decode(fp, key, &bytes)?),
        None => None,
    };
    if if_absent && current.as_ref().is_some_and(|o| !o.is_tombstone()) {
        return Err(Error::Conflict(format!(
            "{fp}/{} exists and the write asked for an absent key (If-None-Match: *): nothing was written; read it and write with its context",
            String::from_utf8_lossy(key)
        )));
    }
    let ts = Hlc(snap.commit_ts().unwrap_or_else(|| snap.last_ts()));
    let bytes = match value {
        PutValue::Bytes(b) => Some(b),
        PutValue::Tombstone => None,
        PutValue::Function(f) => {
            let siblings: Vec<Value> = current
                .as_ref()
                .map(|o| o.values().into_iter().cloned().collect())
                .unwrap_or_default();
            f(&siblings)?
        }
    };
    let context = match context {
        Some(c) => c.clone(),
        None => current.as_ref().map(Object::context).unwrap_or_default(),
    };
    Ok(Object::modify(
        current.as_ref(),
        &context,
        writer.value(bytes, ts),
        writer.node,
    ))
}

/// The encoded object that stores `bytes` under the key, superseding every
/// value there now (for update closures of other APIs, like documents).
pub(crate) fn new_object_bytes(
    snap: &Snapshot,
    fp: &FullPrefix,
    key: &[u8],
    bytes: Vec<u8>,
    writer: &Writer,
) -> Result<Vec<u8>> {
    Ok(new_object(snap, fp, key, (None, false), PutValue::Bytes(bytes), writer)?.encode())
}

/// The encoded object that deletes the key (a tombstone superseding every
/// value there now), for update closures of other APIs: it replicates and
/// is collected like a [`Metadata::delete`].
pub(crate) fn tombstone_object_bytes(
    snap: &Snapshot,
    fp: &FullPrefix,
    key: &[u8],
    writer: &Writer,
) -> Result<Vec<u8>> {
    Ok(new_object(snap, fp, key, (None, false), PutValue::Tombstone, writer)?.encode())
}

/// A write a transaction makes at commit; `bytes: None` is a tombstone.
struct TxWrite {
    fp: FullPrefix,
    key: Vec<u8>,
    bytes: Option<Vec<u8>>,
    context: Option<Context>,
}

/// Reads a key of a snapshot taken earlier ([`Store::snapshot`]), its
/// siblings unresolved: `None` when it was absent.
pub fn read_snapshot(snapshot: &Snapshot, fp: &FullPrefix, key: &[u8]) -> Result<Option<Read>> {
    read_entry(fp, key, snapshot.entry(fp, key))
}

/// The read of a stored entry, its siblings unresolved.
fn read_entry(fp: &FullPrefix, key: &[u8], entry: Option<&Entry>) -> Result<Option<Read>> {
    let Some(e) = entry else {
        return Ok(None);
    };
    let Summary {
        values, context, ..
    } = summary(fp, key, &e.value)?;
    let tombstone = values.iter().all(|v| v.content == Content::Tombstone);
    Ok(Some(Read {
        values,
        context,
        tombstone,
    }))
}

/// A transaction over several keys: reads come from a snapshot; at commit,
/// if any key it read changed since, it fails with [`Error::WriteConflict`]
/// naming the keys, and writes nothing.
pub struct MetaTransaction {
    meta: Metadata,
    snapshot: Snapshot,
    reads: BTreeMap<(FullPrefix, Vec<u8>), Option<u64>>,
    writes: Vec<TxWrite>,
}

impl MetaTransaction {
    /// Reads a key from the transaction's snapshot (siblings unresolved).
    pub fn get(&mut self, fp: &FullPrefix, key: &[u8]) -> Result<Option<Read>> {
        self.meta.store.refuse_unserved_at(&self.snapshot, fp)?;
        let entry = self.snapshot.entry(fp, key);
        self.reads
            .entry((fp.clone(), key.to_vec()))
            .or_insert(entry.map(|e| e.seq));
        read_entry(fp, key, entry)
    }

    /// Sets a key at commit (with a context: values written since that read
    /// stay siblings; without: supersede what is current at commit).
    pub fn put(
        &mut self,
        fp: &FullPrefix,
        key: &[u8],
        value: &[u8],
        context: Option<Context>,
    ) -> Result<()> {
        refuse_reserved(fp)?;
        self.meta.store.refuse_unserved(fp)?;
        self.writes.push(TxWrite {
            fp: fp.clone(),
            key: key.to_vec(),
            bytes: Some(value.to_vec()),
            context,
        });
        Ok(())
    }

    /// Deletes a key at commit (a tombstone).
    pub fn delete(&mut self, fp: &FullPrefix, key: &[u8], context: Option<Context>) -> Result<()> {
        refuse_reserved(fp)?;
        self.meta.store.refuse_unserved(fp)?;
        self.writes.push(TxWrite {
            fp: fp.clone(),
            key: key.to_vec(),
            bytes: None,
            context,
        });
        Ok(())
    }

    /// Validates the reads and applies the writes as one commit.
    pub fn commit(self) -> Result<Option<CommitInfo>> {
        if self.writes.is_empty() {
            return Ok(None);
        }
        let writer = self.meta.writer();
        let reads = self.reads;
        let writes = self.writes;
        self.meta.store.update(move |snap| {
            let conflicts: Vec<ConflictKey> = reads
                .iter()
                .filter(|((fp, key), seen)| snap.entry(fp, key).map(|e| e.seq) != **seen)
                .map(|((fp, key), _)| ConflictKey {
                    full_prefix: fp.clone(),
                    key: key.clone(),
                })
                .collect();
            if !conflicts.is_empty() {
                return Err(Error::WriteConflict { keys: conflicts });
            }
            let mut out: Vec<Write> = Vec::with_capacity(writes.len());
            let mut latest: BTreeMap<(FullPrefix, Vec<u8>), Bytes> = BTreeMap::new();
            for TxWrite {
                fp,
                key,
                bytes,
                context,
            } in writes
            {
                // A key written twice builds on its first write.
                let overlay = latest.get(&(fp.clone(), key.clone())).cloned();
                let object = match overlay {
                    Some(prev) => {
                        let current = decode(&fp, &key, &prev)?;
                        let ts = Hlc(snap.commit_ts().unwrap_or_else(|| snap.last_ts()));
                        let ctx = context.unwrap_or_else(|| current.context());
                        Object::modify(Some(&current), &ctx, writer.value(bytes, ts), writer.node)
                    }
                    None => {
                        let value = match bytes {
                            Some(b) => PutValue::Bytes(b),
                            None => PutValue::Tombstone,
                        };
                        new_object(snap, &fp, &key, (context.as_ref(), false), value, &writer)?
                    }
                };
                let encoded: Bytes = Bytes::from(object.encode());
                latest.insert((fp.clone(), key.clone()), encoded.clone());
                out.push(Write {
                    full_prefix: fp,
                    key: Bytes::from(key),
                    value: Some(encoded),
                });
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "", true),
            ("*", "anything", true),
            ("a*", "abc", true),
            ("a*", "bac", false),
            ("*.txt", "notes.txt", true),
            ("*.txt", "notes.txt.bak", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("a*b*c", "a-b-b-c", true),
            ("a*b*c", "a-b-b-d", false),
            ("\\*", "*", true),
            ("\\*", "x", false),
            ("", "", true),
            ("", "x", false),
        ];
        for (pattern, key, want) in cases {
            assert_eq!(
                glob(pattern.as_bytes(), key.as_bytes()),
                *want,
                "{pattern:?} vs {key:?}"
            );
        }
    }
}
