//! Documents: JSON objects with `_id` and `_rev` over one full prefix of
//! the causal store (multiprocess-store's face of Chorus).
//!
//! **One record per revision.** Revision `N-hash` of document `id` is the
//! key `id\0<N as 20 digits>-<hash>` (so a document's records sort by `N`
//! and sit together: [`Snapshot::group`]); its value is a causal object
//! holding a small versioned JSON record: the revision, its parent, the
//! deleted flag, its body while it is a leaf, and whether it is known to
//! have a child. An edit runs under the writer lock on the document's
//! revisions, writes the new revision's record and rewrites its parent's
//! without the body: O(size of the revision), whatever the size of the
//! tree. Revisions the edit closes (self-clearing) get records too;
//! revisions dropped by the revs limit are deleted (tombstones, collected
//! like any other). Edits made on different hosts meet as new records,
//! and as siblings of a rewritten parent (merged: the body goes once any
//! sibling knows a child); every host picks the same winner.
//!
//! **Reads** come from a small per-process index (shared by every [`Docs`]
//! on the same [`Metadata`], bounded, least recently used documents
//! evicted): each cached document is a [`RevTree`] kept up to date from
//! [`Snapshot::changed_since`] (only the records that changed are read)
//! and rebuilt from [`Snapshot::group`] when that is `None` or the
//! document is not cached. The tree keeps the ordered leaves, so the
//! winner is O(log n) and conflicts are paged.
//!
//! **Upgrade.** Before records, a document was one key, `id`, holding its
//! whole encoded tree (format 1). Such a key is still read (merged with
//! any records); the first edit of the document converts it: one record
//! per kept revision, and a tombstone for the old key, in one commit.
//!
//! A store is named by a path-like name: `users` is the full prefix
//! `docs/users`, `app/users` is `app/users`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use chorus_core::FullPrefix;
use chorus_core::docs::{
    Body, DEFAULT_REVS_LIMIT, DocError, Incoming, Rev, RevTree, document, validate_id,
};
use serde_json::Value;

use crate::metadata::{Metadata, new_object_bytes, tombstone_object_bytes};
use crate::{Error, Result, Snapshot, Write};

/// Most `_conflicts` a read with conflicts lists; more are paged with
/// [`Docs::conflicts_page`] (the read says where to go on).
pub const MAX_INLINE_CONFLICTS: usize = 1000;
/// Most revisions one page of [`Docs::conflicts_page`] returns.
pub const MAX_CONFLICTS_PAGE: usize = 10_000;
/// Most deleted (or unreadable) documents one page of [`Docs::page`]
/// looks at besides the live ones it returns; past them the page ends
/// early, with `next` to go on from.
pub const PAGE_SKIP_MAX: usize = 1000;
/// Most documents the per-process index keeps.
const CACHE_DOCS: usize = 1024;
/// Most revisions the per-process index keeps over all its documents (the
/// document in use is kept whatever its size).
const CACHE_REVS: usize = 2_000_000;

/// A document store: one full prefix of a [`Metadata`] store.
#[derive(Clone)]
pub struct Docs {
    meta: Metadata,
    cache: std::sync::Arc<DocCache>,
    fp: FullPrefix,
    revs_limit: usize,
}

impl std::fmt::Debug for Docs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Docs")
            .field("full_prefix", &self.fp.to_string())
            .field("revs_limit", &self.revs_limit)
            .finish()
    }
}

/// What an edit made: the document's id and its new revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// `_id`.
    pub id: String,
    /// `_rev` of the revision the edit made.
    pub rev: Rev,
}

impl Saved {
    /// `{"ok": true, "_id": ..., "_rev": ...}`.
    pub fn to_json(&self) -> Value {
        serde_json::json!({"ok": true, "_id": self.id, "_rev": self.rev.to_string()})
    }
}

/// A page of a document's conflicts (see [`Docs::conflicts_page`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictsPage {
    /// The winner.
    pub winner: Rev,
    /// Losing current revisions, greatest first.
    pub conflicts: Vec<Rev>,
    /// Pass as `after` for the next page; `None` on the last page.
    pub next: Option<Rev>,
}

impl ConflictsPage {
    /// `{"_id", "_rev", "conflicts": [...], "next": REV or null}`.
    pub fn to_json(&self, id: &str) -> Value {
        serde_json::json!({
            "_id": id,
            "_rev": self.winner.to_string(),
            "conflicts": self.conflicts.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            "next": self.next.as_ref().map(|r| r.to_string()),
        })
    }
}

