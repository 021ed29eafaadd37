//! The in-memory copy of the log: a persistent ordered map per full prefix,
//! so a snapshot of everything is one reference-count increment.

use std::sync::Arc;

use chorus_core::FullPrefix;
use imbl::OrdMap;

use crate::format::{CommitRec, Payload};
use sha2::{Digest, Sha256};

use crate::hamt::{Hamt, OwnedIter};
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

/// The keys of one full prefix, with the running sum that makes its hash.
#[derive(Debug, Clone, Default)]
struct Keys {
    map: Hamt<Entry>,
    /// Sum (mod 2^128) of [`element_hash`] over the live keys: adding and
    /// removing keys adjusts it, and it is the same whatever order the same
    /// keys arrived in.
    sum: u128,
}

impl Keys {
    fn len(&self) -> usize {
        self.map.len()
    }
}

/// The hash of one (key, value) pair: the first 16 bytes of
/// SHA-256(len(key) as u32 LE ++ key ++ value).
fn element_hash(key: &[u8], value: &[u8]) -> u128 {
    let mut h = Sha256::new();
    h.update((key.len() as u32).to_le_bytes());
    h.update(key);
    h.update(value);
    let digest: [u8; 32] = h.finalize().into();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_le_bytes(first)
}

/// The hash of a set of keys from their sum and count.
fn set_hash(sum: u128, count: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"chorus prefix hash v1");
    h.update(sum.to_le_bytes());
    h.update(count.to_le_bytes());
    h.finalize().into()
}

/// Most writes [`Index`] remembers for [`Snapshot::changed_since`]: a cache
/// that fell further behind rebuilds instead.
pub(crate) const RECENT_MAX: usize = 1 << 16;

#[derive(Debug, Clone, Default)]
pub(crate) struct Index {
    prefixes: OrdMap<FullPrefix, Keys>,
    keys: usize,
    bytes: u64,
    /// The last writes applied, oldest first: (commit seq, full prefix,
    /// key), at most [`RECENT_MAX`].
    recent: imbl::Vector<(u64, FullPrefix, Key)>,
    /// Every write of a commit after this seq is in `recent`; `None` until
    /// the first write is recorded (a freshly loaded index knows none).
    recent_from: Option<u64>,
}

impl Index {
    pub(crate) fn get(&self, fp: &FullPrefix, key: &[u8]) -> Option<&Entry> {
        self.prefixes.get(fp)?.map.get(&Key::new(key))
    }

    /// The hash of a full prefix's live keys and values; equal on every
    /// store that holds the same data. O(1): kept up to date by every write.
    pub(crate) fn prefix_hash(&self, fp: &FullPrefix) -> [u8; 32] {
        self.prefixes
            .get(fp)
            .map_or(set_hash(0, 0), |k| set_hash(k.sum, k.len() as u64))
    }

    /// The hash of every full prefix under `prefix` together: O(number of
    /// its subprefixes).
    pub(crate) fn prefix_hash_all(&self, prefix: &str) -> [u8; 32] {
        let (sum, count) = self
            .prefixes
            .iter()
            .filter(|(fp, _)| fp.prefix() == prefix)
            .fold((0u128, 0u64), |(s, n), (_, k)| {
                (s.wrapping_add(k.sum), n + k.len() as u64)
            });
        set_hash(sum, count)
    }

    pub(crate) fn keys(&self) -> usize {
        self.keys
    }

    /// A full prefix's running sum and key count, `None` when it holds no
    /// key: they change with every write to it, so they tell whether
    /// something derived from its data is current. One map lookup, no
    /// hashing.
    pub(crate) fn prefix_state(&self, fp: &FullPrefix) -> Option<(u128, usize)> {
        self.prefixes.get(fp).map(|k| (k.sum, k.len()))
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
            .flat_map(|keys| keys.map.iter())
    }

    /// An owning iterator over one full prefix's keys (see `Hamt::owned_iter`).
    pub(crate) fn owned_keys(&self, fp: &FullPrefix) -> Option<OwnedIter<Entry>> {
        self.prefixes.get(fp).map(|k| k.map.owned_iter())
    }

    pub(crate) fn iter_all(&self) -> impl Iterator<Item = (&FullPrefix, &Key, &Entry)> {
        self.prefixes
            .iter()
            .flat_map(|(fp, keys)| keys.map.iter().map(move |(k, e)| (fp, k, e)))
    }

