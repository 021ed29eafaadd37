//! The replica: what a Chorus node does to keep its data directory in step
//! with its peers, as a state machine.
//!
//! A [`Replica`] owns the gossip cores (HyParView membership, Plumtree
//! broadcast, the Merkle tree and its exchange sessions) and the policies
//! built on them: which peer anti-entropy picks, when an exchange counts
//! as finished, when the overlay is repaired, when a tombstone may be
//! collected and an operation log pruned, how the member records are
//! followed, and how received objects are batched into merge commits.
//!
//! It opens no socket, starts no thread, reads no clock and draws no
//! unseeded random number: its caller hands it frames, peer events, the
//! time ([`Now`]) and the moments its timers are due, and takes its
//! [`Output`]s (frames to send) with [`Replica::poll_output`]. Its only
//! side effects go through the [`Store`] it replicates (merges, member
//! records, collected tombstones, pruned logs), on whatever backend that
//! store was opened with. The daemon (`chorus-node`) drives it with
//! sockets and tokio timers; the simulator (`chorus-sim`) drives the very
//! same code with a simulated network, clocks and disks.

#![forbid(unsafe_code)]

pub mod members;
mod msg;
pub mod scope;
pub mod validate;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chorus_core::object::{Context, Object, context_from_string, context_to_string, descends};
use chorus_core::object_hash;
use chorus_core::oplog::OpKey;
use chorus_core::{FullPrefix, NodeId, key_hash};
use chorus_gossip::Rng;
use chorus_gossip::hyparview;
use chorus_gossip::merkle::{self, Exchange, ExchangeConfig, MerkleTree, ObjectSource};
use chorus_gossip::plumtree::{self, Application, Plumtree};
use chorus_store::channels::Channels;
use chorus_store::oplog::Oplogs;
use chorus_store::{Change, Cursor, Feed, Incoming, Metadata, Origin, Snapshot};

pub use msg::{BroadcastId, Frame, Peer};
pub use scope::ChannelStatus;
use scope::{CLUSTER, Scope, State};

/// Commits read from the feed per [`Replica::read_feed`].
pub const FEED_BATCH: usize = 1024;
/// Open anti-entropy sessions; the oldest is dropped beyond.
pub const SESSIONS_MAX: usize = 8;
/// How often a node with no active peer joins again (ms).
const REJOIN_MS: u64 = 5_000;
/// An object anti-entropy brings whose newest value is older than this
/// (ms) was missed by broadcast: the overlay may be split from that
/// peer's, so this node links to it.
const STALE_REPAIR_MS: u64 = 2_000;
/// A merge commit's share of the engine's limits (16 MiB, 100,000
/// writes by default), so a large exchange step is stored in several.
pub const MERGE_BYTES_MAX: usize = 4 << 20;
const MERGE_KEYS_MAX: usize = 10_000;
/// Most collected tombstones remembered.
pub const COLLECTED_MAX: usize = 1 << 20;
/// Operation logs whose marks are kept, and marks per log.
pub const OPLOGS_TRACKED_MAX: usize = 100_000;
const OPLOG_MARKS_MAX: usize = 16;
/// Most peers kept in the member set anti-entropy picks from.
pub const MEMBERS_MAX: usize = 16_384;

/// The time, as the caller tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Now {
    /// Monotonic milliseconds (from any origin; never goes back): what
    /// timers, grace periods and the protocols count in.
    pub ms: u64,
    /// This node's wall clock, Unix milliseconds (it may jump): what the
    /// timestamps of values are compared with.
    pub wall_ms: u64,
}

/// How a replica behaves.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where this node listens: its name among peers.
    pub me: Peer,
    /// Peers to join through.
    pub join: Vec<Peer>,
    /// Time between two anti-entropy exchanges this node starts.
    pub exchange_interval: Duration,
    /// How long a tombstone (and an operation log's folded history) is
    /// kept at least; see docs/tombstones.md.
    pub tombstone_grace: Duration,
    /// Seed of every random choice.
    pub seed: u64,
    /// How far ahead of this node's wall clock a value from a peer may be.
    pub max_clock_skew: Duration,
    /// Where this node serves its HTTP API (`HOST:PORT`), written in its
    /// member record so that other nodes can forward requests to it.
    pub http: Option<String>,
    /// How many other members of a channel must hold its data before a
    /// node that stopped serving it drops its copy (at least 1).
    pub channel_min_members: usize,
    /// A bug injected on purpose, to show the simulator catches it.
    #[cfg(feature = "mutations")]
    pub mutation: Mutation,
}

/// Bugs the simulator's tests inject to show its checkers catch them
/// (feature `mutations`; never in a release).
#[cfg(feature = "mutations")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mutation {
    /// None: the replica as released.
    #[default]
    None,
    /// Collect a tombstone after the grace period alone, without waiting
    /// for every member to have finished an exchange since it arrived.
    CollectEarly,
    /// Skip merging an object that holds siblings.
    SkipSiblings,
}

/// What the replica asks its driver to do.
#[derive(Debug, Clone)]
pub enum Output {
    /// Send a frame to a peer (dialling it if there is no connection).
    /// If it cannot be delivered, the driver calls
    /// [`Replica::handle_peer_down`].
    Send {
        /// The peer.
        to: Peer,
        /// The frame.
        frame: Frame,
    },
    /// Objects under a reserved prefix changed (`None`: any may have, the
    /// feed had a gap): the driver refreshes what it derives from them
    /// (for example TLS revocations).
    ReservedChanged(Option<FullPrefix>),
    /// An object from a peer was refused (`validate.rs`): skipped,
    /// counted, and logged by the driver.
    Refused {
        /// The metric label.
        reason: &'static str,
        /// The object and why.
        what: String,
    },
}

/// Counters, for tests and metrics.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Local commits broadcast.
    pub broadcasts: u64,
    /// Objects received by broadcast and merged.
    pub received: u64,
    /// Objects received by anti-entropy and merged.
    pub repaired: u64,
    /// Exchanges started.
    pub exchanges: u64,
    /// Exchanges that finished (either side).
    pub exchanges_done: u64,
    /// Overlay links made because anti-entropy brought what broadcast
    /// missed.
    pub overlay_links: u64,
    /// Tombstones removed once every member had them.
    pub tombstones_collected: u64,
    /// Operations folded into operation logs' checkpoints.
    pub oplog_ops_folded: u64,
    /// Merge commits that failed (the objects come again by anti-entropy).
    pub merge_failures: u64,
    /// The most objects waiting to be merged at once.
    pub deliveries_peak: u64,
    /// Objects the store skipped as evidence of a copied identity
    /// (`chorus_store::IdentityConflict`).
    pub identity_conflicts: u64,
    /// Objects from peers of full prefixes this node does not serve
    /// (a peer with an older channel table), dropped.
    pub unserved_dropped: u64,
    /// Frames for a channel this node does not serve, dropped.
    pub unserved_frames: u64,
    /// Keys dropped here after this node stopped serving their channel
    /// and enough members held them.
    pub channel_keys_dropped: u64,
}

/// The replica's timers; the protocols' are per scope (by name).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Timer {
    Shuffle(String),
    Tick(String),
    Rejoin,
    Exchange,
    CollectTombstones,
}

/// An object Plumtree delivered, waiting to be merged: origin, full
/// prefix, key, encoded object.
type Delivery = (Origin, String, Vec<u8>, Vec<u8>);
/// An object as a peer sent it: full prefix, key, encoded object.
type Encoded = (String, Vec<u8>, Vec<u8>);
/// A scope's broadcast tree.
type Tree = Plumtree<Peer, BroadcastId, Vec<u8>>;
/// A key: its full prefix and the key.
type Slot = (FullPrefix, Vec<u8>);

/// A tombstone held here: when this version arrived (ms), and its hash
/// (so that only this version is removed, never one that replaced it).
#[derive(Debug, Clone, Copy)]
struct Held {
    arrived: u64,
    hash: u64,
}

/// When an operation log's greatest operation was seen here (ms), oldest
/// first.
type Marks = VecDeque<(u64, OpKey)>;

struct Session {
    /// The scope compared ([`CLUSTER`] or a channel).
    scope: String,
    peer: Peer,
    id: u64,
    initiator: bool,
    exchange: Exchange<Vec<u8>, Vec<u8>>,
    /// When it started: the tree it compared held every tombstone that
    /// had arrived before.
    started: u64,
}

