//! `chorus stage`: a stage directory pushing to a `chorus serve` upstream,
//! both real processes, driven with the CLI and curl: offline writes
//! arriving in a batch after the quiet period, a SIGKILL midway through
//! pushing, compaction outrunning the push cursor, near-simultaneous
//! writes and priorities, pulls, bad input, and `chorus stage status`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::http::{curl, json, start_at, wait_healthy};
use common::{
    CHORUS, Node, assert_success, chorus, chorus_in, free_port, get, ok_json, put, serve,
    wait_until,
};

/// A running `chorus stage`, killed (SIGKILL) when dropped; its stderr
/// goes to a file.
struct Stage {
    child: Child,
    log: PathBuf,
}

impl Stage {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `chorus stage` and waits until it runs (its log says so).
fn stage(dir: &Path, log: &Path, args: &[&str]) -> Stage {
    let started = |log: &Path| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches("chorus stage: staging ")
            .count()
    };
    let before = started(log);
    let err = File::options()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let child = Command::new(CHORUS)
        .arg("--dir")
        .arg(dir)
        .arg("stage")
        .args(args)
        .env_remove("CHORUS_TOKEN")
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .expect("start chorus stage");
    let stage = Stage {
        child,
        log: log.to_path_buf(),
    };
    wait_until(Duration::from_secs(20), || started(log) > before);
    stage
}

/// Starts an upstream on `http` and waits until its API answers.
fn upstream(dir: &Path, http: u16) -> Node {
    start_at(dir, free_port(), http).0
}

/// The keys of a full prefix upstream and their values (siblings joined
/// with `|`, sorted).
fn upstream_keys(http: u16, fp: &str) -> std::collections::BTreeMap<String, String> {
    // Lists are paged: follow `next` to the end.
    let mut keys = std::collections::BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let url = match &after {
            None => format!("http://127.0.0.1:{http}/v1/kv/{fp}?limit=10000"),
            Some(a) => format!("http://127.0.0.1:{http}/v1/kv/{fp}?limit=10000&after={a}"),
        };
        let (_, status, body) = curl(&[&url]);
        if status != 200 {
            return keys;
        }
        let page = json(&body);
        for k in page["keys"].as_array().into_iter().flatten() {
            let mut values: Vec<String> = k["values"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| v["value"].as_str().unwrap_or("<deleted>").to_string())
                .collect();
            values.sort();
            keys.insert(
                k["key"].as_str().unwrap_or_default().to_string(),
                values.join("|"),
            );
        }
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => return keys,
        }
    }
}

fn status(dir: &Path) -> serde_json::Value {
    ok_json(&chorus(dir, &["--json", "stage", "status"]))
}

/// Writes `count` keys `TAG-i` = `value i from TAG` into the stage, one
/// commit each, with one process.
fn fill(dir: &Path, fp: &str, count: u64, tag: &str) -> Output {
    chorus(
        dir,
        &["stage", "fill", fp, &count.to_string(), "--tag", tag],
    )
}

fn expect_all(keys: &std::collections::BTreeMap<String, String>, count: u64, tag: &str) {
    for i in 0..count {
        assert_eq!(
            keys.get(&format!("{tag}-{i}")).map(String::as_str),
            Some(format!("value {i} from {tag}").as_str()),
            "{tag}-{i} upstream"
        );
    }
}

#[test]
fn offline_writes_are_kept_and_arrive_in_one_batch_after_the_quiet_period() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (st, up) = (tmp.path().join("stage"), tmp.path().join("up"));
    let http = free_port();
    let url = format!("http://127.0.0.1:{http}");
    // The upstream is down: the stage starts anyway.
    let mut s = stage(
        &st,
        &tmp.path().join("stage.log"),
        &["--upstream", &url, "--quiet", "1s"],
    );
    let out = fill(&st, "app/cfg", 1000, "k");
    assert_success(&out);
    // Every write is local and waiting; the failure is visible.
    wait_until(Duration::from_secs(10), || {
        let s = status(&st);
        s["waiting"] == 1000 && s["last_error"]["message"].is_string()
    });
    let before = status(&st);
    assert_eq!(before["running"], true, "{before}");
    assert_eq!(before["pushes_total"], 0, "{before}");
    assert!(
        before["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("cannot reach the upstream")),
        "{before}"
    );
    assert!(s.log().contains("keeping everything"), "{}", s.log());
    // The upstream comes up: everything arrives, in one push.
    let _up = upstream(&up, http);
    let started = Instant::now();
    wait_until(Duration::from_secs(60), || status(&st)["waiting"] == 0);
    let keys = upstream_keys(http, "app/cfg");
    assert_eq!(keys.len(), 1000, "every key arrived");
    expect_all(&keys, 1000, "k");
    let after = status(&st);
    assert_eq!(after["pushes_total"], 1, "one batch: {after}");
    assert_eq!(after["last_push"]["keys"], 1000, "{after}");
    assert_eq!(after["last_push"]["requests"], 1, "{after}");
    assert!(started.elapsed() < Duration::from_secs(60));
    // Nothing is pushed twice, and the upstream's copy comes back only as
    // a pull (never pushed back).
    std::thread::sleep(Duration::from_millis(2500));
    let later = status(&st);
    assert_eq!(later["pushes_total"], 1, "{later}");
    assert_eq!(later["waiting"], 0, "{later}");
    assert!(
        s.log().contains("pushed 1000 key(s) in 1 request(s)"),
        "{}",
        s.log()
    );
    s.kill();
    // Stopped, the status still reads.
    let stopped = status(&st);
    assert_eq!(stopped["running"], false, "{stopped}");
    assert_eq!(stopped["keys_pushed_total"], 1000, "{stopped}");
}

