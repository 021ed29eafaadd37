//! An in-memory file system, [`MemFs`], for running many whole stores in
//! one process (the simulator): nothing touches the disk, crashes are
//! explicit and deterministic.
//!
//! The model, as simple as is still honest:
//!
//! - **File contents.** Each file has its current bytes and, implicitly,
//!   its durable bytes: what it held at its last `sync_data`. Every change
//!   since then is remembered (what it overwrote), oldest first. A crash
//!   without a seed undoes them all. With a seed, the changes land in
//!   order: a pseudo-random number of them survive whole and the next one
//!   survives as a prefix of its bytes (a torn write); a truncation lands
//!   whole or not at all. At most [`UNSYNCED_CHANGES_MAX`] changes (and
//!   [`UNSYNCED_BYTES_MAX`] overwritten bytes) are remembered per file: older
//!   ones become durable, as the kernel writes dirty pages back by itself.
//! - **Directory entries.** Creating, renaming and removing a file change
//!   what the running system sees at once; they become durable at the next
//!   `sync_dir` of their directory. A crash without a seed forgets every
//!   unsynced one; with a seed, each directory keeps a pseudo-random prefix
//!   of its unsynced operations (they are journaled in order). A rename
//!   stays within one directory (the engine renames nothing else).
//!   Directories themselves are durable as soon as they are created.
//! - **Open files** stay usable after their name is removed or replaced,
//!   as on Unix. After a crash, files opened before it fail every call:
//!   drop the stores on a `MemFs` before crashing it, then open them again.
//! - **Kernel objects.** The writer lock and the shared map of a data
//!   directory, which the engine takes from the OS for a directory on disk,
//!   live in this process for a `MemFs` ([`Kernel`]), shared by every store
//!   handle opened on it (clones included), as by processes on one machine.
//!   A crash is a reboot: the maps are forgotten and the boot id changes, so
//!   the next open recovers from the files (scanning the log, cutting a torn
//!   tail).
//!
//! Permissions are not modelled.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::backend::{Backend, LogFile};
use crate::shm::Page;

/// Most unsynced changes remembered per file; older ones become durable.
pub const UNSYNCED_CHANGES_MAX: usize = 4096;
/// Most overwritten bytes remembered per file; older changes become durable.
pub const UNSYNCED_BYTES_MAX: usize = 16 << 20;
/// Most unsynced operations remembered per directory; older ones become
/// durable.
pub const UNSYNCED_DIR_OPS_MAX: usize = 4096;

/// An in-memory file system implementing [`Backend`]. Clones share the same
/// files; [`MemFs::copy`] makes an independent one. See the module
/// documentation for the durability model.
#[derive(Clone, Default)]
pub struct MemFs {
    fs: Arc<Fs>,
}

impl std::fmt::Debug for MemFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.fs.state();
        f.debug_struct("MemFs")
            .field("files", &st.names.len())
            .field("crashes", &self.fs.epoch.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Fs {
    state: Mutex<FsState>,
    /// Crashes so far; a file opened in an earlier epoch is dead.
    epoch: AtomicU64,
    kernel: Kernel,
}

impl Fs {
    fn state(&self) -> MutexGuard<'_, FsState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Default)]
struct FsState {
    dirs: BTreeSet<PathBuf>,
    /// The entries the running system sees.
    names: BTreeMap<PathBuf, Arc<Inode>>,
    /// The entries a crash comes back to.
    durable: BTreeMap<PathBuf, Arc<Inode>>,
    /// Per directory, the operations not yet synced, oldest first.
    pending: BTreeMap<PathBuf, VecDeque<DirOp>>,
}

enum DirOp {
    Link(PathBuf, Arc<Inode>),
    Unlink(PathBuf),
    Rename(PathBuf, PathBuf),
}

impl DirOp {
    fn apply(self, names: &mut BTreeMap<PathBuf, Arc<Inode>>) {
        match self {
            DirOp::Link(path, inode) => {
                names.insert(path, inode);
            }
            DirOp::Unlink(path) => {
                names.remove(&path);
            }
            DirOp::Rename(from, to) => {
                if let Some(inode) = names.remove(&from) {
                    names.insert(to, inode);
                }
            }
        }
    }
}

impl FsState {
    fn dir_exists(&self, dir: &Path) -> bool {
        dir.as_os_str().is_empty() || self.dirs.contains(dir)
    }

    /// The directory `path` is in, which must exist.
    fn parent_of(&self, path: &Path) -> io::Result<PathBuf> {
        let parent = path.parent().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} names no file", path.display()),
            )
        })?;
        if !self.dir_exists(parent) {
            return Err(not_found(parent));
        }
        Ok(parent.to_path_buf())
    }

    fn journal(&mut self, dir: PathBuf, op: DirOp) {
        let ops = self.pending.entry(dir).or_default();
        ops.push_back(op);
        if ops.len() > UNSYNCED_DIR_OPS_MAX
            && let Some(oldest) = ops.pop_front()
        {
            oldest.apply(&mut self.durable);
        }
    }

    fn inode(&self, path: &Path) -> io::Result<Arc<Inode>> {
        self.names.get(path).cloned().ok_or_else(|| not_found(path))
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file or directory (in memory)", path.display()),
    )
}

