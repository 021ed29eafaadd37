//! Damaged logs: the last frame cut at every byte offset, and every single
//! bit flipped. Damage is always detected and never applied silently; a torn
//! tail recovers, damage in the middle refuses to open and names the offset.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use chorus_core::FullPrefix;
use chorus_store::{Error, Options, Store, check, repair};

const COMMITS: u64 = 6;

fn fp() -> FullPrefix {
    FullPrefix::parse("crash/img").expect("valid")
}

fn opts() -> Options {
    Options {
        create: true,
        ..Options::default()
    }
}

/// Builds a store of COMMITS commits; returns the log path and the offset at
/// which each frame starts (plus the committed end).
fn build(dir: &Path) -> (PathBuf, Vec<u64>) {
    let store = Store::open(dir, opts()).expect("open");
    let log = dir.join("gen-0000000001.log");
    let end = |s: &Store| s.status().expect("status").log_bytes;
    let mut offsets = vec![end(&store)];
    for i in 0..COMMITS {
        let value = format!("value {i}");
        store
            .put(&fp(), format!("k{i}").as_bytes(), value.as_bytes())
            .expect("put");
        offsets.push(end(&store));
    }
    let committed = offsets[offsets.len() - 1];
    assert!(
        std::fs::metadata(&log).expect("stat").len() > committed,
        "the log has zeros written ahead of its committed end"
    );
    (log, offsets)
}

/// What a healthy open after damage may show: the first `n` commits exactly.
fn assert_first_commits(store: &Store, n: u64, what: &str) {
    let snap = store.snapshot().expect("snapshot");
    assert_eq!(snap.len() as u64, n, "{what}");
    for i in 0..n {
        assert_eq!(
            snap.get(&fp(), format!("k{i}").as_bytes()).as_deref(),
            Some(format!("value {i}").as_bytes()),
            "{what}"
        );
    }
}

/// Copies a directory's files but its `place` record: the copy stands for
/// the directory itself after damage, not for a copy of the node (which
/// would take a new node id at open).
fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("list") {
        let entry = entry.expect("entry");
        if entry.file_name() == "place" {
            continue;
        }
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

/// A reboot: the shared map's contents no longer describe the files.
fn reboot(dir: &Path) {
    std::fs::remove_file(dir.join("shm")).expect("remove shm");
}

/// What a writer killed in the middle of an append leaves in the shared map:
/// the intent word (word 7) says "appending".
fn mark_append_in_progress(dir: &Path) {
    let shm = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("shm"))
        .expect("open shm");
    shm.write_all_at(&1u64.to_le_bytes(), 7 * 8)
        .expect("write intent");
}

fn write_at(path: &Path, bytes: &[u8], at: u64) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open");
    f.write_all_at(bytes, at).expect("write");
}

#[test]
fn last_frame_cut_at_every_offset_recovers_after_a_reboot() {
    let pristine = tempfile::tempdir().expect("tempdir");
    let (_, offsets) = build(pristine.path());
    let last = offsets[offsets.len() - 2];
    let end = offsets[offsets.len() - 1];
    for cut in last..end {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_dir(pristine.path(), dir.path());
        reboot(dir.path());
        let log = dir.path().join("gen-0000000001.log");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&log)
            .expect("open")
            .set_len(cut)
            .expect("truncate");
        let report = check(dir.path(), &Options::default()).expect("check");
        assert!(report.is_healthy(), "cut at {cut}: {report:?}");
        if cut > last {
            assert!(
                !report.findings.is_empty(),
                "cut at {cut}: the torn tail is reported"
            );
        }
        let store = Store::open(dir.path(), opts()).expect("a torn tail recovers");
        assert_first_commits(&store, COMMITS - 1, &format!("cut at {cut}"));
        assert_eq!(
            std::fs::metadata(&log).expect("stat").len(),
            last,
            "the torn tail was cut"
        );
        store
            .put(&fp(), b"after", b"recovery")
            .expect("writes continue");
        drop(store);
        let store = Store::open(dir.path(), opts()).expect("reopen");
        assert_eq!(store.snapshot().expect("snapshot").len() as u64, COMMITS);
    }
}

#[test]
fn a_torn_frame_in_the_space_written_ahead_recovers_after_a_reboot() {
    let pristine = tempfile::tempdir().expect("tempdir");
    let (log, offsets) = build(pristine.path());
    let end = offsets[offsets.len() - 1];
    let bytes = std::fs::read(&log).expect("read");
    let frame = bytes[offsets[1] as usize..offsets[2] as usize].to_vec();
    for keep in [1, 4, 8, 9, frame.len() - 1] {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_dir(pristine.path(), dir.path());
        reboot(dir.path());
        // A power loss kept only the first `keep` bytes of an appended frame;
        // the zeros written ahead follow.
        write_at(&dir.path().join("gen-0000000001.log"), &frame[..keep], end);
        let store = Store::open(dir.path(), opts()).expect("recovers");
        assert_first_commits(&store, COMMITS, &format!("kept {keep} bytes"));
    }
}

