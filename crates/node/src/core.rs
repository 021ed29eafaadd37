//! The core task: the gossip state machines, driven by connection events,
//! timers and the change feed.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use chorus_core::object::{Object, context_from_string, context_to_string, descends};
use chorus_core::object_hash;
use chorus_core::oplog::OpKey;
use chorus_core::{FullPrefix, key_hash};
use chorus_gossip::Rng;
use chorus_gossip::hyparview::{self, HyParView};
use chorus_gossip::merkle::{Exchange, ExchangeConfig, MerkleTree, ObjectSource};
use chorus_gossip::plumtree::{self, Application, Plumtree};
use chorus_store::{Cursor, Feed, Incoming, Metadata, Options, Origin, Snapshot, Store, SyncMode};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use std::sync::{Arc, Mutex};

use crate::join::{Identity, Role};
use crate::net::{self, ConnIds, Event, PEER_QUEUE};
use crate::service::{ClusterView, Command, Service};
use crate::wire::{BroadcastId, Frame, Hello, Peer};
use crate::{Config, Error};

/// Events waiting for the core; connection tasks wait when it is full.
const EVENT_QUEUE: usize = 4096;
/// Commits read from the feed per poll.
const FEED_BATCH: usize = 1024;
/// Open anti-entropy sessions; the oldest is dropped beyond.
const SESSIONS_MAX: usize = 8;
/// How often a node with no active peer joins again.
const REJOIN: Duration = Duration::from_secs(5);
/// An object anti-entropy brings whose newest value is older than this
/// was missed by broadcast: the overlay may be split from that peer's, so
/// this node links to it (the simulator's policy, see crates/sim).
const STALE_REPAIR: Duration = Duration::from_secs(2);
/// Redialling a peer that could not be reached waits 200 ms, doubling
/// with every failure up to 30 s, each wait scaled by a random 0.5-1.5 so
/// that nodes do not redial in step.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A merge commit's share of the engine's limits (16 MiB, 100,000
/// writes by default), so a large exchange step is stored in several.
const MERGE_BYTES_MAX: usize = 4 << 20;
const MERGE_KEYS_MAX: usize = 10_000;
/// Most collected tombstones remembered.
const COLLECTED_MAX: usize = 1 << 20;
/// Operation logs whose marks are kept, and marks per log.
const OPLOGS_TRACKED_MAX: usize = 100_000;
const OPLOG_MARKS_MAX: usize = 16;
/// Most further events handled before the objects they delivered are
/// merged: what arrives together is stored by commits sharing one sync.
const EVENTS_PER_MERGE: usize = 256;

/// An object Plumtree delivered, waiting to be merged: origin, full
/// prefix, key, encoded object.
type Delivery = (Origin, String, Vec<u8>, Vec<u8>);
/// An object as a peer sent it: full prefix, key, encoded object.
type Encoded = (String, Vec<u8>, Vec<u8>);

/// A tombstone held here: when this version arrived, and its hash (so
/// that only this version is removed, never one that replaced it).
#[derive(Debug, Clone, Copy)]
struct Held {
    arrived: Instant,
    hash: u64,
}

/// When an operation log's greatest operation was seen here, oldest first.
type Marks = VecDeque<(Instant, OpKey)>;

/// A tombstone removed under the writer lock, with its context.
type Removed = ((FullPrefix, Vec<u8>), chorus_core::object::Context);

/// A peer that could not be dialled, and when to try it again.
struct Backoff {
    failures: u32,
    until: Instant,
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
    /// Frames dropped because a peer's queue was full.
    pub dropped: u64,
    /// Overlay links made because anti-entropy brought what broadcast
    /// missed.
    pub overlay_links: u64,
    /// Tombstones removed once every member had them.
    pub tombstones_collected: u64,
    /// Operations folded into operation logs' checkpoints.
    pub oplog_ops_folded: u64,
    /// Reserved objects a joiner sent and this node refused (see
    /// `join.rs`).
    pub joiner_refused: u64,
}

/// Most peers kept in the member set anti-entropy picks from.
const MEMBERS_MAX: usize = 16_384;

#[derive(Debug, Clone, Copy)]
enum Timer {
    Shuffle,
    Tick,
    Rejoin,
    Exchange,
    CollectTombstones,
}

struct Link {
    conn: u64,
    tx: mpsc::Sender<Frame>,
    outbound: bool,
    node_id: Option<[u8; 16]>,
}

struct Session {
    peer: Peer,
    id: u64,
    initiator: bool,
    exchange: Exchange<Vec<u8>, Vec<u8>>,
    /// When it started: the tree it compared held every tombstone that
    /// had arrived before.
    started: Instant,
}

