//! A discrete-event simulator for Chorus's gossip cores.
//!
//! It runs the real HyParView, Plumtree and Merkle exchange state machines
//! from `chorus-gossip` on thousands of simulated nodes, over a network
//! with per-link latency and loss, partitions, crashes, restarts and joins
//! under churn, all in virtual time. Beside Plumtree it runs a baseline,
//! eager flooding over the same HyParView overlay with the same fanout, so
//! every figure has a side-by-side comparison. [`channels`] runs partial
//! replication the same way: an overlay and a tree per channel among its
//! members, beside one cluster-wide tree whose non-members relay.
//!
//! Nothing here reads a clock (except [`run`] timing itself for the report)
//! or draws an unseeded random number: the same configuration and the same
//! actions give the same trace, and [`World::trace_hash`] proves it.

#![forbid(unsafe_code)]

use std::time::Instant;

use serde::Serialize;

pub mod channels;
pub mod check;
pub mod client;
pub mod cluster;
pub mod exchange;
mod layer;
mod world;

pub use layer::Protocol;
pub use world::{Action, World};

use chorus_gossip::{hyparview, plumtree};

/// A simulation run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Messages broadcast after the overlay is built.
    pub messages: usize,
    /// Share of the nodes crashed at once after the overlay is built.
    pub fail: f64,
    /// Probability that a broadcast or exchange message is lost on a link
    /// (membership messages ride reliable links).
    pub loss: f64,
    /// Seed of every random choice.
    pub seed: u64,
    /// The broadcast protocol.
    pub protocol: Protocol,
    /// Each link's latency is fixed, drawn from this range (ms).
    pub latency_ms: (u64, u64),
    /// Time between two joins while the overlay is built (ms).
    pub join_gap_ms: u64,
    /// Quiet time after the last join, before the crash and the first
    /// broadcast (ms).
    pub settle_ms: u64,
    /// Time between two broadcasts (ms).
    pub message_gap_ms: u64,
    /// Time after the last broadcast before the run is measured (ms).
    pub drain_ms: u64,
    /// Payload size, for the byte counts.
    pub payload_bytes: usize,
    /// Anti-entropy exchange interval per node (ms); `None` turns it off.
    pub anti_entropy_ms: Option<u64>,
    /// Membership settings.
    pub hyparview: hyparview::Config,
    /// Broadcast settings.
    pub plumtree: plumtree::Config,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            nodes: 1_000,
            messages: 100,
            fail: 0.0,
            loss: 0.0,
            seed: 1,
            protocol: Protocol::Plumtree,
            latency_ms: (5, 50),
            join_gap_ms: 10,
            settle_ms: 20_000,
            message_gap_ms: 1_000,
            drain_ms: 10_000,
            payload_bytes: 100,
            anti_entropy_ms: None,
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
    /// Broadcast-layer messages sent (payloads, announcements, grafts,
    /// prunes).
    pub broadcast_messages: u64,
    /// Their bytes, framing included.
    pub broadcast_bytes: u64,
    /// Membership messages sent.
    pub membership_messages: u64,
    /// Their bytes.
    pub membership_bytes: u64,
    /// Anti-entropy messages sent.
    pub ae_messages: u64,
    /// Their bytes.
    pub ae_bytes: u64,
    /// Anti-entropy exchanges started.
    pub ae_exchanges: u64,
    /// Messages a node received through anti-entropy instead of broadcast.
    pub ae_repairs: u64,
    /// Messages lost on links.
    pub lost: u64,
    /// Crashes.
    pub crashes: u64,
    /// Links made because anti-entropy brought a message broadcast had not
    /// (the overlay may have been split).
    pub overlay_links: u64,
}