/// The full prefix a store name stands for.
pub fn store_prefix(name: &str) -> Result<FullPrefix> {
    let parts: Vec<&str> = name.split('/').collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(Error::InvalidInput(format!(
            "the store name {name:?} has a '.' or '..' part: use NAME or PREFIX/NAME"
        )));
    }
    let fp = match parts.as_slice() {
        [sub] => FullPrefix::new("docs", sub),
        [prefix, sub] => FullPrefix::new(prefix, sub),
        _ => {
            return Err(Error::InvalidInput(format!(
                "the store name {name:?} has {} parts: use NAME (kept under docs/NAME) or PREFIX/NAME",
                parts.len()
            )));
        }
    };
    fp.map_err(|e| Error::InvalidInput(format!("the store name {name:?}: {e}")))
}

impl Docs {
    /// The document store `name` (see the module documentation), keeping
    /// [`DEFAULT_REVS_LIMIT`] revisions behind each leaf.
    pub fn open(meta: &Metadata, name: &str) -> Result<Docs> {
        let fp = store_prefix(name)?;
        if fp.prefix().starts_with('$') || fp.subprefix().starts_with('$') {
            return Err(Error::InvalidInput(format!(
                "the store name {name:?} is reserved ('$' prefixes belong to Chorus)"
            )));
        }
        Ok(Docs {
            meta: meta.clone(),
            cache: meta.doc_cache(),
            fp,
            revs_limit: DEFAULT_REVS_LIMIT,
        })
    }

    /// Keeps `limit` revisions (at least 1) behind each leaf instead.
    pub fn with_revs_limit(mut self, limit: usize) -> Docs {
        self.revs_limit = limit.max(1);
        self
    }

    /// The full prefix the documents live under.
    pub fn full_prefix(&self) -> &FullPrefix {
        &self.fp
    }

    /// Creates a document; an absent `_id` is generated. Fails with a
    /// conflict ("already exists") if a live document has the id.
    pub fn create(&self, doc: Value) -> Result<Saved> {
        let incoming = Incoming::parse(doc)?;
        if incoming.rev.is_some() {
            return Err(Error::InvalidInput(
                "a new document has no _rev: leave it out (use update to edit a document)".into(),
            ));
        }
        let id = match incoming.id {
            Some(id) => id,
            None => generate_id()?,
        };
        let limit = self.revs_limit;
        let body = incoming.body;
        self.edit(&id, move |tree| tree.create_in_place(body, limit))
    }

    /// The winner, with `_id` and `_rev`. O(log n) once the document is
    /// in the index.
    pub fn get(&self, id: &str) -> Result<Value> {
        self.read(id, |tree| tree.winner_document(id))?
            .ok_or_else(|| not_found(id))
    }

    /// The winner with `_conflicts`: the losing live leaves, greatest
    /// first (CouchDB's `?conflicts=true`), when there are any. At most
    /// [`MAX_INLINE_CONFLICTS`] are listed; when there are more, the
    /// document also carries `_conflicts_next`, the `after` of the next
    /// page of [`Docs::conflicts_page`].
    pub fn get_with_conflicts(&self, id: &str) -> Result<Value> {
        let (doc, page) = self.read(id, |tree| {
            (
                tree.winner_document(id),
                tree.conflicts_page(None, MAX_INLINE_CONFLICTS),
            )
        })?;
        let mut doc = doc.ok_or_else(|| not_found(id))?;
        let (losing, more) = page;
        if let (Value::Object(m), false) = (&mut doc, losing.is_empty()) {
            if let (true, Some(last)) = (more, losing.last()) {
                m.insert("_conflicts_next".into(), Value::String(last.to_string()));
            }
            let list = losing
                .iter()
                .map(|r| Value::String(r.to_string()))
                .collect();
            m.insert("_conflicts".into(), Value::Array(list));
        }
        Ok(doc)
    }

    /// One page of the losing current revisions (`_conflicts`), greatest
    /// first: at most `limit` (1 to [`MAX_CONFLICTS_PAGE`]), those after
    /// the revision `after` when given (the `next` of the previous page).
    /// O(log n + limit).
    pub fn conflicts_page(
        &self,
        id: &str,
        limit: usize,
        after: Option<&str>,
    ) -> Result<ConflictsPage> {
        if limit == 0 || limit > MAX_CONFLICTS_PAGE {
            return Err(Error::InvalidInput(format!(
                "limit {limit} is out of range: ask for 1 to {MAX_CONFLICTS_PAGE} conflicts per page"
            )));
        }
        let after: Option<Rev> = match after {
            Some(a) => Some(a.parse().map_err(|e: DocError| {
                Error::InvalidInput(format!("after: {e}; pass the `next` of the previous page"))
            })?),
            None => None,
        };
        let (winner, (conflicts, more)) = self.read(id, |tree| {
            (
                tree.is_live().then(|| tree.winner().cloned()).flatten(),
                tree.conflicts_page(after.as_ref(), limit),
            )
        })?;
        let winner = winner.ok_or_else(|| not_found(id))?;
        let next = if more {
            conflicts.last().cloned()
        } else {
            None
        };
        Ok(ConflictsPage {
            winner,
            conflicts,
            next,
        })
    }

