//! The anti-entropy exchange: a ping-pong of steps between two sessions,
//! comparing trees top-down and then swapping the objects that differ.
//!
//! The initiator A sends `Begin` with its root. From then on each side, on
//! its turn, compares what the peer sent with its own tree and answers in
//! one [`Step`]:
//!
//! - a root that differs: B lists its prefixes ([`NamedChildren`]);
//! - a prefix that differs: the receiver lists its full prefixes in it;
//! - a full prefix or segment-tree node that differs, by hash or count:
//!   if the peer has no key under it, all of this side's objects under it;
//!   else, if this side has none, or both have at most `leaf_threshold`, or
//!   it is a deepest node, this side's (key hash, object hash) pairs under
//!   it (`entries`, empty when it has none); else this side's summaries of
//!   its four children (`expand`), which the peer compares in turn;
//! - `entries`: the objects of the keys whose pairs the peer lacks, and
//!   the key hashes of the peer's pairs this side lacks (`want`);
//! - `want`: the objects of those key hashes.
//!
//! A side with nothing to say sends one empty step; a side receiving an
//! empty step with nothing to say ends without replying. Work beyond a
//! step's item cap waits in the session and goes out in later turns, and
//! `more` tells the peer to keep the ping-pong going meanwhile.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::{MAX_LEVEL, MerkleTree, Summary, node_range};

/// Tuning for one side of an exchange. The two sides may differ: every
/// decision is taken by the side that compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExchangeConfig {
    /// A differing node with at most this many keys on both sides is
    /// settled by listing its (key hash, object hash) pairs rather than by
    /// descending further. Values above `max_step_items` act as
    /// `max_step_items`.
    pub leaf_threshold: usize,
    /// Most items in one step (see [`Step::items`]); work beyond it waits
    /// for the next turns. Values below 4 act as 4 (one node's children).
    pub max_step_items: usize,
    /// Most bytes of objects (as [`ObjectSource::size`] counts them) in one
    /// step; the rest waits for the next turns. An object larger than this
    /// goes in a step of its own, so every object is sent eventually.
    pub max_step_bytes: usize,
}

impl Default for ExchangeConfig {
    fn default() -> Self {
        ExchangeConfig {
            leaf_threshold: 8,
            max_step_items: 8192,
            max_step_bytes: 8 << 20,
        }
    }
}

/// The application's objects, read when the exchange sends them.
pub trait ObjectSource<K, O> {
    /// The object stored under `key` in full prefix (`prefix`, `sub`) now,
    /// or `None` if there is none (the key is then skipped).
    fn object(&mut self, prefix: &[u8], sub: &[u8], key: &K) -> Option<O>;
    /// What `object` costs of a step's byte budget
    /// ([`ExchangeConfig::max_step_bytes`]): its encoded size, key included.
    fn size(&self, key: &K, object: &O) -> usize;
}

/// An object the peer sent, for the application to merge into its store
/// (and then to report to its tree with [`MerkleTree::update`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair<K, O> {
    /// The key's prefix.
    pub prefix: Vec<u8>,
    /// The key's subprefix.
    pub sub: Vec<u8>,
    /// The key.
    pub key: K,
    /// The peer's object.
    pub object: O,
}

/// The exchange's messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message<K, O> {
    /// Opens an exchange: the initiator's root.
    Begin {
        /// The initiator's root summary.
        root: Summary,
    },
    /// One turn of the ping-pong.
    Step(Step<K, O>),
}

/// One turn: comparisons and objects, grouped by where in the tree they
/// belong. An empty step says that its sender has nothing more to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step<K, O> {
    /// The sender's children of named nodes (the root, prefixes) that
    /// differed.
    pub named: Vec<NamedChildren>,
    /// Work inside full prefixes.
    pub full: Vec<FullPrefixStep<K, O>>,
    /// The sender has queued work beyond this step, which it sends in its
    /// next turns (so the receiver must not take an empty step of its own
    /// as the end).
    pub more: bool,
}