/// What happened to one broadcast.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MessageRecord {
    /// The node that broadcast it.
    pub origin: u32,
    /// When (virtual ms).
    pub sent_at: u64,
    /// Nodes that delivered it, the origin included.
    pub delivered: u32,
    /// Of those, the ones reached by the broadcast layer (not by repair).
    pub tree_delivered: u32,
    /// Deliveries made by anti-entropy.
    pub repairs: u32,
    /// Payload messages sent for it.
    pub payload_messages: u64,
    /// Hops of the last delivery (LDH).
    pub ldh: u32,
    /// Sum of delivery latencies, the origin's excluded (ms).
    pub latency_sum: u64,
    /// Slowest delivery (ms).
    pub latency_max: u64,
}

/// One message's figures, for the report and the plot.
#[derive(Debug, Clone, Serialize)]
pub struct MessageFigures {
    /// Share of the live nodes that delivered it.
    pub reliability: f64,
    /// Relative message redundancy: payloads / (deliveries - 1) - 1; NaN
    /// (null) when only the origin delivered.
    pub rmr: f64,
    /// Last delivery hop.
    pub ldh: u32,
    /// Slowest delivery (ms).
    pub latency_max_ms: u64,
}

/// The figures of a run. A figure with nothing to measure (RMR of a
/// message only its origin delivered, anything "after 10" in a run of ten
/// messages or fewer) is NaN, `null` in JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The protocol.
    pub protocol: Protocol,
    /// Nodes.
    pub nodes: usize,
    /// Nodes alive at the end.
    pub live_nodes: usize,
    /// Messages broadcast.
    pub messages: usize,
    /// Seed.
    pub seed: u64,
    /// Loss per link.
    pub loss: f64,
    /// Share crashed.
    pub fail: f64,
    /// Lowest reliability of any message.
    pub reliability_min: f64,
    /// Mean reliability.
    pub reliability_mean: f64,
    /// Lowest reliability of the messages after the first ten.
    pub reliability_min_after_10: f64,
    /// Mean RMR of all messages.
    pub rmr_mean: f64,
    /// Mean RMR once the tree has formed (messages after the first ten).
    pub rmr_after_10_mean: f64,
    /// Highest RMR once the tree has formed.
    pub rmr_after_10_max: f64,
    /// Mean LDH.
    pub ldh_mean: f64,
    /// Highest LDH.
    pub ldh_max: u32,
    /// Mean delivery latency (virtual ms).
    pub latency_mean_ms: f64,
    /// Slowest delivery (virtual ms).
    pub latency_max_ms: u64,
    /// Broadcast-layer messages per broadcast.
    pub messages_per_broadcast: f64,
    /// Broadcast-layer bytes per broadcast.
    pub bytes_per_broadcast: f64,
    /// Grafts sent.
    pub grafts: u64,
    /// Prunes sent.
    pub prunes: u64,
    /// Announcements dropped from full queues.
    pub lazy_dropped: u64,
    /// Eager and lazy links at the end (summed over nodes, each link
    /// counted from both ends).
    pub eager_links: usize,
    /// See `eager_links`.
    pub lazy_links: usize,
    /// Live nodes with an empty active view at the end.
    pub isolated_nodes: usize,
    /// Connected components of the live overlay at the end.
    pub overlay_components: usize,
    /// Traffic and event counters.
    pub counters: Counters,
    /// Per message.
    pub per_message: Vec<MessageFigures>,
    /// Hash of the full event trace.
    pub trace_hash: String,
    /// Wall time of the run (ms).
    pub wall_ms: u64,
}

/// Broadcasts at and after this index count as "after the tree formed".
pub const TREE_FORMED_AFTER: usize = 10;

/// Runs the standard scenario: nodes join one by one, the overlay settles,
/// `fail` of the nodes crash at once, then `messages` broadcasts from
/// random live nodes, one every `message_gap_ms`, and a drain period.
pub fn run(config: &Config) -> Report {
    let started = Instant::now();
    let mut world = World::new(config);
    let mut t = 0;
    for node in 0..config.nodes as u32 {
        world.at(
            t,
            Action::Join {
                node,
                contact: None,
            },
        );
        t += config.join_gap_ms;
    }
    t += config.settle_ms;
    if config.fail > 0.0 {
        world.at(t, Action::CrashFraction(config.fail));
        t += 1;
    }
    for _ in 0..config.messages {
        world.at(t, Action::Broadcast { from: None });
        t += config.message_gap_ms;
    }
    world.run_until(t + config.drain_ms);
    let mut report = report(&world, config);
    report.wall_ms = started.elapsed().as_millis() as u64;
    report
}

