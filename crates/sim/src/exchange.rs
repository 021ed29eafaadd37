//! Anti-entropy between two real stores: build two data directories with
//! the same keys, make a share of them differ in every way a replica can
//! (newer on one side, newer on the other, written on both at once,
//! deleted on one side), then run one Merkle exchange between them with
//! every message encoded and decoded as on the wire, merge what each side
//! received, and check that the stores are equal.

use std::fmt;
use std::time::Instant;

use chorus_core::FullPrefix;
use chorus_core::key_hash;
use chorus_core::object::Object;
use chorus_core::object_hash;
use chorus_gossip::Rng;
use chorus_gossip::merkle::{Exchange, ExchangeConfig, MerkleTree, Message, Repair};
use chorus_replica::{SnapshotObjects, build_tree};
use chorus_store::{Error, Metadata, Options, Origin, Snapshot, Store, SyncMode};
use serde::Serialize;

/// Full prefixes the keys are spread over (two prefixes of four
/// subprefixes), so the named levels of the tree are exercised too.
const FULL_PREFIXES: [(&str, &str); 8] = [
    ("app", "users"),
    ("app", "groups"),
    ("app", "sessions"),
    ("app", "flags"),
    ("infra", "hosts"),
    ("infra", "services"),
    ("infra", "routes"),
    ("infra", "leases"),
];
/// Keys per commit while building the stores.
const BUILD_BATCH: usize = 20_000;
/// Objects per merge commit (well under the commit size limit).
const MERGE_BATCH: usize = 20_000;
/// Framing added to every message on the wire (a length prefix).
const FRAME_BYTES: u64 = 4;

/// What one exchange between two stores cost.
#[derive(Debug, Clone, Serialize)]
pub struct ExchangeReport {
    /// Keys in each store.
    pub keys: u64,
    /// Keys whose objects differ between the stores.
    pub differing_keys: u64,
    /// Encoded size of the objects at those keys, both sides' versions.
    pub differing_object_bytes: u64,
    /// Bytes sent from the initiator to the responder, framing included.
    pub bytes_initiator_to_responder: u64,
    /// Bytes sent back.
    pub bytes_responder_to_initiator: u64,
    /// Both directions.
    pub bytes_total: u64,
    /// `bytes_total / differing_object_bytes`.
    pub bytes_ratio: f64,
    /// Messages exchanged (both directions).
    pub messages: u64,
    /// Objects each side received.
    pub objects_received: (u64, u64),
    /// Keys each side changed by merging.
    pub keys_merged: (usize, usize),
    /// Time to compare the trees and move the objects, encoding included.
    pub exchange_ms: f64,
    /// Time to merge what was received into the stores and update the
    /// trees.
    pub merge_ms: f64,
    /// `exchange_ms + merge_ms`.
    pub total_ms: f64,
    /// Time to build one store's tree from scratch (once at start; the
    /// daemon then keeps it up to date incrementally).
    pub tree_build_ms: f64,
    /// Whether the stores (every full prefix's hash) and the trees' roots
    /// are equal afterwards.
    pub equal_after: bool,
    /// Time to build the two stores.
    pub setup_s: f64,
}

impl fmt::Display for ExchangeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "keys per store              {}", self.keys)?;
        writeln!(f, "differing keys              {}", self.differing_keys)?;
        writeln!(
            f,
            "differing objects (bytes)   {}",
            self.differing_object_bytes
        )?;
        writeln!(
            f,
            "bytes sent                  {} ({} + {}), {} messages",
            self.bytes_total,
            self.bytes_initiator_to_responder,
            self.bytes_responder_to_initiator,
            self.messages
        )?;
        writeln!(f, "bytes / differing objects   {:.2}x", self.bytes_ratio)?;
        writeln!(
            f,
            "objects received            {} and {}",
            self.objects_received.0, self.objects_received.1
        )?;
        writeln!(
            f,
            "keys changed by merging     {} and {}",
            self.keys_merged.0, self.keys_merged.1
        )?;
        writeln!(f, "exchange                    {:.0} ms", self.exchange_ms)?;
        writeln!(f, "merge                       {:.0} ms", self.merge_ms)?;
        writeln!(f, "exchange + merge            {:.0} ms", self.total_ms)?;
        writeln!(
            f,
            "tree build (one store)      {:.0} ms",
            self.tree_build_ms
        )?;
        writeln!(f, "stores equal after          {}", self.equal_after)?;
        write!(f, "setup                       {:.1} s", self.setup_s)
    }
}

