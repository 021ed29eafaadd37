//! Who may read a data directory: its owner only. The directory is made
//! 0700 and every file in it 0600 by the engine itself (whatever the
//! umask), and a directory left readable by an older version is tightened
//! when its owner opens it.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use chorus_core::FullPrefix;
use chorus_store::{Options, Store};

fn fp(s: &str) -> FullPrefix {
    FullPrefix::parse(s).expect("valid full prefix")
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .expect("stat")
        .permissions()
        .mode()
        & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Every entry of `dir` with a mode other than 0700 (directories) or 0600
/// (files), with the mode found; `dir` itself included.
fn loose(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    if mode(dir) != 0o700 {
        found.push(format!("{} {:o}", dir.display(), mode(dir)));
    }
    for entry in std::fs::read_dir(dir).expect("list") {
        let path = entry.expect("entry").path();
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        if mode(&path) != want {
            found.push(format!("{} {:o}", path.display(), mode(&path)));
        }
    }
    found
}

fn create(dir: &Path) -> Store {
    Store::open(
        dir,
        Options {
            create: true,
            ..Options::default()
        },
    )
    .expect("open")
}

#[test]
fn a_new_directory_and_every_file_in_it_are_private_to_the_owner() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Two levels that do not exist yet: both are made 0700.
    let dir = tmp.path().join("new").join("node");
    let s = create(&dir);
    s.put(&fp("app/cfg"), b"k", b"v").expect("put");
    // A compaction writes a new generation through a temporary file and
    // replaces the pointer by rename.
    s.compact().expect("compact");
    s.put(&fp("app/cfg"), b"k2", b"v").expect("put");
    assert_eq!(loose(&dir), Vec::<String>::new());
    assert_eq!(mode(&tmp.path().join("new")), 0o700);
    let names: Vec<String> = std::fs::read_dir(&dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    for name in ["node-id", "current", "lock", "shm"] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }
}

#[test]
fn init_alone_makes_the_directory_private() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("node");
    Store::init(&dir, &Options::default()).expect("init");
    assert_eq!(loose(&dir), Vec::<String>::new());
}

#[test]
fn a_directory_written_with_the_old_modes_is_tightened_when_its_owner_opens_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("node");
    let s = create(&dir);
    s.put(&fp("app/cfg"), b"k", b"v").expect("put");
    drop(s);
    // What the previous version left: 0755 and 0644 (with a umask of 022),
    // and a file another program put there.
    std::fs::write(dir.join("audit.log"), "{}\n").expect("write");
    chmod(&dir, 0o755);
    for entry in std::fs::read_dir(&dir).expect("list") {
        chmod(&entry.expect("entry").path(), 0o644);
    }
    assert!(!loose(&dir).is_empty());
    let s = Store::open(&dir, Options::default()).expect("reopen");
    assert_eq!(loose(&dir), Vec::<String>::new());
    let value = s.get(&fp("app/cfg"), b"k").expect("get");
    assert_eq!(value.as_deref(), Some(&b"v"[..]));
}

#[test]
fn a_leftover_temporary_file_with_loose_modes_does_not_make_a_loose_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("node");
    let s = create(&dir);
    s.put(&fp("app/cfg"), b"k", b"v").expect("put");
    // A crash of an older version between writing and renaming left
    // `current.tmp`, readable by all; the next pointer write reuses it.
    let stale = dir.join("current.tmp");
    std::fs::write(&stale, "junk").expect("write");
    chmod(&stale, 0o644);
    s.compact().expect("compact");
    assert_eq!(mode(&dir.join("current")), 0o600);
    assert_eq!(loose(&dir), Vec::<String>::new());
}
