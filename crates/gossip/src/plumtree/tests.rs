use std::collections::{BTreeMap, HashMap, VecDeque};

use super::*;

type Node = Plumtree<u32, u64, &'static str>;
type Out = Output<u32, u64, &'static str>;

/// The application: the payloads a node has.
#[derive(Default)]
struct Store(HashMap<u64, &'static str>);

impl Application<u64, &'static str> for Store {
    fn is_stale(&mut self, id: &u64) -> bool {
        self.0.contains_key(id)
    }
    fn payload(&mut self, id: &u64) -> Option<&'static str> {
        self.0.get(id).copied()
    }
}

fn node(me: u32, eager: &[u32]) -> Node {
    let mut n = Node::new(me, Config::default());
    for &p in eager {
        n.neighbor_up(p);
    }
    n
}

fn drain(n: &mut Node) -> Vec<Out> {
    std::iter::from_fn(|| n.poll_output()).collect()
}

fn sends(out: &[Out]) -> Vec<(u32, Message<u64, &'static str>)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { to, message } => Some((*to, message.clone())),
            _ => None,
        })
        .collect()
}

fn gossip(id: u64, round: u32) -> Message<u64, &'static str> {
    Message::Gossip {
        id,
        round,
        payload: "p",
    }
}

#[test]
fn broadcast_pushes_the_payload_to_eager_peers_and_announces_to_lazy_peers_at_the_tick() {
    let mut n = node(0, &[1, 2, 3]);
    n.handle_message(0, 3, Message::Prune, &mut Store::default());
    n.broadcast(0, 7, "p");
    let out = drain(&mut n);
    assert_eq!(sends(&out), vec![(1, gossip(7, 0)), (2, gossip(7, 0))]);
    assert!(out.contains(&Output::SetTimer {
        after_ms: 100,
        timer: Timer::Tick
    }));
    n.handle_timer(100, Timer::Tick, &mut Store::default());
    let out = drain(&mut n);
    assert_eq!(sends(&out), vec![(3, Message::IHave { ids: vec![(7, 0)] })]);
    assert!(
        !out.iter().any(|o| matches!(o, Output::SetTimer { .. })),
        "no work left, no timer"
    );
}

#[test]
fn a_new_payload_is_delivered_and_forwarded_to_every_eager_peer_but_its_sender() {
    let mut n = node(0, &[1, 2, 3]);
    let mut app = Store::default();
    n.handle_message(5, 1, gossip(9, 2), &mut app);
    let out = drain(&mut n);
    assert_eq!(sends(&out), vec![(2, gossip(9, 3)), (3, gossip(9, 3))]);
    assert!(out.contains(&Output::Deliver {
        id: 9,
        payload: "p",
        from: 1,
        hops: 3
    }));
}

#[test]
fn a_duplicate_payload_prunes_the_link_it_came_over() {
    let mut n = node(0, &[1, 2]);
    let mut app = Store::default();
    n.handle_message(0, 1, gossip(9, 0), &mut app);
    drain(&mut n);
    n.handle_message(1, 2, gossip(9, 0), &mut app);
    let out = drain(&mut n);
    assert_eq!(sends(&out), vec![(2, Message::Prune)]);
    assert!(!out.iter().any(|o| matches!(o, Output::Deliver { .. })));
    assert_eq!(n.eager_peers(), &[1]);
    assert_eq!(n.lazy_peers(), &[2]);
    assert_eq!(n.stats().duplicates, 1);
}

#[test]
fn a_payload_the_application_already_has_is_forwarded_but_not_delivered_and_not_pruned() {
    let mut n = node(0, &[1, 2]);
    let mut app = Store::default();
    app.0.insert(4, "from anti-entropy");
    n.handle_message(0, 1, gossip(4, 0), &mut app);
    let out = drain(&mut n);
    assert_eq!(
        sends(&out),
        vec![(2, gossip(4, 1))],
        "its subtree still needs it"
    );
    assert!(!out.iter().any(|o| matches!(o, Output::Deliver { .. })));
    assert_eq!(n.eager_peers(), &[1, 2]);
    assert_eq!(n.stats().already_known, 1);
    // A second copy over the broadcast layer is a duplicate.
    n.handle_message(1, 2, gossip(4, 0), &mut app);
    assert_eq!(sends(&drain(&mut n)), vec![(2, Message::Prune)]);
}

#[test]
fn a_prune_moves_the_sender_to_lazy() {
    let mut n = node(0, &[1, 2]);
    n.handle_message(0, 2, Message::Prune, &mut Store::default());
    assert_eq!(n.eager_peers(), &[1]);
    assert_eq!(n.lazy_peers(), &[2]);
}

