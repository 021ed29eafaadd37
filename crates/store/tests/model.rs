//! Model-based property test: random sequences of put, delete, transaction,
//! compaction, reopening and rebooting match a `BTreeMap`.

use std::collections::BTreeMap;

use chorus_core::FullPrefix;
use chorus_store::{Error, Options, Store, SyncMode};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u8, Vec<u8>),
    Delete(u8, u8),
    /// Reads some keys, then (optionally) another handle writes one of them,
    /// then writes: must conflict exactly when the interfering write hit a
    /// key that was read.
    Transaction {
        reads: Vec<(u8, u8)>,
        writes: Vec<(u8, u8, Option<Vec<u8>>)>,
        interfere: Option<(u8, u8)>,
    },
    Compact,
    Reopen,
    Reboot,
}

fn key() -> impl Strategy<Value = (u8, u8)> {
    (0u8..3, 0u8..12)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (key(), proptest::collection::vec(any::<u8>(), 0..40)).prop_map(|((p, k), v)| Op::Put(p, k, v)),
        2 => key().prop_map(|(p, k)| Op::Delete(p, k)),
        3 => (
            proptest::collection::vec(key(), 0..4),
            proptest::collection::vec((key(), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8))), 1..4),
            proptest::option::of(key()),
        )
            .prop_map(|(reads, writes, interfere)| Op::Transaction {
                reads,
                writes: writes.into_iter().map(|((p, k), v)| (p, k, v)).collect(),
                interfere,
            }),
        1 => Just(Op::Compact),
        1 => Just(Op::Reopen),
        1 => Just(Op::Reboot),
    ]
}

fn fp(p: u8) -> FullPrefix {
    FullPrefix::new(&format!("p{p}"), "s").expect("valid")
}

fn open(dir: &std::path::Path) -> Store {
    Store::open(
        dir,
        Options {
            create: true,
            sync: SyncMode::Never,
            ..Options::default()
        },
    )
    .expect("open")
}

type Model = BTreeMap<(u8, Vec<u8>), Vec<u8>>;

fn assert_matches(store: &Store, model: &Model) {
    let snap = store.snapshot().expect("snapshot");
    let got: Model = snap
        .iter()
        .map(|(f, k, e)| {
            let p: u8 = f.prefix()[1..].parse().expect("p<n>");
            ((p, k.to_vec()), e.value.to_vec())
        })
        .collect();
    assert_eq!(&got, model);
}

fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(dir.path());
    let other = open(dir.path());
    let mut model = Model::new();
    for op in ops {
        match op {
            Op::Put(p, k, v) => {
                store.put(&fp(p), &[k], &v).expect("put");
                model.insert((p, vec![k]), v);
            }
            Op::Delete(p, k) => {
                store.delete(&fp(p), &[k]).expect("delete");
                model.remove(&(p, vec![k]));
            }
            Op::Transaction {
                reads,
                writes,
                interfere,
            } => {
                let mut tx = store.begin().expect("begin");
                for (p, k) in &reads {
                    assert_eq!(
                        tx.get(&fp(*p), &[*k]).map(|v| v.to_vec()),
                        model.get(&(*p, vec![*k])).cloned()
                    );
                }
                if let Some((p, k)) = interfere {
                    other.put(&fp(p), &[k], b"interference").expect("put");
                    model.insert((p, vec![k]), b"interference".to_vec());
                }
                for (p, k, v) in &writes {
                    match v {
                        Some(v) => tx.put(&fp(*p), &[*k], v),
                        None => tx.delete(&fp(*p), &[*k]),
                    }
                }
                let must_conflict = interfere.is_some_and(|i| reads.contains(&i));
                match tx.commit() {
                    Ok(_) => {
                        assert!(
                            !must_conflict,
                            "a read key changed but the commit went through"
                        );
                        for (p, k, v) in writes {
                            match v {
                                Some(v) => model.insert((p, vec![k]), v),
                                None => model.remove(&(p, vec![k])),
                            };
                        }
                    }
                    Err(Error::WriteConflict { keys }) => {
                        assert!(must_conflict, "spurious conflict on {keys:?}");
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            Op::Compact => {
                store.compact().expect("compact");
            }
            Op::Reopen => {
                drop(store);
                store = open(dir.path());
            }
            Op::Reboot => {
                store.forget_shared_map_for_tests();
                drop(store);
                store = open(dir.path());
            }
        }
        assert_matches(&store, &model);
        assert_matches(&other, &model);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_a_btreemap(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops);
    }
}
