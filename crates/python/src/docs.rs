//! Documents (`db.docs(name)`) and operation logs (`db.oplogs`): the
//! engine's own APIs, with JSON as Python `dict`s and lists.

use std::sync::Arc;

use chorus_core::oplog::Op;
use chorus_core::oplog::Reducer;
use chorus_store::docs::Docs as Engine;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use serde_json::Value;

use crate::convert::{Conflicts, KeepBoth, RevText, json_to_py, py_to_json, str_arg};
use crate::errors::{invalid, store_error};
use crate::store::Shared;

/// A document store: JSON objects with `_id` and `_rev`, and CouchDB's
/// rules for revisions and conflicts.
#[pyclass(module = "chorus", frozen)]
pub(crate) struct Docs {
    /// The store's name.
    #[pyo3(get)]
    name: String,
    docs: Engine,
    inner: Shared,
}

impl Docs {
    pub(crate) fn open(inner: Shared, name: String) -> PyResult<Docs> {
        let docs = Engine::open(&inner.meta, &name).map_err(store_error)?;
        Ok(Docs { name, docs, inner })
    }

    /// Runs `f` on the engine's documents without the GIL.
    fn run<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&Engine) -> chorus_store::Result<T> + Send,
    ) -> PyResult<T> {
        self.inner.check()?;
        py.detach(|| f(&self.docs)).map_err(store_error)
    }
}

/// A document argument: a `dict`.
fn doc_arg(obj: &Bound<'_, PyAny>) -> PyResult<Value> {
    if obj.cast::<PyDict>().is_err() {
        return Err(invalid(format!(
            "a document must be a dict, not {}",
            crate::convert::type_name(obj)
        )));
    }
    py_to_json(obj, "document")
}

#[pymethods]
impl Docs {
    /// Creates a document (with `_id`, or one is made); returns
    /// `{"ok": True, "_id": ..., "_rev": ...}`.
    fn create<'py>(&self, py: Python<'py>, doc: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let doc = doc_arg(doc)?;
        let saved = self.run(py, |d| d.create(doc))?;
        json_to_py(py, &saved.to_json())
    }

    /// The winning revision (with `_conflicts` when `conflicts=True`), or
    /// revision `rev`.
    #[pyo3(signature = (id, *, conflicts = None, rev = None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        id: &Bound<'py, PyAny>,
        conflicts: Option<Conflicts>,
        rev: Option<RevText>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let conflicts = conflicts.is_some_and(|c| c.0);
        let rev = rev.map(|r| r.0);
        let id = str_arg(id, "document id")?;
        let doc = self.run(py, |d| match (&rev, conflicts) {
            (Some(r), _) => d.get_rev(&id, r),
            (None, true) => d.get_with_conflicts(&id),
            (None, false) => d.get(&id),
        })?;
        json_to_py(py, &doc)
    }

    /// Saves a new revision of `doc` (its `_rev` must be current, unless
    /// `keep_both`, which keeps both edits as conflicting revisions).
    #[pyo3(signature = (doc, *, keep_both = None))]
    fn update<'py>(
        &self,
        py: Python<'py>,
        doc: &Bound<'py, PyAny>,
        keep_both: Option<KeepBoth>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let keep_both = keep_both.is_some_and(|k| k.0);
        let doc = doc_arg(doc)?;
        let saved = self.run(py, |d| d.update(doc, keep_both))?;
        json_to_py(py, &saved.to_json())
    }

    /// Deletes revision `rev` of the document.
    fn delete<'py>(
        &self,
        py: Python<'py>,
        id: &Bound<'py, PyAny>,
        rev: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let id = str_arg(id, "document id")?;
        let rev = str_arg(rev, "revision")?;
        let saved = self.run(py, |d| d.delete(&id, &rev))?;
        json_to_py(py, &saved.to_json())
    }

    /// The revisions in conflict with the winner.
    fn conflicts(&self, py: Python<'_>, id: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
        let id = str_arg(id, "document id")?;
        let doc = self.run(py, |d| d.get_with_conflicts(&id))?;
        Ok(doc
            .get("_conflicts")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Keeps revision `winner` and deletes every other leaf.
    fn resolve<'py>(
        &self,
        py: Python<'py>,
        id: &Bound<'py, PyAny>,
        winner: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let id = str_arg(id, "document id")?;
        let winner = str_arg(winner, "revision")?;
        let saved = self.run(py, |d| d.resolve(&id, &winner))?;
        json_to_py(py, &saved.to_json())
    }

    /// Every live document's winning revision, by id.
    fn all<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let docs = self.run(py, Engine::all)?;
        docs.iter().map(|d| json_to_py(py, d)).collect()
    }
}

