//! The sync worker: one connection, one request at a time, as gunicorn's `sync`.
//!
//! The loop waits in `poll(2)` on the shared listeners and the signal wake-up pipe with
//! the GIL released. Only an idle worker polls, so the kernel hands each new connection
//! to a worker that is free: load follows availability, and connections queued in the
//! shared backlog survive any one worker exiting. Each connection gets exactly one
//! response with `Connection: close` (gunicorn's sync worker ignores keep-alive because
//! it expects a buffering proxy in front).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::http::response::error_response;
use crate::http::{parse_head, Limits};
use crate::log::AccessLog;
use crate::net::{Listener, Peer, Stream};
use crate::scoreboard::{Scoreboard, Slot, SlotState};
use crate::worker::watchdog::{self, InFlight};
use crate::worker::{HeadRead, Phase, PhaseCell};
use crate::wsgi::environ::{EnvironBuilder, EnvironConfig, ListenerInfo, Trust};
use crate::wsgi::io::Conn;
use crate::wsgi::{Handler, Hooks, Outcome};

/// How long an idle worker sleeps in poll before looking at its phase again. Signals
/// wake it at once through the wake-up pipe; this only bounds how stale a missed
/// wake-up can make it.
const IDLE_TICK_MS: u16 = 1000;

/// Settings the worker reads from the Python options dict.
#[derive(Debug)]
pub(crate) struct Options {
    pub(crate) timeout: Option<Duration>,
    pub(crate) max_requests: u64,
    pub(crate) limits: Limits,
    pub(crate) sendfile: bool,
    pub(crate) env: EnvironConfig,
    pub(crate) access: Option<AccessLog>,
}

/// A worker option that may be absent (older callers, tests): `default` then.
pub(crate) fn get_or<'py, T: FromPyObjectOwned<'py>>(
    d: &Bound<'py, PyDict>,
    key: &str,
    default: T,
) -> PyResult<T> {
    match d.get_item(key)? {
        Some(_) => get(d, key),
        None => Ok(default),
    }
}

pub(crate) fn get<'py, T: FromPyObjectOwned<'py>>(
    d: &Bound<'py, PyDict>,
    key: &str,
) -> PyResult<T> {
    match d.get_item(key)? {
        Some(v) => v
            .extract::<T>()
            .map_err(Into::into)
            .map_err(|e: PyErr| PyValueError::new_err(format!("worker option {key}: {e}"))),
        None => Err(PyValueError::new_err(format!(
            "worker option {key} is missing"
        ))),
    }
}

use pyo3::conversion::FromPyObjectOwned;

/// The request hooks dict built by `Worker.hooks()` (None when no hook is set).
pub(crate) fn hooks_from(hooks: Option<&Bound<'_, PyDict>>) -> PyResult<Option<Hooks>> {
    Ok(match hooks {
        Some(h) => Some(Hooks {
            worker: get(h, "worker")?,
            pre: get(h, "pre_request")?,
            post: get(h, "post_request")?,
            make_request: get(h, "make_request")?,
            make_response: get(h, "make_response")?,
        }),
        None => None,
    })
}

/// Wraps the `(fd, is_unix)` pairs the Python worker passes in.
pub(crate) fn inherited_listeners(listeners: &Bound<'_, PyList>) -> PyResult<Vec<Listener>> {
    listeners
        .iter()
        .map(|item| {
            let (fd, is_unix): (RawFd, bool) = item.extract()?;
            Listener::from_inherited(fd, is_unix)
                .map_err(|e| PyOSError::new_err(format!("listener fd {fd}: {e}")))
        })
        .collect()
}

impl Options {
    pub(crate) fn from_dict(d: &Bound<'_, PyDict>) -> PyResult<Options> {
        let timeout: f64 = get(d, "timeout")?;
        let allow: Vec<String> = get(d, "forwarded_allow_ips")?;
        let trust = Trust::parse(&allow).map_err(PyValueError::new_err)?;
        let access_fd: Option<RawFd> = get(d, "access_log_fd")?;
        let access_format: String = get(d, "access_log_format")?;
        Ok(Options {
            timeout: (timeout > 0.0).then(|| Duration::from_secs_f64(timeout)),
            max_requests: get(d, "max_requests")?,
            limits: Limits::from_settings(
                get(d, "limit_request_line")?,
                get(d, "limit_request_fields")?,
                get(d, "limit_request_field_size")?,
            ),
            sendfile: get(d, "sendfile")?,
            env: EnvironConfig {
                trust,
                secure_scheme_headers: get::<Vec<(String, String)>>(d, "secure_scheme_headers")?
                    .into_iter()
                    .map(|(k, v)| (k.to_ascii_uppercase(), v))
                    .collect(),
                forwarder_headers: get::<Vec<String>>(d, "forwarder_headers")?
                    .into_iter()
                    .map(|h| h.trim().to_ascii_uppercase())
                    .collect(),
                script_name: get(d, "script_name")?,
            },
            access: access_fd.map(|fd| AccessLog::new(&access_format, fd)),
        })
    }
}

