//! Small facts from the operating system: time, host, boot, randomness, mounts.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The wall clock a store reads, in milliseconds since the Unix epoch: for
/// commit timestamps, the lock holder's record, automatic compaction's
/// back-off and operation logs' grace periods. The system clock by
/// default; a simulator gives each node its own (skewed, jumping). Commit
/// timestamps never go back whatever it says ([`chorus_core::object::Hlc`]).
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Clock(Arc::new(now_ms))
    }

    /// A clock that reads `now` (Unix milliseconds).
    pub fn new(now: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Clock(Arc::new(now))
    }

    /// Milliseconds since the Unix epoch, by this clock.
    pub fn now_ms(&self) -> u64 {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock(..)")
    }
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// This machine's host name, or "unknown".
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// 16 bytes that change at every boot, so the shared map can tell whether
/// what it holds was written since the machine last started. `None` where the
/// system does not tell; then every open recovers under the lock.
pub(crate) fn boot_id() -> Option<[u8; 16]> {
    let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let hex: String = text.trim().chars().filter(|c| *c != '-').collect();
    chorus_core::NodeId::parse_hex(&hex).map(|id| *id.as_bytes())
}

/// Random bytes from the kernel.
pub(crate) fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}

/// Filesystem types whose locks or shared memory cannot be trusted.
fn is_network_fs(fstype: &str) -> bool {
    const NETWORK: &[&str] = &[
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "ncpfs",
        "afs",
        "9p",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "ocfs2",
        "gfs2",
        "davfs",
        "sshfs",
        "virtiofs",
    ];
    NETWORK.contains(&fstype)
        || fstype == "fuse"
        || fstype.starts_with("fuse.")
        || fstype == "fuseblk"
}

/// The type of the filesystem holding `path` (canonical), from a mount table
/// in `/proc/self/mountinfo` form.
pub(crate) fn fstype_in(mountinfo: &str, path: &Path) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = left.split(' ').nth(4) else {
            continue;
        };
        let Some(fstype) = right.split(' ').next() else {
            continue;
        };
        let mount_point = unescape_mount(mount_point);
        if path.starts_with(&mount_point) {
            let depth = mount_point.len();
            if best.as_ref().is_none_or(|(d, _)| depth >= *d) {
                best = Some((depth, fstype.to_string()));
            }
        }
    }
    best.map(|(_, t)| t)
}

fn unescape_mount(s: &str) -> String {
    // The kernel writes space, tab, newline and backslash as octal escapes.
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let oct: String = chars.clone().take(3).collect();
            if oct.len() == 3
                && let Ok(v) = u8::from_str_radix(&oct, 8)
            {
                out.push(char::from(v));
                for _ in 0..3 {
                    chars.next();
                }
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// The network filesystem type holding `dir`, if it is on one.
pub(crate) fn network_fs(dir: &Path) -> Option<String> {
    let canonical = dir.canonicalize().ok()?;
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    fstype_in(&table, &canonical).filter(|t| is_network_fs(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:35 / /mnt/share rw,relatime shared:20 - nfs4 srv:/export rw,vers=4.2
41 40 0:36 / /mnt/share/local\\040disk rw shared:21 - ext4 /dev/vdb rw
42 22 0:37 / /home/u/remote rw,nosuid - fuse.sshfs u@h:/ rw
";

    #[test]
    fn finds_the_deepest_mount() {
        assert_eq!(
            fstype_in(TABLE, Path::new("/work/data")).as_deref(),
            Some("ext4")
        );
        assert_eq!(
            fstype_in(TABLE, Path::new("/mnt/share/x")).as_deref(),
            Some("nfs4")
        );
        assert_eq!(
            fstype_in(TABLE, Path::new("/mnt/share/local disk/x")).as_deref(),
            Some("ext4")
        );
        assert_eq!(
            fstype_in(TABLE, Path::new("/home/u/remote/d")).as_deref(),
            Some("fuse.sshfs")
        );
    }

    #[test]
    fn classifies_network_types() {
        for t in ["nfs", "nfs4", "cifs", "fuse.sshfs", "fuse", "9p"] {
            assert!(is_network_fs(t), "{t}");
        }
        for t in ["ext4", "xfs", "btrfs", "tmpfs", "overlay", "zfs"] {
            assert!(!is_network_fs(t), "{t}");
        }
    }

    #[test]
    fn boot_id_is_stable_within_a_boot() {
        assert_eq!(boot_id(), boot_id());
    }
}
