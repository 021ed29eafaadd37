//! The node id: 16 random bytes naming a data directory, shown as 32 hex digits.

use std::fmt;

/// Identity of a node (one data directory). Every process on the directory
/// writes as this node: the writer lock already orders them.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId([u8; 16]);

impl NodeId {
    /// Wraps raw bytes.
    pub fn from_bytes(b: [u8; 16]) -> Self {
        NodeId(b)
    }
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
    /// Parses 32 hex digits.
    pub fn parse_hex(s: &str) -> Option<Self> {
        let s = s.trim();
        if s.len() != 32 || !s.is_ascii() {
            return None;
        }
        let mut b = [0u8; 16];
        for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
            let hex = std::str::from_utf8(chunk).ok()?;
            b[i] = u8::from_str_radix(hex, 16).ok()?;
        }
        Some(NodeId(b))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = NodeId::from_bytes([0xab; 16]);
        assert_eq!(NodeId::parse_hex(&id.to_string()), Some(id));
        assert_eq!(NodeId::parse_hex("xyz"), None);
        assert_eq!(NodeId::parse_hex(&"g".repeat(32)), None);
    }
}
