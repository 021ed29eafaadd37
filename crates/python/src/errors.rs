//! The `chorus.Error` hierarchy: one class per kind of failure, each
//! instance carrying the stable `code` and the `exit_code` of the table
//! every interface shares (`chorus_core::Kind`), and the message the
//! `chorus` command prints for the same failure.

use chorus_core::{Kind, NameError};
use chorus_store::Error as StoreError;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

pyo3::create_exception!(
    chorus,
    Error,
    PyException,
    "Every Chorus failure: `code` is the stable code every interface shows, `exit_code` what the `chorus` command exits with."
);
pyo3::create_exception!(chorus, NotFound, Error, "Absent or deleted (exit code 1).");
pyo3::create_exception!(
    chorus,
    InvalidInput,
    Error,
    "A wrong name, key, value, type or parameter; nothing was written (exit code 2)."
);
pyo3::create_exception!(
    chorus,
    Unauthorized,
    Error,
    "No token, or one that is forged, expired or revoked (exit code 2)."
);
pyo3::create_exception!(
    chorus,
    Forbidden,
    Error,
    "The token does not allow this (exit code 2)."
);
pyo3::create_exception!(
    chorus,
    Conflict,
    Error,
    "A concurrent edit, a stale revision, an existing name, or siblings no resolver settled (exit code 3)."
);
pyo3::create_exception!(
    chorus,
    WriteConflict,
    Conflict,
    "Keys a transaction read changed before it committed; nothing was written. `keys` lists them as (full_prefix, key)."
);
pyo3::create_exception!(
    chorus,
    Busy,
    Error,
    "Over a limit for now: retry after a moment (exit code 5)."
);
pyo3::create_exception!(
    chorus,
    LockTimeout,
    Busy,
    "The writer lock was not free in time (exit code 5)."
);
pyo3::create_exception!(
    chorus,
    StorageError,
    Error,
    "The disk or the log failed (exit code 4)."
);
pyo3::create_exception!(
    chorus,
    Corruption,
    StorageError,
    "The log holds a damaged frame: run `chorus check`, then `chorus repair` (exit code 4)."
);
pyo3::create_exception!(
    chorus,
    InternalError,
    Error,
    "A broken invariant inside Chorus: a bug, not the caller's fault (exit code 4)."
);

pyo3::create_exception!(
    chorus,
    NotServed,
    Error,
    "The full prefix is in a channel this node does not serve: ask a node that serves it (exit code 1). `channel` names the channel, `nodes` the ids of the nodes that serve it (docs/channels.md)."
);
pyo3::create_exception!(
    chorus,
    Unreachable,
    Error,
    "A node the request was forwarded to could not be reached: retry, or ask another node (exit code 5)."
);

