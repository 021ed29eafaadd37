//! Every vector of `shared/reference/dvvset-vectors.md`, then the laws as
//! property tests.

use proptest::prelude::*;

use super::*;

type C = Dvvs<&'static str, &'static str>;

fn e<V: Clone>(id: &'static str, counter: u64, values: &[V]) -> Entry<&'static str, V> {
    Entry {
        id,
        counter,
        values: values.to_vec(),
    }
}

fn clock<V: Clone>(entries: Vec<Entry<&'static str, V>>, anonymous: &[V]) -> Dvvs<&'static str, V> {
    Dvvs::from_parts(entries, anonymous.to_vec())
}

fn upd(c: C, id: &'static str) -> C {
    c.update(&id).expect("a clock made by new")
}

fn upd_with(c: C, server: &C, id: &'static str) -> C {
    c.update_with(server, &id).expect("a clock made by new")
}

#[test]
fn join() {
    let a = C::new("v1");
    let a1 = upd(a.clone(), "a");
    let b1 = upd_with(C::new_with(&a1.join(), vec!["v2"]), &a1, "b");
    assert_eq!(a.join(), vec![]);
    assert_eq!(a1.join(), vec![("a", 1)]);
    assert_eq!(b1.join(), vec![("a", 1), ("b", 1)]);
}

#[test]
fn update() {
    let a0 = upd(C::new("v1"), "a");
    assert_eq!(a0, clock(vec![e("a", 1, &["v1"])], &[]));
    let a1 = upd_with(C::new_with(&a0.join(), vec!["v2"]), &a0, "a");
    assert_eq!(a1, clock(vec![e("a", 2, &["v2"])], &[]));
    let a2 = upd_with(C::new_with(&a1.join(), vec!["v3"]), &a1, "b");
    assert_eq!(a2, clock(vec![e("a", 2, &[]), e("b", 1, &["v3"])], &[]));
    let a3 = upd_with(C::new_with(&a0.join(), vec!["v4"]), &a1, "b");
    assert_eq!(a3, clock(vec![e("a", 2, &["v2"]), e("b", 1, &["v4"])], &[]));
    let a4 = upd_with(C::new_with(&a0.join(), vec!["v5"]), &a1, "a");
    assert_eq!(a4, clock(vec![e("a", 3, &["v5", "v2"])], &[]));
}

#[test]
fn update_refuses_a_clock_without_exactly_one_new_value() {
    assert_eq!(
        C::new_list(vec![]).update(&"a"),
        Err(DvvError::NotOneNewValue(0))
    );
    assert_eq!(
        C::new_list(vec!["x", "y"]).update_with(&C::default(), &"a"),
        Err(DvvError::NotOneNewValue(2))
    );
}

#[test]
fn sync() {
    let x = clock(vec![e("a", 1, &[])], &[]);
    let y = clock(vec![e("a", 2, &["v2", "v1"])], &[]);
    assert_eq!(C::sync_all([&x, &y]), clock(vec![e("a", 2, &["v2"])], &[]));
    assert_eq!(C::sync_all([&y, &x]), clock(vec![e("a", 2, &["v2"])], &[]));

    let a = upd(C::new("v1"), "a");
    let a1 = upd(C::new_with(&a.join(), vec!["v2"]), "a");
    let a3 = upd(C::new_with(&a1.join(), vec!["v3"]), "b");
    let a4 = upd(C::new_with(&a1.join(), vec!["v3"]), "c");
    let want = clock(
        vec![e("a", 2, &[]), e("b", 1, &["v3"]), e("c", 1, &["v3"])],
        &[],
    );
    assert_eq!(C::sync_all([&a4, &a3]), want);
    assert_eq!(C::sync_all([&a3, &a4]), want);

    let xc = clock(vec![e("x", 1, &[])], &[]);
    let want = clock(vec![e("a", 1, &["v1"]), e("x", 1, &[])], &[]);
    assert_eq!(C::sync_all([&xc, &a]), want);
    assert_eq!(C::sync_all([&a, &xc]), want);

    let b = upd(C::new("v2"), "b");
    let want = clock(vec![e("a", 1, &["v1"]), e("b", 1, &["v2"])], &[]);
    assert_eq!(C::sync_all([&a, &b]), want);
    assert_eq!(C::sync_all([&b, &a]), want);

    let older = |x: &&str, y: &&str| x <= y;
    let lww = a4.lww(older);
    assert_eq!(lww, C::sync_all([&a4, &lww]));
}

#[test]
fn update_with_a_stale_context() {
    let a0 = upd(C::new("v1"), "a");
    let a1 = upd_with(C::new("v2"), &a0, "a");
    assert_eq!(
        a1,
        clock(vec![e("a", 2, &["v2", "v1"])], &[]),
        "no context: v1 survives"
    );
    let a2 = upd_with(C::new_with(&[("a", 1)], vec!["v3"]), &a1, "a");
    assert_eq!(
        a2,
        clock(vec![e("a", 3, &["v3", "v2"])], &[]),
        "the context covers v1 only: v1 goes, v2 survives"
    );
}

#[test]
fn event() {
    assert_eq!(
        super::event(vec![e("a", 1, &["v1"])], &"a", "v2", 0),
        vec![e("a", 2, &["v2", "v1"])]
    );
    assert_eq!(
        super::event(vec![e("a", 1, &["v1"])], &"b", "v2", 0),
        vec![e("a", 1, &["v1"]), e("b", 1, &["v2"])]
    );
}

fn older(a: &i64, b: &i64) -> bool {
    a <= b
}

#[test]
fn last_and_lww() {
    let x = clock(
        vec![e("a", 4, &[5, 2]), e("b", 1, &[]), e("c", 1, &[3])],
        &[],
    );
    assert_eq!(x.last(older), Some(&5));
    assert_eq!(
        x.lww(older),
        clock(vec![e("a", 4, &[5]), e("b", 1, &[]), e("c", 1, &[])], &[])
    );

    let y = clock(
        vec![e("a", 4, &[5, 2]), e("b", 1, &[]), e("c", 1, &[3])],
        &[10, 0],
    );
    assert_eq!(y.last(older), Some(&10));
    assert_eq!(
        y.lww(older),
        clock(vec![e("a", 4, &[]), e("b", 1, &[]), e("c", 1, &[])], &[10])
    );

    let z = clock(vec![e("a", 4, &[5, 2]), e("b", 1, &[1])], &[3]);
    assert_eq!(
        z.lww(older),
        clock(vec![e("a", 4, &[5]), e("b", 1, &[])], &[])
    );

    let by_time = |a: &(i64, i64), b: &(i64, i64)| a.1 <= b.1;
    let t = clock(
        vec![
            e("a", 4, &[(5, 1002345), (7, 1002340)]),
            e("b", 1, &[(4, 1001340)]),
        ],
        &[(2, 1001140)],
    );
    assert_eq!(
        t.lww(by_time),
        clock(vec![e("a", 4, &[(5, 1002345)]), e("b", 1, &[])], &[])
    );

    let empty: Dvvs<&str, i64> = clock(vec![e("a", 2, &[])], &[]);
    assert_eq!(empty.last(older), None);
    assert_eq!(empty.lww(older), empty);
}

#[test]
fn reconcile() {
    let x = clock(
        vec![e("a", 4, &[5, 2]), e("b", 1, &[]), e("c", 1, &[3])],
        &[],
    );
    let y = clock(
        vec![e("a", 4, &[5, 2]), e("b", 1, &[]), e("c", 1, &[3])],
        &[10, 0],
    );
    let sum = |vs: Vec<&i64>| vs.into_iter().sum::<i64>();
    let min = |vs: Vec<&i64>| vs.into_iter().copied().min().unwrap_or(0);
    let emptied = vec![e("a", 4, &[]), e("b", 1, &[]), e("c", 1, &[])];
    assert_eq!(x.reconcile(sum), clock(emptied.clone(), &[10]));
    assert_eq!(y.reconcile(sum), clock(emptied.clone(), &[20]));
    assert_eq!(x.reconcile(min), clock(emptied.clone(), &[2]));
    assert_eq!(y.reconcile(min), clock(emptied, &[0]));
}

#[test]
fn less() {
    let a = upd(C::new("v1"), "a");
    let b = upd(C::new_with(&a.join(), vec!["v2"]), "a");
    let b2 = upd(C::new_with(&a.join(), vec!["v2"]), "b");
    let b3 = upd(C::new_with(&a.join(), vec!["v2"]), "z");
    let c = upd_with(C::new_with(&b.join(), vec!["v3"]), &a, "c");
    let d = upd_with(C::new_with(&c.join(), vec!["v4"]), &b2, "d");
    for (x, y) in [(&a, &b), (&a, &c), (&b, &c), (&b, &d), (&b2, &d), (&a, &d)] {
        assert!(x.less(y), "{x:?} < {y:?}");
    }
    for (x, y) in [
        (&b2, &c),
        (&b, &b2),
        (&b2, &b),
        (&a, &a),
        (&c, &c),
        (&d, &b2),
        (&b3, &d),
    ] {
        assert!(!x.less(y), "not {x:?} < {y:?}");
    }
}

#[test]
fn equal() {
    let a = clock(
        vec![e("a", 4, &["v5", "v0"]), e("b", 0, &[]), e("c", 1, &["v3"])],
        &["v0"],
    );
    let b = clock(
        vec![
            e("a", 4, &["v555", "v0"]),
            e("b", 0, &[]),
            e("c", 1, &["v3"]),
        ],
        &[],
    );
    let c = clock(
        vec![e("a", 4, &["v5", "v0"]), e("b", 0, &[])],
        &["v6", "v1"],
    );
    assert!(a.equal(&b));
    assert!(b.equal(&a));
    assert!(!a.equal(&c));
    assert!(!b.equal(&c));
}

#[test]
fn size_ids_values_map() {
    assert_eq!(C::new("v1").size(), 1);
    let five = clock(
        vec![e("a", 4, &["v5", "v0"]), e("b", 0, &[]), e("c", 1, &["v3"])],
        &["v4", "v1"],
    );
    assert_eq!(five.size(), 5);
    // The clocks of the reference's ids/values test.
    let a = clock(
        vec![e("a", 4, &["v0", "v5"]), e("b", 0, &[]), e("c", 1, &["v3"])],
        &["v1"],
    );
    let b = clock(
        vec![
            e("a", 4, &["v555", "v0"]),
            e("b", 0, &[]),
            e("c", 1, &["v3"]),
        ],
        &[],
    );
    let c = clock(vec![e("a", 4, &[]), e("b", 0, &[])], &["v1", "v6"]);
    assert_eq!(a.ids(), [&"a", &"b", &"c"]);
    assert_eq!(b.ids(), [&"a", &"b", &"c"]);
    assert_eq!(c.ids(), [&"a", &"b"]);
    let sorted = |c: &C| {
        let mut v: Vec<&str> = c.values().into_iter().copied().collect();
        v.sort();
        v
    };
    assert_eq!(sorted(&a), ["v0", "v1", "v3", "v5"]);
    assert_eq!(sorted(&b), ["v0", "v3", "v555"]);
    assert_eq!(sorted(&c), ["v1", "v6"]);
    let m = clock(
        vec![e("a", 4, &[5, 0]), e("b", 0, &[]), e("c", 1, &[2])],
        &[20, 10],
    );
    assert_eq!(
        m.map(|x| 2 * x),
        clock(
            vec![e("a", 4, &[10, 0]), e("b", 0, &[]), e("c", 1, &[4])],
            &[40, 20]
        )
    );
}

/// The reference drops an anonymous value when the other side's history
/// strictly dominates its own, so with anonymous values the grouping of
/// syncs matters. Chorus therefore never stores an anonymous value: a
/// resolved value is written back with a dot. Pinned so that a change to
/// this behaviour is a deliberate one.
#[test]
fn sync_with_anonymous_values_depends_on_grouping_as_in_the_reference() {
    let a: P = Dvvs::from_parts(
        vec![
            Entry {
                id: 0,
                counter: 1,
                values: vec![2],
            },
            Entry {
                id: 2,
                counter: 1,
                values: vec![],
            },
        ],
        vec![],
    );
    let b: P = Dvvs::from_parts(
        vec![Entry {
            id: 1,
            counter: 1,
            values: vec![3],
        }],
        vec![],
    );
    let c: P = Dvvs::from_parts(
        vec![Entry {
            id: 2,
            counter: 1,
            values: vec![],
        }],
        vec![1],
    );
    assert_eq!(
        a.sync(&b).sync(&c).anonymous(),
        &[] as &[u32],
        "(a+b) dominates c: c's value goes"
    );
    assert_eq!(
        a.sync(&b.sync(&c)).anonymous(),
        &[1],
        "b and c are concurrent: it survives, then a cannot drop it"
    );
    assert_eq!(a.sync(&b).sync(&c).entries(), a.sync(&b.sync(&c)).entries());
}

// ---- laws -------------------------------------------------------------------

type P = Dvvs<u8, u32>;

/// Clocks as replicas make them: three replicas, clients that read one and
/// write through another (with or without the context they read), and
/// replicas that sync. Values are unique.
fn clocks() -> impl Strategy<Value = Vec<P>> {
    proptest::collection::vec((0u8..3, 0u8..3, any::<bool>(), 0u8..5), 1..30).prop_map(|ops| {
        let mut replicas: Vec<P> = vec![P::default(); 3];
        let mut next = 0u32;
        for (read, write, with_context, kind) in ops {
            let (r, w) = (read as usize, write as usize);
            match kind {
                0 | 1 => {
                    next += 1;
                    let context = if with_context {
                        replicas[r].join()
                    } else {
                        Vec::new()
                    };
                    let new = P::new_with(&context, vec![next]);
                    let server = replicas[w].clone();
                    replicas[w] = new.update_with(&server, &write).expect("made by new");
                }
                2 => replicas[w] = replicas[r].sync(&replicas[w]),
                // Resolutions can leave an anonymous value.
                3 => {
                    next += 1;
                    let fresh = next;
                    replicas[w] =
                        replicas[w].reconcile(|vs| vs.into_iter().copied().max().unwrap_or(fresh));
                }
                _ => replicas[w] = replicas[w].lww(|a, b| a <= b),
            }
        }
        replicas
    })
}

/// Every value with its dot (id, counter), and the anonymous values.
fn dotted(c: &P) -> Vec<(Option<(u8, u64)>, u32)> {
    let mut out: Vec<(Option<(u8, u64)>, u32)> = c.anonymous().iter().map(|v| (None, *v)).collect();
    for en in c.entries() {
        for (i, v) in en.values.iter().enumerate() {
            out.push((Some((en.id, en.counter - i as u64)), *v));
        }
    }
    out
}

fn counter_of(c: &P, id: u8) -> u64 {
    c.join()
        .iter()
        .find(|(i, _)| *i == id)
        .map_or(0, |(_, n)| *n)
}

proptest! {
    #[test]
    fn sync_is_commutative_associative_and_idempotent(cs in clocks()) {
        let (a, b, c) = (&cs[0], &cs[1], &cs[2]);
        prop_assert_eq!(a.sync(b), b.sync(a));
        prop_assert_eq!(a.sync(a), a.clone());
        prop_assert_eq!(a.sync(&P::default()), a.clone());
        // Associative for dotted values; see the test below for anonymous ones.
        let dots = |c: &P| c.entries().to_vec();
        prop_assert_eq!(dots(&a.sync(b).sync(c)), dots(&a.sync(&b.sync(c))));
        if cs.iter().all(|x| x.anonymous().is_empty()) {
            prop_assert_eq!(a.sync(b).sync(c), a.sync(&b.sync(c)));
        }
    }

    #[test]
    fn sync_drops_only_values_the_other_side_has_seen(cs in clocks()) {
        let (a, b) = (&cs[0], &cs[1]);
        let merged = a.sync(b);
        let kept = dotted(&merged);
        for (side, other) in [(a, b), (b, a)] {
            for (dot, v) in dotted(side) {
                let seen_by_other = match dot {
                    Some((id, n)) => counter_of(other, id) >= n && !dotted(other).contains(&(dot, v)),
                    None => false,
                };
                if !seen_by_other && dot.is_some() {
                    prop_assert!(kept.contains(&(dot, v)), "{:?} dropped from sync of {:?} and {:?}", v, a, b);
                }
            }
        }
        for kv in &kept {
            prop_assert!(dotted(a).contains(kv) || dotted(b).contains(kv), "{:?} invented", kv);
        }
    }

    #[test]
    fn join_of_sync_is_the_pointwise_maximum(cs in clocks()) {
        let (a, b) = (&cs[0], &cs[1]);
        let merged = a.sync(b).join();
        for id in 0u8..3 {
            prop_assert_eq!(counter_of(&a.sync(b), id), counter_of(a, id).max(counter_of(b, id)));
        }
        prop_assert!(merged.windows(2).all(|w| w[0].0 < w[1].0), "sorted by id");
    }

    #[test]
    fn less_is_a_strict_partial_order(cs in clocks()) {
        for x in &cs {
            prop_assert!(!x.less(x));
            for y in &cs {
                prop_assert!(!(x.less(y) && y.less(x)));
                for z in &cs {
                    if x.less(y) && y.less(z) {
                        prop_assert!(x.less(z));
                    }
                }
            }
        }
    }
}
