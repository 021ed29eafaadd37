//! The stage: a local data directory that writers use at local speed, and
//! the push/pull daemon (`chorus stage`) that carries its writes to an
//! upstream node and the upstream's changes back (docs/staging.md).
//!
//! The daemon tails the directory's change feed and collects the keys of
//! local commits (not the ones it merged from the upstream) into a pending
//! set. It pushes them after a quiet period without new local writes, or
//! at once when a batch is full, sending each key's whole current object,
//! which the upstream merges (nothing lost, idempotent). How far it has
//! pushed is a feed cursor kept in the directory and advanced only after
//! the upstream acknowledged, so a crash at any point loses nothing: the
//! next run pushes again from the cursor. Offline, it keeps everything
//! and retries with a backoff. It pulls the followed prefixes' changes and
//! merges them as commits recorded as the upstream's, so they are never
//! pushed back.
//!
//! A push request ([`chorus_store::stage_request`]: a write to
//! `$stage/requests` by any process on the directory) makes the daemon
//! push at once, skipping the quiet period; once the upstream acknowledged
//! a push through the request's commit, the daemon records so in the same
//! full prefix, and a failed attempt while a request waits too.
//!
//! Everything is bounded: the pending set holds at most a batch (reading
//! the feed waits while it is full: the log is the buffer), a push request
//! at most [`PUSH_BYTES_MAX`] of objects, a pull page what the upstream
//! sends (8 MiB of objects).

mod client;
mod state;

use std::collections::BTreeSet;
use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chorus_core::object::Hlc;
use chorus_core::{FullPrefix, NodeId};
use chorus_store::stage_request::{self, PushAck, PushFailure};
use chorus_store::{Cursor, Feed, Metadata, Origin, PutOptions, PutValue, Store};
use serde_json::{Value, json};

use crate::Error;
use crate::sync_http::{PullScope, PushBody, WireObject};
use client::{Client, Reply};
use state::{ErrorRecord, PullState, PushRecord, Saved};

pub use state::status;

/// Most bytes of objects in one push request (one object larger goes
/// alone).
pub const PUSH_BYTES_MAX: usize = 8 << 20;
/// Most bytes of JSON in one push request's object list: with base64 and
/// names, small objects take more room on the wire than on disk; this
/// keeps a request well under the upstream's 16 MiB body limit.
const PUSH_BODY_BUDGET: usize = 12 << 20;
/// The first wait after a failure; it doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// The longest wait between attempts while the upstream fails.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often the feed is read for new local writes.
const FEED_POLL: Duration = Duration::from_millis(20);
/// Longest a moved pull cursor waits to be stored when nothing was merged.
const PULL_SAVE_EVERY: Duration = Duration::from_secs(60);
/// Pull pages read per followed prefix and round.
const PULL_PAGES_PER_ROUND: usize = 16;

/// The upstream: an `http://HOST[:PORT][/PATH]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    host: String,
    port: u16,
    /// A path prefix ("" or "/something"), no trailing slash.
    base: String,
}

impl Upstream {
    /// Parses the URL; `https://` and other schemes are refused with the
    /// reason.
    pub fn parse(text: &str) -> Result<Upstream, String> {
        let text = text.trim();
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(format!(
                "upstream {text:?} is not a URL: give http://HOST:PORT, for example http://127.0.0.1:7800"
            ));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "http" => {}
            "https" => {
                return Err(format!(
                    "upstream {text:?}: https upstream not supported yet; use http:// to a node on this machine or a trusted network (or a local TLS-terminating proxy)"
                ));
            }
            other => {
                return Err(format!(
                    "upstream {text:?}: unknown scheme {other:?}; give http://HOST:PORT"
                ));
            }
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') || path.contains('?') || path.contains('#') {
            return Err(format!(
                "upstream {text:?}: give only http://HOST:PORT[/PATH], without credentials, query or fragment (the token goes in $CHORUS_TOKEN or --token-file)"
            ));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("upstream {text:?}: unclosed '[' in the host"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(format!("upstream {text:?}: junk after the host")),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(format!("upstream {text:?} has no host"));
        }
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("upstream {text:?}: port {p:?} is not 1-65535"))?,
        };
        Ok(Upstream {
            host,
            port,
            base: path.trim_end_matches('/').to_string(),
        })
    }

    /// `HOST:PORT` as the Host header wants it.
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority(), self.base)
    }
}

