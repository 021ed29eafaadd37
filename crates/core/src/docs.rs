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

use std::collections::{BTreeMap, BTreeSet, HashMap};
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

/// What a tree keeps beside each revision id so that its questions are
/// answered without walking the tree.
#[derive(Debug, Clone, Default)]
struct Links {
    /// The children present, counted by their distance to their nearest
    /// leaf: `(distance, count)`, sorted by distance.
    kids: Vec<(u32, u32)>,
    /// The revision is known to have a child even while none is present
    /// (a record that arrived before its child's).
    known_child: bool,
    /// Distance to the nearest leaf below (0 for a leaf), while present.
    near: u32,
    /// Where it is filed in `probes` and `sums`, while it is a live leaf
    /// with a body.
    probe: Option<(u64, u64)>,
}

impl Links {
    fn near(&self) -> u32 {
        match self.kids.first() {
            Some((n, _)) => n.saturating_add(1),
            None => u32::from(self.known_child),
        }
    }

    fn add_kid(&mut self, near: u32) {
        match self.kids.binary_search_by_key(&near, |(n, _)| *n) {
            Ok(i) => self.kids[i].1 += 1,
            Err(i) => self.kids.insert(i, (near, 1)),
        }
    }

    fn remove_kid(&mut self, near: u32) {
        if let Ok(i) = self.kids.binary_search_by_key(&near, |(n, _)| *n) {
            self.kids[i].1 -= 1;
            if self.kids[i].1 == 0 {
                self.kids.remove(i);
            }
        }
    }
}

/// The probe of an empty body: any live winner subsumes it.
const EMPTY_PROBE: u64 = 0;

/// The probe of a body: a hash of its smallest field and that field's
/// value. A body can only be subsumed by a winner that has that field with
/// that value, so the candidates for self-clearing are found by probing
/// with each of the winner's fields instead of scanning every leaf.
fn probe_of(body: &Body) -> u64 {
    match body.iter().min_by(|a, b| a.0.cmp(b.0)) {
        None => EMPTY_PROBE,
        Some((k, v)) => probe_pair(k, v),
    }
}

/// The sum (wrapping) of [`probe_pair`] over every field: the same for
/// equal bodies, and computable for every subset of a winner's fields.
fn sum_of(body: &Body) -> u64 {
    body.iter()
        .fold(0u64, |acc, (k, v)| acc.wrapping_add(probe_pair(k, v)))
}

/// Winners with at most this many fields find the losers they subsume by
/// looking up the sum of each subset of their fields (2^fields lookups,
/// whatever the number of losers); wider ones by the losers' probes.
const SUBSET_FIELDS: usize = 8;

fn probe_pair(k: &str, v: &Value) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    k.hash(&mut h);
    canonical_json(v).hash(&mut h);
    h.finish().max(1)
}

/// A document's revision tree.
///
/// Beside the revisions it keeps, up to date on every insert and removal,
/// the children of each revision counted by their distance to a leaf, the
/// ordered sets of live and deleted leaves, and the live leaves filed by a
/// probe of their body. So:
///
/// - [`RevTree::winner`] and [`RevTree::is_live`] are O(log n);
///   [`RevTree::live_leaves`] and [`RevTree::losing_leaves`] are O(leaves);
///   a page of conflicts ([`RevTree::conflicts_page`]) is O(log n + page).
/// - An insert or removal costs O(log n) per ancestor whose distance to its
///   nearest leaf changes: at most `revs_limit` + 1 of them in a
///   normalized tree.
/// - [`RevTree::normalize`] after an edit looks only at the revisions the
///   edit touched (a full pass the first time, or with a new limit). Its
///   self-clearing step finds the losers the winner subsumes without
///   scanning them: for a winner of at most 8 fields, by looking up the
///   hash of each subset of its fields among the losers' body hashes
///   (at most 256 lookups, whatever the number of losers); for a wider
///   winner, among the losers whose smallest field it has with the same
///   value (O(1) when bodies differ, O(losing leaves) in the worst case,
///   when every loser shares its smallest field and value with a winner
///   of more than 8 fields). Each candidate is then checked field by
///   field.
/// - [`RevTree::conflict_groups`] walks the whole tree: O(n log n).
#[derive(Debug, Clone, Default)]
pub struct RevTree {
    nodes: BTreeMap<Rev, RevNode>,
    /// For every revision present or with a child present.
    links: HashMap<Rev, Links>,
    /// Live leaves, by id.
    live: BTreeSet<Rev>,
    /// Deleted leaves, by id.
    dead: BTreeSet<Rev>,
    /// Live leaves with a body, by [`probe_of`] their body.
    /// (A small vector per probe: most probes file one leaf.)
    probes: HashMap<u64, Vec<Rev>>,
    /// Live leaves with a body, by [`sum_of`] their body.
    sums: HashMap<u64, Vec<Rev>>,
    /// The limit of the last [`RevTree::normalize`], if nothing it did not
    /// see has happened since except what `dirty` lists.
    clean: Option<usize>,
    /// Revisions inserted, or whose distance to a leaf grew, since the
    /// last normalize (only while `clean`).
    dirty: Vec<Rev>,
    /// Revisions whose stored record changed, while journaling.
    journal: Option<BTreeSet<Rev>>,
}

