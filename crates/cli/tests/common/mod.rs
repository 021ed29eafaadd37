//! What the integration tests share: starting nodes as real processes
//! (killed when dropped), free loopback ports, running the CLI on a
//! directory and reading what it printed, and waiting for a condition.
//! HTTP helpers (curl) are in [`http`].

#![allow(dead_code)] // each test binary uses part of it

pub(crate) mod http;

use std::io::Write as _;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `chorus` binary under test.
pub(crate) const CHORUS: &str = env!("CARGO_BIN_EXE_chorus");

/// A running node, killed when dropped.
pub(crate) struct Node(pub(crate) Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port nothing listens on right now.
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
    serve_logged(dir, gossip, http, join, extra, Stdio::null())
}

/// [`serve`] with the node's stderr sent to `stderr` (a log file).
pub(crate) fn serve_logged(
    dir: &Path,
    gossip: u16,
    http: u16,
    join: Option<u16>,
    extra: &[&str],
    stderr: impl Into<Stdio>,
) -> Node {
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
        .stderr(stderr);
    if let Some(j) = join {
        cmd.arg("--join").arg(format!("127.0.0.1:{j}"));
    }
    Node(cmd.spawn().expect("start chorus serve"))
}

/// Runs the CLI on a data directory (`$CHORUS_DIR` removed: only `--dir`
/// names the directory).
pub(crate) fn chorus(dir: &Path, args: &[&str]) -> Output {
    Command::new(CHORUS)
        .arg("--dir")
        .arg(dir)
        .args(args)
        .env_remove("CHORUS_DIR")
        .output()
        .expect("run chorus")
}

/// Runs `chorus SUBCOMMAND ARGS...` on a data directory.
pub(crate) fn chorus_sub(dir: &Path, subcommand: &str, args: &[&str]) -> Output {
    let mut all = vec![subcommand];
    all.extend_from_slice(args);
    chorus(dir, &all)
}

/// Runs the CLI on a directory with `stdin` as its input and `env` set;
/// a command that exits without reading its input is not a failure.
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

/// Runs the CLI on a directory with `input` as its stdin, which it must
/// accept whole (stricter than [`chorus_in`]: any write error fails).
pub(crate) fn chorus_with_stdin(dir: &Path, args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(CHORUS)
        .arg("--dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run chorus");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

/// The exit code of a run (fails the test if it was killed by a signal).
pub(crate) fn code(o: &Output) -> i32 {
    o.status.code().expect("exited normally")
}

/// What a run printed on stdout, as text.
pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// What a run printed on stderr, as text.
pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The JSON a run printed on stdout, whatever its exit code (fails the
/// test if it is not JSON).
pub(crate) fn stdout_json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

/// A run that exited 0 (fails the test otherwise, showing its stderr).
#[track_caller]
pub(crate) fn ok(o: Output) -> Output {
    assert_eq!(code(&o), 0, "stderr: {}", stderr(&o));
    o
}

/// Fails the test unless the run succeeded; the message is its stderr.
#[track_caller]
pub(crate) fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The JSON a successful `chorus` run printed (fails the test otherwise).
#[track_caller]
pub(crate) fn ok_json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// `chorus put FULL_PREFIX KEY VALUE` on `dir`, which must succeed.
#[track_caller]
pub(crate) fn put(dir: &Path, full_prefix: &str, key: &str, value: &str) {
    let out = chorus(dir, &["put", full_prefix, key, value]);
    assert!(
        out.status.success(),
        "put {full_prefix} {key} was not acknowledged: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A key's value in `dir` (`chorus get`, trimmed), if it has one.
pub(crate) fn get(dir: &Path, full_prefix: &str, key: &str) -> Option<String> {
    let out = chorus(dir, &["get", full_prefix, key]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
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
