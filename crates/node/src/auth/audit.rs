//! The audit log: `audit.log` in the data directory, one JSON line per
//! authenticated write, refused request and management operation. It holds
//! token and session ids, never a secret.
//!
//! Nobody without a token can flood it away (see `docs/auth.md`):
//! - every line is bounded: each text field is cut to a bound with a
//!   marker `…(+N bytes)`, and a line is at most [`LINE_MAX`] bytes;
//! - refusals are rate-limited: the first few from a source in a window
//!   are written in full, the rest only counted, and one
//!   `refusals_suppressed` line per source says how many there were when
//!   the window ends ([`Limiter`]). Writes and management operations, which
//!   take a token or the directory to make, are always written;
//! - retention: at [`AuditConfig::file_bytes`] the log moves to
//!   `audit.log.1`, each `audit.log.K` to `.K+1`, the last of
//!   [`AuditConfig::files`] is dropped, and rotated files older than
//!   [`AuditConfig::max_age`] are deleted.
//!
//! Several processes append to one directory (the daemon, commands): the
//! file is opened for each line and a line is one `write` in append mode,
//! so lines do not interleave and a rotation by another process is
//! followed at once; a rotation takes an OS lock on `audit.lock` and looks
//! at the size again under it, so that it happens once. Files are made
//! with mode 0600.
//!
//! The source of a request (the client's IP address over HTTP, the
//! ZeroMQ peer's routing id) reaches the log through a task-local value
//! that the adapters set around a request ([`in_source`], [`with_source`]).

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::net::{IpAddr, Ipv6Addr};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;

/// Longest line of the log, in bytes (its newline not counted).
pub const LINE_MAX: usize = 2048;
/// Longest target or reason in a line, in bytes as written (JSON-escaped).
pub const FIELD_MAX: usize = 512;
/// Longest operation name, user, token id, interface or source.
pub(crate) const NAME_MAX: usize = 96;
/// Sources whose refusals are counted apart in one window; refusals from
/// further sources are counted together, as the source [`OTHER`].
pub const SOURCES_MAX: usize = 1024;
/// Refusals written in full in one window, whatever their sources.
pub const REFUSED_LINES_MAX: u32 = 100;
/// The source that stands for every source beyond [`SOURCES_MAX`].
pub(crate) const OTHER: &str = "other";
/// Room kept for the marker of a cut field: `…(+N bytes)`.
const MARKER_MAX: usize = 32;

/// Bounds of the audit log. The defaults are `chorus serve`'s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditConfig {
    /// Rotated files kept: `audit.log.1` (newest) to `audit.log.N`.
    pub files: u32,
    /// Size in bytes at which `audit.log` is rotated.
    pub file_bytes: u64,
    /// Rotated files last written longer ago than this are deleted when
    /// the log rotates (and when the daemon starts).
    pub max_age: Duration,
    /// Refusals written in full per source per window; later ones are
    /// counted for the window's summary line.
    pub refusals_per_source: u32,
    /// The window of [`AuditConfig::refusals_per_source`].
    pub window: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            files: 8,
            file_bytes: 16 << 20,
            max_age: Duration::from_secs(90 * 24 * 3600),
            refusals_per_source: 10,
            window: Duration::from_secs(60),
        }
    }
}

tokio::task_local! {
    /// Who sent the request being served: an IP address, a ZeroMQ peer.
    static SOURCE: String;
}

/// Runs `f` with `source` as the source of what it audits.
pub(crate) fn with_source<R>(source: String, f: impl FnOnce() -> R) -> R {
    SOURCE.sync_scope(source, f)
}

/// Runs `future` with `source` as the source of what it audits (a task
/// it spawns does not inherit it: see [`carry_source`]).
pub(crate) async fn in_source<F: Future>(source: String, future: F) -> F::Output {
    SOURCE.scope(source, future).await
}