/// A node's replication logic over its store (see the crate docs).
pub struct Replica {
    config: Config,
    node_id: [u8; 16],
    meta: Metadata,
    oplogs: Oplogs,
    /// Full prefixes in no channel, and reserved ones: every member.
    cluster: Scope,
    /// The channels this node serves or still holds data of.
    channels: BTreeMap<String, Scope>,
    /// The channel table as last read.
    table: Arc<Channels>,
    /// Members' node ids, from their records: who serves which channel.
    member_ids: BTreeMap<Peer, NodeId>,
    cursor: Cursor,
    sessions: VecDeque<Session>,
    timers: BTreeMap<(u64, u64), Timer>,
    timer_seq: u64,
    rng: Rng,
    outputs: VecDeque<Output>,
    /// Delivered by broadcast, not yet merged (at most about
    /// `MERGE_BYTES_MAX` before the driver flushes).
    deliveries: Vec<Delivery>,
    delivered_bytes: usize,
    stats: Stats,
    last_exchange: BTreeMap<Peer, u64>,
    /// Every peer this node has heard of (seeds, connections, views, member
    /// records): what anti-entropy picks from, so data converges even where
    /// the overlay split. At most `MEMBERS_MAX`.
    members: BTreeSet<Peer>,
    members_full_logged: bool,
    last_link: Option<u64>,
    /// Members that left (from `$cluster/members`): never sent to.
    left: BTreeSet<Peer>,
    /// When this node itself left: the driver stops shortly after, once
    /// its record has gone out.
    leaving: Option<u64>,
    /// Whether this run has written its member record since its first link.
    announced: bool,
    /// When the feed last brought a commit made on this node (ms).
    last_local_commit: u64,
    /// Tombstones held here, by key, with when they arrived (this run:
    /// those found at start count as arriving then).
    tombstones: BTreeMap<Slot, Held>,
    /// Per operation log: when its greatest operation was seen here.
    oplog_marks: BTreeMap<Slot, Marks>,
    /// Tombstones collected here recently, with their contexts: a peer
    /// that has not collected its copy yet sends it back, and it is not
    /// stored again. Entries expire after four grace periods, and at most
    /// `COLLECTED_MAX` are kept (the oldest go first).
    collected: BTreeMap<Slot, (Context, u64)>,
}

/// The store as Plumtree's application: staleness is a causal check.
struct Objects<'a>(&'a Metadata);

impl Application<BroadcastId, Vec<u8>> for Objects<'_> {
    fn is_stale(&mut self, id: &BroadcastId) -> bool {
        let (Ok(fp), Ok(context)) = (
            FullPrefix::parse(&id.full_prefix),
            context_from_string(&id.context),
        ) else {
            return true;
        };
        matches!(self.0.object(&fp, &id.key), Ok(Some(o)) if o.is_stale(&context))
    }

    fn payload(&mut self, id: &BroadcastId) -> Option<Vec<u8>> {
        let fp = FullPrefix::parse(&id.full_prefix).ok()?;
        let context = context_from_string(&id.context).ok()?;
        let object = self.0.object(&fp, &id.key).ok()??;
        object.equal_context(&context).then(|| object.encode())
    }
}

/// The store's objects for an exchange, from one snapshot (the one the
/// tree compared was built from).
pub struct SnapshotObjects<'a>(pub &'a Snapshot);