impl PartialEq for RevTree {
    fn eq(&self, other: &Self) -> bool {
        self.nodes == other.nodes
            && self
                .nodes
                .keys()
                .all(|r| self.known_child(r) == other.known_child(r))
    }
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

    /// Adds a revision (a no-op if it is there, except that a body it
    /// lacked is taken).
    pub fn insert(&mut self, rev: Rev, parent: Option<Rev>, deleted: bool, body: Option<Body>) {
        self.insert_record(rev, parent, deleted, body, false);
    }

    /// [`RevTree::insert`], also recording whether the revision is known
    /// to have a child (so that it is not taken for a leaf before its
    /// child arrives). A known child counts as one edit below it.
    pub fn insert_record(
        &mut self,
        rev: Rev,
        parent: Option<Rev>,
        deleted: bool,
        body: Option<Body>,
        known_child: bool,
    ) {
        // A parent is an earlier edit: one with an `N` not below the
        // revision's cannot be (and would make a cycle), so it is ignored.
        let parent = parent.filter(|p| p.n < rev.n);
        if let Some(node) = self.nodes.get_mut(&rev) {
            let mut changed = false;
            if node.body.is_none() && body.is_some() {
                node.body = body;
                changed = true;
            }
            let links = self.links.entry(rev.clone()).or_default();
            if known_child && !links.known_child {
                links.known_child = true;
                changed = true;
            }
            if changed {
                self.note(&rev);
                self.mark_dirty(&rev);
                self.settle(&rev);
            }
            return;
        }
        self.nodes.insert(
            rev.clone(),
            RevNode {
                parent: parent.clone(),
                deleted,
                body,
            },
        );
        let links = self.links.entry(rev.clone()).or_default();
        links.known_child = known_child;
        let near = links.near();
        links.near = near;
        self.refile(&rev);
        self.note(&rev);
        self.mark_dirty(&rev);
        if let Some(p) = parent {
            self.links.entry(p.clone()).or_default().add_kid(near);
            self.settle(&p);
        }
    }

    /// Removes a revision (its children, if any, become roots).
    pub fn remove(&mut self, rev: &Rev) -> Option<RevNode> {
        let node = self.nodes.remove(rev)?;
        self.live.remove(rev);
        self.dead.remove(rev);
        let mut near = 0;
        let mut drop_links = false;
        if let Some(links) = self.links.get_mut(rev) {
            near = links.near;
            links.known_child = false;
            links.near = 0;
            if let Some((probe, sum)) = links.probe.take() {
                unfile(&mut self.probes, probe, rev);
                unfile(&mut self.sums, sum, rev);
            }
            drop_links = links.kids.is_empty();
        }
        if drop_links {
            self.links.remove(rev);
        }
        self.note(rev);
        if let Some(p) = &node.parent {
            let mut empty = false;
            if let Some(pl) = self.links.get_mut(p) {
                pl.remove_kid(near);
                empty = pl.kids.is_empty();
            }
            if self.nodes.contains_key(p) {
                self.settle(p);
            } else if empty {
                self.links.remove(p);
            }
        }
        Some(node)
    }