/// Some children of the root or of a prefix: every child of the sender's
/// whose name is in `from..to` (a name missing from the list means the
/// sender has no such child).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedChildren {
    /// `None`: the root, whose children are prefixes; `Some(prefix)`: a
    /// prefix, whose children are subprefixes.
    pub parent: Option<Vec<u8>>,
    /// First name covered (inclusive; the empty name is the smallest).
    pub from: Vec<u8>,
    /// End of the names covered (exclusive); `None`: to the last name.
    pub to: Option<Vec<u8>>,
    /// The children in the range, by name, with their summaries.
    pub children: Vec<(Vec<u8>, Summary)>,
}

/// A node's children in an `expand`: (level, index, the sender's four
/// children's summaries).
pub type NodeChildren = (u8, u64, [Summary; 4]);

/// A node's pairs in `entries`: (level, index, the sender's (key hash,
/// object hash) pairs under it).
pub type NodeEntries = (u8, u64, Vec<(u64, u64)>);

/// A step's work inside one full prefix. Nodes are (level, index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FullPrefixStep<K, O> {
    /// The prefix.
    pub prefix: Vec<u8>,
    /// The subprefix.
    pub sub: Vec<u8>,
    /// Nodes that differed, with the sender's summaries of their four
    /// children.
    pub expand: Vec<NodeChildren>,
    /// Nodes that differed and are small, with all the sender's (key hash,
    /// object hash) pairs under them; an empty list asks for every object
    /// under the node.
    pub entries: Vec<NodeEntries>,
    /// Key hashes whose objects the sender wants.
    pub want: Vec<u64>,
    /// Objects the sender has and the receiver lacks or holds differently.
    pub objects: Vec<(K, O)>,
}

/// Counters for one side of an exchange.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExchangeStats {
    /// Messages this side sent (`Begin` and steps, empty ones included).
    pub rounds: u64,
    /// Summaries this side compared with its own (roots, named children,
    /// segment-tree children).
    pub nodes_compared: u64,
    /// Summaries sent (named children and segment-tree children).
    pub summaries_sent: u64,
    /// (key hash, object hash) pairs sent in `entries`.
    pub entries_sent: u64,
    /// (key hash, object hash) pairs received in `entries`.
    pub entries_received: u64,
    /// Key hashes sent in `want`.
    pub wants_sent: u64,
    /// Key hashes received in `want`.
    pub wants_received: u64,
    /// Objects sent.
    pub objects_sent: u64,
    /// Objects received.
    pub objects_received: u64,
}

impl<K, O> Message<K, O> {
    /// Items in the message, as counted against
    /// [`ExchangeConfig::max_step_items`]: 1 for `Begin`, else
    /// [`Step::items`].
    pub fn items(&self) -> usize {
        match self {
            Message::Begin { .. } => 1,
            Message::Step(step) => step.items(),
        }
    }
}

impl<K, O> Step<K, O> {
    /// Items in the step: each summary, (key hash, object hash) pair, wanted
    /// key hash and object counts one; an empty list of named children or
    /// of entries counts one too, so a step's size is bounded by its items
    /// (and the lengths of names and keys).
    pub fn items(&self) -> usize {
        let named: usize = self.named.iter().map(|n| n.children.len().max(1)).sum();
        let full: usize = self
            .full
            .iter()
            .map(|f| {
                let entries: usize = f.entries.iter().map(|(_, _, e)| e.len().max(1)).sum();
                4 * f.expand.len() + entries + f.want.len() + f.objects.len()
            })
            .sum();
        named + full
    }

    /// True when the step carries nothing: its sender is finished.
    pub fn is_empty(&self) -> bool {
        self.named.is_empty() && self.full.is_empty()
    }
}

/// A segment-tree node of a full prefix.
#[derive(Debug, Clone)]
struct Node {
    prefix: Vec<u8>,
    sub: Vec<u8>,
    level: u8,
    index: u64,
}

