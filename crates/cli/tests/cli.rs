//! The `chorus` binary as scripts use it: outputs, `--json`, exit codes and
//! error messages, run as real processes.

use std::path::Path;
use std::process::{Command, Stdio};

mod common;
use common::{CHORUS, chorus, chorus_with_stdin, code, ok, stderr, stdout, stdout_json};

#[test]
fn put_get_del_ls_round_trip() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let init = stdout_json(&ok(chorus(&dir, &["--json", "init"])));
    assert_eq!(init["created"], true);
    assert_eq!(init["node_id"].as_str().map(str::len), Some(32));
    let again = stdout_json(&ok(chorus(&dir, &["--json", "init"])));
    assert_eq!(
        (again["created"].clone(), again["node_id"].clone()),
        (false.into(), init["node_id"].clone())
    );

    ok(chorus(&dir, &["put", "config/web", "port", "8080"]));
    assert_eq!(
        stdout(&ok(chorus(&dir, &["get", "config/web", "port"]))),
        "8080"
    );
    let got = stdout_json(&ok(chorus(&dir, &["--json", "get", "config/web", "port"])));
    assert_eq!(got["values"][0]["value"], "8080");
    assert_eq!(got["values"].as_array().map(Vec::len), Some(1));
    assert_eq!(got["tombstone"], false);
    assert!(got["context"].as_str().is_some_and(|c| !c.is_empty()));
    assert_eq!(got["values"][0]["node"], init["node_id"]);

    ok(chorus_with_stdin(
        &dir,
        &["put", "config/web", "motd", "-"],
        b"hello\nworld\n",
    ));
    assert_eq!(
        stdout(&ok(chorus(&dir, &["get", "config/web", "motd"]))),
        "hello\nworld\n"
    );
    let file = tmp.path().join("blob");
    std::fs::write(&file, [0u8, 159, 146, 150]).expect("write file");
    ok(chorus(
        &dir,
        &["put", "config/web", "blob", &format!("@{}", file.display())],
    ));
    assert_eq!(
        ok(chorus(&dir, &["get", "config/web", "blob"])).stdout,
        vec![0u8, 159, 146, 150]
    );
    let blob = stdout_json(&ok(chorus(&dir, &["--json", "get", "config/web", "blob"])));
    assert_eq!(blob["values"][0]["value"], "AJ+Slg==");
    assert_eq!(blob["values"][0]["encoding"], "base64");

    assert_eq!(
        stdout(&ok(chorus(&dir, &["ls", "config/web"]))),
        "blob\nmotd\nport\n"
    );
    let listed = stdout_json(&ok(chorus(&dir, &["--json", "ls", "config/web"])));
    assert_eq!(listed["keys"].as_array().map(Vec::len), Some(3));
    assert_eq!(stdout(&ok(chorus(&dir, &["ls"]))), "config/web\t3 keys\n");

    ok(chorus(&dir, &["del", "config/web", "port"]));
    let gone = chorus(&dir, &["get", "config/web", "port"]);
    assert_eq!(code(&gone), 1);
    assert!(
        stderr(&gone).contains("config/web/port not found"),
        "{}",
        stderr(&gone)
    );
    assert_eq!(
        code(&chorus(&dir, &["del", "config/web", "port"])),
        1,
        "deleting an absent key"
    );

    let status = stdout_json(&ok(chorus(&dir, &["--json", "status"])));
    assert_eq!(
        status["keys"], 3,
        "a deleted key is a tombstone until it is collected"
    );
    assert_eq!(status["generation"], 1);
    assert_eq!(status["lock_holder"], serde_json::Value::Null);
    let compacted = stdout_json(&ok(chorus(&dir, &["--json", "compact"])));
    assert_eq!(compacted["new_generation"], 2);
    assert_eq!(
        stdout_json(&ok(chorus(&dir, &["--json", "check"])))["healthy"],
        true
    );
    assert_eq!(
        stdout(&ok(chorus(&dir, &["get", "config/web", "motd"]))),
        "hello\nworld\n"
    );
}

