use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

type Data = BTreeMap<(Vec<u8>, Vec<u8>, u64), u64>;

/// A test hash with full avalanche (the finaliser over an offset input).
fn mix(x: u64) -> u64 {
    finalize(x.wrapping_add(GAMMA))
}

/// A replica: its objects (u64 values under u64 keys) and its tree. With
/// `weak` key hashes (the key mod 16) distinct keys collide constantly; the
/// object hash then binds the key, as the tree's contract asks.
#[derive(Clone)]
struct Store {
    data: Data,
    tree: MerkleTree<u64>,
    weak: bool,
}

impl Store {
    fn new(weak: bool) -> Store {
        Store {
            data: BTreeMap::new(),
            tree: MerkleTree::new(),
            weak,
        }
    }

    fn key_hash(&self, key: u64) -> u64 {
        if self.weak { key % 16 } else { mix(key) }
    }

    fn object_hash(&self, key: u64, value: u64) -> u64 {
        if self.weak {
            mix(value ^ mix(key))
        } else {
            mix(value)
        }
    }

    fn put(&mut self, prefix: &[u8], sub: &[u8], key: u64, value: u64) {
        let (kh, oh) = (self.key_hash(key), self.object_hash(key, value));
        self.data
            .insert((prefix.to_vec(), sub.to_vec(), key), value);
        self.tree.update(prefix, sub, &key, kh, Some(oh));
    }

    fn del(&mut self, prefix: &[u8], sub: &[u8], key: u64) {
        let kh = self.key_hash(key);
        self.data.remove(&(prefix.to_vec(), sub.to_vec(), key));
        self.tree.update(prefix, sub, &key, kh, None);
    }

    /// The merge rule: the larger value wins, so merging is commutative,
    /// associative and idempotent.
    fn merge(&mut self, repair: Repair<u64, u64>) {
        let at = (repair.prefix.clone(), repair.sub.clone(), repair.key);
        let current = self.data.get(&at).copied();
        if current.is_none_or(|v| v < repair.object) {
            self.put(&repair.prefix, &repair.sub, repair.key, repair.object);
        }
    }

    /// The same contents inserted from scratch, in reverse order.
    fn rebuilt(&self) -> MerkleTree<u64> {
        let mut tree = MerkleTree::new();
        for ((p, s, k), v) in self.data.iter().rev() {
            tree.update(p, s, k, self.key_hash(*k), Some(self.object_hash(*k, *v)));
        }
        tree
    }
}

struct Objects<'a>(&'a Data);

impl ObjectSource<u64, u64> for Objects<'_> {
    fn object(&mut self, prefix: &[u8], sub: &[u8], key: &u64) -> Option<u64> {
        self.0.get(&(prefix.to_vec(), sub.to_vec(), *key)).copied()
    }
    fn size(&self, _key: &u64, _object: &u64) -> usize {
        16
    }
}

/// What one exchange cost on the wire.
#[derive(Debug, Default)]
struct Traffic {
    messages: usize,
    /// Every byte, postcard-encoded.
    bytes: usize,
    /// The bytes without the objects (the protocol's own overhead).
    protocol_bytes: usize,
    max_items: usize,
    /// Most objects in one step.
    max_objects: usize,
}

/// Sends `message` through postcard, counting its bytes, and checks the
/// item and byte caps.
fn wire(
    message: &Message<u64, u64>,
    config: &ExchangeConfig,
    traffic: &mut Traffic,
) -> Message<u64, u64> {
    let cap = config.max_step_items;
    let bytes = postcard::to_allocvec(message).expect("encode");
    let mut stripped = message.clone();
    if let Message::Step(step) = &mut stripped {
        for group in &mut step.full {
            group.objects.clear();
        }
    }
    let stripped = postcard::to_allocvec(&stripped).expect("encode");
    traffic.messages += 1;
    traffic.bytes += bytes.len();
    traffic.protocol_bytes += stripped.len();
    traffic.max_items = traffic.max_items.max(message.items());
    assert!(
        message.items() <= cap.max(4),
        "a step over the cap: {} items",
        message.items()
    );
    if let Message::Step(step) = message {
        // Every object weighs 16 bytes (`Objects::size`); one always fits.
        let objects: usize = step.full.iter().map(|g| g.objects.len()).sum();
        assert!(
            objects * 16 <= config.max_step_bytes.max(16),
            "a step over the byte cap: {objects} objects"
        );
        traffic.max_objects = traffic.max_objects.max(objects);
    }
    postcard::from_bytes(&bytes).expect("decode")
}

