//! Watches: a process is told of every commit made on its directory, by
//! itself, by other processes, or merged from a peer by the daemon.
//!
//! A [`Watcher`] is pulled: [`Watcher::next`] waits for the next change.
//! It notices commits through the directory's shared memory page (the
//! published end of the log, two atomic loads), checked every
//! [`POLL_INTERVAL`], and reads them from the change feed, so nothing is
//! missed and nothing is buffered beyond one feed batch. A watcher that
//! compaction outran is told ([`Watched::Gap`]).
//!
//! [`Store::on`] runs a callback for each change on a thread of its own,
//! the one thread the engine starts, and only when asked.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chorus_core::FullPrefix;

use crate::feed::{Cursor, EventId, Feed};
use crate::format::Origin;
use crate::index::Bytes;
use crate::store::Store;
use crate::{Error, Result};

/// How often a waiting watcher looks at the shared page.
pub const POLL_INTERVAL: Duration = Duration::from_millis(2);
/// Commits read from the feed at a time.
const BATCH: usize = 256;

/// One key a commit wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// The commit's sequence number.
    pub seq: u64,
    /// This event's id: resuming from it ([`Store::watcher_after`]) reports
    /// the events after it, once each.
    pub id: EventId,
    /// Where to resume after this event's commit (every key it wrote).
    pub cursor: Cursor,
    /// Made on this directory, or merged from a peer.
    pub origin: Origin,
    /// The key's full prefix.
    pub full_prefix: FullPrefix,
    /// The key.
    pub key: Vec<u8>,
    /// What it holds now (the engine's bytes), or `None` if removed.
    pub value: Option<Bytes>,
}

/// What a watcher reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watched {
    /// A key changed.
    Change(WatchEvent),
    /// Compaction replaced commits this watcher had not read: the keys
    /// they wrote hold their latest values in a snapshot; the watcher goes
    /// on from `resume`.
    Gap {
        /// Where the watcher continues.
        resume: Cursor,
    },
}

/// Which keys a watcher reports.
pub type KeyFilter = Box<dyn Fn(&FullPrefix, &[u8]) -> bool + Send>;

/// A pull-based watch over a store.
pub struct Watcher {
    store: Store,
    cursor: Cursor,
    filter: KeyFilter,
    pending: std::collections::VecDeque<Watched>,
    seen: (u64, u64),
    /// The event the watcher resumes after: keys it covers are not
    /// reported again.
    after: Option<EventId>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// A watcher of the commits made from now on, reporting the keys
    /// `filter` accepts.
    pub fn watcher(&self, filter: KeyFilter) -> Result<Watcher> {
        self.watcher_from(self.cursor()?, filter)
    }

    /// A watcher of the commits after `cursor`.
    pub fn watcher_from(&self, cursor: Cursor, filter: KeyFilter) -> Result<Watcher> {
        self.watcher_after(EventId::after(cursor), filter)
    }

    /// A watcher of the changes after the event `id` (the rest of its
    /// commit, then the commits after it).
    pub fn watcher_after(&self, id: EventId, filter: KeyFilter) -> Result<Watcher> {
        Ok(Watcher {
            store: self.clone(),
            cursor: id.resume(),
            filter,
            pending: std::collections::VecDeque::new(),
            seen: (u64::MAX, u64::MAX),
            after: Some(id),
        })
    }

    /// Runs `callback` for every change `filter` accepts, on a thread of
    /// its own, until the returned [`Watch`] is dropped. A callback that
    /// returns an error stops the watch (the error is kept in the handle).
    pub fn on<F>(&self, filter: KeyFilter, mut callback: F) -> Result<Watch>
    where
        F: FnMut(Watched) -> Result<()> + Send + 'static,
    {
        let mut watcher = self.watcher(filter)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("chorus-watch".into())
            .spawn(move || -> Result<()> {
                while !flag.load(Ordering::Acquire) {
                    if let Some(event) = watcher.next(Duration::from_millis(50))? {
                        callback(event)?;
                    }
                }
                Ok(())
            })
            .map_err(|e| Error::Internal(format!("cannot start the watch thread: {e}")))?;
        Ok(Watch {
            stop,
            thread: Some(thread),
        })
    }

    /// The published (generation, end) of the log: changes whenever any
    /// process commits.
    fn published(&self) -> (u64, u64) {
        self.shared_map_position()
    }
}

impl Watcher {
    /// The next change, waiting at most `timeout`; `None` if there was none.
    pub fn next(&mut self, timeout: Duration) -> Result<Option<Watched>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(w) = self.pending.pop_front() {
                return Ok(Some(w));
            }
            let now = self.store.published();
            if now != self.seen {
                // Read until the cursor stops moving: a batch whose keys
                // the filter all refused must not end the reading.
                let before = self.cursor;
                self.read()?;
                if self.pending.is_empty() && self.cursor == before {
                    self.seen = now;
                }
                continue;
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(
                POLL_INTERVAL.min(deadline.saturating_duration_since(Instant::now())),
            );
        }
    }

    /// Where the watcher is: the commits up to here were reported.
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    fn read(&mut self) -> Result<()> {
        match self.store.changes_since(&self.cursor, BATCH)? {
            Feed::Changes { changes, next } => {
                let start = self.cursor;
                for change in changes {
                    // Resuming from this position reads on after this commit.
                    let cursor = start.with_seq(change.seq);
                    for (i, k) in change.keys.into_iter().enumerate() {
                        if self.after.is_some_and(|a| a.covers(change.seq, i)) {
                            continue;
                        }
                        if (self.filter)(&k.full_prefix, &k.key) {
                            self.pending.push_back(Watched::Change(WatchEvent {
                                seq: change.seq,
                                id: EventId::new(change.position, i),
                                cursor,
                                origin: change.origin,
                                full_prefix: k.full_prefix,
                                key: k.key,
                                value: k.value,
                            }));
                        }
                    }
                }
                self.cursor = next;
            }
            Feed::Gap { resume, .. } => {
                self.cursor = resume;
                self.pending.push_back(Watched::Gap { resume });
            }
        }
        Ok(())
    }
}

/// A running [`Store::on`] watch; dropping it stops the thread.
#[derive(Debug)]
pub struct Watch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Watch {
    /// Stops the watch; returns the error that ended it early, if any.
    pub fn stop(mut self) -> Result<()> {
        self.halt()
    }

    fn halt(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Release);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(Error::Internal("the watch callback panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.halt();
    }
}
