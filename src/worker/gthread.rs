//! The gthread worker: Rust owns the connections, a pool of Python threads runs the app.
//!
//! Three kinds of threads live in a gthread worker process:
//!
//! - the **Python main thread** stays in [`GthreadWorker::run`], waiting (GIL released)
//!   on the signal wake-up pipe and on an event socket, so Python signal handlers run
//!   promptly; it also writes the log lines the other threads hand it and reports
//!   requests running past `--timeout`;
//! - one **I/O thread** runs a current-thread tokio runtime: it accepts (while fewer
//!   than `--worker-connections` are open), reads and parses request heads, reads small
//!   bodies, keeps idle keep-alive connections with their `--keep-alive` deadline, and
//!   heartbeats the scoreboard. It never takes the GIL;
//! - `--threads` **pool threads**, attached to Python, take parsed requests from a
//!   bounded queue and run them through [`Handler::handle`] on a blocking socket, then
//!   hand the connection back to the I/O thread.
//!
//! A connection therefore occupies a Python thread only from the moment its head (and
//! small body) is complete until the app is done: a response the client is slow to
//! read is finished by the I/O thread (write-behind, [`crate::wsgi::io::Conn::out`]).
//! The threads are started in `run()`, after fork, so the master never forks a
//! process with extra threads.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{pthread_sigmask, SigmaskHow};
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::http::response::error_response;
use crate::http::{Decoder, Limits, RequestHead};
use crate::net::{Listener, Peer};
use crate::scoreboard::{now_ms, Scoreboard, Slot, SlotState};
use crate::worker::aio::{
    accept_delay, batch_this_thread, block_async_signals, close_gracefully, compact, read_head,
    sleep_until_opt, HeadWait, IoListener, IoStream,
};
use crate::worker::sync::{
    drain_pipe, get, get_or, hooks_from, inherited_listeners, is_transient_accept_error,
    micros_since, Options,
};
use crate::worker::{HeadRead, Phase, PhaseCell};
use crate::wsgi::environ::{EnvironBuilder, ListenerInfo};
use crate::wsgi::io::{Conn, WRITE_BEHIND};
use crate::wsgi::{Handler, Outcome};

/// Bodies up to this size (Content-Length or chunked) are read whole by the I/O
/// thread before the request is queued, so a slow uploader of a small body never holds
/// a Python thread. Larger bodies are streamed by `wsgi.input` on the Python thread.
const PREREAD_MAX: usize = 64 * 1024;

/// How long the main thread sleeps between looks at slow requests and the parent pid.
const MAIN_TICK_MS: u16 = 1000;

/// Settings of one gthread worker.
#[derive(Debug, Clone)]
struct IoConfig {
    /// Python threads in the pool.
    threads: usize,
    /// Most connections open at once (`--worker-connections`).
    worker_connections: usize,
    /// `--keep-alive`; `None` when 0 (keep-alive off).
    keepalive: Option<Duration>,
    /// `--timeout`: head and small-body read deadline, socket timeouts for the Python
    /// threads, and the age at which a running request is reported.
    timeout: Option<Duration>,
    /// `--graceful-timeout`: the most a stop waits for open connections.
    graceful: Duration,
    /// This worker's request limit (0 = none).
    max_requests: u64,
    /// Request-head limits.
    limits: Limits,
}

impl IoConfig {
    /// gunicorn's `max_keepalived`: once this many connections sit idle in keep-alive,
    /// further responses close their connection.
    fn max_keepalived(&self) -> usize {
        self.worker_connections.saturating_sub(self.threads)
    }

    /// How often the I/O thread heartbeats: often enough that the master, which allows
    /// `--timeout` of silence, never mistakes a live loop for a hung one.
    fn heartbeat_every(&self) -> Duration {
        match self.timeout {
            Some(t) => (t / 4).clamp(Duration::from_millis(100), Duration::from_secs(1)),
            None => Duration::from_secs(1),
        }
    }

    /// How long an idle connection may stay once the worker is stopping: a request that
    /// was already on its way still gets an answer (with `Connection: close`), as
    /// gunicorn 27 lingers on kept-alive connections.
    fn stop_linger(&self) -> Duration {
        self.keepalive.unwrap_or(Duration::from_secs(2))
    }
}

/// Whether a response may leave its connection open for another request: keep-alive
/// is on, the worker is serving (not stopping, not past max-requests), and fewer than
/// `max_keepalived` connections are already idle in keep-alive (gunicorn's gthread
/// rules). The request's own `Connection` header and the response framing are applied
/// afterwards by [`Handler::handle`].
fn may_keep_alive(enabled: bool, phase: Phase, idle_kept: usize, max_keepalived: usize) -> bool {
    enabled && phase == Phase::Serving && idle_kept < max_keepalived
}

