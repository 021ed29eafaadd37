//! The simulated clients and the checkers over real stores, replicated by
//! hand with `Metadata::merge` (what the replica does): a correct run
//! gives no violation, and each deliberate mistake (a dropped sibling, a
//! resurrected value, a key not replicated, a lost write, a lost document
//! revision, a dropped push, an invented value) is caught by its checker.

use std::sync::Arc;

use chorus_core::FullPrefix;
use chorus_core::dvvset::{Dvvs, Entry};
use chorus_core::object::{Hlc, Object, Value};
use chorus_gossip::Rng;
use chorus_sim::check::{self, Violation};
use chorus_sim::client::{Action, Clients, EventOp, History, Layout};
use chorus_store::fault::{FaultBackend, FaultPlan};
use chorus_store::oplog::Oplogs;
use chorus_store::{Incoming, Metadata, Options, Origin, Store, SyncMode};
use tempfile::TempDir;

/// Stores in temp dirs.
struct Cluster {
    _dirs: Vec<TempDir>,
    metas: Vec<Metadata>,
}

fn open(dir: &TempDir, options: Options) -> Metadata {
    let store = Store::open(dir.path(), options).expect("open a store in a temp dir");
    Metadata::new(store)
}

fn cluster(n: usize) -> Cluster {
    let dirs: Vec<TempDir> = (0..n).map(|_| TempDir::new().expect("temp dir")).collect();
    let metas = dirs
        .iter()
        .map(|d| {
            open(
                d,
                Options {
                    create: true,
                    // Nothing here crashes the machine: no sync needed.
                    sync: SyncMode::Never,
                    ..Options::default()
                },
            )
        })
        .collect();
    Cluster { _dirs: dirs, metas }
}

/// Every object a store holds that `keep` selects.
fn objects(meta: &Metadata, keep: &dyn Fn(&FullPrefix, &[u8]) -> bool) -> Vec<Incoming> {
    let snap = meta.store().snapshot().expect("snapshot");
    snap.iter()
        .filter(|(fp, k, _)| keep(fp, k.as_bytes()))
        .filter_map(|(fp, k, e)| {
            Object::decode(&e.value)
                .ok()
                .map(|o| (fp.clone(), k.as_bytes().to_vec(), o))
        })
        .collect()
}

fn merge(to: &Metadata, from: &Metadata, objects: Vec<Incoming>) {
    let origin = Origin::Peer(*from.store().node_id().as_bytes());
    for chunk in objects.chunks(256) {
        to.merge(origin, chunk.to_vec()).expect("merge");
    }
}

fn send_filtered(from: &Metadata, to: &Metadata, keep: &dyn Fn(&FullPrefix, &[u8]) -> bool) {
    merge(to, from, objects(from, keep));
}

fn send(from: &Metadata, to: &Metadata) {
    send_filtered(from, to, &|_, _| true);
}

/// Everything to everyone, twice, the pairs in a random order.
fn replicate_all(metas: &[Metadata], rng: &mut Rng) {
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    for i in 0..metas.len() {
        for j in 0..metas.len() {
            if i != j {
                pairs.push((i, j));
            }
        }
    }
    for _ in 0..2 {
        for (i, j) in rng.sample(&pairs, pairs.len()) {
            send(&metas[i], &metas[j]);
        }
    }
}

/// Removes, from every store, the plain keys every store holds as a
/// tombstone (what tombstone collection does once all have it).
fn collect_tombstones(metas: &[Metadata], layout: &Layout) {
    for fp in &layout.kv {
        let snap = metas[0].store().snapshot().expect("snapshot");
        let keys: Vec<Vec<u8>> = snap
            .iter_prefix(fp)
            .map(|(k, _)| k.as_bytes().to_vec())
            .collect();
        for key in keys {
            let dead = metas.iter().all(|m| {
                m.object(fp, &key)
                    .expect("read an object")
                    .is_some_and(|o| o.is_tombstone())
            });
            if dead {
                for m in metas {
                    m.store().delete(fp, &key).expect("collect a tombstone");
                }
            }
        }
    }
}