/// `f`, run with the source current here wherever it runs (on the
/// blocking pool, say).
pub(crate) fn carry_source<R>(f: impl FnOnce() -> R) -> impl FnOnce() -> R {
    let source = SOURCE.try_with(Clone::clone).ok();
    move || match source {
        Some(s) => SOURCE.sync_scope(s, f),
        None => f(),
    }
}

/// The current source; without one, `local` for the command line and the
/// interface's name otherwise.
pub(crate) fn source(iface: &str) -> String {
    SOURCE.try_with(Clone::clone).unwrap_or_else(|_| {
        if iface == "cli" {
            "local".to_string()
        } else {
            bounded(iface, NAME_MAX)
        }
    })
}

/// What a line says happened.
pub(crate) enum Outcome<'a> {
    /// Allowed, and done.
    Ok,
    /// Allowed, then failed (a conflict, a full disk).
    Failed,
    /// Refused, with the HTTP status and why.
    Refused { status: u16, reason: &'a str },
}

/// One line of the log, before it is bounded.
pub(crate) struct Entry<'a> {
    pub(crate) token: Option<&'a str>,
    pub(crate) user: Option<&'a str>,
    pub(crate) iface: &'a str,
    pub(crate) source: &'a str,
    pub(crate) op: &'a str,
    pub(crate) target: &'a str,
    pub(crate) outcome: Outcome<'a>,
}

impl Entry<'_> {
    /// The line: every field bounded, so at most [`LINE_MAX`] bytes.
    fn line(&self, now_ms: u64) -> String {
        let name = |s: &str| bounded(s, NAME_MAX);
        let mut line = json!({
            "time": super::utc(now_ms), "time_ms": now_ms,
            "token": self.token.map(name), "user": self.user.map(name),
            "iface": name(self.iface), "source": name(self.source), "op": name(self.op),
            "target": bounded(self.target, FIELD_MAX),
            "outcome": match self.outcome {
                Outcome::Ok => "ok",
                Outcome::Failed => "failed",
                Outcome::Refused { .. } => "refused",
            },
        });
        if let (Outcome::Refused { status, reason }, Some(o)) =
            (&self.outcome, line.as_object_mut())
        {
            o.insert("status".into(), json!(status));
            o.insert("reason".into(), json!(bounded(reason, FIELD_MAX)));
        }
        capped(line.to_string(), now_ms)
    }
}

/// The refusals of one source that were counted and not written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Summary {
    /// The source (an IPv6 client stands for its /64), or [`OTHER`].
    pub(crate) source: String,
    /// How many.
    pub(crate) count: u64,
    /// When the first and the last of them came, unix ms.
    pub(crate) since_ms: u64,
    pub(crate) until_ms: u64,
    /// How many of each error code (`unauthorized`, `forbidden`, ...).
    pub(crate) codes: BTreeMap<&'static str, u64>,
}

impl Summary {
    fn line(&self, now_ms: u64) -> String {
        let line = json!({
            "time": super::utc(now_ms), "time_ms": now_ms,
            "event": "refusals_suppressed", "source": bounded(&self.source, NAME_MAX),
            "count": self.count, "since": super::utc(self.since_ms),
            "since_ms": self.since_ms, "until_ms": self.until_ms, "codes": self.codes,
        });
        capped(line.to_string(), now_ms)
    }
}

/// One source's refusals in the current window.
#[derive(Debug, Default)]
struct Bucket {
    written: u32,
    suppressed: u64,
    since_ms: u64,
    until_ms: u64,
    codes: BTreeMap<&'static str, u64>,
}

/// Which refusals are written in full: the first `per_source` of each
/// source in a window, and [`REFUSED_LINES_MAX`] in all; the rest are
/// counted, and summarised when the window ends. Windows follow one
/// another from the first refusal after the last one ended. Time is an
/// input: this reads no clock.
#[derive(Debug)]
pub(crate) struct Limiter {
    per_source: u32,
    window: Duration,
    /// When the current window began; none while no refusal came since
    /// the last one ended.
    began: Option<Instant>,
    /// Refusals written in full in this window.
    written: u32,
    /// Refusals counted and not written in this window.
    suppressed: u64,
    /// At most [`SOURCES_MAX`].
    sources: HashMap<String, Bucket>,
    /// Every source beyond them.
    other: Bucket,
}