    /// Records that commit `seq` wrote `key` (see [`Snapshot::changed_since`]).
    fn record(&mut self, seq: u64, fp: &FullPrefix, key: Key) {
        if self.recent_from.is_none() {
            self.recent_from = Some(seq.saturating_sub(1));
        }
        self.recent.push_back((seq, fp.clone(), key));
        while self.recent.len() > RECENT_MAX {
            if let Some((evicted, _, _)) = self.recent.pop_front() {
                // Some write of `evicted` may be gone: only later commits
                // are still complete.
                self.recent_from = Some(evicted);
            }
        }
    }

    /// The keys written by commits after `seq`, oldest first, or `None`
    /// when this index no longer remembers all of them.
    pub(crate) fn changed_since(
        &self,
        seq: u64,
    ) -> Option<impl Iterator<Item = (u64, &FullPrefix, &Key)>> {
        let from = self.recent_from?;
        if seq < from {
            return None;
        }
        // Commits are recorded in seq order: skip those at or before `seq`.
        let skip = self.recent.binary_search_by(|(s, _, _)| {
            if *s <= seq {
                std::cmp::Ordering::Less
            } else {
                std::cmp::Ordering::Greater
            }
        });
        let start = skip.unwrap_or_else(|at| at);
        Some(
            (start..self.recent.len())
                .filter_map(|i| self.recent.get(i))
                .map(|(s, fp, k)| (*s, fp, k)),
        )
    }