/// What the I/O thread tells the main thread.
#[derive(Debug)]
enum Event {
    /// A line for the error log, written by the main thread (which may take the GIL).
    Log(&'static str, String),
    /// The I/O loop has ended: the worker is done.
    IoDone,
    /// Just look at the shared state (a pool thread forwarded an exit request).
    Wake,
}

/// The request a pool thread is running, for the slow-request report and the
/// scoreboard text.
#[derive(Debug)]
struct InFlight {
    text: String,
    started: Instant,
    started_ms: u64,
    reported: bool,
}

/// State shared by the main thread, the I/O thread and the pool threads.
#[derive(Debug)]
struct Shared {
    cfg: IoConfig,
    phase: PhaseCell,
    /// Flips to true when the worker stops accepting (TERM, max-requests).
    stop_tx: watch::Sender<bool>,
    /// The same, for responses still being produced (see [`Handler::force_close`]).
    closing: Arc<AtomicBool>,
    /// Requests admitted (counted before the app runs, as gunicorn's `nr`).
    served: AtomicU64,
    board: Py<Scoreboard>,
    slot: usize,
    /// Requests parsed and waiting for a pool thread.
    queued: AtomicUsize,
    /// Pool threads running the app.
    busy: AtomicUsize,
    /// Open client connections.
    open: AtomicUsize,
    /// Connections idle between requests (kept alive).
    idle: AtomicUsize,
    /// One entry per pool thread.
    inflight: Vec<Mutex<Option<InFlight>>>,
    events: Mutex<Vec<Event>>,
    /// Written to wake the main thread; it polls the other end.
    notify_w: StdUnixStream,
    /// A SystemExit/KeyboardInterrupt that escaped the app on a pool thread; the main
    /// thread re-raises it.
    exit: Mutex<Option<PyErr>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks stays consistent even if a holder panicked.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn slot(&self) -> Option<&Slot> {
        self.board.get().slot(self.slot)
    }

    fn publish(&self) {
        if let Some(s) = self.slot() {
            s.set_gauges(
                self.queued.load(Ordering::Relaxed),
                self.busy.load(Ordering::Relaxed),
                self.open.load(Ordering::Relaxed),
            );
        }
    }

    /// The open connections of the least loaded other worker that is accepting.
    fn least_loaded_other(&self) -> Option<usize> {
        self.board.get().least_connections_except(self.slot)
    }

    fn event(&self, ev: Event) {
        lock(&self.events).push(ev);
        // Non-blocking: a full socket already holds a wake-up.
        let _ = std::io::Write::write(&mut &self.notify_w, b"!");
    }

    fn log(&self, level: &'static str, msg: String) {
        self.event(Event::Log(level, msg));
    }

    fn begin_stop(&self) {
        self.closing.store(true, Ordering::Relaxed);
        self.stop_tx.send_replace(true);
    }
}

/// One parsed request handed to a pool thread.
#[derive(Debug)]
struct Job {
    conn: Conn,
    head: RequestHead,
    peer: Peer,
    listener: usize,
    keep_alive: bool,
    reply: ReplyTo,
}

/// The connection coming back from a pool thread.
#[derive(Debug)]
struct Returned {
    conn: Conn,
    outcome: Outcome,
}

impl Returned {
    /// Whether the connection's task must act at once (a close, a write-behind tail,
    /// pipelined bytes already buffered) rather than when the client's next request
    /// wakes it. Otherwise the connection counts as idle (kept alive) until then.
    fn needs_task_now(&self) -> bool {
        !self.conn.out.is_empty()
            || !matches!(self.outcome, Outcome::KeepAlive)
            || self.conn.pos < self.conn.buf.len()
    }
}

/// Where a pool thread leaves a connection when its request is done. One per
/// connection, reused for each of its requests.
///
/// The hand-back wakes the connection's task only when the task must act at once:
/// a close, a write-behind tail to send, pipelined bytes already buffered, or a
/// task that asked (`want_wake`). Otherwise the connection is just left here and the
/// task finds it when the client's next request makes the socket readable, which
/// wakes it anyway: one cross-thread wake-up (an eventfd write and an epoll round
/// trip on a parked I/O thread) less per keep-alive request.
#[derive(Debug, Default)]
struct Handback {
    state: Mutex<HandbackState>,
    notify: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct HandbackState {
    /// The connection, and when its request finished.
    returned: Option<(Returned, Instant)>,
    /// The job was dropped without a reply (the queue closed under it).
    dropped: bool,
    /// The task is waiting for the hand-back itself: wake it.
    want_wake: bool,
}

/// The pool thread's end of a [`Handback`]; dropping it unanswered tells the task.
#[derive(Debug)]
struct ReplyTo(Option<Arc<Handback>>);

impl ReplyTo {
    fn send(mut self, shared: &Shared, r: Returned) {
        let Some(hb) = self.0.take() else { return };
        let urgent = r.needs_task_now();
        if !urgent {
            // Idle between requests from now on, as far as max_keepalived counts.
            shared.idle.fetch_add(1, Ordering::Relaxed);
        }
        let mut st = lock(&hb.state);
        st.returned = Some((r, Instant::now()));
        let wake = urgent || st.want_wake;
        drop(st);
        if wake {
            hb.notify.notify_one();
        }
    }
}

impl Drop for ReplyTo {
    fn drop(&mut self) {
        if let Some(hb) = self.0.take() {
            lock(&hb.state).dropped = true;
            hb.notify.notify_one();
        }
    }
}

/// What `run()` needs and `new()` prepares (taken once).
#[derive(Debug)]
struct Setup {
    listeners: Vec<(Listener, ListenerInfo)>,
    handlers: Vec<Handler>,
    wake_fd: RawFd,
    ppid: i32,
}

/// The gthread worker, driven from `ferrocorn.worker`.
#[pyclass(module = "ferrocorn._ferrocorn", name = "GthreadWorker", frozen)]
#[derive(Debug)]
pub struct GthreadWorker {
    shared: Arc<Shared>,
    setup: Mutex<Option<Setup>>,
    notify_r: StdUnixStream,
    log: Py<PyAny>,
}

fn secs(v: f64) -> Option<Duration> {
    (v > 0.0 && v.is_finite()).then(|| Duration::from_secs_f64(v))
}

#[pymethods]
impl GthreadWorker {
    /// Same arguments as `SyncWorker`; `options` also carries `threads`,
    /// `worker_connections`, `keepalive` and `graceful_timeout`.
    #[new]
    #[pyo3(signature = (app, listeners, wake_fd, options, log, base_environ, board, slot, hooks=None))]
    #[allow(clippy::too_many_arguments)] // mirrors the Python call site, one line each
    fn new(
        py: Python<'_>,
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
        let threads: usize = get_or(options, "threads", 1usize)?.max(1);
        let worker_connections: usize = get_or(options, "worker_connections", 1000usize)?.max(1);
        let keepalive: f64 = get_or(options, "keepalive", 2.0)?;
        let graceful: f64 = get_or(options, "graceful_timeout", 30.0)?;
        let closing = Arc::new(AtomicBool::new(false));
        let mut handlers = Vec::with_capacity(threads);
        let mut cfg = None;
        // One Handler per pool thread: each keeps its own environ key cache, so the
        // threads share nothing mutable on the request path.
        for _ in 0..threads {
            let opts = Options::from_dict(options)?;
            cfg.get_or_insert(IoConfig {
                threads,
                worker_connections,
                keepalive: secs(keepalive),
                timeout: opts.timeout,
                graceful: Duration::from_secs_f64(graceful.max(0.0)),
                max_requests: opts.max_requests,
                limits: opts.limits,
            });
            handlers.push(Handler {
                app: app.clone_ref(py),
                environ: EnvironBuilder::new(base_environ.bind(py), opts.env)?,
                access: opts.access,
                log: log.clone_ref(py),
                limits: opts.limits,
                sendfile: opts.sendfile,
                pending_exit: None,
                last_status: 0,
                force_close: Some(closing.clone()),
                head_claim: None,
                hooks: hooks_from(hooks)?,
            });
        }
        let cfg = cfg.ok_or_else(|| PyValueError::new_err("threads must be positive"))?;
        let mut ls = Vec::new();
        for l in inherited_listeners(listeners)? {
            let info = ListenerInfo::new(py, &l);
            ls.push((l, info));
        }
        let (notify_w, notify_r) =
            StdUnixStream::pair().map_err(|e| PyOSError::new_err(format!("event socket: {e}")))?;
        notify_w
            .set_nonblocking(true)
            .and_then(|()| notify_r.set_nonblocking(true))
            .map_err(|e| PyOSError::new_err(format!("event socket: {e}")))?;
        let (stop_tx, _) = watch::channel(false);
        let shared = Shared {
            inflight: (0..threads).map(|_| Mutex::new(None)).collect(),
            cfg,
            phase: PhaseCell::new(),
            stop_tx,
            closing,
            served: AtomicU64::new(0),
            board,
            slot,
            queued: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            events: Mutex::new(Vec::new()),
            notify_w,
            exit: Mutex::new(None),
        };
        Ok(GthreadWorker {
            shared: Arc::new(shared),
            setup: Mutex::new(Some(Setup {
                listeners: ls,
                handlers,
                wake_fd,
                ppid: get(options, "ppid")?,
            })),
            notify_r,
            log,
        })
    }