    /// One revision, if its body is still kept (leaves always are; older
    /// revisions' bodies are dropped).
    pub fn get_rev(&self, id: &str, rev: &str) -> Result<Value> {
        let rev: Rev = rev.parse()?;
        let limit = self.revs_limit;
        let found = self.read(id, |tree| {
            if tree.is_empty() {
                return None;
            }
            let node = if tree.is_normalized(limit) {
                tree.get(&rev).cloned()
            } else {
                let mut t = tree.clone();
                t.normalize(limit);
                t.get(&rev).cloned()
            };
            Some(node)
        })?;
        let node = found.ok_or_else(|| not_found(id))?.ok_or_else(|| {
            Error::NotFound(format!(
                "document {id:?} has no revision {rev} (unknown, or older than the history kept)"
            ))
        })?;
        if node.deleted {
            return Err(Error::NotFound(format!(
                "revision {rev} of {id:?} is a deletion"
            )));
        }
        let body = node.body.as_ref().ok_or_else(|| {
            Error::NotFound(format!(
                "the body of revision {rev} of {id:?} is no longer kept (only current revisions keep theirs)"
            ))
        })?;
        Ok(document(id, &rev, Some(body)))
    }

    /// Updates a document; it must carry `_id` and `_rev`. A `_rev` that
    /// is not current is a conflict, unless `keep_both` (multiprocess-
    /// store's behaviour): then the edit becomes a branch.
    pub fn update(&self, doc: Value, keep_both: bool) -> Result<Saved> {
        let incoming = Incoming::parse(doc)?;
        let id = incoming
            .id
            .ok_or_else(|| Error::InvalidInput("an update needs _id: the document's id".into()))?;
        let rev = incoming.rev.ok_or_else(|| {
            Error::InvalidInput(
                "an update needs _rev: the revision it edits, as a read returned it (or use upsert)".into(),
            )
        })?;
        let (limit, body) = (self.revs_limit, incoming.body);
        self.edit(&id, move |tree| {
            tree.update_in_place(&rev, body, keep_both, limit)
        })
    }

    /// Writes the document on top of the current winner, or creates it;
    /// `_rev` is ignored. `_id` is required.
    pub fn upsert(&self, doc: Value) -> Result<Saved> {
        let incoming = Incoming::parse(doc)?;
        let id = incoming
            .id
            .ok_or_else(|| Error::InvalidInput("an upsert needs _id: the document's id".into()))?;
        let (limit, body) = (self.revs_limit, incoming.body);
        self.edit(&id, move |tree| Ok(tree.upsert_in_place(body, limit)))
    }

    /// Deletes the current revision `rev`.
    pub fn delete(&self, id: &str, rev: &str) -> Result<Saved> {
        validate_id(id)?;
        let rev: Rev = rev.parse()?;
        let limit = self.revs_limit;
        self.edit(id, move |tree| tree.delete_in_place(&rev, limit))
    }

    /// Keeps `winner` and deletes every other current revision.
    pub fn resolve(&self, id: &str, winner: &str) -> Result<Saved> {
        validate_id(id)?;
        let winner: Rev = winner.parse()?;
        let limit = self.revs_limit;
        self.edit(id, move |tree| tree.resolve_in_place(&winner, limit))
    }

    /// The groups of revisions that collided (see
    /// [`RevTree::conflict_groups`]); empty when there is no conflict.
    /// Walks the whole tree: for documents with very many conflicts, page
    /// through [`Docs::conflicts_page`] instead.
    pub fn conflicts(&self, id: &str) -> Result<Vec<Vec<Rev>>> {
        let tree = self.tree(id)?;
        if !tree.is_live() {
            return Err(not_found(id));
        }
        Ok(tree.conflict_groups())
    }

    /// Every live document (its winner), each once, in id order, from one
    /// snapshot.
    /// Reads every document: for a store of any size, page through
    /// [`Docs::page`] instead.
    pub fn all(&self) -> Result<Vec<Value>> {
        let snap = self.meta.store().snapshot()?;
        self.meta.store().refuse_unserved_at(&snap, &self.fp)?;
        let ids: BTreeSet<Vec<u8>> = snap
            .iter_prefix(&self.fp)
            .map(|(k, _)| crate::group_base(k.as_bytes()).to_vec())
            .collect();
        let mut out = Vec::with_capacity(ids.len());
        for key in ids {
            let id = String::from_utf8_lossy(&key).into_owned();
            if validate_id(&id).is_err() {
                continue;
            }
            out.extend(self.winner(&snap, &key, &id)?);
        }
        Ok(out)
    }

