//! Whole nodes under simulation: every simulated node is the daemon's own
//! [`Replica`] over a real [`Store`], written to by simulated clients
//! through the public APIs, on a simulated network, clock and disk with
//! faults; checkers look at the result.
//!
//! The world plays the daemon's driver (`chorus-node`'s `core.rs`): it
//! carries the replica's frames (FIFO per link, with a latency per link),
//! tells it when links go up and down, fires its timers, reads the
//! change feed on a tick and after every client commit, and flushes
//! merges after every event. What it models, and what it does not, is in
//! ARCHITECTURE.md ("The simulator's fault model").
//!
//! Deterministic: the same [`Config`] gives the same run, event for
//! event; [`Outcome::trace_hash`] shows it.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chorus_gossip::Rng;
use chorus_replica::{Frame, Now, Output, Replica};
use chorus_store::fault::{FaultBackend, FaultPlan, Faults as DiskFaults};
use chorus_store::mem::MemFs;
use chorus_store::oplog::Oplogs;
use chorus_store::{Backend, Clock, Metadata, Options, Store, SyncMode};

use crate::check::{self, Violation};
use crate::client::{Action, Clients, Layout};

/// Which faults a run injects.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// Network partitions into two groups, healed after a while.
    pub partitions: bool,
    /// Process crashes (losing what was not synced) and restarts.
    pub crashes: bool,
    /// Process pauses (a stopped VM, a long GC): nothing runs, frames wait.
    pub pauses: bool,
    /// Per-node clock skew and jumps of the wall clock.
    pub clocks: bool,
    /// A full disk and failing syncs, for a while, on some nodes.
    pub disk: bool,
    /// Probability a frame is lost, which resets its connection.
    pub loss: f64,
    /// Nodes joining during the run, and nodes leaving.
    pub churn: bool,
    /// A node's data directory copied to a new node (a restored backup),
    /// which takes a new identity before it starts, as a copy does.
    pub clones: bool,
}

impl Faults {
    /// The standard mix: every fault but churn, 1% loss.
    pub fn standard() -> Faults {
        Faults {
            partitions: true,
            crashes: true,
            pauses: true,
            clocks: true,
            disk: true,
            loss: 0.01,
            churn: false,
            clones: false,
        }
    }

    /// Parses a comma-separated list: `none`, `standard`, `all`, or any
    /// of `partitions`, `crashes`, `pauses`, `clocks`, `disk`, `churn`,
    /// `loss=P`.
    pub fn parse(spec: &str) -> Result<Faults, String> {
        let mut f = Faults::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "none" => {}
                "standard" => f = Faults::standard(),
                "all" => {
                    f = Faults::standard();
                    f.churn = true;
                    f.clones = true;
                }
                "partitions" => f.partitions = true,
                "crashes" => f.crashes = true,
                "pauses" => f.pauses = true,
                "clocks" => f.clocks = true,
                "disk" => f.disk = true,
                "churn" => f.churn = true,
                "clones" => f.clones = true,
                p if p.starts_with("loss=") => {
                    let v: f64 = p[5..].parse().map_err(|_| {
                        format!("--faults: `{p}`: the loss is a number from 0 to 0.5")
                    })?;
                    if !(0.0..=0.5).contains(&v) {
                        return Err(format!(
                            "--faults: `{p}`: the loss is a number from 0 to 0.5"
                        ));
                    }
                    f.loss = v;
                }
                other => {
                    return Err(format!(
                        "--faults: unknown fault `{other}`; use none, standard, all, or a list of partitions, crashes, pauses, clocks, disk, churn, clones, loss=P"
                    ));
                }
            }
        }
        Ok(f)
    }
}

/// A whole-node simulation.
#[derive(Debug, Clone)]
pub struct Config {
    /// Nodes at the start.
    pub nodes: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Faults injected during the workload.
    pub faults: Faults,
    /// How long clients write, with faults (virtual ms).
    pub run_ms: u64,
    /// After the heal, how long the replicas may take to converge
    /// (virtual ms); a run that has not converged by then is a violation.
    pub converge_ms: u64,
    /// Client operations per node per virtual second.
    pub ops_per_sec: f64,
    /// Plain keys per full prefix clients write (two full prefixes; few,
    /// so that writes collide).
    pub keys: usize,
    /// Anti-entropy interval (virtual ms).
    pub exchange_ms: u64,
    /// Tombstone grace (virtual ms).
    pub grace_ms: u64,
    /// Latency of a link, drawn per link from this range (virtual ms).
    pub latency_ms: (u64, u64),
    /// Channels: full prefixes of the clients' plain keys served by some
    /// nodes only (none: every node serves everything). The table is
    /// written once every node has started, before clients write.
    pub channels: Vec<SimChannel>,
    /// When the channel table is written, after clients start writing
    /// (virtual ms; 0: a second before they start). Later, every node
    /// holds the channels' data first, and those that do not serve them
    /// hand it off and drop it.
    pub channels_after_ms: u64,
    /// A bug injected on purpose (feature `mutations`).
    #[cfg(feature = "mutations")]
    pub mutation: chorus_replica::Mutation,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            nodes: 5,
            seed: 1,
            faults: Faults::standard(),
            run_ms: 30_000,
            converge_ms: 60_000,
            ops_per_sec: 2.0,
            keys: 10,
            exchange_ms: 1_000,
            grace_ms: 5_000,
            latency_ms: (1, 20),
            channels: Vec::new(),
            channels_after_ms: 0,
            #[cfg(feature = "mutations")]
            mutation: chorus_replica::Mutation::None,
        }
    }
}

/// A channel of a simulation: one full prefix of the clients' plain keys
/// and the nodes serving it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimChannel {
    /// Its name.
    pub name: String,
    /// Which of the layout's plain-key full prefixes it holds (0: `sim/a`,
    /// 1: `sim/b`).
    pub kv: usize,
    /// The nodes serving it (numbers of nodes started at the beginning).
    pub nodes: Vec<u32>,
}

