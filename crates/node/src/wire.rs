//! The peer protocol on a byte stream: a handshake, then length-delimited
//! frames.
//!
//! Every frame is `[u32 little-endian length][postcard payload]`, the
//! payload at most [`FRAME_MAX`] bytes. The first frame each side sends is
//! a [`Hello`] naming the protocol version, the sender's node id and the
//! address it listens on; a peer with another version is refused with the
//! reason, so an upgrade fails loudly instead of garbling.
//!
//! Since this release the hello frame carries a [`HelloExt`] after the
//! [`Hello`] (the boot nonce of the sending process), so that a node can
//! tell a copy of itself (another process presenting its node id) from a
//! connection to itself. The previous release decodes the hello and
//! ignores the bytes after it; a hello without them (the previous
//! release's) is read with no nonce.
//!
//! A frame of length 0 is a keep-alive: a side that has sent nothing for a
//! while sends one so that the other does not close the connection as idle
//! ([`KEEP_ALIVE`]); it is never a valid payload, and never reaches the
//! core.
//!
//! A frame's buffer grows as its bytes arrive, never to the length the
//! peer announced before the bytes are there. On open connections a frame
//! over [`SMALL_FRAME`] grows with memory from a [`FrameBudget`] shared by
//! every connection, and is cut off if its bytes stop coming while it
//! holds that memory; so peers announcing large frames and sending
//! nothing cost nothing, and peers that send part of one and stall hold
//! the memory only for a while. Smaller frames (most of them) never wait
//! for the budget: a connection reads one frame at a time, so they hold
//! at most [`SMALL_FRAME`] per connection.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The protocol version this build speaks: 2 adds the credential
/// exchange after the hello (`join.rs`).
pub const PROTOCOL_VERSION: u16 = 2;
/// The version a node sends when it neither runs auth nor joins with a
/// token: the hello of the previous release, so that open nodes of both
/// releases still talk; the exchange runs only when both hellos say 2.
pub const PROTOCOL_OPEN: u16 = 1;
/// Largest frame payload accepted; a peer that sends more is cut off.
pub const FRAME_MAX: usize = 16 << 20;
/// The first bytes of every hello, so a stray client is told apart.
const MAGIC: [u8; 8] = *b"CHORUS01";

pub use chorus_replica::{BroadcastId, Peer};

/// The first frame on a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    magic: [u8; 8],
    /// The sender's protocol version.
    pub version: u16,
    /// The sender's node id.
    pub node_id: [u8; 16],
    /// Where the sender listens for gossip.
    pub listen: Peer,
}

impl Hello {
    /// This build's hello: version 2 when the node exchanges credentials
    /// (it runs auth or joins with a token), else version 1.
    pub fn new(node_id: [u8; 16], listen: Peer, authenticating: bool) -> Hello {
        Hello {
            magic: MAGIC,
            version: if authenticating {
                PROTOCOL_VERSION
            } else {
                PROTOCOL_OPEN
            },
            node_id,
            listen,
        }
    }

    /// Whether the sender exchanges credentials after the hello.
    pub fn authenticates(&self) -> bool {
        self.version >= 2
    }

    /// Refuses a hello from another protocol, with the reason.
    pub fn check(&self) -> Result<(), String> {
        if self.magic != MAGIC {
            return Err("the peer is not a Chorus node".into());
        }
        if !(PROTOCOL_OPEN..=PROTOCOL_VERSION).contains(&self.version) {
            return Err(format!(
                "the peer speaks protocol version {}, this node {PROTOCOL_OPEN} to {PROTOCOL_VERSION}: run the same Chorus version on both",
                self.version
            ));
        }
        Ok(())
    }
}

/// What this release adds to its hello frame, after the [`Hello`]: the
/// previous release stops decoding at the end of the `Hello` and never
/// sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloExt {
    /// Random per process start: a peer presenting this node's id with
    /// another nonce is another process (a copy of this node's directory).
    pub boot: [u8; 16],
}

/// Writes the hello frame: the hello, then its extension.
pub async fn write_hello<W>(w: &mut W, hello: &Hello, ext: &HelloExt) -> std::io::Result<()>
where
    W: AsyncWriteExt + Unpin,
{
    write_frame(w, &(hello, ext)).await
}

