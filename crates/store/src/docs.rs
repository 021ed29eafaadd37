//! Documents: JSON objects with `_id` and `_rev` over one full prefix of
//! the causal store (multiprocess-store's face of Chorus).
//!
//! Each document is one key whose value is its revision tree
//! ([`chorus_core::docs::RevTree`], JSON-encoded). Edits run under the
//! writer lock on the latest tree, so two processes on a machine that
//! edit the same revision are ordered: the second is refused with a
//! conflict, or, with `keep_both`, kept as a branch. Edits made on
//! different hosts meet as siblings of the key (its dotted version
//! vectors); a read merges the siblings' trees (a union) and every host
//! picks the same winner, and the next edit writes the merged tree back.
//!
//! A store is named by a path-like name: `users` is the full prefix
//! `docs/users`, `app/users` is `app/users`.

use chorus_core::FullPrefix;
use chorus_core::docs::{DEFAULT_REVS_LIMIT, Incoming, Rev, RevTree, document, validate_id};
use serde_json::Value;

use crate::metadata::{Metadata, new_object_bytes};
use crate::{Error, Result, Snapshot, Write};

/// A document store: one full prefix of a [`Metadata`] store.
#[derive(Clone)]
pub struct Docs {
    meta: Metadata,
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
        self.edit(&id, move |tree| tree.create(body, limit))
    }

    /// The winner, with `_id` and `_rev`.
    pub fn get(&self, id: &str) -> Result<Value> {
        let tree = self.tree(id)?;
        tree.winner_document(id).ok_or_else(|| not_found(id))
    }

    /// The winner with `_conflicts`: the losing live leaves, greatest
    /// first (CouchDB's `?conflicts=true`), when there are any.
    pub fn get_with_conflicts(&self, id: &str) -> Result<Value> {
        let tree = self.tree(id)?;
        let mut doc = tree.winner_document(id).ok_or_else(|| not_found(id))?;
        let losing: Vec<Value> = tree
            .losing_leaves()
            .iter()
            .map(|r| Value::String(r.to_string()))
            .collect();
        if let (Value::Object(m), false) = (&mut doc, losing.is_empty()) {
            m.insert("_conflicts".into(), Value::Array(losing));
        }
        Ok(doc)
    }

    /// One revision, if its body is still kept (leaves always are; older
    /// revisions' bodies are dropped).
    pub fn get_rev(&self, id: &str, rev: &str) -> Result<Value> {
        let rev: Rev = rev.parse()?;
        let tree = self.tree(id)?;
        if tree.is_empty() {
            return Err(not_found(id));
        }
        let node = tree.get(&rev).ok_or_else(|| {
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
        self.edit(&id, move |tree| tree.update(&rev, body, keep_both, limit))
    }

    /// Writes the document on top of the current winner, or creates it;
    /// `_rev` is ignored. `_id` is required.
    pub fn upsert(&self, doc: Value) -> Result<Saved> {
        let incoming = Incoming::parse(doc)?;
        let id = incoming
            .id
            .ok_or_else(|| Error::InvalidInput("an upsert needs _id: the document's id".into()))?;
        let (limit, body) = (self.revs_limit, incoming.body);
        self.edit(&id, move |tree| Ok(tree.upsert(body, limit)))
    }

    /// Deletes the current revision `rev`.
    pub fn delete(&self, id: &str, rev: &str) -> Result<Saved> {
        validate_id(id)?;
        let rev: Rev = rev.parse()?;
        let limit = self.revs_limit;
        self.edit(id, move |tree| tree.delete(&rev, limit))
    }

    /// Keeps `winner` and deletes every other current revision.
    pub fn resolve(&self, id: &str, winner: &str) -> Result<Saved> {
        validate_id(id)?;
        let winner: Rev = winner.parse()?;
        let limit = self.revs_limit;
        self.edit(id, move |tree| tree.resolve(&winner, limit))
    }

    /// The groups of revisions that collided (see
    /// [`RevTree::conflict_groups`]); empty when there is no conflict.
    pub fn conflicts(&self, id: &str) -> Result<Vec<Vec<Rev>>> {
        let tree = self.tree(id)?;
        if !tree.is_live() {
            return Err(not_found(id));
        }
        Ok(tree.conflict_groups())
    }

    /// Every live document (its winner), each once, in id order.
    pub fn all(&self) -> Result<Vec<Value>> {
        let snap = self.meta.store().snapshot()?;
        let mut ids: Vec<Vec<u8>> = snap
            .iter_prefix(&self.fp)
            .map(|(k, _)| k.as_bytes().to_vec())
            .collect();
        ids.sort();
        let mut out = Vec::with_capacity(ids.len());
        for key in ids {
            let id = String::from_utf8_lossy(&key).into_owned();
            if let Some(doc) = tree_in(&snap, &self.fp, &key)?.winner_document(&id) {
                out.push(doc);
            }
        }
        Ok(out)
    }

    /// The document's merged and normalized revision tree (empty if it
    /// never existed).
    pub fn tree(&self, id: &str) -> Result<RevTree> {
        validate_id(id)?;
        let snap = self.meta.store().snapshot()?;
        let mut tree = tree_in(&snap, &self.fp, id.as_bytes())?;
        tree.normalize(self.revs_limit);
        Ok(tree)
    }

    /// Runs `f` on the latest tree under the writer lock and writes what
    /// it returns, superseding every sibling it merged.
    fn edit<F>(&self, id: &str, f: F) -> Result<Saved>
    where
        F: FnOnce(
                &RevTree,
            )
                -> std::result::Result<chorus_core::docs::Edited, chorus_core::docs::DocError>
            + Send
            + 'static,
    {
        validate_id(id)?;
        let (fp, key, writer) = (self.fp.clone(), id.as_bytes().to_vec(), self.meta.writer());
        let (_, rev) = self.meta.store().update_returning(move |snap: &Snapshot| {
            let tree = tree_in(snap, &fp, &key)?;
            let edited = f(&tree)?;
            let encoded = new_object_bytes(snap, &fp, &key, edited.tree.encode(), &writer)?;
            Ok((vec![Write::put(&fp, &key, &encoded)], edited.rev))
        })?;
        Ok(Saved {
            id: id.to_string(),
            rev,
        })
    }
}

/// The union of the trees in every sibling of the key.
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

fn not_found(id: &str) -> Error {
    Error::NotFound(format!(
        "no document {id:?} (it was never created, or it was deleted)"
    ))
}

/// A random 32-hex-digit id.
fn generate_id() -> Result<String> {
    let bytes: [u8; 16] = crate::sys::random_bytes()
        .map_err(|e| Error::InvalidInput(format!("cannot generate an id: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
