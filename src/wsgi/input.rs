//! `wsgi.input`: the request body, decoded from the connection as the app reads it.
//!
//! Nothing is buffered ahead of the app: each `read` pulls only as many bytes from the
//! socket as it needs (streaming, as PEP 3333 expects), decoding Content-Length or
//! chunked framing through [`crate::http::Decoder`]. Socket reads run with the GIL
//! released. A framing error is remembered so the worker can answer with gunicorn's
//! status (400) instead of a generic 500 when the app lets the exception escape.

use std::sync::Mutex;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::http::{Decoder, HttpError};
use crate::wsgi::io::{lock, upgrade, ConnRef, SharedConn};
use std::sync::Arc;

pyo3::create_exception!(
    _ferrocorn,
    InvalidRequestBody,
    PyOSError,
    "The request body violates HTTP framing (bad chunk, early EOF)."
);

/// The decoding state behind one `wsgi.input`.
#[derive(Debug)]
pub struct BodyState {
    conn: ConnRef,
    decoder: Decoder,
    /// Decoded bytes not yet handed to the app: `out[out_pos..]`.
    out: Vec<u8>,
    out_pos: usize,
    /// The first framing error, kept for the worker's error response.
    pub error: Option<HttpError>,
}

impl BodyState {
    /// A body decoded from `conn` with `decoder`.
    pub fn new(conn: &SharedConn, decoder: Decoder) -> BodyState {
        BodyState {
            conn: Arc::downgrade(conn),
            decoder,
            out: Vec::new(),
            out_pos: 0,
            error: None,
        }
    }

    fn available(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Whether every body byte has been decoded (the request is fully read).
    pub fn is_complete(&self) -> bool {
        self.decoder.is_done()
    }

    /// Decodes until at least `want` bytes are available or the body ends.
    /// `stop_at_newline` ends early once a `\n` is available (for readline).
    fn fill(&mut self, py: Python<'_>, want: usize, stop_at_newline: bool) -> PyResult<()> {
        if let Some(err) = &self.error {
            return Err(InvalidRequestBody::new_err(err.to_string()));
        }
        if self.out_pos > 0 && self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        let shared = upgrade(&self.conn)?;
        let mut guard = lock(&shared)?;
        while self.available() < want && !self.decoder.is_done() {
            if stop_at_newline && memchr::memchr(b'\n', &self.out[self.out_pos..]).is_some() {
                break;
            }
            let decoded = match self.decoder.decode(guard.pending()) {
                Ok(d) => d,
                Err(e) => {
                    let msg = e.to_string();
                    self.error = Some(e);
                    return Err(InvalidRequestBody::new_err(msg));
                }
            };
            if !decoded.data.is_empty() {
                self.out
                    .extend_from_slice(&guard.pending()[decoded.data.clone()]);
            }
            guard.consume(decoded.consumed);
            if decoded.consumed > 0 || self.decoder.is_done() {
                continue;
            }
            // No progress without more bytes: read from the socket, GIL released.
            let conn = &mut *guard;
            let n = py.detach(|| conn.fill());
            match n {
                Ok(0) => {
                    // gunicorn 27 answers a chunked body cut short where a CRLF was
                    // due with 400; elsewhere it is a client that went away.
                    let err = self.decoder.eof_error(guard.pending());
                    let msg = err.to_string();
                    self.error = Some(err);
                    return Err(InvalidRequestBody::new_err(msg));
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                    drop(guard);
                    py.check_signals()?;
                    guard = lock(&shared)?;
                }
                Err(e) => {
                    self.error = Some(HttpError::IncompleteBody);
                    return Err(PyOSError::new_err(format!("reading request body: {e}")));
                }
            }
        }
        Ok(())
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.available());
        let start = self.out_pos;
        self.out_pos += n;
        &self.out[start..start + n]
    }

