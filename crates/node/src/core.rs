//! The core task: drives the replica (`chorus-replica`, the sans-IO
//! replication logic) with connection events, tokio timers and the
//! change feed, and carries its frames to the connection tasks.
//!
//! What lives here and not in the replica is what needs the outside
//! world: the links to peers (one per pair of nodes), dialling with
//! back-off, TLS and loopback rules, the joiner filter, the clocks, and
//! the view published to the API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chorus_gossip::Rng;
use chorus_replica::{Now, Output, Replica};
use chorus_store::{Metadata, Options, Store, SyncMode};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::join::{Identity, Role};
use crate::net::{self, ConnIds, Event, PEER_QUEUE};
use crate::service::{ClusterView, Command, Service};
use crate::wire::{Frame, Hello, Peer};
use crate::{Config, Error};

/// Events waiting for the core; connection tasks wait when it is full.
const EVENT_QUEUE: usize = 4096;
/// Redialling a peer that could not be reached waits 200 ms, doubling
/// with every failure up to 30 s, each wait scaled by a random 0.5-1.5 so
/// that nodes do not redial in step.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Most further events handled before the objects they delivered are
/// merged: what arrives together is stored by commits sharing one sync.
const EVENTS_PER_MERGE: usize = 256;
/// How long after its member record says it left this node stops, at
/// the earliest (see `Replica::may_stop`).
const LEAVE_AFTER_MS: u64 = 1_000;
/// How long a leaving node waits for a member before it says so.
const LEAVE_WARN_MS: u64 = 30_000;

pub use chorus_replica::Stats;

/// A peer that could not be dialled, and when to try it again.
struct Backoff {
    failures: u32,
    until: Instant,
}

struct Link {
    conn: u64,
    tx: mpsc::Sender<Frame>,
    outbound: bool,
    node_id: Option<[u8; 16]>,
}

/// The file in the data directory where a running node says where it
/// stands in its channels (see [`Core::write_channel_status`]).
pub const CHANNEL_STATUS_FILE: &str = "channels.json";

