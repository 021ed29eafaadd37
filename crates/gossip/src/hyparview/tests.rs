use std::collections::{BTreeMap, VecDeque};

use super::*;

/// Nodes and an in-order message queue; timers are fired by the test.
struct Net {
    nodes: BTreeMap<u32, HyParView<u32>>,
    queue: VecDeque<(u32, u32, Message<u32>)>,
    delivered: usize,
}

impl Net {
    fn new(n: u32, config: &Config) -> Net {
        let nodes = (0..n)
            .map(|i| (i, HyParView::new(i, config.clone(), 1000 + u64::from(i))))
            .collect();
        let mut net = Net {
            nodes,
            queue: VecDeque::new(),
            delivered: 0,
        };
        for i in 0..n {
            net.drain(i);
        }
        net
    }

    fn drain(&mut self, id: u32) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        while let Some(out) = node.poll_output() {
            if let Output::Send { to, message } = out {
                self.queue.push_back((id, to, message));
            }
        }
    }

    fn run(&mut self) {
        for _ in 0..1_000_000 {
            let Some((from, to, message)) = self.queue.pop_front() else {
                return;
            };
            let Some(node) = self.nodes.get_mut(&to) else {
                // A dead node: the sender's transport notices.
                if let Some(sender) = self.nodes.get_mut(&from) {
                    sender.peer_failed(&to);
                }
                self.drain(from);
                continue;
            };
            node.handle_message(from, message);
            self.delivered += 1;
            self.drain(to);
        }
        panic!("the network did not go quiet");
    }

    fn join_all(&mut self, through: u32) {
        let ids: Vec<u32> = self
            .nodes
            .keys()
            .copied()
            .filter(|i| *i != through)
            .collect();
        for id in ids {
            if let Some(n) = self.nodes.get_mut(&id) {
                n.join(through);
            }
            self.drain(id);
            self.run();
        }
    }

    fn shuffle_all(&mut self) {
        let ids: Vec<u32> = self.nodes.keys().copied().collect();
        for id in ids {
            if let Some(n) = self.nodes.get_mut(&id) {
                n.handle_timer(Timer::Shuffle);
            }
            self.drain(id);
        }
        self.run();
    }

    fn assert_healthy(&self, config: &Config) {
        for (id, n) in &self.nodes {
            let a = n.active_view();
            assert!(!a.is_empty(), "node {id} is isolated");
            assert!(
                a.len() <= config.active_size,
                "node {id}: active view over its size"
            );
            assert!(
                n.passive_view().len() <= config.passive_size,
                "node {id}: passive view over its size"
            );
            assert!(
                !a.contains(id) && !n.passive_view().contains(id),
                "node {id} lists itself"
            );
            for p in a {
                assert!(
                    !n.passive_view().contains(p),
                    "node {id}: {p} in both views"
                );
                let other = self.nodes.get(p).map(|o| o.active_view().contains(id));
                assert_eq!(other, Some(true), "link {id} -> {p} is not symmetric");
            }
            let mut d = a.to_vec();
            d.sort();
            d.dedup();
            assert_eq!(d.len(), a.len(), "node {id}: duplicate active peers");
        }
    }
}

fn small() -> Config {
    Config {
        active_size: 3,
        passive_size: 8,
        ..Config::default()
    }
}

#[test]
fn joins_build_a_symmetric_overlay_within_the_view_sizes() {
    let config = small();
    let mut net = Net::new(40, &config);
    net.join_all(0);
    net.assert_healthy(&config);
    let passive_total: usize = net.nodes.values().map(|n| n.passive_view().len()).sum();
    assert!(
        passive_total > 0,
        "joins fill passive views through the random walks"
    );
}

#[test]
fn a_join_floods_no_view_past_its_bound() {
    let config = small();
    let mut net = Net::new(200, &config);
    // Everyone joins through the same contact, all at once.
    let ids: Vec<u32> = (1..200).collect();
    for id in &ids {
        if let Some(n) = net.nodes.get_mut(id) {
            n.join(0);
        }
        net.drain(*id);
    }
    net.run();
    for n in net.nodes.values() {
        assert!(n.active_view().len() <= config.active_size);
        assert!(n.passive_view().len() <= config.passive_size);
    }
}

