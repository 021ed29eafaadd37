//! Documents' revision logic, with no IO: revision ids, the revision tree
//! of one document, the winner every host picks alone, conflicts, and the
//! edits (create, update, upsert, delete, resolve) as pure functions from
//! one tree to the next.
//!
//! The rules are CouchDB's (see `shared/reference/revisions-and-winners.md`):
//!
//! - A revision id is `N-hash`: `N` counts the edits on its branch (1 for a
//!   first revision), `hash` is 32 lowercase hex digits of SHA-256 over the
//!   parent's id, the deleted flag and the body in a canonical JSON form.
//!   The same edit of the same parent gives the same id on every host.
//! - The leaves of the tree are the current revisions. The winner is the
//!   greatest leaf by (live before deleted, larger `N` as a number, larger
//!   hash as a string).
//! - Trees merge by union ([`RevTree::merge`]): commutative, associative and
//!   idempotent, so hosts that have seen the same edits agree on everything.
//!
//! Two rules keep a tree small, both deterministic functions of the tree
//! (see [`RevTree::normalize`]):
//!
//! - **Self-clearing conflicts.** When the winner is live, a losing live
//!   leaf whose every field appears with an equal value in the winner's body
//!   is closed: it gets a deleted child revision (the same id on every
//!   host). Nothing is lost, since the winner holds all of its data.
//! - **Bounded history.** A revision farther than `revs_limit` edits from
//!   every leaf is dropped (CouchDB's revs limit), and only leaves keep
//!   their bodies.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// A document's fields, without `_id` and `_rev`.
pub type Body = Map<String, Value>;

/// Most bytes of a document id.
pub const MAX_ID_BYTES: usize = 512;
/// Most bytes of a document body, encoded as JSON.
pub const MAX_BODY_BYTES: usize = 256 << 10;
/// Default number of revisions kept behind each leaf.
pub const DEFAULT_REVS_LIMIT: usize = 100;

/// Why a document operation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocError {
    /// No live document with this id.
    NotFound(String),
    /// `create` of an id that exists.
    AlreadyExists(String),
    /// The revision named is not a current one (or not known).
    Conflict(String),
    /// Bad input: id, body, revision id.
    Invalid(String),
}

impl fmt::Display for DocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DocError::NotFound(m)
            | DocError::AlreadyExists(m)
            | DocError::Conflict(m)
            | DocError::Invalid(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for DocError {}

/// A revision id, `N-hash`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rev {
    /// Edits on this branch, from 1.
    pub n: u64,
    /// Lowercase hex digest.
    pub hash: String,
}

impl Ord for Rev {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.n, &self.hash).cmp(&(other.n, &other.hash))
    }
}

impl PartialOrd for Rev {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Rev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.n, self.hash)
    }
}

impl FromStr for Rev {
    type Err = DocError;

    fn from_str(s: &str) -> Result<Rev, DocError> {
        let bad = || {
            DocError::Invalid(format!(
                "{s:?} is not a revision id: expected N-hash, a positive number, a dash and lowercase hex digits (as `_rev` of a read)"
            ))
        };
        let (n, hash) = s.split_once('-').ok_or_else(bad)?;
        let n: u64 = n.parse().map_err(|_| bad())?;
        let hex = hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if n == 0
            || hash.is_empty()
            || hash.len() > 64
            || !hex
            || n.to_string().len() != s.len() - hash.len() - 1
        {
            return Err(bad());
        }
        Ok(Rev {
            n,
            hash: hash.to_string(),
        })
    }
}

impl Rev {
    /// The id of the edit that gives `body` (or deletes, with `deleted`)
    /// on top of `parent`.
    pub fn child(parent: Option<&Rev>, deleted: bool, body: &Body) -> Rev {
        let mut h = Sha256::new();
        h.update(b"chorus-doc-rev-v1\0");
        if let Some(p) = parent {
            h.update(p.to_string().as_bytes());
        }
        h.update([0, u8::from(deleted)]);
        let mut canonical = String::new();
        write_canonical(&Value::Object(body.clone()), &mut canonical);
        h.update(canonical.as_bytes());
        let digest = h.finalize();
        let hash = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        Rev {
            n: parent.map_or(1, |p| p.n + 1),
            hash,
        }
    }
}