struct Side {
    meta: Metadata,
    tree: MerkleTree<Vec<u8>>,
    snapshot: Snapshot,
}

fn full_prefix(prefix: &[u8], sub: &[u8]) -> Option<FullPrefix> {
    FullPrefix::new(
        std::str::from_utf8(prefix).ok()?,
        std::str::from_utf8(sub).ok()?,
    )
    .ok()
}

fn key_name(i: u64) -> Vec<u8> {
    format!("key-{i:08}").into_bytes()
}

fn value(i: u64, version: u32) -> Vec<u8> {
    // 64 to 127 bytes: a small metadata record.
    let len = 64 + (i % 64) as usize;
    let mut v = format!("{{\"id\":{i},\"version\":{version},\"data\":\"").into_bytes();
    v.resize(len - 2, b'x');
    v.extend_from_slice(b"\"}");
    v
}

fn open(dir: &std::path::Path) -> Result<Metadata, Error> {
    let store = Store::open(
        dir,
        Options {
            create: true,
            sync: SyncMode::Never,
            ..Options::default()
        },
    )?;
    Ok(Metadata::new(store))
}

fn fp_of(i: u64) -> Result<FullPrefix, Error> {
    let (p, s) = FULL_PREFIXES[(i % FULL_PREFIXES.len() as u64) as usize];
    FullPrefix::new(p, s).map_err(|e| Error::InvalidInput(e.to_string()))
}

/// Runs the measurement: two stores of `keys` keys, `diff` of them
/// different, one exchange.
pub fn run(keys: u64, diff: f64, seed: u64) -> Result<ExchangeReport, Error> {
    let started = Instant::now();
    let dirs = (tempdir()?, tempdir()?);
    let a = open(dirs.0.path())?;
    let b = open(dirs.1.path())?;
    populate(&a, keys)?;
    copy(&a, &b)?;
    let differing = make_differences(&a, &b, keys, diff, seed)?;
    let setup_s = started.elapsed().as_secs_f64();

    let build = Instant::now();
    let mut side_a = side(a)?;
    let tree_build_ms = build.elapsed().as_secs_f64() * 1e3;
    let mut side_b = side(b)?;
    let differing_object_bytes = differing_bytes(&side_a, &side_b, &differing)?;

    let t0 = Instant::now();
    let outcome = exchange(&side_a, &side_b)?;
    let exchange_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t1 = Instant::now();
    let merged_a = apply(&mut side_a, outcome.repairs.0)?;
    let merged_b = apply(&mut side_b, outcome.repairs.1)?;
    let merge_ms = t1.elapsed().as_secs_f64() * 1e3;

    let equal_after = equal(&side_a, &side_b)?;
    let bytes_total = outcome.bytes.0 + outcome.bytes.1;
    Ok(ExchangeReport {
        keys,
        differing_keys: differing.len() as u64,
        differing_object_bytes,
        bytes_initiator_to_responder: outcome.bytes.0,
        bytes_responder_to_initiator: outcome.bytes.1,
        bytes_total,
        bytes_ratio: bytes_total as f64 / differing_object_bytes.max(1) as f64,
        messages: outcome.messages,
        objects_received: outcome.received,
        keys_merged: (merged_a, merged_b),
        exchange_ms,
        merge_ms,
        total_ms: exchange_ms + merge_ms,
        tree_build_ms,
        equal_after,
        setup_s,
    })
}