/// Runs one exchange between `a` (initiator) and `b`, applying repairs as
/// they come; checks that both sessions end.
fn exchange(a: &mut Store, b: &mut Store, config: ExchangeConfig) -> Traffic {
    let mut traffic = Traffic::default();
    let (mut ea, begin) = Exchange::initiate(&a.tree, config);
    let mut eb = Exchange::respond(config);
    let mut next = Some((true, begin));
    while let Some((to_b, message)) = next.take() {
        assert!(traffic.messages < 1_000_000, "the exchange did not end");
        let message = wire(&message, &config, &mut traffic);
        let (session, store) = if to_b {
            (&mut eb, &mut *b)
        } else {
            (&mut ea, &mut *a)
        };
        let reply = session.handle(&store.tree, message, &mut Objects(&store.data));
        while let Some(repair) = session.poll_repair() {
            store.merge(repair);
        }
        next = reply.map(|r| (!to_b, r));
    }
    assert!(ea.is_done() && eb.is_done(), "both sides report the end");
    traffic
}

/// Every prefix and full prefix summary of `a` equals `b`'s, and so do the
/// segment-tree nodes of the top `levels` levels.
fn assert_same_tree(a: &MerkleTree<u64>, b: &MerkleTree<u64>, names: &[Vec<u8>], levels: u8) {
    assert_eq!(a.root(), b.root());
    assert_eq!(a.len(), b.len());
    for p in names {
        assert_eq!(a.prefix(p), b.prefix(p), "prefix {p:?}");
        for s in names {
            assert_eq!(
                a.full_prefix(p, s),
                b.full_prefix(p, s),
                "full prefix {p:?}/{s:?}"
            );
            for level in 0..=levels {
                for index in 0..(1u64 << (2 * level)) {
                    assert_eq!(a.node(p, s, level, index), b.node(p, s, level, index));
                }
            }
        }
    }
}

fn name(i: u8) -> Vec<u8> {
    vec![b'n', b'0' + i]
}

fn names(n: u8) -> Vec<Vec<u8>> {
    (0..n).map(name).collect()
}

#[test]
fn element_mix_and_name_hash_are_pinned() {
    // The finaliser is SplitMix64's: seed 0's first output is this.
    assert_eq!(finalize(GAMMA), 0xE220_A839_7B1D_CDAF);
    // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c (the published test vector).
    assert_eq!(name_hash(b"a"), finalize(0xAF63_DC4C_8601_EC8C));
    assert_eq!(name_hash(b""), 0xF52A_15E9_A9B5_E89B);
    assert_eq!(name_hash(b"config"), 0x495D_EAA3_D624_3077);
    assert_eq!(element_value(0, 0), 0x4821_8226_FF3C_D4BF);
    assert_eq!(element_value(1, 2), 0xF282_6F98_653E_9E57);
    assert_ne!(
        element_value(1, 2),
        element_value(2, 1),
        "the pair is ordered"
    );
    let s = Summary { hash: 7, count: 3 };
    assert_eq!(child_value(name_hash(b"web"), s), 0x5920_A5FF_DC18_5335);
    assert_eq!(
        child_value(1, Summary { hash: 7, count: 0 }),
        0,
        "an empty child adds nothing"
    );
}

#[test]
fn node_ranges_cover_the_hash_space_level_by_level() {
    assert_eq!(node_range(0, 0), Some((0, u64::MAX)));
    assert_eq!(node_range(0, 1), None);
    assert_eq!(node_range(1, 3), Some((3 << 62, u64::MAX)));
    assert_eq!(node_range(1, 4), None);
    assert_eq!(node_range(MAX_LEVEL, 42), Some((42, 42)));
    assert_eq!(node_range(MAX_LEVEL + 1, 0), None);
    let h = 0xDEAD_BEEF_0123_4567;
    for level in 0..=MAX_LEVEL {
        let (lo, hi) = node_range(level, node_index(h, level)).expect("a node");
        assert!(lo <= h && h <= hi, "level {level}");
    }
}

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u8, u64, u64),
    Del(u8, u8, u64),
}

fn ops(max_len: usize) -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        3 => (0u8..3, 0u8..3, 0u64..400, 0u64..5).prop_map(|(p, s, k, v)| Op::Put(p, s, k, v)),
        2 => (0u8..3, 0u8..3, 0u64..400).prop_map(|(p, s, k)| Op::Del(p, s, k)),
    ];
    proptest::collection::vec(op, 0..max_len)
}

