//! The WSGI (PEP 3333) bridge: turns one parsed request on a connection into an app
//! call and writes what the app returns.
//!
//! [`Handler::handle`] is the request path shared by the worker classes: environ
//! ([`environ`]), `wsgi.input` ([`input`]), `start_response` and the body writer
//! ([`response`]), `wsgi.file_wrapper` with sendfile ([`file_wrapper`]), the error
//! rules (500 before the head went out, close after), and the access log line.

pub mod environ;
pub mod file_wrapper;
pub mod input;
pub mod io;
pub mod response;

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use crate::http::response::error_response;
use crate::http::{Decoder, HttpError, Limits, RequestHead, Version};
use crate::log::{AccessLog, Record};
use crate::net::Peer;
use environ::{EnvironBuilder, EnvironError, ListenerInfo};
use file_wrapper::FileWrapper;
use input::{BodyState, Input};
use io::SharedConn;
use response::{lock_response, Framing, Response, SharedResponse, StartResponse};

/// What the connection can do after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The response was complete and the client may send another request.
    KeepAlive,
    /// The connection must be closed. `clean` says the request was read whole and
    /// nothing else is buffered, so a plain close cannot provoke a RST.
    Close {
        /// Whether the request was fully consumed.
        clean: bool,
    },
}

/// gunicorn's `pre_request` and `post_request` hooks, present only when the config
/// defines them, so requests pay nothing for hooks nobody set.
#[derive(Debug)]
pub struct Hooks {
    /// The Python `Worker` object hooks receive.
    pub worker: Py<PyAny>,
    /// `pre_request(worker, req)`, if set.
    pub pre: Option<Py<PyAny>>,
    /// `post_request(worker, req, environ, resp)`, if set.
    pub post: Option<Py<PyAny>>,
    /// Builds the `req` object: `(method, uri, path, query, fragment, version, headers)`.
    pub make_request: Py<PyAny>,
    /// Builds the `resp` object: `(status, status_code, headers, sent)`.
    pub make_response: Py<PyAny>,
}

impl Hooks {
    fn request<'py>(&self, py: Python<'py>, head: &RequestHead) -> PyResult<Bound<'py, PyAny>> {
        let (path, query, fragment) = head.split_target();
        let minor = match head.version {
            Version::Http10 => 0,
            Version::Http11 => 1,
        };
        let headers: Vec<(String, String)> = head
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.to_ascii_uppercase(),
                    v.iter().map(|&b| char::from(b)).collect(),
                )
            })
            .collect();
        self.make_request.bind(py).call1((
            head.method.as_str(),
            head.target.as_str(),
            path,
            query,
            fragment,
            (1, minor),
            headers,
        ))
    }
}

/// Everything a worker needs to serve WSGI requests; one per worker process.
#[derive(Debug)]
pub struct Handler {
    /// The WSGI application.
    pub app: Py<PyAny>,
    /// Environ construction.
    pub environ: EnvironBuilder,
    /// The access log, when enabled.
    pub access: Option<AccessLog>,
    /// The Python logger for the error log (`warning`, `error`, `debug` methods).
    pub log: Py<PyAny>,
    /// Request limits, also bounding chunk-size lines.
    pub limits: Limits,
    /// Whether `sendfile(2)` may be used for `wsgi.file_wrapper`.
    pub sendfile: bool,
    /// Request hooks from the config file, if any.
    pub hooks: Option<Hooks>,
    /// A `SystemExit`/`KeyboardInterrupt` that escaped the app (raised by a signal
    /// handler while it ran); the worker re-raises it once the response is settled.
    pub pending_exit: Option<PyErr>,
    /// Set by a worker that starts stopping while requests run (gthread): responses
    /// whose head has not gone out yet then say `Connection: close`.
    pub force_close: Option<Arc<AtomicBool>>,
    /// Set by the sync worker per request: the claim on answering it, shared with the
    /// timeout watchdog (see `worker::watchdog`).
    pub head_claim: Option<Arc<AtomicBool>>,
    /// The status of the last request handled (0 when it got no response), for the
    /// scoreboard's counters.
    pub last_status: u16,
}