/// Builds the two stores of [`run`] in `a_dir` and `b_dir` and leaves
/// them there (for measuring daemons on them): `keys` keys each, `diff`
/// of them different. Returns how many differ.
pub fn build_pair(
    a_dir: &std::path::Path,
    b_dir: &std::path::Path,
    keys: u64,
    diff: f64,
    seed: u64,
) -> Result<u64, Error> {
    let a = open(a_dir)?;
    let b = open(b_dir)?;
    populate(&a, keys)?;
    copy(&a, &b)?;
    Ok(make_differences(&a, &b, keys, diff, seed)?.len() as u64)
}

fn tempdir() -> Result<tempfile::TempDir, Error> {
    tempfile::tempdir()
        .map_err(|e| Error::InvalidInput(format!("cannot make a temporary directory: {e}")))
}

fn populate(a: &Metadata, keys: u64) -> Result<(), Error> {
    let mut i = 0;
    while i < keys {
        let mut tx = a.begin()?;
        for j in i..(i + BUILD_BATCH as u64).min(keys) {
            tx.put(&fp_of(j)?, &key_name(j), &value(j, 1), None)?;
        }
        tx.commit()?;
        i += BUILD_BATCH as u64;
    }
    Ok(())
}

/// Gives `b` exactly `a`'s objects, as replication would.
fn copy(a: &Metadata, b: &Metadata) -> Result<(), Error> {
    let snapshot = a.store().snapshot()?;
    let mut batch = Vec::with_capacity(MERGE_BATCH);
    for (fp, key, entry) in snapshot.iter() {
        let object = Object::decode(&entry.value)
            .map_err(|e| Error::InvalidInput(format!("undecodable object: {e}")))?;
        batch.push((fp.clone(), key.as_bytes().to_vec(), object));
        if batch.len() == MERGE_BATCH {
            b.merge(Origin::Peer([1; 16]), std::mem::take(&mut batch))?;
        }
    }
    if !batch.is_empty() {
        b.merge(Origin::Peer([1; 16]), batch)?;
    }
    Ok(())
}

/// Picks `diff` of the keys and makes each differ one of four ways.
fn make_differences(
    a: &Metadata,
    b: &Metadata,
    keys: u64,
    diff: f64,
    seed: u64,
) -> Result<Vec<(FullPrefix, Vec<u8>)>, Error> {
    let count = ((keys as f64) * diff).round() as usize;
    let all: Vec<u64> = (0..keys).collect();
    let mut chosen = Rng::new(seed).sample(&all, count);
    chosen.sort_unstable();
    let mut differing = Vec::with_capacity(count);
    // In commits of at most BUILD_BATCH keys, under the commit limits.
    for batch in chosen.chunks(BUILD_BATCH) {
        let (mut tx_a, mut tx_b) = (a.begin()?, b.begin()?);
        for &i in batch {
            let (fp, key) = (fp_of(i)?, key_name(i));
            match differing.len() % 4 {
                0 => tx_a.put(&fp, &key, &value(i, 2), None)?,
                1 => tx_b.put(&fp, &key, &value(i, 3), None)?,
                2 => {
                    tx_a.put(&fp, &key, &value(i, 4), None)?;
                    tx_b.put(&fp, &key, &value(i, 5), None)?;
                }
                _ => tx_a.delete(&fp, &key, None)?,
            }
            differing.push((fp, key));
        }
        tx_a.commit()?;
        tx_b.commit()?;
    }
    Ok(differing)
}

fn side(meta: Metadata) -> Result<Side, Error> {
    let snapshot = meta.store().snapshot()?;
    let tree = build_tree(&snapshot);
    Ok(Side {
        meta,
        tree,
        snapshot,
    })
}

fn differing_bytes(a: &Side, b: &Side, keys: &[(FullPrefix, Vec<u8>)]) -> Result<u64, Error> {
    let mut total = 0;
    for (fp, key) in keys {
        for side in [a, b] {
            total += side.snapshot.get(fp, key).map_or(0, |v| v.len() as u64);
        }
    }
    Ok(total)
}

struct Outcome {
    bytes: (u64, u64),
    messages: u64,
    received: (u64, u64),
    repairs: (Vec<Received>, Vec<Received>),
}

