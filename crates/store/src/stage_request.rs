//! Asking a stage's push daemon (`chorus stage`, docs/staging.md) to push
//! now, and learning when it has: a request and an acknowledgement kept in
//! the stage directory itself, so that any process on the directory (the
//! command line, the Python module, a writer in Rust) can ask without a
//! network call of its own and without the daemon's code.
//!
//! The protocol, all under the reserved full prefix `$stage/requests`
//! (never pushed: the daemon skips `$` names):
//!
//! - A request is a write of key [`REQUEST_KEY`] (a small JSON note of who
//!   asked and when; its content does not matter). Its commit's sequence
//!   number identifies it ([`PushRequest`]): every local write committed
//!   before it has a lower one.
//! - The daemon looks at that key's sequence number at every step (an
//!   in-memory read). A newer one than it acknowledged makes it push at
//!   once, skipping the quiet period and any retry backoff.
//! - Once the upstream acknowledged a push that covered every local commit
//!   up to some sequence number, the daemon writes key [`ACK_KEY`]: a
//!   [`PushAck`] saying so (`through`). A request is done when `through`
//!   reaches its sequence number. A push that fails while a request waits
//!   is recorded in the same key ([`PushFailure`]), once per request and
//!   error message.
//! - Whether a daemon runs is whether someone holds the lock on
//!   [`LOCK_FILE`] in the directory, which the daemon holds for its whole
//!   life: no heartbeat writes.
//!
//! ```no_run
//! use chorus_store::{Metadata, Options, Store};
//! use chorus_store::stage_request::{PushProgress, push_status, request_push};
//!
//! let store = Store::open("/home/me/.chorus/stage".as_ref(), Options::default())?;
//! let meta = Metadata::new(store);
//! let request = request_push(&meta)?; // fails when no daemon runs
//! loop {
//!     match push_status(&meta, &request)? {
//!         PushProgress::Done(ack) => break println!("upstream through commit {}", ack.through),
//!         PushProgress::Pending => std::thread::sleep(std::time::Duration::from_millis(50)),
//!         PushProgress::NoDaemon => break eprintln!("the daemon stopped"),
//!         PushProgress::Failed { message } => break eprintln!("{message}"),
//!     }
//! }
//! # Ok::<(), chorus_store::Error>(())
//! ```

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use chorus_core::FullPrefix;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::metadata::{GetOptions, Metadata, PutOptions, PutValue, Resolver};
use crate::store::Store;

/// The reserved prefix of the requests and acknowledgements.
pub const PREFIX: &str = "$stage";
/// Their subprefix.
pub const SUBPREFIX: &str = "requests";
/// The key a request writes.
pub const REQUEST_KEY: &[u8] = b"push";
/// The key the daemon's acknowledgement ([`PushAck`]) is in.
pub const ACK_KEY: &[u8] = b"ack";
/// The lock file, in the stage directory, that a running daemon holds.
pub const LOCK_FILE: &str = "stage.lock";

/// One request to push now: the sequence number of the commit that
/// recorded it. Done when the daemon acknowledged a push through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PushRequest {
    /// The request's commit sequence number in the stage directory.
    pub seq: u64,
}

/// What the daemon last recorded for the requests (stored as JSON under
/// [`ACK_KEY`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushAck {
    /// Every local commit with a sequence number up to this one is upstream
    /// (acknowledged by it), except reserved `$` keys, which are never
    /// pushed.
    pub through: u64,
    /// When that push was acknowledged, in milliseconds since the epoch.
    pub time_ms: u64,
    /// How many keys that push sent (0: nothing was waiting).
    pub keys: u64,
    /// The upstream it went to.
    #[serde(default)]
    pub upstream: String,
    /// A push that failed after the last acknowledgement, while a request
    /// waited; `None` once a push succeeds.
    #[serde(default)]
    pub failed: Option<PushFailure>,
}