/// The operation logs of a directory.
#[pyclass(module = "chorus", frozen)]
pub(crate) struct Oplogs {
    inner: Shared,
}

impl Oplogs {
    pub(crate) fn new(inner: Shared) -> Oplogs {
        Oplogs { inner }
    }

    /// Runs `f` on the log at `path` of `full_prefix`, without the GIL.
    fn at<T: Send>(
        &self,
        py: Python<'_>,
        full_prefix: &Bound<'_, PyAny>,
        path: &Bound<'_, PyAny>,
        f: impl FnOnce(
            &chorus_store::oplog::Oplogs,
            &chorus_core::FullPrefix,
            &str,
        ) -> chorus_store::Result<T>
        + Send,
    ) -> PyResult<T> {
        let fp = crate::convert::full_prefix(full_prefix)?;
        let path = str_arg(path, "log path")?;
        let inner = self.inner.check()?;
        py.detach(|| f(&inner.oplogs, &fp, &path))
            .map_err(store_error)
    }
}

/// A reducer written in Python: `reduce(state, op) -> state`, from `init`.
struct PyReducer {
    reduce: Py<PyAny>,
    init: Value,
}

impl Reducer for PyReducer {
    fn init(&self) -> Value {
        self.init.clone()
    }

    fn reduce(&self, state: Value, op: &Op) -> Result<Value, String> {
        Python::attach(|py| {
            let call = || -> PyResult<Value> {
                let state = json_to_py(py, &state)?;
                let op = serde_json::json!({
                    "id": op.id(), "timestamp": op.timestamp, "node": op.node,
                    "sha": op.sha, "payload": op.payload,
                });
                let op = json_to_py(py, &op)?;
                let out = crate::store::as_callback(|| self.reduce.bind(py).call1((state, op)))?;
                py_to_json(&out, "reducer's result")
            };
            call().map_err(|e| format!("the Python reducer raised {e}"))
        })
    }
}

#[pymethods]
impl Oplogs {
    /// Appends an operation to the log at `path` of `full_prefix`, of log
    /// type `kind`; returns the log's value after it.
    fn push<'py>(
        &self,
        py: Python<'py>,
        full_prefix: &Bound<'py, PyAny>,
        path: &Bound<'py, PyAny>,
        kind: &Bound<'py, PyAny>,
        payload: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let kind = str_arg(kind, "log type")?;
        let payload = py_to_json(payload, "payload")?;
        let value = self.at(py, full_prefix, path, |logs, fp, path| {
            logs.push(fp, path, &kind, payload)
        })?;
        json_to_py(py, &value)
    }

    /// The log's value: its operations folded by its reducer.
    fn get<'py>(
        &self,
        py: Python<'py>,
        full_prefix: &Bound<'py, PyAny>,
        path: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let value = self.at(py, full_prefix, path, |logs, fp, path| logs.get(fp, path))?;
        json_to_py(py, &value)
    }

    /// The log itself: `{"type", "checkpoint", "ops", "late"}`.
    fn log<'py>(
        &self,
        py: Python<'py>,
        full_prefix: &Bound<'py, PyAny>,
        path: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let view = self.at(py, full_prefix, path, |logs, fp, path| logs.log(fp, path))?;
        json_to_py(py, &view.to_json())
    }

    /// Registers a reducer for log type `kind` in this process:
    /// `reduce(state, op) -> state`, starting from `init`.
    #[pyo3(signature = (kind, reduce, init = None))]
    fn register(
        &self,
        kind: &Bound<'_, PyAny>,
        reduce: &Bound<'_, PyAny>,
        init: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let kind = str_arg(kind, "log type")?;
        if !reduce.is_callable() {
            return Err(invalid(format!(
                "reduce must be a function (state, op) -> state, not {}",
                crate::convert::type_name(reduce)
            )));
        }
        let init = match init {
            Some(i) => py_to_json(i, "initial state")?,
            None => Value::Null,
        };
        let inner = self.inner.check()?;
        let reducer = Arc::new(PyReducer {
            reduce: reduce.clone().unbind(),
            init,
        });
        inner.oplogs.register(&kind, reducer).map_err(store_error)
    }
}