#[test]
fn an_announced_id_that_does_not_arrive_grafts_its_first_announcer_after_the_timeout() {
    let mut n = node(0, &[1, 2]);
    let mut app = Store::default();
    n.handle_message(0, 1, Message::Prune, &mut app);
    n.handle_message(0, 2, Message::Prune, &mut app);
    n.handle_message(0, 1, Message::IHave { ids: vec![(5, 3)] }, &mut app);
    n.handle_message(10, 2, Message::IHave { ids: vec![(5, 1)] }, &mut app);
    drain(&mut n);
    // Ticks before the deadline graft nothing.
    n.handle_timer(100, Timer::Tick, &mut app);
    n.handle_timer(300, Timer::Tick, &mut app);
    assert!(sends(&drain(&mut n)).is_empty());
    n.handle_timer(400, Timer::Tick, &mut app);
    assert_eq!(
        sends(&drain(&mut n)),
        vec![(
            1,
            Message::Graft {
                id: Some(5),
                round: 3
            }
        )]
    );
    assert!(n.eager_peers().contains(&1), "a graft makes the link eager");
    // The retry timer then tries the second announcer.
    n.handle_timer(500, Timer::Tick, &mut app);
    assert!(sends(&drain(&mut n)).is_empty());
    n.handle_timer(600, Timer::Tick, &mut app);
    assert_eq!(
        sends(&drain(&mut n)),
        vec![(
            2,
            Message::Graft {
                id: Some(5),
                round: 1
            }
        )]
    );
    // With no announcer left, the id is given up to anti-entropy.
    n.handle_timer(800, Timer::Tick, &mut app);
    assert!(sends(&drain(&mut n)).is_empty());
    assert_eq!(n.occupancy().1, 0);
    assert_eq!(n.stats().missing_abandoned, 1);
}

#[test]
fn a_payload_that_arrives_before_the_deadline_cancels_the_graft() {
    let mut n = node(0, &[1, 2]);
    let mut app = Store::default();
    n.handle_message(0, 2, Message::IHave { ids: vec![(5, 0)] }, &mut app);
    n.handle_message(50, 1, gossip(5, 0), &mut app);
    drain(&mut n);
    n.handle_timer(400, Timer::Tick, &mut app);
    let out = drain(&mut n);
    assert!(
        !sends(&out)
            .iter()
            .any(|(_, m)| matches!(m, Message::Graft { .. }))
    );
    assert_eq!(n.occupancy().1, 0);
}

#[test]
fn an_announcement_of_a_known_id_is_ignored() {
    let mut n = node(0, &[1, 2]);
    let mut app = Store::default();
    n.handle_message(0, 1, gossip(5, 0), &mut app);
    n.handle_message(1, 2, Message::IHave { ids: vec![(5, 0)] }, &mut app);
    assert_eq!(n.occupancy().1, 0);
}

#[test]
fn a_graft_is_answered_with_the_payload_and_makes_the_link_eager() {
    let mut n = node(0, &[1]);
    let mut app = Store::default();
    app.0.insert(5, "five");
    n.handle_message(0, 1, Message::Prune, &mut app);
    assert_eq!(n.lazy_peers(), &[1]);
    n.handle_message(
        0,
        1,
        Message::Graft {
            id: Some(5),
            round: 2,
        },
        &mut app,
    );
    assert_eq!(
        sends(&drain(&mut n)),
        vec![(
            1,
            Message::Gossip {
                id: 5,
                round: 2,
                payload: "five"
            }
        )]
    );
    assert_eq!(n.eager_peers(), &[1]);
}

#[test]
fn a_graft_for_a_payload_the_application_lacks_goes_unanswered() {
    let mut n = node(0, &[1]);
    n.handle_message(
        0,
        1,
        Message::Graft {
            id: Some(5),
            round: 2,
        },
        &mut Store::default(),
    );
    assert!(sends(&drain(&mut n)).is_empty());
    assert_eq!(n.eager_peers(), &[1]);
}

#[test]
fn a_neighbor_that_goes_down_is_no_longer_pushed_to_announced_to_or_grafted() {
    let mut n = node(0, &[1, 2, 3]);
    let mut app = Store::default();
    n.handle_message(0, 3, Message::Prune, &mut app);
    n.handle_message(0, 2, Message::IHave { ids: vec![(8, 0)] }, &mut app);
    n.broadcast(0, 7, "p");
    drain(&mut n);
    n.neighbor_down(&3);
    n.neighbor_down(&2);
    assert_eq!(n.eager_peers(), &[1]);
    assert!(n.lazy_peers().is_empty());
    n.handle_timer(400, Timer::Tick, &mut app);
    assert!(sends(&drain(&mut n)).is_empty(), "nothing to a closed link");
}

