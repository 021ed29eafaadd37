use proptest::prelude::*;

use super::*;

fn node(n: u8) -> NodeId {
    NodeId::from_bytes([n; 16])
}

fn v(text: &str, ms: u64, n: u8) -> Value {
    Value::data(text.as_bytes(), Hlc(ms << 16), node(n))
}

fn texts(o: &Object) -> Vec<String> {
    let mut t: Vec<String> = o
        .values()
        .iter()
        .map(|v| {
            v.bytes().map_or("<tombstone>".into(), |b| {
                String::from_utf8_lossy(b).into_owned()
            })
        })
        .collect();
    t.sort();
    t
}

#[test]
fn from_clock_accepts_what_decode_accepts_and_refuses_the_rest() {
    let a = Object::modify(None, &Object::empty_context(), v("one", 1, 1), node(1));
    let copy = Object::from_clock(a.clock().clone()).expect("a valid clock");
    assert_eq!(copy, a);
    let entry = |counter: u64, values: Vec<Value>| crate::dvvset::Entry {
        id: node(1),
        counter,
        values,
    };
    let refused = [
        Dvvs::from_parts(vec![entry(0, vec![])], vec![]),
        Dvvs::from_parts(vec![entry(MAX_COUNTER + 1, vec![])], vec![]),
        Dvvs::from_parts(vec![entry(1, vec![v("a", 1, 1), v("b", 2, 1)])], vec![]),
        Dvvs::from_parts(vec![entry(1, vec![]), entry(2, vec![])], vec![]),
    ];
    for clock in refused {
        assert!(Object::from_clock(clock.clone()).is_err(), "{clock:?}");
    }
}

#[test]
fn writes_with_and_without_context() {
    let a = Object::modify(None, &Object::empty_context(), v("one", 1, 1), node(1));
    assert_eq!(a.value().map(|x| x.bytes()), Ok(Some(&b"one"[..])));
    // With the context it read, a write supersedes.
    let b = Object::modify(Some(&a), &a.context(), v("two", 2, 1), node(1));
    assert_eq!(texts(&b), ["two"]);
    // Two writers that read the same version, from two nodes: two siblings.
    let c1 = Object::modify(Some(&b), &b.context(), v("x", 3, 1), node(1));
    let c2 = Object::modify(Some(&b), &b.context(), v("y", 3, 2), node(2));
    let both = Object::reconcile(&c2, Some(&c1)).expect("concurrent: merged");
    assert_eq!(texts(&both), ["x", "y"]);
    assert_eq!(both.value(), Err(ObjectError::Siblings(2)));
    // A write that saw both leaves one value.
    let d = Object::modify(Some(&both), &both.context(), v("z", 4, 1), node(1));
    assert_eq!(texts(&d), ["z"]);
    // A write with a stale context keeps what it did not see.
    let e = Object::modify(Some(&d), &b.context(), v("late", 5, 1), node(1));
    assert_eq!(texts(&e), ["late", "z"]);
    // The empty context never supersedes anything.
    let f = Object::modify(Some(&d), &Object::empty_context(), v("new", 5, 2), node(2));
    assert_eq!(texts(&f), ["new", "z"]);
}

#[test]
fn reconcile_is_false_for_equal_or_older_remotes() {
    let a = Object::modify(None, &Vec::new(), v("a", 1, 1), node(1));
    let b = Object::modify(Some(&a), &a.context(), v("b", 2, 1), node(1));
    assert_eq!(Object::reconcile(&a, Some(&b)), None, "older");
    assert_eq!(Object::reconcile(&b, Some(&b)), None, "equal");
    assert_eq!(
        Object::reconcile(&b, Some(&a)).map(|o| texts(&o)),
        Some(vec!["b".to_string()]),
        "newer"
    );
    assert_eq!(
        Object::reconcile(&a, None),
        Some(a.clone()),
        "nothing local"
    );
}