impl Limiter {
    pub(crate) fn new(per_source: u32, window: Duration) -> Limiter {
        Limiter {
            per_source,
            window,
            began: None,
            written: 0,
            suppressed: 0,
            sources: HashMap::new(),
            other: Bucket::default(),
        }
    }

    /// Whether a refusal from `source`, of error code `code`, is written
    /// in full (true) or counted. The summaries of a window that ended
    /// before `now` go to `out` first.
    pub(crate) fn admit(
        &mut self,
        source: &str,
        code: &'static str,
        (now, now_ms): (Instant, u64),
        out: &mut Vec<Summary>,
    ) -> bool {
        self.roll(now, out);
        self.began.get_or_insert(now);
        let key = bucket_key(source);
        let bucket = if self.sources.len() < SOURCES_MAX || self.sources.contains_key(&key) {
            self.sources.entry(key).or_default()
        } else {
            &mut self.other
        };
        if bucket.written < self.per_source && self.written < REFUSED_LINES_MAX {
            bucket.written += 1;
            self.written += 1;
            return true;
        }
        if bucket.suppressed == 0 {
            bucket.since_ms = now_ms;
        }
        bucket.suppressed += 1;
        bucket.until_ms = now_ms;
        *bucket.codes.entry(code).or_default() += 1;
        self.suppressed += 1;
        false
    }

    /// Ends the window if it is over at `now`: its summaries go to `out`.
    pub(crate) fn roll(&mut self, now: Instant, out: &mut Vec<Summary>) {
        if self
            .began
            .is_some_and(|b| now.saturating_duration_since(b) >= self.window)
        {
            self.end(out);
        }
    }

    /// Ends the window now: its summaries (one per source with refusals
    /// counted, in source order) go to `out`.
    pub(crate) fn end(&mut self, out: &mut Vec<Summary>) {
        let first = out.len();
        let other = std::mem::take(&mut self.other);
        let buckets = self
            .sources
            .drain()
            .chain(std::iter::once((OTHER.to_string(), other)));
        for (source, b) in buckets.filter(|(_, b)| b.suppressed > 0) {
            out.push(Summary {
                source,
                count: b.suppressed,
                since_ms: b.since_ms,
                until_ms: b.until_ms,
                codes: b.codes,
            });
        }
        out[first..].sort_by(|a, b| a.source.cmp(&b.source));
        self.began = None;
        self.written = 0;
        self.suppressed = 0;
    }

    /// When the current window ends, if one runs.
    pub(crate) fn ends(&self) -> Option<Instant> {
        self.began.map(|b| b + self.window)
    }

    /// Whether refusals were counted in this window.
    pub(crate) fn pending(&self) -> bool {
        self.suppressed > 0
    }
}

