//! Secrets at rest and in `ps`: every directory and file the CLI makes is
//! its owner's only (0700, 0600), and no command takes a secret as an
//! argument (every local user reads arguments in `ps`).

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{CHORUS, chorus, chorus_in, code, ok, stderr};

const SECRET: &str = "correct horse battery staple";

/// Every directory under `root` (itself included) that is not 0700 and
/// every file that is not 0600, with its mode; at most 4 levels deep.
fn loose(root: &Path) -> Vec<String> {
    fn walk(path: &Path, depth: usize, found: &mut Vec<String>) {
        let meta = std::fs::symlink_metadata(path).expect("stat");
        let mode = meta.permissions().mode() & 0o7777;
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        if mode != want {
            found.push(format!("{} {mode:o}", path.display()));
        }
        if meta.is_dir() && depth < 4 {
            for entry in std::fs::read_dir(path).expect("list") {
                walk(&entry.expect("entry").path(), depth + 1, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(root, 0, &mut found);
    found
}

#[test]
fn every_directory_and_file_of_init_user_session_and_cluster_commands_is_private() {
    let tmp = tempfile::tempdir().expect("tmp");
    let node = tmp.path().join("node");
    let ca = tmp.path().join("ca");
    let tls = tmp.path().join("n1-tls");
    let (ca_s, tls_s) = (ca.to_str().expect("utf-8"), tls.to_str().expect("utf-8"));
    // Checked after each command: a later command opening the directory
    // would tighten what an earlier one left loose.
    let check = |step: &str| {
        for root in [&node, &ca, &tls].into_iter().filter(|r| r.exists()) {
            let found = loose(root);
            assert!(found.is_empty(), "after {step}: {found:?}");
        }
    };
    ok(chorus(&node, &["init"]));
    check("init");
    ok(chorus_in(
        &node,
        &["user", "add", "alice"],
        &format!("{SECRET}\n"),
        &[],
    ));
    // The audit log (auth/audit.rs) is new here.
    assert!(
        node.join("audit.log").exists(),
        "the audit log is checked too"
    );
    check("user add");
    ok(chorus_in(
        &node,
        &["session", "create", "--user", "alice"],
        &format!("{SECRET}\n"),
        &[],
    ));
    check("session create");
    ok(chorus(&node, &["cluster", "init", "--ca", ca_s]));
    check("cluster init");
    ok(chorus(
        &node,
        &["cluster", "cert", "n1", "--ca", ca_s, "--out", tls_s],
    ));
    check("cluster cert");
    ok(chorus(
        &node,
        &[
            "cluster", "cert", "n1", "--ca", ca_s, "--out", tls_s, "--renew",
        ],
    ));
    assert!(tls.join("node.crt.old").exists());
    check("cluster cert --renew");
    ok(chorus(&node, &["cluster", "revoke", "n0"]));
    check("cluster revoke");
}

#[test]
fn a_token_on_the_command_line_is_refused_saying_what_to_use_instead() {
    let tmp = tempfile::tempdir().expect("tmp");
    let stage = tmp.path().join("stage");
    for args in [
        &[
            "stage",
            "--upstream",
            "http://127.0.0.1:9",
            "--token",
            "chorus1.x.y",
        ][..],
        &["stage", "--upstream", "http://127.0.0.1:9", "--token"],
        &["stage", "--token", "chorus1.x.y", "status"],
    ] {
        let out = chorus(&stage, args);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("visible to every local user in `ps`")
                && err.contains("CHORUS_TOKEN")
                && err.contains("--token-file"),
            "{args:?}: {err}"
        );
    }
    assert!(!stage.exists(), "a refused command changes nothing");
    let empty = tmp.path().join("empty");
    std::fs::write(&empty, "\n").expect("write");
    let out = chorus(
        &stage,
        &[
            "stage",
            "--upstream",
            "http://127.0.0.1:9",
            "--token-file",
            empty.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("holds no token"), "{}", stderr(&out));
    let out = chorus(
        &stage,
        &[
            "stage",
            "--upstream",
            "http://127.0.0.1:9",
            "--token-file",
            "/nonexistent/token",
        ],
    );
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("cannot read the token"),
        "{}",
        stderr(&out)
    );
}

/// Kills the stage when dropped.
struct Stage(Child);

impl Drop for Stage {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `Authorization` header of the first request a stage started with
/// `token_args` (and `env`, and `stdin`) sends to its upstream.
fn authorization_sent(token_args: &[&str], env: &[(&str, &str)], stdin: &str) -> String {
    let tmp = tempfile::tempdir().expect("tmp");
    let upstream = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = upstream.local_addr().expect("addr").port();
    let mut child = Command::new(CHORUS)
        .arg("--dir")
        .arg(tmp.path().join("stage"))
        .args([
            "stage",
            "--upstream",
            &format!("http://127.0.0.1:{port}"),
            "--follow",
            "app/cfg",
            "--pull-interval",
            "100ms",
        ])
        .args(token_args)
        .env_remove("CHORUS_TOKEN")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chorus stage");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let _stage = Stage(child);
    upstream.set_nonblocking(true).expect("nonblocking");
    let start = Instant::now();
    let stream = loop {
        match upstream.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(start.elapsed() < Duration::from_secs(20), "no request came");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    stream.set_nonblocking(false).expect("blocking");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut found = String::new();
    for line in BufReader::new(&stream).lines() {
        let line = line.expect("read");
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
        {
            found = value.trim().to_string();
        }
    }
    found
}

#[test]
fn the_stage_takes_its_token_from_a_file_stdin_or_the_environment() {
    let tmp = tempfile::tempdir().expect("tmp");
    let file = tmp.path().join("token");
    std::fs::write(&file, "chorus1.from.file\n").expect("write");
    let file = file.to_str().expect("utf-8");
    assert_eq!(
        authorization_sent(&["--token-file", file], &[], ""),
        "Bearer chorus1.from.file"
    );
    assert_eq!(
        authorization_sent(&["--token-file", "-"], &[], "chorus1.from.stdin\n"),
        "Bearer chorus1.from.stdin"
    );
    assert_eq!(
        authorization_sent(&[], &[("CHORUS_TOKEN", "chorus1.from.env")], ""),
        "Bearer chorus1.from.env"
    );
}