#[test]
fn sigkill_midway_through_pushing_loses_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (st, up) = (tmp.path().join("stage"), tmp.path().join("up"));
    let http = free_port();
    let _up = upstream(&up, http);
    let url = format!("http://127.0.0.1:{http}");
    let log = tmp.path().join("stage.log");
    let args = [
        "--upstream",
        url.as_str(),
        "--quiet",
        "1s",
        "--batch",
        "100",
    ];
    let mut s = stage(&st, &log, &args);
    let total = 20_000u64;
    let mut writer = Command::new(CHORUS)
        .arg("--dir")
        .arg(&st)
        .args(["stage", "fill", "app/cfg", &total.to_string(), "--tag", "k"])
        .stdout(Stdio::null())
        .spawn()
        .expect("start the writer");
    // Batches of 100 go up while the writer writes; kill the stage midway.
    wait_until(Duration::from_secs(60), || {
        status(&st)["keys_pushed_total"].as_u64().unwrap_or(0) >= 1000
    });
    s.kill();
    let at_kill = upstream_keys(http, "app/cfg").len() as u64;
    assert!(at_kill >= 1000 && at_kill < total, "midway: {at_kill}");
    assert!(writer.wait().expect("writer").success());
    assert!(status(&st)["waiting"].as_u64().unwrap_or(0) > 0);
    // Restarted, it pushes from its cursor: everything arrives.
    let _s = stage(&st, &log, &args);
    wait_until(Duration::from_secs(120), || status(&st)["waiting"] == 0);
    let keys = upstream_keys(http, "app/cfg");
    assert_eq!(keys.len() as u64, total);
    expect_all(&keys, total, "k");
    assert!(
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("written since the last acknowledged push"),
        "the restart resumed from the cursor"
    );
    // A full pull pages through more keys than one answer holds.
    let base = format!("http://127.0.0.1:{http}/v1/sync/pull?prefix=app&sub=cfg");
    let first = json(&curl(&[&base]).2);
    assert_eq!(first["more"], true);
    let after = first["after"].as_str().expect("after token");
    let second = json(&curl(&[&format!("{base}&after={after}")]).2);
    let mut seen = std::collections::BTreeSet::new();
    for page in [&first, &second] {
        for o in page["objects"].as_array().into_iter().flatten() {
            assert!(seen.insert(o["key"].as_str().unwrap_or_default().to_string()));
        }
    }
    assert_eq!(second["more"], false);
    assert_eq!(seen.len() as u64, total);
}

#[test]
fn compaction_past_the_push_cursor_falls_back_to_pushing_every_key() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (st, up) = (tmp.path().join("stage"), tmp.path().join("up"));
    let http = free_port();
    let _up = upstream(&up, http);
    let url = format!("http://127.0.0.1:{http}");
    let log = tmp.path().join("stage.log");
    let args = ["--upstream", url.as_str(), "--quiet", "200ms"];
    let mut s = stage(&st, &log, &args);
    assert!(fill(&st, "app/a", 10, "first").status.success());
    wait_until(Duration::from_secs(20), || {
        let s = status(&st);
        s["waiting"] == 0 && s["push_cursor"].is_string()
    });
    assert_eq!(upstream_keys(http, "app/a").len(), 10);
    let full_before = status(&st)["full_pushes"].as_u64().expect("a count");
    s.kill();
    // Written while the daemon is down, then compacted away from the log.
    assert!(fill(&st, "app/b", 50, "late").status.success());
    let out = chorus(&st, &["compact"]);
    assert_success(&out);
    let _s = stage(&st, &log, &args);
    wait_until(Duration::from_secs(30), || {
        upstream_keys(http, "app/b").len() == 50
    });
    expect_all(&upstream_keys(http, "app/b"), 50, "late");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("compaction outran the push cursor"), "{text}");
    wait_until(Duration::from_secs(10), || status(&st)["waiting"] == 0);
    assert_eq!(status(&st)["full_pushes"], full_before + 1);
}

/// Writes `value` at `fp/key` upstream over HTTP.
fn put_upstream(http: u16, fp: &str, key: &str, value: &str) {
    let url = format!("http://127.0.0.1:{http}/v1/kv/{fp}/{key}");
    assert_eq!(curl(&["-X", "PUT", "--data-binary", value, &url]).1, 200);
}

