//! A persistent hash array mapped trie from [`Key`] to values: the keys of
//! one full prefix in the index.
//!
//! A lookup takes five bits of the key's hash per level, tests a bitmap and
//! indexes a packed array: no search, no mispredicted branches, so a point
//! read costs a few dependent loads. Nodes are shared between versions
//! (`Arc`) and copied only on the path a write touches, so a clone is O(1)
//! and snapshots stay cheap. Arrays are exactly as long as their contents.
//!
//! Keys whose 64-bit hashes are equal all the way down share a collision
//! bucket, an ordered map: crafted collisions cost a logarithm, never a
//! linear scan.
//!
//! Iteration follows the hash bits, so its order is the same in every
//! process for the same keys, but it is not key order.
//!
//! **Groups.** A key with a zero byte is placed by the hash of the bytes
//! before its first zero byte (its *group base*): `doc`, `doc\0a` and
//! `doc\0b` all share one hash, so they meet in one collision bucket, an
//! ordered map, and [`Hamt::group`] visits them in key order in
//! O(log n + group size). Documents and operation logs keep one record per
//! revision or operation this way (`id\0...`, `path\0...`) and find a
//! document's or a log's records without scanning the full prefix. The
//! grouping is an in-memory placement only: nothing stored or sent
//! depends on it (the Merkle trees hash keys themselves).

use std::sync::Arc;

use chorus_core::key_hash;
use imbl::OrdMap;

use crate::key::Key;

const BITS: u32 = 5;
/// Levels that consume hash bits: 12 of 5 bits and a last one of 4.
const LEVELS: u32 = 64u32.div_ceil(BITS);

fn fragment(hash: u64, depth: u32) -> u32 {
    (hash.checked_shr(depth * BITS).unwrap_or(0) & 0x1f) as u32
}

/// How keys are hashed: [`group_hash`] in the store; tests force collisions.
type HashFn = fn(&[u8]) -> u64;

/// The bytes of `key` before its first zero byte (all of it if none).
pub fn group_base(key: &[u8]) -> &[u8] {
    match key.iter().position(|b| *b == 0) {
        Some(at) => &key[..at],
        None => key,
    }
}

/// True when `key` belongs to the group of `base`: it is `base`, or
/// `base` followed by a zero byte and anything.
pub fn in_group(key: &[u8], base: &[u8]) -> bool {
    key.len() >= base.len()
        && key[..base.len()] == *base
        && (key.len() == base.len() || key[base.len()] == 0)
}

/// Where the store places a key: [`key_hash`] of its [`group_base`].
pub(crate) fn group_hash(key: &[u8]) -> u64 {
    key_hash(group_base(key))
}

#[derive(Clone)]
enum Slot<V> {
    Leaf(Key, V),
    Branch(Node<V>),
    /// Keys whose hashes are all equal to `hash`.
    Collision(u64, OrdMap<Key, V>),
}

/// A node is its bitmap and a shared array of the occupied slots; the
/// bitmap lives with the pointer (in the parent's slot), so descending a
/// level is one dependent load.
#[derive(Clone)]
struct Node<V> {
    bitmap: u32,
    slots: Arc<[Slot<V>]>,
}

impl<V: Clone> Node<V> {
    fn empty() -> Self {
        Node {
            bitmap: 0,
            slots: Arc::from(Vec::new()),
        }
    }

    fn with(bitmap: u32, slots: Vec<Slot<V>>) -> Self {
        Node {
            bitmap,
            slots: Arc::from(slots),
        }
    }

    /// The slots, copied first if another version shares them.
    fn slots_mut(&mut self) -> &mut [Slot<V>] {
        Arc::make_mut(&mut self.slots)
    }

    /// The slots as a vector to rebuild the array from: moved out when no
    /// other version shares them, cloned when one does.
    fn take_slots(&mut self) -> Vec<Slot<V>> {
        match Arc::get_mut(&mut self.slots) {
            Some(unique) => unique
                .iter_mut()
                // An empty ordered map does not allocate: a free placeholder.
                .map(|s| std::mem::replace(s, Slot::Collision(0, OrdMap::new())))
                .collect(),
            None => self.slots.to_vec(),
        }
    }
}

