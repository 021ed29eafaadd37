//! A fault-injecting [`Backend`] for tests: failing syncs, short writes and a
//! full disk, switched on and off while a store is open, over the real file
//! system ([`FaultBackend::new`]) or any other backend, such as a
//! [`crate::MemFs`] ([`FaultBackend::over`]).

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use crate::backend::{Backend, LogFile, StdBackend};
use crate::mem::Kernel;

/// The faults currently switched on. All off by default.
#[derive(Debug, Default, Clone)]
pub struct FaultPlan {
    /// Every `sync_data` fails with an I/O error while set.
    pub fail_sync: bool,
    /// The next write writes only this many bytes, then fails.
    pub short_write: Option<usize>,
    /// Bytes the disk can still take; a write beyond writes what fits, then
    /// fails with `StorageFull`. Truncation gives the space back.
    pub space_left: Option<u64>,
    /// Every `set_len` fails while set (so a writer cannot undo a failed append).
    pub fail_set_len: bool,
    /// While set: this many more syncs (of files or directories) succeed,
    /// then every sync fails, as with `fail_sync`. Lets a commit's own sync
    /// pass and fail the work that follows it (an automatic compaction).
    pub fail_sync_after: Option<u64>,
}

/// Counts of the faults that fired.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FaultCounts {
    /// Syncs that failed.
    pub syncs_failed: u64,
    /// Writes cut short.
    pub writes_cut: u64,
}

#[derive(Debug, Default)]
struct Shared {
    plan: FaultPlan,
    counts: FaultCounts,
}

impl Shared {
    /// Whether the sync about to happen fails (counting it against
    /// `fail_sync_after`).
    fn sync_fails(&mut self) -> bool {
        if self.plan.fail_sync {
            return true;
        }
        match &mut self.plan.fail_sync_after {
            Some(0) => true,
            Some(n) => {
                *n -= 1;
                false
            }
            None => false,
        }
    }
}

/// A handle to switch faults on and off; clones share the same plan.
#[derive(Debug, Clone, Default)]
pub struct Faults(Arc<Mutex<Shared>>);

impl Faults {
    /// Replaces the plan.
    pub fn set(&self, plan: FaultPlan) {
        self.lock().plan = plan;
    }
    /// Switches every fault off.
    pub fn clear(&self) {
        self.set(FaultPlan::default());
    }
    /// What fired so far.
    pub fn counts(&self) -> FaultCounts {
        self.lock().counts
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A backend (the real file system unless made [`FaultBackend::over`]
/// another) with the faults of a [`Faults`] plan applied.
#[derive(Clone)]
pub struct FaultBackend {
    inner: Arc<dyn Backend>,
    faults: Faults,
}

impl std::fmt::Debug for FaultBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultBackend")
            .field("faults", &self.faults)
            .finish_non_exhaustive()
    }
}

impl Default for FaultBackend {
    fn default() -> Self {
        FaultBackend::new().0
    }
}

impl FaultBackend {
    /// The real file system and the handle that controls its faults.
    pub fn new() -> (Self, Faults) {
        FaultBackend::over(Arc::new(StdBackend))
    }

    /// `inner` and the handle that controls its faults.
    pub fn over(inner: Arc<dyn Backend>) -> (Self, Faults) {
        let faults = Faults::default();
        (
            FaultBackend {
                inner,
                faults: faults.clone(),
            },
            faults,
        )
    }
}

struct FaultFile {
    inner: Box<dyn LogFile>,
    faults: Faults,
}

impl LogFile for FaultFile {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut shared = self.faults.lock();
        if let Some(n) = shared.plan.short_write.take() {
            shared.counts.writes_cut += 1;
            drop(shared);
            self.inner.write_all_at(&buf[..n.min(buf.len())], offset)?;
            return Err(io::Error::other("injected fault: short write"));
        }
        if let Some(left) = shared.plan.space_left {
            let len = self.inner.len()?;
            let end = offset + buf.len() as u64;
            let grow = end.saturating_sub(len);
            if grow > left {
                shared.counts.writes_cut += 1;
                let fits = usize::try_from(left + len.saturating_sub(offset)).unwrap_or(buf.len());
                shared.plan.space_left = Some(0);
                drop(shared);
                self.inner
                    .write_all_at(&buf[..fits.min(buf.len())], offset)?;
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "injected fault: no space left on device",
                ));
            }
            shared.plan.space_left = Some(left - grow);
        }
        drop(shared);
        self.inner.write_all_at(buf, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut shared = self.faults.lock();
        if shared.plan.fail_set_len {
            return Err(io::Error::other("injected fault: truncate failed"));
        }
        if let Some(left) = shared.plan.space_left {
            let old = self.inner.len()?;
            shared.plan.space_left = Some(left + old.saturating_sub(len));
        }
        drop(shared);
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        let mut shared = self.faults.lock();
        if shared.sync_fails() {
            shared.counts.syncs_failed += 1;
            return Err(io::Error::other("injected fault: fsync failed"));
        }
        drop(shared);
        self.inner.sync_data()
    }
}

impl Backend for FaultBackend {
    fn open(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        Ok(Box::new(FaultFile {
            inner: self.inner.open(path)?,
            faults: self.faults.clone(),
        }))
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        Ok(Box::new(FaultFile {
            inner: self.inner.create(path)?,
            faults: self.faults.clone(),
        }))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut shared = self.faults.lock();
        if shared.sync_fails() {
            shared.counts.syncs_failed += 1;
            return Err(io::Error::other("injected fault: directory fsync failed"));
        }
        drop(shared);
        self.inner.sync_dir(dir)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(dir)
    }
    fn kernel(&self) -> Option<Kernel> {
        self.inner.kernel()
    }
}