    /// One page of live documents (their winners) in id order: at most
    /// `limit`, those whose id sorts after `after`, and the `after` of the
    /// next page (`None` on the last). Work in proportion to the page:
    /// the store's keys are listed without being decoded (only the
    /// smallest ids after `after` are held), and only documents the page
    /// looks at are read: its live ones, one more to tell whether another
    /// page follows, and at most [`PAGE_SKIP_MAX`] deleted ones (past
    /// them the page ends early, with `next`).
    pub fn page(&self, limit: usize, after: Option<&str>) -> Result<(Vec<Value>, Option<String>)> {
        let snap = self.meta.store().snapshot()?;
        self.meta.store().refuse_unserved_at(&snap, &self.fp)?;
        let cap = limit.saturating_add(PAGE_SKIP_MAX).saturating_add(1);
        let after = after.map(str::as_bytes);
        let mut ids: BTreeSet<&[u8]> = BTreeSet::new();
        for (k, _) in snap.iter_prefix(&self.fp) {
            let id = crate::group_base(k.as_bytes());
            if after.is_some_and(|a| id <= a) {
                continue;
            }
            if ids.len() >= cap {
                match ids.last() {
                    Some(last) if id < *last => {}
                    _ => continue,
                }
                ids.insert(id);
                if ids.len() > cap {
                    ids.pop_last();
                }
            } else {
                ids.insert(id);
            }
        }
        let (mut out, mut skipped, mut last) = (Vec::new(), 0usize, None);
        for key in ids {
            let id = String::from_utf8_lossy(key).into_owned();
            let doc = if validate_id(&id).is_err() {
                None
            } else {
                self.winner(&snap, key, &id)?
            };
            match doc {
                Some(_) if out.len() == limit => return Ok((out, last)),
                Some(doc) => {
                    out.push(doc);
                    last = Some(id);
                }
                None => {
                    skipped += 1;
                    if skipped > PAGE_SKIP_MAX {
                        // Deleted documents beyond the bound: the page
                        // ends here, and the next one goes on after them.
                        return Ok((out, Some(id)));
                    }
                }
            }
        }
        // Every id after `after` was looked at (when the set was full, the
        // page ended above: `cap` ids hold more than `limit` live ones or
        // more than the skip bound): no page follows.
        Ok((out, None))
    }

    /// The winner of one document as of `snap` (`None` when deleted),
    /// from the per-process index or built.
    fn winner(&self, snap: &Snapshot, key: &[u8], id: &str) -> Result<Option<Value>> {
        // The index's lock is held per document, never while one is
        // built: an edit of this process waits on it under the writer
        // lock.
        let cached = {
            let mut cache = self.cache.lock();
            cache
                .cached(snap, &self.fp, key)?
                .map(|d| d.tree.winner_document(id))
        };
        Ok(match cached {
            Some(doc) => doc,
            None => build(snap, &self.fp, key)?.0.winner_document(id),
        })
    }

    /// The document's merged and normalized revision tree (empty if it
    /// never existed). A copy: O(revisions).
    pub fn tree(&self, id: &str) -> Result<RevTree> {
        let limit = self.revs_limit;
        self.read(id, |tree| {
            let mut t = tree.clone();
            t.normalize(limit);
            t
        })
    }

    /// Runs `f` on the document's revisions as this process's index holds
    /// them (the union of its records and any format-1 key), brought up to
    /// date with the latest commit. The tree may not be normalized: its
    /// answers ([`RevTree::winner`], [`RevTree::conflicts_page`]) are those
    /// of the normalized tree.
    fn read<T>(&self, id: &str, f: impl FnOnce(&RevTree) -> T) -> Result<T> {
        validate_id(id)?;
        let mut cache = self.cache.lock();
        // Taken under the index's lock, so never behind what it holds.
        let snap = self.meta.store().snapshot()?;
        self.meta.store().refuse_unserved_at(&snap, &self.fp)?;
        if let Some(doc) = cache.cached(&snap, &self.fp, id.as_bytes())? {
            return Ok(f(&doc.tree));
        }
        // Built without the index's lock (an edit of this process waits on
        // it under the directory's writer lock), then kept if the index
        // is still at this snapshot.
        drop(cache);
        let (tree, v1) = build(&snap, &self.fp, id.as_bytes())?;
        let out = f(&tree);
        self.cache
            .lock()
            .insert_built(&snap, &self.fp, id.as_bytes(), tree, v1);
        Ok(out)
    }