/// What a run did and found.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// A hash of every event in order: equal for equal runs.
    pub trace_hash: u64,
    /// Events processed.
    pub events: u64,
    /// Virtual time at the end (ms).
    pub sim_ms: u64,
    /// Virtual ms from the heal until every live replica held the same
    /// objects, if it happened within `converge_ms`.
    pub converged_after_ms: Option<u64>,
    /// What the checkers found, sorted; empty is a pass.
    pub violations: Vec<Violation>,
    /// For each violation, the events that show it (client operations on
    /// its key and the faults in between), as text.
    pub windows: Vec<Vec<String>>,
    /// Client operations acknowledged, and attempted but failed.
    pub acknowledged: u64,
    /// Client operations that failed (a full disk, a failed sync).
    pub failed: u64,
    /// Frames sent, and their bytes (postcard, as on the wire less the
    /// 4-byte length).
    pub frames: u64,
    /// Bytes of all frames.
    pub bytes: u64,
    /// Bytes of anti-entropy frames.
    pub ae_bytes: u64,
    /// Keys repaired by anti-entropy, over all nodes.
    pub keys_repaired: u64,
    /// Tombstones collected, over all nodes.
    pub tombstones_collected: u64,
    /// Tombstones still held at the end, over all nodes.
    pub tombstones_held: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
}

/// One node of the world.
struct SimNode {
    addr: String,
    dir: PathBuf,
    /// Its disk: in memory, losing what was not synced at a crash.
    fs: MemFs,
    disk: DiskFaults,
    /// Its wall clock (Unix ms), as its store reads it: set before every
    /// call into the node.
    wall: Arc<AtomicU64>,
    live: Option<Box<Live>>,
    /// Bumped at every restart: frames and timers for an older one are
    /// dropped.
    inc: u32,
    /// Left the cluster for good.
    gone: bool,
    /// Added to the virtual time to make this node's wall clock.
    wall_offset: i64,
    /// Events for the node wait until then.
    paused_until: u64,
    /// The timer event scheduled for it (virtual ms), if any.
    timer_at: Option<u64>,
    /// Made by copying another node's directory: its node id is there.
    cloned: bool,
    /// Its node id, once it has started.
    id: Option<chorus_core::NodeId>,
}

struct Live {
    replica: Replica,
    meta: Metadata,
}

#[derive(Debug, Clone)]
enum Ev {
    /// Start (or restart) a node.
    Start(u32),
    Frame {
        from: u32,
        to: u32,
        inc: u32,
        frame: Box<Frame>,
    },
    /// A connection between two nodes is up (told to `node`).
    Up {
        node: u32,
        inc: u32,
        peer: u32,
    },
    /// A connection broke, or a dial failed (told to `node`).
    Down {
        node: u32,
        inc: u32,
        peer: u32,
    },
    Timer {
        node: u32,
        inc: u32,
    },
    FeedTick {
        node: u32,
        inc: u32,
    },
    /// A client operation on a random running node (and the next one).
    Client,
    Partition(Vec<u32>),
    Heal,
    Crash(u32),
    Pause {
        node: u32,
        until: u64,
    },
    ClockJump {
        node: u32,
        by: i64,
    },
    Disk {
        node: u32,
        plan: Option<DiskPlan>,
    },
    Leave(u32),
    /// A node's directory copied to a new node, which starts.
    Clone(u32),
    /// The channel table is written (on the first running node).
    Channels,
    /// The end of the workload: every fault healed.
    End,
}

#[derive(Debug, Clone, Copy)]
enum DiskPlan {
    Full,
    FailSync,
}

struct Scheduled {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    /// Reversed: the heap pops the earliest first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// The checker that the replicas' queues and sets stay within bounds.
pub const BOUNDS: &str = "bounds";
/// Most events kept for violation windows (the oldest go first).
const NOTES_MAX: usize = 100_000;
/// How often the feed is read without a commit notification (virtual ms).
const FEED_TICK_MS: u64 = 50;
/// How long a broken connection takes to be noticed (virtual ms).
const DETECT_MS: u64 = 100;
/// The virtual epoch's wall clock: 2026-01-01.
const EPOCH_MS: u64 = 1_767_225_600_000;
/// How long after its record says it left a node stops (as the daemon).
const LEAVE_AFTER_MS: u64 = 1_000;

/// The world.
pub struct World {
    config: Config,
    nodes: Vec<SimNode>,
    by_addr: BTreeMap<String, u32>,
    queue: BinaryHeap<Scheduled>,
    seq: u64,
    now: u64,
    rng: Rng,
    /// Connections that are up, as (smaller, larger) node pairs.
    links: BTreeSet<(u32, u32)>,
    /// The partition: each node's group (all 0 when healed).
    group: Vec<u32>,
    clients: Clients,
    notes: std::collections::VecDeque<(u64, String)>,
    outcome: Outcome,
    hash: u64,
    /// The workload is over (after the heal, only replication runs).
    clients_done: bool,
}

/// A uniform draw in [0, 1).
fn unit(rng: &mut Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Runs one simulation.
pub fn run(config: &Config) -> Result<Outcome, String> {
    let mut world = World::new(config)?;
    world.run();
    Ok(world.finish())
}

impl World {
    /// A world of `config.nodes` nodes, none started yet.
    pub fn new(config: &Config) -> Result<World, String> {
        if config.nodes == 0 {
            return Err("a simulation needs at least one node".into());
        }
        let mut world = World {
            config: config.clone(),
            nodes: Vec::new(),
            by_addr: BTreeMap::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            now: 0,
            rng: Rng::new(config.seed),
            links: BTreeSet::new(),
            group: Vec::new(),
            clients: Clients::new(Layout {
                keys_per_prefix: config.keys,
                ..Layout::default()
            })?,
            notes: std::collections::VecDeque::new(),
            outcome: Outcome::default(),
            hash: 0xC0FF_EE00_D15E_A5E5,
            clients_done: false,
        };
        for i in 0..config.nodes {
            let node = world.add_node();
            world.schedule(i as u64 * 10, Ev::Start(node));
        }
        Ok(world)
    }

    fn add_node(&mut self) -> u32 {
        let i = self.nodes.len() as u32;
        let addr = format!("10.{}.{}.{}:7946", i >> 16, (i >> 8) & 255, i & 255);
        let skew = if self.config.faults.clocks {
            // Up to 30 s either way.
            (self.rng.below(60_001) as i64) - 30_000
        } else {
            0
        };
        self.nodes.push(SimNode {
            addr: addr.clone(),
            dir: PathBuf::from(format!("/chorus-sim/n{i}")),
            fs: MemFs::new(),
            disk: DiskFaults::default(),
            wall: Arc::new(AtomicU64::new(EPOCH_MS)),
            live: None,
            inc: 0,
            gone: false,
            wall_offset: skew,
            paused_until: 0,
            timer_at: None,
            cloned: false,
            id: None,
        });
        self.group.push(0);
        self.by_addr.insert(addr, i);
        i
    }

    fn schedule(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at,
            seq: self.seq,
            ev,
        });
    }

