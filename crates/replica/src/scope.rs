//! A replication scope: the data one broadcast pair and one Merkle tree
//! cover. Every node has the cluster scope (full prefixes in no channel,
//! and Chorus's own reserved ones), plus one scope per channel it serves
//! or still holds data of (see `docs/channels.md`).
//!
//! A scope's overlay (HyParView), tree (Plumtree) and anti-entropy run
//! only among the scope's members, so nothing of a channel reaches a node
//! outside it, and "every member has seen it" (tombstones, operation log
//! pruning) counts the channel's members only.

use std::collections::BTreeMap;

use chorus_core::key_hash;
use chorus_gossip::hyparview::{self, HyParView};
use chorus_gossip::merkle::MerkleTree;
use chorus_gossip::plumtree::{self, Plumtree};

use crate::{BroadcastId, Peer};

/// The cluster scope's name: channel names are never empty.
pub const CLUSTER: &str = "";

/// Where a node stands in a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Serving it; not yet holding what its members hold: since this
    /// moment (ms), no exchange with a member has finished.
    Joining {
        /// When this node started serving (or this run started).
        since: u64,
    },
    /// Serving it, and an exchange with a member that started after the
    /// node began serving has finished (or it is the only member).
    Ready,
    /// No longer serving it (since `since`, ms) but still holding its
    /// data: kept until enough members hold it too, then dropped.
    Leaving {
        /// When this node learned it no longer serves the channel.
        since: u64,
    },
}

/// One scope's protocols and state.
pub struct Scope {
    /// The overlay among the scope's members; `None` while leaving.
    pub hpv: Option<HyParView<Peer>>,
    /// The broadcast tree over it; `None` while leaving.
    pub plum: Option<Plumtree<Peer, BroadcastId, Vec<u8>>>,
    /// The Merkle tree of the scope's objects held here.
    pub tree: MerkleTree<Vec<u8>>,
    /// When an exchange that finished last started, per peer, in this
    /// scope: everything of the scope that arrived here before it has
    /// reached that peer.
    pub synced: BTreeMap<Peer, u64>,
    /// Serving, joining or leaving.
    pub state: State,
    /// How many keys of the scope each peer held when it last opened an
    /// exchange with this node, and when (ms; at most `MEMBERS_MAX`
    /// peers): what a joining node's progress is measured against.
    pub peer_keys: BTreeMap<Peer, (u64, u64)>,
}

impl Scope {
    /// A scope this node serves, with fresh protocols seeded from `seed`
    /// and the scope's name (so every channel's overlay draws apart).
    pub fn serving(me: &Peer, name: &str, seed: u64, state: State) -> Scope {
        let seed = seed ^ key_hash(name.as_bytes());
        Scope {
            hpv: Some(HyParView::new(
                me.clone(),
                hyparview::Config::default(),
                seed,
            )),
            plum: Some(Plumtree::new(me.clone(), plumtree::Config::default())),
            tree: MerkleTree::new(),
            synced: BTreeMap::new(),
            state,
            peer_keys: BTreeMap::new(),
        }
    }

    /// A scope this node holds data of but does not serve.
    pub fn leaving(since: u64) -> Scope {
        Scope {
            hpv: None,
            plum: None,
            tree: MerkleTree::new(),
            synced: BTreeMap::new(),
            state: State::Leaving { since },
            peer_keys: BTreeMap::new(),
        }
    }

    /// The most keys a peer said it held when it last opened an exchange
    /// with this node.
    pub fn members_keys(&self) -> u64 {
        self.peer_keys.values().map(|(n, _)| *n).max().unwrap_or(0)
    }

    /// The most keys a peer said it held, counting a peer that is not a
    /// member (a node handing the channel off) only if it said so since
    /// `recent` (ms): once it has dropped its copy it says nothing more,
    /// and members may since have collected tombstones it still held.
    pub fn target_keys(&self, members: &[Peer], recent: u64) -> u64 {
        self.peer_keys
            .iter()
            .filter(|(p, (_, at))| *at >= recent || members.contains(p))
            .map(|(_, (n, _))| *n)
            .max()
            .unwrap_or(0)
    }

    /// True while this node serves the scope.
    pub fn is_serving(&self) -> bool {
        !matches!(self.state, State::Leaving { .. })
    }

    /// Stops serving: the protocols go (their peers notice by their own
    /// table), the tree and the data stay until handed off.
    pub fn stop_serving(&mut self, now_ms: u64) {
        self.hpv = None;
        self.plum = None;
        self.state = State::Leaving { since: now_ms };
    }
}

/// What `chorus status` and `/v1/cluster` show of one channel.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChannelStatus {
    /// The channel.
    pub name: String,
    /// `joining`, `ready` or `leaving`.
    pub state: &'static str,
    /// Keys of the channel held here.
    pub keys: u64,
    /// The most keys a member held when it last opened an exchange with
    /// this node (0: none has yet).
    pub members_keys: u64,
    /// Other members of the channel this node knows the address of.
    pub members: Vec<Peer>,
    /// While leaving: members that hold everything this node had when it
    /// stopped serving, and how many it waits for before dropping.
    pub handed_off: usize,
    /// While leaving: how many must hold it first.
    pub handoff_needed: usize,
}