/// A push that failed while requests waited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushFailure {
    /// The newest request it concerns: every request up to this sequence
    /// number was waiting when it failed.
    pub seq: u64,
    /// When, in milliseconds since the epoch.
    pub time_ms: u64,
    /// What went wrong, as the daemon logged it.
    pub message: String,
}

/// Where a request stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushProgress {
    /// The upstream acknowledged a push that covered every local write
    /// committed before the request; what the daemon recorded about it.
    Done(PushAck),
    /// The daemon runs and has not pushed it yet.
    Pending,
    /// No daemon runs on the directory: nothing will push it until one
    /// starts (see [`no_daemon_message`]).
    NoDaemon,
    /// The daemon's latest attempt since the request failed. It keeps
    /// everything and retries, so the request may still be done later.
    Failed {
        /// What failed and what to do.
        message: String,
    },
}

/// The reserved full prefix of the requests and acknowledgements.
pub fn full_prefix() -> Result<FullPrefix> {
    Ok(FullPrefix::new(PREFIX, SUBPREFIX)?)
}

/// What to tell someone whose request no daemon will push.
pub fn no_daemon_message(dir: &Path) -> String {
    format!(
        "no stage daemon is running on {}: start one with `chorus stage --upstream URL` (docs/staging.md)",
        dir.display()
    )
}

/// Whether a daemon holds the directory's stage lock now.
pub fn daemon_running(dir: &Path) -> bool {
    let Ok(file) = File::open(dir.join(LOCK_FILE)) else {
        return false;
    };
    file.try_lock_shared().is_err()
}

/// Takes the directory's stage lock for a daemon, if free: `None` when
/// another process holds it. The daemon keeps the file (and so the lock)
/// for its whole life; the lock goes with the process, however it ends.
pub fn lock_daemon(dir: &Path) -> Result<Option<File>> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        // Private like every file of the directory.
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::io("open the stage lock", &path, e))?;
    Ok(file.try_lock().is_ok().then_some(file))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Asks the daemon running on the stage directory to push now: records a
/// request (one commit) and returns it, to pass to [`push_status`].
/// Refused with [`Error::NotFound`] ([`no_daemon_message`]), writing
/// nothing, when no daemon runs: nothing would push it.
pub fn request_push(meta: &Metadata) -> Result<PushRequest> {
    let dir = meta.store().dir();
    if !daemon_running(dir) {
        return Err(Error::NotFound(no_daemon_message(dir)));
    }
    let note = serde_json::json!({"pid": std::process::id(), "time_ms": now_ms()});
    let info = meta.put_reserved(
        &full_prefix()?,
        REQUEST_KEY,
        PutValue::Bytes(note.to_string().into_bytes()),
        &PutOptions::default(),
    )?;
    Ok(PushRequest { seq: info.seq })
}

/// Where `req` stands: [`PushProgress::Done`] once the daemon acknowledged
/// a push through it (whether the daemon still runs or not), else
/// [`PushProgress::NoDaemon`] when no daemon runs, else
/// [`PushProgress::Failed`] when the daemon's latest attempt since the
/// request failed, else [`PushProgress::Pending`]. Reads only.
pub fn push_status(meta: &Metadata, req: &PushRequest) -> Result<PushProgress> {
    let ack = read_ack(meta)?.unwrap_or_default();
    if ack.through >= req.seq {
        return Ok(PushProgress::Done(ack));
    }
    if !daemon_running(meta.store().dir()) {
        return Ok(PushProgress::NoDaemon);
    }
    match ack.failed {
        Some(f) if f.seq >= req.seq => Ok(PushProgress::Failed {
            message: format!(
                "the stage daemon could not push: {}; it keeps every write and retries, and pushes this request once the upstream answers: check the upstream, and `chorus stage status` for the latest error",
                f.message
            ),
        }),
        _ => Ok(PushProgress::Pending),
    }
}