    /// The keys of `fp` in the group of `base`, in key order (see
    /// `hamt.rs`: `base` and `base\0...`).
    pub(crate) fn group<'a>(
        &'a self,
        fp: &FullPrefix,
        base: &'a [u8],
    ) -> impl Iterator<Item = (&'a Key, &'a Entry)> + 'a {
        self.prefixes
            .get(fp)
            .into_iter()
            .flat_map(move |keys| keys.map.group(base))
    }

    pub(crate) fn put(&mut self, fp: &FullPrefix, key: Key, entry: Entry) {
        self.record(entry.seq, fp, key.clone());
        let key_len = key.len() as u64;
        let value_len = entry.value.len() as u64;
        let added = element_hash(&key, &entry.value);
        let old = match self.prefixes.get_mut(fp) {
            Some(keys) => {
                let old = keys.map.insert(key.clone(), entry);
                let removed = old.as_ref().map_or(0, |o| element_hash(&key, &o.value));
                keys.sum = keys.sum.wrapping_add(added).wrapping_sub(removed);
                old
            }
            None => {
                let mut keys = Keys::default();
                keys.map.insert(key, entry);
                keys.sum = added;
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

    /// Recomputes every prefix's hash sum from its keys (repair, after
    /// frames whose stored sums covered lost keys).
    pub(crate) fn rehash(&mut self) {
        let prefixes: Vec<FullPrefix> = self.prefixes.keys().cloned().collect();
        for fp in prefixes {
            if let Some(keys) = self.prefixes.get_mut(&fp) {
                keys.sum = keys
                    .map
                    .iter()
                    .fold(0u128, |s, (k, e)| s.wrapping_add(element_hash(k, &e.value)));
            }
        }
    }

    /// The running hash sum of a full prefix, for checkpoint frames.
    pub(crate) fn prefix_sum(&self, fp: &FullPrefix) -> u128 {
        self.prefixes.get(fp).map_or(0, |k| k.sum)
    }

    /// Puts an entry without hashing it; the caller adds the prefix's sum
    /// with `add_sum` (replay of a checkpoint, whose frames carry the sums).
    fn put_unhashed(&mut self, fp: &FullPrefix, key: Key, entry: Entry) {
        let value_len = entry.value.len() as u64;
        let key_len = key.len() as u64;
        let keys = match self.prefixes.get_mut(fp) {
            Some(keys) => keys,
            None => {
                self.prefixes.insert(fp.clone(), Keys::default());
                match self.prefixes.get_mut(fp) {
                    Some(keys) => keys,
                    None => return,
                }
            }
        };
        match keys.map.insert(key.clone(), entry) {
            Some(old) => {
                // Not expected in a checkpoint; kept correct all the same.
                keys.sum = keys.sum.wrapping_sub(element_hash(&key, &old.value));
                self.bytes = self.bytes - old.value.len() as u64 + value_len;
            }
            None => {
                self.keys += 1;
                self.bytes += key_len + value_len;
            }
        }
    }

    fn add_sum(&mut self, fp: &FullPrefix, sum: u128) {
        if let Some(keys) = self.prefixes.get_mut(fp) {
            keys.sum = keys.sum.wrapping_add(sum);
        }
    }

    pub(crate) fn remove(&mut self, fp: &FullPrefix, key: &[u8], seq: u64) {
        self.record(seq, fp, Key::new(key));
        let Some(keys) = self.prefixes.get_mut(fp) else {
            return;
        };
        if let Some(old) = keys.map.remove(&Key::new(key)) {
            keys.sum = keys.sum.wrapping_sub(element_hash(key, &old.value));
            self.keys -= 1;
            self.bytes -= (key.len() + old.value.len()) as u64;
            if keys.map.is_empty() {
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
                    high = (high.0.max(c.seq), high.1.max(c.ts));
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
                        index.put_unhashed(&fp, Key::new(e.key.0), entry);
                    }
                    index.add_sum(&fp, g.sum);
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
                None => index.remove(&fp, w.key.0, c.seq),
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
    pub(crate) last_ts: u64,
    pub(crate) index: Index,
    /// Whether `index` holds channel records, found by the first check of
    /// this state (see [`crate::channels::Mark`]).
    pub(crate) channels: crate::channels::Mark,
}

/// A consistent, read-only view of every key at one commit. Other writers,
/// in this process or any other, never change it. Taking one is O(1).
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub(crate) state: Arc<State>,
    /// Inside an update closure: the timestamp its commit will carry.
    pub(crate) commit_ts: Option<u64>,
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

    /// The keys of `fp` whose bytes before their first zero byte are
    /// `base`: `base` itself, then `base\0...`, in key order. O(log n +
    /// the group's size), whatever the size of the full prefix: the index
    /// places a group's keys together. Documents and operation logs keep
    /// their records this way.
    pub fn group<'a>(
        &'a self,
        fp: &FullPrefix,
        base: &'a [u8],
    ) -> impl Iterator<Item = (&'a Key, &'a Entry)> + 'a {
        self.state.index.group(fp, base)
    }

    /// Every key written (or removed) by a commit after `seq`, with the
    /// commit's seq, oldest first, up to this view; `None` when this
    /// process no longer remembers them all (it keeps the last 65,536
    /// writes, and none from before it loaded the current generation).
    /// Caches derived from the data use it to catch up in proportion to
    /// what changed; on `None` they rebuild.
    pub fn changed_since(
        &self,
        seq: u64,
    ) -> Option<impl Iterator<Item = (u64, &FullPrefix, &Key)>> {
        self.state.index.changed_since(seq)
    }

    /// Every live key, ordered by full prefix, then as [`Snapshot::iter_prefix`].
    pub fn iter(&self) -> impl Iterator<Item = (&FullPrefix, &Key, &Entry)> {
        self.state.index.iter_all()
    }

    /// Every full prefix that holds at least one live key.
    pub fn prefixes(&self) -> impl Iterator<Item = &FullPrefix> {
        self.state.index.prefixes()
    }

    /// The hash of a full prefix's keys and values: equal on every store
    /// that holds the same data, whatever order it was written in. O(1).
    pub fn prefix_hash(&self, fp: &FullPrefix) -> [u8; 32] {
        self.state.index.prefix_hash(fp)
    }

    /// The hash of every full prefix under `prefix` together.
    pub fn prefix_hash_all(&self, prefix: &str) -> [u8; 32] {
        self.state.index.prefix_hash_all(prefix)
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

    /// Hybrid timestamp ([`chorus_core::object::Hlc`]) of the last commit
    /// in this view.
    pub fn last_ts(&self) -> u64 {
        self.state.last_ts
    }

    /// Inside an [`update`](crate::Store::update) closure: the hybrid
    /// timestamp the commit being prepared will carry, later than every
    /// earlier commit on this directory. `None` elsewhere.
    pub fn commit_ts(&self) -> Option<u64> {
        self.commit_ts
    }

    /// Log generation this view was read from.
    pub fn generation(&self) -> u64 {
        self.state.generation
    }
}
