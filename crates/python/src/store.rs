//! `chorus.open` and the `Store` handle: key-value reads and writes with
//! the cluster-metadata API, iteration, transactions and snapshots.
//!
//! Every call that can wait for the disk or the writer lock releases the
//! GIL (`Python::detach`). A handle belongs to the process that opened it:
//! after `fork()` the child's copy refuses every call (its lock and shared
//! page belong to the parent) and is never closed from the child.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chorus_core::FullPrefix;
use chorus_core::object::Context;
use chorus_store::{
    GetOptions, IterOptions, Match, MetaIter, MetaTransaction, Metadata, Options, PutOptions,
    PutValue, Read, Resolver, Scope, Store as Engine, SyncMode,
};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyCFunction, PyDict, PyList, PyString, PyTuple};

use crate::convert::{
    AllowPut, ContextText, Create, FromId, IfAbsent, LockTimeoutSecs, Pattern, SyncText,
    TimeoutSecs, Tombstones, bytes_arg, context_arg, item_py, live_values, read_py, str_arg,
    type_name,
};
use crate::errors::{invalid, of_kind, store_error};

/// What a handle holds while open.
pub(crate) struct Inner {
    /// The cluster-metadata API over the engine.
    pub(crate) meta: Metadata,
    /// The operation logs, with this handle's registered reducers.
    pub(crate) oplogs: chorus_store::oplog::Oplogs,
    /// The process that opened it.
    pid: u32,
}

/// The open handle, or why there is none.
pub(crate) type Shared = Arc<Inner>;

impl Inner {
    /// Refuses a handle used in a child after `fork()`.
    pub(crate) fn check(self: &Arc<Self>) -> PyResult<Shared> {
        if IN_CALLBACK.with(std::cell::Cell::get) {
            return Err(invalid(
                "a resolver, write function or reducer called the store: it runs inside a store call \
                 (a write function under the writer lock), so it must compute its result from the \
                 values it was given; read or write before or after the call instead",
            ));
        }
        let me = this_process();
        if me != self.pid {
            return Err(invalid(format!(
                "this store handle was opened by process {} and this is process {me} (a child after fork()): \
                 its lock and shared memory belong to the parent; open the store again in the child \
                 with chorus.open(path)",
                self.pid
            )));
        }
        Ok(Arc::clone(self))
    }
}

/// This process's id, kept by the at-fork hook `watch_forks` installs, so
/// that the fork check of every call reads memory instead of making a
/// getpid system call (about 100 ns, a tenth of a `get`). 0: no hook yet.
static PROCESS_ID: AtomicU32 = AtomicU32::new(0);

/// This process's id (see `PROCESS_ID`).
fn this_process() -> u32 {
    match PROCESS_ID.load(Ordering::Relaxed) {
        0 => std::process::id(),
        pid => pid,
    }
}

/// Installs, once per process, the hook that sets `PROCESS_ID` in a child
/// after `os.fork()` (Python runs it for every fork that goes on running
/// Python: `os.fork`, multiprocessing's fork, and C code calling
/// `PyOS_AfterFork_Child` as it must). When it cannot be installed,
/// `PROCESS_ID` stays 0 and every check asks the kernel, as before.
fn watch_forks(py: Python<'_>) {
    static HOOKED: PyOnceLock<()> = PyOnceLock::new();
    let hook = || -> PyResult<()> {
        let after_fork = PyCFunction::new_closure(
            py,
            Some(c"chorus_after_fork"),
            None,
            |_args, _kwargs| -> PyResult<()> {
                PROCESS_ID.store(std::process::id(), Ordering::Relaxed);
                Ok(())
            },
        )?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("after_in_child", after_fork)?;
        py.import("os")?
            .getattr("register_at_fork")?
            .call((), Some(&kwargs))?;
        // Under the GIL since the hook went in: no fork can come between.
        PROCESS_ID.store(std::process::id(), Ordering::Relaxed);
        Ok(())
    };
    if HOOKED.get_or_try_init(py, hook).is_err() {
        // Not installed: the checks keep asking the kernel (see above).
    }
}

/// How many parsed full prefixes `Store::get` keeps.
const PREFIX_SLOTS: usize = 4;

/// Full prefixes parsed by `Store::get`, keyed by the `str` object passed
/// (held here, so its address cannot be reused by another string while
/// it is a key): a loop calling `db.get("a/b", key)` validates "a/b" once
/// instead of on every call. Only exact `str` objects go in (immutable,
/// and freeing one runs no Python code).
struct PrefixCache {
    slots: [Option<(Py<PyString>, FullPrefix)>; PREFIX_SLOTS],
    /// The slot the next new prefix replaces.
    next: usize,
}