/// JSON with object keys sorted, no spaces: the same value always gives
/// the same text.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            out.push('{');
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(v) = m.get(k) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Checks a document id: 1 to [`MAX_ID_BYTES`] bytes, no `/`, no control
/// characters, not `.` or `..`, not starting with `_`.
pub fn validate_id(id: &str) -> Result<(), DocError> {
    let why = if id.is_empty() {
        Some("is empty")
    } else if id.len() > MAX_ID_BYTES {
        Some("is longer than 512 bytes")
    } else if id.contains('/') {
        Some("contains '/'")
    } else if id == "." || id == ".." {
        Some("is a path component")
    } else if id.chars().any(char::is_control) {
        Some("contains a control character")
    } else if id.starts_with('_') {
        Some("starts with '_' (reserved)")
    } else {
        None
    };
    match why {
        Some(why) => Err(DocError::Invalid(format!(
            "the document id {:?} {why}: use 1 to {MAX_ID_BYTES} bytes without '/' or control characters, not starting with '_'",
            truncate(id)
        ))),
        None => Ok(()),
    }
}

fn truncate(s: &str) -> String {
    if s.len() <= 64 {
        return s.to_string();
    }
    let mut end = 64;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// A document as a caller passes it: its id and revision (if given) taken
/// out of the fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    /// `_id`, if present.
    pub id: Option<String>,
    /// `_rev`, if present.
    pub rev: Option<Rev>,
    /// Every other field.
    pub body: Body,
}

impl Incoming {
    /// Splits a JSON object into `_id`, `_rev` and the body; refuses what
    /// is not an object, other `_` fields, a malformed id or revision, and
    /// bodies over [`MAX_BODY_BYTES`].
    pub fn parse(value: Value) -> Result<Incoming, DocError> {
        let Value::Object(mut fields) = value else {
            return Err(DocError::Invalid(
                "a document must be a JSON object, like {\"_id\": \"alice\", \"email\": \"alice@example.com\"}".into(),
            ));
        };
        let id = match fields.remove("_id") {
            None => None,
            Some(Value::String(id)) => {
                validate_id(&id)?;
                Some(id)
            }
            Some(other) => {
                return Err(DocError::Invalid(format!(
                    "_id must be a string, not {other}"
                )));
            }
        };
        let rev = match fields.remove("_rev") {
            None => None,
            Some(Value::String(r)) => Some(r.parse()?),
            Some(other) => {
                return Err(DocError::Invalid(format!(
                    "_rev must be a string, not {other}"
                )));
            }
        };
        if let Some(k) = fields.keys().find(|k| k.starts_with('_')) {
            return Err(DocError::Invalid(format!(
                "the field {k:?} starts with '_', which is reserved (only _id and _rev are allowed): rename it"
            )));
        }
        let size = Value::Object(fields.clone()).to_string().len();
        if size > MAX_BODY_BYTES {
            return Err(DocError::Invalid(format!(
                "the document is {size} bytes of JSON; the limit is {MAX_BODY_BYTES}: split it"
            )));
        }
        Ok(Incoming {
            id,
            rev,
            body: fields,
        })
    }
}

/// One revision in a tree.
#[derive(Debug, Clone, PartialEq)]
pub struct RevNode {
    /// Its parent, unless it is a first revision or its parent was dropped
    /// by the history bound.
    pub parent: Option<Rev>,
    /// A deletion.
    pub deleted: bool,
    /// Its fields; kept for leaves only.
    pub body: Option<Body>,
}

/// A document's revision tree.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RevTree {
    nodes: BTreeMap<Rev, RevNode>,
}

/// The result of an edit: the new tree and the revision it made.
#[derive(Debug, Clone, PartialEq)]
pub struct Edited {
    /// The tree after the edit (normalized).
    pub tree: RevTree,
    /// The revision the edit created (or found already there).
    pub rev: Rev,
}

impl RevTree {
    /// True when the tree has no revision (the document never existed).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Number of revisions kept.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// A revision, if kept.
    pub fn get(&self, rev: &Rev) -> Option<&RevNode> {
        self.nodes.get(rev)
    }