/// Reads a hello frame of at most [`HELLO_MAX`] bytes: the hello, and its
/// extension when the peer sent one (`None` from the previous release).
/// `Ok(None)` when the stream ends first.
pub async fn read_hello<R>(r: &mut R) -> std::io::Result<Option<(Hello, Option<HelloExt>)>>
where
    R: AsyncReadExt + Unpin,
{
    let Some(len) = read_len(r).await? else {
        return Ok(None);
    };
    if len > HELLO_MAX {
        return Err(std::io::Error::other(format!(
            "the peer sent a frame of {len} bytes, over the limit of {HELLO_MAX}"
        )));
    }
    let mut buf = Vec::new();
    (&mut *r).take(len as u64).read_to_end(&mut buf).await?;
    if buf.len() < len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    decode_hello(&buf).map(Some)
}

/// Decodes a hello frame's payload (see [`read_hello`]).
pub fn decode_hello(buf: &[u8]) -> std::io::Result<(Hello, Option<HelloExt>)> {
    let (hello, rest): (Hello, &[u8]) = postcard::take_from_bytes(buf)
        .map_err(|e| std::io::Error::other(format!("the peer sent an undecodable hello: {e}")))?;
    if rest.is_empty() {
        return Ok((hello, None));
    }
    // A later release may append more after the extension: ignored here
    // as the previous release ignores the extension.
    let ext: HelloExt = decode(rest)?;
    Ok((hello, Some(ext)))
}

pub use chorus_replica::Frame;

