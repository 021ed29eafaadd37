//! The hash tree: named levels over dense-plus-sparse segment trees.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::{Summary, child_value, element_value, name_hash, node_index, node_range};

/// The dense levels are sized for about this many keys per deepest dense
/// node: few enough that a deeper node, summarised by a scan, is cheap.
const KEYS_PER_DENSE_LEAF: u64 = 8;

/// The deepest dense level: 4^12 nodes (16.7 M, 268 MB of summaries) is
/// already reached only past 33 M keys in one full prefix.
const MAX_DENSE_DEPTH: u8 = 12;

/// A hash tree over a store's keys: root, prefixes, full prefixes, and a
/// segment tree of fan-out 4 inside each full prefix.
///
/// Contracts: `key_hash` must be a function of the key (the same key always
/// comes with the same hash); two keys may share a key hash. Memory is
/// proportional to the number of keys. The tree holds no objects, only
/// keys and object hashes.
#[derive(Debug, Clone)]
pub struct MerkleTree<K> {
    prefixes: BTreeMap<Vec<u8>, Prefix<K>>,
    root: Summary,
}

/// One prefix: the sum over its full prefixes, and the full prefixes.
#[derive(Debug, Clone)]
struct Prefix<K> {
    summary: Summary,
    subs: BTreeMap<Vec<u8>, FullPrefix<K>>,
}

/// One full prefix's keys and segment tree.
///
/// The keys are kept by key hash, each bucket sorted by key (a `Vec`
/// because distinct keys may share a hash). Levels `0..=depth` are dense
/// arrays of summaries, level after level in `dense` (level `l` starts at
/// `(4^l - 1) / 3` and has `4^l` nodes); a deeper node is summed on demand
/// from the keys in its hash range, which are few because `depth` grows
/// with the key count.
#[derive(Debug, Clone)]
pub(super) struct FullPrefix<K> {
    keys: BTreeMap<u64, Vec<(K, u64)>>,
    dense: Vec<Summary>,
    depth: u8,
}

/// Adjusts a named node's sum for one child whose summary went from `old`
/// to `new`.
fn replace_child(parent: &mut Summary, name_hash: u64, old: Summary, new: Summary) {
    parent.hash = parent
        .hash
        .wrapping_add(child_value(name_hash, new))
        .wrapping_sub(child_value(name_hash, old));
    parent.count = parent.count.wrapping_add(new.count).wrapping_sub(old.count);
}

/// Where level `level` starts in a full prefix's dense array.
fn level_offset(level: u8) -> usize {
    ((1usize << (2 * u32::from(level))) - 1) / 3
}

/// The dense depth a full prefix of `count` keys should have: the smallest
/// with at most [`KEYS_PER_DENSE_LEAF`] keys per deepest node on average.
fn target_depth(count: u64) -> u8 {
    let mut depth = 0;
    while depth < MAX_DENSE_DEPTH && KEYS_PER_DENSE_LEAF << (2 * u32::from(depth)) < count {
        depth += 1;
    }
    depth
}

impl<K> Default for MerkleTree<K> {
    fn default() -> Self {
        MerkleTree {
            prefixes: BTreeMap::new(),
            root: Summary::default(),
        }
    }
}

impl<K: Clone + Ord> MerkleTree<K> {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the object hash of `key` in full prefix (`prefix`, `sub`), or
    /// removes the key when `object_hash` is `None`. Costs O(tree depth +
    /// name lengths), amortised: a full prefix's dense levels are rebuilt
    /// when its key count has grown or shrunk by a factor of about four.
    /// Empty full prefixes and prefixes are removed.
    pub fn update(
        &mut self,
        prefix: &[u8],
        sub: &[u8],
        key: &K,
        key_hash: u64,
        object_hash: Option<u64>,
    ) {
        if !self.prefixes.contains_key(prefix) {
            if object_hash.is_none() {
                return;
            }
            self.prefixes.insert(prefix.to_vec(), Prefix::new());
        }
        let Some(node) = self.prefixes.get_mut(prefix) else {
            return;
        };
        let Some((old_fp, new_fp)) = node.update(sub, key, key_hash, object_hash) else {
            return;
        };
        let old_prefix = node.summary;
        replace_child(&mut node.summary, name_hash(sub), old_fp, new_fp);
        let new_prefix = node.summary;
        if new_prefix.count == 0 {
            self.prefixes.remove(prefix);
        }
        replace_child(&mut self.root, name_hash(prefix), old_prefix, new_prefix);
    }

