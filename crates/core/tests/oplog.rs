//! Operation logs: merge laws, the built-in reducers, pruning keeps the
//! value, late operations are reported.

use chorus_core::oplog::{Op, OpLog, Reducer, built_in, merge_patch, validate_kind};
use proptest::prelude::*;
use serde_json::{Value, json};

fn reducer(kind: &str) -> Box<dyn Reducer> {
    built_in(kind).expect("built in")
}

fn log_of(kind: &str, ops: &[(u64, &str, Value)]) -> OpLog {
    let mut log = OpLog::new(kind);
    for (ts, node, payload) in ops {
        assert!(
            log.push(Op::new(kind, *ts, node, payload.clone()))
                .is_none()
        );
    }
    log
}

fn union(a: &OpLog, b: &OpLog) -> OpLog {
    let mut x = a.clone();
    let _late = x.merge(b);
    x
}

#[test]
fn counter_counts_every_operation_once_whatever_the_merge_order() {
    let a = log_of("counter", &[(1, "a", json!(1)), (3, "a", json!(2))]);
    let b = log_of("counter", &[(2, "b", json!(10)), (3, "a", json!(2))]);
    let r = reducer("counter");
    assert_eq!(union(&a, &b).value(&*r).expect("value"), json!(13));
    assert_eq!(union(&b, &a), union(&a, &b));
    assert_eq!(union(&a, &a), a);
    assert_eq!(OpLog::new("counter").value(&*r).expect("empty"), json!(0));
}

#[test]
fn the_built_in_reducers() {
    let ops = |payloads: &[Value]| {
        payloads
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u64 + 1, "n", p.clone()))
            .collect::<Vec<_>>()
    };
    let value = |kind: &str, payloads: &[Value]| {
        log_of(kind, &ops(payloads))
            .value(&*reducer(kind))
            .expect("value")
    };
    assert_eq!(
        value("counter", &[json!(1), json!(-3), json!(0.5)]),
        json!(-1.5)
    );
    assert_eq!(value("max", &[json!(3), json!(9), json!(4)]), json!(9));
    assert_eq!(value("min", &[json!(3), json!(9), json!(-4)]), json!(-4));
    assert_eq!(
        value("list", &[json!("a"), json!({"b": 1})]),
        json!(["a", {"b": 1}])
    );
    assert_eq!(value("register", &[json!(1), json!("last")]), json!("last"));
    assert_eq!(
        value(
            "json-merge",
            &[
                json!({"a": 1, "b": {"c": 2}}),
                json!({"b": {"c": null, "d": 3}, "e": 4})
            ]
        ),
        json!({"a": 1, "b": {"d": 3}, "e": 4})
    );
    assert_eq!(
        value(
            "set",
            &[
                json!({"add": "x"}),
                json!({"add": "y"}),
                json!({"remove": "x"})
            ]
        ),
        json!(["y"])
    );
    // Bad payloads name the type and the operation.
    let err = log_of("counter", &[(1, "n", json!("one"))])
        .value(&*reducer("counter"))
        .expect_err("not a number");
    let text = err.to_string();
    assert!(
        text.contains("\"counter\"") && text.contains("not a number"),
        "{text}"
    );
    assert!(built_in("nope").is_none());
    for bad in ["", "Counter", "a b", &"x".repeat(65)] {
        assert!(validate_kind(bad).is_err(), "{bad:?}");
    }
    validate_kind("json-merge").expect("valid");
}