pub(crate) struct Core {
    config: Config,
    me: Peer,
    node_id: [u8; 16],
    meta: Metadata,
    hpv: HyParView<Peer>,
    plum: Plumtree<Peer, BroadcastId, Vec<u8>>,
    tree: MerkleTree<Vec<u8>>,
    cursor: Cursor,
    sessions: VecDeque<Session>,
    links: HashMap<Peer, Link>,
    timers: BTreeMap<(Instant, u64), Timer>,
    timer_seq: u64,
    started: Instant,
    rng: Rng,
    ids: ConnIds,
    events: mpsc::Sender<Event>,
    inbox: Option<mpsc::Receiver<Event>>,
    /// Delivered by broadcast, not yet merged (at most about
    /// `MERGE_BYTES_MAX` before a merge).
    deliveries: Vec<Delivery>,
    delivered_bytes: usize,
    stats: Stats,
    view: Arc<Mutex<ClusterView>>,
    last_exchange: HashMap<Peer, Instant>,
    /// Every peer this node has heard of (seeds, connections, views): what
    /// anti-entropy picks from, so data converges even where the overlay
    /// split. Never shrinks (the member list under `$cluster` will replace
    /// it, with leaving).
    members: BTreeSet<Peer>,
    /// Whether `members` reaching its bound was logged.
    members_full_logged: bool,
    last_link: Option<Instant>,
    command_inbox: Option<mpsc::Receiver<Command>>,
    /// Peers not to dial before a time (at most one entry per member).
    backoff: HashMap<Peer, Backoff>,
    /// Members that left (from `$cluster/members`): never dialled.
    left: BTreeSet<Peer>,
    /// When this node itself left: it stops shortly after, once its
    /// record has gone out.
    leaving: Option<Instant>,
    /// Mutual TLS with peers, or plaintext on loopback.
    tls: Option<crate::tls::Tls>,
    /// What this node says and holds in its handshakes.
    shake: Arc<net::Handshake>,
    /// Whether this run has written its member record since its first link.
    announced: bool,
    /// Woken by the API after a local commit: read the feed now.
    committed: Arc<tokio::sync::Notify>,
    /// Tombstones held here, by key, with when they arrived (this run:
    /// those found at start count as arriving then).
    tombstones: BTreeMap<(FullPrefix, Vec<u8>), Held>,
    /// Per operation log: when its greatest operation was seen here, a
    /// few marks each, oldest first (see `prune_oplogs`).
    oplog_marks: HashMap<(FullPrefix, Vec<u8>), Marks>,
    /// Operation logs (with the compiled script reducers), shared with the API.
    oplogs: chorus_store::oplog::Oplogs,
    /// The operations the HTTP API and the broker adapt.
    service: Service,
    /// When an exchange that finished last started, per peer: everything
    /// that arrived here before it has reached that peer.
    synced: HashMap<Peer, Instant>,
    /// Tombstones collected here recently, with their contexts: a peer
    /// that has not collected its copy yet sends it back, and it is not
    /// stored again. Entries expire after four grace periods, and at most
    /// `COLLECTED_MAX` are kept (the oldest go first).
    collected: BTreeMap<(FullPrefix, Vec<u8>), (chorus_core::object::Context, Instant)>,
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

/// The store's objects for the exchange, from one snapshot.
struct SnapshotObjects<'a>(&'a Snapshot);

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

impl Core {
    pub(crate) fn open(config: &Config, me: Peer) -> Result<Core, Error> {
        let tls = config.tls.as_deref().map(crate::tls::load).transpose()?;
        let store = Store::open(
            &config.dir,
            Options {
                create: true,
                // Concurrent HTTP writes and merges share one sync; each
                // is still acknowledged only after the sync that covers it.
                sync: SyncMode::Batch,
                ..Options::default()
            },
        )?;
        let node_id = *store.node_id().as_bytes();
        let meta = Metadata::new(store.clone());
        if let Some(tls) = &tls {
            tls.revocations().refresh(&meta);
        }
        crate::members::announce(&meta, &me, store.node_id())?;
        let records = crate::members::read_all(&meta)?;
        let left: BTreeSet<Peer> = records
            .iter()
            .filter(|(_, m)| m.has_left())
            .map(|(a, _)| a.clone())
            .collect();
        let known: Vec<Peer> = records
            .iter()
            .filter(|(a, m)| !m.has_left() && **a != me)
            .map(|(a, _)| a.clone())
            .collect();
        let seed = config
            .seed
            .unwrap_or_else(|| u64::from_le_bytes(node_id[..8].try_into().unwrap_or([7; 8])));
        let cursor = store.cursor()?;
        let snapshot = store.snapshot()?;
        let tree = build_tree(&snapshot);
        let (events, inbox) = mpsc::channel(EVENT_QUEUE);
        let me_for_members = me.clone();
        let (commands, command_inbox) = mpsc::channel(16);
        let mut service =
            Service::new(meta.clone(), config.auth, commands.clone()).map_err(Error::Io)?;
        service.max_clock_skew = config.max_clock_skew;
        let (oplogs, committed) = (service.oplogs.clone(), service.committed.clone());
        let token = config
            .join_token
            .as_deref()
            .map(crate::join::JoinToken::parse)
            .transpose()
            .map_err(Error::Config)?;
        let shake = Arc::new(net::Handshake {
            hello: Hello::new(node_id, me.clone(), config.auth || token.is_some()),
            auth: service.auth.clone(),
            token,
            required: config.auth,
            tls: tls.is_some(),
        });
        let mut core = Core {
            config: config.clone(),
            hpv: HyParView::new(me.clone(), hyparview::Config::default(), seed),
            plum: Plumtree::new(me.clone(), plumtree::Config::default()),
            me,
            node_id,
            meta,
            tree,
            cursor,
            sessions: VecDeque::new(),
            links: HashMap::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            started: Instant::now(),
            rng: Rng::new(seed ^ 0x5EED),
            ids: ConnIds::default(),
            events,
            inbox: Some(inbox),
            deliveries: Vec::new(),
            delivered_bytes: 0,
            stats: Stats::default(),
            view: service.view.clone(),
            last_exchange: HashMap::new(),
            members: config
                .join
                .iter()
                .chain(&known)
                .filter(|p| **p != me_for_members)
                .cloned()
                .collect(),
            members_full_logged: false,
            last_link: None,
            command_inbox: Some(command_inbox),
            backoff: HashMap::new(),
            left,
            leaving: None,
            tls,
            shake,
            tombstones: find_tombstones(&snapshot),
            synced: HashMap::new(),
            collected: BTreeMap::new(),
            oplog_marks: HashMap::new(),
            oplogs,
            service,
            committed,
            announced: false,
        };
        // Logs already here wait a grace period from now, like tombstones.
        for (fp, key, e) in snapshot.iter() {
            core.mark_oplog((fp.clone(), key.as_bytes().to_vec()), &e.value);
        }
        Ok(core)
    }

