//! The network of the channel simulation: nodes that each run one
//! HyParView + Plumtree pair per overlay they are in, frames that name
//! their overlay, crashes that peers notice after a round trip, and the
//! one place every frame arrives.
//!
//! Invariant: at arrival, every frame is checked against the channel
//! assignment (the ground truth, never the overlays): a frame whose
//! overlay is a channel the receiver does not serve, or that carries a
//! message id of such a channel, is counted as reaching a non-member. The
//! count is taken from the network, so a frame routed wrongly shows in it.
//! A frame is handed only to the receiver's pair of the overlay it names.

use crate::world::Scheduled;
use std::collections::BinaryHeap;

use chorus_gossip::Rng;
use chorus_gossip::hyparview::{self, HyParView};
use chorus_gossip::plumtree::{Message, Output, Plumtree, Timer};

use super::assign::Assignment;
use super::{Config, Counters, Design, Phase, Record};
use crate::layer::{Delivered, Msg};
use crate::world::{FRAME_BYTES, bcast_size, bcast_tag, hpv_tag, mix};

/// How often a pair with no active peer joins its overlay again (ms).
const REJOIN_MS: u64 = 5_000;
/// Bytes of the channel id a per-channel frame carries (a hash of the
/// channel's name, as the replica's plan has it).
const CHANNEL_TAG_BYTES: u64 = 8;
/// Random picks tried before a contact is chosen by a scan of the live.
const PICKS_MAX: usize = 16;

/// Something the scenario schedules.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// The node starts and joins each overlay it is in through a live
    /// member of that overlay that started before it.
    Start(u32),
    /// A broadcast from a random live member of `channel` (of a random
    /// channel with a live member if `None`).
    Broadcast {
        /// The channel.
        channel: Option<u32>,
        /// Warm-up or measured.
        phase: Phase,
    },
    /// That share of the live nodes stops at once, for good.
    Crash(f64),
}

enum Wire {
    Hpv(hyparview::Message<u32>),
    Tree(Msg),
}

enum Event {
    Act(Action),
    Net {
        from: u32,
        to: u32,
        overlay: u32,
        wire: Wire,
    },
    LinkFailed {
        node: u32,
        overlay: u32,
        peer: u32,
    },
    HpvTimer {
        node: u32,
        overlay: u32,
    },
    TreeTimer {
        node: u32,
        overlay: u32,
    },
    RejoinTimer {
        node: u32,
        overlay: u32,
    },
}

/// One overlay's membership and broadcast state on one node.
struct Pair {
    overlay: u32,
    hpv: HyParView<u32>,
    tree: Plumtree<u32, u64, ()>,
}

struct Node {
    alive: bool,
    pairs: Vec<Pair>,
    /// Message ids this node holds (delivered, or relayed by a
    /// non-member of a cluster-wide tree); grown on demand.
    has: Vec<bool>,
}

/// The simulated network of one run.
pub(crate) struct Net {
    config: Config,
    design: Design,
    assignment: Assignment,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Scheduled<Event>>,
    nodes: Vec<Node>,
    /// Per overlay: the nodes started in it, in start order.
    started: Vec<Vec<u32>>,
    /// The protocols' choices (contacts).
    rng: Rng,
    /// The scenario's choices (who crashes, who broadcasts): the same in
    /// both designs, so they broadcast the same messages from the same
    /// origins.
    plan: Rng,
    /// Per channel: broadcasts since the start or the last crash.
    since_disturbance: Vec<u32>,
    pub(crate) records: Vec<Record>,
    pub(crate) counters: Counters,
    trace: u64,
}

impl Net {
    /// A network of `config.nodes` nodes, none started.
    pub(crate) fn new(config: &Config, design: Design, assignment: Assignment) -> Net {
        let overlays = match design {
            Design::PerChannel => assignment.channel_count(),
            Design::ClusterWide => 1,
        };
        let mut net = Net {
            config: config.clone(),
            design,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes: Vec::with_capacity(config.nodes),
            started: vec![Vec::new(); overlays],
            rng: Rng::new(mix(config.seed ^ 0x0E7A_0001)),
            plan: Rng::new(mix(config.seed ^ 0x0E7A_0002)),
            since_disturbance: vec![0; assignment.channel_count()],
            records: Vec::new(),
            counters: Counters::default(),
            trace: 0,
            assignment,
        };
        for i in 0..config.nodes as u32 {
            let pairs = net
                .overlays_of(i)
                .into_iter()
                .map(|overlay| net.fresh_pair(i, overlay))
                .collect();
            net.nodes.push(Node {
                alive: false,
                pairs,
                has: Vec::new(),
            });
        }
        net
    }

