//! The public engine: [`Store`], its options, commits and transactions.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use chorus_core::object::{Hlc, Object};
use chorus_core::{FullPrefix, validate_key};

use crate::backend::{Backend, StdBackend};
use crate::dirops::{self, Dir, Tail, apply_range, check_local};
use crate::error::{ConflictKey, Error, LockHolder, Result};
use crate::format::{self, CommitRec, Origin, Payload, Raw, WriteRec};
use crate::identity::Place;
use crate::index::{Bytes, Entry, Snapshot, State};
use crate::key::Key;
use crate::layout::{Layout, WriterLock};
use crate::shm::{self, Intent, Shm, Switch};
use crate::sys::{self, Clock};
use chorus_core::NodeId;

/// When a commit is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// Each commit is synced (`fdatasync`) before it is acknowledged.
    #[default]
    Always,
    /// Commits that arrive together from threads of one process share one
    /// frame and one sync (group commit); each is acknowledged after it.
    Batch,
    /// Never sync: a crash of the process loses nothing, a power loss may
    /// lose recent commits (never more than a tail of them).
    Never,
}

/// Size limits, enforced before anything is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest key, in bytes.
    pub max_key_bytes: usize,
    /// Longest value, in bytes.
    pub max_value_bytes: usize,
    /// Most bytes of keys and values in one commit.
    pub max_commit_bytes: usize,
    /// Most keys written by one commit.
    pub max_writes_per_commit: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 4 << 10,
            max_value_bytes: 1 << 20,
            max_commit_bytes: 16 << 20,
            max_writes_per_commit: 100_000,
        }
    }
}

/// When the engine compacts a log generation by itself: when the log's
/// dead bytes (its length minus the live bytes) exceed `dead_percent` of
/// the live bytes plus `slack_bytes`. With the default (100 %, 64 MiB) a
/// log is compacted once it is longer than twice its live data plus 64 MiB.
///
/// Live bytes are [`live_bytes`]: an estimate of the checkpoint the
/// compaction would write, kept in O(1) per commit. The check runs after
/// each commit (an O(1) comparison) in whichever process committed; that
/// process compacts under the writer lock it already holds, after
/// answering the commits of its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutoCompact {
    /// Dead bytes allowed per 100 live bytes, on top of `slack_bytes`.
    pub dead_percent: u64,
    /// Dead bytes always allowed, so a small store is not compacted over
    /// and over.
    pub slack_bytes: u64,
    /// Wait after a failed automatic compaction before trying again,
    /// doubled by every further failure in a row, up to 64 times this. The
    /// commits go on meanwhile; only the compaction waits.
    pub retry_after: Duration,
}

impl Default for AutoCompact {
    fn default() -> Self {
        AutoCompact {
            dead_percent: 100,
            slack_bytes: 64 << 20,
            retry_after: Duration::from_secs(1),
        }
    }
}

impl AutoCompact {
    /// The log length above which a generation holding `live` bytes of
    /// live data is compacted.
    pub fn threshold(&self, live: u64) -> u64 {
        let t = u128::from(live)
            + u128::from(live) * u128::from(self.dead_percent) / 100
            + u128::from(self.slack_bytes);
        u64::try_from(t).unwrap_or(u64::MAX)
    }
}

/// Bytes counted per live key on top of its key and value, for the
/// sequence number and lengths a checkpoint entry stores with them.
pub const LIVE_BYTES_PER_KEY: u64 = 16;

/// The live bytes of a store holding `keys` keys with `data_bytes` bytes
/// of keys and values: an estimate of what compaction writes (the header,
/// then each key and value with [`LIVE_BYTES_PER_KEY`] more). O(1).
pub fn live_bytes(keys: usize, data_bytes: u64) -> u64 {
    format::HEADER_LEN
        .saturating_add(data_bytes)
        .saturating_add((keys as u64).saturating_mul(LIVE_BYTES_PER_KEY))
}

/// How to open a store.
#[derive(Clone)]
pub struct Options {
    /// Create the directory, node id and first generation if missing.
    pub create: bool,
    /// Durability of commits.
    pub sync: SyncMode,
    /// Longest a writer waits for the writer lock.
    pub lock_timeout: Duration,
    /// Open a directory on a network or FUSE filesystem anyway.
    pub allow_network_fs: bool,
    /// Size limits.
    pub limits: Limits,
    /// Most commits that share one frame in [`SyncMode::Batch`].
    pub max_batch: usize,
    /// The file system (a fault-injecting one in tests).
    pub backend: Arc<dyn Backend>,
    /// Compact the log automatically when it holds too many dead bytes
    /// (default: on, see [`AutoCompact`]); `None` compacts only when
    /// [`Store::compact`] is called.
    pub auto_compact: Option<AutoCompact>,
    /// The wall clock for commit timestamps and the other times the engine
    /// records (default: the system clock; a simulator's node has its own).
    pub clock: Clock,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            create: false,
            sync: SyncMode::Always,
            lock_timeout: Duration::from_secs(10),
            allow_network_fs: false,
            limits: Limits::default(),
            max_batch: 256,
            backend: Arc::new(StdBackend),
            auto_compact: Some(AutoCompact::default()),
            clock: Clock::system(),
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("create", &self.create)
            .field("sync", &self.sync)
            .field("lock_timeout", &self.lock_timeout)
            .field("allow_network_fs", &self.allow_network_fs)
            .field("limits", &self.limits)
            .field("max_batch", &self.max_batch)
            .field("auto_compact", &self.auto_compact)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

/// One key to write; `value: None` removes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// Its full prefix.
    pub full_prefix: FullPrefix,
    /// The key.
    pub key: Bytes,
    /// The new value, or `None` to remove the key.
    pub value: Option<Bytes>,
}

impl Write {
    /// A write that sets a value.
    pub fn put(full_prefix: &FullPrefix, key: &[u8], value: &[u8]) -> Self {
        Write {
            full_prefix: full_prefix.clone(),
            key: Bytes::from(key),
            value: Some(Bytes::from(value)),
        }
    }
    /// A write that removes a key.
    pub fn delete(full_prefix: &FullPrefix, key: &[u8]) -> Self {
        Write {
            full_prefix: full_prefix.clone(),
            key: Bytes::from(key),
            value: None,
        }
    }
}

/// What an acknowledged commit was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitInfo {
    /// Its sequence number (dense and increasing across the node's history).
    pub seq: u64,
    /// Its hybrid timestamp ([`Hlc`]): never behind an earlier commit's on
    /// this directory, even when the wall clock goes back.
    pub ts: u64,
    /// The log generation it went to.
    pub generation: u64,
}

/// What a compaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactReport {
    /// Generation before.
    pub old_generation: u64,
    /// Generation after.
    pub new_generation: u64,
    /// Log bytes before.
    pub bytes_before: u64,
    /// Log bytes after.
    pub bytes_after: u64,
    /// Live keys written.
    pub keys: usize,
}

/// A store's state, for `chorus status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The data directory.
    pub dir: PathBuf,
    /// This node's id.
    pub node_id: NodeId,
    /// Current log generation.
    pub generation: u64,
    /// Committed length of the current log file.
    pub log_bytes: u64,
    /// Live keys.
    pub keys: usize,
    /// Bytes of live keys and values.
    pub data_bytes: u64,
    /// Sequence number of the last commit.
    pub last_seq: u64,
    /// Who holds the writer lock right now, if anyone.
    pub lock_holder: Option<LockHolder>,
    /// Live bytes ([`live_bytes`]): about what a compaction would write.
    pub live_bytes: u64,
    /// The log length at which automatic compaction runs for the current
    /// live bytes, for this handle's options (`None`: off).
    pub compact_at: Option<u64>,
    /// Automatic compactions by any process on the directory (since the
    /// shared map was created).
    pub auto_compactions: u64,
    /// How long the last automatic compaction held the writer lock.
    pub last_auto_compaction: Option<Duration>,
    /// The longest an automatic compaction held the writer lock.
    pub longest_auto_compaction: Option<Duration>,
    /// Automatic compactions that failed in a row (0 when the last one
    /// worked); the next attempt waits for a growing back-off.
    pub auto_compaction_failures: u64,
}

/// What a queued job produced.
enum Outcome {
    Committed(CommitInfo),
    Unchanged,
    Compacted(CompactReport),
}

/// An update function for [`Store::update_all`]: given the latest state
/// under the writer lock, it returns the writes of its commit.
pub type UpdateFn = Box<dyn FnOnce(&Snapshot) -> Result<Vec<Write>> + Send>;

enum Job {
    /// Validate `reads` (key, seq seen) then apply `writes`.
    Commit {
        reads: Vec<(FullPrefix, Bytes, Option<u64>)>,
        writes: Vec<Write>,
        origin: Origin,
    },
    /// Compute the writes from the latest state, under the lock.
    Update(UpdateFn, Origin),
    Compact,
}

/// Where a queued job's submitter waits: for its outcome, or to be told
/// to lead the next batch. Each submitter is woken alone.
struct Slot {
    state: Mutex<SlotState>,
    cv: Condvar,
}