fn reports_for(dir: &Path, key: &str) -> Vec<serde_json::Value> {
    status(dir)["recent_reports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["key"] == key)
        .cloned()
        .collect()
}

#[test]
fn near_simultaneous_writes_are_reported_and_priorities_settle_them() {
    let tmp = tempfile::tempdir().expect("tmp");
    let up = tmp.path().join("up");
    let http = free_port();
    let _up = upstream(&up, http);
    let url = format!("http://127.0.0.1:{http}");
    let (low, high) = (tmp.path().join("low"), tmp.path().join("high"));
    let (low_log, high_log) = (tmp.path().join("low.log"), tmp.path().join("high.log"));
    let common = [
        "--upstream",
        url.as_str(),
        "--quiet",
        "200ms",
        "--window",
        "5s",
    ];
    let s_low = stage(&low, &low_log, &common);
    let mut high_args = common.to_vec();
    high_args.extend(["--priority", "5"]);
    let s_high = stage(&high, &high_log, &high_args);

    // Equal priorities: the upstream writes, the stage writes within the
    // window without having seen it: reported, kept as siblings.
    put_upstream(http, "app/eq", "x", "upstream");
    put(&low, "app/eq", "x", "staged");
    wait_until(Duration::from_secs(20), || {
        !reports_for(&low, "x").is_empty()
    });
    let r = &reports_for(&low, "x")[0];
    assert_eq!(r["outcome"], "siblings", "{r}");
    assert_eq!(r["full_prefix"], "app/eq");
    assert_eq!(r["pushed"][0]["value"], "staged", "{r}");
    assert_eq!(r["concurrent"][0]["value"], "upstream", "{r}");
    assert!(r["pushed"][0]["timestamp"].is_u64() && r["concurrent"][0]["node"].is_string());
    assert_eq!(
        upstream_keys(http, "app/eq").get("x").map(String::as_str),
        Some("staged|upstream")
    );
    assert!(
        s_low
            .log()
            .contains("WARNING near-simultaneous write on app/eq/x"),
        "{}",
        s_low.log()
    );
    // Upstream, a record under $stage/reports (watchers see it as a change).
    let (_, status_code, body) = curl(&[&format!("{url}/v1/kv/$stage/reports")]);
    assert_eq!(status_code, 200, "{body}");
    let records = json(&body);
    let record = records["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|k| {
            k["key"]
                .as_str()
                .is_some_and(|key| key.ends_with("app/eq/x"))
        })
        .expect("an upstream report record");
    let text = record["values"][0]["value"].as_str().expect("JSON text");
    assert_eq!(json(text)["outcome"], "siblings");

    // A higher priority wins: the upstream settles the siblings to the
    // pushed value in the same commit; the loser's bytes are in the report.
    put_upstream(http, "app/prio", "y", "upstream");
    put(&high, "app/prio", "y", "important");
    wait_until(Duration::from_secs(20), || {
        !reports_for(&high, "y").is_empty()
    });
    let r = &reports_for(&high, "y")[0];
    assert_eq!(r["outcome"], "pushed_won", "{r}");
    assert_eq!(
        r["concurrent"][0]["value"], "upstream",
        "the loser is recorded: {r}"
    );
    assert_eq!(
        upstream_keys(http, "app/prio").get("y").map(String::as_str),
        Some("important")
    );
    assert!(s_high.log().contains("pushed_won"), "{}", s_high.log());
    // And the stage pulls the settled value back.
    wait_until(Duration::from_secs(20), || {
        let out = chorus(&high, &["--json", "get", "app/prio", "y"]);
        out.status.success() && ok_json(&out)["values"].as_array().map(Vec::len) == Some(1)
    });

    // The settled value records the priority and window it won with...
    let (_, _, body) = curl(&[&format!("{url}/v1/kv/app/prio/y")]);
    let read = json(&body);
    assert_eq!(read["values"][0]["meta"]["priority"], 5, "{read}");
    assert_eq!(read["values"][0]["meta"]["window_ms"], 5000, "{read}");
    // ...so a lower-priority push within the window loses to it too (the
    // low stage never pulled app/prio: its write is concurrent).
    put(&low, "app/prio", "y", "ordinary");
    wait_until(Duration::from_secs(20), || {
        !reports_for(&low, "y").is_empty()
    });
    let r = &reports_for(&low, "y")[0];
    assert_eq!(r["outcome"], "upstream_won", "{r}");
    assert_eq!(
        r["pushed"][0]["value"], "ordinary",
        "the loser is recorded: {r}"
    );
    assert_eq!(r["concurrent"][0]["priority"], 5, "{r}");
    assert_eq!(
        upstream_keys(http, "app/prio").get("y").map(String::as_str),
        Some("important")
    );

    // Outside the window: plain siblings, nothing reported.
    put_upstream(http, "app/far", "z", "upstream");
    std::thread::sleep(Duration::from_millis(5500));
    put(&low, "app/far", "z", "staged");
    wait_until(Duration::from_secs(20), || {
        upstream_keys(http, "app/far").get("z").map(String::as_str) == Some("staged|upstream")
    });
    assert!(reports_for(&low, "z").is_empty());
    let text = ok_json(&chorus(&low, &["--json", "stage", "status"]));
    assert_eq!(text["reports_total"], 2, "{text}");
}