    fn note(&mut self, text: String) {
        if self.notes.len() >= NOTES_MAX {
            self.notes.pop_front();
        }
        self.notes.push_back((self.now, text));
    }

    fn trace(&mut self, kind: u64, a: u64, b: u64) {
        self.hash = mix(self.hash ^ mix(self.now ^ (kind << 56) ^ mix(a ^ (b << 32))));
    }

    fn now_of(&self, node: u32) -> Now {
        let offset = self.nodes[node as usize].wall_offset;
        let now = Now {
            ms: self.now,
            wall_ms: EPOCH_MS
                .saturating_add_signed(offset)
                .saturating_add(self.now),
        };
        self.nodes[node as usize]
            .wall
            .store(now.wall_ms, Ordering::Relaxed);
        now
    }

    /// The fault schedule and the workload.
    fn plan(&mut self) {
        let start = self.config.nodes as u64 * 10 + 2_000;
        let end = start + self.config.run_ms;
        let n = self.config.nodes as u32;
        self.schedule(start, Ev::Client);
        if !self.config.channels.is_empty() {
            let at = match self.config.channels_after_ms {
                0 => start - 1_000,
                after => start + after,
            };
            self.schedule(at, Ev::Channels);
        }
        let f = self.config.faults;
        let window = self.config.run_ms.max(1);
        let draws = |rng: &mut Rng, count: u64| -> Vec<u64> {
            (0..count)
                .map(|_| start + (rng.next_u64() % window))
                .collect()
        };
        let per = (self.config.run_ms / 10_000).max(1);
        if f.partitions {
            for at in draws(&mut self.rng, per) {
                let side: Vec<u32> = (0..n).filter(|_| self.rng.below(2) == 0).collect();
                let heal = at + 2_000 + self.rng.next_u64() % 8_000;
                self.schedule(at, Ev::Partition(side));
                self.schedule(heal.min(end), Ev::Heal);
            }
        }
        if f.crashes {
            for at in draws(&mut self.rng, per * 2) {
                let node = self.rng.below(n as usize) as u32;
                let back = at + 1_000 + self.rng.next_u64() % 9_000;
                self.schedule(at, Ev::Crash(node));
                self.schedule(back.min(end), Ev::Start(node));
            }
        }
        if f.pauses {
            for at in draws(&mut self.rng, per * 2) {
                let node = self.rng.below(n as usize) as u32;
                let until = at + 500 + self.rng.next_u64() % 4_500;
                self.schedule(at, Ev::Pause { node, until });
            }
        }
        if f.clocks {
            for at in draws(&mut self.rng, per) {
                let node = self.rng.below(n as usize) as u32;
                let by = (self.rng.below(120_001) as i64) - 60_000;
                self.schedule(at, Ev::ClockJump { node, by });
            }
        }
        if f.disk {
            for at in draws(&mut self.rng, per * 2) {
                let node = self.rng.below(n as usize) as u32;
                let plan = if self.rng.below(2) == 0 {
                    DiskPlan::Full
                } else {
                    DiskPlan::FailSync
                };
                let off = at + 1_000 + self.rng.next_u64() % 4_000;
                self.schedule(
                    at,
                    Ev::Disk {
                        node,
                        plan: Some(plan),
                    },
                );
                self.schedule(off.min(end), Ev::Disk { node, plan: None });
            }
        }
        if f.churn {
            for at in draws(&mut self.rng, per) {
                // A node joins: started now, through a random member.
                let node = self.add_node();
                self.schedule(at, Ev::Start(node));
            }
            for at in draws(&mut self.rng, per) {
                let node = self.rng.below(n as usize) as u32;
                self.schedule(at, Ev::Leave(node));
            }
        }
        if f.clones {
            for at in draws(&mut self.rng, per) {
                let node = self.rng.below(n as usize) as u32;
                self.schedule(at, Ev::Clone(node));
            }
        }
        self.schedule(end, Ev::End);
    }

    /// Runs the workload with its faults, heals, waits for convergence
    /// and checks.
    pub fn run(&mut self) {
        self.plan();
        let mut healed_at = None;
        while let Some(s) = self.queue.pop() {
            self.now = s.at;
            if matches!(s.ev, Ev::End) {
                self.end();
                healed_at = Some(self.now);
                break;
            }
            self.dispatch(s.ev);
        }
        let Some(healed) = healed_at else {
            return;
        };
        // Converge: run on, comparing the replicas every 250 ms.
        let deadline = healed + self.config.converge_ms;
        let mut next_check = healed;
        while let Some(s) = self.queue.pop() {
            if s.at > deadline {
                break;
            }
            self.now = s.at;
            self.dispatch(s.ev);
            if self.now >= next_check {
                next_check = self.now + 250;
                if self.converged() {
                    self.outcome.converged_after_ms = Some(self.now - healed);
                    break;
                }
            }
        }
    }

    /// Every live replica holds the same objects of every scope it
    /// serves (the cluster scope and its channels), and none still holds
    /// the data of a channel it does not serve.
    fn converged(&mut self) -> bool {
        let mut roots: BTreeMap<String, chorus_gossip::merkle::Summary> = BTreeMap::new();
        for i in 0..self.nodes.len() {
            let now = self.now_of(i as u32);
            let Some(live) = self.nodes[i]
                .live
                .as_mut()
                .filter(|l| l.replica.left_at().is_none())
            else {
                continue;
            };
            while let Ok(true) = live.replica.read_feed(now) {}
            if live
                .replica
                .channel_status()
                .iter()
                .any(|c| c.state == "leaving")
            {
                return false;
            }
            for (scope, r) in live.replica.tree_roots() {
                match roots.get(&scope) {
                    None => {
                        roots.insert(scope, r);
                    }
                    Some(x) if *x != r => return false,
                    Some(_) => {}
                }
            }
        }
        true
    }

    fn end(&mut self) {
        self.note(
            "end of the workload: partitions healed, nodes restarted and resumed, disks fixed"
                .into(),
        );
        self.clients_done = true;
        self.group.iter_mut().for_each(|g| *g = 0);
        for i in 0..self.nodes.len() {
            let n = &mut self.nodes[i];
            n.disk.clear();
            n.paused_until = 0;
            if n.live.is_none() && !n.gone {
                self.start(i as u32);
            }
        }
    }