/// A prefix the stage follows: `PREFIX` (every subprefix) or
/// `PREFIX/SUBPREFIX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Follow(PullScope);

impl Follow {
    /// Parses `PREFIX` or `PREFIX/SUBPREFIX`; reserved (`$`) names are
    /// refused.
    pub fn parse(text: &str) -> Result<Follow, String> {
        let scope = match text.split_once('/') {
            Some((p, s)) => PullScope::new(p, Some(s)),
            None => PullScope::new(text, None),
        };
        scope
            .map(Follow)
            .map_err(|e| format!("--follow {text:?}: {e}"))
    }
}

impl fmt::Display for Follow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// How a stage runs.
#[derive(Debug, Clone)]
pub struct StageConfig {
    /// Where to push and pull.
    pub upstream: Upstream,
    /// Sent as `Authorization: Bearer TOKEN` on every request.
    pub token: Option<String>,
    /// Push once no local write came for this long.
    pub quiet: Duration,
    /// Push at once when this many keys are pending.
    pub batch: usize,
    /// Writes whose timestamps are this close are near-simultaneous.
    pub window: Duration,
    /// 0-255: on a near-simultaneous write the higher priority wins.
    pub priority: u8,
    /// The prefixes to pull; empty: the full prefixes pushed to.
    pub follow: Vec<Follow>,
    /// How often the followed prefixes are pulled.
    pub pull_interval: Duration,
}

/// Runs the push/pull daemon on `store` until a fatal error (the
/// directory fails, or another daemon holds it). Losing the upstream is
/// not one: the daemon keeps everything and retries.
pub fn run(store: Store, config: StageConfig) -> Result<(), Error> {
    let _lock = state::lock(store.dir())?;
    let mut daemon = Daemon::new(store, config)?;
    daemon.start()?;
    loop {
        daemon.step()?;
        std::thread::sleep(daemon.idle());
    }
}

/// A push that sends every local key, from a snapshot, before the feed is
/// read again from `end`.
struct Sweep {
    keys: Vec<(FullPrefix, Vec<u8>)>,
    done: usize,
    end: Cursor,
}

