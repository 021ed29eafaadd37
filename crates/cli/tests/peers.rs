//! Who may be a peer, on real `chorus serve --auth --insecure` processes:
//! a rogue local node (no credential, or its own cluster key) is refused
//! and receives nothing, `$auth` included; a node with a join token joins
//! and receives the cluster's users and key; an expired or revoked join
//! token is refused, and the refusal is logged with its reason.

use std::path::{Path, PathBuf};
use std::time::Duration;

mod common;
use common::http::wait_healthy;
use common::{
    Node, assert_success, chorus, chorus_in, free_port, ok_json, serve_logged, wait_until,
};

const SECRET: &str = "correct horse battery";

/// A node with `extra` arguments, plaintext peers on loopback unless
/// they give `--tls`;
/// its stderr goes to `DIR.stderr`.
fn start(dir: &Path, gossip: u16, join: Option<u16>, extra: &[&str]) -> (Node, String) {
    let http = free_port();
    let log = std::fs::File::create(log_path(dir)).expect("stderr file");
    let mut args = vec!["--exchange-interval", "0.5"];
    if !extra.contains(&"--tls") {
        args.push("--insecure");
    }
    args.extend_from_slice(extra);
    let node = serve_logged(dir, gossip, http, join, &args, log);
    let url = format!("http://127.0.0.1:{http}");
    wait_healthy(&url, Duration::from_secs(30));
    (node, url)
}

fn log_path(dir: &Path) -> PathBuf {
    let mut p = dir.as_os_str().to_owned();
    p.push(".stderr");
    PathBuf::from(p)
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(log_path(dir)).unwrap_or_default()
}

fn users(dir: &Path) -> Vec<String> {
    let v = ok_json(&chorus(dir, &["--json", "user", "list"]));
    v["users"]
        .as_array()
        .expect("users")
        .iter()
        .filter_map(|u| u["name"].as_str().map(str::to_string))
        .collect()
}

fn add_user(dir: &Path, name: &str) {
    assert_success(&chorus_in(
        dir,
        &["user", "add", name],
        &format!("{SECRET}\n"),
        &[],
    ));
}

/// A join token made on `dir`, written to `file`: (id, file).
fn join_token(dir: &Path, ttl: &str, file: &Path) -> String {
    let v = ok_json(&chorus(
        dir,
        &["--json", "cluster", "join-token", "create", "--ttl", ttl],
    ));
    std::fs::write(file, v["token"].as_str().expect("token")).expect("write token");
    v["id"].as_str().expect("id").to_string()
}

fn put(dir: &Path, path: &str, value: &str) {
    let (fp, key) = path.rsplit_once('/').expect("prefix/sub/key");
    common::put(dir, fp, key, value);
}

fn has(dir: &Path, path: &str) -> bool {
    let (fp, key) = path.rsplit_once('/').expect("prefix/sub/key");
    common::get(dir, fp, key).is_some()
}

/// A member with a user and a key, a rogue without credentials and one
/// with its own cluster: both refused, neither receives `$auth` nor data,
/// and nothing of theirs reaches the member.
#[test]
fn rogue_local_nodes_are_refused_and_receive_nothing() {
    let root = tempfile::tempdir().expect("tmp");
    let (member, plain, keyed) = (
        root.path().join("member"),
        root.path().join("plain"),
        root.path().join("keyed"),
    );
    assert_success(&chorus(&member, &["init"]));
    add_user(&member, "alice");
    let gossip = free_port();
    let (_m, _) = start(&member, gossip, None, &["--auth"]);
    put(&member, "app/cfg/mode", "fast");
    // A rogue that speaks the old, open hello, and one with auth and a
    // cluster key of its own (and a user of its own to smuggle in).
    assert_success(&chorus(&plain, &["init"]));
    assert_success(&chorus(&keyed, &["init"]));
    add_user(&keyed, "mallory");
    let (_p, _) = start(&plain, free_port(), Some(gossip), &[]);
    let (_k, _) = start(&keyed, free_port(), Some(gossip), &["--auth"]);
    put(&plain, "app/cfg/evil", "1");
    put(&keyed, "app/cfg/evil2", "1");
    wait_until(Duration::from_secs(30), || {
        let l = log(&member);
        l.contains("does not exchange credentials") && l.contains("another cluster?")
    });
    // Several exchange intervals: anything that could flow has flowed.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(users(&member), ["alice"], "nothing reached $auth");
    for rogue in [&plain, &keyed] {
        assert!(!has(rogue, "app/cfg/mode"), "data leaked to {rogue:?}");
        assert!(
            !users(rogue).contains(&"alice".to_string()),
            "$auth leaked to {rogue:?}"
        );
    }
    // The rogue with auth is told why (one with the old hello cannot be).
    assert!(
        log(&keyed).contains("the peer refused this node"),
        "{}",
        log(&keyed)
    );
    assert!(!has(&member, "app/cfg/evil") && !has(&member, "app/cfg/evil2"));
}