impl<V> Node<V> {
    fn index(&self, bit: u32) -> usize {
        (self.bitmap & (bit - 1)).count_ones() as usize
    }
}

/// A persistent map from keys to `V`; `Clone` is O(1).
#[derive(Clone)]
pub(crate) struct Hamt<V> {
    root: Node<V>,
    len: usize,
    hash_of: HashFn,
}

impl<V: std::fmt::Debug + Clone> std::fmt::Debug for Hamt<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V: Clone> Default for Hamt<V> {
    fn default() -> Self {
        Hamt::with_hasher(group_hash)
    }
}

impl<V: Clone> Hamt<V> {
    fn with_hasher(hash_of: HashFn) -> Self {
        Hamt {
            root: Node::empty(),
            len: 0,
            hash_of,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn get(&self, key: &Key) -> Option<&V> {
        let hash = (self.hash_of)(key);
        let mut node = &self.root;
        let mut depth = 0;
        loop {
            let bit = 1u32 << fragment(hash, depth);
            if node.bitmap & bit == 0 {
                return None;
            }
            match &node.slots[node.index(bit)] {
                Slot::Leaf(k, v) => return (k == key).then_some(v),
                Slot::Branch(child) => node = child,
                Slot::Collision(h, entries) => {
                    return if *h == hash { entries.get(key) } else { None };
                }
            }
            depth += 1;
        }
    }

    /// The keys of the group of `base` (see the module documentation), in
    /// key order: `base` itself if present, then `base\0...`. A group shares
    /// one hash, so this is one descent and an ordered walk of one bucket.
    pub(crate) fn group<'a>(&'a self, base: &'a [u8]) -> Group<'a, V> {
        let hash = (self.hash_of)(base);
        let mut node = &self.root;
        let mut depth = 0;
        loop {
            let bit = 1u32 << fragment(hash, depth);
            if node.bitmap & bit == 0 {
                return Group::Empty;
            }
            match &node.slots[node.index(bit)] {
                Slot::Leaf(k, v) => {
                    return if in_group(k, base) {
                        Group::One(Some((k, v)))
                    } else {
                        Group::Empty
                    };
                }
                Slot::Branch(child) => node = child,
                Slot::Collision(h, entries) if *h == hash => {
                    let start = Key::new(base);
                    return Group::Bucket {
                        range: entries.range(start..),
                        base,
                    };
                }
                Slot::Collision(..) => return Group::Empty,
            }
            depth += 1;
        }
    }

    /// Sets `key` to `value`; returns the value it replaced.
    pub(crate) fn insert(&mut self, key: Key, value: V) -> Option<V> {
        let hash = (self.hash_of)(&key);
        let old = insert_at(&mut self.root, 0, (hash, key), value, self.hash_of);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes `key`; returns its value.
    pub(crate) fn remove(&mut self, key: &Key) -> Option<V> {
        let hash = (self.hash_of)(key);
        let old = remove_at(&mut self.root, 0, hash, key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// An iterator that owns what it walks (the trie's nodes are shared),
    /// so it borrows nothing and outlives this map; it yields clones.
    pub(crate) fn owned_iter(&self) -> OwnedIter<V> {
        OwnedIter {
            stack: vec![(self.root.slots.clone(), 0)],
            bucket: Vec::new().into_iter(),
        }
    }

    pub(crate) fn iter(&self) -> Iter<'_, V> {
        Iter {
            stack: vec![(&self.root, 0)],
            bucket: None,
        }
    }
}

fn insert_at<V: Clone>(
    node: &mut Node<V>,
    depth: u32,
    (hash, key): (u64, Key),
    value: V,
    hash_of: HashFn,
) -> Option<V> {
    let bit = 1u32 << fragment(hash, depth);
    let at = node.index(bit);
    if node.bitmap & bit == 0 {
        node.bitmap |= bit;
        let mut slots = node.take_slots();
        slots.insert(at, Slot::Leaf(key, value));
        node.slots = Arc::from(slots);
        return None;
    }
    let slot = &mut node.slots_mut()[at];
    match slot {
        Slot::Leaf(k, v) if *k == key => Some(std::mem::replace(v, value)),
        Slot::Leaf(..) => {
            let Slot::Leaf(old_key, old_value) =
                std::mem::replace(slot, Slot::Branch(Node::empty()))
            else {
                unreachable!("matched a leaf above")
            };
            *slot = split(
                depth + 1,
                (hash_of(&old_key), old_key, old_value),
                (hash, key, value),
            );
            None
        }
        Slot::Branch(child) => insert_at(child, depth + 1, (hash, key), value, hash_of),
        Slot::Collision(h, entries) if *h == hash => entries.insert(key, value),
        Slot::Collision(h, entries) => {
            // Push the bucket one level down, beside the new key.
            let (old_hash, bucket) = (*h, std::mem::take(entries));
            let old_bit = 1u32 << fragment(old_hash, depth + 1);
            let mut child = Node::with(old_bit, vec![Slot::Collision(old_hash, bucket)]);
            insert_at(&mut child, depth + 1, (hash, key), value, hash_of);
            *slot = Slot::Branch(child);
            None
        }
    }
}

/// The slot holding two keys that met at `depth - 1`: a branch that
/// separates them, or a collision bucket when their hashes are equal.
fn split<V: Clone>(depth: u32, a: (u64, Key, V), b: (u64, Key, V)) -> Slot<V> {
    if a.0 == b.0 || depth >= LEVELS {
        let mut entries = OrdMap::new();
        entries.insert(a.1, a.2);
        entries.insert(b.1, b.2);
        return Slot::Collision(a.0, entries);
    }
    let (fa, fb) = (fragment(a.0, depth), fragment(b.0, depth));
    let node = if fa == fb {
        Node::with(1 << fa, vec![split(depth + 1, a, b)])
    } else {
        let (first, second) = if fa < fb { (a, b) } else { (b, a) };
        Node::with(
            (1 << fa) | (1 << fb),
            vec![Slot::Leaf(first.1, first.2), Slot::Leaf(second.1, second.2)],
        )
    };
    Slot::Branch(node)
}

fn remove_at<V: Clone>(node: &mut Node<V>, depth: u32, hash: u64, key: &Key) -> Option<V> {
    let bit = 1u32 << fragment(hash, depth);
    if node.bitmap & bit == 0 {
        return None;
    }
    let at = node.index(bit);
    let (old, emptied) = match &mut node.slots_mut()[at] {
        Slot::Leaf(k, _) if k == key => {
            let Slot::Leaf(_, v) = remove_slot(node, at, bit) else {
                unreachable!("matched a leaf above")
            };
            return Some(v);
        }
        Slot::Leaf(..) => return None,
        Slot::Collision(h, entries) if *h == hash => {
            let old = entries.remove(key);
            (old, entries.is_empty())
        }
        Slot::Collision(..) => return None,
        Slot::Branch(child) => {
            let old = remove_at(child, depth + 1, hash, key);
            (old, child.slots.is_empty())
        }
    };
    if emptied {
        remove_slot(node, at, bit);
    } else if old.is_some() {
        collapse(&mut node.slots_mut()[at]);
    }
    old
}

/// Keeps the trie canonical after a removal below `slot`: a branch left
/// with one leaf or bucket, or a bucket left with one key, becomes a leaf.
fn collapse<V: Clone>(slot: &mut Slot<V>) {
    let single = match slot {
        Slot::Branch(child)
            if child.slots.len() == 1 && !matches!(child.slots[0], Slot::Branch(_)) =>
        {
            Some(child.slots[0].clone())
        }
        Slot::Collision(_, entries) if entries.len() == 1 => entries
            .iter()
            .next()
            .map(|(k, v)| Slot::Leaf(k.clone(), v.clone())),
        _ => None,
    };
    if let Some(mut s) = single {
        if let Slot::Collision(..) = s {
            collapse(&mut s);
        }
        *slot = s;
    }
}

fn remove_slot<V: Clone>(node: &mut Node<V>, at: usize, bit: u32) -> Slot<V> {
    node.bitmap &= !bit;
    let mut slots = node.take_slots();
    let removed = slots.remove(at);
    node.slots = Arc::from(slots);
    removed
}

/// The keys of one group in key order (see [`Hamt::group`]).
pub(crate) enum Group<'a, V> {
    /// No key of the group.
    Empty,
    /// The group's one key.
    One(Option<(&'a Key, &'a V)>),
    /// A bucket walked from the group's base while keys belong to it.
    Bucket {
        range: imbl::ordmap::RangedIter<'a, Key, V, imbl::shared_ptr::DefaultSharedPtr>,
        base: &'a [u8],
    },
}

impl<'a, V> Iterator for Group<'a, V> {
    type Item = (&'a Key, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Group::Empty => None,
            Group::One(item) => item.take(),
            Group::Bucket { range, base } => {
                // Keys of the group are contiguous from `base` in key order
                // (`base` < `base\0...` < anything else starting with
                // `base`); another group that shares the hash sorts apart.
                let (k, v) = range.next()?;
                if in_group(k, base) {
                    Some((k, v))
                } else {
                    *self = Group::Empty;
                    None
                }
            }
        }
    }
}

/// Entries in hash order, owning the nodes it walks.
pub(crate) struct OwnedIter<V> {
    stack: Vec<(Arc<[Slot<V>]>, usize)>,
    bucket: std::vec::IntoIter<(Key, V)>,
}

impl<V: Clone> Iterator for OwnedIter<V> {
    type Item = (Key, V);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.bucket.next() {
                return Some(item);
            }
            let (slots, at) = self.stack.last_mut()?;
            let Some(slot) = slots.get(*at) else {
                self.stack.pop();
                continue;
            };
            *at += 1;
            match slot {
                Slot::Leaf(k, v) => return Some((k.clone(), v.clone())),
                Slot::Branch(child) => {
                    let slots = child.slots.clone();
                    self.stack.push((slots, 0));
                }
                Slot::Collision(_, entries) => {
                    let items: Vec<(Key, V)> = entries
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    self.bucket = items.into_iter();
                }
            }
        }
    }
}