/// Work waiting to be sent. Tasks that produce much (object sweeps, named
/// children) are lazy and resumable, so the queue never holds objects and
/// each turn reads the tree as it is then.
#[derive(Debug, Clone)]
enum Task<K> {
    /// Send this side's children of the root or of a prefix, from `from`.
    Children {
        parent: Option<Vec<u8>>,
        from: Vec<u8>,
    },
    /// Send this side's summaries of the node's four children.
    Expand(Node),
    /// Send this side's (key hash, object hash) pairs under the node.
    Entries(Node),
    /// Send the objects of every key under the node, after `after`.
    Range { node: Node, after: Option<(u64, K)> },
    /// Send every object of every full prefix (of `scope` only, if given)
    /// after `after`.
    Sweep {
        scope: Option<Vec<u8>>,
        after: Option<(Vec<u8>, Vec<u8>)>,
    },
    /// Ask for the objects of these key hashes.
    Want {
        prefix: Vec<u8>,
        sub: Vec<u8>,
        key_hashes: Vec<u64>,
    },
    /// Send the objects of these keys.
    Keys {
        prefix: Vec<u8>,
        sub: Vec<u8>,
        keys: Vec<K>,
    },
}

/// What to do with a child that differs.
enum Action {
    /// The peer has nothing under it: send everything.
    SendAll,
    /// List its pairs (none if this side has nothing under it).
    Entries,
    /// Send its children's summaries.
    Expand,
}

/// The rule for a differing child of the full-prefix level or below.
fn decide(own: Summary, peer: Summary, level: u8, threshold: u64) -> Action {
    if peer.count == 0 {
        Action::SendAll
    } else if own.count == 0 || own.count.max(peer.count) <= threshold || level >= MAX_LEVEL {
        Action::Entries
    } else {
        Action::Expand
    }
}

/// One side of an anti-entropy exchange with one peer.
///
/// The initiator calls [`Exchange::initiate`] and sends the `Begin`; the
/// responder creates its session with [`Exchange::respond`]. Each side then
/// hands every message from the peer to [`Exchange::handle`], sends the
/// reply if there is one, and drains [`Exchange::poll_repair`]. The session
/// never changes the tree; the application may apply repairs between turns
/// (the protocol reads the tree afresh each turn, and a node's contents only
/// change once the node has been compared). With a commutative, idempotent
/// merge both stores hold the same contents after one exchange, provided no
/// other writes happen meanwhile.
///
/// Bounds: each step holds at most `max_step_items` items. The queue of
/// work holds at most a few tasks per item received and tasks are lazy, so
/// it is bounded by the number of nodes and keys in the two trees; the
/// repair queue holds the objects of one step if drained after every
/// `handle`.
#[derive(Debug, Clone)]
pub struct Exchange<K, O> {
    config: ExchangeConfig,
    queue: VecDeque<Task<K>>,
    repairs: VecDeque<Repair<K, O>>,
    /// Our last step announced more work.
    said_more: bool,
    done: bool,
    stats: ExchangeStats,
}

impl<K: Clone + Ord, O> Exchange<K, O> {
    /// Starts an exchange as the initiator: the session, and the `Begin` to
    /// send.
    pub fn initiate(tree: &MerkleTree<K>, config: ExchangeConfig) -> (Self, Message<K, O>) {
        let mut session = Self::respond(config);
        session.stats.rounds = 1;
        (session, Message::Begin { root: tree.root() })
    }

    /// A session for the responder, which waits for the initiator's
    /// `Begin`.
    pub fn respond(config: ExchangeConfig) -> Self {
        Exchange {
            config,
            queue: VecDeque::new(),
            repairs: VecDeque::new(),
            said_more: false,
            done: false,
            stats: ExchangeStats::default(),
        }
    }