    /// Graceful stop (SIGTERM): stop accepting, finish what is in flight, exit.
    fn stop(&self) {
        self.shared.phase.advance(Phase::Draining);
        self.shared.begin_stop();
    }

    /// Requests admitted so far (gunicorn's `worker.nr`).
    #[getter]
    fn requests(&self) -> u64 {
        self.shared.served.load(Ordering::Relaxed)
    }

    /// Serves until stopped. Returns "stopped", "max_requests" or "parent_changed".
    /// Exceptions raised by Python signal handlers (SystemExit from SIGQUIT/SIGINT)
    /// propagate.
    fn run(&self, py: Python<'_>) -> PyResult<&'static str> {
        let Setup {
            listeners,
            handlers,
            wake_fd,
            ppid,
        } = lock(&self.setup)
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("GthreadWorker.run() called twice"))?;
        if self.shared.cfg.keepalive.is_some() && self.shared.cfg.max_keepalived() == 0 {
            // gunicorn's check_config warning, for the same setting.
            self.log_at(
                py,
                "warning",
                "No keepalived connections can be handled. \
                 Check the number of worker connections and threads.",
            );
        }
        let infos: Arc<Vec<ListenerInfo>> =
            Arc::new(listeners.iter().map(|(_, i)| i.clone()).collect());
        // Each connection has at most one request queued or running, and connections
        // are capped, so this bound is never the one that stops a request.
        let (job_tx, job_rx) =
            crossbeam_channel::bounded::<Job>(self.shared.cfg.worker_connections.max(1));

        // The new threads start with asynchronous signals blocked, so the kernel
        // delivers every signal to the main thread, which is the one that runs Python's
        // handlers; a pool thread's blocking read is never cut short by one.
        let old_mask = block_async_signals();
        let mut pool = Vec::with_capacity(handlers.len());
        let mut spawn_err = None;
        for (i, handler) in handlers.into_iter().enumerate() {
            let shared = self.shared.clone();
            let rx = job_rx.clone();
            let infos = infos.clone();
            match std::thread::Builder::new()
                .name(format!("ferrocorn-app-{i}"))
                .spawn(move || pool_thread(shared, handler, rx, i, infos))
            {
                Ok(h) => pool.push(h),
                Err(e) => {
                    spawn_err = Some(e);
                    break;
                }
            }
        }
        drop(job_rx);
        let io_handle = match spawn_err {
            Some(e) => Err(e),
            None => {
                let shared = self.shared.clone();
                std::thread::Builder::new()
                    .name("ferrocorn-io".into())
                    .spawn(move || io_thread(shared, listeners, job_tx))
            }
        };
        if let Some(old) = old_mask {
            let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
        }
        let io_handle =
            io_handle.map_err(|e| PyRuntimeError::new_err(format!("starting threads: {e}")))?;

        loop {
            let (wake, notified) = wait_main(py, wake_fd, self.notify_r.as_fd())?;
            if nix::unistd::getppid().as_raw() != ppid {
                self.log_at(
                    py,
                    "info",
                    &format!("Parent changed, shutting down: {}", std::process::id()),
                );
                self.stop();
                return Ok("parent_changed");
            }
            if wake {
                drain_pipe(wake_fd);
                py.check_signals()?;
            }
            if notified {
                drain_pipe(self.notify_r.as_raw_fd());
            }
            let events = std::mem::take(&mut *lock(&self.shared.events));
            let mut io_done = false;
            for ev in events {
                match ev {
                    Event::Log(level, msg) => self.log_at(py, level, &msg),
                    Event::IoDone => io_done = true,
                    Event::Wake => {}
                }
            }
            if let Some(e) = lock(&self.shared.exit).take() {
                self.stop();
                return Err(e);
            }
            self.watch_requests(py);
            if io_done {
                break;
            }
        }
        // The I/O loop ended after every connection finished (or graceful_timeout ran
        // out). Idle pool threads see the closed queue and leave; a thread still
        // stuck in the app is left to the process exit.
        let idle = self.shared.busy.load(Ordering::Relaxed) == 0
            && self.shared.queued.load(Ordering::Relaxed) == 0;
        if idle {
            py.detach(|| {
                let _ = io_handle.join();
                for h in pool {
                    let _ = h.join();
                }
            });
        }
        Ok(match self.shared.phase.get() {
            Phase::Exiting => "max_requests",
            _ => "stopped",
        })
    }
}

impl GthreadWorker {
    fn log_at(&self, py: Python<'_>, level: &str, msg: &str) {
        if let Err(e) = self.log.bind(py).call_method1(level, (msg,)) {
            e.print(py);
        }
    }