fn apply(store: &mut Store, op: &Op) {
    match *op {
        Op::Put(p, s, k, v) => store.put(&name(p), &name(s), k, v),
        Op::Del(p, s, k) => store.del(&name(p), &name(s), k),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn incremental_updates_equal_a_build_from_scratch_in_another_order(
        ops in ops(1500),
        weak in any::<bool>(),
    ) {
        let mut store = Store::new(weak);
        for op in &ops {
            apply(&mut store, op);
        }
        store.tree.check();
        let scratch = store.rebuilt();
        scratch.check();
        assert_same_tree(&store.tree, &scratch, &names(3), 3);
        prop_assert_eq!(store.tree.len(), store.data.len() as u64);
    }
}

#[test]
fn dense_levels_grow_and_shrink_with_the_key_count_and_keep_their_sums() {
    let (p, s) = (b"p".as_slice(), b"s".as_slice());
    let mut store = Store::new(false);
    let mut depths = Vec::new();
    let mut last = None;
    let mut step = |store: &Store, i: u64| {
        let depth = store.tree.depth_of(p, s);
        if depth != last || i.is_multiple_of(251) {
            // At every rebuild, and now and then in between.
            store.tree.check();
            assert_same_tree(&store.tree, &store.rebuilt(), &[p.to_vec(), s.to_vec()], 4);
            depths.extend(depth);
            last = depth;
        }
    };
    for k in 0..3000 {
        store.put(p, s, k, k % 3);
        step(&store, k);
    }
    for k in (0..3000).rev() {
        store.del(p, s, k);
        step(&store, k);
    }
    assert!(store.tree.is_empty() && store.tree.prefix(p).is_none());
    // 3000 keys need depth 5 (8 * 4^4 < 3000 <= 8 * 4^5), grown one level
    // at a time; shrunk back keeping one level of headroom, so the last
    // key left sits in a tree of depth 1.
    assert_eq!(depths.iter().max(), Some(&5));
    assert_eq!(depths.first(), Some(&0));
    assert!(
        depths.windows(2).all(|w| w[1].abs_diff(w[0]) <= 1),
        "{depths:?}"
    );
    assert!(
        depths.windows(2).any(|w| w[1] < w[0]),
        "never shrank: {depths:?}"
    );
    assert_eq!(depths.last(), Some(&1), "{depths:?}");
}

#[test]
fn keys_sharing_a_key_hash_are_kept_apart() {
    let mut store = Store::new(true);
    for k in [3, 19, 35] {
        store.put(b"p", b"s", k, 1);
    }
    assert_eq!(store.tree.len(), 3);
    let node = store.tree.node(b"p", b"s", MAX_LEVEL, 3);
    assert_eq!(node.count, 3, "one deepest node, three keys");
    store.put(b"p", b"s", 19, 2);
    store.del(b"p", b"s", 3);
    assert_eq!(store.tree.len(), 2);
    let mut only = Store::new(true);
    only.put(b"p", b"s", 35, 1);
    only.put(b"p", b"s", 19, 2);
    assert_eq!(store.tree.root(), only.tree.root());
    store.del(b"p", b"s", 3);
    assert_eq!(
        store.tree.len(),
        2,
        "removing an absent key changes nothing"
    );
    store.tree.check();
}

/// The contents both replicas should hold after an exchange: the union,
/// the larger value where both have a key.
fn merged(a: &Data, b: &Data) -> Data {
    let mut out = a.clone();
    for (k, v) in b {
        let slot = out.entry(k.clone()).or_insert(*v);
        *slot = (*slot).max(*v);
    }
    out
}

fn assert_converged(a: &Store, b: &Store, expected: &Data) {
    assert!(a.data == *expected, "initiator differs from the merge");
    assert!(b.data == *expected, "responder differs from the merge");
    assert_eq!(a.tree.root(), b.tree.root());
    assert_eq!(a.tree.root(), a.rebuilt().root());
}

#[test]
fn keys_sharing_a_key_hash_are_exchanged_correctly() {
    for cap in [8192, 16, 4] {
        let (mut a, mut b) = (Store::new(true), Store::new(true));
        for k in 0..400 {
            match k % 5 {
                0 => a.put(b"p", b"s", k, 1),
                1 => b.put(b"p", b"s", k, 1),
                2 => {
                    a.put(b"p", b"s", k, 1);
                    b.put(b"p", b"s", k, 2);
                }
                _ => {
                    a.put(b"p", b"s", k, 3);
                    b.put(b"p", b"s", k, 3);
                }
            }
        }
        let expected = merged(&a.data, &b.data);
        let config = ExchangeConfig {
            max_step_items: cap,
            ..ExchangeConfig::default()
        };
        // 16 key hashes of 25 keys each: the deepest nodes hold more than
        // the leaf threshold, and with small caps more than a step.
        exchange(&mut a, &mut b, config);
        assert_converged(&a, &b, &expected);
    }
}

/// Two replicas from a common base, then diverged.
#[derive(Debug, Clone)]
struct Scenario {
    /// (prefix, sub, key, value, fate): fate 0..=4 both equal, 5 only on A,
    /// 6 only on B, 7 different values, 8 A newer, 9 B newer.
    keys: Vec<(u8, u8, u64, u64, u8)>,
    /// Keys of a prefix only A has, and of a full prefix only B has.
    only_a_prefix: u64,
    only_b_full_prefix: u64,
    empty_a: bool,
    empty_b: bool,
    weak: bool,
    leaf_threshold: usize,
    max_step_items: usize,
    max_step_bytes: usize,
}

fn scenarios() -> impl Strategy<Value = Scenario> {
    (
        proptest::collection::vec((0u8..3, 0u8..3, 0u64..2000, 0u64..4, 0u8..10), 0..300),
        (0u64..40, 0u64..40),
        (
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.1),
            any::<bool>(),
        ),
        (
            1usize..12,
            prop_oneof![Just(8192usize), 4usize..40],
            prop_oneof![Just(8usize << 20), 0usize..200],
        ),
    )
        .prop_map(
            |(
                keys,
                (pa, fb),
                (empty_a, empty_b, weak),
                (leaf_threshold, max_step_items, max_step_bytes),
            )| {
                Scenario {
                    keys,
                    only_a_prefix: pa,
                    only_b_full_prefix: fb,
                    empty_a,
                    empty_b,
                    weak,
                    leaf_threshold,
                    max_step_items,
                    max_step_bytes,
                }
            },
        )
}

