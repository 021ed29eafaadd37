//! The native half of `chorus.om` (Open Metadata's API) and of
//! `om.push()`: thin calls into `chorus-om` (entries with Open Metadata's
//! history, trash and inheritance rules; `.meta` trees in and out) and
//! into the stage's push-now protocol (`chorus_store::stage_request`),
//! the same code `chorus om` and `chorus stage push` run.

use std::time::SystemTime;

use chorus_core::FullPrefix;
use chorus_om::{OmError, OmType, Progress};
use chorus_store::stage_request::{self, PushProgress, PushRequest};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::convert::full_prefix;
use crate::errors::{invalid, of_kind, store_error};
use crate::store::{Shared, Store};

fn om_error(e: OmError) -> PyErr {
    match e {
        OmError::Store(e) => store_error(e),
        other => of_kind(other.kind(), other.to_string()),
    }
}

fn om_type(name: &str) -> PyResult<OmType> {
    OmType::from_name(name).ok_or_else(|| {
        invalid(format!(
            "{name:?} is not an Open Metadata type: use bool, int, float, string, text, null, tuple, date, dict or list"
        ))
    })
}

fn names(path: &[String]) -> Vec<&str> {
    path.iter().map(String::as_str).collect()
}

fn open(store: &Bound<'_, Store>) -> PyResult<Shared> {
    store.get().inner()
}

/// Runs `f` on the store's metadata and the parsed full prefix, without
/// the GIL; its error becomes the matching `chorus` exception.
fn run<T: Send>(
    py: Python<'_>,
    store: &Bound<'_, Store>,
    full_prefix_: &Bound<'_, PyAny>,
    f: impl FnOnce(&chorus_store::Metadata, &FullPrefix) -> Result<T, OmError> + Send,
) -> PyResult<T> {
    let fp = full_prefix(full_prefix_)?;
    let inner = open(store)?;
    py.detach(|| f(&inner.meta, &fp)).map_err(om_error)
}

/// Writes an entry (Open Metadata's rules: history, trash on a type
/// change, missing groups made).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn om_write(
    py: Python<'_>,
    store: &Bound<'_, Store>,
    full_prefix_: &Bound<'_, PyAny>,
    location: &str,
    path: Vec<String>,
    ty: &str,
    raw: &str,
    user: &str,
) -> PyResult<()> {
    let ty = om_type(ty)?;
    run(py, store, full_prefix_, |meta, fp| {
        let now = SystemTime::now();
        chorus_om::write_entry(meta, fp, location, &names(&path), ty, raw, user, now)
    })
}

/// `(type, raw, location)` of an entry, or `None`; with `inherit`, from the
/// nearest location above that has it.
#[pyfunction]
fn om_read(
    py: Python<'_>,
    store: &Bound<'_, Store>,
    full_prefix_: &Bound<'_, PyAny>,
    location: &str,
    path: Vec<String>,
    inherit: bool,
) -> PyResult<Option<(&'static str, String, String)>> {
    run(py, store, full_prefix_, |meta, fp| {
        let path = names(&path);
        if inherit {
            chorus_om::read_inherited(meta, fp, location, &path)
                .map(|f| f.map(|i| (i.ty.name(), i.raw, i.location)))
        } else {
            chorus_om::read_entry(meta, fp, location, &path)
                .map(|f| f.map(|(ty, raw)| (ty.name(), raw, location.to_string())))
        }
    })
}

/// `(name, type)` of a group's entries (the top level for an empty path).
#[pyfunction]
fn om_list(
    py: Python<'_>,
    store: &Bound<'_, Store>,
    full_prefix_: &Bound<'_, PyAny>,
    location: &str,
    group: Vec<String>,
) -> PyResult<Vec<(String, &'static str)>> {
    let listed = run(py, store, full_prefix_, |meta, fp| {
        chorus_om::list_entries(meta, fp, location, &names(&group))
    })?;
    Ok(listed.into_iter().map(|(n, ty)| (n, ty.name())).collect())
}

/// `(stamp, user, type, raw)` of an entry's earlier values, newest first.
#[pyfunction]
fn om_history(
    py: Python<'_>,
    store: &Bound<'_, Store>,
    full_prefix_: &Bound<'_, PyAny>,
    location: &str,
    path: Vec<String>,
) -> PyResult<Vec<(String, String, &'static str, String)>> {
    let snaps = run(py, store, full_prefix_, |meta, fp| {
        chorus_om::history(meta, fp, location, &names(&path))
    })?;
    Ok(snaps
        .into_iter()
        .map(|s| (s.stamp, s.user, s.ty.name(), s.raw))
        .collect())
}

/// Writes the value of history snapshot `stamp` back.
#[pyfunction]
fn om_restore(
    py: Python<'_>,
    store: &Bound<'_, Store>,
    full_prefix_: &Bound<'_, PyAny>,
    location: &str,
    path: Vec<String>,
    stamp: &str,
    user: &str,
) -> PyResult<()> {
    run(py, store, full_prefix_, |meta, fp| {
        let now = SystemTime::now();
        chorus_om::restore(meta, fp, location, &names(&path), stamp, user, now)
    })
}

/// Removes an entry (to the trash unless `permanent`); false if absent.
#[pyfunction]
fn om_delete(
    py: Python<'_>,
    store: &Bound<'_, Store>,
    full_prefix_: &Bound<'_, PyAny>,
    location: &str,
    path: Vec<String>,
    permanent: bool,
) -> PyResult<bool> {
    run(py, store, full_prefix_, |meta, fp| {
        chorus_om::delete_entry(meta, fp, location, &names(&path), permanent)
    })
}