#[test]
fn chorus_dir_comes_from_the_environment() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let o = Command::new(CHORUS)
        .args(["put", "a/b", "k", "v"])
        .env("CHORUS_DIR", tmp.path())
        .output()
        .expect("run");
    assert_eq!(code(&o), 1, "no store yet: {}", stderr(&o));
    assert!(stderr(&o).contains("chorus init"), "{}", stderr(&o));
    ok(Command::new(CHORUS)
        .arg("init")
        .env("CHORUS_DIR", tmp.path())
        .output()
        .expect("run"));
    ok(Command::new(CHORUS)
        .args(["put", "a/b", "k", "v"])
        .env("CHORUS_DIR", tmp.path())
        .output()
        .expect("run"));
}

#[test]
fn bad_input_exits_2_and_changes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    ok(chorus(&dir, &["init"]));
    for (args, says) in [
        (&["put", "noslash", "k", "v"][..], "PREFIX/SUBPREFIX"),
        (&["put", "a/b/c", "k", "v"][..], "'/'"),
        (&["put", "$cluster/x", "k", "v"][..], "reserved"),
        (&["put", "a/b", "", "v"][..], "key is empty"),
        (
            &["put", "a/b", "k", "@/nonexistent/file"][..],
            "could not read the value",
        ),
        (&["get", "/b", "k"][..], "prefix is empty"),
        (&["frobnicate"][..], "unrecognized subcommand"),
        (
            &["--lock-timeout=-1", "put", "a/b", "k", "v"][..],
            "lock-timeout",
        ),
    ] {
        let o = chorus(&dir, args);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(says),
            "{args:?} should say {says:?}: {}",
            stderr(&o)
        );
        assert_eq!(stderr(&o).trim().lines().count().min(1), 1);
    }
    let big = "x".repeat(5000);
    let o = chorus(&dir, &["put", "a/b", &big, "v"]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("the limit is 4096 bytes"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        stdout_json(&ok(chorus(&dir, &["--json", "status"])))["last_seq"],
        0,
        "nothing was written"
    );
}

#[test]
fn corruption_exits_4_names_the_offset_and_repair_fixes_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    ok(chorus(&dir, &["init"]));
    for i in 0..5 {
        ok(chorus(
            &dir,
            &["put", "a/b", &format!("k{i}"), "some value"],
        ));
    }
    let log = dir.join("gen-0000000001.log");
    let mut bytes = std::fs::read(&log).expect("read");
    let at = 64 + 20;
    bytes[at] ^= 0xff;
    std::fs::write(&log, &bytes).expect("write");
    let o = chorus(&dir, &["get", "a/b", "k4"]);
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    assert!(stderr(&o).contains("at byte offset 64"), "{}", stderr(&o));
    assert!(stderr(&o).contains("chorus repair"), "{}", stderr(&o));
    let checked = chorus(&dir, &["--json", "check"]);
    assert_eq!(code(&checked), 4);
    let report = stdout_json(&checked);
    assert_eq!(report["healthy"], false);
    assert_eq!(report["findings"][0]["kind"], "corruption");
    assert_eq!(report["findings"][0]["offset"], 64);
    let repaired = stdout_json(&ok(chorus(&dir, &["--json", "repair"])));
    assert_eq!(repaired["repaired"], true);
    assert_eq!(repaired["commits_salvaged"], 4);
    assert_eq!(
        code(&chorus(&dir, &["get", "a/b", "k0"])),
        1,
        "the damaged commit is gone"
    );
    assert_eq!(
        stdout(&ok(chorus(&dir, &["get", "a/b", "k4"]))),
        "some value"
    );
    ok(chorus(&dir, &["check"]));
}

#[test]
fn a_held_lock_exits_5_after_the_timeout() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    ok(chorus(&dir, &["init"]));
    // flock(1) takes the same OS lock a Chorus writer takes.
    let mut holder = Command::new("flock")
        .arg(dir.join("lock"))
        .args(["sleep", "3"])
        .spawn()
        .expect("flock(1) from util-linux");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let o = chorus(&dir, &["--lock-timeout", "0.3", "put", "a/b", "k", "v"]);
    assert_eq!(code(&o), 5, "{}", stderr(&o));
    assert!(stderr(&o).contains("writer lock"), "{}", stderr(&o));
    assert_eq!(
        stdout(&ok(chorus(&dir, &["ls"]))),
        "",
        "reads do not wait for the lock"
    );
    holder.wait().expect("wait");
    ok(chorus(&dir, &["put", "a/b", "k", "v"]));
}