/// The class raised for a kind.
fn class_of(py: Python<'_>, kind: Kind) -> Bound<'_, pyo3::types::PyType> {
    match kind {
        Kind::NotFound => py.get_type::<NotFound>(),
        Kind::BadRequest | Kind::MethodNotAllowed | Kind::TooLarge | Kind::UriTooLong => {
            py.get_type::<InvalidInput>()
        }
        Kind::Unauthorized => py.get_type::<Unauthorized>(),
        Kind::Forbidden => py.get_type::<Forbidden>(),
        Kind::Conflict => py.get_type::<Conflict>(),
        Kind::Busy | Kind::RateLimited => py.get_type::<Busy>(),
        Kind::LockTimeout => py.get_type::<LockTimeout>(),
        Kind::Storage => py.get_type::<StorageError>(),
        Kind::Internal => py.get_type::<InternalError>(),
        Kind::NotServed => py.get_type::<NotServed>(),
        Kind::Unreachable => py.get_type::<Unreachable>(),
    }
}

/// An exception of `class`, with `kind`'s code and exit code.
fn raise(class: Bound<'_, pyo3::types::PyType>, kind: Kind, message: String) -> PyErr {
    match class.call1((message.clone(),)) {
        Ok(instance) => {
            let tagged = instance
                .setattr("code", kind.code())
                .and_then(|()| instance.setattr("exit_code", kind.exit_code()));
            match tagged {
                Ok(()) => PyErr::from_value(instance),
                Err(e) => e,
            }
        }
        Err(_) => Error::new_err(message),
    }
}

/// An exception of `kind` with `message`.
pub(crate) fn of_kind(kind: Kind, message: impl Into<String>) -> PyErr {
    let message = message.into();
    Python::attach(|py| raise(class_of(py, kind), kind, message))
}

/// A wrong argument: `InvalidInput`.
pub(crate) fn invalid(message: impl Into<String>) -> PyErr {
    of_kind(Kind::BadRequest, message)
}

/// The exception for an engine error: its kind's class (`WriteConflict`
/// and `Corruption` more precisely), its message, and for a write conflict
/// the keys.
pub(crate) fn store_error(e: StoreError) -> PyErr {
    let kind = e.kind();
    let message = e.to_string();
    Python::attach(|py| match &e {
        StoreError::WriteConflict { keys } => {
            let err = raise(py.get_type::<WriteConflict>(), kind, message);
            let listed: Vec<Bound<'_, PyTuple>> = keys
                .iter()
                .filter_map(|k| {
                    PyTuple::new(
                        py,
                        [
                            k.full_prefix.to_string().into_pyobject(py).ok()?.into_any(),
                            PyBytes::new(py, &k.key).into_any(),
                        ],
                    )
                    .ok()
                })
                .collect();
            if let Ok(list) = PyList::new(py, listed) {
                // The message already names the keys; the attribute is a
                // convenience, so failing to set it does not hide the error.
                let _ = err.value(py).setattr("keys", list);
            }
            err
        }
        StoreError::Corruption { .. } => raise(py.get_type::<Corruption>(), kind, message),
        StoreError::NotServed { channel, nodes, .. } => {
            let err = raise(py.get_type::<NotServed>(), kind, message);
            let ids: Vec<String> = nodes.iter().map(ToString::to_string).collect();
            // The message names them too; the attributes are a convenience.
            let _ = err.value(py).setattr("channel", channel.as_str());
            let _ = err.value(py).setattr("nodes", ids);
            err
        }
        _ => raise(class_of(py, kind), kind, message),
    })
}

/// A refused name or key: `InvalidInput`.
pub(crate) fn name_error(e: NameError) -> PyErr {
    invalid(e.to_string())
}

/// `chorus.error_for(code, message)`: the exception a remote node's error
/// (its stable code and message) becomes, the same class the embedded
/// engine raises for that kind.
#[pyfunction]
fn error_for(py: Python<'_>, code: &str, message: String) -> PyErr {
    match Kind::ALL.iter().find(|k| k.code() == code) {
        Some(kind) => raise(class_of(py, *kind), *kind, message),
        None => raise(
            py.get_type::<Error>(),
            Kind::Internal,
            format!("{message} (code {code:?})"),
        ),
    }
}

/// `chorus.kinds()`: every kind as `(code, exit_code, http_status)`.
#[pyfunction]
fn kinds() -> Vec<(&'static str, u8, u16)> {
    Kind::ALL
        .iter()
        .map(|k| (k.code(), k.exit_code(), k.http_status()))
        .collect()
}

/// Adds the classes (with their default code and exit code) and the two
/// functions to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let classes: [(&str, Bound<'_, pyo3::types::PyType>, Kind); 14] = [
        ("Error", py.get_type::<Error>(), Kind::Internal),
        ("NotFound", py.get_type::<NotFound>(), Kind::NotFound),
        (
            "InvalidInput",
            py.get_type::<InvalidInput>(),
            Kind::BadRequest,
        ),
        (
            "Unauthorized",
            py.get_type::<Unauthorized>(),
            Kind::Unauthorized,
        ),
        ("Forbidden", py.get_type::<Forbidden>(), Kind::Forbidden),
        ("Conflict", py.get_type::<Conflict>(), Kind::Conflict),
        (
            "WriteConflict",
            py.get_type::<WriteConflict>(),
            Kind::Conflict,
        ),
        ("Busy", py.get_type::<Busy>(), Kind::Busy),
        (
            "LockTimeout",
            py.get_type::<LockTimeout>(),
            Kind::LockTimeout,
        ),
        ("StorageError", py.get_type::<StorageError>(), Kind::Storage),
        ("Corruption", py.get_type::<Corruption>(), Kind::Storage),
        (
            "InternalError",
            py.get_type::<InternalError>(),
            Kind::Internal,
        ),
        ("NotServed", py.get_type::<NotServed>(), Kind::NotServed),
        (
            "Unreachable",
            py.get_type::<Unreachable>(),
            Kind::Unreachable,
        ),
    ];
    for (name, class, kind) in classes {
        class.setattr("code", kind.code())?;
        class.setattr("exit_code", kind.exit_code())?;
        m.add(name, class)?;
    }
    m.add_function(wrap_pyfunction!(error_for, m)?)?;
    m.add_function(wrap_pyfunction!(kinds, m)?)?;
    Ok(())
}