fn build(sc: &Scenario) -> (Store, Store) {
    let (mut a, mut b) = (Store::new(sc.weak), Store::new(sc.weak));
    for &(p, s, k, v, fate) in &sc.keys {
        let (p, s) = (name(p), name(s));
        match fate {
            5 => a.put(&p, &s, k, v),
            6 => b.put(&p, &s, k, v),
            7 | 8 => {
                a.put(&p, &s, k, v + 1);
                b.put(&p, &s, k, v);
            }
            9 => {
                a.put(&p, &s, k, v);
                b.put(&p, &s, k, v + 2);
            }
            _ => {
                a.put(&p, &s, k, v);
                b.put(&p, &s, k, v);
            }
        }
    }
    for k in 0..sc.only_a_prefix {
        a.put(b"only-a", &name((k % 3) as u8), k, 1);
    }
    for k in 0..sc.only_b_full_prefix {
        b.put(&name(0), b"only-b", k, 1);
    }
    if sc.empty_a {
        a = Store::new(sc.weak);
    }
    if sc.empty_b {
        b = Store::new(sc.weak);
    }
    (a, b)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn one_exchange_makes_both_stores_equal(sc in scenarios()) {
        let (mut a, mut b) = build(&sc);
        let expected = merged(&a.data, &b.data);
        let config = ExchangeConfig {
            leaf_threshold: sc.leaf_threshold,
            max_step_items: sc.max_step_items,
            max_step_bytes: sc.max_step_bytes,
        };
        let traffic = exchange(&mut a, &mut b, config);
        assert_converged(&a, &b, &expected);
        prop_assert!(traffic.max_items <= sc.max_step_items.max(4));
        a.tree.check();
        b.tree.check();
    }
}

#[test]
fn equal_and_empty_trees_finish_after_begin_and_one_empty_step() {
    for keys in [0, 50] {
        let mut a = Store::new(false);
        for k in 0..keys {
            a.put(b"p", b"s", k, k);
        }
        let mut b = a.clone();
        let traffic = exchange(&mut a, &mut b, ExchangeConfig::default());
        assert_eq!(traffic.messages, 2, "Begin and one empty step");
    }
}

