//! The simulated world: nodes running the real state machines, a network
//! with per-link latency, loss and partitions, and a queue of events in
//! virtual time. Everything is a pure function of the configuration and
//! the actions scheduled, so the same seed gives the same trace.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

use chorus_gossip::Rng;
use chorus_gossip::hyparview::{self, HyParView};
use chorus_gossip::merkle::{Exchange, ExchangeConfig, MerkleTree, ObjectSource};
use chorus_gossip::plumtree::{Message, Output};

use crate::layer::{Delivered, Layer, Msg, Out};
use crate::{Config, Counters, MessageRecord};

/// The one full prefix the simulated stores hold: message ids.
const AE_PREFIX: &[u8] = b"sim";
const AE_SUB: &[u8] = b"messages";
/// Most anti-entropy sessions a node keeps open; the oldest is dropped.
const AE_SESSIONS_MAX: usize = 8;
/// How often a node with no active peer tries to join again, in ms.
const REJOIN_MS: u64 = 5_000;
/// A message that anti-entropy brings this long after it was broadcast
/// means broadcast did not reach this node: its overlay may be split from
/// the peer's, so the node links to that peer (ms).
const STALE_REPAIR_MS: u64 = 2_000;
/// Framing added to every message on the wire (a length prefix).
pub(crate) const FRAME_BYTES: u64 = 4;

/// Something that happens at a moment of virtual time.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `node` joins through `contact` (a random live member if `None`;
    /// the very first node joins nobody).
    Join {
        /// The joiner.
        node: u32,
        /// Its contact.
        contact: Option<u32>,
    },
    /// `node` stops; its links break.
    Crash(u32),
    /// That share of the live nodes stops at once.
    CrashFraction(f64),
    /// `node` starts again with its store (delivered messages) intact and
    /// fresh protocol state, and joins through a random live member.
    Restart(u32),
    /// Nodes can only reach nodes of the same group (one entry per node).
    Partition(Vec<u32>),
    /// Every node can reach every other again.
    Heal,
    /// A new message from `from` (a random live node if `None`).
    Broadcast {
        /// The origin.
        from: Option<u32>,
    },
}

enum Wire {
    Hpv(hyparview::Message<u32>),
    Bcast(Msg),
    Ae {
        session: u64,
        from_initiator: bool,
        msg: chorus_gossip::merkle::Message<u64, ()>,
    },
}

enum Event {
    Act(Action),
    Net {
        from: u32,
        from_inc: u32,
        to: u32,
        to_inc: u32,
        wire: Wire,
    },
    LinkFailed {
        node: u32,
        inc: u32,
        peer: u32,
        /// The peer's incarnation the failure is about: a notice about a
        /// connection to a peer that has since restarted is stale.
        peer_inc: u32,
    },
    HpvTimer {
        node: u32,
        inc: u32,
    },
    BcastTimer {
        node: u32,
        inc: u32,
    },
    AeTimer {
        node: u32,
        inc: u32,
    },
    RejoinTimer {
        node: u32,
        inc: u32,
    },
}

/// An event due at `time`; `seq` orders events due at once by when they
/// were scheduled. Shared by the gossip-scale worlds (this one and the
/// channels' one, `channels/net.rs`).
pub(crate) struct Scheduled<E> {
    pub(crate) time: u64,
    pub(crate) seq: u64,
    pub(crate) event: E,
}

impl<E> PartialEq for Scheduled<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
    }
}
impl<E> Eq for Scheduled<E> {}
impl<E> PartialOrd for Scheduled<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<E> Ord for Scheduled<E> {
    /// Reversed, so the max-heap pops the earliest event first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.time, other.seq).cmp(&(self.time, self.seq))
    }
}

struct Session {
    peer: u32,
    id: u64,
    initiator: bool,
    exchange: Exchange<u64, ()>,
}