/// One file's contents.
#[derive(Default)]
struct Inode(Mutex<FileData>);

impl Inode {
    fn data(&self) -> MutexGuard<'_, FileData> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Default)]
struct FileData {
    bytes: Vec<u8>,
    /// Changes since the last sync, oldest first.
    unsynced: VecDeque<Change>,
    /// Bytes the changes in `unsynced` overwrote.
    unsynced_bytes: usize,
}

/// What one change did, enough to undo it whole or in part.
struct Change {
    /// The file's length before.
    len: u64,
    /// Where it started.
    at: u64,
    /// Bytes written (0 for a truncation or extension).
    wrote: u64,
    /// The bytes at `at..` it replaced, within the old length.
    old: Vec<u8>,
}

fn to_usize(n: u64) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "offset beyond what memory can hold",
        )
    })
}

impl FileData {
    fn record(&mut self, change: Change) {
        self.unsynced_bytes += change.old.len();
        self.unsynced.push_back(change);
        while self.unsynced.len() > UNSYNCED_CHANGES_MAX || self.unsynced_bytes > UNSYNCED_BYTES_MAX
        {
            match self.unsynced.pop_front() {
                Some(oldest) => self.unsynced_bytes -= oldest.old.len(),
                None => break,
            }
        }
    }

    fn write_at(&mut self, buf: &[u8], at: u64) -> io::Result<()> {
        let start = to_usize(at)?;
        let end = start
            .checked_add(buf.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "write past the end"))?;
        let len = self.bytes.len();
        let old = self.bytes[start.min(len)..end.min(len)].to_vec();
        self.record(Change {
            len: len as u64,
            at,
            wrote: buf.len() as u64,
            old,
        });
        if self.bytes.len() < end {
            self.bytes.resize(end, 0);
        }
        self.bytes[start..end].copy_from_slice(buf);
        Ok(())
    }

    fn set_len(&mut self, new: u64) -> io::Result<()> {
        let new_len = to_usize(new)?;
        let len = self.bytes.len();
        let old = self.bytes[new_len.min(len)..].to_vec();
        self.record(Change {
            len: len as u64,
            at: new.min(len as u64),
            wrote: 0,
            old,
        });
        self.bytes.resize(new_len, 0);
        Ok(())
    }

    fn sync(&mut self) {
        self.unsynced.clear();
        self.unsynced_bytes = 0;
    }

    /// Undoes `change` except its first `keep` written bytes (the state just
    /// after it must be the current one).
    fn undo(&mut self, change: &Change, keep: u64) {
        let len = change.len as usize;
        let at = change.at as usize;
        let keep = keep.min(change.wrote) as usize;
        let new_len = if keep > 0 { len.max(at + keep) } else { len };
        self.bytes.resize(new_len.max(at + change.old.len()), 0);
        if change.old.len() > keep {
            self.bytes[at + keep..at + change.old.len()].copy_from_slice(&change.old[keep..]);
        }
        self.bytes.truncate(new_len);
    }

    /// Goes back to the durable contents, or (with `rng`) to them plus a
    /// prefix of the unsynced changes, the last of them possibly torn.
    fn crash(&mut self, rng: Option<&mut Rng>) {
        let changes = std::mem::take(&mut self.unsynced);
        self.unsynced_bytes = 0;
        let (whole, part) = match rng {
            None => (0, 0),
            Some(rng) => {
                let whole = rng.below(changes.len() as u64 + 1) as usize;
                let part = changes
                    .get(whole)
                    .map_or(0, |c| rng.below(c.wrote.saturating_add(1)));
                (whole, part)
            }
        };
        for (i, change) in changes.iter().enumerate().rev() {
            if i < whole {
                break;
            }
            self.undo(change, if i == whole { part } else { 0 });
        }
    }
}