#[test]
fn siblings_contexts_and_resolve() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    ok(chorus(&dir, &["init"]));
    ok(chorus(&dir, &["put", "app/cfg", "mode", "first"]));
    let ctx = stdout(&ok(chorus(
        &dir,
        &["get", "--context-only", "app/cfg", "mode"],
    )));
    let ctx = ctx.trim();
    // Two writers that read the same version.
    ok(chorus(
        &dir,
        &["put", "--context", ctx, "app/cfg", "mode", "blue"],
    ));
    ok(chorus(
        &dir,
        &["put", "--context", ctx, "app/cfg", "mode", "green"],
    ));
    let text = stdout(&ok(chorus(&dir, &["get", "app/cfg", "mode"])));
    assert!(
        text.contains("sibling 1 of 2") && text.contains("sibling 2 of 2"),
        "{text}"
    );
    assert!(
        text.contains("blue") && text.contains("green") && !text.contains("first"),
        "{text}"
    );
    assert!(text.contains("--- context "), "{text}");
    let count = |dir: &Path| {
        stdout_json(&ok(chorus(dir, &["--json", "get", "app/cfg", "mode"])))["values"]
            .as_array()
            .map(Vec::len)
    };
    assert_eq!(count(&dir), Some(2));
    // Resolving on read without writing back leaves the siblings.
    assert_eq!(
        stdout(&ok(chorus(
            &dir,
            &["get", "--resolve", "lww", "app/cfg", "mode"]
        ))),
        "green"
    );
    assert_eq!(count(&dir), Some(2));
    assert_eq!(
        code(&chorus(&dir, &["get", "--allow-put", "app/cfg", "mode"])),
        2,
        "--allow-put needs --resolve"
    );
    // resolve --pick writes one value.
    let picked = stdout_json(&ok(chorus(
        &dir,
        &["--json", "resolve", "--pick", "1", "app/cfg", "mode"],
    )));
    assert_eq!(picked["resolved"], 2);
    assert_eq!(count(&dir), Some(1));
    // resolve --value and --lww; a bad --pick.
    ok(chorus(
        &dir,
        &["put", "--context", ctx, "app/cfg", "mode", "red"],
    ));
    assert_eq!(count(&dir), Some(2));
    assert_eq!(
        code(&chorus(
            &dir,
            &["resolve", "--pick", "9", "app/cfg", "mode"]
        )),
        2
    );
    ok(chorus(
        &dir,
        &["resolve", "--value", "purple", "app/cfg", "mode"],
    ));
    assert_eq!(
        stdout(&ok(chorus(&dir, &["get", "app/cfg", "mode"]))),
        "purple"
    );
    ok(chorus(
        &dir,
        &["put", "--context", ctx, "app/cfg", "mode", "zzz"],
    ));
    ok(chorus(
        &dir,
        &["get", "--resolve", "lww", "--allow-put", "app/cfg", "mode"],
    ));
    assert_eq!(count(&dir), Some(1));
    // A malformed context is refused and writes nothing.
    let before = stdout_json(&ok(chorus(&dir, &["--json", "status"])))["last_seq"].clone();
    let o = chorus(
        &dir,
        &["put", "--context", "garbage!", "app/cfg", "mode", "x"],
    );
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("malformed context"), "{}", stderr(&o));
    assert_eq!(
        stdout_json(&ok(chorus(&dir, &["--json", "status"])))["last_seq"],
        before
    );
}