struct Node {
    inc: u32,
    alive: bool,
    joined: bool,
    hpv: HyParView<u32>,
    layer: Layer,
    /// The node's store: which messages it has. Survives restarts.
    delivered: Vec<bool>,
    tree: MerkleTree<u64>,
    sessions: VecDeque<Session>,
    /// Counters of earlier incarnations' layers.
    past: chorus_gossip::plumtree::Stats,
    /// When this node last linked to a peer because of a stale repair.
    last_connect: Option<u64>,
}

struct Objects<'a>(&'a [bool]);

impl ObjectSource<u64, ()> for Objects<'_> {
    fn object(&mut self, _prefix: &[u8], _sub: &[u8], key: &u64) -> Option<()> {
        let i = usize::try_from(*key).ok()?;
        self.0.get(i).copied().unwrap_or(false).then_some(())
    }
    fn size(&self, _key: &u64, _object: &()) -> usize {
        8
    }
}

/// The simulated world.
pub struct World {
    config: Config,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Scheduled<Event>>,
    nodes: Vec<Node>,
    /// Nodes that have ever joined, in join order: the member list.
    members: Vec<u32>,
    group: Vec<u32>,
    rng: Rng,
    pub(crate) records: Vec<MessageRecord>,
    pub(crate) counters: Counters,
    trace: u64,
}

/// SplitMix64's finaliser: a well-mixed hash of one number.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Bytes of `v` as a LEB128 varint (postcard's integers).
pub(crate) fn varint_len(v: u64) -> u64 {
    u64::from((64 - (v | 1).leading_zeros()).div_ceil(7))
}

impl World {
    /// A world of `config.nodes` nodes, none of them joined yet.
    pub fn new(config: &Config) -> World {
        let mut world = World {
            config: config.clone(),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes: Vec::with_capacity(config.nodes),
            members: Vec::new(),
            group: vec![0; config.nodes],
            rng: Rng::new(mix(config.seed)),
            records: Vec::new(),
            counters: Counters::default(),
            trace: 0,
        };
        for i in 0..config.nodes as u32 {
            let node = world.fresh_node(i, 0, Vec::new(), MerkleTree::new());
            world.nodes.push(node);
        }
        world
    }

    /// Schedules `action` at `time` (ms of virtual time).
    pub fn at(&mut self, time: u64, action: Action) {
        self.schedule(time, Event::Act(action));
    }

    /// Runs every event up to and including `time`.
    pub fn run_until(&mut self, time: u64) {
        while let Some(next) = self.queue.peek() {
            if next.time > time {
                break;
            }
            let Some(Scheduled { time, event, .. }) = self.queue.pop() else {
                break;
            };
            self.now = time;
            self.counters.events += 1;
            self.dispatch(event);
        }
        self.now = self.now.max(time);
    }

    /// Current virtual time.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// A hash of every event processed so far, in order.
    pub fn trace_hash(&self) -> u64 {
        self.trace
    }

    /// Whether `node` is running.
    pub fn is_alive(&self, node: u32) -> bool {
        self.nodes.get(node as usize).is_some_and(|n| n.alive)
    }

    /// Whether `node` has delivered message `id`.
    pub fn has_delivered(&self, node: u32, id: u64) -> bool {
        self.nodes
            .get(node as usize)
            .and_then(|n| n.delivered.get(id as usize))
            .copied()
            .unwrap_or(false)
    }

    /// For each message, how many live nodes have delivered it.
    pub fn live_deliveries(&self) -> Vec<u32> {
        let mut counts = vec![0u32; self.records.len()];
        for node in self.nodes.iter().filter(|n| n.alive) {
            for (count, &has) in counts.iter_mut().zip(&node.delivered) {
                *count += u32::from(has);
            }
        }
        counts
    }

    /// What happened to message `id` so far.
    pub fn message(&self, id: u64) -> Option<&MessageRecord> {
        self.records.get(usize::try_from(id).ok()?)
    }

    /// Messages broadcast so far.
    pub fn message_count(&self) -> u64 {
        self.records.len() as u64
    }

    /// Active view sizes of live nodes, and the number of connected
    /// components of the live overlay.
    pub fn overlay(&self) -> (Vec<usize>, usize) {
        let live: Vec<u32> = (0..self.nodes.len() as u32)
            .filter(|&i| self.nodes[i as usize].alive)
            .collect();
        let sizes = live
            .iter()
            .map(|&i| self.nodes[i as usize].hpv.active_view().len())
            .collect();
        (sizes, self.components(&live))
    }

