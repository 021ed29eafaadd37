//! Channels (partial replication, issue 19) at gossip scale: every node
//! serves a few channels, and a channel's messages must reach its live
//! members and nobody else.
//!
//! Two designs run the same scenario on the same assignment, with the same
//! crashes and the same broadcasts from the same origins:
//! - [`Design::PerChannel`], the replica's plan: one HyParView overlay and
//!   one Plumtree tree per channel among its members only, each node
//!   running one pair per channel it serves, joined through another member
//!   of that channel; frames carry their channel.
//! - [`Design::ClusterWide`], the baseline: one overlay and tree of every
//!   node; non-members relay a channel's messages and do not keep them.
//!
//! What reaches non-members is counted where frames arrive (see `net.rs`),
//! against the assignment, never assumed.

mod assign;
mod net;

use crate::{mean, min};
use std::time::Instant;

use serde::Serialize;

pub use assign::Assignment;

use chorus_gossip::{hyparview, plumtree};
use net::{Action, Net};

/// How channels are broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Design {
    /// An overlay and a tree per channel, among its members.
    PerChannel,
    /// One overlay and tree of every node (the baseline).
    ClusterWide,
}

impl Design {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Design::PerChannel => "per-channel",
            Design::ClusterWide => "cluster-wide",
        }
    }
}

/// Which part of the scenario a broadcast belongs to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Builds the trees; not measured.
    #[default]
    Warmup,
    /// Measured.
    Measured,
}

/// A channel simulation run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Channels.
    pub channels: usize,
    /// Channels every node serves.
    pub channels_per_node: usize,
    /// Measured broadcasts, each from a random live member of a random
    /// channel.
    pub messages: usize,
    /// Broadcasts per channel, round-robin, that build the trees before
    /// the measured ones; and, per channel, how many broadcasts after the
    /// start or a crash count as warm-up for "RMR after the trees form".
    pub warmup_per_channel: u32,
    /// Share of the nodes crashed at once after the warm-up.
    pub fail: f64,
    /// Seed of every random choice.
    pub seed: u64,
    /// Each link's latency is fixed, drawn from this range (ms).
    pub latency_ms: (u64, u64),
    /// Time between two node starts (ms).
    pub join_gap_ms: u64,
    /// Quiet time after the last start, before the warm-up (ms).
    pub settle_ms: u64,
    /// Time after a crash for the overlays to repair before the measured
    /// broadcasts (ms).
    pub repair_ms: u64,
    /// Time between two broadcasts (ms).
    pub message_gap_ms: u64,
    /// Time after the last broadcast before the run is measured (ms).
    pub drain_ms: u64,
    /// Payload size, for the byte counts.
    pub payload_bytes: usize,
    /// Membership settings of every overlay.
    pub hyparview: hyparview::Config,
    /// Broadcast settings of every tree.
    pub plumtree: plumtree::Config,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            nodes: 10_000,
            channels: 100,
            channels_per_node: 3,
            messages: 1_000,
            warmup_per_channel: 2,
            fail: 0.0,
            seed: 1,
            latency_ms: (5, 50),
            join_gap_ms: 10,
            settle_ms: 20_000,
            repair_ms: 20_000,
            message_gap_ms: 100,
            drain_ms: 10_000,
            payload_bytes: 100,
            hyparview: hyparview::Config::default(),
            plumtree: plumtree::Config::default(),
        }
    }
}

/// Traffic and event counters of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    /// Events processed.
    pub events: u64,
    /// Membership messages sent.
    pub membership_messages: u64,
    /// Their bytes, framing and channel id included.
    pub membership_bytes: u64,
    /// Broadcast-layer messages sent (payloads, announcements, grafts,
    /// prunes).
    pub broadcast_messages: u64,
    /// Their bytes.
    pub broadcast_bytes: u64,
    /// Membership frames that arrived at a node outside their channel.
    pub non_member_membership: u64,
    /// Broadcast-layer frames that arrived at a node outside the channel
    /// of their overlay or of a message id they carry.
    pub non_member_broadcast: u64,
    /// Frames for an overlay the receiver does not run (dropped).
    pub unrouted: u64,
    /// Joins again by a pair left with no active peer.
    pub rejoins: u64,
    /// Crashes.
    pub crashes: u64,
}