/// A Python progress callback, if any, called with `(phase, done,
/// total)`; an exception it raises (Ctrl-C among them) stops the import
/// or export, and is raised again once the call returns.
struct Reporter {
    f: Option<Py<PyAny>>,
    raised: Option<PyErr>,
}

impl Reporter {
    fn new(f: Option<Py<PyAny>>) -> Reporter {
        Reporter { f, raised: None }
    }

    fn report(&mut self, p: Progress) -> Result<(), OmError> {
        let Some(f) = &self.f else {
            return Ok(());
        };
        let phase = match p.phase {
            chorus_om::Phase::Scanning => "scanning",
            chorus_om::Phase::Writing => "writing",
        };
        let outcome = Python::attach(|py| {
            crate::store::as_callback(|| f.bind(py).call1((phase, p.done, p.total)))
                .and_then(|_| py.check_signals())
        });
        outcome.map_err(|e| {
            self.raised = Some(e);
            OmError::Stopped("the progress callback raised an exception: stopped".into())
        })
    }

    /// The callback's exception, if it stopped the call, else `e`.
    fn error(self, e: OmError) -> PyErr {
        match (self.raised, e) {
            (Some(raised), OmError::Stopped(_)) => raised,
            (_, e) => om_error(e),
        }
    }
}

/// Imports every `.meta` folder under `root`; the whole tree is checked
/// first, so a bad tree writes nothing.
#[pyfunction]
#[pyo3(signature = (store, root, full_prefix_, progress = None))]
fn om_import<'py>(
    py: Python<'py>,
    store: &Bound<'py, Store>,
    root: std::path::PathBuf,
    full_prefix_: &Bound<'py, PyAny>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let fp = full_prefix(full_prefix_)?;
    let inner = open(store)?;
    let mut reporter = Reporter::new(progress);
    let outcome =
        py.detach(|| chorus_om::import_tree(&inner.meta, &fp, &root, &mut |p| reporter.report(p)));
    let r = outcome.map_err(|e| reporter.error(e))?;
    counts(
        py,
        &[
            ("locations", r.locations),
            ("entries", r.entries),
            ("bytes", r.bytes),
            ("written", r.written),
            ("unchanged", r.unchanged),
            ("commits", r.commits),
        ],
    )
}

/// Writes the entries of `full_prefix` as `.meta` folders under `root`.
#[pyfunction]
#[pyo3(signature = (store, root, full_prefix_, force = false, progress = None))]
fn om_export<'py>(
    py: Python<'py>,
    store: &Bound<'py, Store>,
    root: std::path::PathBuf,
    full_prefix_: &Bound<'py, PyAny>,
    force: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let fp = full_prefix(full_prefix_)?;
    let inner = open(store)?;
    let mut reporter = Reporter::new(progress);
    let outcome = py.detach(|| {
        chorus_om::export_tree(&inner.meta, &fp, &root, force, &mut |p| reporter.report(p))
    });
    let r = outcome.map_err(|e| reporter.error(e))?;
    counts(
        py,
        &[
            ("locations", r.locations),
            ("entries", r.entries),
            ("bytes", r.bytes),
            ("written", r.written),
            ("unchanged", r.unchanged),
        ],
    )
}

/// A report's counts as a `dict`.
fn counts<'py>(py: Python<'py>, fields: &[(&str, u64)]) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (k, v) in fields {
        d.set_item(*k, *v)?;
    }
    Ok(d)
}

/// Asks the stage daemon on this directory to push now; returns the
/// request (`NotFound` when no daemon runs).
#[pyfunction]
fn stage_push(py: Python<'_>, store: &Bound<'_, Store>) -> PyResult<u64> {
    let inner = open(store)?;
    py.detach(|| stage_request::request_push(&inner.meta))
        .map(|r| r.seq)
        .map_err(store_error)
}

/// `(state, message)` of a push request: `"done"`, `"pending"`,
/// `"no_daemon"` or `"failed"`.
#[pyfunction]
fn stage_push_status(
    py: Python<'_>,
    store: &Bound<'_, Store>,
    request: u64,
) -> PyResult<(&'static str, String)> {
    let inner = open(store)?;
    let dir = inner.meta.store().dir().to_path_buf();
    let progress = py
        .detach(|| stage_request::push_status(&inner.meta, &PushRequest { seq: request }))
        .map_err(store_error)?;
    Ok(match progress {
        PushProgress::Done(ack) => (
            "done",
            format!("{} key(s) pushed to {}", ack.keys, ack.upstream),
        ),
        PushProgress::Pending => ("pending", String::new()),
        PushProgress::NoDaemon => ("no_daemon", stage_request::no_daemon_message(&dir)),
        PushProgress::Failed { message } => ("failed", message),
    })
}

/// Adds the functions to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(om_write, m)?)?;
    m.add_function(wrap_pyfunction!(om_read, m)?)?;
    m.add_function(wrap_pyfunction!(om_list, m)?)?;
    m.add_function(wrap_pyfunction!(om_history, m)?)?;
    m.add_function(wrap_pyfunction!(om_restore, m)?)?;
    m.add_function(wrap_pyfunction!(om_delete, m)?)?;
    m.add_function(wrap_pyfunction!(om_import, m)?)?;
    m.add_function(wrap_pyfunction!(om_export, m)?)?;
    m.add_function(wrap_pyfunction!(stage_push, m)?)?;
    m.add_function(wrap_pyfunction!(stage_push_status, m)?)?;
    Ok(())
}