    /// Every revision kept, in id order.
    pub fn revs(&self) -> impl Iterator<Item = (&Rev, &RevNode)> {
        self.nodes.iter()
    }

    /// Adds a revision (a no-op if it is there).
    pub fn insert(&mut self, rev: Rev, parent: Option<Rev>, deleted: bool, body: Option<Body>) {
        let node = self.nodes.entry(rev).or_insert(RevNode {
            parent,
            deleted,
            body: None,
        });
        if node.body.is_none() {
            node.body = body;
        }
    }

    fn children(&self) -> BTreeMap<&Rev, Vec<&Rev>> {
        let mut children: BTreeMap<&Rev, Vec<&Rev>> = BTreeMap::new();
        for (rev, node) in &self.nodes {
            if let Some(p) = node.parent.as_ref().filter(|p| self.nodes.contains_key(*p)) {
                children.entry(p).or_default().push(rev);
            }
        }
        children
    }

    /// The current revisions: those with no child.
    pub fn leaves(&self) -> Vec<&Rev> {
        let children = self.children();
        self.nodes
            .keys()
            .filter(|r| !children.contains_key(r))
            .collect()
    }

    /// The live leaves, winner first.
    pub fn live_leaves(&self) -> Vec<&Rev> {
        let mut live: Vec<&Rev> = self
            .leaves()
            .into_iter()
            .filter(|r| self.nodes.get(*r).is_some_and(|n| !n.deleted))
            .collect();
        live.sort_by(|a, b| b.cmp(a));
        live
    }

    /// The winning leaf: live before deleted, then the larger `N`, then
    /// the larger hash.
    pub fn winner(&self) -> Option<&Rev> {
        self.leaves().into_iter().max_by(|a, b| {
            let live = |r: &Rev| self.nodes.get(r).is_some_and(|n| !n.deleted);
            (live(a), *a).cmp(&(live(b), *b))
        })
    }

    /// True when the winner is live (the document exists).
    pub fn is_live(&self) -> bool {
        self.winner()
            .and_then(|w| self.nodes.get(w))
            .is_some_and(|n| !n.deleted)
    }

    /// The losing live leaves (CouchDB's `_conflicts`), greatest first.
    pub fn losing_leaves(&self) -> Vec<&Rev> {
        let mut live = self.live_leaves();
        if !live.is_empty() {
            live.remove(0);
        }
        live
    }

    /// The groups of revisions that collided: for every revision (or the
    /// start of history) with two or more children whose branches still
    /// hold a live leaf, those children, sorted. Groups come in order of
    /// their revisions' `N`, then ids. Empty when there is no conflict.
    pub fn conflict_groups(&self) -> Vec<Vec<Rev>> {
        let children = self.children();
        let mut live_below: BTreeMap<&Rev, bool> = BTreeMap::new();
        // Revisions sorted by N descending: children before parents.
        let mut order: Vec<&Rev> = self.nodes.keys().collect();
        order.sort_by(|a, b| b.cmp(a));
        for rev in &order {
            let own =
                !children.contains_key(*rev) && self.nodes.get(*rev).is_some_and(|n| !n.deleted);
            let below = children.get(*rev).is_some_and(|cs| {
                cs.iter()
                    .any(|c| live_below.get(c).copied().unwrap_or(false))
            });
            live_below.insert(rev, own || below);
        }
        let mut groups: Vec<Vec<Rev>> = Vec::new();
        let roots: Vec<&Rev> = self
            .nodes
            .iter()
            .filter(|(_, n)| {
                n.parent
                    .as_ref()
                    .is_none_or(|p| !self.nodes.contains_key(p))
            })
            .map(|(r, _)| r)
            .collect();
        let mut forks: Vec<Vec<&Rev>> = vec![roots];
        forks.extend(children.values().cloned());
        for kids in forks {
            let mut live: Vec<Rev> = kids
                .into_iter()
                .filter(|c| live_below.get(c).copied().unwrap_or(false))
                .cloned()
                .collect();
            if live.len() >= 2 {
                live.sort();
                groups.push(live);
            }
        }
        groups.sort();
        groups
    }

