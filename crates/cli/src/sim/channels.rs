//! `chorus sim --channels C`: partial replication at gossip scale, an
//! overlay and a tree per channel beside the cluster-wide baseline, with
//! the issue's goals checked in the text report.

use chorus_sim::channels::{Config, Design, Report};
use serde_json::json;

use super::{DesignArg, INTERVAL_MS_MAX, NODES_MAX, SimArgs, num, pct};
use crate::{Cli, Failure, emit};

/// Most (node, channel) pairs a run simulates: each is a HyParView and a
/// Plumtree state; beyond this a run would not finish in useful time.
const PAIRS_MAX: usize = 4_000_000;
/// Most warm-up rounds.
const WARMUP_MAX: u32 = 1_000;
/// The issue's bound on RMR once the trees have formed.
const RMR_GOAL: f64 = 0.05;

pub(super) fn run(cli: &Cli, args: &SimArgs, channels: usize) -> Result<(), Failure> {
    let config = config(args, channels)?;
    let designs: &[Design] = match args.design {
        DesignArg::PerChannel => &[Design::PerChannel],
        DesignArg::ClusterWide => &[Design::ClusterWide],
        DesignArg::Both => &[Design::PerChannel, Design::ClusterWide],
    };
    let mut reports = Vec::new();
    for &design in designs {
        if !cli.json {
            eprintln!(
                "simulating {} nodes, {} channels, {} per node, {} messages, {}...",
                config.nodes,
                config.channels,
                config.channels_per_node,
                config.messages,
                design.name()
            );
        }
        reports.push(chorus_sim::channels::run(&config, design).map_err(Failure::usage)?);
    }
    emit(cli, json!({ "runs": reports }), || table(&config, &reports));
    Ok(())
}

/// The run's configuration, or a usage error naming the flag at fault.
fn config(args: &SimArgs, channels: usize) -> Result<Config, Failure> {
    let nodes = args.nodes.unwrap_or(10_000);
    let per_node = args.channels_per_node;
    let channels_max = chorus_core::channels::MAX_CHANNELS;
    if !(2..=NODES_MAX).contains(&nodes) {
        return Err(Failure::usage(format!(
            "--nodes {nodes}: give from 2 to {NODES_MAX} nodes"
        )));
    }
    if !(1..=channels_max).contains(&channels) {
        return Err(Failure::usage(format!(
            "--channels {channels}: give from 1 to {channels_max} channels (a channel table's most)"
        )));
    }
    if !(1..=channels).contains(&per_node) {
        return Err(Failure::usage(format!(
            "--channels-per-node {per_node}: every node serves from 1 to --channels ({channels}) distinct channels"
        )));
    }
    if nodes.saturating_mul(per_node) < 2 * channels {
        return Err(Failure::usage(format!(
            "--channels {channels} with {nodes} nodes in {per_node} each leaves channels with fewer than 2 members: give fewer channels, more nodes or more --channels-per-node"
        )));
    }
    if nodes.saturating_mul(per_node) > PAIRS_MAX {
        return Err(Failure::usage(format!(
            "--nodes {nodes} x --channels-per-node {per_node}: at most {PAIRS_MAX} (node, channel) pairs"
        )));
    }
    let messages = args.messages.unwrap_or(1_000);
    if messages == 0 {
        return Err(Failure::usage(
            "--messages 0 measures nothing: give at least 1",
        ));
    }
    let gap = args.message_gap_ms.unwrap_or(100);
    if gap > INTERVAL_MS_MAX {
        return Err(Failure::usage(format!(
            "--message-gap-ms: give at most {INTERVAL_MS_MAX} ms (an hour of virtual time)"
        )));
    }
    if !(args.fail.is_finite() && (0.0..1.0).contains(&args.fail)) {
        return Err(Failure::usage(format!(
            "--fail {} is not a share: give a number from 0 up to (not including) 1",
            args.fail
        )));
    }
    if args.warmup_per_channel > WARMUP_MAX {
        return Err(Failure::usage(format!(
            "--warmup-per-channel {}: give at most {WARMUP_MAX}",
            args.warmup_per_channel
        )));
    }
    let mut plumtree = chorus_gossip::plumtree::Config::default();
    if let Some(t) = args.optimization_threshold {
        plumtree.optimization_threshold = t;
    }
    Ok(Config {
        nodes,
        channels,
        channels_per_node: per_node,
        messages,
        warmup_per_channel: args.warmup_per_channel,
        fail: args.fail,
        seed: args.seed,
        message_gap_ms: gap.max(1),
        plumtree,
        ..Config::default()
    })
}