#[test]
fn a_finished_session_ignores_further_messages() {
    let a = Store::new(false);
    let mut b = Store::new(false);
    b.put(b"p", b"s", 1, 1);
    let (mut ea, begin) = Exchange::<u64, u64>::initiate(&a.tree, ExchangeConfig::default());
    let mut eb = Exchange::respond(ExchangeConfig::default());
    let mut to_b = true;
    let mut next = Some(begin);
    while let Some(m) = next.take() {
        next = if to_b {
            eb.handle(&b.tree, m, &mut Objects(&b.data))
        } else {
            ea.handle(&a.tree, m, &mut Objects(&a.data))
        };
        to_b = !to_b;
    }
    assert!(ea.is_done() && eb.is_done());
    assert_eq!(ea.poll_repair().map(|r| r.key), Some(1));
    assert_eq!(ea.stats().objects_received, 1);
    assert_eq!(eb.stats().objects_sent, 1);
    let again = Message::Begin {
        root: a.tree.root(),
    };
    assert_eq!(eb.handle(&b.tree, again, &mut Objects(&b.data)), None);
}

/// `n` keys over 2 prefixes of 5 full prefixes each.
fn base(n: u64) -> Store {
    let mut store = Store::new(false);
    for k in 0..n {
        store.put(
            &name((k % 2) as u8),
            &name(((k / 2) % 5) as u8),
            k,
            mix(k) % 1000,
        );
    }
    store
}

/// Two copies of `base` with about `d` of its `n` keys made different,
/// chosen by hash so they spread over all full prefixes and hash ranges: a
/// third changed values, a third missing on A, a third missing on B.
/// Returns the number of differing keys too.
fn diverge(base: &Store, n: u64, d: u64) -> (Store, Store, u64) {
    let (mut a, mut b) = (base.clone(), base.clone());
    let mut differing = 0;
    if d == 0 {
        return (a, b, 0);
    }
    for k in 0..n {
        if !mix(k ^ 0x5EED).is_multiple_of(n / d) {
            continue;
        }
        let (p, s) = (name((k % 2) as u8), name(((k / 2) % 5) as u8));
        match differing % 3 {
            0 => b.put(&p, &s, k, 5000 + k),
            1 => a.del(&p, &s, k),
            _ => b.del(&p, &s, k),
        }
        differing += 1;
    }
    (a, b, differing)
}

/// A ceiling on the protocol bytes (objects excluded) per differing key,
/// with `n` keys over ten full prefixes and `d` differences:
///
/// - Descent: below the level where the differing keys' paths part (about
///   log4(d / 10) into each full prefix), each key has its own path down to
///   a node of at most 8 keys, about log4(n / d) + 1 expansions; above it
///   the shared expansions add up to a third of one per key (a geometric
///   sum). Allowing log4(n / d) + 2 expansions, each of 4 summaries (a
///   random 64-bit hash takes up to 10 varint bytes, a count under 2^21 up
///   to 3) plus its level and index (up to 11): 63 bytes, say 64.
/// - The leaf: one side lists at most 8 pairs of two hashes (20 bytes
///   each) plus the node (11) and, for a changed key, one wanted hash
///   (10): 181.
/// - Group headers (names, list lengths, about 12 bytes) once per full
///   prefix per step, and the named levels (two prefixes, ten full
///   prefixes: under 300 bytes per exchange): allow 20 per key.
fn bytes_per_difference_bound(n: u64, d: u64) -> f64 {
    let depth = ((n as f64) / (d as f64)).log(4.0);
    64.0 * (depth + 2.0) + 181.0 + 20.0
}

/// Runs one traffic scenario; returns its traffic and the number of
/// differing keys.
fn traffic_of(base_store: &Store, n: u64, d: u64) -> (Traffic, u64) {
    let (mut a, mut b, differing) = diverge(base_store, n, d);
    let expected = merged(&a.data, &b.data);
    let traffic = exchange(&mut a, &mut b, ExchangeConfig::default());
    assert_converged(&a, &b, &expected);
    (traffic, differing)
}