/// Everything the loop owns while it runs.
#[derive(Debug)]
struct Running {
    listeners: Vec<(Listener, ListenerInfo)>,
    wake_fd: RawFd,
    handler: Handler,
    timeout: Option<Duration>,
    max_requests: u64,
    /// The master's pid; a different parent means the master died.
    ppid: i32,
    /// The request in flight, shared with the timeout watchdog thread.
    inflight: Arc<InFlight>,
    /// This worker's scoreboard slot.
    board: Py<Scoreboard>,
    slot: usize,
}

impl Running {
    fn slot(&self) -> Option<&Slot> {
        self.board.get().slot(self.slot)
    }
}

/// The sync worker, driven from `ferrocorn.worker`.
#[pyclass(module = "ferrocorn._ferrocorn", name = "SyncWorker")]
#[derive(Debug)]
pub struct SyncWorker {
    phase: PhaseCell,
    /// Requests served. Outside `running` because hooks read `worker.nr` while the
    /// loop holds that lock.
    served: AtomicU64,
    running: Mutex<Running>,
    log: Py<PyAny>,
}

#[pymethods]
impl SyncWorker {
    /// `listeners` is a list of `(fd, is_unix)`; `wake_fd` the read end of the pipe
    /// given to `signal.set_wakeup_fd`; `base_environ` the per-worker constant keys.
    #[new]
    #[pyo3(signature = (app, listeners, wake_fd, options, log, base_environ, board, slot, hooks=None))]
    #[allow(clippy::too_many_arguments)] // mirrors the Python call site, one line each
    fn new(
        app: Py<PyAny>,
        listeners: &Bound<'_, PyList>,
        wake_fd: RawFd,
        options: &Bound<'_, PyDict>,
        log: Py<PyAny>,
        base_environ: Py<PyDict>,
        board: Py<Scoreboard>,
        slot: usize,
        hooks: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let hooks = hooks_from(hooks)?;
        let opts = Options::from_dict(options)?;
        let mut ls = Vec::new();
        for l in inherited_listeners(listeners)? {
            let info = ListenerInfo::new(listeners.py(), &l);
            ls.push((l, info));
        }
        let handler = Handler {
            app,
            environ: EnvironBuilder::new(base_environ.bind(listeners.py()), opts.env)?,
            access: opts.access,
            log: log.clone_ref(listeners.py()),
            limits: opts.limits,
            sendfile: opts.sendfile,
            pending_exit: None,
            last_status: 0,
            force_close: None,
            head_claim: None,
            hooks,
        };
        Ok(SyncWorker {
            phase: PhaseCell::new(),
            served: AtomicU64::new(0),
            running: Mutex::new(Running {
                listeners: ls,
                wake_fd,
                handler,
                timeout: opts.timeout,
                max_requests: opts.max_requests,
                ppid: get(options, "ppid")?,
                board,
                slot,
                inflight: Arc::new(InFlight::default()),
            }),
            log,
        })
    }

    /// Graceful stop (SIGTERM): finish the request in hand, drain the backlog, exit.
    fn stop(&self) {
        self.phase.advance(Phase::Draining);
    }