    /// Reports requests running longer than `--timeout` (once each) and shows the
    /// oldest request in flight on the scoreboard. A gthread worker is not killed for
    /// one slow request: the other threads keep serving.
    fn watch_requests(&self, py: Python<'_>) {
        let mut oldest: Option<(String, u64, Instant)> = None;
        let mut slow = Vec::new();
        for (i, cell) in self.shared.inflight.iter().enumerate() {
            let mut g = lock(cell);
            let Some(f) = g.as_mut() else { continue };
            let age = f.started.elapsed();
            if let Some(t) = self.shared.cfg.timeout {
                if age > t && !f.reported {
                    f.reported = true;
                    slow.push(format!(
                        "Slow request: {} has been running for {:.1} s on thread {i}, \
                         past the {} s timeout",
                        f.text,
                        age.as_secs_f64(),
                        t.as_secs_f64()
                    ));
                }
            }
            if oldest.as_ref().is_none_or(|(_, _, s)| f.started < *s) {
                oldest = Some((f.text.clone(), f.started_ms, f.started));
            }
        }
        if let (Some((text, ms, _)), Some(slot)) = (oldest, self.shared.slot()) {
            slot.set_request_text(&text, ms);
        }
        for msg in slow {
            self.log_at(py, "warning", &msg);
        }
    }
}

/// Waits (GIL released) for the signal wake-up pipe or the event socket.
fn wait_main(py: Python<'_>, wake_fd: RawFd, notify: BorrowedFd<'_>) -> PyResult<(bool, bool)> {
    let res = py.detach(|| {
        // SAFETY: the wake-up pipe's read end is owned by the Python worker object,
        // which outlives `run()`.
        let wake = unsafe { BorrowedFd::borrow_raw(wake_fd) };
        let mut pfds = [
            PollFd::new(wake, PollFlags::POLLIN),
            PollFd::new(notify, PollFlags::POLLIN),
        ];
        match poll(&mut pfds, PollTimeout::from(MAIN_TICK_MS)) {
            Ok(_) => {
                let readable = |p: &PollFd<'_>| {
                    p.revents()
                        .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLERR))
                };
                Ok((readable(&pfds[0]), readable(&pfds[1])))
            }
            Err(nix::errno::Errno::EINTR) => Ok((true, false)),
            Err(e) => Err(e),
        }
    });
    res.map_err(|e| PyOSError::new_err(format!("poll: {e}")))
}

// ------------------------------------------------------------------ pool threads

fn pool_thread(
    shared: Arc<Shared>,
    handler: Handler,
    rx: crossbeam_channel::Receiver<Job>,
    index: usize,
    infos: Arc<Vec<ListenerInfo>>,
) {
    batch_this_thread();
    Python::attach(move |py| {
        let mut handler = handler;
        // The GIL is released between jobs even when one is queued. Keeping it across
        // back-to-back jobs made a thread woken for a job it had already taken wait
        // for the GIL until CPython's 5 ms switch interval, and measured no faster
        // (interleaved wrk runs, hello world, 2 workers, 64 and 512 connections).
        while let Ok(job) = py.detach(|| rx.recv()) {
            run_job(py, &shared, &mut handler, index, &infos, job);
        }
        drop(handler);
    });
}

