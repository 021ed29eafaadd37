//! `Key`: a key as the index holds it. Keys of up to 22 bytes (most metadata
//! keys) live inline in the index's nodes, so a lookup compares them without
//! following a pointer; longer keys are shared on the heap.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

const INLINE: usize = 22;

/// An immutable byte-string key; cheap to clone, ordered like `[u8]`.
#[derive(Clone)]
pub struct Key(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Arc<[u8]>),
}

impl Key {
    /// Copies `bytes` into a key.
    pub fn new(bytes: &[u8]) -> Self {
        if bytes.len() <= INLINE {
            let mut inline = [0u8; INLINE];
            inline[..bytes.len()].copy_from_slice(bytes);
            Key(Repr::Inline {
                len: bytes.len() as u8,
                bytes: inline,
            })
        } else {
            Key(Repr::Heap(Arc::from(bytes)))
        }
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Repr::Heap(b) => b,
        }
    }
}

impl Deref for Key {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<[u8]> for Key {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// The inline bytes as three big-endian words. Bytes past `len` are zero,
/// so comparing (words, len) orders keys exactly like comparing the byte
/// strings: a difference before the shorter end decides in the words, and
/// a proper prefix pads with zeros, ties the words or loses, and then loses
/// on length.
fn words(b: &[u8; INLINE]) -> (u64, u64, u64) {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[0..8]);
    let a = u64::from_be_bytes(w);
    w.copy_from_slice(&b[8..16]);
    let m = u64::from_be_bytes(w);
    let mut t = [0u8; 8];
    t[..6].copy_from_slice(&b[16..22]);
    (a, m, u64::from_be_bytes(t))
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Repr::Inline { len: la, bytes: a }, Repr::Inline { len: lb, bytes: b }) => {
                la == lb && a == b
            }
            _ => self.as_bytes() == other.as_bytes(),
        }
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        match (&self.0, &other.0) {
            (Repr::Inline { len: la, bytes: a }, Repr::Inline { len: lb, bytes: b }) => {
                words(a).cmp(&words(b)).then(la.cmp(lb))
            }
            _ => self.as_bytes().cmp(other.as_bytes()),
        }
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({:?})", String::from_utf8_lossy(self.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_and_heap_keys_order_like_bytes() {
        assert_eq!(std::mem::size_of::<Key>(), 24);
        let words: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"\0".to_vec(),
            b"a".to_vec(),
            b"a\0".to_vec(),
            b"a\0\0b".to_vec(),
            b"a\x01".to_vec(),
            b"ab".to_vec(),
            vec![b'a'; 21],
            [vec![b'a'; 21], vec![0]].concat(),
            vec![b'a'; 15],
            [vec![b'a'; 15], vec![0xff]].concat(),
            vec![b'a'; 22],
            vec![b'a'; 23],
            vec![b'a'; 40],
            b"b".to_vec(),
            vec![0xff; 30],
        ];
        for x in &words {
            for y in &words {
                assert_eq!(Key::new(x).cmp(&Key::new(y)), x.cmp(y), "{x:?} vs {y:?}");
                assert_eq!(Key::new(x) == Key::new(y), x == y);
            }
            assert_eq!(Key::new(x).as_bytes(), &x[..]);
        }
    }
}