    /// Handles a message from the peer, comparing against `tree` and reading
    /// objects to send from `app`; returns the reply to send, `None` when
    /// there is nothing to send (the exchange is then done). Messages after
    /// the end are ignored.
    pub fn handle(
        &mut self,
        tree: &MerkleTree<K>,
        message: Message<K, O>,
        app: &mut impl ObjectSource<K, O>,
    ) -> Option<Message<K, O>> {
        if self.done {
            return None;
        }
        let (peer_finished, peer_more) = match message {
            Message::Begin { root } => {
                self.on_begin(tree, root);
                (false, false)
            }
            Message::Step(step) => {
                let finished = step.is_empty();
                let more = step.more;
                self.on_step(tree, step);
                (finished, more)
            }
        };
        let step = self.pack(tree, app);
        if step.is_empty() {
            if peer_finished && !self.said_more {
                // Both sides have said they are finished.
                self.done = true;
                return None;
            }
            // Our empty step tells the peer we are finished (also when the
            // work we announced with `more` came to nothing: the peer waits
            // for it). If the peer has nothing queued either, it will not
            // answer.
            self.done = !peer_more;
        }
        self.said_more = step.more;
        self.stats.rounds += 1;
        Some(Message::Step(step))
    }

    /// The next object received from the peer, for the application to
    /// merge.
    #[must_use]
    pub fn poll_repair(&mut self) -> Option<Repair<K, O>> {
        self.repairs.pop_front()
    }

    /// True once neither side has anything left to send.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// This side's counters.
    pub fn stats(&self) -> ExchangeStats {
        self.stats
    }

    fn threshold(&self) -> u64 {
        let t = self.config.leaf_threshold.min(self.cap());
        u64::try_from(t).unwrap_or(u64::MAX)
    }

    fn cap(&self) -> usize {
        self.config.max_step_items.max(4)
    }

    fn on_begin(&mut self, tree: &MerkleTree<K>, peer_root: Summary) {
        self.stats.nodes_compared += 1;
        let own = tree.root();
        if own == peer_root {
            return;
        }
        self.queue.push_back(if peer_root.count == 0 {
            Task::Sweep {
                scope: None,
                after: None,
            }
        } else {
            Task::Children {
                parent: None,
                from: Vec::new(),
            }
        });
    }

    fn on_step(&mut self, tree: &MerkleTree<K>, step: Step<K, O>) {
        for chunk in step.named {
            self.on_named(tree, chunk);
        }
        for group in step.full {
            let FullPrefixStep {
                prefix,
                sub,
                expand,
                entries,
                want,
                objects,
            } = group;
            self.stats.objects_received += objects.len() as u64;
            for (key, object) in objects {
                self.repairs.push_back(Repair {
                    prefix: prefix.clone(),
                    sub: sub.clone(),
                    key,
                    object,
                });
            }
            for (level, index, children) in expand {
                let node = Node {
                    prefix: prefix.clone(),
                    sub: sub.clone(),
                    level,
                    index,
                };
                self.on_expand(tree, node, children);
            }
            for (level, index, pairs) in entries {
                let node = Node {
                    prefix: prefix.clone(),
                    sub: sub.clone(),
                    level,
                    index,
                };
                self.on_entries(tree, node, pairs);
            }
            self.on_want(tree, prefix, sub, want);
        }
    }