    fn dispatch(&mut self, ev: Ev) {
        self.outcome.events += 1;
        // A paused node's events wait for it, in order.
        if let Some(node) = ev_node(&ev) {
            let until = self.nodes[node as usize].paused_until;
            if until > self.now {
                self.schedule(until, ev);
                return;
            }
        }
        match ev {
            Ev::Start(node) => self.start(node),
            Ev::Frame {
                from,
                to,
                inc,
                frame,
            } => {
                self.trace(1, u64::from(from), u64::from(to));
                if !self.is_current(to, inc) {
                    return;
                }
                if !self.reachable(from, to) {
                    return;
                }
                let node_id = match &self.nodes[from as usize].live {
                    Some(l) => *l.replica.node_id().as_bytes(),
                    None => [0; 16],
                };
                let peer = self.nodes[from as usize].addr.clone();
                let now = self.now_of(to);
                if let Some(l) = self.nodes[to as usize].live.as_mut() {
                    l.replica.handle_frame(peer, node_id, *frame, now);
                }
                self.after(to);
            }
            Ev::Up { node, inc, peer } => {
                self.trace(2, u64::from(node), u64::from(peer));
                if !self.is_current(node, inc) {
                    return;
                }
                let addr = self.nodes[peer as usize].addr.clone();
                let now = self.now_of(node);
                if let Some(l) = self.nodes[node as usize].live.as_mut() {
                    l.replica.handle_peer_up(addr, now);
                }
                self.after(node);
            }
            Ev::Down { node, inc, peer } => {
                self.trace(3, u64::from(node), u64::from(peer));
                if !self.is_current(node, inc) {
                    return;
                }
                let addr = self.nodes[peer as usize].addr.clone();
                let now = self.now_of(node);
                if let Some(l) = self.nodes[node as usize].live.as_mut() {
                    l.replica.handle_peer_down(&addr, now);
                }
                self.after(node);
            }
            Ev::Timer { node, inc } => {
                self.trace(4, u64::from(node), 0);
                if !self.is_current(node, inc) {
                    return;
                }
                self.nodes[node as usize].timer_at = None;
                let now = self.now_of(node);
                if let Some(l) = self.nodes[node as usize].live.as_mut() {
                    l.replica.handle_timeout(now);
                }
                self.after(node);
            }
            Ev::FeedTick { node, inc } => {
                if !self.is_current(node, inc) {
                    return;
                }
                self.read_feed(node);
                self.after(node);
                let left = self.nodes[node as usize]
                    .live
                    .as_ref()
                    .and_then(|l| l.replica.left_at().filter(|_| l.replica.may_stop()));
                if left.is_some_and(|t| self.now.saturating_sub(t) > LEAVE_AFTER_MS) {
                    self.note(format!("n{node} left the cluster and stopped"));
                    self.stop(node, true);
                    return;
                }
                self.schedule(self.now + FEED_TICK_MS, Ev::FeedTick { node, inc });
            }
            Ev::Client => self.client(),
            Ev::Channels => self.write_channels(),
            Ev::Partition(side) => {
                self.trace(6, side.len() as u64, 0);
                *self.outcome.faults.entry("partitions").or_default() += 1;
                self.note(format!("partition: {side:?} apart from the others"));
                self.group.iter_mut().for_each(|g| *g = 0);
                for n in side {
                    if let Some(g) = self.group.get_mut(n as usize) {
                        *g = 1;
                    }
                }
                self.break_links(|w, a, b| !w.reachable(a, b));
            }
            Ev::Heal => {
                self.trace(7, 0, 0);
                self.note("partition healed".into());
                self.group.iter_mut().for_each(|g| *g = 0);
            }
            Ev::Crash(node) => {
                self.trace(8, u64::from(node), 0);
                // Not a node that left: it refuses to restart (its data may
                // hold deletes the cluster forgot), so a crash before its
                // hand-off ends loses what only it held, a known limit
                // (docs/tombstones.md) the checkers would report.
                if self.nodes[node as usize]
                    .live
                    .as_ref()
                    .is_none_or(|l| l.replica.left_at().is_some())
                {
                    return;
                }
                *self.outcome.faults.entry("crashes").or_default() += 1;
                self.note(format!("n{node} crashed"));
                self.stop(node, false);
            }
            Ev::Pause { node, until } => {
                self.trace(9, u64::from(node), until);
                *self.outcome.faults.entry("pauses").or_default() += 1;
                self.note(format!("n{node} paused until {until} ms"));
                self.nodes[node as usize].paused_until = until;
            }
            Ev::ClockJump { node, by } => {
                self.trace(10, u64::from(node), by as u64);
                *self.outcome.faults.entry("clock jumps").or_default() += 1;
                self.note(format!("n{node}'s wall clock jumped by {by} ms"));
                self.nodes[node as usize].wall_offset += by;
            }
            Ev::Disk { node, plan } => {
                self.trace(11, u64::from(node), plan.is_some() as u64);
                let disk = &self.nodes[node as usize].disk;
                match plan {
                    None => disk.clear(),
                    Some(DiskPlan::Full) => disk.set(FaultPlan {
                        space_left: Some(0),
                        ..FaultPlan::default()
                    }),
                    Some(DiskPlan::FailSync) => disk.set(FaultPlan {
                        fail_sync: true,
                        ..FaultPlan::default()
                    }),
                }
                if plan.is_some() {
                    *self.outcome.faults.entry("disk faults").or_default() += 1;
                }
                self.note(format!("n{node}'s disk: {plan:?}"));
            }
            Ev::Leave(node) => {
                self.trace(12, u64::from(node), 0);
                let Some(l) = self.nodes[node as usize].live.as_ref() else {
                    return;
                };
                let id = l.replica.node_id();
                match chorus_replica::members::leave(&l.meta, id) {
                    Ok(_) => {
                        *self.outcome.faults.entry("leaves").or_default() += 1;
                        self.note(format!("n{node} leaves the cluster"));
                        self.read_feed(node);
                        self.after(node);
                    }
                    Err(e) => self.note(format!("n{node} could not leave: {e}")),
                }
            }
            Ev::Clone(node) => {
                self.trace(15, u64::from(node), 0);
                self.clone_node(node);
            }
            Ev::End => {}
        }
    }

    fn is_current(&self, node: u32, inc: u32) -> bool {
        let n = &self.nodes[node as usize];
        n.live.is_some() && n.inc == inc
    }