/// A run of random operations with random partial replication.
fn run(metas: &[Metadata], seed: u64, steps: usize) -> Clients {
    let mut rng = Rng::new(seed);
    let mut clients = Clients::new(Layout::default()).expect("the default layout is valid");
    for t in 0..steps {
        let node = rng.below(metas.len());
        clients.step(node as u32, &metas[node], &mut rng, t as u64 * 10);
        if t % 50 == 49 {
            let found = check::during_run(metas, clients.history());
            assert!(found.is_empty(), "seed {seed} step {t}:\n{}", show(&found));
        }
        if rng.below(10) == 0 {
            let (i, j) = (rng.below(metas.len()), rng.below(metas.len()));
            if i != j {
                send(&metas[i], &metas[j]);
            }
        }
    }
    clients
}

fn with(violations: &[Violation], checker: &str) -> Vec<Violation> {
    violations
        .iter()
        .filter(|v| v.checker == checker)
        .cloned()
        .collect()
}

fn show(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// What kinds of things a history did, to see a run covers them.
#[derive(Debug, Default)]
struct Coverage {
    siblings_seen: usize,
    write_backs: usize,
    deletes: usize,
    context_puts: usize,
    branches: usize,
    pushes: usize,
}

fn coverage(history: &History) -> Coverage {
    let mut c = Coverage::default();
    for e in history.events() {
        if !e.outcome.acknowledged() {
            continue;
        }
        match &e.op {
            EventOp::Read(r) if r.found.len() > 1 => c.siblings_seen += 1,
            EventOp::Write(w) => {
                use chorus_sim::client::WriteKind::*;
                match w.kind {
                    WriteBack => c.write_backs += 1,
                    Delete | DeleteWithContext => c.deletes += 1,
                    PutWithContext => c.context_puts += 1,
                    Put => {}
                }
            }
            EventOp::Doc(d) if d.kind == chorus_sim::client::DocKind::Branch => c.branches += 1,
            EventOp::Push(_) => c.pushes += 1,
            _ => {}
        }
    }
    c
}

#[test]
fn random_clients_replicated_by_hand_give_no_violation() {
    for seed in 1..=6 {
        let c = cluster(5);
        let clients = run(&c.metas, seed, 300);
        let mut rng = Rng::new(seed ^ 0xabc);
        replicate_all(&c.metas, &mut rng);
        let history = clients.history();
        let found = check::check_all(&c.metas, history);
        assert!(found.is_empty(), "seed {seed}:\n{}", show(&found));
        // And after collecting the tombstones every store holds.
        collect_tombstones(&c.metas, history.layout());
        let found = check::check_all(&c.metas, history);
        assert!(
            found.is_empty(),
            "seed {seed} after collection:\n{}",
            show(&found)
        );
        let cov = coverage(history);
        assert!(
            cov.siblings_seen > 0
                && cov.write_backs > 0
                && cov.deletes > 0
                && cov.context_puts > 0
                && cov.branches > 0
                && cov.pushes > 0,
            "seed {seed} left something out: {cov:?}"
        );
    }
}

#[test]
fn the_same_seed_gives_the_same_operations() {
    let (a, b) = (cluster(3), cluster(3));
    let ha = run(&a.metas, 9, 200).into_history();
    let hb = run(&b.metas, 9, 200).into_history();
    let kinds = |h: &History| -> Vec<(u32, String)> {
        h.events()
            .iter()
            .map(|e| {
                let what = match &e.op {
                    EventOp::Read(r) => format!("read {:?}", r.key),
                    EventOp::Write(w) => format!("{:?} {:?} {:?}", w.kind, w.key, w.bytes),
                    EventOp::Doc(d) => format!("{:?} {} {}", d.kind, d.id, d.marker),
                    EventOp::Push(p) => format!("push {} {}", p.path, p.payload),
                };
                (e.node, what)
            })
            .collect()
    };
    assert_eq!(kinds(&ha), kinds(&hb));
}

/// Two stores write one key concurrently; the first returns the key.
fn concurrent_pair(c: &Cluster, clients: &mut Clients) -> (FullPrefix, Vec<u8>) {
    let put = Action::Put { key: 0 };
    assert!(clients.apply(0, &c.metas[0], put, 0).acknowledged);
    assert!(clients.apply(1, &c.metas[1], put, 1).acknowledged);
    clients
        .history()
        .layout()
        .kv_key(0)
        .expect("the layout has keys")
}

#[test]
fn concurrent_writes_stay_siblings_and_pass() {
    let c = cluster(3);
    let mut clients = Clients::new(Layout::default()).expect("layout");
    let (fp, key) = concurrent_pair(&c, &mut clients);
    replicate_all(&c.metas, &mut Rng::new(1));
    for m in &c.metas {
        let o = m.object(&fp, &key).expect("read").expect("present");
        assert_eq!(o.value_count(), 2, "two siblings");
    }
    let found = check::check_all(&c.metas, clients.history());
    assert!(found.is_empty(), "{}", show(&found));
}

#[test]
fn a_sibling_dropped_in_a_merge_is_a_lost_acknowledged_write() {
    let c = cluster(3);
    let mut clients = Clients::new(Layout::default()).expect("layout");
    let (fp, key) = concurrent_pair(&c, &mut clients);
    send(&c.metas[1], &c.metas[0]);
    // Store 0 holds both siblings; it sends store 2 the object with store
    // 1's value taken out but its dot kept: the bug.
    let both = c.metas[0]
        .object(&fp, &key)
        .expect("read")
        .expect("present");
    let lost = c.metas[1].store().node_id();
    let entries: Vec<Entry<_, Value>> = both
        .clock()
        .entries()
        .iter()
        .map(|e| Entry {
            id: e.id,
            counter: e.counter,
            values: if e.id == lost {
                Vec::new()
            } else {
                e.values.clone()
            },
        })
        .collect();
    let bad = Object::from_clock(Dvvs::from_parts(entries, both.clock().anonymous().to_vec()))
        .expect("a valid object");
    merge(
        &c.metas[2],
        &c.metas[0],
        vec![(fp.clone(), key.clone(), bad)],
    );
    // Store 2 passes it on; store 1 never sent its value there.
    send(&c.metas[2], &c.metas[1]);
    send(&c.metas[2], &c.metas[0]);
    let found = check::check_all(&c.metas, clients.history());
    let lost = with(&found, check::ACKNOWLEDGED);
    assert!(
        lost.iter().any(|v| v.first_event == Some(1)),
        "the dropped sibling (event 1) is reported lost:\n{}",
        show(&found)
    );
}

#[test]
fn a_deleted_value_brought_back_is_caught() {
    let c = cluster(2);
    let mut clients = Clients::new(Layout::default()).expect("layout");
    let (fp, key) = clients.history().layout().kv_key(3).expect("key");
    assert!(
        clients
            .apply(0, &c.metas[0], Action::Put { key: 3 }, 0)
            .acknowledged
    );
    send(&c.metas[0], &c.metas[1]);
    let before = objects(&c.metas[0], &|_, _| true);
    assert!(
        clients
            .apply(1, &c.metas[1], Action::Delete { key: 3 }, 1)
            .acknowledged
    );
    replicate_all(&c.metas, &mut Rng::new(2));
    let layout = clients.history().layout().clone();
    collect_tombstones(&c.metas, &layout);
    assert!(check::check_all(&c.metas, clients.history()).is_empty());
    // A node that was away comes back with the old object after the
    // tombstone was collected, and it is merged: the bug.
    for m in &c.metas {
        merge(m, &c.metas[0], before.clone());
    }
    let found = check::check_all(&c.metas, clients.history());
    let back = with(&found, check::RESURRECTED);
    assert!(
        back.iter()
            .any(|v| v.first_event == Some(0) && v.key.ends_with("k03")),
        "the deleted value is reported back:\n{}",
        show(&found)
    );
    assert!(
        c.metas[0].object(&fp, &key).expect("read").is_some(),
        "the value is back"
    );
}

#[test]
fn a_key_not_replicated_to_one_store_is_a_divergence() {
    let c = cluster(3);
    let clients = run(&c.metas, 4, 120);
    let mut rng = Rng::new(3);
    replicate_all(&c.metas, &mut rng);
    // One more write to one key, replicated to every store but store 2.
    let mut clients = clients;
    let (fp, key) = clients.history().layout().kv_key(5).expect("key");
    assert!(
        clients
            .apply(0, &c.metas[0], Action::Put { key: 5 }, 9_999)
            .acknowledged
    );
    send(&c.metas[0], &c.metas[1]);
    let (skip_fp, skip_key) = (fp.clone(), key.clone());
    send_filtered(&c.metas[0], &c.metas[2], &move |f, k| {
        !(f == &skip_fp && k == skip_key.as_slice())
    });
    let found = check::check_all(&c.metas, clients.history());
    let diverged = with(&found, check::CONVERGENCE);
    let name = format!("{fp}/{}", String::from_utf8_lossy(&key));
    assert!(
        diverged.iter().any(|v| v.key == name),
        "{name} is reported:\n{}",
        show(&found)
    );
}

#[test]
fn a_write_overwritten_without_superseding_it_is_lost() {
    let c = cluster(2);
    let mut clients = Clients::new(Layout::default()).expect("layout");
    let (fp, key) = clients.history().layout().kv_key(7).expect("key");
    // Store 0 writes x; store 1, not having it, writes y.
    assert!(
        clients
            .apply(0, &c.metas[0], Action::Put { key: 7 }, 0)
            .acknowledged
    );
    assert!(
        clients
            .apply(1, &c.metas[1], Action::Put { key: 7 }, 1)
            .acknowledged
    );
    // Store 1's object is copied over store 0's with the raw engine API
    // instead of merged: x is gone though nothing saw it.
    let bytes = c.metas[1]
        .store()
        .get(&fp, &key)
        .expect("read")
        .expect("present");
    c.metas[0].store().put(&fp, &key, &bytes).expect("raw put");
    let found = check::check_all(&c.metas, clients.history());
    let lost = with(&found, check::ACKNOWLEDGED);
    assert!(
        lost.iter().any(|v| v.first_event == Some(0)),
        "x (event 0) is reported lost:\n{}",
        show(&found)
    );
    assert!(
        with(&found, check::INVENTED).is_empty(),
        "y was written by a client:\n{}",
        show(&found)
    );
}

#[test]
fn a_value_no_client_wrote_is_invented() {
    let c = cluster(2);
    let clients = run(&c.metas, 5, 60);
    replicate_all(&c.metas, &mut Rng::new(5));
    let (fp, key) = clients.history().layout().kv_key(11).expect("key");
    let forged = Object::modify(
        None,
        &Object::empty_context(),
        Value::data(b"nobody", Hlc(1), c.metas[0].store().node_id()),
        c.metas[0].store().node_id(),
    );
    for m in &c.metas {
        merge(
            m,
            &c.metas[0],
            vec![(fp.clone(), key.clone(), forged.clone())],
        );
    }
    let found = check::check_all(&c.metas, clients.history());
    let invented = with(&found, check::INVENTED);
    assert!(
        invented.iter().any(|v| v.detail.contains("nobody")),
        "the forged value is reported:\n{}",
        show(&found)
    );
}

#[test]
fn a_store_with_another_document_winner_is_caught() {
    let c = cluster(3);
    let mut clients = Clients::new(Layout::default()).expect("layout");
    assert!(
        clients
            .apply(0, &c.metas[0], Action::DocCreate { doc: 0 }, 0)
            .acknowledged
    );
    replicate_all(&c.metas, &mut Rng::new(6));
    // Two concurrent edits: a conflict every store resolves the same way.
    assert!(
        clients
            .apply(0, &c.metas[0], Action::DocUpdate { doc: 0 }, 1)
            .acknowledged
    );
    assert!(
        clients
            .apply(1, &c.metas[1], Action::DocUpdate { doc: 0 }, 2)
            .acknowledged
    );
    replicate_all(&c.metas, &mut Rng::new(7));
    let found = check::check_all(&c.metas, clients.history());
    assert!(found.is_empty(), "{}", show(&found));
    // Store 2 loses the winning revision's record: the bug.
    let docs = chorus_store::docs::Docs::open(&c.metas[2], &clients.history().layout().docs)
        .expect("docs");
    let tree = docs.tree("d0").expect("tree");
    let winner = tree.winner().expect("a winner").to_string();
    let fp = docs.full_prefix().clone();
    let snap = c.metas[2].store().snapshot().expect("snapshot");
    let record: Vec<u8> = snap
        .group(&fp, b"d0")
        .map(|(k, _)| k.as_bytes().to_vec())
        .find(|k| k.ends_with(winner.as_bytes()))
        .expect("the winner's record");
    c.metas[2].store().delete(&fp, &record).expect("raw delete");
    let found = check::check_all(&c.metas, clients.history());
    let docs_found = with(&found, check::DOCUMENTS);
    assert!(
        docs_found.iter().any(|v| v.key.ends_with("/d0")),
        "the other winner is reported:\n{}",
        show(&found)
    );
}

#[test]
fn a_dropped_push_is_caught() {
    let c = cluster(2);
    let mut clients = Clients::new(Layout::default()).expect("layout");
    for t in 0..4 {
        let node = (t % 2) as usize;
        assert!(
            clients
                .apply(node as u32, &c.metas[node], Action::Push { log: 0 }, t)
                .acknowledged
        );
    }
    replicate_all(&c.metas, &mut Rng::new(8));
    let found = check::check_all(&c.metas, clients.history());
    assert!(found.is_empty(), "{}", show(&found));
    // Every store loses the record of the second push: the bug.
    let history = clients.history();
    let EventOp::Push(p) = &history.events()[1].op else {
        panic!("event 1 is a push");
    };
    let (_, sha) = p.stamp.clone().expect("an acknowledged push is found");
    let fp = history.layout().logs.clone();
    for m in &c.metas {
        let snap = m.store().snapshot().expect("snapshot");
        let record: Vec<u8> = snap
            .group(&fp, b"c0")
            .map(|(k, _)| k.as_bytes().to_vec())
            .find(|k| k.ends_with(sha.as_bytes()))
            .expect("the push's record");
        m.store().delete(&fp, &record).expect("raw delete");
    }
    let found = check::check_all(&c.metas, history);
    let logs = with(&found, check::OPERATION_LOGS);
    assert!(
        logs.iter().any(|v| v.first_event == Some(1)),
        "the dropped push is reported:\n{}",
        show(&found)
    );
    assert!(
        logs.iter().any(|v| v.detail.contains("does not add up")),
        "the counter is short:\n{}",
        show(&found)
    );
}

#[test]
fn failed_commits_are_attempts_and_pass_when_present_or_absent() {
    let dirs: Vec<TempDir> = (0..3).map(|_| TempDir::new().expect("temp dir")).collect();
    let (backend, faults) = FaultBackend::new();
    let faulty = open(
        &dirs[0],
        Options {
            create: true,
            backend: Arc::new(backend),
            ..Options::default()
        },
    );
    let mut metas = vec![faulty];
    for d in &dirs[1..] {
        metas.push(open(
            d,
            Options {
                create: true,
                ..Options::default()
            },
        ));
    }
    let mut rng = Rng::new(11);
    let mut clients = Clients::new(Layout::default()).expect("layout");
    let mut failed = 0;
    for t in 0..240u64 {
        // Store 0's disk fails its syncs or fills up now and then.
        match t % 40 {
            10 => faults.set(FaultPlan {
                fail_sync: true,
                ..FaultPlan::default()
            }),
            20 => faults.set(FaultPlan {
                space_left: Some(0),
                ..FaultPlan::default()
            }),
            15 | 25 => faults.clear(),
            _ => {}
        }
        let node = rng.below(metas.len());
        let step = clients.step(node as u32, &metas[node], &mut rng, t);
        if !step.acknowledged {
            failed += 1;
        }
        if rng.below(8) == 0 {
            let (i, j) = (rng.below(3), rng.below(3));
            if i != j {
                let objects = objects(&metas[i], &|_, _| true);
                let origin = Origin::Peer(*metas[i].store().node_id().as_bytes());
                for chunk in objects.chunks(256) {
                    // A merge into the faulty store may fail: sent again later.
                    let _ = metas[j].merge(origin, chunk.to_vec());
                }
            }
        }
    }
    faults.clear();
    replicate_all(&metas, &mut rng);
    assert!(failed > 0, "some commits failed");
    let found = check::check_all(&metas, clients.history());
    assert!(found.is_empty(), "{}", show(&found));
}

/// The checkers' cost at the size the figures use: `CHORUS_CHECK_REPLICAS`
/// replicas (default 10) of `CHORUS_CHECK_KEYS` plain keys (default 200).
#[test]
fn check_all_over_many_replicas_and_keys() {
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (replicas, keys) = (
        env("CHORUS_CHECK_REPLICAS", 10),
        env("CHORUS_CHECK_KEYS", 200),
    );
    let layout = Layout {
        keys_per_prefix: keys / 2,
        ..Layout::default()
    };
    let writers = cluster(3);
    let mut clients = Clients::new(layout).expect("layout");
    // Every key written at least once, then random operations.
    for k in 0..keys {
        let node = k % 3;
        clients.apply(
            node as u32,
            &writers.metas[node],
            Action::Put { key: k },
            k as u64,
        );
    }
    let mut rng = Rng::new(12);
    for t in 0..keys {
        let node = rng.below(3);
        clients.step(
            node as u32,
            &writers.metas[node],
            &mut rng,
            (keys + t) as u64,
        );
    }
    replicate_all(&writers.metas, &mut rng);
    let all = cluster(replicas);
    let everything = objects(&writers.metas[0], &|_, _| true);
    for m in &all.metas {
        merge(m, &writers.metas[0], everything.clone());
    }
    let started = std::time::Instant::now();
    let found = check::check_all(&all.metas, clients.history());
    let took = started.elapsed();
    println!(
        "check_all over {replicas} replicas x {keys} keys ({} events): {took:?}",
        clients.history().len()
    );
    assert!(found.is_empty(), "{}", show(&found));
}

#[test]
fn pushes_folded_into_a_checkpoint_are_accounted_for() {
    let c = cluster(2);
    let mut clients = Clients::new(Layout::default()).expect("layout");
    for t in 0..6 {
        let node = (t % 2) as usize;
        let push = Action::Push { log: 1 };
        assert!(
            clients
                .apply(node as u32, &c.metas[node], push, t)
                .acknowledged
        );
    }
    replicate_all(&c.metas, &mut Rng::new(13));
    let fp = clients.history().layout().logs.clone();
    let view = Oplogs::new(&c.metas[0]).log(&fp, "c1").expect("log");
    let upto = view.log.ops().nth(3).expect("six operations").key();
    // Every store folds the first four (a cluster prunes only what every
    // member has).
    for m in &c.metas {
        assert_eq!(Oplogs::new(m).prune(&fp, "c1", &upto).expect("prune"), 4);
    }
    replicate_all(&c.metas, &mut Rng::new(14));
    let view = Oplogs::new(&c.metas[1]).log(&fp, "c1").expect("log");
    assert!(view.log.checkpoint().is_some() && view.log.ops().count() == 2);
    let found = check::check_all(&c.metas, clients.history());
    assert!(found.is_empty(), "{}", show(&found));
}