static PREFIXES: Mutex<PrefixCache> = Mutex::new(PrefixCache {
    slots: [const { None }; PREFIX_SLOTS],
    next: 0,
});

/// `convert::full_prefix`, remembered per `str` object (see `PrefixCache`).
fn cached_full_prefix(obj: &Bound<'_, PyAny>) -> PyResult<FullPrefix> {
    {
        let cache = PREFIXES.lock().unwrap_or_else(PoisonError::into_inner);
        let hit = cache
            .slots
            .iter()
            .flatten()
            .find(|(text, _)| text.as_ptr() == obj.as_ptr());
        if let Some((_, fp)) = hit {
            return Ok(fp.clone());
        }
    }
    let fp = crate::convert::full_prefix(obj)?;
    if let Ok(text) = obj.cast_exact::<PyString>() {
        let evicted = {
            let mut cache = PREFIXES.lock().unwrap_or_else(PoisonError::into_inner);
            let slot = cache.next;
            cache.next = (slot + 1) % PREFIX_SLOTS;
            cache.slots[slot].replace((text.clone().unbind(), fp.clone()))
        };
        // Released outside the lock.
        drop(evicted);
    }
    Ok(fp)
}

/// Opens the data directory `path` (created unless `create=False`).
///
/// `sync`: `"always"` (a write returns once it is on disk), `"batch"`
/// (concurrent writes share one sync), or `"never"` (the OS decides; a
/// crash may lose recent writes). `lock_timeout`: seconds a writer waits
/// for the writer lock before raising `LockTimeout`.
#[pyfunction]
#[pyo3(signature = (path, sync = None, lock_timeout = None, create = None))]
pub(crate) fn open(
    py: Python<'_>,
    path: &Bound<'_, PyAny>,
    sync: Option<SyncText>,
    lock_timeout: Option<LockTimeoutSecs>,
    create: Option<Create>,
) -> PyResult<Store> {
    let path: PathBuf = path.extract().map_err(|_| {
        invalid(format!(
            "the path must be a str or os.PathLike, not {}",
            type_name(path)
        ))
    })?;
    let lock_timeout = lock_timeout.map_or(10.0, |t| t.0);
    let create = create.is_none_or(|c| c.0);
    let sync = sync.map_or_else(|| "always".to_string(), |s| s.0);
    let sync = match sync.as_str() {
        "always" => SyncMode::Always,
        "batch" => SyncMode::Batch,
        "never" => SyncMode::Never,
        other => {
            return Err(invalid(format!(
                "sync={other:?} is not a sync mode: use \"always\", \"batch\" or \"never\""
            )));
        }
    };
    if !(lock_timeout.is_finite() && (0.0..=86_400.0).contains(&lock_timeout)) {
        return Err(invalid(format!(
            "lock_timeout={lock_timeout} is not a number of seconds from 0 to 86400"
        )));
    }
    watch_forks(py);
    let dir = chorus_store::expand_home(&path).map_err(store_error)?;
    let opts = Options {
        create,
        sync,
        lock_timeout: Duration::from_secs_f64(lock_timeout),
        ..Options::default()
    };
    let engine = py
        .detach(|| Engine::open(&dir, opts))
        .map_err(store_error)?;
    let meta = Metadata::new(engine);
    let oplogs = chorus_store::oplog::Oplogs::new(&meta);
    Ok(Store {
        path: dir.to_string_lossy().into_owned(),
        inner: Mutex::new(Some(Arc::new(Inner {
            meta,
            oplogs,
            pid: std::process::id(),
        }))),
    })
}

/// A data directory, shared with every other process that opens it.
#[pyclass(module = "chorus", frozen)]
pub(crate) struct Store {
    /// The directory.
    #[pyo3(get)]
    path: String,
    inner: Mutex<Option<Shared>>,
}

impl Drop for Store {
    fn drop(&mut self) {
        // A child after fork() must not run the parent's close (it would
        // unlock and unmap what the parent still uses): leak it instead.
        let mut slot = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(inner) = slot.take()
            && inner.pid != std::process::id()
        {
            std::mem::forget(inner);
        }
    }
}

/// How a read settles siblings, from Python: `None`, `"lww"` or a callable.
pub(crate) enum PyResolver {
    None,
    Lww,
    Call(Py<PyAny>),
}