    /// (eager, lazy) link counts summed over live nodes.
    pub fn links(&self) -> (usize, usize) {
        self.nodes
            .iter()
            .filter(|n| n.alive)
            .map(|n| n.layer.links())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }

    /// The layers' counters summed over every node and incarnation.
    pub fn layer_stats(&self) -> chorus_gossip::plumtree::Stats {
        let mut total = chorus_gossip::plumtree::Stats::default();
        for node in &self.nodes {
            for s in [node.layer.stats(), node.past.clone()] {
                add_stats(&mut total, &s);
            }
        }
        total
    }

    fn components(&self, live: &[u32]) -> usize {
        let mut seen = vec![false; self.nodes.len()];
        let mut count = 0;
        for &start in live {
            if seen[start as usize] {
                continue;
            }
            count += 1;
            let mut stack = vec![start];
            seen[start as usize] = true;
            while let Some(n) = stack.pop() {
                for &p in self.nodes[n as usize].hpv.active_view() {
                    if self.nodes[p as usize].alive && !seen[p as usize] {
                        seen[p as usize] = true;
                        stack.push(p);
                    }
                }
            }
        }
        count
    }

    fn fresh_node(&self, i: u32, inc: u32, delivered: Vec<bool>, tree: MerkleTree<u64>) -> Node {
        let seed = mix(self.config.seed ^ mix(u64::from(i) << 32 | u64::from(inc)));
        Node {
            inc,
            alive: false,
            joined: false,
            hpv: HyParView::new(i, self.config.hyparview.clone(), seed),
            layer: Layer::new(self.config.protocol, i, &self.config.plumtree),
            delivered,
            tree,
            sessions: VecDeque::new(),
            past: chorus_gossip::plumtree::Stats::default(),
            last_connect: None,
        }
    }

