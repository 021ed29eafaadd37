//! The Chorus daemon: a data directory replicated to peers.
//!
//! One task, the core, owns the gossip state machines (HyParView, Plumtree,
//! the Merkle tree and exchange sessions) and the timers; connection tasks
//! (`net.rs`) carry frames (`wire.rs`) to and from it through bounded
//! queues. The core tails the directory's change feed: every commit that
//! originated on this node, by any process, is broadcast; every commit
//! updates the Merkle tree. Objects from peers are merged as commits
//! recorded as the peer's, so they are never broadcast again from here.
//!
//! Peers talk mutual TLS (`tls.rs`), or plaintext on loopback only; the
//! HTTP API (`http.rs`) needs tokens (`auth.rs`, `auth_http.rs`) when
//! `--auth` is given or it listens beyond loopback; the member list lives
//! as data (`members.rs`).

#![forbid(unsafe_code)]

pub mod auth;
mod auth_http;
pub mod broker;
pub mod channels;
mod channels_http;
mod commit;
mod core;
pub mod error;
pub mod events;
pub mod http;
pub mod join;
pub mod json;
pub mod limits;
mod metrics;
mod net;
pub mod service;
pub mod stage;
mod sync_http;
pub mod tls;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::core::{CHANNEL_STATUS_FILE, Stats};
pub use crate::limits::Limits;
pub use chorus_replica::members;
use chorus_replica::validate;

/// How a node runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The data directory (created if missing).
    pub dir: PathBuf,
    /// Where to listen for peers.
    pub gossip: SocketAddr,
    /// Where to serve the HTTP API, if anywhere.
    pub http: Option<SocketAddr>,
    /// A TLS directory (`ca.crt`, `node.crt`, `node.key`): mutual TLS
    /// with peers. `None`: plaintext, allowed on loopback only.
    pub tls: Option<PathBuf>,
    /// The address peers should dial, when it is not `gossip` (a proxy or
    /// a forwarded port in front of this node).
    pub advertise: Option<SocketAddr>,
    /// Peers to join through (host:port).
    pub join: Vec<String>,
    /// How often the change feed is read.
    pub feed_interval: Duration,
    /// How often an anti-entropy exchange starts with a random peer.
    pub exchange_interval: Duration,
    /// How long a tombstone is kept at least, even once every member has
    /// it.
    pub tombstone_grace: Duration,
    /// Seed of the protocols' random choices (defaults to one from the
    /// node id).
    pub seed: Option<u64>,
    /// The ZeroMQ broker, if it runs.
    pub broker: Option<broker::BrokerConfig>,
    /// Whether requests need a token (see docs/auth.md). Forced on when
    /// the HTTP API listens beyond loopback. With auth on, peers must show
    /// a credential too (`join.rs`).
    pub auth: bool,
    /// A join token (`chorus cluster join-token create`): the credential
    /// this node joins with when it does not hold the cluster key yet.
    pub join_token: Option<String>,
    /// Bounds of the audit log: rotated files kept, their size and age,
    /// refusals written per source per window (see docs/auth.md).
    pub audit: auth::AuditConfig,
    /// How far ahead of this node's clock a value pushed by a stage or
    /// sent by a peer may be timestamped (docs/auth.md, "What a pushed
    /// object may claim"): a push beyond is refused, a peer's object is
    /// skipped until the clock catches up.
    pub max_clock_skew: Duration,
    /// Connection caps, request rates, timeouts and the frame memory
    /// budget (docs/auth.md, "Limits").
    pub limits: Limits,
    /// Forward key-value requests for full prefixes this node does not
    /// serve to a node that does, as if each asked `?forward=true`
    /// (docs/channels.md).
    pub forward: bool,
    /// Channels this node serves (`--serve`), merged into the table at
    /// start (see [`channels::Serve`]).
    pub serve: Vec<channels::Serve>,
    /// A local table file (`--channels`), merged into the table at start.
    pub channels: Option<PathBuf>,
    /// How many other members of a channel must hold its data before this
    /// node, no longer serving it, drops its copy (docs/channels.md).
    pub channel_min_members: usize,
}

impl Config {
    /// Defaults for a node with this directory and listen address.
    pub fn new(dir: PathBuf, gossip: SocketAddr) -> Config {
        Config {
            dir,
            gossip,
            http: None,
            tls: None,
            advertise: None,
            join: Vec::new(),
            feed_interval: Duration::from_millis(20),
            exchange_interval: Duration::from_secs(10),
            tombstone_grace: Duration::from_secs(3600),
            seed: None,
            broker: None,
            auth: false,
            join_token: None,
            audit: auth::AuditConfig::default(),
            max_clock_skew: Duration::from_millis(validate::MAX_CLOCK_SKEW_DEFAULT_MS),
            limits: Limits::default(),
            forward: false,
            serve: Vec::new(),
            channels: None,
            channel_min_members: 2,
        }
    }
}

