//! A copied data directory (a restored backup, a cloned machine) shares
//! its node id with the original. Tried as an operator would: copy a
//! node's directory, write the same key on both copies while apart, start
//! both as a cluster. A copy made with `cp -a` is elsewhere (another inode):
//! it takes a new node id when first opened, and the two converge with both
//! writes kept as siblings. A copy that kept its place (a cloned disk) is
//! found by the handshake: both say so (logs and `/metrics`), neither marks
//! the other left, and once the copy has taken a new identity (`chorus init
//! --new-identity`) the two converge with both writes kept as siblings.

mod common;

use std::fs::File;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::http::wait_healthy;
use common::{Node, chorus, free_port, metric, put, serve_logged, stdout, wait_until};

const FP: &str = "assets/shots";
const LIMIT: Duration = Duration::from_secs(60);

/// Starts a plaintext node with its log in `log`; waits for its API.
fn start(dir: &Path, gossip: u16, http: u16, join: Option<u16>, log: &Path) -> Node {
    let file = File::create(log).expect("log file");
    let node = serve_logged(
        dir,
        gossip,
        http,
        join,
        &["--insecure", "--exchange-interval", "1"],
        file,
    );
    wait_healthy(&format!("http://127.0.0.1:{http}"), LIMIT);
    node
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The member list of the node whose API is on `http`: (address, state).
fn members(http: u16) -> Vec<(String, String)> {
    let out = Command::new("curl")
        .args(["-s", &format!("http://127.0.0.1:{http}/v1/cluster")])
        .output()
        .expect("curl");
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    view["members"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(|m| Some((m[0].as_str()?.to_string(), m[1].as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn node_id(dir: &Path) -> String {
    let out = chorus(dir, &["--json", "status"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    v["node_id"].as_str().expect("node_id").to_string()
}

fn value_of(dir: &Path) -> String {
    stdout(&chorus(dir, &["get", FP, "cut"]))
}

/// Serves `a` once with a write, stops it, and copies its directory to `b`
/// with `cp -a`. Returns A's node id.
fn node_copied(a: &Path, b: &Path, a_gossip: u16, a_http: u16, a_log: &Path) -> String {
    assert!(chorus(a, &["init"]).status.success());
    let node_a = start(a, a_gossip, a_http, None, a_log);
    put(a, FP, "cut", "v1");
    drop(node_a);
    let copied = Command::new("cp")
        .arg("-a")
        .arg(a)
        .arg(b)
        .status()
        .expect("cp");
    assert!(copied.success());
    node_id(a)
}

/// What a cloned disk looks like: the copy's `place` record names the
/// copy's own device and inode (a clone keeps its inodes), the rest as the
/// original's.
fn as_if_cloned(dir: &Path) {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(dir).expect("stat");
    let path = dir.join("place");
    let text = std::fs::read_to_string(&path).expect("place");
    let since = text
        .split_whitespace()
        .skip_while(|w| *w != "since")
        .nth(1)
        .expect("since")
        .to_string();
    std::fs::write(
        &path,
        format!("dev {} ino {} since {since}\n", meta.dev(), meta.ino()),
    )
    .expect("rewrite place");
}

/// Waits until both directories show both writes (and not the value they
/// overwrote) and hold the same data.
fn wait_converged(a: &Path, b: &Path) {
    wait_until(LIMIT, || {
        [a, b].iter().all(|dir| {
            let shown = value_of(dir);
            shown.contains("from-a") && shown.contains("from-b") && !shown.contains("v1")
        })
    });
    let hash = |dir: &Path| stdout(&chorus(dir, &["hash", FP]));
    wait_until(LIMIT, || hash(a) == hash(b));
}

#[test]
fn a_directory_copied_with_cp_takes_a_new_identity_and_both_writes_are_kept() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let (a_log, b_log) = (tmp.path().join("a.log"), tmp.path().join("b.log"));
    let (a_gossip, a_http, b_gossip, b_http) = (free_port(), free_port(), free_port(), free_port());
    let original = node_copied(&a, &b, a_gossip, a_http, &a_log);

    // The copy's first open (here `chorus init`, which says so) gives it a
    // new node id; the original keeps its own.
    let out = chorus(&b, &["--json", "init"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said: serde_json::Value = serde_json::from_slice(&out.stdout).expect("init JSON");
    assert_eq!(said["old_node_id"].as_str(), Some(original.as_str()));
    let copy_id = node_id(&b);
    assert_ne!(copy_id, original);
    assert_eq!(said["node_id"].as_str(), Some(copy_id.as_str()));
    assert_eq!(node_id(&a), original);

    // Apart, both take a write of the same key, each acknowledged.
    put(&a, FP, "cut", "from-a");
    put(&b, FP, "cut", "from-b");

    // Both start as a cluster: B joins A. Both writes stay, as siblings,
    // on both nodes; no duplicated id is left to find.
    let node_a = start(&a, a_gossip, a_http, None, &a_log);
    let _node_b = start(&b, b_gossip, b_http, Some(a_gossip), &b_log);
    wait_converged(&a, &b);
    let (a_addr, b_addr) = (
        format!("127.0.0.1:{a_gossip}"),
        format!("127.0.0.1:{b_gossip}"),
    );
    wait_until(LIMIT, || {
        members(a_http).contains(&(b_addr.clone(), "up".into()))
            && members(b_http).contains(&(a_addr.clone(), "up".into()))
    });
    assert_eq!(metric(a_http, "gossip_duplicate_identity_total"), 0);
    assert_eq!(metric(b_http, "gossip_duplicate_identity_total"), 0);
    assert!(!read(&a_log).contains("is used by this node and by"));
    drop(node_a);
}

#[test]
fn a_cloned_disk_is_found_by_the_handshake_and_converges_after_taking_a_new_identity() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let (a_log, b_log) = (tmp.path().join("a.log"), tmp.path().join("b.log"));
    let (a_gossip, a_http, b_gossip, b_http) = (free_port(), free_port(), free_port(), free_port());
    let original = node_copied(&a, &b, a_gossip, a_http, &a_log);
    as_if_cloned(&b);
    assert_eq!(node_id(&b), original, "a clone is not found at open");

    // Apart, both take a write of the same key, each acknowledged.
    put(&a, FP, "cut", "from-a");
    put(&b, FP, "cut", "from-b");

    // Both start as a cluster: B joins A.
    let node_a = start(&a, a_gossip, a_http, None, &a_log);
    let node_b = start(&b, b_gossip, b_http, Some(a_gossip), &b_log);

    // Both say so, in their logs and in /metrics.
    wait_until(LIMIT, || {
        let said = |log: &Path| {
            let text = read(log);
            text.contains(&format!("node id {original} is used by this node and by"))
                && text.contains("chorus init --new-identity")
        };
        said(&a_log) && said(&b_log)
    });
    assert!(metric(a_http, "gossip_duplicate_identity_total") > 0);
    assert!(metric(b_http, "gossip_duplicate_identity_total") > 0);

    // Neither marks the other left; and nothing was exchanged: each still
    // holds its own write only.
    std::thread::sleep(Duration::from_secs(3));
    let a_addr = format!("127.0.0.1:{a_gossip}");
    let b_addr = format!("127.0.0.1:{b_gossip}");
    assert!(
        !members(b_http).contains(&(a_addr.clone(), "left".into())),
        "B marked A left: {:?}",
        members(b_http)
    );
    assert!(
        !members(a_http).contains(&(b_addr.clone(), "left".into())),
        "A marked B left: {:?}",
        members(a_http)
    );
    assert_eq!(value_of(&a).trim(), "from-a");
    assert_eq!(value_of(&b).trim(), "from-b");

    // The copy takes a new identity, keeping its data.
    drop(node_b);
    let out = chorus(&b, &["--json", "init", "--new-identity"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let taken: serde_json::Value = serde_json::from_slice(&out.stdout).expect("init JSON");
    assert_eq!(taken["old_node_id"].as_str(), Some(original.as_str()));
    let renewed = node_id(&b);
    assert_ne!(renewed, original);
    assert_eq!(taken["node_id"].as_str(), Some(renewed.as_str()));
    assert_eq!(value_of(&b).trim(), "from-b", "the data stays");

    // Restarted, the two converge: both acknowledged writes are siblings,
    // on both nodes.
    let _node_b = start(&b, b_gossip, b_http, Some(a_gossip), &b_log);
    wait_converged(&a, &b);
    wait_until(LIMIT, || {
        members(a_http).contains(&(b_addr.clone(), "up".into()))
            && members(b_http).contains(&(a_addr.clone(), "up".into()))
    });
    drop(node_a);
}

#[test]
fn new_identity_refuses_an_uninitialized_directory_and_changes_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("none");
    let out = chorus(&dir, &["init", "--new-identity"]);
    assert!(!out.status.success());
    assert!(!dir.join("node-id").exists());
}