    fn schedule(&mut self, time: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Scheduled {
            time,
            seq: self.seq,
            event,
        });
    }

    fn record_trace(&mut self, kind: u64, a: u64, b: u64, extra: u64) {
        self.trace =
            mix(self.trace ^ mix(self.now ^ kind << 56 ^ a << 28 ^ b ^ extra.rotate_left(17)));
    }

    fn dispatch(&mut self, event: Event) {
        match event {
            Event::Act(action) => self.act(action),
            Event::Net {
                from,
                from_inc,
                to,
                to_inc,
                wire,
            } => self.arrive(from, from_inc, to, to_inc, wire),
            Event::LinkFailed {
                node,
                inc,
                peer,
                peer_inc,
            } => {
                if self.current(node, inc) && self.nodes[peer as usize].inc == peer_inc {
                    self.record_trace(2, u64::from(node), u64::from(peer), 0);
                    let n = &mut self.nodes[node as usize];
                    n.hpv.peer_failed(&peer);
                    n.layer.neighbor_down(peer);
                    n.sessions.retain(|s| s.peer != peer);
                    self.pump(node);
                }
            }
            Event::HpvTimer { node, inc } => {
                if self.current(node, inc) {
                    self.record_trace(3, u64::from(node), 0, 0);
                    self.nodes[node as usize]
                        .hpv
                        .handle_timer(hyparview::Timer::Shuffle);
                    self.pump(node);
                }
            }
            Event::BcastTimer { node, inc } => {
                if self.current(node, inc) {
                    self.record_trace(4, u64::from(node), 0, 0);
                    let now = self.now;
                    let n = &mut self.nodes[node as usize];
                    n.layer.tick(now, &mut Delivered(&n.delivered));
                    self.pump(node);
                }
            }
            Event::AeTimer { node, inc } => {
                if self.current(node, inc) {
                    self.start_exchange(node);
                    if let Some(every) = self.config.anti_entropy_ms {
                        self.schedule(self.now + every, Event::AeTimer { node, inc });
                    }
                }
            }
            Event::RejoinTimer { node, inc } => {
                if self.current(node, inc) {
                    if self.nodes[node as usize].hpv.active_view().is_empty() {
                        self.join(node, None);
                    }
                    self.schedule(self.now + REJOIN_MS, Event::RejoinTimer { node, inc });
                }
            }
        }
    }

    fn current(&self, node: u32, inc: u32) -> bool {
        let n = &self.nodes[node as usize];
        n.alive && n.inc == inc
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Join { node, contact } => {
                let contact = contact.filter(|&c| (c as usize) < self.nodes.len());
                match self.nodes.get(node as usize) {
                    // A node that ran before starts again, with its store.
                    Some(n) if n.joined && !n.alive => self.restart(node, contact),
                    Some(n) if !n.alive => self.join(node, contact),
                    _ => {}
                }
            }
            Action::Crash(node) => self.crash(node),
            Action::CrashFraction(share) => {
                let live: Vec<u32> = (0..self.nodes.len() as u32)
                    .filter(|&i| self.nodes[i as usize].alive)
                    .collect();
                // At least one node survives, whatever the rounding.
                let k = ((live.len() as f64) * share.clamp(0.0, 1.0)).round() as usize;
                let k = k.min(live.len().saturating_sub(1));
                for node in self.rng.sample(&live, k) {
                    self.crash(node);
                }
            }
            Action::Restart(node) => self.restart(node, None),
            Action::Partition(groups) => self.partition(groups),
            Action::Heal => {
                self.record_trace(9, 0, 0, 0);
                self.group.iter_mut().for_each(|g| *g = 0);
            }
            Action::Broadcast { from } => self.broadcast(from),
        }
    }

    fn random_live_member(&mut self, except: u32) -> Option<u32> {
        let live: Vec<u32> = self
            .members
            .iter()
            .copied()
            .filter(|&m| m != except && self.nodes[m as usize].alive)
            .collect();
        self.rng.pick(&live).copied()
    }

    fn join(&mut self, node: u32, contact: Option<u32>) {
        let Some(n) = self.nodes.get_mut(node as usize) else {
            return;
        };
        let first_start = !n.alive;
        n.alive = true;
        if !n.joined {
            n.joined = true;
            self.members.push(node);
        }
        let contact = contact.or_else(|| self.random_live_member(node));
        self.record_trace(
            1,
            u64::from(node),
            u64::from(contact.unwrap_or(u32::MAX)),
            0,
        );
        if let Some(c) = contact {
            self.nodes[node as usize].hpv.join(c);
        }
        if first_start {
            self.start_timers(node);
        }
        self.pump(node);
    }

    fn start_timers(&mut self, node: u32) {
        let inc = self.nodes[node as usize].inc;
        let phase = self.rng.below(REJOIN_MS as usize) as u64;
        self.schedule(
            self.now + REJOIN_MS + phase,
            Event::RejoinTimer { node, inc },
        );
        if let Some(every) = self.config.anti_entropy_ms {
            let phase = self.rng.below(every.max(1) as usize) as u64;
            self.schedule(self.now + phase + 1, Event::AeTimer { node, inc });
        }
    }

    fn crash(&mut self, node: u32) {
        let Some(n) = self.nodes.get_mut(node as usize) else {
            return;
        };
        if !n.alive {
            return;
        }
        n.alive = false;
        self.counters.crashes += 1;
        self.record_trace(5, u64::from(node), 0, 0);
        // Open links break: each peer's transport notices, including peers
        // that list this node while it does not list them.
        let peers: Vec<u32> = (0..self.nodes.len() as u32)
            .filter(|&p| {
                let n = &self.nodes[p as usize];
                n.alive && n.hpv.active_view().contains(&node)
            })
            .collect();
        for peer in peers {
            self.notify_failure(peer, node);
        }
    }

    fn restart(&mut self, node: u32, contact: Option<u32>) {
        let Some(old) = self.nodes.get_mut(node as usize) else {
            return;
        };
        if old.alive {
            return;
        }
        let delivered = std::mem::take(&mut old.delivered);
        let tree = std::mem::replace(&mut old.tree, MerkleTree::new());
        let mut past = old.past.clone();
        add_stats(&mut past, &old.layer.stats());
        let inc = old.inc + 1;
        let joined = old.joined;
        let mut fresh = self.fresh_node(node, inc, delivered, tree);
        fresh.joined = joined;
        fresh.past = past;
        self.nodes[node as usize] = fresh;
        self.join(node, contact);
    }

    fn partition(&mut self, groups: Vec<u32>) {
        self.record_trace(8, groups.len() as u64, 0, 0);
        for (i, g) in groups.into_iter().enumerate() {
            if let Some(slot) = self.group.get_mut(i) {
                *slot = g;
            }
        }
        for node in 0..self.nodes.len() as u32 {
            if !self.nodes[node as usize].alive {
                continue;
            }
            let cut: Vec<u32> = self.nodes[node as usize]
                .hpv
                .active_view()
                .iter()
                .copied()
                .filter(|&p| self.group[p as usize] != self.group[node as usize])
                .collect();
            for peer in cut {
                self.notify_failure(node, peer);
            }
        }
    }

    /// `node`'s transport notices, after a round trip, that its link to
    /// `peer` broke.
    fn notify_failure(&mut self, node: u32, peer: u32) {
        let n = &self.nodes[node as usize];
        if !n.alive {
            return;
        }
        let at = self.now + 2 * self.latency(node, peer);
        let (inc, peer_inc) = (n.inc, self.nodes[peer as usize].inc);
        self.schedule_link_failed(at, (node, inc), (peer, peer_inc));
    }

    /// Schedules a link failure notice for (node, incarnation) about
    /// (peer, incarnation).
    fn schedule_link_failed(
        &mut self,
        at: u64,
        (node, inc): (u32, u32),
        (peer, peer_inc): (u32, u32),
    ) {
        self.schedule(
            at,
            Event::LinkFailed {
                node,
                inc,
                peer,
                peer_inc,
            },
        );
    }

    fn broadcast(&mut self, from: Option<u32>) {
        let Some(origin) = from
            .filter(|&f| self.is_alive(f))
            .or_else(|| self.random_live_member(u32::MAX))
        else {
            return;
        };
        let id = self.records.len() as u64;
        self.records.push(MessageRecord {
            origin,
            sent_at: self.now,
            ..MessageRecord::default()
        });
        for n in &mut self.nodes {
            n.delivered.resize(self.records.len(), false);
        }
        self.record_trace(6, u64::from(origin), id, 0);
        self.deliver(origin, id, 0, false);
        let now = self.now;
        self.nodes[origin as usize].layer.broadcast(now, id);
        self.pump(origin);
    }

    /// Records a delivery; the origin counts as delivered with 0 hops.
    fn deliver(&mut self, node: u32, id: u64, hops: u32, by_repair: bool) {
        let Some(n) = self.nodes.get_mut(node as usize) else {
            return;
        };
        let Some(slot) = n.delivered.get_mut(id as usize) else {
            return;
        };
        if *slot {
            return;
        }
        *slot = true;
        if self.config.anti_entropy_ms.is_some() {
            n.tree
                .update(AE_PREFIX, AE_SUB, &id, mix(id ^ 0xA5A5), Some(1));
        }
        let now = self.now;
        let Some(record) = self.records.get_mut(id as usize) else {
            return;
        };
        record.delivered += 1;
        if node != record.origin {
            let latency = now.saturating_sub(record.sent_at);
            record.latency_sum += latency;
            record.latency_max = record.latency_max.max(latency);
        }
        if by_repair {
            record.repairs += 1;
        } else {
            record.ldh = record.ldh.max(hops);
            record.tree_delivered += 1;
        }
    }

    fn arrive(&mut self, from: u32, from_inc: u32, to: u32, to_inc: u32, wire: Wire) {
        if self.nodes[from as usize].inc != from_inc {
            // Sent by an incarnation that has since restarted: its
            // connection is gone.
            return;
        }
        if !self.reachable(from, to) || self.nodes[to as usize].inc != to_inc {
            // The link broke while the message was in flight.
            let at = self.now + self.latency(from, to);
            self.schedule_link_failed(at, (from, from_inc), (to, to_inc));
            return;
        }
        match wire {
            Wire::Hpv(msg) => {
                self.record_trace(10, u64::from(from), u64::from(to), hpv_tag(&msg));
                self.nodes[to as usize].hpv.handle_message(from, msg);
            }
            Wire::Bcast(msg) => {
                self.record_trace(11, u64::from(from), u64::from(to), bcast_tag(&msg));
                let now = self.now;
                let n = &mut self.nodes[to as usize];
                n.layer.handle(now, from, msg, &mut Delivered(&n.delivered));
            }
            Wire::Ae {
                session,
                from_initiator,
                msg,
            } => {
                self.record_trace(12, u64::from(from), u64::from(to), session);
                self.on_exchange(to, from, session, from_initiator, msg);
            }
        }
        self.pump(to);
    }

    fn reachable(&self, from: u32, to: u32) -> bool {
        self.nodes[to as usize].alive && self.group[from as usize] == self.group[to as usize]
    }

    /// Per-link latency: fixed for a pair, drawn from the configured range
    /// by a hash of the seed and the pair, so links keep FIFO order.
    fn latency(&self, a: u32, b: u32) -> u64 {
        let (lo, hi) = self.config.latency_ms;
        let pair = u64::from(a.min(b)) << 32 | u64::from(a.max(b));
        let span = hi.saturating_sub(lo) + 1;
        lo + mix(pair ^ mix(self.config.seed)) % span
    }

    fn send(&mut self, from: u32, to: u32, wire: Wire) {
        let bytes = FRAME_BYTES + self.wire_size(&wire);
        let lossy = match &wire {
            Wire::Hpv(_) => {
                self.counters.membership_messages += 1;
                self.counters.membership_bytes += bytes;
                false
            }
            Wire::Bcast(msg) => {
                if let Message::Gossip { id, .. } = msg
                    && let Some(r) = self.records.get_mut(*id as usize)
                {
                    r.payload_messages += 1;
                }
                self.counters.broadcast_messages += 1;
                self.counters.broadcast_bytes += bytes;
                true
            }
            Wire::Ae { .. } => {
                self.counters.ae_messages += 1;
                self.counters.ae_bytes += bytes;
                true
            }
        };
        if lossy && self.config.loss > 0.0 {
            let draw = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            if draw < self.config.loss {
                self.counters.lost += 1;
                return;
            }
        }
        let latency = self.latency(from, to);
        let from_inc = self.nodes[from as usize].inc;
        if !self.reachable(from, to) {
            self.notify_failure(from, to);
            return;
        }
        let to_inc = self.nodes[to as usize].inc;
        self.schedule(
            self.now + latency,
            Event::Net {
                from,
                from_inc,
                to,
                to_inc,
                wire,
            },
        );
    }

    fn wire_size(&self, wire: &Wire) -> u64 {
        match wire {
            Wire::Hpv(msg) => postcard::to_stdvec(msg).map_or(0, |v| v.len() as u64),
            Wire::Ae { session, msg, .. } => {
                varint_len(*session) + 1 + postcard::to_stdvec(msg).map_or(0, |v| v.len() as u64)
            }
            Wire::Bcast(msg) => bcast_size(msg, self.config.payload_bytes),
        }
    }

    /// Drains a node's membership and broadcast outputs until both are
    /// quiet.
    fn pump(&mut self, node: u32) {
        loop {
            let mut progressed = false;
            while let Some(out) = self.nodes[node as usize].hpv.poll_output() {
                progressed = true;
                self.on_hpv_output(node, out);
            }
            while let Some(out) = self.nodes[node as usize].layer.poll() {
                progressed = true;
                self.on_layer_output(node, out);
            }
            if !progressed {
                return;
            }
        }
    }

    fn on_hpv_output(&mut self, node: u32, out: hyparview::Output<u32>) {
        let inc = self.nodes[node as usize].inc;
        match out {
            hyparview::Output::Send { to, message } => self.send(node, to, Wire::Hpv(message)),
            hyparview::Output::SetTimer { after_ms, .. } => {
                self.schedule(self.now + after_ms, Event::HpvTimer { node, inc });
            }
            hyparview::Output::NeighborUp(peer) => {
                self.nodes[node as usize].layer.neighbor_up(peer);
            }
            hyparview::Output::NeighborDown(peer) => {
                self.nodes[node as usize].layer.neighbor_down(peer);
            }
        }
    }

    fn on_layer_output(&mut self, node: u32, out: Out) {
        let inc = self.nodes[node as usize].inc;
        match out {
            Output::Send { to, message } => self.send(node, to, Wire::Bcast(message)),
            Output::SetTimer { after_ms, .. } => {
                self.schedule(self.now + after_ms, Event::BcastTimer { node, inc });
            }
            Output::Deliver { id, hops, .. } => self.deliver(node, id, hops, false),
        }
    }

    fn start_exchange(&mut self, node: u32) {
        let Some(peer) = self.random_member(node) else {
            return;
        };
        self.counters.ae_exchanges += 1;
        let n = &mut self.nodes[node as usize];
        let (exchange, msg) = Exchange::initiate(&n.tree, ExchangeConfig::default());
        let id = mix(self.seq ^ u64::from(node));
        if n.sessions.len() >= AE_SESSIONS_MAX {
            n.sessions.pop_front();
        }
        n.sessions.push_back(Session {
            peer,
            id,
            initiator: true,
            exchange,
        });
        self.record_trace(13, u64::from(node), u64::from(peer), id);
        self.send(
            node,
            peer,
            Wire::Ae {
                session: id,
                from_initiator: true,
                msg,
            },
        );
    }

    /// Links `node` to `peer` in the overlay (at most once per
    /// `REJOIN_MS`): HyParView never merges two overlays whose active views
    /// are full, as after a partition heals, and a stale repair is the
    /// evidence that this may have happened.
    fn link_after_stale_repair(&mut self, node: u32, peer: u32) {
        let now = self.now;
        let n = &mut self.nodes[node as usize];
        if n.hpv.active_view().contains(&peer)
            || n.last_connect.is_some_and(|t| now < t + REJOIN_MS)
        {
            return;
        }
        n.last_connect = Some(now);
        n.hpv.connect(peer);
        self.counters.overlay_links += 1;
        self.record_trace(14, u64::from(node), u64::from(peer), 0);
    }

    /// Anti-entropy picks any member, not only overlay neighbours, so data
    /// converges even where the overlay split (as Riak prefers peers
    /// outside the broadcast tree).
    fn random_member(&mut self, except: u32) -> Option<u32> {
        if self.members.len() < 2 {
            return None;
        }
        loop {
            let m = *self.rng.pick(&self.members)?;
            if m != except {
                return Some(m);
            }
        }
    }

    fn on_exchange(
        &mut self,
        node: u32,
        peer: u32,
        session: u64,
        from_initiator: bool,
        msg: chorus_gossip::merkle::Message<u64, ()>,
    ) {
        let n = &mut self.nodes[node as usize];
        let mine = !from_initiator;
        let pos = n
            .sessions
            .iter()
            .position(|s| s.peer == peer && s.id == session && s.initiator == mine);
        let pos = match pos {
            Some(p) => p,
            // As in the replica: only a Begin opens a session, so a step
            // for one this node dropped is not taken for a whole exchange.
            None if from_initiator
                && matches!(msg, chorus_gossip::merkle::Message::Begin { .. }) =>
            {
                if n.sessions.len() >= AE_SESSIONS_MAX {
                    n.sessions.pop_front();
                }
                n.sessions.push_back(Session {
                    peer,
                    id: session,
                    initiator: false,
                    exchange: Exchange::respond(ExchangeConfig::default()),
                });
                n.sessions.len() - 1
            }
            None => return,
        };
        let Node {
            sessions,
            tree,
            delivered,
            ..
        } = n;
        let Some(s) = sessions.get_mut(pos) else {
            return;
        };
        let reply = s.exchange.handle(tree, msg, &mut Objects(delivered));
        let mut repaired = Vec::new();
        while let Some(repair) = s.exchange.poll_repair() {
            repaired.push(repair.key);
        }
        let done = s.exchange.is_done();
        if done {
            sessions.remove(pos);
        }
        let mut stale = false;
        for id in repaired {
            if !self.has_delivered(node, id) {
                self.counters.ae_repairs += 1;
                self.deliver(node, id, 0, true);
                let sent_at = self
                    .records
                    .get(id as usize)
                    .map_or(self.now, |r| r.sent_at);
                stale |= self.now.saturating_sub(sent_at) > STALE_REPAIR_MS;
            }
        }
        if stale {
            self.link_after_stale_repair(node, peer);
        }
        if let Some(msg) = reply {
            self.send(
                node,
                peer,
                Wire::Ae {
                    session,
                    from_initiator: mine,
                    msg,
                },
            );
        }
    }
}