    /// The service the HTTP API and the broker adapt.
    pub(crate) fn service(&self) -> Service {
        self.service.clone()
    }

    /// Publishes the views and counters for the API.
    fn publish_view(&self) {
        let p = self.plum.stats();
        let mut last: Vec<(String, f64)> = self
            .last_exchange
            .iter()
            .map(|(peer, at)| (peer.clone(), at.elapsed().as_secs_f64()))
            .collect();
        last.sort_by(|a, b| a.0.cmp(&b.0));
        let view = ClusterView {
            node: chorus_core::NodeId::from_bytes(self.node_id).to_string(),
            gossip: self.me.clone(),
            active: self.hpv.active_view().to_vec(),
            passive: self.hpv.passive_view().to_vec(),
            eager: self.plum.eager_peers().to_vec(),
            lazy: self.plum.lazy_peers().to_vec(),
            last_exchange: last,
            members: self
                .members
                .iter()
                .map(|m| (m.clone(), "up"))
                .chain(self.left.iter().map(|m| (m.clone(), "left")))
                .collect(),
            counters: vec![
                ("commits_broadcast_total", self.stats.broadcasts),
                ("objects_received_total", self.stats.received),
                ("keys_repaired_total", self.stats.repaired),
                ("exchanges_total", self.stats.exchanges),
                ("frames_dropped_total", self.stats.dropped),
                ("overlay_links_total", self.stats.overlay_links),
                (
                    "tombstones_collected_total",
                    self.stats.tombstones_collected,
                ),
                ("tombstones_held", self.tombstones.len() as u64),
                ("oplog_ops_folded_total", self.stats.oplog_ops_folded),
                ("joiner_objects_refused_total", self.stats.joiner_refused),
                (
                    "peer_bytes_sent_total",
                    crate::wire::BYTES_SENT.load(std::sync::atomic::Ordering::Relaxed),
                ),
                ("broadcasts_sent_total", p.gossip_sent),
                ("grafts_total", p.grafts_sent),
                ("prunes_total", p.prunes_sent),
                ("duplicates_total", p.duplicates),
                ("feed_seq", self.cursor.seq()),
            ],
        };
        *self
            .view
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = view;
    }

