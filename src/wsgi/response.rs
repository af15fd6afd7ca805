//! The response side of PEP 3333: `start_response`, the legacy `write()` callable and
//! the writer that frames the body (Content-Length, chunked or close-delimited) the
//! way gunicorn's `http/wsgi.py` `Response` does.
//!
//! One [`Response`] lives per request behind an `Arc<Mutex<_>>`, shared by the
//! `start_response` object the app receives, the `write()` callable it returns and the
//! worker that iterates the app's result and writes the access log.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use pyo3::exceptions::{PyAssertionError, PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};

use crate::http::response::{reason_phrase, write_http_date};
use crate::http::Version;
use crate::wsgi::io::{lock, upgrade, ConnRef, SharedConn};

/// Hop-by-hop headers that gunicorn drops from app responses; it writes its own
/// `Server`, `Date`, `Connection` and `Transfer-Encoding`.
const DROPPED_HEADERS: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "server",
    "date",
];

/// How the body is delimited on the wire, decided when the head is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length`: the number of body bytes still allowed. Extra bytes from the
    /// app are dropped silently, as in gunicorn.
    Length(u64),
    /// `Transfer-Encoding: chunked` (HTTP/1.1 without a length).
    Chunked,
    /// HTTP/1.0 without a length: the body ends when the connection closes.
    CloseDelimited,
    /// HEAD, 1xx, 204 and 304 never carry body bytes.
    NoBody,
}

/// Where the response is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// `start_response` has not been called.
    Pending,
    /// Status and headers are set but nothing is on the wire yet.
    Ready,
    /// The head went out with this framing; the status can no longer change.
    Sent(Framing),
    /// The final byte (and chunked terminator) went out.
    Finished,
}

/// The state of one response.
#[derive(Debug)]
pub struct Response {
    conn: ConnRef,
    version: Version,
    is_head: bool,
    /// Whether the connection stays open after this response.
    pub keep_alive: bool,
    /// Where the response is.
    pub phase: Phase,
    /// The status code, 0 until `start_response`.
    pub status_code: u16,
    status: String,
    /// The app's headers after hop-by-hop removal, as sent.
    pub headers: Vec<(String, String)>,
    content_length: Option<u64>,
    /// Body bytes written (for the access log's `b`/`B` atoms).
    pub bytes_sent: u64,
    /// When set by the time the head goes out, the connection closes after this
    /// response (a gthread worker began stopping while the app ran).
    pub force_close: Option<Arc<AtomicBool>>,
    /// Claimed when the head is written; the sync worker's timeout watchdog claims it
    /// too, so exactly one of them answers (`worker::watchdog`).
    pub head_claim: Option<Arc<AtomicBool>>,
}

/// A response shared between the Python objects and the worker.
pub type SharedResponse = Arc<Mutex<Response>>;

/// Locks a response; see [`crate::wsgi::io::lock`].
pub fn lock_response(r: &SharedResponse) -> PyResult<MutexGuard<'_, Response>> {
    r.lock()
        .map_err(|_| PyOSError::new_err("response state poisoned by an earlier panic"))
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(crate::http::parse::is_tchar)
}

/// Header values may hold HTAB, visible ASCII and obs-text; never CR, LF or other CTLs,
/// which would let an app (or data it echoes) split the response.
fn is_valid_value(s: &str) -> bool {
    s.chars()
        .all(|c| c == '\t' || (' '..='~').contains(&c) || ('\u{80}'..='\u{ff}').contains(&c))
}

impl Response {
    /// A response to a request of `version`; `is_head` suppresses the body.
    pub fn new(conn: &SharedConn, version: Version, is_head: bool, keep_alive: bool) -> Self {
        Response {
            conn: Arc::downgrade(conn),
            version,
            is_head,
            keep_alive,
            phase: Phase::Pending,
            status_code: 0,
            status: String::new(),
            headers: Vec::new(),
            content_length: None,
            bytes_sent: 0,
            force_close: None,
            head_claim: None,
        }
    }

    /// Whether the head is already on the wire.
    pub fn headers_sent(&self) -> bool {
        matches!(self.phase, Phase::Sent(_) | Phase::Finished)
    }

