//! Where things live in a data directory.
//!
//! ```text
//! DIR/node-id              32 hex digits: this node's id
//! DIR/current              name of the current log file, replaced by rename
//! DIR/gen-0000000001.log   log of generation 1 (one file per generation)
//! DIR/lock                 empty; the writer lock is an OS lock on it
//! DIR/shm                  one shared page: published end, lock holder
//! DIR/place                the directory's device and inode (a copy has others)
//! ```

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::{self, Backend};
use crate::error::{Error, Result};
use crate::mem::LocalLock;
use crate::shm::Shm;
use chorus_core::NodeId;

#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) dir: PathBuf,
}

impl Layout {
    pub(crate) fn new(dir: &Path) -> Self {
        Layout {
            dir: dir.to_path_buf(),
        }
    }
    pub(crate) fn node_id(&self) -> PathBuf {
        self.dir.join("node-id")
    }
    pub(crate) fn current(&self) -> PathBuf {
        self.dir.join("current")
    }
    pub(crate) fn lock(&self) -> PathBuf {
        self.dir.join("lock")
    }
    pub(crate) fn place(&self) -> PathBuf {
        self.dir.join("place")
    }
    pub(crate) fn shm(&self) -> PathBuf {
        self.dir.join("shm")
    }
    pub(crate) fn log_name(generation: u64) -> String {
        format!("gen-{generation:010}.log")
    }
    pub(crate) fn log(&self, generation: u64) -> PathBuf {
        self.dir.join(Self::log_name(generation))
    }
    /// The generation a log file name stands for.
    pub(crate) fn parse_log_name(name: &str) -> Option<u64> {
        name.strip_prefix("gen-")?
            .strip_suffix(".log")?
            .parse()
            .ok()
    }

    /// Reads the current-generation pointer.
    pub(crate) fn read_current(&self, backend: &dyn Backend) -> Result<u64> {
        let path = self.current();
        let bytes = backend::read_whole(backend, &path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::NotInitialized {
                    dir: self.dir.clone(),
                }
            } else {
                Error::io("read", &path, e)
            }
        })?;
        let text = String::from_utf8_lossy(&bytes);
        Self::parse_log_name(text.trim()).ok_or_else(|| {
            Error::corruption(
                &path,
                0,
                format!("the pointer holds {:?}, not a log file name", text.trim()),
            )
        })
    }

    pub(crate) fn write_current(&self, backend: &dyn Backend, generation: u64) -> Result<()> {
        let path = self.current();
        let text = format!("{}\n", Self::log_name(generation));
        backend::write_atomic(backend, &path, text.as_bytes())
            .map_err(|e| Error::io("write", &path, e))
    }

    pub(crate) fn read_node_id(&self, backend: &dyn Backend) -> Result<NodeId> {
        let path = self.node_id();
        let bytes = backend::read_whole(backend, &path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::NotInitialized {
                    dir: self.dir.clone(),
                }
            } else {
                Error::io("read", &path, e)
            }
        })?;
        NodeId::parse_hex(&String::from_utf8_lossy(&bytes))
            .ok_or_else(|| Error::corruption(&path, 0, "the node id is not 32 hex digits"))
    }
}

/// The writer lock: an exclusive `flock` on `DIR/lock`, held only while
/// writing. The kernel drops it when the holder dies, so it is never stale.
/// For a backend whose files live in this process, an in-process lock
/// ([`crate::mem::Kernel`]) stands in for it.
///
/// `flock` locks belong to an open file description: two handles in one
/// process exclude each other like two processes do, but one handle must not
/// be locked by two threads at once (the commit queue sees to that).
pub(crate) struct WriterLock {
    kind: LockKind,
    path: PathBuf,
}

enum LockKind {
    Os(File),
    Local(Arc<LocalLock>),
}

pub(crate) struct LockGuard<'a> {
    lock: &'a WriterLock,
}

impl WriterLock {
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(crate::modes::FILE_MODE)
            .open(path)
            .map_err(|e| Error::io("open lock file", path, e))?;
        Ok(WriterLock {
            kind: LockKind::Os(file),
            path: path.to_path_buf(),
        })
    }

    /// The in-process lock standing for the one at `path`.
    pub(crate) fn local(lock: Arc<LocalLock>, path: &Path) -> Self {
        WriterLock {
            kind: LockKind::Local(lock),
            path: path.to_path_buf(),
        }
    }

    /// Takes the lock if it is free: `Ok(false)` when someone holds it.
    fn try_lock(&self) -> Result<bool> {
        match &self.kind {
            LockKind::Os(file) => match file.try_lock() {
                Ok(()) => Ok(true),
                Err(std::fs::TryLockError::WouldBlock) => Ok(false),
                Err(std::fs::TryLockError::Error(e)) => Err(Error::io("lock", &self.path, e)),
            },
            LockKind::Local(lock) => Ok(lock.try_lock()),
        }
    }

    fn unlock(&self) {
        match &self.kind {
            // Unlocking an flock we hold cannot fail in a way we could act
            // on; the kernel releases it at close or exit regardless.
            LockKind::Os(file) => {
                let _ = file.unlock();
            }
            LockKind::Local(lock) => lock.unlock(),
        }
    }

    /// Takes the lock, waiting up to `timeout`; on time-out the error names
    /// the holder recorded in the shared map.
    pub(crate) fn acquire(&self, timeout: Duration, shm: &Shm) -> Result<LockGuard<'_>> {
        let start = Instant::now();
        let mut pause = Duration::from_micros(20);
        let mut tries = 0u32;
        loop {
            if self.try_lock()? {
                return Ok(LockGuard { lock: self });
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(Error::LockTimeout {
                    waited,
                    holder: shm.holder(),
                });
            }
            tries += 1;
            if tries < 8 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(pause.min(timeout.saturating_sub(waited)));
                pause = (pause * 3 / 2).min(Duration::from_micros(500));
            }
        }
    }

    /// True when some handle holds the lock right now.
    pub(crate) fn is_held_elsewhere(&self) -> Result<bool> {
        if self.try_lock()? {
            self.unlock();
            Ok(false)
        } else {
            Ok(true)
        }
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        self.lock.unlock();
    }
}
