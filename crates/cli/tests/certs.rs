//! Certificates between real `chorus serve` processes on loopback: an
//! expired and a revoked certificate are refused both ways (the refused
//! node dials a good one; a good one dials it), the refusals are logged
//! with their reason, and nothing crosses.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod common;
use common::http::{curl_with_headers, wait_healthy};
use common::{Node, chorus, free_port, get, ok, ok_json, put, serve_logged, wait_until};

/// A node with mutual TLS from `tls`, its stderr in `log`.
struct Started {
    _node: Node,
    gossip: u16,
    http: u16,
}

fn serve_tls(dir: &Path, tls: &Path, join: Option<u16>, log: &Path) -> Started {
    let (gossip, http) = (free_port(), free_port());
    let tls = tls.to_str().expect("utf-8 path");
    let err = File::create(log).expect("log file");
    let node = serve_logged(
        dir,
        gossip,
        http,
        join,
        &["--exchange-interval", "1", "--tls", tls],
        err,
    );
    wait_healthy(&format!("http://127.0.0.1:{http}"), Duration::from_secs(20));
    Started {
        _node: node,
        gossip,
        http,
    }
}

/// Tells the node whose API is on `http` to dial `gossip`.
fn join(http: u16, gossip: u16) {
    let body = format!("{{\"peer\": \"127.0.0.1:{gossip}\"}}");
    let (_, status, _, out) = curl_with_headers(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "--data",
        &body,
        &format!("http://127.0.0.1:{http}/v1/cluster/join"),
    ]);
    assert!((200..300).contains(&status), "join: {status} {out}");
}

fn log_lines(log: &Path, all: &[&str]) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| all.iter().all(|w| l.contains(w)))
        .map(str::to_string)
        .collect()
}