fn table(config: &Config, reports: &[Report]) -> String {
    type Cell = fn(&Report) -> String;
    let rows: [(&str, Cell); 23] = [
        ("channel members, min-max", |r| {
            format!("{}-{}", r.members_min, r.members_max)
        }),
        ("live nodes", |r| r.live_nodes.to_string()),
        ("live members per channel", |r| num(r.live_members_mean, 1)),
        ("broadcasts (warm-up)", |r| {
            format!("{} ({})", r.broadcasts, r.warmup_broadcasts)
        }),
        ("reliability min", |r| pct(r.reliability_min)),
        ("reliability mean", |r| pct(r.reliability_mean)),
        ("broadcasts missing a member", |r| {
            r.broadcasts_incomplete.to_string()
        }),
        ("to non-members / broadcast", |r| {
            format!(
                "{} (max {})",
                num(r.non_member_frames_per_broadcast, 1),
                r.non_member_frames_per_broadcast_max
            )
        }),
        ("to non-members, whole run", |r| {
            r.non_member_frames_total.to_string()
        }),
        ("RMR, trees formed (n)", |r| {
            format!(
                "{}/{} ({})",
                num(r.rmr_tree_formed_mean, 4),
                num(r.rmr_tree_formed_max, 3),
                r.tree_formed_broadcasts
            )
        }),
        ("RMR, every broadcast, mean", |r| num(r.rmr_mean, 4)),
        ("LDH mean / max", |r| {
            format!("{} / {}", num(r.ldh_mean, 2), r.ldh_max)
        }),
        ("latency mean / max (ms)", |r| {
            format!("{} / {}", num(r.latency_mean_ms, 0), r.latency_max_ms)
        }),
        ("payloads / broadcast", |r| num(r.payloads_per_broadcast, 1)),
        ("tree messages / broadcast", |r| {
            num(r.broadcast_messages_per_broadcast, 0)
        }),
        ("tree bytes / broadcast", |r| {
            num(r.broadcast_bytes_per_broadcast, 0)
        }),
        ("membership msgs / node / s", |r| {
            num(r.membership_messages_per_node_s, 2)
        }),
        ("active links per node", |r| num(r.active_links_per_node, 2)),
        ("overlays split / isolated", |r| {
            format!("{} / {}", r.overlays_split, r.isolated_pairs)
        }),
        ("one-sided links: views / trees", |r| {
            format!("{} / {}", r.one_sided_view_links, r.one_way_tree_links)
        }),
        ("grafts / prunes", |r| {
            format!("{} / {}", r.grafts, r.prunes)
        }),
        ("events, trace", |r| {
            format!(
                "{}, {}",
                r.counters.events,
                &r.trace_hash[..8.min(r.trace_hash.len())]
            )
        }),
        ("wall time", |r| {
            format!("{:.1} s", r.wall_ms as f64 / 1000.0)
        }),
    ];
    let mut out = format!(
        "{} nodes, {} channels, {} per node, {} messages (+{} warm-up per channel), fail {}, seed {}\n",
        config.nodes,
        config.channels,
        config.channels_per_node,
        config.messages,
        config.warmup_per_channel,
        config.fail,
        config.seed,
    );
    out.push_str(&format!("{:<30}", ""));
    for r in reports {
        out.push_str(&format!("{:>24}", r.design.name()));
    }
    out.push('\n');
    for (name, cell) in rows {
        out.push_str(&format!("{name:<30}"));
        for r in reports {
            out.push_str(&format!("{:>24}", cell(r)));
        }
        out.push('\n');
    }
    for r in reports.iter().filter(|r| r.design == Design::PerChannel) {
        out.push_str(&goals(r));
    }
    if let [p, c] = reports {
        out.push_str(&format!(
            "per channel instead of cluster-wide: {} instead of {} frames to non-members and {} instead of {} payloads per broadcast\n",
            num(p.non_member_frames_per_broadcast, 1),
            num(c.non_member_frames_per_broadcast, 1),
            num(p.payloads_per_broadcast, 1),
            num(c.payloads_per_broadcast, 1),
        ));
    }
    out
}