#[test]
fn ls_scopes_matches_tombstones_and_hashes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let other = tmp.path().join("other");
    ok(chorus(&dir, &["init"]));
    ok(chorus(&other, &["init"]));
    for (fp, k) in [
        ("app/a", "x1"),
        ("app/a", "x2"),
        ("app/a", "y1"),
        ("app/b", "z"),
        ("web/c", "q"),
    ] {
        ok(chorus(&dir, &["put", fp, k, "v"]));
    }
    ok(chorus(&dir, &["del", "app/a", "y1"]));
    assert_eq!(
        stdout(&ok(chorus(&dir, &["ls", "app"]))),
        "a\t3 keys\nb\t1 keys\n"
    );
    assert_eq!(stdout(&ok(chorus(&dir, &["ls", "app/a"]))), "x1\nx2\n");
    assert_eq!(
        stdout(&ok(chorus(&dir, &["ls", "--tombstones", "app/a"]))),
        "x1\nx2\ny1\n"
    );
    assert_eq!(
        stdout(&ok(chorus(&dir, &["ls", "--match", "*2", "app/a"]))),
        "x2\n"
    );
    let h1 = stdout(&ok(chorus(&dir, &["hash", "app/b"])));
    assert_eq!(h1.trim().len(), 64);
    assert_ne!(h1, stdout(&ok(chorus(&dir, &["hash", "app/a"]))));
    assert_ne!(
        stdout(&ok(chorus(&dir, &["hash", "app"]))),
        stdout(&ok(chorus(&dir, &["hash", "web"])))
    );
    // An empty full prefix hashes the same on every node.
    assert_eq!(
        stdout(&ok(chorus(&dir, &["hash", "none/x"]))),
        stdout(&ok(chorus(&other, &["hash", "none/x"])))
    );
}

#[test]
fn sim_reports_both_protocols_draws_the_plot_and_refuses_bad_shares() {
    let dir = tempfile::tempdir().expect("tmp");
    let plot = dir.path().join("sim.svg");
    let plot_arg = plot.to_str().expect("utf-8 path");
    let out = ok(chorus(
        dir.path(),
        &[
            "sim",
            "--json",
            "--nodes",
            "60",
            "--messages",
            "12",
            "--plot",
            plot_arg,
        ],
    ));
    let doc = stdout_json(&out);
    let runs = doc["runs"].as_array().expect("runs");
    let protocols: Vec<&str> = runs.iter().filter_map(|r| r["protocol"].as_str()).collect();
    assert_eq!(protocols, ["plumtree", "flood"]);
    for r in runs {
        assert_eq!(r["reliability_min"], 1.0);
        assert_eq!(r["per_message"].as_array().map(Vec::len), Some(12));
    }
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(svg.starts_with("<svg") && svg.contains("plumtree") && svg.contains("flood"));

    for (flag, value) in [
        ("--fail", "1.5"),
        ("--loss", "1"),
        ("--nodes", "1"),
        ("--messages", "0"),
    ] {
        let out = chorus(dir.path(), &["sim", flag, value]);
        assert_eq!(code(&out), 2, "{flag} {value}: {}", stderr(&out));
        assert!(stderr(&out).contains(flag), "{}", stderr(&out));
    }
    let out = chorus(dir.path(), &["sim", "--plot", "x.png"]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains(".svg"));
    // Nothing was created for the refused runs: no data directory either.
    assert!(!dir.path().join("chorus-data").exists());
}

#[test]
fn sim_exchange_makes_two_stores_equal() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = ok(chorus(
        dir.path(),
        &["sim", "--json", "--exchange-keys", "2000", "--diff", "0.05"],
    ));
    let doc = stdout_json(&out);
    assert_eq!(doc["differing_keys"], 100);
    assert_eq!(doc["equal_after"], true);
    assert!(doc["bytes_total"].as_u64().unwrap_or(0) > 0);
}

/// A running `chorus watch`: its JSON lines, read on a thread of their own.
struct Watch {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Watch {
    fn start(dir: &Path, args: &[&str]) -> Watch {
        use std::io::BufRead as _;
        let mut child = Command::new(CHORUS)
            .arg("--dir")
            .arg(dir)
            .arg("watch")
            .args(args)
            .env_remove("CHORUS_DIR")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn chorus watch");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Watch { child, lines }
    }

