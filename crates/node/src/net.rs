//! Connections to peers: one task per connection, a bounded queue per
//! peer, and events to the core. Mutual TLS, or plaintext on loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

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
    /// A frame arrived from `peer`.
    Frame {
        peer: Peer,
        node_id: [u8; 16],
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
    hello: Hello,
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
            serve(stream, Some(peer), conn, hello, None, rx, events).await;
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
            Ok(Ok(stream)) => serve(stream, Some(peer), conn, hello, None, rx, events).await,
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
    hello: Hello,
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
            let (hello, events, tls) = (hello.clone(), events.clone(), tls.clone());
            tokio::spawn(async move {
                match tls {
                    None => serve(stream, None, conn, hello, Some(tx), rx, events).await,
                    // A peer without a certificate from the cluster CA
                    // fails here and is never seen by the core.
                    Some(tls) => {
                        let accepted =
                            tokio::time::timeout(CONNECT_TIMEOUT, tls.acceptor.accept(stream))
                                .await;
                        if let Ok(Ok(stream)) = accepted {
                            serve(stream, None, conn, hello, Some(tx), rx, events).await;
                        }
                    }
                }
            });
        }
    });
}

/// Handshakes, then writes the frames from `rx` and reads frames for the
/// core until either side ends; reports `Down` once it has reported `Up`
/// (or when an outbound handshake fails).
async fn serve<S: AsyncRead + AsyncWrite + Send + 'static>(
    stream: S,
    dialled: Option<Peer>,
    conn: u64,
    hello: Hello,
    tx: Option<mpsc::Sender<Frame>>,
    rx: mpsc::Receiver<Frame>,
    events: mpsc::Sender<Event>,
) {
    let (mut read, mut write) = tokio::io::split(stream);
    let handshake = tokio::time::timeout(CONNECT_TIMEOUT, async {
        wire::write_frame(&mut write, &hello).await.ok()?;
        let theirs: Hello = wire::read_frame_limited(&mut read, wire::HELLO_MAX)
            .await
            .ok()??;
        theirs.check().ok()?;
        Some(theirs)
    })
    .await;
    let Ok(Some(theirs)) = handshake else {
        if let Some(peer) = dialled {
            let _ = events.send(Event::Down { peer, conn }).await;
        }
        return;
    };
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
                let ev = Event::Frame { peer: peer.clone(), node_id, frame };
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