    /// Runs `f` on the document's tree under the writer lock and writes
    /// the records it changed (see the module documentation).
    fn edit<F>(&self, id: &str, f: F) -> Result<Saved>
    where
        F: FnOnce(&mut RevTree) -> std::result::Result<Rev, DocError> + Send + 'static,
    {
        validate_id(id)?;
        // Brought into the index first, outside the writer lock: under it,
        // the edit then only catches up.
        self.read(id, |_| ())?;
        let (fp, key, writer) = (self.fp.clone(), id.as_bytes().to_vec(), self.meta.writer());
        let cache = self.cache.clone();
        let out = self.meta.store().update_returning(move |snap: &Snapshot| {
            let mut guard = cache.lock();
            guard.ahead_of(snap);
            let Some(doc) = guard.doc_mut(snap, &fp, &key)? else {
                return Err(Error::InvalidInput(
                    "the document index is ahead of the writer: retry".into(),
                ));
            };
            doc.tree.start_journal();
            let edited = f(&mut doc.tree);
            let touched = doc.tree.take_journal();
            let rev = match edited {
                Ok(rev) => rev,
                Err(e) => {
                    if !touched.is_empty() {
                        guard.forget(&fp, &key);
                    }
                    return Err(e.into());
                }
            };
            let writes = match record_writes(snap, &fp, &key, doc, touched, &writer) {
                Ok(w) => w,
                Err(e) => {
                    guard.forget(&fp, &key);
                    return Err(e);
                }
            };
            if let Some(first) = writes.first() {
                doc.pending = Some((snap.seq() + 1, first.key.to_vec()));
                doc.v1 = false;
            }
            Ok((writes, rev))
        });
        match out {
            Ok((_, rev)) => Ok(Saved {
                id: id.to_string(),
                rev,
            }),
            Err(e) => {
                // The edit may have changed the cached tree, and a failed
                // batch may have moved the index past what was committed:
                // start again from the store.
                self.cache.lock().reset();
                Err(e)
            }
        }
    }
}

/// The writes that store what an edit changed in `doc.tree`: a record for
/// each revision touched that is kept and differs from its stored record,
/// a tombstone for each touched one that is gone; for a document still in
/// format 1, every record and a tombstone for the old key.
fn record_writes(
    snap: &Snapshot,
    fp: &FullPrefix,
    id: &[u8],
    doc: &CachedDoc,
    touched: BTreeSet<Rev>,
    writer: &crate::metadata::Writer,
) -> Result<Vec<Write>> {
    let mut revs = touched;
    if doc.v1 {
        revs.extend(doc.tree.revs().map(|(r, _)| r.clone()));
    }
    let mut writes = Vec::new();
    for rev in revs {
        let key = record_key(id, &rev);
        let stored = stored_record(snap, fp, &key)?;
        match doc.tree.get(&rev) {
            Some(node) => {
                let record = Record {
                    rev: rev.clone(),
                    parent: node.parent.clone(),
                    deleted: node.deleted,
                    body: node.body.clone(),
                    child: doc.tree.has_child(&rev),
                };
                if stored.as_ref() == Some(&record) {
                    continue;
                }
                let bytes = new_object_bytes(snap, fp, &key, record.encode(), writer)?;
                writes.push(Write::put(fp, &key, &bytes));
            }
            None => {
                if stored.is_some() {
                    let bytes = tombstone_object_bytes(snap, fp, &key, writer)?;
                    writes.push(Write::put(fp, &key, &bytes));
                }
            }
        }
    }
    if doc.v1 && snap.get(fp, id).is_some() {
        let bytes = tombstone_object_bytes(snap, fp, id, writer)?;
        writes.push(Write::put(fp, id, &bytes));
    }
    Ok(writes)
}

/// One revision's record, as stored (format 1 of records).
#[derive(Debug, Clone, PartialEq)]
struct Record {
    rev: Rev,
    parent: Option<Rev>,
    deleted: bool,
    /// While it is a leaf.
    body: Option<Body>,
    /// Known to have a child.
    child: bool,
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        serde_json::json!({
            "v": 1,
            "rev": self.rev.to_string(),
            "parent": self.parent.as_ref().map(|p| p.to_string()),
            "deleted": self.deleted,
            "body": self.body.clone().map(Value::Object),
            "child": self.child,
        })
        .to_string()
        .into_bytes()
    }

    fn decode(bytes: &[u8]) -> std::result::Result<Record, String> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if v.get("v") != Some(&Value::from(1)) {
            return Err("unknown record version (written by a newer Chorus?)".into());
        }
        let rev: Rev = v
            .get("rev")
            .and_then(Value::as_str)
            .ok_or("no rev")?
            .parse()
            .map_err(|e: DocError| e.to_string())?;
        let parent = match v.get("parent") {
            None | Some(Value::Null) => None,
            Some(Value::String(p)) => Some(p.parse().map_err(|e: DocError| e.to_string())?),
            Some(_) => return Err("parent is not a revision id".into()),
        };
        let deleted = v
            .get("deleted")
            .and_then(Value::as_bool)
            .ok_or("no deleted flag")?;
        let body = match v.get("body") {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m.clone()),
            Some(_) => return Err("body is not an object".into()),
        };
        let child = v.get("child").and_then(Value::as_bool).unwrap_or(false);
        Ok(Record {
            rev,
            parent,
            deleted,
            body,
            child,
        })
    }
}

