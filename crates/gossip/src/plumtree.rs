//! Plumtree: epidemic broadcast trees (Leitão, Pereira, Rodrigues, SRDS
//! 2007; implemented from the 2019 revision of the technical report).
//!
//! Over the links HyParView keeps open, each node splits its peers into
//! *eager* peers, which receive a message's payload as soon as it arrives,
//! and *lazy* peers, which only receive its id in a batched `IHave`. A
//! payload that arrives twice prunes the link it came over to lazy; an id
//! announced but not received within a timeout grafts the announcer's link
//! back to eager and asks for the payload. After one broadcast the eager
//! links form a spanning tree, so later broadcasts cost one payload message
//! per node; the lazy links stay as the repair path.
//!
//! Message ids come from the application (Chorus uses full prefix, key and
//! context). The core stores no payloads: it forwards a payload in the same
//! call that received it, and asks the [`Application`] for one when a peer
//! grafts. It keeps three bounded structures, each with a defined eviction:
//! the ids it has seen, the announcements it is still waiting for, and the
//! announcements it has queued for its next tick. Whatever falls out of
//! them is repaired by anti-entropy, never lost for good.
//!
//! Time is an input: every call takes `now` in ms, and the core asks for a
//! single [`Timer::Tick`] while it has queued announcements or pending
//! grafts.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;

use serde::{Deserialize, Serialize};

/// Timeouts, batch sizes and the bounds of the three structures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// How often queued announcements are sent and due grafts are checked.
    pub tick_ms: u64,
    /// How long an announced id may stay missing before the node grafts
    /// its first announcer (the paper's first timer).
    pub graft_timeout_ms: u64,
    /// How long after a graft the node tries the next announcer (the
    /// paper's second timer).
    pub graft_retry_ms: u64,
    /// Most ids in one `IHave`.
    pub ihave_batch_max: usize,
    /// Most announcements queued for the next tick; when full, the oldest
    /// is dropped.
    pub lazy_queue_max: usize,
    /// Most announced ids waiting for their payload; when full, the one
    /// closest to its graft deadline is forgotten.
    pub missing_max: usize,
    /// Most ids remembered as seen; when full, the oldest is forgotten. A
    /// copy of a forgotten id that arrives later is forwarded once more
    /// (but not delivered: the application's [`Application::is_stale`]
    /// recognises it), and its receivers prune the links it takes; size
    /// this above the ids a node sees while a message is in flight.
    pub seen_max: usize,
    /// The paper's optimization: when an announcement shows a path at
    /// least this many hops shorter than the one a payload took, the tree
    /// link moves to the announcer. 0 turns it off, the default: with one
    /// tree shared by every origin, moving a link for one origin lengthens
    /// paths for others, and in the simulator it cost more latency and
    /// redundancy than it saved hops.
    pub optimization_threshold: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tick_ms: 100,
            graft_timeout_ms: 400,
            graft_retry_ms: 200,
            ihave_batch_max: 256,
            lazy_queue_max: 16_384,
            missing_max: 16_384,
            seen_max: 65_536,
            optimization_threshold: 0,
        }
    }
}

/// The protocol's messages. `I` is the message id, `D` the payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message<I, D> {
    /// A payload, pushed eagerly.
    Gossip {
        /// The message id.
        id: I,
        /// Hops the payload has travelled before this one.
        round: u32,
        /// The payload.
        payload: D,
    },
    /// Ids the sender has, each with the round it received it at.
    IHave {
        /// The announcements.
        ids: Vec<(I, u32)>,
    },
    /// Push eagerly to the sender from now on, and send it `id` if given
    /// (a missing message); without an id it only moves the link into the
    /// tree (the paper's optimization).
    Graft {
        /// The missing id.
        id: Option<I>,
        /// The round the receiver announced it at.
        round: u32,
    },
    /// The sender received a duplicate over this link: push lazily.
    Prune,
}

/// Timers the protocol asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Send queued announcements; graft what is overdue.
    Tick,
}