#[test]
fn a_failed_active_peer_is_replaced_from_the_passive_view() {
    let config = small();
    let mut net = Net::new(30, &config);
    net.join_all(0);
    net.shuffle_all();
    let victim = 5;
    let neighbors: Vec<u32> = net.nodes[&victim].active_view().to_vec();
    net.nodes.remove(&victim);
    for p in &neighbors {
        if let Some(n) = net.nodes.get_mut(p) {
            n.peer_failed(&victim);
        }
        net.drain(*p);
    }
    net.run();
    for p in &neighbors {
        let n = &net.nodes[p];
        assert!(!n.active_view().contains(&victim));
        assert!(
            !n.active_view().is_empty(),
            "node {p} promoted a passive peer"
        );
    }
}

#[test]
fn a_full_node_refuses_a_low_priority_neighbor_and_accepts_a_high_one() {
    let config = Config {
        active_size: 1,
        ..small()
    };
    let mut n = HyParView::new(0u32, config, 1);
    while n.poll_output().is_some() {}
    n.handle_message(
        1,
        Message::Neighbor {
            priority: Priority::High,
        },
    );
    let outs: Vec<Output<u32>> = std::iter::from_fn(|| n.poll_output()).collect();
    assert!(outs.contains(&Output::NeighborUp(1)));
    assert!(outs.contains(&Output::Send {
        to: 1,
        message: Message::NeighborReply { accepted: true }
    }));
    n.handle_message(
        2,
        Message::Neighbor {
            priority: Priority::Low,
        },
    );
    let outs: Vec<Output<u32>> = std::iter::from_fn(|| n.poll_output()).collect();
    assert_eq!(
        outs,
        vec![Output::Send {
            to: 2,
            message: Message::NeighborReply { accepted: false }
        }]
    );
    n.handle_message(
        3,
        Message::Neighbor {
            priority: Priority::High,
        },
    );
    let outs: Vec<Output<u32>> = std::iter::from_fn(|| n.poll_output()).collect();
    assert!(
        outs.contains(&Output::NeighborDown(1)),
        "a full view makes room"
    );
    assert!(outs.contains(&Output::Send {
        to: 1,
        message: Message::Disconnect
    }));
    assert_eq!(n.active_view(), &[3]);
    assert_eq!(n.passive_view(), &[1], "the dropped peer becomes a backup");
}

#[test]
fn a_disconnect_moves_the_peer_to_the_passive_view_and_promotes_another() {
    let mut n = HyParView::new(0u32, small(), 1);
    for p in [1, 2] {
        n.handle_message(
            p,
            Message::Neighbor {
                priority: Priority::High,
            },
        );
    }
    n.handle_message(9, Message::ShuffleReply { peers: vec![7] });
    while n.poll_output().is_some() {}
    n.handle_message(1, Message::Disconnect);
    let outs: Vec<Output<u32>> = std::iter::from_fn(|| n.poll_output()).collect();
    assert!(outs.contains(&Output::NeighborDown(1)));
    assert!(n.passive_view().contains(&1));
    let asked: Vec<&u32> = outs
        .iter()
        .filter_map(|o| match o {
            Output::Send {
                to,
                message:
                    Message::Neighbor {
                        priority: Priority::Low,
                    },
            } => Some(to),
            _ => None,
        })
        .collect();
    assert_eq!(
        asked.len(),
        1,
        "one passive peer asked to fill the gap: {outs:?}"
    );
}

#[test]
fn shuffles_refresh_passive_views() {
    let config = small();
    let mut net = Net::new(40, &config);
    net.join_all(0);
    let before: Vec<Vec<u32>> = net
        .nodes
        .values()
        .map(|n| n.passive_view().to_vec())
        .collect();
    for _ in 0..5 {
        net.shuffle_all();
    }
    let after: Vec<Vec<u32>> = net
        .nodes
        .values()
        .map(|n| n.passive_view().to_vec())
        .collect();
    assert_ne!(before, after);
    net.assert_healthy(&config);
}