#[test]
fn a_followed_prefix_is_pulled_and_not_pushed_back() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (st, up) = (tmp.path().join("stage"), tmp.path().join("up"));
    let http = free_port();
    let _up = upstream(&up, http);
    // The configuration from a file; a flag overrides one of its fields.
    let config = tmp.path().join("stage.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"upstream": "http://127.0.0.1:{http}", "follow": ["shared"], "quiet": "5m", "pull_interval": "200ms"}}"#
        ),
    )
    .expect("config");
    let cfg = config.to_str().expect("utf-8 path");
    let log = tmp.path().join("stage.log");
    let mut daemon = stage(&st, &log, &["--config", cfg, "--quiet", "300ms"]);
    put_upstream(http, "shared/cfg", "colour", "blue");
    put_upstream(http, "shared/other", "size", "9");
    put_upstream(http, "private/cfg", "secret", "s");
    wait_until(Duration::from_secs(20), || {
        get(&st, "shared/cfg", "colour").as_deref() == Some("blue")
            && get(&st, "shared/other", "size").as_deref() == Some("9")
    });
    // A later upstream change arrives as a change, not a full pull.
    put_upstream(http, "shared/cfg", "colour", "green");
    wait_until(Duration::from_secs(20), || {
        get(&st, "shared/cfg", "colour").as_deref() == Some("green")
    });
    // Not followed: not pulled.
    assert_eq!(
        chorus(&st, &["get", "private/cfg", "secret"]).status.code(),
        Some(1)
    );
    // What was pulled is not pushed back; the config's settings show.
    std::thread::sleep(Duration::from_millis(1000));
    let s = status(&st);
    assert_eq!(s["waiting"], 0, "{s}");
    assert_eq!(s["pushes_total"], 0, "{s}");
    assert_eq!(s["config"]["quiet_ms"], 300, "{s}");
    assert_eq!(s["config"]["follow"][0], "shared", "{s}");
    assert!(s["pulls"]["shared"].is_string(), "{s}");
    // Idle, the daemon does not grow the stage's log (ten pulls later).
    let seq = |dir: &Path| ok_json(&chorus(dir, &["--json", "status"]))["last_seq"].clone();
    let before = seq(&st);
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(seq(&st), before);
    // A local write to the followed prefix goes up.
    put(&st, "shared/cfg", "mine", "yes");
    wait_until(Duration::from_secs(20), || {
        upstream_keys(http, "shared/cfg")
            .get("mine")
            .map(String::as_str)
            == Some("yes")
    });
    // Compaction upstream outran the stage's pull cursor: it pulls the
    // whole prefix again.
    daemon.kill();
    put_upstream(http, "shared/cfg", "colour", "red");
    let out = chorus(&up, &["compact"]);
    assert_success(&out);
    let _s = stage(&st, &log, &["--config", cfg, "--quiet", "300ms"]);
    wait_until(Duration::from_secs(20), || {
        get(&st, "shared/cfg", "colour").as_deref() == Some("red")
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("pulling all of it again"), "{text}");
}

#[test]
fn bad_stage_arguments_are_refused_with_the_reason() {
    let tmp = tempfile::tempdir().expect("tmp");
    let st = tmp.path().join("stage");
    let bad_config = tmp.path().join("bad.json");
    std::fs::write(
        &bad_config,
        r#"{"upstream": "http://127.0.0.1:1", "quite": "1s"}"#,
    )
    .expect("config");
    let not_json = tmp.path().join("not.json");
    std::fs::write(&not_json, "upstream = 'x'").expect("config");
    let (bc, nj) = (
        bad_config.to_str().expect("path").to_string(),
        not_json.to_str().expect("path").to_string(),
    );
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--upstream", "ftp://127.0.0.1:1"], "unknown scheme"),
        (
            vec!["--upstream", "https://127.0.0.1:1"],
            "https upstream not supported yet",
        ),
        (vec!["--upstream", "127.0.0.1:1"], "not a URL"),
        (vec![], "give --upstream"),
        (
            vec!["--upstream", "http://127.0.0.1:1", "--quiet", "0"],
            "above zero",
        ),
        (
            vec!["--upstream", "http://127.0.0.1:1", "--quiet", "-1s"],
            "negative",
        ),
        (
            vec!["--upstream", "http://127.0.0.1:1", "--quiet", "soon"],
            "not a duration",
        ),
        (
            vec!["--upstream", "http://127.0.0.1:1", "--batch", "0"],
            "from 1",
        ),
        (
            vec!["--upstream", "http://127.0.0.1:1", "--priority", "256"],
            "from 0 to 255",
        ),
        (
            vec!["--upstream", "http://127.0.0.1:1", "--follow", "$stage"],
            "reserved",
        ),
        (
            vec!["--upstream", "http://127.0.0.1:1", "--follow", "app/"],
            "--follow",
        ),
        (
            vec!["--upstream", "http://127.0.0.1:1", "--follow", "a/b/c"],
            "--follow",
        ),
        (vec!["--config", &bc], "unknown field \"quite\""),
        (vec!["--config", &nj], "is not JSON"),
    ];
    for (args, want) in cases {
        let mut full = vec!["stage"];
        full.extend(args.iter().copied());
        let out = chorus(&st, &full);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
    // Refused before anything was created.
    assert!(!st.exists());
    // No stage there: status says so.
    let out = chorus(&st, &["stage", "status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no stage at"));
}

