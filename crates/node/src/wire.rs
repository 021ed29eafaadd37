//! The peer protocol on a byte stream: a handshake, then length-delimited
//! frames.
//!
//! Every frame is `[u32 little-endian length][postcard payload]`, the
//! payload at most [`FRAME_MAX`] bytes. The first frame each side sends is
//! a [`Hello`] naming the protocol version, the sender's node id and the
//! address it listens on; a peer with another version is refused with the
//! reason, so an upgrade fails loudly instead of garbling.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use chorus_gossip::{hyparview, merkle, plumtree};

/// The protocol version this build speaks: 2 adds the credential
/// exchange after the hello (`join.rs`).
pub const PROTOCOL_VERSION: u16 = 2;
/// The version a node sends when it neither runs auth nor joins with a
/// token: the hello of the previous release, so that open nodes of both
/// releases still talk; the exchange runs only when both hellos say 2.
pub const PROTOCOL_OPEN: u16 = 1;
/// Largest frame payload accepted; a peer that sends more is cut off.
pub const FRAME_MAX: usize = 16 << 20;
/// The first bytes of every hello, so a stray client is told apart.
const MAGIC: [u8; 8] = *b"CHORUS01";

/// A peer's address: where it listens for gossip.
pub type Peer = String;

/// What a Plumtree broadcast is identified by: the key and the context of
/// the object it carries, so staleness is a causal check.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BroadcastId {
    /// `prefix/subprefix`.
    pub full_prefix: String,
    /// The key.
    pub key: Vec<u8>,
    /// The object's context, as clients see it.
    pub context: String,
}

/// The first frame on a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    magic: [u8; 8],
    /// The sender's protocol version.
    pub version: u16,
    /// The sender's node id.
    pub node_id: [u8; 16],
    /// Where the sender listens for gossip.
    pub listen: Peer,
}

impl Hello {
    /// This build's hello: version 2 when the node exchanges credentials
    /// (it runs auth or joins with a token), else version 1.
    pub fn new(node_id: [u8; 16], listen: Peer, authenticating: bool) -> Hello {
        Hello {
            magic: MAGIC,
            version: if authenticating {
                PROTOCOL_VERSION
            } else {
                PROTOCOL_OPEN
            },
            node_id,
            listen,
        }
    }

    /// Whether the sender exchanges credentials after the hello.
    pub fn authenticates(&self) -> bool {
        self.version >= 2
    }

    /// Refuses a hello from another protocol, with the reason.
    pub fn check(&self) -> Result<(), String> {
        if self.magic != MAGIC {
            return Err("the peer is not a Chorus node".into());
        }
        if !(PROTOCOL_OPEN..=PROTOCOL_VERSION).contains(&self.version) {
            return Err(format!(
                "the peer speaks protocol version {}, this node {PROTOCOL_OPEN} to {PROTOCOL_VERSION}: run the same Chorus version on both",
                self.version
            ));
        }
        Ok(())
    }
}

/// Every frame after the hello.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Frame {
    /// Membership.
    Membership(hyparview::Message<Peer>),
    /// Broadcast; the payload is an encoded object.
    Broadcast(plumtree::Message<BroadcastId, Vec<u8>>),
    /// Anti-entropy.
    Exchange {
        /// The session, chosen by the initiator.
        session: u64,
        /// True when the initiator sent it.
        from_initiator: bool,
        /// The step.
        message: merkle::Message<Vec<u8>, Vec<u8>>,
    },
}

impl Frame {
    /// Announcements and prunes: what a full queue drops first.
    pub fn is_lazy(&self) -> bool {
        matches!(
            self,
            Frame::Broadcast(plumtree::Message::IHave { .. } | plumtree::Message::Prune)
        )
    }
}

/// Writes one frame.
pub async fn write_frame<W, T>(w: &mut W, value: &T) -> std::io::Result<()>
where
    W: AsyncWriteExt + Unpin,
    T: Serialize,
{
    let bytes = postcard::to_stdvec(value).map_err(std::io::Error::other)?;
    if bytes.len() > FRAME_MAX {
        return Err(std::io::Error::other(format!(
            "a frame of {} bytes exceeds the limit of {FRAME_MAX}",
            bytes.len()
        )));
    }
    let len = u32::try_from(bytes.len()).map_err(std::io::Error::other)?;
    w.write_all(&len.to_le_bytes()).await?;
    w.write_all(&bytes).await?;
    w.flush().await?;
    BYTES_SENT.fetch_add(bytes.len() as u64 + 4, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Bytes this process has written to peers, framing included (for
/// `/metrics`).
pub static BYTES_SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Largest hello accepted: it is read before the peer is known.
pub const HELLO_MAX: usize = 4096;

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub async fn read_frame<R, T>(r: &mut R) -> std::io::Result<Option<T>>
where
    R: AsyncReadExt + Unpin,
    T: for<'de> Deserialize<'de>,
{
    read_frame_limited(r, FRAME_MAX).await
}

/// Reads one frame of at most `max` bytes.
pub async fn read_frame_limited<R, T>(r: &mut R, max: usize) -> std::io::Result<Option<T>>
where
    R: AsyncReadExt + Unpin,
    T: for<'de> Deserialize<'de>,
{
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(std::io::Error::other(format!(
            "the peer sent a frame of {len} bytes, over the limit of {max}"
        )));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    postcard::from_bytes(&buf)
        .map(Some)
        .map_err(|e| std::io::Error::other(format!("the peer sent an undecodable frame: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hello of the previous release (protocol 1), as it sent it: a
    /// node of this release without auth still talks to it.
    const HELLO_V1: &[u8] = b"CHORUS01\x01\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x0e127.0.0.1:7900";

    #[test]
    fn a_hello_of_the_previous_release_is_accepted_without_the_exchange() {
        let hello: Hello = postcard::from_bytes(HELLO_V1).expect("decodes");
        assert_eq!(hello.check(), Ok(()));
        assert!(!hello.authenticates());
        assert_eq!(hello.listen, "127.0.0.1:7900");
        // An open node of this release sends exactly that hello.
        let open = Hello::new([7; 16], "127.0.0.1:7900".into(), false);
        assert_eq!(postcard::to_stdvec(&open).expect("encodes"), HELLO_V1);
        let authenticating = Hello::new([7; 16], "127.0.0.1:7900".into(), true);
        assert!(authenticating.authenticates());
        let mut future = authenticating;
        future.version = PROTOCOL_VERSION + 1;
        assert!(
            future
                .check()
                .is_err_and(|e| e.contains("same Chorus version"))
        );
    }
}
