//! `chorus serve` nodes as real processes on loopback: writes made by
//! embedded processes on one node's directory reach the others.

use std::path::Path;
use std::time::{Duration, Instant};

mod common;
use common::{Node, chorus, free_port, metric};

/// A plaintext node exchanging every second.
fn serve(dir: &Path, port: u16, join: Option<u16>) -> Node {
    serve_with(dir, port, join, &["--exchange-interval", "1"])
}

/// A plaintext node with more arguments.
fn serve_with(dir: &Path, port: u16, join: Option<u16>, extra: &[&str]) -> Node {
    let mut args = vec!["--insecure"];
    args.extend_from_slice(extra);
    common::serve(dir, port, free_port(), join, &args)
}

/// A node with mutual TLS from the directory `tls`.
fn serve_tls(dir: &Path, port: u16, tls: &Path, join: Option<u16>) -> Node {
    let tls = tls.to_str().expect("utf-8 path");
    let args = ["--exchange-interval", "1", "--tls", tls];
    common::serve(dir, port, free_port(), join, &args)
}

/// Waits until `dir` holds `value` under test/keys `key`.
fn wait_for(dir: &Path, key: &str, value: &str) -> Duration {
    let start = Instant::now();
    loop {
        if common::get(dir, "test/keys", key).as_deref() == Some(value) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{key}={value} never reached {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The JSON `chorus SUBCOMMAND ARGS...` printed on `dir`.
fn sub_json(dir: &Path, subcommand: &str, args: &[&str]) -> serde_json::Value {
    common::ok_json(&common::chorus_sub(dir, subcommand, args))
}

/// Serves the filled directory `full` and a new node on `empty` that joins
/// it; waits (up to `limit_s` seconds) until both hold the same
/// `full_prefix`, and returns how many keys the new node lists there.
fn join_and_count(full: &Path, empty: &Path, full_prefix: &str, limit_s: u64) -> usize {
    assert!(chorus(empty, &["init"]).status.success());
    let ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
    let _a = serve(full, ports[0], None);
    let _b = serve(empty, ports[1], Some(ports[0]));
    same_hash(full, empty, full_prefix, Duration::from_secs(limit_s));
    let out = chorus(empty, &["ls", full_prefix]);
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Waits until `a` and `b` report the same hash for `full_prefix`.
fn same_hash(a: &Path, b: &Path, full_prefix: &str, limit: Duration) {
    common::wait_until(limit, || {
        let (ha, hb) = (
            chorus(a, &["hash", full_prefix]),
            chorus(b, &["hash", full_prefix]),
        );
        hb.status.success() && ha.stdout == hb.stdout
    });
}

#[test]
fn a_write_by_an_embedded_process_on_one_node_reaches_the_others() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tmp")).collect();
    for d in &dirs {
        assert!(chorus(d.path(), &["init"]).status.success());
    }
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let _nodes: Vec<Node> = vec![
        serve(dirs[0].path(), ports[0], None),
        serve(dirs[1].path(), ports[1], Some(ports[0])),
        serve(dirs[2].path(), ports[2], Some(ports[0])),
    ];
    // No HTTP, no daemon call: a plain process writes node 1's directory.
    assert!(
        chorus(dirs[0].path(), &["put", "test/keys", "from-1", "one"])
            .status
            .success()
    );
    for d in &dirs[1..] {
        wait_for(d.path(), "from-1", "one");
    }
    assert!(
        chorus(dirs[2].path(), &["put", "test/keys", "from-3", "three"])
            .status
            .success()
    );
    for d in &dirs[..2] {
        wait_for(d.path(), "from-3", "three");
    }
    // Every node ends with the same data.
    let hashes: Vec<String> = dirs
        .iter()
        .map(|d| {
            let out = chorus(d.path(), &["hash", "test/keys"]);
            assert!(out.status.success());
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .collect();
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
}

#[test]
fn a_node_that_was_down_catches_up_by_anti_entropy() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().expect("tmp")).collect();
    for d in &dirs {
        assert!(chorus(d.path(), &["init"]).status.success());
    }
    let ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
    // Node 1 has data before node 2 ever runs: broadcast cannot bring it.
    for i in 0..50 {
        let key = format!("old-{i}");
        assert!(
            chorus(dirs[0].path(), &["put", "test/keys", &key, "v"])
                .status
                .success()
        );
    }
    let _a = serve(dirs[0].path(), ports[0], None);
    let _b = serve(dirs[1].path(), ports[1], Some(ports[0]));
    for i in 0..50 {
        wait_for(dirs[1].path(), &format!("old-{i}"), "v");
    }
}

#[test]
fn serve_refuses_plaintext_without_insecure_and_beyond_loopback() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = chorus(dir.path(), &["serve", "--gossip", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--insecure"));
    let out = chorus(
        dir.path(),
        &["serve", "--insecure", "--gossip", "0.0.0.0:7900"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}

#[test]
fn a_node_joining_a_cluster_of_ten_thousand_keys_ends_with_all_of_them() {
    use chorus_store::{Metadata, Options, Store};
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().expect("tmp")).collect();
    {
        let meta = Metadata::new(
            Store::open(
                dirs[0].path(),
                Options {
                    create: true,
                    ..Options::default()
                },
            )
            .expect("open"),
        );
        let fp = chorus_core::FullPrefix::parse("bulk/keys").expect("valid");
        for chunk in (0..10_000u32).collect::<Vec<_>>().chunks(2_000) {
            let mut tx = meta.begin().expect("begin");
            for i in chunk {
                tx.put(&fp, format!("k{i:05}").as_bytes(), b"v", None)
                    .expect("put");
            }
            tx.commit().expect("commit");
        }
    }
    let keys = join_and_count(dirs[0].path(), dirs[1].path(), "bulk/keys", 30);
    assert_eq!(keys, 10_000);
}

#[test]
fn a_node_joining_gets_large_values_that_exceed_one_frame_together() {
    // 40 values of ~1 MB: one exchange step holding all of them would be
    // far above the 16 MiB frame limit, so steps must be cut by bytes.
    use chorus_store::{Metadata, Options, PutOptions, PutValue, Store};
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().expect("tmp")).collect();
    {
        let meta = Metadata::new(
            Store::open(
                dirs[0].path(),
                Options {
                    create: true,
                    sync: chorus_store::SyncMode::Never,
                    ..Options::default()
                },
            )
            .expect("open"),
        );
        let fp = chorus_core::FullPrefix::parse("bulk/large").expect("valid");
        for i in 0..40u8 {
            let value = vec![b'a' + i % 26; 1_000_000];
            meta.put(
                &fp,
                format!("big-{i:02}").as_bytes(),
                PutValue::Bytes(value),
                &PutOptions::default(),
            )
            .expect("put");
        }
    }
    let keys = join_and_count(dirs[0].path(), dirs[1].path(), "bulk/large", 60);
    assert_eq!(keys, 40);
}

#[test]
fn a_node_killed_and_restarted_catches_up_and_loses_nothing_it_acknowledged() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().expect("tmp")).collect();
    for d in &dirs {
        assert!(chorus(d.path(), &["init"]).status.success());
    }
    let ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
    let a = serve(dirs[0].path(), ports[0], None);
    let _b = serve(dirs[1].path(), ports[1], Some(ports[0]));
    let put = |d: &tempfile::TempDir, key: String| {
        assert!(
            chorus(d.path(), &["put", "test/keys", &key, "v"])
                .status
                .success()
        );
    };
    for i in 0..10 {
        put(&dirs[0], format!("before-{i}"));
    }
    drop(a); // SIGKILL, whatever it was doing
    for i in 0..10 {
        put(&dirs[0], format!("while-down-a-{i}"));
        put(&dirs[1], format!("while-down-b-{i}"));
    }
    let _a = serve(dirs[0].path(), ports[0], Some(ports[1]));
    for i in 0..10 {
        wait_for(dirs[1].path(), &format!("before-{i}"), "v");
        wait_for(dirs[1].path(), &format!("while-down-a-{i}"), "v");
        wait_for(dirs[0].path(), &format!("while-down-b-{i}"), "v");
    }
}

#[test]
fn nodes_with_certificates_from_the_cluster_ca_replicate_and_others_are_refused() {
    let work = tempfile::tempdir().expect("tmp");
    let w = work.path();
    let run = |args: &[&str]| chorus(w, args);
    let ca = w.join("ca");
    let other_ca = w.join("other-ca");
    assert!(
        run(&["cluster", "init", "--ca", ca.to_str().expect("utf-8")])
            .status
            .success()
    );
    let again = run(&["cluster", "init", "--ca", ca.to_str().expect("utf-8")]);
    assert_eq!(
        again.status.code(),
        Some(2),
        "an existing CA is never replaced"
    );
    assert!(
        run(&["cluster", "init", "--ca", other_ca.to_str().expect("utf-8")])
            .status
            .success()
    );
    for (name, from) in [("n1", &ca), ("n2", &ca), ("rogue", &other_ca)] {
        let out = w.join(name);
        let o = run(&[
            "cluster",
            "cert",
            name,
            "--ca",
            from.to_str().expect("utf-8"),
            "--out",
            out.to_str().expect("utf-8"),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().expect("tmp")).collect();
    for d in &dirs {
        assert!(chorus(d.path(), &["init"]).status.success());
    }
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let _n1 = serve_tls(dirs[0].path(), ports[0], &w.join("n1"), None);
    let _n2 = serve_tls(dirs[1].path(), ports[1], &w.join("n2"), Some(ports[0]));
    let _rogue = serve_tls(dirs[2].path(), ports[2], &w.join("rogue"), Some(ports[0]));
    let _plain = serve(dirs[3].path(), ports[3], Some(ports[0]));
    assert!(
        chorus(dirs[0].path(), &["put", "test/keys", "secret", "s"])
            .status
            .success()
    );
    wait_for(dirs[1].path(), "secret", "s");
    assert!(
        chorus(dirs[2].path(), &["put", "test/keys", "from-rogue", "r"])
            .status
            .success()
    );
    assert!(
        chorus(dirs[3].path(), &["put", "test/keys", "from-plain", "p"])
            .status
            .success()
    );
    std::thread::sleep(Duration::from_secs(4));
    for outsider in &dirs[2..] {
        let out = chorus(outsider.path(), &["get", "test/keys", "secret"]);
        assert_eq!(out.status.code(), Some(1), "an outsider got the data");
    }
    for insider in &dirs[..2] {
        for key in ["from-rogue", "from-plain"] {
            let out = chorus(insider.path(), &["get", "test/keys", key]);
            assert_eq!(out.status.code(), Some(1), "an outsider's write got in");
        }
    }
}

/// True when the key is still stored, as a tombstone or a value.
fn holds_key(dir: &Path, key: &str) -> bool {
    let out = chorus(dir, &["ls", "test/keys", "--tombstones"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == key)
}

#[test]
fn tombstones_are_collected_once_every_member_has_them_and_an_absent_member_brings_nothing_back() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tmp")).collect();
    for d in &dirs {
        assert!(chorus(d.path(), &["init"]).status.success());
    }
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let fast = ["--exchange-interval", "0.3", "--tombstone-grace", "1"];
    let _a = serve_with(dirs[0].path(), ports[0], None, &fast);
    let _b = serve_with(dirs[1].path(), ports[1], Some(ports[0]), &fast);
    let c = serve_with(dirs[2].path(), ports[2], Some(ports[0]), &fast);
    assert!(
        chorus(dirs[0].path(), &["put", "test/keys", "gone", "v"])
            .status
            .success()
    );
    for d in &dirs {
        wait_for(d.path(), "gone", "v");
    }
    // Node 3 is away while the key is deleted.
    drop(c);
    assert!(
        chorus(dirs[0].path(), &["del", "test/keys", "gone"])
            .status
            .success()
    );
    let start = Instant::now();
    while chorus(dirs[1].path(), &["get", "test/keys", "gone"])
        .status
        .success()
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the delete never replicated"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Well past the grace period, the tombstone stays: a member lacks it.
    std::thread::sleep(Duration::from_secs(4));
    for d in &dirs[..2] {
        assert!(
            holds_key(d.path(), "gone"),
            "collected while a member was away"
        );
    }
    assert!(
        holds_key(dirs[2].path(), "gone"),
        "node 3 still has the old value"
    );
    // Node 3 comes back with the old value: it gets the tombstone, then
    // every node collects it, and the value never comes back.
    let _c = serve_with(dirs[2].path(), ports[2], Some(ports[0]), &fast);
    let start = Instant::now();
    while dirs.iter().any(|d| holds_key(d.path(), "gone")) {
        for d in &dirs {
            let out = chorus(d.path(), &["get", "test/keys", "gone"]);
            let back = out.status.success()
                && String::from_utf8_lossy(&out.stdout).trim() == "v"
                && !std::ptr::eq(d, &dirs[2]);
            assert!(
                !back,
                "the deleted value came back on {}",
                d.path().display()
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "the tombstone was never collected"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for d in &dirs {
        assert_eq!(
            chorus(d.path(), &["get", "test/keys", "gone"])
                .status
                .code(),
            Some(1)
        );
    }
}

#[test]
fn two_nodes_that_edit_a_document_while_apart_agree_on_its_winner_and_conflicts() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().expect("tmp")).collect();
    for d in &dirs {
        assert!(chorus(d.path(), &["init"]).status.success());
    }
    let (a, b) = (dirs[0].path(), dirs[1].path());
    let ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
    let _na = serve(a, ports[0], None);
    let nb = serve(b, ports[1], Some(ports[0]));
    let doc = |dir: &Path, args: &[&str]| sub_json(dir, "doc", args);
    let created = doc(a, &["create", "wiki", r#"{"_id": "page", "text": "v0"}"#]);
    let base = created["_rev"].as_str().expect("rev").to_string();
    common::wait_until(Duration::from_secs(20), || {
        chorus(b, &["doc", "get", "wiki", "page"]).status.success()
    });
    // Apart: B's daemon is killed; each side edits the same revision.
    drop(nb);
    let edit = |text: &str| {
        serde_json::json!({"_id": "page", "_rev": base, "text": text, text: true}).to_string()
    };
    doc(a, &["update", "wiki", &edit("from a")]);
    doc(b, &["update", "wiki", &edit("from b")]);
    let _nb = serve(b, ports[1], Some(ports[0]));
    // Healed: both return the same winner and the same conflict pair.
    common::wait_until(Duration::from_secs(30), || {
        let view = |dir: &Path| {
            (
                chorus(dir, &["doc", "get", "wiki", "page"]).stdout,
                chorus(dir, &["doc", "conflicts", "wiki", "page"]).stdout,
            )
        };
        let (va, vb) = (view(a), view(b));
        va == vb && String::from_utf8_lossy(&va.1).contains("2-")
    });
    let groups = doc(a, &["conflicts", "wiki", "page"]);
    assert_eq!(groups.as_array().map(Vec::len), Some(1), "{groups}");
    assert_eq!(groups[0].as_array().map(Vec::len), Some(2), "{groups}");
    let winner = doc(b, &["get", "wiki", "page"]);
    assert_eq!(winner["_rev"], groups[0][1], "the greater revision wins");
}

#[test]
fn operation_logs_are_pruned_alone_and_in_a_cluster_and_the_values_stay() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tmp")).collect();
    for d in &dirs {
        assert!(chorus(d.path(), &["init"]).status.success());
    }
    let (solo, a, b) = (dirs[0].path(), dirs[1].path(), dirs[2].path());
    let op = |dir: &Path, args: &[&str]| sub_json(dir, "op", args);
    let log_len = |dir: &Path| {
        op(dir, &["log", "app/stats", "n"])["ops"]
            .as_array()
            .map_or(usize::MAX, Vec::len)
    };
    let grace = ["--exchange-interval", "1", "--tombstone-grace", "1"];
    // A node with no peers prunes after the grace period.
    let _solo = serve_with(solo, free_port(), None, &grace);
    for _ in 0..10 {
        op(solo, &["push", "app/stats", "n", "counter", "1"]);
    }
    common::wait_until(Duration::from_secs(20), || log_len(solo) == 0);
    assert_eq!(op(solo, &["get", "app/stats", "n"]), serde_json::json!(10));
    assert!(op(solo, &["log", "app/stats", "n"])["checkpoint"]["value"] == 10);
    // Two nodes: pushes on both; pruned once both have everything.
    let ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
    let _na = serve_with(a, ports[0], None, &grace);
    let _nb = serve_with(b, ports[1], Some(ports[0]), &grace);
    for i in 0..10 {
        op(a, &["push", "app/stats", "n", "counter", "1"]);
        op(
            b,
            &["push", "app/stats", "n", "counter", &format!("{}", i + 1)],
        );
    }
    common::wait_until(Duration::from_secs(30), || {
        log_len(a) == 0
            && log_len(b) == 0
            && op(a, &["get", "app/stats", "n"]) == 65
            && op(b, &["get", "app/stats", "n"]) == 65
    });
    // Pushed after pruning: counted everywhere.
    op(b, &["push", "app/stats", "n", "counter", "5"]);
    common::wait_until(Duration::from_secs(20), || {
        op(a, &["get", "app/stats", "n"]) == 70
    });
}

#[test]
fn operation_logs_pushed_offline_and_while_apart_merge_and_count_every_op_once() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().expect("tmp")).collect();
    for d in &dirs {
        assert!(chorus(d.path(), &["init"]).status.success());
    }
    let (a, b) = (dirs[0].path(), dirs[1].path());
    let op = |dir: &Path, args: &[&str]| sub_json(dir, "op", args);
    let ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
    // Offline: each node alone accepts pushes.
    let _na = serve(a, ports[0], None);
    let nb = serve(b, ports[1], None);
    for _ in 0..5 {
        op(a, &["push", "app/c", "n", "counter", "1"]);
        op(b, &["push", "app/c", "n", "counter", "10"]);
    }
    op(a, &["push", "app/s", "tags", "set", r#"{"add": "a"}"#]);
    op(b, &["push", "app/s", "tags", "set", r#"{"add": "b"}"#]);
    drop(nb);
    // Peers appear: the logs merge.
    let nb = serve(b, ports[1], Some(ports[0]));
    let both = |fp: &str, path: &str, want: serde_json::Value| {
        common::wait_until(Duration::from_secs(30), || {
            op(a, &["get", fp, path]) == want && op(b, &["get", fp, path]) == want
        });
    };
    both("app/c", "n", serde_json::json!(55));
    both("app/s", "tags", serde_json::json!(["a", "b"]));
    // Apart again (B killed), pushes on both sides, then healed.
    drop(nb);
    for _ in 0..3 {
        op(a, &["push", "app/c", "n", "counter", "100"]);
        op(b, &["push", "app/c", "n", "counter", "1000"]);
    }
    let _nb = serve(b, ports[1], Some(ports[0]));
    both("app/c", "n", serde_json::json!(3355));
}

/// The seed's scenario at small scale: a hundred writer processes on
/// three nodes give one document conflicting revisions; every node ends
/// with the same winner and conflicts; a new revision on top of the
/// winner then costs its peers its own size, not the tree's.
#[test]
fn a_hundred_writers_on_three_nodes_agree_and_a_new_revision_sends_only_itself() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tmp")).collect();
    for d in &dirs {
        assert!(chorus(d.path(), &["init"]).status.success());
    }
    let gossip: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let http: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let args = ["--insecure", "--exchange-interval", "2"];
    let _nodes: Vec<Node> = (0..3)
        .map(|i| {
            let join = (i > 0).then_some(gossip[0]);
            common::serve(dirs[i].path(), gossip[i], http[i], join, &args)
        })
        .collect();
    let doc = |dir: &Path, args: &[&str]| sub_json(dir, "doc", args);
    let created = doc(
        dirs[0].path(),
        &["create", "wiki", r#"{"_id": "page", "n": 0}"#],
    );
    let base = created["_rev"].as_str().expect("rev").to_string();
    for d in &dirs {
        common::wait_until(Duration::from_secs(30), || {
            chorus(d.path(), &["doc", "get", "wiki", "page"])
                .status
                .success()
        });
    }
    // A hundred processes, a third on each node, each a conflicting edit
    // of the first revision.
    let writers: Vec<std::process::Child> = (0..100)
        .map(|i| {
            let body =
                serde_json::json!({"_id": "page", "_rev": base, "n": i + 1, "by": format!("w{i}")});
            std::process::Command::new(common::CHORUS)
                .arg("--dir")
                .arg(dirs[i % 3].path())
                .args(["doc", "update", "wiki", &body.to_string(), "--keep-both"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("start a writer")
        })
        .collect();
    for w in writers {
        let out = w.wait_with_output().expect("writer");
        common::assert_success(&out);
    }
    // Every node: the same winner and the same 99 losing revisions.
    let view = |d: &Path| {
        let got = doc(d, &["get", "wiki", "page", "--conflicts"]);
        let conflicts = doc(d, &["conflicts", "wiki", "page", "--limit", "1000"]);
        (got, conflicts)
    };
    common::wait_until(Duration::from_secs(60), || {
        let views: Vec<_> = dirs.iter().map(|d| view(d.path())).collect();
        views[0].0["_conflicts"].as_array().map(Vec::len) == Some(99)
            && views.iter().all(|v| *v == views[0])
    });
    let (winner, _) = view(dirs[0].path());
    // A new revision on top of the winner, written on node 0: what node 0
    // sends its peers for it is about its own size (two peers, a record
    // and its parent's body-less record each), whatever the number of
    // conflicts (the whole tree would be about 100 revisions).
    std::thread::sleep(Duration::from_secs(3));
    let before = metric(http[0], "peer_bytes_sent_total") as f64;
    let mut next = winner.clone();
    next["n"] = serde_json::json!(1000);
    if let Some(m) = next.as_object_mut() {
        m.remove("_conflicts");
    }
    let saved = doc(dirs[0].path(), &["update", "wiki", &next.to_string()]);
    let rev = saved["_rev"].as_str().expect("rev").to_string();
    for d in &dirs[1..] {
        common::wait_until(Duration::from_secs(30), || {
            doc(d.path(), &["get", "wiki", "page"])["_rev"] == rev.as_str()
        });
    }
    let sent = metric(http[0], "peer_bytes_sent_total") as f64 - before;
    let revision_bytes = next.to_string().len() as f64;
    eprintln!("one revision of {revision_bytes} bytes: node 0 sent {sent} bytes to its peers");
    assert!(
        sent <= 2.0 * 3.0 * revision_bytes + 6000.0,
        "node 0 sent {sent} bytes to its two peers for one revision of {revision_bytes} bytes"
    );
    for d in &dirs {
        assert_eq!(
            doc(d.path(), &["get", "wiki", "page", "--conflicts"])["_rev"],
            rev.as_str()
        );
    }
}