fn run_job(
    py: Python<'_>,
    shared: &Shared,
    handler: &mut Handler,
    index: usize,
    infos: &[ListenerInfo],
    job: Job,
) {
    let Job {
        conn,
        head,
        peer,
        listener,
        keep_alive,
        reply,
    } = job;
    shared.queued.fetch_sub(1, Ordering::Relaxed);
    shared.busy.fetch_add(1, Ordering::Relaxed);
    shared.publish();
    if let Some(cell) = shared.inflight.get(index) {
        *lock(cell) = Some(InFlight {
            text: format!("{} {}", head.method, head.split_target().0),
            started: Instant::now(),
            started_ms: now_ms(),
            reported: false,
        });
    }
    let conn = Arc::new(Mutex::new(conn));
    let info = infos
        .get(listener)
        .cloned()
        .unwrap_or(ListenerInfo { server: None });
    let started = Instant::now();
    let outcome = handler.handle(py, &conn, &head, &peer, &info, keep_alive);
    let micros = micros_since(started);
    // Take the socket back even if the app kept a reference to wsgi.input.
    let conn = lock(&conn).take();
    if let Some(cell) = shared.inflight.get(index) {
        *lock(cell) = None;
    }
    if let Some(slot) = shared.slot() {
        slot.add_request(micros, handler.last_status);
    }
    if let Some(e) = handler.take_exit() {
        // SystemExit raised by the app itself: the worker leaves, as with sync.
        *lock(&shared.exit) = Some(e);
        shared.event(Event::Wake);
    }
    shared.busy.fetch_sub(1, Ordering::Relaxed);
    shared.publish();
    reply.send(shared, Returned { conn, outcome });
}

// ------------------------------------------------------------------ I/O thread

fn io_thread(
    shared: Arc<Shared>,
    listeners: Vec<(Listener, ListenerInfo)>,
    jobs: crossbeam_channel::Sender<Job>,
) {
    match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(rt) => {
            rt.block_on(io_main(shared.clone(), listeners, jobs));
            // Dropping the runtime drops any connection task still waiting, and with
            // them the last job senders: idle pool threads then see the queue close.
            drop(rt);
        }
        Err(e) => shared.log("error", format!("cannot start the I/O runtime: {e}")),
    }
    shared.event(Event::IoDone);
}

/// What connection tasks share.
#[derive(Debug)]
struct Ctx {
    shared: Arc<Shared>,
    jobs: crossbeam_channel::Sender<Job>,
}

impl Ctx {
    /// Counts a request about to be queued and decides whether its connection may be
    /// kept alive.
    fn admit(&self) -> bool {
        let sh = &self.shared;
        let served = sh.served.fetch_add(1, Ordering::Relaxed) + 1;
        if sh.cfg.max_requests > 0 && served == sh.cfg.max_requests {
            sh.log(
                "info",
                "Autorestarting worker after current request.".to_owned(),
            );
            sh.phase.advance(Phase::Exiting);
            sh.begin_stop();
        }
        may_keep_alive(
            sh.cfg.keepalive.is_some(),
            sh.phase.get(),
            sh.idle.load(Ordering::Relaxed),
            sh.cfg.max_keepalived(),
        )
    }
}

async fn io_main(
    shared: Arc<Shared>,
    listeners: Vec<(Listener, ListenerInfo)>,
    jobs: crossbeam_channel::Sender<Job>,
) {
    let mut ls = Vec::with_capacity(listeners.len());
    for (l, _) in listeners {
        match IoListener::new(l) {
            Ok(l) => ls.push(Arc::new(l)),
            Err(e) => shared.log("error", format!("listener: {e}")),
        }
    }
    let cap = shared.cfg.worker_connections;
    let conns = Arc::new(Semaphore::new(cap));
    let ctx = Arc::new(Ctx {
        shared: shared.clone(),
        jobs,
    });
    let heartbeat = tokio::spawn(heartbeat(shared.clone()));
    let accepting: Vec<_> = ls
        .iter()
        .enumerate()
        .map(|(i, l)| tokio::spawn(accept_loop(ctx.clone(), l.clone(), i, conns.clone())))
        .collect();
    let mut stop = shared.stop_tx.subscribe();
    let _ = stop.wait_for(|s| *s).await;
    for a in accepting {
        let _ = a.await;
    }
    let deadline = tokio::time::Instant::now() + shared.cfg.graceful;
    if shared.phase.get() == Phase::Draining {
        drain_backlog(&ctx, &ls, &conns).await;
    }
    drop(ls);
    drop(ctx);
    let all = u32::try_from(cap).unwrap_or(u32::MAX);
    tokio::select! {
        _ = conns.acquire_many(all) => {}
        _ = tokio::time::sleep_until(deadline) => {
            shared.log(
                "warning",
                format!(
                    "Graceful timeout: closing {} connection(s) still open",
                    shared.open.load(Ordering::Relaxed)
                ),
            );
        }
    }
    heartbeat.abort();
}

/// Keeps the scoreboard slot fresh from the I/O thread, so a pool busy with long
/// requests does not look like a hung worker; the state shows whether the app runs.
async fn heartbeat(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.cfg.heartbeat_every());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        if let Some(slot) = shared.slot() {
            let state = if shared.phase.get() != Phase::Serving {
                SlotState::Draining
            } else if shared.busy.load(Ordering::Relaxed) > 0 {
                SlotState::Busy
            } else {
                SlotState::Idle
            };
            slot.set_state(state);
        }
        shared.publish();
    }
}

