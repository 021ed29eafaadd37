//! Who may read a data directory: its owner only. It holds password
//! hashes and the cluster key (enough to mint any token), so the engine
//! makes the directory 0700 and every file in it 0600 when it creates
//! them (passing the mode at creation: a library must not change the
//! process's umask), and tightens a directory that an older version left
//! readable by others when its owner opens it.

use std::fs::Permissions;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;

use tracing::warn;

/// The mode of the data directory (and of any directory the engine makes).
pub(crate) const DIR_MODE: u32 = 0o700;
/// The mode of every file the engine makes.
pub(crate) const FILE_MODE: u32 = 0o600;
/// Most entries of a directory looked at when tightening it: a data
/// directory holds a handful (the node id, the pointer, the lock, the
/// shared page, one or two logs, the audit logs).
const ENTRIES_MAX: usize = 4096;

/// Makes `dir` 0700 and each of its entries 0600 (files) or 0700
/// (directories) where they allow more, when this process's user owns
/// `dir`; logs one line when it changed anything. Entries are not
/// followed into (symbolic links, subdirectories' contents).
///
/// Best effort: a failure is logged, never returned, since it leaves the
/// directory no more readable than it was.
pub(crate) fn tighten(dir: &Path) {
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    let owner = meta.uid();
    if effective_uid().is_some_and(|uid| uid != owner) {
        return;
    }
    let mut changed = Vec::new();
    let mut failed = Vec::new();
    let mut fix = |path: &Path, mode: u32, want: u32| {
        if mode & 0o077 == 0 {
            return;
        }
        match std::fs::set_permissions(path, Permissions::from_mode(want)) {
            Ok(()) => changed.push(format!("{} ({:o})", file_name(path), mode & 0o777)),
            Err(e) => failed.push(format!("{}: {e}", path.display())),
        }
    };
    fix(dir, meta.mode(), DIR_MODE);
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.take(ENTRIES_MAX).flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.uid() != owner {
                continue;
            }
            if meta.is_file() {
                fix(&path, meta.mode(), FILE_MODE);
            } else if meta.is_dir() {
                fix(&path, meta.mode(), DIR_MODE);
            }
        }
    }
    if !changed.is_empty() {
        warn!(
            "made {} readable by its owner only (directories 0700, files 0600; it holds password hashes and the cluster key): {} were readable by others, as an older version left them",
            dir.display(),
            changed.join(", ")
        );
    }
    if !failed.is_empty() {
        warn!(
            "could not make {} readable by its owner only: {}; check who owns it",
            dir.display(),
            failed.join("; ")
        );
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// This process's effective user id (Linux: from `/proc/self/status`);
/// `None` where the system does not tell.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    // Real, effective, saved, filesystem.
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_uid_is_the_owner_of_what_this_process_creates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let uid = effective_uid().expect("Linux tells the effective uid");
        assert_eq!(
            uid,
            std::fs::metadata(dir.path()).expect("stat").uid(),
            "a directory this process made is owned by its effective uid"
        );
    }
}