/// splitmix64: a small deterministic generator for torn crashes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

struct MemFile {
    inode: Arc<Inode>,
    fs: Arc<Fs>,
    epoch: u64,
}

impl MemFile {
    fn data(&self) -> io::Result<MutexGuard<'_, FileData>> {
        let data = self.inode.data();
        if self.fs.epoch.load(Ordering::Acquire) != self.epoch {
            return Err(io::Error::other(
                "the in-memory file system crashed since this file was opened: open it again",
            ));
        }
        Ok(data)
    }
}

impl LogFile for MemFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.data()?.bytes.len() as u64)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let data = self.data()?;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.bytes.len());
        let n = buf.len().min(data.bytes.len() - start);
        buf[..n].copy_from_slice(&data.bytes[start..start + n]);
        Ok(n)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.data()?.write_at(buf, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.data()?.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.data()?.sync();
        Ok(())
    }
}

impl MemFs {
    /// An empty file system.
    pub fn new() -> Self {
        MemFs::default()
    }

    fn handle(&self, inode: Arc<Inode>) -> Box<dyn LogFile> {
        Box::new(MemFile {
            inode,
            fs: self.fs.clone(),
            epoch: self.fs.epoch.load(Ordering::Acquire),
        })
    }

    /// Crashes the machine: every file goes back to its durable contents and
    /// every directory to its durable entries. With `torn` (a seed), a
    /// pseudo-random prefix of each file's unsynced changes survives, the
    /// last one possibly cut short, and a prefix of each directory's
    /// unsynced operations; the same seed on the same history gives the same
    /// result. Files opened before fail from now on; the shared maps are
    /// forgotten and the boot id changes (a reboot).
    pub fn crash(&self, torn: Option<u64>) {
        let mut st = self.fs.state();
        self.fs.epoch.fetch_add(1, Ordering::AcqRel);
        let mut rng = torn.map(Rng);
        let pending = std::mem::take(&mut st.pending);
        for (_, ops) in pending {
            let keep = rng.as_mut().map_or(0, |r| r.below(ops.len() as u64 + 1));
            for op in ops.into_iter().take(keep as usize) {
                op.apply(&mut st.durable);
            }
        }
        st.names = st.durable.clone();
        let mut seen = BTreeSet::new();
        for inode in st.names.values() {
            if seen.insert(Arc::as_ptr(inode) as usize) {
                inode.data().crash(rng.as_mut());
            }
        }
        drop(st);
        self.fs.kernel.reboot();
    }

    /// A deep copy of every file and directory as they are now (all of it
    /// durable in the copy, as a copied and synced directory is), with its
    /// own kernel objects: nothing is shared with `self` afterwards.
    pub fn copy(&self) -> MemFs {
        let st = self.fs.state();
        let mut copies: BTreeMap<usize, Arc<Inode>> = BTreeMap::new();
        let mut names = BTreeMap::new();
        for (path, inode) in &st.names {
            let copy = copies
                .entry(Arc::as_ptr(inode) as usize)
                .or_insert_with(|| {
                    Arc::new(Inode(Mutex::new(FileData {
                        bytes: inode.data().bytes.clone(),
                        ..FileData::default()
                    })))
                })
                .clone();
            names.insert(path.clone(), copy);
        }
        let state = FsState {
            dirs: st.dirs.clone(),
            durable: names.clone(),
            names,
            pending: BTreeMap::new(),
        };
        MemFs {
            fs: Arc::new(Fs {
                state: Mutex::new(state),
                ..Fs::default()
            }),
        }
    }

