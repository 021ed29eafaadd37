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

/// Where a data directory lives, as recorded in its `place` file: the
/// directory's device and inode, and `since`, the hybrid timestamp of the
/// last commit when the directory took this place (its creation, a copy
/// detected at open, a new identity, or the first open by a release that
/// writes the file). Every copy of the directory carries this file as it
/// was when the copy was made, so `since` is a moment a copy and its
/// original certainly share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Place {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) since: u64,
}

impl Place {
    pub(crate) fn new((dev, ino): (u64, u64), since: u64) -> Self {
        Place { dev, ino, since }
    }

    pub(crate) fn encode(&self) -> String {
        format!("dev {} ino {} since {}\n", self.dev, self.ino, self.since)
    }

    pub(crate) fn parse(text: &str) -> Option<Place> {
        let mut words = text.split_whitespace();
        let mut field = |name: &str| -> Option<u64> {
            (words.next()? == name).then_some(())?;
            words.next()?.parse().ok()
        };
        let place = Place {
            dev: field("dev")?,
            ino: field("ino")?,
            since: field("since")?,
        };
        words.next().is_none().then_some(place)
    }

    /// Whether the directory is still where this record says.
    pub(crate) fn is(&self, (dev, ino): (u64, u64)) -> bool {
        self.dev == dev && self.ino == ino
    }
}

/// Gives `object` to a directory that took the new id `new` after writing
/// under `old`, when the directory shares only its history up to `copy_point`
/// (a hybrid timestamp) with another directory still writing under `old`.
///
/// The values under `old` made after `copy_point` are this directory's own:
/// they get new dots of `new` (same content and timestamp), as siblings of
/// everything else in the object. The values under `old` made at or before
/// it stay as they are (both directories hold them). And `old`'s counter is
/// brought down to the shared history: dots are numbered above the hybrid
/// timestamp of the write (see `Object::modify`), so a dot made at or
/// before `copy_point` is at most `copy_point + 1`, and every later one of
/// either directory above it (but a sibling made without a context on top of
/// an older value of `old`: see docs/identity.md). So the object no longer
/// claims to have seen the other directory's later writes.
///
/// `None` when the object needs no change.
pub(crate) fn remint_after(
    object: &Object,
    old: NodeId,
    new: NodeId,
    copy_point: u64,
) -> Result<Option<Object>, chorus_core::object::ObjectError> {
    let clock = object.clock();
    let Some(entry) = clock.entries().iter().find(|e| e.id == old) else {
        return Ok(None);
    };
    let cap = copy_point.saturating_add(1);
    // The newest dots come first: the values made after the copy point are
    // a leading run (one directory makes its dots in timestamp order).
    let run = entry
        .values
        .iter()
        .take_while(|v| v.timestamp.0 > copy_point)
        .count();
    let (moved, kept) = entry.values.split_at(run);
    let counter = if kept.is_empty() {
        entry.counter.min(cap)
    } else {
        entry.counter.saturating_sub(run as u64)
    };
    if run == 0 && counter == entry.counter {
        return Ok(None);
    }
    let entries = clock
        .entries()
        .iter()
        .map(|e| {
            if e.id == old {
                chorus_core::dvvset::Entry {
                    id: old,
                    counter,
                    values: kept.to_vec(),
                }
            } else {
                e.clone()
            }
        })
        .collect();
    let mut result = Object::from_clock(chorus_core::dvvset::Dvvs::from_parts(
        entries,
        clock.anonymous().to_vec(),
    ))?;
    // Oldest first, each concurrent with everything the object holds (as it
    // was: values of one object are siblings).
    for value in moved.iter().rev() {
        let mut value = value.clone();
        value.node = new;
        result = Object::modify(Some(&result), &Object::empty_context(), value, new);
    }
    Ok(Some(result))
}

/// The record of `new` under [`IDENTITIES`]: `old` and the ids `old` had
/// before (at most [`FORMER_MAX`], the newest kept), as an object written
/// by `new` at `ts` over `current` (the key's object, if any).
pub(crate) fn former_record(
    snap: &Snapshot,
    current: Option<&Object>,
    old: NodeId,
    new: NodeId,
    ts: Hlc,
) -> Result<Object, serde_json::Error> {
    let mut former: Vec<String> = former_ids(snap, old)
        .iter()
        .map(NodeId::to_string)
        .collect();
    former.push(old.to_string());
    let skip = former.len().saturating_sub(FORMER_MAX);
    let record = Former {
        former: former.split_off(skip),
    };
    let bytes = serde_json::to_vec(&record)?;
    let context = current.map(Object::context).unwrap_or_default();
    Ok(Object::modify(
        current,
        &context,
        Value::data(&bytes, ts, new),
        new,
    ))
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

    #[test]
    fn remint_after_gives_the_copys_later_values_new_dots_and_keeps_shared_ones() {
        let (x, y, z) = (id(1), id(2), id(3));
        // Shared history: x wrote v1 at 100; z wrote a sibling at 120.
        let base = write(None, b"v1", 100, x);
        let shared = Object::modify(
            Some(&base),
            &Object::empty_context(),
            Value::data(b"z1", Hlc(120), z),
            z,
        );
        // Nothing after the copy point (150): nothing changes.
        assert_eq!(remint_after(&shared, x, y, 150).expect("remint"), None);
        // The copy overwrites v1 at 200 under x.
        let copy = write(Some(&shared), b"copy", 200, x);
        let reminted = remint_after(&copy, x, y, 150)
            .expect("remint")
            .expect("changed");
        let entry =
            |o: &Object, who: NodeId| o.clock().entries().iter().find(|e| e.id == who).cloned();
        let old = entry(&reminted, x).expect("x stays");
        assert!(old.counter <= 151, "{}", old.counter);
        assert!(old.values.is_empty());
        let new = entry(&reminted, y).expect("y holds the copy's write");
        assert_eq!(new.values.len(), 1);
        assert_eq!(new.values[0].timestamp, Hlc(200));
        // (Written over everything the copy had read, z1 included.)
        assert_eq!(contents(&reminted), vec![b"copy".to_vec()]);
        assert!(entry(&reminted, z).is_some());
        // The original's own later write (at 180, above the copy point)
        // stays a sibling of the copy's when the two meet.
        let original = write(Some(&shared), b"orig", 180, x);
        let met = Object::reconcile(&reminted, Some(&original)).expect("news");
        assert_eq!(contents(&met), vec![b"copy".to_vec(), b"orig".to_vec()]);
        assert!(!conflicting(x, &original, &reminted));
        // Without the cap, the copy's counter would cover it.
        let lost = Object::reconcile(&copy, Some(&original)).expect("news");
        assert!(!contents(&lost).contains(&b"orig".to_vec()));
        // A value of x from before the copy point keeps its dot.
        let sibling = Object::modify(
            Some(&base),
            &Object::empty_context(),
            Value::data(b"late", Hlc(300), x),
            x,
        );
        let kept = remint_after(&sibling, x, y, 150)
            .expect("remint")
            .expect("changed");
        assert_eq!(
            entry(&kept, x).expect("x").counter,
            entry(&base, x).expect("x").counter
        );
        assert_eq!(contents(&kept), vec![b"late".to_vec(), b"v1".to_vec()]);
    }
}
