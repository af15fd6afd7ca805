//! ferrocorn: a Rust-powered, Gunicorn-compatible application server for Python.
//!
//! # Layout
//! - [`http`]: HTTP/1.x head parser, body decoders and error responses (no Python).
//! - `wsgi`: the PEP 3333 bridge (environ, `wsgi.input`, `start_response`, response writer).
//! - `worker`: the per-process worker loops that run after fork (sync today).
//! - `scoreboard`: the shared-memory table of worker slots that the master reads.
//!
//! `docs/ARCHITECTURE.md` has the process model and the request path.

pub mod http;

use pyo3::prelude::*;

/// The native module `ferrocorn._ferrocorn`.
#[pymodule]
fn _ferrocorn(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