    fn set_status_and_headers(&mut self, status: &str, headers: &Bound<'_, PyAny>) -> PyResult<()> {
        let code_part = status.get(..3).unwrap_or("");
        let rest = status.get(3..).unwrap_or("");
        if code_part.len() != 3
            || !code_part.bytes().all(|b| b.is_ascii_digit())
            || !(rest.is_empty() || rest.starts_with(' '))
            || !is_valid_value(status)
        {
            return Err(PyValueError::new_err(format!(
                "Invalid HTTP status line {status:?}: expected three digits and a reason"
            )));
        }
        let code: u16 = code_part
            .parse()
            .map_err(|_| PyValueError::new_err("Invalid HTTP status code"))?;
        let mut parsed = Vec::new();
        let mut content_length = None;
        for item in headers.try_iter()? {
            let item = item?;
            let pair = item.cast::<PyTuple>().map_err(|_| {
                PyTypeError::new_err("response headers must be a list of (name, value) tuples")
            })?;
            if pair.len() != 2 {
                return Err(PyTypeError::new_err(
                    "each response header must be a (name, value) tuple",
                ));
            }
            let name_obj = pair.get_item(0)?;
            let value_obj = pair.get_item(1)?;
            let name = name_obj
                .cast::<PyString>()
                .map_err(|_| PyTypeError::new_err("header name must be a str"))?
                .to_str()?
                .to_owned();
            let value = value_obj
                .cast::<PyString>()
                .map_err(|_| {
                    PyTypeError::new_err(format!("value of header {name:?} must be a str"))
                })?
                .to_str()?;
            if !is_token(&name) {
                return Err(PyValueError::new_err(format!(
                    "Invalid HTTP header name {name:?}"
                )));
            }
            if !is_valid_value(value) {
                // gunicorn 27 answers 500 and does not echo the value.
                return Err(PyValueError::new_err(format!(
                    "Invalid HTTP header value for {name:?}"
                )));
            }
            // Compared in place: a lowercased copy of every name was an allocation
            // per header of every response.
            if DROPPED_HEADERS.iter().any(|d| name.eq_ignore_ascii_case(d)) {
                continue;
            }
            let value = value.trim_matches([' ', '\t']).to_owned();
            if name.eq_ignore_ascii_case("content-length") {
                content_length = Some(value.parse::<u64>().map_err(|_| {
                    PyValueError::new_err(format!("Invalid Content-Length {value:?}"))
                })?);
            }
            parsed.push((name, value));
        }
        self.status_code = code;
        self.status = if rest.is_empty() {
            format!("{code} {}", reason_phrase(code))
        } else {
            status.to_owned()
        };
        self.headers = parsed;
        self.content_length = content_length;
        self.phase = Phase::Ready;
        Ok(())
    }

    /// Takes the right to write the head; fails when the sync worker's timeout
    /// watchdog already answered this request.
    fn claim_head(&self) -> PyResult<()> {
        if self
            .head_claim
            .as_ref()
            .is_some_and(|c| c.swap(true, Ordering::AcqRel))
        {
            return Err(PyOSError::new_err(
                "the timeout watchdog already answered this request",
            ));
        }
        Ok(())
    }

    fn body_allowed(&self) -> bool {
        !(self.is_head
            || (100..200).contains(&self.status_code)
            || self.status_code == 204
            || self.status_code == 304)
    }

