//! The in-memory copy of the log: a persistent ordered map per full prefix,
//! so a snapshot of everything is one reference-count increment.

use std::sync::Arc;

use chorus_core::FullPrefix;
use imbl::OrdMap;

use crate::format::{CommitRec, Payload};
use crate::hamt::Hamt;
use crate::key::Key;

/// Bytes shared without copying.
pub type Bytes = Arc<[u8]>;

/// A live key's value and the sequence number of the commit that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Sequence number of the commit that last wrote this key.
    pub seq: u64,
    /// The value.
    pub value: Bytes,
}

type Keys = Hamt<Entry>;

#[derive(Debug, Clone, Default)]
pub(crate) struct Index {
    prefixes: OrdMap<FullPrefix, Keys>,
    keys: usize,
    bytes: u64,
}

impl Index {
    pub(crate) fn get(&self, fp: &FullPrefix, key: &[u8]) -> Option<&Entry> {
        self.prefixes.get(fp)?.get(&Key::new(key))
    }

    pub(crate) fn keys(&self) -> usize {
        self.keys
    }

    pub(crate) fn keys_in(&self, fp: &FullPrefix) -> usize {
        self.prefixes.get(fp).map_or(0, |keys| keys.len())
    }

    /// Bytes of keys and values held.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(crate) fn prefixes(&self) -> impl Iterator<Item = &FullPrefix> {
        self.prefixes.keys()
    }

    pub(crate) fn iter_prefix(&self, fp: &FullPrefix) -> impl Iterator<Item = (&Key, &Entry)> {
        self.prefixes
            .get(fp)
            .into_iter()
            .flat_map(|keys| keys.iter())
    }

    pub(crate) fn iter_all(&self) -> impl Iterator<Item = (&FullPrefix, &Key, &Entry)> {
        self.prefixes
            .iter()
            .flat_map(|(fp, keys)| keys.iter().map(move |(k, e)| (fp, k, e)))
    }

    pub(crate) fn put(&mut self, fp: &FullPrefix, key: Key, entry: Entry) {
        let key_len = key.len() as u64;
        let value_len = entry.value.len() as u64;
        let old = match self.prefixes.get_mut(fp) {
            Some(keys) => keys.insert(key, entry),
            None => {
                let mut keys = Keys::default();
                keys.insert(key, entry);
                self.prefixes.insert(fp.clone(), keys);
                None
            }
        };
        match old {
            Some(old) => self.bytes = self.bytes - old.value.len() as u64 + value_len,
            None => {
                self.keys += 1;
                self.bytes += key_len + value_len;
            }
        }
    }

    pub(crate) fn remove(&mut self, fp: &FullPrefix, key: &[u8]) {
        let Some(keys) = self.prefixes.get_mut(fp) else {
            return;
        };
        if let Some(old) = keys.remove(&Key::new(key)) {
            self.keys -= 1;
            self.bytes -= (key.len() + old.value.len()) as u64;
            if keys.is_empty() {
                self.prefixes.remove(fp);
            }
        }
    }
}

/// Applies decoded payloads to an index, reusing full-prefix allocations.
pub(crate) struct Applier {
    last: Option<FullPrefix>,
}

impl Applier {
    pub(crate) fn new() -> Self {
        Applier { last: None }
    }

    fn full_prefix(&mut self, prefix: &str, subprefix: &str) -> Option<FullPrefix> {
        if let Some(fp) = &self.last
            && fp.prefix() == prefix
            && fp.subprefix() == subprefix
        {
            return Some(fp.clone());
        }
        // Names were validated before they were written; a frame whose
        // checksum holds but whose name does not is skipped, not trusted.
        let fp = FullPrefix::new(prefix, subprefix).ok()?;
        self.last = Some(fp.clone());
        Some(fp)
    }

    /// Applies one payload; returns the highest (seq, ts) it carried.
    pub(crate) fn apply(&mut self, index: &mut Index, payload: &Payload<'_>) -> (u64, u64) {
        let mut high = (0, 0);
        match payload {
            Payload::Commits(commits) => {
                for c in commits {
                    self.apply_commit(index, c);
                    high = (high.0.max(c.seq), high.1.max(c.ts_ms));
                }
            }
            Payload::Checkpoint(groups) => {
                for g in groups {
                    let Some(fp) = self.full_prefix(g.prefix, g.subprefix) else {
                        continue;
                    };
                    for e in &g.entries {
                        let entry = Entry {
                            seq: e.seq,
                            value: Bytes::from(e.value.0),
                        };
                        index.put(&fp, Key::new(e.key.0), entry);
                    }
                }
            }
        }
        high
    }

    fn apply_commit(&mut self, index: &mut Index, c: &CommitRec<'_>) {
        for w in &c.writes {
            let Some(fp) = self.full_prefix(w.prefix, w.subprefix) else {
                continue;
            };
            match w.value {
                Some(v) => index.put(
                    &fp,
                    Key::new(w.key.0),
                    Entry {
                        seq: c.seq,
                        value: Bytes::from(v.0),
                    },
                ),
                None => index.remove(&fp, w.key.0),
            }
        }
    }
}

/// The state of a store at one point of its log.
#[derive(Debug, Clone)]
pub(crate) struct State {
    pub(crate) generation: u64,
    /// Offset up to which the log has been applied.
    pub(crate) end: u64,
    pub(crate) last_seq: u64,
    pub(crate) last_ts_ms: u64,
    pub(crate) index: Index,
}

/// A consistent, read-only view of every key at one commit. Other writers,
/// in this process or any other, never change it. Taking one is O(1).
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub(crate) state: Arc<State>,
}

impl Snapshot {
    /// The value of a key, if it is live in this view.
    pub fn get(&self, fp: &FullPrefix, key: &[u8]) -> Option<Bytes> {
        self.state.index.get(fp, key).map(|e| e.value.clone())
    }

    /// The entry (value and sequence number) of a key.
    pub fn entry(&self, fp: &FullPrefix, key: &[u8]) -> Option<&Entry> {
        self.state.index.get(fp, key)
    }

    /// Every live key of a full prefix, in the index's order, which follows
    /// the keys' [`key_hash`](chorus_core::key_hash): the same in every
    /// process and on every machine for the same keys, but not key order.
    /// Sort the keys if you show them to a person.
    pub fn iter_prefix(&self, fp: &FullPrefix) -> impl Iterator<Item = (&Key, &Entry)> {
        self.state.index.iter_prefix(fp)
    }

    /// Every live key, ordered by full prefix, then as [`Snapshot::iter_prefix`].
    pub fn iter(&self) -> impl Iterator<Item = (&FullPrefix, &Key, &Entry)> {
        self.state.index.iter_all()
    }

    /// Every full prefix that holds at least one live key.
    pub fn prefixes(&self) -> impl Iterator<Item = &FullPrefix> {
        self.state.index.prefixes()
    }

    /// Number of live keys in one full prefix. O(1).
    pub fn len_in(&self, fp: &FullPrefix) -> usize {
        self.state.index.keys_in(fp)
    }

    /// Number of live keys.
    pub fn len(&self) -> usize {
        self.state.index.keys()
    }

    /// True when no key is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sequence number of the last commit in this view.
    pub fn seq(&self) -> u64 {
        self.state.last_seq
    }

    /// Log generation this view was read from.
    pub fn generation(&self) -> u64 {
        self.state.generation
    }
}
