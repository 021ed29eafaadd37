//! Node identity: telling a copy of this node's data directory (a restored
//! backup, a cloned machine) from this node, by the dots it writes.
//!
//! The actor of a dot is the node id, and one node makes its dots in
//! order under the writer lock, with hybrid timestamps that never go
//! backwards. So two values of one key under dots of the same node are
//! impossible for one directory when they share a dot but differ, or when
//! the later dot carries the earlier timestamp. Such a pair means two
//! directories wrote under one node id: one is a copy of the other.
//!
//! A merge that finds this for this node's own id skips the object and
//! records an [`IdentityConflict`] (the original keeps its data as it is;
//! the copy must take a new identity). A merge that finds it for an id
//! this directory had before `chorus init --new-identity` gives the local
//! values under the old id that the peer does not hold a new dot of this
//! node's current id: the copy's writes made while it still had the old
//! id stay, as siblings of the original's.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chorus_core::object::{Hlc, Object, Value};
use chorus_core::{FullPrefix, NodeId};
use serde::{Deserialize, Serialize};

use crate::format::Origin;
use crate::index::Snapshot;

/// Where a directory that took a new identity records its former ids:
/// one key per node id (hex), holding [`Former`] as JSON. Replicated like
/// every reserved prefix, so every node can tell whose copy a node was.
pub const IDENTITIES: &str = "$cluster/identities";

/// The most former ids one node keeps (older ones are dropped first).
pub(crate) const FORMER_MAX: usize = 16;

/// The most conflicts a store handle keeps in full (later ones are
/// counted only).
pub const CONFLICTS_KEPT: usize = 16;

/// The record under [`IDENTITIES`]: the ids the node had before.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Former {
    /// Former node ids (hex), oldest first.
    pub former: Vec<String>,
}

/// Evidence that another directory writes under this node's id: an object
/// from a peer held a value under one of this node's dots that this node
/// never wrote. The object was not merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConflict {
    /// Who sent the object (the origin of the merge).
    pub origin: Origin,
    /// Where the key lives.
    pub full_prefix: FullPrefix,
    /// The key.
    pub key: Vec<u8>,
}

/// The conflicts a store handle saw: a count, and the first
/// [`CONFLICTS_KEPT`] in full.
#[derive(Debug, Default)]
pub(crate) struct Conflicts {
    count: AtomicU64,
    first: Mutex<Vec<IdentityConflict>>,
}