/// The daemon's acknowledgement, if it wrote one.
pub fn read_ack(meta: &Metadata) -> Result<Option<PushAck>> {
    let opts = GetOptions {
        resolver: Resolver::Lww,
        ..GetOptions::default()
    };
    let Some(read) = meta.get(&full_prefix()?, ACK_KEY, &opts)? else {
        return Ok(None);
    };
    let Some(bytes) = read.values.first().and_then(|v| v.bytes()) else {
        return Ok(None);
    };
    serde_json::from_slice(bytes).map(Some).map_err(|e| {
        Error::InvalidInput(format!(
            "the push acknowledgement in {} ({PREFIX}/{SUBPREFIX}, key ack) is not readable ({e}): restart the stage daemon, which rewrites it at its next push",
            meta.store().dir().display()
        ))
    })
}

/// For the daemon: stores its acknowledgement (one commit).
pub fn write_ack(meta: &Metadata, ack: &PushAck) -> Result<()> {
    let bytes = serde_json::to_vec(ack)
        .map_err(|e| Error::Internal(format!("cannot encode a push acknowledgement: {e}")))?;
    meta.put_reserved(
        &full_prefix()?,
        ACK_KEY,
        PutValue::Bytes(bytes),
        &PutOptions::default(),
    )?;
    Ok(())
}

