//! The broadcast layer a simulated node runs: Chorus's Plumtree, or the
//! baseline, eager flood gossip over the same HyParView active view (every
//! node forwards a new message to every active peer but its sender: the
//! same fanout, no tree).

use std::collections::VecDeque;

use chorus_gossip::plumtree::{self, Application, Message, Output, Plumtree, Timer};

/// Ids are message numbers; payloads are sized by the byte model, not
/// carried.
pub(crate) type Msg = Message<u64, ()>;
pub(crate) type Out = Output<u32, u64, ()>;

/// Which protocol the simulated nodes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Epidemic broadcast trees.
    Plumtree,
    /// Eager flooding over the same overlay.
    Flood,
}

impl Protocol {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Plumtree => "plumtree",
            Protocol::Flood => "flood",
        }
    }
}

/// The application as the broadcast layer sees it: which messages this
/// node has delivered (kept across restarts, as a store would).
pub(crate) struct Delivered<'a>(pub(crate) &'a [bool]);

impl Application<u64, ()> for Delivered<'_> {
    fn is_stale(&mut self, id: &u64) -> bool {
        self.has(*id)
    }
    fn payload(&mut self, id: &u64) -> Option<()> {
        self.has(*id).then_some(())
    }
}

impl Delivered<'_> {
    fn has(&self, id: u64) -> bool {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.0.get(i))
            .copied()
            .unwrap_or(false)
    }
}

/// Eager flooding: no state but the active view.
#[derive(Debug)]
pub(crate) struct Flood {
    peers: Vec<u32>,
    out: VecDeque<Out>,
    pub(crate) duplicates: u64,
}

pub(crate) enum Layer {
    Plumtree(Box<Plumtree<u32, u64, ()>>),
    Flood(Flood),
}

impl Layer {
    pub(crate) fn new(protocol: Protocol, me: u32, config: &plumtree::Config) -> Layer {
        match protocol {
            Protocol::Plumtree => Layer::Plumtree(Box::new(Plumtree::new(me, config.clone()))),
            Protocol::Flood => Layer::Flood(Flood {
                peers: Vec::new(),
                out: VecDeque::new(),
                duplicates: 0,
            }),
        }
    }

    pub(crate) fn broadcast(&mut self, now: u64, id: u64) {
        match self {
            Layer::Plumtree(p) => p.broadcast(now, id, ()),
            Layer::Flood(f) => f.push(id, 0, None),
        }
    }

    pub(crate) fn handle(&mut self, now: u64, from: u32, msg: Msg, app: &mut Delivered<'_>) {
        match self {
            Layer::Plumtree(p) => p.handle_message(now, from, msg, app),
            Layer::Flood(f) => {
                if let Message::Gossip { id, round, .. } = msg {
                    if app.is_stale(&id) {
                        f.duplicates += 1;
                    } else {
                        let hops = round.saturating_add(1);
                        f.push(id, hops, Some(from));
                        f.out.push_back(Output::Deliver {
                            id,
                            payload: (),
                            from,
                            hops,
                        });
                    }
                }
            }
        }
    }

    pub(crate) fn tick(&mut self, now: u64, app: &mut Delivered<'_>) {
        if let Layer::Plumtree(p) = self {
            p.handle_timer(now, Timer::Tick, app);
        }
    }

    pub(crate) fn neighbor_up(&mut self, peer: u32) {
        match self {
            Layer::Plumtree(p) => p.neighbor_up(peer),
            Layer::Flood(f) => {
                if !f.peers.contains(&peer) {
                    f.peers.push(peer);
                }
            }
        }
    }

    pub(crate) fn neighbor_down(&mut self, peer: u32) {
        match self {
            Layer::Plumtree(p) => p.neighbor_down(&peer),
            Layer::Flood(f) => f.peers.retain(|p| *p != peer),
        }
    }

    pub(crate) fn poll(&mut self) -> Option<Out> {
        match self {
            Layer::Plumtree(p) => p.poll_output(),
            Layer::Flood(f) => f.out.pop_front(),
        }
    }

    /// (eager, lazy) link counts.
    pub(crate) fn links(&self) -> (usize, usize) {
        match self {
            Layer::Plumtree(p) => (p.eager_peers().len(), p.lazy_peers().len()),
            Layer::Flood(f) => (f.peers.len(), 0),
        }
    }

    pub(crate) fn stats(&self) -> plumtree::Stats {
        match self {
            Layer::Plumtree(p) => p.stats().clone(),
            Layer::Flood(f) => plumtree::Stats {
                duplicates: f.duplicates,
                ..plumtree::Stats::default()
            },
        }
    }
}

impl Flood {
    fn push(&mut self, id: u64, round: u32, except: Option<u32>) {
        for &peer in &self.peers {
            if Some(peer) != except {
                self.out.push_back(Output::Send {
                    to: peer,
                    message: Message::Gossip {
                        id,
                        round,
                        payload: (),
                    },
                });
            }
        }
    }
}