    /// The whole tree's summary: the hash of all the contents and the
    /// number of keys.
    pub fn root(&self) -> Summary {
        self.root
    }

    /// A prefix's summary, `None` if it holds no key.
    pub fn prefix(&self, prefix: &[u8]) -> Option<Summary> {
        self.prefixes.get(prefix).map(|p| p.summary)
    }

    /// A full prefix's summary, `None` if it holds no key.
    pub fn full_prefix(&self, prefix: &[u8], sub: &[u8]) -> Option<Summary> {
        self.full(prefix, sub).map(FullPrefix::summary)
    }

    /// The summary of segment-tree node (`level`, `index`) of a full prefix;
    /// the default (0, 0) for an empty node, a missing full prefix, or a
    /// node that does not exist. Cheap for dense levels; a deeper node is
    /// summed from its keys.
    pub fn node(&self, prefix: &[u8], sub: &[u8], level: u8, index: u64) -> Summary {
        self.full(prefix, sub)
            .map(|fp| fp.node(level, index))
            .unwrap_or_default()
    }

    /// Number of keys.
    pub fn len(&self) -> u64 {
        self.root.count
    }

    /// True when the tree holds no key.
    pub fn is_empty(&self) -> bool {
        self.root.count == 0
    }

    pub(super) fn full(&self, prefix: &[u8], sub: &[u8]) -> Option<&FullPrefix<K>> {
        self.prefixes.get(prefix)?.subs.get(sub)
    }

    /// The children of the root (`parent` is `None`: prefixes) or of a
    /// prefix (its subprefixes) with names in `from..to` (`to` `None`: no
    /// end), at most `limit` of them, in name order.
    pub(super) fn children(
        &self,
        parent: Option<&[u8]>,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Vec<(Vec<u8>, Summary)> {
        let upper = to.map_or(Bound::Unbounded, Bound::Excluded);
        let range = (Bound::Included(from), upper);
        if to.is_some_and(|to| to <= from) {
            // BTreeMap::range panics on an inverted range; a peer may send one.
            return Vec::new();
        }
        match parent {
            None => self
                .prefixes
                .range::<[u8], _>(range)
                .take(limit)
                .map(|(name, p)| (name.clone(), p.summary))
                .collect(),
            Some(prefix) => self.prefixes.get(prefix).map_or_else(Vec::new, |p| {
                p.subs
                    .range::<[u8], _>(range)
                    .take(limit)
                    .map(|(name, fp)| (name.clone(), fp.summary()))
                    .collect()
            }),
        }
    }

    /// The first full prefix after `after` (all of them if `None`), within
    /// prefix `scope` if given.
    pub(super) fn next_full_prefix(
        &self,
        scope: Option<&[u8]>,
        after: Option<(&[u8], &[u8])>,
    ) -> Option<(Vec<u8>, Vec<u8>)> {
        let start = match (after, scope) {
            (Some((p, _)), _) | (None, Some(p)) => Bound::Included(p),
            (None, None) => Bound::Unbounded,
        };
        for (name, p) in self.prefixes.range::<[u8], _>((start, Bound::Unbounded)) {
            if scope.is_some_and(|s| s != name.as_slice()) {
                return None;
            }
            let sub_start = match after {
                Some((ap, asub)) if ap == name.as_slice() => Bound::Excluded(asub),
                _ => Bound::Unbounded,
            };
            let next = p
                .subs
                .range::<[u8], _>((sub_start, Bound::Unbounded))
                .next();
            if let Some((sub, _)) = next {
                return Some((name.clone(), sub.clone()));
            }
        }
        None
    }
}

impl<K: Clone + Ord> Prefix<K> {
    fn new() -> Self {
        Prefix {
            summary: Summary::default(),
            subs: BTreeMap::new(),
        }
    }