/// A node with a join token joins: it receives the users and the key
/// (so a token made on the member works on it), and data flows both ways.
#[test]
fn a_node_with_a_join_token_joins_and_receives_the_cluster_key() {
    let root = tempfile::tempdir().expect("tmp");
    let (member, joiner) = (root.path().join("member"), root.path().join("joiner"));
    assert_success(&chorus(&member, &["init"]));
    add_user(&member, "alice");
    let gossip = free_port();
    let (_m, _) = start(&member, gossip, None, &["--auth"]);
    let file = root.path().join("join.token");
    join_token(&member, "10m", &file);
    let file = file.to_str().expect("utf-8 path");
    let (_j, _) = start(
        &joiner,
        free_port(),
        Some(gossip),
        &["--auth", "--join-token-file", file],
    );
    put(&member, "app/cfg/a", "1");
    put(&joiner, "app/cfg/b", "2");
    wait_until(Duration::from_secs(30), || {
        users(&joiner) == ["alice"] && has(&joiner, "app/cfg/a") && has(&member, "app/cfg/b")
    });
    let l = log(&member);
    assert!(l.contains("admitted as a joiner"), "{l}");
}

/// Expired and revoked join tokens are refused, with the reason in the
/// member's log; the joiner receives nothing.
#[test]
fn expired_and_revoked_join_tokens_are_refused() {
    let root = tempfile::tempdir().expect("tmp");
    let member = root.path().join("member");
    assert_success(&chorus(&member, &["init"]));
    add_user(&member, "alice");
    let (expired, revoked) = (root.path().join("expired"), root.path().join("revoked"));
    let (f1, f2) = (root.path().join("t1"), root.path().join("t2"));
    join_token(&member, "1s", &f1);
    let id = join_token(&member, "10m", &f2);
    assert_success(&chorus(&member, &["cluster", "join-token", "revoke", &id]));
    std::thread::sleep(Duration::from_millis(1500));
    let gossip = free_port();
    let (_m, _) = start(&member, gossip, None, &["--auth"]);
    let mut nodes = Vec::new();
    for (dir, file) in [(&expired, &f1), (&revoked, &f2)] {
        let file = file.to_str().expect("utf-8 path");
        nodes.push(start(
            dir,
            free_port(),
            Some(gossip),
            &["--join-token-file", file],
        ));
    }
    wait_until(Duration::from_secs(30), || {
        let l = log(&member);
        l.contains("expired") && l.contains(&format!("join token {id} was revoked"))
    });
    std::thread::sleep(Duration::from_secs(2));
    for dir in [&expired, &revoked] {
        assert!(users(dir).is_empty(), "$auth leaked to {dir:?}");
        assert!(
            log(dir).contains("the peer refused this node"),
            "{}",
            log(dir)
        );
    }
}

/// Join tokens are never taken from the command line, and a malformed
/// one is refused before the node starts.
#[test]
fn join_tokens_come_from_a_file_or_the_environment_only() {
    let root = tempfile::tempdir().expect("tmp");
    let dir = root.path().join("n");
    let bad = root.path().join("bad.token");
    std::fs::write(&bad, "chorus1.not-a-join-token").expect("write");
    let out = chorus(
        &dir,
        &[
            "serve",
            "--insecure",
            "--join-token-file",
            bad.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("chorus cluster join-token create"), "{text}");
    let out = chorus(&dir, &["serve", "--insecure", "--join-token", "x"]);
    assert!(!out.status.success());
}

/// Over mutual TLS with auth, a certificate from the cluster CA admits a
/// node without a join token: it receives the users and the key; a
/// certificate from another CA is refused.
#[test]
fn over_tls_a_certificate_admits_a_node_and_another_ca_does_not() {
    let root = tempfile::tempdir().expect("tmp");
    let w = root.path();
    let path = |name: &str| w.join(name).to_str().expect("utf-8").to_string();
    for ca in ["ca", "other-ca"] {
        assert_success(&chorus(w, &["cluster", "init", "--ca", &path(ca)]));
    }
    for (name, ca) in [("n1", "ca"), ("n2", "ca"), ("rogue", "other-ca")] {
        let out = path(&format!("{name}-tls"));
        let ca = path(ca);
        assert_success(&chorus(
            w,
            &["cluster", "cert", name, "--ca", &ca, "--out", &out],
        ));
    }
    let (n1, n2, rogue) = (w.join("n1"), w.join("n2"), w.join("rogue"));
    assert_success(&chorus(&n1, &["init"]));
    add_user(&n1, "alice");
    let gossip = free_port();
    let (_node1, _) = start(&n1, gossip, None, &["--auth", "--tls", &path("n1-tls")]);
    let (_node2, _) = start(
        &n2,
        free_port(),
        Some(gossip),
        &["--auth", "--tls", &path("n2-tls")],
    );
    let (_r, _) = start(
        &rogue,
        free_port(),
        Some(gossip),
        &["--auth", "--tls", &path("rogue-tls")],
    );
    put(&n1, "app/cfg/a", "1");
    put(&n2, "app/cfg/b", "2");
    wait_until(Duration::from_secs(30), || {
        users(&n2) == ["alice"] && has(&n2, "app/cfg/a") && has(&n1, "app/cfg/b")
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(users(&rogue).is_empty() && !has(&rogue, "app/cfg/a"));
}