    /// True when `rev` is kept and known to have a child (present or not).
    pub fn has_child(&self, rev: &Rev) -> bool {
        self.nodes.contains_key(rev)
            && self
                .links
                .get(rev)
                .is_some_and(|l| !l.kids.is_empty() || l.known_child)
    }

    fn known_child(&self, rev: &Rev) -> bool {
        self.links.get(rev).is_some_and(|l| l.known_child)
    }

    fn is_leaf(&self, rev: &Rev) -> bool {
        self.nodes.contains_key(rev)
            && self
                .links
                .get(rev)
                .is_none_or(|l| l.kids.is_empty() && !l.known_child)
    }

    /// Recomputes `rev`'s distance to a leaf and carries a change up to
    /// its ancestors, refiling every revision it passes.
    fn settle(&mut self, start: &Rev) {
        let mut at = start.clone();
        while let Some(parent) = self.nodes.get(&at).map(|n| n.parent.clone()) {
            let links = self.links.entry(at.clone()).or_default();
            let (old, new) = (links.near, links.near());
            links.near = new;
            self.refile(&at);
            if old == new {
                break;
            }
            if (old == 0) != (new == 0) {
                // It became a parent (or a leaf again): its record changes.
                self.note(&at);
            }
            if new > old {
                self.mark_dirty(&at);
            }
            let Some(p) = parent else { break };
            let pl = self.links.entry(p.clone()).or_default();
            pl.remove_kid(old);
            pl.add_kid(new);
            at = p;
        }
    }

    /// Puts `rev` in the right leaf set and probe slot for what it is now.
    fn refile(&mut self, rev: &Rev) {
        let leaf = self.is_leaf(rev);
        let Some(node) = self.nodes.get(rev) else {
            return;
        };
        let (in_live, in_dead) = (self.live.contains(rev), self.dead.contains(rev));
        let (want_live, want_dead) = (leaf && !node.deleted, leaf && node.deleted);
        if in_live != want_live {
            if want_live {
                self.live.insert(rev.clone());
            } else {
                self.live.remove(rev);
            }
        }
        if in_dead != want_dead {
            if want_dead {
                self.dead.insert(rev.clone());
            } else {
                self.dead.remove(rev);
            }
        }
        let links = self.links.entry(rev.clone()).or_default();
        let want = if want_live {
            node.body.as_ref().map(|b| (probe_of(b), sum_of(b)))
        } else {
            None
        };
        if links.probe != want {
            if let Some((probe, sum)) = links.probe.take() {
                unfile(&mut self.probes, probe, rev);
                unfile(&mut self.sums, sum, rev);
            }
            if let Some((probe, sum)) = want {
                self.probes.entry(probe).or_default().push(rev.clone());
                self.sums.entry(sum).or_default().push(rev.clone());
            }
            links.probe = want;
        }
    }

    fn mark_dirty(&mut self, rev: &Rev) {
        if self.clean.is_some() {
            self.dirty.push(rev.clone());
            if self.dirty.len() > 2 * self.nodes.len() + 1024 {
                self.clean = None;
                self.dirty.clear();
            }
        }
    }

    fn note(&mut self, rev: &Rev) {
        if let Some(j) = self.journal.as_mut() {
            j.insert(rev.clone());
        }
    }

    /// Starts recording which revisions' records change (see
    /// [`RevTree::take_journal`]).
    pub fn start_journal(&mut self) {
        self.journal = Some(BTreeSet::new());
    }

    /// The revisions inserted, removed, or whose body or "has a child"
    /// state changed since [`RevTree::start_journal`]; stops recording.
    pub fn take_journal(&mut self) -> BTreeSet<Rev> {
        self.journal.take().unwrap_or_default()
    }

