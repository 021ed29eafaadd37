use chorus_core::object::Hlc;

use super::*;

const STAGE: u8 = 1;
const UP: u8 = 9;
const OTHER: u8 = 5;
const NOW_MS: u64 = 1_000_000;
const SKEW_MS: u64 = 300_000;

fn node(n: u8) -> NodeId {
    NodeId::from_bytes([n; 16])
}

/// A value written by node `n` at `ms`.
fn v(text: &str, ms: u64, n: u8) -> Value {
    Value::data(text.as_bytes(), Hlc(ms << 16), node(n))
}

fn entry(n: u8, counter: u64, values: Vec<Value>) -> Entry<NodeId, Value> {
    Entry {
        id: node(n),
        counter,
        values,
    }
}

/// An object with exactly these entries.
fn object(entries: Vec<Entry<NodeId, Value>>) -> Object {
    Object::from_clock(Dvvs::from_parts(entries, Vec::new())).expect("a valid object")
}

fn clock() -> Clock {
    Clock {
        now_ms: NOW_MS,
        max_skew_ms: SKEW_MS,
    }
}

fn pusher(token: Option<&str>) -> Pusher<'_> {
    Pusher {
        node: node(STAGE),
        token,
        priority: 3,
        window_ms: 1000,
    }
}

fn check(remote: &Object, local: Option<&Object>) -> Result<Object, Refusal> {
    check_pushed(remote, local, &pusher(Some("pushing-token")), clock())
}

fn texts(o: &Object) -> Vec<String> {
    let mut t: Vec<String> = o
        .values()
        .iter()
        .map(|v| String::from_utf8_lossy(v.bytes().unwrap_or(b"<deleted>")).into_owned())
        .collect();
    t.sort();
    t
}

#[test]
fn a_new_value_records_the_pushing_token_and_at_most_the_pushs_priority() {
    let claimed = Meta {
        token: Some("someone-elses-token".into()),
        priority: 200,
        window_ms: 86_400_000,
    };
    let remote = object(vec![entry(
        STAGE,
        1,
        vec![v("staged", NOW_MS, STAGE).with_meta(claimed)],
    )]);
    let checked = check(&remote, None).expect("accepted");
    let value = checked.value().expect("one value");
    assert_eq!(value.bytes(), Some(&b"staged"[..]));
    assert_eq!(value.meta().token.as_deref(), Some("pushing-token"));
    assert_eq!((value.meta().priority, value.meta().window_ms), (3, 1000));
    assert_eq!(checked.context(), remote.context());

    // Without a token (auth off) no token id is recorded at all.
    let checked = check_pushed(&remote, None, &pusher(None), clock()).expect("accepted");
    let value = checked.value().expect("one value");
    assert_eq!(value.meta().token, None);
    // A lower claimed priority is kept.
    let low = object(vec![entry(
        STAGE,
        1,
        vec![v("staged", NOW_MS, STAGE).with_meta(Meta {
            token: None,
            priority: 1,
            window_ms: 10,
        })],
    )]);
    let checked = check(&low, None).expect("accepted");
    let meta = checked.value().expect("one value").meta().clone();
    assert_eq!((meta.priority, meta.window_ms), (1, 10));
}

#[test]
fn a_timestamp_up_to_the_skew_ahead_is_accepted_and_one_ms_more_is_refused() {
    let at = |ms: u64| object(vec![entry(STAGE, 1, vec![v("x", ms, STAGE)])]);
    assert!(check(&at(NOW_MS + SKEW_MS), None).is_ok());
    assert!(check(&at(0), None).is_ok(), "the past is fine");
    let refused = check(&at(NOW_MS + SKEW_MS + 1), None).expect_err("too far ahead");
    assert_eq!(
        refused,
        Refusal::Future {
            writer: node(STAGE),
            timestamp_ms: NOW_MS + SKEW_MS + 1,
            now_ms: NOW_MS,
            max_skew_ms: SKEW_MS,
        }
    );
    assert!(refused.is_conflict());
    assert!(
        refused.to_string().contains("--max-clock-skew"),
        "{refused}"
    );
    // Far future: the attack of issue 16 (a value that wins lww for ever).
    let forever = at(u64::MAX >> 16);
    assert!(matches!(check(&forever, None), Err(Refusal::Future { .. })));
}