/// What happened to one broadcast.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Record {
    /// Its channel.
    pub channel: u32,
    /// The member that broadcast it.
    pub origin: u32,
    /// When (virtual ms).
    pub sent_at: u64,
    /// Warm-up or measured.
    pub phase: Phase,
    /// Whether its channel had `warmup_per_channel` broadcasts since the
    /// start or the last crash when it was sent.
    pub tree_formed: bool,
    /// Members that delivered it, the origin included.
    pub delivered: u32,
    /// Non-members that received its payload (and relayed it).
    pub relayed: u32,
    /// Payload messages sent for it.
    pub payloads: u64,
    /// Frames carrying its id that arrived at non-members of its channel.
    pub non_member_frames: u64,
    /// Hops of the last delivery to a member (LDH).
    pub ldh: u32,
    /// Sum of member delivery latencies, the origin's excluded (ms).
    pub latency_sum: u64,
    /// Slowest member delivery (ms).
    pub latency_max: u64,
}

/// One broadcast's figures.
#[derive(Debug, Clone, Serialize)]
pub struct MessageFigures {
    /// Its channel.
    pub channel: u32,
    /// Warm-up or measured.
    pub phase: Phase,
    /// See [`Record::tree_formed`].
    pub tree_formed: bool,
    /// Share of the channel's live members (at the end) that delivered it.
    pub reliability: f64,
    /// Payloads / (nodes reached - 1) - 1, every node reached counted
    /// (members and relaying non-members); NaN (null) if only the origin.
    pub rmr: f64,
    /// Last delivery hop.
    pub ldh: u32,
    /// Frames carrying it that reached non-members.
    pub non_member_frames: u64,
    /// Payload messages sent for it.
    pub payloads: u64,
}

/// The figures of a run, over the measured broadcasts unless named
/// otherwise. A figure with nothing to measure is NaN, `null` in JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The design.
    pub design: Design,
    /// Nodes.
    pub nodes: usize,
    /// Channels.
    pub channels: usize,
    /// Channels per node.
    pub channels_per_node: usize,
    /// Seed.
    pub seed: u64,
    /// Share crashed.
    pub fail: f64,
    /// Members of the smallest channel.
    pub members_min: usize,
    /// Members of the largest channel.
    pub members_max: usize,
    /// Nodes alive at the end.
    pub live_nodes: usize,
    /// Live members per channel at the end, mean.
    pub live_members_mean: f64,
    /// Warm-up broadcasts.
    pub warmup_broadcasts: usize,
    /// Measured broadcasts.
    pub broadcasts: usize,
    /// Lowest reliability of a measured broadcast.
    pub reliability_min: f64,
    /// Mean reliability.
    pub reliability_mean: f64,
    /// Measured broadcasts that missed a live member.
    pub broadcasts_incomplete: usize,
    /// Measured broadcasts sent after their channel's tree formed.
    pub tree_formed_broadcasts: usize,
    /// Mean RMR of every measured broadcast.
    pub rmr_mean: f64,
    /// Mean RMR of those sent after their tree formed.
    pub rmr_tree_formed_mean: f64,
    /// Highest RMR of those.
    pub rmr_tree_formed_max: f64,
    /// Mean LDH.
    pub ldh_mean: f64,
    /// Highest LDH.
    pub ldh_max: u32,
    /// Mean member delivery latency (virtual ms).
    pub latency_mean_ms: f64,
    /// Slowest member delivery (virtual ms).
    pub latency_max_ms: u64,
    /// Payload messages per broadcast, mean.
    pub payloads_per_broadcast: f64,
    /// Non-members that received a broadcast's payload, mean.
    pub relays_per_broadcast: f64,
    /// Frames carrying a broadcast's id that reached non-members: mean.
    pub non_member_frames_per_broadcast: f64,
    /// The same: highest.
    pub non_member_frames_per_broadcast_max: u64,
    /// Frames of any kind (membership or broadcast) that reached a
    /// non-member of their channel over the whole run, the overlays'
    /// building included.
    pub non_member_frames_total: u64,
    /// Broadcast-layer messages per broadcast (every broadcast-layer
    /// message of the run over every broadcast, warm-up included).
    pub broadcast_messages_per_broadcast: f64,
    /// Their bytes per broadcast.
    pub broadcast_bytes_per_broadcast: f64,
    /// Membership messages per node per virtual second, over the run.
    pub membership_messages_per_node_s: f64,
    /// Active links per live node, summed over its overlays.
    pub active_links_per_node: f64,
    /// Overlays whose live nodes form more than one component at the end.
    pub overlays_split: usize,
    /// Pairs of live nodes with an empty active view at the end.
    pub isolated_pairs: usize,
    /// Active-view links between live nodes that only one end lists, at
    /// the end, summed over the overlays.
    pub one_sided_view_links: usize,
    /// Tree links eager at one end and lazy at the other, at the end.
    pub one_way_tree_links: usize,
    /// Grafts sent.
    pub grafts: u64,
    /// Prunes sent.
    pub prunes: u64,
    /// Counters.
    pub counters: Counters,
    /// Every broadcast, warm-up included.
    pub per_message: Vec<MessageFigures>,
    /// Hash of the full event trace.
    pub trace_hash: String,
    /// Virtual time simulated (ms).
    pub virtual_ms: u64,
    /// Wall time of the run (ms).
    pub wall_ms: u64,
}