#[test]
fn announcements_and_grafts_from_a_peer_that_is_no_longer_a_neighbor_make_no_tree_link() {
    let mut n = node(0, &[1, 2]);
    let mut app = Store::default();
    app.0.insert(5, "five");
    n.neighbor_down(&2);
    n.handle_message(0, 2, Message::IHave { ids: vec![(9, 0)] }, &mut app);
    assert_eq!(
        n.occupancy().1,
        0,
        "not waited for: it would graft a closed link"
    );
    n.handle_message(
        0,
        2,
        Message::Graft {
            id: Some(5),
            round: 1,
        },
        &mut app,
    );
    assert_eq!(
        sends(&drain(&mut n)),
        vec![(
            2,
            Message::Gossip {
                id: 5,
                round: 1,
                payload: "five"
            }
        )],
        "still answered"
    );
    assert_eq!(n.eager_peers(), &[1]);
    assert!(n.lazy_peers().is_empty());
}

#[test]
fn settings_that_would_break_the_protocol_are_raised_to_their_least_workable_value() {
    let config = Config {
        tick_ms: 0,
        seen_max: 0,
        ihave_batch_max: 0,
        ..Config::default()
    };
    let mut n = Node::new(0, config);
    n.neighbor_up(1);
    n.broadcast(0, 1, "p");
    let out = drain(&mut n);
    assert_eq!(sends(&out), vec![(1, gossip(1, 0))]);
    // A copy coming back is a duplicate, not a new message going round.
    n.handle_message(1, 1, gossip(1, 3), &mut Store::default());
    assert_eq!(sends(&drain(&mut n)), vec![(1, Message::Prune)]);
}

#[test]
fn a_neighbor_that_comes_up_starts_eager() {
    let mut n = node(0, &[1]);
    n.handle_message(0, 1, Message::Prune, &mut Store::default());
    n.neighbor_up(2);
    n.neighbor_up(1);
    assert_eq!(n.eager_peers(), &[2, 1]);
    assert!(n.lazy_peers().is_empty());
}

