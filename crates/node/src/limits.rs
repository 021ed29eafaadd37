//! Limits on what peers and clients may hold or ask for: connections in
//! total and per source address, request rates (token buckets), and
//! refusals logged at a bounded rate. docs/auth.md ("Limits") lists every
//! limit with its flag, default and metric.
//!
//! A source is an IPv4 address, or the /64 an IPv6 address belongs to (one
//! host usually holds a whole /64, so counting single IPv6 addresses would
//! count nothing).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Every limit of a node, with the defaults of `chorus serve`.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Inbound gossip connections at most, handshaking or open.
    pub gossip_connections: usize,
    /// Inbound gossip connections from one source at most.
    pub gossip_connections_per_source: usize,
    /// How long an open gossip connection may go without a frame before
    /// it is closed (peers send a keep-alive when quiet).
    pub gossip_idle: Duration,
    /// Bytes of gossip frames being received, over every connection.
    pub frame_budget: usize,
    /// Open HTTP connections at most.
    pub http_connections: usize,
    /// Open HTTP connections from one source at most.
    pub http_connections_per_source: usize,
    /// HTTP requests per second from one source (bursts of as many); 0:
    /// no limit.
    pub http_rate: u32,
    /// How long a client has to send a request's head, counted from when
    /// the server waits for it (so an idle kept-alive connection closes
    /// after it too).
    pub http_header_timeout: Duration,
    /// How long an HTTP connection may go without a byte read or written.
    pub http_idle: Duration,
    /// ZeroMQ requests per second from one connection (routing id), in
    /// bursts of as many; 0: no limit.
    pub zmq_rate: u32,
    /// ZeroMQ requests per second over every connection; 0: no limit.
    pub zmq_rate_total: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            gossip_connections: 256,
            gossip_connections_per_source: 32,
            gossip_idle: Duration::from_secs(120),
            frame_budget: 64 << 20,
            http_connections: 4096,
            http_connections_per_source: 2048,
            http_rate: 10_000,
            http_header_timeout: Duration::from_secs(30),
            http_idle: Duration::from_secs(120),
            zmq_rate: 10_000,
            zmq_rate_total: 100_000,
        }
    }
}

/// Descriptors kept free for the store's files, outbound connections and
/// ZeroMQ when the connection caps are fitted to the process's limit.
pub(crate) const FD_RESERVE: u64 = 256;

impl Limits {
    /// Lowers the connection caps so that they fit under `open_files`
    /// descriptors (the process's soft limit) with [`FD_RESERVE`] to spare:
    /// past the limit every accept, file open and dial would fail, peers
    /// and clients alike. Says what it changed, if anything.
    pub(crate) fn fit_to_open_files(&mut self, open_files: u64) -> Option<String> {
        let room = open_files.saturating_sub(FD_RESERVE);
        let wanted = (self.gossip_connections + self.http_connections) as u64;
        if wanted <= room {
            return None;
        }
        let before = (self.gossip_connections, self.http_connections);
        // Gossip keeps at most half of the room, HTTP the rest; each at
        // least 16.
        let room = usize::try_from(room).unwrap_or(usize::MAX);
        self.gossip_connections = self.gossip_connections.min(room / 2).max(16);
        self.http_connections = self
            .http_connections
            .min(room.saturating_sub(self.gossip_connections))
            .max(16);
        self.gossip_connections_per_source = self
            .gossip_connections_per_source
            .min(self.gossip_connections);
        self.http_connections_per_source =
            self.http_connections_per_source.min(self.http_connections);
        Some(format!(
            "the process may open {open_files} files (ulimit -n), too few for {} gossip and {} HTTP connections besides its own files: serving at most {} and {}; raise the limit (ulimit -n) to keep the flags' values",
            before.0, before.1, self.gossip_connections, self.http_connections
        ))
    }
}

/// The soft limit on open files of this process, from /proc/self/limits
/// (`None` where it cannot be read, or is unlimited).
pub(crate) fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The source a connection is counted under.
pub(crate) fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// As many connections as the total cap are open.
    Total,
    /// As many connections from this source as its cap are open.
    PerSource,
}

