//! The audit log of a real `chorus serve --auth` cannot be flooded away:
//! requests refused without a token (long paths, long headers, long
//! bodies) leave every earlier record in place, are written in full only
//! for the first few from a source and then summarised, and keep the
//! files small; a URI over the limit is refused before any of it.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

mod common;
use common::http::{request, request_with, wait_healthy};
use common::{Node, chorus, chorus_in, free_port, metric, serve, wait_until};

const SECRET: &str = "correct horse battery";
/// The node's limit on a request's path and query, in bytes.
const URI_MAX: usize = 8 << 10;
/// The longest line the audit log holds.
const LINE_MAX: usize = 2048;

/// One keep-alive HTTP/1.1 connection, reopened when the server closes it.
struct Conn {
    port: u16,
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(port: u16) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        Conn {
            port,
            reader: BufReader::new(stream),
        }
    }

    /// Sends one request and reads its answer: the status.
    fn send(&mut self, method: &str, target: &str, headers: &str, body: &[u8]) -> u16 {
        for _ in 0..3 {
            match self.try_send(method, target, headers, body) {
                Ok((status, close)) => {
                    if close {
                        *self = Conn::open(self.port);
                    }
                    return status;
                }
                Err(_) => *self = Conn::open(self.port),
            }
        }
        panic!(
            "{method} {} failed three times",
            &target[..40.min(target.len())]
        );
    }

    fn try_send(
        &mut self,
        method: &str,
        target: &str,
        headers: &str,
        body: &[u8],
    ) -> std::io::Result<(u16, bool)> {
        let head = format!(
            "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Content-Length: {}\r\n\r\n",
            body.len()
        );
        let stream = self.reader.get_mut();
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no status line: {line:?}")))?;
        let (mut length, mut close) = (0usize, false);
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap_or((header, ""));
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
            if name.eq_ignore_ascii_case("connection") && value.trim() == "close" {
                close = true;
            }
        }
        let mut answer = vec![0u8; length];
        self.reader.read_exact(&mut answer)?;
        Ok((status, close))
    }
}

/// Every line of the audit files (`audit.log` and the rotated ones), and
/// their total size in bytes.
fn audit_lines(dir: &Path) -> (Vec<String>, u64) {
    let (mut lines, mut bytes) = (Vec::new(), 0);
    for entry in std::fs::read_dir(dir).expect("read the directory") {
        let entry = entry.expect("an entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "audit.log" || name.starts_with("audit.log.") {
            let text = std::fs::read(entry.path()).expect("an audit file");
            bytes += text.len() as u64;
            lines.extend(String::from_utf8_lossy(&text).lines().map(str::to_string));
        }
    }
    (lines, bytes)
}

fn parse(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:.200}"))
}

/// A session over HTTP: (id, token).
fn login(url: &str, user: &str) -> (String, String) {
    let body = serde_json::json!({"user": user, "secret": SECRET}).to_string();
    let (status, v) = request(
        "POST",
        &format!("{url}/v1/auth/sessions"),
        None,
        Some(&body),
    );
    assert_eq!(status, 201, "{v}");
    (
        v["session"].as_str().expect("session").to_string(),
        v["token"].as_str().expect("token").to_string(),
    )
}

/// Requests sent by the flood: 10,000 with long paths or headers, then
/// logins with a 1 MB user name.
const FLOOD_PATHS: usize = 10_000;
const FLOOD_LOGINS: usize = 128;

/// The `i`th refused request of the flood: (method, target, headers,
/// body). A path just under the limit on a route that logs its path, a
/// long bearer token, a path over the limit (of `x`, `y` and `z`, which
/// no other request holds), or a login with a 1 MB user name.
fn flood_request(i: usize) -> (&'static str, String, String, Vec<u8>) {
    let fill = |n: usize| "abcdef".chars().cycle().take(n).collect::<String>();
    if i >= FLOOD_PATHS {
        let body = serde_json::json!({"user": fill(1_000_000), "secret": "wrong secret"});
        let headers = "Content-Type: application/json\r\n".to_string();
        return (
            "POST",
            "/v1/auth/sessions".into(),
            headers,
            body.to_string().into_bytes(),
        );
    }
    let none = String::new;
    match i % 10 {
        9 => {
            let long: String = "xyz".chars().cycle().take(URI_MAX + 300).collect();
            ("GET", format!("/v1/kv/app/cfg/{long}"), none(), Vec::new())
        }
        0..=3 => {
            let route = "/v1/auth/sessions/";
            (
                "DELETE",
                format!("{route}{}", fill(URI_MAX - route.len() - 8)),
                none(),
                Vec::new(),
            )
        }
        4..=6 => {
            let route = "/v1/auth/tokens/";
            (
                "DELETE",
                format!("{route}{}", fill(URI_MAX - route.len() - 8)),
                none(),
                Vec::new(),
            )
        }
        _ => {
            let bearer = format!("Authorization: Bearer chorus1.{}\r\n", fill(7_000));
            ("GET", "/v1/kv/app/cfg/color".into(), bearer, Vec::new())
        }
    }
}