/// What the protocol asks its caller to do, or tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output<P, I, D> {
    /// Send `message` to `to`.
    Send {
        /// The peer.
        to: P,
        /// The message.
        message: Message<I, D>,
    },
    /// Hand `timer` back to [`Plumtree::handle_timer`] after `after_ms`.
    SetTimer {
        /// The delay.
        after_ms: u64,
        /// The timer.
        timer: Timer,
    },
    /// A new message for the application.
    Deliver {
        /// The id.
        id: I,
        /// The payload.
        payload: D,
        /// The peer it came from.
        from: P,
        /// Hops from its origin to this node.
        hops: u32,
    },
}

/// What the core asks of the application, which owns the payloads.
pub trait Application<I, D> {
    /// True when the application already has `id` or something that
    /// supersedes it (Chorus: the local object's context covers it).
    fn is_stale(&mut self, id: &I) -> bool;
    /// The payload of `id`, if the application still has exactly it; a
    /// graft for anything else goes unanswered and the grafting node tries
    /// its next announcer.
    fn payload(&mut self, id: &I) -> Option<D>;
}

/// Counters, for metrics and the simulator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Payload messages sent (eager pushes and graft answers).
    pub gossip_sent: u64,
    /// `IHave` messages sent.
    pub ihave_sent: u64,
    /// Grafts sent for missing messages (the optimization's count as
    /// `shortened`).
    pub grafts_sent: u64,
    /// Prunes sent.
    pub prunes_sent: u64,
    /// Payloads received twice over the broadcast layer (each prunes).
    pub duplicates: u64,
    /// Payloads received once here but already known to the application
    /// (by anti-entropy or a newer write): forwarded, not delivered.
    pub already_known: u64,
    /// Queued announcements dropped because the queue was full.
    pub lazy_dropped: u64,
    /// Missing ids forgotten because the structure was full.
    pub missing_evicted: u64,
    /// Missing ids given up after every announcer was grafted.
    pub missing_abandoned: u64,
    /// Tree links moved to a shorter path by the optimization.
    pub shortened: u64,
}

/// An id announced but not received.
#[derive(Debug, Clone)]
struct Missing<P> {
    /// Announcers not yet grafted, with their rounds, first come first.
    announcers: VecDeque<(P, u32)>,
    /// Key of this entry in `Plumtree::due`.
    due_key: (u64, u64),
}

/// One node's Plumtree state.
#[derive(Debug, Clone)]
pub struct Plumtree<P, I, D> {
    me: P,
    config: Config,
    eager: Vec<P>,
    lazy: Vec<P>,
    /// Ids seen, with the hops they arrived at and the peer they came
    /// from (`None` for this node's own broadcasts).
    seen: HashMap<I, (u32, Option<P>)>,
    /// `seen` in insertion order, for eviction.
    seen_order: VecDeque<I>,
    missing: HashMap<I, Missing<P>>,
    /// Missing ids by (graft deadline, sequence number).
    due: BTreeMap<(u64, u64), I>,
    due_seq: u64,
    lazy_queue: VecDeque<(P, I, u32)>,
    tick_armed: bool,
    stats: Stats,
    out: VecDeque<Output<P, I, D>>,
}