    fn next(&self, secs: u64) -> Option<serde_json::Value> {
        let line = self
            .lines
            .recv_timeout(std::time::Duration::from_secs(secs))
            .ok()?;
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn watch_prints_the_shared_event_shape_and_resumes_from_an_id() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    ok(chorus(d, &["init"]));
    let live = Watch::start(d, &["app/cfg"]);
    let start = live.next(20).expect("the first line");
    assert_eq!(start["watching"], "app/cfg");
    let cursor = start["cursor"].as_str().expect("a cursor").to_string();
    ok(chorus(d, &["put", "app/cfg", "a", "1"]));
    ok(chorus(d, &["put", "app/cfg", "b", "2"]));
    let first = live.next(20).expect("the first event");
    let second = live.next(20).expect("the second event");
    for (e, key, value) in [(&first, "a", "1"), (&second, "b", "2")] {
        assert_eq!(e["full_prefix"], "app/cfg");
        assert_eq!(e["key"], key);
        assert_eq!(e["values"][0]["value"], value);
        assert_eq!(e["from_peer"], false);
        assert_eq!(e["tombstone"], false);
        assert!(e["id"].is_string() && e["seq"].is_u64() && e["context"].is_string());
    }
    drop(live);

    // From the first event's id: exactly the events after it.
    let id = first["id"].as_str().expect("an id");
    let resumed = Watch::start(d, &["app/cfg", "--from", id]);
    assert_eq!(resumed.next(20).expect("first line")["watching"], "app/cfg");
    assert_eq!(resumed.next(20).as_ref(), Some(&second));
    assert_eq!(resumed.next(1), None, "nothing else");
    drop(resumed);

    // From the first line's cursor: both events, as printed live.
    let replay = Watch::start(d, &["app/cfg", "--from", &cursor]);
    replay.next(20).expect("first line");
    assert_eq!(replay.next(20).as_ref(), Some(&first));
    assert_eq!(replay.next(20).as_ref(), Some(&second));
    drop(replay);

    let out = chorus(d, &["watch", "app/cfg", "--from", "nonsense"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("--from"), "{}", stderr(&out));
}

#[test]
fn json_errors_are_one_object_with_the_shared_code() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    ok(chorus(d, &["init"]));
    let out = chorus(d, &["--json", "get", "app/cfg", "absent"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let doc = stdout_json(&out);
    assert_eq!(doc["code"], "not_found");
    assert!(
        doc["message"]
            .as_str()
            .is_some_and(|m| m.contains("absent"))
    );
    assert!(
        stderr(&out).contains("not found"),
        "stderr keeps the human line"
    );

    let out = chorus(d, &["--json", "put", "$app/cfg", "k", "v"]);
    assert_eq!(code(&out), 2);
    assert_eq!(stdout_json(&out)["code"], "bad_request");

    // Without --json, stdout stays empty.
    let out = chorus(d, &["get", "app/cfg", "absent"]);
    assert_eq!(code(&out), 1);
    assert!(out.stdout.is_empty());
}

#[test]
fn demo_and_stage_never_use_chorus_dir() {
    let tmp = tempfile::tempdir().expect("tmp");
    let served = tmp.path().join("served");
    let run = |args: &[&str], env: &[(&str, &Path)]| {
        Command::new(CHORUS)
            .args(args)
            .env("CHORUS_DIR", &served)
            .env("HOME", tmp.path())
            .env_remove("CHORUS_STAGE_DIR")
            .envs(env.iter().copied())
            .current_dir(tmp.path())
            .output()
            .expect("run chorus")
    };
    // The demo writes into a temporary directory it removes, never $CHORUS_DIR.
    let out = ok(run(&["demo", "--processes", "1", "--commits", "3"], &[]));
    assert!(
        stdout(&out).contains("removed the temporary directory"),
        "{}",
        stdout(&out)
    );
    assert!(!served.exists(), "the demo wrote into $CHORUS_DIR");

    // The stage is $CHORUS_STAGE_DIR, else ~/.chorus/stage, never $CHORUS_DIR.
    let out = run(&["stage", "status"], &[]);
    assert_ne!(code(&out), 0);
    let home_stage = tmp.path().join(".chorus/stage");
    assert!(
        stderr(&out).contains(&home_stage.display().to_string()),
        "{}",
        stderr(&out)
    );
    let own = tmp.path().join("my-stage");
    let out = run(&["stage", "status"], &[("CHORUS_STAGE_DIR", &own)]);
    assert_ne!(code(&out), 0);
    assert!(
        stderr(&out).contains(&own.display().to_string()),
        "{}",
        stderr(&out)
    );
    assert!(!served.exists());
}
