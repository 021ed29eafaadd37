//! Channels at a size that runs in seconds: 1,000 nodes, 10 channels of
//! about 300, every node in 3. The per-channel design must reach every
//! live member and no non-member, with a tree; the cluster-wide baseline
//! must show what reaching non-members looks like, so the counter is seen
//! to count.

use chorus_sim::channels::{Config, Design, Report, run};

fn small() -> Config {
    Config {
        nodes: 1_000,
        channels: 10,
        channels_per_node: 3,
        messages: 60,
        settle_ms: 10_000,
        repair_ms: 15_000,
        ..Config::default()
    }
}

fn check_per_channel(r: &Report) {
    assert_eq!((r.members_min, r.members_max), (300, 300));
    assert_eq!(r.broadcasts, 60);
    assert_eq!(r.reliability_min, 1.0, "a live member missed a message");
    assert_eq!(r.broadcasts_incomplete, 0);
    assert_eq!(r.non_member_frames_total, 0, "{:?}", r.counters);
    assert_eq!(r.counters.unrouted, 0);
    assert_eq!(r.relays_per_broadcast, 0.0);
    assert!(r.ldh_max > 0 && r.ldh_mean > 1.0, "LDH {}", r.ldh_mean);
}

#[test]
fn per_channel_trees_reach_every_member_and_no_one_else() -> Result<(), String> {
    let r = run(&small(), Design::PerChannel)?;
    check_per_channel(&r);
    assert_eq!(r.tree_formed_broadcasts, 60);
    assert!(
        r.rmr_tree_formed_max <= 0.05,
        "RMR after the trees formed: {}",
        r.rmr_tree_formed_max
    );
    assert_eq!(r.overlays_split, 0);
    Ok(())
}

#[test]
fn after_half_the_nodes_crash_every_live_member_still_gets_every_message() -> Result<(), String> {
    let r = run(
        &Config {
            fail: 0.5,
            ..small()
        },
        Design::PerChannel,
    )?;
    assert_eq!(r.live_nodes, 500);
    check_per_channel(&r);
    assert!(
        r.rmr_tree_formed_mean <= 0.05,
        "healed trees' RMR: {}",
        r.rmr_tree_formed_mean
    );
    Ok(())
}

#[test]
fn the_cluster_wide_baseline_sends_to_non_members_and_the_counter_sees_it() -> Result<(), String> {
    let r = run(&small(), Design::ClusterWide)?;
    assert_eq!(r.reliability_min, 1.0);
    // Every node relays every message: 700 of the 1,000 are not members.
    assert_eq!(r.relays_per_broadcast, 700.0);
    assert!(
        r.non_member_frames_per_broadcast >= 700.0,
        "{}",
        r.non_member_frames_per_broadcast
    );
    assert!(r.non_member_frames_total > 0);
    Ok(())
}

#[test]
fn the_same_seed_gives_the_same_trace_in_both_designs() -> Result<(), String> {
    let config = Config {
        nodes: 200,
        channels: 5,
        messages: 20,
        fail: 0.3,
        settle_ms: 5_000,
        repair_ms: 5_000,
        ..Config::default()
    };
    for design in [Design::PerChannel, Design::ClusterWide] {
        let (a, b) = (run(&config, design)?, run(&config, design)?);
        assert_eq!(a.trace_hash, b.trace_hash);
        assert_eq!(a.counters.events, b.counters.events);
        let c = run(
            &Config {
                seed: 2,
                ..config.clone()
            },
            design,
        )?;
        assert_ne!(a.trace_hash, c.trace_hash);
    }
    // Both designs broadcast the same messages from the same origins.
    let (p, c) = (
        run(&config, Design::PerChannel)?,
        run(&config, Design::ClusterWide)?,
    );
    let channels = |r: &Report| r.per_message.iter().map(|m| m.channel).collect::<Vec<_>>();
    assert_eq!(channels(&p), channels(&c));
    Ok(())
}

#[test]
fn an_impossible_assignment_is_refused() {
    let bad = Config {
        channels: 2,
        channels_per_node: 3,
        ..small()
    };
    let Err(e) = run(&bad, Design::PerChannel) else {
        panic!("3 distinct channels of 2 were assigned");
    };
    assert!(e.contains("channels per node"), "{e}");
}