    /// Requests served so far.
    #[getter]
    fn requests(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Serves until stopped. Returns "stopped", "max_requests" or "parent_changed". Exceptions raised by
    /// Python signal handlers (SystemExit from SIGQUIT/SIGINT) propagate.
    fn run(&self, py: Python<'_>) -> PyResult<&'static str> {
        let mut run = self
            .running
            .lock()
            .map_err(|_| PyRuntimeError::new_err("worker state poisoned"))?;
        // After fork, so the thread exists only in this worker.
        if let Err(e) = watchdog::start(run.inflight.clone()) {
            self.log_error(py, &format!("timeout watchdog unavailable: {e}"));
        }
        loop {
            match self.phase.get() {
                Phase::Serving => {}
                Phase::Draining => {
                    self.drain_backlog(py, &mut run)?;
                    return Ok("stopped");
                }
                Phase::Exiting => return Ok("max_requests"),
            }
            if let Some(slot) = run.slot() {
                slot.set_state(SlotState::Idle);
            }
            let ready = wait_readable(py, &run)?;
            if nix::unistd::getppid().as_raw() != run.ppid {
                self.log_info(
                    py,
                    &format!("Parent changed, shutting down: {}", self.pid()),
                );
                return Ok("parent_changed");
            }
            if ready.wake {
                drain_pipe(run.wake_fd);
                py.check_signals()?;
            }
            if let Some(i) = ready.listener {
                if self.phase.get() != Phase::Serving {
                    continue;
                }
                match run.listeners[i].0.accept() {
                    Ok((stream, peer)) => self.serve(py, &mut run, i, stream, peer)?,
                    Err(e) if is_transient_accept_error(&e) => {}
                    Err(e) => self.log_error(py, &format!("accept() failed: {e}")),
                }
            }
        }
    }
}

struct Ready {
    wake: bool,
    listener: Option<usize>,
}

/// Waits (GIL released) until a listener or the wake-up pipe is readable.
fn wait_readable(py: Python<'_>, run: &Running) -> PyResult<Ready> {
    let wake_fd = run.wake_fd;
    let fds: Vec<BorrowedFd<'_>> = run.listeners.iter().map(|(l, _)| l.as_fd()).collect();
    let res = py.detach(|| {
        // SAFETY: the wake-up pipe's read end is owned by the Python worker object,
        // which outlives `run()`.
        let wake = unsafe { BorrowedFd::borrow_raw(wake_fd) };
        let mut pfds: Vec<PollFd<'_>> = Vec::with_capacity(fds.len() + 1);
        pfds.push(PollFd::new(wake, PollFlags::POLLIN));
        pfds.extend(fds.iter().map(|fd| PollFd::new(*fd, PollFlags::POLLIN)));
        match poll(&mut pfds, PollTimeout::from(IDLE_TICK_MS)) {
            Ok(_) => {
                let readable = |p: &PollFd<'_>| {
                    p.revents()
                        .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLERR))
                };
                let wake = readable(&pfds[0]);
                let listener = pfds[1..].iter().position(readable);
                Ok(Ready { wake, listener })
            }
            Err(nix::errno::Errno::EINTR) => Ok(Ready {
                wake: true,
                listener: None,
            }),
            Err(e) => Err(e),
        }
    });
    res.map_err(|e| PyOSError::new_err(format!("poll: {e}")))
}

pub(crate) fn drain_pipe(fd: RawFd) {
    // SAFETY: as in `wait_readable`; the pipe is non-blocking (set_wakeup_fd requires it).
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let mut buf = [0u8; 64];
    while let Ok(n) = nix::unistd::read(fd, &mut buf) {
        if n < buf.len() {
            break;
        }
    }
}

/// Errors after which the next accept may well succeed: another worker took the
/// connection, or the client gave up before we got to it.
pub(crate) fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
    ) || e.raw_os_error() == Some(libc::EPROTO)
}

impl SyncWorker {
    fn pid(&self) -> u32 {
        std::process::id()
    }

    fn log_info(&self, py: Python<'_>, msg: &str) {
        if let Err(e) = self.log.bind(py).call_method1("info", (msg,)) {
            e.print(py);
        }
    }

    fn log_error(&self, py: Python<'_>, msg: &str) {
        if let Err(e) = self.log.bind(py).call_method1("error", (msg,)) {
            e.print(py);
        }
    }