/// Checks an object received for a document store's key (a stage's
/// push): a revision record key (`id\0` and 20 digits, `-`, hash) must
/// hold records of the revision it names, within the size limit, and a
/// record that carries its body and parent must have the id their hash
/// gives. Other keys pass. A parent need not be known here (it may have
/// been dropped by the revs limit, or arrive later).
pub fn validate_record(key: &[u8], object: &chorus_core::object::Object) -> Result<()> {
    let Some((base, _)) =
        crate::split_record(key).filter(|(_, name)| crate::names_a_revision(name))
    else {
        return Ok(());
    };
    let shown = String::from_utf8_lossy(&key[..key.len().min(80)]).replace('\0', "\\0");
    let bad = |why: String| {
        Error::InvalidInput(format!(
            "the document revision record at {shown:?} is malformed: {why}"
        ))
    };
    for v in object.values() {
        let Some(bytes) = v.bytes() else { continue };
        let size = bytes.len();
        if size > chorus_core::docs::MAX_BODY_BYTES + 4096 {
            return Err(bad(format!(
                "it is {size} bytes; a revision's body is at most {} bytes",
                chorus_core::docs::MAX_BODY_BYTES
            )));
        }
        let record = Record::decode(bytes).map_err(bad)?;
        if record_key(base, &record.rev) != key {
            return Err(bad(format!(
                "it holds revision {}, not the one its key names",
                record.rev
            )));
        }
        if let (Some(body), Some(parent)) = (&record.body, &record.parent) {
            let expected = Rev::child(Some(parent), record.deleted, body);
            if expected != record.rev {
                return Err(bad(format!(
                    "its id {} is not the hash of its parent, deleted flag and body ({expected})",
                    record.rev
                )));
            }
        }
    }
    Ok(())
}

/// The key of revision `rev` of document `id`.
fn record_key(id: &[u8], rev: &Rev) -> Vec<u8> {
    let mut key = id.to_vec();
    key.push(0);
    key.extend_from_slice(format!("{:020}-{}", rev.n, rev.hash).as_bytes());
    key
}

/// The merged record stored under `key` (its live siblings: the body goes
/// once any of them knows a child), or `None` if there is none.
fn stored_record(snap: &Snapshot, fp: &FullPrefix, key: &[u8]) -> Result<Option<Record>> {
    let Some(bytes) = snap.get(fp, key) else {
        return Ok(None);
    };
    let damaged = |why: String| {
        Error::InvalidInput(format!(
            "{fp}/{} is not a document revision ({why}): run `chorus check`, or delete the key",
            String::from_utf8_lossy(key).replace('\0', "\\0")
        ))
    };
    let object = chorus_core::object::Object::decode(&bytes).map_err(|e| damaged(e.to_string()))?;
    let mut merged: Option<Record> = None;
    for value in object.values() {
        let Some(b) = value.bytes() else { continue };
        let r = Record::decode(b).map_err(damaged)?;
        merged = Some(match merged {
            None => r,
            Some(mut m) => {
                m.child |= r.child;
                if m.body.is_none() {
                    m.body = r.body;
                }
                m
            }
        });
    }
    if let Some(m) = merged.as_mut().filter(|m| m.child) {
        m.body = None;
    }
    Ok(merged)
}

/// The document's revisions from the snapshot: the union of its records
/// and of any format-1 tree under `id`; and whether that key is live.
fn build(snap: &Snapshot, fp: &FullPrefix, id: &[u8]) -> Result<(RevTree, bool)> {
    let mut tree = RevTree::default();
    let mut v1 = false;
    for (key, _) in snap.group(fp, id) {
        let key = key.as_bytes();
        if key == id {
            let old = tree_in(snap, fp, id)?;
            v1 = !old.is_empty();
            tree.merge(&old);
        } else if let Some(r) = stored_record(snap, fp, key)? {
            tree.insert_record(r.rev, r.parent, r.deleted, r.body, r.child);
        }
    }
    Ok((tree, v1))
}