impl Conflicts {
    pub(crate) fn record(&self, conflict: IdentityConflict) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut first = self
            .first
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if first.len() < CONFLICTS_KEPT {
            first.push(conflict);
        }
    }

    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub(crate) fn first(&self) -> Vec<IdentityConflict> {
        self.first
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The ids this node had before, as recorded in `snap` (empty when none or
/// unreadable).
pub(crate) fn former_ids(snap: &Snapshot, me: NodeId) -> Vec<NodeId> {
    let Ok(fp) = FullPrefix::parse(IDENTITIES) else {
        return Vec::new();
    };
    let Some(bytes) = snap.get(&fp, me.to_string().as_bytes()) else {
        return Vec::new();
    };
    let Ok(object) = Object::decode(&bytes) else {
        return Vec::new();
    };
    let Some(record) = object
        .lww_value()
        .and_then(|v| v.bytes())
        .and_then(|b| serde_json::from_slice::<Former>(b).ok())
    else {
        return Vec::new();
    };
    record
        .former
        .iter()
        .filter_map(|id| NodeId::parse_hex(id))
        .take(FORMER_MAX)
        .collect()
}

/// The values of `object` under dots of `actor`, with their counters.
fn dots(object: &Object, actor: NodeId) -> Vec<(u64, &Value)> {
    object
        .clock()
        .entries()
        .iter()
        .filter(|e| e.id == actor)
        .flat_map(|e| {
            e.values
                .iter()
                .enumerate()
                .map(move |(i, v)| (e.counter.saturating_sub(i as u64), v))
        })
        .collect()
}

/// Whether one directory could not have written both values: the same dot
/// with different values, or the later dot with the earlier timestamp.
fn impossible(a: (u64, &Value), b: (u64, &Value)) -> bool {
    let ((da, va), (db, vb)) = (a, b);
    (da == db && va != vb)
        || (da < db && va.timestamp > vb.timestamp)
        || (da > db && va.timestamp < vb.timestamp)
}

/// Whether `remote` and `local` hold values under dots of `actor` that one
/// directory could not both have written.
pub(crate) fn conflicting(actor: NodeId, local: &Object, remote: &Object) -> bool {
    let mine = dots(local, actor);
    if mine.is_empty() {
        return false;
    }
    let theirs = dots(remote, actor);
    mine.iter()
        .any(|l| theirs.iter().any(|r| impossible(*l, *r)))
}

/// Merges `remote` into `local` when they conflict under `former`, an id
/// this node had before: the local values under `former` that `remote`
/// does not hold as they are get new dots of `me` (with the commit's
/// timestamp `ts`), so they stay as siblings of the values the original
/// wrote under that id, which `remote` brings.
pub(crate) fn remint(
    local: &Object,
    remote: &Object,
    former: NodeId,
    me: NodeId,
    ts: Hlc,
) -> Result<Object, chorus_core::object::ObjectError> {
    let theirs = dots(remote, former);
    let mut moved: Vec<Value> = dots(local, former)
        .into_iter()
        .filter(|(d, v)| !theirs.iter().any(|(rd, rv)| rd == d && rv == v))
        .map(|(_, v)| v.clone())
        .collect();
    moved.sort();
    let clock = local.clock();
    let rest = chorus_core::dvvset::Dvvs::from_parts(
        clock
            .entries()
            .iter()
            .filter(|e| e.id != former)
            .cloned()
            .collect(),
        clock.anonymous().to_vec(),
    );
    let mut merged = Object::from_clock(rest.sync(remote.clock()))?;
    for mut value in moved {
        value.node = me;
        value.timestamp = ts;
        merged = Object::modify(Some(&merged), &Object::empty_context(), value, me);
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> NodeId {
        NodeId::from_bytes([b; 16])
    }

    fn write(current: Option<&Object>, bytes: &[u8], ts: u64, node: NodeId) -> Object {
        let context = current.map(Object::context).unwrap_or_default();
        Object::modify(current, &context, Value::data(bytes, Hlc(ts), node), node)
    }

    fn contents(o: &Object) -> Vec<Vec<u8>> {
        let mut all: Vec<Vec<u8>> = o
            .values()
            .iter()
            .filter_map(|v| v.bytes().map(<[u8]>::to_vec))
            .collect();
        all.sort();
        all
    }

    #[test]
    fn one_directorys_history_never_conflicts() {
        let x = id(1);
        let base = write(None, b"v1", 10, x);
        let later = write(Some(&base), b"v2", 20, x);
        assert!(!conflicting(x, &later, &base));
        assert!(!conflicting(x, &base, &later));
        assert!(!conflicting(x, &later, &later));
        // Another node's concurrent write is no evidence either.
        let other = write(Some(&base), b"w", 15, id(2));
        assert!(!conflicting(x, &later, &other));
    }

    #[test]
    fn a_copy_writing_the_same_dot_or_an_older_dot_later_conflicts() {
        let x = id(1);
        let base = write(None, b"v1", 10, x);
        // Dots are numbered from the hybrid timestamp, so the two copies
        // share a dot when they write at the same moment.
        let a = write(Some(&base), b"from-a", 20, x);
        let b = write(Some(&base), b"from-b", 20, x);
        assert!(conflicting(x, &a, &b));
        assert!(conflicting(x, &b, &a));
        // A later dot with an earlier timestamp: no one directory makes it.
        let entry = |counter: u64, value: Value| chorus_core::dvvset::Entry {
            id: x,
            counter,
            values: vec![value],
        };
        let clocked = |e| {
            Object::from_clock(chorus_core::dvvset::Dvvs::from_parts(vec![e], Vec::new()))
                .expect("a valid object")
        };
        let early = clocked(entry(50, Value::data(b"late-dot", Hlc(30), x)));
        let late = clocked(entry(40, Value::data(b"early-dot", Hlc(45), x)));
        assert!(conflicting(x, &early, &late));
        assert!(conflicting(x, &late, &early));
    }

    #[test]
    fn the_copy_reminting_keeps_both_writes_and_the_original_accepts_it() {
        let (x, y) = (id(1), id(2));
        let base = write(None, b"v1", 10, x);
        let a = write(Some(&base), b"from-a", 20, x);
        let b = write(Some(&base), b"from-b", 30, x);
        let healed = remint(&b, &a, x, y, Hlc(40)).expect("remint");
        assert_eq!(
            contents(&healed),
            vec![b"from-a".to_vec(), b"from-b".to_vec()]
        );
        // The original finds nothing impossible in it, and merges it.
        assert!(!conflicting(x, &a, &healed));
        let merged = Object::reconcile(&healed, Some(&a)).expect("news");
        assert_eq!(contents(&merged), contents(&healed));
        // Shared history alone is never reminted.
        let same = remint(&base, &base, x, y, Hlc(40)).expect("remint");
        assert_eq!(contents(&same), vec![b"v1".to_vec()]);
        assert_eq!(same.values().len(), 1);
    }
}