    /// Reads and drops the rest of the body, so a kept-alive connection is positioned
    /// at the next request. Returns false if the body could not be read whole.
    pub fn drain(&mut self, py: Python<'_>, max: usize) -> bool {
        let mut seen = 0usize;
        while !self.decoder.is_done() {
            if self.fill(py, 64 * 1024, false).is_err() {
                return false;
            }
            seen += self.available();
            self.out_pos = self.out.len();
            if seen > max {
                return false;
            }
        }
        true
    }
}

/// A size argument as PEP 3333 and io allow it: None or a negative number mean "all".
fn size_arg(size: Option<i64>) -> Option<usize> {
    match size {
        Some(n) if n >= 0 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        _ => None,
    }
}

/// The `wsgi.input` object.
#[pyclass(module = "ferrocorn._ferrocorn", name = "Input")]
#[derive(Debug)]
pub struct Input {
    /// Shared with the worker, which inspects `error` and drains the rest.
    pub state: Mutex<BodyState>,
}

impl Input {
    fn with_state<R>(&self, f: impl FnOnce(&mut BodyState) -> PyResult<R>) -> PyResult<R> {
        let mut st = self
            .state
            .lock()
            .map_err(|_| PyValueError::new_err("wsgi.input used after a panic"))?;
        f(&mut st)
    }
}

#[pymethods]
impl Input {
    /// Reads up to `size` bytes, or the whole remaining body.
    #[pyo3(signature = (size=None))]
    fn read<'py>(&self, py: Python<'py>, size: Option<i64>) -> PyResult<Bound<'py, PyBytes>> {
        self.with_state(|st| {
            let want = size_arg(size).unwrap_or(usize::MAX);
            if want == 0 {
                return Ok(PyBytes::new(py, b""));
            }
            st.fill(py, want, false)?;
            Ok(PyBytes::new(py, st.take(want)))
        })
    }

    /// Reads one line (through `\n`), at most `size` bytes.
    #[pyo3(signature = (size=None))]
    fn readline<'py>(&self, py: Python<'py>, size: Option<i64>) -> PyResult<Bound<'py, PyBytes>> {
        self.with_state(|st| readline(py, st, size_arg(size)))
    }

    /// Reads all remaining lines; stops once `hint` bytes were returned.
    #[pyo3(signature = (hint=None))]
    fn readlines<'py>(&self, py: Python<'py>, hint: Option<i64>) -> PyResult<Bound<'py, PyList>> {
        self.with_state(|st| {
            let hint = size_arg(hint).filter(|h| *h > 0);
            let lines = PyList::empty(py);
            let mut total = 0usize;
            loop {
                let line = readline(py, st, None)?;
                let len = line.as_bytes().len();
                if len == 0 {
                    break;
                }
                lines.append(line)?;
                total += len;
                if hint.is_some_and(|h| total >= h) {
                    break;
                }
            }
            Ok(lines)
        })
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        self.with_state(|st| {
            let line = readline(py, st, None)?;
            Ok(if line.as_bytes().is_empty() {
                None
            } else {
                Some(line)
            })
        })
    }
}

fn readline<'py>(
    py: Python<'py>,
    st: &mut BodyState,
    limit: Option<usize>,
) -> PyResult<Bound<'py, PyBytes>> {
    let limit = limit.unwrap_or(usize::MAX);
    if limit == 0 {
        return Ok(PyBytes::new(py, b""));
    }
    let mut want = 8192usize.min(limit);
    loop {
        st.fill(py, want, true)?;
        let pending = &st.out[st.out_pos..];
        if let Some(i) = memchr::memchr(b'\n', pending) {
            let n = (i + 1).min(limit);
            return Ok(PyBytes::new(py, st.take(n)));
        }
        if pending.len() >= limit || st.decoder.is_done() {
            return Ok(PyBytes::new(py, st.take(limit)));
        }
        want = want.saturating_mul(2).min(limit);
        if want <= pending.len() {
            want = pending.len() + 1;
        }
    }
}