#[test]
fn malformed_pushes_and_pulls_get_400_and_write_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let up = tmp.path().join("up");
    let http = free_port();
    let _up = upstream(&up, http);
    let url = format!("http://127.0.0.1:{http}");
    let push = format!("{url}/v1/sync/push");
    // A valid object: one a node serves from a directory the CLI wrote.
    let src = tmp.path().join("src");
    assert!(chorus(&src, &["init"]).status.success());
    put(&src, "app/cfg", "good", "v");
    // What a malformed operation record looks like (its value, whatever
    // key a push gives it).
    put(
        &src,
        "app/cfg",
        "oprec",
        r#"{"oprec":1,"type":"counter","timestamp":1}"#,
    );
    let node = ok_json(&chorus(&src, &["--json", "status"]))["node_id"]
        .as_str()
        .expect("node id")
        .to_string();
    let good = object_of(&src, "good");
    let forged_record = object_of(&src, "oprec");
    let ok_body = format!(
        r#"{{"node": "{node}", "priority": 0, "window_ms": 1000, "objects": [{{"prefix": "app", "sub": "cfg", "key": "good", "object": "{good}"}}]}}"#
    );
    let (_, code, body) = curl(&["-X", "POST", "--data-binary", &ok_body, &push]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["changed"], 1);
    let hash = || curl(&[&format!("{url}/v1/hash/app")]).2;
    let before = hash();
    let item = |prefix: &str, key: &str, object: &str| {
        format!(r#"{{"prefix": "{prefix}", "sub": "cfg", "key": "{key}", "object": "{object}"}}"#)
    };
    let body_with = |node: &str, extra: &str, items: &[String]| {
        format!(
            r#"{{"node": "{node}"{extra}, "objects": [{}]}}"#,
            items.join(",")
        )
    };
    let fresh = item("app", "new", &good);
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "not a push"),
        (r#"{"node": "x"}"#.into(), "missing field `objects`"),
        (
            body_with("xyz", "", std::slice::from_ref(&fresh)),
            "not a node id",
        ),
        (
            body_with(&node, r#", "priority": 300"#, std::slice::from_ref(&fresh)),
            "not a push",
        ),
        (
            body_with(
                &node,
                r#", "window_ms": 999999999"#,
                std::slice::from_ref(&fresh),
            ),
            "over the limit",
        ),
        (
            body_with(&node, "", &[fresh.clone(), item("app", "bad", "!!!")]),
            "objects[1]",
        ),
        (
            body_with(&node, "", &[fresh.clone(), item("app", "bad", "AAAA")]),
            "not an object encoding",
        ),
        (
            body_with(&node, "", &[item("$auth", "k", &good)]),
            "reserved",
        ),
        (
            // An operation log's record (key `n\0ts.node.sha`) that is
            // not a valid operation.
            body_with(
                &node,
                "",
                &[format!(
                    r#"{{"prefix": "app", "sub": "cfg", "key": "{}", "key_encoding": "base64", "object": "{forged_record}"}}"#,
                    base64_of(b"n\x0000000000000000001.ab.cd")
                )],
            ),
            "operation record is malformed",
        ),
        (
            body_with(&node, "", &[item("app", "", &good)]),
            "key is empty",
        ),
        (
            body_with(&node, "", &[item("a/b", "k", &good)]),
            "objects[0]",
        ),
        (
            body_with(
                &node,
                "",
                &[format!(
                    r#"{{"prefix": "app", "sub": "cfg", "key": "k", "key_encoding": "hex", "object": "{good}"}}"#
                )],
            ),
            "key_encoding",
        ),
    ];
    for (body, want) in cases {
        let (_, code, answer) = curl(&["-X", "POST", "--data-binary", &body, &push]);
        assert_eq!(code, 400, "{body}: {answer}");
        let answer = json(&answer);
        assert_eq!(answer["code"], "bad_request");
        assert!(
            answer["message"].as_str().is_some_and(|m| m.contains(want)),
            "{body}: {answer}"
        );
    }
    // Over the body limit (16 MiB): refused.
    let big = tmp.path().join("big");
    std::fs::write(&big, vec![b' '; 17 << 20]).expect("write");
    let (_, code, _) = curl(&[
        "-X",
        "POST",
        "--data-binary",
        &format!("@{}", big.display()),
        &push,
    ]);
    assert_eq!(code, 413);
    // Nothing written by any of them.
    assert_eq!(hash(), before);
    assert_eq!(curl(&[&format!("{url}/v1/kv/app/cfg/new")]).1, 404);
    // Bad pulls.
    for (query, want) in [
        ("", "needs ?prefix"),
        ("?prefix=$auth", "reserved"),
        ("?prefix=app&cursor=nope", "not a change-feed position"),
        (
            "?prefix=app&cursor=1-2-3",
            "not in this directory's history",
        ),
        ("?prefix=app&after=%%%", "not a token"),
        ("?prefix=app&cursor=1-2-3&after=AA", "not both"),
    ] {
        let (_, code, answer) = curl(&[&format!("{url}/v1/sync/pull{query}")]);
        assert_eq!(code, 400, "{query}: {answer}");
        assert!(
            json(&answer)["message"]
                .as_str()
                .is_some_and(|m| m.contains(want)),
            "{query}: {answer}"
        );
    }
}

/// The base64 encoding of the object at app/cfg/KEY in `dir`, as a
/// pull from a node serving the directory gives it.
fn object_of(dir: &Path, key: &str) -> String {
    let http = free_port();
    let _node = upstream(dir, http);
    let page = json(
        &curl(&[&format!(
            "http://127.0.0.1:{http}/v1/sync/pull?prefix=app&sub=cfg"
        )])
        .2,
    );
    page["objects"]
        .as_array()
        .and_then(|all| all.iter().find(|o| o["key"] == key))
        .and_then(|o| o["object"].as_str())
        .expect("an object")
        .to_string()
}

