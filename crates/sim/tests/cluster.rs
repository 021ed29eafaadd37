//! Whole nodes under simulation: seeds, determinism, checkers.

use chorus_sim::cluster::{self, Config, Faults};

#[test]
fn five_nodes_without_faults_converge_and_pass_every_checker() {
    let outcome = cluster::run(&Config {
        faults: Faults::default(),
        ..Config::default()
    })
    .expect("the run");
    eprintln!("{outcome:?}");
    assert!(outcome.violations.is_empty(), "{:?}", outcome.violations);
    assert!(outcome.acknowledged > 100);
}
#[test]
fn debug_roots() {
    let mut w = chorus_sim::cluster::World::new(&chorus_sim::cluster::Config {
        faults: chorus_sim::cluster::Faults::default(),
        run_ms: 3000,
        converge_ms: 5000,
        ..Default::default()
    })
    .expect("w");
    w.run();
    for l in w.debug_roots() {
        eprintln!("{l}");
    }
}

#[test]
fn standard_faults_seed_1() {
    let outcome = cluster::run(&Config::default()).expect("the run");
    eprintln!("{outcome:?}");
    for w in &outcome.windows {
        for l in w {
            eprintln!("{l}");
        }
    }
    assert!(outcome.violations.is_empty(), "{:?}", outcome.violations);
}