/// Counts open connections in total and per source, and admits a new
/// one only under both caps. The map holds only sources with a
/// connection open, so it is bounded by the total cap.
#[derive(Debug)]
pub(crate) struct ConnGate {
    total_max: usize,
    per_source_max: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// An admitted connection; dropping it frees its place.
#[derive(Debug)]
pub(crate) struct ConnPermit {
    gate: Arc<ConnGate>,
    source: IpAddr,
}

impl ConnGate {
    /// A gate with these caps (each at least 1).
    pub(crate) fn new(total_max: usize, per_source_max: usize) -> Arc<ConnGate> {
        Arc::new(ConnGate {
            total_max: total_max.max(1),
            per_source_max: per_source_max.max(1),
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// Admits a connection from `ip`, or says which cap it would pass.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnPermit, Refusal> {
        let source = source(ip);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.0 >= self.total_max {
            return Err(Refusal::Total);
        }
        let from = open.1.get(&source).copied().unwrap_or(0);
        if from >= self.per_source_max {
            return Err(Refusal::PerSource);
        }
        open.0 += 1;
        open.1.insert(source, from + 1);
        Ok(ConnPermit {
            gate: self.clone(),
            source,
        })
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).0
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut open = self
            .gate
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.1.remove(&self.source);
            }
        }
    }
}

/// Sources (or peers) whose buckets are tracked at once at most. Past
/// it, buckets that have refilled are forgotten (they are the same as
/// new ones); if every bucket is still draining, a new source is let
/// through untracked: a per-source rate cannot stop many sources anyway.
const BUCKETS_MAX: usize = 16_384;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets, one per key: `rate` requests per second, in bursts of
/// up to `rate`. A rate of 0 lets everything through.
#[derive(Debug)]
pub(crate) struct Rate<K> {
    rate: f64,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: std::hash::Hash + Eq + Clone> Rate<K> {
    /// `rate` requests per second per key (0: no limit).
    pub(crate) fn new(rate: u32) -> Rate<K> {
        Rate {
            rate: f64::from(rate),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `key`, or says how long until one is there.
    pub(crate) fn take(&self, key: &K, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if !buckets.contains_key(key) && buckets.len() >= BUCKETS_MAX {
            let (rate, burst) = (self.rate, self.rate);
            buckets.retain(|_, b| refill(b, now, rate, burst) < burst);
            if buckets.len() >= BUCKETS_MAX {
                return Ok(());
            }
        }
        let bucket = buckets.entry(key.clone()).or_insert(Bucket {
            tokens: self.rate,
            at: now,
        });
        let tokens = refill(bucket, now, self.rate, self.rate);
        if tokens >= 1.0 {
            bucket.tokens = tokens - 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - tokens) / self.rate))
    }
}

/// The bucket's tokens at `now` (it is updated to `now`).
fn refill(b: &mut Bucket, now: Instant, rate: f64, burst: f64) -> f64 {
    let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
    b.tokens = (b.tokens + elapsed * rate).min(burst);
    b.at = now;
    b.tokens
}

/// Lets a repeated warning through at most once per period, with the
/// number held back since the last one.
#[derive(Debug)]
pub(crate) struct Throttled {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttled {
    /// At most one line per `every`.
    pub(crate) const fn new(every: Duration) -> Throttled {
        Throttled {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// Whether a line was logged yet, and how many were held back since.
    #[cfg(test)]
    pub(crate) fn state(&self) -> (bool, u64) {
        let s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        (s.0.is_some(), s.1)
    }

    /// `Some(held back since the last line)` when a line may be logged now.
    pub(crate) fn hit(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if s.0
            .is_some_and(|last| now.duration_since(last) < self.every)
        {
            s.1 += 1;
            return None;
        }
        let held = s.1;
        *s = (Some(now), 0);
        Some(held)
    }
}

impl Default for Throttled {
    /// At most one line per [`LOG_EVERY`].
    fn default() -> Throttled {
        Throttled::new(LOG_EVERY)
    }
}

/// How often a kind of refusal is logged at most.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn the_gate_refuses_past_each_cap_and_frees_places_on_drop() {
        let gate = ConnGate::new(3, 2);
        let a1 = gate.admit(ip("10.0.0.1")).expect("first");
        let a2 = gate.admit(ip("10.0.0.1")).expect("second");
        assert_eq!(gate.admit(ip("10.0.0.1")).err(), Some(Refusal::PerSource));
        let b1 = gate.admit(ip("10.0.0.2")).expect("another source");
        assert_eq!(gate.admit(ip("10.0.0.3")).err(), Some(Refusal::Total));
        assert_eq!(gate.open(), 3);
        drop(a1);
        let a3 = gate.admit(ip("10.0.0.1")).expect("a freed place");
        drop((a2, a3, b1));
        assert_eq!(gate.open(), 0);
        assert!(gate.open.lock().expect("lock").1.is_empty());
    }

