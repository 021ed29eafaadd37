//! The reducer budget: fuel counted per call, never timed; running out
//! hands the state back unchanged and is never the operation's fault.

use chorus_core::oplog::{Budget, Op, Stopped, apply, apply_metered, built_in};
use serde_json::json;

#[test]
fn a_budget_applies_operations_until_its_fuel_is_spent_and_hands_the_state_back() {
    let counter = built_in("counter").expect("counter");
    let ops: Vec<Op> = (1..=5)
        .map(|t| Op::new("counter", t, "n", json!(t)))
        .collect();
    let mut budget = Budget::new(3);
    let mut state = counter.init();
    let mut applied = 0;
    for op in &ops {
        match apply_metered(&*counter, "counter", state.clone(), op, &mut budget) {
            Ok(next) => {
                state = next;
                applied += 1;
            }
            Err(Stopped::OutOfFuel(back)) => {
                assert_eq!(back, state, "the state before the operation");
                break;
            }
            Err(Stopped::Failed(e)) => panic!("{e}"),
        }
    }
    assert_eq!((applied, state.clone()), (3, json!(6)));
    assert_eq!((budget.left(), budget.spent()), (0, 3));
    // The same operations without a limit give the same value.
    let mut all = counter.init();
    for op in &ops[..3] {
        all = apply(&*counter, "counter", all, op).expect("apply");
    }
    assert_eq!(all, state);
    // A failure is the operation's, whatever the budget.
    let bad = Op::new("counter", 9, "n", json!("x"));
    let mut budget = Budget::unlimited();
    assert!(matches!(
        apply_metered(&*counter, "counter", json!(0), &bad, &mut budget),
        Err(Stopped::Failed(_))
    ));
}
