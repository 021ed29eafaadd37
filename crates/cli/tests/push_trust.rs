//! What a pushed (or a peer's) object may claim, on real `chorus serve`
//! processes (issue 16, finding 6; docs/auth.md "What a pushed object may
//! claim"): a value timestamped far ahead is refused and not stored, by a
//! push and by a peer; a value under another node's dot the upstream has
//! not seen is refused; a claimed history of another node is lowered, so
//! that node's later writes still count; the push cannot name this node as
//! its own; the recorded token id is the pushing token's.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use chorus_core::NodeId;
use chorus_core::object::{Hlc, Meta, Object, Value, context_from_string};

mod common;
use common::http::{curl, request, wait_healthy};
use common::{chorus, chorus_in, free_port, metric, ok_json, serve, wait_until};

const DAY_MS: u64 = 86_400_000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .expect("a clock after 1970")
}

fn node(n: u8) -> NodeId {
    NodeId::from_bytes([n; 16])
}

/// A fresh object: one value written by `writer` at `ms`.
fn object(text: &str, ms: u64, writer: NodeId) -> Object {
    let value = Value::data(text.as_bytes(), Hlc(ms << 16), writer);
    Object::modify(None, &Object::empty_context(), value, writer)
}

/// An object with these entries: (node, counter, the value it holds
/// under its newest dot, written by that node now).
fn with_entries(entries: Vec<(NodeId, u64, Option<&str>)>) -> Object {
    let entries = entries
        .into_iter()
        .map(|(id, counter, value)| chorus_core::dvvset::Entry {
            id,
            counter,
            values: value
                .map(|t| Value::data(t.as_bytes(), Hlc(now_ms() << 16), id))
                .into_iter()
                .collect(),
        })
        .collect();
    Object::from_clock(chorus_core::dvvset::Dvvs::from_parts(entries, vec![])).expect("an object")
}

fn b64(o: &Object) -> String {
    base64::engine::general_purpose::STANDARD.encode(o.encode())
}

/// A push body from `stage` of objects under app/cfg.
fn push_body(stage: NodeId, objects: &[(&str, &Object)]) -> String {
    let items: Vec<serde_json::Value> = objects
        .iter()
        .map(|(key, o)| serde_json::json!({"prefix": "app", "sub": "cfg", "key": key, "object": b64(o)}))
        .collect();
    serde_json::json!({"node": stage.to_string(), "priority": 0, "window_ms": 1000, "objects": items})
        .to_string()
}

fn push(url: &str, token: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    request("POST", &format!("{url}/v1/sync/push"), token, Some(body))
}

fn read(url: &str, key: &str) -> (u16, serde_json::Value) {
    request("GET", &format!("{url}/v1/kv/app/cfg/{key}"), None, None)
}

fn texts(read: &serde_json::Value) -> Vec<String> {
    let mut t: Vec<String> = read["values"]
        .as_array()
        .map(|vs| {
            vs.iter()
                .filter_map(|v| v["value"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    t.sort();
    t
}

/// A plaintext node with `extra` flags; returns it, its URL and its
/// gossip port.
fn start(dir: &Path, extra: &[&str], join: Option<u16>) -> (common::Node, String, u16) {
    let (gossip, http) = (free_port(), free_port());
    let mut args = vec!["--insecure", "--exchange-interval", "1"];
    args.extend_from_slice(extra);
    let node = serve(dir, gossip, http, join, &args);
    let url = format!("http://127.0.0.1:{http}");
    wait_healthy(&url, Duration::from_secs(30));
    (node, url, gossip)
}

#[test]
fn a_push_may_bring_only_its_own_new_writes_and_not_from_the_future() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_up, url, _) = start(&tmp.path().join("up"), &[], None);
    let (_, ping) = request("GET", &format!("{url}/health"), None, None);
    let upstream = NodeId::parse_hex(ping["node"].as_str().expect("node id")).expect("hex");
    let (stage, other_stage) = (node(1), node(2));

    // 1. A value timestamped a day ahead (it would win lww for a day): 409,
    //    naming the key and the flag; nothing stored.
    let ahead = object("from-the-future", now_ms() + DAY_MS, stage);
    let fine = object("fine", now_ms(), stage);
    let (status, v) = push(
        &url,
        None,
        &push_body(stage, &[("fine", &fine), ("ahead", &ahead)]),
    );
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["code"], "conflict", "{v}");
    let message = v["message"].as_str().unwrap_or_default();
    for word in ["objects[1]", "app/cfg/ahead", "--max-clock-skew"] {
        assert!(message.contains(word), "{word:?} not in {message}");
    }
    assert_eq!(read(&url, "ahead").0, 404, "not stored");
    assert_eq!(read(&url, "fine").0, 404, "nothing of the push stored");

    // 2. A value under a dot of the upstream it never made (a counter far
    //    above the one its one write of the key took, from its hybrid
    //    clock): 409; the upstream's value stays alone.
    let (s, _) = request_put(&url, "k", "upstream-1");
    assert_eq!(s, 200);
    let forged_up = with_entries(vec![(upstream, 1 << 60, Some("forged"))]);
    let (status, v) = push(&url, None, &push_body(stage, &[("k", &forged_up)]));
    assert_eq!(status, 409, "{v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains(&upstream.to_string()) && m.contains("not seen")),
        "{v}"
    );
    assert_eq!(texts(&read(&url, "k").1), ["upstream-1"]);
    // Under the dot it did make (write 1), the pushed copy is ignored.
    let altered = with_entries(vec![(upstream, 1, Some("forged"))]);
    let (status, v) = push(&url, None, &push_body(stage, &[("k", &altered)]));
    assert_eq!((status, &v["changed"]), (200, &serde_json::json!(0)), "{v}");
    assert_eq!(texts(&read(&url, "k").1), ["upstream-1"]);

    // 3. History claimed for another stage (its writes 1 to 1000, no
    //    value) is lowered to what this node saw (nothing): that stage's
    //    genuine first write, pushed later, is stored, not "already seen".
    let inflated = with_entries(vec![
        (stage, 1, Some("attacker")),
        (other_stage, 1000, None),
    ]);
    let (status, v) = push(&url, None, &push_body(stage, &[("shared", &inflated)]));
    assert_eq!(status, 200, "{v}");
    let (_, r) = read(&url, "shared");
    let context = context_from_string(r["context"].as_str().expect("context")).expect("context");
    assert!(
        context.iter().all(|(n, _)| *n != other_stage),
        "the claimed history is not kept: {context:?}"
    );
    let genuine = object("genuine", now_ms(), other_stage);
    let (status, v) = push(&url, None, &push_body(other_stage, &[("shared", &genuine)]));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["changed"], 1, "{v}");
    assert_eq!(texts(&read(&url, "shared").1), ["attacker", "genuine"]);

    // 4. A push that names the upstream itself as the stage: 409 (it is
    //    well formed; the id is taken in this cluster).
    let (status, v) = push(
        &url,
        None,
        &push_body(upstream, &[("mine", &object("x", now_ms(), upstream))]),
    );
    assert_eq!(status, 409, "{v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("this node's own id")),
        "{v}"
    );
    assert_eq!(read(&url, "mine").0, 404);
}

