//! HyParView (Leitão, Pereira, Rodrigues, DSN 2007): a small, symmetric
//! *active view* of peers with open links, used for broadcast, and a larger
//! *passive view* of backup peers, refreshed by shuffles and promoted when
//! an active peer fails.
//!
//! The struct is the whole protocol. The caller feeds it
//! [`HyParView::join`], [`HyParView::handle_message`],
//! [`HyParView::handle_timer`] and [`HyParView::peer_failed`], then drains
//! [`HyParView::poll_output`] until it returns `None`. Timers are data: the
//! caller sets them as asked and hands them back when they fire.

use std::collections::VecDeque;
use std::fmt::Debug;

use serde::{Deserialize, Serialize};

use crate::Rng;

/// Sizes and walk lengths. The defaults are the paper's for a target of
/// about 10,000 nodes (active `log10(N) + 1`, passive six times that).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Most peers in the active view.
    pub active_size: usize,
    /// Most peers in the passive view.
    pub passive_size: usize,
    /// Active random walk length: hops a ForwardJoin travels.
    pub arwl: u8,
    /// Passive random walk length: at this remaining length a ForwardJoin
    /// also puts the joiner in the passive view.
    pub prwl: u8,
    /// Active peers sent in a shuffle.
    pub shuffle_active: usize,
    /// Passive peers sent in a shuffle.
    pub shuffle_passive: usize,
    /// Time between shuffles, in ms.
    pub shuffle_interval_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            active_size: 5,
            passive_size: 30,
            arwl: 6,
            prwl: 3,
            shuffle_active: 3,
            shuffle_passive: 4,
            shuffle_interval_ms: 10_000,
        }
    }
}

/// How urgently a node asks a passive peer to become active: `High` when
/// its active view is empty (the peer must accept), `Low` otherwise (the
/// peer accepts only if it has room).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Priority {
    /// The sender has no active peer left.
    High,
    /// The sender wants one more.
    Low,
}

/// The protocol's messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message<P> {
    /// A new node asks to join through the receiver.
    Join,
    /// Spreads a joiner through the overlay by a random walk.
    ForwardJoin {
        /// The node that joined.
        joiner: P,
        /// Hops left.
        ttl: u8,
    },
    /// Asks the receiver to make the sender an active peer.
    Neighbor {
        /// How urgently.
        priority: Priority,
    },
    /// Answers a `Neighbor`.
    NeighborReply {
        /// True when the receiver made the sender an active peer.
        accepted: bool,
    },
    /// The sender dropped the receiver from its active view.
    Disconnect,
    /// Exchanges samples of the views, by a random walk from `origin`.
    Shuffle {
        /// The node that started the shuffle (the reply goes to it).
        origin: P,
        /// Hops left.
        ttl: u8,
        /// The origin and a sample of its views.
        peers: Vec<P>,
    },
    /// Answers a `Shuffle` with a sample of the receiver's passive view.
    ShuffleReply {
        /// The sample.
        peers: Vec<P>,
    },
}

/// Timers the protocol asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Time for a shuffle.
    Shuffle,
}

/// What the protocol asks its caller to do, or tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output<P> {
    /// Send `message` to `to` (opening a link if needed).
    Send {
        /// The peer.
        to: P,
        /// The message.
        message: Message<P>,
    },
    /// Hand `timer` back to [`HyParView::handle_timer`] after `after_ms`.
    SetTimer {
        /// The delay.
        after_ms: u64,
        /// The timer.
        timer: Timer,
    },
    /// `peer` joined the active view (the broadcast layer gains a link).
    NeighborUp(P),
    /// `peer` left the active view (the link may be closed).
    NeighborDown(P),
}

/// Most outputs one input can produce: a Join makes a ForwardJoin per
/// active peer, a Disconnect and a promotion; the queue is drained after
/// every input, so it never holds more than this.
fn output_bound(config: &Config) -> usize {
    2 * config.active_size + 8
}

/// One node's HyParView state.
#[derive(Debug, Clone)]
pub struct HyParView<P> {
    me: P,
    config: Config,
    active: Vec<P>,
    passive: Vec<P>,
    /// Passive peers asked to become active and not yet answered.
    promoting: Vec<P>,
    /// Passive peers that refused since the last shuffle tick: not asked
    /// again before it, so a full neighbourhood cannot loop refusals.
    refused: Vec<P>,
    rng: Rng,
    out: VecDeque<Output<P>>,
}

impl<P: Clone + Eq + Debug> HyParView<P> {
    /// A node with empty views; it asks for its first shuffle timer. An
    /// active view size of 0 is raised to 1 (a node must have a link).
    pub fn new(me: P, mut config: Config, seed: u64) -> Self {
        config.active_size = config.active_size.max(1);
        let mut node = HyParView {
            me,
            rng: Rng::new(seed),
            active: Vec::with_capacity(config.active_size),
            passive: Vec::with_capacity(config.passive_size),
            promoting: Vec::new(),
            refused: Vec::new(),
            out: VecDeque::new(),
            config,
        };
        node.set_shuffle_timer();
        node
    }