    /// The current revisions: those with no child, in id order.
    pub fn leaves(&self) -> Vec<&Rev> {
        let mut all: Vec<&Rev> = self.live.iter().chain(self.dead.iter()).collect();
        all.sort();
        all
    }

    /// The live leaves, winner first.
    pub fn live_leaves(&self) -> Vec<&Rev> {
        self.live.iter().rev().collect()
    }

    /// True when `rev` is a live leaf (a revision an update may name).
    pub fn is_live_leaf(&self, rev: &Rev) -> bool {
        self.live.contains(rev)
    }

    /// Number of live leaves.
    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    /// The winning leaf: live before deleted, then the larger `N`, then
    /// the larger hash.
    pub fn winner(&self) -> Option<&Rev> {
        self.live.last().or_else(|| self.dead.last())
    }

    /// True when the winner is live (the document exists).
    pub fn is_live(&self) -> bool {
        !self.live.is_empty()
    }

    /// The losing live leaves (CouchDB's `_conflicts`), greatest first.
    pub fn losing_leaves(&self) -> Vec<&Rev> {
        self.live.iter().rev().skip(1).collect()
    }

    /// The losing live leaves that [`RevTree::normalize`] would close
    /// (their every field is in the live winner's body with an equal
    /// value), in id order. Costs what self-clearing costs (see the type's
    /// documentation).
    pub fn subsumed_losers(&self) -> BTreeSet<Rev> {
        let mut out = BTreeSet::new();
        let Some(winner) = self.live.last() else {
            return out;
        };
        let Some(won) = self.nodes.get(winner).and_then(|n| n.body.as_ref()) else {
            return out;
        };
        let mut candidates: BTreeSet<&Rev> = BTreeSet::new();
        if won.len() <= SUBSET_FIELDS {
            // A loser is subsumed only if its body is a subset of the
            // winner's: look each subset's sum up.
            let pairs: Vec<u64> = won.iter().map(|(k, v)| probe_pair(k, v)).collect();
            let mut sums = vec![0u64; 1 << pairs.len()];
            for mask in 1..sums.len() {
                let low = mask.trailing_zeros() as usize;
                sums[mask] = sums[mask & (mask - 1)].wrapping_add(pairs[low]);
            }
            for sum in sums {
                if let Some(set) = self.sums.get(&sum) {
                    candidates.extend(set.iter());
                }
            }
        } else {
            if let Some(set) = self.probes.get(&EMPTY_PROBE) {
                candidates.extend(set.iter());
            }
            for (k, v) in won {
                if let Some(set) = self.probes.get(&probe_pair(k, v)) {
                    candidates.extend(set.iter());
                }
            }
        }
        for r in candidates {
            if r == winner {
                continue;
            }
            let subsumed = self
                .nodes
                .get(r)
                .and_then(|n| n.body.as_ref())
                .is_some_and(|b| b.iter().all(|(k, v)| won.get(k) == Some(v)));
            if subsumed {
                out.insert(r.clone());
            }
        }
        out
    }

    /// A page of the losing live leaves the normalized tree keeps
    /// (`_conflicts`), greatest first: at most `limit` of them, starting
    /// after `after` (exclusive) when given; and whether more follow.
    /// O(log n + limit + what [`RevTree::subsumed_losers`] costs).
    pub fn conflicts_page(&self, after: Option<&Rev>, limit: usize) -> (Vec<Rev>, bool) {
        let closed = self.subsumed_losers();
        let winner = self.live.last();
        let mut out = Vec::new();
        let below: Box<dyn Iterator<Item = &Rev>> = match after {
            Some(a) => Box::new(self.live.range(..a).rev()),
            None => Box::new(self.live.iter().rev()),
        };
        for r in below {
            if Some(r) == winner || closed.contains(r) {
                continue;
            }
            if out.len() == limit {
                return (out, true);
            }
            out.push(r.clone());
        }
        (out, false)
    }