    fn reachable(&self, a: u32, b: u32) -> bool {
        self.group.get(a as usize) == self.group.get(b as usize)
    }

    fn latency(&self, a: u32, b: u32) -> u64 {
        let (lo, hi) = self.config.latency_ms;
        let (x, y) = (a.min(b), a.max(b));
        lo + mix(self.config.seed ^ (u64::from(x) << 32 | u64::from(y))) % (hi - lo + 1).max(1)
    }

    /// Breaks every link for which `broken(world, a, b)`, telling both
    /// live ends.
    fn break_links(&mut self, broken: impl Fn(&World, u32, u32) -> bool) {
        let gone: Vec<(u32, u32)> = self
            .links
            .iter()
            .copied()
            .filter(|&(a, b)| broken(self, a, b))
            .collect();
        for (a, b) in gone {
            self.links.remove(&(a, b));
            for (node, peer) in [(a, b), (b, a)] {
                if self.nodes[node as usize].live.is_some() {
                    let inc = self.nodes[node as usize].inc;
                    self.schedule(self.now + DETECT_MS, Ev::Down { node, inc, peer });
                }
            }
        }
    }

    fn start(&mut self, node: u32) {
        let i = node as usize;
        if self.nodes[i].live.is_some() || self.nodes[i].gone {
            return;
        }
        self.trace(13, u64::from(node), 0);
        let (backend, disk) = FaultBackend::over(Arc::new(self.nodes[i].fs.clone()));
        self.nodes[i].disk = disk;
        if self.nodes[i].inc == 0 && !self.nodes[i].cloned {
            // A node id drawn from the seed, so runs repeat exactly.
            let id = chorus_core::NodeId::from_bytes(
                (u128::from(mix(self.config.seed ^ 0x1D)) << 64 | u128::from(mix(u64::from(node))))
                    .to_le_bytes(),
            );
            if let Err(e) = write_node_id(&backend, &self.nodes[i].dir, id) {
                self.note(format!("n{node} cannot be created: {e}"));
                return;
            }
        }
        let options = Options {
            create: true,
            sync: SyncMode::Batch,
            lock_timeout: Duration::from_secs(1),
            backend: Arc::new(backend),
            clock: {
                let wall = self.nodes[i].wall.clone();
                Clock::new(move || wall.load(Ordering::Relaxed))
            },
            ..Options::default()
        };
        let store = match Store::open(&self.nodes[i].dir, options) {
            Ok(s) => s,
            Err(e) => {
                self.note(format!("n{node} cannot start: {e}; retried in 1 s"));
                self.schedule(self.now + 1_000, Ev::Start(node));
                return;
            }
        };
        let meta = Metadata::new(store);
        let oplogs = Oplogs::new(&meta);
        // Seeds, as an operator would give them: two members that are
        // running and have not left (the first node while it is one).
        let members: Vec<u32> = (0..self.nodes.len() as u32)
            .filter(|&m| {
                m != node
                    && self.nodes[m as usize]
                        .live
                        .as_ref()
                        .is_some_and(|l| l.replica.left_at().is_none())
            })
            .collect();
        let mut join = Vec::new();
        if let Some(first) = members.first() {
            join.push(self.nodes[*first as usize].addr.clone());
        }
        if let Some(other) = self.rng.pick(&members) {
            join.push(self.nodes[*other as usize].addr.clone());
        }
        let config = chorus_replica::Config {
            me: self.nodes[i].addr.clone(),
            join,
            exchange_interval: Duration::from_millis(self.config.exchange_ms),
            tombstone_grace: Duration::from_millis(self.config.grace_ms),
            seed: mix(self.config.seed ^ u64::from(node) ^ (u64::from(self.nodes[i].inc) << 40)),
            max_clock_skew: Duration::from_secs(300),
            http: None,
            channel_min_members: 2,
            #[cfg(feature = "mutations")]
            mutation: self.config.mutation,
        };
        let now = self.now_of(node);
        let replica = match Replica::open(meta.clone(), oplogs, config, now) {
            Ok(r) => r,
            Err(e) => {
                self.note(format!(
                    "n{node} cannot start its replica: {e}; retried in 1 s"
                ));
                self.schedule(self.now + 1_000, Ev::Start(node));
                return;
            }
        };
        let n = &mut self.nodes[i];
        n.inc += 1;
        n.timer_at = None;
        n.id = Some(meta.store().node_id());
        n.live = Some(Box::new(Live { replica, meta }));
        let inc = n.inc;
        if inc > 1 {
            self.note(format!("n{node} restarted"));
        }
        if let Some(l) = self.nodes[i].live.as_mut() {
            l.replica.start(now);
        }
        self.schedule(self.now + FEED_TICK_MS, Ev::FeedTick { node, inc });
        self.read_feed(node);
        self.after(node);
    }

    /// Copies a running node's directory (as a backup taken now and
    /// restored elsewhere) to a new node, which takes a new identity
    /// before it starts, as a copy does when it is opened in a new place.
    fn clone_node(&mut self, from: u32) {
        if self.nodes[from as usize]
            .live
            .as_ref()
            .is_none_or(|l| l.replica.left_at().is_some())
        {
            return;
        }
        let fs = self.nodes[from as usize].fs.copy();
        let dir = self.nodes[from as usize].dir.clone();
        let node = self.add_node();
        let id = chorus_core::NodeId::from_bytes(
            (u128::from(mix(self.config.seed ^ 0xC10E)) << 64 | u128::from(mix(u64::from(node))))
                .to_le_bytes(),
        );
        let options = Options {
            backend: Arc::new(fs.clone()),
            clock: {
                let wall = self.nodes[node as usize].wall.clone();
                Clock::new(move || wall.load(Ordering::Relaxed))
            },
            ..Options::default()
        };
        self.now_of(node);
        match Store::new_identity_as(&dir, &options, id, false) {
            Ok((old, new)) => {
                let n = &mut self.nodes[node as usize];
                n.fs = fs;
                n.dir = dir;
                n.cloned = true;
                *self.outcome.faults.entry("clones").or_default() += 1;
                self.note(format!(
                    "n{node} is a copy of n{from}'s directory; it took node id {new} (was {old})"
                ));
                self.start(node);
            }
            Err(e) => {
                self.nodes[node as usize].gone = true;
                self.note(format!(
                    "n{node}, a copy of n{from}, cannot take a new identity: {e}"
                ));
            }
        }
    }