    /// Joins the overlay through `contact`.
    pub fn join(&mut self, contact: P) {
        if contact != self.me {
            self.send(contact, Message::Join);
        }
    }

    /// Handles a message `from` a peer.
    pub fn handle_message(&mut self, from: P, message: Message<P>) {
        if from == self.me {
            return;
        }
        match message {
            Message::Join => self.on_join(from),
            Message::ForwardJoin { joiner, ttl } => self.on_forward_join(from, joiner, ttl),
            Message::Neighbor { priority } => self.on_neighbor(from, priority),
            Message::NeighborReply { accepted } => self.on_neighbor_reply(from, accepted),
            Message::Disconnect => self.on_disconnect(from),
            Message::Shuffle { origin, ttl, peers } => self.on_shuffle(from, origin, ttl, peers),
            Message::ShuffleReply { peers } => self.integrate_passive(peers, &[]),
        }
        debug_assert!(
            self.out.len() <= output_bound(&self.config),
            "output queue over its bound"
        );
    }

    /// Handles a timer the protocol asked for.
    pub fn handle_timer(&mut self, timer: Timer) {
        match timer {
            Timer::Shuffle => {
                self.refused.clear();
                self.shuffle();
                // Periodic repair: refill an active view below its size.
                self.promote();
                self.set_shuffle_timer();
            }
        }
    }

    /// Makes `peer` an active peer now and asks it, with high priority (it
    /// must accept), to do the same; a full active view drops a random
    /// peer to make room. For the application when it learns by other
    /// means that the overlay may be split: HyParView alone never merges
    /// two overlays whose active views are full (Chorus: anti-entropy with
    /// a member brought data that no broadcast did).
    pub fn connect(&mut self, peer: P) {
        if peer != self.me {
            self.take_in(peer);
        }
    }

    /// The transport lost its link to `peer` (or could not open one): an
    /// active peer is replaced from the passive view.
    pub fn peer_failed(&mut self, peer: &P) {
        self.passive.retain(|p| p != peer);
        let was_promoting = self.promoting.contains(peer);
        self.promoting.retain(|p| p != peer);
        if self.remove_active(peer) || was_promoting {
            self.promote();
        }
    }