#[test]
fn traffic_grows_with_the_differences_not_with_the_keys() {
    let n = 100_000;
    let base_store = base(n);
    let (equal, _) = traffic_of(&base_store, n, 0);
    assert_eq!(equal.messages, 2);
    assert!(equal.bytes < 100, "equal trees cost {} bytes", equal.bytes);

    let (few, d_few) = traffic_of(&base_store, n, 100);
    let (many, d_many) = traffic_of(&base_store, n, 10_000);
    let per_few = few.protocol_bytes as f64 / d_few as f64;
    let per_many = many.protocol_bytes as f64 / d_many as f64;
    println!(
        "n={n}: equal {} bytes; {d_few} differences {per_few:.1} B each ({} messages), {d_many} differences {per_many:.1} B each ({} messages)",
        equal.bytes, few.messages, many.messages
    );
    assert!(
        per_few < bytes_per_difference_bound(n, d_few),
        "{per_few} bytes per difference with {d_few}"
    );
    assert!(
        per_many < bytes_per_difference_bound(n, d_many),
        "{per_many} bytes per difference with {d_many}"
    );
    // A hundred times fewer differences, at least thirty times fewer bytes
    // (each key's path is longer when differences are sparse: log4(1000)
    // against log4(10) expansions).
    assert!(
        few.protocol_bytes * 30 < many.protocol_bytes,
        "{} bytes for {d_few} differences, {} for {d_many}",
        few.protocol_bytes,
        many.protocol_bytes
    );
}

#[test]
fn the_item_cap_holds_in_every_step_and_a_large_diff_completes() {
    let n = 20_000;
    let (mut a, mut b, _) = diverge(&base(n), n, 5_000);
    // A prefix only A has, and a full prefix only B has, both far larger
    // than a step.
    for k in 0..3000 {
        a.put(b"only-a", &name((k % 4) as u8), k, 1);
        b.put(&name(1), b"only-b", k, 1);
    }
    let expected = merged(&a.data, &b.data);
    let config = ExchangeConfig {
        leaf_threshold: 8,
        max_step_items: 32,
        ..ExchangeConfig::default()
    };
    let traffic = exchange(&mut a, &mut b, config);
    assert_converged(&a, &b, &expected);
    assert_eq!(traffic.max_items, 32, "steps are filled to the cap");
}

#[test]
fn the_byte_cap_holds_in_every_step_and_a_large_diff_completes() {
    let n = 5_000;
    let (mut a, mut b, _) = diverge(&base(n), n, 2_000);
    for k in 0..500 {
        a.put(b"only-a", &name((k % 4) as u8), k, 1);
    }
    let expected = merged(&a.data, &b.data);
    let config = ExchangeConfig {
        // Room for 5 objects of 16 bytes, far fewer than the item cap.
        max_step_bytes: 80,
        ..ExchangeConfig::default()
    };
    let traffic = exchange(&mut a, &mut b, config);
    assert_converged(&a, &b, &expected);
    assert_eq!(traffic.max_objects, 5, "steps are filled to the byte cap");
    // One object larger than the cap still goes, alone.
    let (mut a, mut b) = (Store::new(false), Store::new(false));
    for k in 0..10 {
        a.put(&name(0), &name(0), k, 7);
    }
    let expected = a.data.clone();
    let config = ExchangeConfig {
        max_step_bytes: 1,
        ..ExchangeConfig::default()
    };
    let traffic = exchange(&mut a, &mut b, config);
    assert_converged(&a, &b, &expected);
    assert_eq!(traffic.max_objects, 1);
}

#[test]
#[ignore = "measurement: run with --release -- --ignored --nocapture"]
fn measure_bytes_per_difference_at_a_million_keys() {
    let n = 1_000_000;
    let d = n / 100;
    let base_store = base(n);
    let start = std::time::Instant::now();
    let (t, d) = traffic_of(&base_store, n, d);
    println!(
        "n={n} d={d}: {} messages, {} bytes in all, {} protocol bytes, {:.1} protocol bytes per differing key, {:.1} bytes per differing key with objects, {:?}",
        t.messages,
        t.bytes,
        t.protocol_bytes,
        t.protocol_bytes as f64 / d as f64,
        t.bytes as f64 / d as f64,
        start.elapsed()
    );
    assert!((t.protocol_bytes as f64 / d as f64) < bytes_per_difference_bound(n, d));
}

#[test]
fn both_sides_end_when_work_announced_as_more_comes_to_nothing() {
    // A sweep of every object to an empty peer, in steps of 4: the last
    // step is full, so it announces more, but the sweep has only its end
    // left, which sends nothing. The peer must still hear that A is done.
    let (mut a, mut b) = (Store::new(false), Store::new(false));
    for k in 0..17 {
        a.put(&name(0), &name(0), k, 0);
    }
    for k in 0..19 {
        a.put(b"only-a", &name((k % 3) as u8), k, 1);
    }
    let expected = a.data.clone();
    let config = ExchangeConfig {
        leaf_threshold: 1,
        max_step_items: 4,
        ..ExchangeConfig::default()
    };
    exchange(&mut a, &mut b, config);
    assert_converged(&a, &b, &expected);
}
