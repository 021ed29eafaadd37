//! Real processes sharing one data directory: interleaved writers, a
//! transactional counter, SIGKILL at random moments, compaction under load,
//! snapshots and the lock timeout.

use std::path::Path;
use std::time::Duration;

use chorus_core::FullPrefix;
use chorus_store::{Error, Options, Store, check};

mod common;
use common::{Worker, open};

fn fp() -> FullPrefix {
    FullPrefix::parse("test/keys").expect("valid")
}

#[test]
fn four_processes_interleave_500_commits_each() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf-8 path");
    open(dir.path());
    let mut workers: Vec<Worker> = (0..4)
        .map(|p| Worker::spawn(&["write", d, &format!("p{p}"), "500", "always"]))
        .collect();
    for w in workers.iter_mut() {
        w.expect_line("done");
    }
    // Every process sees every key, not only its own.
    for w in workers.iter_mut() {
        w.tell("look");
        assert_eq!(w.expect_line("sees"), "2000");
    }
    for w in workers {
        w.finish();
    }
    let store = open(dir.path());
    let snap = store.snapshot().expect("snapshot");
    assert_eq!(snap.len(), 2000);
    assert_eq!(snap.seq(), 2000, "one commit each, none lost, none doubled");
    for p in 0..4 {
        for i in 0..500u64 {
            let v = snap
                .get(&fp(), format!("p{p}-{i}").as_bytes())
                .expect("present");
            assert_eq!(&v[..], &i.to_le_bytes());
        }
    }
    assert!(
        check(dir.path(), &Options::default())
            .expect("check")
            .is_healthy()
    );
}

#[test]
fn transactional_counter_from_four_processes_is_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf-8 path");
    open(dir.path());
    let workers: Vec<Worker> = (0..4)
        .map(|_| Worker::spawn(&["counter", d, "150"]))
        .collect();
    let mut conflicts = 0u64;
    for mut w in workers {
        conflicts += w.expect_line("conflicts").parse::<u64>().expect("number");
        w.finish();
    }
    let store = open(dir.path());
    let c = FullPrefix::parse("c/n").expect("valid");
    let v = store.get(&c, b"count").expect("get").expect("present");
    let mut b = [0u8; 8];
    b.copy_from_slice(&v);
    assert_eq!(
        u64::from_le_bytes(b),
        600,
        "{conflicts} conflicts were retried"
    );
}

/// A deterministic sequence of pseudo-random numbers (no unseeded randomness).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_commit() {
    let mut rng = Lcg(0x5eed);
    let runs = 200;
    let mut dir = tempfile::tempdir().expect("tempdir");
    let mut acked_max: Option<u64> = None;
    let mut runs_killed_mid_stream = 0;
    for run in 0..runs {
        // Four runs in a row share a directory, so recovery after a kill is
        // followed by more writing and another kill.
        if run % 4 == 0 {
            dir = tempfile::tempdir().expect("tempdir");
            acked_max = None;
        }
        let d = dir.path().to_str().expect("utf-8 path").to_string();
        let sync = ["always", "batch", "never"][run % 3];
        let compact_every = if run % 5 == 0 { "5" } else { "0" };
        let mut w = Worker::spawn(&["torture", &d, sync, compact_every]);
        std::thread::sleep(Duration::from_micros(1000 + rng.next() % 40_000));
        w.child.kill().expect("SIGKILL");
        w.child.wait().expect("reap");
        let mut acked_now = 0;
        for line in w.lines.by_ref() {
            let line = line.expect("read");
            if let Some(i) = line.strip_prefix("ack ") {
                let i: u64 = i.parse().expect("number");
                acked_max = Some(acked_max.map_or(i, |m| m.max(i)));
                acked_now += 1;
            }
        }
        if acked_now > 0 {
            runs_killed_mid_stream += 1;
        }
        verify_torture_store(dir.path(), acked_max, run);
    }
    assert!(
        runs_killed_mid_stream > runs / 2,
        "only {runs_killed_mid_stream} of {runs} runs were killed while committing"
    );
}

fn verify_torture_store(dir: &Path, acked_max: Option<u64>, run: usize) {
    if !dir.join("current").exists() {
        assert_eq!(
            acked_max, None,
            "run {run}: acknowledged commits but no store"
        );
        return;
    }
    let store = open(dir);
    let snap = store.snapshot().expect("snapshot");
    let fp = fp();
    assert_eq!(snap.len() % 3, 0, "run {run}: a partial commit is visible");
    let present = snap.len() as u64 / 3;
    for i in 0..present {
        for s in ["a", "b", "c"] {
            let v = snap
                .get(&fp, format!("{i}-{s}").as_bytes())
                .unwrap_or_else(|| {
                    panic!("run {run}: {i}-{s} missing while {present} commits are present")
                });
            assert_eq!(&v[..], &i.to_le_bytes(), "run {run}");
        }
    }
    if let Some(m) = acked_max {
        assert!(
            present > m,
            "run {run}: commit {m} was acknowledged but only {present} are present"
        );
    }
    let report = check(dir, &Options::default()).expect("check");
    assert!(report.is_healthy(), "run {run}: {report:?}");
}