impl ObjectSource<Vec<u8>, Vec<u8>> for SnapshotObjects<'_> {
    fn object(&mut self, prefix: &[u8], sub: &[u8], key: &Vec<u8>) -> Option<Vec<u8>> {
        let fp = FullPrefix::new(
            std::str::from_utf8(prefix).ok()?,
            std::str::from_utf8(sub).ok()?,
        )
        .ok()?;
        self.0.get(&fp, key).map(|b| b.to_vec())
    }
    fn size(&self, key: &Vec<u8>, object: &Vec<u8>) -> usize {
        key.len() + object.len()
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Replica {
    /// A replica of the store behind `meta` (its operation logs through
    /// `oplogs`, which shares the script reducers with the API): writes
    /// this node's member record and reads the store's state. Nothing is
    /// sent before [`Replica::start`].
    pub fn open(
        meta: Metadata,
        oplogs: Oplogs,
        config: Config,
        now: Now,
    ) -> Result<Replica, chorus_store::Error> {
        let store = meta.store().clone();
        let node_id = *store.node_id().as_bytes();
        members::announce(&meta, &config.me, store.node_id(), config.http.as_deref())?;
        let records = members::read_all(&meta)?;
        let left: BTreeSet<Peer> = records
            .iter()
            .filter(|(_, m)| m.has_left())
            .map(|(a, _)| a.clone())
            .collect();
        let members: BTreeSet<Peer> = config
            .join
            .iter()
            .cloned()
            .chain(
                records
                    .iter()
                    .filter(|(_, m)| !m.has_left())
                    .map(|(a, _)| a.clone()),
            )
            .filter(|p| *p != config.me)
            .take(MEMBERS_MAX)
            .collect();
        let member_ids = member_ids(&records);
        let cursor = store.cursor()?;
        let snapshot = store.snapshot()?;
        let table = meta.channels()?;
        let seed = config.seed;
        let mut replica = Replica {
            cluster: Scope::serving(&config.me, CLUSTER, config.seed, State::Ready),
            channels: BTreeMap::new(),
            table,
            member_ids,
            tombstones: find_tombstones(&snapshot, now.ms),
            config,
            node_id,
            meta,
            oplogs,
            cursor,
            sessions: VecDeque::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            rng: Rng::new(seed ^ 0x5EED),
            outputs: VecDeque::new(),
            deliveries: Vec::new(),
            delivered_bytes: 0,
            stats: Stats::default(),
            last_exchange: BTreeMap::new(),
            members,
            members_full_logged: false,
            last_link: None,
            left,
            leaving: None,
            announced: false,
            last_local_commit: 0,
            oplog_marks: BTreeMap::new(),
            collected: BTreeMap::new(),
        };
        replica.set_scopes(now);
        replica.rebuild_trees(&snapshot, now);
        // Logs already here wait a grace period from now, like tombstones.
        for (fp, key, e) in snapshot.iter() {
            replica.mark_oplog((fp.clone(), key.as_bytes().to_vec()), &e.value, now.ms);
        }
        Ok(replica)
    }

    /// Joins through a seed and arms the timers.
    pub fn start(&mut self, now: Now) {
        self.join_seeds();
        self.set_timer(now, REJOIN_MS, Timer::Rejoin);
        self.set_timer(now, ms(self.config.exchange_interval), Timer::Exchange);
        self.set_timer(now, self.collect_interval_ms(), Timer::CollectTombstones);
        self.pump(now);
    }

    /// The store this replica keeps in step.
    pub fn meta(&self) -> &Metadata {
        &self.meta
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        NodeId::from_bytes(self.node_id)
    }

    /// Its address among peers.
    pub fn me(&self) -> &Peer {
        &self.config.me
    }

    /// The next output, if any. Every `handle_*` call may queue some;
    /// drain them before the next call (the queue holds what one input
    /// caused, so it stays bounded by what that input carried).
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When the earliest timer is due (monotonic ms), if any.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.timers.keys().next().map(|(at, _)| *at)
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Now) {
        while let Some((&key, _)) = self.timers.first_key_value() {
            if key.0 > now.ms {
                break;
            }
            let Some(timer) = self.timers.remove(&key) else {
                break;
            };
            match timer {
                Timer::Shuffle(name) => {
                    if let Some(hpv) = self.scope_mut(&name).and_then(|s| s.hpv.as_mut()) {
                        hpv.handle_timer(hyparview::Timer::Shuffle);
                    }
                }
                Timer::Tick(name) => {
                    if let (Some(plum), meta) = self.plum_with_meta(&name) {
                        plum.handle_timer(now.ms, plumtree::Timer::Tick, &mut Objects(meta));
                    }
                }
                Timer::Rejoin => {
                    if self
                        .cluster
                        .hpv
                        .as_ref()
                        .is_some_and(|h| h.active_view().is_empty())
                    {
                        self.join_seeds();
                    }
                    self.rejoin_channels();
                    self.set_timer(now, REJOIN_MS, Timer::Rejoin);
                }
                Timer::Exchange => {
                    self.start_exchange(now);
                    self.set_timer(now, ms(self.config.exchange_interval), Timer::Exchange);
                }
                Timer::CollectTombstones => {
                    self.drop_left_channels();
                    self.collect_tombstones(now);
                    self.prune_oplogs(now);
                    self.set_timer(now, self.collect_interval_ms(), Timer::CollectTombstones);
                }
            }
            self.pump(now);
        }
    }

    /// A connection with `peer` is up (either side dialled).
    pub fn handle_peer_up(&mut self, peer: Peer, now: Now) {
        if peer != self.config.me {
            self.note_member(peer);
        }
        self.pump(now);
    }

    /// `peer` cannot be reached: its connection closed, or a frame for it
    /// could not be delivered.
    pub fn handle_peer_down(&mut self, peer: &Peer, now: Now) {
        self.fail_peer(peer);
        self.pump(now);
    }

    /// Joins the overlay through `peer` (an operator's `chorus join`).
    pub fn join(&mut self, peer: Peer, now: Now) {
        self.note_member(peer.clone());
        if let Some(hpv) = self.cluster.hpv.as_mut() {
            hpv.join(peer);
        }
        self.pump(now);
    }

    /// A frame from `peer` (whose handshake named `node_id`).
    pub fn handle_frame(&mut self, peer: Peer, node_id: [u8; 16], frame: Frame, now: Now) {
        let (name, frame) = match frame {
            Frame::Channel { channel, frame } => (channel, *frame),
            other => (CLUSTER.to_string(), other),
        };
        // An answer to an exchange this node opened is taken in a scope it
        // is leaving (that is how it hands its data off); anything else
        // only in a scope it serves. A peer with a newer table may send
        // before this node has read it: the protocols retry.
        let answer = matches!(
            frame,
            Frame::Exchange {
                from_initiator: false,
                ..
            }
        );
        let taken = self.scope(&name).is_some_and(|s| s.is_serving() || answer);
        if !taken {
            self.stats.unserved_frames += 1;
            return;
        }
        match frame {
            Frame::Membership(m) => {
                if let Some(hpv) = self.scope_mut(&name).and_then(|s| s.hpv.as_mut()) {
                    hpv.handle_message(peer, m);
                }
            }
            Frame::Broadcast(m) => {
                if let (Some(plum), meta) = self.plum_with_meta(&name) {
                    plum.handle_message(now.ms, peer, m, &mut Objects(meta));
                }
                self.drain_plumtree(&name, Some(node_id), now);
            }
            Frame::Exchange {
                session,
                from_initiator,
                message,
            } => self.on_exchange(&name, peer, node_id, session, from_initiator, message, now),
            // Nested: refused (the wire never carries one).
            Frame::Channel { .. } => self.stats.unserved_frames += 1,
        }
        self.pump(now);
    }

    /// True when broadcast delivered objects that [`Replica::flush`] has
    /// not merged yet.
    pub fn has_deliveries(&self) -> bool {
        !self.deliveries.is_empty()
    }

    /// True when enough has been delivered that the driver should call
    /// [`Replica::flush`] before taking more frames.
    pub fn wants_flush(&self) -> bool {
        self.delivered_bytes >= MERGE_BYTES_MAX
    }

    /// Merges what broadcast delivered since the last call: one commit
    /// per origin (and per `MERGE_BYTES_MAX`), queued together so they
    /// share a sync. A failed merge is counted; anti-entropy brings the
    /// objects again.
    pub fn flush(&mut self, now: Now) {
        if self.deliveries.is_empty() {
            return;
        }
        self.delivered_bytes = 0;
        let mut by_origin: Vec<(Origin, Vec<Encoded>)> = Vec::new();
        for (origin, fp, key, payload) in std::mem::take(&mut self.deliveries) {
            self.stats.received += 1;
            match by_origin.iter_mut().find(|(o, _)| *o == origin) {
                Some((_, items)) => items.push((fp, key, payload)),
                None => by_origin.push((origin, vec![(fp, key, payload)])),
            }
        }
        let mut groups = Vec::new();
        for (origin, items) in by_origin {
            for chunk in self.merge_chunks(items.into_iter(), now) {
                groups.push((origin, chunk));
            }
        }
        self.commit_merges(groups);
    }

    /// Reads up to [`FEED_BATCH`] new commits from the store's change
    /// feed and handles them ([`Replica::handle_commits`]); true if there
    /// may be more.
    pub fn read_feed(&mut self, now: Now) -> Result<bool, chorus_store::Error> {
        let store = self.meta.store().clone();
        match store.changes_since(&self.cursor, FEED_BATCH)? {
            Feed::Changes { changes, next } => {
                self.cursor = next;
                let full = changes.len() >= FEED_BATCH;
                self.handle_commits(changes, now);
                Ok(full)
            }
            Feed::Gap { resume, .. } => {
                // Commits were compacted before this node read them:
                // start over from the state, as at start (every tombstone
                // waits again).
                let snapshot = store.snapshot()?;
                self.tombstones = find_tombstones(&snapshot, now.ms);
                self.cursor = resume;
                // What the lost commits said of members, channels and
                // logs: read from the state, as at start.
                for (addr, member) in members::read_all(&self.meta)? {
                    self.apply_member(addr, &member, now);
                }
                self.table = self.meta.channels()?;
                self.set_scopes(now);
                self.rebuild_trees(&snapshot, now);
                for (fp, key, e) in snapshot.iter() {
                    self.mark_oplog((fp.clone(), key.as_bytes().to_vec()), &e.value, now.ms);
                }
                self.outputs.push_back(Output::ReservedChanged(None));
                Ok(true)
            }
        }
    }

    /// New commits of the store: every one updates the Merkle tree and
    /// the tombstones and logs held; the ones made on this node are
    /// broadcast.
    pub fn handle_commits(&mut self, changes: Vec<Change>, now: Now) {
        let mut reserved: Vec<FullPrefix> = Vec::new();
        for change in changes {
            for k in change.keys {
                if k.full_prefix.is_reserved() && !reserved.contains(&k.full_prefix) {
                    reserved.push(k.full_prefix.clone());
                    if k.full_prefix.prefix() == chorus_store::channels::PREFIX
                        && k.full_prefix.subprefix() == chorus_store::channels::SUBPREFIX
                    {
                        // The table changed: every later key of this batch
                        // goes where the new table says.
                        self.on_table_change(now);
                    }
                }
                if k.full_prefix.to_string() == members::MEMBERS {
                    self.on_member_record(&k.key, k.value.as_deref(), now);
                }
                let dead = k
                    .value
                    .as_deref()
                    .filter(|v| Object::decode(v).is_ok_and(|o| o.is_tombstone()));
                let slot = (k.full_prefix.clone(), k.key.clone());
                match dead {
                    // Every new version of a tombstone starts its wait again.
                    Some(v) => {
                        let held = Held {
                            arrived: now.ms,
                            hash: object_hash(&k.key, v),
                        };
                        self.tombstones.insert(slot, held);
                    }
                    None => {
                        self.tombstones.remove(&slot);
                    }
                }
                if let Some(v) = k.value.as_deref() {
                    self.mark_oplog((k.full_prefix.clone(), k.key.clone()), v, now.ms);
                }
                let (p, s) = (k.full_prefix.prefix(), k.full_prefix.subprefix());
                let hash = k.value.as_deref().map(|v| object_hash(&k.key, v));
                let name = self.scope_name(&k.full_prefix);
                if self.scope(&name).is_none() && hash.is_some() {
                    // Data of a channel this node does not serve (written
                    // before it read the table): held until handed off.
                    self.channels.insert(name.clone(), Scope::leaving(now.ms));
                }
                let Some(scope) = self.scope_mut(&name) else {
                    continue;
                };
                scope
                    .tree
                    .update(p.as_bytes(), s.as_bytes(), &k.key, key_hash(&k.key), hash);
                if change.origin != Origin::Local {
                    continue;
                }
                self.last_local_commit = now.ms;
                let Some(bytes) = k.value else { continue };
                let Ok(object) = Object::decode(&bytes) else {
                    continue;
                };
                let id = BroadcastId {
                    full_prefix: k.full_prefix.to_string(),
                    key: k.key,
                    context: context_to_string(&object.context()),
                };
                // A scope being left has no tree: its data reaches the
                // members by the hand-off exchanges.
                if let Some(plum) = self.scope_mut(&name).and_then(|s| s.plum.as_mut()) {
                    plum.broadcast(now.ms, id, bytes.to_vec());
                    self.stats.broadcasts += 1;
                }
            }
        }
        for fp in reserved {
            self.outputs.push_back(Output::ReservedChanged(Some(fp)));
        }
        self.pump(now);
    }

    /// True once this node has left and may stop: its member record says
    /// it left, and since then an exchange with another current member
    /// has finished (that member holds everything this node had, its own
    /// acknowledged writes included, and the record), or it has no other
    /// member. Until then a leaving node keeps replicating: stopping
    /// earlier loses what only it holds (the simulator found this with
    /// churn and partitions).
    pub fn may_stop(&self) -> bool {
        let Some(left) = self.leaving else {
            return false;
        };
        // After the leave, and after the last write made here (the API
        // still takes writes while the node leaves).
        let since = left.max(self.last_local_commit);
        // In every scope holding data: some other member has it all.
        self.scopes()
            .filter(|(name, s)| name.is_empty() || !s.tree.is_empty())
            .all(|(name, scope)| {
                let members = self.scope_members(name);
                members.is_empty()
                    || members
                        .iter()
                        .any(|m| scope.synced.get(m).is_some_and(|s| *s > since))
            })
    }

    /// When this node's own member record said it left (monotonic ms).
    pub fn left_at(&self) -> Option<u64> {
        self.leaving
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Plumtree's counters, summed over the scopes.
    pub fn broadcast_stats(&self) -> plumtree::Stats {
        let mut sum = plumtree::Stats::default();
        for plum in self.scopes().filter_map(|(_, s)| s.plum.as_ref()) {
            let p = plum.stats();
            sum.gossip_sent += p.gossip_sent;
            sum.ihave_sent += p.ihave_sent;
            sum.grafts_sent += p.grafts_sent;
            sum.prunes_sent += p.prunes_sent;
            sum.duplicates += p.duplicates;
            sum.already_known += p.already_known;
            sum.lazy_dropped += p.lazy_dropped;
            sum.missing_evicted += p.missing_evicted;
            sum.missing_abandoned += p.missing_abandoned;
            sum.shortened += p.shortened;
        }
        sum
    }

    /// HyParView's active view (the cluster scope's).
    pub fn active_view(&self) -> &[Peer] {
        self.cluster.hpv.as_ref().map_or(&[], |h| h.active_view())
    }

    /// HyParView's passive view (the cluster scope's).
    pub fn passive_view(&self) -> &[Peer] {
        self.cluster.hpv.as_ref().map_or(&[], |h| h.passive_view())
    }

    /// Plumtree's eager peers (the cluster scope's).
    pub fn eager_peers(&self) -> &[Peer] {
        self.cluster.plum.as_ref().map_or(&[], |p| p.eager_peers())
    }

    /// Plumtree's lazy peers (the cluster scope's).
    pub fn lazy_peers(&self) -> &[Peer] {
        self.cluster.plum.as_ref().map_or(&[], |p| p.lazy_peers())
    }

    /// A channel scope's active view, if this node serves the channel.
    pub fn channel_view(&self, name: &str) -> Option<&[Peer]> {
        self.channels
            .get(name)
            .and_then(|s| s.hpv.as_ref())
            .map(|h| h.active_view())
    }

    /// The channels this node serves or still holds data of, with where
    /// it stands in each (for `chorus status` and `/v1/cluster`).
    pub fn channel_status(&self) -> Vec<ChannelStatus> {
        self.channels
            .iter()
            .map(|(name, scope)| {
                let members = self.scope_members(name);
                let (state, handed_off, needed) = match scope.state {
                    State::Joining { .. } => ("joining", 0, 0),
                    State::Ready => ("ready", 0, 0),
                    State::Leaving { since } => (
                        "leaving",
                        handed_off(scope, &members, since),
                        self.handoff_needed(),
                    ),
                };
                ChannelStatus {
                    name: name.clone(),
                    state,
                    keys: scope.tree.len(),
                    members_keys: scope.members_keys(),
                    members,
                    handed_off,
                    handoff_needed: needed,
                }
            })
            .collect()
    }

    /// The Merkle roots of every scope this node serves ([`CLUSTER`], the
    /// empty name, for the cluster scope): equal on two replicas serving
    /// a scope exactly when they hold the same objects of it.
    pub fn tree_roots(&self) -> BTreeMap<String, merkle::Summary> {
        self.scopes()
            .filter(|(_, s)| s.is_serving())
            .map(|(n, s)| (n.to_string(), s.tree.root()))
            .collect()
    }

    /// The members anti-entropy picks from.
    pub fn members(&self) -> &BTreeSet<Peer> {
        &self.members
    }

    /// The members that left.
    pub fn left(&self) -> &BTreeSet<Peer> {
        &self.left
    }

    /// When the last exchange with each peer finished (monotonic ms).
    pub fn last_exchange(&self) -> &BTreeMap<Peer, u64> {
        &self.last_exchange
    }

    /// Tombstones held, waiting to be collected.
    pub fn tombstones_held(&self) -> usize {
        self.tombstones.len()
    }

    /// The cluster scope's Merkle root: equal on two replicas exactly when
    /// they hold the same objects outside channels (as of the feed read so
    /// far). [`Replica::tree_roots`] has the channels'.
    pub fn tree_root(&self) -> merkle::Summary {
        self.cluster.tree.root()
    }

    /// The feed position read so far.
    pub fn feed_seq(&self) -> u64 {
        self.cursor.seq()
    }

    /// The sizes of the replica's bounded queues and sets, with their
    /// bounds: (name, size, bound). The simulator checks none is exceeded.
    pub fn bounds(&self) -> Vec<(&'static str, usize, usize)> {
        vec![
            ("sessions", self.sessions.len(), SESSIONS_MAX),
            ("members", self.members.len(), MEMBERS_MAX),
            ("collected", self.collected.len(), COLLECTED_MAX),
            ("oplogs_tracked", self.oplog_marks.len(), OPLOGS_TRACKED_MAX),
            (
                "delivered_bytes",
                self.delivered_bytes,
                // One frame may take it over the mark before a flush.
                MERGE_BYTES_MAX + (16 << 20),
            ),
        ]
    }

    /// The cluster scope, then every channel scope, by name.
    fn scopes(&self) -> impl Iterator<Item = (&str, &Scope)> {
        std::iter::once((CLUSTER, &self.cluster))
            .chain(self.channels.iter().map(|(n, s)| (n.as_str(), s)))
    }

    fn scope(&self, name: &str) -> Option<&Scope> {
        match name {
            CLUSTER => Some(&self.cluster),
            _ => self.channels.get(name),
        }
    }

    fn scope_mut(&mut self, name: &str) -> Option<&mut Scope> {
        match name {
            CLUSTER => Some(&mut self.cluster),
            _ => self.channels.get_mut(name),
        }
    }

    /// A scope's broadcast tree (none while leaving) beside the store it
    /// reads stale checks and payloads from: borrowed apart.
    fn plum_with_meta(&mut self, name: &str) -> (Option<&mut Tree>, &Metadata) {
        let scope = match name {
            CLUSTER => Some(&mut self.cluster),
            _ => self.channels.get_mut(name),
        };
        (scope.and_then(|s| s.plum.as_mut()), &self.meta)
    }

    /// The scope a full prefix belongs to: its channel, or [`CLUSTER`].
    fn scope_name(&self, fp: &FullPrefix) -> String {
        self.table
            .table
            .channel_of(fp)
            .map_or_else(String::new, |(n, _)| n.to_string())
    }

    /// The other current members of a scope, by address: every member for
    /// the cluster scope, the channel's nodes (whose member records say
    /// where they listen) for a channel.
    fn scope_members(&self, name: &str) -> Vec<Peer> {
        if name == CLUSTER {
            return self.other_members().into_iter().cloned().collect();
        }
        let Some(channel) = self.table.table.get(name) else {
            return Vec::new();
        };
        self.member_ids
            .iter()
            .filter(|(addr, id)| {
                channel.nodes.contains(id) && **addr != self.config.me && !self.left.contains(*addr)
            })
            .map(|(addr, _)| addr.clone())
            .collect()
    }

    /// How many other members must hold a channel's data before a node
    /// that stopped serving it drops its copy.
    fn handoff_needed(&self) -> usize {
        self.config.channel_min_members.max(1)
    }

    /// The channel table changed (a commit touched its records): the
    /// scopes and trees follow it.
    fn on_table_change(&mut self, now: Now) {
        let table = match self.meta.channels() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("cannot read the channel table: {e}");
                return;
            }
        };
        if *table == *self.table {
            return;
        }
        for problem in &table.problems {
            tracing::warn!("{problem}");
        }
        self.table = table;
        self.set_scopes(now);
        match self.meta.store().snapshot() {
            Ok(snapshot) => self.rebuild_trees(&snapshot, now),
            Err(e) => tracing::warn!("cannot read the store to follow the channel table: {e}"),
        }
    }

    /// Makes the scopes match the table: a scope for every channel this
    /// node serves (joining its members' overlay), leaving ones for those
    /// it stopped serving, none for channels that no longer exist (their
    /// data is every node's again).
    fn set_scopes(&mut self, now: Now) {
        let me = self.node_id();
        let served: Vec<(String, bool)> = self
            .table
            .table
            .channels()
            .filter(|(_, c)| c.nodes.contains(&me))
            .map(|(n, c)| (n.to_string(), c.nodes.len() == 1))
            .collect();
        for (name, alone) in &served {
            if self.channels.get(name).is_some_and(Scope::is_serving) {
                continue;
            }
            let state = if *alone {
                State::Ready
            } else {
                State::Joining { since: now.ms }
            };
            let mut scope = Scope::serving(&self.config.me, name, self.config.seed, state);
            if let Some(held) = self.channels.remove(name) {
                scope.tree = held.tree;
            }
            let peers = self.scope_members(name);
            if let (Some(peer), Some(hpv)) = (self.rng.pick(&peers), scope.hpv.as_mut()) {
                hpv.join(peer.clone());
            }
            tracing::info!("serving the channel {name:?}");
            self.channels.insert(name.clone(), scope);
        }
        for (name, scope) in &mut self.channels {
            if scope.is_serving() && !served.iter().any(|(n, _)| n == name) {
                tracing::info!(
                    "no longer serving the channel {name:?}: its data is kept until members hold it"
                );
                scope.stop_serving(now.ms);
            }
        }
        let table = Arc::clone(&self.table);
        self.channels
            .retain(|name, _| table.table.get(name).is_some());
        self.sessions
            .retain(|s| s.scope == CLUSTER || table.table.get(&s.scope).is_some());
        self.prune_channel_peers();
    }

    /// Forgets, in every channel's overlay, the peers that are not members
    /// of that channel (any more).
    fn prune_channel_peers(&mut self) {
        let names: Vec<String> = self
            .channels
            .iter()
            .filter(|(_, s)| s.is_serving())
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            let members = self.scope_members(&name);
            let Some(scope) = self.channels.get_mut(&name) else {
                continue;
            };
            let strangers: Vec<Peer> = scope
                .hpv
                .as_ref()
                .map(|h| {
                    h.active_view()
                        .iter()
                        .chain(h.passive_view())
                        .filter(|p| !members.contains(p))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            for p in strangers {
                forget_peer(scope, &p);
            }
        }
    }

    /// Builds every scope's tree from a snapshot, one full prefix at a
    /// time. Data of a channel this node does not serve makes a leaving
    /// scope: held until members have it, then dropped.
    fn rebuild_trees(&mut self, snapshot: &Snapshot, now: Now) {
        self.cluster.tree = MerkleTree::new();
        for scope in self.channels.values_mut() {
            scope.tree = MerkleTree::new();
        }
        for fp in snapshot.prefixes() {
            let name = self.scope_name(fp);
            if self.scope(&name).is_none() {
                self.channels.insert(name.clone(), Scope::leaving(now.ms));
            }
            let Some(scope) = self.scope_mut(&name) else {
                continue;
            };
            for (key, entry) in snapshot.iter_prefix(fp) {
                let key = key.as_bytes();
                scope.tree.update(
                    fp.prefix().as_bytes(),
                    fp.subprefix().as_bytes(),
                    &key.to_vec(),
                    key_hash(key),
                    Some(object_hash(key, &entry.value)),
                );
            }
        }
        self.channels
            .retain(|_, s| s.is_serving() || !s.tree.is_empty());
    }

    /// Drops the data of channels this node no longer serves once enough
    /// of their members have finished an exchange with it since (each
    /// then holds everything it had): a local removal, never broadcast
    /// and leaving no tombstone, in commits of at most `MERGE_KEYS_MAX`
    /// keys.
    fn drop_left_channels(&mut self) {
        let needed = self.handoff_needed();
        let done: Vec<String> = self
            .channels
            .iter()
            .filter_map(|(name, scope)| match scope.state {
                State::Leaving { since }
                    if handed_off(scope, &self.scope_members(name), since) >= needed =>
                {
                    Some(name.clone())
                }
                _ => None,
            })
            .collect();
        for name in done {
            match self.drop_channel_data(&name) {
                Ok(n) => {
                    tracing::info!(
                        "dropped {n} keys of the channel {name:?}: {needed} other members hold them"
                    );
                    self.stats.channel_keys_dropped += n;
                    self.channels.remove(&name);
                    let table = Arc::clone(&self.table);
                    self.oplog_marks.retain(|(fp, _), _| {
                        table.table.channel_of(fp).is_none_or(|(n, _)| n != name)
                    });
                }
                Err(e) => tracing::warn!("cannot drop the data of the channel {name:?}: {e}"),
            }
        }
    }

    /// Removes every key of channel `name` held here; the count removed.
    fn drop_channel_data(&mut self, name: &str) -> Result<u64, chorus_store::Error> {
        let store = self.meta.store().clone();
        let snapshot = store.snapshot()?;
        let mut slots: Vec<Slot> = Vec::new();
        for fp in snapshot.prefixes() {
            if self.scope_name(fp) != name {
                continue;
            }
            for (key, _) in snapshot.iter_prefix(fp) {
                slots.push((fp.clone(), key.as_bytes().to_vec()));
            }
        }
        let mut dropped = 0u64;
        for chunk in slots.chunks(MERGE_KEYS_MAX) {
            let writes: Vec<chorus_store::Write> = chunk
                .iter()
                .map(|(fp, key)| chorus_store::Write::delete(fp, key))
                .collect();
            let n = writes.len() as u64;
            store.update_returning(move |_| Ok((writes, ())))?;
            dropped += n;
        }
        Ok(dropped)
    }

    fn set_timer(&mut self, now: Now, after_ms: u64, timer: Timer) {
        self.timer_seq += 1;
        // At least 1 ms ahead: a timer due again at once would keep
        // `handle_timeout` running.
        self.timers.insert(
            (now.ms.saturating_add(after_ms.max(1)), self.timer_seq),
            timer,
        );
    }

    /// Joins the overlay through a seed, or through any member this node
    /// knows of that has not left: seeds may leave the cluster too.
    fn join_seeds(&mut self) {
        let seeds: Vec<Peer> = self
            .config
            .join
            .iter()
            .chain(self.members.iter())
            .filter(|s| **s != self.config.me && !self.left.contains(*s))
            .cloned()
            .collect::<BTreeSet<Peer>>()
            .into_iter()
            .collect();
        if let Some(seed) = self.rng.pick(&seeds).cloned()
            && let Some(hpv) = self.cluster.hpv.as_mut()
        {
            hpv.join(seed);
        }
    }

    /// Joins, through one of its members, the overlay of every channel
    /// this node serves whose active view is empty.
    fn rejoin_channels(&mut self) {
        let lonely: Vec<String> = self
            .channels
            .iter()
            .filter(|(_, s)| s.hpv.as_ref().is_some_and(|h| h.active_view().is_empty()))
            .map(|(n, _)| n.clone())
            .collect();
        for name in lonely {
            let peers = self.scope_members(&name);
            let Some(peer) = self.rng.pick(&peers).cloned() else {
                continue;
            };
            if let Some(hpv) = self.channels.get_mut(&name).and_then(|s| s.hpv.as_mut()) {
                hpv.join(peer);
            }
        }
    }

    /// Adds a peer to the members anti-entropy picks from, up to
    /// `MEMBERS_MAX`: peers say where they listen, so without a bound a
    /// stream of connections could grow the set without end.
    fn note_member(&mut self, peer: Peer) {
        if self.members.len() < MEMBERS_MAX || self.members.contains(&peer) {
            self.members.insert(peer);
        } else if !self.members_full_logged {
            self.members_full_logged = true;
            tracing::warn!(
                "{MEMBERS_MAX} members known: {peer} and later peers are not picked for anti-entropy (broadcast still reaches them)"
            );
        }
    }

    /// Queues a frame of scope `scope` for a peer. One that left is sent
    /// nothing but the answers to the exchanges it starts: it is handing
    /// its data off before it stops (see [`Replica::may_stop`]).
    fn send(&mut self, scope: &str, peer: Peer, frame: Frame) {
        if peer == self.config.me {
            return;
        }
        let answer = matches!(
            frame,
            Frame::Exchange {
                from_initiator: false,
                ..
            }
        );
        if self.left.contains(&peer) && !answer {
            // Dropped; the protocols forget it, but the exchange it may
            // have open for its hand-off stays.
            if let Some(s) = self.scope_mut(scope) {
                forget_peer(s, &peer);
            }
            return;
        }
        // The cluster scope's frames are as before channels existed, so
        // peers of earlier releases read them.
        let frame = if scope == CLUSTER {
            frame
        } else {
            Frame::Channel {
                channel: scope.to_string(),
                frame: Box::new(frame),
            }
        };
        self.outputs.push_back(Output::Send { to: peer, frame });
    }

    /// Tells every scope's protocols that `peer` is unreachable.
    fn fail_peer(&mut self, peer: &Peer) {
        forget_peer(&mut self.cluster, peer);
        for s in self.channels.values_mut() {
            forget_peer(s, peer);
        }
        self.sessions.retain(|s| s.peer != *peer);
    }

    /// On the first link of this run, writes this node's member record
    /// again: the commit is broadcast, so every member learns of this node
    /// now rather than at its next exchange.
    fn announce_once(&mut self) {
        if self.announced || self.leaving.is_some() {
            return;
        }
        self.announced = true;
        let node = NodeId::from_bytes(self.node_id);
        if let Err(e) = members::refresh(
            &self.meta,
            &self.config.me,
            node,
            self.config.http.as_deref(),
        ) {
            tracing::warn!("cannot write this node's member record: {e}");
        }
    }

    /// Drains every scope's state machines until they are quiet.
    fn pump(&mut self, now: Now) {
        let names: Vec<String> = std::iter::once(CLUSTER.to_string())
            .chain(
                self.channels
                    .iter()
                    .filter(|(_, s)| s.is_serving())
                    .map(|(n, _)| n.clone()),
            )
            .collect();
        for name in names {
            self.pump_scope(&name, now);
        }
    }

    /// Drains one scope's HyParView and Plumtree until they are quiet.
    fn pump_scope(&mut self, name: &str, now: Now) {
        loop {
            let mut progressed = false;
            while let Some(out) = self
                .scope_mut(name)
                .and_then(|s| s.hpv.as_mut())
                .and_then(|h| h.poll_output())
            {
                progressed = true;
                match out {
                    hyparview::Output::Send { to, message } => {
                        self.send(name, to, Frame::Membership(message));
                    }
                    hyparview::Output::SetTimer { after_ms, .. } => {
                        self.set_timer(now, after_ms, Timer::Shuffle(name.to_string()));
                    }
                    hyparview::Output::NeighborUp(p) => {
                        if let Some(plum) = self.scope_mut(name).and_then(|s| s.plum.as_mut()) {
                            plum.neighbor_up(p);
                        }
                        if name == CLUSTER {
                            self.announce_once();
                        }
                    }
                    hyparview::Output::NeighborDown(p) => {
                        if let Some(plum) = self.scope_mut(name).and_then(|s| s.plum.as_mut()) {
                            plum.neighbor_down(&p);
                        }
                    }
                }
            }
            progressed |= self.drain_plumtree(name, None, now);
            if !progressed {
                return;
            }
        }
    }

    /// Sends a scope's Plumtree messages and keeps what it delivers (from
    /// the peer with `node_id`) for the next flush.
    fn drain_plumtree(&mut self, name: &str, node_id: Option<[u8; 16]>, now: Now) -> bool {
        let mut progressed = false;
        let mut delivered = Vec::new();
        while let Some(out) = self
            .scope_mut(name)
            .and_then(|s| s.plum.as_mut())
            .and_then(|p| p.poll_output())
        {
            progressed = true;
            match out {
                plumtree::Output::Send { to, message } => {
                    self.send(name, to, Frame::Broadcast(message));
                }
                plumtree::Output::SetTimer { after_ms, .. } => {
                    self.set_timer(now, after_ms, Timer::Tick(name.to_string()));
                }
                plumtree::Output::Deliver { id, payload, .. } => delivered.push((id, payload)),
            }
        }
        let origin = Origin::Peer(node_id.unwrap_or([0; 16]));
        for (id, payload) in delivered {
            self.delivered_bytes += payload.len() + id.key.len();
            self.deliveries
                .push((origin, id.full_prefix, id.key, payload));
        }
        self.stats.deliveries_peak = self.stats.deliveries_peak.max(self.deliveries.len() as u64);
        progressed
    }

    /// Merges encoded objects from a peer, in commits that stay under the
    /// engine's limits; undecodable objects are skipped (a peer cannot
    /// make this node fail). False if a commit failed: the caller must not
    /// acknowledge.
    fn merge(&mut self, origin: Origin, items: Vec<Encoded>, now: Now) -> bool {
        let groups = self
            .merge_chunks(items.into_iter(), now)
            .into_iter()
            .map(|chunk| (origin, chunk))
            .collect();
        self.commit_merges(groups)
    }

    /// Decodes objects and splits them into merge commits of at most
    /// `MERGE_BYTES_MAX` and `MERGE_KEYS_MAX`; skips what cannot be
    /// decoded or is refused (`validate.rs`), and deletes this node
    /// already collected.
    fn merge_chunks(
        &mut self,
        items: impl Iterator<Item = Encoded>,
        now: Now,
    ) -> Vec<Vec<Incoming>> {
        let mut chunks = Vec::new();
        let mut batch = Vec::new();
        let mut batch_bytes = 0usize;
        let clock = validate::Clock::of(now.wall_ms, self.config.max_clock_skew);
        for (fp, key, bytes) in items {
            let Ok(fp) = FullPrefix::parse(&fp) else {
                continue;
            };
            // Only what this node serves is stored: a peer with an older
            // table may still send the rest.
            if !self
                .table
                .table
                .serves(&NodeId::from_bytes(self.node_id), &fp)
            {
                self.stats.unserved_dropped += 1;
                continue;
            }
            let object = match validate::decode_merged(&bytes, clock) {
                Ok(o) => o,
                Err(r) => {
                    let what = format!("{fp}/{}: {r}", String::from_utf8_lossy(&key));
                    self.outputs.push_back(Output::Refused {
                        reason: r.reason(),
                        what,
                    });
                    continue;
                }
            };
            #[cfg(feature = "mutations")]
            if self.config.mutation == Mutation::SkipSiblings && object.values().len() > 1 {
                continue;
            }
            // A delete this node already collected (or something older)
            // is not stored again: only a write it has not seen is. While
            // peers still offer it, it is remembered on: forgotten, it
            // would be stored again and wait to be collected anew, and the
            // nodes would pass it around for ever (found by the simulator).
            let slot = (fp, key);
            if let Some((context, at)) = self.collected.get_mut(&slot)
                && descends(context, &object.context())
            {
                *at = now.ms;
                continue;
            }
            if batch_bytes + bytes.len() > MERGE_BYTES_MAX || batch.len() >= MERGE_KEYS_MAX {
                chunks.push(std::mem::take(&mut batch));
                batch_bytes = 0;
            }
            batch_bytes += bytes.len() + slot.1.len();
            batch.push((slot.0, slot.1, object));
        }
        if !batch.is_empty() {
            chunks.push(batch);
        }
        chunks
    }

    /// Stores merge commits, queued together so that they share a sync.
    /// False if any failed.
    fn commit_merges(&mut self, groups: Vec<(Origin, Vec<Incoming>)>) -> bool {
        if groups.is_empty() {
            return true;
        }
        let mut ok = true;
        for e in self
            .meta
            .merge_all(groups)
            .into_iter()
            .filter_map(Result::err)
        {
            tracing::warn!("cannot merge objects from a peer: {e}");
            self.stats.merge_failures += 1;
            ok = false;
        }
        self.note_identity_conflicts();
        ok
    }

    /// Says so when merges met objects that another directory wrote under
    /// this node's id (the store skipped them): once per conflict kept.
    fn note_identity_conflicts(&mut self) {
        let store = self.meta.store();
        let count = store.identity_conflict_count();
        if count <= self.stats.identity_conflicts {
            return;
        }
        let seen = usize::try_from(self.stats.identity_conflicts).unwrap_or(usize::MAX);
        for c in store.identity_conflicts().iter().skip(seen) {
            let from = match c.origin {
                Origin::Peer(id) => NodeId::from_bytes(id).to_string(),
                Origin::Local => "this node".into(),
            };
            tracing::error!(
                "node {} received {}/{} from node {from} holding a value under this node's id that it never wrote: another data directory uses this node's id (a copy or a restored backup). Run `chorus init --new-identity` in the copy's data directory (see docs/identity.md)",
                self.node_id(),
                c.full_prefix,
                String::from_utf8_lossy(&c.key)
            );
        }
        self.stats.identity_conflicts = count;
    }

    /// Links to `peer` in scope `name`'s overlay (at most once per
    /// `REJOIN_MS`).
    fn link_after_stale_repair(&mut self, name: &str, peer: &Peer, now: Now) {
        let recent = self
            .last_link
            .is_some_and(|t| now.ms.saturating_sub(t) < REJOIN_MS);
        let Some(hpv) = self.scope_mut(name).and_then(|s| s.hpv.as_mut()) else {
            return;
        };
        if recent || hpv.active_view().contains(peer) {
            return;
        }
        hpv.connect(peer.clone());
        self.last_link = Some(now.ms);
        self.stats.overlay_links += 1;
    }

    fn collect_interval_ms(&self) -> u64 {
        (ms(self.config.tombstone_grace) / 10).clamp(200, 60_000)
    }

    /// The current members other than this node (those that left are not).
    fn other_members(&self) -> Vec<&Peer> {
        self.members
            .iter()
            .filter(|m| **m != self.config.me && !self.left.contains(*m))
            .collect()
    }

    /// Removes the tombstones every current member has: see
    /// `docs/tombstones.md` for the rule and why a node that was away
    /// cannot bring the value back.
    fn collect_tombstones(&mut self, now: Now) {
        // Every tick, not only when something is collected: a remembered
        // tombstone must be forgotten in time, or a peer still holding it
        // is refused it for good (the simulator found the divergence).
        self.forget_old_collected(now);
        let grace = ms(self.config.tombstone_grace);
        #[cfg(feature = "mutations")]
        let early = self.config.mutation == Mutation::CollectEarly;
        #[cfg(not(feature = "mutations"))]
        let early = false;
        // Per scope, the oldest moment every member has finished an
        // exchange since (`None`: some member has not yet): a tombstone
        // that arrived before it has reached every member of its scope.
        // A channel this node is leaving collects nothing: its data goes
        // whole once handed off.
        let horizons: BTreeMap<String, Option<u64>> = self
            .scopes()
            .map(|(name, scope)| {
                let h = if scope.is_serving() {
                    self.scope_members(name)
                        .iter()
                        .map(|m| scope.synced.get(m).copied())
                        .try_fold(u64::MAX, |acc, s| s.map(|s| acc.min(s)))
                } else {
                    None
                };
                (name.to_string(), h)
            })
            .collect();
        let ready: Vec<(Slot, u64)> = self
            .tombstones
            .iter()
            .filter(|((fp, _), held)| {
                let horizon = horizons.get(&self.scope_name(fp)).copied().flatten();
                now.ms.saturating_sub(held.arrived) >= grace
                    && (early || horizon.is_some_and(|h| h > held.arrived))
            })
            .map(|(k, held)| (k.clone(), held.hash))
            .take(MERGE_KEYS_MAX)
            .collect();
        if ready.is_empty() {
            return;
        }
        // Under the writer lock: only the very version that waited goes (a
        // write or another delete since then keeps the key), and the
        // context remembered is the one removed.
        let result = self.meta.store().update_returning(move |snap| {
            let mut writes = Vec::new();
            let mut gone: Vec<(Slot, Context)> = Vec::new();
            for ((fp, key), hash) in ready {
                let Some(bytes) = snap.get(&fp, &key) else {
                    continue;
                };
                if object_hash(&key, &bytes) != hash {
                    continue;
                }
                let Ok(object) = Object::decode(&bytes) else {
                    continue;
                };
                writes.push(chorus_store::Write::delete(&fp, &key));
                gone.push(((fp, key), object.context()));
            }
            Ok((writes, gone))
        });
        let gone = match result {
            Ok((_, gone)) => gone,
            Err(e) => {
                tracing::warn!("cannot collect tombstones: {e}");
                return;
            }
        };
        self.stats.tombstones_collected += gone.len() as u64;
        for (k, context) in gone {
            self.tombstones.remove(&k);
            self.collected.insert(k, (context, now.ms));
        }
        self.forget_old_collected(now);
    }

    /// Remembers when an operation log's greatest operation was seen here:
    /// `key` is the log's head (`path`, whose version-1 form carries
    /// operations inline) or one of its records (`path\0...`).
    fn mark_oplog(&mut self, slot: Slot, value: &[u8], at: u64) {
        let base = chorus_store::group_base(&slot.1);
        let top = if base.len() < slot.1.len() {
            record_top(value)
        } else {
            inline_top(value)
        };
        let Some(top) = top else {
            return;
        };
        let slot = (slot.0, base.to_vec());
        if self.oplog_marks.len() >= OPLOGS_TRACKED_MAX && !self.oplog_marks.contains_key(&slot) {
            return;
        }
        let marks = self.oplog_marks.entry(slot).or_default();
        if marks.back().is_some_and(|(_, k)| *k >= top) {
            return;
        }
        marks.push_back((at, top));
        while marks.len() > OPLOG_MARKS_MAX {
            marks.pop_front();
        }
    }

    /// Folds old operations into checkpoints: an operation log is pruned
    /// up to the greatest operation this node had at a moment M such that
    /// M is at least a grace period ago and every current member has since
    /// started (and finished) an exchange with this node. Such an exchange
    /// left the member with every one of those operations and gave this
    /// node every operation the member had, and a member's later pushes
    /// sort after what it had seen; so nothing a member holds is folded
    /// out of order. A node with no other member prunes after the grace
    /// period alone. See `docs/oplogs.md`.
    fn prune_oplogs(&mut self, now: Now) {
        if self.oplog_marks.is_empty() {
            return;
        }
        let Some(grace_ago) = now.ms.checked_sub(ms(self.config.tombstone_grace)) else {
            return;
        };
        // Per scope: the grace period ago, or the oldest moment every
        // member of the scope has exchanged since, whichever is earlier.
        let horizons: BTreeMap<String, Option<u64>> = self
            .scopes()
            .map(|(name, scope)| {
                let h = if scope.is_serving() {
                    self.scope_members(name)
                        .iter()
                        .map(|m| scope.synced.get(m).copied())
                        .try_fold(grace_ago, |acc, s| s.map(|s| acc.min(s)))
                } else {
                    None
                };
                (name.to_string(), h)
            })
            .collect();
        let ready: Vec<(Slot, OpKey)> = self
            .oplog_marks
            .iter()
            .filter_map(|(slot, marks)| {
                let horizon = horizons.get(&self.scope_name(&slot.0)).copied().flatten()?;
                marks
                    .iter()
                    .rev()
                    .find(|(at, _)| *at <= horizon)
                    .map(|(_, k)| (slot.clone(), k.clone()))
            })
            .collect();
        for (slot, upto) in ready {
            let path = String::from_utf8_lossy(&slot.1).into_owned();
            match self.oplogs.prune(&slot.0, &path, &upto) {
                Ok(n) => self.stats.oplog_ops_folded += n as u64,
                // An unknown (user) type or a reducer error: left as is.
                Err(e) => tracing::warn!("cannot prune the log {}/{path}: {e}", slot.0),
            }
            if let Some(marks) = self.oplog_marks.get_mut(&slot) {
                marks.retain(|(_, k)| *k > upto);
                if marks.is_empty() {
                    self.oplog_marks.remove(&slot);
                }
            }
        }
    }

    fn forget_old_collected(&mut self, now: Now) {
        let horizon = ms(self.config.tombstone_grace).saturating_mul(4);
        self.collected
            .retain(|_, (_, at)| now.ms.saturating_sub(*at) < horizon);
        let excess = self.collected.len().saturating_sub(COLLECTED_MAX);
        if excess > 0 {
            // The oldest go, found in one pass.
            let mut by_age: Vec<(u64, Slot)> = self
                .collected
                .iter()
                .map(|(k, (_, at))| (*at, k.clone()))
                .collect();
            by_age.sort();
            for (_, k) in by_age.into_iter().take(excess) {
                self.collected.remove(&k);
            }
        }
    }

    /// A member record changed (here or by replication).
    fn on_member_record(&mut self, key: &[u8], value: Option<&[u8]>, now: Now) {
        let Ok(addr) = String::from_utf8(key.to_vec()) else {
            return;
        };
        let member = value
            .and_then(|b| Object::decode(b).ok())
            .and_then(|o| o.lww_value().and_then(|v| v.bytes().map(<[u8]>::to_vec)))
            .and_then(|b| members::decode(&b));
        let Some(member) = member else { return };
        self.apply_member(addr, &member, now);
    }

    /// What a member record means here: a member to exchange with, one
    /// that left, or this node leaving.
    fn apply_member(&mut self, addr: Peer, member: &members::Member, now: Now) {
        match NodeId::parse_hex(&member.node) {
            Some(id) if !member.has_left() => {
                if self.member_ids.len() < MEMBERS_MAX || self.member_ids.contains_key(&addr) {
                    self.member_ids.insert(addr.clone(), id);
                }
            }
            _ => {
                self.member_ids.remove(&addr);
            }
        }
        self.prune_channel_peers();
        if !member.has_left() {
            self.left.remove(&addr);
            if addr != self.config.me {
                self.note_member(addr);
            }
            return;
        }
        if addr == self.config.me {
            if self.leaving.is_none() {
                tracing::info!("this node left the cluster; stopping");
                self.leaving = Some(now.ms);
            }
            return;
        }
        self.members.remove(&addr);
        self.left.insert(addr.clone());
        self.fail_peer(&addr);
    }

    /// Starts one exchange in every scope, each with a random member of
    /// it.
    fn start_exchange(&mut self, now: Now) {
        let known: Vec<Peer> = self
            .active_view()
            .iter()
            .chain(self.passive_view())
            .cloned()
            .collect();
        for p in known {
            self.note_member(p);
        }
        self.members.remove(&self.config.me);
        for gone in &self.left {
            self.members.remove(gone);
        }
        let names: Vec<String> = self.scopes().map(|(n, _)| n.to_string()).collect();
        for name in names {
            self.start_exchange_in(&name, now);
        }
    }

    fn start_exchange_in(&mut self, name: &str, now: Now) {
        let peers = self.scope_members(name);
        let Some(peer) = self.rng.pick(&peers).cloned() else {
            return;
        };
        let Some(scope) = self.scope(name) else {
            return;
        };
        let (exchange, message) = Exchange::initiate(&scope.tree, ExchangeConfig::default());
        let id = self.rng.next_u64();
        if self.sessions.len() >= SESSIONS_MAX {
            self.sessions.pop_front();
        }
        self.sessions.push_back(Session {
            scope: name.to_string(),
            peer: peer.clone(),
            id,
            initiator: true,
            exchange,
            started: now.ms,
        });
        self.stats.exchanges += 1;
        self.send(
            name,
            peer,
            Frame::Exchange {
                session: id,
                from_initiator: true,
                message,
            },
        );
    }

    fn session_index(&self, scope: &str, peer: &Peer, id: u64, initiator: bool) -> Option<usize> {
        self.sessions.iter().position(|s| {
            s.scope == scope && s.peer == *peer && s.id == id && s.initiator == initiator
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn on_exchange(
        &mut self,
        name: &str,
        peer: Peer,
        node_id: [u8; 16],
        session: u64,
        from_initiator: bool,
        message: merkle::Message<Vec<u8>, Vec<u8>>,
        now: Now,
    ) {
        let mine = !from_initiator;
        if let merkle::Message::Begin { root } = &message
            && let Some(scope) = self.scope_mut(name)
            && (scope.peer_keys.len() < MEMBERS_MAX || scope.peer_keys.contains_key(&peer))
        {
            scope.peer_keys.insert(peer.clone(), (root.count, now.ms));
        }
        let pos = match self.session_index(name, &peer, session, mine) {
            Some(p) => p,
            // Only a Begin opens a session: a step for a session this node
            // does not have (evicted, or from before a restart) would
            // otherwise look like a whole exchange that found nothing.
            None if from_initiator && matches!(message, merkle::Message::Begin { .. }) => {
                if self.sessions.len() >= SESSIONS_MAX {
                    self.sessions.pop_front();
                }
                self.sessions.push_back(Session {
                    scope: name.to_string(),
                    peer: peer.clone(),
                    id: session,
                    initiator: false,
                    exchange: Exchange::respond(ExchangeConfig::default()),
                    started: now.ms,
                });
                self.sessions.len() - 1
            }
            None => return,
        };
        let Ok(snapshot) = self.meta.store().snapshot() else {
            return;
        };
        let tree = match name {
            CLUSTER => &self.cluster.tree,
            _ => match self.channels.get(name) {
                Some(s) => &s.tree,
                None => return,
            },
        };
        let Some(s) = self.sessions.get_mut(pos) else {
            return;
        };
        let reply = s
            .exchange
            .handle(tree, message, &mut SnapshotObjects(&snapshot));
        let mut repairs = Vec::new();
        while let Some(r) = s.exchange.poll_repair() {
            let (Ok(p), Ok(sub)) = (String::from_utf8(r.prefix), String::from_utf8(r.sub)) else {
                continue;
            };
            repairs.push((format!("{p}/{sub}"), r.key, r.object));
        }
        let (done, started) = (s.exchange.is_done(), s.started);
        if !repairs.is_empty() {
            self.stats.repaired += repairs.len() as u64;
            if repairs
                .iter()
                .any(|(_, _, bytes)| missed_by_broadcast(bytes, now.wall_ms))
            {
                self.link_after_stale_repair(name, &peer, now);
            }
            if !self.merge(Origin::Peer(node_id), repairs, now) {
                // Not stored, so not acknowledged: the exchange ends here
                // unanswered, and the peer counts it as unfinished.
                if let Some(i) = self.session_index(name, &peer, session, mine) {
                    self.sessions.remove(i);
                }
                return;
            }
        }
        if done {
            if let Some(i) = self.session_index(name, &peer, session, mine) {
                self.sessions.remove(i);
            }
            self.stats.exchanges_done += 1;
            self.last_exchange.insert(peer.clone(), now.ms);
            let members = self.scope_members(name);
            let member = members.contains(&peer);
            let recent = now
                .ms
                .saturating_sub(ms(self.config.exchange_interval).saturating_mul(4));
            if let Some(scope) = self.scope_mut(name) {
                scope.synced.insert(peer.clone(), started);
                // Joined once an exchange with a member, opened after this
                // node began serving, has finished (it holds what that
                // member held then), and it holds as many keys as any peer
                // last said it held (a member that was joining too held
                // less than the nodes handing the channel off).
                if let State::Joining { since } = scope.state
                    && member
                    && started >= since
                    && scope.tree.len() >= scope.target_keys(&members, recent)
                {
                    scope.state = State::Ready;
                }
            }
            // A hand-off may just have completed: drop at once rather
            // than at the next collection tick (up to a minute away).
            if self.scope(name).is_some_and(|s| !s.is_serving()) {
                self.drop_left_channels();
            }
        }
        if let Some(message) = reply {
            self.send(
                name,
                peer,
                Frame::Exchange {
                    session,
                    from_initiator: mine,
                    message,
                },
            );
        }
    }
}

/// Members' node ids by address, from their records (those that left
/// are not members).
fn member_ids(records: &BTreeMap<Peer, members::Member>) -> BTreeMap<Peer, NodeId> {
    records
        .iter()
        .filter(|(_, m)| !m.has_left())
        .filter_map(|(a, m)| Some((a.clone(), NodeId::parse_hex(&m.node)?)))
        .take(MEMBERS_MAX)
        .collect()
}

/// Tells a scope's protocols that `peer` is gone from it.
fn forget_peer(scope: &mut Scope, peer: &Peer) {
    if let Some(hpv) = scope.hpv.as_mut() {
        hpv.peer_failed(peer);
    }
    if let Some(plum) = scope.plum.as_mut() {
        plum.neighbor_down(peer);
    }
}

/// How many of `members` finished an exchange in `scope` that started
/// after `since`.
fn handed_off(scope: &Scope, members: &[Peer], since: u64) -> usize {
    members
        .iter()
        .filter(|m| scope.synced.get(*m).is_some_and(|s| *s > since))
        .count()
}

/// True when an object's newest value was written longer ago than
/// broadcast takes: anti-entropy brought what broadcast missed.
fn missed_by_broadcast(bytes: &[u8], wall_ms: u64) -> bool {
    let Ok(object) = Object::decode(bytes) else {
        return false;
    };
    let newest = object
        .values()
        .iter()
        .map(|v| v.timestamp.ms())
        .max()
        .unwrap_or(0);
    wall_ms.saturating_sub(newest) > STALE_REPAIR_MS
}

fn find_tombstones(snapshot: &Snapshot, now_ms: u64) -> BTreeMap<Slot, Held> {
    snapshot
        .iter()
        .filter(|(_, _, e)| Object::decode(&e.value).is_ok_and(|o| o.is_tombstone()))
        .map(|(fp, key, e)| {
            let held = Held {
                arrived: now_ms,
                hash: object_hash(key.as_bytes(), &e.value),
            };
            ((fp.clone(), key.as_bytes().to_vec()), held)
        })
        .collect()
}

/// The Merkle tree of every object in a snapshot, as replicas compare
/// them.
pub fn build_tree(snapshot: &Snapshot) -> MerkleTree<Vec<u8>> {
    let mut tree = MerkleTree::new();
    for (fp, key, entry) in snapshot.iter() {
        let key = key.as_bytes();
        tree.update(
            fp.prefix().as_bytes(),
            fp.subprefix().as_bytes(),
            &key.to_vec(),
            key_hash(key),
            Some(object_hash(key, &entry.value)),
        );
    }
    tree
}

/// The operation an operation record holds, if `value` is one.
fn record_top(value: &[u8]) -> Option<OpKey> {
    // A cheap look first (this runs for every key at start and every
    // change after): most values are not operation records.
    let tag = chorus_core::oplog::RECORD_PREFIX;
    if !value.windows(tag.len()).any(|w| w == tag) {
        return None;
    }
    let object = Object::decode(value).ok()?;
    let bytes = object.values().into_iter().find_map(|v| v.bytes())?;
    let (_, op) = chorus_core::oplog::Op::decode_record(bytes).ok()?;
    Some(op.key())
}

/// The greatest operation held inline by a log head of format version 1.
fn inline_top(value: &[u8]) -> Option<OpKey> {
    let tag = chorus_core::oplog::ENCODED_PREFIX;
    if !value.windows(tag.len()).any(|w| w == tag) {
        return None;
    }
    let object = Object::decode(value).ok()?;
    let mut log = chorus_core::oplog::OpLog::default();
    for v in object.values() {
        let bytes = v.bytes().filter(|b| b.starts_with(tag))?;
        let one = chorus_core::oplog::OpLog::decode(bytes).ok()?;
        let _late = log.merge(&one);
    }
    log.ops().last().map(chorus_core::oplog::Op::key)
}
