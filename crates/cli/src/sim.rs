//! `chorus sim`: the gossip cores at scale in the simulator, Plumtree and
//! eager flooding side by side, channels (`sim/channels.rs`), and the
//! anti-entropy exchange between two large stores.

use std::path::{Path, PathBuf};

use chorus_sim::{Config, Protocol, Report};
use clap::{Args, ValueEnum};
use serde_json::json;

use chorus_node::error::Kind;

use crate::{Cli, Failure, emit};

mod channels;

#[derive(Args, Debug)]
pub(crate) struct SimArgs {
    /// Nodes in the simulated cluster [default: 1000; with --faults, 5; with --channels, 10000]
    #[arg(long)]
    nodes: Option<usize>,
    /// Messages broadcast after the overlay is built [default: 100; with --channels, 1000 after the warm-up]
    #[arg(long)]
    messages: Option<usize>,
    /// Share of the nodes to crash at once after the overlay is built (0 to <1)
    #[arg(long, default_value_t = 0.0)]
    fail: f64,
    /// Probability that a broadcast or exchange message is lost on a link (0 to <1)
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Seed of every random choice (same seed, same run)
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Broadcast protocol; both runs them one after the other on the same overlay seed
    #[arg(long, value_enum, default_value_t = ProtocolArg::Both)]
    protocol: ProtocolArg,
    /// Anti-entropy exchange interval per node in virtual ms (0 = off) [default: 2000 with --loss, else off]
    #[arg(long)]
    anti_entropy_ms: Option<u64>,
    /// Virtual ms between two broadcasts [default: 1000; with --channels, 100]
    #[arg(long)]
    message_gap_ms: Option<u64>,
    /// Plumtree's optimization: move a tree link when an announcement shows a path this many hops shorter (0 = off)
    #[arg(long)]
    optimization_threshold: Option<u32>,
    /// Draw reliability and RMR per message for both protocols into this .svg file
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Instead of broadcasting: exchange two stores of this many keys each and measure
    #[arg(long, conflicts_with_all = ["nodes", "messages", "fail", "loss", "protocol", "anti_entropy_ms", "message_gap_ms", "plot", "optimization_threshold"])]
    exchange_keys: Option<u64>,
    /// With --exchange-keys: the share of keys that differ
    #[arg(long, default_value_t = 0.01)]
    diff: f64,
    /// Instead of broadcasting: run whole nodes (the daemon's replica over real stores, written to by clients) under these faults, heal, and check the result. none, standard, all, or a list of partitions, crashes, pauses, clocks, disk, churn, loss=P
    #[arg(long, conflicts_with_all = ["messages", "fail", "loss", "protocol", "anti_entropy_ms", "message_gap_ms", "plot", "optimization_threshold", "exchange_keys"])]
    faults: Option<String>,
    /// With --faults: how many seeds to run, from --seed on
    #[arg(long, default_value_t = 1, requires = "faults")]
    seeds: u64,
    /// With --faults: virtual seconds of writes and faults before the heal
    #[arg(long, default_value_t = 30, requires = "faults")]
    run_secs: u64,
    /// With --faults: client operations per node per virtual second
    #[arg(long, default_value_t = 2.0, requires = "faults")]
    ops: f64,
    /// With --faults: append every seed that found a violation to this file, one per line
    #[arg(long, requires = "faults")]
    failures: Option<PathBuf>,
    /// Instead: the scenario of shared/seeds/001 with whole nodes: every node edits one document while apart, the cluster heals and must agree on its winner and conflicts, then one new revision is measured
    #[arg(long, conflicts_with_all = ["faults", "messages", "fail", "loss", "protocol", "anti_entropy_ms", "message_gap_ms", "plot", "optimization_threshold", "exchange_keys"])]
    conflicting_revisions: bool,
    /// Instead: partial replication with this many channels, every node in --channels-per-node of them, each channel's messages from a random live member; an overlay and a tree per channel beside the cluster-wide baseline (see --design)
    #[arg(long, conflicts_with_all = ["faults", "loss", "protocol", "anti_entropy_ms", "plot", "exchange_keys", "conflicting_revisions"])]
    channels: Option<usize>,
    /// With --channels: how many channels every node serves
    #[arg(long, default_value_t = 3, requires = "channels")]
    channels_per_node: usize,
    /// With --channels: per-channel (an overlay and a tree per channel, among its members), cluster-wide (the baseline: one overlay and tree of every node, non-members relay and drop), or both
    #[arg(long, value_enum, default_value_t = DesignArg::Both, requires = "channels")]
    design: DesignArg,
    /// With --channels: rounds of one broadcast per channel that build the trees before the measured broadcasts (and, after a crash, each channel's broadcasts left out of "RMR after the trees form")
    #[arg(long, default_value_t = 2, requires = "channels")]
    warmup_per_channel: u32,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum DesignArg {
    PerChannel,
    ClusterWide,
    Both,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ProtocolArg {
    Plumtree,
    Flood,
    Both,
}

pub(crate) fn run(cli: &Cli, args: &SimArgs) -> Result<(), Failure> {
    if let Some(keys) = args.exchange_keys {
        return exchange(cli, keys, args.diff, args.seed);
    }
    if let Some(faults) = &args.faults {
        return whole(cli, args, faults);
    }
    if args.conflicting_revisions {
        return revisions(cli, args);
    }
    if let Some(count) = args.channels {
        return channels::run(cli, args, count);
    }
    let config = config(args)?;
    if let Some(path) = &args.plot {
        check_plot_path(path)?;
    }
    let protocols: &[Protocol] = match args.protocol {
        ProtocolArg::Plumtree => &[Protocol::Plumtree],
        ProtocolArg::Flood => &[Protocol::Flood],
        ProtocolArg::Both => &[Protocol::Plumtree, Protocol::Flood],
    };
    let reports: Vec<Report> = protocols
        .iter()
        .map(|&protocol| {
            if !cli.json {
                eprintln!(
                    "simulating {} nodes, {} messages with {}...",
                    config.nodes,
                    config.messages,
                    protocol.name()
                );
            }
            chorus_sim::run(&Config {
                protocol,
                ..config.clone()
            })
        })
        .collect();
    if let Some(path) = &args.plot {
        plot(path, &reports)?;
    }
    emit(cli, json!({ "runs": reports, "plot": args.plot }), || {
        table(&config, &reports, args.plot.as_deref())
    });
    Ok(())
}

fn config(args: &SimArgs) -> Result<Config, Failure> {
    let nodes = args.nodes.unwrap_or(1_000);
    let messages = args.messages.unwrap_or(100);
    let message_gap_ms = args.message_gap_ms.unwrap_or(1_000);
    if !(2..=NODES_MAX).contains(&nodes) {
        return Err(Failure::usage(format!(
            "--nodes {nodes}: give from 2 to {NODES_MAX} nodes"
        )));
    }
    for (name, value) in [
        ("--message-gap-ms", Some(message_gap_ms)),
        ("--anti-entropy-ms", args.anti_entropy_ms),
    ] {
        if value.is_some_and(|v| v > INTERVAL_MS_MAX) {
            return Err(Failure::usage(format!(
                "{name}: give at most {INTERVAL_MS_MAX} ms (an hour of virtual time)"
            )));
        }
    }
    if messages == 0 {
        return Err(Failure::usage(
            "--messages 0 measures nothing: give at least 1",
        ));
    }
    for (name, value) in [("--fail", args.fail), ("--loss", args.loss)] {
        if !(value.is_finite() && (0.0..1.0).contains(&value)) {
            return Err(Failure::usage(format!(
                "{name} {value} is not a share: give a number from 0 up to (not including) 1"
            )));
        }
    }
    let anti_entropy_ms = match args.anti_entropy_ms {
        Some(0) => None,
        Some(ms) => Some(ms),
        None if args.loss > 0.0 => Some(2_000),
        None => None,
    };
    let mut plumtree = chorus_gossip::plumtree::Config::default();
    if let Some(t) = args.optimization_threshold {
        plumtree.optimization_threshold = t;
    }
    Ok(Config {
        plumtree,
        nodes,
        messages,
        fail: args.fail,
        loss: args.loss,
        seed: args.seed,
        message_gap_ms: message_gap_ms.max(1),
        anti_entropy_ms,
        drain_ms: if anti_entropy_ms.is_some() {
            30_000
        } else {
            10_000
        },
        ..Config::default()
    })
}

/// Refuses a plot path that is not .svg or cannot be written, before a
/// long run rather than after it.
fn check_plot_path(path: &Path) -> Result<(), Failure> {
    if path.extension().and_then(|e| e.to_str()) != Some("svg") {
        return Err(Failure::usage(format!(
            "--plot {}: only .svg is supported (convert with any SVG tool, e.g. rsvg-convert, for a .png)",
            path.display()
        )));
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map(drop)
        .map_err(|e| {
            Failure::io(format!(
                "--plot {}: cannot write there: {e}",
                path.display()
            ))
        })
}

/// Most nodes, and the longest interval in virtual ms, `chorus sim` takes:
/// beyond them a run would not finish in any useful time.
const NODES_MAX: usize = 1_000_000;
const INTERVAL_MS_MAX: u64 = 3_600_000;

fn pct(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else {
        format!("{:.2}%", v * 100.0)
    }
}

fn num(v: f64, decimals: usize) -> String {
    if v.is_nan() {
        "n/a".into()
    } else {
        format!("{v:.decimals$}")
    }
}

fn table(config: &Config, reports: &[Report], plot: Option<&Path>) -> String {
    type Cell = fn(&Report) -> String;
    let rows: [(&str, Cell); 24] = [
        ("live nodes", |r| r.live_nodes.to_string()),
        ("reliability min", |r| pct(r.reliability_min)),
        ("reliability mean", |r| pct(r.reliability_mean)),
        ("reliability min after 10", |r| {
            pct(r.reliability_min_after_10)
        }),
        ("RMR mean", |r| num(r.rmr_mean, 3)),
        ("RMR after 10, mean", |r| num(r.rmr_after_10_mean, 3)),
        ("RMR after 10, max", |r| num(r.rmr_after_10_max, 3)),
        ("LDH mean", |r| num(r.ldh_mean, 2)),
        ("LDH max", |r| r.ldh_max.to_string()),
        ("latency mean (virtual ms)", |r| num(r.latency_mean_ms, 0)),
        ("latency max (virtual ms)", |r| r.latency_max_ms.to_string()),
        ("messages per broadcast", |r| {
            num(r.messages_per_broadcast, 0)
        }),
        ("bytes per broadcast", |r| num(r.bytes_per_broadcast, 0)),
        ("grafts", |r| r.grafts.to_string()),
        ("prunes", |r| r.prunes.to_string()),
        ("anti-entropy exchanges", |r| {
            r.counters.ae_exchanges.to_string()
        }),
        ("anti-entropy repairs", |r| {
            r.counters.ae_repairs.to_string()
        }),
        ("links after stale repairs", |r| {
            r.counters.overlay_links.to_string()
        }),
        ("messages lost on links", |r| r.counters.lost.to_string()),
        ("overlay components", |r| r.overlay_components.to_string()),
        ("isolated nodes", |r| r.isolated_nodes.to_string()),
        ("events", |r| r.counters.events.to_string()),
        ("trace hash", |r| r.trace_hash.clone()),
        ("wall time", |r| {
            format!("{:.1} s", r.wall_ms as f64 / 1000.0)
        }),
    ];
    let mut out = format!(
        "{} nodes, {} messages, fail {}, loss {}, seed {}, anti-entropy {}\n",
        config.nodes,
        config.messages,
        config.fail,
        config.loss,
        config.seed,
        config
            .anti_entropy_ms
            .map_or("off".to_string(), |ms| format!("every {ms} ms")),
    );
    out.push_str(&format!("{:<28}", ""));
    for r in reports {
        out.push_str(&format!("{:>18}", r.protocol.name()));
    }
    out.push('\n');
    for (name, cell) in rows {
        out.push_str(&format!("{name:<28}"));
        for r in reports {
            out.push_str(&format!("{:>18}", cell(r)));
        }
        out.push('\n');
    }
    if let Some(path) = plot {
        out.push_str(&format!("plot written to {}\n", path.display()));
    }
    out
}

fn plot(path: &Path, reports: &[Report]) -> Result<(), Failure> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_failure(path, &e))?;
    let (top, bottom) = root.split_vertically(350);
    let min_rel = reports
        .iter()
        .flat_map(|r| r.per_message.iter().map(|m| m.reliability))
        .fold(1.0, f64::min)
        .min(0.99);
    let max_rmr = reports
        .iter()
        .flat_map(|r| r.per_message.iter().map(|m| m.rmr))
        .fold(0.1, f64::max);
    let reliability = Panel {
        caption: "Reliability per message",
        y_desc: "share of live nodes",
        y_range: (min_rel - 0.01)..1.005,
        value: |m| m.reliability,
    };
    let rmr = Panel {
        caption: "RMR per message (0 = a perfect tree)",
        y_desc: "RMR",
        y_range: 0.0..max_rmr * 1.05,
        value: |m| m.rmr,
    };
    reliability
        .draw(&top, reports)
        .map_err(|e| plot_failure(path, &e))?;
    rmr.draw(&bottom, reports)
        .map_err(|e| plot_failure(path, &e))?;
    root.present().map_err(|e| plot_failure(path, &e))?;
    Ok(())
}

fn plot_failure(path: &Path, e: &dyn std::fmt::Display) -> Failure {
    Failure::io(format!("cannot draw {}: {e}", path.display()))
}

/// One chart of the plot: a figure per message, a line per protocol.
struct Panel {
    caption: &'static str,
    y_desc: &'static str,
    y_range: std::ops::Range<f64>,
    value: fn(&chorus_sim::MessageFigures) -> f64,
}

impl Panel {
    fn draw<DB: plotters::prelude::DrawingBackend>(
        &self,
        area: &plotters::prelude::DrawingArea<DB, plotters::coord::Shift>,
        reports: &[Report],
    ) -> Result<(), String> {
        use plotters::prelude::*;
        let n = reports
            .iter()
            .map(|r| r.per_message.len())
            .max()
            .unwrap_or(1)
            .max(1);
        let colours = [RGBColor(31, 119, 180), RGBColor(214, 39, 40)];
        let mut chart = ChartBuilder::on(area)
            .caption(self.caption, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0..n, self.y_range.clone())
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("message")
            .y_desc(self.y_desc)
            .draw()
            .map_err(|e| e.to_string())?;
        for (r, colour) in reports.iter().zip(colours) {
            // Undefined figures (NaN) are left out of the line.
            let points = r
                .per_message
                .iter()
                .enumerate()
                .map(|(i, m)| (i, (self.value)(m)))
                .filter(|(_, v)| !v.is_nan());
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(r.protocol.name())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())
    }
}

fn exchange(cli: &Cli, keys: u64, diff: f64, seed: u64) -> Result<(), Failure> {
    if !(diff.is_finite() && (0.0..=1.0).contains(&diff)) {
        return Err(Failure::usage(format!(
            "--diff {diff} is not a share: give a number from 0 to 1"
        )));
    }
    if !cli.json {
        eprintln!(
            "building two stores of {keys} keys each, {:.2}% different...",
            diff * 100.0
        );
    }
    let report = chorus_sim::exchange::run(keys, diff, seed).map_err(Failure::from)?;
    emit(cli, json!(report), || report.to_string());
    Ok(())
}

/// Most nodes a whole-node simulation runs (each holds a real store).
const WHOLE_NODES_MAX: usize = 2_000;
/// Most seeds one command runs.
const SEEDS_MAX: u64 = 1_000_000;

/// `chorus sim --faults ...`: whole nodes, one run per seed; fails when a
/// checker found a violation.
fn whole(cli: &Cli, args: &SimArgs, spec: &str) -> Result<(), Failure> {
    use chorus_sim::cluster;
    let faults = cluster::Faults::parse(spec).map_err(Failure::usage)?;
    let nodes = args.nodes.unwrap_or(5);
    if !(1..=WHOLE_NODES_MAX).contains(&nodes) {
        return Err(Failure::usage(format!(
            "--nodes {nodes}: whole-node simulations take from 1 to {WHOLE_NODES_MAX} nodes"
        )));
    }
    if !(1..=SEEDS_MAX).contains(&args.seeds) {
        return Err(Failure::usage(format!(
            "--seeds {}: give from 1 to {SEEDS_MAX}",
            args.seeds
        )));
    }
    if !(1..=3_600).contains(&args.run_secs) {
        return Err(Failure::usage(format!(
            "--run-secs {}: give from 1 to 3600 virtual seconds",
            args.run_secs
        )));
    }
    if !(args.ops.is_finite() && args.ops > 0.0 && args.ops <= 1_000.0) {
        return Err(Failure::usage(format!(
            "--ops {}: give a rate above 0 and at most 1000 operations per node per second",
            args.ops
        )));
    }
    let mut runs = Vec::new();
    let mut failing = Vec::new();
    for seed in args.seed..args.seed.saturating_add(args.seeds) {
        let config = cluster::Config {
            nodes,
            seed,
            faults,
            run_ms: args.run_secs * 1_000,
            ops_per_sec: args.ops,
            ..cluster::Config::default()
        };
        let started = std::time::Instant::now();
        let outcome = cluster::run(&config).map_err(|e| Failure::of_kind(Kind::Internal, e))?;
        let wall = started.elapsed().as_secs_f64();
        if !outcome.violations.is_empty() {
            failing.push(seed);
            if let Some(path) = &args.failures {
                append_seed(path, seed)?;
            }
        }
        let line = run_line(seed, nodes, &outcome, wall);
        if !cli.json {
            println!("{line}");
            for (v, window) in outcome.violations.iter().zip(&outcome.windows) {
                println!("  {v}");
                for w in window {
                    println!("      {w}");
                }
            }
        }
        runs.push(json!({
            "seed": seed,
            "trace_hash": format!("{:016x}", outcome.trace_hash),
            "nodes": nodes,
            "virtual_ms": outcome.sim_ms,
            "wall_secs": wall,
            "converged_after_ms": outcome.converged_after_ms,
            "acknowledged": outcome.acknowledged,
            "failed": outcome.failed,
            "frames": outcome.frames,
            "bytes": outcome.bytes,
            "ae_bytes": outcome.ae_bytes,
            "keys_repaired": outcome.keys_repaired,
            "tombstones_collected": outcome.tombstones_collected,
            "tombstones_held": outcome.tombstones_held,
            "faults": outcome.faults,
            "violations": outcome.violations.iter().zip(&outcome.windows).map(|(v, w)| json!({
                "checker": v.checker,
                "key": v.key,
                "detail": v.detail,
                "window": w,
            })).collect::<Vec<_>>(),
        }));
    }
    if cli.json {
        emit(
            cli,
            json!({ "runs": runs, "failing_seeds": failing }),
            String::new,
        );
    }
    if failing.is_empty() {
        return Ok(());
    }
    Err(Failure::of_kind(
        Kind::Internal,
        format!(
            "{} of {} seeds found a violation: {}; rerun one with `chorus sim --faults {spec} --nodes {nodes} --seed S`",
            failing.len(),
            args.seeds,
            failing
                .iter()
                .take(20)
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ))
}

fn run_line(seed: u64, nodes: usize, o: &chorus_sim::cluster::Outcome, wall: f64) -> String {
    let verdict = match o.violations.len() {
        0 => "ok".to_string(),
        n => format!("{n} violation{}", if n == 1 { "" } else { "s" }),
    };
    let converged = o
        .converged_after_ms
        .map_or("did not converge".to_string(), |ms| {
            format!("converged {:.2} s after the heal", ms as f64 / 1000.0)
        });
    format!(
        "seed {seed}: {verdict}, trace {:016x}; {nodes} nodes, {:.1} virtual s in {wall:.2} s; {converged}; {} writes acknowledged, {} failed; {} tombstones collected",
        o.trace_hash,
        o.sim_ms as f64 / 1000.0,
        o.acknowledged,
        o.failed,
        o.tombstones_collected,
    )
}

fn append_seed(path: &Path, seed: u64) -> Result<(), Failure> {
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| writeln!(f, "{seed}"))
        .map_err(|e| {
            Failure::of_kind(
                Kind::Storage,
                format!("cannot write the failing seed to {}: {e}", path.display()),
            )
        })
}

/// `chorus sim --conflicting-revisions --nodes N`.
fn revisions(cli: &Cli, args: &SimArgs) -> Result<(), Failure> {
    let nodes = args.nodes.unwrap_or(100);
    if !(2..=WHOLE_NODES_MAX).contains(&nodes) {
        return Err(Failure::usage(format!(
            "--nodes {nodes}: the scenario takes from 2 to {WHOLE_NODES_MAX} nodes"
        )));
    }
    let r = chorus_sim::cluster::conflicting_revisions(nodes, args.seed)
        .map_err(|e| Failure::of_kind(Kind::Internal, e))?;
    emit(
        cli,
        json!({
            "nodes": r.nodes,
            "revisions": r.revisions,
            "conflicts": r.conflicts,
            "converged_ms": r.converged_ms,
            "new_revision_ms": r.new_revision_ms,
            "new_revision_bytes_per_node": r.new_revision_bytes_per_node,
            "object_bytes": r.object_bytes,
            "virtual_secs": r.virtual_secs,
            "wall_secs": r.wall_secs,
        }),
        || {
            format!(
                "{} nodes each made a conflicting revision; after the heal every node picks the same winner with {} conflicts ({:.1} virtual s to converge); the document's object is {} bytes\none new revision reached every node in {:.1} virtual s, {:.0} bytes sent per node\n({:.0} virtual s in {:.1} s)",
                r.nodes,
                r.conflicts,
                r.converged_ms as f64 / 1000.0,
                r.object_bytes,
                r.new_revision_ms as f64 / 1000.0,
                r.new_revision_bytes_per_node,
                r.virtual_secs,
                r.wall_secs
            )
        },
    );
    Ok(())
}