#[test]
fn lww_breaks_ties_by_timestamp_then_node_then_bytes_everywhere_alike() {
    let base = Object::modify(None, &Vec::new(), v("base", 1, 1), node(1));
    let make = |text: &str, ms: u64, n: u8| {
        Object::modify(Some(&base), &base.context(), v(text, ms, n), node(n))
    };
    let cases = [
        (vec![make("old", 5, 3), make("new", 9, 1)], "new"),
        (
            vec![make("low-node", 9, 1), make("high-node", 9, 2)],
            "high-node",
        ),
    ];
    for (objects, winner) in cases {
        let ab = Object::reconcile(&objects[0], Some(&objects[1])).expect("concurrent");
        let ba = Object::reconcile(&objects[1], Some(&objects[0])).expect("concurrent");
        assert_eq!(ab, ba, "merge order does not matter");
        for o in [&ab, &ba] {
            assert_eq!(
                o.lww_value().and_then(|x| x.bytes()),
                Some(winner.as_bytes())
            );
            assert_eq!(texts(&o.resolve_lww()), [winner]);
            assert_eq!(o.resolve_lww().context(), o.context(), "history unchanged");
        }
    }
    // Same timestamp and node (one node's two processes cannot do this, but
    // a resolver might): the bytes decide.
    let x = Value::data(b"aaa", Hlc(7), node(1));
    let y = Value::data(b"bbb", Hlc(7), node(1));
    assert!(x < y);
    assert!(
        Value::tombstone(Hlc(7), node(1)) < x,
        "a tombstone loses a full tie"
    );
}

#[test]
fn resolve_with_a_function() {
    let a = Object::modify(None, &Vec::new(), v("1", 1, 1), node(1));
    let b = Object::modify(None, &Vec::new(), v("2", 1, 2), node(2));
    let both = Object::reconcile(&b, Some(&a)).expect("concurrent");
    let joined = both.resolve_with(|vs| {
        let mut t: Vec<&[u8]> = vs.iter().filter_map(|v| v.bytes()).collect();
        t.sort();
        Value::data(&t.concat(), Hlc(9 << 16), node(1))
    });
    assert_eq!(texts(&joined), ["12"]);
    assert_eq!(joined.context(), both.context());
}

#[test]
fn stale_descends_and_equal_context() {
    let a = Object::modify(None, &Vec::new(), v("a", 1, 1), node(1));
    let b = Object::modify(Some(&a), &a.context(), v("b", 2, 2), node(2));
    assert!(b.is_stale(&a.context()), "b has seen a");
    assert!(b.is_stale(&b.context()));
    assert!(!a.is_stale(&b.context()), "a has not seen b");
    assert!(descends(&b.context(), &Vec::new()));
    assert!(!descends(&Vec::new(), &a.context()));
    assert!(b.equal_context(&b.context()));
    assert!(!b.equal_context(&a.context()));
}

#[test]
fn tombstones_are_values() {
    let a = Object::modify(None, &Vec::new(), v("a", 1, 1), node(1));
    let t = Object::modify(
        Some(&a),
        &a.context(),
        Value::tombstone(Hlc(2 << 16), node(1)),
        node(1),
    );
    assert!(t.is_tombstone());
    assert!(!a.is_tombstone());
    assert_eq!(t.value().map(|x| x.bytes()), Ok(None));
}

