//! The audit log: `audit.log` in the data directory, one JSON line per
//! authenticated write, refused request and management operation. It holds
//! token and session ids, never a secret. Bounded: at [`AUDIT_MAX_BYTES`]
//! it moves to `audit.log.1` (replacing the previous one) and starts anew.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Size at which the log is rotated.
pub const AUDIT_MAX_BYTES: u64 = 64 << 20;

/// The audit log of one data directory.
#[derive(Debug)]
pub(crate) struct AuditLog {
    path: PathBuf,
    max_bytes: u64,
    /// Serializes this process's appends and rotations.
    lock: Mutex<()>,
    /// Whether a failure was reported already (reported once, not per line).
    complained: AtomicBool,
}

impl AuditLog {
    pub(crate) fn new(path: PathBuf, max_bytes: u64) -> AuditLog {
        AuditLog {
            path,
            max_bytes,
            lock: Mutex::new(()),
            complained: AtomicBool::new(false),
        }
    }

    /// Appends one line. The file is opened for each line, so a rotation by
    /// another process on the directory is followed at once; a failure is
    /// reported on stderr (once) and does not fail the request.
    pub(crate) fn append(&self, line: &serde_json::Value) {
        let mut text = line.to_string();
        text.push('\n');
        let _guard = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = self.try_append(text.as_bytes())
            && !self.complained.swap(true, Ordering::Relaxed)
        {
            tracing::error!(
                "cannot write the audit log {}: {e} (further failures are not reported)",
                self.path.display()
            );
        }
    }

    fn try_append(&self, bytes: &[u8]) -> std::io::Result<()> {
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
        };
        let mut file = open()?;
        if file.metadata()?.len() + bytes.len() as u64 > self.max_bytes {
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            std::fs::rename(&self.path, old)?;
            file = open()?;
        }
        // One write of a whole line: appends by several processes do not
        // interleave within a line.
        file.write_all(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_rotates_at_its_bound() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("audit.log");
        let log = AuditLog::new(path.clone(), 200);
        for i in 0..10 {
            log.append(&serde_json::json!({"i": i, "pad": "x".repeat(40)}));
        }
        let now = std::fs::read_to_string(&path).expect("log");
        let old = std::fs::read_to_string(dir.path().join("audit.log.1")).expect("rotated");
        assert!(now.len() <= 200 && old.len() <= 200);
        assert!(now.contains("\"i\":9"), "{now}");
        for l in now.lines().chain(old.lines()) {
            serde_json::from_str::<serde_json::Value>(l).expect("a JSON line");
        }
    }
}