/// Standard base64 with padding.
fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn status_shows_what_waits_the_last_push_and_errors() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (st, up) = (tmp.path().join("stage"), tmp.path().join("up"));
    let http = free_port();
    let url = format!("http://127.0.0.1:{http}");
    let mut s = stage(
        &st,
        &tmp.path().join("stage.log"),
        &["--upstream", &url, "--quiet", "300ms"],
    );
    assert!(fill(&st, "app/cfg", 5, "k").status.success());
    wait_until(Duration::from_secs(10), || {
        status(&st)["last_error"].is_object()
    });
    let out = chorus(&st, &["stage", "status"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "daemon      running",
        &format!("upstream    {url}"),
        "waiting     5 key(s)",
        "last push   never",
        "last error  ",
        "cannot reach the upstream",
    ] {
        assert!(text.contains(want), "{want:?} in:\n{text}");
    }
    let _up = upstream(&up, http);
    wait_until(Duration::from_secs(40), || {
        let s = status(&st);
        s["waiting"] == 0 && s["pulls"]["app/cfg"].is_string()
    });
    s.kill();
    let out = chorus(&st, &["stage", "status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "daemon      not running",
        "waiting     0 key(s)",
        "5 key(s) in 1 request(s), 0 report(s)",
        "pulling     app/cfg",
        "reports     0 near-simultaneous write(s)",
    ] {
        assert!(text.contains(want), "{want:?} in:\n{text}");
    }
    // Written while nothing runs: counted as waiting.
    assert!(fill(&st, "app/cfg", 3, "more").status.success());
    assert_eq!(status(&st)["waiting"], 3);
}

#[test]
fn large_pushes_are_split_into_requests_of_at_most_8_mib() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (st, up) = (tmp.path().join("stage"), tmp.path().join("up"));
    let http = free_port();
    let _up = upstream(&up, http);
    let url = format!("http://127.0.0.1:{http}");
    let s = stage(
        &st,
        &tmp.path().join("stage.log"),
        &["--upstream", &url, "--quiet", "1s"],
    );
    // Twelve values of 900 KB, from one process: about 10.8 MB of
    // objects, over one request.
    let out = chorus(&st, &["stage", "fill", "app/big", "12", "--size", "900000"]);
    assert_success(&out);
    wait_until(Duration::from_secs(60), || {
        status(&st)["keys_pushed_total"] == 12
    });
    let s2 = status(&st);
    assert_eq!(s2["requests_total"], 2, "{s2}");
    assert_eq!(s2["pushes_total"], 1, "{s2}");
    let keys = upstream_keys(http, "app/big");
    assert_eq!(keys.len(), 12);
    assert!(
        keys.values()
            .all(|v| v.len() == 900_000 && v.starts_with("value "))
    );
    assert!(
        s.log().contains("pushed 12 key(s) in 2 request(s)"),
        "{}",
        s.log()
    );
}

#[test]
fn the_token_is_sent_as_a_bearer_header_and_never_logged() {
    let tmp = tempfile::tempdir().expect("tmp");
    let st = tmp.path().join("stage");
    // A plain socket standing where the upstream would be: it reads what
    // the stage sends and answers nothing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let url = format!("http://127.0.0.1:{port}");
    let secret = "s3cret-token-value";
    let log = tmp.path().join("stage.log");
    let child = Command::new(CHORUS)
        .arg("--dir")
        .arg(&st)
        .args(["stage", "--upstream", &url])
        .env("CHORUS_TOKEN", secret)
        .stdout(Stdio::null())
        .stderr(File::create(&log).expect("log"))
        .spawn()
        .expect("start chorus stage");
    let _s = Stage {
        child,
        log: log.clone(),
    };
    let (mut conn, _) = listener.accept().expect("the stage connects");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = std::io::Read::read(&mut conn, &mut buf).expect("read");
        assert!(n > 0, "the stage closed before sending a request");
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("get /health http/1.1"), "{head}");
    assert!(
        head.contains(&format!("authorization: bearer {secret}")),
        "{head}"
    );
    drop(conn);
    // The failure is logged and recorded, without the token.
    wait_until(Duration::from_secs(20), || {
        status(&st)["last_error"].is_object()
    });
    let s = status(&st).to_string();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!s.contains(secret), "{s}");
    assert!(!text.contains(secret), "{text}");
}