impl Handler {
    /// Claims the right to write an answer outside the response writer (error
    /// pages); false when the timeout watchdog already answered.
    fn claim_answer(&self) -> bool {
        !self
            .head_claim
            .as_ref()
            .is_some_and(|c| c.swap(true, std::sync::atomic::Ordering::AcqRel))
    }

    /// Takes the exit request left by the last request, if any.
    pub fn take_exit(&mut self) -> Option<PyErr> {
        self.pending_exit.take()
    }

    fn log_msg(&self, py: Python<'_>, level: &str, msg: &str) {
        if let Err(e) = self.log.bind(py).call_method1(level, (msg,)) {
            e.print(py);
        }
    }

    fn log_exc(&self, py: Python<'_>, msg: &str, err: &PyErr) {
        let kwargs = PyDict::new(py);
        // logging formats the traceback from exc_info; pass the full triple, since the
        // exception value alone may not carry its traceback yet.
        let exc_info = (err.get_type(py), err.value(py), err.traceback(py));
        let logged = kwargs.set_item("exc_info", exc_info).and_then(|()| {
            self.log
                .bind(py)
                .call_method("error", (msg,), Some(&kwargs))
        });
        if let Err(e) = logged {
            err.print(py);
            e.print(py);
        }
    }

    /// Answers a request that failed before the app ran, gunicorn style.
    pub fn reject(&self, py: Python<'_>, conn: &SharedConn, peer: &Peer, err: &HttpError) {
        let ip = peer.host();
        if !err.wants_response() {
            self.log_msg(
                py,
                "debug",
                &format!("Ignored premature client disconnection: {err}"),
            );
            return;
        }
        self.log_msg(
            py,
            "warning",
            &format!("Invalid request from ip={ip}: {err}"),
        );
        let bytes = err.to_response();
        write_now(py, conn, &bytes);
    }

