//! All file access of the engine goes through [`Backend`] and [`LogFile`], so
//! tests can put a fault-injecting implementation ([`crate::fault`]) in place
//! of the real one.
//!
//! Two things are not files: the writer lock (`flock` on `lock`) and the
//! shared memory map (`shm`). On the real file system they are kernel
//! objects, taken from the OS (their failure modes, a dead holder or a stale
//! map, are tested with real processes). A backend whose files live in this
//! process ([`crate::MemFs`]) says so with [`Backend::kernel`], and the
//! engine takes both from it instead: nothing then touches the disk.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, FileExt, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use crate::mem::Kernel;
use crate::modes::{DIR_MODE, FILE_MODE};

/// An open file with positional IO: the log files and the small metadata files.
#[allow(
    clippy::len_without_is_empty,
    reason = "a file's length is an IO result; no caller asks whether it is empty"
)]
pub trait LogFile: Send + Sync {
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read
    /// (0 at end of file).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`, or fails (possibly after writing a part).
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Truncates or extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes written data durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
}

/// The file system as the engine sees it.
pub trait Backend: Send + Sync + 'static {
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Box<dyn LogFile>>;
    /// Creates a file (truncating any existing one) for reading and writing,
    /// readable and writable by its owner only (mode 0600), even when an
    /// existing file had a looser mode.
    fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>>;
    /// Atomically renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Creates a directory and its parents; the ones it creates are
    /// private to their owner (mode 0700).
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names of the entries of a directory.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// For a backend whose files live in this process: where the writer
    /// lock and the shared map of its directories live, and its boot id.
    /// `None` (the default): the files are on the real file system, and so
    /// are the lock and the map (an OS lock, a shared memory mapping).
    fn kernel(&self) -> Option<Kernel> {
        None
    }
    /// The device and inode of directory `dir`: where it lives, so that
    /// opening it can tell a copy (`cp -a`, `rsync`, a restored backup, a
    /// move to another file system) from the directory itself. `None` when
    /// the backend has no such notion (files in this process: the check is
    /// skipped). The default asks the real file system unless
    /// [`Backend::kernel`] says the files live in this process.
    fn place(&self, dir: &Path) -> io::Result<Option<(u64, u64)>> {
        if self.kernel().is_some() {
            return Ok(None);
        }
        use std::os::unix::fs::MetadataExt as _;
        let meta = fs::metadata(dir)?;
        Ok(Some((meta.dev(), meta.ino())))
    }
}

/// Reads a whole file through a backend (for the small metadata files).
pub(crate) fn read_whole(backend: &dyn Backend, path: &Path) -> io::Result<Vec<u8>> {
    let file = backend.open(path)?;
    let len = usize::try_from(file.len()?).map_err(|_| io::Error::other("file too large"))?;
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = file.read_at(&mut buf[done..], done as u64)?;
        if n == 0 {
            buf.truncate(done);
            break;
        }
        done += n;
    }
    Ok(buf)
}

/// Replaces a small file atomically: write a temporary file, sync it, rename
/// it over the target, sync the directory.
pub(crate) fn write_atomic(backend: &dyn Backend, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = tmp_path(path);
    let file = backend.create(&tmp)?;
    file.write_all_at(bytes, 0)?;
    file.sync_data()?;
    drop(file);
    backend.rename(&tmp, path)?;
    backend.sync_dir(path.parent().unwrap_or(Path::new(".")))
}

pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// The real file system, through `std`.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdBackend;

struct StdFile(File);

impl LogFile for StdFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        loop {
            match self.0.read_at(buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
}

impl Backend for StdBackend {
    fn open(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        let f = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Box::new(StdFile(f)))
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(path)?;
        // The mode applies only to a file created now: a leftover one (a
        // temporary file an older version left) keeps its own.
        if f.metadata()?.permissions().mode() & 0o077 != 0 {
            f.set_permissions(Permissions::from_mode(FILE_MODE))?;
        }
        Ok(Box::new(StdFile(f)))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }
}
