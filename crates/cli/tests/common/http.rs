//! Driving a node's HTTP API with curl, as any client would: requests,
//! their status, headers and JSON bodies, and starting a node whose API
//! answers.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{Node, free_port, serve};

/// Runs `curl` with `options` then `args`, `-w "\n%{http_code}"` among the
/// options; returns (exit code, HTTP status, stderr, body).
fn run_curl(options: &[&str], args: &[&str]) -> (i32, u16, String, String) {
    let out = Command::new("curl")
        .args(options)
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        out.status.code().unwrap_or(-1),
        status.trim().parse().unwrap_or(0),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        body.to_string(),
    )
}

/// Runs `curl -s ARGS`; returns (exit code, HTTP status, body).
pub(crate) fn curl(args: &[&str]) -> (i32, u16, String) {
    let (code, status, _, body) = run_curl(&["-s", "-w", "\n%{http_code}"], args);
    (code, status, body)
}

/// Runs `curl -s ARGS` keeping the response headers; returns (exit code,
/// HTTP status, headers, body). Read a header with [`header`].
pub(crate) fn curl_with_headers(args: &[&str]) -> (i32, u16, String, String) {
    run_curl(&["-s", "-D", "/dev/stderr", "-w", "\n%{http_code}"], args)
}

/// A response body as JSON (fails the test if it is not JSON).
pub(crate) fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The value of the header `name` (any case) in `headers`, if there.
pub(crate) fn header(headers: &str, name: &str) -> Option<String> {
    headers.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// One HTTP request with curl, with `Authorization: Bearer TOKEN` if a
/// token is given and a JSON body if one is: (status, JSON body or null).
pub(crate) fn request(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    match body {
        Some(b) => request_with(
            method,
            url,
            token,
            &["-H", "Content-Type: application/json", "--data-binary", b],
        ),
        None => request_with(method, url, token, &[]),
    }
}

/// [`request`] with `extra` curl arguments instead of a JSON body.
pub(crate) fn request_with(
    method: &str,
    url: &str,
    token: Option<&str>,
    extra: &[&str],
) -> (u16, serde_json::Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-w", "\n%{http_code}", "-X", method, url]);
    if let Some(t) = token {
        cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    cmd.args(extra);
    let out = cmd.output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        status.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// Waits until `GET URL/health` answers 200, failing the test after
/// `limit`.
#[track_caller]
pub(crate) fn wait_healthy(url: &str, limit: Duration) {
    let health = format!("{url}/health");
    let started = Instant::now();
    while curl(&["-f", &health]).1 != 200 {
        assert!(
            started.elapsed() < limit,
            "the API at {url} never came up within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts a plaintext node (peers on `gossip`, the API on `http`) and
/// waits up to 20 s until its API answers; returns it and its URL.
pub(crate) fn start_at(dir: &Path, gossip: u16, http: u16) -> (Node, String) {
    let node = serve(dir, gossip, http, None, &["--insecure"]);
    let url = format!("http://127.0.0.1:{http}");
    wait_healthy(&url, Duration::from_secs(20));
    (node, url)
}

/// Starts a plaintext node on free ports and waits until its API answers;
/// returns it and its URL.
pub(crate) fn start(dir: &Path) -> (Node, String) {
    let (node, url, _) = start_with_gossip(dir);
    (node, url)
}

/// [`start`], also returning the node's gossip address.
pub(crate) fn start_with_gossip(dir: &Path) -> (Node, String, String) {
    let (gossip, http) = (free_port(), free_port());
    let (node, url) = start_at(dir, gossip, http);
    (node, url, format!("127.0.0.1:{gossip}"))
}

/// A token over HTTP from a session token: (id, token).
pub(crate) fn http_token(
    url: &str,
    session: &str,
    scope: &[&str],
    access: &str,
    ttl: u64,
) -> (String, String) {
    let body = serde_json::json!({"scope": scope, "access": access, "ttl_secs": ttl}).to_string();
    let (status, v) = request(
        "POST",
        &format!("{url}/v1/auth/tokens"),
        Some(session),
        Some(&body),
    );
    assert_eq!(status, 201, "{v}");
    (
        v["id"].as_str().expect("id").to_string(),
        v["token"].as_str().expect("token").to_string(),
    )
}
