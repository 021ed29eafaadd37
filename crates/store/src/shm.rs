//! The shared map: one page of a file (`shm`) mapped by every process on the
//! directory. It publishes the committed end of the log, so a reader learns
//! whether the log grew with two atomic loads instead of a system call, and it
//! records who holds the writer lock.
//!
//! The map is a hint about the log, never the truth: after a reboot (the boot
//! id differs) or when a writer died in a multi-step operation (`intent` is
//! set), the next lock holder rebuilds it from the files.
//!
//! Word layout (each an `AtomicU64`, little-endian on disk):
//!
//! | word | meaning |
//! |---|---|
//! | 0 | magic |
//! | 1 | layout version |
//! | 2, 3 | boot id the contents belong to |
//! | 4 | current generation |
//! | 5, 6 | committed end of the log, for even and odd generations |
//! | 7 | intent: 0 none, 1 appending, 2 switching generation |
//! | 8 | holder pid (0 = none recorded) |
//! | 9 | holder since, ms since the epoch |
//! | 10..18 | holder host name, 64 bytes |
//! | 18 | automatic compactions done (any process) |
//! | 19 | duration of the last automatic compaction, microseconds |
//! | 20 | longest automatic compaction, microseconds |
//! | 21 | automatic compactions failed in a row |
//! | 22 | no automatic compaction before this time, ms since the epoch |
//! | 23..27 | the last compaction's switch: to generation, from generation, from end, checkpoint end |
//!
//! Words 18 and up came after layout 1 was first used: an older build
//! leaves them zero, which reads as "nothing recorded", so the layout
//! version did not change.
//!
//! For a backend whose files live in this process ([`crate::MemFs`]) the
//! page is an in-process [`Page`] of the words in use, shared by every
//! handle on the backend, instead of a mapping of a file.

#![allow(unsafe_code)]

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::{MmapMut, MmapOptions};

use crate::error::{Error, LockHolder, Result};

const MAGIC: u64 = u64::from_le_bytes(*b"CHORUSHM");
const LAYOUT: u64 = 1;
const LEN: usize = 4096;
/// Words of the page in use (the in-process page holds only these).
const WORDS: usize = 27;
const _: () = assert!(W_SWITCH_CHECKPOINT_END < WORDS && WORDS * 8 <= LEN);

const W_MAGIC: usize = 0;
const W_LAYOUT: usize = 1;
const W_BOOT: usize = 2;
const W_GENERATION: usize = 4;
const W_END: usize = 5;
const W_INTENT: usize = 7;
const W_HOLDER_PID: usize = 8;
const W_HOLDER_SINCE: usize = 9;
const W_HOLDER_HOST: usize = 10;
const HOST_WORDS: usize = 8;
const W_AUTO_COUNT: usize = 18;
const W_AUTO_LAST_US: usize = 19;
const W_AUTO_MAX_US: usize = 20;
const W_AUTO_FAILURES: usize = 21;
const W_AUTO_NOT_BEFORE: usize = 22;
const W_SWITCH_TO: usize = 23;
const W_SWITCH_FROM: usize = 24;
const W_SWITCH_FROM_END: usize = 25;
const W_SWITCH_CHECKPOINT_END: usize = 26;

/// Automatic compaction as recorded in the map for every process to see.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct AutoRecord {
    pub(crate) count: u64,
    pub(crate) last_us: u64,
    pub(crate) max_us: u64,
    pub(crate) failures: u64,
    pub(crate) not_before_ms: u64,
}

/// A compaction's switch from one generation to the next: a process whose
/// state is exactly `from` at `from_end` already holds the checkpoint's
/// contents, and need only read the frames after `checkpoint_end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Switch {
    pub(crate) to: u64,
    pub(crate) from: u64,
    pub(crate) from_end: u64,
    pub(crate) checkpoint_end: u64,
}

/// What the last lock holder was in the middle of, if it died there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Intent {
    None = 0,
    /// Appending a frame: bytes past the published end are unacknowledged.
    Append = 1,
    /// Switching generation: `current` on disk is the truth.
    Switch = 2,
}

pub(crate) struct Shm {
    words: Words,
}

enum Words {
    /// A shared mapping of the `shm` file, `LEN` bytes.
    Mapped(MmapMut),
    /// The in-process page of a backend whose files live in this process.
    Local(Arc<Page>),
}

/// The words of the shared page, kept in this process.
pub(crate) struct Page([AtomicU64; WORDS]);