    /// Union of two trees: every revision of either.
    pub fn merge(&mut self, other: &RevTree) {
        for (rev, node) in &other.nodes {
            self.insert(
                rev.clone(),
                node.parent.clone(),
                node.deleted,
                node.body.clone(),
            );
        }
    }

    /// Applies the two size rules of the module documentation: closes
    /// losing live leaves the winner subsumes, drops revisions farther
    /// than `revs_limit` from every leaf, and drops non-leaves' bodies.
    pub fn normalize(&mut self, revs_limit: usize) {
        self.clear_subsumed();
        self.stem(revs_limit.max(1));
        let leaves: BTreeSet<Rev> = self.leaves().into_iter().cloned().collect();
        for (rev, node) in self.nodes.iter_mut() {
            if !leaves.contains(rev) {
                node.body = None;
            }
        }
    }

    fn clear_subsumed(&mut self) {
        let Some(winner) = self.winner().cloned() else {
            return;
        };
        let Some(Some(won)) = self
            .nodes
            .get(&winner)
            .filter(|n| !n.deleted)
            .map(|n| n.body.clone())
        else {
            return;
        };
        let closed: Vec<Rev> = self
            .losing_leaves()
            .into_iter()
            .filter(|r| {
                self.nodes
                    .get(*r)
                    .and_then(|n| n.body.as_ref())
                    .is_some_and(|b| b.iter().all(|(k, v)| won.get(k) == Some(v)))
            })
            .cloned()
            .collect();
        for loser in closed {
            let rev = Rev::child(Some(&loser), true, &Body::new());
            self.insert(rev, Some(loser), true, Some(Body::new()));
        }
    }

    fn stem(&mut self, limit: usize) {
        let mut keep: BTreeSet<Rev> = BTreeSet::new();
        for leaf in self.leaves() {
            let mut at = Some(leaf);
            for _ in 0..limit {
                let Some(rev) = at else { break };
                keep.insert(rev.clone());
                at = self.nodes.get(rev).and_then(|n| n.parent.as_ref());
            }
        }
        self.nodes.retain(|rev, _| keep.contains(rev));
    }

    /// The winner's body with `_id` and `_rev`, if the document is live.
    pub fn winner_document(&self, id: &str) -> Option<Value> {
        let winner = self.winner()?;
        let node = self.nodes.get(winner).filter(|n| !n.deleted)?;
        Some(document(id, winner, node.body.as_ref()))
    }

    /// Creates the document: fails if it is live; after a deletion, the new
    /// revision continues the deleted winner's branch.
    pub fn create(&self, body: Body, revs_limit: usize) -> Result<Edited, DocError> {
        if self.is_live() {
            return Err(DocError::AlreadyExists(
                "the object already exists: read it and update it with its _rev, or use upsert"
                    .into(),
            ));
        }
        let parent = self.winner().cloned();
        Ok(self.extend(parent, false, body, revs_limit))
    }

    /// Updates the leaf `rev`. A revision that is not a live leaf is a
    /// conflict, unless `keep_both`: then the edit starts a new branch
    /// from it, and the two show in [`RevTree::conflict_groups`].
    pub fn update(
        &self,
        rev: &Rev,
        body: Body,
        keep_both: bool,
        revs_limit: usize,
    ) -> Result<Edited, DocError> {
        if !self.is_live() {
            return Err(DocError::NotFound(
                "no such document (it was never created, or it was deleted)".into(),
            ));
        }
        if !self.live_leaves().contains(&rev) && (!keep_both || !self.nodes.contains_key(rev)) {
            return Err(self.conflict(rev));
        }
        Ok(self.extend(Some(rev.clone()), false, body, revs_limit))
    }

    /// Writes `body` on top of the winner, or creates the document.
    pub fn upsert(&self, body: Body, revs_limit: usize) -> Edited {
        let parent = self.winner().cloned();
        self.extend(parent, false, body, revs_limit)
    }

    /// Deletes the leaf `rev` (which must be live). If other live leaves
    /// remain, the greatest of them becomes the winner.
    pub fn delete(&self, rev: &Rev, revs_limit: usize) -> Result<Edited, DocError> {
        if !self.is_live() {
            return Err(DocError::NotFound(
                "no such document (it was never created, or it was deleted)".into(),
            ));
        }
        if !self.live_leaves().contains(&rev) {
            return Err(self.conflict(rev));
        }
        Ok(self.extend(Some(rev.clone()), true, Body::new(), revs_limit))
    }

