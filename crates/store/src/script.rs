//! Reducers written as Rhai scripts, stored in the data under
//! `$reducers/{type}` (key `script`) so that they replicate with it.
//!
//! A script defines `fn reduce(state, op)` returning the new state, and
//! may define `fn init()` (the state before any operation; `()` if
//! absent). `op` is a map: `payload`, `timestamp`, `node`, `id`. JSON
//! values arrive as Rhai values (maps, arrays, strings, numbers, `()` for
//! null) and go back the same way. An `init()` that fails counts as `()`
//! (the failure then shows in the first `reduce`). A script runs with limits: operations
//! per call, call depth, string, array and map sizes; going past one is an
//! error for that call, reported with the type and the operation, and the
//! process goes on. A metered call ([`Reducer::reduce_metered`]) also
//! counts the operations it runs and stops when the fuel it was given is
//! spent: that is the request's budget running out, not the operation's
//! fault.

use std::cell::Cell;

use chorus_core::oplog::{Metered, Op, Reducer};
use rhai::{AST, Dynamic, Engine, EvalAltResult, Scope};
use serde_json::Value;

use crate::{Error, Result};

/// Most Rhai operations one call may run: an operation that needs more
/// is refused (the same on every node, whatever the budget).
pub const MAX_OPERATIONS: u64 = 1_000_000;
/// Most bytes of a script.
pub const MAX_SCRIPT_BYTES: usize = 64 << 10;

thread_local! {
    /// The fuel of the metered call running on this thread (`u64::MAX`
    /// outside one), and the operations it has run so far. A call runs
    /// on one thread from start to end, so the progress callback, which
    /// the engine shares between threads, finds its own call's here.
    static FUEL: Cell<u64> = const { Cell::new(u64::MAX) };
    static RAN: Cell<u64> = const { Cell::new(0) };
}

/// The token a call is stopped with when its fuel runs out.
const OUT_OF_FUEL: &str = "chorus: out of fuel";

fn engine() -> Engine {
    let mut e = Engine::new();
    e.set_max_operations(MAX_OPERATIONS);
    e.on_progress(|ran| {
        RAN.with(|r| r.set(ran));
        (ran > FUEL.with(Cell::get)).then(|| Dynamic::from(OUT_OF_FUEL))
    });
    e.set_max_call_levels(32);
    e.set_max_expr_depths(64, 32);
    e.set_max_string_size(1 << 20);
    e.set_max_array_size(100_000);
    e.set_max_map_size(100_000);
    e
}

/// A compiled script reducer.
pub struct ScriptReducer {
    kind: String,
    engine: Engine,
    ast: AST,
}

impl std::fmt::Debug for ScriptReducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptReducer")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl ScriptReducer {
    /// Compiles `source`; refuses a script that does not parse or has no
    /// `reduce(state, op)`.
    pub fn compile(kind: &str, source: &str) -> Result<ScriptReducer> {
        if source.len() > MAX_SCRIPT_BYTES {
            return Err(Error::InvalidInput(format!(
                "the script for type {kind:?} is {} bytes; the limit is {MAX_SCRIPT_BYTES}",
                source.len()
            )));
        }
        let engine = engine();
        let ast = engine.compile(source).map_err(|e| {
            Error::InvalidInput(format!("the script for type {kind:?} does not parse: {e}"))
        })?;
        if !ast
            .iter_functions()
            .any(|f| f.name == "reduce" && f.params.len() == 2)
        {
            return Err(Error::InvalidInput(format!(
                "the script for type {kind:?} has no `fn reduce(state, op)`: define it to return the new state"
            )));
        }
        Ok(ScriptReducer {
            kind: kind.to_string(),
            engine,
            ast,
        })
    }

    fn call(&self, name: &str, args: Vec<Dynamic>) -> std::result::Result<Value, String> {
        let out = self.call_raw(name, args).map_err(|e| e.to_string())?;
        from_dynamic(&out)
    }

    fn call_raw(
        &self,
        name: &str,
        args: Vec<Dynamic>,
    ) -> std::result::Result<Dynamic, Box<EvalAltResult>> {
        let mut scope = Scope::new();
        match args.len() {
            0 => self.engine.call_fn(&mut scope, &self.ast, name, ()),
            _ => {
                let mut it = args.into_iter();
                let (a, b) = (it.next().unwrap_or_default(), it.next().unwrap_or_default());
                self.engine.call_fn(&mut scope, &self.ast, name, (a, b))
            }
        }
    }

    fn reduce_args(state: &Value, op: &Op) -> std::result::Result<Vec<Dynamic>, String> {
        let op_map = serde_json::json!({
            "payload": op.payload, "timestamp": op.timestamp, "node": op.node, "id": op.id(),
        });
        Ok(vec![to_dynamic(state)?, to_dynamic(&op_map)?])
    }

    fn failed(&self, e: impl std::fmt::Display) -> String {
        format!("the script of type {:?} failed: {e}", self.kind)
    }
}

