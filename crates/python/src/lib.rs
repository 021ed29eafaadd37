//! Chorus for Python: the native half of the `chorus` package.
//!
//! `chorus.open(path)` opens a data directory with the embedded engine
//! (`chorus-store`), in this process, with no server: the same directory
//! any number of Python, `chorus` and Rust processes share. Every call that
//! can wait (a commit, the writer lock, a watch) releases the GIL. Errors
//! are the `chorus.Error` hierarchy, one class per kind of the table every
//! interface shares (`chorus_core::Kind`), with the message the `chorus`
//! command prints.
//!
//! The Python half (`python/chorus/`) adds the remote client, Open
//! Metadata's API and the value types both handles return.

#![deny(unsafe_code)]

mod convert;
mod docs;
mod errors;
mod om;
mod store;
mod watch;

use pyo3::prelude::*;

/// The module `chorus._chorus`.
#[pymodule]
#[pyo3(name = "_chorus")]
fn chorus_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    om::register(m)?;
    m.add_function(wrap_pyfunction!(store::open, m)?)?;
    m.add_function(wrap_pyfunction!(convert::split_full_prefix, m)?)?;
    m.add_function(wrap_pyfunction!(convert::check_names, m)?)?;
    m.add_class::<store::Store>()?;
    m.add_class::<store::Transaction>()?;
    m.add_class::<store::Snapshot>()?;
    m.add_class::<store::ItemIter>()?;
    m.add_class::<docs::Docs>()?;
    m.add_class::<docs::Oplogs>()?;
    m.add_class::<watch::WatchIter>()?;
    Ok(())
}