/// What a source is counted as: itself, or its /64 for an IPv6 address
/// (one host has a whole /64 to choose from).
fn bucket_key(source: &str) -> String {
    match source.parse::<IpAddr>() {
        Ok(IpAddr::V6(a)) if a.to_ipv4_mapped().is_none() => {
            let s = a.segments();
            format!("{}/64", Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        _ => bounded(source, NAME_MAX),
    }
}

/// The audit log of one data directory. Drop writes the summaries of
/// the window running.
#[derive(Debug)]
pub(crate) struct AuditLog {
    path: PathBuf,
    state: Mutex<State>,
    /// Whether a failure was reported already (reported once, not per line).
    complained: AtomicBool,
    /// Refusals counted and not written, since the start (for /metrics).
    suppressed: Arc<AtomicU64>,
    /// Itself, for the thread that writes the summaries when a window ends.
    me: Weak<AuditLog>,
}

#[derive(Debug)]
struct State {
    config: AuditConfig,
    limiter: Limiter,
    /// Whether the summary thread runs.
    flusher: bool,
}

impl AuditLog {
    pub(crate) fn new(path: PathBuf, config: AuditConfig) -> Arc<AuditLog> {
        Arc::new_cyclic(|me| AuditLog {
            path,
            state: Mutex::new(State {
                limiter: Limiter::new(config.refusals_per_source, config.window),
                config,
                flusher: false,
            }),
            complained: AtomicBool::new(false),
            suppressed: Arc::default(),
            me: me.clone(),
        })
    }

    /// Sets the bounds (the window running ends: its summaries are
    /// written), and deletes the rotated files over the maximum age.
    pub(crate) fn configure(&self, config: AuditConfig) {
        let mut state = self.lock();
        let mut out = Vec::new();
        state.limiter.end(&mut out);
        state.limiter = Limiter::new(config.refusals_per_source, config.window);
        state.config = config;
        self.write_summaries(&state.config, &out);
        let pruned = retention_lock(&self.path)
            .and_then(|_lock| prune(&self.path, &state.config, SystemTime::now()));
        self.report(pruned);
    }

    /// The count of refusals suppressed, shared with `/metrics`.
    pub(crate) fn suppressed(&self) -> Arc<AtomicU64> {
        self.suppressed.clone()
    }

    /// Appends one line. A failure is reported on stderr (once) and does
    /// not fail the request.
    pub(crate) fn record(&self, entry: &Entry<'_>) {
        let mut text = entry.line(super::now_ms());
        text.push('\n');
        let mut state = self.lock();
        let mut out = Vec::new();
        state.limiter.roll(Instant::now(), &mut out);
        self.write_summaries(&state.config, &out);
        self.report(append(&self.path, &state.config, text.as_bytes()));
    }

    /// Whether a refusal from `source` of error code `code` is written in
    /// full (then the caller [records](AuditLog::record) it) or counted.
    pub(crate) fn admit_refusal(&self, source: &str, code: &'static str) -> bool {
        let mut state = self.lock();
        let mut out = Vec::new();
        let now = (Instant::now(), super::now_ms());
        let full = state.limiter.admit(source, code, now, &mut out);
        self.write_summaries(&state.config, &out);
        if !full {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            if !state.flusher {
                state.flusher = self.start_flusher();
            }
        }
        full
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_summaries(&self, config: &AuditConfig, summaries: &[Summary]) {
        let now_ms = super::now_ms();
        for s in summaries {
            let mut text = s.line(now_ms);
            text.push('\n');
            self.report(append(&self.path, config, text.as_bytes()));
        }
    }

    /// Starts the thread that writes the summaries when the window ends
    /// (whether more refusals come or not); false if it cannot start (the
    /// next line written writes them).
    fn start_flusher(&self) -> bool {
        let me = self.me.clone();
        let started = std::thread::Builder::new()
            .name("chorus-audit".into())
            .spawn(move || summarise_windows(&me));
        self.report(started.map(drop))
    }

    fn report(&self, result: std::io::Result<()>) -> bool {
        if let Err(e) = &result
            && !self.complained.swap(true, Ordering::Relaxed)
        {
            tracing::error!(
                "cannot write the audit log {}: {e} (further failures are not reported)",
                self.path.display()
            );
        }
        result.is_ok()
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        let state = self
            .state
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = Vec::new();
        state.limiter.end(&mut out);
        let config = state.config.clone();
        self.write_summaries(&config, &out);
    }
}

/// The summary thread: sleeps until the window ends, writes its
/// summaries, and stops once a window ends with nothing counted (or the
/// log is gone). It holds the log only while it writes.
fn summarise_windows(log: &Weak<AuditLog>) {
    loop {
        let wait = {
            let Some(log) = log.upgrade() else { return };
            let mut state = log.lock();
            match state.limiter.ends() {
                Some(end) if state.limiter.pending() => {
                    end.saturating_duration_since(Instant::now())
                }
                _ => {
                    state.flusher = false;
                    return;
                }
            }
        };
        std::thread::sleep(wait);
        let Some(log) = log.upgrade() else { return };
        let mut state = log.lock();
        let mut out = Vec::new();
        state.limiter.roll(Instant::now(), &mut out);
        log.write_summaries(&state.config, &out);
    }
}

/// `text` if its JSON form (quotes aside) fits in `max` bytes; otherwise
/// its longest prefix that fits with the marker `…(+N bytes)`, N the
/// bytes cut. Reads at most about `max` bytes of `text`.
pub(crate) fn bounded(text: &str, max: usize) -> String {
    let room = max.saturating_sub(MARKER_MAX);
    let (mut used, mut cut) = (0, None);
    for (i, c) in text.char_indices() {
        let n = escaped_len(c);
        if cut.is_none() && used + n > room {
            cut = Some(i);
        }
        used += n;
        if used > max {
            let end = cut.unwrap_or(i);
            return format!("{}…(+{} bytes)", &text[..end], text.len() - end);
        }
    }
    text.to_string()
}

/// Bytes `c` takes in a JSON string as serde_json writes it.
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if u32::from(c) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// The line if it is at most [`LINE_MAX`] bytes (the bounds on its
/// fields make it so), else a line that says a line was dropped.
fn capped(line: String, now_ms: u64) -> String {
    debug_assert!(
        line.len() <= LINE_MAX,
        "an audit line of {} bytes",
        line.len()
    );
    if line.len() <= LINE_MAX {
        return line;
    }
    json!({
        "time": super::utc(now_ms), "time_ms": now_ms,
        "event": "line_too_long", "bytes": line.len(),
    })
    .to_string()
}

/// `audit.log.K` beside `path`.
fn rotated(path: &Path, k: u32) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".{k}"));
    PathBuf::from(p)
}