#[test]
fn counters_up_to_the_ceiling_are_accepted_and_above_it_refused() {
    let with = |counter: u64| object(vec![entry(STAGE, counter, vec![v("x", NOW_MS, STAGE)])]);
    assert!(check(&with(COUNTER_MAX), None).is_ok());
    let refused = check(&with(COUNTER_MAX + 1), None).expect_err("above the ceiling");
    assert_eq!(
        refused,
        Refusal::Counter {
            node: node(STAGE),
            counter: COUNTER_MAX + 1
        }
    );
    assert!(!refused.is_conflict());
    assert!(check_merged(&with(COUNTER_MAX), clock()).is_ok());
    assert_eq!(
        check_merged(&with(COUNTER_MAX + 1), clock()).map_err(|r| r.reason()),
        Err("counter_ceiling")
    );
}

#[test]
fn another_nodes_value_this_node_has_not_seen_is_refused() {
    // The upstream has seen UP's first write of the key.
    let local = object(vec![entry(UP, 1, vec![v("up-1", 10, UP)])]);
    // The push claims UP's write 50, and a node the upstream never heard of.
    for (remote, n, seen) in [
        (
            object(vec![
                entry(STAGE, 1, vec![v("staged", 20, STAGE)]),
                entry(UP, 50, vec![v("forged", 20, UP)]),
            ]),
            UP,
            1,
        ),
        (
            object(vec![
                entry(OTHER, 2, vec![v("relayed", 20, OTHER)]),
                entry(STAGE, 1, vec![v("staged", 20, STAGE)]),
            ]),
            OTHER,
            0,
        ),
    ] {
        let refused = check(&remote, Some(&local)).expect_err("an unseen dot");
        let counter = if n == UP { 50 } else { 2 };
        assert_eq!(
            refused,
            Refusal::Unseen {
                node: node(n),
                counter,
                seen
            }
        );
        assert!(refused.is_conflict());
    }
}

#[test]
fn another_nodes_history_beyond_what_was_seen_is_lowered_not_trusted() {
    let local = object(vec![entry(UP, 3, vec![v("up-3", 10, UP)])]);
    // The stage claims to have seen (and overwritten) UP's writes up to
    // far beyond UP's clock, and OTHER's up to 7: no values, history only.
    let remote = object(vec![
        entry(OTHER, 7, vec![]),
        entry(STAGE, 1, vec![v("staged", 20, STAGE)]),
        entry(UP, 40 << 16, vec![]),
    ]);
    let checked = check(&remote, Some(&local)).expect("accepted, lowered");
    assert_eq!(checked.context(), vec![(node(STAGE), 1), (node(UP), 3)]);
    // Merged, the stage's value supersedes what it saw (UP's write 3) and
    // no more: UP's next write, when it comes, is a sibling, not dropped.
    let merged = Object::reconcile(&checked, Some(&local)).expect("merged");
    assert_eq!(texts(&merged), ["staged"]);
    let up4 = Object::modify(Some(&local), &local.context(), v("up-4", 30, UP), node(UP));
    let later = Object::reconcile(&up4, Some(&merged)).expect("not already seen");
    assert_eq!(texts(&later), ["staged", "up-4"]);
    // Without the check, UP's next write would look seen and vanish.
    let trusted = Object::reconcile(&remote, Some(&local)).expect("merged");
    assert!(Object::reconcile(&up4, Some(&trusted)).is_none());
}

#[test]
fn a_value_under_a_dot_this_node_holds_is_taken_from_this_node() {
    let mine = v("up-1", 10, UP).with_meta(Meta {
        token: Some("upstream-writer".into()),
        ..Meta::default()
    });
    let staged = v("staged-1", 11, STAGE).with_meta(Meta {
        token: Some("the-token-that-pushed-it".into()),
        ..Meta::default()
    });
    let local = object(vec![
        entry(STAGE, 1, vec![staged.clone()]),
        entry(UP, 1, vec![mine.clone()]),
    ]);
    // The stage pushes its write 2 beside its write 1 (kept as a sibling)
    // with write 1 and UP's write 1 altered: content, timestamp, meta.
    let altered_own = v("rewritten", u64::MAX >> 16, STAGE);
    let altered_up = v("forged", u64::MAX >> 16, UP);
    let remote = object(vec![
        entry(STAGE, 2, vec![v("staged-2", 20, STAGE), altered_own]),
        entry(UP, 1, vec![altered_up]),
    ]);
    let checked = check(&remote, Some(&local)).expect("accepted");
    let merged = Object::reconcile(&checked, Some(&local)).expect("merged");
    assert_eq!(texts(&merged), ["staged-1", "staged-2", "up-1"]);
    let values = merged.values();
    assert!(values.contains(&&mine), "UP's write as this node has it");
    assert!(values.contains(&&staged), "write 1 as this node has it");
}