#[test]
fn rfc_7386_examples() {
    for (target, patch, result) in [
        (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
        (
            json!({"a": "b"}),
            json!({"b": "c"}),
            json!({"a": "b", "b": "c"}),
        ),
        (json!({"a": "b"}), json!({"a": null}), json!({})),
        (
            json!({"a": "b", "b": "c"}),
            json!({"a": null}),
            json!({"b": "c"}),
        ),
        (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
        (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
        (
            json!({"a": {"b": "c"}}),
            json!({"a": {"b": "d", "c": null}}),
            json!({"a": {"b": "d"}}),
        ),
        (
            json!({"a": [{"b": "c"}]}),
            json!({"a": [1]}),
            json!({"a": [1]}),
        ),
        (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
        (json!({"a": "b"}), json!(["c"]), json!(["c"])),
        (json!({"a": "foo"}), json!(null), json!(null)),
        (json!({"a": "foo"}), json!("bar"), json!("bar")),
        (
            json!({"e": null}),
            json!({"a": 1}),
            json!({"e": null, "a": 1}),
        ),
        (
            json!([1, 2]),
            json!({"a": "b", "c": null}),
            json!({"a": "b"}),
        ),
        (
            json!({}),
            json!({"a": {"bb": {"ccc": null}}}),
            json!({"a": {"bb": {}}}),
        ),
    ] {
        assert_eq!(
            merge_patch(target.clone(), &patch),
            result,
            "{target} + {patch}"
        );
    }
}

#[test]
fn a_set_remove_cancels_only_the_adds_it_has_seen() {
    let set = reducer("set");
    // Node a adds x; node b, having seen it, removes x; meanwhile node c
    // adds x again without having seen the remove.
    let mut a = OpLog::new("set");
    assert!(
        a.push(Op::new("set", 1, "a", json!({"add": "x"})))
            .is_none()
    );
    let mut b = a.clone();
    let payload = set.prepare(&b.state(&*set).expect("state"), json!({"remove": "x"}));
    assert_eq!(payload["seen"].as_array().map(Vec::len), Some(1));
    assert!(b.push(Op::new("set", 5, "b", payload)).is_none());
    let mut c = a.clone();
    assert!(
        c.push(Op::new("set", 3, "c", json!({"add": "x"})))
            .is_none()
    );
    let merged = union(&b, &c);
    assert_eq!(
        merged.value(&*set).expect("value"),
        json!(["x"]),
        "c's unseen add survives"
    );
    assert_eq!(b.value(&*set).expect("value"), json!([]));
}

#[test]
fn pruning_keeps_the_value_and_shortens_the_log() {
    for kind in ["counter", "max", "set", "list", "json-merge", "register"] {
        let r = reducer(kind);
        let payload = |i: u64| match kind {
            "set" => json!({"add": i % 7}),
            "json-merge" => json!({format!("k{}", i % 5): i}),
            _ => json!(i),
        };
        let mut log = OpLog::new(kind);
        for i in 0..200u64 {
            let op = Op::new(kind, i + 1, ["a", "b"][(i % 2) as usize], payload(i));
            assert!(log.push(op).is_none());
        }
        let before = log.value(&*r).expect("value");
        let upto = log.ops().nth(149).expect("op").key();
        assert_eq!(log.prune(&upto, &*r).expect("prune"), 150);
        assert_eq!(log.len(), 50);
        assert_eq!(log.value(&*r).expect("value"), before, "{kind}");
        // A replica that still has every op agrees after merging.
        let mut full = OpLog::new(kind);
        for i in 0..200u64 {
            let op = Op::new(kind, i + 1, ["a", "b"][(i % 2) as usize], payload(i));
            assert!(full.push(op).is_none());
        }
        let mut merged = full.clone();
        assert!(
            merged.merge(&log).is_empty(),
            "folded ops are not late: {kind}"
        );
        assert_eq!(merged.value(&*r).expect("value"), before, "{kind}");
        assert_eq!(union(&log, &full), merged);
    }
}

#[test]
fn an_operation_older_than_the_checkpoint_that_it_did_not_fold_is_reported_late() {
    let r = reducer("counter");
    let mut log = log_of("counter", &[(10, "a", json!(1)), (20, "a", json!(1))]);
    let upto = log.ops().last().expect("op").key();
    log.prune(&upto, &*r).expect("prune");
    // Node b was away; its op is older than the checkpoint.
    let away = log_of("counter", &[(15, "b", json!(100))]);
    let mut merged = log.clone();
    let late = merged.merge(&away);
    assert_eq!(merged.value(&*r).expect("value"), json!(2), "not applied");
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].payload, json!(100));
    let mut other = away.clone();
    assert_eq!(other.merge(&log).len(), 1, "reported from either side");
    assert_eq!(other, merged);
    // A newer op from the same node is counted.
    let newer = log_of("counter", &[(25, "b", json!(5))]);
    assert_eq!(union(&merged, &newer).value(&*r).expect("value"), json!(7));
}

#[test]
fn encoding_round_trips() {
    let r = reducer("json-merge");
    let mut log = log_of(
        "json-merge",
        &[(1, "a", json!({"a": 1})), (2, "b", json!({"b": [1, 2]}))],
    );
    let upto = log.ops().next().expect("op").key();
    log.prune(&upto, &*r).expect("prune");
    assert!(
        log.push(Op::new("json-merge", 0, "z", json!({"late": true})))
            .is_some()
    );
    let bytes = log.encode();
    assert!(bytes.starts_with(chorus_core::oplog::ENCODED_PREFIX));
    assert!(
        OpLog::new("counter")
            .encode()
            .starts_with(chorus_core::oplog::ENCODED_PREFIX)
    );
    assert_eq!(OpLog::decode(&bytes).expect("decode"), log);
    for cut in 0..bytes.len() {
        assert!(OpLog::decode(&bytes[..cut]).is_err());
    }
}

fn arb_log() -> impl Strategy<Value = OpLog> {
    (
        proptest::collection::vec((0u64..40, 0usize..3, -5i64..5), 0..20),
        proptest::option::of(0usize..20),
    )
        .prop_map(|(ops, prune_at)| {
            let mut log = OpLog::new("counter");
            for (ts, node, v) in ops {
                let _ = log.push(Op::new("counter", ts, ["a", "b", "c"][node], json!(v)));
            }
            let key = prune_at.and_then(|i| log.ops().nth(i).map(Op::key));
            if let Some(key) = key {
                log.prune(&key, &*reducer("counter")).expect("prune");
            }
            log
        })
}

proptest! {
    #[test]
    fn merge_is_commutative_associative_and_idempotent(a in arb_log(), b in arb_log(), c in arb_log()) {
        prop_assert_eq!(union(&a, &b), union(&b, &a));
        prop_assert_eq!(union(&union(&a, &b), &c), union(&a, &union(&b, &c)));
        prop_assert_eq!(union(&a, &a), a.clone());
    }
}

#[test]
fn a_checkpoint_replaced_by_one_that_does_not_cover_it_is_reported() {
    // Two nodes prune alone, then meet: the newer checkpoint wins, the
    // other's folded value is reported instead of vanishing.
    let r = reducer("counter");
    let mut a = log_of("counter", &[(5, "a", json!(5)), (7, "a", json!(7))]);
    let upto = a.ops().last().map(Op::key).expect("op");
    a.prune(&upto, &*r).expect("prune");
    let mut b = log_of("counter", &[(1, "b", json!(1)), (2, "b", json!(1))]);
    let upto = b.ops().last().map(Op::key).expect("op");
    b.prune(&upto, &*r).expect("prune");
    for (x, y) in [(&a, &b), (&b, &a)] {
        let mut m = x.clone();
        let late = m.merge(y);
        assert_eq!(
            m.value(&*r).expect("value"),
            json!(12),
            "the newer checkpoint wins"
        );
        assert_eq!(late.len(), 1, "{late:?}");
        assert_eq!(late[0].node, "checkpoint");
        assert_eq!(late[0].payload["checkpoint"], json!(2));
    }
    // A checkpoint that covers the other reports nothing.
    let mut c = a.clone();
    let _late = c.merge(&b);
    let mut d = c.clone();
    assert!(d.merge(&a).is_empty());
}