/// Waits until `log` has a line holding every one of `all`.
#[track_caller]
fn wait_for_line(log: &Path, all: &[&str]) {
    let start = std::time::Instant::now();
    while log_lines(log, all).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no line with {all:?} in {}:\n{}",
            log.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Work {
    tmp: tempfile::TempDir,
}

impl Work {
    fn new() -> Work {
        let w = Work {
            tmp: tempfile::tempdir().expect("tmp"),
        };
        let ca = w.path("ca");
        ok(chorus(
            w.tmp.path(),
            &["cluster", "init", "--ca", ca.to_str().expect("utf-8")],
        ));
        w
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// `chorus cluster cert NAME` into NAME-tls with `extra` arguments.
    fn cert(&self, name: &str, extra: &[&str]) -> PathBuf {
        let out = self.path(&format!("{name}-tls"));
        let ca = self.path("ca");
        let mut args = vec![
            "cluster",
            "cert",
            name,
            "--ca",
            ca.to_str().expect("utf-8"),
            "--out",
            out.to_str().expect("utf-8"),
        ];
        args.extend_from_slice(extra);
        ok(chorus(self.tmp.path(), &args));
        out
    }

    fn node_dir(&self, name: &str) -> PathBuf {
        let dir = self.path(name);
        ok(chorus(&dir, &["init"]));
        dir
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

#[test]
fn an_expired_node_certificate_is_refused_both_ways() {
    let w = Work::new();
    let now = unix_now();
    let good_tls = w.cert("good", &[]);
    let (from, until) = ((now - 10 * 86_400).to_string(), (now - 86_400).to_string());
    let old_tls = w.cert("old", &["--not-before", &from, "--not-after", &until]);
    let (good_dir, old_dir) = (w.node_dir("g"), w.node_dir("o"));
    let (good_log, old_log) = (w.path("good.log"), w.path("old.log"));
    let good = serve_tls(&good_dir, &good_tls, None, &good_log);
    let started = std::time::Instant::now();
    // The expired node warns about its own certificate, and dials.
    let old = serve_tls(&old_dir, &old_tls, Some(good.gossip), &old_log);
    wait_for_line(&old_log, &["this node's certificate", "expired"]);
    put(&good_dir, "test/keys", "from-good", "g");
    put(&old_dir, "test/keys", "from-old", "o");
    // It dials the good node, which refuses its certificate.
    wait_for_line(
        &good_log,
        &["refused a TLS handshake from 127.0.0.1:", "[expired]"],
    );
    // The good node dials it, and refuses the certificate it presents.
    join(good.http, old.gossip);
    let dialled = format!("with 127.0.0.1:{} (dialled)", old.gossip);
    wait_for_line(&good_log, &[&dialled, "[expired]"]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(get(&old_dir, "test/keys", "from-good"), None);
    assert_eq!(get(&good_dir, "test/keys", "from-old"), None);
    // Rate-limited: at most one line per reason, source and direction
    // (here two: inbound and dialled) every 10 s, however often the
    // nodes retried meanwhile.
    let lines = log_lines(&good_log, &["[expired]"]);
    let windows = started.elapsed().as_secs() / 10 + 1;
    assert!(lines.len() as u64 <= 2 * windows, "{lines:#?}");
}

#[test]
fn a_revoked_node_certificate_is_refused_both_ways_once_the_revocation_has_replicated() {
    let w = Work::new();
    let (a_tls, b_tls, c_tls) = (w.cert("a", &[]), w.cert("b", &[]), w.cert("c", &[]));
    let (a_dir, b_dir, c_dir) = (w.node_dir("a"), w.node_dir("b"), w.node_dir("c"));
    let (a_log, b_log, c_log) = (w.path("a.log"), w.path("b.log"), w.path("c.log"));
    let a = serve_tls(&a_dir, &a_tls, None, &a_log);
    let b = serve_tls(&b_dir, &b_tls, Some(a.gossip), &b_log);
    put(&a_dir, "test/keys", "before", "v");
    wait_until(Duration::from_secs(30), || {
        get(&b_dir, "test/keys", "before").as_deref() == Some("v")
    });
    // Revoked on a; b learns it by replication.
    let revoked = ok_json(&chorus(
        &a_dir,
        &["--json", "cluster", "revoke", "c", "--reason", "test"],
    ));
    assert_eq!(revoked["key"], "name:c");
    wait_until(Duration::from_secs(30), || {
        let listed = ok_json(&chorus(&b_dir, &["--json", "cluster", "revoked"]));
        listed["revoked"]
            .as_array()
            .is_some_and(|all| all.iter().any(|r| r["key"] == "name:c"))
    });
    wait_for_line(&b_log, &["revoked certificates: 1 name(s)"]);
    // c dials b: b refuses it.
    let c = serve_tls(&c_dir, &c_tls, Some(b.gossip), &c_log);
    wait_for_line(
        &b_log,
        &["refused a TLS handshake from 127.0.0.1:", "[revoked]"],
    );
    // a dials c: a refuses the certificate c presents.
    join(a.http, c.gossip);
    let dialled = format!("with 127.0.0.1:{} (dialled)", c.gossip);
    wait_for_line(&a_log, &[&dialled, "[revoked]"]);
    put(&a_dir, "test/keys", "after", "v");
    put(&c_dir, "test/keys", "from-c", "c");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(get(&c_dir, "test/keys", "after"), None);
    assert_eq!(get(&c_dir, "test/keys", "before"), None);
    for d in [&a_dir, &b_dir] {
        assert_eq!(get(d, "test/keys", "from-c"), None);
    }
}

#[test]
fn a_certificate_is_renewed_in_place_and_one_certificate_can_be_revoked_alone() {
    let w = Work::new();
    let tls = w.cert("n", &["--days", "30"]);
    let first = std::fs::read_to_string(tls.join("node.crt")).expect("cert");
    let renewed = ok_json(&chorus(
        w.tmp.path(),
        &[
            "--json",
            "cluster",
            "cert",
            "n",
            "--renew",
            "--ca",
            w.path("ca").to_str().expect("utf-8"),
            "--out",
            tls.to_str().expect("utf-8"),
        ],
    ));
    let days = (renewed["not_after"].as_u64().expect("not_after") - unix_now()) / 86_400;
    assert!(
        (364..=365).contains(&days),
        "{days}: --days defaults to 365"
    );
    assert_eq!(
        std::fs::read_to_string(tls.join("node.crt.old")).expect("old"),
        first
    );
    let dir = w.node_dir("d");
    let old = tls.join("node.crt.old");
    let out = ok_json(&chorus(
        &dir,
        &[
            "--json",
            "cluster",
            "revoke",
            "n",
            "--cert",
            old.to_str().expect("utf-8"),
        ],
    ));
    assert!(
        out["key"]
            .as_str()
            .is_some_and(|k| k.starts_with("sha256:")),
        "{out}"
    );
    assert!(out["serial"].is_string(), "{out}");
    let wrong = chorus(
        &dir,
        &[
            "cluster",
            "revoke",
            "m",
            "--cert",
            old.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(wrong.status.code(), Some(2));
    let listed = ok_json(&chorus(&dir, &["--json", "cluster", "revoked"]));
    assert_eq!(listed["revoked"].as_array().map(Vec::len), Some(1));
}