/// The union of the format-1 trees in every sibling of the key.
fn tree_in(snap: &Snapshot, fp: &FullPrefix, key: &[u8]) -> Result<RevTree> {
    let mut tree = RevTree::default();
    let Some(bytes) = snap.get(fp, key) else {
        return Ok(tree);
    };
    let object = chorus_core::object::Object::decode(&bytes).map_err(|e| {
        Error::InvalidInput(format!(
            "{fp}/{} is not a document: {e}",
            String::from_utf8_lossy(key)
        ))
    })?;
    for value in object.values() {
        if let Some(b) = value.bytes() {
            tree.merge(&RevTree::decode(b).map_err(|e| {
                Error::InvalidInput(format!(
                    "{fp}/{} is not a document: {e}",
                    String::from_utf8_lossy(key)
                ))
            })?);
        }
    }
    Ok(tree)
}

/// The per-process document index shared by every [`Docs`] on one
/// [`Metadata`] (see the module documentation).
#[derive(Default)]
pub(crate) struct DocCache {
    state: Mutex<CacheState>,
}

impl std::fmt::Debug for DocCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocCache").finish_non_exhaustive()
    }
}

impl DocCache {
    fn lock(&self) -> MutexGuard<'_, CacheState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Default)]
struct CacheState {
    /// The commit the cached documents reflect.
    seq: Option<u64>,
    docs: HashMap<(FullPrefix, Vec<u8>), CachedDoc>,
    /// Use counter, for eviction.
    tick: u64,
}

struct CachedDoc {
    /// The union of the records and any format-1 tree.
    tree: RevTree,
    /// The format-1 key `id` is live.
    v1: bool,
    used: u64,
    /// An edit of this process changed `tree` for the commit with this
    /// seq, which writes this key; until a snapshot shows it committed,
    /// only that commit's snapshot may use the tree.
    pending: Option<(u64, Vec<u8>)>,
}

impl CacheState {
    /// Inside the writer's closure the snapshot is the latest: a cache
    /// ahead of it (an edit whose commit failed) starts again.
    fn ahead_of(&mut self, snap: &Snapshot) {
        if self.seq.is_some_and(|s| s > snap.seq()) {
            self.docs.clear();
            self.seq = None;
        }
    }

    /// Brings the cache to `snap` (only the records that changed).
    fn catch_up(&mut self, snap: &Snapshot) -> Result<bool> {
        let Some(seq) = self.seq else {
            self.docs.clear();
            self.seq = Some(snap.seq());
            return Ok(true);
        };
        if seq > snap.seq() {
            return Ok(false);
        }
        if seq == snap.seq() {
            return Ok(true);
        }
        let Some(changed) = snap.changed_since(seq) else {
            self.docs.clear();
            self.seq = Some(snap.seq());
            return Ok(true);
        };
        let mut todo: Vec<(FullPrefix, Vec<u8>, Vec<u8>)> = Vec::new();
        for (_, fp, key) in changed {
            let key = key.as_bytes();
            let base = crate::group_base(key);
            if self.docs.contains_key(&(fp.clone(), base.to_vec())) {
                todo.push((fp.clone(), base.to_vec(), key.to_vec()));
            }
        }
        for (fp, base, key) in todo {
            let slot = (fp, base);
            let forget = match self.docs.get_mut(&slot) {
                None => false,
                Some(doc) => apply(snap, &slot.0, &slot.1, &key, doc).is_err(),
            };
            if forget {
                self.docs.remove(&slot);
            }
        }
        self.seq = Some(snap.seq());
        Ok(true)
    }

    fn reset(&mut self) {
        self.docs.clear();
        self.seq = None;
    }

    fn forget(&mut self, fp: &FullPrefix, id: &[u8]) {
        self.docs.remove(&(fp.clone(), id.to_vec()));
    }

    /// The cached document brought up to `snap`, if it is cached and the
    /// cache can serve this snapshot; never builds one.
    fn cached(
        &mut self,
        snap: &Snapshot,
        fp: &FullPrefix,
        id: &[u8],
    ) -> Result<Option<&CachedDoc>> {
        if !self.docs.contains_key(&(fp.clone(), id.to_vec())) {
            return Ok(None);
        }
        Ok(self.doc_mut(snap, fp, id)?.map(|d| &*d))
    }

    /// Keeps a tree built from `snap`, if the cache is at that snapshot
    /// and does not hold the document already.
    fn insert_built(
        &mut self,
        snap: &Snapshot,
        fp: &FullPrefix,
        id: &[u8],
        tree: RevTree,
        v1: bool,
    ) {
        if self.catch_up(snap).ok() != Some(true) || self.seq != Some(snap.seq()) {
            return;
        }
        let slot = (fp.clone(), id.to_vec());
        if self.docs.contains_key(&slot) {
            return;
        }
        self.tick += 1;
        self.docs.insert(
            slot.clone(),
            CachedDoc {
                tree,
                v1,
                used: self.tick,
                pending: None,
            },
        );
        self.evict(&slot);
    }