    /// Stops a node: a crash (what was not synced may be lost) or, with
    /// `gone`, for good after leaving.
    fn stop(&mut self, node: u32, gone: bool) {
        let i = node as usize;
        self.nodes[i].live = None;
        self.nodes[i].timer_at = None;
        if !gone {
            // What was not synced is lost; with crashes on, some of it
            // survives, possibly torn.
            let torn = self.config.faults.crashes.then(|| self.rng.next_u64());
            self.nodes[i].fs.crash(torn);
        }
        self.nodes[i].gone |= gone;
        self.break_links(|_, a, b| a == node || b == node);
    }

    fn read_feed(&mut self, node: u32) {
        let now = self.now_of(node);
        let Some(l) = self.nodes[node as usize].live.as_mut() else {
            return;
        };
        for _ in 0..64 {
            match l.replica.read_feed(now) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    let text = format!("n{node} cannot read its feed: {e}");
                    self.note(text);
                    break;
                }
            }
        }
    }

    /// After an input: merge, carry out the outputs, re-arm the timer.
    fn after(&mut self, node: u32) {
        let now = self.now_of(node);
        let i = node as usize;
        let mut outputs = Vec::new();
        let Some(l) = self.nodes[i].live.as_mut() else {
            return;
        };
        l.replica.flush(now);
        while let Some(out) = l.replica.poll_output() {
            outputs.push(out);
        }
        let timeout = l.replica.poll_timeout();
        for out in outputs {
            match out {
                Output::Send { to, frame } => self.send(node, &to, frame),
                Output::ReservedChanged(_) => {}
                Output::Refused { reason, what } => {
                    self.note(format!("n{node} refused an object ({reason}): {what}"));
                }
            }
        }
        if let Some(at) = timeout {
            let n = &mut self.nodes[i];
            if n.timer_at.is_none_or(|t| at < t) {
                n.timer_at = Some(at);
                let inc = n.inc;
                self.schedule(at.max(self.now), Ev::Timer { node, inc });
            }
        }
    }

    fn send(&mut self, from: u32, to: &str, frame: Frame) {
        let Some(&to) = self.by_addr.get(to) else {
            // An address no node has: the dial fails, and the driver says
            // so (what that answers goes out at the node's next event).
            let now = self.now_of(from);
            if let Some(l) = self.nodes[from as usize].live.as_mut() {
                l.replica.handle_peer_down(&to.to_string(), now);
            }
            return;
        };
        let inc_from = self.nodes[from as usize].inc;
        let lat = self.latency(from, to);
        let alive = self.nodes[to as usize].live.is_some() && self.reachable(from, to);
        let lost = self.config.faults.loss > 0.0 && unit(&mut self.rng) < self.config.faults.loss;
        let pair = (from.min(to), from.max(to));
        if !alive || lost {
            // The dial fails (or the connection resets): the sender learns
            // it; a link that was up breaks on both sides.
            if self.links.remove(&pair) && self.nodes[to as usize].live.is_some() {
                let inc = self.nodes[to as usize].inc;
                self.schedule(
                    self.now + DETECT_MS,
                    Ev::Down {
                        node: to,
                        inc,
                        peer: from,
                    },
                );
            }
            self.schedule(
                self.now + lat.max(DETECT_MS),
                Ev::Down {
                    node: from,
                    inc: inc_from,
                    peer: to,
                },
            );
            return;
        }
        let bytes = postcard::to_allocvec(&frame).map_or(0, |b| b.len() as u64);
        self.trace(14, bytes, u64::from(from) << 32 | u64::from(to));
        self.outcome.frames += 1;
        self.outcome.bytes += bytes;
        if matches!(frame, Frame::Exchange { .. }) {
            self.outcome.ae_bytes += bytes;
        }
        let inc_to = self.nodes[to as usize].inc;
        if self.links.insert(pair) {
            self.schedule(
                self.now + lat,
                Ev::Up {
                    node: to,
                    inc: inc_to,
                    peer: from,
                },
            );
            self.schedule(
                self.now + lat,
                Ev::Up {
                    node: from,
                    inc: inc_from,
                    peer: to,
                },
            );
        }
        self.schedule(
            self.now + lat,
            Ev::Frame {
                from,
                to,
                inc: inc_to,
                frame: Box::new(frame),
            },
        );
    }

    /// One client operation on a random live node, then the next.
    fn client(&mut self) {
        if self.clients_done {
            return;
        }
        // Clients write to running nodes, not to one being decommissioned.
        let live: Vec<u32> = (0..self.nodes.len() as u32)
            .filter(|&n| {
                self.nodes[n as usize]
                    .live
                    .as_ref()
                    .is_some_and(|l| l.replica.left_at().is_none())
            })
            .collect();
        let rate = self.config.ops_per_sec * live.len().max(1) as f64;
        let gap = (1_000.0 / rate.max(0.001)) as u64;
        self.schedule(self.now + gap.max(1), Ev::Client);
        let Some(&node) = self.rng.pick(&live) else {
            return;
        };
        let action = Action::random(&mut self.rng, self.clients.history().layout());
        // A plain key of a channel is written where it is served (a node
        // that does not serve it refuses).
        let node = match action.kv_key().and_then(|k| self.channel_of_key(k)) {
            Some(c) => {
                let serving: Vec<u32> = live
                    .iter()
                    .copied()
                    .filter(|n| c.nodes.contains(n))
                    .collect();
                match self.rng.pick(&serving) {
                    Some(&n) => n,
                    None => return,
                }
            }
            None => node,
        };
        if self.nodes[node as usize].paused_until > self.now {
            return;
        }
        self.trace(5, u64::from(node), 0);
        let now_ms = self.now;
        self.now_of(node);
        let Some(l) = self.nodes[node as usize].live.as_ref() else {
            return;
        };
        let step = self.clients.apply(node, &l.meta, action, now_ms);
        let text = self
            .clients
            .history()
            .event(step.event)
            .map_or_else(String::new, |e| {
                format!("event {}: {}", step.event, e.describe())
            });
        self.note(text);
        self.read_feed(node);
        self.after(node);
    }

    /// The channel holding plain key number `key`, if any.
    fn channel_of_key(&self, key: usize) -> Option<&SimChannel> {
        let keys = self.config.keys.max(1);
        let kv = (key % (keys * 2)) / keys;
        self.config.channels.iter().find(|c| c.kv == kv)
    }

    /// Writes the channel table on the first running node: the nodes
    /// named by their ids, each channel's full prefix as its pattern.
    fn write_channels(&mut self) {
        let layout = self.clients.history().layout().clone();
        let Some(writer) = self.nodes.iter().position(|n| n.live.is_some()) else {
            self.note("no node runs: the channel table is not written".into());
            return;
        };
        let ids = |nodes: &[SimNode], c: &SimChannel| -> Vec<String> {
            c.nodes
                .iter()
                .filter_map(|&n| nodes.get(n as usize)?.id)
                .map(|id| id.to_string())
                .collect()
        };
        let mut records = Vec::new();
        for c in &self.config.channels {
            let Some(fp) = layout.kv.get(c.kv) else {
                continue;
            };
            let record =
                serde_json::json!({"patterns": [fp.to_string()], "nodes": ids(&self.nodes, c)});
            records.push((c.name.clone(), record.to_string()));
        }
        self.now_of(writer as u32);
        let Some(meta) = self.nodes[writer].live.as_ref().map(|l| l.meta.clone()) else {
            return;
        };
        let fp = match chorus_store::channels::full_prefix() {
            Ok(fp) => fp,
            Err(e) => {
                self.note(format!("the channel table's prefix: {e}"));
                return;
            }
        };
        let mut failed = false;
        for (name, record) in records {
            let put = meta.put_reserved(
                &fp,
                name.as_bytes(),
                chorus_store::PutValue::Bytes(record.clone().into_bytes()),
                &chorus_store::PutOptions::default(),
            );
            let text = match put {
                Ok(_) => format!("n{writer} wrote the channel {name}: {record}"),
                Err(e) => {
                    failed = true;
                    format!("n{writer} could not write the channel {name}: {e}; again in 1 s")
                }
            };
            self.note(text);
        }
        if failed {
            // As an operator would: the same table again (rewriting a
            // record that was written is harmless).
            self.schedule(self.now + 1_000, Ev::Channels);
        }
        self.read_feed(writer as u32);
        self.after(writer as u32);
    }

    /// Checks, and the figures.
    fn finish(mut self) -> Outcome {
        self.outcome.sim_ms = self.now;
        self.outcome.trace_hash = self.hash;
        let mut replicas = Vec::new();
        // Each replica's node number.
        let mut numbers: Vec<u32> = Vec::new();
        for (i, n) in self.nodes.iter_mut().enumerate() {
            // A node that left (and still hands off) is out of the cluster:
            // nothing says it holds everything.
            let Some(l) = n.live.as_ref().filter(|l| l.replica.left_at().is_none()) else {
                continue;
            };
            let s = l.replica.stats();
            self.outcome.keys_repaired += s.repaired;
            self.outcome.tombstones_collected += s.tombstones_collected;
            self.outcome.tombstones_held += l.replica.tombstones_held() as u64;
            for (name, size, bound) in l.replica.bounds() {
                if size > bound {
                    self.outcome.violations.push(Violation {
                        checker: BOUNDS,
                        key: format!("n{i}"),
                        detail: format!("{name} holds {size}, over its bound {bound}"),
                        first_event: None,
                    });
                }
            }
            replicas.push(l.meta.clone());
            numbers.push(i as u32);
        }
        if self.outcome.converged_after_ms.is_none() {
            self.outcome.violations.push(Violation {
                checker: check::CONVERGENCE,
                key: "*".into(),
                detail: format!(
                    "the replicas did not hold the same objects within {} ms of the heal",
                    self.config.converge_ms
                ),
                first_event: None,
            });
        }
        let history = self.clients.history();
        let found = if self.config.channels.is_empty() {
            check::check_all(&replicas, history)
        } else {
            let layout = history.layout();
            let channels = &self.config.channels;
            check::check_all_channels(&replicas, history, |fp, r| {
                let node = numbers.get(r).copied().unwrap_or(u32::MAX);
                channels
                    .iter()
                    .find(|c| layout.kv.get(c.kv) == Some(fp))
                    .is_none_or(|c| c.nodes.contains(&node))
            })
        };
        self.outcome.violations.extend(found);
        let (acked, failed) =
            history
                .events()
                .iter()
                .fold((0, 0), |(a, f), e| match e.outcome.acknowledged() {
                    true => (a + 1, f),
                    false => (a, f + 1),
                });
        self.outcome.acknowledged = acked;
        self.outcome.failed = failed;
        let windows: Vec<Vec<String>> = self
            .outcome
            .violations
            .iter()
            .map(|v| self.window(v))
            .collect();
        self.outcome.windows = windows;
        self.outcome
    }

    /// The notes that show a violation: those that name its key, and the
    /// faults between the first and the last of them.
    fn window(&self, v: &Violation) -> Vec<String> {
        let key = v.key.as_str();
        if key == "*" || key.is_empty() {
            return Vec::new();
        }
        // The key as notes name it: `prefix/subprefix/name` followed by
        // a space, so that `k1` does not match `k10`.
        let named = format!("{key} ");
        let touching: Vec<usize> = self
            .notes
            .iter()
            .enumerate()
            .filter(|(_, (_, t))| t.contains(&named))
            .map(|(i, _)| i)
            .collect();
        let (Some(&first), Some(&last)) = (touching.first(), touching.last()) else {
            return Vec::new();
        };
        self.notes
            .iter()
            .enumerate()
            .skip(first)
            .take(last + 1 - first)
            .filter(|(i, (_, t))| touching.contains(i) || !t.starts_with("event "))
            .map(|(_, (at, t))| format!("{at:>8} ms  {t}"))
            .take(WINDOW_MAX)
            .collect()
    }
}