/// The issue's goals for the per-channel design, each met or missed. The
/// RMR goal is the undisturbed trees'; after a crash it is reported only.
fn goals(r: &Report) -> String {
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let rmr = if r.fail > 0.0 {
        "reported, not a goal after a crash"
    } else {
        verdict(r.rmr_tree_formed_max <= RMR_GOAL)
    };
    format!(
        "goals: reliability 100% {}; 0 frames to non-members {}; RMR after the trees form <= {RMR_GOAL}: {rmr} (max {})\n",
        verdict(r.reliability_min == 1.0),
        verdict(r.non_member_frames_total == 0),
        num(r.rmr_tree_formed_max, 4),
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::Command;

    fn parse(extra: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(["chorus", "sim"].iter().chain(extra))
    }

    /// Parses `chorus sim ARGS` and builds the channel configuration.
    fn configure(extra: &[&str]) -> Result<Config, String> {
        let cli = parse(extra).map_err(|e| e.to_string())?;
        let Command::Sim(args) = &cli.command else {
            return Err("not the sim command".into());
        };
        let Some(channels) = args.channels else {
            return Err("no --channels".into());
        };
        config(args, channels).map_err(|f| f.message)
    }

    #[test]
    fn defaults_are_the_issue_scenario() -> Result<(), String> {
        let c = configure(&["--channels", "100"])?;
        assert_eq!((c.nodes, c.channels, c.channels_per_node), (10_000, 100, 3));
        assert_eq!((c.messages, c.message_gap_ms), (1_000, 100));
        Ok(())
    }

    #[test]
    fn bad_channel_arguments_are_refused_naming_the_flag() {
        for (args, flag) in [
            (&["--channels", "0"][..], "--channels 0"),
            (&["--channels", "5000"], "--channels 5000"),
            (
                &["--channels", "10", "--channels-per-node", "11"],
                "--channels-per-node 11",
            ),
            (
                &["--channels", "10", "--channels-per-node", "0"],
                "--channels-per-node 0",
            ),
            (
                &["--channels", "100", "--nodes", "20"],
                "fewer than 2 members",
            ),
            (&["--channels", "10", "--messages", "0"], "--messages 0"),
            (&["--channels", "10", "--fail", "1"], "--fail 1"),
            (
                &["--channels", "10", "--warmup-per-channel", "5000"],
                "--warmup-per-channel",
            ),
        ] {
            match configure(args) {
                Ok(_) => panic!("{args:?} was accepted"),
                Err(e) => assert!(e.contains(flag), "{args:?}: {e}"),
            }
        }
    }

    #[test]
    fn channel_flags_need_channels_and_exclude_other_modes() {
        for args in [
            &["--channels-per-node", "2"][..],
            &["--design", "per-channel"],
            &["--channels", "10", "--loss", "0.1"],
            &["--channels", "10", "--faults", "all"],
            &["--channels", "10", "--plot", "x.svg"],
        ] {
            assert!(parse(args).is_err(), "{args:?} was accepted");
        }
        assert!(parse(&["--channels", "10", "--design", "cluster-wide"]).is_ok());
    }
}
