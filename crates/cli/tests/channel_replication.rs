//! Channels between real daemons on loopback (issue 19): a channel's data
//! stays on its members; a node added to a channel that holds 10,000 keys
//! reports it ready only once it holds all of them; a node removed from
//! it drops its copy once two other members hold it.
//!
//! The table is changed by writing its records into a running node's
//! directory (as `chorus channel` does), and read back from
//! `DIR/channels.json`, which each daemon keeps.

use std::path::Path;
use std::time::{Duration, Instant};

use chorus_core::{FullPrefix, NodeId};
use chorus_store::{Metadata, Options, PutOptions, PutValue, Store};

mod common;
use common::{chorus, free_port};

type Res<T = ()> = Result<T, Box<dyn std::error::Error>>;

const KEYS: usize = 10_000;

fn open(dir: &Path) -> Res<Metadata> {
    let store = Store::open(
        dir,
        Options {
            create: false,
            ..Options::default()
        },
    )?;
    Ok(Metadata::new(store))
}

fn node_id(dir: &Path) -> Res<NodeId> {
    Ok(open(dir)?.store().node_id())
}

/// Writes channel `name`'s record: `patterns` served by `nodes`.
fn write_channel(dir: &Path, name: &str, patterns: &[&str], nodes: &[NodeId]) -> Res {
    let record = serde_json::json!({
        "patterns": patterns,
        "nodes": nodes.iter().map(ToString::to_string).collect::<Vec<_>>(),
    });
    open(dir)?.put_reserved(
        &chorus_store::channels::full_prefix()?,
        name.as_bytes(),
        PutValue::Bytes(record.to_string().into_bytes()),
        &PutOptions::default(),
    )?;
    Ok(())
}

/// Keys `dir` holds in `fp` (tombstones included).
fn held(dir: &Path, fp: &FullPrefix) -> Res<usize> {
    Ok(open(dir)?.store().snapshot()?.len_in(fp))
}

/// The state and key count of `channel` in the daemon's status file.
fn channel_state(dir: &Path, channel: &str) -> Option<(String, u64)> {
    let bytes = std::fs::read(dir.join("channels.json")).ok()?;
    let status: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    status["channels"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == channel)
        .map(|c| {
            (
                c["state"].as_str().unwrap_or_default().to_string(),
                c["keys"].as_u64().unwrap_or(0),
            )
        })
}

/// Polls `done` every 20 ms for up to `limit`; the error names `what`.
fn wait(limit: Duration, what: &str, mut done: impl FnMut() -> Res<bool>) -> Res {
    let start = Instant::now();
    while !done()? {
        if start.elapsed() > limit {
            return Err(format!("{what}: not within {limit:?}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[test]
fn a_channel_stays_on_its_members_a_joiner_is_ready_with_everything_a_leaver_drops() -> Res {
    let tmp = tempfile::tempdir()?;
    let dirs: Vec<_> = ["a", "b", "c"].iter().map(|n| tmp.path().join(n)).collect();
    for d in &dirs {
        assert!(chorus(d, &["init"]).status.success());
    }
    let ids = dirs
        .iter()
        .map(|d| node_id(d))
        .collect::<Res<Vec<NodeId>>>()?;
    let (a, b, c) = (&dirs[0], &dirs[1], &dirs[2]);
    let render = FullPrefix::new("render", "shots")?;
    // render/* on a and b only, from the start.
    write_channel(a, "render", &["render/*"], &[ids[0], ids[1]])?;
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let args = ["--insecure", "--exchange-interval", "1"];
    let _nodes: Vec<common::Node> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let join = (i > 0).then(|| ports[0]);
            common::serve(d, ports[i], free_port(), join, &args)
        })
        .collect();
    // Something outside the channel, which every node gets.
    common::put(a, "shared/x", "k", "v");
    // 10,000 keys written on a, in one commit.
    let meta = open(a)?;
    let mut tx = meta.begin()?;
    for i in 0..KEYS {
        tx.put(&render, format!("k{i:05}").as_bytes(), b"frame", None)?;
    }
    tx.commit()?;
    drop(meta);

    wait(Duration::from_secs(60), "b holds the channel", || {
        Ok(held(b, &render)? == KEYS)
    })?;
    wait(Duration::from_secs(20), "c holds the shared key", || {
        Ok(common::get(c, "shared/x", "k").is_some())
    })?;
    assert_eq!(
        held(c, &render)?,
        0,
        "c is not a member but holds render data"
    );
    assert_eq!(channel_state(c, "render"), None);

    // c starts serving: it reports joining until it holds all 10,000.
    write_channel(a, "render", &["render/*"], &ids)?;
    let mut seen = Vec::new();
    wait(Duration::from_secs(60), "c ready in render", || {
        let state = channel_state(c, "render");
        if let Some(now) = &state
            && seen.last() != Some(now)
        {
            seen.push(now.clone());
        }
        Ok(state.is_some_and(|(s, _)| s == "ready"))
    })?;
    for (state, keys) in &seen {
        assert!(
            state != "ready" || *keys == KEYS as u64,
            "c said ready while it held {keys} keys: {seen:?}"
        );
    }
    assert_eq!(held(c, &render)?, KEYS);
    // `chorus status` on c's directory says so too.
    let status = common::stdout(&chorus(c, &["--json", "status"]));
    let status: serde_json::Value = serde_json::from_str(&status)?;
    let render_status = &status["channels"]["channels"][0];
    assert_eq!(render_status["name"], "render", "{status}");
    assert_eq!(render_status["state"], "ready", "{status}");
    assert_eq!(render_status["keys"], KEYS, "{status}");
    let text = common::stdout(&chorus(c, &["status"]));
    assert!(text.contains("render") && text.contains("ready"), "{text}");

    // a stops serving: it drops its copy once b and c hold it.
    write_channel(a, "render", &["render/*"], &[ids[1], ids[2]])?;
    wait(Duration::from_secs(60), "a drops render", || {
        Ok(held(a, &render)? == 0)
    })?;
    assert_eq!(held(b, &render)?, KEYS);
    assert_eq!(held(c, &render)?, KEYS);
    // What is not in the channel stays on a.
    assert_eq!(common::get(a, "shared/x", "k").as_deref(), Some("v"));
    Ok(())
}