/// Why a node could not start or stopped.
#[derive(Debug)]
pub enum Error {
    /// The data directory failed.
    Store(chorus_store::Error),
    /// A socket failed.
    Io(String),
    /// The configuration was refused.
    Config(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Store(e) => write!(f, "{e}"),
            Error::Io(e) | Error::Config(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for Error {}

impl From<chorus_store::Error> for Error {
    fn from(e: chorus_store::Error) -> Self {
        Error::Store(e)
    }
}

/// Runs a node until `shutdown` completes (or the node leaves). Without a
/// TLS directory the gossip address must be on loopback. Needs tokio's
/// multi-threaded runtime: store calls that sync run in place
/// (`block_in_place`), which the current-thread runtime does not allow.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let plaintext = config.tls.is_none();
    if plaintext && !config.gossip.ip().is_loopback() {
        return Err(Error::Config(format!(
            "--gossip {}: plaintext gossip is only allowed on a loopback address (give a TLS directory)",
            config.gossip
        )));
    }
    if let Some(a) = config
        .advertise
        .filter(|a| plaintext && !a.ip().is_loopback())
    {
        return Err(Error::Config(format!(
            "--advertise {a}: plaintext gossip is only allowed on a loopback address"
        )));
    }
    let mut config = config;
    if let Some(http) = config
        .http
        .filter(|a| !a.ip().is_loopback() && !config.auth)
    {
        tracing::warn!(
            "--http {http} is beyond loopback, so authentication is on: every route but /health, /metrics and /openapi.json needs a token (see docs/auth.md)"
        );
        config.auth = true;
    }
    if let Some(b) = &config.broker {
        if !broker::endpoint_is_local(&b.endpoint).map_err(Error::Config)? && !config.auth {
            tracing::warn!(
                "--zmq {} is beyond loopback, so authentication is on: every request but ping needs a token (see docs/auth.md)",
                b.endpoint
            );
            config.auth = true;
        }
        if let Some(p) = &b.publish {
            if !broker::endpoint_is_local(p).map_err(Error::Config)? {
                return Err(Error::Config(format!(
                    "--zmq-pub {p}: events carry data and ZeroMQ subscribers cannot present tokens, so they are published on loopback or ipc:// only"
                )));
            }
            if config.auth {
                // A PUB socket cannot tell its subscribers apart, so it
                // cannot check tokens: events would reach anyone.
                return Err(Error::Config(format!(
                    "--zmq-pub {p} with auth on: ZeroMQ subscribers cannot present tokens; watch changes over HTTP (/v1/watch with a token) instead"
                )));
            }
        }
    }
    if let Some(open_files) = limits::open_files_limit()
        && let Some(said) = config.limits.fit_to_open_files(open_files)
    {
        tracing::warn!("{said}");
    }
    net::configure(&config.limits);
    let listener = listen_on(config.gossip)?;
    let listen = listener
        .local_addr()
        .map_err(|e| Error::Io(format!("cannot read the listen address: {e}")))?;
    let me = config.advertise.unwrap_or(listen).to_string();
    // Bound before the replica starts: the member record it writes names
    // the HTTP address (a port 0 becomes the one picked).
    let http = match config.http {
        Some(addr) => {
            let l = listen_on(addr)?;
            config.http = Some(
                l.local_addr()
                    .map_err(|e| Error::Io(format!("cannot read the HTTP address: {e}")))?,
            );
            Some(l)
        }
        None => None,
    };
    // Before the replica announces this node: a refused start writes
    // nothing.
    channels::at_start(&config.dir, &config.serve, config.channels.as_deref())?;
    let core = core::Core::open(&config, me)?;
    core.service().auth.configure_audit(config.audit.clone());
    if config.auth {
        // The directory holds the cluster key and password hashes: only
        // its owner may read it (any local account could otherwise mint
        // tokens).
        restrict(&config.dir)?;
        if plaintext {
            tracing::warn!(
                "auth is on and peers talk plaintext on loopback (--insecure): a peer must prove the cluster key or a join token, but the frames themselves are not encrypted; use --tls between machines"
            );
        }
        let auth = core.service().auth;
        let keys = auth
            .cluster_keys()
            .map_err(|e| Error::Config(format!("cannot read the cluster key: {e}")))?;
        // Tokens can be made and checked from the start; a node that
        // joins (with a join token, or through peers) waits for the
        // cluster's key instead of making its own.
        if keys.is_empty() && config.join_token.is_none() && config.join.is_empty() {
            auth.ensure_key()
                .map_err(|e| Error::Config(format!("cannot create the cluster key: {e}")))?;
        }
    }
    if let Some(http) = http {
        tokio::spawn(http::serve(http, core.service(), config.limits.clone()));
    }
    // Stopped (its threads joined) when dropped, after the core stops.
    let _broker = match &config.broker {
        Some(b) => {
            Some(broker::Broker::start(b, core.service(), &config.limits).map_err(Error::Io)?)
        }
        None => None,
    };
    core.run(listener, shutdown).await
}

/// This machine's wall clock, unix milliseconds (0 before 1970).
/// The wall clock, Unix milliseconds (0 if it is before 1970).
pub fn unix_ms_now() -> u64 {
    unix_ms()
}

pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Makes `dir` readable by its owner only (mode 0700).
fn restrict(dir: &std::path::Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = chorus_store::expand_home(dir)?;
    let fail = |e: std::io::Error| {
        Error::Io(format!(
            "cannot make {} private (mode 0700) for the cluster key it holds: {e}",
            dir.display()
        ))
    };
    let mode = std::fs::metadata(&dir).map_err(fail)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(fail)?;
    }
    Ok(())
}

/// Listens with SO_REUSEADDR, so a node restarted at once after a crash
/// gets its port back while old connections linger in TIME_WAIT.
fn listen_on(addr: SocketAddr) -> Result<tokio::net::TcpListener, Error> {
    let fail = |e: std::io::Error| Error::Io(format!("cannot listen on {addr}: {e}"));
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(fail)?;
    socket.set_reuseaddr(true).map_err(fail)?;
    socket.bind(addr).map_err(fail)?;
    socket.listen(1024).map_err(fail)
}