impl<P, I, D> Plumtree<P, I, D>
where
    P: Clone + Eq + Debug,
    I: Clone + Eq + Hash + Debug,
    D: Clone,
{
    /// A node with no peers yet. Settings that would break the protocol
    /// are raised to their least workable value: a tick of at least 1 ms,
    /// at least one id per `IHave` and one remembered id.
    pub fn new(me: P, mut config: Config) -> Self {
        config.tick_ms = config.tick_ms.max(1);
        config.ihave_batch_max = config.ihave_batch_max.max(1);
        config.seen_max = config.seen_max.max(1);
        Plumtree {
            me,
            config,
            eager: Vec::new(),
            lazy: Vec::new(),
            seen: HashMap::new(),
            seen_order: VecDeque::new(),
            missing: HashMap::new(),
            due: BTreeMap::new(),
            due_seq: 0,
            lazy_queue: VecDeque::new(),
            tick_armed: false,
            stats: Stats::default(),
            out: VecDeque::new(),
        }
    }

    /// Broadcasts a message that originated here. The application already
    /// has it, so it is not delivered back.
    pub fn broadcast(&mut self, _now: u64, id: I, payload: D) {
        if !self.mark_seen(&id, 0, None) {
            return;
        }
        self.eager_push(&id, 0, &payload, None);
        self.lazy_push(&id, 0, None);
    }

    /// Handles a message `from` a peer.
    pub fn handle_message(
        &mut self,
        now: u64,
        from: P,
        message: Message<I, D>,
        app: &mut impl Application<I, D>,
    ) {
        if from == self.me {
            return;
        }
        match message {
            Message::Gossip { id, round, payload } => {
                self.on_gossip(from, id, round, payload, app);
            }
            Message::IHave { ids } => self.on_ihave(now, from, ids, app),
            Message::Graft { id, round } => self.on_graft(from, id, round, app),
            Message::Prune => self.on_prune(from),
        }
    }

    /// Handles a timer the protocol asked for.
    pub fn handle_timer(&mut self, now: u64, timer: Timer, app: &mut impl Application<I, D>) {
        match timer {
            Timer::Tick => {
                self.tick_armed = false;
                self.flush_announcements();
                self.graft_overdue(now, app);
                if !self.lazy_queue.is_empty() || !self.missing.is_empty() {
                    self.arm_tick();
                }
            }
        }
    }

    /// A link to `peer` opened (HyParView's `NeighborUp`): new links start
    /// eager, and the first duplicate over one prunes it. This is the
    /// whole of tree repair on a join: no tree is reset.
    pub fn neighbor_up(&mut self, peer: P) {
        if peer == self.me {
            return;
        }
        self.lazy.retain(|p| *p != peer);
        if !self.eager.contains(&peer) {
            self.eager.push(peer);
        }
    }

    /// The link to `peer` closed (HyParView's `NeighborDown`). Nodes below
    /// it in the tree learn of new messages by `IHave` from their lazy
    /// peers and graft a new branch: repair is local.
    pub fn neighbor_down(&mut self, peer: &P) {
        self.eager.retain(|p| p != peer);
        self.lazy.retain(|p| p != peer);
        self.lazy_queue.retain(|(p, _, _)| p != peer);
        for missing in self.missing.values_mut() {
            missing.announcers.retain(|(p, _)| p != peer);
        }
    }

    /// The next thing to do, or `None` when there is nothing left. Call it
    /// until `None` after every input.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output<P, I, D>> {
        self.out.pop_front()
    }

    /// Peers that receive payloads.
    pub fn eager_peers(&self) -> &[P] {
        &self.eager
    }

    /// Peers that receive announcements.
    pub fn lazy_peers(&self) -> &[P] {
        &self.lazy
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Sizes of the bounded structures: (seen ids, missing ids, queued
    /// announcements).
    pub fn occupancy(&self) -> (usize, usize, usize) {
        (self.seen.len(), self.missing.len(), self.lazy_queue.len())
    }

    /// This node.
    pub fn me(&self) -> &P {
        &self.me
    }

    fn on_gossip(
        &mut self,
        from: P,
        id: I,
        round: u32,
        payload: D,
        app: &mut impl Application<I, D>,
    ) {
        if self.seen.contains_key(&id) {
            // A second copy over the broadcast layer: the link closes a
            // cycle, so it becomes lazy.
            self.stats.duplicates += 1;
            self.move_to_lazy(&from);
            self.stats.prunes_sent += 1;
            self.send(from, Message::Prune);
            return;
        }
        let hops = round.saturating_add(1);
        self.mark_seen(&id, hops, Some(from.clone()));
        self.forget_missing(&id);
        // The sender pushes to us eagerly, so the link is eager both ways
        // (it may have been pruned here before and grafted there since).
        self.neighbor_up_if_linked(&from);
        self.eager_push(&id, hops, &payload, Some(&from));
        self.lazy_push(&id, hops, Some(&from));
        // What the application already has from elsewhere (anti-entropy,
        // a newer write) is still forwarded, since this node is on the
        // tree path of its subtree, but not delivered again; the link is
        // not pruned, since no cycle brought it.
        if app.is_stale(&id) {
            self.stats.already_known += 1;
            return;
        }
        self.out.push_back(Output::Deliver {
            id,
            payload,
            from,
            hops,
        });
    }

    fn on_ihave(
        &mut self,
        now: u64,
        from: P,
        ids: Vec<(I, u32)>,
        app: &mut impl Application<I, D>,
    ) {
        if !self.is_neighbor(&from) {
            // A link closed while this was in flight: grafting the sender
            // would make a tree link HyParView does not have.
            return;
        }
        for (id, round) in ids {
            if let Some((hops, parent)) = self.seen.get(&id) {
                let (hops, parent) = (*hops, parent.clone());
                self.maybe_shorten(&from, round, hops, parent);
                continue;
            }
            if app.is_stale(&id) {
                continue;
            }
            if let Some(missing) = self.missing.get_mut(&id) {
                if !missing.announcers.iter().any(|(p, _)| *p == from) {
                    missing.announcers.push_back((from.clone(), round));
                }
                continue;
            }
            self.add_missing(now, id, from.clone(), round);
        }
    }

    fn on_graft(&mut self, from: P, id: Option<I>, round: u32, app: &mut impl Application<I, D>) {
        // A graft from a peer that is no longer a neighbour is still
        // answered (it is missing the message), but makes no tree link.
        if self.is_neighbor(&from) {
            self.lazy.retain(|p| *p != from);
            if !self.eager.contains(&from) {
                self.eager.push(from.clone());
            }
        }
        let Some(id) = id else { return };
        if let Some(payload) = app.payload(&id) {
            self.stats.gossip_sent += 1;
            self.send(from, Message::Gossip { id, round, payload });
        }
    }

    /// The paper's optimization: an announcement shows a path to the
    /// origin at least `optimization_threshold` hops shorter than the one
    /// the payload took, so the announcer's link joins the tree and the
    /// parent's leaves it. The announcer got the payload by a path that
    /// does not pass through this node (it is shorter), so the tree stays
    /// connected.
    fn maybe_shorten(&mut self, announcer: &P, round: u32, hops: u32, parent: Option<P>) {
        let threshold = self.config.optimization_threshold;
        let Some(parent) = parent else { return };
        if threshold == 0
            || parent == *announcer
            || round.saturating_add(threshold) >= hops
            || !self.lazy.contains(announcer)
            || !self.eager.contains(&parent)
        {
            return;
        }
        self.lazy.retain(|p| p != announcer);
        self.eager.push(announcer.clone());
        self.send(announcer.clone(), Message::Graft { id: None, round });
        self.move_to_lazy(&parent);
        self.stats.prunes_sent += 1;
        self.send(parent, Message::Prune);
        self.stats.shortened += 1;
    }

    fn on_prune(&mut self, from: P) {
        self.move_to_lazy(&from);
    }

    /// Sends overdue grafts: each missing id whose deadline passed grafts
    /// its first remaining announcer and waits `graft_retry_ms` for the
    /// next; with no announcer left it is given up to anti-entropy.
    fn graft_overdue(&mut self, now: u64, app: &mut impl Application<I, D>) {
        while let Some((&key, _)) = self.due.first_key_value() {
            if key.0 > now {
                break;
            }
            let Some(id) = self.due.remove(&key) else {
                break;
            };
            let Some(mut missing) = self.missing.remove(&id) else {
                continue;
            };
            if self.seen.contains_key(&id) || app.is_stale(&id) {
                continue;
            }
            let Some((peer, round)) = missing.announcers.pop_front() else {
                self.stats.missing_abandoned += 1;
                continue;
            };
            self.lazy.retain(|p| *p != peer);
            if !self.eager.contains(&peer) {
                self.eager.push(peer.clone());
            }
            self.stats.grafts_sent += 1;
            self.send(
                peer,
                Message::Graft {
                    id: Some(id.clone()),
                    round,
                },
            );
            missing.due_key = self.next_due_key(now + self.config.graft_retry_ms);
            self.due.insert(missing.due_key, id.clone());
            self.missing.insert(id, missing);
        }
    }

    fn add_missing(&mut self, now: u64, id: I, from: P, round: u32) {
        if self.config.missing_max == 0 {
            return;
        }
        if self.missing.len() >= self.config.missing_max
            && let Some((_, oldest)) = self.due.pop_first()
        {
            self.missing.remove(&oldest);
            self.stats.missing_evicted += 1;
        }
        let due_key = self.next_due_key(now + self.config.graft_timeout_ms);
        self.due.insert(due_key, id.clone());
        let announcers = VecDeque::from([(from, round)]);
        self.missing.insert(
            id,
            Missing {
                announcers,
                due_key,
            },
        );
        self.arm_tick();
    }

    fn forget_missing(&mut self, id: &I) {
        if let Some(missing) = self.missing.remove(id) {
            self.due.remove(&missing.due_key);
        }
    }

    fn next_due_key(&mut self, deadline: u64) -> (u64, u64) {
        self.due_seq += 1;
        (deadline, self.due_seq)
    }

    /// Records `id` as seen; false if it already was. Evicts the oldest id
    /// when the set is full.
    fn mark_seen(&mut self, id: &I, hops: u32, from: Option<P>) -> bool {
        if self.seen.contains_key(id) {
            return false;
        }
        if self.config.seen_max == 0 {
            return true;
        }
        if self.seen.len() >= self.config.seen_max
            && let Some(oldest) = self.seen_order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        self.seen.insert(id.clone(), (hops, from));
        self.seen_order.push_back(id.clone());
        true
    }

    fn eager_push(&mut self, id: &I, round: u32, payload: &D, except: Option<&P>) {
        for i in 0..self.eager.len() {
            let peer = self.eager[i].clone();
            if Some(&peer) == except {
                continue;
            }
            self.stats.gossip_sent += 1;
            self.send(
                peer,
                Message::Gossip {
                    id: id.clone(),
                    round,
                    payload: payload.clone(),
                },
            );
        }
    }

    fn lazy_push(&mut self, id: &I, round: u32, except: Option<&P>) {
        if self.config.lazy_queue_max == 0 {
            return;
        }
        for i in 0..self.lazy.len() {
            let peer = self.lazy[i].clone();
            if Some(&peer) == except {
                continue;
            }
            if self.lazy_queue.len() >= self.config.lazy_queue_max {
                self.lazy_queue.pop_front();
                self.stats.lazy_dropped += 1;
            }
            self.lazy_queue.push_back((peer, id.clone(), round));
        }
        if !self.lazy_queue.is_empty() {
            self.arm_tick();
        }
    }

    /// Sends the queued announcements, one `IHave` per peer and batch, in
    /// the order the peers first appear in the queue.
    fn flush_announcements(&mut self) {
        let mut batches: Vec<(P, Vec<(I, u32)>)> = Vec::new();
        while let Some((peer, id, round)) = self.lazy_queue.pop_front() {
            match batches
                .iter_mut()
                .find(|(p, ids)| *p == peer && ids.len() < self.config.ihave_batch_max.max(1))
            {
                Some((_, ids)) => ids.push((id, round)),
                None => batches.push((peer, vec![(id, round)])),
            }
        }
        for (peer, ids) in batches {
            self.stats.ihave_sent += 1;
            self.send(peer, Message::IHave { ids });
        }
    }

    fn is_neighbor(&self, peer: &P) -> bool {
        self.eager.contains(peer) || self.lazy.contains(peer)
    }

    fn move_to_lazy(&mut self, peer: &P) {
        let was_eager = self.eager.len();
        self.eager.retain(|p| p != peer);
        if self.eager.len() < was_eager && !self.lazy.contains(peer) {
            self.lazy.push(peer.clone());
        }
    }

    /// Makes `peer` eager if it is a known (lazy) neighbour: a peer that
    /// pushes a first copy to us eagerly has us as an eager peer (it
    /// grafted us, or a prune crossed its payload), and a tree link is
    /// eager at both ends. A payload from a peer that is no neighbour (a
    /// link that closed meanwhile) changes nothing.
    fn neighbor_up_if_linked(&mut self, peer: &P) {
        let before = self.lazy.len();
        self.lazy.retain(|p| p != peer);
        if self.lazy.len() < before && !self.eager.contains(peer) {
            self.eager.push(peer.clone());
        }
    }

    fn arm_tick(&mut self) {
        if !self.tick_armed {
            self.tick_armed = true;
            self.out.push_back(Output::SetTimer {
                after_ms: self.config.tick_ms,
                timer: Timer::Tick,
            });
        }
    }

    fn send(&mut self, to: P, message: Message<I, D>) {
        self.out.push_back(Output::Send { to, message });
    }
}

#[cfg(test)]
mod tests;
