//! Bugs injected on purpose (feature `mutations`): some seed of the
//! standard fault mix must catch each, within a budget CI affords. Run
//! with `cargo test -p chorus-sim --features mutations --test mutations`.

#![cfg(feature = "mutations")]

use chorus_replica::Mutation;
use chorus_sim::cluster::{self, Config, Faults};

/// The first seed (of `budget`) whose run the checkers fail, with what
/// they found.
fn caught(mutation: Mutation, budget: u64) -> Option<(u64, String)> {
    (1..=budget).find_map(|seed| {
        let outcome = cluster::run(&Config {
            seed,
            faults: Faults::standard(),
            mutation,
            ..Config::default()
        })
        .expect("the run");
        outcome.violations.first().map(|v| (seed, v.to_string()))
    })
}

#[test]
fn collecting_tombstones_before_every_member_has_them_is_caught() {
    let found = caught(Mutation::CollectEarly, 100);
    assert!(
        found.is_some(),
        "collecting a tombstone without waiting for every member's exchange went unnoticed for 100 seeds"
    );
    eprintln!("CollectEarly caught: {found:?}");
}

#[test]
fn skipping_the_merge_of_objects_with_siblings_is_caught() {
    let found = caught(Mutation::SkipSiblings, 100);
    assert!(
        found.is_some(),
        "skipping objects with siblings went unnoticed for 100 seeds"
    );
    eprintln!("SkipSiblings caught: {found:?}");
}

#[test]
fn the_replica_as_released_is_not_reported_by_the_same_seeds() {
    // The same budget without a mutation: what the tests above catch is
    // the mutation, not the seeds.
    assert_eq!(caught(Mutation::None, 20), None);
}

#[test]
fn collecting_a_channel_tombstone_before_every_member_of_it_has_it_is_caught() {
    // Two channels with overlapping members over the two plain-key
    // prefixes: a tombstone there waits for the channel's members only,
    // and collecting it earlier must still be seen.
    let channel = |name: &str, kv, nodes: Vec<u32>| cluster::SimChannel {
        name: name.into(),
        kv,
        nodes,
    };
    let found = (1..=100).find_map(|seed| {
        let outcome = cluster::run(&Config {
            seed,
            faults: Faults::standard(),
            mutation: Mutation::CollectEarly,
            channels: vec![
                channel("ca", 0, vec![0, 1, 2]),
                channel("cb", 1, vec![2, 3, 4]),
            ],
            ..Config::default()
        })
        .expect("the run");
        outcome.violations.first().map(|v| (seed, v.to_string()))
    });
    assert!(
        found.is_some(),
        "collecting channel tombstones early went unnoticed for 100 seeds"
    );
    eprintln!("CollectEarly with channels caught: {found:?}");
}