impl Default for Page {
    fn default() -> Self {
        Page(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl Shm {
    /// Opens (creating if needed) and maps the shared page.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(crate::modes::FILE_MODE)
            .open(path)
            .map_err(|e| Error::io("open shared map", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat shared map", path, e))?
            .len();
        if len < LEN as u64 {
            // Only ever grows, so no process can see its mapping shrink (SIGBUS).
            file.set_len(LEN as u64)
                .map_err(|e| Error::io("size shared map", path, e))?;
        }
        // SAFETY: a shared, page-aligned mapping of a file that no Chorus
        // process ever shrinks; every access goes through `word`, which
        // hands out atomics only, so concurrent writers in other processes
        // cannot cause a data race.
        let map = unsafe { MmapOptions::new().len(LEN).map_mut(&file) }
            .map_err(|e| Error::io("map shared map", path, e))?;
        Ok(Shm {
            words: Words::Mapped(map),
        })
    }

    /// The page kept in this process (for an in-memory backend).
    pub(crate) fn local(page: Arc<Page>) -> Self {
        Shm {
            words: Words::Local(page),
        }
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < WORDS);
        match &self.words {
            // SAFETY: the mapping is LEN bytes long and page aligned, so word
            // i is in bounds and 8-byte aligned; it lives as long as `self`;
            // it is only ever accessed atomically (no `&mut` to the bytes is
            // ever made).
            Words::Mapped(map) => unsafe { &*(map.as_ptr().add(i * 8) as *const AtomicU64) },
            Words::Local(page) => &page.0[i],
        }
    }

    /// True when the page describes the current boot's state of the files.
    pub(crate) fn is_valid(&self, boot: [u8; 16]) -> bool {
        let (lo, hi) = boot_words(boot);
        self.word(W_MAGIC).load(Ordering::Acquire) == MAGIC
            && self.word(W_LAYOUT).load(Ordering::Acquire) == LAYOUT
            && self.word(W_BOOT).load(Ordering::Acquire) == lo
            && self.word(W_BOOT + 1).load(Ordering::Acquire) == hi
    }

    /// Rewrites the whole page from facts established under the lock.
    pub(crate) fn reset(&self, boot: [u8; 16], generation: u64, end: u64) {
        let (lo, hi) = boot_words(boot);
        self.word(W_MAGIC).store(0, Ordering::Release);
        self.word(W_END + (generation & 1) as usize)
            .store(end, Ordering::Release);
        self.word(W_GENERATION).store(generation, Ordering::Release);
        self.word(W_INTENT)
            .store(Intent::None as u64, Ordering::Release);
        self.set_switch(None);
        self.word(W_BOOT).store(lo, Ordering::Release);
        self.word(W_BOOT + 1).store(hi, Ordering::Release);
        self.word(W_LAYOUT).store(LAYOUT, Ordering::Release);
        self.word(W_MAGIC).store(MAGIC, Ordering::Release);
    }

    /// The published generation and the committed end of its log, as a
    /// consistent pair.
    pub(crate) fn published(&self) -> (u64, u64) {
        loop {
            let generation = self.word(W_GENERATION).load(Ordering::Acquire);
            let end = self
                .word(W_END + (generation & 1) as usize)
                .load(Ordering::Acquire);
            // The end slot of `generation` is reused by `generation + 2`, which
            // is only written after the generation word moved on: if it did
            // not move, `end` belongs to `generation`. Each retry means a whole
            // compaction finished meanwhile, so this loop ends.
            if self.word(W_GENERATION).load(Ordering::Acquire) == generation {
                return (generation, end);
            }
            std::hint::spin_loop();
        }
    }

    /// Publishes a new committed end for the current generation (lock held).
    pub(crate) fn publish_end(&self, generation: u64, end: u64) {
        self.word(W_END + (generation & 1) as usize)
            .store(end, Ordering::Release);
    }

    /// Publishes a new generation and its end (lock held).
    pub(crate) fn publish_generation(&self, generation: u64, end: u64) {
        self.word(W_END + (generation & 1) as usize)
            .store(end, Ordering::Release);
        self.word(W_GENERATION).store(generation, Ordering::Release);
    }

    pub(crate) fn intent(&self) -> u64 {
        self.word(W_INTENT).load(Ordering::Acquire)
    }

    pub(crate) fn set_intent(&self, intent: Intent) {
        self.word(W_INTENT).store(intent as u64, Ordering::Release);
    }

    /// Records the lock holder (lock held).
    pub(crate) fn set_holder(&self, pid: u32, since_ms: u64, host: &[u8; 64]) {
        for (i, chunk) in host.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            self.word(W_HOLDER_HOST + i)
                .store(u64::from_le_bytes(w), Ordering::Relaxed);
        }
        self.word(W_HOLDER_SINCE).store(since_ms, Ordering::Relaxed);
        self.word(W_HOLDER_PID)
            .store(u64::from(pid), Ordering::Release);
    }

    /// Clears the holder record (lock held, about to be released).
    pub(crate) fn clear_holder(&self) {
        self.word(W_HOLDER_PID).store(0, Ordering::Release);
    }

    /// The recorded holder. Only meaningful while someone holds the lock.
    pub(crate) fn holder(&self) -> Option<LockHolder> {
        let pid = self.word(W_HOLDER_PID).load(Ordering::Acquire);
        if pid == 0 {
            return None;
        }
        let mut host = Vec::with_capacity(64);
        for i in 0..HOST_WORDS {
            host.extend_from_slice(
                &self
                    .word(W_HOLDER_HOST + i)
                    .load(Ordering::Relaxed)
                    .to_le_bytes(),
            );
        }
        let len = host.iter().position(|b| *b == 0).unwrap_or(host.len());
        Some(LockHolder {
            pid: u32::try_from(pid).unwrap_or(u32::MAX),
            host: String::from_utf8_lossy(&host[..len]).into_owned(),
            since_ms: self.word(W_HOLDER_SINCE).load(Ordering::Relaxed),
        })
    }

    /// What automatic compaction recorded.
    pub(crate) fn auto_record(&self) -> AutoRecord {
        AutoRecord {
            count: self.word(W_AUTO_COUNT).load(Ordering::Relaxed),
            last_us: self.word(W_AUTO_LAST_US).load(Ordering::Relaxed),
            max_us: self.word(W_AUTO_MAX_US).load(Ordering::Relaxed),
            failures: self.word(W_AUTO_FAILURES).load(Ordering::Relaxed),
            not_before_ms: self.word(W_AUTO_NOT_BEFORE).load(Ordering::Relaxed),
        }
    }

    /// Records an automatic compaction's outcome (lock held).
    pub(crate) fn set_auto_record(&self, r: AutoRecord) {
        self.word(W_AUTO_COUNT).store(r.count, Ordering::Relaxed);
        self.word(W_AUTO_LAST_US)
            .store(r.last_us, Ordering::Relaxed);
        self.word(W_AUTO_MAX_US).store(r.max_us, Ordering::Relaxed);
        self.word(W_AUTO_FAILURES)
            .store(r.failures, Ordering::Relaxed);
        self.word(W_AUTO_NOT_BEFORE)
            .store(r.not_before_ms, Ordering::Release);
    }

    /// Records a compaction's switch, before its generation is published
    /// (lock held). `to` is written last, after being cleared first, so a
    /// reader that finds the same `to` before and after reading the rest
    /// read one switch's words.
    pub(crate) fn set_switch(&self, s: Option<Switch>) {
        self.word(W_SWITCH_TO).store(0, Ordering::SeqCst);
        let Some(s) = s else {
            return;
        };
        self.word(W_SWITCH_FROM).store(s.from, Ordering::SeqCst);
        self.word(W_SWITCH_FROM_END)
            .store(s.from_end, Ordering::SeqCst);
        self.word(W_SWITCH_CHECKPOINT_END)
            .store(s.checkpoint_end, Ordering::SeqCst);
        self.word(W_SWITCH_TO).store(s.to, Ordering::SeqCst);
    }

    /// The switch into generation `to`, if the map still records it.
    pub(crate) fn switch_into(&self, to: u64) -> Option<Switch> {
        if self.word(W_SWITCH_TO).load(Ordering::SeqCst) != to || to == 0 {
            return None;
        }
        let s = Switch {
            to,
            from: self.word(W_SWITCH_FROM).load(Ordering::SeqCst),
            from_end: self.word(W_SWITCH_FROM_END).load(Ordering::SeqCst),
            checkpoint_end: self.word(W_SWITCH_CHECKPOINT_END).load(Ordering::SeqCst),
        };
        (self.word(W_SWITCH_TO).load(Ordering::SeqCst) == to).then_some(s)
    }

    /// Test hook: forget the boot id, as a reboot would.
    pub(crate) fn invalidate(&self) {
        self.word(W_MAGIC).store(0, Ordering::Release);
    }
}

fn boot_words(boot: [u8; 16]) -> (u64, u64) {
    let mut lo = [0u8; 8];
    let mut hi = [0u8; 8];
    lo.copy_from_slice(&boot[..8]);
    hi.copy_from_slice(&boot[8..]);
    (u64::from_le_bytes(lo), u64::from_le_bytes(hi))
}

/// Packs a host name into the 64-byte holder field (cut if longer).
pub(crate) fn host_field(host: &str) -> [u8; 64] {
    let mut f = [0u8; 64];
    let n = host.len().min(63);
    f[..n].copy_from_slice(&host.as_bytes()[..n]);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_maps_of_one_file_see_each_other() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("shm");
        let a = Shm::open(&path).expect("open a");
        let b = Shm::open(&path).expect("open b");
        let boot = [3u8; 16];
        assert!(!b.is_valid(boot));
        a.reset(boot, 4, 100);
        assert!(b.is_valid(boot));
        assert!(!b.is_valid([4u8; 16]));
        assert_eq!(b.published(), (4, 100));
        a.publish_end(4, 250);
        assert_eq!(b.published(), (4, 250));
        a.publish_generation(5, 64);
        assert_eq!(b.published(), (5, 64));
        a.set_holder(42, 7, &host_field("build-host"));
        let h = b.holder().expect("holder recorded");
        assert_eq!((h.pid, h.host.as_str(), h.since_ms), (42, "build-host", 7));
        a.clear_holder();
        assert_eq!(b.holder(), None);
    }
}
