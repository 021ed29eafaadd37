//! Errors of the embedded engine. Each one says what happened and what to do.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use chorus_core::{FullPrefix, NameError};

/// The writer holding the lock, as recorded in the shared map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    /// Process id of the holder.
    pub pid: u32,
    /// Host name of the holder.
    pub host: String,
    /// When it took the lock, in milliseconds since the Unix epoch.
    pub since_ms: u64,
}

impl fmt::Display for LockHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pid {} on {} since {} ms after the epoch",
            self.pid, self.host, self.since_ms
        )
    }
}

/// A key named in a write conflict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictKey {
    /// Its full prefix.
    pub full_prefix: FullPrefix,
    /// The key.
    pub key: Vec<u8>,
}

impl fmt::Display for ConflictKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.full_prefix,
            String::from_utf8_lossy(&self.key)
        )
    }
}

/// Every way an engine call can fail.
///
/// Errors are `Clone` because one failed group commit fails every commit in
/// the group with the same error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The directory holds no store.
    #[error(
        "{dir} holds no Chorus store: run `chorus init --dir {dir}` or open with create enabled"
    )]
    NotInitialized {
        /// The directory.
        dir: PathBuf,
    },
    /// A name, key, value or commit was refused before anything was written.
    #[error("{0}")]
    InvalidInput(String),
    /// Keys read by a transaction changed before it committed.
    #[error("write conflict: {} changed since this transaction began; nothing was written: read again and retry", list_keys(.keys))]
    WriteConflict {
        /// The keys that changed.
        keys: Vec<ConflictKey>,
    },
    /// The log holds a damaged frame before its known-good end.
    #[error(
        "corruption in {file} at byte offset {offset}: {detail}; the store refuses to open: run `chorus check` to see the damage and `chorus repair` to salvage every intact commit into a new generation"
    )]
    Corruption {
        /// The damaged file.
        file: PathBuf,
        /// Byte offset of the damage.
        offset: u64,
        /// What was wrong.
        detail: String,
    },
    /// An operating-system call failed.
    #[error("{op} {path}: {message}{}", hint(*.kind))]
    Io {
        /// What the engine was doing.
        op: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The kind of failure.
        kind: std::io::ErrorKind,
        /// The system's message.
        message: String,
    },
    /// The writer lock was not free within the configured time.
    #[error("gave up waiting for the writer lock after {waited:?}: {}; wait for it, or raise the lock timeout", holder.as_ref().map_or_else(|| "no other process holds it now: commits of this process were queued ahead, or a holder just left".to_string(), |h| format!("it is held by {h}")))]
    LockTimeout {
        /// How long this writer waited.
        waited: Duration,
        /// Who held the lock, if known.
        holder: Option<LockHolder>,
    },
    /// The directory is on a network or FUSE filesystem.
    #[error(
        "{path} is on a {fstype} filesystem; its locks and shared memory are not safe across machines, so Chorus refuses it (as SQLite and LMDB do); use a local disk, or allow it explicitly (`--allow-network-fs`) if only one machine will ever open it"
    )]
    NetworkFilesystem {
        /// The directory.
        path: PathBuf,
        /// The filesystem type from the mount table.
        fstype: String,
    },
    /// What was asked for does not exist (a document, a revision).
    #[error("{0}")]
    NotFound(String),
    /// A document edit named a revision that is not current, or created
    /// a document that exists; nothing was written.
    #[error("{0}")]
    Conflict(String),
    /// A request needed more work than one request may do (a per-request
    /// budget, such as an operation log's reducer budget); what it did is
    /// kept, nothing was written: ask again to go on.
    #[error("{0}")]
    Busy(String),
    /// A broken invariant inside Chorus (a bug, or a panic caught at a
    /// boundary): not the caller's fault; nothing was written.
    #[error("internal error: {0}; nothing was written (please report it)")]
    Internal(String),
    /// The full prefix belongs to a channel this node does not serve (see
    /// `channels`): nothing was read or written here.
    #[error(
        "{full_prefix} is not served on this node: it is in the channel {channel:?}, served by {}; ask one of those nodes, add ?forward=true to an HTTP request so that this node asks one, or have this node serve the channel with `chorus channel serve {channel}`",
        list_nodes(.nodes)
    )]
    NotServed {
        /// The full prefix asked for (or, for a whole prefix, the
        /// pattern under it that is not served).
        full_prefix: String,
        /// The channel it belongs to.
        channel: String,
        /// The nodes that serve the channel.
        nodes: Vec<chorus_core::NodeId>,
    },
    /// A previous failure left this handle unable to write safely.
    #[error(
        "this store handle stopped writing after an earlier failure ({0}); reopen the store: the next writer repairs the log tail"
    )]
    Poisoned(String),
}

impl Error {
    /// The kind of failure: decides the HTTP status, the stable code and
    /// the exit code on every interface (`chorus_core::Kind`).
    pub fn kind(&self) -> chorus_core::Kind {
        use chorus_core::Kind;
        match self {
            Error::NotInitialized { .. } | Error::NotFound(_) => Kind::NotFound,
            Error::InvalidInput(_) | Error::NetworkFilesystem { .. } => Kind::BadRequest,
            Error::WriteConflict { .. } | Error::Conflict(_) => Kind::Conflict,
            Error::LockTimeout { .. } => Kind::LockTimeout,
            Error::Busy(_) => Kind::Busy,
            Error::Corruption { .. } | Error::Io { .. } | Error::Poisoned(_) => Kind::Storage,
            Error::Internal(_) => Kind::Internal,
            Error::NotServed { .. } => Kind::NotServed,
        }
    }
}

fn list_keys(keys: &[ConflictKey]) -> String {
    let shown: Vec<String> = keys.iter().take(10).map(|k| k.to_string()).collect();
    let more = keys.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{} (and {more} more)", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

fn list_nodes(nodes: &[chorus_core::NodeId]) -> String {
    match nodes {
        [] => "no node".to_string(),
        [one] => format!("node {one}"),
        many => format!(
            "nodes {}",
            many.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn hint(kind: std::io::ErrorKind) -> &'static str {
    use std::io::ErrorKind as K;
    match kind {
        K::StorageFull => "; the disk is full: free space and retry (nothing was written)",
        K::PermissionDenied => "; check the directory's permissions",
        K::NotFound => "; the data directory changed under Chorus: do not delete files in it",
        _ => "",
    }
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            kind: err.kind(),
            message: err.to_string(),
        }
    }

    pub(crate) fn corruption(
        file: impl Into<PathBuf>,
        offset: u64,
        detail: impl Into<String>,
    ) -> Self {
        Error::Corruption {
            file: file.into(),
            offset,
            detail: detail.into(),
        }
    }
}

impl From<chorus_core::docs::DocError> for Error {
    fn from(e: chorus_core::docs::DocError) -> Self {
        use chorus_core::docs::DocError as D;
        match e {
            D::NotFound(m) => Error::NotFound(m),
            D::AlreadyExists(m) | D::Conflict(m) => Error::Conflict(m),
            D::Invalid(m) => Error::InvalidInput(m),
        }
    }
}

impl From<NameError> for Error {
    fn from(e: NameError) -> Self {
        Error::InvalidInput(e.to_string())
    }
}

/// Result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