    /// Updates a key in full prefix `sub`; returns the full prefix's
    /// summary before and after, or `None` if nothing changed. An emptied
    /// full prefix is removed.
    fn update(
        &mut self,
        sub: &[u8],
        key: &K,
        key_hash: u64,
        object_hash: Option<u64>,
    ) -> Option<(Summary, Summary)> {
        if !self.subs.contains_key(sub) {
            object_hash?;
            self.subs.insert(sub.to_vec(), FullPrefix::new());
        }
        let fp = self.subs.get_mut(sub)?;
        let old = fp.summary();
        let changed = fp.set(key, key_hash, object_hash);
        let new = fp.summary();
        if new.count == 0 {
            self.subs.remove(sub);
        }
        changed.then_some((old, new))
    }
}

impl<K: Clone + Ord> FullPrefix<K> {
    fn new() -> Self {
        FullPrefix {
            keys: BTreeMap::new(),
            dense: vec![Summary::default()],
            depth: 0,
        }
    }

    /// The full prefix's own summary (the level-0 node).
    pub(super) fn summary(&self) -> Summary {
        self.dense.first().copied().unwrap_or_default()
    }

    /// Node (`level`, `index`): from the dense arrays down to `depth`, by a
    /// scan of its keys below. (0, 0) if there is no such node.
    pub(super) fn node(&self, level: u8, index: u64) -> Summary {
        if level <= self.depth {
            let Ok(index) = usize::try_from(index) else {
                return Summary::default();
            };
            if index >> (2 * u32::from(level)) != 0 {
                return Summary::default();
            }
            return self
                .dense
                .get(level_offset(level) + index)
                .copied()
                .unwrap_or_default();
        }
        let mut sum = Summary::default();
        for (key_hash, _, object_hash) in self.keys_in(level, index, None) {
            sum.hash = sum.hash.wrapping_add(element_value(key_hash, object_hash));
            sum.count += 1;
        }
        sum
    }