#[test]
fn with_auth_on_a_push_needs_a_token_that_may_write_every_prefix_it_names() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (st, up) = (tmp.path().join("stage"), tmp.path().join("up"));
    assert!(chorus(&up, &["init"]).status.success());
    let secret = "correct horse battery";
    let out = chorus_in(&up, &["user", "add", "alice"], &format!("{secret}\n"), &[]);
    assert_success(&out);
    let http = free_port();
    let _up = serve(&up, free_port(), http, None, &["--insecure", "--auth"]);
    let url = format!("http://127.0.0.1:{http}");
    wait_healthy(&url, Duration::from_secs(20));
    let session = ok_json(&chorus_in(
        &up,
        &[
            "--json", "session", "create", "--user", "alice", "--ttl", "1h",
        ],
        &format!("{secret}\n"),
        &[],
    ))["token"]
        .as_str()
        .expect("session token")
        .to_string();
    let token = |extra: &[&str]| {
        let mut args = vec![
            "--json", "token", "create", "--scope", "app/*", "--ttl", "1h",
        ];
        args.extend(extra);
        ok_json(&chorus_in(&up, &args, "", &[("CHORUS_TOKEN", &session)]))["token"]
            .as_str()
            .expect("token")
            .to_string()
    };
    let (rw, ro) = (token(&[]), token(&["--read-only"]));
    // Tokens reach the stage in files (never on its command line).
    let (rw_file, ro_file) = (tmp.path().join("rw.token"), tmp.path().join("ro.token"));
    std::fs::write(&rw_file, format!("{rw}\n")).expect("write token");
    std::fs::write(&ro_file, format!("{ro}\n")).expect("write token");
    let (rw_file, ro_file) = (
        rw_file.to_str().expect("utf-8"),
        ro_file.to_str().expect("utf-8"),
    );
    let log = tmp.path().join("stage.log");
    let key_upstream = || {
        let (_, code, _) = curl(&[
            "-H",
            &format!("Authorization: Bearer {rw}"),
            &format!("{url}/v1/kv/app/cfg/k"),
        ]);
        code
    };
    let error = |dir: &Path| {
        status(dir)["last_error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };

    // No token: refused (401), kept.
    let mut s = stage(&st, &log, &["--upstream", &url, "--quiet", "200ms"]);
    put(&st, "app/cfg", "k", "v");
    wait_until(Duration::from_secs(20), || error(&st).contains("HTTP 401"));
    assert_eq!(status(&st)["waiting"], 1);
    s.kill();
    // A read-only token: refused (403), kept.
    let mut s = stage(
        &st,
        &log,
        &[
            "--upstream",
            &url,
            "--quiet",
            "200ms",
            "--token-file",
            ro_file,
        ],
    );
    wait_until(Duration::from_secs(20), || error(&st).contains("HTTP 403"));
    assert_eq!(status(&st)["waiting"], 1);
    assert_eq!(key_upstream(), 404);
    s.kill();
    // A read-write token for app/*: pushed.
    let _s = stage(
        &st,
        &log,
        &[
            "--upstream",
            &url,
            "--quiet",
            "200ms",
            "--token-file",
            rw_file,
        ],
    );
    wait_until(Duration::from_secs(20), || status(&st)["waiting"] == 0);
    assert_eq!(key_upstream(), 200);
    // Out of the token's scope: refused, nothing written.
    let before = status(&st)["last_error"]["time_ms"].as_u64().unwrap_or(0);
    put(&st, "other/cfg", "k2", "v");
    wait_until(Duration::from_secs(20), || {
        let e = &status(&st)["last_error"];
        e["time_ms"].as_u64().unwrap_or(0) > before
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains("HTTP 403"))
    });
    assert!(
        error(&st).contains("does not cover other/cfg"),
        "{}",
        error(&st)
    );
    assert_eq!(status(&st)["waiting"], 1);
    // The pushes and refusals are in the upstream's audit log; no token is.
    let audit = std::fs::read_to_string(up.join("audit.log")).unwrap_or_default();
    assert!(audit.contains("\"sync.push\""), "{audit}");
    assert!(audit.contains("\"refused\""), "{audit}");
    assert!(!audit.contains(&rw) && !audit.contains(&ro), "{audit}");
    assert!(
        !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(&rw)
    );
    // Pulls need read access to what they name.
    let pull = |prefix: &str, t: &str| {
        curl(&[
            "-H",
            &format!("Authorization: Bearer {t}"),
            &format!("{url}/v1/sync/pull?prefix={prefix}"),
        ])
        .1
    };
    assert_eq!(pull("app", &ro), 200);
    assert_eq!(pull("other", &ro), 403);
    assert_eq!(curl(&[&format!("{url}/v1/sync/pull?prefix=app")]).1, 401);
}

/// The stage directory's last commit sequence number (`chorus status`).
fn last_seq(dir: &Path) -> u64 {
    ok_json(&chorus(dir, &["--json", "status"]))["last_seq"]
        .as_u64()
        .expect("last_seq")
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn stage_push_wait_pushes_at_once_despite_a_long_quiet_period() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (st, up) = (tmp.path().join("stage"), tmp.path().join("up"));
    let http = free_port();
    let _up = upstream(&up, http);
    let url = format!("http://127.0.0.1:{http}");
    let s = stage(
        &st,
        &tmp.path().join("stage.log"),
        &["--upstream", &url, "--quiet", "1h"],
    );
    put(&st, "app/cfg", "k1", "v1");
    // The quiet period holds it back.
    std::thread::sleep(Duration::from_secs(2));
    assert!(upstream_keys(http, "app/cfg").is_empty());
    assert_eq!(status(&st)["waiting"], 1);
    // Asked to push, it pushes; `--wait` returns once the upstream has it.
    let started = Instant::now();
    let out = chorus(&st, &["stage", "push", "--wait", "30"]);
    assert_success(&out);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(
        upstream_keys(http, "app/cfg").get("k1").map(String::as_str),
        Some("v1"),
        "upstream when `stage push --wait` returned"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("pushed: every write to"), "{text}");
    assert!(text.contains(&url), "{text}");
    assert!(text.contains("(1 key(s) pushed"), "{text}");
    assert!(s.log().contains("push requested (commit"), "{}", s.log());
    // The same with --json.
    put(&st, "app/cfg", "k2", "v2");
    let seq_before = last_seq(&st);
    let answer = ok_json(&chorus(&st, &["--json", "stage", "push", "--wait", "30"]));
    assert_eq!(answer["done"], true, "{answer}");
    assert_eq!(answer["keys"], 1, "{answer}");
    assert_eq!(answer["upstream"], url.as_str(), "{answer}");
    let requested = answer["requested"].as_u64().expect("requested");
    assert!(requested > seq_before, "{answer}");
    assert!(answer["through"].as_u64().expect("through") >= requested);
    assert_eq!(
        upstream_keys(http, "app/cfg").get("k2").map(String::as_str),
        Some("v2")
    );
    // Nothing waiting: done at once, nothing sent.
    let answer = ok_json(&chorus(&st, &["--json", "stage", "push", "--wait", "30"]));
    assert_eq!(
        (&answer["done"], &answer["keys"]),
        (&serde_json::json!(true), &serde_json::json!(0))
    );
    // Without --wait it returns after recording; the daemon pushes anyway.
    put(&st, "app/cfg", "k3", "v3");
    let out = chorus(&st, &["stage", "push"]);
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("push requested (commit"), "{text}");
    wait_until(Duration::from_secs(20), || {
        upstream_keys(http, "app/cfg").contains_key("k3")
    });
    // The requests themselves stay in the stage.
    let (_, code, _) = curl(&[&format!(
        "http://127.0.0.1:{http}/v1/kv/$stage/requests/push"
    )]);
    assert_eq!(code, 404);
    assert_eq!(status(&st)["waiting"], 0);
}