    pub(crate) async fn run(
        mut self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), Error> {
        tokio::spawn(
            self.service
                .hub
                .clone()
                .run(self.meta.store().clone(), self.committed.clone()),
        );
        net::accept(
            listener,
            self.shake.clone(),
            self.tls.clone(),
            self.ids.clone(),
            self.events.clone(),
        );
        let (Some(mut inbox), Some(mut commands)) = (self.inbox.take(), self.command_inbox.take())
        else {
            return Err(Error::Config("the core ran twice".into()));
        };
        self.join_seeds();
        self.pump();
        self.set_timer(REJOIN, Timer::Rejoin);
        self.set_timer(self.config.exchange_interval, Timer::Exchange);
        self.set_timer(self.collect_interval(), Timer::CollectTombstones);
        let mut feed = tokio::time::interval(self.config.feed_interval);
        feed.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        let committed = self.committed.clone();
        loop {
            let next_timer = self.timers.keys().next().map(|(at, _)| *at);
            let sleep = tokio::time::sleep_until(
                next_timer
                    .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
                    .into(),
            );
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                Some(event) = inbox.recv() => {
                    self.on_event(event);
                    // Take what else has arrived, so that its objects are
                    // merged together below.
                    for _ in 0..EVENTS_PER_MERGE {
                        if self.delivered_bytes >= MERGE_BYTES_MAX {
                            break;
                        }
                        let Ok(event) = inbox.try_recv() else { break };
                        self.on_event(event);
                    }
                }
                Some(Command::Join(peer)) = commands.recv() => {
                    self.note_member(peer.clone());
                    self.hpv.join(peer);
                }
                () = committed.notified() => {
                    if let Err(e) = self.read_feed() {
                        tracing::warn!("cannot read the change feed: {e}");
                    }
                }
                _ = feed.tick() => {
                    if let Err(e) = self.read_feed() {
                        // Retried at the next tick; a persistent failure
                        // (a damaged log) shows here every time.
                        tracing::warn!("cannot read the change feed: {e}");
                    }
                    self.publish_view();
                    // Leaving: a moment for the record to go out, then stop.
                    if self.leaving.is_some_and(|t| t.elapsed() > Duration::from_secs(1)) {
                        return Ok(());
                    }
                }
                () = sleep => self.fire_timers(),
            }
            self.pump();
            self.merge_deliveries();
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn set_timer(&mut self, after: Duration, timer: Timer) {
        self.timer_seq += 1;
        self.timers
            .insert((Instant::now() + after, self.timer_seq), timer);
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some((&key, _)) = self.timers.first_key_value() {
            if key.0 > now {
                break;
            }
            let Some(timer) = self.timers.remove(&key) else {
                break;
            };
            match timer {
                Timer::Shuffle => self.hpv.handle_timer(hyparview::Timer::Shuffle),
                Timer::Tick => {
                    let now_ms = self.now_ms();
                    self.plum
                        .handle_timer(now_ms, plumtree::Timer::Tick, &mut Objects(&self.meta));
                }
                Timer::Rejoin => {
                    if self.hpv.active_view().is_empty() {
                        self.join_seeds();
                    }
                    self.set_timer(REJOIN, Timer::Rejoin);
                }
                Timer::Exchange => {
                    self.start_exchange();
                    self.set_timer(self.config.exchange_interval, Timer::Exchange);
                }
                Timer::CollectTombstones => {
                    self.collect_tombstones();
                    self.prune_oplogs();
                    self.set_timer(self.collect_interval(), Timer::CollectTombstones);
                }
            }
        }
    }

    fn join_seeds(&mut self) {
        let seeds: Vec<Peer> = self
            .config
            .join
            .iter()
            .filter(|s| **s != self.me)
            .cloned()
            .collect();
        if let Some(seed) = self.rng.pick(&seeds).cloned() {
            self.hpv.join(seed);
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Up {
                peer,
                node_id,
                conn,
                tx,
            } => self.on_up(peer, node_id, conn, tx),
            // A frame counts whichever connection brought it: the one that
            // loses when both nodes dialled still delivers what was queued
            // on it before it closes.
            Event::Frame {
                peer,
                node_id,
                role,
                mut frame,
            } => {
                // A joiner writes nothing reserved but its own member
                // record: it has not shown the cluster key.
                if role == Role::Joiner {
                    let them = Identity {
                        node_id: &node_id,
                        listen: &peer,
                    };
                    let before = self.stats.joiner_refused;
                    let keep =
                        crate::join::restrict(&mut frame, them, &mut self.stats.joiner_refused);
                    if self.stats.joiner_refused > before {
                        tracing::debug!(
                            "refused {} reserved objects from joiner {peer}",
                            self.stats.joiner_refused - before
                        );
                    }
                    if !keep {
                        return;
                    }
                }
                self.on_frame(peer, node_id, frame)
            }
            Event::Down { peer, conn } => {
                let Some(link) = self.links.get(&peer).filter(|l| l.conn == conn) else {
                    return;
                };
                if link.outbound && link.node_id.is_none() {
                    self.back_off(&peer);
                }
                self.links.remove(&peer);
                self.fail_peer(&peer);
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

    /// Keeps one connection per pair of nodes: when both dialled, the one
    /// dialled by the node with the smaller address survives, on both
    /// sides alike. The rule looks at addresses only, never at whether a
    /// dial has finished its handshake: two nodes deciding on different
    /// facts would each keep the connection the other dropped.
    fn on_up(&mut self, peer: Peer, node_id: [u8; 16], conn: u64, tx: Option<mpsc::Sender<Frame>>) {
        if peer != self.me {
            self.note_member(peer.clone());
        }
        self.backoff.remove(&peer);
        match tx {
            None => {
                if let Some(link) = self.links.get_mut(&peer).filter(|l| l.conn == conn) {
                    link.node_id = Some(node_id);
                }
            }
            Some(tx) => {
                let keep_mine = self
                    .links
                    .get(&peer)
                    .is_some_and(|l| l.outbound && self.me < peer);
                if !keep_mine {
                    self.links.insert(
                        peer,
                        Link {
                            conn,
                            tx,
                            outbound: false,
                            node_id: Some(node_id),
                        },
                    );
                }
            }
        }
    }

    fn on_frame(&mut self, peer: Peer, node_id: [u8; 16], frame: Frame) {
        match frame {
            Frame::Membership(m) => self.hpv.handle_message(peer, m),
            Frame::Broadcast(m) => {
                let now = self.now_ms();
                self.plum
                    .handle_message(now, peer, m, &mut Objects(&self.meta));
                self.drain_plumtree(Some(node_id));
            }
            Frame::Exchange {
                session,
                from_initiator,
                message,
            } => self.on_exchange(peer, node_id, session, from_initiator, message),
        }
    }

    /// Sends a frame, opening a connection if there is none. A full queue
    /// drops announcements first and data last.
    fn send(&mut self, peer: Peer, frame: Frame) {
        if peer == self.me {
            return;
        }
        if self.left.contains(&peer) || (self.tls.is_none() && !is_loopback(&peer)) {
            // Left, or beyond loopback without TLS: never dialled.
            self.fail_peer(&peer);
            return;
        }
        if !self.links.contains_key(&peer)
            && self
                .backoff
                .get(&peer)
                .is_some_and(|b| Instant::now() < b.until)
        {
            // Unreachable a moment ago: fail at once instead of redialling.
            self.stats.dropped += 1;
            self.fail_peer(&peer);
            return;
        }
        if !self.links.contains_key(&peer) {
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            let conn = self.ids.next();
            net::connect(
                peer.clone(),
                conn,
                self.shake.clone(),
                self.tls.clone(),
                rx,
                self.events.clone(),
            );
            self.links.insert(
                peer.clone(),
                Link {
                    conn,
                    tx,
                    outbound: true,
                    node_id: None,
                },
            );
        }
        let Some(link) = self.links.get(&peer) else {
            return;
        };
        if frame.is_lazy() && link.tx.capacity() < PEER_QUEUE / 2 {
            self.stats.dropped += 1;
            return;
        }
        match link.tx.try_send(frame) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.stats.dropped += 1,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.links.remove(&peer);
                self.fail_peer(&peer);
            }
        }
    }

    /// On the first link of this run, writes this node's member record
    /// again: the commit is broadcast, so every member learns of this node
    /// now rather than at its next exchange.
    fn announce_once(&mut self) {
        if self.announced {
            return;
        }
        self.announced = true;
        let (meta, me) = (self.meta.clone(), self.me.clone());
        let node = chorus_core::NodeId::from_bytes(self.node_id);
        if let Err(e) = tokio::task::block_in_place(|| crate::members::refresh(&meta, &me, node)) {
            tracing::warn!("cannot write this node's member record: {e}");
        }
    }

    /// Tells the protocols that `peer` is unreachable.
    fn fail_peer(&mut self, peer: &Peer) {
        self.hpv.peer_failed(peer);
        self.plum.neighbor_down(peer);
        self.sessions.retain(|s| s.peer != *peer);
    }

    /// Records a failed dial: the next waits longer, with jitter.
    fn back_off(&mut self, peer: &Peer) {
        let failures = self.backoff.get(peer).map_or(0, |b| b.failures) + 1;
        let base = BACKOFF_FIRST
            .saturating_mul(1 << (failures - 1).min(16))
            .min(BACKOFF_MAX);
        let jitter = 0.5 + (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        self.backoff.insert(
            peer.clone(),
            Backoff {
                failures,
                until: Instant::now() + base.mul_f64(jitter),
            },
        );
    }

    /// Drains both state machines' outputs until they are quiet.
    fn pump(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(out) = self.hpv.poll_output() {
                progressed = true;
                match out {
                    hyparview::Output::Send { to, message } => {
                        self.send(to, Frame::Membership(message));
                    }
                    hyparview::Output::SetTimer { after_ms, .. } => {
                        self.set_timer(Duration::from_millis(after_ms), Timer::Shuffle);
                    }
                    hyparview::Output::NeighborUp(p) => {
                        self.plum.neighbor_up(p);
                        self.announce_once();
                    }
                    hyparview::Output::NeighborDown(p) => self.plum.neighbor_down(&p),
                }
            }
            progressed |= self.drain_plumtree(None);
            if !progressed {
                return;
            }
        }
    }

    /// Sends Plumtree's messages and merges what it delivers (from the
    /// peer with `node_id`).
    fn drain_plumtree(&mut self, node_id: Option<[u8; 16]>) -> bool {
        let mut progressed = false;
        let mut delivered = Vec::new();
        while let Some(out) = self.plum.poll_output() {
            progressed = true;
            match out {
                plumtree::Output::Send { to, message } => self.send(to, Frame::Broadcast(message)),
                plumtree::Output::SetTimer { after_ms, .. } => {
                    self.set_timer(Duration::from_millis(after_ms), Timer::Tick);
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
        progressed
    }

    /// Merges what broadcast delivered since the last call: one commit per
    /// origin (and per `MERGE_BYTES_MAX`), all queued together.
    fn merge_deliveries(&mut self) {
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
        let groups: Vec<_> = by_origin
            .into_iter()
            .flat_map(|(origin, items)| {
                self.merge_chunks(items.into_iter())
                    .into_iter()
                    .map(move |chunk| (origin, chunk))
            })
            .collect();
        // A failed merge is logged; anti-entropy brings the objects again.
        self.commit_merges(groups);
    }

    /// Merges encoded objects from a peer, in commits that stay under the
    /// engine's limits; undecodable objects are skipped (a peer cannot
    /// make this node fail). False if a commit failed: the caller must not
    /// acknowledge.
    fn merge(
        &mut self,
        origin: Origin,
        items: impl Iterator<Item = (String, Vec<u8>, Vec<u8>)>,
    ) -> bool {
        let groups = self
            .merge_chunks(items)
            .into_iter()
            .map(|chunk| (origin, chunk))
            .collect();
        self.commit_merges(groups)
    }

    /// Decodes objects and splits them into merge commits of at most
    /// `MERGE_BYTES_MAX` and `MERGE_KEYS_MAX`; skips what cannot be
    /// decoded and deletes this node already collected.
    fn merge_chunks(
        &self,
        items: impl Iterator<Item = (String, Vec<u8>, Vec<u8>)>,
    ) -> Vec<Vec<Incoming>> {
        let mut chunks = Vec::new();
        let mut batch = Vec::new();
        let mut batch_bytes = 0usize;
        let clock = crate::validate::Clock::of(crate::unix_ms(), self.config.max_clock_skew);
        for (fp, key, bytes) in items {
            let Ok(fp) = FullPrefix::parse(&fp) else {
                continue;
            };
            // Skipped and counted; anti-entropy offers it again (validate.rs).
            let object = match crate::validate::decode_merged(&bytes, clock) {
                Ok(o) => o,
                Err(r) => {
                    let what = || format!("{fp}/{}: {r}", String::from_utf8_lossy(&key));
                    self.service.metrics.merge_refused(r.reason(), what);
                    continue;
                }
            };
            // A delete this node already collected (or something older)
            // is not stored again: only a write it has not seen is.
            let slot = (fp, key);
            if self
                .collected
                .get(&slot)
                .is_some_and(|(context, _)| descends(context, &object.context()))
            {
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
    fn commit_merges(&self, groups: Vec<(Origin, Vec<Incoming>)>) -> bool {
        if groups.is_empty() {
            return true;
        }
        let meta = self.meta.clone();
        // The commits sync: let the runtime move other tasks off this
        // thread meanwhile.
        let outcomes = tokio::task::block_in_place(|| meta.merge_all(groups));
        let mut ok = true;
        for e in outcomes.into_iter().filter_map(Result::err) {
            tracing::warn!("cannot merge objects from a peer: {e}");
            ok = false;
        }
        ok
    }

    /// Reads new commits: updates the tree with all, broadcasts the local
    /// ones.
    fn read_feed(&mut self) -> Result<(), Error> {
        let store = self.meta.store().clone();
        let feed = tokio::task::block_in_place(|| store.changes_since(&self.cursor, FEED_BATCH))?;
        match feed {
            Feed::Changes { changes, next } => {
                self.cursor = next;
                let now = self.now_ms();
                for change in changes {
                    for k in change.keys {
                        if k.full_prefix.to_string() == crate::members::MEMBERS {
                            self.on_member_record(&k.key, k.value.as_deref());
                        }
                        if let Some(tls) = &self.tls
                            && k.full_prefix.to_string() == crate::tls::REVOKED
                        {
                            tls.revocations().refresh(&self.meta);
                        }
                        let dead = k
                            .value
                            .as_deref()
                            .filter(|v| Object::decode(v).is_ok_and(|o| o.is_tombstone()));
                        let slot = (k.full_prefix.clone(), k.key.clone());
                        match dead {
                            // Every new version of a tombstone starts its
                            // wait again.
                            Some(v) => {
                                let held = Held {
                                    arrived: Instant::now(),
                                    hash: object_hash(&k.key, v),
                                };
                                self.tombstones.insert(slot, held);
                            }
                            None => {
                                self.tombstones.remove(&slot);
                            }
                        }
                        if let Some(v) = k.value.as_deref() {
                            self.mark_oplog((k.full_prefix.clone(), k.key.clone()), v);
                        }
                        let (p, s) = (k.full_prefix.prefix(), k.full_prefix.subprefix());
                        let hash = k.value.as_deref().map(|v| object_hash(&k.key, v));
                        self.tree.update(
                            p.as_bytes(),
                            s.as_bytes(),
                            &k.key,
                            key_hash(&k.key),
                            hash,
                        );
                        if change.origin != Origin::Local {
                            continue;
                        }
                        let Some(bytes) = k.value else { continue };
                        let Ok(object) = Object::decode(&bytes) else {
                            continue;
                        };
                        let id = BroadcastId {
                            full_prefix: k.full_prefix.to_string(),
                            key: k.key,
                            context: context_to_string(&object.context()),
                        };
                        self.plum.broadcast(now, id, bytes.to_vec());
                        self.stats.broadcasts += 1;
                    }
                }
            }
            Feed::Gap { resume, .. } => {
                // Commits were compacted before this node read them:
                // start over from the state, as at start (every tombstone
                // waits again).
                let snapshot = store.snapshot()?;
                self.tree = build_tree(&snapshot);
                self.tombstones = find_tombstones(&snapshot);
                self.cursor = resume;
                if let Some(tls) = &self.tls {
                    tls.revocations().refresh(&self.meta);
                }
            }
        }
        Ok(())
    }

    /// Links to `peer` in the overlay (at most once per `REJOIN`).
    fn link_after_stale_repair(&mut self, peer: &Peer) {
        if self.hpv.active_view().contains(peer)
            || self.last_link.is_some_and(|t| t.elapsed() < REJOIN)
        {
            return;
        }
        self.last_link = Some(Instant::now());
        self.hpv.connect(peer.clone());
        self.stats.overlay_links += 1;
    }

    fn collect_interval(&self) -> Duration {
        (self.config.tombstone_grace / 10)
            .clamp(Duration::from_millis(200), Duration::from_secs(60))
    }

    /// The current members other than this node (those that left are not).
    fn other_members(&self) -> Vec<&Peer> {
        self.members
            .iter()
            .filter(|m| **m != self.me && !self.left.contains(*m))
            .collect()
    }

    /// Removes the tombstones every current member has: see
    /// `docs/tombstones.md` for the rule and why a node that was away
    /// cannot bring the value back.
    fn collect_tombstones(&mut self) {
        let grace = self.config.tombstone_grace;
        let members = self.other_members();
        let ready: Vec<((FullPrefix, Vec<u8>), u64)> = self
            .tombstones
            .iter()
            .filter(|(_, held)| {
                held.arrived.elapsed() >= grace
                    && members
                        .iter()
                        .all(|m| self.synced.get(*m).is_some_and(|s| *s > held.arrived))
            })
            .map(|(k, held)| (k.clone(), held.hash))
            .take(MERGE_KEYS_MAX)
            .collect();
        if ready.is_empty() {
            return;
        }
        let store = self.meta.store().clone();
        let keys = ready;
        // Under the writer lock: only the very version that waited goes (a
        // write or another delete since then keeps the key), and the
        // context remembered is the one removed.
        let result = tokio::task::block_in_place(|| {
            store.update_returning(move |snap| {
                let mut writes = Vec::new();
                let mut gone: Vec<Removed> = Vec::new();
                for ((fp, key), hash) in keys {
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
            })
        });
        let gone = match result {
            Ok((_, gone)) => gone,
            Err(e) => {
                tracing::warn!("cannot collect tombstones: {e}");
                return;
            }
        };
        let now = Instant::now();
        self.stats.tombstones_collected += gone.len() as u64;
        for (k, context) in gone {
            self.tombstones.remove(&k);
            self.collected.insert(k, (context, now));
        }
        self.forget_old_collected();
    }

    /// Remembers when an operation log's greatest operation was seen here:
    /// `key` is the log's head (`path`, whose version-1 form carries
    /// operations inline) or one of its records (`path\0...`).
    fn mark_oplog(&mut self, slot: (FullPrefix, Vec<u8>), value: &[u8]) {
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
        marks.push_back((Instant::now(), top));
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
    fn prune_oplogs(&mut self) {
        if self.oplog_marks.is_empty() {
            return;
        }
        let grace = self.config.tombstone_grace;
        let members = self.other_members();
        let mut horizon = Instant::now().checked_sub(grace);
        for m in members {
            match (self.synced.get(m), horizon) {
                (Some(s), Some(h)) => horizon = Some(h.min(*s)),
                _ => horizon = None,
            }
        }
        let Some(horizon) = horizon else {
            return;
        };
        let ready: Vec<((FullPrefix, Vec<u8>), OpKey)> = self
            .oplog_marks
            .iter()
            .filter_map(|(slot, marks)| {
                marks
                    .iter()
                    .rev()
                    .find(|(at, _)| *at <= horizon)
                    .map(|(_, k)| (slot.clone(), k.clone()))
            })
            .collect();
        let ops = self.oplogs.clone();
        for (slot, upto) in ready {
            let path = String::from_utf8_lossy(&slot.1).into_owned();
            match tokio::task::block_in_place(|| ops.prune(&slot.0, &path, &upto)) {
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

    fn forget_old_collected(&mut self) {
        let horizon = self.config.tombstone_grace.saturating_mul(4);
        self.collected.retain(|_, (_, at)| at.elapsed() < horizon);
        while self.collected.len() > COLLECTED_MAX {
            let oldest = self
                .collected
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    self.collected.remove(&k);
                }
                None => break,
            }
        }
    }

    /// A member record changed (here or by replication).
    fn on_member_record(&mut self, key: &[u8], value: Option<&[u8]>) {
        let Ok(addr) = String::from_utf8(key.to_vec()) else {
            return;
        };
        let member = value
            .and_then(|b| Object::decode(b).ok())
            .and_then(|o| o.lww_value().and_then(|v| v.bytes().map(<[u8]>::to_vec)))
            .and_then(|b| crate::members::decode(&b));
        let Some(member) = member else { return };
        if !member.has_left() {
            self.left.remove(&addr);
            if addr != self.me {
                self.note_member(addr);
            }
            return;
        }
        if addr == self.me {
            if self.leaving.is_none() {
                tracing::info!("this node left the cluster; stopping");
                self.leaving = Some(Instant::now());
            }
            return;
        }
        self.members.remove(&addr);
        self.left.insert(addr.clone());
        self.links.remove(&addr);
        self.fail_peer(&addr);
    }

    fn start_exchange(&mut self) {
        let known: Vec<Peer> = self
            .hpv
            .active_view()
            .iter()
            .chain(self.hpv.passive_view())
            .cloned()
            .collect();
        self.members.extend(known);
        self.members.remove(&self.me);
        for gone in &self.left {
            self.members.remove(gone);
        }
        let peers: Vec<Peer> = self.members.iter().cloned().collect();
        let Some(peer) = self.rng.pick(&peers).cloned() else {
            return;
        };
        let (exchange, message) = Exchange::initiate(&self.tree, ExchangeConfig::default());
        let id = self.rng.next_u64();
        if self.sessions.len() >= SESSIONS_MAX {
            self.sessions.pop_front();
        }
        self.sessions.push_back(Session {
            peer: peer.clone(),
            id,
            initiator: true,
            exchange,
            started: Instant::now(),
        });
        self.stats.exchanges += 1;
        self.send(
            peer,
            Frame::Exchange {
                session: id,
                from_initiator: true,
                message,
            },
        );
    }

    fn session_index(&self, peer: &Peer, id: u64, initiator: bool) -> Option<usize> {
        self.sessions
            .iter()
            .position(|s| s.peer == *peer && s.id == id && s.initiator == initiator)
    }

    fn on_exchange(
        &mut self,
        peer: Peer,
        node_id: [u8; 16],
        session: u64,
        from_initiator: bool,
        message: chorus_gossip::merkle::Message<Vec<u8>, Vec<u8>>,
    ) {
        let mine = !from_initiator;
        let pos = self
            .sessions
            .iter()
            .position(|s| s.peer == peer && s.id == session && s.initiator == mine);
        let pos = match pos {
            Some(p) => p,
            // Only a Begin opens a session: a step for a session this node
            // does not have (evicted, or from before a restart) would
            // otherwise look like a whole exchange that found nothing.
            None if from_initiator
                && matches!(message, chorus_gossip::merkle::Message::Begin { .. }) =>
            {
                if self.sessions.len() >= SESSIONS_MAX {
                    self.sessions.pop_front();
                }
                self.sessions.push_back(Session {
                    peer: peer.clone(),
                    id: session,
                    initiator: false,
                    exchange: Exchange::respond(ExchangeConfig::default()),
                    started: Instant::now(),
                });
                self.sessions.len() - 1
            }
            None => return,
        };
        let Ok(snapshot) = self.meta.store().snapshot() else {
            return;
        };
        let Some(s) = self.sessions.get_mut(pos) else {
            return;
        };
        let reply = s
            .exchange
            .handle(&self.tree, message, &mut SnapshotObjects(&snapshot));
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
                .any(|(_, _, bytes)| missed_by_broadcast(bytes))
            {
                self.link_after_stale_repair(&peer);
            }
            if !self.merge(Origin::Peer(node_id), repairs.into_iter()) {
                // Not stored, so not acknowledged: the exchange ends here
                // unanswered, and the peer counts it as unfinished.
                if let Some(i) = self.session_index(&peer, session, mine) {
                    self.sessions.remove(i);
                }
                return;
            }
        }
        if done {
            if let Some(i) = self.session_index(&peer, session, mine) {
                self.sessions.remove(i);
            }
            self.last_exchange.insert(peer.clone(), Instant::now());
            self.synced.insert(peer.clone(), started);
        }
        if let Some(message) = reply {
            self.send(
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

/// True when an object's newest value was written longer ago than
/// broadcast takes: anti-entropy brought what broadcast missed.
fn missed_by_broadcast(bytes: &[u8]) -> bool {
    let Ok(object) = Object::decode(bytes) else {
        return false;
    };
    let newest = object
        .values()
        .iter()
        .map(|v| v.timestamp.ms())
        .max()
        .unwrap_or(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    now.saturating_sub(newest) > STALE_REPAIR.as_millis() as u64
}

/// True for an address on loopback (what plaintext may dial).
fn is_loopback(peer: &str) -> bool {
    peer.parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.ip().is_loopback())
}

fn find_tombstones(snapshot: &Snapshot) -> BTreeMap<(FullPrefix, Vec<u8>), Held> {
    let now = Instant::now();
    snapshot
        .iter()
        .filter(|(_, _, e)| Object::decode(&e.value).is_ok_and(|o| o.is_tombstone()))
        .map(|(fp, key, e)| {
            let held = Held {
                arrived: now,
                hash: object_hash(key.as_bytes(), &e.value),
            };
            ((fp.clone(), key.as_bytes().to_vec()), held)
        })
        .collect()
}

fn build_tree(snapshot: &Snapshot) -> MerkleTree<Vec<u8>> {
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