    /// Compares the peer's children of a named node, over the range its
    /// chunk covers, with this side's.
    fn on_named(&mut self, tree: &MerkleTree<K>, chunk: NamedChildren) {
        let NamedChildren {
            parent,
            from,
            to,
            children,
        } = chunk;
        let in_range =
            |name: &[u8]| name >= from.as_slice() && to.as_deref().is_none_or(|t| name < t);
        let mut theirs: BTreeMap<Vec<u8>, Summary> = children
            .into_iter()
            .filter(|(name, _)| in_range(name))
            .collect();
        let ours = tree.children(parent.as_deref(), &from, to.as_deref(), usize::MAX);
        let mut pairs = Vec::with_capacity(ours.len() + theirs.len());
        for (name, own) in ours {
            let peer = theirs.remove(&name).unwrap_or_default();
            pairs.push((name, own, peer));
        }
        pairs.extend(
            theirs
                .into_iter()
                .map(|(name, peer)| (name, Summary::default(), peer)),
        );
        for (name, own, peer) in pairs {
            self.stats.nodes_compared += 1;
            if own == peer {
                continue;
            }
            let task = match &parent {
                // A prefix: descend to its full prefixes, unless the peer
                // has none (no threshold here: entries are per full prefix).
                None if peer.count == 0 => Task::Sweep {
                    scope: Some(name),
                    after: None,
                },
                None => Task::Children {
                    parent: Some(name),
                    from: Vec::new(),
                },
                Some(prefix) => self.child_task(
                    Node {
                        prefix: prefix.clone(),
                        sub: name,
                        level: 0,
                        index: 0,
                    },
                    own,
                    peer,
                ),
            };
            self.queue.push_back(task);
        }
    }

    /// The task for a differing segment-tree node (level 0: a full prefix).
    fn child_task(&self, node: Node, own: Summary, peer: Summary) -> Task<K> {
        match decide(own, peer, node.level, self.threshold()) {
            Action::SendAll => Task::Range { node, after: None },
            Action::Entries => Task::Entries(node),
            Action::Expand => Task::Expand(node),
        }
    }

    /// Compares the peer's four children of `node` with this side's.
    fn on_expand(&mut self, tree: &MerkleTree<K>, node: Node, children: [Summary; 4]) {
        if node.level >= MAX_LEVEL || node_range(node.level, node.index).is_none() {
            return;
        }
        for (c, peer) in (0u64..).zip(children) {
            let child = Node {
                prefix: node.prefix.clone(),
                sub: node.sub.clone(),
                level: node.level + 1,
                index: 4 * node.index + c,
            };
            let own = tree.node(&child.prefix, &child.sub, child.level, child.index);
            self.stats.nodes_compared += 1;
            if own != peer {
                let task = self.child_task(child, own, peer);
                self.queue.push_back(task);
            }
        }
    }

    /// Compares the peer's pairs under `node` with this side's, as
    /// multisets: this side sends the keys of pairs it holds more often
    /// than the peer (a key the peer lacks, or holds with another object
    /// hash), and wants the key hashes of pairs the peer holds more often.
    fn on_entries(&mut self, tree: &MerkleTree<K>, node: Node, mut theirs: Vec<(u64, u64)>) {
        self.stats.entries_received += theirs.len() as u64;
        if node_range(node.level, node.index).is_none() {
            return;
        }
        if theirs.is_empty() {
            // The peer has nothing here (or asks for all): send it all.
            self.queue.push_back(Task::Range { node, after: None });
            return;
        }
        let mut ours: Vec<(u64, u64, &K)> = tree
            .full(&node.prefix, &node.sub)
            .into_iter()
            .flat_map(|fp| fp.keys_in(node.level, node.index, None))
            .map(|(h, k, o)| (h, o, k))
            .collect();
        ours.sort_by_key(|&(h, o, _)| (h, o));
        theirs.sort_unstable();
        let (send, want) = multiset_difference(&ours, &theirs);
        self.push_keys(&node.prefix, &node.sub, send);
        if !want.is_empty() {
            self.queue.push_back(Task::Want {
                prefix: node.prefix,
                sub: node.sub,
                key_hashes: want,
            });
        }
    }

    /// Queues the objects of every local key with a wanted hash.
    fn on_want(&mut self, tree: &MerkleTree<K>, prefix: Vec<u8>, sub: Vec<u8>, want: Vec<u64>) {
        self.stats.wants_received += want.len() as u64;
        let Some(fp) = tree.full(&prefix, &sub) else {
            return;
        };
        let keys: Vec<K> = want.iter().flat_map(|&h| fp.bucket(h)).cloned().collect();
        self.push_keys(&prefix, &sub, keys);
    }

