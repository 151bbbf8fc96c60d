//! `sluice._native`: the native half of the `sluice` Python package, over
//! the Rust client (`sluice-client`). Private: Python code imports `sluice`,
//! whose typed facade (`client-py/python/sluice/__init__.py`) wraps it.
//!
//! Module map: `runtime` runs futures for blocking calls (GIL released,
//! Ctrl-C honoured) and keeps per-process state fork-safe; `conn` is one
//! process's connection and session; `client` the `Client` class and its
//! iterators; `buffer` the zero-copy `Buffer`; `writer` the streaming
//! upload; `convert` errors, metadata and ranges for Python.

mod buffer;
mod client;
mod conn;
mod convert;
mod runtime;
mod writer;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<client::Client>()?;
    m.add_class::<client::ListIter>()?;
    m.add_class::<client::FetchIter>()?;
    m.add_class::<buffer::Buffer>()?;
    m.add_class::<writer::Writer>()?;
    m.add("DEFAULT_ADDRESS", sluice_client::DEFAULT_ADDRESS)?;
    m.add("ADDRESS_ENV", sluice_client::ADDRESS_ENV)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