    /// The keys of node (`level`, `index`) as (key hash, key, object hash),
    /// in (key hash, key) order, starting after `after` if given.
    pub(super) fn keys_in<'a>(
        &'a self,
        level: u8,
        index: u64,
        after: Option<(u64, &'a K)>,
    ) -> impl Iterator<Item = (u64, &'a K, u64)> + 'a {
        let (lo, hi) = node_range(level, index).unwrap_or((1, 0));
        let start = after.map_or(lo, |(h, _)| h.max(lo));
        // Nothing when the node does not exist or `after` is past it
        // (BTreeMap::range panics on an inverted range).
        let buckets = (start <= hi).then(|| self.keys.range(start..=hi));
        buckets.into_iter().flatten().flat_map(move |(&h, bucket)| {
            bucket
                .iter()
                .filter(move |(k, _)| after.is_none_or(|(ah, ak)| h != ah || k > ak))
                .map(move |(k, o)| (h, k, *o))
        })
    }

    /// The keys sharing `key_hash`.
    pub(super) fn bucket(&self, key_hash: u64) -> impl Iterator<Item = &K> {
        self.keys
            .get(&key_hash)
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
    }

    /// Sets or removes a key; true if anything changed.
    fn set(&mut self, key: &K, key_hash: u64, object_hash: Option<u64>) -> bool {
        let old = self.set_in_bucket(key, key_hash, object_hash);
        if old == object_hash {
            return false;
        }
        let added = object_hash.map_or(0, |o| element_value(key_hash, o));
        let removed = old.map_or(0, |o| element_value(key_hash, o));
        let count_delta = i64::from(object_hash.is_some()) - i64::from(old.is_some());
        for level in 0..=self.depth {
            // node_index < 4^depth <= 4^12, so it fits a usize.
            let at = level_offset(level) + node_index(key_hash, level) as usize;
            if let Some(node) = self.dense.get_mut(at) {
                node.hash = node.hash.wrapping_add(added).wrapping_sub(removed);
                node.count = node.count.wrapping_add_signed(count_delta);
            }
        }
        self.resize();
        true
    }

    /// Writes the key into its bucket; returns its previous object hash.
    fn set_in_bucket(&mut self, key: &K, key_hash: u64, object_hash: Option<u64>) -> Option<u64> {
        match object_hash {
            Some(new) => {
                let bucket = self.keys.entry(key_hash).or_default();
                match bucket.binary_search_by(|(k, _)| k.cmp(key)) {
                    Ok(i) => bucket
                        .get_mut(i)
                        .map(|slot| std::mem::replace(&mut slot.1, new)),
                    Err(i) => {
                        bucket.insert(i, (key.clone(), new));
                        None
                    }
                }
            }
            None => {
                let bucket = self.keys.get_mut(&key_hash)?;
                let i = bucket.binary_search_by(|(k, _)| k.cmp(key)).ok()?;
                let (_, old) = bucket.remove(i);
                if bucket.is_empty() {
                    self.keys.remove(&key_hash);
                }
                Some(old)
            }
        }
    }

    /// Grows the dense levels when the key count passes what they are sized
    /// for, and shrinks them when it falls two sizes below. The gap between
    /// the two thresholds is a factor of four in key count, so a rebuild,
    /// O(keys), comes only after Θ(keys) updates: amortised O(1).
    fn resize(&mut self) {
        let target = target_depth(self.summary().count);
        if target > self.depth {
            self.rebuild(target);
        } else if target + 2 <= self.depth {
            // Shrink to one level above the target, so that a few inserts
            // right after do not grow it straight back.
            self.rebuild(target + 1);
        }
    }

    /// Recomputes the dense levels for `depth`: the deepest from the keys,
    /// each level above from the one below.
    fn rebuild(&mut self, depth: u8) {
        let mut dense = vec![Summary::default(); level_offset(depth + 1)];
        let deepest = level_offset(depth);
        for (&key_hash, bucket) in &self.keys {
            // Below 4^depth <= 4^12: fits a usize.
            let at = deepest + node_index(key_hash, depth) as usize;
            for (_, object_hash) in bucket {
                if let Some(node) = dense.get_mut(at) {
                    node.hash = node
                        .hash
                        .wrapping_add(element_value(key_hash, *object_hash));
                    node.count += 1;
                }
            }
        }
        for level in (0..depth).rev() {
            let (here, below) = (level_offset(level), level_offset(level + 1));
            for i in 0..(1usize << (2 * u32::from(level))) {
                let mut sum = Summary::default();
                for child in dense.iter().skip(below + 4 * i).take(4) {
                    sum.hash = sum.hash.wrapping_add(child.hash);
                    sum.count += child.count;
                }
                if let Some(node) = dense.get_mut(here + i) {
                    *node = sum;
                }
            }
        }
        self.dense = dense;
        self.depth = depth;
    }

    /// The dense depth, for tests of the grow and shrink thresholds.
    #[cfg(test)]
    pub(super) fn depth(&self) -> u8 {
        self.depth
    }

    /// Panics unless every dense node equals the sum of its keys, buckets
    /// are sorted and non-empty, and the depth is within its thresholds.
    #[cfg(test)]
    fn check(&self) {
        assert_eq!(self.dense.len(), level_offset(self.depth + 1));
        for level in 0..=self.depth {
            for index in 0..(1u64 << (2 * level)) {
                let mut scan = Summary::default();
                for (h, _, o) in self.keys_in(level, index, None) {
                    scan.hash = scan.hash.wrapping_add(element_value(h, o));
                    scan.count += 1;
                }
                assert_eq!(
                    self.node(level, index),
                    scan,
                    "dense node ({level}, {index})"
                );
            }
        }
        for bucket in self.keys.values() {
            assert!(!bucket.is_empty(), "empty bucket kept");
            assert!(
                bucket.windows(2).all(|w| w[0].0 < w[1].0),
                "bucket not sorted"
            );
        }
        let target = target_depth(self.summary().count);
        assert!(
            target <= self.depth && self.depth <= target + 1,
            "depth {} for target {target}",
            self.depth
        );
    }
}

#[cfg(test)]
impl<K: Clone + Ord> MerkleTree<K> {
    /// The dense depth of a full prefix, for tests.
    pub(super) fn depth_of(&self, prefix: &[u8], sub: &[u8]) -> Option<u8> {
        self.full(prefix, sub).map(FullPrefix::depth)
    }

    /// Panics unless every stored sum equals its recomputation from below
    /// and no empty full prefix or prefix is kept.
    pub(super) fn check(&self) {
        let mut root = Summary::default();
        for (name, p) in &self.prefixes {
            let mut sum = Summary::default();
            for (sub, fp) in &p.subs {
                fp.check();
                assert!(fp.summary().count > 0, "empty full prefix kept");
                sum.hash = sum
                    .hash
                    .wrapping_add(child_value(name_hash(sub), fp.summary()));
                sum.count += fp.summary().count;
            }
            assert!(sum.count > 0, "empty prefix kept");
            assert_eq!(p.summary, sum, "prefix {name:?}");
            root.hash = root.hash.wrapping_add(child_value(name_hash(name), sum));
            root.count += sum.count;
        }
        assert_eq!(self.root, root, "root");
    }
}