impl PyResolver {
    pub(crate) fn parse(obj: Option<&Bound<'_, PyAny>>) -> PyResult<PyResolver> {
        let Some(obj) = obj.filter(|o| !o.is_none()) else {
            return Ok(PyResolver::None);
        };
        if let Ok(name) = obj.extract::<String>() {
            return match name.as_str() {
                "lww" => Ok(PyResolver::Lww),
                other => Err(invalid(format!(
                    "resolver={other:?} is not a resolver: use \"lww\", a function of the values, or None"
                ))),
            };
        }
        if obj.is_callable() {
            return Ok(PyResolver::Call(obj.clone().unbind()));
        }
        Err(invalid(format!(
            "resolver must be None, \"lww\" or a function, not {}",
            type_name(obj)
        )))
    }

    fn engine(&self) -> Resolver {
        match self {
            PyResolver::Lww => Resolver::Lww,
            _ => Resolver::None,
        }
    }
}

thread_local! {
    /// Set while this thread runs a Python callback (a resolver, a write
    /// function, a reducer) for the engine.
    static IN_CALLBACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` (which calls Python code for the engine) with `IN_CALLBACK`
/// set: a store call from inside it is refused by `Inner::check` instead
/// of waiting for the writer lock or a mutex its own caller holds.
pub(crate) fn as_callback<T>(f: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            IN_CALLBACK.with(|c| c.set(self.0));
        }
    }
    let _reset = Reset(IN_CALLBACK.with(|c| c.replace(true)));
    f()
}

/// Calls a Python resolver or write function with the live values; its
/// result must be bytes, str or None.
fn call_values(py: Python<'_>, f: &Py<PyAny>, values: Vec<Vec<u8>>) -> PyResult<Option<Vec<u8>>> {
    let list = PyList::new(py, values.iter().map(|v| PyBytes::new(py, v)))?;
    let out = as_callback(|| f.bind(py).call1((list,)))?;
    if out.is_none() {
        return Ok(None);
    }
    bytes_arg(&out, "function's result").map(Some)
}

impl Store {
    pub(crate) fn inner(&self) -> PyResult<Shared> {
        let slot = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        match slot.as_ref() {
            Some(inner) => inner.check(),
            None => Err(invalid(format!(
                "the store {} is closed: open it again with chorus.open(path)",
                self.path
            ))),
        }
    }

    /// A read with a resolver applied: a Python resolver runs here, with
    /// the GIL, and its result is written back (with the read's context)
    /// when `allow_put`.
    fn settled(
        &self,
        py: Python<'_>,
        fp: &FullPrefix,
        key: &[u8],
        resolver: &PyResolver,
        allow_put: bool,
    ) -> PyResult<Option<Read>> {
        let inner = self.inner()?;
        let opts = GetOptions {
            default: None,
            resolver: resolver.engine(),
            allow_put,
        };
        // A read that writes nothing and finds this process up to date is
        // answered from memory with the GIL held (releasing it costs more
        // than the read); one that must read other processes' commits
        // from the log, or may write a resolution back, releases it.
        let in_memory = match resolver {
            PyResolver::Lww => None,
            PyResolver::None | PyResolver::Call(_) => inner.meta.get_in_memory(fp, key),
        };
        let read = match in_memory {
            Some(found) => found,
            None => py.detach(|| inner.meta.get(fp, key, &opts)),
        }
        .map_err(store_error)?;
        let PyResolver::Call(f) = resolver else {
            return Ok(read);
        };
        let Some(read) = read else {
            return Ok(None);
        };
        if read.values.len() <= 1 {
            return Ok(Some(read));
        }
        let chosen = call_values(py, f, live_values(&read.values))?;
        if allow_put {
            write_back(py, &inner, fp, key, &chosen, &read)?;
            let plain = GetOptions::default();
            let stored = py
                .detach(|| inner.meta.get(fp, key, &plain))
                .map_err(store_error)?;
            // What was stored, with its context; unless a writer added a
            // sibling since: then the resolved value with the context of
            // what the resolver saw (writing back with it keeps that
            // sibling), as without allow_put.
            match stored {
                None if chosen.is_none() => return Ok(None),
                Some(r) if r.values.len() == 1 => return Ok(Some(r)),
                _ => {}
            }
        }
        Ok(Some(resolved(&read, chosen, inner.meta.store().node_id())))
    }
}

/// Writes what a Python resolver chose over the siblings of `read`, with
/// the context of what it saw: values written since stay siblings.
fn write_back(
    py: Python<'_>,
    inner: &Shared,
    fp: &FullPrefix,
    key: &[u8],
    chosen: &Option<Vec<u8>>,
    read: &Read,
) -> PyResult<()> {
    let value = match chosen {
        Some(b) => PutValue::Bytes(b.clone()),
        None => PutValue::Tombstone,
    };
    let put = PutOptions {
        context: Some(read.context.clone()),
        ..Default::default()
    };
    py.detach(|| inner.meta.put(fp, key, value, &put))
        .map(|_| ())
        .map_err(store_error)
}

/// `read` settled to what a resolver chose (written by `node`, at the
/// newest sibling's time), with the context of what it saw.
fn resolved(read: &Read, chosen: Option<Vec<u8>>, node: chorus_core::NodeId) -> Read {
    let ts = read
        .values
        .iter()
        .map(|v| v.timestamp)
        .max()
        .unwrap_or_default();
    let value = match chosen {
        Some(b) => chorus_core::object::Value::data(&b, ts, node),
        None => chorus_core::object::Value::tombstone(ts, node),
    };
    Read {
        tombstone: value.bytes().is_none(),
        values: vec![value],
        context: read.context.clone(),
    }
}

/// The one live value of `read` as `bytes`, or `default` when there is
/// none; `Conflict` when siblings remain.
fn value_or_default<'py>(
    py: Python<'py>,
    fp: &FullPrefix,
    key: &[u8],
    read: Option<&Read>,
    default: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let value = match read {
        Some(r) => single_ref(fp, key, r)?,
        None => None,
    };
    Ok(match value {
        Some(b) => PyBytes::new(py, b).into_any(),
        None => default.unwrap_or_else(|| py.None().into_bound(py)),
    })
}

/// The one live value of a read, `None` when deleted, `Conflict` when
/// siblings remain.
fn single_ref<'r>(fp: &FullPrefix, key: &[u8], read: &'r Read) -> PyResult<Option<&'r [u8]>> {
    let mut live = read.values.iter().filter_map(|v| v.bytes());
    match (live.next(), live.next()) {
        (None, _) => Ok(None),
        (Some(only), None) => Ok(Some(only)),
        (Some(_), Some(_)) => Err(of_kind(
            chorus_core::Kind::Conflict,
            format!(
                "{fp}/{} holds {} siblings: read them with read(), or settle them with resolver=\"lww\" or a function",
                String::from_utf8_lossy(key),
                2 + live.count()
            ),
        )),
    }
}

/// Which part of the store an iteration covers: `"prefix/sub"`, `"prefix"`
/// or `None`.
pub(crate) fn scope_arg(scope: Option<&Bound<'_, PyAny>>) -> PyResult<Scope> {
    let Some(obj) = scope.filter(|o| !o.is_none()) else {
        return Ok(Scope::All);
    };
    let text = str_arg(obj, "scope")?;
    if text.contains('/') {
        return FullPrefix::parse(&text)
            .map(Scope::FullPrefix)
            .map_err(crate::errors::name_error);
    }
    // A bare prefix: validated the same way a full prefix's first part is.
    FullPrefix::new(&text, "x").map_err(crate::errors::name_error)?;
    Ok(Scope::Prefix(text))
}

fn match_arg(pattern: Option<&str>) -> Match {
    pattern.map_or(Match::All, |g| Match::Glob(g.to_string()))
}

#[pymethods]
impl Store {
    /// The node id of the directory (hex).
    #[getter]
    fn node_id(&self) -> PyResult<String> {
        Ok(self.inner()?.meta.store().node_id().to_string())
    }

    /// Closes this handle (other processes are not affected). Iterators and
    /// watches already made keep working until they end.
    fn close(&self) {
        let mut slot = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(inner) = slot.take()
            && inner.pid != std::process::id()
        {
            std::mem::forget(inner);
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, _exc: &Bound<'_, PyTuple>) {
        self.close();
    }

    fn __repr__(&self) -> String {
        let open = self
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        format!(
            "<chorus.Store {:?}{}>",
            self.path,
            if open { "" } else { " (closed)" }
        )
    }

    /// The key's value, or `default` when it is absent or deleted; raises
    /// `Conflict` when siblings remain unsettled.
    #[pyo3(signature = (full_prefix, key, default = None, *, resolver = None, allow_put = None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        full_prefix: &Bound<'py, PyAny>,
        key: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
        resolver: Option<&Bound<'py, PyAny>>,
        allow_put: Option<AllowPut>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let allow_put = allow_put.is_none_or(|a| a.0);
        let fp = cached_full_prefix(full_prefix)?;
        let key = bytes_arg(key, "key")?;
        let resolver = PyResolver::parse(resolver)?;
        let read = self.settled(py, &fp, &key, &resolver, allow_put)?;
        value_or_default(py, &fp, &key, read.as_ref(), default)
    }

    /// Every sibling of the key and the context to write back with.
    #[pyo3(signature = (full_prefix, key, *, resolver = None, allow_put = None))]
    fn read<'py>(
        &self,
        py: Python<'py>,
        full_prefix: &Bound<'py, PyAny>,
        key: &Bound<'py, PyAny>,
        resolver: Option<&Bound<'py, PyAny>>,
        allow_put: Option<AllowPut>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let allow_put = allow_put.is_none_or(|a| a.0);
        let fp = crate::convert::full_prefix(full_prefix)?;
        let key = bytes_arg(key, "key")?;
        let resolver = PyResolver::parse(resolver)?;
        let read = self.settled(py, &fp, &key, &resolver, allow_put)?;
        read_py(py, read.as_ref())
    }

    /// Writes a value (bytes, str, or a function of the current values).
    #[pyo3(signature = (full_prefix, key, value, *, context = None, if_absent = None))]
    fn put(
        &self,
        py: Python<'_>,
        full_prefix: &Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        context: Option<ContextText>,
        if_absent: Option<IfAbsent>,
    ) -> PyResult<()> {
        let fp = crate::convert::full_prefix(full_prefix)?;
        let key = bytes_arg(key, "key")?;
        let context = context_arg(context.as_ref().map(|c| c.0.as_str()))?;
        let if_absent = if_absent.is_some_and(|f| f.0);
        let raised: Arc<Mutex<Option<PyErr>>> = Arc::default();
        let value = if value.is_callable() {
            let f = value.clone().unbind();
            let slot = Arc::clone(&raised);
            PutValue::Function(Box::new(move |siblings| {
                let values = live_values(siblings);
                Python::attach(|py| call_values(py, &f, values)).map_err(|e| {
                    *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
                    chorus_store::Error::InvalidInput(
                        "the write function raised an exception; nothing was written".into(),
                    )
                })
            }))
        } else {
            PutValue::Bytes(bytes_arg(value, "value")?)
        };
        let inner = self.inner()?;
        let opts = PutOptions { context, if_absent };
        let outcome = py.detach(|| inner.meta.put(&fp, &key, value, &opts));
        if let Some(e) = raised.lock().unwrap_or_else(PoisonError::into_inner).take() {
            return Err(e);
        }
        outcome.map(|_| ()).map_err(store_error)
    }

    /// Writes a tombstone; `NotFound` when the key is absent or deleted.
    #[pyo3(signature = (full_prefix, key, *, context = None))]
    fn delete(
        &self,
        py: Python<'_>,
        full_prefix: &Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
        context: Option<ContextText>,
    ) -> PyResult<()> {
        let fp = crate::convert::full_prefix(full_prefix)?;
        let key = bytes_arg(key, "key")?;
        let context = context_arg(context.as_ref().map(|c| c.0.as_str()))?;
        // A reserved name is refused before the key is looked up, so a
        // delete there is InvalidInput (as the `chorus` command says),
        // not NotFound.
        chorus_store::refuse_reserved(&fp).map_err(store_error)?;
        let inner = self.inner()?;
        let found = py
            .detach(|| inner.meta.get(&fp, &key, &GetOptions::default()))
            .map_err(store_error)?;
        if found.is_none() {
            return Err(of_kind(
                chorus_core::Kind::NotFound,
                format!(
                    "{fp}/{} not found; nothing deleted",
                    String::from_utf8_lossy(&key)
                ),
            ));
        }
        let opts = PutOptions {
            context,
            ..Default::default()
        };
        py.detach(|| inner.meta.delete(&fp, &key, &opts))
            .map(|_| ())
            .map_err(store_error)
    }

    /// Every key of `scope` as `chorus.Item`s, in key order, as of now.
    #[pyo3(signature = (scope = None, *, r#match = None, resolver = None, allow_put = None, tombstones = None))]
    fn iter(
        &self,
        py: Python<'_>,
        scope: Option<&Bound<'_, PyAny>>,
        r#match: Option<Pattern>,
        resolver: Option<&Bound<'_, PyAny>>,
        allow_put: Option<AllowPut>,
        tombstones: Option<Tombstones>,
    ) -> PyResult<ItemIter> {
        let allow_put = allow_put.is_some_and(|a| a.0);
        let tombstones = tombstones.is_some_and(|t| t.0);
        let scope = scope_arg(scope)?;
        let resolver = PyResolver::parse(resolver)?;
        let inner = self.inner()?;
        let opts = IterOptions {
            matching: match_arg(r#match.as_ref().map(|m| m.0.as_str())),
            resolver: resolver.engine(),
            allow_put,
            tombstones,
            default: None,
        };
        let it = py
            .detach(|| inner.meta.iter(&scope, &opts))
            .map_err(store_error)?;
        Ok(ItemIter::new(it, Mode::Items, resolver, allow_put, inner).hiding_reserved(&scope))
    }

    /// `(key, value)` of every live key of one full prefix.
    #[pyo3(signature = (full_prefix, *, r#match = None, resolver = None))]
    fn items(
        &self,
        py: Python<'_>,
        full_prefix: &Bound<'_, PyAny>,
        r#match: Option<Pattern>,
        resolver: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<ItemIter> {
        let fp = crate::convert::full_prefix(full_prefix)?;
        let resolver = PyResolver::parse(resolver)?;
        let inner = self.inner()?;
        let opts = IterOptions {
            matching: match_arg(r#match.as_ref().map(|m| m.0.as_str())),
            resolver: resolver.engine(),
            ..Default::default()
        };
        let it = py
            .detach(|| inner.meta.iter(&Scope::FullPrefix(fp), &opts))
            .map_err(store_error)?;
        Ok(ItemIter::new(it, Mode::Pairs, resolver, false, inner))
    }

    /// The live keys of one full prefix.
    #[pyo3(signature = (full_prefix, *, r#match = None))]
    fn keys(
        &self,
        py: Python<'_>,
        full_prefix: &Bound<'_, PyAny>,
        r#match: Option<Pattern>,
    ) -> PyResult<ItemIter> {
        let fp = crate::convert::full_prefix(full_prefix)?;
        let inner = self.inner()?;
        let opts = IterOptions {
            matching: match_arg(r#match.as_ref().map(|m| m.0.as_str())),
            ..Default::default()
        };
        let it = py
            .detach(|| inner.meta.iter(&Scope::FullPrefix(fp), &opts))
            .map_err(store_error)?;
        Ok(ItemIter::new(
            it,
            Mode::Keys,
            PyResolver::None,
            false,
            inner,
        ))
    }

    /// Hex hash of a full prefix's (or a whole prefix's) content.
    fn prefix_hash(&self, py: Python<'_>, scope: &Bound<'_, PyAny>) -> PyResult<String> {
        let scope = scope_arg(Some(scope))?;
        let inner = self.inner()?;
        let hash = py
            .detach(|| match &scope {
                Scope::FullPrefix(fp) => inner.meta.prefix_hash(fp),
                Scope::Prefix(p) => inner.meta.prefix_hash_all(p),
                Scope::All => Err(chorus_store::Error::InvalidInput(
                    "prefix_hash needs a prefix or a full prefix".into(),
                )),
            })
            .map_err(store_error)?;
        Ok(hash.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// A transaction: `with db.transaction() as tx: ...`.
    fn transaction(&self, py: Python<'_>) -> PyResult<Transaction> {
        let inner = self.inner()?;
        let tx = py.detach(|| inner.meta.begin()).map_err(store_error)?;
        Ok(Transaction {
            tx: Mutex::new(Some(tx)),
            inner,
        })
    }

    /// A consistent read-only view as of now.
    fn snapshot(&self, py: Python<'_>) -> PyResult<Snapshot> {
        let inner = self.inner()?;
        let snapshot = py
            .detach(|| inner.meta.store().snapshot())
            .map_err(store_error)?;
        Ok(Snapshot { snapshot, inner })
    }

    /// A document store of this directory.
    fn docs(&self, name: &Bound<'_, PyAny>) -> PyResult<crate::docs::Docs> {
        let name = str_arg(name, "document store name")?;
        crate::docs::Docs::open(self.inner()?, name)
    }

    /// The operation logs of this directory.
    #[getter]
    fn oplogs(&self) -> PyResult<crate::docs::Oplogs> {
        Ok(crate::docs::Oplogs::new(self.inner()?))
    }

    /// Changes from now on, or after the change `from_`.
    #[pyo3(signature = (scope = None, *, key = None, from_ = None, timeout = None))]
    fn watch(
        &self,
        py: Python<'_>,
        scope: Option<&Bound<'_, PyAny>>,
        key: Option<&Bound<'_, PyAny>>,
        from_: Option<FromId>,
        timeout: Option<TimeoutSecs>,
    ) -> PyResult<crate::watch::WatchIter> {
        crate::watch::WatchIter::start(
            py,
            self.inner()?,
            scope,
            key,
            from_.as_ref().map(|f| f.0.as_str()),
            timeout.map(|t| t.0),
        )
    }
}

/// What an iterator yields.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Items,
    Pairs,
    Keys,
}

/// An iteration over keys (`iter`, `items`, `keys`).
#[pyclass(module = "chorus")]
pub(crate) struct ItemIter {
    it: Option<MetaIter>,
    /// Leave out reserved (`$`) full prefixes: an iteration that did not
    /// name one.
    hide_reserved: bool,
    mode: Mode,
    resolver: PyResolver,
    allow_put: bool,
    inner: Shared,
}

impl ItemIter {
    /// Leaves out Chorus's own (`$`) full prefixes unless `scope` names
    /// one: `iter()` of everything shows the user's data, as the HTTP API
    /// lists it.
    fn hiding_reserved(mut self, scope: &Scope) -> ItemIter {
        self.hide_reserved = match scope {
            Scope::All => true,
            Scope::Prefix(p) => !p.starts_with('$'),
            Scope::FullPrefix(_) => false,
        };
        self
    }

    fn new(
        it: MetaIter,
        mode: Mode,
        resolver: PyResolver,
        allow_put: bool,
        inner: Shared,
    ) -> ItemIter {
        ItemIter {
            it: Some(it),
            hide_reserved: false,
            mode,
            resolver,
            allow_put,
            inner,
        }
    }
}

#[pymethods]
impl ItemIter {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.inner.check()?;
        // A loop, not recursion: any number of keys in a row may be
        // skipped (reserved ones, deleted ones `items` leaves out).
        loop {
            if let Some(found) = self.step(py)? {
                return Ok(found);
            }
        }
    }
}

impl ItemIter {
    /// The next key: `Some(None)` at the end, `None` for a key skipped.
    fn step<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Option<Bound<'py, PyAny>>>> {
        let Some(it) = self.it.as_mut() else {
            return Ok(Some(None));
        };
        let next = py.detach(|| it.next());
        let mut item = match next {
            None => {
                self.it = None;
                return Ok(Some(None));
            }
            Some(r) => r.map_err(store_error)?,
        };
        if self.hide_reserved && item.full_prefix.is_reserved() {
            return Ok(None);
        }
        if let (PyResolver::Call(f), true) = (&self.resolver, item.read.values.len() > 1) {
            let chosen = call_values(py, f, live_values(&item.read.values))?;
            if self.allow_put {
                write_back(
                    py,
                    &self.inner,
                    &item.full_prefix,
                    &item.key,
                    &chosen,
                    &item.read,
                )?;
            }
            item.read = resolved(&item.read, chosen, self.inner.meta.store().node_id());
        }
        match self.mode {
            Mode::Items => item_py(py, &item).map(|i| Some(Some(i))),
            Mode::Keys => Ok(Some(Some(PyBytes::new(py, &item.key).into_any()))),
            Mode::Pairs => match single_ref(&item.full_prefix, &item.key, &item.read)? {
                Some(v) => Ok(Some(Some(
                    PyTuple::new(py, [PyBytes::new(py, &item.key), PyBytes::new(py, v)])?
                        .into_any(),
                ))),
                None => Ok(None),
            },
        }
    }
}

/// `with db.transaction() as tx:`: reads from a snapshot, writes that
/// commit together at the end of the block or not at all.
#[pyclass(module = "chorus", frozen)]
pub(crate) struct Transaction {
    tx: Mutex<Option<MetaTransaction>>,
    inner: Shared,
}

impl Transaction {
    fn with<T>(&self, f: impl FnOnce(&mut MetaTransaction) -> PyResult<T>) -> PyResult<T> {
        self.inner.check()?;
        let mut slot = self.tx.lock().unwrap_or_else(PoisonError::into_inner);
        match slot.as_mut() {
            Some(tx) => f(tx),
            None => Err(invalid(
                "this transaction has ended (committed or aborted): start another with db.transaction()",
            )),
        }
    }

    fn read_raw(&self, fp: &FullPrefix, key: &[u8]) -> PyResult<Option<Read>> {
        self.with(|tx| tx.get(fp, key).map_err(store_error))
    }
}

#[pymethods]
impl Transaction {
    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Commits when the block ended normally, aborts when it raised.
    #[pyo3(signature = (exc_type = None, _exc = None, _tb = None))]
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<&Bound<'_, PyAny>>,
        _exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        if exc_type.is_some_and(|t| !t.is_none()) {
            self.abort();
            return Ok(false);
        }
        self.commit(py)?;
        Ok(false)
    }

    /// The key's value as of the transaction's start, or `default`.
    #[pyo3(signature = (full_prefix, key, default = None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        full_prefix: &Bound<'py, PyAny>,
        key: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let fp = crate::convert::full_prefix(full_prefix)?;
        let key = bytes_arg(key, "key")?;
        let read = self.read_raw(&fp, &key)?;
        value_or_default(py, &fp, &key, read.as_ref(), default)
    }

    /// Every sibling of the key as of the transaction's start.
    fn read<'py>(
        &self,
        py: Python<'py>,
        full_prefix: &Bound<'py, PyAny>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let fp = crate::convert::full_prefix(full_prefix)?;
        let key = bytes_arg(key, "key")?;
        let read = self.read_raw(&fp, &key)?;
        read_py(py, read.as_ref())
    }

    /// Writes at commit.
    #[pyo3(signature = (full_prefix, key, value, *, context = None))]
    fn put(
        &self,
        full_prefix: &Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        context: Option<ContextText>,
    ) -> PyResult<()> {
        let fp = crate::convert::full_prefix(full_prefix)?;
        let key = bytes_arg(key, "key")?;
        let value = bytes_arg(value, "value")?;
        let context: Option<Context> = context_arg(context.as_ref().map(|c| c.0.as_str()))?;
        self.with(|tx| tx.put(&fp, &key, &value, context).map_err(store_error))
    }

    /// Deletes at commit.
    #[pyo3(signature = (full_prefix, key, *, context = None))]
    fn delete(
        &self,
        full_prefix: &Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
        context: Option<ContextText>,
    ) -> PyResult<()> {
        let fp = crate::convert::full_prefix(full_prefix)?;
        let key = bytes_arg(key, "key")?;
        let context = context_arg(context.as_ref().map(|c| c.0.as_str()))?;
        self.with(|tx| tx.delete(&fp, &key, context).map_err(store_error))
    }

    /// Commits: `WriteConflict` (nothing written) when a key it read
    /// changed since the transaction began.
    fn commit(&self, py: Python<'_>) -> PyResult<()> {
        self.inner.check()?;
        let tx = self
            .tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(tx) = tx else {
            return Err(invalid(
                "this transaction has ended (committed or aborted): start another with db.transaction()",
            ));
        };
        py.detach(|| tx.commit()).map(|_| ()).map_err(store_error)
    }

    /// Drops the writes; nothing is written.
    fn abort(&self) {
        self.tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

/// A consistent read-only view of the store as of its creation.
#[pyclass(module = "chorus", frozen)]
pub(crate) struct Snapshot {
    snapshot: chorus_store::Snapshot,
    inner: Shared,
}

#[pymethods]
impl Snapshot {
    /// The key's value in the snapshot, or `default`.
    #[pyo3(signature = (full_prefix, key, default = None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        full_prefix: &Bound<'py, PyAny>,
        key: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.inner.check()?;
        let fp = crate::convert::full_prefix(full_prefix)?;
        let key = bytes_arg(key, "key")?;
        let read = chorus_store::read_snapshot(&self.snapshot, &fp, &key).map_err(store_error)?;
        value_or_default(py, &fp, &key, read.as_ref(), default)
    }

    /// Every sibling of the key in the snapshot.
    fn read<'py>(
        &self,
        py: Python<'py>,
        full_prefix: &Bound<'py, PyAny>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.inner.check()?;
        let fp = crate::convert::full_prefix(full_prefix)?;
        let key = bytes_arg(key, "key")?;
        let read = chorus_store::read_snapshot(&self.snapshot, &fp, &key).map_err(store_error)?;
        read_py(py, read.as_ref())
    }

    /// Every key of `scope` in the snapshot.
    #[pyo3(signature = (scope = None, *, r#match = None, tombstones = None))]
    fn iter(
        &self,
        scope: Option<&Bound<'_, PyAny>>,
        r#match: Option<Pattern>,
        tombstones: Option<Tombstones>,
    ) -> PyResult<ItemIter> {
        self.inner.check()?;
        let tombstones = tombstones.is_some_and(|t| t.0);
        let scope = scope_arg(scope)?;
        let opts = IterOptions {
            matching: match_arg(r#match.as_ref().map(|m| m.0.as_str())),
            tombstones,
            ..Default::default()
        };
        let it = self
            .inner
            .meta
            .iter_snapshot(self.snapshot.clone(), &scope, &opts)
            .map_err(store_error)?;
        Ok(ItemIter::new(
            it,
            Mode::Items,
            PyResolver::None,
            false,
            Arc::clone(&self.inner),
        )
        .hiding_reserved(&scope))
    }
}