#[test]
fn the_same_seeds_and_inputs_give_the_same_run() {
    let run = || {
        let config = small();
        let mut net = Net::new(60, &config);
        net.join_all(3);
        net.shuffle_all();
        let views: Vec<(Vec<u32>, Vec<u32>)> = net
            .nodes
            .values()
            .map(|n| (n.active_view().to_vec(), n.passive_view().to_vec()))
            .collect();
        (views, net.delivered)
    };
    assert_eq!(run(), run());
}

fn drain(n: &mut HyParView<u32>) -> Vec<Output<u32>> {
    std::iter::from_fn(|| n.poll_output()).collect()
}

fn sends(outs: &[Output<u32>]) -> Vec<(u32, Message<u32>)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Send { to, message } => Some((*to, message.clone())),
            _ => None,
        })
        .collect()
}

/// A node whose active view holds `peers`.
fn with_active(peers: &[u32]) -> HyParView<u32> {
    let mut n = HyParView::new(0u32, small(), 42);
    for p in peers {
        n.handle_message(
            *p,
            Message::Neighbor {
                priority: Priority::High,
            },
        );
    }
    drain(&mut n);
    n
}

#[test]
fn a_join_is_accepted_and_walked_to_every_other_active_peer() {
    let mut n = with_active(&[1, 2]);
    n.handle_message(9, Message::Join);
    let out = sends(&drain(&mut n));
    assert!(n.active_view().contains(&9));
    assert!(out.contains(&(
        9,
        Message::Neighbor {
            priority: Priority::High
        }
    )));
    for p in [1, 2] {
        assert!(
            out.contains(&(p, Message::ForwardJoin { joiner: 9, ttl: 6 })),
            "{out:?}"
        );
    }
}

#[test]
fn a_forward_join_at_ttl_zero_or_with_one_neighbour_ends_the_walk_here() {
    let mut n = with_active(&[1, 2]);
    n.handle_message(1, Message::ForwardJoin { joiner: 9, ttl: 0 });
    assert!(
        n.active_view().contains(&9),
        "ttl 0: the joiner is taken in"
    );
    let mut lone = with_active(&[1]);
    lone.handle_message(1, Message::ForwardJoin { joiner: 9, ttl: 5 });
    assert!(
        lone.active_view().contains(&9),
        "only the sender as neighbour: taken in"
    );
    assert!(sends(&drain(&mut lone)).contains(&(
        9,
        Message::Neighbor {
            priority: Priority::High
        }
    )));
}

#[test]
fn a_forward_join_walks_on_to_another_peer_and_fills_the_passive_view_at_prwl() {
    let mut n = with_active(&[1, 2, 3]);
    n.handle_message(1, Message::ForwardJoin { joiner: 9, ttl: 3 });
    let out = sends(&drain(&mut n));
    assert!(!n.active_view().contains(&9));
    assert!(
        n.passive_view().contains(&9),
        "at the passive walk length the joiner becomes a backup"
    );
    assert_eq!(out.len(), 1, "{out:?}");
    let (to, message) = &out[0];
    assert!(*to == 2 || *to == 3, "never back to the sender");
    assert_eq!(message, &Message::ForwardJoin { joiner: 9, ttl: 2 });
    n.handle_message(1, Message::ForwardJoin { joiner: 8, ttl: 5 });
    assert!(
        !n.passive_view().contains(&8),
        "above the passive walk length it only passes through"
    );
}

