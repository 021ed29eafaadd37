//! `db.watch(...)`: an iterator of the changes committed on the directory
//! (by any process, or merged from a peer), resumable from a change's id.
//! It waits without the GIL, a slice at a time, so Ctrl-C interrupts it.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use chorus_core::object::Object;
use chorus_store::watch::{Watched, Watcher};
use chorus_store::{EventId, Origin};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::convert::{bytes_arg, read_py, types};
use crate::errors::{invalid, store_error};
use crate::store::{Shared, scope_arg};

/// Longest the iterator waits without the GIL before looking for signals.
const SLICE: Duration = Duration::from_millis(100);

/// An iterator of `chorus.Change` (and `chorus.Gap`).
#[pyclass(module = "chorus", frozen)]
pub(crate) struct WatchIter {
    watcher: Mutex<Watcher>,
    timeout: Option<Duration>,
    inner: Shared,
}

impl WatchIter {
    pub(crate) fn start(
        py: Python<'_>,
        inner: Shared,
        scope: Option<&Bound<'_, PyAny>>,
        key: Option<&Bound<'_, PyAny>>,
        from_: Option<&str>,
        timeout: Option<f64>,
    ) -> PyResult<WatchIter> {
        let scope = scope_arg(scope)?;
        let key = key.map(|k| bytes_arg(k, "key")).transpose()?;
        if key.is_some() && !matches!(scope, chorus_store::Scope::FullPrefix(_)) {
            return Err(invalid(
                "watch(key=...) needs the key's full prefix as the scope: watch(\"prefix/sub\", key=...)",
            ));
        }
        let timeout = match timeout {
            None => None,
            Some(t) => match Duration::try_from_secs_f64(t) {
                Ok(d) => Some(d),
                Err(_) => {
                    return Err(invalid(format!(
                        "timeout={t} is not a number of seconds >= 0 that a duration holds: leave it out to wait for ever"
                    )));
                }
            },
        };
        let after = from_
            .map(|text| {
                EventId::parse(text).map_err(|e| {
                    invalid(format!(
                        "from_={text:?} is not the id of a change ({e}): pass a change's `id`"
                    ))
                })
            })
            .transpose()?;
        let filter: chorus_store::watch::KeyFilter = Box::new(move |fp, k| {
            let base = chorus_store::split_record(k).map_or(k, |(base, _)| base);
            let in_scope = match &scope {
                chorus_store::Scope::All => !fp.is_reserved(),
                chorus_store::Scope::Prefix(p) => fp.prefix() == p,
                chorus_store::Scope::FullPrefix(f) => f == fp,
            };
            in_scope && key.as_deref().is_none_or(|want| want == base)
        });
        let store = inner.meta.store().clone();
        let watcher = py
            .detach(|| match after {
                Some(id) => store.watcher_after(id, filter),
                None => store.watcher(filter),
            })
            .map_err(store_error)?;
        Ok(WatchIter {
            watcher: Mutex::new(watcher),
            timeout,
            inner,
        })
    }
}

/// A `chorus.Change` of a watched event.
fn change<'py>(
    py: Python<'py>,
    e: &chorus_store::watch::WatchEvent,
) -> PyResult<Bound<'py, PyAny>> {
    let (base, record) = match chorus_store::split_record(&e.key) {
        Some((base, name)) => (base, Some(String::from_utf8_lossy(name).into_owned())),
        None => (&e.key[..], None),
    };
    let object = e.value.as_deref().and_then(|b| Object::decode(b).ok());
    let read = match &object {
        Some(o) => {
            let read = chorus_store::Read {
                values: o.values().into_iter().cloned().collect(),
                context: o.context(),
                tombstone: o.is_tombstone(),
            };
            read_py(py, Some(&read))?
        }
        None => py.None().into_bound(py),
    };
    types(py, "Change")?.call1((
        e.id.to_string(),
        e.seq,
        e.full_prefix.to_string(),
        PyBytes::new(py, base),
        matches!(e.origin, Origin::Peer(_)),
        read,
        record,
    ))
}

#[pymethods]
impl WatchIter {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.inner.check()?;
        let started = Instant::now();
        loop {
            let slice = match self.timeout {
                Some(t) => {
                    let left = t.saturating_sub(started.elapsed());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    left.min(SLICE)
                }
                None => SLICE,
            };
            let got = py.detach(|| {
                self.watcher
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .next(slice)
            });
            match got.map_err(store_error)? {
                Some(Watched::Change(e)) => return change(py, &e).map(Some),
                Some(Watched::Gap { resume }) => {
                    return types(py, "Gap")?.call1((resume.to_string(),)).map(Some);
                }
                None => py.check_signals()?,
            }
        }
    }
}