#[test]
fn bytes_a_dead_writer_left_past_the_committed_end_are_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, offsets) = build(dir.path());
    let end = offsets[offsets.len() - 1];
    // A whole frame written past the committed end but never published: the
    // writer died before publishing. Readers ignore it; the next lock holder
    // cuts it, so it never appears.
    let bytes = std::fs::read(&log).expect("read");
    let frame = bytes[offsets[1] as usize..offsets[2] as usize].to_vec();
    write_at(&log, &frame, end);
    mark_append_in_progress(dir.path());
    let store = Store::open(dir.path(), opts()).expect("open");
    assert_first_commits(&store, COMMITS, "readers stop at the committed end");
    store.put(&fp(), b"next", b"writer").expect("put");
    let s = Store::open(dir.path(), opts()).expect("open");
    assert_eq!(s.snapshot().expect("snapshot").len() as u64, COMMITS + 1);
    assert!(
        check(dir.path(), &Options::default())
            .expect("check")
            .findings
            .is_empty()
    );
    // After a reboot the log is scanned to its physical end: the leftover
    // frame was cut, so it is not adopted either.
    drop((s, store));
    reboot(dir.path());
    let s = Store::open(dir.path(), opts()).expect("open after reboot");
    assert_eq!(s.snapshot().expect("snapshot").len() as u64, COMMITS + 1);
}

/// Which frame (index into offsets) holds byte `at`; None for the header.
fn frame_of(offsets: &[u64], at: u64) -> Option<usize> {
    (0..offsets.len() - 1).find(|&i| offsets[i] <= at && at < offsets[i + 1])
}

fn flip_every_bit(after_reboot: bool) {
    let pristine = tempfile::tempdir().expect("tempdir");
    let (log, offsets) = build(pristine.path());
    let original = std::fs::read(&log).expect("read");
    let end = offsets[offsets.len() - 1] as usize;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut tails_recovered = 0;
    let mut refused = 0;
    // Every bit of the committed bytes, and a sample of the zeros written
    // ahead of the end (a flip there must never lose anything).
    let stride = ((original.len() - end) * 8 / 64).max(1);
    let ahead = (end * 8..original.len() * 8).step_by(stride);
    for bit in (0..end * 8).chain(ahead) {
        for entry in std::fs::read_dir(dir.path()).expect("list") {
            std::fs::remove_file(entry.expect("entry").path()).expect("clean");
        }
        copy_dir(pristine.path(), dir.path());
        if after_reboot {
            reboot(dir.path());
        }
        let mut bytes = original.clone();
        let at = bit / 8;
        bytes[at] ^= 1 << (bit % 8);
        std::fs::write(dir.path().join("gen-0000000001.log"), &bytes).expect("write");
        let what = format!("bit {bit} (byte {at}), after_reboot={after_reboot}");
        let frame = frame_of(&offsets, at as u64);
        let is_last = frame == Some(offsets.len() - 2);
        match Store::open(dir.path(), opts()) {
            Ok(store) if at >= end => assert_first_commits(&store, COMMITS, &what),
            Ok(store) => {
                assert!(
                    after_reboot && is_last,
                    "{what}: opened although the damage is not a torn tail"
                );
                assert_first_commits(&store, COMMITS - 1, &what);
                tails_recovered += 1;
            }
            Err(Error::Corruption { offset, file, .. }) => {
                assert!(
                    at < end,
                    "{what}: a flip in the zeros ahead of the end refused to open"
                );
                let expected = frame.map_or(0, |i| offsets[i]);
                assert_eq!(
                    offset, expected,
                    "{what}: the error names where the damaged frame starts"
                );
                assert!(file.ends_with("gen-0000000001.log"), "{what}");
                let report = check(dir.path(), &Options::default()).expect("check");
                assert!(!report.is_healthy(), "{what}: check reports it: {report:?}");
                refused += 1;
            }
            Err(other) => panic!("{what}: unexpected error {other}"),
        }
    }
    assert!(refused > 0);
    if after_reboot {
        assert!(tails_recovered > 0);
    }
}

#[test]
fn every_bit_flip_is_refused_while_the_shared_map_knows_the_end() {
    flip_every_bit(false);
}

#[test]
fn every_bit_flip_after_a_reboot_is_refused_unless_it_is_in_the_last_frame() {
    flip_every_bit(true);
}

