//! Whole nodes with channels (issue 19): two channels with overlapping
//! members over the clients' two plain-key full prefixes, checked by the
//! same checkers as every run, per channel: a channel's acknowledged
//! writes are on every member of it, its members converge, and the other
//! nodes hold nothing of it.

use chorus_sim::cluster::{self, Config, Faults, SimChannel};

/// `sim/a` on nodes 0, 1, 2 and `sim/b` on nodes 2, 3, 4.
fn two_channels() -> Vec<SimChannel> {
    vec![
        SimChannel {
            name: "ca".into(),
            kv: 0,
            nodes: vec![0, 1, 2],
        },
        SimChannel {
            name: "cb".into(),
            kv: 1,
            nodes: vec![2, 3, 4],
        },
    ]
}

#[test]
fn writes_in_each_channel_reach_exactly_its_members() -> Result<(), String> {
    let outcome = cluster::run(&Config {
        nodes: 5,
        faults: Faults::default(),
        channels: two_channels(),
        ..Config::default()
    })?;
    assert!(outcome.violations.is_empty(), "{:#?}", outcome.violations);
    assert!(outcome.converged_after_ms.is_some(), "{outcome:?}");
    assert!(outcome.acknowledged > 100, "{outcome:?}");
    Ok(())
}

#[test]
fn partitions_crashes_and_pauses_inside_channels_lose_nothing_acknowledged() -> Result<(), String> {
    let mut failing = Vec::new();
    let mut collected = 0;
    for seed in 1..=20 {
        let outcome = cluster::run(&Config {
            nodes: 5,
            seed,
            faults: Faults::standard(),
            channels: two_channels(),
            // Every node holds both full prefixes for 10 s first.
            channels_after_ms: 10_000,
            ..Config::default()
        })?;
        collected += outcome.tombstones_collected;
        if let Some(v) = outcome.violations.first() {
            failing.push(format!("seed {seed}: {v}"));
        }
    }
    assert!(failing.is_empty(), "{}", failing.join("\n"));
    assert!(collected > 0, "no tombstone was collected in 20 runs");
    Ok(())
}
