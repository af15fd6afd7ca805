//! ferrocorn: a Rust-powered, Gunicorn-compatible application server for Python.
//!
//! # Layout
//! - [`http`]: HTTP/1.x head parser, body decoders and error responses (no Python).
//! - [`net`]: inherited listeners and accepted streams, TCP or Unix.
//! - [`wsgi`]: the PEP 3333 bridge (environ, `wsgi.input`, `start_response`, writer).
//! - [`log`]: the access log (gunicorn's format atoms, escaped).
//! - [`worker`]: the per-process worker loops that run after fork (sync, gthread).
//! - [`scoreboard`]: per-worker slots in shared memory (heartbeats, current request).
//!
//! The master process, configuration and app loading are Python (`python/ferrocorn`);
//! `docs/ARCHITECTURE.md` has the process model and the request path.

pub mod http;
pub mod log;
pub mod net;
pub mod scoreboard;
pub mod worker;
pub mod wsgi;

use pyo3::prelude::*;

/// The native module `ferrocorn._ferrocorn`.
#[pymodule]
fn _ferrocorn(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<worker::sync::SyncWorker>()?;
    m.add_class::<worker::gthread::GthreadWorker>()?;
    m.add_class::<worker::asgi::AsgiWorker>()?;
    m.add_class::<worker::asgi::Conn>()?;
    m.add_class::<scoreboard::Scoreboard>()?;
    m.add_class::<wsgi::file_wrapper::FileWrapper>()?;
    m.add_class::<wsgi::input::Input>()?;
    m.add_class::<wsgi::response::StartResponse>()?;
    m.add_class::<wsgi::response::Write>()?;
    m.add(
        "InvalidRequestBody",
        m.py().get_type::<wsgi::input::InvalidRequestBody>(),
    )?;
    Ok(())
}