/// The figures of a world as it stands.
pub fn report(world: &World, config: &Config) -> Report {
    let (sizes, components) = world.overlay();
    let live = sizes.len();
    let per_message: Vec<MessageFigures> = world
        .records
        .iter()
        .zip(world.live_deliveries())
        .map(|(r, live_delivered)| figures(r, live_delivered, live))
        .collect();
    let stats = world.layer_stats();
    let (eager, lazy) = world.links();
    let after: Vec<&MessageFigures> = per_message.iter().skip(TREE_FORMED_AFTER).collect();
    let deliveries: u64 = world.records.iter().map(|r| u64::from(r.delivered)).sum();
    let broadcasts = world.records.len().max(1) as f64;
    Report {
        protocol: config.protocol,
        nodes: config.nodes,
        live_nodes: live,
        messages: world.records.len(),
        seed: config.seed,
        loss: config.loss,
        fail: config.fail,
        reliability_min: min(per_message.iter().map(|m| m.reliability)),
        reliability_mean: mean(per_message.iter().map(|m| m.reliability)),
        reliability_min_after_10: min(after.iter().map(|m| m.reliability)),
        rmr_mean: mean(per_message.iter().map(|m| m.rmr)),
        rmr_after_10_mean: mean(after.iter().map(|m| m.rmr)),
        rmr_after_10_max: after.iter().map(|m| m.rmr).fold(f64::NAN, f64::max),
        ldh_mean: mean(per_message.iter().map(|m| f64::from(m.ldh))),
        ldh_max: per_message.iter().map(|m| m.ldh).max().unwrap_or(0),
        latency_mean_ms: world.records.iter().map(|r| r.latency_sum).sum::<u64>() as f64
            / deliveries.saturating_sub(world.records.len() as u64).max(1) as f64,
        latency_max_ms: world
            .records
            .iter()
            .map(|r| r.latency_max)
            .max()
            .unwrap_or(0),
        messages_per_broadcast: world.counters.broadcast_messages as f64 / broadcasts,
        bytes_per_broadcast: world.counters.broadcast_bytes as f64 / broadcasts,
        grafts: stats.grafts_sent,
        prunes: stats.prunes_sent,
        lazy_dropped: stats.lazy_dropped,
        eager_links: eager,
        lazy_links: lazy,
        isolated_nodes: sizes.iter().filter(|&&s| s == 0).count(),
        overlay_components: components,
        counters: world.counters.clone(),
        per_message,
        trace_hash: format!("{:016x}", world.trace_hash()),
        wall_ms: 0,
    }
}

fn figures(r: &MessageRecord, live_delivered: u32, live: usize) -> MessageFigures {
    // The paper's n: every node that delivered the message. Undefined (NaN,
    // null in JSON, skipped by the means) when only the origin did.
    let rmr = if r.delivered > 1 {
        r.payload_messages as f64 / f64::from(r.delivered - 1) - 1.0
    } else {
        f64::NAN
    };
    MessageFigures {
        reliability: f64::from(live_delivered) / live.max(1) as f64,
        rmr,
        ldh: r.ldh,
        latency_max_ms: r.latency_max,
    }
}

/// The mean of the values that are numbers; NaN if there are none.
pub(crate) fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values
        .filter(|v| !v.is_nan())
        .fold((0.0, 0u64), |(s, n), v| (s + v, n + 1));
    if n == 0 { f64::NAN } else { sum / n as f64 }
}

/// The smallest of the values; NaN if there are none.
pub(crate) fn min(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(f64::NAN, f64::min)
}