/// Writes one frame.
pub async fn write_frame<W, T>(w: &mut W, value: &T) -> std::io::Result<()>
where
    W: AsyncWriteExt + Unpin,
    T: Serialize,
{
    let bytes = postcard::to_stdvec(value).map_err(std::io::Error::other)?;
    if bytes.len() > FRAME_MAX {
        return Err(std::io::Error::other(format!(
            "a frame of {} bytes exceeds the limit of {FRAME_MAX}",
            bytes.len()
        )));
    }
    let len = u32::try_from(bytes.len()).map_err(std::io::Error::other)?;
    w.write_all(&len.to_le_bytes()).await?;
    w.write_all(&bytes).await?;
    w.flush().await?;
    BYTES_SENT.fetch_add(bytes.len() as u64 + 4, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Bytes this process has written to peers, framing included (for
/// `/metrics`).
pub static BYTES_SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Largest hello accepted: it is read before the peer is known.
pub const HELLO_MAX: usize = 4096;

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub async fn read_frame<R, T>(r: &mut R) -> std::io::Result<Option<T>>
where
    R: AsyncReadExt + Unpin,
    T: for<'de> Deserialize<'de>,
{
    read_frame_limited(r, FRAME_MAX).await
}

/// Reads one frame of at most `max` bytes (a handshake frame). Its buffer
/// grows as bytes arrive, without a budget: keep `max` small.
pub async fn read_frame_limited<R, T>(r: &mut R, max: usize) -> std::io::Result<Option<T>>
where
    R: AsyncReadExt + Unpin,
    T: for<'de> Deserialize<'de>,
{
    let Some(len) = read_len(r).await? else {
        return Ok(None);
    };
    if len > max {
        return Err(std::io::Error::other(format!(
            "the peer sent a frame of {len} bytes, over the limit of {max}"
        )));
    }
    let mut buf = Vec::new();
    (&mut *r).take(len as u64).read_to_end(&mut buf).await?;
    if buf.len() < len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    decode(&buf).map(Some)
}

/// The length prefix of the next frame; `None` at a clean end of stream.
async fn read_len<R: AsyncReadExt + Unpin>(r: &mut R) -> std::io::Result<Option<usize>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => Ok(Some(u32::from_le_bytes(len) as usize)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

fn decode<T: for<'de> Deserialize<'de>>(buf: &[u8]) -> std::io::Result<T> {
    postcard::from_bytes(buf)
        .map_err(|e| std::io::Error::other(format!("the peer sent an undecodable frame: {e}")))
}

/// A keep-alive: a frame of length 0.
pub const KEEP_ALIVE: [u8; 4] = [0; 4];

/// Writes a keep-alive.
pub async fn write_keep_alive<W: AsyncWriteExt + Unpin>(w: &mut W) -> std::io::Result<()> {
    w.write_all(&KEEP_ALIVE).await?;
    w.flush().await?;
    BYTES_SENT.fetch_add(4, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// The first bytes of a frame's buffer; it doubles from there up to the
/// announced length as bytes arrive.
const GROW_FIRST: usize = 64 << 10;
/// Frames up to this size are read without memory from the budget.
pub const SMALL_FRAME: usize = GROW_FIRST;

/// Bytes of frame buffers, shared by every connection: a buffer grows
/// only with memory taken from it, and gives it back when the frame is
/// decoded or the connection ends.
#[derive(Debug, Clone)]
pub struct FrameBudget {
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    capacity: usize,
    /// How long a connection waits for memory before it is cut off.
    wait: std::time::Duration,
    /// How long a frame holding memory may go without a byte.
    stall: std::time::Duration,
}

impl FrameBudget {
    /// A budget of `capacity` bytes (at least one largest frame); a
    /// connection waits up to `wait` for memory, and a frame holding
    /// memory is cut off when no byte of it comes for `stall`.
    pub fn new(
        capacity: usize,
        wait: std::time::Duration,
        stall: std::time::Duration,
    ) -> FrameBudget {
        let capacity = capacity.clamp(FRAME_MAX, tokio::sync::Semaphore::MAX_PERMITS);
        FrameBudget {
            permits: std::sync::Arc::new(tokio::sync::Semaphore::new(capacity)),
            capacity,
            wait,
            stall,
        }
    }

    /// The budget in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes held by buffers now.
    pub fn used(&self) -> usize {
        self.capacity
            .saturating_sub(self.permits.available_permits())
    }

    /// Takes `bytes` more for `held`, waiting up to the budget's wait.
    async fn grow(
        &self,
        held: &mut Option<tokio::sync::OwnedSemaphorePermit>,
        bytes: usize,
    ) -> Result<(), ReadError> {
        let n = u32::try_from(bytes).map_err(|_| ReadError::Budget)?;
        let more = tokio::time::timeout(self.wait, self.permits.clone().acquire_many_owned(n))
            .await
            .map_err(|_| ReadError::Budget)?
            .map_err(|_| ReadError::Budget)?;
        match held {
            Some(p) => p.merge(more),
            None => *held = Some(more),
        }
        Ok(())
    }
}

/// What a read from an open connection brought.
#[derive(Debug)]
pub enum Incoming<T> {
    /// A frame.
    Frame(T),
    /// A keep-alive.
    KeepAlive,
    /// A clean end of stream.
    End,
}

/// Why a read from an open connection failed.
#[derive(Debug)]
pub enum ReadError {
    /// The stream failed or ended inside a frame.
    Io(std::io::Error),
    /// A frame over [`FRAME_MAX`].
    TooLarge(usize),
    /// No memory came from the budget in time.
    Budget,
    /// A frame holding memory from the budget stopped coming.
    Stalled,
    /// Bytes that are not a frame.
    Undecodable(std::io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) | ReadError::Undecodable(e) => write!(f, "{e}"),
            ReadError::TooLarge(len) => write!(
                f,
                "the peer sent a frame of {len} bytes, over the limit of {FRAME_MAX}"
            ),
            ReadError::Budget => f.write_str(
                "no memory for its frame in time, from the budget shared by every peer connection (--frame-budget-mib)",
            ),
            ReadError::Stalled => {
                f.write_str("it stopped sending a large frame halfway, holding frame memory")
            }
        }
    }
}

/// Reads one frame of at most [`FRAME_MAX`] bytes, its buffer growing
/// with memory from `budget` as bytes arrive; the memory goes back once
/// the frame is decoded (or the read fails or is dropped).
pub async fn read_frame_budgeted<R, T>(
    r: &mut R,
    budget: &FrameBudget,
) -> Result<Incoming<T>, ReadError>
where
    R: AsyncReadExt + Unpin,
    T: for<'de> Deserialize<'de>,
{
    let Some(len) = read_len(r).await.map_err(ReadError::Io)? else {
        return Ok(Incoming::End);
    };
    if len == 0 {
        return Ok(Incoming::KeepAlive);
    }
    if len > FRAME_MAX {
        return Err(ReadError::TooLarge(len));
    }
    let mut buf: Vec<u8> = Vec::new();
    if len <= SMALL_FRAME {
        (&mut *r)
            .take(len as u64)
            .read_to_end(&mut buf)
            .await
            .map_err(ReadError::Io)?;
        if buf.len() < len {
            return Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        return decode(&buf)
            .map(Incoming::Frame)
            .map_err(ReadError::Undecodable);
    }
    let mut held = None;
    while buf.len() < len {
        if buf.len() == buf.capacity() {
            let target = (buf.capacity() * 2).max(GROW_FIRST).min(len);
            let more = target - buf.capacity();
            budget.grow(&mut held, more).await?;
            buf.reserve_exact(more);
        }
        let room = (buf.capacity() - buf.len()).min(len - buf.len());
        let n = tokio::time::timeout(budget.stall, (&mut *r).take(room as u64).read_buf(&mut buf))
            .await
            .map_err(|_| ReadError::Stalled)?
            .map_err(ReadError::Io)?;
        if n == 0 {
            return Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
    let frame = decode(&buf).map_err(ReadError::Undecodable)?;
    drop(buf);
    drop(held);
    Ok(Incoming::Frame(frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An anti-entropy Begin as the release before channels sent it:
    /// variant 2 (Exchange), session 7, from the initiator, Begin, root
    /// hash 1 and count 2.
    const BEGIN_BEFORE_CHANNELS: &[u8] = &[2, 7, 1, 0, 1, 2];

    #[test]
    fn frames_of_the_release_before_channels_read_as_the_cluster_scope() {
        use chorus_gossip::merkle;
        let frame: chorus_replica::Frame = decode(BEGIN_BEFORE_CHANNELS).expect("decodes");
        let chorus_replica::Frame::Exchange {
            session: 7,
            from_initiator: true,
            message: merkle::Message::Begin { root },
        } = frame.clone()
        else {
            panic!("not the Begin it was: {frame:?}");
        };
        assert_eq!((root.hash, root.count), (1, 2));
        // The cluster scope's frames are still sent that way.
        assert_eq!(
            postcard::to_stdvec(&frame).expect("encodes"),
            BEGIN_BEFORE_CHANNELS
        );
        // A channel's frame is the new last variant wrapping one of them.
        let wrapped = chorus_replica::Frame::Channel {
            channel: "ca".into(),
            frame: Box::new(frame),
        };
        let bytes = postcard::to_stdvec(&wrapped).expect("encodes");
        assert_eq!(bytes[..4], [3, 2, b'c', b'a']);
        assert_eq!(&bytes[4..], BEGIN_BEFORE_CHANNELS);
    }

    /// The hello of the previous release (protocol 1), as it sent it: a
    /// node of this release without auth still talks to it.
    const HELLO_V1: &[u8] = b"CHORUS01\x01\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x0e127.0.0.1:7900";

    #[test]
    fn a_hello_of_the_previous_release_is_accepted_without_the_exchange() {
        let hello: Hello = postcard::from_bytes(HELLO_V1).expect("decodes");
        assert_eq!(hello.check(), Ok(()));
        assert!(!hello.authenticates());
        assert_eq!(hello.listen, "127.0.0.1:7900");
        // An open node of this release sends exactly that hello.
        let open = Hello::new([7; 16], "127.0.0.1:7900".into(), false);
        assert_eq!(postcard::to_stdvec(&open).expect("encodes"), HELLO_V1);
        let authenticating = Hello::new([7; 16], "127.0.0.1:7900".into(), true);
        assert!(authenticating.authenticates());
        let mut future = authenticating;
        future.version = PROTOCOL_VERSION + 1;
        assert!(
            future
                .check()
                .is_err_and(|e| e.contains("same Chorus version"))
        );
    }

    #[test]
    fn the_hello_frame_is_the_previous_releases_hello_then_the_boot_nonce() {
        let hello = Hello::new([7; 16], "127.0.0.1:7900".into(), false);
        let ext = HelloExt { boot: [9; 16] };
        let frame = postcard::to_stdvec(&(&hello, &ext)).expect("encodes");
        // The previous release decodes it as its hello and ignores the rest.
        assert!(frame.starts_with(HELLO_V1));
        let old: Hello = postcard::from_bytes(&frame).expect("the previous release reads it");
        assert_eq!(old, hello);
        // This release reads both forms.
        assert_eq!(
            decode_hello(&frame).expect("decodes"),
            (hello.clone(), Some(ext))
        );
        assert_eq!(decode_hello(HELLO_V1).expect("decodes"), (hello, None));
        // A cut extension is refused, not read as no nonce.
        assert!(decode_hello(&frame[..frame.len() - 1]).is_err());
    }

    #[tokio::test]
    async fn a_hello_frame_round_trips_over_a_stream() {
        let hello = Hello::new([3; 16], "127.0.0.1:1".into(), true);
        let ext = HelloExt { boot: [4; 16] };
        let mut bytes = Vec::new();
        write_hello(&mut bytes, &hello, &ext).await.expect("write");
        let got = read_hello(&mut &bytes[..]).await.expect("read");
        assert_eq!(got, Some((hello, Some(ext))));
        let old = framed(HELLO_V1);
        let got = read_hello(&mut &old[..]).await.expect("read");
        assert!(matches!(got, Some((_, None))));
    }

    const SECOND: std::time::Duration = std::time::Duration::from_secs(1);

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(payload);
        out
    }

    #[tokio::test]
    async fn a_frame_reads_back_and_gives_its_memory_back() {
        let budget = FrameBudget::new(FRAME_MAX, SECOND, SECOND);
        let big = vec![7u8; 300_000];
        let payload = postcard::to_stdvec(&big).expect("encode");
        let mut bytes = framed(&payload);
        bytes.extend_from_slice(&KEEP_ALIVE);
        let mut r = &bytes[..];
        let got: Incoming<Vec<u8>> = read_frame_budgeted(&mut r, &budget).await.expect("read");
        assert!(matches!(got, Incoming::Frame(v) if v == big));
        assert_eq!(budget.used(), 0);
        let got: Incoming<Vec<u8>> = read_frame_budgeted(&mut r, &budget).await.expect("read");
        assert!(matches!(got, Incoming::KeepAlive));
        let got: Incoming<Vec<u8>> = read_frame_budgeted(&mut r, &budget).await.expect("read");
        assert!(matches!(got, Incoming::End));
    }

    #[tokio::test]
    async fn an_announced_frame_costs_only_the_bytes_that_arrived() {
        let budget = FrameBudget::new(FRAME_MAX, SECOND, SECOND);
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        client
            .write_all(&(FRAME_MAX as u32).to_le_bytes())
            .await
            .expect("write");
        client.write_all(&[1u8; 1000]).await.expect("write");
        let b = budget.clone();
        let reading =
            tokio::spawn(async move { read_frame_budgeted::<_, Vec<u8>>(&mut server, &b).await });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        // One first step of the buffer, not the 16 MiB announced.
        assert_eq!(budget.used(), GROW_FIRST);
        // Then nothing comes: cut off once the stall passes, memory back.
        let got = reading.await.expect("join");
        assert!(matches!(got, Err(ReadError::Stalled)), "{got:?}");
        assert_eq!(budget.used(), 0);
        drop(client);
    }

    #[tokio::test]
    async fn a_frame_that_finds_no_memory_is_refused_in_time() {
        let budget = FrameBudget::new(FRAME_MAX, SECOND / 20, SECOND);
        let hog = budget.clone();
        let mut held = None;
        hog.grow(&mut held, FRAME_MAX).await.expect("all of it");
        let large = framed(&postcard::to_stdvec(&vec![1u8; 100_000]).expect("encode"));
        let got = read_frame_budgeted::<_, Vec<u8>>(&mut &large[..], &budget).await;
        assert!(matches!(got, Err(ReadError::Budget)), "{got:?}");
        // A small frame goes through all the same.
        let small = framed(&postcard::to_stdvec(&vec![1u8; 10]).expect("encode"));
        let got = read_frame_budgeted::<_, Vec<u8>>(&mut &small[..], &budget).await;
        assert!(matches!(got, Ok(Incoming::Frame(_))), "{got:?}");
        drop(held);
        let got = read_frame_budgeted::<_, Vec<u8>>(&mut &large[..], &budget).await;
        assert!(matches!(got, Ok(Incoming::Frame(_))), "{got:?}");
    }

    #[tokio::test]
    async fn oversize_and_handshake_frames_are_refused_before_any_buffer() {
        let budget = FrameBudget::new(FRAME_MAX, SECOND, SECOND);
        let bytes = ((FRAME_MAX + 1) as u32).to_le_bytes();
        let got = read_frame_budgeted::<_, Vec<u8>>(&mut &bytes[..], &budget).await;
        assert!(matches!(got, Err(ReadError::TooLarge(_))), "{got:?}");
        let bytes = (100_000u32).to_le_bytes();
        let got = read_frame_limited::<_, Hello>(&mut &bytes[..], HELLO_MAX).await;
        assert!(got.is_err());
        let hello = Hello::new([1; 16], "127.0.0.1:1".into(), false);
        let bytes = framed(&postcard::to_stdvec(&hello).expect("encode"));
        let got = read_frame_limited::<_, Hello>(&mut &bytes[..], HELLO_MAX)
            .await
            .expect("read");
        assert_eq!(got, Some(hello));
        // A hello cut short is an error, not a frame.
        let got = read_frame_limited::<_, Hello>(&mut &bytes[..bytes.len() - 1], HELLO_MAX).await;
        assert!(got.is_err());
    }
}
