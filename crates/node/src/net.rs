//! Connections to peers: one task per connection, a bounded queue per
//! peer, and events to the core. Mutual TLS, or plaintext on loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::auth::Auth;
use crate::join::{Credentials, Identity, JoinToken, Offer, Proof, Role, Verdict};
use crate::tls::Tls;
use crate::wire::{self, Frame, Hello, Peer};

/// Frames queued for one peer. Announcements and prunes are dropped when
/// the queue is half full, data only when it is full (anti-entropy then
/// repairs what was lost).
pub(crate) const PEER_QUEUE: usize = 1024;
/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one frame may take to write before the peer is cut off.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

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
        let opened = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&peer)).await;
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

/// The name a peer's certificate must carry: its IP address, or its host
/// name.
fn server_name(peer: &str) -> Option<rustls::pki_types::ServerName<'static>> {
    if let Ok(addr) = peer.parse::<std::net::SocketAddr>() {
        return Some(rustls::pki_types::ServerName::IpAddress(addr.ip().into()));
    }
    let host = peer.rsplit_once(':')?.0.to_string();
    rustls::pki_types::ServerName::try_from(host).ok()
}

/// Accepts connections until the process ends.
pub(crate) fn accept(
    listener: TcpListener,
    shake: Arc<Handshake>,
    tls: Option<Tls>,
    ids: ConnIds,
    events: mpsc::Sender<Event>,
) {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            let conn = ids.next();
            let (shake, events, tls) = (shake.clone(), events.clone(), tls.clone());
            tokio::spawn(async move {
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
    let judged = creds.judge(
        &mine,
        &offer,
        them,
        &proof,
        crate::auth::now_ms(),
        shake.required,
        shake.tls,
        &revoked,
    );
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

/// Logs a refused handshake, at most once a minute per reason (a peer
/// dialling in a loop must not flood the log), with how many were left
/// out meanwhile.
fn log_refused(peer: &str, why: &str) {
    use std::sync::Mutex;
    use std::time::Instant;
    static SEEN: Mutex<Vec<(String, Instant, u64)>> = Mutex::new(Vec::new());
    const REASONS_MAX: usize = 64;
    let mut seen = SEEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let now = Instant::now();
    let reason: String = why.chars().take(300).collect();
    let peer: String = peer.chars().take(100).collect();
    match seen.iter_mut().find(|(r, _, _)| *r == reason) {
        Some((_, at, left_out)) if now.duration_since(*at) < Duration::from_secs(60) => {
            *left_out += 1;
        }
        Some((_, at, left_out)) => {
            tracing::warn!(
                "peer handshake with {peer} failed: {reason} ({} more like it in the last minute)",
                *left_out
            );
            (*at, *left_out) = (now, 0);
        }
        None => {
            tracing::warn!("peer handshake with {peer} failed: {reason}");
            if seen.len() >= REASONS_MAX {
                seen.remove(0);
            }
            seen.push((reason, now, 0));
        }
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
        wire::write_frame(&mut write, &shake.hello)
            .await
            .map_err(io)?;
        let theirs: Hello = wire::read_frame_limited(&mut read, wire::HELLO_MAX)
            .await
            .map_err(io)?
            .ok_or_else(|| "the peer closed the connection before its hello".to_string())?;
        theirs.check()?;
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
    let mut writer = tokio::spawn(write_loop(write, rx));
    loop {
        tokio::select! {
            frame = wire::read_frame::<_, Frame>(&mut read) => {
                let Ok(Some(frame)) = frame else { break };
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

async fn write_loop<W: AsyncWrite>(
    mut write: tokio::io::WriteHalf<W>,
    mut rx: mpsc::Receiver<Frame>,
) {
    while let Some(frame) = rx.recv().await {
        // A peer that stops reading is cut off rather than left to pin its
        // queue: the core then counts it failed and HyParView replaces it.
        match tokio::time::timeout(WRITE_TIMEOUT, wire::write_frame(&mut write, &frame)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut write).await;
}
