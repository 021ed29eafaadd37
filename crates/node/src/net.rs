//! Connections to peers: one task per connection, a bounded queue per
//! peer, and events to the core. Mutual TLS, or plaintext on loopback.
//!
//! The listener admits inbound connections under a cap in total and per
//! source address, refusing the rest at once (before any handshake); an
//! open connection that brings no frame for the idle timeout is closed,
//! and a quiet side sends keep-alives so that live links never look idle;
//! frame buffers grow as bytes arrive with memory from one budget. These
//! limits are the process's ([`configure`]): descriptors and memory are
//! per process, whatever number of nodes it runs.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;

use crate::auth::Auth;
use crate::join::{Credentials, Identity, JoinToken, Offer, Proof, Role, Verdict};
use crate::limits::{ConnGate, Limits, Refusal, Throttled};
use crate::tls::Tls;
use crate::wire::{self, Frame, FrameBudget, Hello, HelloExt, Incoming, Peer, ReadError};

/// Frames queued for one peer. Announcements and prunes are dropped when
/// the queue is half full, data only when it is full (anti-entropy then
/// repairs what was lost).
pub(crate) const PEER_QUEUE: usize = 1024;
/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one frame may take to write before the peer is cut off.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a quiet connection sends a keep-alive at least (more often
/// when the idle timeout is under three times this).
const KEEP_ALIVE_MAX: Duration = Duration::from_secs(15);
/// How long a frame waits for memory from the budget before its
/// connection is cut off (releasing what it held, so others proceed).
const BUDGET_WAIT: Duration = Duration::from_secs(5);
/// How long a frame holding memory from the budget may go without a byte
/// before its connection is cut off.
const FRAME_STALL: Duration = Duration::from_secs(10);

/// The gossip limits of this process.
struct Gate {
    conns: Arc<ConnGate>,
    budget: FrameBudget,
    idle: Duration,
}

static GATE: OnceLock<Gate> = OnceLock::new();

/// Sets the gossip limits of this process; the first node to start sets
/// them (later calls keep them).
pub(crate) fn configure(limits: &Limits) {
    let _ = GATE.set(Gate::of(limits));
}

fn gate() -> &'static Gate {
    GATE.get_or_init(|| Gate::of(&Limits::default()))
}

impl Gate {
    fn of(limits: &Limits) -> Gate {
        Gate {
            conns: ConnGate::new(
                limits.gossip_connections,
                limits.gossip_connections_per_source,
            ),
            budget: FrameBudget::new(limits.frame_budget, BUDGET_WAIT, FRAME_STALL),
            idle: limits.gossip_idle.max(Duration::from_millis(100)),
        }
    }

    fn keep_alive(&self) -> Duration {
        (self.idle / 3).min(KEEP_ALIVE_MAX)
    }
}

/// What the gossip listener counted, for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct NetStats {
    /// Outbound connections past their handshake now.
    pub(crate) outbound: AtomicU64,
    /// Inbound connections refused because the total cap was reached.
    pub(crate) refused_total: AtomicU64,
    /// Inbound connections refused because their source's cap was
    /// reached.
    pub(crate) refused_per_source: AtomicU64,
    /// Connections closed after the idle timeout without a frame.
    pub(crate) closed_idle: AtomicU64,
    /// Connections cut off because no memory came from the budget.
    pub(crate) closed_budget: AtomicU64,
    /// Connections cut off because a large frame stopped coming.
    pub(crate) closed_stalled: AtomicU64,
    /// Handshakes refused because the peer presented this node's own id
    /// from another process (a copy of its data directory).
    pub(crate) duplicate_identity: AtomicU64,
}

/// The process's gossip counters.
pub(crate) static STATS: NetStats = NetStats {
    outbound: AtomicU64::new(0),
    refused_total: AtomicU64::new(0),
    refused_per_source: AtomicU64::new(0),
    closed_idle: AtomicU64::new(0),
    closed_budget: AtomicU64::new(0),
    closed_stalled: AtomicU64::new(0),
    duplicate_identity: AtomicU64::new(0),
};