struct Daemon {
    meta: Metadata,
    config: StageConfig,
    client: Client,
    saved: Saved,
    /// Where the feed has been read to: the pending keys are the local
    /// keys of the commits between the push cursor and here.
    tail: Cursor,
    pending: BTreeSet<(FullPrefix, Vec<u8>)>,
    /// When the last local write happened, as far as the quiet period goes.
    last_write: Option<Instant>,
    sweep: Option<Sweep>,
    backoff: Duration,
    retry_at: Option<Instant>,
    /// The upstream's node id, once it answered (reset on failures, so
    /// the daemon checks who it talks to after reconnecting).
    upstream_node: Option<NodeId>,
    next_pull: Instant,
    /// For the retry jitter.
    rng: u64,
    reports_written: u64,
    /// When the state was last stored: a pull that only moved its
    /// cursor stores it at most every [`PULL_SAVE_EVERY`], so an idle
    /// stage does not grow its log (a lost pull cursor only repeats a
    /// pull).
    last_saved: Instant,
    /// The commit sequence number of the newest push request seen (0:
    /// none); it waits while above `ack.through`.
    requested: u64,
    /// The acknowledgement last recorded for the push requests.
    ack: PushAck,
    /// Keys pushed since that acknowledgement.
    keys_since_ack: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A line of the stage's log: `tracing`, target `chorus stage` (shown as
/// `INFO chorus stage: ...` by the command line).
fn log(line: impl AsRef<str>) {
    tracing::info!(target: "chorus stage", "{}", line.as_ref());
}

/// Percent-encodes a query value.
fn query_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Daemon {
    fn new(store: Store, config: StageConfig) -> Result<Daemon, Error> {
        let meta = Metadata::new(store.clone());
        let mut saved = Saved::load(&meta)?;
        let client =
            Client::new(config.upstream.clone(), config.token.as_deref()).map_err(Error::Io)?;
        let upstream = config.upstream.to_string();
        if !saved.upstream.is_empty() && saved.upstream != upstream {
            log(format!(
                "the upstream was {}, now {upstream}: its node id is checked when it answers",
                saved.upstream
            ));
        }
        saved.upstream = upstream;
        saved.pid = std::process::id();
        saved.started_ms = now_ms();
        saved.config = json!({
            "quiet_ms": config.quiet.as_millis() as u64,
            "batch": config.batch,
            "window_ms": config.window.as_millis() as u64,
            "priority": config.priority,
            "follow": config.follow.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "pull_interval_ms": config.pull_interval.as_millis() as u64,
        });
        let tail = store.cursor()?;
        let requested = stage_request::latest_request(&store)?;
        let ack = match stage_request::read_ack(&meta) {
            Ok(a) => a.unwrap_or_default(),
            Err(e) => {
                log(format!("{e}: writing a new one at the next push"));
                PushAck::default()
            }
        };
        let rng = u64::from(std::process::id()) ^ now_ms().rotate_left(17) | 1;
        Ok(Daemon {
            meta,
            config,
            client,
            saved,
            tail,
            pending: BTreeSet::new(),
            last_write: None,
            sweep: None,
            backoff: BACKOFF_MIN,
            retry_at: None,
            upstream_node: None,
            next_pull: Instant::now(),
            rng,
            reports_written: 0,
            last_saved: Instant::now(),
            requested,
            ack,
            keys_since_ack: 0,
        })
    }

    fn store(&self) -> &Store {
        self.meta.store()
    }

    /// Stores the state (one commit in the stage directory).
    fn save(&mut self) -> Result<(), Error> {
        self.last_saved = Instant::now();
        self.saved.save(&self.meta)
    }

    /// Where reading starts: the push cursor, or a sweep of every key if
    /// nothing was pushed yet or the cursor is unusable.
    fn start(&mut self) -> Result<(), Error> {
        let cursor = self.saved.push_cursor.as_deref().map(Cursor::parse);
        match cursor {
            Some(Ok(c)) => {
                self.tail = c;
                let waiting = state::waiting_after(self.store(), c)?;
                match waiting {
                    Some(n) => log(format!(
                        "{n} key(s) written since the last acknowledged push; resuming from {c}"
                    )),
                    None => self.start_sweep(
                        "compaction outran the push cursor: pushing every local key (correct, slower)",
                    )?,
                }
            }
            Some(Err(e)) => self.start_sweep(&format!(
                "the stored push cursor is unusable ({e}): pushing every local key"
            ))?,
            None => self.start_sweep("first run on this directory: pushing every local key")?,
        }
        let follows = if self.config.follow.is_empty() {
            "the full prefixes it pushes to".to_string()
        } else {
            self.config
                .follow
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        log(format!(
            "staging {} (node {}) for {}: push after {:?} quiet or {} keys, window {:?}, priority {}; pulling {follows} every {:?}",
            self.store().dir().display(),
            self.store().node_id(),
            self.config.upstream,
            self.config.quiet,
            self.config.batch,
            self.config.window,
            self.config.priority,
            self.config.pull_interval
        ));
        self.save()
    }

    fn start_sweep(&mut self, why: &str) -> Result<(), Error> {
        // The cursor first: whatever commits meanwhile is pushed twice,
        // never missed.
        let end = self.store().cursor()?;
        let keys = state::all_keys(self.store())?;
        log(format!("{why} ({} keys)", keys.len()));
        self.pending.clear();
        if keys.is_empty() {
            // Nothing to send: everything up to `end` is upstream.
            self.tail = end;
            self.saved.push_cursor = Some(end.to_string());
            return self.save();
        }
        self.sweep = Some(Sweep { keys, done: 0, end });
        self.saved.full_pushes += 1;
        Ok(())
    }

    /// How long to sleep before the next step.
    fn idle(&self) -> Duration {
        FEED_POLL
    }

    fn step(&mut self) -> Result<(), Error> {
        self.notice_request()?;
        self.read_feed()?;
        let now = Instant::now();
        if self.retry_at.is_some_and(|t| now < t) {
            return Ok(());
        }
        if self.upstream_node.is_none() && !self.hello()? {
            return Ok(());
        }
        if self.push_due() && !self.push()? {
            return Ok(());
        }
        if Instant::now() >= self.next_pull {
            self.pull()?;
            self.next_pull = Instant::now() + self.config.pull_interval;
        }
        Ok(())
    }

    /// Notices a new push request: it makes a push due at once (see
    /// [`Daemon::push_due`]) and, while the upstream fails, brings the next
    /// attempt within [`BACKOFF_MIN`] (not sooner, however many requests
    /// come).
    fn notice_request(&mut self) -> Result<(), Error> {
        let seq = stage_request::latest_request(self.store())?;
        if seq <= self.requested {
            return Ok(());
        }
        self.requested = seq;
        if seq > self.ack.through {
            log(format!("push requested (commit {seq}): pushing now"));
            let soon = Instant::now() + BACKOFF_MIN;
            self.retry_at = self.retry_at.map(|t| t.min(soon));
        }
        Ok(())
    }

    /// Whether a push request waits for an acknowledgement.
    fn requested(&self) -> bool {
        self.requested > self.ack.through
    }

    /// Reads new commits into the pending set, until it holds a batch.
    fn read_feed(&mut self) -> Result<(), Error> {
        if self.sweep.is_some() {
            return Ok(());
        }
        let cap = self.config.batch.max(1);
        while self.pending.len() < cap {
            let start = self.tail;
            let (changes, next) = match self.store().changes_since(&start, 256)? {
                Feed::Gap { .. } => {
                    return self.start_sweep(
                        "compaction outran the push cursor: pushing every local key (correct, slower)",
                    );
                }
                Feed::Changes { changes, next } => (changes, next),
            };
            if changes.is_empty() {
                self.tail = next;
                return Ok(());
            }
            let mut full = false;
            for change in changes {
                if change.origin == Origin::Local {
                    let mut wrote = false;
                    for k in change.keys {
                        if !k.full_prefix.is_reserved() {
                            self.pending.insert((k.full_prefix, k.key));
                            wrote = true;
                        }
                    }
                    if wrote {
                        self.observe_write(change.ts);
                    }
                }
                self.tail = start.with_seq(change.seq);
                if self.pending.len() >= cap {
                    full = true;
                    break;
                }
            }
            if !full {
                self.tail = next;
            }
        }
        Ok(())
    }

    /// A local write committed at `ts` restarts the quiet period, from
    /// when it was written (a backlog found at start does not wait again).
    fn observe_write(&mut self, ts: u64) {
        let now = Instant::now();
        let age =
            Duration::from_millis(now_ms().saturating_sub(Hlc(ts).ms())).min(self.config.quiet);
        let at = now.checked_sub(age).unwrap_or(now);
        if self.last_write.is_none_or(|t| at > t) {
            self.last_write = Some(at);
        }
    }

    fn push_due(&self) -> bool {
        if self.sweep.is_some() || self.requested() {
            return true;
        }
        !self.pending.is_empty()
            && (self.pending.len() >= self.config.batch
                || self
                    .last_write
                    .is_none_or(|t| t.elapsed() >= self.config.quiet))
    }

    /// Records a failure and schedules the next attempt.
    fn fail(&mut self, message: String) -> Result<(), Error> {
        let changed = self
            .saved
            .last_error
            .as_ref()
            .is_none_or(|e| e.message != message);
        self.record_failure(&message)?;
        // A jitter of 0.5-1.5 so that many stages do not retry in step.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let jitter = 0.5 + (self.rng % 1000) as f64 / 1000.0;
        let wait = self.backoff.mul_f64(jitter);
        if changed || self.backoff == BACKOFF_MAX {
            log(format!(
                "{message}; keeping everything, next attempt in {:.1}s",
                wait.as_secs_f64()
            ));
        }
        let stale =
            self.saved.last_error.as_ref().is_none_or(|e| {
                now_ms().saturating_sub(e.time_ms) >= BACKOFF_MAX.as_millis() as u64
            });
        self.saved.last_error = Some(ErrorRecord {
            time_ms: now_ms(),
            message,
        });
        self.retry_at = Some(Instant::now() + wait);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        self.upstream_node = None;
        if changed || stale {
            self.save()?;
        }
        Ok(())
    }

    /// Records a failure for the push requests that wait, once per newest
    /// request and message.
    fn record_failure(&mut self, message: &str) -> Result<(), Error> {
        if !self.requested() {
            return Ok(());
        }
        let recorded = self
            .ack
            .failed
            .as_ref()
            .is_some_and(|f| f.seq == self.requested && f.message == message);
        if recorded {
            return Ok(());
        }
        self.ack.failed = Some(PushFailure {
            seq: self.requested,
            time_ms: now_ms(),
            message: message.to_string(),
        });
        stage_request::write_ack(&self.meta, &self.ack)?;
        Ok(())
    }

    /// Records that everything local up to commit `through` is upstream,
    /// when a push request waited for it (or a recorded failure is now
    /// out of date).
    fn acknowledge(&mut self, through: u64) -> Result<(), Error> {
        if !self.requested() || (through < self.requested && self.ack.failed.is_none()) {
            return Ok(());
        }
        self.ack = PushAck {
            through: through.max(self.ack.through),
            time_ms: now_ms(),
            keys: self.keys_since_ack,
            upstream: self.config.upstream.to_string(),
            failed: None,
        };
        stage_request::write_ack(&self.meta, &self.ack)?;
        self.keys_since_ack = 0;
        Ok(())
    }

    fn succeeded(&mut self) {
        self.backoff = BACKOFF_MIN;
        self.retry_at = None;
    }

    /// Asks the upstream who it is. False if it cannot be reached.
    fn hello(&mut self) -> Result<bool, Error> {
        let reply = match self.client.get("/health") {
            Ok(r) if r.status == 200 => r,
            Ok(r) => {
                self.fail(format!("the upstream's /health answered {}", r.message()))?;
                return Ok(false);
            }
            Err(e) => {
                self.fail(e)?;
                return Ok(false);
            }
        };
        let node = serde_json::from_slice::<Value>(&reply.body)
            .ok()
            .and_then(|v| v["node"].as_str().and_then(NodeId::parse_hex));
        let Some(node) = node else {
            self.fail(format!(
                "{} is not a Chorus node (its /health names no node id)",
                self.config.upstream
            ))?;
            return Ok(false);
        };
        let known = self
            .saved
            .upstream_node
            .as_deref()
            .and_then(NodeId::parse_hex);
        if known.is_some_and(|k| k != node) {
            self.start_sweep(&format!(
                "the upstream is another node now ({node}, was {}): pushing every local key to it and pulling afresh",
                self.saved.upstream_node.as_deref().unwrap_or("?")
            ))?;
            self.saved.pulls.clear();
        }
        if known != Some(node) {
            self.saved.upstream_node = Some(node.to_string());
            self.save()?;
        }
        log(format!(
            "connected to {} (node {node})",
            self.config.upstream
        ));
        self.upstream_node = Some(node);
        self.succeeded();
        Ok(true)
    }

    /// Pushes the pending keys (or the sweep's next batch). False if the
    /// upstream failed.
    fn push(&mut self) -> Result<bool, Error> {
        let keys: Vec<(FullPrefix, Vec<u8>)> = match &self.sweep {
            Some(s) => {
                let end = (s.done + self.config.batch.max(1)).min(s.keys.len());
                s.keys[s.done..end].to_vec()
            }
            None => self.pending.iter().cloned().collect(),
        };
        let snap = self.store().snapshot()?;
        let mut requests: Vec<Vec<WireObject>> = Vec::new();
        let mut current: Vec<WireObject> = Vec::new();
        let (mut bytes, mut json_bytes) = (0usize, 0usize);
        let mut prefixes: BTreeSet<String> = BTreeSet::new();
        for (fp, key) in &keys {
            let Some(encoded) = snap.get(fp, key) else {
                continue;
            };
            if chorus_core::object::Object::decode(&encoded).is_err() {
                log(format!(
                    "{fp}/{} does not hold a metadata object (written with the raw engine API): not pushed",
                    String::from_utf8_lossy(key)
                ));
                continue;
            }
            let wire = WireObject::new(fp, key, &encoded);
            // Its share of the body: the JSON of the entry and a comma.
            let size = serde_json::to_string(&wire).map_or(0, |t| t.len() + 1);
            if !current.is_empty()
                && (bytes + encoded.len() > PUSH_BYTES_MAX
                    || json_bytes + size > PUSH_BODY_BUDGET
                    || current.len() >= crate::sync_http::PUSH_OBJECTS_MAX)
            {
                requests.push(std::mem::take(&mut current));
                (bytes, json_bytes) = (0, 0);
            }
            bytes += encoded.len();
            json_bytes += size;
            prefixes.insert(fp.to_string());
            current.push(wire);
        }
        if !current.is_empty() {
            requests.push(current);
        }
        let count = requests.iter().map(Vec::len).sum::<usize>();
        let sent = requests.len();
        let mut reports = 0usize;
        for objects in requests {
            let body = PushBody {
                node: self.store().node_id().to_string(),
                priority: self.config.priority,
                window_ms: u32::try_from(self.config.window.as_millis()).unwrap_or(u32::MAX),
                objects,
            };
            let body = serde_json::to_vec(&body)
                .map_err(|e| Error::Config(format!("cannot encode a push: {e}")))?;
            let reply = match self.client.post("/v1/sync/push", body) {
                Ok(r) if r.status == 200 => r,
                Ok(r) => {
                    self.fail(format!("the upstream refused a push: {}", r.message()))?;
                    return Ok(false);
                }
                Err(e) => {
                    self.fail(e)?;
                    return Ok(false);
                }
            };
            let answer: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
            if let Some(list) = answer["reports"].as_array() {
                for r in list {
                    self.record_report(r)?;
                    reports += 1;
                }
            }
        }
        // Acknowledged: advance.
        match &mut self.sweep {
            Some(s) => {
                s.done = (s.done + self.config.batch.max(1)).min(s.keys.len());
                if s.done >= s.keys.len() {
                    let end = s.end;
                    self.sweep = None;
                    self.tail = end;
                    self.saved.push_cursor = Some(end.to_string());
                }
            }
            None => {
                self.pending.clear();
                self.saved.push_cursor = Some(self.tail.to_string());
            }
        }
        for p in prefixes {
            if !self.saved.pushed_prefixes.contains(&p) {
                self.saved.pushed_prefixes.push(p);
            }
        }
        self.keys_since_ack += count as u64;
        // The acknowledgement first: it is true once the upstream answered,
        // and a crash before the state is stored only repeats the push.
        let through = self
            .saved
            .push_cursor
            .as_deref()
            .and_then(|c| Cursor::parse(c).ok())
            .map_or(0, |c| c.seq());
        let requested = self.requested();
        self.acknowledge(through)?;
        if count > 0 {
            self.saved.last_push = Some(PushRecord {
                time_ms: now_ms(),
                keys: count,
                requests: sent,
                reports,
            });
            self.saved.pushes_total += 1;
            self.saved.requests_total += sent as u64;
            self.saved.keys_pushed_total += count as u64;
        }
        self.save()?;
        if count > 0 {
            log(format!(
                "pushed {count} key(s) in {sent} request(s){}",
                if reports > 0 {
                    format!(", {reports} near-simultaneous write(s) reported")
                } else {
                    String::new()
                }
            ));
        }
        if requested && !self.requested() {
            log(format!(
                "push request done: everything local through commit {through} is upstream"
            ));
        }
        self.succeeded();
        Ok(true)
    }

    /// Logs a near-simultaneous write and records it in the directory.
    fn record_report(&mut self, report: &Value) -> Result<(), Error> {
        let values = |field: &str| -> String {
            report[field]
                .as_array()
                .map(|vs| {
                    vs.iter()
                        .map(|v| {
                            format!(
                                "{} at {} by {} (priority {})",
                                v.get("value")
                                    .map_or_else(|| "a delete".to_string(), |x| format!("{x}")),
                                v["timestamp"],
                                v["node"].as_str().map_or_else(
                                    || "?".into(),
                                    |n| n.chars().take(8).collect::<String>()
                                ),
                                v["priority"]
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default()
        };
        log(format!(
            "WARNING near-simultaneous write on {}/{}: pushed {} met upstream {} within {} ms: {} ({})",
            report["full_prefix"].as_str().unwrap_or("?"),
            report["key"].as_str().unwrap_or("?"),
            values("pushed"),
            values("concurrent"),
            report["window_ms"],
            report["outcome"].as_str().unwrap_or("?"),
            report["detail"].as_str().unwrap_or("")
        ));
        let mut record = report.clone();
        record["recorded_ms"] = json!(now_ms());
        record["upstream"] = json!(self.config.upstream.to_string());
        self.reports_written += 1;
        let key = format!(
            "{:013}-{}-{:06}-{}/{}",
            now_ms(),
            std::process::id(),
            self.reports_written,
            report["full_prefix"].as_str().unwrap_or("?"),
            report["key"].as_str().unwrap_or("?")
        );
        self.meta.put_reserved(
            &state::reports_fp()?,
            key.as_bytes(),
            PutValue::Bytes(record.to_string().into_bytes()),
            &PutOptions::default(),
        )?;
        self.saved.reports_total += 1;
        Ok(())
    }

    /// The prefixes to pull: --follow, or the full prefixes pushed to.
    fn follows(&self) -> Vec<PullScope> {
        if !self.config.follow.is_empty() {
            return self.config.follow.iter().map(|f| f.0.clone()).collect();
        }
        self.saved
            .pushed_prefixes
            .iter()
            .filter_map(|p| {
                let (prefix, sub) = p.split_once('/')?;
                PullScope::new(prefix, Some(sub)).ok()
            })
            .collect()
    }

    /// Pulls every followed prefix's changes and merges them here as the
    /// upstream's commits.
    fn pull(&mut self) -> Result<(), Error> {
        let Some(upstream) = self.upstream_node else {
            return Ok(());
        };
        let origin = Origin::Peer(*upstream.as_bytes());
        let max_key = self.store().options().limits.max_key_bytes;
        // `merged`: something was written here, store the cursors with it;
        // `moved`: only a cursor moved.
        let (mut merged, mut moved) = (false, false);
        for scope in self.follows() {
            let name = scope.to_string();
            let mut st = self.saved.pulls.get(&name).cloned().unwrap_or_default();
            for _ in 0..PULL_PAGES_PER_ROUND {
                let mut path = format!("/v1/sync/pull?prefix={}", query_value(&scope.prefix));
                if let Some(s) = &scope.sub {
                    path.push_str(&format!("&sub={}", query_value(s)));
                }
                match (&st.cursor, &st.after) {
                    (Some(c), None) => path.push_str(&format!("&cursor={}", query_value(c))),
                    (_, Some(a)) => path.push_str(&format!("&after={}", query_value(a))),
                    (None, None) => {}
                }
                let reply: Reply = match self.client.get(&path) {
                    Ok(r) => r,
                    Err(e) => {
                        self.fail(e)?;
                        return Ok(());
                    }
                };
                if st.cursor.is_some() && st.after.is_none() && matches!(reply.status, 400 | 410) {
                    log(format!(
                        "pull of {name}: {}; pulling all of it again",
                        reply.message()
                    ));
                    st = PullState::default();
                    merged = true;
                    continue;
                }
                if reply.status != 200 {
                    self.fail(format!(
                        "the upstream refused a pull of {name}: {}",
                        reply.message()
                    ))?;
                    return Ok(());
                }
                let answer: Value = match serde_json::from_slice(&reply.body) {
                    Ok(v) => v,
                    Err(e) => {
                        self.fail(format!("the upstream's pull answer is not JSON: {e}"))?;
                        return Ok(());
                    }
                };
                let objects: Vec<WireObject> =
                    serde_json::from_value(answer["objects"].clone()).unwrap_or_default();
                let mut incoming = Vec::with_capacity(objects.len());
                for o in &objects {
                    match o.decode(max_key) {
                        Ok(x) => incoming.push(x),
                        Err(e) => log(format!("pull of {name}: skipped an object: {e}")),
                    }
                }
                if !incoming.is_empty() {
                    self.meta.merge(origin, incoming)?;
                    merged = true;
                }
                let cursor = answer["cursor"].as_str().map(str::to_string);
                let more = answer["more"].as_bool().unwrap_or(false);
                if st.cursor.is_some() && st.after.is_none() {
                    moved |= st.cursor != cursor;
                    st.cursor = cursor;
                } else {
                    merged = true;
                    // A full pull: its first page's cursor is where the
                    // changes continue once every page is in.
                    if st.after.is_none() {
                        st.full_cursor = cursor;
                    }
                    st.after = answer["after"].as_str().map(str::to_string);
                    if !more {
                        st.cursor = st.full_cursor.take();
                        st.after = None;
                    }
                }
                if !more {
                    break;
                }
            }
            self.saved.pulls.insert(name, st);
        }
        if merged || (moved && self.last_saved.elapsed() >= PULL_SAVE_EVERY) {
            self.save()?;
        }
        self.succeeded();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls() {
        let u = Upstream::parse("http://127.0.0.1:7800").expect("plain");
        assert_eq!(
            (u.host.as_str(), u.port, u.base.as_str()),
            ("127.0.0.1", 7800, "")
        );
        assert_eq!(u.to_string(), "http://127.0.0.1:7800");
        let u = Upstream::parse("HTTP://example.org/chorus/").expect("path");
        assert_eq!(
            (u.host.as_str(), u.port, u.base.as_str()),
            ("example.org", 80, "/chorus")
        );
        let u = Upstream::parse("http://[::1]:9000").expect("v6");
        assert_eq!((u.host.as_str(), u.port), ("::1", 9000));
        assert_eq!(u.authority(), "[::1]:9000");
        for (bad, why) in [
            ("https://x:1", "https upstream not supported yet"),
            ("ftp://x:1", "unknown scheme"),
            ("127.0.0.1:7800", "not a URL"),
            ("http://:80", "no host"),
            ("http://x:0", "not 1-65535"),
            ("http://x:99999", "not 1-65535"),
            ("http://u:p@x:1", "without credentials"),
            ("http://x:1/?a=b", "without credentials"),
        ] {
            let e = Upstream::parse(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn follows() {
        assert_eq!(Follow::parse("app").expect("p").to_string(), "app");
        assert_eq!(Follow::parse("app/cfg").expect("fp").to_string(), "app/cfg");
        for bad in ["", "app/", "/cfg", "$stage", "app/$x", "a/b/c"] {
            assert!(Follow::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn query_values_are_escaped() {
        assert_eq!(query_value("a b&c/é"), "a%20b%26c%2F%C3%A9");
        assert_eq!(query_value("1-2-3"), "1-2-3");
    }
}