#[test]
fn ten_thousand_oversize_refused_requests_leave_the_earlier_audit_records_in_place() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path().join("n1");
    assert!(chorus(&d, &["init"]).status.success());
    let out = chorus_in(&d, &["user", "add", "alice"], &format!("{SECRET}\n"), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let http = free_port();
    // A short window, so that the summaries come within the test.
    let extra = ["--auth", "--insecure", "--audit-window", "10"];
    let _node: Node = serve(&d, free_port(), http, None, &extra);
    let url = format!("http://127.0.0.1:{http}");
    wait_healthy(&url, Duration::from_secs(30));

    // Audited operations: a session, a write, a token, a revocation.
    let (session, token) = login(&url, "alice");
    let (doomed, _) = login(&url, "alice");
    let put = format!("{url}/v1/kv/app/cfg/color");
    let (status, v) = request_with("PUT", &put, Some(&token), &["--data-binary", "green"]);
    assert_eq!(status, 200, "{v}");
    let body = r#"{"scope": ["app/*"], "access": "read", "ttl_secs": 600}"#;
    let (status, v) = request(
        "POST",
        &format!("{url}/v1/auth/tokens"),
        Some(&token),
        Some(body),
    );
    assert_eq!(status, 201, "{v}");
    let minted = v["id"].as_str().expect("token id").to_string();
    let revoke = format!("{url}/v1/auth/sessions/{doomed}");
    let (status, v) = request("DELETE", &revoke, Some(&token), None);
    assert_eq!(status, 200, "{v}");
    let (before, _) = audit_lines(&d);
    let earlier: Vec<String> = before
        .iter()
        .filter(|l| parse(l)["outcome"] == "ok")
        .cloned()
        .collect();
    for (op, target) in [
        ("user.add", "alice"),
        ("session.create", session.as_str()),
        ("session.create", doomed.as_str()),
        ("put", "app/cfg"),
        ("token.create", minted.as_str()),
        ("session.revoke", doomed.as_str()),
    ] {
        assert!(
            earlier
                .iter()
                .any(|l| parse(l)["op"] == op && parse(l)["target"] == target),
            "no {op} {target} line: {before:?}"
        );
    }

    // The flood, over 8 connections at once, without a token.
    let threads = 8;
    let total = FLOOD_PATHS + FLOOD_LOGINS;
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut conn = Conn::open(http);
                    (t..total)
                        .step_by(threads)
                        .map(|i| {
                            let (method, target, headers, body) = flood_request(i);
                            conn.send(method, &target, &headers, &body)
                        })
                        .collect::<Vec<u16>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a flooding thread"))
            .collect()
    });
    assert_eq!(statuses.len(), total);
    // A URI over the limit is refused before the token check; the others
    // reach it and are audited (400: the user name of a login).
    assert_eq!(
        statuses.iter().filter(|s| **s == 414).count(),
        FLOOD_PATHS / 10
    );
    let audited = statuses.iter().filter(|s| matches!(**s, 400 | 401)).count() as u64;
    assert_eq!(audited as usize, total - FLOOD_PATHS / 10, "{statuses:?}");

    // Every earlier record is still there.
    let (lines, bytes) = audit_lines(&d);
    for l in &earlier {
        assert!(lines.contains(l), "lost: {l}");
    }
    // Small files, short lines, and no path over the limit in them.
    assert!(bytes < 1 << 20, "the audit files hold {bytes} bytes");
    for l in &lines {
        assert!(l.len() <= LINE_MAX, "a line of {} bytes: {l:.200}", l.len());
        parse(l);
    }
    assert!(
        !lines.iter().any(|l| l.contains("xyzxyzxyz")),
        "a path over the limit was audited"
    );

    // Once the window is over every refusal is either a line or counted
    // in a summary.
    let refusals = |lines: &[String]| -> u64 {
        lines
            .iter()
            .map(|l| parse(l))
            .map(|v| match v["event"].as_str() {
                Some("refusals_suppressed") => v["count"].as_u64().expect("a count"),
                _ => u64::from(v["outcome"] == "refused"),
            })
            .sum()
    };
    let before_refusals = refusals(&before);
    wait_until(Duration::from_secs(60), || {
        refusals(&audit_lines(&d).0) - before_refusals == audited
    });
    let (lines, _) = audit_lines(&d);
    let summaries: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| parse(l))
        .filter(|v| v["event"] == "refusals_suppressed")
        .collect();
    assert!(!summaries.is_empty(), "no summary line");
    for s in &summaries {
        assert_eq!(s["source"], "127.0.0.1", "{s}");
        let codes = s["codes"].as_object().expect("codes");
        assert!(
            codes
                .keys()
                .all(|c| c == "unauthorized" || c == "bad_request"),
            "{s}"
        );
        assert!(
            s["since_ms"].as_u64().is_some() && s["time_ms"].as_u64().is_some(),
            "{s}"
        );
    }
    let counted: u64 = summaries.iter().filter_map(|s| s["count"].as_u64()).sum();
    // Most were counted rather than written: at most 10 lines a window.
    assert!(counted * 2 > audited, "{counted} of {audited} counted");
    assert_eq!(metric(http, "audit_suppressed_total"), counted);
}

#[test]
fn audit_bounds_out_of_range_are_refused_at_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path().join("n1");
    assert!(chorus(&d, &["init"]).status.success());
    for (flag, value, words) in [
        ("--audit-window", "0", "from 1 to 86400"),
        ("--audit-max-age", "nan", "days"),
        ("--audit-max-age", "0", "days"),
        ("--audit-files", "0", "1..=1000"),
        ("--audit-file-mib", "0", "1..=4096"),
    ] {
        // A node that started by mistake is killed, and the test fails.
        let mut child = std::process::Command::new(common::CHORUS)
            .arg("--dir")
            .arg(&d)
            .args(["serve", "--insecure", "--auth", "--gossip", "127.0.0.1:0"])
            .args(["--http", "127.0.0.1:0", flag, value])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start chorus serve");
        let started = std::time::Instant::now();
        while child.try_wait().expect("wait").is_none() {
            if started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("serve {flag} {value} started");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().expect("its output");
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(flag) && err.contains(words),
            "{flag} {value}: {err}"
        );
    }
}