fn request_put(url: &str, key: &str, value: &str) -> (u16, serde_json::Value) {
    common::http::request_with(
        "PUT",
        &format!("{url}/v1/kv/app/cfg/{key}"),
        None,
        &["--data-binary", value],
    )
}

#[test]
fn a_peer_does_not_store_a_value_timestamped_beyond_its_skew_and_counts_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    // Node A accepts timestamps up to 31 years ahead; node B the default.
    let (_a, url_a, gossip_a) = start(&tmp.path().join("a"), &["--max-clock-skew", "1e9"], None);
    let (_b, url_b, _) = start(&tmp.path().join("b"), &[], Some(gossip_a));
    let http_b: u16 = url_b
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let stage = node(1);
    let ahead = object("from-the-future", now_ms() + DAY_MS, stage);
    let (status, v) = push(&url_a, None, &push_body(stage, &[("ahead", &ahead)]));
    assert_eq!(status, 200, "A takes it: {v}");
    let (s, _) = request_put(&url_a, "canary", "now");
    assert_eq!(s, 200);
    // B gets the ordinary write, counts the refusal, never stores it.
    wait_until(Duration::from_secs(60), || {
        read(&url_b, "canary").0 == 200
            && metric(http_b, "merge_refused_total{reason=\"future_timestamp\"}") > 0
    });
    assert_eq!(read(&url_b, "ahead").0, 404);
    assert_eq!(read(&url_a, "ahead").0, 200);
    let (_, _, text) = curl(&[&format!("{url_b}/metrics")]);
    assert!(
        text.contains("# TYPE chorus_merge_refused_total counter"),
        "{text}"
    );
}

#[test]
fn a_pushed_value_records_the_pushing_tokens_id_not_the_one_it_claims() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("up");
    let secret = "correct horse battery";
    assert!(chorus(&dir, &["init"]).status.success());
    let out = chorus_in(&dir, &["user", "add", "alice"], &format!("{secret}\n"), &[]);
    assert!(out.status.success());
    let (_up, url, _) = start(&dir, &["--auth"], None);
    let out = chorus_in(
        &dir,
        &["--json", "session", "create", "--user", "alice"],
        &format!("{secret}\n"),
        &[],
    );
    let session = ok_json(&out)["token"].as_str().expect("token").to_string();
    let body = serde_json::json!({"scope": ["app/*"], "access": "read-write", "ttl_secs": 600});
    let (status, v) = request(
        "POST",
        &format!("{url}/v1/auth/tokens"),
        Some(&session),
        Some(&body.to_string()),
    );
    assert_eq!(status, 201, "{v}");
    let (id, token) = (
        v["id"].as_str().expect("id").to_string(),
        v["token"].as_str().expect("token").to_string(),
    );
    // The stage's value claims another token's id and the top priority.
    let stage = node(1);
    let claimed = Meta {
        token: Some("0123456789abcdef".into()),
        priority: 255,
        window_ms: 86_400_000,
    };
    let value = Value::data(b"staged", Hlc(now_ms() << 16), stage).with_meta(claimed);
    let o = Object::modify(None, &Object::empty_context(), value, stage);
    let (status, v) = push(&url, Some(&token), &push_body(stage, &[("k", &o)]));
    assert_eq!(status, 200, "{v}");
    // Read on the directory (its owner sees token ids).
    let read = ok_json(&chorus(&dir, &["--json", "get", "app/cfg", "k"]));
    let meta = &read["values"][0]["meta"];
    assert_eq!(meta["token"], id.as_str(), "{read}");
    // At most the push's own priority (0) and window (1000 ms).
    assert_eq!(meta["priority"], 0, "{read}");
    assert_eq!(meta["window_ms"], 1000, "{read}");
}