fn add_stats(total: &mut chorus_gossip::plumtree::Stats, s: &chorus_gossip::plumtree::Stats) {
    total.gossip_sent += s.gossip_sent;
    total.ihave_sent += s.ihave_sent;
    total.grafts_sent += s.grafts_sent;
    total.prunes_sent += s.prunes_sent;
    total.duplicates += s.duplicates;
    total.already_known += s.already_known;
    total.lazy_dropped += s.lazy_dropped;
    total.missing_evicted += s.missing_evicted;
    total.missing_abandoned += s.missing_abandoned;
    total.shortened += s.shortened;
}

/// Bytes of a broadcast-layer message on the wire, framing excluded; the
/// payload is sized, not carried.
pub(crate) fn bcast_size(msg: &Msg, payload_bytes: usize) -> u64 {
    match msg {
        Message::Gossip { id, round, .. } => {
            1 + varint_len(*id) + varint_len(u64::from(*round)) + payload_bytes as u64
        }
        Message::IHave { ids } => {
            1 + varint_len(ids.len() as u64)
                + ids
                    .iter()
                    .map(|(id, r)| varint_len(*id) + varint_len(u64::from(*r)))
                    .sum::<u64>()
        }
        Message::Graft { id, round } => {
            2 + id.map_or(0, varint_len) + varint_len(u64::from(*round))
        }
        Message::Prune => 1,
    }
}