#[test]
fn stage_push_without_a_daemon_says_how_to_start_one_and_writes_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let st = tmp.path().join("stage");
    // No stage directory at all.
    let out = chorus(&st, &["stage", "push"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("no stage at"),
        "{}",
        stderr_of(&out)
    );
    assert_success(&fill(&st, "app/cfg", 3, "k"));
    let before = last_seq(&st);
    for args in [
        &["stage", "push"][..],
        &["stage", "push", "--wait", "5"],
        &["--json", "stage", "push", "--wait", "5"],
    ] {
        let out = chorus(&st, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr_of(&out));
        let err = stderr_of(&out);
        assert!(
            err.contains(&format!(
                "no stage daemon is running on {}: start one with `chorus stage --upstream URL`",
                st.display()
            )),
            "{args:?}: {err}"
        );
    }
    assert_eq!(last_seq(&st), before, "a refused request writes nothing");
    // A daemon that stopped is no daemon either.
    let url = format!("http://127.0.0.1:{}", free_port());
    let mut s = stage(&st, &tmp.path().join("stage.log"), &["--upstream", &url]);
    s.kill();
    let out = chorus(&st, &["stage", "push", "--wait", "5"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("no stage daemon is running"));
    // Bad waits are refused before anything is asked.
    for (bad, why) in [("abc", "is not a duration"), ("-1", "cannot be negative")] {
        let out = chorus(&st, &["stage", "push", "--wait", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr_of(&out));
        assert!(stderr_of(&out).contains(why), "{bad}: {}", stderr_of(&out));
    }
}

#[test]
fn stage_push_wait_reports_an_unreachable_upstream_then_succeeds_once_it_is_back() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (st, up) = (tmp.path().join("stage"), tmp.path().join("up"));
    let http = free_port();
    let url = format!("http://127.0.0.1:{http}");
    let upstream_node = upstream(&up, http);
    let _s = stage(
        &st,
        &tmp.path().join("stage.log"),
        &["--upstream", &url, "--quiet", "1h"],
    );
    put(&st, "app/cfg", "k1", "v1");
    drop(upstream_node);
    // Failed: exit 4, soon, with the reason and what happens next.
    let started = Instant::now();
    let out = chorus(&st, &["stage", "push", "--wait", "30"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr_of(&out));
    assert!(started.elapsed() < Duration::from_secs(10));
    let err = stderr_of(&out);
    for want in [
        "the stage daemon could not push",
        "cannot reach the upstream",
        "keeps every write and retries",
    ] {
        assert!(err.contains(want), "{want:?} in {err}");
    }
    // The upstream is back: the next request goes through.
    let _up = upstream(&up, http);
    let out = chorus(&st, &["stage", "push", "--wait", "30"]);
    assert_success(&out);
    assert_eq!(
        upstream_keys(http, "app/cfg").get("k1").map(String::as_str),
        Some("v1")
    );
}

#[test]
fn stage_push_wait_times_out_with_busy_while_the_upstream_does_not_answer() {
    let tmp = tempfile::tempdir().expect("tmp");
    let st = tmp.path().join("stage");
    // Accepts connections (in its backlog) and never answers: the daemon
    // waits on it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let url = format!("http://127.0.0.1:{port}");
    assert_success(&fill(&st, "app/cfg", 1, "k"));
    let _s = stage(&st, &tmp.path().join("stage.log"), &["--upstream", &url]);
    let started = Instant::now();
    let out = chorus(&st, &["stage", "push", "--wait", "1"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr_of(&out));
    assert!(started.elapsed() < Duration::from_secs(10));
    let err = stderr_of(&out);
    for want in ["is still pending after 1s", "keeps it and pushes it"] {
        assert!(err.contains(want), "{want:?} in {err}");
    }
    drop(silent);
}