    fn push_keys(&mut self, prefix: &[u8], sub: &[u8], keys: Vec<K>) {
        if !keys.is_empty() {
            self.queue.push_back(Task::Keys {
                prefix: prefix.to_vec(),
                sub: sub.to_vec(),
                keys,
            });
        }
    }
}

/// Walks two lists of pairs sorted by (key hash, object hash) in runs of
/// equal pairs; returns the local keys of the runs longer locally, and the
/// key hashes (sorted, once each) of the runs longer at the peer.
fn multiset_difference<K: Clone>(
    ours: &[(u64, u64, &K)],
    theirs: &[(u64, u64)],
) -> (Vec<K>, Vec<u64>) {
    let (mut send, mut want) = (Vec::new(), Vec::<u64>::new());
    let (mut i, mut j) = (0, 0);
    loop {
        let a = ours.get(i).map(|&(h, o, _)| (h, o));
        let b = theirs.get(j).copied();
        let pair = match (a, b) {
            (None, None) => break,
            (Some(x), None) => x,
            (None, Some(y)) => y,
            (Some(x), Some(y)) => x.min(y),
        };
        let mine = ours
            .iter()
            .skip(i)
            .take_while(|&&(h, o, _)| (h, o) == pair)
            .count();
        let peer = theirs.iter().skip(j).take_while(|&&p| p == pair).count();
        if mine > peer {
            send.extend(ours.iter().skip(i).take(mine).map(|&(_, _, k)| k.clone()));
        }
        if peer > mine && want.last() != Some(&pair.0) {
            want.push(pair.0);
        }
        i += mine;
        j += peer;
    }
    (send, want)
}

/// A step being filled, with what is left of its item and byte budgets.
struct Builder<K, O> {
    named: Vec<NamedChildren>,
    full: BTreeMap<(Vec<u8>, Vec<u8>), FullPrefixStep<K, O>>,
    budget: usize,
    bytes_left: usize,
    /// Whether an object is in the step yet (the first always fits).
    has_objects: bool,
    /// An object did not fit: the step is full.
    bytes_full: bool,
}

impl<K, O> Builder<K, O> {
    /// Takes an object of `size` bytes out of the byte budget, or says it
    /// does not fit.
    fn take_bytes(&mut self, size: usize) -> bool {
        if self.has_objects && size > self.bytes_left {
            self.bytes_full = true;
            return false;
        }
        self.bytes_left = self.bytes_left.saturating_sub(size);
        self.has_objects = true;
        true
    }
}

impl<K, O> Builder<K, O> {
    fn group(&mut self, prefix: &[u8], sub: &[u8]) -> &mut FullPrefixStep<K, O> {
        self.full
            .entry((prefix.to_vec(), sub.to_vec()))
            .or_insert_with(|| FullPrefixStep {
                prefix: prefix.to_vec(),
                sub: sub.to_vec(),
                expand: Vec::new(),
                entries: Vec::new(),
                want: Vec::new(),
                objects: Vec::new(),
            })
    }

    fn finish(self, more: bool) -> Step<K, O> {
        Step {
            named: self.named,
            full: self.full.into_values().collect(),
            more,
        }
    }
}

impl<K: Clone + Ord, O> Exchange<K, O> {
    /// Fills the next step from the queue, up to the item cap. Every task
    /// costs at most the cap, so a non-empty queue never yields an empty
    /// step: an empty step always means this side is finished.
    fn pack(&mut self, tree: &MerkleTree<K>, app: &mut impl ObjectSource<K, O>) -> Step<K, O> {
        let mut out = Builder {
            named: Vec::new(),
            full: BTreeMap::new(),
            budget: self.cap(),
            bytes_left: self.config.max_step_bytes,
            has_objects: false,
            bytes_full: false,
        };
        while out.budget > 0 && !out.bytes_full {
            let Some(task) = self.queue.pop_front() else {
                break;
            };
            if let Some(unsent) = self.pack_task(tree, app, task, &mut out) {
                self.queue.push_front(unsent);
                break;
            }
        }
        let step = out.finish(!self.queue.is_empty());
        debug_assert!(step.items() <= self.cap(), "step over its item cap");
        debug_assert!(
            !step.is_empty() || self.queue.is_empty(),
            "an empty step with work queued would end the exchange early"
        );
        step
    }