    fn doc_mut(
        &mut self,
        snap: &Snapshot,
        fp: &FullPrefix,
        id: &[u8],
    ) -> Result<Option<&mut CachedDoc>> {
        if !self.catch_up(snap)? {
            return Ok(None);
        }
        let slot = (fp.clone(), id.to_vec());
        if let Some((seq, key)) = self.docs.get(&slot).and_then(|d| d.pending.clone()) {
            if snap.seq() < seq {
                return Ok(None);
            }
            let committed = snap.entry(fp, &key).is_some_and(|e| e.seq == seq);
            match self.docs.get_mut(&slot) {
                Some(doc) if committed => doc.pending = None,
                _ => {
                    self.docs.remove(&slot);
                }
            }
        }
        self.tick += 1;
        let tick = self.tick;
        if !self.docs.contains_key(&slot) {
            let (tree, v1) = build(snap, fp, id)?;
            self.docs.insert(
                slot.clone(),
                CachedDoc {
                    tree,
                    v1,
                    used: tick,
                    pending: None,
                },
            );
            self.evict(&slot);
        }
        let doc = self.docs.get_mut(&slot);
        Ok(doc.map(|d| {
            d.used = tick;
            &mut *d
        }))
    }

    /// Drops least recently used documents beyond the bounds, never `keep`.
    fn evict(&mut self, keep: &(FullPrefix, Vec<u8>)) {
        let mut revs: usize = self.docs.values().map(|d| d.tree.len()).sum();
        while self.docs.len() > CACHE_DOCS || (revs > CACHE_REVS && self.docs.len() > 1) {
            let victim = self
                .docs
                .iter()
                .filter(|(k, _)| *k != keep)
                .min_by_key(|(_, d)| d.used)
                .map(|(k, _)| k.clone());
            let Some(victim) = victim else { break };
            if let Some(d) = self.docs.remove(&victim) {
                revs -= d.tree.len();
            }
        }
    }
}

/// Applies one changed key of a cached document: a record read again, or
/// for the format-1 key a rebuild (an error makes the caller forget it).
fn apply(
    snap: &Snapshot,
    fp: &FullPrefix,
    id: &[u8],
    key: &[u8],
    doc: &mut CachedDoc,
) -> Result<()> {
    if key == id {
        let (tree, v1) = build(snap, fp, id)?;
        doc.tree = tree;
        doc.v1 = v1;
        return Ok(());
    }
    let rev = rev_of_key(key).ok_or_else(|| {
        Error::InvalidInput(format!(
            "{fp}/{} is not a revision key",
            String::from_utf8_lossy(key)
        ))
    })?;
    let record = stored_record(snap, fp, key)?;
    match (record, doc.tree.get(&rev)) {
        (None, None) => {}
        (None, Some(_)) => {
            if doc.v1 {
                let (tree, v1) = build(snap, fp, id)?;
                doc.tree = tree;
                doc.v1 = v1;
            } else {
                doc.tree.remove(&rev);
            }
        }
        (Some(r), Some(node)) => {
            let same = node.parent == r.parent
                && node.deleted == r.deleted
                && doc.tree.has_child(&rev) == r.child
                && (node.body == r.body || (r.body.is_some() && node.body.is_none()));
            if !same {
                if node.body.is_some() && r.body.is_none() {
                    doc.tree.remove(&rev);
                }
                doc.tree
                    .insert_record(r.rev, r.parent, r.deleted, r.body, r.child);
            }
        }
        (Some(r), None) => {
            doc.tree
                .insert_record(r.rev, r.parent, r.deleted, r.body, r.child);
        }
    }
    Ok(())
}

/// The revision a record key names.
fn rev_of_key(key: &[u8]) -> Option<Rev> {
    let at = key.iter().position(|b| *b == 0)?;
    let rest = std::str::from_utf8(&key[at + 1..]).ok()?;
    let (n, hash) = rest.split_once('-')?;
    let n: u64 = n.parse().ok()?;
    format!("{n}-{hash}").parse().ok()
}

fn not_found(id: &str) -> Error {
    Error::NotFound(format!(
        "no document {id:?} (it was never created, or it was deleted)"
    ))
}

/// A random 32-hex-digit id.
fn generate_id() -> Result<String> {
    let bytes: [u8; 16] = crate::sys::random_bytes()
        .map_err(|e| Error::Internal(format!("cannot generate an id: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