/// Entries in hash order (see the module documentation).
pub(crate) struct Iter<'a, V> {
    stack: Vec<(&'a Node<V>, usize)>,
    bucket: Option<Box<dyn Iterator<Item = (&'a Key, &'a V)> + 'a>>,
}

impl<'a, V> Iterator for Iter<'a, V> {
    type Item = (&'a Key, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(bucket) = &mut self.bucket {
                if let Some(item) = bucket.next() {
                    return Some(item);
                }
                self.bucket = None;
            }
            let (node, at) = self.stack.last_mut()?;
            let Some(slot) = node.slots.get(*at) else {
                self.stack.pop();
                continue;
            };
            *at += 1;
            match slot {
                Slot::Leaf(k, v) => return Some((k, v)),
                Slot::Branch(child) => self.stack.push((child, 0)),
                Slot::Collision(_, entries) => self.bucket = Some(Box::new(entries.iter())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn k(s: &[u8]) -> Key {
        Key::new(s)
    }

    #[test]
    fn insert_get_remove() {
        let mut m: Hamt<u32> = Hamt::default();
        for i in 0..10_000u32 {
            assert_eq!(m.insert(k(format!("key-{i}").as_bytes()), i), None);
        }
        assert_eq!(m.len(), 10_000);
        assert_eq!(m.insert(k(b"key-7"), 70), Some(7));
        assert_eq!(m.get(&k(b"key-7")), Some(&70));
        assert_eq!(m.get(&k(b"nope")), None);
        let snapshot = m.clone();
        for i in 0..10_000u32 {
            assert!(m.remove(&k(format!("key-{i}").as_bytes())).is_some());
        }
        assert!(m.is_empty());
        assert_eq!(
            m.root.slots.len(),
            0,
            "removing everything leaves an empty root"
        );
        assert_eq!(snapshot.len(), 10_000, "a clone is untouched");
        assert_eq!(snapshot.get(&k(b"key-9999")), Some(&9999));
        assert_eq!(snapshot.iter().count(), 10_000);
    }

    /// Collisions, forced through the tree code with a fake hash: every key
    /// lands in the same bucket.
    #[test]
    fn full_collisions_use_a_bucket() {
        fn same(_: &[u8]) -> u64 {
            42
        }
        let mut node: Node<u32> = Node::empty();
        for i in 0..100u32 {
            insert_at(&mut node, 0, (42, k(format!("c{i}").as_bytes())), i, same);
        }
        assert_eq!(node.slots.len(), 1);
        assert!(matches!(node.slots[0], Slot::Collision(42, ref e) if e.len() == 100));
        for i in 0..99u32 {
            assert_eq!(
                remove_at(&mut node, 0, 42, &k(format!("c{i}").as_bytes())),
                Some(i)
            );
        }
        assert!(
            matches!(node.slots[0], Slot::Leaf(..)),
            "a bucket of one becomes a leaf"
        );
        // A bucket pushed down when a key with another hash arrives.
        insert_at(&mut node, 0, (42, k(b"again")), 1, same);
        insert_at(&mut node, 0, (42 ^ (1 << 5), k(b"other")), 2, same);
        assert!(
            matches!(node.slots[0], Slot::Branch(_)),
            "the bucket moved down a level"
        );
        let mut seen: Vec<u32> = Vec::new();
        let mut stack = vec![&node];
        while let Some(n) = stack.pop() {
            for s in n.slots.iter() {
                match s {
                    Slot::Leaf(_, v) => seen.push(*v),
                    Slot::Branch(c) => stack.push(c),
                    Slot::Collision(_, e) => seen.extend(e.values()),
                }
            }
        }
        seen.sort();
        assert_eq!(seen, vec![1, 2, 99]);
    }

    /// Equal low bits for every key and only four distinct hashes: deep
    /// chains, collision buckets and buckets pushed down.
    fn weak(key: &[u8]) -> u64 {
        u64::from(key[0] & 3) << 58
    }

    proptest! {
        /// A group is exactly the keys `base` and `base\0...`, in key order,
        /// through inserts and removals.
        #[test]
        fn groups_are_their_keys_in_order(
            ops in proptest::collection::vec((any::<bool>(), 0u8..4, proptest::option::of(0u16..300)), 1..600),
        ) {
            let mut m: Hamt<u8> = Hamt::default();
            let mut model: BTreeMap<Vec<u8>, u8> = BTreeMap::new();
            let bases: [&[u8]; 4] = [b"doc", b"doc2", b"do", b"x"];
            for (insert, b, rest) in ops {
                let mut key = bases[usize::from(b)].to_vec();
                if let Some(r) = rest {
                    key.push(0);
                    key.extend_from_slice(r.to_string().as_bytes());
                }
                if insert {
                    m.insert(k(&key), b);
                    model.insert(key, b);
                } else {
                    m.remove(&k(&key));
                    model.remove(&key);
                }
            }
            for base in bases {
                let got: Vec<Vec<u8>> = m.group(base).map(|(k, _)| k.to_vec()).collect();
                let want: Vec<Vec<u8>> = model.keys().filter(|k| in_group(k, base)).cloned().collect();
                prop_assert_eq!(got, want);
            }
        }

        #[test]
        fn behaves_like_a_btreemap(
            weak_hash in any::<bool>(),
            ops in proptest::collection::vec((any::<bool>(), 0u16..400, any::<u8>()), 1..800),
        ) {
            let mut m: Hamt<u8> = if weak_hash { Hamt::with_hasher(weak) } else { Hamt::default() };
            let mut model = BTreeMap::new();
            let mut versions = Vec::new();
            for (insert, key, value) in ops {
                let key_bytes = key.to_le_bytes();
                if insert {
                    prop_assert_eq!(m.insert(k(&key_bytes), value), model.insert(key_bytes.to_vec(), value));
                } else {
                    prop_assert_eq!(m.remove(&k(&key_bytes)), model.remove(key_bytes.as_slice()));
                }
                prop_assert_eq!(m.len(), model.len());
                if key % 50 == 0 {
                    versions.push((m.clone(), model.clone()));
                }
            }
            versions.push((m, model));
            for (m, model) in versions {
                let mut got: Vec<(Vec<u8>, u8)> = m.iter().map(|(k, v)| (k.to_vec(), *v)).collect();
                let owned: Vec<(Vec<u8>, u8)> = m.owned_iter().map(|(k, v)| (k.to_vec(), v)).collect();
                prop_assert_eq!(&owned, &got, "both iterators visit the same keys in the same order");
                got.sort();
                let want: Vec<(Vec<u8>, u8)> = model.into_iter().collect();
                prop_assert_eq!(got, want);
            }
        }
    }
}