enum SlotState {
    Waiting,
    /// The previous leader finished with this job at the queue's front.
    Lead,
    Done(Result<Outcome>),
}

impl Slot {
    fn new() -> Arc<Slot> {
        Arc::new(Slot {
            state: Mutex::new(SlotState::Waiting),
            cv: Condvar::new(),
        })
    }

    fn is_done(&self) -> bool {
        matches!(*lock(&self.state), SlotState::Done(_))
    }

    fn set(&self, state: SlotState) {
        let mut s = lock(&self.state);
        if !matches!(*s, SlotState::Done(_)) {
            *s = state;
        }
        drop(s);
        self.cv.notify_one();
    }
}

struct Pending {
    job: Job,
    slot: Arc<Slot>,
}

#[derive(Default)]
struct QueueState {
    leader: bool,
    pending: VecDeque<Pending>,
}

/// Most jobs waiting in one process; a committer beyond waits for room.
const QUEUE_MAX: usize = 4096;
/// Smallest and largest step by which a log file is extended with zeros.
const PREALLOCATE_MIN: u64 = 64 << 10;
const PREALLOCATE_MAX: u64 = 8 << 20;
/// Most times a reader retries when generations change under it.
const RELOAD_TRIES: usize = 64;

struct Inner {
    dir: Dir,
    options: Options,
    host: [u8; 64],
    lock: WriterLock,
    /// The latest state this process has applied; swapped whole, read without locks.
    state: ArcSwap<State>,
    tail: Mutex<Tail>,
    queue: Mutex<QueueState>,
    queue_cv: Condvar,
    poisoned: Mutex<Option<String>>,
    commits: AtomicU64,
    frames: AtomicU64,
    syncs: AtomicU64,
    auto_compactions: AtomicU64,
    auto_failures: AtomicU64,
    auto_longest_us: AtomicU64,
    /// Objects from peers that showed a copy of this directory.
    identity: Arc<crate::identity::Conflicts>,
    /// The channel table last read (what this node must refuse).
    channels: Arc<crate::channels::Cache>,
}

/// What this process's handle has written since it opened the directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Commits acknowledged.
    pub commits: u64,
    /// Log frames appended (a group commit may need several).
    pub frames: u64,
    /// Syncs (`fdatasync`) of the log; far below `commits` when commits
    /// arriving together share one.
    pub syncs: u64,
    /// Automatic compactions this handle ran.
    pub auto_compactions: u64,
    /// Automatic compactions this handle tried that failed (each was
    /// logged; the commit that triggered it was not affected).
    pub auto_compaction_failures: u64,
    /// The longest an automatic compaction of this handle held the writer
    /// lock: the longest pause it caused other writers.
    pub longest_auto_compaction: Duration,
}

/// `~` or `~/rest` at the start of a directory path is the home directory
/// (`$HOME`), as in a shell: `~/.chorus/users` works even where no shell
/// expanded it (a quoted argument, an environment variable).
pub fn expand_home(dir: &Path) -> Result<PathBuf> {
    let Some(text) = dir.to_str() else {
        return Ok(dir.to_path_buf());
    };
    let rest = match text {
        "~" => "",
        _ => match text.strip_prefix("~/") {
            Some(rest) => rest,
            None => return Ok(dir.to_path_buf()),
        },
    };
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| {
            Error::InvalidInput(format!(
                "{text} starts with '~' but HOME is not set: give the full path"
            ))
        })?;
    Ok(PathBuf::from(home).join(rest))
}

/// An open data directory. Cheap to clone; share it between threads.
///
/// Reads are answered from memory after a check of the shared map (two
/// atomic loads); writes take the directory's writer lock only while they
/// append. Any number of processes may open the same directory.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir.layout.dir)
            .field("node_id", &self.inner.dir.node_id)
            .finish_non_exhaustive()
    }
}