    /// Settles a conflict: every live leaf but `winner` is deleted.
    pub fn resolve(&self, winner: &Rev, revs_limit: usize) -> Result<Edited, DocError> {
        if !self.is_live() {
            return Err(DocError::NotFound(
                "no such document (it was never created, or it was deleted)".into(),
            ));
        }
        let live: Vec<Rev> = self.live_leaves().into_iter().cloned().collect();
        if !live.contains(winner) {
            return Err(self.conflict(winner));
        }
        let mut tree = self.clone();
        for loser in live.iter().filter(|r| *r != winner) {
            let rev = Rev::child(Some(loser), true, &Body::new());
            tree.insert(rev, Some(loser.clone()), true, Some(Body::new()));
        }
        tree.normalize(revs_limit);
        Ok(Edited {
            tree,
            rev: winner.clone(),
        })
    }

    fn extend(&self, parent: Option<Rev>, deleted: bool, body: Body, revs_limit: usize) -> Edited {
        let rev = Rev::child(parent.as_ref(), deleted, &body);
        let mut tree = self.clone();
        tree.insert(rev.clone(), parent, deleted, Some(body));
        tree.normalize(revs_limit);
        Edited { tree, rev }
    }

    fn conflict(&self, rev: &Rev) -> DocError {
        let current: Vec<String> = self.live_leaves().iter().map(|r| r.to_string()).collect();
        DocError::Conflict(format!(
            "document update conflict: {rev} is not a current revision (current: {}); read the document again, or pass keep_both to keep both edits",
            current.join(", ")
        ))
    }

    /// The tree as bytes (JSON, versioned).
    pub fn encode(&self) -> Vec<u8> {
        let revs: Vec<Value> = self
            .nodes
            .iter()
            .map(|(rev, n)| {
                Value::Array(vec![
                    Value::String(rev.to_string()),
                    n.parent
                        .as_ref()
                        .map_or(Value::Null, |p| Value::String(p.to_string())),
                    Value::Bool(n.deleted),
                    n.body.clone().map_or(Value::Null, Value::Object),
                ])
            })
            .collect();
        serde_json::json!({"v": 1, "revs": revs})
            .to_string()
            .into_bytes()
    }

    /// Reads what [`RevTree::encode`] wrote; refuses anything else.
    pub fn decode(bytes: &[u8]) -> Result<RevTree, DocError> {
        let bad =
            |why: &str| DocError::Invalid(format!("a stored revision tree is damaged: {why}"));
        let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(&e.to_string()))?;
        if v.get("v") != Some(&Value::from(1)) {
            return Err(bad("unknown version"));
        }
        let revs = v
            .get("revs")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no revs"))?;
        let mut tree = RevTree::default();
        for r in revs {
            let parts = r
                .as_array()
                .filter(|a| a.len() == 4)
                .ok_or_else(|| bad("a revision is not a 4-array"))?;
            let rev: Rev = parts[0]
                .as_str()
                .ok_or_else(|| bad("rev"))?
                .parse()
                .map_err(|_| bad("rev"))?;
            let parent = match &parts[1] {
                Value::Null => None,
                Value::String(p) => Some(p.parse().map_err(|_| bad("parent"))?),
                _ => return Err(bad("parent")),
            };
            let deleted = parts[2].as_bool().ok_or_else(|| bad("deleted"))?;
            let body = match &parts[3] {
                Value::Null => None,
                Value::Object(m) => Some(m.clone()),
                _ => return Err(bad("body")),
            };
            tree.insert(rev, parent, deleted, body);
        }
        Ok(tree)
    }
}

/// A document as callers see it: the fields with `_id` and `_rev`.
pub fn document(id: &str, rev: &Rev, body: Option<&Body>) -> Value {
    let mut out = Map::new();
    out.insert("_id".into(), Value::String(id.to_string()));
    out.insert("_rev".into(), Value::String(rev.to_string()));
    if let Some(b) = body {
        for (k, v) in b {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}