    /// Takes the connections already waiting in the backlog before exiting, so a
    /// graceful stop does not reset them (gunicorn's #3397). Bounded by what was
    /// queued when the drain began: under steady load new arrivals would otherwise keep
    /// a draining worker alive until graceful_timeout, and the workers that stay take
    /// them anyway.
    fn drain_backlog(&self, py: Python<'_>, run: &mut Running) -> PyResult<()> {
        if let Some(slot) = run.slot() {
            slot.set_state(SlotState::Draining);
        }
        for i in 0..run.listeners.len() {
            // Unix sockets do not report their queue: take at most a small batch.
            let mut budget = run.listeners[i].0.queued().unwrap_or(64);
            while budget > 0 {
                match run.listeners[i].0.accept() {
                    Ok((stream, peer)) => {
                        budget -= 1;
                        self.serve(py, run, i, stream, peer)?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
        }
        Ok(())
    }

    fn serve(
        &self,
        py: Python<'_>,
        run: &mut Running,
        listener: usize,
        mut stream: Stream,
        peer: Peer,
    ) -> PyResult<()> {
        if let Err(e) = stream.set_timeouts(run.timeout) {
            self.log_error(py, &format!("setting socket timeouts: {e}"));
            return Ok(());
        }
        if let Some(slot) = run.slot() {
            slot.set_state(SlotState::Io);
        }
        let conn = Arc::new(Mutex::new(Conn::new(stream)));
        let head = match read_head(py, &conn, &run.handler.limits)? {
            HeadRead::Head(h) => h,
            HeadRead::Closed => return Ok(()),
            HeadRead::Invalid(err) => {
                run.handler.reject(py, &conn, &peer, &err);
                close(py, &conn, false);
                return Ok(());
            }
            HeadRead::TimedOut => {
                // Beyond gunicorn, whose sync worker waits for a slow head until the
                // arbiter kills it (#3207): answer 408 and keep the worker.
                let bytes = error_response(408, "Request Timeout", "");
                py.detach(|| {
                    if let Ok(mut c) = conn.lock() {
                        let _ = c.write_one(&bytes);
                    }
                });
                close(py, &conn, false);
                return Ok(());
            }
        };
        let served = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        if run.max_requests > 0 && served >= run.max_requests {
            if let Err(e) = run
                .handler
                .log
                .bind(py)
                .call_method1("info", ("Autorestarting worker after current request.",))
            {
                e.print(py);
            }
            self.phase.advance(Phase::Exiting);
        }
        let info = run.listeners[listener].1.clone();
        if let Some(slot) = run.slot() {
            slot.begin_request(&head.method, head.split_target().0);
        }
        let started = Instant::now();
        let fd = crate::wsgi::io::lock(&conn)?.stream.as_raw_fd();
        run.handler.head_claim = Some(run.inflight.begin(fd));
        let outcome = run.handler.handle(py, &conn, &head, &peer, &info, false);
        // Before the socket can close: the watchdog must never see a reused fd.
        run.inflight.end();
        run.handler.head_claim = None;
        if let Some(slot) = run.slot() {
            slot.end_request(micros_since(started), run.handler.last_status);
        }
        let clean = matches!(outcome, Outcome::KeepAlive | Outcome::Close { clean: true });
        close(py, &conn, clean);
        // SystemExit or KeyboardInterrupt raised inside the app by a signal handler
        // (QUIT, INT, ABRT): the client got its answer, now the worker leaves.
        match run.handler.take_exit() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Microseconds elapsed since `t` (for the scoreboard's latency histogram).
pub fn micros_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX)
}

fn read_head(py: Python<'_>, conn: &Arc<Mutex<Conn>>, limits: &Limits) -> PyResult<HeadRead> {
    loop {
        let mut c = crate::wsgi::io::lock(conn)?;
        match parse_head(c.pending(), limits) {
            Ok(Some((head, used))) => {
                c.consume(used);
                return Ok(HeadRead::Head(head));
            }
            Ok(None) => {}
            Err(e) => return Ok(HeadRead::Invalid(e)),
        }
        let had_bytes = !c.pending().is_empty();
        let cref = &mut *c;
        match py.detach(|| cref.fill()) {
            Ok(0) => return Ok(HeadRead::Closed),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                drop(c);
                py.check_signals()?;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(if had_bytes {
                    HeadRead::TimedOut
                } else {
                    HeadRead::Closed
                });
            }
            Err(_) => return Ok(HeadRead::Closed),
        }
    }
}

/// Closes the connection. With input possibly left unread (a body the app ignored),
/// half-close and drain first so the kernel does not answer the late bytes with a
/// RST that could destroy the response before the client reads it.
fn close(py: Python<'_>, conn: &Arc<Mutex<Conn>>, body_consumed: bool) {
    py.detach(|| {
        if let Ok(mut c) = conn.lock() {
            if !body_consumed {
                c.stream.close_gracefully();
            }
        }
    });
}
