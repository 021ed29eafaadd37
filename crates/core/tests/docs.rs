//! Documents' revision rules: the reference's winner tables in every
//! insertion order, deterministic ids, conflicts, self-clearing, bounded
//! history, and merge laws.

use chorus_core::docs::{Body, DocError, Incoming, Rev, RevTree, validate_id};
use proptest::prelude::*;
use serde_json::json;

fn rev(s: &str) -> Rev {
    s.parse().expect("a valid revision id")
}

fn body(v: serde_json::Value) -> Body {
    match v {
        serde_json::Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

/// (rev, parent, deleted)
type Spec<'a> = (&'a str, Option<&'a str>, bool);

fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut out = Vec::new();
    for i in 0..items.len() {
        let mut rest = items.to_vec();
        let first = rest.remove(i);
        for mut p in permutations(&rest) {
            p.insert(0, first.clone());
            out.push(p);
        }
    }
    out
}

/// Builds the tree in every order (inserting one revision at a time, and
/// also as a union of one-revision trees) and checks the winner each time.
fn winner_in_every_order(specs: &[Spec<'_>], expected: &str) {
    for order in permutations(specs) {
        let mut tree = RevTree::default();
        let mut union = RevTree::default();
        for (r, parent, deleted) in &order {
            let b = Some(body(json!({"at": r})));
            tree.insert(rev(r), parent.map(rev), *deleted, b.clone());
            let mut one = RevTree::default();
            one.insert(rev(r), parent.map(rev), *deleted, b);
            union.merge(&one);
        }
        let names: Vec<&str> = order.iter().map(|s| s.0).collect();
        assert_eq!(tree.winner(), Some(&rev(expected)), "order {names:?}");
        assert_eq!(
            union.winner(),
            Some(&rev(expected)),
            "union in order {names:?}"
        );
    }
}

#[test]
fn winner_table_three_live_first_revisions() {
    let leaves = [
        ("1-a", None, false),
        ("1-b", None, false),
        ("1-1", None, false),
    ];
    winner_in_every_order(&leaves, "1-b");
    for parent in ["1-a", "1-b", "1-1"] {
        let mut with_child = leaves.to_vec();
        with_child.push(("2-2", Some(parent), false));
        winner_in_every_order(&with_child, "2-2");
    }
}

#[test]
fn winner_table_numeric_not_string_comparison() {
    winner_in_every_order(&[("10-a", None, false), ("2-b", None, false)], "10-a");
}

#[test]
fn winner_table_a_live_leaf_beats_a_deleted_longer_branch() {
    winner_in_every_order(
        &[
            ("1-a1", None, false),
            ("2-a2", Some("1-a1"), false),
            ("3-a3", Some("2-a2"), true),
            ("1-b1", None, false),
        ],
        "1-b1",
    );
}

#[test]
fn winner_table_a_live_leaf_beats_deleted_ones() {
    winner_in_every_order(
        &[
            ("1-a1", None, false),
            ("2-a2", Some("1-a1"), false),
            ("1-b1", None, true),
            ("1-c1", None, true),
        ],
        "2-a2",
    );
}

#[test]
fn updating_a_losing_leaf_extends_its_branch_and_the_winner_is_recomputed() {
    let mut tree = RevTree::default();
    for r in ["1-a", "1-b"] {
        tree.insert(rev(r), None, false, Some(body(json!({"who": r}))));
    }
    assert_eq!(tree.winner(), Some(&rev("1-b")));
    let edited = tree
        .update(&rev("1-a"), body(json!({"who": "a again"})), false, 100)
        .expect("a losing leaf is current");
    assert_eq!(edited.rev.n, 2);
    assert_eq!(
        edited.tree.get(&edited.rev).and_then(|n| n.parent.clone()),
        Some(rev("1-a"))
    );
    assert_eq!(edited.tree.winner(), Some(&edited.rev));
    assert_eq!(edited.tree.losing_leaves(), vec![&rev("1-b")]);
}

#[test]
fn revision_ids_are_deterministic_and_cover_parent_content_and_deletion() {
    let b = body(json!({"email": "alice@example.com", "n": 1}));
    let reordered =
        body(serde_json::from_str(r#"{"n": 1, "email": "alice@example.com"}"#).expect("json"));
    let first = Rev::child(None, false, &b);
    assert_eq!(
        first,
        Rev::child(None, false, &reordered),
        "field order does not matter"
    );
    assert_eq!(first.n, 1);
    assert_eq!(first.hash.len(), 32);
    let second = Rev::child(Some(&first), false, &b);
    assert_eq!(second.n, 2);
    assert_ne!(second.hash, first.hash, "the parent is covered");
    assert_ne!(
        Rev::child(None, false, &body(json!({"n": 2}))),
        first,
        "the content is covered"
    );
    assert_ne!(
        Rev::child(Some(&first), true, &b),
        second,
        "deletion is covered"
    );
    assert_eq!(
        second.to_string().parse::<Rev>().expect("round trip"),
        second
    );
}

#[test]
fn malformed_revision_ids_are_refused() {
    for bad in [
        "", "1", "-abc", "0-abc", "01-abc", "x-abc", "1-", "1-ABC", "1-xyz", "1-a-b", "1 -a",
    ] {
        let err = bad.parse::<Rev>().expect_err(bad);
        assert!(matches!(err, DocError::Invalid(_)), "{bad}: {err}");
        assert!(err.to_string().contains("N-hash"), "{err}");
    }
}

#[test]
fn bad_ids_and_bodies_are_refused_with_the_reason() {
    let long = "x".repeat(513);
    for (id, why) in [
        ("", "empty"),
        ("../x", "'/'"),
        ("a/b", "'/'"),
        ("..", "path component"),
        ("a\nb", "control"),
        ("_design", "reserved"),
        (long.as_str(), "longer"),
    ] {
        let err = validate_id(id).expect_err(id);
        assert!(err.to_string().contains(why), "{id:?}: {err}");
    }
    validate_id("alice@example.com").expect("a plain id");
    for (doc, why) in [
        (json!([1, 2]), "JSON object"),
        (json!({"_id": 5}), "_id must be a string"),
        (json!({"_id": "a", "_rev": "nope"}), "N-hash"),
        (json!({"_id": "a", "_attachments": {}}), "reserved"),
        (json!({"big": "x".repeat(300 << 10)}), "limit"),
    ] {
        let err = Incoming::parse(doc).expect_err("refused");
        assert!(err.to_string().contains(why), "{err}");
    }
    let ok = Incoming::parse(json!({"_id": "a", "_rev": "1-ab", "x": 1})).expect("valid");
    assert_eq!(ok.id.as_deref(), Some("a"));
    assert_eq!(ok.rev, Some(rev("1-ab")));
    assert_eq!(ok.body, body(json!({"x": 1})));
}

#[test]
fn keep_both_makes_a_branch_and_conflicts_name_the_pair_that_collided() {
    let created = RevTree::default()
        .create(body(json!({"name": "hello"})), 100)
        .expect("create");
    let base = created.rev.clone();
    let alice = created
        .tree
        .update(&base, body(json!({"name": "alice"})), false, 100)
        .expect("alice");
    // Bob read `base` too: it is no longer current.
    let err = alice
        .tree
        .update(&base, body(json!({"name": "bob"})), false, 100)
        .expect_err("refused without keep_both");
    assert!(matches!(err, DocError::Conflict(_)), "{err}");
    assert!(err.to_string().contains(&alice.rev.to_string()), "{err}");
    let bob = alice
        .tree
        .update(&base, body(json!({"name": "bob"})), true, 100)
        .expect("kept with keep_both");
    let mut pair = vec![alice.rev.clone(), bob.rev.clone()];
    pair.sort();
    assert_eq!(bob.tree.conflict_groups(), vec![pair.clone()]);
    assert_eq!(bob.tree.winner(), pair.last());
    // Resolving keeps one; the conflict is gone, the history stays.
    let resolved = bob.tree.resolve(&pair[0], 100).expect("resolve");
    assert!(resolved.tree.conflict_groups().is_empty());
    assert_eq!(resolved.tree.winner(), Some(&pair[0]));
    // An unknown revision is a conflict even with keep_both.
    let err = bob
        .tree
        .update(&rev("7-abc"), Body::new(), true, 100)
        .expect_err("unknown");
    assert!(matches!(err, DocError::Conflict(_)));
}

#[test]
fn conflict_groups_keep_old_collisions_apart_from_new_ones() {
    // 1 -> {2-a, 2-b}; 2-a -> 3 -> {4-c, 4-d}: two groups, in order.
    let t = RevTree::default()
        .create(body(json!({"v": 0})), 100)
        .expect("create");
    let a = t
        .tree
        .update(&t.rev, body(json!({"v": "a", "only-a": 1})), false, 100)
        .expect("a");
    let b = a
        .tree
        .update(&t.rev, body(json!({"v": "b", "only-b": 1})), true, 100)
        .expect("b");
    let top = if b.tree.winner() == Some(&a.rev) {
        a.rev.clone()
    } else {
        b.rev.clone()
    };
    let three = b
        .tree
        .update(
            &top,
            body(json!({"v": 3, "only-a": 1, "only-b": 1, "x": 1})),
            false,
            100,
        )
        .expect("3");
    let c = three
        .tree
        .update(&three.rev, body(json!({"v": "c", "c": 1})), false, 100)
        .expect("c");
    let d = c
        .tree
        .update(&three.rev, body(json!({"v": "d", "d": 1})), true, 100)
        .expect("d");
    let groups = d.tree.conflict_groups();
    assert_eq!(groups.len(), 2, "{groups:?}");
    assert_eq!(
        groups[0].iter().map(|r| r.n).collect::<Vec<_>>(),
        vec![2, 2]
    );
    assert_eq!(
        groups[1].iter().map(|r| r.n).collect::<Vec<_>>(),
        vec![4, 4]
    );
}

#[test]
fn a_loser_whose_data_the_winner_holds_clears_itself_and_one_with_a_unique_field_stays() {
    let base = RevTree::default()
        .create(body(json!({"name": "alice"})), 100)
        .expect("create");
    // Two hosts edit the same revision.
    let one = base
        .tree
        .update(
            &base.rev,
            body(json!({"name": "alice", "email": "alice@example.com"})),
            false,
            100,
        )
        .expect("one");
    let two = base
        .tree
        .update(
            &base.rev,
            body(json!({"name": "alice", "note": "call back"})),
            false,
            100,
        )
        .expect("two");
    let mut merged = one.tree.clone();
    merged.merge(&two.tree);
    merged.normalize(100);
    assert_eq!(
        merged.conflict_groups().len(),
        1,
        "each has a field the other lacks"
    );
    // Someone copies the email into the winner's branch: the loser that
    // only had the email now adds nothing and clears itself.
    let winner = merged.winner().cloned().expect("winner");
    let everything =
        body(json!({"name": "alice", "note": "call back", "email": "alice@example.com"}));
    let edited = merged
        .update(&winner, everything.clone(), false, 100)
        .expect("update");
    assert!(
        edited.tree.conflict_groups().is_empty(),
        "{:?}",
        edited.tree.conflict_groups()
    );
    assert_eq!(edited.tree.live_leaves(), vec![&edited.rev]);
    // A loser with a field the winner lacks stays.
    let three = base
        .tree
        .update(
            &base.rev,
            body(json!({"name": "alice", "phone": "555"})),
            false,
            100,
        )
        .expect("three");
    let mut with_phone = edited.tree.clone();
    with_phone.merge(&three.tree);
    with_phone.normalize(100);
    assert_eq!(with_phone.losing_leaves(), vec![&three.rev]);
    // Clearing is the same on every host: the union in either order agrees.
    let mut other = three.tree.clone();
    other.merge(&edited.tree);
    other.normalize(100);
    assert_eq!(other, with_phone);
}

#[test]
fn history_is_bounded_and_only_leaves_keep_bodies() {
    let mut t = RevTree::default()
        .create(body(json!({"i": 0})), 10)
        .expect("create");
    for i in 1..1000 {
        t = t
            .tree
            .update(&t.rev, body(json!({"i": i})), false, 10)
            .expect("update");
    }
    assert_eq!(t.rev.n, 1000);
    assert_eq!(t.tree.len(), 10);
    let with_body = t.tree.revs().filter(|(_, n)| n.body.is_some()).count();
    assert_eq!(with_body, 1);
    assert!(
        t.tree.encode().len() < 2_000,
        "{} bytes",
        t.tree.encode().len()
    );
}

#[test]
fn delete_then_create_continues_the_branch_and_deleting_the_winner_promotes_a_loser() {
    let t = RevTree::default()
        .create(body(json!({"a": 1})), 100)
        .expect("create");
    let d = t.tree.delete(&t.rev, 100).expect("delete");
    assert!(!d.tree.is_live());
    assert!(d.tree.winner_document("x").is_none());
    assert!(matches!(
        d.tree.update(&d.rev, Body::new(), false, 100),
        Err(DocError::NotFound(_))
    ));
    let again = d.tree.create(body(json!({"a": 2})), 100).expect("recreate");
    assert_eq!(again.rev.n, 3);
    assert!(matches!(
        again.tree.create(Body::new(), 100),
        Err(DocError::AlreadyExists(_))
    ));
    // Two live leaves; deleting the winner leaves the other.
    let mut two = RevTree::default();
    two.insert(rev("1-a"), None, false, Some(body(json!({"x": 1}))));
    two.insert(rev("1-b"), None, false, Some(body(json!({"y": 1}))));
    let del = two.delete(&rev("1-b"), 100).expect("delete the winner");
    assert_eq!(del.tree.winner(), Some(&rev("1-a")));
    assert!(del.tree.is_live());
}

#[test]
fn encoding_round_trips_and_damage_is_refused() {
    let t = RevTree::default()
        .create(body(json!({"a": [1, {"b": null}]})), 100)
        .expect("create");
    let u = t
        .tree
        .update(&t.rev, body(json!({"a": 2})), false, 100)
        .expect("update");
    let bytes = u.tree.encode();
    assert_eq!(RevTree::decode(&bytes).expect("decode"), u.tree);
    for cut in 0..bytes.len() {
        assert!(RevTree::decode(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    assert!(RevTree::decode(br#"{"v":2,"revs":[]}"#).is_err());
}

fn arb_tree() -> impl Strategy<Value = RevTree> {
    // Random edits from a small shared history: creates, updates of
    // random revisions (keeping both), deletes.
    proptest::collection::vec((0u8..4, 0usize..8, 0u8..3), 0..12).prop_map(|ops| {
        let mut tree = RevTree::default();
        for (kind, pick, v) in ops {
            let revs: Vec<Rev> = tree.revs().map(|(r, _)| r.clone()).collect();
            let target = (!revs.is_empty()).then(|| revs[pick % revs.len()].clone());
            let b = body(json!({"v": v}));
            let next = match (kind, target) {
                (0, _) | (_, None) => tree.upsert(b, 5).tree,
                (1, Some(r)) => tree
                    .update(&r, b, true, 5)
                    .map(|e| e.tree)
                    .unwrap_or(tree.clone()),
                (2, Some(r)) => tree.delete(&r, 5).map(|e| e.tree).unwrap_or(tree.clone()),
                (_, Some(r)) => tree.resolve(&r, 5).map(|e| e.tree).unwrap_or(tree.clone()),
            };
            tree = next;
        }
        tree
    })
}

proptest! {
    #[test]
    fn merge_is_commutative_associative_and_idempotent(a in arb_tree(), b in arb_tree(), c in arb_tree()) {
        let union = |x: &RevTree, y: &RevTree| { let mut t = x.clone(); t.merge(y); t };
        prop_assert_eq!(union(&a, &b), union(&b, &a));
        prop_assert_eq!(union(&union(&a, &b), &c), union(&a, &union(&b, &c)));
        prop_assert_eq!(union(&a, &a), a.clone());
        // Every host that merged the same trees picks the same winner and
        // the same conflicts after normalizing.
        let (mut x, mut y) = (union(&a, &b), union(&b, &a));
        x.normalize(5);
        y.normalize(5);
        prop_assert_eq!(x.winner(), y.winner());
        prop_assert_eq!(x.conflict_groups(), y.conflict_groups());
    }
}

proptest! {
    /// A tree edited in place (its bookkeeping kept incrementally, its
    /// normalization looking only at what changed) equals a tree built
    /// from nothing with the same revisions and normalized in one pass.
    #[test]
    fn incremental_normalize_equals_a_full_one(
        ops in proptest::collection::vec((0u8..4, 0usize..16, 0u8..3), 0..40),
        limit in 1usize..6,
    ) {
        let mut tree = RevTree::default();
        for (kind, pick, v) in ops {
            let revs: Vec<Rev> = tree.revs().map(|(r, _)| r.clone()).collect();
            let target = (!revs.is_empty()).then(|| revs[pick % revs.len()].clone());
            let b = if v == 0 { Body::new() } else { body(json!({"v": v, "w": pick % 2})) };
            let _ = match (kind, target) {
                (0, _) | (_, None) => Ok(tree.upsert_in_place(b, limit)),
                (1, Some(r)) => tree.update_in_place(&r, b, true, limit),
                (2, Some(r)) => tree.delete_in_place(&r, limit),
                (_, Some(r)) => tree.resolve_in_place(&r, limit),
            };
            let mut fresh = RevTree::default();
            for (r, n) in tree.revs() {
                fresh.insert_record(r.clone(), n.parent.clone(), n.deleted, n.body.clone(), tree.has_child(r) && !tree.revs().any(|(_, c)| c.parent.as_ref() == Some(r)));
            }
            let mut normalized = fresh.clone();
            normalized.normalize(limit);
            prop_assert_eq!(&normalized, &tree);
            prop_assert_eq!(fresh.winner(), tree.winner());
            prop_assert_eq!(fresh.live_leaves(), tree.live_leaves());
            prop_assert_eq!(fresh.conflict_groups(), tree.conflict_groups());
            let (page, more) = tree.conflicts_page(None, usize::MAX);
            prop_assert!(!more);
            let losing: Vec<Rev> = tree.losing_leaves().into_iter().cloned().collect();
            prop_assert_eq!(page, losing);
        }
    }
}

proptest! {
    /// The losers self-clearing closes are exactly those whose every field
    /// the winner holds with an equal value, for narrow winners (found by
    /// subset hashes) and wide ones (found by probes) alike.
    #[test]
    fn subsumed_losers_are_exactly_the_subsets_of_the_winner(
        fields in proptest::collection::vec((0u8..12, 0u8..3), 0..12),
        losers in proptest::collection::vec(proptest::collection::vec((0u8..12, 0u8..3), 0..5), 1..30),
    ) {
        let to_body = |pairs: &[(u8, u8)]| {
            let mut b = Body::new();
            for (k, v) in pairs {
                b.insert(format!("f{k}"), json!(v));
            }
            b
        };
        let mut tree = RevTree::default();
        // The winner: a longer branch, so it wins whatever its hash.
        let root = Rev::child(None, false, &Body::new());
        tree.insert(root.clone(), None, false, None);
        let won = to_body(&fields);
        let mid = Rev::child(Some(&root), false, &body(json!({"mid": true})));
        tree.insert(mid.clone(), Some(root.clone()), false, None);
        let winner = Rev::child(Some(&mid), false, &won);
        tree.insert(winner.clone(), Some(mid.clone()), false, Some(won.clone()));
        let mut expected = std::collections::BTreeSet::new();
        for l in &losers {
            let b = to_body(l);
            let r = Rev::child(Some(&root), false, &b);
            if r == mid {
                continue;
            }
            if b.iter().all(|(k, v)| won.get(k) == Some(v)) {
                expected.insert(r.clone());
            }
            tree.insert(r, Some(root.clone()), false, Some(b));
        }
        prop_assert_eq!(tree.winner(), Some(&winner));
        expected.remove(&winner);
        prop_assert_eq!(tree.subsumed_losers(), expected);
    }
}
