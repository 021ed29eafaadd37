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
//! process goes on.

use chorus_core::oplog::{Op, Reducer};
use rhai::{AST, Dynamic, Engine, Scope};
use serde_json::Value;

use crate::{Error, Result};

/// Most Rhai operations one call may run.
pub const MAX_OPERATIONS: u64 = 1_000_000;
/// Most bytes of a script.
pub const MAX_SCRIPT_BYTES: usize = 64 << 10;

fn engine() -> Engine {
    let mut e = Engine::new();
    e.set_max_operations(MAX_OPERATIONS);
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
        let mut scope = Scope::new();
        let out: Dynamic = match args.len() {
            0 => self.engine.call_fn(&mut scope, &self.ast, name, ()),
            _ => {
                let mut it = args.into_iter();
                let (a, b) = (it.next().unwrap_or_default(), it.next().unwrap_or_default());
                self.engine.call_fn(&mut scope, &self.ast, name, (a, b))
            }
        }
        .map_err(|e| e.to_string())?;
        rhai::serde::from_dynamic(&out)
            .map_err(|e| format!("the script returned a value that is not JSON: {e}"))
    }
}

fn to_dynamic(v: &Value) -> std::result::Result<Dynamic, String> {
    rhai::serde::to_dynamic(v).map_err(|e| e.to_string())
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
        let op_map = serde_json::json!({
            "payload": op.payload, "timestamp": op.timestamp, "node": op.node, "id": op.id(),
        });
        let args = vec![to_dynamic(&state)?, to_dynamic(&op_map)?];
        self.call("reduce", args)
            .map_err(|e| format!("the script of type {:?} failed: {e}", self.kind))
    }
}