#[test]
fn a_dot_this_node_superseded_is_left_out() {
    // The upstream saw the stage's writes 1 and 2 and holds only 2.
    let local = object(vec![entry(STAGE, 2, vec![v("staged-2", 12, STAGE)])]);
    let remote = object(vec![entry(
        STAGE,
        3,
        vec![
            v("staged-3", 13, STAGE),
            v("staged-2", 12, STAGE),
            v("staged-1", 11, STAGE),
        ],
    )]);
    let checked = check(&remote, Some(&local)).expect("accepted");
    assert_eq!(texts(&checked), ["staged-2", "staged-3"]);
    let merged = Object::reconcile(&checked, Some(&local)).expect("merged");
    assert_eq!(texts(&merged), ["staged-2", "staged-3"]);
}

#[test]
fn pushing_the_same_object_again_changes_nothing() {
    let remote = object(vec![entry(
        STAGE,
        1,
        vec![v("staged", 20, STAGE).with_meta(Meta {
            token: Some("stage-local".into()),
            ..Meta::default()
        })],
    )]);
    let first = check(&remote, None).expect("accepted");
    let stored = Object::reconcile(&first, None).expect("new");
    let again = check(&remote, Some(&stored)).expect("accepted");
    assert!(Object::reconcile(&again, Some(&stored)).is_none());
    assert_eq!(again, stored, "this node's copy, byte for byte");
}

#[test]
fn a_new_value_must_name_the_pusher_as_its_writer() {
    let remote = object(vec![entry(STAGE, 1, vec![v("x", 20, UP)])]);
    let refused = check(&remote, None).expect_err("another writer");
    assert_eq!(
        refused,
        Refusal::Writer {
            pusher: node(STAGE),
            writer: node(UP)
        }
    );
    assert!(!refused.is_conflict());
}

#[test]
fn values_without_a_dot_are_refused() {
    let anonymous = Object::from_clock(Dvvs::from_parts(
        vec![entry(STAGE, 1, vec![])],
        vec![v("x", 20, STAGE)],
    ))
    .expect("an object");
    assert_eq!(check(&anonymous, None), Err(Refusal::Anonymous(1)));
}

#[test]
fn a_pusher_may_not_be_this_node_or_a_member() {
    let members = [node(UP), node(OTHER)];
    assert!(check_pusher(node(STAGE), node(UP), members.into_iter()).is_ok());
    let me = check_pusher(node(UP), node(UP), std::iter::empty()).expect_err("me");
    assert!(me.to_string().contains("this node's own id"), "{me}");
    let member = check_pusher(node(OTHER), node(UP), members.into_iter()).expect_err("member");
    assert_eq!(member.reason(), "impersonation");
    assert!(member.is_conflict(), "it depends on this node's cluster");
    assert!(member.to_string().contains("member"), "{member}");
}

#[test]
fn a_peers_object_is_held_to_the_skew_and_the_ceiling_but_may_relay_any_node() {
    let relayed = object(vec![
        entry(OTHER, 40, vec![v("other", NOW_MS + SKEW_MS, OTHER)]),
        entry(UP, 7, vec![v("up", NOW_MS - 1, UP)]),
    ]);
    assert!(check_merged(&relayed, clock()).is_ok());
    let ahead = object(vec![entry(
        OTHER,
        1,
        vec![v("other", NOW_MS + SKEW_MS + 1, OTHER)],
    )]);
    assert_eq!(
        check_merged(&ahead, clock()).map_err(|r| r.reason()),
        Err("future_timestamp")
    );
    // Anonymous values are checked too.
    let anonymous = Object::from_clock(Dvvs::from_parts(
        vec![],
        vec![v("other", NOW_MS + SKEW_MS + 1, OTHER)],
    ))
    .expect("an object");
    assert!(check_merged(&anonymous, clock()).is_err());
}