type Wire = Message<Vec<u8>, Vec<u8>>;
type Received = Repair<Vec<u8>, Vec<u8>>;

/// Passes one message through the wire encoding; returns it and its size.
fn wire(msg: &Wire) -> Result<(Wire, u64), Error> {
    let bytes = postcard::to_stdvec(msg)
        .map_err(|e| Error::InvalidInput(format!("cannot encode an exchange message: {e}")))?;
    let back: Wire = postcard::from_bytes(&bytes)
        .map_err(|e| Error::InvalidInput(format!("cannot decode an exchange message: {e}")))?;
    Ok((back, bytes.len() as u64 + FRAME_BYTES))
}

fn exchange(a: &Side, b: &Side) -> Result<Outcome, Error> {
    let config = ExchangeConfig::default();
    let (mut ex_a, first) = Exchange::initiate(&a.tree, config);
    let mut ex_b = Exchange::respond(config);
    let mut outcome = Outcome {
        bytes: (0, 0),
        messages: 0,
        received: (0, 0),
        repairs: (Vec::new(), Vec::new()),
    };
    let mut next = Some(first);
    let mut to_b = true;
    // A bound on the ping-pong so a protocol bug cannot hang the run.
    for _ in 0..1_000_000 {
        let Some(msg) = next.take() else { break };
        let (msg, size) = wire(&msg)?;
        outcome.messages += 1;
        if to_b {
            outcome.bytes.0 += size;
            next = ex_b.handle(&b.tree, msg, &mut SnapshotObjects(&b.snapshot));
            while let Some(r) = ex_b.poll_repair() {
                outcome.repairs.1.push(r);
            }
        } else {
            outcome.bytes.1 += size;
            next = ex_a.handle(&a.tree, msg, &mut SnapshotObjects(&a.snapshot));
            while let Some(r) = ex_a.poll_repair() {
                outcome.repairs.0.push(r);
            }
        }
        to_b = !to_b;
    }
    if !(ex_a.is_done() && ex_b.is_done()) {
        return Err(Error::InvalidInput("the exchange did not finish".into()));
    }
    outcome.received = (
        outcome.repairs.0.len() as u64,
        outcome.repairs.1.len() as u64,
    );
    Ok(outcome)
}

/// Merges the objects a side received, then brings its tree up to date.
fn apply(side: &mut Side, repairs: Vec<Repair<Vec<u8>, Vec<u8>>>) -> Result<usize, Error> {
    let mut changed = 0;
    let mut touched = Vec::with_capacity(repairs.len());
    for chunk in repairs.chunks(MERGE_BATCH) {
        let mut batch = Vec::with_capacity(chunk.len());
        for r in chunk {
            let fp = full_prefix(&r.prefix, &r.sub).ok_or_else(|| {
                Error::InvalidInput("a repair names an invalid full prefix".into())
            })?;
            let object = Object::decode(&r.object).map_err(|e| {
                Error::InvalidInput(format!("a peer sent an undecodable object: {e}"))
            })?;
            touched.push((fp.clone(), r.key.clone()));
            batch.push((fp, r.key.clone(), object));
        }
        changed += side.meta.merge(Origin::Peer([2; 16]), batch)?;
    }
    side.snapshot = side.meta.store().snapshot()?;
    for (fp, key) in touched {
        let hash = side.snapshot.get(&fp, &key).map(|v| object_hash(&key, &v));
        side.tree.update(
            fp.prefix().as_bytes(),
            fp.subprefix().as_bytes(),
            &key,
            key_hash(&key),
            hash,
        );
    }
    Ok(changed)
}

fn equal(a: &Side, b: &Side) -> Result<bool, Error> {
    if a.tree.root() != b.tree.root() {
        return Ok(false);
    }
    for (p, s) in FULL_PREFIXES {
        let fp = FullPrefix::new(p, s).map_err(|e| Error::InvalidInput(e.to_string()))?;
        if a.snapshot.prefix_hash(&fp) != b.snapshot.prefix_hash(&fp) {
            return Ok(false);
        }
    }
    Ok(true)
}
