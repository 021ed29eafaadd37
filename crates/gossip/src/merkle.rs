//! Merkle-tree anti-entropy (the scheme of Dynamo, DeCandia et al., SOSP
//! 2007, and Riak's active anti-entropy): two replicas compare hash trees
//! over their keys top-down, descend only where the hashes differ, and then
//! send each other the objects of the keys that differ.
//!
//! [`MerkleTree`] is the tree. Its top two levels are named, like the
//! store's keys: the root's children are *prefixes*, a prefix's children
//! are *full prefixes* (prefix, subprefix). Inside a full prefix the keys
//! sit in a segment tree of fan-out [`FAN_OUT`], addressed by the key's
//! 64-bit hash: the node at level `l` (0 = the full prefix's top, at most
//! [`MAX_LEVEL`]) with index `i` holds the keys whose hash's top `2l` bits
//! are `i`. Every node's hash is a wrapping *sum* of its elements' values,
//! so an update adjusts one node per level in O(depth), with no re-hash of
//! siblings, and the same contents give the same hashes whatever the order
//! of the updates.
//!
//! [`Exchange`] is the protocol, one session per side, with no IO: the
//! caller carries its [`Message`]s (every one serde-serialisable) and hands
//! the objects the peer sent ([`Repair`]) to the application, which merges
//! them and updates its tree itself. Traffic grows with the number of keys
//! that differ, not with the number of keys: equal trees cost one `Begin`
//! and one empty step.
//!
//! The caller supplies the hashes. Two trees hash alike when they hold the
//! same multiset of (key hash, object hash) pairs under the same names, so
//! when key hashes can collide the object hash must bind the key too (the
//! store's element hash of (key, bytes) does).

use serde::{Deserialize, Serialize};

mod exchange;
mod tree;

pub use exchange::{
    Exchange, ExchangeConfig, ExchangeStats, FullPrefixStep, Message, NamedChildren, NodeChildren,
    NodeEntries, ObjectSource, Repair, Step,
};
pub use tree::MerkleTree;

/// Children per segment-tree node: each level consumes two bits of the key
/// hash.
pub const FAN_OUT: usize = 4;

/// The deepest segment-tree level: 64 bits of key hash, two per level. A
/// node there holds the keys of one exact key hash.
pub const MAX_LEVEL: u8 = 32;

/// A node's hash and the number of keys under it. A missing node is the
/// default: hash 0, count 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Summary {
    /// Wrapping sum of the values of the node's elements (or children).
    pub hash: u64,
    /// Keys under the node.
    pub count: u64,
}

/// SplitMix64's finaliser: a bijection on 64 bits with full avalanche, so
/// structured inputs (small integers, nearby hashes) give unrelated outputs.
fn finalize(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SplitMix64's increment (the golden ratio): added before finalising so
/// that a zero input does not map to zero.
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The value one key contributes to its nodes' sums. The object hash goes
/// through its own finaliser before meeting the key hash, so no simple
/// relation between two pairs (a swap, a shared xor) makes their values
/// equal. Pinned by a test: changing it makes every replica's hashes
/// disagree with older ones.
fn element_value(key_hash: u64, object_hash: u64) -> u64 {
    finalize(key_hash ^ finalize(object_hash.wrapping_add(GAMMA)))
}

/// 64-bit hash of a prefix or subprefix name: FNV-1a, then the finaliser
/// (FNV's low bits mix poorly on short names). Pinned by a test.
fn name_hash(name: &[u8]) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for &b in name {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    finalize(h)
}

/// The value a named child (a prefix under the root, a full prefix under a
/// prefix) contributes to its parent's sum: its name, hash and count mixed,
/// so a child moved to another name, or one whose count changes, changes
/// the parent. A child with no keys contributes 0, which is what lets an
/// empty child be removed. Pinned by a test.
fn child_value(name_hash: u64, child: Summary) -> u64 {
    if child.count == 0 {
        return 0;
    }
    let contents = finalize(child.hash.wrapping_add(child.count.wrapping_mul(GAMMA)));
    finalize(name_hash ^ contents)
}

/// The key-hash range `lo..=hi` of node (`level`, `index`), or `None` if
/// there is no such node (level past [`MAX_LEVEL`], index past `4^level`).
fn node_range(level: u8, index: u64) -> Option<(u64, u64)> {
    if level > MAX_LEVEL {
        return None;
    }
    // u128 because level 0 spans all 2^64 hashes, one past u64's range.
    let shift = 64 - 2 * u32::from(level);
    let lo = u128::from(index) << shift;
    let hi = lo + (1u128 << shift) - 1;
    Some((u64::try_from(lo).ok()?, u64::try_from(hi).ok()?))
}

/// The index of the level-`level` node holding `key_hash`: its top
/// `2 * level` bits.
fn node_index(key_hash: u64, level: u8) -> u64 {
    // A shift by 64 (level 0) is not defined on u64; level 0 has one node.
    key_hash.checked_shr(64 - 2 * u32::from(level)).unwrap_or(0)
}

#[cfg(test)]
mod tests;
