//! What the tests that run `chorus serve` share: starting nodes as real
//! processes (killed when dropped), free loopback ports, running the CLI
//! on a directory, and waiting for a condition.

#![allow(dead_code)] // each test binary uses part of it

use std::io::Write as _;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub(crate) const CHORUS: &str = env!("CARGO_BIN_EXE_chorus");

/// A running node, killed when dropped.
pub(crate) struct Node(pub(crate) Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Starts `chorus serve` on `dir` with peers on `gossip`, the API on
/// `http`, joining `join` (a loopback port) if given, with `extra`
/// arguments (`--insecure` or `--tls DIR`, intervals...).
pub(crate) fn serve(dir: &Path, gossip: u16, http: u16, join: Option<u16>, extra: &[&str]) -> Node {
    let mut cmd = Command::new(CHORUS);
    cmd.arg("--dir")
        .arg(dir)
        .arg("serve")
        .args(extra)
        .arg("--gossip")
        .arg(format!("127.0.0.1:{gossip}"))
        .arg("--http")
        .arg(format!("127.0.0.1:{http}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(j) = join {
        cmd.arg("--join").arg(format!("127.0.0.1:{j}"));
    }
    Node(cmd.spawn().expect("start chorus serve"))
}

/// Runs the CLI on a data directory.
pub(crate) fn chorus(dir: &Path, args: &[&str]) -> Output {
    Command::new(CHORUS)
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run chorus")
}

/// The counter `chorus_NAME` from the /metrics of the node whose API is on
/// `http` (read with curl).
pub(crate) fn metric(http: u16, name: &str) -> u64 {
    let out = Command::new("curl")
        .args(["-s", &format!("http://127.0.0.1:{http}/metrics")])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("chorus_{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no chorus_{name} in /metrics:\n{text}"))
}

/// Waits until `done`, failing the test after `limit`.
#[track_caller]
pub(crate) fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "not reached within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The JSON a successful `chorus` run printed (fails the test otherwise).
pub(crate) fn ok_json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// Runs the CLI on a directory with `stdin` as its input and `env` set.
pub(crate) fn chorus_in(dir: &Path, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(CHORUS)
        .arg("--dir")
        .arg(dir)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run chorus");
    // A command that refuses its arguments exits without reading stdin:
    // a broken pipe here is not a failure.
    if let Err(e) = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
    {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    child.wait_with_output().expect("wait chorus")
}