/// The shared map, the writer lock and the boot id of a directory: the
/// OS's, or those of a backend whose files live in this process.
fn kernel_objects(layout: &Layout, backend: &dyn Backend) -> Result<(Shm, WriterLock, [u8; 16])> {
    Ok(match backend.kernel() {
        Some(kernel) => (
            Shm::local(kernel.page(&layout.shm())),
            WriterLock::local(kernel.lock(&layout.lock()), &layout.lock()),
            kernel.boot_id(),
        ),
        None => (
            Shm::open(&layout.shm())?,
            WriterLock::open(&layout.lock())?,
            sys::boot_id().unwrap_or([0; 16]),
        ),
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Store {
    /// Creates a store in `dir` if there is none; returns its node id and
    /// whether it was created now.
    pub fn init(dir: &Path, options: &Options) -> Result<(NodeId, bool)> {
        let dir = &expand_home(dir)?;
        let backend = options.backend.as_ref();
        backend
            .create_dir_all(dir)
            .map_err(|e| Error::io("create directory", dir, e))?;
        if backend.kernel().is_none() {
            check_local(dir, options.allow_network_fs)?;
            crate::modes::tighten(dir);
        }
        let layout = Layout::new(dir);
        let (shm, writer, _) = kernel_objects(&layout, backend)?;
        let _guard = writer.acquire(options.lock_timeout, &shm)?;
        let (id, created) = dirops::create_locked(&layout, backend, options.clock.now_ms())?;
        if created && let Some(here) = here_of(&layout, backend)? {
            write_place(&layout, backend, Place::new(here, 0))?;
        }
        Ok((id, created))
    }

    /// Opens the store in `dir`.
    ///
    /// On the real file system, a directory that is not where its `place`
    /// file says (a copy: `cp -a`, `rsync`, a restored backup, a move to
    /// another file system) takes a new node id here, before anything
    /// writes, and the open logs a warning (see docs/identity.md).
    pub fn open(dir: &Path, options: Options) -> Result<Store> {
        let store = Store::open_once(dir, options)?;
        if store.settle_place()? {
            // The node id changed: read everything again.
            let options = store.inner.options.clone();
            let dir = store.dir().to_path_buf();
            drop(store);
            return Store::open_once(&dir, options);
        }
        Ok(store)
    }

    fn open_once(dir: &Path, options: Options) -> Result<Store> {
        let dir = &expand_home(dir)?;
        // On a backend whose files live in this process, nothing below
        // looks at the real file system.
        let on_disk = options.backend.kernel().is_none();
        if options.create {
            Store::init(dir, &options)?;
        } else if on_disk && !dir.is_dir() {
            return Err(Error::NotInitialized {
                dir: dir.to_path_buf(),
            });
        }
        if on_disk {
            check_local(dir, options.allow_network_fs)?;
        }
        check_limits(&options.limits)?;
        if on_disk && !options.create {
            // `init` above did it otherwise.
            crate::modes::tighten(dir);
        }
        let layout = Layout::new(dir);
        let backend = options.backend.clone();
        let node_id = layout.read_node_id(backend.as_ref())?;
        layout.read_current(backend.as_ref())?;
        let (shm, lock, boot) = kernel_objects(&layout, backend.as_ref())?;
        let dir = Dir {
            layout,
            backend,
            shm,
            boot,
            node_id,
        };
        if !dir.shm.is_valid(boot) || dir.shm.intent() != Intent::None as u64 {
            let _guard = lock.acquire(options.lock_timeout, &dir.shm)?;
            if !dir.shm.is_valid(boot) || dir.shm.intent() != Intent::None as u64 {
                dir.recover_locked()?;
            }
        }
        let (tail, state) = load_published(&dir)?;
        Ok(Store {
            inner: Arc::new(Inner {
                dir,
                host: shm::host_field(&sys::hostname()),
                lock,
                state: ArcSwap::from_pointee(state),
                tail: Mutex::new(tail),
                queue: Mutex::new(QueueState::default()),
                queue_cv: Condvar::new(),
                poisoned: Mutex::new(None),
                commits: AtomicU64::new(0),
                frames: AtomicU64::new(0),
                syncs: AtomicU64::new(0),
                auto_compactions: AtomicU64::new(0),
                auto_failures: AtomicU64::new(0),
                auto_longest_us: AtomicU64::new(0),
                identity: Arc::default(),
                channels: Arc::new(crate::channels::Cache::new()?),
                options,
            }),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.dir.node_id
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir.layout.dir
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &Options {
        &self.inner.options
    }

    /// The value of a key, as of the latest commit by any process.
    /// Refused ([`Error::NotServed`]) when the key's full prefix is in a
    /// channel this node does not serve (see [`crate::channels`]).
    pub fn get(&self, fp: &FullPrefix, key: &[u8]) -> Result<Option<Bytes>> {
        let (generation, end) = self.inner.dir.shm.published();
        {
            let state = self.inner.state.load();
            if state.generation == generation && state.end == end {
                self.refuse_unserved_in(&state, fp)?;
                return Ok(state.index.get(fp, key).map(|e| e.value.clone()));
            }
        }
        let state = self.inner.catch_up()?;
        self.refuse_unserved_in(&state, fp)?;
        Ok(state.index.get(fp, key).map(|e| e.value.clone()))
    }

    /// [`Store::get`] whatever the channels say: for the replica, which
    /// sends what it holds.
    pub(crate) fn get_anywhere(&self, fp: &FullPrefix, key: &[u8]) -> Result<Option<Bytes>> {
        self.with_state(|state| state.index.get(fp, key).map(|e| e.value.clone()))
    }

    /// Runs `f` on the latest state: the current one when the shared map
    /// shows no change (no reference count taken), else after catching up.
    fn with_state<T>(&self, f: impl FnOnce(&State) -> T) -> Result<T> {
        let (generation, end) = self.inner.dir.shm.published();
        {
            let state = self.inner.state.load();
            if state.generation == generation && state.end == end {
                return Ok(f(&state));
            }
        }
        let state = self.inner.catch_up()?;
        Ok(f(&state))
    }

    /// [`Store::get`] when it can be answered from memory alone: `None`
    /// when another process committed since this one last read the log
    /// (then call [`Store::get`], which reads the new frames). Never does
    /// IO, never waits: for callers that must not block where a read may
    /// (a Python call holding the GIL).
    pub fn get_in_memory(&self, fp: &FullPrefix, key: &[u8]) -> Option<Result<Option<Bytes>>> {
        let (generation, end) = self.inner.dir.shm.published();
        let state = self.inner.state.load();
        (state.generation == generation && state.end == end).then(|| {
            self.refuse_unserved_in(&state, fp)?;
            Ok(state.index.get(fp, key).map(|e| e.value.clone()))
        })
    }

    /// The entry (value and sequence number) of a key, as of the latest
    /// commit (refused as [`Store::get`] is).
    pub fn get_entry(&self, fp: &FullPrefix, key: &[u8]) -> Result<Option<Entry>> {
        let snapshot = self.snapshot()?;
        self.refuse_unserved_in(&snapshot.state, fp)?;
        Ok(snapshot.entry(fp, key).cloned())
    }

    /// Refuses ([`Error::NotServed`]) a full prefix of a channel this node
    /// does not serve, as of the latest commit.
    pub fn refuse_unserved(&self, fp: &FullPrefix) -> Result<()> {
        self.with_state(|state| self.refuse_unserved_in(state, fp))?
    }

    /// [`Store::refuse_unserved`] as of `snapshot`.
    pub fn refuse_unserved_at(&self, snapshot: &Snapshot, fp: &FullPrefix) -> Result<()> {
        self.refuse_unserved_in(&snapshot.state, fp)
    }

    /// Refuses a prefix's listing or hash when a channel this node does
    /// not serve has a pattern under it, as of `snapshot`.
    pub(crate) fn refuse_unserved_prefix_at(
        &self,
        snapshot: &Snapshot,
        prefix: &str,
    ) -> Result<()> {
        self.inner
            .channels
            .refuse_unserved_prefix(&snapshot.state.index, self.node_id(), prefix)
    }

    #[inline]
    fn refuse_unserved_in(&self, state: &State, fp: &FullPrefix) -> Result<()> {
        self.inner
            .channels
            .refuse_unserved(state, self.node_id(), fp)
    }

    /// The channel table's cache every handle of this store shares.
    pub(crate) fn channel_cache(&self) -> Arc<crate::channels::Cache> {
        self.inner.channels.clone()
    }

    /// A consistent view of every key as of the latest commit. O(1).
    pub fn snapshot(&self) -> Result<Snapshot> {
        Ok(Snapshot {
            state: self.inner.fresh()?,
            commit_ts: None,
        })
    }

    /// The shared map's published (generation, end): moves with every
    /// commit of any process.
    pub(crate) fn shared_map_position(&self) -> (u64, u64) {
        self.inner.dir.shm.published()
    }

    /// The latest state and the log file it was read from, of the same
    /// generation (for the change feed).
    pub(crate) fn feed_view(
        &self,
    ) -> Result<(Arc<State>, Arc<dyn crate::backend::LogFile>, PathBuf)> {
        for _ in 0..RELOAD_TRIES {
            let state = self.inner.fresh()?;
            let tail = lock(&self.inner.tail);
            if tail.generation == state.generation {
                return Ok((state, tail.file.clone(), tail.path.clone()));
            }
        }
        Err(generation_churn(&lock(&self.inner.tail).path))
    }

    /// Starts an optimistic transaction over a snapshot taken now.
    pub fn begin(&self) -> Result<Transaction> {
        Ok(Transaction {
            store: self.clone(),
            snapshot: self.snapshot()?,
            reads: BTreeMap::new(),
            writes: BTreeMap::new(),
        })
    }

    /// Sets a key, superseding whatever is current when the commit happens.
    pub fn put(&self, fp: &FullPrefix, key: &[u8], value: &[u8]) -> Result<CommitInfo> {
        self.write(vec![Write::put(fp, key, value)])
    }

    /// Removes a key (a no-op commit if it is absent).
    pub fn delete(&self, fp: &FullPrefix, key: &[u8]) -> Result<CommitInfo> {
        self.write(vec![Write::delete(fp, key)])
    }

    /// Applies several writes as one atomic commit, without validation.
    pub fn write(&self, writes: Vec<Write>) -> Result<CommitInfo> {
        self.commit_job(Vec::new(), writes, Origin::Local)
    }

    /// Applies writes as one atomic commit recorded as coming from `origin`
    /// (the daemon uses this for updates merged from peers).
    pub fn write_from(&self, origin: Origin, writes: Vec<Write>) -> Result<CommitInfo> {
        self.commit_job(Vec::new(), writes, origin)
    }

    /// Runs `f` under the writer lock on the latest state and commits the
    /// writes it returns; it cannot conflict. Returns `None` when `f` wrote
    /// nothing. Keep `f` short: every writer on the directory waits for it.
    pub fn update<F>(&self, f: F) -> Result<Option<CommitInfo>>
    where
        F: FnOnce(&Snapshot) -> Result<Vec<Write>> + Send + 'static,
    {
        self.update_from(Origin::Local, f)
    }

    /// [`Store::update`], with the commit recorded as coming from `origin`
    /// (the daemon merges peers' objects this way).
    pub fn update_from<F>(&self, origin: Origin, f: F) -> Result<Option<CommitInfo>>
    where
        F: FnOnce(&Snapshot) -> Result<Vec<Write>> + Send + 'static,
    {
        match self.inner.submit(Job::Update(Box::new(f), origin))? {
            Outcome::Committed(info) => Ok(Some(info)),
            _ => Ok(None),
        }
    }

    /// Counts of the commits, frames and syncs this handle has made.
    pub fn write_stats(&self) -> WriteStats {
        WriteStats {
            commits: self.inner.commits.load(Ordering::Relaxed),
            frames: self.inner.frames.load(Ordering::Relaxed),
            syncs: self.inner.syncs.load(Ordering::Relaxed),
            auto_compactions: self.inner.auto_compactions.load(Ordering::Relaxed),
            auto_compaction_failures: self.inner.auto_failures.load(Ordering::Relaxed),
            longest_auto_compaction: Duration::from_micros(
                self.inner.auto_longest_us.load(Ordering::Relaxed),
            ),
        }
    }

    /// [`Store::update`] whose function also returns a result for the
    /// caller (what it read or decided under the lock); the result is
    /// returned even when the function wrote nothing.
    pub fn update_returning<T, F>(&self, f: F) -> Result<(Option<CommitInfo>, T)>
    where
        T: Send + 'static,
        F: FnOnce(&Snapshot) -> Result<(Vec<Write>, T)> + Send + 'static,
    {
        let slot: Arc<Mutex<Option<T>>> = Arc::default();
        let out = slot.clone();
        let info = self.update(move |snap| {
            let (writes, result) = f(snap)?;
            *lock(&out) = Some(result);
            Ok(writes)
        })?;
        let result = lock(&slot)
            .take()
            .ok_or_else(|| Error::Internal("the update function returned no result".into()))?;
        Ok((info, result))
    }

    /// Runs several update functions as [`Store::update_from`] does, queued
    /// together so that they share a batch (and one sync) in
    /// [`SyncMode::Batch`]. Each is its own commit, with its own origin,
    /// and fails or succeeds alone; the outcomes come back in order.
    pub fn update_all(&self, updates: Vec<(Origin, UpdateFn)>) -> Vec<Result<Option<CommitInfo>>> {
        let jobs = updates
            .into_iter()
            .map(|(origin, f)| Job::Update(f, origin))
            .collect();
        self.inner
            .submit_all(jobs)
            .into_iter()
            .map(|o| match o? {
                Outcome::Committed(info) => Ok(Some(info)),
                _ => Ok(None),
            })
            .collect()
    }

    /// Writes the live state to a new log generation and switches to it.
    /// Other processes notice and reload; nothing is lost.
    pub fn compact(&self) -> Result<CompactReport> {
        match self.inner.submit(Job::Compact)? {
            Outcome::Compacted(r) => Ok(r),
            _ => Err(Error::Internal("compaction produced no report".into())),
        }
    }

    /// Node id, generation, sizes and the current lock holder.
    pub fn status(&self) -> Result<Status> {
        let state = self.inner.fresh()?;
        let (_, probe, _) =
            kernel_objects(&self.inner.dir.layout, self.inner.dir.backend.as_ref())?;
        let lock_holder = if probe.is_held_elsewhere()? {
            self.inner.dir.shm.holder()
        } else {
            None
        };
        let live = live_bytes(state.index.keys(), state.index.bytes());
        let auto = self.inner.dir.shm.auto_record();
        let duration = |us: u64| (auto.count > 0).then(|| Duration::from_micros(us));
        Ok(Status {
            dir: self.dir().to_path_buf(),
            node_id: self.node_id(),
            generation: state.generation,
            log_bytes: state.end,
            keys: state.index.keys(),
            data_bytes: state.index.bytes(),
            last_seq: state.last_seq,
            lock_holder,
            live_bytes: live,
            compact_at: self.inner.options.auto_compact.map(|a| a.threshold(live)),
            auto_compactions: auto.count,
            last_auto_compaction: duration(auto.last_us),
            longest_auto_compaction: duration(auto.max_us),
            auto_compaction_failures: auto.failures,
        })
    }

    fn commit_job(
        &self,
        reads: Vec<(FullPrefix, Bytes, Option<u64>)>,
        writes: Vec<Write>,
        origin: Origin,
    ) -> Result<CommitInfo> {
        check_writes(&self.inner.options.limits, &writes)?;
        match self.inner.submit(Job::Commit {
            reads,
            writes,
            origin,
        })? {
            Outcome::Committed(info) => Ok(info),
            _ => Err(Error::InvalidInput("a commit with no writes".into())),
        }
    }

    #[doc(hidden)]
    /// Test hook: make the shared map look as it does after a reboot.
    pub fn forget_shared_map_for_tests(&self) {
        self.inner.dir.shm.invalidate();
    }

    /// Objects from peers that merges skipped because they held a value
    /// under one of this node's own dots that this node never wrote: a copy
    /// of this directory (a restored backup, a cloned machine) wrote them
    /// under the same node id. The first [`crate::CONFLICTS_KEPT`] seen by
    /// this handle (and its clones); see [`Store::identity_conflict_count`]
    /// for all of them.
    pub fn identity_conflicts(&self) -> Vec<crate::IdentityConflict> {
        self.inner.identity.first()
    }

    /// How many objects merges skipped as [`Store::identity_conflicts`].
    pub fn identity_conflict_count(&self) -> u64 {
        self.inner.identity.count()
    }

    pub(crate) fn identity_sink(&self) -> Arc<crate::identity::Conflicts> {
        self.inner.identity.clone()
    }

    /// Gives the directory in `dir` a new node id, keeping its data:
    /// `chorus init --new-identity`, for a copy of another node's directory
    /// that kept its place (a cloned machine's disk) or that wrote before it
    /// was found out. Returns the old and the new id.
    ///
    /// The copy point is the `since` of the directory's `place` record: the
    /// last moment the directory is known to share with any copy of it (a
    /// copy carries the record as it was when copied). What the directory
    /// wrote under the old id after it gets new dots of the new id, and the
    /// old id's counters are brought down to the shared history (see
    /// `identity::remint_after`), so the original's later writes and the
    /// copy's stay siblings. Without a record (a directory on a backend with
    /// no places), the copy point is the start: every value under the old id
    /// is given again. The old id is recorded under [`crate::IDENTITIES`].
    ///
    /// Stop every process using the directory first: a process that still
    /// has it open fails its next read or write (its log belongs to
    /// another node now) until it opens the directory again.
    ///
    /// Crash safe: the new generation is written whole before the node id
    /// and then the pointer switch; if interrupted between the two, the
    /// directory does not open until this runs again, which finishes it.
    pub fn new_identity(dir: &Path, options: &Options) -> Result<(NodeId, NodeId)> {
        let new = NodeId::from_bytes(
            sys::random_bytes().map_err(|e| Error::io("read", "/dev/urandom", e))?,
        );
        Store::new_identity_as(dir, options, new, true)
    }

    /// [`Store::new_identity`] with the new id given (the simulator draws
    /// ids from its seed). With `remint` false nothing is re-dotted: for a
    /// copy made just now, which wrote nothing since (what opening a copy
    /// in a new place does).
    pub fn new_identity_as(
        dir: &Path,
        options: &Options,
        new: NodeId,
        remint: bool,
    ) -> Result<(NodeId, NodeId)> {
        let dir = &expand_home(dir)?;
        let layout = Layout::new(dir);
        let backend = options.backend.clone();
        layout.read_node_id(backend.as_ref())?;
        {
            let (shm, writer, _) = kernel_objects(&layout, backend.as_ref())?;
            let _guard = writer.acquire(options.lock_timeout, &shm)?;
            finish_identity_switch(&layout, backend.as_ref(), &shm)?;
        }
        let store = Store::open(
            dir,
            Options {
                create: false,
                ..options.clone()
            },
        )?;
        let old = store.node_id();
        if new == old {
            return Err(Error::InvalidInput(format!(
                "{new} is this directory's node id already: give another"
            )));
        }
        let inner = &store.inner;
        let _guard = inner
            .lock
            .acquire(inner.options.lock_timeout, &inner.dir.shm)?;
        let state = inner.prepare_locked()?;
        let copy_point = match remint {
            true => Some(
                read_place(&inner.dir.layout, inner.dir.backend.as_ref())?.map_or(0, |p| p.since),
            ),
            false => None,
        };
        store.switch_identity_locked(&state, new, copy_point)?;
        Ok((old, new))
    }

    /// Checks that the directory is where its `place` file says: records
    /// the place when the file is missing (a directory made by an older
    /// release), and takes a new node id when it is elsewhere (a copy).
    /// Returns whether the node id changed (the handle must be opened
    /// again). Two processes opening a copy at once agree: the second finds
    /// the place rewritten once it has the lock.
    fn settle_place(&self) -> Result<bool> {
        let inner = &self.inner;
        let (layout, backend) = (&inner.dir.layout, inner.dir.backend.as_ref());
        let Some(here) = here_of(layout, backend)? else {
            return Ok(false);
        };
        if read_place(layout, backend)?.is_some_and(|p| p.is(here)) {
            return Ok(false);
        }
        let _guard = inner
            .lock
            .acquire(inner.options.lock_timeout, &inner.dir.shm)?;
        let recorded = read_place(layout, backend)?;
        if layout.read_node_id(backend)? != inner.dir.node_id {
            // Another process took a new id since this one read it; when it
            // stopped before recording the place, record it (from the
            // start: nothing later is known to be shared with a copy).
            if !recorded.is_some_and(|p| p.is(here)) {
                write_place(layout, backend, Place::new(here, 0))?;
            }
            return Ok(true);
        }
        if recorded.is_some_and(|p| p.is(here)) {
            return Ok(false);
        }
        let state = inner.prepare_locked()?;
        let Some(p) = recorded else {
            // A directory made before places were recorded: it is here.
            write_place(layout, backend, Place::new(here, state.last_ts))?;
            return Ok(false);
        };
        let old = inner.dir.node_id;
        let new = NodeId::from_bytes(
            sys::random_bytes().map_err(|e| Error::io("read", "/dev/urandom", e))?,
        );
        self.switch_identity_locked(&state, new, None)?;
        tracing::warn!(
            dir = %layout.dir.display(),
            old_node_id = %old,
            new_node_id = %new,
            recorded_device = p.dev,
            recorded_inode = p.ino,
            device = here.0,
            inode = here.1,
            copy_point = ?Hlc(state.last_ts),
            "this data directory was copied or restored (it is not the directory it was \
             created as): it takes the new node id {new} and keeps its data; the original \
             keeps node id {old}"
        );
        Ok(true)
    }

    /// Under the writer lock: writes the live state as a new generation
    /// whose header names `new` (with `new`'s record under
    /// [`crate::IDENTITIES`] and, given a copy point, what this directory
    /// wrote after it given new dots of `new`), then the node id, then the
    /// pointer, then the place record. Returns the new last timestamp.
    fn switch_identity_locked(
        &self,
        state: &Arc<State>,
        new: NodeId,
        copy_point: Option<u64>,
    ) -> Result<u64> {
        let inner = &self.inner;
        let old = inner.dir.node_id;
        let mut work = (**state).clone();
        let ts = Hlc::tick(Hlc(work.last_ts), inner.options.clock.now_ms());
        let seq = work.last_seq + 1;
        let internal = |e: &dyn std::fmt::Display| Error::Internal(e.to_string());
        if let Some(copy_point) = copy_point {
            let mut changed = Vec::new();
            for (fp, key, entry) in state.index.iter_all() {
                // Only metadata objects carry dots; a raw value that
                // happens to decode is told apart by its encoding.
                let Ok(object) = Object::decode(&entry.value) else {
                    continue;
                };
                if object.encode() != entry.value[..] {
                    continue;
                }
                let reminted = crate::identity::remint_after(&object, old, new, copy_point)
                    .map_err(|e| internal(&e))?;
                if let Some(result) = reminted {
                    changed.push((fp.clone(), key.clone(), result.encode()));
                }
            }
            for (fp, key, bytes) in changed {
                work.index.put(
                    &fp,
                    key,
                    Entry {
                        seq,
                        value: Bytes::from(&bytes[..]),
                    },
                );
            }
        }
        let fp = FullPrefix::parse(crate::IDENTITIES).map_err(|e| internal(&e))?;
        let name = new.to_string();
        let current = work
            .index
            .get(&fp, name.as_bytes())
            .and_then(|e| Object::decode(&e.value).ok());
        let snapshot = Snapshot {
            state: state.clone(),
            commit_ts: None,
        };
        let record = crate::identity::former_record(&snapshot, current.as_ref(), old, new, ts)
            .map_err(|e| internal(&e))?;
        work.index.put(
            &fp,
            Key::new(name.as_bytes()),
            Entry {
                seq,
                value: Bytes::from(&record.encode()[..]),
            },
        );
        work.last_seq = seq;
        work.last_ts = ts.0;

        let (shm, _, boot) = kernel_objects(&inner.dir.layout, inner.dir.backend.as_ref())?;
        let renamed = Dir {
            layout: inner.dir.layout.clone(),
            backend: inner.dir.backend.clone(),
            shm,
            boot,
            node_id: new,
        };
        let generation = state.generation + 1;
        let end = renamed.write_generation(generation, &work.index, work.last_seq, work.last_ts)?;
        let path = renamed.layout.node_id();
        crate::backend::write_atomic(
            renamed.backend.as_ref(),
            &path,
            format!("{new}\n").as_bytes(),
        )
        .map_err(|e| Error::io("write", &path, e))?;
        renamed
            .layout
            .write_current(renamed.backend.as_ref(), generation)?;
        // The place last: a switch interrupted before it is finished by the
        // next open (the id is new already; only the place is recorded).
        if let Some(here) = here_of(&renamed.layout, renamed.backend.as_ref())? {
            write_place(
                &renamed.layout,
                renamed.backend.as_ref(),
                Place::new(here, work.last_ts),
            )?;
        }
        // Every reader reloads from the new generation (and a process that
        // still has the old id refuses it: it must open the directory again).
        renamed.shm.reset(renamed.boot, generation, end);
        let old_path = renamed.layout.log(state.generation);
        if let Err(e) = renamed.backend.remove_file(&old_path) {
            tracing::warn!(path = %old_path.display(), error = %e, "could not remove the old log generation; the next recovery will");
        }
        Ok(work.last_ts)
    }
}

/// Where the directory of `layout` is now: its device and inode, or `None`
/// on a backend without them.
fn here_of(layout: &Layout, backend: &dyn Backend) -> Result<Option<(u64, u64)>> {
    backend
        .place(&layout.dir)
        .map_err(|e| Error::io("stat", &layout.dir, e))
}

/// The directory's `place` record; `None` when there is none yet.
fn read_place(layout: &Layout, backend: &dyn Backend) -> Result<Option<Place>> {
    let path = layout.place();
    let bytes = match crate::backend::read_whole(backend, &path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read", &path, e)),
    };
    Place::parse(&String::from_utf8_lossy(&bytes))
        .map(Some)
        .ok_or_else(|| {
            Error::corruption(
                &path,
                0,
                "the place record is damaged: if this directory is the one it was created as, \
                 remove the file and open it again; if it is a copy of another node's \
                 directory, remove the file and run chorus init --new-identity",
            )
        })
}

fn write_place(layout: &Layout, backend: &dyn Backend, place: Place) -> Result<()> {
    let path = layout.place();
    crate::backend::write_atomic(backend, &path, place.encode().as_bytes())
        .map_err(|e| Error::io("write", &path, e))
}

/// Runs an update closure, turning a panic in it into an error for its
/// caller alone: the other commits of the batch go on.
fn run_update(f: UpdateFn, snapshot: &Snapshot) -> Result<Vec<Write>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(snapshot))).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        Err(Error::InvalidInput(format!(
            "the update function panicked ({what}); nothing was written"
        )))
    })
}

fn check_limits(limits: &Limits) -> Result<()> {
    if limits.max_commit_bytes > format::FRAME_PAYLOAD_MAX / 2 {
        return Err(Error::InvalidInput(format!(
            "max_commit_bytes {} is above the format's limit of {} bytes",
            limits.max_commit_bytes,
            format::FRAME_PAYLOAD_MAX / 2
        )));
    }
    Ok(())
}

/// The size of a commit's writes as the commit limit counts it.
fn writes_bytes(writes: &[Write]) -> usize {
    writes
        .iter()
        .map(|w| {
            w.key.len()
                + w.value.as_ref().map_or(0, |v| v.len())
                + w.full_prefix.prefix().len()
                + w.full_prefix.subprefix().len()
                + 16
        })
        .sum()
}

/// Checks writes against the limits; returns their size in bytes.
fn check_writes(limits: &Limits, writes: &[Write]) -> Result<usize> {
    if writes.is_empty() {
        return Err(Error::InvalidInput(
            "a commit must write at least one key".into(),
        ));
    }
    if writes.len() > limits.max_writes_per_commit {
        return Err(Error::InvalidInput(format!(
            "a commit writes {} keys; the limit is {}: split it into several commits",
            writes.len(),
            limits.max_writes_per_commit
        )));
    }
    for w in writes {
        validate_key(&w.key, limits.max_key_bytes)?;
        let value_len = w.value.as_ref().map_or(0, |v| v.len());
        if value_len > limits.max_value_bytes {
            return Err(Error::InvalidInput(format!(
                "the value of {}/{} is {value_len} bytes; the limit is {} bytes",
                w.full_prefix,
                String::from_utf8_lossy(&w.key),
                limits.max_value_bytes
            )));
        }
    }
    let total = writes_bytes(writes);
    if total > limits.max_commit_bytes {
        return Err(Error::InvalidInput(format!(
            "the commit is {total} bytes; the limit is {} bytes: split it into several commits",
            limits.max_commit_bytes
        )));
    }
    Ok(total)
}

/// The wait before retrying after `failures` failed automatic compactions
/// in a row: `first`, doubled each time, at most 64 times `first`.
fn backoff(first: Duration, failures: u64) -> Duration {
    let shift = failures.saturating_sub(1).min(6) as u32;
    first.saturating_mul(1 << shift)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Compactions replaced the log faster than this process could read it.
fn generation_churn(path: &Path) -> Error {
    Error::Io {
        op: "load",
        path: path.to_path_buf(),
        kind: std::io::ErrorKind::Other,
        message: format!(
            "the log generation changed {RELOAD_TRIES} times while this process read it; retry"
        ),
    }
}

/// Loads the generation the shared map publishes, retrying when a
/// compaction removes it in between.
fn load_published(dir: &Dir) -> Result<(Tail, State)> {
    let mut last_err = None;
    for _ in 0..RELOAD_TRIES {
        let (generation, end) = dir.shm.published();
        match dir.load(generation, end) {
            Ok(loaded) => return Ok(loaded),
            Err(Error::Io {
                kind: std::io::ErrorKind::NotFound,
                ..
            }) if dir.shm.published().0 != generation => {}
            Err(
                e @ Error::Io {
                    kind: std::io::ErrorKind::NotFound,
                    ..
                },
            ) => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| generation_churn(&dir.layout.dir)))
}

impl Inner {
    /// The latest state: the current one if the shared map shows no change,
    /// else after catching up.
    fn fresh(&self) -> Result<Arc<State>> {
        let (generation, end) = self.dir.shm.published();
        let state = self.state.load_full();
        if state.generation == generation && state.end == end {
            return Ok(state);
        }
        self.catch_up()
    }

    fn install(&self, state: State) -> Arc<State> {
        let state = Arc::new(state);
        self.state.store(state.clone());
        state
    }

    /// Applies what other writers published since this process last looked.
    fn catch_up(&self) -> Result<Arc<State>> {
        let mut tail = lock(&self.tail);
        for _ in 0..RELOAD_TRIES {
            let (generation, end) = self.dir.shm.published();
            let current = self.state.load_full();
            if current.generation == generation && current.end == end {
                return Ok(current);
            }
            if current.generation == generation && end > current.end {
                let mut next = (*current).clone();
                apply_range(&tail, &mut next, end)?;
                return Ok(self.install(next));
            }
            let loaded = match self.follow_switch(&tail, &current, generation, end) {
                Ok(Some(followed)) => Ok(followed),
                Ok(None) => self.dir.load(generation, end),
                Err(e) => Err(e),
            };
            match loaded {
                Ok((new_tail, state)) => {
                    *tail = new_tail;
                    return Ok(self.install(state));
                }
                Err(Error::Io {
                    kind: std::io::ErrorKind::NotFound,
                    ..
                }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(generation_churn(&tail.path))
    }

    /// After a compaction by another process: when this process's state is
    /// of the generation the compaction left, it reads the rest of that
    /// generation (its file is still open here, even if removed) up to the
    /// end the compaction left it at; its state is then exactly what the
    /// compaction wrote out, the new generation's checkpoint: same keys,
    /// values, sequence numbers and sums. The index is kept (shared, not
    /// copied) and only the frames after the checkpoint are read, so a
    /// compaction costs other processes O(new commits), not O(live data).
    /// `None` when the switch does not apply (a process further behind, or a
    /// generation made by `repair`): then the new generation is loaded whole.
    fn follow_switch(
        &self,
        old_tail: &Tail,
        current: &State,
        generation: u64,
        end: u64,
    ) -> Result<Option<(Tail, State)>> {
        let Some(switch) = self.dir.shm.switch_into(generation) else {
            return Ok(None);
        };
        if switch.from != current.generation
            || old_tail.generation != current.generation
            || switch.from_end < current.end
            || switch.checkpoint_end > end
        {
            return Ok(None);
        }
        let mut left = current.clone();
        apply_range(old_tail, &mut left, switch.from_end)?;
        let (tail, header) = self.dir.open_log(generation)?;
        if header.base_seq != left.last_seq {
            return Ok(None);
        }
        let mut state = State {
            generation,
            end: switch.checkpoint_end,
            last_seq: header.base_seq,
            last_ts: header.base_ts,
            index: left.index,
            channels: crate::channels::Mark::default(),
        };
        apply_range(&tail, &mut state, end)?;
        Ok(Some((tail, state)))
    }

    /// Queues a job and waits for its outcome; the first waiter with no
    /// leader in place becomes the leader and runs batches for everyone.
    fn submit(&self, job: Job) -> Result<Outcome> {
        self.submit_all(vec![job])
            .pop()
            .unwrap_or_else(|| Err(Error::Internal("a job was lost in the queue".into())))
    }

    /// Queues jobs one after the other (so they tend to share a batch and
    /// its sync) and waits for every outcome, in order.
    ///
    /// Waiting is per job: a leader that finishes a batch wakes the
    /// submitters of its jobs, and hands the lead to the job now at the
    /// queue's front, so no wakeup is wasted on a thread with nothing to do.
    fn submit_all(&self, jobs: Vec<Job>) -> Vec<Result<Outcome>> {
        let start = Instant::now();
        let deadline = start + self.options.lock_timeout;
        let slots: Vec<Arc<Slot>> = jobs.iter().map(|_| Slot::new()).collect();
        let mut unqueued = jobs.into_iter().zip(slots.iter().cloned()).peekable();
        let mut q = lock(&self.queue);
        loop {
            while q.pending.len() < QUEUE_MAX {
                let Some((job, slot)) = unqueued.next() else {
                    break;
                };
                q.pending.push_back(Pending { job, slot });
            }
            let waiting_on = slots.iter().find(|s| !s.is_done()).cloned();
            let Some(slot) = waiting_on else {
                if unqueued.peek().is_none() {
                    break;
                }
                // Every queued job is done but the queue had no room for
                // the rest: wait for room.
                q = self.wait_for_room(q, deadline);
                if Instant::now() >= deadline {
                    for (_, slot) in unqueued.by_ref() {
                        slot.set(SlotState::Done(Err(self.timeout(start))));
                    }
                }
                continue;
            };
            if !q.leader && !q.pending.is_empty() {
                q.leader = true;
                let batch = self.take_batch(&mut q);
                drop(q);
                self.queue_cv.notify_all();
                self.run_batch(batch);
                q = lock(&self.queue);
                q.leader = false;
                Self::hand_off(&q);
                continue;
            }
            drop(q);
            let now = Instant::now();
            let timed_out = now >= deadline;
            if !timed_out {
                let mut state = lock(&slot.state);
                while matches!(*state, SlotState::Waiting) && Instant::now() < deadline {
                    let left = deadline.saturating_duration_since(Instant::now());
                    state = slot
                        .cv
                        .wait_timeout(state, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                if matches!(*state, SlotState::Lead) {
                    *state = SlotState::Waiting;
                }
            }
            q = lock(&self.queue);
            if timed_out {
                // What is still queued is withdrawn; what a leader took is
                // being decided: wait for it.
                let mine = |p: &Pending| slots.iter().any(|s| Arc::ptr_eq(s, &p.slot));
                let (withdrawn, kept): (VecDeque<Pending>, VecDeque<Pending>) =
                    std::mem::take(&mut q.pending).into_iter().partition(mine);
                q.pending = kept;
                for p in withdrawn {
                    p.slot.set(SlotState::Done(Err(self.timeout(start))));
                }
                for (_, slot) in unqueued.by_ref() {
                    slot.set(SlotState::Done(Err(self.timeout(start))));
                }
                Self::hand_off(&q);
                self.queue_cv.notify_all();
                if slots.iter().all(|s| s.is_done()) {
                    break;
                }
                drop(q);
                let mut state = lock(&slot.state);
                while !matches!(*state, SlotState::Done(_)) {
                    state = slot.cv.wait(state).unwrap_or_else(PoisonError::into_inner);
                }
                drop(state);
                q = lock(&self.queue);
            }
        }
        drop(q);
        slots
            .iter()
            .map(
                |s| match std::mem::replace(&mut *lock(&s.state), SlotState::Waiting) {
                    SlotState::Done(outcome) => outcome,
                    _ => Err(Error::Internal("a job lost its outcome".into())),
                },
            )
            .collect()
    }

    /// With no leader in place, tells the submitter of the job at the
    /// queue's front to lead. Queue lock held.
    fn hand_off(q: &QueueState) {
        if !q.leader
            && let Some(front) = q.pending.front()
        {
            front.slot.set(SlotState::Lead);
        }
    }

    /// Waits until the queue has room or the deadline passes.
    fn wait_for_room<'a>(
        &self,
        q: MutexGuard<'a, QueueState>,
        deadline: Instant,
    ) -> MutexGuard<'a, QueueState> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return q;
        }
        self.queue_cv
            .wait_timeout_while(q, left, |q| q.pending.len() >= QUEUE_MAX)
            .unwrap_or_else(PoisonError::into_inner)
            .0
    }

    fn timeout(&self, start: Instant) -> Error {
        Error::LockTimeout {
            waited: start.elapsed(),
            holder: self.dir.shm.holder(),
        }
    }

    /// The jobs the next batch runs: up to `max_batch` commits and updates
    /// (any size: the append splits them into frames by the commit limit),
    /// or one compaction alone.
    fn take_batch(&self, q: &mut QueueState) -> Vec<Pending> {
        let mut batch = Vec::new();
        let max = match self.options.sync {
            SyncMode::Batch => self.options.max_batch.max(1),
            SyncMode::Always | SyncMode::Never => 1,
        };
        while let Some(front) = q.pending.front() {
            let compact = matches!(front.job, Job::Compact);
            if !batch.is_empty() && (compact || batch.len() >= max) {
                break;
            }
            if let Some(p) = q.pending.pop_front() {
                batch.push(p);
            }
            if compact {
                break;
            }
        }
        batch
    }

    fn run_batch(&self, batch: Vec<Pending>) {
        let (jobs, slots): (Vec<Job>, Vec<Arc<Slot>>) =
            batch.into_iter().map(|p| (p.job, p.slot)).unzip();
        let count = jobs.len();
        let outcomes = match self.lock.acquire(self.options.lock_timeout, &self.dir.shm) {
            Err(e) => (0..count).map(|_| Err(e.clone())).collect(),
            Ok(guard) => {
                self.dir.shm.set_holder(
                    std::process::id(),
                    self.options.clock.now_ms(),
                    &self.host,
                );
                // Every committer of the batch must get an answer, even if
                // this code has a bug that panics: then the handle stops
                // writing, and the intent word lets the next writer clean up.
                let outcomes = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.run_locked(jobs)
                }))
                .unwrap_or_else(|_| {
                    let why = "an internal error (a panic) while committing".to_string();
                    *lock(&self.poisoned) = Some(why.clone());
                    (0..count)
                        .map(|_| Err(Error::Poisoned(why.clone())))
                        .collect()
                });
                let committed = outcomes
                    .iter()
                    .any(|o| matches!(o, Ok(Outcome::Committed(_))));
                if committed && self.auto_compact_due() {
                    // The commits are synced and published: answer them
                    // before the pause, then compact under the same lock.
                    // Committers queued meanwhile wait for the lead.
                    for (slot, outcome) in slots.iter().zip(outcomes) {
                        slot.set(SlotState::Done(outcome));
                    }
                    self.auto_compact_locked();
                    self.dir.shm.clear_holder();
                    drop(guard);
                    return;
                }
                self.dir.shm.clear_holder();
                drop(guard);
                outcomes
            }
        };
        for (slot, outcome) in slots.iter().zip(outcomes) {
            slot.set(SlotState::Done(outcome));
        }
    }

    /// True when the state just committed holds more dead bytes than the
    /// options allow and no back-off after a failure is running. O(1).
    /// Lock held.
    fn auto_compact_due(&self) -> bool {
        let Some(auto) = self.options.auto_compact else {
            return false;
        };
        let state = self.state.load();
        let live = live_bytes(state.index.keys(), state.index.bytes());
        if state.end <= auto.threshold(live) {
            return false;
        }
        let record = self.dir.shm.auto_record();
        if record.failures == 0 || record.not_before_ms == 0 {
            return true;
        }
        let now = self.options.clock.now_ms();
        // A wall clock set back must not stop compaction for long: a
        // back-off further away than the longest one is ignored.
        let longest = backoff(auto.retry_after, u64::MAX).as_millis();
        now >= record.not_before_ms
            || u128::from(record.not_before_ms - now) > longest.saturating_add(1000)
    }

    /// Compacts because the log passed its threshold. A failure is logged
    /// and retried after a back-off; it never reaches a committer. Lock held.
    fn auto_compact_locked(&self) {
        if lock(&self.poisoned).is_some() {
            return;
        }
        let Some(auto) = self.options.auto_compact else {
            return;
        };
        let started = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let state = self.prepare_locked()?;
            self.compact_locked(&state)
        }))
        .unwrap_or_else(|_| {
            Err(Error::Internal(
                "an internal error (a panic) while compacting".into(),
            ))
        });
        let took = started.elapsed();
        let took_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let shm = &self.dir.shm;
        let mut record = shm.auto_record();
        match result {
            Ok(report) => {
                self.auto_compactions.fetch_add(1, Ordering::Relaxed);
                self.auto_longest_us.fetch_max(took_us, Ordering::Relaxed);
                record.count += 1;
                record.last_us = took_us;
                record.max_us = record.max_us.max(took_us);
                let live = live_bytes(report.keys, self.state.load().index.bytes());
                if report.bytes_after > auto.threshold(live) {
                    // The live estimate is below what the checkpoint took
                    // (many full prefixes with long names and few keys):
                    // wait before compacting again instead of compacting
                    // at every commit.
                    record.failures += 1;
                    record.not_before_ms = self
                        .options
                        .clock
                        .now_ms()
                        .saturating_add(millis(backoff(auto.retry_after, record.failures)));
                    tracing::warn!(
                        bytes_after = report.bytes_after,
                        threshold = auto.threshold(live),
                        "the compacted log is still above the automatic compaction threshold; raise the slack (--compact-slack-mb)"
                    );
                } else {
                    record.failures = 0;
                    record.not_before_ms = 0;
                }
                tracing::info!(
                    generation = report.new_generation,
                    bytes_before = report.bytes_before,
                    bytes_after = report.bytes_after,
                    keys = report.keys,
                    millis = took.as_millis() as u64,
                    "compacted the log automatically"
                );
            }
            Err(e) => {
                self.auto_failures.fetch_add(1, Ordering::Relaxed);
                record.failures += 1;
                let wait = backoff(auto.retry_after, record.failures);
                record.not_before_ms = self.options.clock.now_ms().saturating_add(millis(wait));
                tracing::warn!(
                    error = %e,
                    failures = record.failures,
                    retry_in_ms = millis(wait),
                    "automatic compaction failed; the commits are safe in the current log and compaction will be retried (check free disk space)"
                );
            }
        }
        shm.set_auto_record(record);
    }

    fn run_locked(&self, jobs: Vec<Job>) -> Vec<Result<Outcome>> {
        let count = jobs.len();
        let fail_all = |e: Error| (0..count).map(|_| Err(e.clone())).collect();
        if let Some(why) = lock(&self.poisoned).clone() {
            return fail_all(Error::Poisoned(why));
        }
        let state = match self.prepare_locked() {
            Ok(s) => s,
            Err(e) => return fail_all(e),
        };
        if matches!(jobs.first(), Some(Job::Compact)) {
            return vec![self.compact_locked(&state).map(Outcome::Compacted)];
        }
        self.commit_locked(&state, jobs)
    }

    /// Brings the shared map and this process up to date. Lock held.
    fn prepare_locked(&self) -> Result<Arc<State>> {
        let shm = &self.dir.shm;
        if !shm.is_valid(self.dir.boot) || shm.intent() != Intent::None as u64 {
            self.dir.recover_locked()?;
        }
        // Past the committed end there are only zeros written ahead, or the
        // bytes of a writer that died appending, which set the intent word
        // that recovery just acted on.
        self.catch_up()
    }

    fn commit_locked(&self, state: &Arc<State>, jobs: Vec<Job>) -> Vec<Result<Outcome>> {
        let mut work = (**state).clone();
        let mut outcomes = Vec::with_capacity(jobs.len());
        let mut commits: Vec<(u64, u64, Origin, Vec<Write>)> = Vec::new();
        for job in jobs {
            // The hybrid timestamp this commit will carry: never behind an
            // earlier commit of any process on this directory.
            let next_ts = Hlc::tick(Hlc(work.last_ts), self.options.clock.now_ms()).0;
            let (writes, origin) = match job {
                Job::Commit {
                    reads,
                    writes,
                    origin,
                } => {
                    let conflicts: Vec<ConflictKey> = reads
                        .into_iter()
                        .filter(|(fp, key, seen)| work.index.get(fp, key).map(|e| e.seq) != *seen)
                        .map(|(fp, key, _)| ConflictKey {
                            full_prefix: fp,
                            key: key.to_vec(),
                        })
                        .collect();
                    if !conflicts.is_empty() {
                        outcomes.push(Err(Error::WriteConflict { keys: conflicts }));
                        continue;
                    }
                    (writes, origin)
                }
                Job::Update(f, origin) => {
                    let snapshot = Snapshot {
                        state: Arc::new(work.clone()),
                        commit_ts: Some(next_ts),
                    };
                    match run_update(f, &snapshot).and_then(|w| {
                        if !w.is_empty() {
                            check_writes(&self.options.limits, &w)?;
                        }
                        Ok(w)
                    }) {
                        Ok(w) => (w, origin),
                        Err(e) => {
                            outcomes.push(Err(e));
                            continue;
                        }
                    }
                }
                Job::Compact => {
                    outcomes.push(Err(Error::Internal(
                        "compaction queued inside a batch".into(),
                    )));
                    continue;
                }
            };
            if writes.is_empty() {
                outcomes.push(Ok(Outcome::Unchanged));
                continue;
            }
            if let Err(e) = self.refuse_unserved_writes(&work, origin, &writes) {
                outcomes.push(Err(e));
                continue;
            }
            let seq = work.last_seq + 1;
            let ts = next_ts;
            for w in &writes {
                match &w.value {
                    Some(v) => work.index.put(
                        &w.full_prefix,
                        Key::new(&w.key),
                        Entry {
                            seq,
                            value: v.clone(),
                        },
                    ),
                    None => work.index.remove(&w.full_prefix, &w.key, seq),
                }
            }
            work.last_seq = seq;
            work.last_ts = ts;
            outcomes.push(Ok(Outcome::Committed(CommitInfo {
                seq,
                ts,
                generation: work.generation,
            })));
            commits.push((seq, ts, origin, writes));
        }
        if commits.is_empty() {
            return outcomes;
        }
        if let Err(e) = self.append_locked(state, work, &commits) {
            for o in outcomes.iter_mut() {
                if matches!(o, Ok(Outcome::Committed(_))) {
                    *o = Err(e.clone());
                }
            }
        }
        outcomes
    }

    /// Refuses a local commit that puts a value under a full prefix this
    /// node does not serve, as the state it applies to says (earlier
    /// commits of the batch included). Removals and merges from peers
    /// pass (see [`crate::channels`]). Lock held.
    fn refuse_unserved_writes(&self, work: &State, origin: Origin, writes: &[Write]) -> Result<()> {
        if origin != Origin::Local {
            return Ok(());
        }
        let mut last: Option<&FullPrefix> = None;
        for w in writes.iter().filter(|w| w.value.is_some()) {
            if last == Some(&w.full_prefix) {
                continue;
            }
            self.channels
                .refuse_unserved_in(&work.index, self.dir.node_id, &w.full_prefix)?;
            last = Some(&w.full_prefix);
        }
        Ok(())
    }

    /// Appends `commits` (as few frames as the commit limit allows; each
    /// commit lies whole in one frame), syncs them once as configured, then
    /// publishes them and installs `work` as this process's state. Lock held.
    fn append_locked(
        &self,
        state: &State,
        mut work: State,
        commits: &[(u64, u64, Origin, Vec<Write>)],
    ) -> Result<()> {
        let tail = lock(&self.tail).clone();
        let end = state.end;
        let shm = &self.dir.shm;
        let limit = self.options.limits.max_commit_bytes;
        // Each frame is written as soon as it is full, so a batch never
        // holds more than one frame's encoding in memory.
        let mut buf = Vec::new();
        let mut at = end;
        let mut write_frame = |group: Vec<CommitRec<'_>>, at: &mut u64| -> Result<()> {
            buf.clear();
            format::encode_frame(&Payload::Commits(group), &mut buf)
                .map_err(Error::InvalidInput)?;
            self.make_room(*at + buf.len() as u64)
                .and_then(|()| tail.file.write_all_at(&buf, *at))
                .map_err(|e| Error::io("append to", &tail.path, e))?;
            *at += buf.len() as u64;
            Ok(())
        };
        shm.set_intent(Intent::Append);
        let mut frames = 0u64;
        let mut written = Ok(());
        let mut group: Vec<CommitRec<'_>> = Vec::new();
        let mut group_bytes = 0usize;
        for (seq, ts, origin, writes) in commits {
            let bytes = writes_bytes(writes);
            if !group.is_empty() && group_bytes + bytes > limit {
                frames += 1;
                written = write_frame(std::mem::take(&mut group), &mut at);
                if written.is_err() {
                    break;
                }
                group_bytes = 0;
            }
            group_bytes += bytes;
            group.push(CommitRec {
                seq: *seq,
                ts: *ts,
                origin: *origin,
                writes: writes
                    .iter()
                    .map(|w| WriteRec {
                        prefix: w.full_prefix.prefix(),
                        subprefix: w.full_prefix.subprefix(),
                        key: Raw(&w.key),
                        value: w.value.as_deref().map(Raw),
                    })
                    .collect(),
            });
        }
        if written.is_ok() && !group.is_empty() {
            frames += 1;
            written = write_frame(group, &mut at);
        }
        let written = written.and_then(|()| match self.options.sync {
            SyncMode::Always | SyncMode::Batch => tail
                .file
                .sync_data()
                .map_err(|e| Error::io("append to", &tail.path, e)),
            SyncMode::Never => Ok(()),
        });
        if let Err(err) = written {
            lock(&self.tail).allocated = end;
            match tail.file.set_len(end) {
                Ok(()) => shm.set_intent(Intent::None),
                Err(undo) => {
                    // The intent stays set: the next lock holder cuts the bytes.
                    *lock(&self.poisoned) =
                        Some(format!("{err}; then undoing the append failed: {undo}"));
                }
            }
            return Err(err);
        }
        work.end = at;
        self.commits
            .fetch_add(commits.len() as u64, Ordering::Relaxed);
        self.frames.fetch_add(frames, Ordering::Relaxed);
        if self.options.sync != SyncMode::Never {
            self.syncs.fetch_add(1, Ordering::Relaxed);
        }
        let _tail = lock(&self.tail);
        shm.publish_end(work.generation, work.end);
        self.install(work);
        shm.set_intent(Intent::None);
        Ok(())
    }

    /// Makes the log file at least `needed` bytes long by writing zeros
    /// ahead of the end, in steps that grow with the log, so that most
    /// commits overwrite blocks the file already has and their sync need not
    /// record a new file size. Lock held. Not for files that live in this
    /// process (a `MemFs`), where zeros ahead would only take memory.
    fn make_room(&self, needed: u64) -> std::io::Result<()> {
        let mut tail = lock(&self.tail);
        if needed <= tail.allocated || self.dir.backend.kernel().is_some() {
            return Ok(());
        }
        let actual = tail.file.len()?;
        if needed <= actual {
            tail.allocated = actual;
            return Ok(());
        }
        let step = (needed / 8).clamp(PREALLOCATE_MIN, PREALLOCATE_MAX);
        let target = (needed + step).next_multiple_of(4096);
        let zeros = vec![0u8; (target - actual).min(PREALLOCATE_MAX) as usize];
        let mut at = actual;
        while at < target {
            let n = (target - at).min(zeros.len() as u64) as usize;
            tail.file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        tail.allocated = target;
        Ok(())
    }

    fn compact_locked(&self, state: &Arc<State>) -> Result<CompactReport> {
        let shm = &self.dir.shm;
        let old = state.generation;
        let new = old + 1;
        shm.set_intent(Intent::Switch);
        let end = match self
            .dir
            .write_generation(new, &state.index, state.last_seq, state.last_ts)
        {
            Ok(end) => end,
            Err(e) => {
                shm.set_intent(Intent::None);
                return Err(e);
            }
        };
        // From here the pointer decides; if writing it fails the intent stays
        // set and the next lock holder recovers from whatever it says.
        self.dir
            .layout
            .write_current(self.dir.backend.as_ref(), new)?;
        // Open the new log before publishing it, so a failure here leaves
        // this handle consistent with what it published.
        let path = self.dir.layout.log(new);
        let file = self
            .dir
            .backend
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        let loaded = {
            let mut tail = lock(&self.tail);
            shm.set_switch(Some(Switch {
                to: new,
                from: old,
                from_end: state.end,
                checkpoint_end: end,
            }));
            shm.publish_generation(new, end);
            *tail = Tail {
                generation: new,
                path,
                file: Arc::from(file),
                allocated: end,
            };
            self.install(State {
                generation: new,
                end,
                last_seq: state.last_seq,
                last_ts: state.last_ts,
                index: state.index.clone(),
                channels: crate::channels::Mark::default(),
            })
        };
        shm.set_intent(Intent::None);
        let old_path = self.dir.layout.log(old);
        if let Err(e) = self.dir.backend.remove_file(&old_path) {
            tracing::warn!(path = %old_path.display(), error = %e, "could not remove the old log generation; the next recovery will");
        }
        Ok(CompactReport {
            old_generation: old,
            new_generation: new,
            bytes_before: state.end,
            bytes_after: loaded.end,
            keys: loaded.index.keys(),
        })
    }
}