/// Found by the simulator (seed 10 of `chorus sim --faults standard`):
/// once a key's tombstone was collected, the next write numbered its dot
/// from 1 again, so it carried the dot of the deleted value; a replica
/// that still held the tombstone, or remembered it as collected, took the
/// new value for one it had seen, and kept it out for good.
#[test]
fn a_write_after_the_history_was_collected_never_reuses_a_dot() {
    let first = Object::modify(None, &Vec::new(), v("first", 1, 1), node(1));
    let dead = Object::modify(
        Some(&first),
        &first.context(),
        Value::tombstone(Hlc(2 << 16), node(1)),
        node(1),
    );
    // The tombstone is collected: the key is gone; the node writes again.
    let again = Object::modify(None, &Vec::new(), v("again", 3, 1), node(1));
    assert!(
        !descends(&dead.context(), &again.context()),
        "the new write must not look seen by the collected tombstone: {:?} vs {:?}",
        dead.context(),
        again.context()
    );
    let merged = Object::reconcile(&again, Some(&dead)).expect("the new write changes the key");
    assert_eq!(texts(&merged), vec!["again"]);
    // Later writes number on above: a sibling of its own counts on by one.
    let counter = |o: &Object| o.context().iter().map(|(_, c)| *c).max().unwrap_or(0);
    let next = Object::modify(Some(&again), &again.context(), v("next", 4, 1), node(1));
    assert!(counter(&next) > counter(&again));
    let sibling = Object::modify(Some(&next), &Vec::new(), v("sibling", 5, 1), node(1));
    assert_eq!(counter(&sibling), counter(&next) + 1);
    assert_eq!(texts(&sibling), vec!["next", "sibling"]);
}

#[test]
fn hlc_never_goes_backwards() {
    let t1 = Hlc::tick(Hlc::default(), 1000);
    let t2 = Hlc::tick(t1, 999);
    let t3 = Hlc::tick(t2, 999);
    let t4 = Hlc::tick(t3, 2000);
    assert!(t1 < t2 && t2 < t3 && t3 < t4);
    assert_eq!((t1.ms(), t2.ms(), t4.ms()), (1000, 1000, 2000));
}

#[test]
fn equal_objects_hash_equal_and_any_change_changes_the_hash() {
    let a = Object::modify(None, &Vec::new(), v("a", 1, 1), node(1));
    let b = Object::modify(None, &Vec::new(), v("b", 1, 2), node(2));
    let c = Object::modify(None, &Vec::new(), v("c", 1, 3), node(3));
    let abc = Object::reconcile(&c, Object::reconcile(&b, Some(&a)).as_ref()).expect("merge");
    let cba = Object::reconcile(&a, Object::reconcile(&b, Some(&c)).as_ref()).expect("merge");
    assert_eq!(abc, cba);
    assert_eq!(abc.hash(), cba.hash());
    let changed = Object::modify(Some(&abc), &abc.context(), v("d", 2, 1), node(1));
    assert_ne!(changed.hash(), abc.hash());
}