    /// Bytes of the files' current contents (each file counted once).
    pub fn bytes_used(&self) -> u64 {
        let st = self.fs.state();
        let mut seen = BTreeSet::new();
        let mut total = 0u64;
        for inode in st.names.values() {
            if seen.insert(Arc::as_ptr(inode) as usize) {
                total += inode.data().bytes.len() as u64;
            }
        }
        total
    }

    /// True when `path` names a file or a directory now.
    pub fn exists(&self, path: &Path) -> bool {
        let st = self.fs.state();
        st.names.contains_key(path) || st.dirs.contains(path)
    }
}

impl Backend for MemFs {
    fn open(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        let inode = self.fs.state().inode(path)?;
        Ok(self.handle(inode))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        let mut st = self.fs.state();
        if let Some(inode) = st.names.get(path).cloned() {
            drop(st);
            inode.data().set_len(0)?;
            return Ok(self.handle(inode));
        }
        let parent = st.parent_of(path)?;
        let inode = Arc::new(Inode::default());
        st.names.insert(path.to_path_buf(), inode.clone());
        st.journal(parent, DirOp::Link(path.to_path_buf(), inode.clone()));
        drop(st);
        Ok(self.handle(inode))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.fs.state();
        let inode = st.inode(from)?;
        let parent = st.parent_of(from)?;
        if to.parent() != Some(parent.as_path()) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "the in-memory file system renames within one directory only: {} to {}",
                    from.display(),
                    to.display()
                ),
            ));
        }
        st.names.remove(from);
        st.names.insert(to.to_path_buf(), inode);
        st.journal(parent, DirOp::Rename(from.to_path_buf(), to.to_path_buf()));
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.fs.state();
        st.inode(path)?;
        let parent = st.parent_of(path)?;
        st.names.remove(path);
        st.journal(parent, DirOp::Unlink(path.to_path_buf()));
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.fs.state();
        if !st.dir_exists(dir) {
            return Err(not_found(dir));
        }
        if let Some(ops) = st.pending.remove(dir) {
            for op in ops {
                op.apply(&mut st.durable);
            }
        }
        Ok(())
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.fs.state();
        for d in dir.ancestors() {
            if d.as_os_str().is_empty() {
                continue;
            }
            if st.names.contains_key(d) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} is a file, not a directory", d.display()),
                ));
            }
            st.dirs.insert(d.to_path_buf());
        }
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.fs.state();
        if !st.dir_exists(dir) {
            return Err(not_found(dir));
        }
        let children = |paths: &mut dyn Iterator<Item = &PathBuf>| -> Vec<String> {
            paths
                .skip_while(|p| p.as_path() == dir)
                .take_while(|p| p.starts_with(dir))
                .filter(|p| p.parent() == Some(dir))
                .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
                .collect()
        };
        let mut names = children(&mut st.names.range(dir.to_path_buf()..).map(|(p, _)| p));
        names.extend(children(&mut st.dirs.range(dir.to_path_buf()..)));
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn kernel(&self) -> Option<Kernel> {
        Some(self.fs.kernel.clone())
    }

    /// No devices or inodes here: the check for a copied directory is
    /// skipped.
    fn place(&self, _dir: &Path) -> io::Result<Option<(u64, u64)>> {
        Ok(None)
    }
}

