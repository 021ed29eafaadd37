//! Which node is in which channel: every node in exactly `per_node`
//! distinct channels, every channel with `nodes * per_node / channels`
//! members (rounded up or down), drawn from the seed alone.
//!
//! Invariant: the assignment is a pure function of its four arguments;
//! the simulated overlays never change it, so it is the ground truth the
//! network checks every frame against.

use chorus_gossip::Rng;

use crate::world::mix;

/// Nodes of each channel and channels of each node, both sorted.
#[derive(Debug, Clone)]
pub struct Assignment {
    of_node: Vec<Vec<u32>>,
    members: Vec<Vec<u32>>,
}

impl Assignment {
    /// Draws an assignment. Round `j` of `per_node` gives every node one
    /// channel: a shuffled deck with each channel equally often (the decks
    /// of all rounds together hold each channel `nodes * per_node /
    /// channels` times, give or take one); a node dealt a channel it already
    /// has swaps that card with a node of the same round for whom both
    /// cards are new.
    pub fn new(
        nodes: usize,
        channels: usize,
        per_node: usize,
        seed: u64,
    ) -> Result<Assignment, String> {
        if nodes == 0 || channels == 0 {
            return Err("a channel assignment needs at least one node and one channel".into());
        }
        if per_node == 0 || per_node > channels {
            return Err(format!(
                "every node in {per_node} of {channels} channels: give from 1 to {channels} channels per node"
            ));
        }
        let channels_u32 = u32::try_from(channels)
            .map_err(|_| format!("{channels} channels: give at most {}", u32::MAX))?;
        let mut rng = Rng::new(mix(seed ^ 0xC4A2_2E15_0000_0019));
        let mut of_node: Vec<Vec<u32>> = vec![Vec::with_capacity(per_node); nodes];
        for round in 0..per_node {
            let mut deck: Vec<u32> = (0..nodes)
                .map(|i| ((round * nodes + i) % channels) as u32)
                .collect();
            shuffle(&mut rng, &mut deck);
            deal_distinct(&mut rng, &of_node, &mut deck)?;
            for (held, card) in of_node.iter_mut().zip(deck) {
                held.push(card);
            }
        }
        let mut members = vec![Vec::new(); channels];
        for (node, held) in of_node.iter_mut().enumerate() {
            held.sort_unstable();
            for &c in held.iter() {
                members[c as usize].push(node as u32);
            }
        }
        debug_assert!(of_node.iter().flatten().all(|&c| c < channels_u32));
        Ok(Assignment { of_node, members })
    }

    /// The channels `node` serves, sorted (empty for an unknown node).
    pub fn channels_of(&self, node: u32) -> &[u32] {
        self.of_node.get(node as usize).map_or(&[], Vec::as_slice)
    }

    /// The members of `channel`, sorted (empty for an unknown channel).
    pub fn members(&self, channel: u32) -> &[u32] {
        self.members
            .get(channel as usize)
            .map_or(&[], Vec::as_slice)
    }

    /// True when `node` serves `channel`.
    pub fn serves(&self, node: u32, channel: u32) -> bool {
        self.channels_of(node).binary_search(&channel).is_ok()
    }

    /// Number of channels.
    pub fn channel_count(&self) -> usize {
        self.members.len()
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.of_node.len()
    }
}

fn shuffle(rng: &mut Rng, deck: &mut [u32]) {
    for i in (1..deck.len()).rev() {
        let j = rng.below(i + 1);
        deck.swap(i, j);
    }
}

/// Swaps cards of `deck` (one per node) until no node is dealt a channel
/// it holds already. Each repair scans the deck once from a random start.
fn deal_distinct(rng: &mut Rng, held: &[Vec<u32>], deck: &mut [u32]) -> Result<(), String> {
    let n = deck.len();
    for i in 0..n {
        if !held[i].contains(&deck[i]) {
            continue;
        }
        let start = rng.below(n);
        let partner = (0..n)
            .map(|k| (start + k) % n)
            .find(|&m| m != i && !held[i].contains(&deck[m]) && !held[m].contains(&deck[i]));
        let Some(m) = partner else {
            return Err(format!(
                "cannot give every one of {n} nodes distinct channels: use more channels or fewer channels per node"
            ));
        };
        deck.swap(i, m);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_gets_distinct_channels_and_channels_are_balanced() -> Result<(), String> {
        for (nodes, channels, per_node) in [(1_000, 10, 3), (997, 13, 4), (10, 3, 3), (2, 2, 2)] {
            let a = Assignment::new(nodes, channels, per_node, 7)?;
            for node in 0..nodes as u32 {
                let held = a.channels_of(node);
                assert_eq!(held.len(), per_node);
                assert!(held.windows(2).all(|w| w[0] < w[1]), "distinct, sorted");
                for &c in held {
                    assert!(a.members(c).contains(&node));
                }
            }
            let sizes: Vec<usize> = (0..channels as u32).map(|c| a.members(c).len()).collect();
            let (lo, hi) = (sizes.iter().min(), sizes.iter().max());
            let even = nodes * per_node / channels;
            assert!(
                lo >= Some(&even.saturating_sub(1)) && hi <= Some(&(even + 1)),
                "{sizes:?}"
            );
            assert_eq!(sizes.iter().sum::<usize>(), nodes * per_node);
        }
        Ok(())
    }

    #[test]
    fn the_same_seed_gives_the_same_assignment() -> Result<(), String> {
        let (a, b) = (
            Assignment::new(500, 10, 3, 1)?,
            Assignment::new(500, 10, 3, 1)?,
        );
        let c = Assignment::new(500, 10, 3, 2)?;
        assert_eq!(a.of_node, b.of_node);
        assert_ne!(a.of_node, c.of_node);
        Ok(())
    }

    #[test]
    fn impossible_assignments_are_refused() {
        assert!(Assignment::new(10, 3, 4, 1).is_err());
        assert!(Assignment::new(10, 3, 0, 1).is_err());
        assert!(Assignment::new(0, 3, 1, 1).is_err());
        assert!(Assignment::new(10, 0, 1, 1).is_err());
    }
}