#[test]
fn announcements_are_batched_per_peer_up_to_the_batch_size() {
    let config = Config {
        ihave_batch_max: 2,
        ..Config::default()
    };
    let mut n = Node::new(0, config);
    let mut app = Store::default();
    for p in [1, 2] {
        n.neighbor_up(p);
        n.handle_message(0, p, Message::Prune, &mut app);
    }
    for id in 0..3 {
        n.broadcast(0, id, "p");
    }
    drain(&mut n);
    n.handle_timer(100, Timer::Tick, &mut app);
    let ihaves: Vec<(u32, usize)> = sends(&drain(&mut n))
        .into_iter()
        .map(|(to, m)| match m {
            Message::IHave { ids } => (to, ids.len()),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(ihaves, vec![(1, 2), (2, 2), (1, 1), (2, 1)]);
}

#[test]
fn every_bounded_structure_stays_within_its_bound_under_a_flood() {
    let config = Config {
        seen_max: 100,
        missing_max: 50,
        lazy_queue_max: 40,
        ..Config::default()
    };
    let mut n = Node::new(0, config.clone());
    let mut app = Store::default();
    for p in 1..=6 {
        n.neighbor_up(p);
    }
    for p in 4..=6 {
        n.handle_message(0, p, Message::Prune, &mut app);
    }
    for i in 0..10_000u64 {
        let peer = (i % 6) as u32 + 1;
        match i % 3 {
            0 => n.handle_message(i, peer, gossip(i, 1), &mut app),
            1 => n.handle_message(
                i,
                peer,
                Message::IHave {
                    ids: vec![(i, 1), (i + 1, 2)],
                },
                &mut app,
            ),
            _ => n.broadcast(i, i + 1_000_000, "p"),
        }
        let (seen, missing, queued) = n.occupancy();
        assert!(seen <= config.seen_max, "seen {seen}");
        assert!(missing <= config.missing_max, "missing {missing}");
        assert!(queued <= config.lazy_queue_max, "queued {queued}");
        // The output queue is drained after every input, as callers must.
        assert!(drain(&mut n).len() < 64);
    }
    let stats = n.stats();
    assert!(stats.lazy_dropped > 0 && stats.missing_evicted > 0);
}

/// A tiny network of Plumtree nodes over a fixed graph: messages are
/// delivered in FIFO order with 1 ms per hop, timers in time order.
struct Net {
    nodes: Vec<Node>,
    apps: Vec<Store>,
    alive: Vec<bool>,
    queue: VecDeque<(u64, u32, u32, Message<u64, &'static str>)>,
    timers: BTreeMap<(u64, u32), ()>,
    now: u64,
    payloads_sent: u64,
}

impl Net {
    fn new(n: u32, edges: &[(u32, u32)]) -> Net {
        let mut nodes: Vec<Node> = (0..n).map(|i| node(i, &[])).collect();
        for &(a, b) in edges {
            nodes[a as usize].neighbor_up(b);
            nodes[b as usize].neighbor_up(a);
        }
        Net {
            apps: (0..n).map(|_| Store::default()).collect(),
            alive: vec![true; n as usize],
            nodes,
            queue: VecDeque::new(),
            timers: BTreeMap::new(),
            now: 0,
            payloads_sent: 0,
        }
    }

    fn collect(&mut self, i: u32) {
        while let Some(out) = self.nodes[i as usize].poll_output() {
            match out {
                Output::Send { to, message } => {
                    if matches!(message, Message::Gossip { .. }) {
                        self.payloads_sent += 1;
                    }
                    self.queue.push_back((self.now + 1, i, to, message));
                }
                Output::SetTimer { after_ms, .. } => {
                    assert!(
                        !self.timers.keys().any(|&(_, n)| n == i),
                        "node {i} armed its tick twice"
                    );
                    self.timers.insert((self.now + after_ms, i), ());
                }
                Output::Deliver { id, payload, .. } => {
                    self.apps[i as usize].0.insert(id, payload);
                }
            }
        }
    }

    fn broadcast(&mut self, from: u32, id: u64) {
        self.apps[from as usize].0.insert(id, "p");
        self.nodes[from as usize].broadcast(self.now, id, "p");
        self.collect(from);
        self.run();
    }

    fn run(&mut self) {
        loop {
            let next_msg = self.queue.front().map(|m| m.0);
            let next_timer = self.timers.keys().next().copied();
            let message_first = match (next_msg, next_timer) {
                (Some(t), Some((tt, _))) => t <= tt,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => return,
            };
            if message_first {
                let Some((at, from, to, message)) = self.queue.pop_front() else {
                    return;
                };
                self.now = at;
                if self.alive[to as usize] {
                    let (node, app) = (&mut self.nodes[to as usize], &mut self.apps[to as usize]);
                    node.handle_message(at, from, message, app);
                    self.collect(to);
                }
            } else if let Some(key) = next_timer {
                self.timers.remove(&key);
                self.now = key.0;
                let i = key.1 as usize;
                if self.alive[i] {
                    self.nodes[i].handle_timer(key.0, Timer::Tick, &mut self.apps[i]);
                    self.collect(key.1);
                }
            }
        }
    }

    fn crash(&mut self, dead: u32) {
        self.alive[dead as usize] = false;
        for i in 0..self.nodes.len() {
            self.nodes[i].neighbor_down(&dead);
        }
    }

    fn delivered(&self, id: u64) -> usize {
        (0..self.nodes.len())
            .filter(|&i| self.alive[i] && self.apps[i].0.contains_key(&id))
            .count()
    }

    fn eager_edges(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| n.eager_peers().len())
            .sum::<usize>()
            / 2
    }
}

/// A ring of 40 nodes with chords: 80 links, so many cycles.
fn ring_with_chords() -> Vec<(u32, u32)> {
    (0..40u32)
        .flat_map(|i| [(i, (i + 1) % 40), (i, (i + 7) % 40)])
        .collect()
}

#[test]
fn after_one_broadcast_the_eager_links_form_a_spanning_tree_and_later_broadcasts_send_no_duplicates()
 {
    let mut net = Net::new(40, &ring_with_chords());
    net.broadcast(0, 1);
    assert_eq!(net.delivered(1), 40);
    assert_eq!(net.eager_edges(), 39, "a spanning tree of 40 nodes");
    for (k, source) in [13u32, 27, 39].into_iter().enumerate() {
        let before = net.payloads_sent;
        net.broadcast(source, 10 + k as u64);
        assert_eq!(net.delivered(10 + k as u64), 40);
        assert_eq!(net.payloads_sent - before, 39, "RMR 0 from source {source}");
    }
}

#[test]
fn a_crashed_inner_node_is_routed_around_by_grafts_without_a_reset() {
    let mut net = Net::new(40, &ring_with_chords());
    net.broadcast(0, 1);
    // Crash the node with the most eager links: the tree falls apart.
    let hub = (0..40u32)
        .max_by_key(|&i| net.nodes[i as usize].eager_peers().len())
        .unwrap_or(0);
    net.crash(hub);
    let source = (hub + 20) % 40;
    net.broadcast(source, 2);
    assert_eq!(net.delivered(2), 39, "every survivor got it");
    assert!(net.nodes.iter().map(|n| n.stats().grafts_sent).sum::<u64>() > 0);
    // The repaired tree carries the next message with no grafts.
    let grafts: u64 = net.nodes.iter().map(|n| n.stats().grafts_sent).sum();
    net.broadcast(source, 3);
    assert_eq!(net.delivered(3), 39);
    assert_eq!(
        net.nodes.iter().map(|n| n.stats().grafts_sent).sum::<u64>(),
        grafts
    );
}