/// Most lines of a violation's window.
const WINDOW_MAX: usize = 60;

/// Creates a data directory with the node id given (the store creates
/// the rest at its first open).
fn write_node_id(
    backend: &dyn Backend,
    dir: &std::path::Path,
    id: chorus_core::NodeId,
) -> std::io::Result<()> {
    backend.create_dir_all(dir)?;
    let file = backend.create(&dir.join("node-id"))?;
    file.write_all_at(format!("{id}\n").as_bytes(), 0)?;
    file.sync_data()?;
    backend.sync_dir(dir)
}

/// The node an event is for, if one (a paused node's events wait).
fn ev_node(ev: &Ev) -> Option<u32> {
    match ev {
        Ev::Frame { to, .. } => Some(*to),
        Ev::Up { node, .. }
        | Ev::Down { node, .. }
        | Ev::Timer { node, .. }
        | Ev::FeedTick { node, .. } => Some(*node),
        _ => None,
    }
}

/// What [`conflicting_revisions`] found.
#[derive(Debug, Clone, Default)]
pub struct RevisionsReport {
    /// Nodes in the run.
    pub nodes: usize,
    /// Conflicting revisions the nodes made while apart (one each).
    pub revisions: usize,
    /// Conflicts every node reports for the document after convergence
    /// (the same on every node, or the run fails).
    pub conflicts: usize,
    /// Virtual ms the conflicting revisions took to converge.
    pub converged_ms: u64,
    /// Virtual ms the one new revision took to reach every node.
    pub new_revision_ms: u64,
    /// Bytes sent by all nodes for the new revision, per node.
    pub new_revision_bytes_per_node: f64,
    /// Bytes the document takes in a store (its keys and objects), at
    /// the end.
    pub object_bytes: usize,
    /// Virtual seconds simulated, and wall seconds taken.
    pub virtual_secs: f64,
    /// Wall seconds.
    pub wall_secs: f64,
}