#[test]
fn compaction_while_three_processes_read_and_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf-8 path");
    let store = open(dir.path());
    let workers: Vec<Worker> = (0..3)
        .map(|p| Worker::spawn(&["readwrite", d, &format!("w{p}"), "300"]))
        .collect();
    let mut compactions = 0;
    let mut last_generation = 0;
    let mut running = workers;
    let mut generations = Vec::new();
    while !running.is_empty() {
        let r = store.compact().expect("compact");
        compactions += 1;
        last_generation = r.new_generation;
        std::thread::sleep(Duration::from_millis(5));
        let mut still = Vec::new();
        for mut w in running {
            if w.child.try_wait().expect("poll").is_some() {
                generations.push(w.expect_line("generation").parse::<u64>().expect("number"));
                w.finish();
            } else {
                still.push(w);
            }
        }
        running = still;
    }
    assert!(
        compactions > 3,
        "compaction ran only {compactions} times during the writes"
    );
    let snap = store.snapshot().expect("snapshot");
    assert_eq!(
        snap.len(),
        900,
        "nothing lost across {compactions} compactions"
    );
    assert_eq!(snap.generation(), last_generation);
    for g in generations {
        assert!(g >= 2, "every worker saw a new generation (saw {g})");
    }
    let fresh = open(dir.path());
    assert_eq!(fresh.snapshot().expect("snapshot").len(), 900);
}

#[test]
fn a_snapshot_stays_unchanged_while_another_process_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf-8 path");
    let store = open(dir.path());
    store.put(&fp(), b"w-0", b"before").expect("put");
    let snap = store.snapshot().expect("snapshot");
    let mut w = Worker::spawn(&["write", d, "w", "50", "always"]);
    w.expect_line("done");
    w.tell("look");
    w.expect_line("sees");
    w.finish();
    assert_eq!(snap.len(), 1);
    assert_eq!(snap.get(&fp(), b"w-0").as_deref(), Some(&b"before"[..]));
    assert_eq!(snap.get(&fp(), b"w-1"), None);
    assert_eq!(store.snapshot().expect("snapshot").len(), 50);
    assert_eq!(
        store.get(&fp(), b"w-0").expect("get").as_deref(),
        Some(&0u64.to_le_bytes()[..])
    );
}

#[test]
fn a_writer_waiting_too_long_is_told_who_holds_the_lock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf-8 path");
    open(dir.path());
    let mut holder = Worker::spawn(&["hold", d, "1500"]);
    holder.expect_line("locked");
    let store = Store::open(
        dir.path(),
        Options {
            lock_timeout: Duration::from_millis(200),
            ..Options::default()
        },
    )
    .expect("open while locked: readers do not wait");
    let status = store.status().expect("status");
    assert_eq!(
        status.lock_holder.as_ref().map(|h| h.pid),
        Some(holder.child.id())
    );
    let err = store.put(&fp(), b"k", b"v").expect_err("times out");
    match &err {
        Error::LockTimeout {
            holder: Some(h),
            waited,
        } => {
            assert_eq!(h.pid, holder.child.id());
            assert!(*waited >= Duration::from_millis(200));
        }
        other => panic!("expected a lock timeout naming the holder, got {other}"),
    }
    assert!(
        err.to_string()
            .contains(&format!("pid {}", holder.child.id())),
        "{err}"
    );
    holder.finish();
    store
        .put(&fp(), b"k", b"v")
        .expect("the lock is free again");
    assert_eq!(store.status().expect("status").lock_holder, None);
}

#[test]
fn a_killed_lock_holder_leaves_no_stale_lock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf-8 path");
    open(dir.path());
    let mut holder = Worker::spawn(&["hold", d, "60000"]);
    holder.expect_line("locked");
    holder.child.kill().expect("SIGKILL");
    holder.child.wait().expect("reap");
    let store = Store::open(
        dir.path(),
        Options {
            lock_timeout: Duration::from_millis(500),
            ..Options::default()
        },
    )
    .expect("open");
    store
        .put(&fp(), b"k", b"v")
        .expect("the kernel released the dead holder's lock");
}