    #[test]
    fn an_ipv6_source_is_its_64() {
        let gate = ConnGate::new(10, 1);
        let _a = gate.admit(ip("2001:db8:1:2::1")).expect("first");
        assert_eq!(
            gate.admit(ip("2001:db8:1:2::ffff")).err(),
            Some(Refusal::PerSource)
        );
        let _b = gate.admit(ip("2001:db8:1:3::1")).expect("another /64");
        assert_eq!(source(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
    }

    #[test]
    fn a_bucket_allows_its_burst_then_the_rate() {
        let rate = Rate::new(4);
        let t0 = Instant::now();
        for _ in 0..4 {
            rate.take(&1u8, t0).expect("within the burst");
        }
        let wait = rate.take(&1u8, t0).expect_err("past the burst");
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(250));
        rate.take(&2u8, t0).expect("another key has its own bucket");
        rate.take(&1u8, t0 + Duration::from_millis(260))
            .expect("a token came back");
        let off = Rate::new(0);
        for _ in 0..1000 {
            off.take(&1u8, t0).expect("no limit");
        }
    }

    #[test]
    fn refilled_buckets_are_forgotten_when_the_map_is_full() {
        let rate = Rate::new(1);
        let t0 = Instant::now();
        for k in 0..BUCKETS_MAX as u32 {
            rate.take(&k, t0).expect("first request");
        }
        // Every bucket is draining: a new key goes through untracked.
        rate.take(&u32::MAX, t0).expect("untracked");
        assert_eq!(rate.buckets.lock().expect("lock").len(), BUCKETS_MAX);
        // A second later they are full again and make room.
        let t1 = t0 + Duration::from_secs(2);
        rate.take(&u32::MAX, t1).expect("tracked now");
        assert_eq!(rate.buckets.lock().expect("lock").len(), 1);
    }

    #[test]
    fn caps_are_fitted_under_the_open_files_limit() {
        let mut l = Limits::default();
        assert_eq!(l.fit_to_open_files(1 << 20), None);
        let said = l.fit_to_open_files(1024).expect("lowered");
        assert!(said.contains("ulimit -n"), "{said}");
        assert!(l.gossip_connections + l.http_connections <= 1024 - FD_RESERVE as usize);
        assert!(l.gossip_connections_per_source <= l.gossip_connections);
        assert!(l.http_connections_per_source <= l.http_connections);
        assert_eq!(l.gossip_connections, 256);
    }

    #[test]
    fn a_throttled_warning_counts_what_it_held_back() {
        let t = Throttled::new(Duration::from_secs(3600));
        assert_eq!(t.hit(), Some(0));
        assert_eq!(t.hit(), None);
        assert_eq!(t.hit(), None);
        let t = Throttled::new(Duration::ZERO);
        assert_eq!(t.hit(), Some(0));
        assert_eq!(t.hit(), Some(0));
    }
}