/// An optimistic transaction: reads come from a snapshot taken at
/// [`Store::begin`]; at commit, if any key it read has changed since, it
/// fails with [`Error::WriteConflict`] naming the keys and writes nothing.
pub struct Transaction {
    store: Store,
    snapshot: Snapshot,
    reads: BTreeMap<(FullPrefix, Bytes), Option<u64>>,
    writes: BTreeMap<(FullPrefix, Bytes), Option<Bytes>>,
}

impl Transaction {
    /// Reads a key: this transaction's own write if it made one, else the
    /// snapshot's value (and the read is validated at commit).
    pub fn get(&mut self, fp: &FullPrefix, key: &[u8]) -> Option<Bytes> {
        let k = (fp.clone(), Bytes::from(key));
        if let Some(w) = self.writes.get(&k) {
            return w.clone();
        }
        let entry = self.snapshot.entry(fp, key);
        self.reads.entry(k).or_insert(entry.map(|e| e.seq));
        entry.map(|e| e.value.clone())
    }

    /// Sets a key at commit.
    pub fn put(&mut self, fp: &FullPrefix, key: &[u8], value: &[u8]) {
        self.writes
            .insert((fp.clone(), Bytes::from(key)), Some(Bytes::from(value)));
    }

    /// Removes a key at commit.
    pub fn delete(&mut self, fp: &FullPrefix, key: &[u8]) {
        self.writes.insert((fp.clone(), Bytes::from(key)), None);
    }