/// Folds values into one, for the trace.
fn fold(values: &[u64]) -> u64 {
    values.iter().fold(0, |h, v| mix(h ^ v))
}

pub(crate) fn hpv_tag(msg: &hyparview::Message<u32>) -> u64 {
    use hyparview::Message as M;
    match msg {
        M::Join => 1,
        M::ForwardJoin { joiner, ttl } => fold(&[2, u64::from(*joiner), u64::from(*ttl)]),
        M::Neighbor { priority } => fold(&[3, u64::from(*priority == hyparview::Priority::High)]),
        M::NeighborReply { accepted } => fold(&[4, u64::from(*accepted)]),
        M::Disconnect => 5,
        M::Shuffle { origin, ttl, peers } => {
            let peers: Vec<u64> = peers.iter().map(|p| u64::from(*p)).collect();
            fold(&[6, u64::from(*origin), u64::from(*ttl), fold(&peers)])
        }
        M::ShuffleReply { peers } => {
            let peers: Vec<u64> = peers.iter().map(|p| u64::from(*p)).collect();
            fold(&[7, fold(&peers)])
        }
    }
}

pub(crate) fn bcast_tag(msg: &Msg) -> u64 {
    match msg {
        Message::Gossip { id, round, .. } => fold(&[1, *id, u64::from(*round)]),
        Message::IHave { ids } => {
            let ids: Vec<u64> = ids
                .iter()
                .map(|(id, r)| fold(&[*id, u64::from(*r)]))
                .collect();
            fold(&[2, fold(&ids)])
        }
        Message::Graft { id, round } => fold(&[3, id.map_or(u64::MAX, |i| i), u64::from(*round)]),
        Message::Prune => 4,
    }
}
