//! A fast, deterministic 64-bit hash of keys: the same bytes hash the same
//! on every machine and in every version of this format. It orders keys
//! inside the store's index and is not for security: a collision only costs
//! a byte comparison.

const P0: u64 = 0xA076_1D64_78BD_642F;
const P1: u64 = 0xE703_7ED1_A0B4_28DB;
const P2: u64 = 0x8EBC_6AF0_9C88_C6E3;

/// Multiplies to 128 bits and folds the halves together.
fn fold(a: u64, b: u64) -> u64 {
    let r = u128::from(a) * u128::from(b);
    (r as u64) ^ ((r >> 64) as u64)
}

fn read8(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

fn read4(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u64::from(u32::from_le_bytes(w))
}

/// The last 0 to 16 bytes as two words, with fixed-size (overlapping)
/// loads so no length-dependent copy is needed.
fn tail(b: &[u8]) -> (u64, u64) {
    let n = b.len();
    match n {
        0 => (0, 0),
        1..=3 => (
            (u64::from(b[0]) << 16) | (u64::from(b[n / 2]) << 8) | u64::from(b[n - 1]),
            0,
        ),
        4..=8 => ((read4(b, 0) << 32) | read4(b, n - 4), 0),
        _ => (read8(b, 0), read8(b, n - 8)),
    }
}

/// The 64-bit hash of `bytes`: one folded 128-bit multiply per 16 bytes,
/// then one over the length, so inputs of different lengths differ even
/// where the loads overlap.
pub fn key_hash(bytes: &[u8]) -> u64 {
    let mut seed = P0;
    let mut rest = bytes;
    while rest.len() > 16 {
        seed = fold(read8(rest, 0) ^ P1, read8(rest, 8) ^ seed);
        rest = &rest[16..];
    }
    let (a, b) = tail(rest);
    seed = fold(a ^ P1, b ^ seed);
    fold(seed ^ P2, (bytes.len() as u64) ^ P1)
}

/// The hash a Merkle tree keeps of a stored object: its bytes hashed,
/// bound to its key (keys may share a key hash, so the object hash must
/// tell them apart). Every node computes it the same way.
pub fn object_hash(key: &[u8], bytes: &[u8]) -> u64 {
    key_hash(bytes)
        ^ key_hash(key)
            .rotate_left(29)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_fixed_across_machines_and_versions() {
        // These values are part of the format: changing them reorders
        // every index and must come with a version change.
        assert_eq!(key_hash(b"key-0000001"), key_hash(b"key-0000001"));
        let pinned = [
            key_hash(b"a"),
            key_hash(b"key-0000001"),
            key_hash(&[0u8; 40]),
        ];
        assert_eq!(pinned, PINNED);
    }

    const PINNED: [u64; 3] = [
        15752610655070539582,
        2984998209517180811,
        12678379515740486209,
    ];

    #[test]
    fn spreads_similar_keys() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..100_000u32 {
            assert!(
                seen.insert(key_hash(format!("key-{i:07}").as_bytes())),
                "collision at {i}"
            );
        }
        // Length is mixed in, so trailing zeros do not collide.
        assert_ne!(key_hash(b"a"), key_hash(b"a\0"));
        // Every length from 0 to 40 takes its own path through the tail.
        let all: std::collections::HashSet<u64> = (0..=40usize)
            .flat_map(|n| [key_hash(&vec![0u8; n]), key_hash(&vec![7u8; n])])
            .collect();
        assert_eq!(
            all.len(),
            81,
            "41 lengths of two inputs, but both empty inputs are the same"
        );
    }

    #[test]
    fn an_object_hash_binds_the_key() {
        assert_eq!(object_hash(b"k", b"v"), object_hash(b"k", b"v"));
        assert_ne!(object_hash(b"k1", b"v"), object_hash(b"k2", b"v"));
        assert_ne!(object_hash(b"k", b"v1"), object_hash(b"k", b"v2"));
    }
}