    /// The snapshot this transaction reads from.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Validates the reads and applies the writes atomically. A transaction
    /// that wrote nothing commits nothing and returns `Ok(None)`.
    pub fn commit(self) -> Result<Option<CommitInfo>> {
        if self.writes.is_empty() {
            return Ok(None);
        }
        let reads = self
            .reads
            .into_iter()
            .map(|((fp, k), seq)| (fp, k, seq))
            .collect();
        let writes = self
            .writes
            .into_iter()
            .map(|((full_prefix, key), value)| Write {
                full_prefix,
                key,
                value,
            })
            .collect();
        self.store
            .commit_job(reads, writes, Origin::Local)
            .map(Some)
    }
}

/// Finishes a [`Store::new_identity`] interrupted between writing the node
/// id and switching the pointer: the current generation names the old id,
/// the next one (complete, written first) the new. Lock held.
fn finish_identity_switch(layout: &Layout, backend: &dyn Backend, shm: &Shm) -> Result<()> {
    let id = layout.read_node_id(backend)?;
    let current = layout.read_current(backend)?;
    let header_of = |generation: u64| -> Result<Option<(crate::format::LogHeader, u64)>> {
        let path = layout.log(generation);
        let Ok(file) = backend.open(&path) else {
            return Ok(None);
        };
        let len = file.len().map_err(|e| Error::io("stat", &path, e))?;
        crate::log::read_header(file.as_ref(), &path).map(|h| Some((h, len)))
    };
    let Some((header, _)) = header_of(current)? else {
        return Ok(());
    };
    if header.node_id == id {
        return Ok(());
    }
    let next = current + 1;
    match header_of(next)? {
        Some((h, len)) if h.node_id == id && h.generation == next => {
            layout.write_current(backend, next)?;
            shm.reset(sys::boot_id().unwrap_or([0; 16]), next, len);
            let _ = backend.remove_file(&layout.log(current));
            Ok(())
        }
        // Not an interrupted switch: opening reports the mismatch.
        _ => Ok(()),
    }
}