async fn accept_loop(ctx: Arc<Ctx>, l: Arc<IoListener>, index: usize, conns: Arc<Semaphore>) {
    let mut stop = ctx.shared.stop_tx.subscribe();
    loop {
        if *stop.borrow() {
            return;
        }
        // At the connection limit, stop accepting: new connections wait in the shared
        // backlog, where another worker can take them.
        let permit = tokio::select! {
            p = conns.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        // Connections held, counted by their permits (a burst is accepted before the
        // connection tasks run), less the one about to be accepted.
        let cap = ctx.shared.cfg.worker_connections;
        let delay = || {
            let held = cap.saturating_sub(conns.available_permits());
            accept_delay(
                held.saturating_sub(1),
                ctx.shared.least_loaded_other(),
                ctx.shared.cfg.threads,
            )
        };
        let accepted = tokio::select! {
            r = l.accept(delay) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        match accepted {
            Ok((s, peer)) => spawn_conn(&ctx, s, peer, index, permit),
            Err(e) if is_transient_accept_error(&e) => {}
            Err(e) => {
                ctx.shared.log("error", format!("accept() failed: {e}"));
                // EMFILE and friends: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// On a graceful stop, takes the connections already queued in the listen backlog
/// (as the sync worker does, against gunicorn's #3397); they are answered with
/// `Connection: close`.
async fn drain_backlog(ctx: &Arc<Ctx>, ls: &[Arc<IoListener>], conns: &Arc<Semaphore>) {
    for (i, l) in ls.iter().enumerate() {
        let mut budget = l.queued().unwrap_or(64);
        while budget > 0 {
            let Ok(permit) = conns.clone().try_acquire_owned() else {
                return;
            };
            match l.try_accept() {
                Ok((s, peer)) => {
                    budget -= 1;
                    spawn_conn(ctx, s, peer, i, permit);
                }
                _ => break,
            }
        }
    }
}

fn spawn_conn(
    ctx: &Arc<Ctx>,
    s: IoStream,
    peer: Peer,
    listener: usize,
    permit: OwnedSemaphorePermit,
) {
    // Counted now rather than when the task first runs, so a burst shows at once.
    ctx.shared.open.fetch_add(1, Ordering::Relaxed);
    ctx.shared.publish();
    tokio::spawn(serve_conn(ctx.clone(), s, peer, listener, permit));
}

/// Counts a value in a shared gauge while alive.
struct Gauge<'a>(&'a Shared, &'a AtomicUsize, bool);

impl<'a> Gauge<'a> {
    fn new(sh: &'a Shared, g: &'a AtomicUsize) -> Self {
        g.fetch_add(1, Ordering::Relaxed);
        Gauge(sh, g, true)
    }

    /// Takes over a count already added.
    fn adopt(sh: &'a Shared, g: &'a AtomicUsize) -> Self {
        Gauge(sh, g, true)
    }

    fn release(&mut self) {
        if self.2 {
            self.2 = false;
            self.1.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.release();
        self.0.publish();
    }
}

/// One client connection, from accept to close.
async fn serve_conn(
    ctx: Arc<Ctx>,
    mut io: IoStream,
    peer: Peer,
    listener: usize,
    permit: OwnedSemaphorePermit,
) {
    let _permit = permit;
    let _open = Gauge::adopt(&ctx.shared, &ctx.shared.open);
    let mut buf: Vec<u8> = Vec::with_capacity(2048);
    let mut pos = 0usize;
    let mut first = true;
    let handback = Arc::new(Handback::default());
    let mut idle_since = Instant::now();
    loop {
        let cfg = &ctx.shared.cfg;
        let wait = HeadWait {
            limits: &cfg.limits,
            timeout: cfg.timeout,
            // A kept-alive connection's idle time counts from the end of the response.
            idle_until: (!first).then(|| idle_since + cfg.keepalive.unwrap_or(Duration::ZERO)),
            linger: cfg.stop_linger(),
        };
        let read = {
            let mut idle = (!first).then(|| Gauge::new(&ctx.shared, &ctx.shared.idle));
            let stop = &ctx.shared.stop_tx;
            read_head(&mut io, &mut buf, &mut pos, &wait, stop, || {
                if let Some(g) = idle.as_mut() {
                    g.release();
                }
            })
            .await
        };
        let head = match read {
            HeadRead::Head(h) => h,
            HeadRead::Closed => return,
            HeadRead::Invalid(err) => {
                let ip = peer.host();
                if err.wants_response() {
                    ctx.shared
                        .log("warning", format!("Invalid request from ip={ip}: {err}"));
                    write_quietly(&mut io, &err.to_response(), ctx.shared.cfg.timeout).await;
                } else {
                    ctx.shared.log(
                        "debug",
                        format!("Ignored premature client disconnection: {err}"),
                    );
                }
                close_gracefully(io).await;
                return;
            }
            HeadRead::TimedOut => {
                // Beyond gunicorn, whose gthread pins a thread on a partial head.
                let bytes = error_response(408, "Request Timeout", "");
                write_quietly(&mut io, &bytes, ctx.shared.cfg.timeout).await;
                close_gracefully(io).await;
                return;
            }
        };
        first = false;
        let body_buffered =
            match preread_body(&ctx.shared.cfg, &mut io, &mut buf, &mut pos, &head).await {
                BodyRead::Complete => true,
                BodyRead::Streamed => false,
                BodyRead::TimedOut => {
                    let bytes = error_response(408, "Request Timeout", "");
                    write_quietly(&mut io, &bytes, ctx.shared.cfg.timeout).await;
                    close_gracefully(io).await;
                    return;
                }
                BodyRead::Closed => return,
            };
        let keep_alive = ctx.admit();
        let stream = io.lend(ctx.shared.cfg.timeout);
        let loan = OnLoan(Some(io));
        {
            let mut st = lock(&handback.state);
            st.returned = None;
            st.dropped = false;
            // The app will read the rest of the body from the socket: readability
            // says nothing about the next request, so the hand-back must wake us.
            st.want_wake = !body_buffered;
        }
        let job = Job {
            conn: Conn {
                stream,
                buf: std::mem::take(&mut buf),
                pos,
                out: Vec::new(),
                out_limit: WRITE_BEHIND,
            },
            head,
            peer: peer.clone(),
            listener,
            keep_alive,
            reply: ReplyTo(Some(handback.clone())),
        };
        ctx.shared.queued.fetch_add(1, Ordering::Relaxed);
        ctx.shared.publish();
        if ctx.jobs.try_send(job).is_err() {
            // Cannot happen while each connection has at most one job; the dropped
            // job closes its socket.
            ctx.shared.queued.fetch_sub(1, Ordering::Relaxed);
            ctx.shared
                .log("error", "request queue full or closed".to_owned());
            return;
        }
        let mut early = Vec::new();
        let reply = wait_handback(&ctx.shared, &handback, &loan, body_buffered, &mut early).await;
        // The job has ended one way or the other (a reply, or the job dropped): no
        // thread uses the descriptor any more.
        let Some(back) = loan.give_back() else { return };
        io = back;
        let Some((Returned { conn, outcome }, done_at)) = reply else {
            return;
        };
        idle_since = done_at;
        let Conn {
            buf: b,
            pos: p,
            out,
            ..
        } = conn;
        buf = b;
        pos = p;
        // Bytes of the next request read while clearing the socket's readiness.
        buf.extend_from_slice(&early);
        if !out.is_empty() {
            // The write-behind tail: the app is done, its thread is free, and the
            // client gets the rest at its own pace, within `--timeout`.
            let t = ctx.shared.cfg.timeout.unwrap_or(Duration::from_secs(30));
            match tokio::time::timeout(t, io.write_all(&out)).await {
                Ok(Ok(())) => idle_since = Instant::now(),
                _ => return,
            }
        }
        match outcome {
            Outcome::KeepAlive => {
                if pos >= buf.len() {
                    buf.clear();
                    pos = 0;
                    // The Python side reads in 64 KiB steps; an idle connection keeps
                    // a small buffer.
                    buf.shrink_to(2048);
                }
            }
            Outcome::Close { clean: true } => return,
            Outcome::Close { clean: false } => {
                close_gracefully(io).await;
                return;
            }
        }
    }
}

/// Waits for the pool thread to hand the connection back (see [`Handback`]), and
/// returns it with the time its request finished. `None` when the job was dropped
/// unanswered.
///
/// With the whole request buffered the app never reads from the socket, so this
/// task may: non-blocking reads clear the reactor's readiness (any bytes, the next
/// request's, go to `early`), after which readability means the client has sent its
/// next request, by which time the response is normally done and waiting here. If
/// it is not (pipelining, a slow app), on EOF, or on a stop, the task asks to be
/// woken. A timer every `--keep-alive` seconds lets the caller close a connection
/// that stays idle.
async fn wait_handback(
    shared: &Shared,
    hb: &Handback,
    loan: &OnLoan,
    body_buffered: bool,
    early: &mut Vec<u8>,
) -> Option<(Returned, Instant)> {
    let io = loan.0.as_ref()?;
    let mut watch_socket = body_buffered;
    if watch_socket {
        let mut scratch = [0u8; 4096];
        let drained = loop {
            match io.try_read(&mut scratch) {
                Ok(0) => break false,
                Ok(n) => {
                    early.extend_from_slice(&scratch[..n]);
                    if early.len() >= PREREAD_MAX {
                        break false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break true,
                Err(_) => break false,
            }
        };
        watch_socket = drained && early.is_empty();
    }
    let mut stop = shared.stop_tx.subscribe();
    let tick = shared
        .cfg
        .keepalive
        .unwrap_or(Duration::ZERO)
        .max(Duration::from_millis(100));
    let mut check_at = Instant::now() + tick;
    loop {
        {
            let mut st = lock(&hb.state);
            if let Some((r, done_at)) = st.returned.take() {
                if !r.needs_task_now() {
                    shared.idle.fetch_sub(1, Ordering::Relaxed);
                }
                return Some((r, done_at));
            }
            if st.dropped {
                return None;
            }
            if !watch_socket {
                st.want_wake = true;
            }
        }
        tokio::select! {
            biased;
            _ = hb.notify.notified() => {}
            _ = io.readable(), if watch_socket => watch_socket = false,
            _ = tokio::time::sleep_until(check_at.into()), if watch_socket => {
                check_at = Instant::now() + tick;
            }
            _ = stop.changed(), if watch_socket => watch_socket = false,
        }
    }
}

/// A connection whose descriptor a pool thread is using ([`IoStream::lend`]). If the
/// task is dropped before the thread is done (the runtime going away at the end of a
/// stop that ran out of `--graceful-timeout`), the stream is leaked rather than
/// closed: closing would free the descriptor number for reuse while the thread may
/// still write to it. The process is exiting by then.
struct OnLoan(Option<IoStream>);

impl OnLoan {
    fn give_back(mut self) -> Option<IoStream> {
        self.0.take()
    }
}

impl Drop for OnLoan {
    fn drop(&mut self) {
        if let Some(io) = self.0.take() {
            std::mem::forget(io);
        }
    }
}

/// How pre-reading a body ended.
#[derive(Debug, PartialEq, Eq)]
enum BodyRead {
    /// The whole body is in the buffer: the app will not read from the socket.
    Complete,
    /// Large enough to be streamed by the app, or awaiting `100 Continue`, or framed
    /// wrongly (the app's `wsgi.input` finds and reports the error as on the sync
    /// worker), or cut short by EOF (likewise): the app reads from the socket.
    Streamed,
    /// The body stopped arriving for `--timeout`: 408.
    TimedOut,
    /// A socket error: close.
    Closed,
}

/// Whether the buffered bytes hold the whole body. `scanned` is how far into
/// `pending` the decoder has got (kept between calls, as the decoder's state is).
#[derive(Debug, PartialEq, Eq)]
enum BodyCheck {
    Complete,
    NeedMore,
    Invalid,
}

fn check_body(dec: &mut Decoder, pending: &[u8], scanned: &mut usize) -> BodyCheck {
    loop {
        if dec.is_done() {
            return BodyCheck::Complete;
        }
        let rest = pending.get(*scanned..).unwrap_or(&[]);
        match dec.decode(rest) {
            Err(_) => return BodyCheck::Invalid,
            Ok(d) if d.consumed == 0 => {
                return if dec.is_done() {
                    BodyCheck::Complete
                } else {
                    BodyCheck::NeedMore
                }
            }
            Ok(d) => *scanned += d.consumed,
        }
    }
}

/// Reads a body of up to [`PREREAD_MAX`] bytes into the buffer before the request is
/// queued. Not with `Expect: 100-continue`: that client waits for the interim
/// response, which the handler sends.
async fn preread_body(
    cfg: &IoConfig,
    io: &mut IoStream,
    buf: &mut Vec<u8>,
    pos: &mut usize,
    head: &RequestHead,
) -> BodyRead {
    if head.expect_continue {
        return BodyRead::Streamed;
    }
    let mut dec = Decoder::new(head.body, &cfg.limits);
    let mut scanned = 0usize;
    let deadline = cfg.timeout.map(|t| Instant::now() + t);
    loop {
        match check_body(&mut dec, &buf[*pos..], &mut scanned) {
            BodyCheck::Complete => return BodyRead::Complete,
            BodyCheck::Invalid => return BodyRead::Streamed,
            BodyCheck::NeedMore => {}
        }
        if buf.len() - *pos >= PREREAD_MAX {
            return BodyRead::Streamed;
        }
        compact(buf, pos);
        let r = tokio::select! {
            biased;
            r = io.read_more(buf) => Some(r),
            _ = sleep_until_opt(deadline) => None,
        };
        match r {
            Some(Ok(0)) => return BodyRead::Streamed,
            Some(Ok(_)) => {}
            Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Some(Err(_)) => return BodyRead::Closed,
            None => return BodyRead::TimedOut,
        }
    }
}

async fn write_quietly(io: &mut IoStream, bytes: &[u8], timeout: Option<Duration>) {
    let t = timeout.unwrap_or(Duration::from_secs(30));
    let _ = tokio::time::timeout(t, io.write_all(bytes)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::BodyKind;

    fn cfg() -> IoConfig {
        IoConfig {
            threads: 4,
            worker_connections: 10,
            keepalive: Some(Duration::from_secs(2)),
            timeout: Some(Duration::from_secs(30)),
            graceful: Duration::from_secs(30),
            max_requests: 0,
            limits: Limits::from_settings(4094, 100, 8190),
        }
    }

    #[test]
    fn keep_alive_rules() {
        let c = cfg();
        assert_eq!(c.max_keepalived(), 6);
        assert!(may_keep_alive(true, Phase::Serving, 0, c.max_keepalived()));
        assert!(may_keep_alive(true, Phase::Serving, 5, c.max_keepalived()));
        // As many idle connections as max_keepalived: the next response closes.
        assert!(!may_keep_alive(true, Phase::Serving, 6, c.max_keepalived()));
        // --keep-alive 0, a graceful stop, max-requests reached.
        assert!(!may_keep_alive(false, Phase::Serving, 0, 6));
        assert!(!may_keep_alive(true, Phase::Draining, 0, 6));
        assert!(!may_keep_alive(true, Phase::Exiting, 0, 6));
        // More threads than connections: keep-alive is effectively off (gunicorn
        // warns about the same setting).
        assert!(!may_keep_alive(true, Phase::Serving, 0, 0));
    }

    #[test]
    fn heartbeat_is_well_inside_the_timeout() {
        let mut c = cfg();
        assert_eq!(c.heartbeat_every(), Duration::from_secs(1));
        c.timeout = Some(Duration::from_secs(1));
        assert_eq!(c.heartbeat_every(), Duration::from_millis(250));
        c.timeout = None;
        assert_eq!(c.heartbeat_every(), Duration::from_secs(1));
        c.keepalive = None;
        assert_eq!(c.stop_linger(), Duration::from_secs(2));
    }

    #[test]
    fn body_check_length_and_chunked() {
        let limits = cfg().limits;
        let mut dec = Decoder::new(BodyKind::Length(5), &limits);
        let mut scanned = 0;
        assert_eq!(
            check_body(&mut dec, b"abc", &mut scanned),
            BodyCheck::NeedMore
        );
        assert_eq!(scanned, 3);
        // More bytes arrive (the buffer grows, the scanned prefix stays).
        assert_eq!(
            check_body(&mut dec, b"abcdeGET / HTTP/1.1\r\n", &mut scanned),
            BodyCheck::Complete
        );

        let body = b"3\r\nabc\r\n0\r\n\r\n";
        for split in 0..body.len() {
            let mut dec = Decoder::new(BodyKind::Chunked, &limits);
            let mut scanned = 0;
            assert_eq!(
                check_body(&mut dec, &body[..split], &mut scanned),
                BodyCheck::NeedMore,
                "split {split}"
            );
            assert_eq!(
                check_body(&mut dec, body, &mut scanned),
                BodyCheck::Complete,
                "split {split}"
            );
        }

        let mut dec = Decoder::new(BodyKind::Chunked, &limits);
        let mut scanned = 0;
        assert_eq!(
            check_body(&mut dec, b"zz\r\n", &mut scanned),
            BodyCheck::Invalid
        );

        let mut dec = Decoder::new(BodyKind::Empty, &limits);
        assert_eq!(check_body(&mut dec, b"", &mut 0), BodyCheck::Complete);
    }

    #[test]
    fn compact_keeps_pending_bytes() {
        let mut buf = b"consumedPENDING".to_vec();
        let mut pos = 8;
        compact(&mut buf, &mut pos);
        assert_eq!(&buf[pos..], b"PENDING");
        let mut pos2 = buf.len();
        compact(&mut buf, &mut pos2);
        assert!(buf.is_empty());
        assert_eq!(pos2, 0);
    }
}