    /// Builds the head and picks the framing. `known_total` is the whole body length
    /// when the worker already holds every chunk (a list result): then a
    /// Content-Length is added instead of chunking, which saves the client a parse
    /// step and lets the connection close cleanly.
    fn build_head(&mut self, known_total: Option<u64>) -> (Vec<u8>, Framing) {
        let framing = if !self.body_allowed() {
            Framing::NoBody
        } else if let Some(n) = self.content_length {
            Framing::Length(n)
        } else if let Some(n) = known_total {
            self.headers
                .push(("Content-Length".to_owned(), n.to_string()));
            self.content_length = Some(n);
            Framing::Length(n)
        } else if self.version == Version::Http11 {
            Framing::Chunked
        } else {
            Framing::CloseDelimited
        };
        if matches!(self.status_code, 100..=199 | 204) {
            self.headers
                .retain(|(n, _)| !n.eq_ignore_ascii_case("content-length"));
        }
        let keep_alive = self.keep_alive
            && framing != Framing::CloseDelimited
            && !self
                .force_close
                .as_ref()
                .is_some_and(|f| f.load(Ordering::Relaxed));
        self.keep_alive = keep_alive;
        let mut head = Vec::with_capacity(256);
        head.extend_from_slice(self.version.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(self.status.as_bytes());
        head.extend_from_slice(b"\r\nServer: ferrocorn\r\nDate: ");
        write_http_date(&mut head);
        head.extend_from_slice(if keep_alive {
            b"\r\nConnection: keep-alive\r\n".as_slice()
        } else {
            b"\r\nConnection: close\r\n".as_slice()
        });
        if framing == Framing::Chunked {
            head.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        }
        for (n, v) in &self.headers {
            head.extend_from_slice(n.as_bytes());
            head.extend_from_slice(b": ");
            // Values were checked to be Latin-1 range; write them as Latin-1 bytes.
            head.extend(v.chars().map(|c| c as u32 as u8));
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        (head, framing)
    }

    /// Writes `chunks` as body data, sending the head first if it has not gone out.
    /// `is_final` says these are the last body bytes (the caller then calls
    /// [`Response::finish`]); with the head still unsent it lets us use a length.
    pub fn send(&mut self, py: Python<'_>, chunks: &[&[u8]], is_final: bool) -> PyResult<()> {
        let mut bufs: Vec<&[u8]> = Vec::with_capacity(chunks.len() * 3 + 1);
        let head;
        let framing = match self.phase {
            Phase::Pending => {
                return Err(PyAssertionError::new_err(
                    "the app returned a body before calling start_response",
                ))
            }
            Phase::Ready => {
                self.claim_head()?;
                let total: u64 = chunks.iter().map(|c| c.len() as u64).sum();
                let (h, framing) = self.build_head(is_final.then_some(total));
                head = h;
                bufs.push(&head);
                self.phase = Phase::Sent(framing);
                framing
            }
            Phase::Sent(f) => f,
            Phase::Finished => return Ok(()),
        };
        let mut sizes: Vec<Vec<u8>> = Vec::new();
        let mut remaining = match framing {
            Framing::Length(n) => n,
            _ => u64::MAX,
        };
        if framing == Framing::Chunked {
            sizes = chunks
                .iter()
                .filter(|c| !c.is_empty())
                .map(|c| format!("{:x}\r\n", c.len()).into_bytes())
                .collect();
        }
        let mut size_iter = sizes.iter();
        let mut body = 0u64;
        for c in chunks {
            if c.is_empty() {
                continue;
            }
            match framing {
                Framing::NoBody => {}
                Framing::Length(_) => {
                    let take = (c.len() as u64).min(remaining) as usize;
                    remaining -= take as u64;
                    body += take as u64;
                    bufs.push(&c[..take]);
                }
                Framing::CloseDelimited => {
                    body += c.len() as u64;
                    bufs.push(c);
                }
                Framing::Chunked => {
                    if let Some(s) = size_iter.next() {
                        bufs.push(s);
                    }
                    body += c.len() as u64;
                    bufs.push(c);
                    bufs.push(b"\r\n");
                }
            }
        }
        if let Framing::Length(_) = framing {
            self.phase = Phase::Sent(Framing::Length(remaining));
        }
        self.bytes_sent += body;
        if bufs.is_empty() {
            return Ok(());
        }
        let conn = upgrade(&self.conn)?;
        let res: io::Result<()> = py.detach(|| match conn.lock() {
            Ok(mut c) => c.write_all(&bufs),
            Err(_) => Err(io::Error::other("connection state poisoned")),
        });
        res.map_err(|e| PyOSError::new_err(format!("writing response: {e}")))
    }

    /// Ends the body: sends the head if the app produced no body, and the chunked
    /// terminator.
    pub fn finish(&mut self, py: Python<'_>) -> PyResult<()> {
        if self.phase == Phase::Ready {
            self.send(py, &[], true)?;
        }
        if let Phase::Sent(Framing::Length(rem)) = self.phase {
            // The app sent less than its Content-Length: the client would wait for
            // the rest, so this connection cannot carry another response.
            if rem > 0 {
                self.keep_alive = false;
            }
        }
        if self.phase == Phase::Sent(Framing::Chunked) {
            let conn = upgrade(&self.conn)?;
            let res: io::Result<()> = py.detach(|| match conn.lock() {
                Ok(mut c) => c.write_one(b"0\r\n\r\n"),
                Err(_) => Err(io::Error::other("connection state poisoned")),
            });
            res.map_err(|e| PyOSError::new_err(format!("writing response: {e}")))?;
        }
        if self.headers_sent() {
            self.phase = Phase::Finished;
        }
        Ok(())
    }

    /// Sends the head for a sendfile body of `count` bytes and returns the framing,
    /// so the caller can wrap the file bytes in a chunk if needed.
    pub fn send_head_for_file(&mut self, py: Python<'_>, count: u64) -> PyResult<Framing> {
        if self.phase == Phase::Ready {
            self.claim_head()?;
            let (head, framing) = self.build_head(Some(count));
            self.phase = Phase::Sent(framing);
            let conn = upgrade(&self.conn)?;
            let res = py.detach(|| lock(&conn).map(|mut c| c.write_one(&head)));
            res?.map_err(|e| PyOSError::new_err(format!("writing response: {e}")))?;
        }
        match self.phase {
            Phase::Sent(f) => Ok(f),
            _ => Err(PyAssertionError::new_err("response head not set")),
        }
    }

    /// Records `n` body bytes written by sendfile.
    pub fn note_file_bytes(&mut self, n: u64) {
        self.bytes_sent += n;
        if let Phase::Sent(Framing::Length(rem)) = self.phase {
            self.phase = Phase::Sent(Framing::Length(rem.saturating_sub(n)));
        }
    }

    /// The connection, for the sendfile path.
    pub fn conn(&self) -> PyResult<SharedConn> {
        upgrade(&self.conn)
    }

    /// The status line's text, e.g. "200 OK".
    pub fn status_text(&self) -> &str {
        &self.status
    }
}

/// The `start_response` callable handed to the app.
#[pyclass(module = "ferrocorn._ferrocorn", name = "StartResponse")]
#[derive(Debug)]
pub struct StartResponse {
    resp: SharedResponse,
}

impl StartResponse {
    /// A `start_response` for `resp`.
    pub fn new(resp: SharedResponse) -> Self {
        StartResponse { resp }
    }
}

#[pymethods]
impl StartResponse {
    #[pyo3(signature = (status, headers, exc_info=None))]
    fn __call__(
        &self,
        py: Python<'_>,
        status: &Bound<'_, PyAny>,
        headers: &Bound<'_, PyAny>,
        exc_info: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Write> {
        let mut r = lock_response(&self.resp)?;
        let exc_info = exc_info.filter(|e| !e.is_none());
        match exc_info {
            Some(info) if r.headers_sent() => {
                // PEP 3333: with the head already sent, re-raise the original error.
                let value = info.get_item(1)?;
                drop(r);
                return Err(PyErr::from_value(value));
            }
            Some(_) => {}
            None if r.phase != Phase::Pending => {
                return Err(PyAssertionError::new_err("Response headers already set!"));
            }
            None => {}
        }
        let status = status
            .cast::<PyString>()
            .map_err(|_| PyTypeError::new_err("status must be a str"))?
            .to_str()?;
        r.set_status_and_headers(status, headers)?;
        let _ = py;
        Ok(Write {
            resp: self.resp.clone(),
        })
    }
}

/// The legacy `write()` callable that `start_response` returns.
#[pyclass(module = "ferrocorn._ferrocorn", name = "Write")]
#[derive(Debug)]
pub struct Write {
    resp: SharedResponse,
}

#[pymethods]
impl Write {
    fn __call__(&self, py: Python<'_>, data: &Bound<'_, PyBytes>) -> PyResult<()> {
        let mut r = lock_response(&self.resp)?;
        r.send(py, &[data.as_bytes()], false)
    }
}

impl Response {
    /// The app's Content-Length, if it set one.
    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }
}