/// Opens `path` for appending, made with mode 0600 (or narrowed to it).
fn open_private(path: &Path) -> std::io::Result<(std::fs::File, u64)> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    let meta = file.metadata()?;
    if meta.permissions().mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok((file, meta.len()))
}

/// Appends `bytes` (one whole line, in one write: appends by several
/// processes do not interleave within a line), rotating first if they
/// would take the file over its bound.
fn append(path: &Path, config: &AuditConfig, bytes: &[u8]) -> std::io::Result<()> {
    let (mut file, len) = open_private(path)?;
    let incoming = bytes.len() as u64;
    if len > 0 && len + incoming > config.file_bytes {
        rotate(path, config, incoming)?;
        (file, _) = open_private(path)?;
    }
    file.write_all(bytes)
}

/// The OS lock on `audit.lock` beside `path`, held until the file is
/// closed: rotations and deletions of every process go one at a time.
fn retention_lock(path: &Path) -> std::io::Result<std::fs::File> {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .mode(0o600)
        .open(path.with_file_name("audit.lock"))?;
    lock.lock()?;
    Ok(lock)
}

/// Moves `audit.log` to `audit.log.1`, each `.K` to `.K+1` (the last one
/// is replaced), then deletes rotated files over the maximum age. Under
/// the lock the size is read again: if another process rotated the log
/// meanwhile, it is not rotated twice.
fn rotate(path: &Path, config: &AuditConfig, incoming: u64) -> std::io::Result<()> {
    let _lock = retention_lock(path)?;
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    if len > 0 && len + incoming > config.file_bytes {
        for k in (1..config.files.max(1)).rev() {
            match std::fs::rename(rotated(path, k), rotated(path, k + 1)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(path, rotated(path, 1))?;
    }
    prune(path, config, SystemTime::now())
}

/// Deletes the rotated files last written before `now - max_age`.
fn prune(path: &Path, config: &AuditConfig, now: SystemTime) -> std::io::Result<()> {
    let Some(oldest) = now.checked_sub(config.max_age) else {
        return Ok(());
    };
    for k in 1..=config.files.max(1) {
        let file = rotated(path, k);
        let written = match std::fs::metadata(&file).and_then(|m| m.modified()) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if written < oldest {
            match std::fs::remove_file(&file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(files: u32, file_bytes: u64) -> AuditConfig {
        AuditConfig {
            files,
            file_bytes,
            ..AuditConfig::default()
        }
    }

    fn entry<'a>(op: &'a str, target: &'a str) -> Entry<'a> {
        Entry {
            token: None,
            user: None,
            iface: "http",
            source: "127.0.0.1",
            op,
            target,
            outcome: Outcome::Ok,
        }
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    #[test]
    fn the_log_rotates_at_its_bound_through_every_file_and_drops_the_oldest() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("audit.log");
        let log = AuditLog::new(path.clone(), config(3, 400));
        for i in 0..40 {
            log.record(&entry("put", &format!("app/{i:03}")));
        }
        let files: Vec<String> = (1..=3).map(|k| read(&rotated(&path, k))).collect();
        let now = read(&path);
        assert!(now.contains("app/039"), "{now}");
        for (k, f) in files.iter().enumerate() {
            assert!(!f.is_empty() && f.len() <= 400, "audit.log.{}: {f}", k + 1);
        }
        assert!(!rotated(&path, 4).exists());
        // Newest first: each rotated file's lines come before the newer one's.
        let first = |text: &str| {
            let line = text.lines().next().unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            v["target"].as_str().map(str::to_string).unwrap_or_default()
        };
        assert!(first(&files[2]) < first(&files[1]) && first(&files[1]) < first(&files[0]));
        assert!(
            !files[2].contains("app/000"),
            "the oldest file was not dropped"
        );
        for l in now.lines().chain(files.iter().flat_map(|f| f.lines())) {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            assert_eq!(v["source"], "127.0.0.1");
        }
        // Private files.
        for p in [
            path.clone(),
            rotated(&path, 1),
            dir.path().join("audit.lock"),
        ] {
            let mode = std::fs::metadata(&p).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", p.display());
        }
    }

    #[test]
    fn rotated_files_over_the_maximum_age_are_deleted_at_rotation() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("audit.log");
        let day = Duration::from_secs(24 * 3600);
        let old = SystemTime::now() - 100 * day;
        for k in 1..=3 {
            std::fs::write(rotated(&path, k), "{}\n").expect("write");
        }
        for k in [2, 3] {
            let f = std::fs::File::options()
                .write(true)
                .open(rotated(&path, k))
                .expect("open");
            f.set_modified(old).expect("set the time");
        }
        let log = AuditLog::new(
            path.clone(),
            AuditConfig {
                files: 8,
                file_bytes: 300,
                max_age: 90 * day,
                ..AuditConfig::default()
            },
        );
        // Not yet: no rotation.
        log.record(&entry("put", "app/a"));
        assert!(rotated(&path, 3).exists());
        log.record(&entry("put", "app/a"));
        // Rotated: the recent .1 moved to .2; the old .2 and .3 moved to
        // .3 and .4 and are gone.
        assert!(rotated(&path, 1).exists() && rotated(&path, 2).exists());
        assert!(!rotated(&path, 3).exists() && !rotated(&path, 4).exists());
        assert_eq!(read(&rotated(&path, 2)), "{}\n");
        // configure() deletes old files too, without a rotation.
        std::fs::File::options()
            .write(true)
            .open(rotated(&path, 2))
            .expect("open")
            .set_modified(old)
            .expect("set the time");
        log.configure(AuditConfig {
            files: 8,
            file_bytes: 300,
            max_age: 90 * day,
            ..AuditConfig::default()
        });
        assert!(rotated(&path, 1).exists() && !rotated(&path, 2).exists());
    }

    #[test]
    fn two_logs_on_one_file_rotate_once_and_lose_no_line() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("audit.log");
        // Two processes' logs, as two logs here; big enough that every
        // line is kept.
        let a = AuditLog::new(path.clone(), config(100, 2000));
        let b = AuditLog::new(path.clone(), config(100, 2000));
        std::thread::scope(|s| {
            for (log, name) in [(&a, "a"), (&b, "b")] {
                s.spawn(move || {
                    for i in 0..200 {
                        log.record(&entry("put", &format!("{name}/{i}")));
                    }
                });
            }
        });
        let mut all = read(&path);
        for k in 1..=100 {
            all.push_str(&read(&rotated(&path, k)));
        }
        let lines: Vec<&str> = all.lines().collect();
        assert_eq!(lines.len(), 400, "{all}");
        for name in ["a", "b"] {
            for i in 0..200 {
                let target = format!("\"target\":\"{name}/{i}\"");
                assert!(lines.iter().any(|l| l.contains(&target)), "lost {target}");
            }
        }
    }

    #[test]
    fn every_field_is_cut_with_a_marker_and_a_line_stays_under_its_cap() {
        assert_eq!(bounded("app/cfg", 100), "app/cfg");
        let cut = bounded(&"x".repeat(10_000), 100);
        assert!(cut.starts_with("xxx") && cut.ends_with(" bytes)"), "{cut}");
        let kept = cut.find('…').expect("a marker");
        assert_eq!(
            cut,
            format!("{}…(+{} bytes)", "x".repeat(kept), 10_000 - kept)
        );
        assert!(cut.len() <= 100);
        // Escapes count as written, and no character is split.
        for text in [
            "\u{1}".repeat(5000),
            "é\"".repeat(5000),
            "日本".repeat(5000),
        ] {
            let cut = bounded(&text, FIELD_MAX);
            assert!(serde_json::to_string(&cut).expect("json").len() <= FIELD_MAX + 2);
        }
        let huge = "\u{0}".repeat(1 << 20);
        let line = Entry {
            token: Some(&huge),
            user: Some(&huge),
            iface: &huge,
            source: &huge,
            op: &huge,
            target: &huge,
            outcome: Outcome::Refused {
                status: 401,
                reason: &huge,
            },
        }
        .line(1);
        assert!(line.len() <= LINE_MAX, "{}", line.len());
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert!(
            v["target"]
                .as_str()
                .is_some_and(|t| t.ends_with("(+1048496 bytes)")),
            "{v}"
        );
        assert_eq!(v["status"], 401);
    }

    #[test]
    fn the_first_refusals_of_a_source_are_admitted_then_counted_and_summarised() {
        let mut l = Limiter::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        let mut out = Vec::new();
        let mut admitted = 0;
        for i in 0..1000u64 {
            let code = if i % 2 == 0 {
                "unauthorized"
            } else {
                "forbidden"
            };
            admitted += u32::from(l.admit("10.0.0.1", code, (t0, 1000 + i), &mut out));
        }
        // Another source has its own allowance.
        assert!(l.admit("10.0.0.2", "unauthorized", (t0, 5000), &mut out));
        assert_eq!(admitted, 3);
        assert!(out.is_empty() && l.pending());
        // Nothing ends before the window is over.
        l.roll(t0 + Duration::from_secs(59), &mut out);
        assert!(out.is_empty());
        l.roll(t0 + Duration::from_secs(60), &mut out);
        assert_eq!(
            out,
            vec![Summary {
                source: "10.0.0.1".into(),
                count: 997,
                since_ms: 1003,
                until_ms: 1999,
                codes: BTreeMap::from([("forbidden", 499), ("unauthorized", 498)]),
            }]
        );
        assert!(!l.pending() && l.ends().is_none());
        // A new window: the allowance again.
        out.clear();
        let t1 = t0 + Duration::from_secs(61);
        assert!(l.admit("10.0.0.1", "unauthorized", (t1, 9000), &mut out));
        assert!(out.is_empty());
        assert_eq!(l.ends(), Some(t1 + Duration::from_secs(60)));
    }

    #[test]
    fn sources_beyond_the_bound_share_one_bucket_and_lines_have_a_total_bound() {
        let mut l = Limiter::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        let mut out = Vec::new();
        let mut admitted = 0;
        // 2,000 sources, 2 refusals each.
        for i in 0..4000u32 {
            let source = std::net::Ipv4Addr::from(0x0a00_0000 + i / 2).to_string();
            admitted += u32::from(l.admit(&source, "unauthorized", (t0, 1), &mut out));
        }
        assert_eq!(admitted, REFUSED_LINES_MAX);
        assert!(l.sources.len() <= SOURCES_MAX);
        l.end(&mut out);
        assert!(out.len() <= SOURCES_MAX + 1);
        let total: u64 = out.iter().map(|s| s.count).sum();
        assert_eq!(total, 4000 - u64::from(REFUSED_LINES_MAX));
        assert!(
            out.iter().any(|s| s.source == OTHER && s.count > 0),
            "{out:?}"
        );
        // An IPv6 host is counted by its /64.
        let mut l = Limiter::new(1, Duration::from_secs(60));
        assert!(l.admit("2001:db8:1:2::1", "unauthorized", (t0, 1), &mut out));
        assert!(!l.admit("2001:db8:1:2:ffff::9", "unauthorized", (t0, 1), &mut out));
        assert!(l.admit("2001:db8:1:3::1", "unauthorized", (t0, 1), &mut out));
        out.clear();
        l.end(&mut out);
        assert_eq!(out[0].source, "2001:db8:1:2::/64");
    }

    #[test]
    fn suppressed_refusals_are_summarised_in_the_log_when_the_window_ends_or_the_log_closes() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("audit.log");
        let log = AuditLog::new(
            path.clone(),
            AuditConfig {
                refusals_per_source: 2,
                window: Duration::from_millis(200),
                ..AuditConfig::default()
            },
        );
        let refuse = |log: &AuditLog| {
            if log.admit_refusal("127.0.0.1", "unauthorized") {
                log.record(&Entry {
                    outcome: Outcome::Refused {
                        status: 401,
                        reason: "no token",
                    },
                    ..entry("put", "app/cfg")
                });
            }
        };
        for _ in 0..50 {
            refuse(&log);
        }
        // The summary thread writes the counts once the window is over
        // (however many windows the 50 took): every refusal is a line or
        // counted in a summary.
        let summaries = |text: &str| -> Vec<serde_json::Value> {
            text.lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON"))
                .filter(|v| v["event"] == "refusals_suppressed")
                .collect()
        };
        let counted = |text: &str| -> u64 {
            summaries(text)
                .iter()
                .map(|s| s["count"].as_u64().expect("a count"))
                .sum()
        };
        let started = Instant::now();
        while counted(&read(&path)) + read(&path).matches("\"refused\"").count() as u64 != 50 {
            assert!(started.elapsed() < Duration::from_secs(30), "no summary");
            std::thread::sleep(Duration::from_millis(20));
        }
        let text = read(&path);
        assert_eq!(log.suppressed().load(Ordering::Relaxed), counted(&text));
        for s in summaries(&text) {
            assert_eq!(s["source"], "127.0.0.1", "{s}");
            assert_eq!(s["codes"]["unauthorized"], s["count"], "{s}");
            assert!(s["since_ms"].as_u64() <= s["until_ms"].as_u64(), "{s}");
        }
        // Closing the log writes what is pending.
        log.configure(AuditConfig {
            refusals_per_source: 2,
            window: Duration::from_secs(3600),
            ..AuditConfig::default()
        });
        std::fs::remove_file(&path).expect("rm");
        for _ in 0..5 {
            refuse(&log);
        }
        drop(log);
        let s = summaries(&read(&path));
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(s[0]["count"], 3, "{s:?}");
    }
}