/// The kernel objects of data directories on a backend whose files live in
/// this process (a [`MemFs`]): each directory's writer lock and shared map,
/// kept here instead of in the OS, shared by every store handle opened on
/// the backend. Opaque: the engine uses it through [`Backend::kernel`].
#[derive(Clone, Default)]
pub struct Kernel(Arc<KernelState>);

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("boots", &self.0.boots.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct KernelState {
    /// Reboots so far.
    boots: AtomicU64,
    pages: Mutex<BTreeMap<PathBuf, Arc<Page>>>,
    locks: Mutex<BTreeMap<PathBuf, Arc<LocalLock>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Kernel {
    /// The shared page stored at `path` (made zero on first use).
    pub(crate) fn page(&self, path: &Path) -> Arc<Page> {
        lock(&self.0.pages)
            .entry(path.to_path_buf())
            .or_default()
            .clone()
    }

    /// The writer lock of the file at `path`.
    pub(crate) fn lock(&self, path: &Path) -> Arc<LocalLock> {
        lock(&self.0.locks)
            .entry(path.to_path_buf())
            .or_default()
            .clone()
    }

    /// This boot's id: it changes at every crash.
    pub(crate) fn boot_id(&self) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(b"in-memor");
        id[8..].copy_from_slice(&(self.0.boots.load(Ordering::Acquire) + 1).to_le_bytes());
        id
    }

    /// Forgets every map and lock (a holder that was writing is gone).
    fn reboot(&self) {
        lock(&self.0.pages).clear();
        lock(&self.0.locks).clear();
        self.0.boots.fetch_add(1, Ordering::AcqRel);
    }
}

/// An exclusive lock, taken by trying (the engine's lock loop waits).
#[derive(Default)]
pub(crate) struct LocalLock(AtomicBool);

impl LocalLock {
    /// Takes the lock if it is free.
    pub(crate) fn try_lock(&self) -> bool {
        self.0
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub(crate) fn unlock(&self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(fs: &MemFs, path: &str) -> Vec<u8> {
        crate::backend::read_whole(fs, Path::new(path)).expect("read")
    }

    fn setup() -> (MemFs, Box<dyn LogFile>) {
        let fs = MemFs::new();
        fs.create_dir_all(Path::new("/d")).expect("mkdir");
        let f = fs.create(Path::new("/d/f")).expect("create");
        f.write_all_at(b"durable", 0).expect("write");
        f.sync_data().expect("sync");
        fs.sync_dir(Path::new("/d")).expect("sync dir");
        (fs, f)
    }

    #[test]
    fn a_crash_keeps_what_was_synced_only() {
        let (fs, f) = setup();
        f.write_all_at(b"DUR", 0).expect("overwrite");
        f.write_all_at(b"+tail", 7).expect("append");
        assert_eq!(read(&fs, "/d/f"), b"DURable+tail");
        let g = fs.create(Path::new("/d/unsynced")).expect("create");
        g.write_all_at(b"x", 0).expect("write");
        g.sync_data().expect("sync");
        fs.crash(None);
        assert_eq!(read(&fs, "/d/f"), b"durable");
        assert!(
            !fs.exists(Path::new("/d/unsynced")),
            "its entry was not synced"
        );
        assert!(f.len().is_err(), "files opened before a crash are dead");
        assert_eq!(fs.list_dir(Path::new("/d")).expect("list"), vec!["f"]);
    }

    #[test]
    fn a_truncation_is_undone_by_a_crash() {
        let (fs, f) = setup();
        f.set_len(3).expect("truncate");
        f.write_all_at(b"12345678", 2).expect("write");
        fs.crash(None);
        assert_eq!(read(&fs, "/d/f"), b"durable");
    }

    #[test]
    fn a_torn_crash_keeps_a_prefix_of_the_unsynced_writes() {
        let mut seen = BTreeSet::new();
        for seed in 0..200 {
            let (fs, f) = setup();
            f.write_all_at(b"-one", 7).expect("write");
            f.write_all_at(b"-two", 11).expect("write");
            fs.crash(Some(seed));
            let after = read(&fs, "/d/f");
            let full = b"durable-one-two";
            assert!(
                after.len() >= 7 && full.starts_with(&after),
                "seed {seed}: {after:?}"
            );
            seen.insert(after.len());
            let (again, g) = setup();
            g.write_all_at(b"-one", 7).expect("write");
            g.write_all_at(b"-two", 11).expect("write");
            again.crash(Some(seed));
            assert_eq!(read(&again, "/d/f"), after, "seed {seed} is deterministic");
        }
        assert_eq!(seen.len(), 9, "every prefix length shows up: {seen:?}");
    }

    #[test]
    fn directory_operations_are_durable_at_sync_dir() {
        let (fs, _f) = setup();
        let tmp = fs.create(Path::new("/d/g.tmp")).expect("create");
        tmp.write_all_at(b"new", 0).expect("write");
        tmp.sync_data().expect("sync");
        fs.rename(Path::new("/d/g.tmp"), Path::new("/d/g"))
            .expect("rename");
        fs.remove_file(Path::new("/d/f")).expect("remove");
        fs.crash(None);
        assert_eq!(fs.list_dir(Path::new("/d")).expect("list"), vec!["f"]);
        let tmp = fs.create(Path::new("/d/g.tmp")).expect("create");
        tmp.write_all_at(b"new", 0).expect("write");
        tmp.sync_data().expect("sync");
        fs.rename(Path::new("/d/g.tmp"), Path::new("/d/g"))
            .expect("rename");
        fs.sync_dir(Path::new("/d")).expect("sync dir");
        fs.crash(None);
        assert_eq!(fs.list_dir(Path::new("/d")).expect("list"), vec!["f", "g"]);
        assert_eq!(read(&fs, "/d/g"), b"new");
    }

    #[test]
    fn a_torn_crash_keeps_a_prefix_of_a_directorys_operations() {
        let mut outcomes = BTreeSet::new();
        for seed in 0..50 {
            let (fs, _f) = setup();
            for name in ["a", "b", "c"] {
                let f = fs.create(&Path::new("/d").join(name)).expect("create");
                f.sync_data().expect("sync");
            }
            fs.crash(Some(seed));
            let names = fs.list_dir(Path::new("/d")).expect("list");
            let kept = names.len() - 1;
            assert_eq!(names[..kept], ["a", "b", "c"][..kept], "in order");
            outcomes.insert(kept);
        }
        assert_eq!(outcomes.len(), 4, "{outcomes:?}");
    }

    #[test]
    fn clones_share_and_copies_do_not() {
        let (fs, f) = setup();
        let clone = fs.clone();
        f.write_all_at(b"!", 7).expect("write");
        assert_eq!(read(&clone, "/d/f"), b"durable!");
        let copy = fs.copy();
        f.write_all_at(b"?", 8).expect("write");
        assert_eq!(read(&copy, "/d/f"), b"durable!");
        copy.crash(None);
        assert_eq!(read(&copy, "/d/f"), b"durable!", "a copy is durable");
        assert_eq!(read(&fs, "/d/f"), b"durable!?");
        assert_eq!(fs.bytes_used(), 9);
    }

    #[test]
    fn missing_files_and_directories_are_not_found() {
        let fs = MemFs::new();
        let kind = |r: io::Result<Box<dyn LogFile>>| r.err().map(|e| e.kind());
        assert_eq!(
            kind(fs.open(Path::new("/x/f"))),
            Some(io::ErrorKind::NotFound)
        );
        assert_eq!(
            kind(fs.create(Path::new("/x/f"))),
            Some(io::ErrorKind::NotFound)
        );
        assert_eq!(
            fs.list_dir(Path::new("/x")).map_err(|e| e.kind()),
            Err(io::ErrorKind::NotFound)
        );
    }

    #[test]
    fn unsynced_changes_are_bounded() {
        let (fs, f) = setup();
        for i in 0..(UNSYNCED_CHANGES_MAX as u64 + 10) {
            f.write_all_at(b"z", 7 + i).expect("write");
        }
        fs.crash(None);
        // The oldest ten were written back as the kernel would have.
        assert_eq!(read(&fs, "/d/f"), b"durablezzzzzzzzzz");
    }
}