pub(crate) struct Core {
    replica: Replica,
    me: Peer,
    node_id: [u8; 16],
    meta: Metadata,
    links: HashMap<Peer, Link>,
    started: Instant,
    /// For the back-off jitter only (the replica has its own).
    rng: Rng,
    ids: ConnIds,
    events: mpsc::Sender<Event>,
    inbox: Option<mpsc::Receiver<Event>>,
    view: Arc<Mutex<ClusterView>>,
    command_inbox: Option<mpsc::Receiver<Command>>,
    /// Peers not to dial before a time (at most one entry per member).
    backoff: HashMap<Peer, Backoff>,
    /// Mutual TLS with peers, or plaintext on loopback.
    tls: Option<crate::tls::Tls>,
    /// What this node says and holds in its handshakes.
    shake: Arc<net::Handshake>,
    /// Woken by the API after a local commit: read the feed now.
    committed: Arc<tokio::sync::Notify>,
    /// The operations the HTTP API and the broker adapt.
    service: Service,
    feed_interval: Duration,
    /// Frames dropped because a peer's queue was full.
    dropped: u64,
    /// Reserved objects a joiner sent and this node refused (`join.rs`).
    joiner_refused: u64,
    /// Whether a leave that waits for a member was logged.
    leave_warned: bool,
    /// The data directory: where the channel status file is written.
    dir: std::path::PathBuf,
    /// The channel status last written there, and when.
    channels_written: Option<(Vec<chorus_replica::ChannelStatus>, Instant)>,
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
        let meta = Metadata::new(store);
        if let Some(tls) = &tls {
            tls.revocations().refresh(&meta);
        }
        let seed = config
            .seed
            .unwrap_or_else(|| u64::from_le_bytes(node_id[..8].try_into().unwrap_or([7; 8])));
        let (events, inbox) = mpsc::channel(EVENT_QUEUE);
        let (commands, command_inbox) = mpsc::channel(16);
        let mut service =
            Service::new(meta.clone(), config.auth, commands.clone()).map_err(Error::Io)?;
        service.max_clock_skew = config.max_clock_skew;
        service.forward = config.forward;
        let committed = service.committed.clone();
        let started = Instant::now();
        let replica = Replica::open(
            meta.clone(),
            service.oplogs.clone(),
            chorus_replica::Config {
                me: me.clone(),
                join: config.join.clone(),
                exchange_interval: config.exchange_interval,
                tombstone_grace: config.tombstone_grace,
                seed,
                max_clock_skew: config.max_clock_skew,
                http: config.http.map(|a| crate::channels::announced_http(a, &me)),
                channel_min_members: config.channel_min_members,
                #[cfg(feature = "mutations")]
                mutation: chorus_replica::Mutation::None,
            },
            now_of(started),
        )?;
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
        Ok(Core {
            replica,
            me,
            node_id,
            meta,
            links: HashMap::new(),
            started,
            rng: Rng::new(seed ^ 0x0BAC_00FF),
            ids: ConnIds::default(),
            events,
            inbox: Some(inbox),
            view: service.view.clone(),
            command_inbox: Some(command_inbox),
            backoff: HashMap::new(),
            tls,
            shake,
            committed,
            service,
            feed_interval: config.feed_interval,
            dropped: 0,
            joiner_refused: 0,
            leave_warned: false,
            dir: config.dir.clone(),
            channels_written: None,
        })
    }

    /// The service the HTTP API and the broker adapt.
    pub(crate) fn service(&self) -> Service {
        self.service.clone()
    }

    fn now(&self) -> Now {
        now_of(self.started)
    }

    /// Publishes the views and counters for the API.
    fn publish_view(&mut self) {
        let r = &self.replica;
        let (p, stats, now) = (r.broadcast_stats(), r.stats(), self.now().ms);
        let last: Vec<(String, f64)> = r
            .last_exchange()
            .iter()
            .map(|(peer, at)| (peer.clone(), now.saturating_sub(*at) as f64 / 1000.0))
            .collect();
        let view = ClusterView {
            node: chorus_core::NodeId::from_bytes(self.node_id).to_string(),
            gossip: self.me.clone(),
            active: r.active_view().to_vec(),
            passive: r.passive_view().to_vec(),
            eager: r.eager_peers().to_vec(),
            lazy: r.lazy_peers().to_vec(),
            last_exchange: last,
            members: r
                .members()
                .iter()
                .map(|m| (m.clone(), "up"))
                .chain(r.left().iter().map(|m| (m.clone(), "left")))
                .collect(),
            counters: vec![
                ("commits_broadcast_total", stats.broadcasts),
                ("objects_received_total", stats.received),
                ("keys_repaired_total", stats.repaired),
                ("exchanges_total", stats.exchanges),
                ("frames_dropped_total", self.dropped),
                ("overlay_links_total", stats.overlay_links),
                ("tombstones_collected_total", stats.tombstones_collected),
                ("tombstones_held", r.tombstones_held() as u64),
                ("oplog_ops_folded_total", stats.oplog_ops_folded),
                ("joiner_objects_refused_total", self.joiner_refused),
                ("identity_conflicts_total", stats.identity_conflicts),
                (
                    "peer_bytes_sent_total",
                    crate::wire::BYTES_SENT.load(std::sync::atomic::Ordering::Relaxed),
                ),
                ("broadcasts_sent_total", p.gossip_sent),
                ("grafts_total", p.grafts_sent),
                ("prunes_total", p.prunes_sent),
                ("duplicates_total", p.duplicates),
                ("feed_seq", r.feed_seq()),
                ("unserved_objects_dropped_total", stats.unserved_dropped),
                ("unserved_frames_dropped_total", stats.unserved_frames),
                ("channel_keys_dropped_total", stats.channel_keys_dropped),
            ],
            channels: r.channel_status(),
        };
        self.write_channel_status(&view.channels);
        *self
            .view
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = view;
    }

    /// Writes the channels' status to `DIR/channels.json` for `chorus
    /// status` and `chorus channel serve --wait` (which read the directory,
    /// not the daemon), when it changed: at once when a state changed, at
    /// most every 250 ms while only counts move. Written to a temporary
    /// file and renamed, so a reader never sees half of it.
    fn write_channel_status(&mut self, channels: &[chorus_replica::ChannelStatus]) {
        let due = match &self.channels_written {
            None => true,
            Some((last, at)) => {
                let states = |v: &[chorus_replica::ChannelStatus]| -> Vec<(String, &'static str)> {
                    v.iter().map(|c| (c.name.clone(), c.state)).collect()
                };
                last.as_slice() != channels
                    && (states(last) != states(channels)
                        || at.elapsed() >= Duration::from_millis(250))
            }
        };
        if !due {
            return;
        }
        let body = serde_json::json!({
            "node": chorus_core::NodeId::from_bytes(self.node_id).to_string(),
            "pid": std::process::id(),
            "updated_ms": crate::unix_ms(),
            "channels": channels,
        });
        let path = self.dir.join(CHANNEL_STATUS_FILE);
        let tmp = self.dir.join(format!("{CHANNEL_STATUS_FILE}.tmp"));
        let written = serde_json::to_vec_pretty(&body)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &path));
        match written {
            Ok(()) => self.channels_written = Some((channels.to_vec(), Instant::now())),
            Err(e) => {
                // Retried at the next change; the API's view is unaffected.
                tracing::warn!("cannot write {}: {e}", path.display());
                self.channels_written = Some((channels.to_vec(), Instant::now()));
            }
        }
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
        let now = self.now();
        self.replica.start(now);
        self.drain();
        let mut feed = tokio::time::interval(self.feed_interval);
        feed.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        let committed = self.committed.clone();
        loop {
            let next_timer = self
                .replica
                .poll_timeout()
                .map(|at| self.started + Duration::from_millis(at));
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
                        if self.replica.wants_flush() {
                            break;
                        }
                        let Ok(event) = inbox.try_recv() else { break };
                        self.on_event(event);
                    }
                }
                Some(Command::Join(peer)) = commands.recv() => {
                    let now = self.now();
                    self.replica.join(peer, now);
                }
                () = committed.notified() => self.read_feed(),
                _ = feed.tick() => {
                    // A failure is retried at the next tick; a persistent
                    // one (a damaged log) shows here every time.
                    self.read_feed();
                    self.publish_view();
                    // Leaving: once the record has gone out and another
                    // member holds everything this node had.
                    if let Some(t) = self.replica.left_at() {
                        let waited = self.now().ms.saturating_sub(t);
                        if waited > LEAVE_AFTER_MS && self.replica.may_stop() {
                            return Ok(());
                        }
                        if waited > LEAVE_WARN_MS && !self.leave_warned {
                            self.leave_warned = true;
                            tracing::warn!(
                                "leaving: no other member has finished an exchange with this node since it left, so it keeps running until one has everything it holds (check that the other members are up and reachable)"
                            );
                        }
                    }
                }
                () = sleep => {
                    let now = self.now();
                    let replica = &mut self.replica;
                    // Timers collect tombstones and prune logs: commits.
                    tokio::task::block_in_place(|| replica.handle_timeout(now));
                }
            }
            if self.replica.has_deliveries() {
                let now = self.now();
                let replica = &mut self.replica;
                // The merges sync: let the runtime move other tasks off
                // this thread meanwhile.
                tokio::task::block_in_place(|| replica.flush(now));
            }
            self.drain();
        }
    }

    /// Reads the change feed (a batch per call; the next tick or commit
    /// notification reads on).
    fn read_feed(&mut self) {
        let now = self.now();
        let replica = &mut self.replica;
        if let Err(e) = tokio::task::block_in_place(|| replica.read_feed(now)) {
            tracing::warn!("cannot read the change feed: {e}");
        }
        self.drain();
    }

    /// Carries out what the replica asked for.
    fn drain(&mut self) {
        while let Some(out) = self.replica.poll_output() {
            match out {
                Output::Send { to, frame } => self.send(to, frame),
                Output::ReservedChanged(fp) => {
                    if let Some(tls) = &self.tls
                        && fp.is_none_or(|fp| fp.to_string() == crate::tls::REVOKED)
                    {
                        tls.revocations().refresh(&self.meta);
                    }
                }
                Output::Refused { reason, what } => {
                    self.service.metrics.merge_refused(reason, || what);
                }
            }
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
                    let before = self.joiner_refused;
                    let keep = crate::join::restrict(&mut frame, them, &mut self.joiner_refused);
                    if self.joiner_refused > before {
                        tracing::debug!(
                            "refused {} reserved objects from joiner {peer}",
                            self.joiner_refused - before
                        );
                    }
                    if !keep {
                        return;
                    }
                }
                let now = self.now();
                let replica = &mut self.replica;
                if matches!(frame, Frame::Exchange { .. }) {
                    // Exchange steps read a snapshot and may merge.
                    tokio::task::block_in_place(|| {
                        replica.handle_frame(peer, node_id, frame, now);
                    });
                } else {
                    replica.handle_frame(peer, node_id, frame, now);
                }
                self.drain();
            }
            Event::Down { peer, conn } => {
                let Some(link) = self.links.get(&peer).filter(|l| l.conn == conn) else {
                    return;
                };
                if link.outbound && link.node_id.is_none() {
                    self.back_off(&peer);
                }
                self.links.remove(&peer);
                self.peer_down(&peer);
            }
        }
    }

    /// Keeps one connection per pair of nodes: when both dialled, the one
    /// dialled by the node with the smaller address survives, on both
    /// sides alike. The rule looks at addresses only, never at whether a
    /// dial has finished its handshake: two nodes deciding on different
    /// facts would each keep the connection the other dropped.
    fn on_up(&mut self, peer: Peer, node_id: [u8; 16], conn: u64, tx: Option<mpsc::Sender<Frame>>) {
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
                        peer.clone(),
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
        let now = self.now();
        self.replica.handle_peer_up(peer, now);
        self.drain();
    }

    /// Tells the replica a peer cannot be reached (it may answer with more
    /// frames, carried out by the caller's `drain`).
    fn peer_down(&mut self, peer: &Peer) {
        let now = self.now();
        self.replica.handle_peer_down(peer, now);
    }

    /// Sends a frame, opening a connection if there is none. A full queue
    /// drops announcements first and data last.
    fn send(&mut self, peer: Peer, frame: Frame) {
        if self.tls.is_none() && !is_loopback(&peer) {
            // Beyond loopback without TLS: never dialled.
            self.peer_down(&peer);
            return;
        }
        if !self.links.contains_key(&peer)
            && self
                .backoff
                .get(&peer)
                .is_some_and(|b| Instant::now() < b.until)
        {
            // Unreachable a moment ago: fail at once instead of redialling.
            self.dropped += 1;
            self.peer_down(&peer);
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
            self.dropped += 1;
            return;
        }
        match link.tx.try_send(frame) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.dropped += 1,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.links.remove(&peer);
                self.peer_down(&peer);
            }
        }
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
}

/// The replica's time: milliseconds since the core started, and the wall
/// clock.
fn now_of(started: Instant) -> Now {
    Now {
        ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        wall_ms: crate::unix_ms(),
    }
}

/// True for an address on loopback (what plaintext may dial).
fn is_loopback(peer: &str) -> bool {
    peer.parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.ip().is_loopback())
}