/// Runs the scenario: nodes start one by one, each joining the overlays
/// of its design; the overlays settle; `warmup_per_channel` rounds of one
/// broadcast per channel build the trees; then (with `fail`), once they
/// have drained, that share of the nodes crashes and the overlays repair
/// for `repair_ms`; then
/// `messages` measured broadcasts, one every `message_gap_ms`, and a
/// drain. Fails only on an impossible assignment.
pub fn run(config: &Config, design: Design) -> Result<Report, String> {
    let started = Instant::now();
    let assignment = Assignment::new(
        config.nodes,
        config.channels,
        config.channels_per_node,
        config.seed,
    )?;
    let mut net = Net::new(config, design, assignment);
    let mut t = 0;
    for node in 0..config.nodes as u32 {
        net.at(t, Action::Start(node));
        t += config.join_gap_ms;
    }
    t += config.settle_ms;
    let mut order = chorus_gossip::Rng::new(crate::world::mix(config.seed ^ 0x0E7A_0003));
    let channels: Vec<u32> = (0..config.channels as u32).collect();
    for _ in 0..config.warmup_per_channel {
        for channel in order.sample(&channels, channels.len()) {
            let phase = Phase::Warmup;
            net.at(
                t,
                Action::Broadcast {
                    channel: Some(channel),
                    phase,
                },
            );
            t += config.message_gap_ms;
        }
    }
    if config.fail > 0.0 {
        t += config.drain_ms;
        net.at(t, Action::Crash(config.fail));
        t += config.repair_ms;
    }
    for _ in 0..config.messages {
        let phase = Phase::Measured;
        net.at(
            t,
            Action::Broadcast {
                channel: None,
                phase,
            },
        );
        t += config.message_gap_ms;
    }
    net.run_until(t + config.drain_ms);
    let mut report = report(&net, config, design);
    report.wall_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

fn report(net: &Net, config: &Config, design: Design) -> Report {
    let a = net.assignment();
    let live_members: Vec<Vec<u32>> = (0..a.channel_count() as u32)
        .map(|c| {
            let m = a.members(c).iter().copied();
            m.filter(|&n| net.is_alive(n)).collect()
        })
        .collect();
    let per_message: Vec<MessageFigures> = (0..net.records.len())
        .map(|id| figures(net, id, &live_members))
        .collect();
    let measured: Vec<(&Record, &MessageFigures)> = net
        .records
        .iter()
        .zip(&per_message)
        .filter(|(r, _)| r.phase == Phase::Measured)
        .collect();
    let formed: Vec<&MessageFigures> = measured
        .iter()
        .filter(|(r, _)| r.tree_formed)
        .map(|(_, m)| *m)
        .collect();
    let count = measured.len().max(1) as f64;
    let sum = |f: fn(&Record) -> u64| measured.iter().map(|(r, _)| f(r)).sum::<u64>() as f64;
    let member_deliveries = sum(|r| u64::from(r.delivered)) - measured.len() as f64;
    let (links, stats) = net.links_and_stats();
    let shapes: Vec<(usize, usize)> = (0..net.overlay_count() as u32)
        .map(|o| net.overlay_shape(o))
        .collect();
    let (one_sided_views, one_way_trees) = (0..net.overlay_count() as u32)
        .map(|o| net.one_sided_links(o))
        .fold((0, 0), |acc, (v, t)| (acc.0 + v, acc.1 + t));
    let live_nodes = (0..config.nodes as u32)
        .filter(|&n| net.is_alive(n))
        .count();
    let sizes = (0..a.channel_count() as u32).map(|c| a.members(c).len());
    let all = net.records.len().max(1) as f64;
    let c = &net.counters;
    let virtual_s = (net.now() as f64 / 1000.0).max(1.0);
    Report {
        design,
        nodes: config.nodes,
        channels: config.channels,
        channels_per_node: config.channels_per_node,
        seed: config.seed,
        fail: config.fail,
        members_min: sizes.clone().min().unwrap_or(0),
        members_max: sizes.max().unwrap_or(0),
        live_nodes,
        live_members_mean: mean(live_members.iter().map(|m| m.len() as f64)),
        warmup_broadcasts: net.records.len() - measured.len(),
        broadcasts: measured.len(),
        reliability_min: min(measured.iter().map(|(_, m)| m.reliability)),
        reliability_mean: mean(measured.iter().map(|(_, m)| m.reliability)),
        broadcasts_incomplete: measured.iter().filter(|(_, m)| m.reliability < 1.0).count(),
        tree_formed_broadcasts: formed.len(),
        rmr_mean: mean(measured.iter().map(|(_, m)| m.rmr)),
        rmr_tree_formed_mean: mean(formed.iter().map(|m| m.rmr)),
        rmr_tree_formed_max: formed.iter().map(|m| m.rmr).fold(f64::NAN, f64::max),
        ldh_mean: mean(measured.iter().map(|(_, m)| f64::from(m.ldh))),
        ldh_max: measured.iter().map(|(_, m)| m.ldh).max().unwrap_or(0),
        latency_mean_ms: sum(|r| r.latency_sum) / member_deliveries.max(1.0),
        latency_max_ms: measured
            .iter()
            .map(|(r, _)| r.latency_max)
            .max()
            .unwrap_or(0),
        payloads_per_broadcast: sum(|r| r.payloads) / count,
        relays_per_broadcast: sum(|r| u64::from(r.relayed)) / count,
        non_member_frames_per_broadcast: sum(|r| r.non_member_frames) / count,
        non_member_frames_per_broadcast_max: measured
            .iter()
            .map(|(r, _)| r.non_member_frames)
            .max()
            .unwrap_or(0),
        non_member_frames_total: c.non_member_membership + c.non_member_broadcast,
        broadcast_messages_per_broadcast: c.broadcast_messages as f64 / all,
        broadcast_bytes_per_broadcast: c.broadcast_bytes as f64 / all,
        membership_messages_per_node_s: c.membership_messages as f64
            / config.nodes.max(1) as f64
            / virtual_s,
        active_links_per_node: links as f64 / live_nodes.max(1) as f64,
        overlays_split: shapes.iter().filter(|(comp, _)| *comp > 1).count(),
        isolated_pairs: shapes.iter().map(|(_, iso)| iso).sum(),
        one_sided_view_links: one_sided_views,
        one_way_tree_links: one_way_trees,
        grafts: stats.grafts_sent,
        prunes: stats.prunes_sent,
        counters: c.clone(),
        per_message,
        trace_hash: format!("{:016x}", net.trace_hash()),
        virtual_ms: net.now(),
        wall_ms: 0,
    }
}

fn figures(net: &Net, id: usize, live_members: &[Vec<u32>]) -> MessageFigures {
    let r = &net.records[id];
    let live = live_members
        .get(r.channel as usize)
        .map_or(&[][..], Vec::as_slice);
    let reached = live.iter().filter(|&&n| net.holds(n, id as u64)).count();
    let nodes_reached = r.delivered + r.relayed;
    // The paper's n: every node the broadcast reached.
    let rmr = if nodes_reached > 1 {
        r.payloads as f64 / f64::from(nodes_reached - 1) - 1.0
    } else {
        f64::NAN
    };
    MessageFigures {
        channel: r.channel,
        phase: r.phase,
        tree_formed: r.tree_formed,
        reliability: reached as f64 / live.len().max(1) as f64,
        rmr,
        ldh: r.ldh,
        non_member_frames: r.non_member_frames,
        payloads: r.payloads,
    }
}