#[test]
fn prefix_hashes_agree_across_processes_and_orders() {
    let a = tempfile::tempdir().expect("tempdir");
    let b = tempfile::tempdir().expect("tempdir");
    let da = a.path().to_str().expect("utf-8 path");
    open(a.path());
    // Store A: two processes at once, interleaving their commits.
    let mut workers: Vec<Worker> = (0..2)
        .map(|p| Worker::spawn(&["write", da, &format!("p{p}"), "200", "never"]))
        .collect();
    for w in workers.iter_mut() {
        w.expect_line("done");
        w.tell("look");
        w.expect_line("sees");
    }
    for w in workers {
        w.finish();
    }
    // Store B: this process, the other way round, with detours.
    let sb = open(b.path());
    for p in [1, 0] {
        for i in (0..200u64).rev() {
            sb.put(&fp(), format!("p{p}-{i}").as_bytes(), b"first")
                .expect("put");
            sb.put(&fp(), format!("p{p}-{i}").as_bytes(), &i.to_le_bytes())
                .expect("put");
        }
    }
    let sa = open(a.path());
    let hash = |s: &Store| s.snapshot().expect("snapshot").prefix_hash(&fp());
    assert_eq!(
        hash(&sa),
        hash(&sb),
        "same data, different writers and orders"
    );
    sb.put(&fp(), b"p0-7", b"changed").expect("put");
    assert_ne!(hash(&sa), hash(&sb), "one changed key changes the hash");
    sb.put(&fp(), b"p0-7", &7u64.to_le_bytes()).expect("put");
    assert_eq!(hash(&sa), hash(&sb));
}

/// Automatic compaction while 3 processes read and write: nothing lost,
/// nothing blocked for longer than a bound, and the log stays within its
/// threshold (plus the one commit that crosses it) over 100,000 overwrites.
#[test]
fn automatic_compaction_while_three_processes_read_and_write() {
    const PER_WORKER: u64 = 33_334;
    const KEYS: u64 = 100;
    const SLACK: u64 = 64 << 10;
    // One commit of these keys and values is about 50 bytes as a frame.
    const ONE_COMMIT: u64 = 128;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf-8 path");
    let store = open(dir.path());
    let started = std::time::Instant::now();
    let mut workers: Vec<Worker> = (0..3)
        .map(|p| {
            Worker::spawn(&[
                "auto-churn",
                d,
                &format!("w{p}"),
                &PER_WORKER.to_string(),
                &KEYS.to_string(),
                &SLACK.to_string(),
            ])
        })
        .collect();
    // This process reads too, while they write: never an error.
    let mut reads = 0u64;
    let mut generations = std::collections::BTreeSet::new();
    loop {
        let snap = store.snapshot().expect("a read during compaction");
        generations.insert(snap.generation());
        reads += 1;
        let mut running = 0;
        for w in workers.iter_mut() {
            if w.child.try_wait().expect("poll").is_none() {
                running += 1;
            }
        }
        if running == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut own_compactions = 0;
    for mut w in workers {
        let commit_ms: u64 = w.expect_line("longest_commit_ms").parse().expect("number");
        let read_ms: u64 = w.expect_line("longest_read_ms").parse().expect("number");
        let over: u64 = w.expect_line("most_over").parse().expect("number");
        own_compactions += w.expect_line("compactions").parse::<u64>().expect("number");
        w.expect_line("done");
        w.finish();
        assert!(commit_ms < 10_000, "a commit waited {commit_ms} ms");
        assert!(read_ms < 10_000, "a read waited {read_ms} ms");
        assert!(
            over <= ONE_COMMIT,
            "the log was {over} bytes past its threshold after a commit"
        );
    }
    let status = store.status().expect("status");
    assert!(
        own_compactions >= 10 && status.auto_compactions == own_compactions,
        "compacted {own_compactions} times by the workers, {} as the map recorded",
        status.auto_compactions
    );
    assert!(generations.len() > 2, "the reader saw {generations:?}");
    assert!(reads > 0);
    let threshold = status.compact_at.expect("on by default");
    assert!(status.log_bytes <= threshold + ONE_COMMIT);
    // Every acknowledged write: each key holds the last value its worker wrote.
    let check_all = |store: &Store| {
        let snap = store.snapshot().expect("snapshot");
        assert_eq!(snap.len() as u64, 3 * KEYS);
        assert_eq!(snap.seq(), 3 * PER_WORKER, "no commit lost or doubled");
        for p in 0..3 {
            for k in 0..KEYS {
                let last = (0..PER_WORKER)
                    .rev()
                    .find(|i| i % KEYS == k)
                    .expect("written");
                let v = snap
                    .get(&fp(), format!("w{p}-{k}").as_bytes())
                    .expect("present");
                assert_eq!(&v[..], &last.to_le_bytes(), "w{p}-{k}");
            }
        }
    };
    check_all(&store);
    check_all(&open(dir.path()));
    assert!(
        check(dir.path(), &Options::default())
            .expect("check")
            .is_healthy()
    );
    eprintln!(
        "3 processes, {} overwrites, {own_compactions} automatic compactions in {:?}; longest {:?}",
        3 * PER_WORKER,
        started.elapsed(),
        status.longest_auto_compaction
    );
}