#[test]
fn decoding_refuses_every_truncation_and_malformed_input() {
    let a = Object::modify(None, &Vec::new(), v("a", 1, 1), node(1));
    let both = Object::reconcile(
        &Object::modify(None, &Vec::new(), v("b", 1, 2), node(2)),
        Some(&a),
    )
    .expect("merge");
    let bytes = both.encode();
    assert_eq!(Object::decode(&bytes), Ok(both.clone()));
    for cut in 0..bytes.len() {
        assert!(Object::decode(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(Object::decode(&trailing).is_err());
    let mut version = bytes.clone();
    version[0] = 9;
    assert!(
        matches!(Object::decode(&version), Err(ObjectError::BadEncoding(m)) if m.contains("version 9"))
    );
    // Non-minimal varints, zero and huge counters are refused (by both
    // decoders), so equal objects always have equal bytes.
    let mut padded = vec![1u8, 0x80, 0x00];
    padded.push(0);
    assert!(Object::decode(&padded).is_err());
    assert!(Object::decode_summary(&padded).is_err());
    for counter in [0u64, (1 << 62) + 1, u64::MAX] {
        let mut b = vec![1u8, 1];
        b.extend_from_slice(&[3; 16]);
        b.extend_from_slice(&counter.to_le_bytes());
        b.extend_from_slice(&[0, 0]);
        assert!(Object::decode(&b).is_err(), "counter {counter}");
        assert!(Object::decode_summary(&b).is_err(), "counter {counter}");
    }
    // A count far beyond the input is refused before anything is allocated.
    assert!(Object::decode(&[1, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    // Entries out of order.
    let mut swapped = Vec::from([1u8, 2]);
    for n in [2u8, 1] {
        swapped.extend_from_slice(&[n; 16]);
        swapped.extend_from_slice(&1u64.to_le_bytes());
        swapped.push(0);
    }
    swapped.push(0);
    assert!(
        matches!(Object::decode(&swapped), Err(ObjectError::BadEncoding(m)) if m.contains("sorted"))
    );
}

#[test]
fn contexts_round_trip_as_strings_and_malformed_ones_are_refused() {
    let a = Object::modify(None, &Vec::new(), v("a", 1, 1), node(1));
    let b = Object::modify(Some(&a), &Vec::new(), v("b", 1, 2), node(2));
    for ctx in [Object::empty_context(), a.context(), b.context()] {
        let s = context_to_string(&ctx);
        assert!(
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{s}"
        );
        assert_eq!(context_from_string(&s), Ok(ctx));
    }
    let good = context_to_string(&b.context());
    for bad in [
        "",
        "!!!",
        "AA",
        &good[..good.len() - 2],
        &format!("{good}AA"),
        "Ag",
    ] {
        assert!(
            matches!(context_from_string(bad), Err(ObjectError::BadContext(_))),
            "{bad:?} was accepted"
        );
    }
}

fn objects() -> impl Strategy<Value = Object> {
    proptest::collection::vec(
        (
            0u8..3,
            any::<bool>(),
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..6),
            (0u8..4, any::<u8>(), 0u32..3000),
        ),
        1..12,
    )
    .prop_map(|ops| {
        let mut current: Option<Object> = None;
        for (i, (n, with_context, tombstone, bytes, (m, priority, window_ms))) in
            ops.into_iter().enumerate()
        {
            let ts = Hlc((i as u64) << 16);
            let value = if tombstone {
                Value::tombstone(ts, node(n))
            } else {
                Value::data(&bytes, ts, node(n))
            };
            // Some values record a token, a priority, both or neither.
            let value = value.with_meta(Meta {
                token: (m & 1 == 1).then(|| format!("t{i}")),
                priority: if m & 2 == 2 { priority } else { 0 },
                window_ms: if m & 2 == 2 { window_ms } else { 0 },
            });
            let context = match (&current, with_context) {
                (Some(c), true) => c.context(),
                _ => Object::empty_context(),
            };
            current = Some(Object::modify(current.as_ref(), &context, value, node(n)));
        }
        current.unwrap_or_else(|| Object::modify(None, &Vec::new(), v("x", 0, 0), node(0)))
    })
}

#[test]
fn values_without_meta_encode_as_before_and_meta_round_trips() {
    let plain = Object::modify(None, &Vec::new(), v("x", 1, 1), node(1));
    // The version 1 layout with no meta: the value's tag (after version,
    // entry count, node, counter, value count, timestamp and node) is
    // 0x01, plain data, followed at once by the length and the bytes.
    let bytes = plain.encode();
    let tag_at = 1 + 1 + 16 + 8 + 1 + 8 + 16;
    // Then no anonymous values.
    assert_eq!(&bytes[tag_at..], &[1, 1, b'x', 0][..]);
    let empty = v("x", 1, 1).with_meta(Meta::default());
    assert_eq!(empty.meta, None);
    assert_eq!(
        Object::modify(None, &Vec::new(), empty, node(1)).encode(),
        bytes
    );
    let meta = Meta {
        token: Some("a1b2".into()),
        priority: 7,
        window_ms: 1000,
    };
    for value in [
        v("x", 1, 1).with_meta(meta.clone()),
        Value::tombstone(Hlc(1 << 16), node(1)).with_meta(meta.clone()),
    ] {
        let o = Object::modify(None, &Vec::new(), value, node(1));
        let decoded = Object::decode(&o.encode()).expect("decodes");
        assert_eq!(decoded.value().map(|v| v.meta().clone()), Ok(meta.clone()));
        assert_ne!(o.hash(), plain.hash());
        let s = Object::decode_summary(&o.encode()).expect("summary");
        assert_eq!(s.values[0].meta(), &meta);
    }
    // An empty token id records nothing; a long one is cut.
    let cut = v("x", 1, 1).with_meta(Meta {
        token: Some("é".repeat(100)),
        ..Meta::default()
    });
    assert!(
        cut.meta()
            .token
            .as_ref()
            .is_some_and(|t| t.len() <= META_TOKEN_MAX)
    );
    assert_eq!(
        v("x", 1, 1)
            .with_meta(Meta {
                token: Some(String::new()),
                ..Meta::default()
            })
            .meta,
        None
    );
}

#[test]
fn meta_has_one_encoding_and_malformed_meta_is_refused() {
    let o = Object::modify(
        None,
        &Vec::new(),
        v("x", 1, 1).with_meta(Meta {
            token: Some("ab".into()),
            ..Meta::default()
        }),
        node(1),
    );
    let good = o.encode();
    // The value tag is right after the entry's node, counter, count,
    // timestamp and node: find it as the byte holding 0x03.
    let tag_at = 1 + 1 + 16 + 8 + 1 + 8 + 16;
    assert_eq!(good[tag_at], 3);
    let mutate = |at: usize, b: u8| {
        let mut bad = good.clone();
        bad[at] = b;
        bad
    };
    for bad in [
        mutate(tag_at, 4),        // an unknown tag
        mutate(tag_at + 1, 0),    // meta flags of nothing
        mutate(tag_at + 1, 0x05), // an unknown flag
        mutate(tag_at + 2, 0),    // an empty token id
        mutate(tag_at + 3, 0xff), // a token id that is not UTF-8
    ] {
        assert!(Object::decode(&bad).is_err(), "{bad:?}");
        assert!(Object::decode_summary(&bad).is_err(), "{bad:?}");
    }
    // A priority flag that records no priority is refused too.
    let prio = Object::modify(
        None,
        &Vec::new(),
        v("x", 1, 1).with_meta(Meta {
            priority: 1,
            ..Meta::default()
        }),
        node(1),
    )
    .encode();
    assert_eq!(&prio[tag_at..tag_at + 4], &[3, 0x02, 1, 0]);
    assert!(Object::decode(&prio).is_ok());
    let mut zero = prio.clone();
    zero[tag_at + 2] = 0;
    assert!(Object::decode(&zero).is_err());
    assert!(Object::decode_summary(&zero).is_err());
}

proptest! {
    #[test]
    fn encoding_round_trips(o in objects()) {
        prop_assert_eq!(Object::decode(&o.encode()), Ok(o.clone()));
        prop_assert_eq!(context_from_string(&context_to_string(&o.context())), Ok(o.context()));
    }

    #[test]
    fn the_read_summary_agrees_with_the_full_decoding(o in objects(), other in objects()) {
        // Resolutions can hold anonymous values; merges hold siblings.
        let newest = Value::data(b"resolved", Hlc(1 << 40), node(9));
        let merged = Object::reconcile(&other, Some(&o)).unwrap_or_else(|| o.clone());
        for obj in [o.clone(), merged.clone(), merged.resolve_lww(), merged.resolve_with(|_| newest.clone())] {
            let bytes = obj.encode();
            let s = Object::decode_summary(&bytes).expect("decodes");
            let values: Vec<Value> = obj.values().into_iter().cloned().collect();
            prop_assert_eq!(&s.values, &values);
            prop_assert_eq!(&s.context, &obj.context());
            prop_assert_eq!(s.lww.map(|i| &s.values[i]), obj.lww_value());
            for cut in 0..bytes.len() {
                prop_assert!(Object::decode_summary(&bytes[..cut]).is_err());
            }
        }
    }

    #[test]
    fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        prop_assert_eq!(Object::decode(&bytes).is_ok(), Object::decode_summary(&bytes).is_ok());
        let _ = context_from_string(&String::from_utf8_lossy(&bytes));
    }
}