    /// Serves one request whose head was parsed from `conn`.
    pub fn handle(
        &mut self,
        py: Python<'_>,
        conn: &SharedConn,
        head: &RequestHead,
        peer: &Peer,
        listener: &ListenerInfo,
        keep_alive: bool,
    ) -> Outcome {
        let started = Instant::now();
        // Until a status is known: the early exits below answer 500 or nothing.
        self.last_status = 500;
        if head.expect_continue && head.version == Version::Http11 {
            // gunicorn writes the interim response eagerly, before the app runs
            // (measured on 27.0.1); clients that wait for it then send the body.
            let sent = py.detach(|| {
                conn.lock()
                    .map(|mut c| {
                        c.write_one(b"HTTP/1.1 100 Continue\r\n\r\n").is_ok()
                            && c.flush_out().is_ok()
                    })
                    .unwrap_or(false)
            });
            if !sent {
                self.last_status = 0;
                return Outcome::Close { clean: false };
            }
        }
        let decoder = Decoder::new(head.body, &self.limits);
        let input = match Bound::new(
            py,
            Input {
                state: Mutex::new(BodyState::new(conn, decoder)),
            },
        ) {
            Ok(i) => i,
            Err(e) => {
                self.log_exc(py, "Error creating wsgi.input", &e);
                return Outcome::Close { clean: false };
            }
        };
        let is_head = head.method == "HEAD";
        let mut response =
            Response::new(conn, head.version, is_head, keep_alive && head.keep_alive);
        response.force_close = self.force_close.clone();
        response.head_claim = self.head_claim.clone();
        let resp: SharedResponse = Arc::new(Mutex::new(response));

        let hook_req = match &self.hooks {
            Some(h) => match h.request(py, head) {
                Ok(req) => Some(req),
                Err(e) => {
                    self.log_exc(py, "Exception building the hook request object", &e);
                    None
                }
            },
            None => None,
        };
        if let (Some(h), Some(req)) = (&self.hooks, &hook_req) {
            if let Some(pre) = &h.pre {
                if let Err(e) = pre.bind(py).call1((h.worker.bind(py), req)) {
                    self.log_exc(
                        py,
                        &format!("Error handling request {} {}", head.method, head.target),
                        &e,
                    );
                    write_now(py, conn, &error_response(500, "Internal Server Error", ""));
                    return Outcome::Close { clean: false };
                }
            }
        }

        let environ = match self
            .environ
            .build(py, head, peer, listener, input.clone().into_any())
        {
            Ok(env) => env,
            Err(EnvironError::Http(e)) => {
                self.last_status = e.status();
                self.reject(py, conn, peer, &e);
                return Outcome::Close { clean: false };
            }
            Err(EnvironError::ScriptName(msg)) => {
                let bytes = error_response(
                    500,
                    "Internal Server Error",
                    &format!("Configuration problem: {msg}"),
                );
                self.log_msg(py, "warning", &format!("Configuration problem: {msg}"));
                write_now(py, conn, &bytes);
                return Outcome::Close { clean: false };
            }
            Err(EnvironError::Py(e)) => {
                self.log_exc(py, "Error building the WSGI environ", &e);
                return Outcome::Close { clean: false };
            }
        };

        let result = Bound::new(py, StartResponse::new(resp.clone()))
            .and_then(|sr| self.app.bind(py).call1((environ.clone(), sr)));
        let outcome = match result {
            Ok(iterable) => {
                let written = self.write_result(py, &resp, &iterable);
                let closed = close_iterable(py, &iterable);
                match written.and(closed) {
                    Ok(()) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        let mut failed_status = None;
        if let Err(err) = outcome {
            failed_status = Some(self.app_error(py, conn, head, peer, &resp, &input, &err));
            let is_exit = err.is_instance_of::<pyo3::exceptions::PySystemExit>(py)
                || err.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py);
            if is_exit {
                self.pending_exit = Some(err);
            }
        }

        let (status, keep, bytes_sent, headers) = match lock_response(&resp) {
            Ok(r) => (
                failed_status.unwrap_or(r.status_code),
                r.keep_alive && failed_status.is_none(),
                r.headers_sent().then_some(r.bytes_sent),
                r.headers.clone(),
            ),
            Err(_) => (500, false, None, Vec::new()),
        };
        self.last_status = status;
        if let (Some(h), Some(req)) = (&self.hooks, &hook_req) {
            if let Some(post) = &h.post {
                let status_text = lock_response(&resp)
                    .map(|r| r.status_text().to_owned())
                    .unwrap_or_default();
                let called = h
                    .make_response
                    .bind(py)
                    .call1((
                        status_text,
                        status,
                        headers.clone(),
                        bytes_sent.unwrap_or(0),
                    ))
                    .and_then(|r| post.bind(py).call1((h.worker.bind(py), req, &environ, r)));
                if let Err(e) = called {
                    self.log_exc(py, "Exception in post_request hook", &e);
                }
            }
        }
        if let Some(log) = &self.access {
            let (path, query, _) = head.split_target();
            let decoded_path = crate::http::percent_decode(path);
            let decoded_path: String = decoded_path.iter().map(|&b| char::from(b)).collect();
            let remote = peer.host();
            // gunicorn lower-cases `{var}e` names and matches them case-insensitively.
            let env_lookup = |k: &str| -> Option<String> {
                let value = match environ.get_item(k).ok().flatten() {
                    Some(v) => Some(v),
                    None => environ.iter().find_map(|(key, v)| {
                        key.str()
                            .ok()
                            .filter(|s| s.to_string().eq_ignore_ascii_case(k))
                            .map(|_| v)
                    }),
                };
                value.and_then(|v| v.str().ok().map(|s| s.to_string()))
            };
            log.write(&Record {
                remote_addr: remote,
                method: &head.method,
                raw_uri: &head.target,
                path: &decoded_path,
                query,
                protocol: head.version.as_str(),
                request_headers: &head.headers,
                status,
                response_headers: &headers,
                bytes_sent: Some(bytes_sent.unwrap_or(0)),
                duration: started.elapsed(),
                environ: &env_lookup,
            });
        }
        let complete = input
            .borrow()
            .state
            .lock()
            .map(|st| st.is_complete())
            .unwrap_or(false);
        if !keep {
            let nothing_buffered = conn.lock().map(|c| c.pending().is_empty()).unwrap_or(false);
            return Outcome::Close {
                clean: complete && nothing_buffered && failed_status.is_none(),
            };
        }
        // A kept-alive connection must be positioned at the next request: read and
        // drop whatever body the app left unread (bounded, like gunicorn 27's 64 KiB).
        let drained = complete
            || input
                .borrow()
                .state
                .lock()
                .map(|mut st| st.drain(py, 64 * 1024))
                .unwrap_or(false);
        if drained {
            Outcome::KeepAlive
        } else {
            Outcome::Close { clean: false }
        }
    }

    /// Applies gunicorn's error rules and returns the status for the access log.
    #[allow(clippy::too_many_arguments)]
    fn app_error(
        &self,
        py: Python<'_>,
        conn: &SharedConn,
        head: &RequestHead,
        peer: &Peer,
        resp: &SharedResponse,
        input: &Bound<'_, Input>,
        err: &PyErr,
    ) -> u16 {
        let mut sent = lock_response(resp)
            .map(|r| r.headers_sent())
            .unwrap_or(true);
        if !sent && !self.claim_answer() {
            // The timeout watchdog answered already; only log.
            sent = true;
        }
        let body_error = input
            .borrow()
            .state
            .lock()
            .ok()
            .and_then(|st| st.error.clone());
        if let Some(http_err) = body_error {
            if !sent {
                self.reject(py, conn, peer, &http_err);
            }
            return http_err.status();
        }
        if err.is_instance_of::<pyo3::exceptions::PyOSError>(py) && sent {
            self.log_msg(
                py,
                "debug",
                &format!("Client went away while sending the response: {err}"),
            );
            return 500;
        }
        self.log_exc(
            py,
            &format!("Error handling request {} {}", head.method, head.target),
            err,
        );
        if !sent {
            let bytes = error_response(500, "Internal Server Error", "");
            write_now(py, conn, &bytes);
        }
        500
    }

    /// Writes the app's iterable: lists and tuples in one go, file wrappers by
    /// sendfile, anything else item by item as it is produced.
    fn write_result(
        &self,
        py: Python<'_>,
        resp: &SharedResponse,
        result: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        if let Ok(fw) = result.cast::<FileWrapper>() {
            if self.sendfile && try_sendfile(py, resp, &fw.borrow())? {
                return Ok(());
            }
        }
        if let Ok(list) = result.cast::<PyList>() {
            let items: Vec<Bound<'_, PyAny>> = list.iter().collect();
            return send_all(py, resp, &items);
        }
        if let Ok(tuple) = result.cast::<PyTuple>() {
            let items: Vec<Bound<'_, PyAny>> = tuple.iter().collect();
            return send_all(py, resp, &items);
        }
        for item in result.try_iter()? {
            let item = item?;
            let bytes = item.cast::<PyBytes>().map_err(|_| {
                PyTypeError::new_err(format!(
                    "the app yielded {} instead of bytes",
                    item.get_type()
                        .name()
                        .map(|n| n.to_string())
                        .unwrap_or_default()
                ))
            })?;
            if bytes.as_bytes().is_empty() {
                continue;
            }
            // The lock is taken per item, never across the app's `next()`, which may
            // itself call `write()` or `start_response`.
            lock_response(resp)?.send(py, &[bytes.as_bytes()], false)?;
        }
        lock_response(resp)?.finish(py)
    }
}

/// Writes `bytes` to the client with the GIL released; failures mean the client is
/// gone, which the caller handles by closing.
pub fn write_now(py: Python<'_>, conn: &SharedConn, bytes: &[u8]) -> bool {
    py.detach(|| match conn.lock() {
        Ok(mut c) => c.write_one(bytes).is_ok(),
        Err(_) => false,
    })
}

fn send_all(py: Python<'_>, resp: &SharedResponse, items: &[Bound<'_, PyAny>]) -> PyResult<()> {
    let mut slices: Vec<&[u8]> = Vec::with_capacity(items.len());
    for item in items {
        let b = item.cast::<PyBytes>().map_err(|_| {
            PyTypeError::new_err(format!(
                "the app returned {} in its body instead of bytes",
                item.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        })?;
        slices.push(b.as_bytes());
    }
    let mut r = lock_response(resp)?;
    r.send(py, &slices, true)?;
    r.finish(py)
}

/// PEP 3333: the server must call `close()` on the iterable if it has one, whatever
/// happened while iterating.
fn close_iterable(py: Python<'_>, iterable: &Bound<'_, PyAny>) -> PyResult<()> {
    if iterable.is_instance_of::<PyList>() || iterable.is_instance_of::<PyTuple>() {
        return Ok(());
    }
    if iterable.hasattr(pyo3::intern!(py, "close"))? {
        iterable.call_method0(pyo3::intern!(py, "close"))?;
    }
    Ok(())
}

/// Sends a `wsgi.file_wrapper` body with sendfile when it wraps a regular file.
/// Returns false when the object is not sendfile-able and must be iterated instead.
fn try_sendfile(py: Python<'_>, resp: &SharedResponse, fw: &FileWrapper) -> PyResult<bool> {
    let file = fw.filelike.bind(py);
    let Ok(fileno) = file.call_method0(pyo3::intern!(py, "fileno")) else {
        return Ok(false);
    };
    let Ok(fd) = fileno.extract::<i32>() else {
        return Ok(false);
    };
    // SAFETY: the file object is alive (we hold a reference) and owns `fd` for at
    // least the duration of this call.
    let in_fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let Ok(stat) = nix::sys::stat::fstat(in_fd) else {
        return Ok(false);
    };
    if (stat.st_mode & libc::S_IFMT) != libc::S_IFREG {
        return Ok(false);
    }
    let offset: i64 = file
        .call_method0(pyo3::intern!(py, "tell"))
        .and_then(|v| v.extract())
        .unwrap_or(0);
    let size = u64::try_from(stat.st_size).unwrap_or(0);
    let start = u64::try_from(offset).unwrap_or(0).min(size);
    let mut r = lock_response(resp)?;
    let mut count = size - start;
    if let Some(cl) = r.content_length() {
        count = count.min(cl);
    }
    let framing = r.send_head_for_file(py, count)?;
    if framing == Framing::NoBody || count == 0 {
        r.finish(py)?;
        return Ok(true);
    }
    let conn = r.conn()?;
    let chunked = framing == Framing::Chunked;
    let sent: std::io::Result<u64> = py.detach(|| {
        let mut c = conn
            .lock()
            .map_err(|_| std::io::Error::other("connection state poisoned"))?;
        if chunked {
            c.write_one(format!("{count:x}\r\n").as_bytes())?;
        }
        // The head (and anything before it) must be on the wire before the file.
        c.flush_out()?;
        let out_fd = c.stream.as_raw_fd();
        // SAFETY: the stream is owned by the locked connection for this whole block.
        let out = unsafe { BorrowedFd::borrow_raw(out_fd) };
        let mut off = i64::try_from(start).unwrap_or(0);
        let mut left = count;
        while left > 0 {
            let want = usize::try_from(left.min(1 << 30)).unwrap_or(1 << 30);
            match nix::sys::sendfile::sendfile(out, in_fd, Some(&mut off), want) {
                Ok(0) => break,
                Ok(n) => left -= n as u64,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => c.stream.wait_writable()?,
                Err(e) => return Err(e.into()),
            }
        }
        if chunked {
            c.write_one(b"\r\n")?;
        }
        Ok(count - left)
    });
    let sent = sent.map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("sendfile: {e}")))?;
    r.note_file_bytes(sent);
    let _ = file.call_method1(pyo3::intern!(py, "seek"), (start + sent,));
    if sent < count {
        return Err(pyo3::exceptions::PyOSError::new_err(
            "file shrank while it was being sent",
        ));
    }
    r.finish(py)?;
    Ok(true)
}