/// Sets this thread's fuel for one call, and puts the previous back
/// when dropped (a reducer called from inside another's call is not
/// possible, but nothing here relies on it).
struct FuelGuard(u64);

impl FuelGuard {
    fn set(fuel: u64) -> FuelGuard {
        RAN.with(|r| r.set(0));
        FuelGuard(FUEL.with(|f| f.replace(fuel)))
    }
}

impl Drop for FuelGuard {
    fn drop(&mut self) {
        FUEL.with(|f| f.set(self.0));
    }
}

fn to_dynamic(v: &Value) -> std::result::Result<Dynamic, String> {
    rhai::serde::to_dynamic(v).map_err(|e| e.to_string())
}

fn from_dynamic(v: &Dynamic) -> std::result::Result<Value, String> {
    rhai::serde::from_dynamic(v)
        .map_err(|e| format!("the script returned a value that is not JSON: {e}"))
}

impl Reducer for ScriptReducer {
    fn init(&self) -> Value {
        if !self
            .ast
            .iter_functions()
            .any(|f| f.name == "init" && f.params.is_empty())
        {
            return Value::Null;
        }
        self.call("init", Vec::new()).unwrap_or(Value::Null)
    }

    fn reduce(&self, state: Value, op: &Op) -> std::result::Result<Value, String> {
        let args = Self::reduce_args(&state, op)?;
        self.call("reduce", args).map_err(|e| self.failed(e))
    }

    /// Counts the Rhai operations the call runs (at least one) and stops
    /// it once it has run `fuel` of them. [`MAX_OPERATIONS`] still bounds
    /// each call: past it the operation itself is refused.
    fn reduce_metered(&self, state: Value, op: &Op, fuel: u64) -> Metered {
        if fuel == 0 {
            return Metered::OutOfFuel(state);
        }
        let args = match Self::reduce_args(&state, op) {
            Ok(a) => a,
            Err(e) => return Metered::Failed(self.failed(e)),
        };
        let guard = FuelGuard::set(fuel);
        let out = self.call_raw("reduce", args);
        let ran = RAN.with(Cell::get).max(1);
        drop(guard);
        match out {
            Ok(next) => match from_dynamic(&next) {
                Ok(next) => Metered::Done(next, ran),
                Err(e) => Metered::Failed(self.failed(e)),
            },
            Err(e) => match *e {
                EvalAltResult::ErrorTerminated(ref token, _)
                    if token.clone().into_string().ok().as_deref() == Some(OUT_OF_FUEL) =>
                {
                    Metered::OutOfFuel(state)
                }
                other => Metered::Failed(self.failed(other)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op() -> Op {
        Op::new("t", 1, "n", json!(1))
    }

    #[test]
    fn a_metered_call_counts_its_operations_and_stops_when_its_fuel_is_spent() {
        let r = ScriptReducer::compile(
            "t",
            "fn reduce(state, op) { let n = 0; while n < 1000 { n += 1; } state + 1 }",
        )
        .expect("compile");
        let Metered::Done(state, cost) = r.reduce_metered(json!(1), &op(), u64::MAX) else {
            panic!("not done");
        };
        assert_eq!(state, json!(2));
        assert!((1000..100_000).contains(&cost), "{cost}");
        // The same call with less fuel stops, and hands the state back.
        assert_eq!(
            r.reduce_metered(json!(1), &op(), cost / 2),
            Metered::OutOfFuel(json!(1))
        );
        assert_eq!(
            r.reduce_metered(json!(1), &op(), cost),
            Metered::Done(json!(2), cost)
        );
        // The per-call limit is the operation's failure, whatever the fuel.
        let spin =
            ScriptReducer::compile("spin", "fn reduce(state, op) { loop { } }").expect("compile");
        let Metered::Failed(e) = spin.reduce_metered(json!(1), &op(), u64::MAX) else {
            panic!("not failed");
        };
        assert!(e.contains("\"spin\""), "{e}");
        // Outside a metered call nothing is limited but the per-call limit.
        assert_eq!(r.reduce(json!(1), &op()), Ok(json!(2)));
    }
}