/// The scenario of shared/seeds/001: every node edits one document while
/// apart from all others (one conflicting revision each, `keep_both`), the
/// cluster heals and converges; every node must pick the same winner and
/// the same conflicts; then one node writes one new revision on the
/// winner, and what that costs each node is measured.
pub fn conflicting_revisions(nodes: usize, seed: u64) -> Result<RevisionsReport, String> {
    let wall = std::time::Instant::now();
    let config = Config {
        nodes,
        seed,
        faults: Faults::default(),
        ..Config::default()
    };
    let mut w = World::new(&config)?;
    w.clients_done = true;
    let start = nodes as u64 * 10 + 5_000;
    w.run_until(start);
    let docs_of = |w: &World, n: usize| -> Result<chorus_store::docs::Docs, String> {
        let l = w.nodes[n]
            .live
            .as_ref()
            .ok_or_else(|| format!("n{n} is not running"))?;
        chorus_store::docs::Docs::open(&l.meta, "sim/docs").map_err(|e| e.to_string())
    };
    w.now_of(0);
    let created = docs_of(&w, 0)?
        .create(serde_json::json!({"_id": "shot", "frame": 0}))
        .map_err(|e| e.to_string())?;
    w.read_feed(0);
    w.after(0);
    let base = created.rev.to_string();
    let synced = w.run_until_converged(start + 60_000);
    if !synced {
        return Err("the document did not reach every node".into());
    }
    // Every node apart from every other, each edits the same revision.
    for (i, g) in w.group.iter_mut().enumerate() {
        *g = i as u32 + 1;
    }
    w.break_links(|w, a, b| !w.reachable(a, b));
    for n in 0..nodes {
        w.now_of(n as u32);
        docs_of(&w, n)?
            .update(
                serde_json::json!({"_id": "shot", "_rev": base, "frame": n + 1}),
                true,
            )
            .map_err(|e| format!("n{n}'s revision: {e}"))?;
        w.read_feed(n as u32);
        w.after(n as u32);
    }
    let now = w.now;
    w.run_until(now + 1_000);
    w.group.iter_mut().for_each(|g| *g = 0);
    let healed = w.now;
    if !w.run_until_converged(healed + 600_000) {
        return Err("the conflicting revisions did not converge in 600 virtual s".into());
    }
    let converged_ms = w.now - healed;
    let mut winner = None;
    let mut conflicts = 0;
    for n in 0..nodes {
        let d = docs_of(&w, n)?;
        let doc = d.get("shot").map_err(|e| e.to_string())?;
        let rev = doc["_rev"].as_str().unwrap_or_default().to_string();
        let c: usize = d
            .conflicts("shot")
            .map_err(|e| e.to_string())?
            .iter()
            .map(Vec::len)
            .sum();
        match &winner {
            None => {
                winner = Some(rev);
                conflicts = c;
            }
            Some(r) if *r != rev || c != conflicts => {
                return Err(format!(
                    "n{n} picks {rev} with {c} conflicts, n0 picks {r} with {conflicts}"
                ));
            }
            Some(_) => {}
        }
    }
    let winner = winner.unwrap_or_default();
    // The overlay, emptied by the partition, rebuilds (joins every 5 s).
    let settled = w.now + 30_000;
    w.run_until(settled);
    // One new revision on the winner, from node 0.
    let bytes_before = w.outcome.bytes;
    let at = w.now;
    w.now_of(0);
    docs_of(&w, 0)?
        .update(
            serde_json::json!({"_id": "shot", "_rev": winner, "frame": -1}),
            false,
        )
        .map_err(|e| format!("the new revision: {e}"))?;
    w.read_feed(0);
    w.after(0);
    if !w.run_until_converged(at + 600_000) {
        return Err("the new revision did not reach every node in 600 virtual s".into());
    }
    let new_revision_ms = w.now - at;
    // What the new revision cost: the frames sent while it spread (the
    // periodic anti-entropy of an idle cluster included).
    let spent = w.outcome.bytes - bytes_before;
    let object_bytes = {
        let l = w.nodes[0].live.as_ref().ok_or("n0 stopped")?;
        let fp = chorus_store::docs::store_prefix("sim/docs").map_err(|e| e.to_string())?;
        let snap = l.meta.store().snapshot().map_err(|e| e.to_string())?;
        snap.iter()
            .filter(|(f, _, _)| **f == fp)
            .map(|(_, k, e)| k.as_bytes().len() + e.value.len())
            .sum()
    };
    Ok(RevisionsReport {
        nodes,
        revisions: nodes,
        conflicts,
        converged_ms,
        new_revision_ms,
        new_revision_bytes_per_node: spent as f64 / nodes as f64,
        object_bytes,
        virtual_secs: w.now as f64 / 1000.0,
        wall_secs: wall.elapsed().as_secs_f64(),
    })
}

impl World {
    /// Runs events until virtual time `t`.
    fn run_until(&mut self, t: u64) {
        while let Some(s) = self.queue.peek() {
            if s.at > t {
                break;
            }
            let Some(s) = self.queue.pop() else { break };
            self.now = s.at;
            self.dispatch(s.ev);
        }
        self.now = self.now.max(t);
    }

    /// Runs until every live replica holds the same objects (checked every
    /// 100 virtual ms) or `deadline`; true if they converged.
    fn run_until_converged(&mut self, deadline: u64) -> bool {
        while self.now < deadline {
            let next = self.now + 100;
            self.run_until(next);
            if self.converged() {
                return true;
            }
        }
        false
    }
}