    /// Packs one task, queueing any remainder at the front; gives the task
    /// back when it does not fit in what is left of the step.
    fn pack_task(
        &mut self,
        tree: &MerkleTree<K>,
        app: &mut impl ObjectSource<K, O>,
        task: Task<K>,
        out: &mut Builder<K, O>,
    ) -> Option<Task<K>> {
        match task {
            Task::Children { parent, from } => self.pack_children(tree, parent, from, out),
            Task::Expand(node) => return self.pack_expand(tree, node, out),
            Task::Entries(node) => return self.pack_entries(tree, node, out),
            Task::Range { node, after } => self.pack_range(tree, app, node, after, out),
            Task::Sweep { scope, after } => self.pack_sweep(tree, scope, after),
            Task::Want {
                prefix,
                sub,
                mut key_hashes,
            } => {
                if key_hashes.len() > out.budget {
                    let rest = key_hashes.split_off(out.budget);
                    self.queue.push_front(Task::Want {
                        prefix: prefix.clone(),
                        sub: sub.clone(),
                        key_hashes: rest,
                    });
                }
                out.budget -= key_hashes.len();
                self.stats.wants_sent += key_hashes.len() as u64;
                out.group(&prefix, &sub).want.extend(key_hashes);
            }
            Task::Keys { prefix, sub, keys } => self.pack_keys(app, prefix, sub, keys, out),
        }
        None
    }

    /// Sends this side's children of a named node from `from` on, as many
    /// as fit; the rest, if any, goes out in a later chunk starting at the
    /// first name left out.
    fn pack_children(
        &mut self,
        tree: &MerkleTree<K>,
        parent: Option<Vec<u8>>,
        from: Vec<u8>,
        out: &mut Builder<K, O>,
    ) {
        let limit = out.budget;
        let mut children = tree.children(parent.as_deref(), &from, None, limit.saturating_add(1));
        let to = if children.len() > limit {
            children.pop().map(|(name, _)| name)
        } else {
            None
        };
        if let Some(next) = &to {
            self.queue.push_front(Task::Children {
                parent: parent.clone(),
                from: next.clone(),
            });
        }
        out.budget -= children.len().max(1);
        self.stats.summaries_sent += children.len() as u64;
        out.named.push(NamedChildren {
            parent,
            from,
            to,
            children,
        });
    }

    fn pack_expand(
        &mut self,
        tree: &MerkleTree<K>,
        node: Node,
        out: &mut Builder<K, O>,
    ) -> Option<Task<K>> {
        if out.budget < 4 {
            return Some(Task::Expand(node));
        }
        let children: [Summary; 4] = std::array::from_fn(|c| {
            let index = 4 * node.index + c as u64;
            tree.node(&node.prefix, &node.sub, node.level + 1, index)
        });
        out.budget -= 4;
        self.stats.summaries_sent += 4;
        let group = out.group(&node.prefix, &node.sub);
        group.expand.push((node.level, node.index, children));
        None
    }

    fn pack_entries(
        &mut self,
        tree: &MerkleTree<K>,
        node: Node,
        out: &mut Builder<K, O>,
    ) -> Option<Task<K>> {
        let pairs: Vec<(u64, u64)> = tree
            .full(&node.prefix, &node.sub)
            .into_iter()
            .flat_map(|fp| fp.keys_in(node.level, node.index, None))
            .map(|(h, _, o)| (h, o))
            .collect();
        if pairs.len() > self.cap() {
            // Too many pairs for any step: only possible at the deepest
            // level, with more than the cap of keys sharing one key hash.
            // Send all of ours, and an empty list, which asks the peer for
            // all of its.
            out.budget -= 1;
            let group = out.group(&node.prefix, &node.sub);
            group.entries.push((node.level, node.index, Vec::new()));
            self.queue.push_front(Task::Range { node, after: None });
            return None;
        }
        if pairs.len().max(1) > out.budget {
            return Some(Task::Entries(node));
        }
        out.budget -= pairs.len().max(1);
        self.stats.entries_sent += pairs.len() as u64;
        let group = out.group(&node.prefix, &node.sub);
        group.entries.push((node.level, node.index, pairs));
        None
    }