    /// True when the tree is as [`RevTree::normalize`] with `revs_limit`
    /// would leave it, as far as its bookkeeping knows (false means
    /// "maybe not").
    pub fn is_normalized(&self, revs_limit: usize) -> bool {
        self.clean == Some(revs_limit.max(1))
            && self.dirty.is_empty()
            && self.subsumed_losers().is_empty()
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

    /// The groups of revisions that collided: for every revision (or the
    /// start of history) with two or more children whose branches still
    /// hold a live leaf, those children, sorted. Groups come in order of
    /// their revisions' `N`, then ids. Empty when there is no conflict.
    /// Walks the whole tree.
    pub fn conflict_groups(&self) -> Vec<Vec<Rev>> {
        let children = self.children();
        let mut live_below: BTreeMap<&Rev, bool> = BTreeMap::new();
        // Revisions sorted by N descending: children before parents.
        let mut order: Vec<&Rev> = self.nodes.keys().collect();
        order.sort_by(|a, b| b.cmp(a));
        for rev in &order {
            let own = self.live.contains(*rev);
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
            self.insert_record(
                rev.clone(),
                node.parent.clone(),
                node.deleted,
                node.body.clone(),
                other.known_child(rev),
            );
        }
    }

    /// Applies the two size rules of the module documentation: closes
    /// losing live leaves the winner subsumes, drops revisions farther
    /// than `revs_limit` from every leaf, and drops non-leaves' bodies.
    ///
    /// The first call (or one with a different limit) looks at every
    /// revision; later ones look only at what changed since, plus the
    /// self-clearing candidates (see the type's documentation).
    pub fn normalize(&mut self, revs_limit: usize) {
        let limit = revs_limit.max(1);
        self.clear_subsumed();
        let candidates: Vec<Rev> = if self.clean == Some(limit) {
            let mut d = std::mem::take(&mut self.dirty);
            d.sort();
            d.dedup();
            d
        } else {
            self.nodes.keys().cloned().collect()
        };
        let far: Vec<Rev> = candidates
            .iter()
            .filter(|r| {
                self.nodes.contains_key(*r)
                    && self.links.get(*r).is_some_and(|l| l.near as usize >= limit)
            })
            .cloned()
            .collect();
        for r in &far {
            self.remove(r);
        }
        for r in &candidates {
            if self.is_leaf(r) {
                continue;
            }
            if let Some(node) = self.nodes.get_mut(r).filter(|n| n.body.is_some()) {
                node.body = None;
                self.note(r);
            }
        }
        self.clean = Some(limit);
        self.dirty.clear();
    }

    fn clear_subsumed(&mut self) {
        for loser in self.subsumed_losers() {
            let rev = Rev::child(Some(&loser), true, &Body::new());
            self.insert(rev, Some(loser), true, Some(Body::new()));
        }
    }

    /// The winner's body with `_id` and `_rev`, if the document is live.
    pub fn winner_document(&self, id: &str) -> Option<Value> {
        let winner = self.live.last()?;
        let node = self.nodes.get(winner)?;
        Some(document(id, winner, node.body.as_ref()))
    }

    /// Creates the document: fails if it is live; after a deletion, the new
    /// revision continues the deleted winner's branch.
    pub fn create(&self, body: Body, revs_limit: usize) -> Result<Edited, DocError> {
        self.edited(|t| t.create_in_place(body, revs_limit))
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
        self.edited(|t| t.update_in_place(rev, body, keep_both, revs_limit))
    }

    /// Writes `body` on top of the winner, or creates the document.
    pub fn upsert(&self, body: Body, revs_limit: usize) -> Edited {
        let mut tree = self.clone();
        let rev = tree.upsert_in_place(body, revs_limit);
        Edited { tree, rev }
    }

    /// Deletes the leaf `rev` (which must be live). If other live leaves
    /// remain, the greatest of them becomes the winner.
    pub fn delete(&self, rev: &Rev, revs_limit: usize) -> Result<Edited, DocError> {
        self.edited(|t| t.delete_in_place(rev, revs_limit))
    }

    /// Settles a conflict: every live leaf but `winner` is deleted.
    pub fn resolve(&self, winner: &Rev, revs_limit: usize) -> Result<Edited, DocError> {
        self.edited(|t| t.resolve_in_place(winner, revs_limit))
    }

    fn edited<F>(&self, f: F) -> Result<Edited, DocError>
    where
        F: FnOnce(&mut RevTree) -> Result<Rev, DocError>,
    {
        let mut tree = self.clone();
        let rev = f(&mut tree)?;
        Ok(Edited { tree, rev })
    }

    /// [`RevTree::create`] on this tree, in place: O(log n) plus what
    /// [`RevTree::normalize`] costs. On an error nothing changed.
    pub fn create_in_place(&mut self, body: Body, revs_limit: usize) -> Result<Rev, DocError> {
        if self.is_live() {
            return Err(DocError::AlreadyExists(
                "the object already exists: read it and update it with its _rev, or use upsert"
                    .into(),
            ));
        }
        let parent = self.winner().cloned();
        Ok(self.extend(parent, false, body, revs_limit))
    }

    /// [`RevTree::update`] in place. On an error nothing changed.
    pub fn update_in_place(
        &mut self,
        rev: &Rev,
        body: Body,
        keep_both: bool,
        revs_limit: usize,
    ) -> Result<Rev, DocError> {
        self.must_be_live()?;
        if !self.is_live_leaf(rev) && (!keep_both || !self.nodes.contains_key(rev)) {
            return Err(self.conflict(rev));
        }
        Ok(self.extend(Some(rev.clone()), false, body, revs_limit))
    }

    /// [`RevTree::upsert`] in place.
    pub fn upsert_in_place(&mut self, body: Body, revs_limit: usize) -> Rev {
        let parent = self.winner().cloned();
        self.extend(parent, false, body, revs_limit)
    }

    /// [`RevTree::delete`] in place. On an error nothing changed.
    pub fn delete_in_place(&mut self, rev: &Rev, revs_limit: usize) -> Result<Rev, DocError> {
        self.must_be_live()?;
        if !self.is_live_leaf(rev) {
            return Err(self.conflict(rev));
        }
        Ok(self.extend(Some(rev.clone()), true, Body::new(), revs_limit))
    }

    /// [`RevTree::resolve`] in place: O(live leaves). On an error nothing
    /// changed.
    pub fn resolve_in_place(&mut self, winner: &Rev, revs_limit: usize) -> Result<Rev, DocError> {
        self.must_be_live()?;
        if !self.is_live_leaf(winner) {
            return Err(self.conflict(winner));
        }
        let losers: Vec<Rev> = self.live.iter().filter(|r| *r != winner).cloned().collect();
        for loser in losers {
            let rev = Rev::child(Some(&loser), true, &Body::new());
            self.insert(rev, Some(loser), true, Some(Body::new()));
        }
        self.normalize(revs_limit);
        Ok(winner.clone())
    }

    fn must_be_live(&self) -> Result<(), DocError> {
        if self.is_live() {
            Ok(())
        } else {
            Err(DocError::NotFound(
                "no such document (it was never created, or it was deleted)".into(),
            ))
        }
    }

    fn extend(&mut self, parent: Option<Rev>, deleted: bool, body: Body, revs_limit: usize) -> Rev {
        let rev = Rev::child(parent.as_ref(), deleted, &body);
        self.insert(rev.clone(), parent, deleted, Some(body));
        self.normalize(revs_limit);
        rev
    }

    fn conflict(&self, rev: &Rev) -> DocError {
        const SHOWN: usize = 20;
        let mut current: Vec<String> = self
            .live
            .iter()
            .rev()
            .take(SHOWN)
            .map(|r| r.to_string())
            .collect();
        if self.live.len() > SHOWN {
            current.push(format!("and {} more", self.live.len() - SHOWN));
        }
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

fn unfile(probes: &mut HashMap<u64, Vec<Rev>>, probe: u64, rev: &Rev) {
    if let Some(set) = probes.get_mut(&probe) {
        if let Some(at) = set.iter().position(|r| r == rev) {
            set.swap_remove(at);
        }
        if set.is_empty() {
            probes.remove(&probe);
        }
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
