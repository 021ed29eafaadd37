//! What replicas say to each other: the frames after the handshake. Their
//! byte encoding (length-delimited postcard) and the handshake itself
//! belong to the daemon (`chorus-node`'s `wire.rs`); the simulator passes
//! the values themselves.

use serde::{Deserialize, Serialize};

use chorus_gossip::{hyparview, merkle, plumtree};

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
    /// A frame of a channel's scope: its own overlay, tree and exchanges
    /// (`Membership`, `Broadcast` or `Exchange` inside; never another
    /// `Channel`). Frames without one are the cluster scope's, as every
    /// frame was before channels: a new variant at the end, so the earlier
    /// variants encode as they did (older peers are never sent this one:
    /// only members of a channel are, and a table naming a node is written
    /// by a release that knows channels).
    Channel {
        /// The channel's name.
        channel: String,
        /// The frame.
        frame: Box<Frame>,
    },
}

impl Frame {
    /// Announcements and prunes: what a full queue drops first.
    pub fn is_lazy(&self) -> bool {
        match self {
            Frame::Channel { frame, .. } => frame.is_lazy(),
            other => matches!(
                other,
                Frame::Broadcast(plumtree::Message::IHave { .. } | plumtree::Message::Prune)
            ),
        }
    }
}