    /// Sends the objects of the node's keys after `after`, as many as fit;
    /// the rest is queued to resume after the last key read.
    fn pack_range(
        &mut self,
        tree: &MerkleTree<K>,
        app: &mut impl ObjectSource<K, O>,
        node: Node,
        after: Option<(u64, K)>,
        out: &mut Builder<K, O>,
    ) {
        let Some(fp) = tree.full(&node.prefix, &node.sub) else {
            return;
        };
        let mut objects = Vec::new();
        let mut last = None;
        let mut unfinished = false;
        let start = after.as_ref().map(|(h, k)| (*h, k));
        for (h, key, _) in fp.keys_in(node.level, node.index, start) {
            if objects.len() >= out.budget {
                unfinished = true;
                break;
            }
            if let Some(object) = app.object(&node.prefix, &node.sub, key) {
                if !out.take_bytes(app.size(key, &object)) {
                    // Resumes at this key, after the last one sent.
                    unfinished = true;
                    break;
                }
                objects.push((key.clone(), object));
            }
            last = Some((h, key));
        }
        if unfinished {
            self.queue.push_front(Task::Range {
                node: node.clone(),
                after: last.map(|(h, key)| (h, key.clone())).or(after),
            });
        }
        self.emit_objects(&node.prefix, &node.sub, objects, out);
    }

    /// Queues the objects of the next full prefix in the sweep, then the
    /// rest of the sweep.
    fn pack_sweep(
        &mut self,
        tree: &MerkleTree<K>,
        scope: Option<Vec<u8>>,
        after: Option<(Vec<u8>, Vec<u8>)>,
    ) {
        let after = after.as_ref().map(|(p, s)| (p.as_slice(), s.as_slice()));
        let Some((prefix, sub)) = tree.next_full_prefix(scope.as_deref(), after) else {
            return;
        };
        self.queue.push_front(Task::Sweep {
            scope,
            after: Some((prefix.clone(), sub.clone())),
        });
        let node = Node {
            prefix,
            sub,
            level: 0,
            index: 0,
        };
        self.queue.push_front(Task::Range { node, after: None });
    }

    fn pack_keys(
        &mut self,
        app: &mut impl ObjectSource<K, O>,
        prefix: Vec<u8>,
        sub: Vec<u8>,
        keys: Vec<K>,
        out: &mut Builder<K, O>,
    ) {
        let mut objects = Vec::new();
        let mut keys = keys.into_iter().peekable();
        while objects.len() < out.budget {
            let Some(key) = keys.peek() else {
                break;
            };
            if let Some(object) = app.object(&prefix, &sub, key) {
                if !out.take_bytes(app.size(key, &object)) {
                    break;
                }
                objects.push((key.clone(), object));
            }
            keys.next();
        }
        let rest: Vec<K> = keys.collect();
        if !rest.is_empty() {
            self.queue.push_front(Task::Keys {
                prefix: prefix.clone(),
                sub: sub.clone(),
                keys: rest,
            });
        }
        self.emit_objects(&prefix, &sub, objects, out);
    }

    fn emit_objects(
        &mut self,
        prefix: &[u8],
        sub: &[u8],
        objects: Vec<(K, O)>,
        out: &mut Builder<K, O>,
    ) {
        if objects.is_empty() {
            return;
        }
        out.budget -= objects.len();
        self.stats.objects_sent += objects.len() as u64;
        out.group(prefix, sub).objects.extend(objects);
    }
}