/// For the daemon: the sequence number of the newest request, 0 if none
/// was ever made (an in-memory read).
pub fn latest_request(store: &Store) -> Result<u64> {
    Ok(store
        .snapshot()?
        .entry(&full_prefix()?, REQUEST_KEY)
        .map_or(0, |e| e.seq))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Options;

    fn open(dir: &Path) -> Metadata {
        let store = Store::open(
            dir,
            Options {
                create: true,
                ..Options::default()
            },
        )
        .expect("open a store");
        Metadata::new(store)
    }

    fn put(meta: &Metadata, key: &str) -> u64 {
        let fp = FullPrefix::new("app", "cfg").expect("a full prefix");
        meta.put(
            &fp,
            key.as_bytes(),
            PutValue::Bytes(b"v".to_vec()),
            &PutOptions::default(),
        )
        .expect("a write")
        .seq
    }

    #[test]
    fn full_prefix_is_valid() {
        let fp = full_prefix().expect("valid");
        assert!(fp.is_reserved());
        assert_eq!(fp.to_string(), "$stage/requests");
    }

    #[test]
    fn without_a_daemon_a_request_is_refused_and_writes_nothing() {
        let tmp = tempfile::tempdir().expect("tmp");
        let meta = open(tmp.path());
        let before = meta.store().cursor().expect("cursor");
        let err = request_push(&meta).expect_err("no daemon");
        assert!(matches!(err, Error::NotFound(_)), "{err:?}");
        assert_eq!(err.kind(), chorus_core::Kind::NotFound);
        let text = err.to_string();
        assert!(text.contains("no stage daemon is running on"), "{text}");
        assert!(text.contains("chorus stage --upstream"), "{text}");
        assert_eq!(meta.store().cursor().expect("cursor"), before);
        assert_eq!(latest_request(meta.store()).expect("read"), 0);
    }

    #[test]
    fn the_lock_tells_whether_a_daemon_runs() {
        let tmp = tempfile::tempdir().expect("tmp");
        assert!(!daemon_running(tmp.path()), "no lock file");
        let held = lock_daemon(tmp.path()).expect("lock").expect("free");
        assert!(daemon_running(tmp.path()));
        assert!(
            lock_daemon(tmp.path()).expect("lock").is_none(),
            "a second daemon"
        );
        drop(held);
        assert!(!daemon_running(tmp.path()), "the lock left with its holder");
        assert!(lock_daemon(tmp.path()).expect("lock").is_some());
    }

    #[test]
    fn a_request_is_pending_until_an_acknowledgement_covers_it() {
        let tmp = tempfile::tempdir().expect("tmp");
        let meta = open(tmp.path());
        let _daemon = lock_daemon(tmp.path()).expect("lock").expect("free");
        let written = put(&meta, "a");
        let req = request_push(&meta).expect("request");
        assert!(req.seq > written, "every earlier write is before it");
        assert_eq!(latest_request(meta.store()).expect("read"), req.seq);
        assert_eq!(
            push_status(&meta, &req).expect("status"),
            PushProgress::Pending
        );
        // An acknowledgement of an earlier push does not cover it.
        let mut ack = PushAck {
            through: req.seq - 1,
            time_ms: 1,
            keys: 1,
            upstream: "http://127.0.0.1:1".into(),
            failed: None,
        };
        write_ack(&meta, &ack).expect("ack");
        assert_eq!(
            push_status(&meta, &req).expect("status"),
            PushProgress::Pending
        );
        ack.through = req.seq;
        write_ack(&meta, &ack).expect("ack");
        assert_eq!(
            push_status(&meta, &req).expect("status"),
            PushProgress::Done(ack.clone())
        );
        assert_eq!(read_ack(&meta).expect("read"), Some(ack));
        // A later request is not covered by it.
        let later = request_push(&meta).expect("request");
        assert!(later.seq > req.seq);
        assert_eq!(
            push_status(&meta, &later).expect("status"),
            PushProgress::Pending
        );
    }

    #[test]
    fn done_stays_done_and_pending_becomes_no_daemon_when_it_stops() {
        let tmp = tempfile::tempdir().expect("tmp");
        let meta = open(tmp.path());
        let daemon = lock_daemon(tmp.path()).expect("lock").expect("free");
        let first = request_push(&meta).expect("request");
        let ack = PushAck {
            through: first.seq,
            ..PushAck::default()
        };
        write_ack(&meta, &ack).expect("ack");
        let second = request_push(&meta).expect("request");
        drop(daemon);
        assert_eq!(
            push_status(&meta, &first).expect("status"),
            PushProgress::Done(ack)
        );
        assert_eq!(
            push_status(&meta, &second).expect("status"),
            PushProgress::NoDaemon
        );
    }

    #[test]
    fn a_failure_concerns_only_the_requests_it_saw() {
        let tmp = tempfile::tempdir().expect("tmp");
        let meta = open(tmp.path());
        let _daemon = lock_daemon(tmp.path()).expect("lock").expect("free");
        let seen = request_push(&meta).expect("request");
        let ack = PushAck {
            failed: Some(PushFailure {
                seq: seen.seq,
                time_ms: 5,
                message: "cannot reach the upstream http://127.0.0.1:1: refused".into(),
            }),
            ..PushAck::default()
        };
        write_ack(&meta, &ack).expect("ack");
        match push_status(&meta, &seen).expect("status") {
            PushProgress::Failed { message } => {
                assert!(message.contains("cannot reach the upstream"), "{message}");
                assert!(message.contains("retries"), "{message}");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
        // A request after the failure waits for the next attempt.
        let after = request_push(&meta).expect("request");
        assert_eq!(
            push_status(&meta, &after).expect("status"),
            PushProgress::Pending
        );
    }

    #[test]
    fn an_unreadable_acknowledgement_is_an_error_that_says_what_to_do() {
        let tmp = tempfile::tempdir().expect("tmp");
        let meta = open(tmp.path());
        let _daemon = lock_daemon(tmp.path()).expect("lock").expect("free");
        meta.put_reserved(
            &full_prefix().expect("valid"),
            ACK_KEY,
            PutValue::Bytes(b"not json".to_vec()),
            &PutOptions::default(),
        )
        .expect("write");
        let req = PushRequest { seq: 1 };
        let err = push_status(&meta, &req).expect_err("unreadable");
        assert!(
            err.to_string().contains("restart the stage daemon"),
            "{err}"
        );
    }
}