    /// The next thing to do, or `None` when there is nothing left.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output<P>> {
        self.out.pop_front()
    }

    /// The active view.
    pub fn active_view(&self) -> &[P] {
        &self.active
    }

    /// The passive view.
    pub fn passive_view(&self) -> &[P] {
        &self.passive
    }

    /// This node.
    pub fn me(&self) -> &P {
        &self.me
    }

    fn on_join(&mut self, joiner: P) {
        // Always answered, even if the joiner is already active here: a node
        // that restarted joins again with empty views.
        self.add_active(joiner.clone());
        self.send(
            joiner.clone(),
            Message::Neighbor {
                priority: Priority::High,
            },
        );
        let ttl = self.config.arwl;
        for peer in self.active.clone() {
            if peer != joiner {
                self.send(
                    peer,
                    Message::ForwardJoin {
                        joiner: joiner.clone(),
                        ttl,
                    },
                );
            }
        }
    }

    fn on_forward_join(&mut self, from: P, joiner: P, ttl: u8) {
        if joiner == self.me {
            return;
        }
        if ttl == 0 || self.active.len() <= 1 {
            self.take_in(joiner);
            return;
        }
        if ttl == self.config.prwl {
            self.integrate_passive(vec![joiner.clone()], &[]);
        }
        let next: Vec<P> = self
            .active
            .iter()
            .filter(|p| **p != from && **p != joiner)
            .cloned()
            .collect();
        match self.rng.pick(&next).cloned() {
            Some(peer) => self.send(
                peer,
                Message::ForwardJoin {
                    joiner,
                    ttl: ttl - 1,
                },
            ),
            None => self.take_in(joiner),
        }
    }

    /// Ends a join's walk here: the joiner becomes an active peer, and is
    /// asked (with high priority) to make this node one of its own.
    fn take_in(&mut self, joiner: P) {
        if !self.active.contains(&joiner) {
            self.add_active(joiner.clone());
            self.send(
                joiner,
                Message::Neighbor {
                    priority: Priority::High,
                },
            );
        }
    }

    fn on_neighbor(&mut self, from: P, priority: Priority) {
        let accept = self.active.contains(&from)
            || priority == Priority::High
            || self.active.len() < self.config.active_size;
        if accept {
            self.add_active(from.clone());
        }
        self.send(from, Message::NeighborReply { accepted: accept });
    }

    fn on_neighbor_reply(&mut self, from: P, accepted: bool) {
        let asked = self.promoting.contains(&from);
        self.promoting.retain(|p| *p != from);
        if accepted {
            self.add_active(from);
        } else if asked {
            self.refused.push(from);
            self.promote();
        }
    }

    fn on_disconnect(&mut self, from: P) {
        if self.remove_active(&from) {
            self.integrate_passive(vec![from], &[]);
            self.promote();
        }
    }

    fn on_shuffle(&mut self, from: P, origin: P, ttl: u8, peers: Vec<P>) {
        if origin == self.me {
            return;
        }
        if ttl > 1 && self.active.len() > 1 {
            let next: Vec<P> = self
                .active
                .iter()
                .filter(|p| **p != from && **p != origin)
                .cloned()
                .collect();
            if let Some(peer) = self.rng.pick(&next).cloned() {
                self.send(
                    peer,
                    Message::Shuffle {
                        origin,
                        ttl: ttl - 1,
                        peers,
                    },
                );
                return;
            }
        }
        let reply = self.rng.sample(&self.passive, peers.len());
        self.send(
            origin,
            Message::ShuffleReply {
                peers: reply.clone(),
            },
        );
        self.integrate_passive(peers, &reply);
    }

    fn shuffle(&mut self) {
        let Some(target) = self.rng.pick(&self.active).cloned() else {
            return;
        };
        let others: Vec<P> = self
            .active
            .iter()
            .filter(|p| **p != target)
            .cloned()
            .collect();
        let mut peers = vec![self.me.clone()];
        peers.extend(self.rng.sample(&others, self.config.shuffle_active));
        peers.extend(self.rng.sample(&self.passive, self.config.shuffle_passive));
        self.send(
            target,
            Message::Shuffle {
                origin: self.me.clone(),
                ttl: self.config.arwl,
                peers,
            },
        );
    }

    /// Asks a random passive peer to become active, if the active view has
    /// room and no request is already pending.
    fn promote(&mut self) {
        if self.active.len() + self.promoting.len() >= self.config.active_size {
            return;
        }
        let candidates: Vec<P> = self
            .passive
            .iter()
            .filter(|p| !self.promoting.contains(p) && !self.refused.contains(p))
            .cloned()
            .collect();
        let Some(peer) = self.rng.pick(&candidates).cloned() else {
            return;
        };
        let priority = if self.active.is_empty() {
            Priority::High
        } else {
            Priority::Low
        };
        self.promoting.push(peer.clone());
        self.send(peer, Message::Neighbor { priority });
    }

    /// Adds `peer` to the active view, dropping a random active peer to the
    /// passive view (with a Disconnect) when it is full.
    fn add_active(&mut self, peer: P) {
        if peer == self.me || self.active.contains(&peer) {
            return;
        }
        if self.active.len() >= self.config.active_size {
            let at = self.rng.below(self.active.len());
            let dropped = self.active.swap_remove(at);
            self.out.push_back(Output::NeighborDown(dropped.clone()));
            self.send(dropped.clone(), Message::Disconnect);
            self.integrate_passive(vec![dropped], &[]);
        }
        self.passive.retain(|p| *p != peer);
        self.promoting.retain(|p| *p != peer);
        self.active.push(peer.clone());
        self.out.push_back(Output::NeighborUp(peer));
    }

    fn remove_active(&mut self, peer: &P) -> bool {
        let before = self.active.len();
        self.active.retain(|p| p != peer);
        let removed = self.active.len() < before;
        if removed {
            self.out.push_back(Output::NeighborDown(peer.clone()));
        }
        removed
    }

    /// Adds peers to the passive view, skipping this node and active peers;
    /// when full, evicts first the peers just sent away in `sent`, then at
    /// random.
    fn integrate_passive(&mut self, peers: Vec<P>, sent: &[P]) {
        if self.config.passive_size == 0 {
            return;
        }
        for peer in peers {
            if peer == self.me || self.active.contains(&peer) || self.passive.contains(&peer) {
                continue;
            }
            if self.passive.len() >= self.config.passive_size {
                let at = self
                    .passive
                    .iter()
                    .position(|p| sent.contains(p))
                    .unwrap_or_else(|| self.rng.below(self.passive.len()));
                self.passive.swap_remove(at);
            }
            self.passive.push(peer);
        }
    }

    fn send(&mut self, to: P, message: Message<P>) {
        self.out.push_back(Output::Send { to, message });
    }

    fn set_shuffle_timer(&mut self) {
        self.out.push_back(Output::SetTimer {
            after_ms: self.config.shuffle_interval_ms,
            timer: Timer::Shuffle,
        });
    }
}

#[cfg(test)]
mod tests;
