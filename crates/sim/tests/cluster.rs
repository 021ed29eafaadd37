//! Whole nodes under simulation: hundreds of seeds with faults, each
//! checked; determinism; the figures' scenarios stay runnable.

use chorus_sim::cluster::{self, Config, Faults};

/// Runs `count` seeds from `first` and fails listing every seed that found
/// a violation (rerun one with `chorus sim --faults ... --seed S`).
fn sweep(faults: &str, nodes: usize, first: u64, count: u64) {
    let mut failing = Vec::new();
    for seed in first..first + count {
        let outcome = cluster::run(&Config {
            nodes,
            seed,
            faults: Faults::parse(faults).expect("a valid fault list"),
            ..Config::default()
        })
        .expect("the run");
        if !outcome.violations.is_empty() {
            let first = outcome
                .violations
                .first()
                .map(ToString::to_string)
                .unwrap_or_default();
            failing.push(format!("seed {seed}: {first}"));
        }
    }
    assert!(
        failing.is_empty(),
        "{} of {count} seeds with --faults {faults} found violations; rerun with `chorus sim --faults {faults} --nodes {nodes} --seed S`:\n{}",
        failing.len(),
        failing.join("\n")
    );
}

#[test]
fn three_hundred_seeds_of_the_standard_fault_mix_pass_every_checker() {
    sweep("standard", 5, 1, 300);
}

#[test]
#[ignore = "open finding of issue 17: 1 of these 100 seeds (10028: 13 nodes after joins and copies) ends with operation-log record tombstones still held by some nodes 60 s after the heal; rerun with chorus sim --faults all --nodes 7 --seed 10028"]
fn a_hundred_seeds_with_churn_pass_every_checker() {
    sweep("all", 7, 10_001, 100);
}

#[test]
fn a_run_without_faults_converges_and_acknowledges_what_clients_wrote() {
    let outcome = cluster::run(&Config {
        faults: Faults::default(),
        ..Config::default()
    })
    .expect("the run");
    assert!(outcome.violations.is_empty(), "{:?}", outcome.violations);
    assert!(outcome.acknowledged > 100, "{outcome:?}");
    assert!(outcome.converged_after_ms.is_some());
}

#[test]
fn the_same_seed_gives_the_same_trace_and_another_seed_another() {
    let run = |seed| {
        cluster::run(&Config {
            seed,
            ..Config::default()
        })
        .expect("the run")
    };
    let (a, b, c) = (run(7), run(7), run(8));
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.events, b.events);
    assert_eq!(a.bytes, b.bytes);
    assert_ne!(a.trace_hash, c.trace_hash);
}

#[test]
fn bad_fault_lists_are_refused_with_the_reason() {
    for (spec, says) in [
        ("lightning", "unknown fault `lightning`"),
        ("loss=2", "from 0 to 0.5"),
        ("loss=x", "from 0 to 0.5"),
    ] {
        let e = Faults::parse(spec).expect_err(spec);
        assert!(e.contains(says), "{spec}: {e}");
    }
    assert_eq!(Faults::parse("none,"), Ok(Faults::default()));
}

#[test]
fn nodes_that_each_edit_a_document_apart_agree_on_its_winner_and_conflicts() {
    let report = cluster::conflicting_revisions(20, 3).expect("the scenario");
    assert_eq!(report.revisions, 20);
    assert!(report.conflicts >= 19, "{report:?}");
    assert!(report.new_revision_bytes_per_node > 0.0, "{report:?}");
}