#[test]
fn repair_salvages_every_intact_commit_around_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, offsets) = build(dir.path());
    let mut bytes = std::fs::read(&log).expect("read");
    // Damage the third commit's payload.
    let at = (offsets[2] + 12) as usize;
    bytes[at] ^= 0x40;
    std::fs::write(&log, &bytes).expect("write");
    let err = Store::open(dir.path(), opts()).expect_err("refuses");
    assert!(
        err.to_string().contains(&format!("offset {}", offsets[2])),
        "{err}"
    );
    assert!(err.to_string().contains("chorus repair"), "{err}");
    let report = repair(dir.path(), &Options::default()).expect("repair");
    assert!(report.repaired);
    assert_eq!(report.commits_salvaged, COMMITS - 1);
    assert_eq!(report.lost_ranges, vec![(offsets[2], offsets[3])]);
    assert!(
        report.kept_as.as_ref().is_some_and(|p| p.exists()),
        "the damaged log is kept"
    );
    let store = Store::open(dir.path(), opts()).expect("opens after repair");
    let snap = store.snapshot().expect("snapshot");
    assert_eq!(snap.len() as u64, COMMITS - 1);
    assert_eq!(
        snap.get(&fp(), b"k2"),
        None,
        "the damaged commit is gone, not invented"
    );
    assert_eq!(snap.get(&fp(), b"k5").as_deref(), Some(&b"value 5"[..]));
    assert_eq!(snap.generation(), 2);
    store.put(&fp(), b"k2", b"again").expect("writes continue");
    assert!(
        check(dir.path(), &Options::default())
            .expect("check")
            .is_healthy()
    );
    let again = repair(dir.path(), &Options::default()).expect("repair is idempotent");
    assert!(!again.repaired);
}

/// A frame whose checksum holds but whose payload version this build does
/// not know: what a newer Chorus writes.
fn future_frame() -> Vec<u8> {
    let payload = [2u8, 0, 0, 0];
    let len = (payload.len() as u32).to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len), &payload);
    [&len[..], &crc.to_le_bytes(), &payload].concat()
}

#[test]
fn after_a_reboot_frames_of_a_newer_version_are_refused_never_cut() {
    for with_frames_after in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, offsets) = build(dir.path());
        let end = offsets[offsets.len() - 1];
        let mut tail = future_frame();
        if with_frames_after {
            let bytes = std::fs::read(&log).expect("read");
            tail.extend_from_slice(&bytes[offsets[1] as usize..offsets[2] as usize]);
        }
        write_at(&log, &tail, end);
        reboot(dir.path());
        let len_before = std::fs::metadata(&log).expect("stat").len();
        let err = Store::open(dir.path(), opts()).expect_err("refused");
        assert!(err.to_string().contains("payload version 2"), "{err}");
        assert!(err.to_string().contains(&format!("offset {end}")), "{err}");
        assert_eq!(
            std::fs::metadata(&log).expect("stat").len(),
            len_before,
            "nothing was cut"
        );
        assert!(
            !check(dir.path(), &Options::default())
                .expect("check")
                .is_healthy()
        );
        let e =
            repair(dir.path(), &Options::default()).expect_err("only a newer build may repair it");
        assert!(e.to_string().contains("newer Chorus"), "{e}");
    }
}

#[test]
fn repair_recomputes_prefix_hashes_when_checkpoint_frames_are_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), opts()).expect("open");
    let big = FullPrefix::parse("crash/big").expect("valid");
    let value = vec![9u8; 100 << 10];
    for i in 0..60u32 {
        let mut v = value.clone();
        v[..4].copy_from_slice(&i.to_le_bytes());
        store
            .put(&big, format!("k{i}").as_bytes(), &v)
            .expect("put");
    }
    store.put(&fp(), b"small", b"1").expect("put");
    store.compact().expect("compact: several checkpoint frames");
    drop(store);
    let log = dir.path().join("gen-0000000002.log");
    let mut bytes = std::fs::read(&log).expect("read");
    // Damage the first checkpoint frame: the one carrying the sums.
    bytes[64 + 20] ^= 0x55;
    std::fs::write(&log, &bytes).expect("write");
    let report = repair(dir.path(), &Options::default()).expect("repair");
    assert!(report.repaired && !report.lost_ranges.is_empty());
    let repaired = Store::open(dir.path(), opts())
        .expect("open")
        .snapshot()
        .expect("snapshot");
    // The same surviving bytes, written plainly elsewhere, hash the same.
    let other = tempfile::tempdir().expect("tempdir");
    let fresh = Store::open(other.path(), opts()).expect("open");
    for (p, k, e) in repaired.iter() {
        fresh.put(p, k, &e.value).expect("put");
    }
    let fresh = fresh.snapshot().expect("snapshot");
    assert!(repaired.len() < 61, "some keys were lost with the frame");
    for p in [&big, &fp()] {
        assert_eq!(repaired.prefix_hash(p), fresh.prefix_hash(p), "{p}");
    }
}