/// The levels for `/metrics`: inbound connections admitted (handshaking
/// or open), frame buffer bytes held, and the budget.
pub(crate) fn levels() -> (usize, usize, usize) {
    let g = gate();
    (g.conns.open(), g.budget.used(), g.budget.capacity())
}

/// Counts one open connection in a gauge while it lives.
struct Level(&'static AtomicU64);

impl Level {
    fn new(gauge: &'static AtomicU64) -> Level {
        gauge.fetch_add(1, Ordering::Relaxed);
        Level(gauge)
    }
}

impl Drop for Level {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

static REFUSALS_LOGGED: Throttled = Throttled::new(crate::limits::LOG_EVERY);
static CLOSES_LOGGED: Throttled = Throttled::new(crate::limits::LOG_EVERY);

/// What connection tasks tell the core.
pub(crate) enum Event {
    /// Connection `conn` with `peer` passed the handshake. An inbound
    /// connection brings the sender of its queue; the core keeps it, or
    /// drops it to close the connection.
    Up {
        peer: Peer,
        node_id: [u8; 16],
        conn: u64,
        tx: Option<mpsc::Sender<Frame>>,
    },
    /// A frame arrived from `peer`, admitted as `role`.
    Frame {
        peer: Peer,
        node_id: [u8; 16],
        role: Role,
        frame: Frame,
    },
    /// Connection `conn` with `peer` closed or could not be opened.
    Down { peer: Peer, conn: u64 },
}

/// Connection numbers, unique in the process.
#[derive(Clone, Default)]
pub(crate) struct ConnIds(Arc<AtomicU64>);

impl ConnIds {
    pub(crate) fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// Opens a connection to `peer` and serves it; frames to send come from
/// `rx`, whose sender the core holds. Reports `Up`, every frame, and
/// `Down` when it ends or cannot open.
pub(crate) fn connect(
    peer: Peer,
    conn: u64,
    shake: Arc<Handshake>,
    tls: Option<Tls>,
    rx: mpsc::Receiver<Frame>,
    events: mpsc::Sender<Event>,
) {
    tokio::spawn(async move {
        let from = loopback_source(&shake.hello.listen);
        let opened = tokio::time::timeout(CONNECT_TIMEOUT, dial(&peer, from)).await;
        let Ok(Ok(stream)) = opened else {
            let _ = events.send(Event::Down { peer, conn }).await;
            return;
        };
        let _ = stream.set_nodelay(true);
        let Some(tls) = tls else {
            serve(stream, Some(peer), conn, shake, None, rx, events).await;
            return;
        };
        // The peer must present a certificate from the cluster CA for the
        // address dialled.
        let name = server_name(&peer);
        let secured = match name {
            Some(name) => {
                tokio::time::timeout(CONNECT_TIMEOUT, tls.connector.connect(name, stream)).await
            }
            None => {
                let _ = events.send(Event::Down { peer, conn }).await;
                return;
            }
        };
        match secured {
            Ok(Ok(stream)) => serve(stream, Some(peer), conn, shake, None, rx, events).await,
            _ => {
                let _ = events.send(Event::Down { peer, conn }).await;
            }
        }
    });
}

/// The address to dial from: a node listening on a loopback address
/// other than 127.0.0.1 dials from it too, so that loopback nodes count
/// as distinct sources at their peers' listeners.
fn loopback_source(listen: &str) -> Option<IpAddr> {
    let ip = listen.parse::<SocketAddr>().ok()?.ip();
    ip.is_loopback().then_some(ip)
}

/// Connects to `peer`, from `from` when both are loopback addresses.
async fn dial(peer: &str, from: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let to = peer.parse::<SocketAddr>().ok();
    let (Some(from), Some(to)) = (from, to) else {
        return TcpStream::connect(peer).await;
    };
    if !to.ip().is_loopback() || from.is_ipv4() != to.is_ipv4() {
        return TcpStream::connect(to).await;
    }
    let socket = if to.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

/// The name a peer's certificate must carry: its IP address, or its host
/// name.
fn server_name(peer: &str) -> Option<rustls::pki_types::ServerName<'static>> {
    if let Ok(addr) = peer.parse::<std::net::SocketAddr>() {
        return Some(rustls::pki_types::ServerName::IpAddress(addr.ip().into()));
    }
    let host = peer.rsplit_once(':')?.0.to_string();
    rustls::pki_types::ServerName::try_from(host).ok()
}

/// Accepts connections until the process ends: under the caps of
/// [`configure`], others are closed at once, counted and logged (at most
/// one line per [`crate::limits::LOG_EVERY`]).
pub(crate) fn accept(
    listener: TcpListener,
    shake: Arc<Handshake>,
    tls: Option<Tls>,
    ids: ConnIds,
    events: mpsc::Sender<Event>,
) {
    tokio::spawn(async move {
        loop {
            let Ok((stream, from)) = listener.accept().await else {
                // Out of descriptors (or a connection reset before it was
                // taken): wait, rather than spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let admitted = match gate().conns.admit(from.ip()) {
                Ok(permit) => permit,
                Err(why) => {
                    refused(from, why);
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            let conn = ids.next();
            let (shake, events, tls) = (shake.clone(), events.clone(), tls.clone());
            tokio::spawn(async move {
                // Holds the connection's place under the caps until it ends.
                let _admitted = admitted;
                match tls {
                    None => serve(stream, None, conn, shake, Some(tx), rx, events).await,
                    // A peer without a certificate from the cluster CA
                    // fails here and is never seen by the core.
                    Some(tls) => {
                        let accepted =
                            tokio::time::timeout(CONNECT_TIMEOUT, tls.acceptor.accept(stream))
                                .await;
                        if let Ok(Ok(stream)) = accepted {
                            serve(stream, None, conn, shake, Some(tx), rx, events).await;
                        }
                    }
                }
            });
        }
    });
}

/// What a node says and holds in its handshakes.
pub(crate) struct Handshake {
    /// Its hello.
    pub(crate) hello: Hello,
    /// Its cluster keys and the revocation list, read at each handshake.
    pub(crate) auth: Auth,
    /// The join token it joins with.
    pub(crate) token: Option<JoinToken>,
    /// Whether peers must show a credential (the node runs with auth).
    pub(crate) required: bool,
    /// Whether peers showed a certificate from the cluster CA.
    pub(crate) tls: bool,
}

impl Handshake {
    fn credentials(&self) -> Credentials {
        Credentials {
            keys: self.auth.cluster_keys().unwrap_or_default(),
            token: self.token.clone(),
        }
    }
}

/// The credential exchange after both hellos (see `join.rs`): the peer's
/// role, or why this side or the peer refused.
async fn authenticate<R, W>(
    read: &mut R,
    write: &mut W,
    shake: &Handshake,
    theirs: &Hello,
) -> Result<Role, String>
where
    R: tokio::io::AsyncReadExt + Unpin,
    W: tokio::io::AsyncWriteExt + Unpin,
{
    let io = |e: std::io::Error| format!("the connection failed during authentication: {e}");
    let closed = || "the peer closed the connection during authentication".to_string();
    let mut nonce = [0u8; 32];
    getrandom::fill(&mut nonce).map_err(|e| format!("no random nonce: {e}"))?;
    let creds = shake.credentials();
    let mine = creds.offer(nonce);
    wire::write_frame(write, &mine).await.map_err(io)?;
    let offer: Offer = wire::read_frame_limited(read, wire::HELLO_MAX)
        .await
        .map_err(io)?
        .ok_or_else(closed)?;
    let me = Identity {
        node_id: &shake.hello.node_id,
        listen: &shake.hello.listen,
    };
    wire::write_frame(write, &creds.prove(&mine, &offer, me))
        .await
        .map_err(io)?;
    let proof: Proof = wire::read_frame_limited(read, wire::HELLO_MAX)
        .await
        .map_err(io)?
        .ok_or_else(closed)?;
    let them = Identity {
        node_id: &theirs.node_id,
        listen: &theirs.listen,
    };
    let revoked = |key: &str| shake.auth.is_listed_revoked(key).unwrap_or(true);
    let policy = crate::join::Policy {
        now_ms: crate::auth::now_ms(),
        required: shake.required,
        tls: shake.tls,
        revoked: &revoked,
    };
    let judged = creds.judge(&mine, &offer, them, &proof, policy);
    let verdict = match &judged {
        Ok(_) => Verdict::Admitted,
        Err(why) => Verdict::Refused(why.clone()),
    };
    wire::write_frame(write, &verdict).await.map_err(io)?;
    // Both verdicts are read, so that each side can log why it was
    // refused even when it refused the other too.
    let answer: Result<Verdict, String> = wire::read_frame_limited(read, wire::HELLO_MAX)
        .await
        .map_err(io)
        .and_then(|v| v.ok_or_else(closed));
    match (judged, answer) {
        (Ok(role), Ok(Verdict::Admitted)) => Ok(role),
        (Ok(_), Ok(Verdict::Refused(why))) => Err(format!("the peer refused this node: {why}")),
        (Ok(_), Err(e)) => Err(e),
        (Err(why), Ok(Verdict::Refused(theirs))) => Err(format!(
            "refused: {why}; and the peer refused this node: {theirs}"
        )),
        (Err(why), _) => Err(format!("refused: {why}")),
    }
}

/// This process's boot nonce (random, drawn once per process): sent in
/// every hello, so that a hello carrying this node's id and another nonce
/// is known to come from another process.
fn boot() -> [u8; 16] {
    static BOOT: OnceLock<[u8; 16]> = OnceLock::new();
    *BOOT.get_or_init(|| {
        let mut b = [0u8; 16];
        // Without randomness the nonce is all zeros: copies are then told
        // apart by their addresses alone.
        let _ = getrandom::fill(&mut b);
        b
    })
}

/// Whether a peer's hello comes from this very node.
#[derive(Debug, PartialEq, Eq)]
enum Same {
    /// Another node id: an ordinary peer.
    Other,
    /// This node's id, address and process (or an older peer without a
    /// nonce at this node's address): a connection to itself.
    Itself,
    /// This node's id from another address or process: a copy of its data
    /// directory, and what to do about it.
    Copy(String),
}

/// Tells a peer apart from this node and from a copy of it: the same id
/// with another address, or with another boot nonce, is another process
/// holding a copy of this node's data directory.
fn same_node(mine: &Hello, theirs: &Hello, ext: Option<&HelloExt>) -> Same {
    if mine.node_id != theirs.node_id {
        return Same::Other;
    }
    let other_process = ext.is_some_and(|e| e.boot != boot());
    if theirs.listen == mine.listen && !other_process {
        return Same::Itself;
    }
    let id = chorus_core::NodeId::from_bytes(mine.node_id);
    let addr: String = theirs.listen.chars().take(100).collect();
    Same::Copy(format!(
        "node id {id} is used by this node and by the node at {addr}: one data directory was copied from the other (a restored backup or a cloned machine), and the two would silently diverge, so they do not exchange. Stop the copy, run `chorus init --new-identity` in its data directory (it keeps the data), and start it again"
    ))
}

/// Counts and logs (as an error, at most once per `LOG_EVERY`) a handshake
/// refused because the peer is a copy of this node.
fn duplicate_identity(why: &str) {
    static LOGGED: Throttled = Throttled::new(crate::limits::LOG_EVERY);
    STATS.duplicate_identity.fetch_add(1, Ordering::Relaxed);
    match LOGGED.hit() {
        Some(0) => tracing::error!("{why}"),
        Some(held) => tracing::error!("{why} ({held} more such handshakes since the last line)"),
        None => {}
    }
}

/// Logs a refused handshake at most once per `LOG_EVERY` per reason (a
/// peer dialling in a loop must not flood the log), with how many were
/// held back meanwhile; at most `REASONS_MAX` reasons are tracked.
fn log_refused(peer: &str, why: &str) {
    const REASONS_MAX: usize = 64;
    static SEEN: std::sync::Mutex<Vec<(String, Throttled)>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let reason: String = why.chars().take(300).collect();
    let peer: String = peer.chars().take(100).collect();
    let at = match seen.iter().position(|(r, _)| *r == reason) {
        Some(at) => at,
        None => {
            if seen.len() >= REASONS_MAX {
                seen.remove(0);
            }
            seen.push((reason.clone(), Throttled::default()));
            seen.len() - 1
        }
    };
    match seen[at].1.hit() {
        Some(0) => tracing::warn!("peer handshake with {peer} failed: {reason}"),
        Some(held) => tracing::warn!(
            "peer handshake with {peer} failed: {reason} ({held} more like it held back since the last such line)"
        ),
        None => {}
    }
}

/// Counts and logs a refused connection (the stream is dropped: closed).
fn refused(from: SocketAddr, why: Refusal) {
    let (counter, cap) = match why {
        Refusal::Total => (
            &STATS.refused_total,
            "the total cap (--gossip-max-connections)",
        ),
        Refusal::PerSource => (
            &STATS.refused_per_source,
            "the cap per source (--gossip-max-connections-per-source)",
        ),
    };
    counter.fetch_add(1, Ordering::Relaxed);
    if let Some(held) = REFUSALS_LOGGED.hit() {
        tracing::warn!(
            "gossip: refused a connection from {from}: {cap} is reached ({held} more refusals not logged since the last line)"
        );
    }
}

/// Handshakes, then writes the frames from `rx` and reads frames for the
/// core until either side ends; reports `Down` once it has reported `Up`
/// (or when an outbound handshake fails).
async fn serve<S: AsyncRead + AsyncWrite + Send + 'static>(
    stream: S,
    dialled: Option<Peer>,
    conn: u64,
    shake: Arc<Handshake>,
    tx: Option<mpsc::Sender<Frame>>,
    rx: mpsc::Receiver<Frame>,
    events: mpsc::Sender<Event>,
) {
    let (mut read, mut write) = tokio::io::split(stream);
    let handshake = tokio::time::timeout(CONNECT_TIMEOUT, async {
        let io = |e: std::io::Error| format!("the connection failed during the hello: {e}");
        wire::write_hello(&mut write, &shake.hello, &HelloExt { boot: boot() })
            .await
            .map_err(io)?;
        let (theirs, ext) = wire::read_hello(&mut read)
            .await
            .map_err(io)?
            .ok_or_else(|| "the peer closed the connection before its hello".to_string())?;
        theirs.check()?;
        if let Same::Copy(why) = same_node(&shake.hello, &theirs, ext.as_ref()) {
            duplicate_identity(&why);
            return Err("refused: the peer presents this node's own id (logged above as an error)".into());
        }
        let role = if shake.hello.authenticates() && theirs.authenticates() {
            authenticate(&mut read, &mut write, &shake, &theirs).await?
        } else if shake.required {
            return Err(
                "refused: it does not exchange credentials (it runs without --auth and without a join token, or an older Chorus); every node of a cluster with auth runs --auth"
                    .to_string(),
            );
        } else {
            Role::Member
        };
        Ok((theirs, role))
    })
    .await
    .unwrap_or_else(|_| Err("the handshake timed out".to_string()));
    let (theirs, role) = match handshake {
        Ok(done) => done,
        Err(why) => {
            let who = dialled.clone().unwrap_or_else(|| "an inbound peer".into());
            log_refused(&who, &why);
            if let Some(peer) = dialled {
                let _ = events.send(Event::Down { peer, conn }).await;
            }
            return;
        }
    };
    if role == Role::Joiner {
        tracing::info!(
            "peer {} admitted as a joiner: it writes nothing under a reserved prefix until it shows the cluster key",
            theirs.listen
        );
    }
    // An outbound connection is to the address dialled; an inbound one is
    // from the address the peer says it listens on.
    let outbound = dialled.is_some();
    let peer = dialled.unwrap_or_else(|| theirs.listen.clone());
    let node_id = theirs.node_id;
    let up = Event::Up {
        peer: peer.clone(),
        node_id,
        conn,
        tx,
    };
    if events.send(up).await.is_err() {
        return;
    }
    let _open = outbound.then(|| Level::new(&STATS.outbound));
    let gate = gate();
    let mut writer = tokio::spawn(write_loop(write, rx, gate.keep_alive()));
    loop {
        // The idle timeout runs from the end of the last frame: a peer
        // that sends nothing, or a frame too slowly, is cut off.
        let next = tokio::time::timeout(
            gate.idle,
            wire::read_frame_budgeted::<_, Frame>(&mut read, &gate.budget),
        );
        tokio::select! {
            read = next => {
                let frame = match read {
                    Ok(Ok(Incoming::Frame(frame))) => frame,
                    Ok(Ok(Incoming::KeepAlive)) => continue,
                    Ok(Ok(Incoming::End)) => break,
                    Ok(Err(e)) => {
                        closed(&peer, Closed::Read(e));
                        break;
                    }
                    Err(_) => {
                        closed(&peer, Closed::Idle(gate.idle));
                        break;
                    }
                };
                let ev = Event::Frame { peer: peer.clone(), node_id, role, frame };
                if events.send(ev).await.is_err() {
                    break;
                }
            }
            // The core dropped this connection's sender (or a write failed).
            _ = &mut writer => break,
        }
    }
    writer.abort();
    let _ = events.send(Event::Down { peer, conn }).await;
}

/// Why an open connection was closed from this side.
enum Closed {
    Idle(Duration),
    Read(ReadError),
}

/// Counts and logs (at a bounded rate) a connection closed for a limit
/// or a bad frame.
fn closed(peer: &str, why: Closed) {
    let what = match &why {
        Closed::Idle(idle) => {
            STATS.closed_idle.fetch_add(1, Ordering::Relaxed);
            format!(
                "no frame for {} s (--gossip-idle-timeout)",
                idle.as_secs_f64()
            )
        }
        Closed::Read(ReadError::Io(_)) => return, // the peer went away
        Closed::Read(e) => {
            match e {
                ReadError::Budget => STATS.closed_budget.fetch_add(1, Ordering::Relaxed),
                ReadError::Stalled => STATS.closed_stalled.fetch_add(1, Ordering::Relaxed),
                _ => 0,
            };
            e.to_string()
        }
    };
    if let Some(held) = CLOSES_LOGGED.hit() {
        tracing::warn!(
            "gossip: closed the connection with {peer}: {what} ({held} more not logged since the last line)"
        );
    }
}

async fn write_loop<W: AsyncWrite>(
    mut write: tokio::io::WriteHalf<W>,
    mut rx: mpsc::Receiver<Frame>,
    keep_alive: Duration,
) {
    loop {
        let frame = match tokio::time::timeout(keep_alive, rx.recv()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            // Quiet: tell the peer this link is alive.
            Err(_) => {
                let sent =
                    tokio::time::timeout(WRITE_TIMEOUT, wire::write_keep_alive(&mut write)).await;
                if !matches!(sent, Ok(Ok(()))) {
                    return;
                }
                continue;
            }
        };
        // A peer that stops reading is cut off rather than left to pin its
        // queue: the core then counts it failed and HyParView replaces it.
        match tokio::time::timeout(WRITE_TIMEOUT, wire::write_frame(&mut write, &frame)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut write).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_with_this_nodes_id_is_itself_only_at_its_address_and_in_its_process() {
        let mine = Hello::new([5; 16], "127.0.0.1:7000".into(), false);
        let other = Hello::new([6; 16], "127.0.0.1:7000".into(), false);
        assert_eq!(same_node(&mine, &other, None), Same::Other);
        let this = HelloExt { boot: boot() };
        assert_eq!(same_node(&mine, &mine, Some(&this)), Same::Itself);
        // The previous release sends no nonce: its address decides.
        assert_eq!(same_node(&mine, &mine, None), Same::Itself);
        let moved = Hello::new([5; 16], "127.0.0.1:7001".into(), false);
        let copy = HelloExt { boot: [0xEE; 16] };
        for (hello, ext) in [(&moved, None), (&moved, Some(&this)), (&mine, Some(&copy))] {
            let Same::Copy(why) = same_node(&mine, hello, ext) else {
                panic!("{hello:?} {ext:?} is a copy");
            };
            assert!(why.contains("chorus init --new-identity"), "{why}");
            assert!(why.contains(&hello.listen), "{why}");
        }
    }
}