    /// Schedules `action` at `time` (virtual ms).
    pub(crate) fn at(&mut self, time: u64, action: Action) {
        self.schedule(time, Event::Act(action));
    }

    /// Runs every event up to and including `time`.
    pub(crate) fn run_until(&mut self, time: u64) {
        while self.queue.peek().is_some_and(|next| next.time <= time) {
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
    pub(crate) fn now(&self) -> u64 {
        self.now
    }

    /// A hash of every event processed so far, in order.
    pub(crate) fn trace_hash(&self) -> u64 {
        self.trace
    }

    /// The channel assignment.
    pub(crate) fn assignment(&self) -> &Assignment {
        &self.assignment
    }

    /// Whether `node` runs.
    pub(crate) fn is_alive(&self, node: u32) -> bool {
        self.nodes.get(node as usize).is_some_and(|n| n.alive)
    }

    /// Whether `node` holds message `id`.
    pub(crate) fn holds(&self, node: u32, id: u64) -> bool {
        self.nodes
            .get(node as usize)
            .and_then(|n| n.has.get(id as usize))
            .copied()
            .unwrap_or(false)
    }

    /// The overlays this design has: one per channel, or the cluster's.
    pub(crate) fn overlay_count(&self) -> usize {
        self.started.len()
    }

    /// Connected components of an overlay's live started nodes, and how
    /// many of them have an empty active view there.
    pub(crate) fn overlay_shape(&self, overlay: u32) -> (usize, usize) {
        let Some(started) = self.started.get(overlay as usize) else {
            return (0, 0);
        };
        let live: Vec<u32> = started
            .iter()
            .copied()
            .filter(|&n| self.is_alive(n))
            .collect();
        let mut seen = vec![false; self.nodes.len()];
        let (mut components, mut isolated) = (0, 0);
        for &start in &live {
            if self.active_view(start, overlay).is_empty() {
                isolated += 1;
            }
            if seen[start as usize] {
                continue;
            }
            components += 1;
            seen[start as usize] = true;
            let mut stack = vec![start];
            while let Some(n) = stack.pop() {
                for &p in self.active_view(n, overlay) {
                    if self.is_alive(p) && !seen[p as usize] {
                        seen[p as usize] = true;
                        stack.push(p);
                    }
                }
            }
        }
        (components, isolated)
    }

    /// Active links summed over every live node's pairs (each link counted
    /// from both ends), and Plumtree's counters summed over every pair.
    pub(crate) fn links_and_stats(&self) -> (usize, chorus_gossip::plumtree::Stats) {
        let mut links = 0;
        let mut stats = chorus_gossip::plumtree::Stats::default();
        for node in &self.nodes {
            for pair in &node.pairs {
                if node.alive {
                    links += pair.hpv.active_view().len();
                }
                let s = pair.tree.stats();
                stats.grafts_sent += s.grafts_sent;
                stats.prunes_sent += s.prunes_sent;
                stats.duplicates += s.duplicates;
                stats.ihave_sent += s.ihave_sent;
                stats.gossip_sent += s.gossip_sent;
                stats.lazy_dropped += s.lazy_dropped;
                stats.missing_abandoned += s.missing_abandoned;
                stats.shortened += s.shortened;
            }
        }
        (links, stats)
    }

    /// Links of `overlay` that only one end has, between live nodes:
    /// (`a` lists `b` in its active view and `b` does not list `a`;
    /// `a` pushes payloads to `b` and `b` only announces to `a`). Either
    /// makes a tree link carry payloads one way, so a broadcast from `b`'s
    /// side reaches `a`'s side only by grafts.
    pub(crate) fn one_sided_links(&self, overlay: u32) -> (usize, usize) {
        let (mut views, mut trees) = (0, 0);
        for (a, node) in self.nodes.iter().enumerate().filter(|(_, n)| n.alive) {
            let a = a as u32;
            let Some(pair) = node.pairs.iter().find(|p| p.overlay == overlay) else {
                continue;
            };
            for &b in pair.hpv.active_view() {
                if self.is_alive(b) && !self.active_view(b, overlay).contains(&a) {
                    views += 1;
                }
            }
            for &b in pair.tree.eager_peers() {
                let back = self
                    .nodes
                    .get(b as usize)
                    .filter(|n| n.alive)
                    .and_then(|n| n.pairs.iter().find(|p| p.overlay == overlay));
                if back.is_some_and(|p| p.tree.lazy_peers().contains(&a)) {
                    trees += 1;
                }
            }
        }
        (views, trees)
    }

    fn active_view(&self, node: u32, overlay: u32) -> &[u32] {
        self.nodes
            .get(node as usize)
            .and_then(|n| n.pairs.iter().find(|p| p.overlay == overlay))
            .map_or(&[], |p| p.hpv.active_view())
    }

    fn overlays_of(&self, node: u32) -> Vec<u32> {
        match self.design {
            Design::PerChannel => self.assignment.channels_of(node).to_vec(),
            Design::ClusterWide => vec![0],
        }
    }

    /// The channel whose members alone run `overlay`, if it is one.
    fn channel_of_overlay(&self, overlay: u32) -> Option<u32> {
        match self.design {
            Design::PerChannel => Some(overlay),
            Design::ClusterWide => None,
        }
    }

    /// The overlay a channel's messages are broadcast on.
    fn overlay_of_channel(&self, channel: u32) -> u32 {
        match self.design {
            Design::PerChannel => channel,
            Design::ClusterWide => 0,
        }
    }

    fn fresh_pair(&self, node: u32, overlay: u32) -> Pair {
        let seed = mix(self.config.seed ^ mix(u64::from(node) << 32 | u64::from(overlay)));
        Pair {
            overlay,
            hpv: HyParView::new(node, self.config.hyparview.clone(), seed),
            tree: Plumtree::new(node, self.config.plumtree.clone()),
        }
    }

    fn slot(&self, node: u32, overlay: u32) -> Option<usize> {
        self.nodes
            .get(node as usize)?
            .pairs
            .iter()
            .position(|p| p.overlay == overlay)
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
            Event::Act(Action::Start(node)) => self.start(node),
            Event::Act(Action::Broadcast { channel, phase }) => self.broadcast(channel, phase),
            Event::Act(Action::Crash(share)) => self.crash(share),
            Event::Net {
                from,
                to,
                overlay,
                wire,
            } => self.arrive(from, to, overlay, wire),
            Event::LinkFailed {
                node,
                overlay,
                peer,
            } => self.on_link_failed(node, overlay, peer),
            Event::HpvTimer { node, overlay } => {
                if let Some(slot) = self.live_slot(node, overlay) {
                    self.record_trace(3, u64::from(node), u64::from(overlay), 0);
                    self.nodes[node as usize].pairs[slot]
                        .hpv
                        .handle_timer(hyparview::Timer::Shuffle);
                    self.pump(node, slot);
                }
            }
            Event::TreeTimer { node, overlay } => {
                if let Some(slot) = self.live_slot(node, overlay) {
                    self.record_trace(4, u64::from(node), u64::from(overlay), 0);
                    let now = self.now;
                    let Node { pairs, has, .. } = &mut self.nodes[node as usize];
                    pairs[slot]
                        .tree
                        .handle_timer(now, Timer::Tick, &mut Delivered(has));
                    self.pump(node, slot);
                }
            }
            Event::RejoinTimer { node, overlay } => {
                if let Some(slot) = self.live_slot(node, overlay) {
                    if self.nodes[node as usize].pairs[slot]
                        .hpv
                        .active_view()
                        .is_empty()
                    {
                        self.counters.rejoins += 1;
                        self.join(node, slot);
                    }
                    self.schedule(self.now + REJOIN_MS, Event::RejoinTimer { node, overlay });
                }
            }
        }
    }

    fn live_slot(&self, node: u32, overlay: u32) -> Option<usize> {
        if self.is_alive(node) {
            self.slot(node, overlay)
        } else {
            None
        }
    }

    fn start(&mut self, node: u32) {
        if self.nodes.get(node as usize).is_none_or(|n| n.alive) {
            return;
        }
        self.nodes[node as usize].alive = true;
        for slot in 0..self.nodes[node as usize].pairs.len() {
            let overlay = self.nodes[node as usize].pairs[slot].overlay;
            self.started[overlay as usize].push(node);
            self.join(node, slot);
            let phase = self.rng.below(REJOIN_MS as usize) as u64;
            self.schedule(
                self.now + REJOIN_MS + phase,
                Event::RejoinTimer { node, overlay },
            );
            // A new pair asks for its first shuffle timer.
            self.pump(node, slot);
        }
    }

    /// Joins `node`'s pair in `slot` to its overlay through a random live
    /// node started in that overlay: for a channel, another member of it.
    fn join(&mut self, node: u32, slot: usize) {
        let overlay = self.nodes[node as usize].pairs[slot].overlay;
        let contact = self.contact(overlay, node);
        self.record_trace(
            1,
            u64::from(node),
            u64::from(contact.unwrap_or(u32::MAX)),
            u64::from(overlay),
        );
        if let Some(c) = contact {
            self.nodes[node as usize].pairs[slot].hpv.join(c);
            self.pump(node, slot);
        }
    }

    fn contact(&mut self, overlay: u32, except: u32) -> Option<u32> {
        let started = self.started.get(overlay as usize)?;
        for _ in 0..PICKS_MAX {
            let &c = self.rng.pick(started)?;
            if c != except && self.nodes[c as usize].alive {
                return Some(c);
            }
        }
        let live: Vec<u32> = started
            .iter()
            .copied()
            .filter(|&c| c != except && self.nodes[c as usize].alive)
            .collect();
        self.rng.pick(&live).copied()
    }

    fn crash(&mut self, share: f64) {
        let live: Vec<u32> = (0..self.nodes.len() as u32)
            .filter(|&i| self.nodes[i as usize].alive)
            .collect();
        // At least one node survives, whatever the rounding.
        let k = ((live.len() as f64) * share.clamp(0.0, 1.0)).round() as usize;
        let k = k.min(live.len().saturating_sub(1));
        for node in self.plan.sample(&live, k) {
            self.nodes[node as usize].alive = false;
            self.counters.crashes += 1;
            self.record_trace(5, u64::from(node), 0, 0);
        }
        self.since_disturbance.iter_mut().for_each(|s| *s = 0);
        // Open links to the crashed break: each live end's transport
        // notices after a round trip.
        let mut notices = Vec::new();
        for (i, n) in self.nodes.iter().enumerate().filter(|(_, n)| n.alive) {
            for pair in &n.pairs {
                for &peer in pair.hpv.active_view() {
                    if !self.nodes[peer as usize].alive {
                        notices.push((i as u32, pair.overlay, peer));
                    }
                }
            }
        }
        for (node, overlay, peer) in notices {
            self.notify_failure(node, overlay, peer);
        }
    }

    fn on_link_failed(&mut self, node: u32, overlay: u32, peer: u32) {
        let Some(slot) = self.live_slot(node, overlay) else {
            return;
        };
        self.record_trace(2, u64::from(node), u64::from(peer), u64::from(overlay));
        let pair = &mut self.nodes[node as usize].pairs[slot];
        pair.hpv.peer_failed(&peer);
        pair.tree.neighbor_down(&peer);
        self.pump(node, slot);
    }

    fn broadcast(&mut self, channel: Option<u32>, phase: Phase) {
        let Some(channel) = channel.or_else(|| self.channel_with_live_member()) else {
            return;
        };
        let live: Vec<u32> = self
            .assignment
            .members(channel)
            .iter()
            .copied()
            .filter(|&m| self.is_alive(m))
            .collect();
        let Some(&origin) = self.plan.pick(&live) else {
            return;
        };
        let overlay = self.overlay_of_channel(channel);
        let Some(slot) = self.slot(origin, overlay) else {
            return;
        };
        let seen = &mut self.since_disturbance[channel as usize];
        let tree_formed = *seen >= self.config.warmup_per_channel;
        *seen = seen.saturating_add(1);
        let id = self.records.len() as u64;
        self.records.push(Record {
            channel,
            origin,
            sent_at: self.now,
            phase,
            tree_formed,
            ..Record::default()
        });
        self.record_trace(6, u64::from(origin), id, u64::from(channel));
        self.deliver(origin, id, 0);
        let now = self.now;
        self.nodes[origin as usize].pairs[slot]
            .tree
            .broadcast(now, id, ());
        self.pump(origin, slot);
    }

    fn channel_with_live_member(&mut self) -> Option<u32> {
        let channels = self.assignment.channel_count();
        for _ in 0..PICKS_MAX {
            let c = self.plan.below(channels) as u32;
            if self.assignment.members(c).iter().any(|&m| self.is_alive(m)) {
                return Some(c);
            }
        }
        let with_live: Vec<u32> = (0..channels as u32)
            .filter(|&c| self.assignment.members(c).iter().any(|&m| self.is_alive(m)))
            .collect();
        self.plan.pick(&with_live).copied()
    }

    /// Records that `node` holds message `id` (at `hops`): a delivery if
    /// it serves the message's channel, a relay if not.
    fn deliver(&mut self, node: u32, id: u64, hops: u32) {
        let Some(record) = self.records.get(id as usize) else {
            return;
        };
        let member = self.assignment.serves(node, record.channel);
        let n = &mut self.nodes[node as usize];
        let i = id as usize;
        if n.has.len() <= i {
            n.has.resize(i + 1, false);
        }
        if n.has[i] {
            return;
        }
        n.has[i] = true;
        let now = self.now;
        let record = &mut self.records[i];
        if !member {
            record.relayed += 1;
            return;
        }
        record.delivered += 1;
        record.ldh = record.ldh.max(hops);
        if node != record.origin {
            let latency = now.saturating_sub(record.sent_at);
            record.latency_sum += latency;
            record.latency_max = record.latency_max.max(latency);
        }
    }

    fn arrive(&mut self, from: u32, to: u32, overlay: u32, wire: Wire) {
        if !self.is_alive(to) {
            // The receiver crashed while the frame was in flight: the
            // sender's transport notices.
            let at = self.now + self.latency(from, to);
            self.schedule(
                at,
                Event::LinkFailed {
                    node: from,
                    overlay,
                    peer: to,
                },
            );
            return;
        }
        self.count_receipt(to, overlay, &wire);
        let Some(slot) = self.slot(to, overlay) else {
            // A node runs no pair for this overlay: the frame is dropped.
            self.counters.unrouted += 1;
            return;
        };
        match wire {
            Wire::Hpv(msg) => {
                self.record_trace(10, u64::from(from), u64::from(to), hpv_tag(&msg));
                self.nodes[to as usize].pairs[slot]
                    .hpv
                    .handle_message(from, msg);
            }
            Wire::Tree(msg) => {
                self.record_trace(11, u64::from(from), u64::from(to), bcast_tag(&msg));
                let now = self.now;
                let Node { pairs, has, .. } = &mut self.nodes[to as usize];
                pairs[slot]
                    .tree
                    .handle_message(now, from, msg, &mut Delivered(has));
            }
        }
        self.pump(to, slot);
    }

    /// The instrument: counts a frame that reached a node outside the
    /// channel it belongs to, by its overlay and by the message ids it
    /// carries, against the assignment.
    fn count_receipt(&mut self, to: u32, overlay: u32, wire: &Wire) {
        let mut outside = self
            .channel_of_overlay(overlay)
            .is_some_and(|c| !self.assignment.serves(to, c));
        let ids: &[(u64, u32)] = match wire {
            Wire::Tree(Message::IHave { ids }) => ids,
            _ => &[],
        };
        let single = match wire {
            Wire::Tree(Message::Gossip { id, .. }) => Some(*id),
            Wire::Tree(Message::Graft { id, .. }) => *id,
            _ => None,
        };
        for id in ids.iter().map(|(id, _)| *id).chain(single) {
            let Some(record) = self.records.get_mut(id as usize) else {
                continue;
            };
            if !self.assignment.serves(to, record.channel) {
                outside = true;
                record.non_member_frames += 1;
            }
        }
        if outside {
            match wire {
                Wire::Hpv(_) => self.counters.non_member_membership += 1,
                Wire::Tree(_) => self.counters.non_member_broadcast += 1,
            }
        }
    }

    /// Per-link latency: fixed for a pair, drawn from the configured range
    /// by a hash of the seed and the pair, so links keep FIFO order.
    fn latency(&self, a: u32, b: u32) -> u64 {
        let (lo, hi) = self.config.latency_ms;
        let pair = u64::from(a.min(b)) << 32 | u64::from(a.max(b));
        let span = hi.saturating_sub(lo) + 1;
        lo + mix(pair ^ mix(self.config.seed)) % span
    }

    fn send(&mut self, from: u32, to: u32, overlay: u32, wire: Wire) {
        let tag = match self.design {
            Design::PerChannel => CHANNEL_TAG_BYTES,
            Design::ClusterWide => 0,
        };
        match &wire {
            Wire::Hpv(msg) => {
                let size = postcard::to_stdvec(msg).map_or(0, |v| v.len() as u64);
                self.counters.membership_messages += 1;
                self.counters.membership_bytes += FRAME_BYTES + tag + size;
            }
            Wire::Tree(msg) => {
                if let Message::Gossip { id, .. } = msg
                    && let Some(r) = self.records.get_mut(*id as usize)
                {
                    r.payloads += 1;
                }
                self.counters.broadcast_messages += 1;
                self.counters.broadcast_bytes +=
                    FRAME_BYTES + tag + bcast_size(msg, self.config.payload_bytes);
            }
        }
        if !self.is_alive(to) {
            self.notify_failure(from, overlay, to);
            return;
        }
        let at = self.now + self.latency(from, to);
        self.schedule(
            at,
            Event::Net {
                from,
                to,
                overlay,
                wire,
            },
        );
    }

    /// `node`'s transport notices, after a round trip, that its link to
    /// `peer` broke.
    fn notify_failure(&mut self, node: u32, overlay: u32, peer: u32) {
        let at = self.now + 2 * self.latency(node, peer);
        self.schedule(
            at,
            Event::LinkFailed {
                node,
                overlay,
                peer,
            },
        );
    }

    /// Drains a pair's membership and broadcast outputs until both are
    /// quiet.
    fn pump(&mut self, node: u32, slot: usize) {
        let overlay = self.nodes[node as usize].pairs[slot].overlay;
        loop {
            let mut progressed = false;
            while let Some(out) = self.nodes[node as usize].pairs[slot].hpv.poll_output() {
                progressed = true;
                self.on_hpv_output(node, slot, overlay, out);
            }
            while let Some(out) = self.nodes[node as usize].pairs[slot].tree.poll_output() {
                progressed = true;
                self.on_tree_output(node, overlay, out);
            }
            if !progressed {
                return;
            }
        }
    }

    fn on_hpv_output(&mut self, node: u32, slot: usize, overlay: u32, out: hyparview::Output<u32>) {
        match out {
            hyparview::Output::Send { to, message } => {
                self.send(node, to, overlay, Wire::Hpv(message));
            }
            hyparview::Output::SetTimer { after_ms, .. } => {
                self.schedule(self.now + after_ms, Event::HpvTimer { node, overlay });
            }
            hyparview::Output::NeighborUp(peer) => {
                self.nodes[node as usize].pairs[slot].tree.neighbor_up(peer);
            }
            hyparview::Output::NeighborDown(peer) => {
                self.nodes[node as usize].pairs[slot]
                    .tree
                    .neighbor_down(&peer);
            }
        }
    }

    fn on_tree_output(&mut self, node: u32, overlay: u32, out: Output<u32, u64, ()>) {
        match out {
            Output::Send { to, message } => self.send(node, to, overlay, Wire::Tree(message)),
            Output::SetTimer { after_ms, .. } => {
                self.schedule(self.now + after_ms, Event::TreeTimer { node, overlay });
            }
            Output::Deliver { id, hops, .. } => self.deliver(node, id, hops),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Config {
        Config {
            nodes: 40,
            channels: 4,
            channels_per_node: 1,
            ..Config::default()
        }
    }

    /// The instrument counts what the network carries: a membership frame
    /// of channel 0 sent to a node outside it, and a payload of a channel
    /// 0 message sent on another channel's overlay, are both counted.
    #[test]
    fn frames_to_non_members_are_counted_where_they_arrive() -> Result<(), String> {
        let config = small();
        let assignment = Assignment::new(config.nodes, 4, 1, config.seed)?;
        let member = assignment
            .members(0)
            .first()
            .copied()
            .ok_or("empty channel")?;
        let outsider = assignment
            .members(1)
            .first()
            .copied()
            .ok_or("empty channel")?;
        let mut net = Net::new(&config, Design::PerChannel, assignment);
        net.at(0, Action::Start(member));
        net.at(0, Action::Start(outsider));
        net.at(
            1,
            Action::Broadcast {
                channel: Some(0),
                phase: Phase::Measured,
            },
        );
        net.run_until(10);
        assert_eq!(net.counters.non_member_membership, 0);
        assert_eq!(net.counters.non_member_broadcast, 0);
        net.send(member, outsider, 0, Wire::Hpv(hyparview::Message::Join));
        let payload = Message::Gossip {
            id: 0,
            round: 0,
            payload: (),
        };
        net.send(member, outsider, 1, Wire::Tree(payload));
        net.run_until(1_000);
        assert_eq!(net.counters.non_member_membership, 1);
        assert_eq!(net.counters.non_member_broadcast, 1);
        assert_eq!(net.records[0].non_member_frames, 1);
        // The first frame names an overlay the outsider does not run; the
        // second reaches its pair of channel 1, which takes the payload in.
        assert_eq!(net.counters.unrouted, 1);
        assert!(net.holds(outsider, 0));
        assert_eq!(net.records[0].relayed, 1);
        Ok(())
    }
}