#[test]
fn a_shuffle_is_forwarded_while_it_has_hops_then_answered_and_merged() {
    let mut n = with_active(&[1, 2, 3]);
    n.handle_message(
        1,
        Message::Shuffle {
            origin: 7,
            ttl: 4,
            peers: vec![7, 20, 21],
        },
    );
    let out = sends(&drain(&mut n));
    assert_eq!(out.len(), 1);
    assert!(
        matches!(&out[0], (to, Message::Shuffle { origin: 7, ttl: 3, .. }) if *to != 1 && *to != 7)
    );
    assert!(
        n.passive_view().is_empty(),
        "a shuffle passing through changes nothing"
    );
    n.handle_message(
        2,
        Message::Shuffle {
            origin: 7,
            ttl: 1,
            peers: vec![7, 20, 21],
        },
    );
    let out = sends(&drain(&mut n));
    assert!(
        matches!(&out[..], [(7, Message::ShuffleReply { .. })]),
        "answered to the origin: {out:?}"
    );
    for p in [7, 20, 21] {
        assert!(
            n.passive_view().contains(&p),
            "{p} merged into the passive view"
        );
    }
}

#[test]
fn a_shuffle_reply_fills_the_passive_view_without_self_or_active_peers() {
    let mut n = with_active(&[1]);
    n.handle_message(
        5,
        Message::ShuffleReply {
            peers: vec![0, 1, 30, 31],
        },
    );
    let mut p = n.passive_view().to_vec();
    p.sort();
    assert_eq!(p, vec![30, 31]);
}

#[test]
fn the_shuffle_timer_sends_a_sample_of_both_views_and_rearms() {
    let mut n = with_active(&[1, 2]);
    n.handle_message(
        5,
        Message::ShuffleReply {
            peers: vec![30, 31],
        },
    );
    drain(&mut n);
    n.handle_timer(Timer::Shuffle);
    let outs = drain(&mut n);
    assert!(outs.contains(&Output::SetTimer {
        after_ms: 10_000,
        timer: Timer::Shuffle
    }));
    let shuffles: Vec<Vec<u32>> = sends(&outs)
        .into_iter()
        .filter_map(|(_, m)| match m {
            Message::Shuffle {
                origin: 0, peers, ..
            } => Some(peers),
            _ => None,
        })
        .collect();
    assert_eq!(shuffles.len(), 1);
    assert_eq!(shuffles[0][0], 0, "the origin sends itself first");
    assert!(
        shuffles[0].iter().any(|p| *p == 30 || *p == 31),
        "and passive peers"
    );
}

#[test]
fn a_restarted_node_that_joins_again_is_answered_though_already_active() {
    let mut n = with_active(&[1, 2]);
    n.handle_message(1, Message::Join);
    let out = sends(&drain(&mut n));
    assert!(
        out.contains(&(
            1,
            Message::Neighbor {
                priority: Priority::High
            }
        )),
        "{out:?}"
    );
    assert_eq!(n.active_view().iter().filter(|p| **p == 1).count(), 1);
}

#[test]
fn connect_joins_two_overlays_whose_active_views_are_full() {
    // Two separate overlays of 6: no join or shuffle would ever link them.
    let config = small();
    let mut net = Net::new(12, &config);
    for id in 1..6 {
        if let Some(n) = net.nodes.get_mut(&id) {
            n.join(0);
        }
        net.drain(id);
        net.run();
    }
    for id in 7..12 {
        if let Some(n) = net.nodes.get_mut(&id) {
            n.join(6);
        }
        net.drain(id);
        net.run();
    }
    let linked = |net: &Net| {
        (0..6).any(|a| {
            net.nodes[&a]
                .active_view()
                .iter()
                .any(|p| (6..12).contains(p))
        })
    };
    assert!(!linked(&net));
    if let Some(n) = net.nodes.get_mut(&2) {
        n.connect(9);
    }
    net.drain(2);
    net.run();
    assert!(linked(&net));
    net.assert_healthy(&config);
}

#[test]
fn views_of_size_zero_do_not_panic() {
    let config = Config {
        active_size: 0,
        passive_size: 0,
        ..Config::default()
    };
    let mut net = Net::new(5, &config);
    net.join_all(0);
    net.shuffle_all();
    for n in net.nodes.values() {
        assert!(n.active_view().len() <= 1);
        assert!(n.passive_view().is_empty());
    }
}
