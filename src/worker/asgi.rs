//! The ASGI worker: a tokio I/O thread owns the sockets, the Python main thread runs the
//! asyncio event loop and the app.
//!
//! - The **I/O thread** (current-thread tokio runtime, never takes the GIL) accepts,
//!   reads and parses request heads with [`crate::http::HeadParser`], decodes request
//!   bodies with [`Decoder`] (a first piece of up to 64 KiB eagerly, the rest only when
//!   the app asks for it), writes what the app sends, keeps connections alive and
//!   heartbeats.
//! - The **event loop** (Python main thread, `ferrocorn.asgi`) watches one descriptor
//!   (an eventfd) with `loop.add_reader`. The I/O thread pushes [`Event`]s onto a queue
//!   and bumps that descriptor only when the queue was empty, so a burst of requests costs
//!   the loop one wake-up. [`AsgiWorker::events`] drains the queue with the GIL held and
//!   builds each request's scope dict here, in Rust.
//! - The way back is a per-connection unbounded tokio channel of [`Cmd`]s: pushing onto
//!   it from the loop thread is a lock-free enqueue plus, at most, a waker call, so
//!   `send()` never blocks the loop. A byte counter bounds what a connection may have
//!   queued ([`HIGH_WATER`]); above it `send()` waits until the I/O thread has written
//!   enough (the `Drained` event), except after the final body, where waiting would
//!   bound nothing. A body of [`ZERO_COPY_MIN`] or more under plain framing is written
//!   from the app's `bytes` object, with the head in the same `writev`.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::signal::{pthread_sigmask, SigmaskHow};
use nix::sys::socket::MsgFlags;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use tokio::sync::{mpsc, watch, Semaphore};

use crate::http::parse::is_tchar;
use crate::http::response::error_response;
use crate::http::{
    percent_decode, reason_phrase, write_http_date, Decoder, HttpError, Limits, RequestHead,
    Version,
};
use crate::log::{AccessLog, Record};
use crate::net::{Listener, Peer};
use crate::scoreboard::{now_ms, Scoreboard, Slot, SlotState};
use crate::worker::aio::{
    accept_delay, batch_this_thread, block_async_signals, close_gracefully, compact, read_head,
    sleep_until_opt, HeadWait, IoListener, IoStream,
};
use crate::worker::sync::{get, get_or, inherited_listeners, is_transient_accept_error, Options};
use crate::worker::ws::{data_frame, DeflateParams, Incoming, WsConn};
use crate::worker::{HeadRead, Phase, PhaseCell};
use crate::wsgi::environ::{method_str, Trust};

/// Request-body bytes read ahead of the app (first piece) or per `receive()` after it.
const BODY_PIECE: usize = 64 * 1024;

/// Most response bytes a connection may have queued for the I/O thread before
/// `send()` waits.
const HIGH_WATER: usize = 64 * 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Settings of one asgi worker.
#[derive(Debug, Clone)]
struct Cfg {
    worker_connections: usize,
    keepalive: Option<Duration>,
    timeout: Option<Duration>,
    graceful: Duration,
    max_requests: u64,
    limits: Limits,
    root_path: String,
    /// `forwarded_allow_ips`: peers whose X-Forwarded-Proto/-For set `scheme`/`client`.
    trust: Trust,
    /// `--websocket-max-message-size` (0: the default).
    ws_max_message: usize,
    /// `--websocket-per-message-deflate`: accept permessage-deflate offers.
    ws_deflate: bool,
    /// `--websocket-ping-interval`: keepalive pings (None: off).
    ws_ping_interval: Option<Duration>,
    /// `--websocket-ping-timeout`: how long a ping may go unanswered (None: forever).
    ws_ping_timeout: Option<Duration>,
}

impl Cfg {
    fn heartbeat_every(&self) -> Duration {
        match self.timeout {
            Some(t) => (t / 4).clamp(Duration::from_millis(100), Duration::from_secs(1)),
            None => Duration::from_secs(1),
        }
    }

    /// How long an idle connection may stay once the worker is stopping, as the
    /// gthread worker (gunicorn 27 lingers on kept-alive connections): a request
    /// already on its way is answered, with `Connection: close`, rather than cut off.
    fn stop_linger(&self) -> Duration {
        self.keepalive.unwrap_or(Duration::from_secs(2))
    }
}

/// A request whose head (and first body piece) is in, for the loop.
#[derive(Debug)]
struct NewRequest {
    id: u64,
    head: RequestHead,
    client: Client,
    listener: usize,
    body: Vec<u8>,
    more_body: bool,
    keep_alive: bool,
    conn: Arc<ConnShared>,
    tx: mpsc::UnboundedSender<Cmd>,
    /// A WebSocket handshake request (scope type "websocket").
    websocket: bool,
}

/// A connection's peer, with the `--forwarded-allow-ips` check done once per
/// connection: for every request's scope it was 0.5k instructions of a hello world's
/// 73k (callgrind, keep-alive connections).
#[derive(Debug, Clone)]
struct Client {
    peer: Peer,
    /// The peer is in `--forwarded-allow-ips`: its `X-Forwarded-*` headers count.
    trusted: bool,
    /// The scope's `client` for the peer, `(host, port)`, made by the connection's
    /// first request and shared by the rest (a tuple is immutable).
    scope_client: Arc<OnceLock<Py<PyTuple>>>,
}

impl Client {
    fn new(peer: Peer, trust: &Trust) -> Client {
        let trusted = trust.allows(&peer);
        Client {
            peer,
            trusted,
            scope_client: Arc::default(),
        }
    }
}

/// What the I/O thread tells the loop.
#[derive(Debug)]
enum Event {
    Request(Box<NewRequest>),
    Body {
        id: u64,
        data: Vec<u8>,
        more: bool,
    },
    Disconnect(u64),
    Drained(u64),
    /// A WebSocket message from the client.
    WsMessage {
        id: u64,
        text: Option<String>,
        bytes: Option<Vec<u8>>,
    },
    /// The WebSocket is closed (by the client, the server or a loss).
    WsClosed {
        id: u64,
        code: u16,
        reason: String,
    },
    Log(&'static str, String),
    IoDone,
}

/// Bodies at least this large are written from the app's bytes object itself rather
/// than copied into the response buffer: a 64 KiB response spent 5% of its worker's
/// samples in that copy, and more in the page faults of allocating (and the allocator
/// trimming) a fresh 64 KiB buffer per response (perf, 2 workers, 64 connections).
const ZERO_COPY_MIN: usize = 16 * 1024;

/// A Python `bytes` object's buffer, readable on the I/O thread without the GIL.
#[derive(Debug)]
struct SharedBytes {
    /// Keeps the buffer alive. Dropped on the I/O thread without the GIL, the
    /// reference goes to pyo3's pending-decref pool, which the loop thread's next call
    /// into the extension drains.
    _obj: Py<PyBytes>,
    ptr: *const u8,
    len: usize,
}

// SAFETY: a `bytes` object is immutable and its buffer is part of the object, which
// `_obj` keeps alive for as long as this value exists; reading it needs no GIL, and
// nothing here touches the object's reference count off the GIL (pyo3 defers that).
unsafe impl Send for SharedBytes {}
// SAFETY: as for `Send`: the buffer is only ever read, by any number of threads.
unsafe impl Sync for SharedBytes {}

impl SharedBytes {
    fn new(b: &Bound<'_, PyBytes>) -> Self {
        let data = b.as_bytes();
        SharedBytes {
            _obj: b.clone().unbind(),
            ptr: data.as_ptr(),
            len: data.len(),
        }
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` and `len` describe the buffer of the object this holds, which
        // cannot change or go away meanwhile (see the `Send` impl).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// Response bytes for the I/O thread to write: framed bytes of its own, or those
/// followed by a large body written from the app's object (one `writev`).
#[derive(Debug)]
enum Payload {
    Owned(Vec<u8>),
    Shared(Vec<u8>, SharedBytes),
}

impl Payload {
    fn len(&self) -> usize {
        match self {
            Payload::Owned(v) => v.len(),
            Payload::Shared(head, b) => head.len() + b.len,
        }
    }

    async fn write_to(&self, io: &mut IoStream) -> std::io::Result<()> {
        match self {
            Payload::Owned(v) => io.write_all(v).await,
            Payload::Shared(head, b) => io.write_all_pair(head, b.as_slice()).await,
        }
    }
}

/// What the loop tells a connection's I/O task.
#[derive(Debug)]
enum Cmd {
    /// Bytes of the response (head and body already framed).
    Write(Payload),
    /// The app called `receive()` and wants the next body piece (sends `100 Continue`
    /// first when the client waits for it).
    ReadBody,
    /// The response is complete.
    End {
        keep_alive: bool,
    },
    /// Close now (an error after the response started).
    Abort,
    /// The `101 Switching Protocols` answer: the connection becomes a WebSocket.
    /// The 101 answer, and permessage-deflate if it was agreed.
    WsAccept(Vec<u8>, Option<DeflateParams>),
    WsText(String),
    WsBinary(Vec<u8>),
    /// The rest of a message frame the dispatcher began writing itself (see
    /// [`Shared::write_direct`]), and the message's share of `buffered`.
    WsRaw(Vec<u8>, usize),
    WsClose(u16, String),
}

/// Per-connection state shared by the loop and the I/O task.
#[derive(Debug)]
struct ConnShared {
    id: u64,
    buffered: AtomicUsize,
    want_drain: AtomicBool,
    closed: AtomicBool,
    /// An accepted WebSocket's socket, published while its I/O task has nothing of
    /// its own half written, for [`Shared::write_direct`]; -1 otherwise. Only the
    /// I/O thread reads or writes it, and that thread runs the task, so the socket
    /// is open whenever this holds it (see [`DirectWrites`]).
    direct_fd: AtomicI32,
}

impl ConnShared {
    fn new(id: u64) -> ConnShared {
        ConnShared {
            id,
            buffered: AtomicUsize::new(0),
            want_drain: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            direct_fd: AtomicI32::new(-1),
        }
    }
}

/// A command on its way from the loop to a connection's I/O task. The third part
/// names the connection for a WebSocket message the dispatcher may write itself.
type Outgoing = (mpsc::UnboundedSender<Cmd>, Cmd, Option<Arc<ConnShared>>);

#[derive(Debug)]
struct Shared {
    cfg: Cfg,
    phase: PhaseCell,
    stop_tx: watch::Sender<bool>,
    served: AtomicU64,
    board: Py<Scoreboard>,
    slot: usize,
    events: Mutex<Vec<Event>>,
    notified: AtomicBool,
    /// The loop's wake-up, watched with `add_reader`. An eventfd rather than a socket
    /// pair: `perf` on WebSocket echo put 2.8% of the worker's samples in
    /// `unix_stream_sendmsg` for the wake-up byte, an eventfd write is a counter bump.
    wake: EventFd,
    next_id: AtomicU64,
    open: AtomicUsize,
    /// Responses in progress (app running).
    active: AtomicUsize,
    /// Last I/O-thread tick, CLOCK_MONOTONIC ms.
    io_beat: AtomicU64,
    access: Option<AccessLog>,
    /// Commands from the loop waiting for the end of the loop's pass (see
    /// [`Shared::send_cmd`]).
    outbox: Mutex<Vec<Outgoing>>,
    /// A flush of `outbox` is scheduled on the loop.
    flush_armed: AtomicBool,
    /// Tells the I/O thread's dispatcher that `outbox` has a batch.
    flush_ready: tokio::sync::Notify,
    /// `loop.call_soon(core.flush)`, set by the loop once it runs.
    flusher: OnceLock<Py<PyAny>>,
}

impl Shared {
    fn slot(&self) -> Option<&Slot> {
        self.board.get().slot(self.slot)
    }

    fn event(&self, ev: Event) {
        lock(&self.events).push(ev);
        if !self.notified.swap(true, Ordering::SeqCst) {
            let _ = self.wake.write(1);
        }
    }

    fn log(&self, level: &'static str, msg: String) {
        self.event(Event::Log(level, msg));
    }

    /// Publishes the open connections at once (other workers' accept balancing reads
    /// them), with the apps running as the busy count.
    fn publish_connections(&self) {
        if let Some(s) = self.slot() {
            s.set_gauges(
                0,
                self.active.load(Ordering::Relaxed),
                self.open.load(Ordering::Relaxed),
            );
        }
    }

    fn begin_stop(&self) {
        self.stop_tx.send_replace(true);
    }

    /// Hands a command from the loop to a connection's I/O task. Sent one by one,
    /// each woke the I/O thread (an eventfd write on the loop thread, the loop's
    /// bottleneck: strace, WebSocket echo, one per message); queued here and sent
    /// together by one flush per pass of the loop, the first send of the batch wakes
    /// the runtime and the rest find it awake. The flush runs as soon as the callbacks
    /// already ready have run: a response waits for the loop's current pass, not for
    /// the app's next await elsewhere.
    fn send_cmd(
        &self,
        py: Python<'_>,
        tx: &mpsc::UnboundedSender<Cmd>,
        cmd: Cmd,
        direct: Option<&Arc<ConnShared>>,
    ) {
        let Some(flusher) = self.flusher.get() else {
            let _ = tx.send(cmd);
            return;
        };
        lock(&self.outbox).push((tx.clone(), cmd, direct.cloned()));
        if !self.flush_armed.swap(true, Ordering::AcqRel) && flusher.call0(py).is_err() {
            // No running loop to schedule on (shutting down): send now.
            self.flush();
        }
    }

    /// Called on the loop: the I/O thread's dispatcher takes the batch. One wake-up
    /// for the batch: sending each command from here woke the I/O thread per send
    /// whenever it had gone back to sleep in between (strace: one eventfd write per
    /// request even with batching).
    fn flush(&self) {
        self.flush_armed.store(false, Ordering::Release);
        self.flush_ready.notify_one();
    }

    /// The I/O thread's side of [`Shared::flush`]: hands each queued command to its
    /// connection task (same-thread wake-ups, no syscalls).
    async fn dispatch_commands(self: Arc<Self>) {
        loop {
            self.flush_ready.notified().await;
            let batch = std::mem::take(&mut *lock(&self.outbox));
            for (tx, cmd, direct) in batch {
                let cmd = match direct {
                    Some(cs) => match write_direct(&cs, cmd) {
                        Ok(n) => {
                            ws_sent(&self, &cs, cs.id, n, true);
                            continue;
                        }
                        Err(cmd) => cmd,
                    },
                    None => cmd,
                };
                let _ = tx.send(cmd);
            }
        }
    }
}

/// Writes a WebSocket message straight to its socket, when that can be done at
/// once: the connection's task is idle (`direct_fd`), nothing is queued ahead of
/// this message (everything sent and not yet written counts in `buffered`) and
/// the socket takes the bytes without blocking. That skips the channel, the
/// task's wake-up and a pass of its `select!`, for every message of an echo.
/// Ok: the message went out whole (its share of `buffered`, for [`ws_sent`]).
/// Err: the command the task must still carry out: all of it, or the rest of a
/// frame the socket took only in part. A write that fails is left to the task,
/// which writes again, sees the error and reports the close.
fn write_direct(cs: &ConnShared, cmd: Cmd) -> Result<usize, Cmd> {
    let (text, payload) = match &cmd {
        Cmd::WsText(t) => (true, t.as_bytes()),
        Cmd::WsBinary(b) => (false, b.as_slice()),
        _ => return Err(cmd),
    };
    let n = payload.len().max(1);
    let fd = cs.direct_fd.load(Ordering::Acquire);
    if fd < 0 || cs.buffered.load(Ordering::Acquire) != n {
        return Err(cmd);
    }
    let Ok(mut frame) = data_frame(text, payload) else {
        return Err(cmd);
    };
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
    match nix::sys::socket::send(fd, &frame, flags) {
        Ok(k) if k == frame.len() => Ok(n),
        Ok(k) if k > 0 => {
            frame.drain(..k);
            Err(Cmd::WsRaw(frame, n))
        }
        _ => Err(cmd),
    }
}

/// Publishes an accepted WebSocket's socket in its `ConnShared::direct_fd` for the
/// life of its I/O task, except while the task writes itself ([`DirectWrites::hold`]):
/// a frame of the dispatcher's must not land in the middle of one of the task's.
/// Dropped before the stream (declared after it), so the descriptor is withdrawn
/// before it is closed and cannot be reused under the dispatcher.
struct DirectWrites<'a> {
    cs: &'a ConnShared,
    fd: RawFd,
}

impl<'a> DirectWrites<'a> {
    /// `fd` is None when the connection cannot take direct writes (permessage-deflate:
    /// the compressor's state lives with the task).
    fn new(cs: &'a ConnShared, fd: Option<RawFd>) -> Self {
        let fd = fd.unwrap_or(-1);
        cs.direct_fd.store(fd, Ordering::Release);
        DirectWrites { cs, fd }
    }

    /// Withdraws the socket until the returned guard is dropped.
    fn hold(&self) -> HeldWrites<'_, 'a> {
        self.cs.direct_fd.store(-1, Ordering::Release);
        HeldWrites(self)
    }
}

impl Drop for DirectWrites<'_> {
    fn drop(&mut self) {
        self.cs.direct_fd.store(-1, Ordering::Release);
    }
}

struct HeldWrites<'b, 'a>(&'b DirectWrites<'a>);

impl Drop for HeldWrites<'_, '_> {
    fn drop(&mut self) {
        self.0.cs.direct_fd.store(self.0.fd, Ordering::Release);
    }
}

#[derive(Debug)]
struct Setup {
    listeners: Vec<Listener>,
}

/// Where each listener is bound, for `scope["server"]`.
/// The scope's `server` for a listener: `(host, port)`, built once; None for a unix
/// socket.
type ServerAddr = Option<Py<PyTuple>>;

/// The ASGI worker core, driven by `ferrocorn.asgi`.
#[pyclass(module = "ferrocorn._ferrocorn", name = "AsgiWorker", frozen)]
#[derive(Debug)]
pub struct AsgiWorker {
    shared: Arc<Shared>,
    setup: Mutex<Option<Setup>>,
    servers: Vec<ServerAddr>,
    log: Py<PyAny>,
    /// What every scope starts as a copy of, for HTTP (`[0]`) and WebSocket (`[1]`):
    /// see [`scope_base`].
    scope_base: [Py<PyDict>; 2],
    state: Mutex<Option<Py<PyDict>>>,
    io: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn secs(v: f64) -> Option<Duration> {
    (v > 0.0 && v.is_finite()).then(|| Duration::from_secs_f64(v))
}

#[pymethods]
impl AsgiWorker {
    /// `listeners`: list of `(fd, is_unix)`; `options` as for `GthreadWorker` (plus
    /// `root_path`); `asgi`: the scope's `asgi` dict (version depends on the app).
    #[new]
    #[pyo3(signature = (listeners, options, log, board, slot, asgi))]
    fn new(
        listeners: &Bound<'_, PyList>,
        options: &Bound<'_, PyDict>,
        log: Py<PyAny>,
        board: Py<Scoreboard>,
        slot: usize,
        asgi: Py<PyDict>,
    ) -> PyResult<Self> {
        let py = listeners.py();
        let opts = Options::from_dict(options)?;
        let worker_connections: usize = get::<usize>(options, "worker_connections")?.max(1);
        let keepalive: f64 = get(options, "keepalive")?;
        let graceful: f64 = get(options, "graceful_timeout")?;
        let cfg = Cfg {
            worker_connections,
            keepalive: secs(keepalive),
            timeout: opts.timeout,
            graceful: Duration::from_secs_f64(graceful.max(0.0)),
            max_requests: opts.max_requests,
            limits: opts.limits,
            root_path: opts.env.script_name.clone(),
            trust: opts.env.trust.clone(),
            ws_max_message: match options.get_item("websocket_max_message_size")? {
                Some(v) => v.extract::<usize>()?,
                None => WS_MAX_MESSAGE,
            },
            ws_deflate: get_or(options, "websocket_per_message_deflate", true)?,
            ws_ping_interval: secs(get_or(options, "websocket_ping_interval", 20.0)?),
            ws_ping_timeout: secs(get_or(options, "websocket_ping_timeout", 20.0)?),
        };
        let mut ls = Vec::new();
        let mut servers = Vec::new();
        for l in inherited_listeners(listeners)? {
            servers.push(match &l {
                Listener::Tcp(_, addr) => Some(
                    PyTuple::new(
                        py,
                        [
                            addr.ip().to_string().into_pyobject(py)?.into_any(),
                            addr.port().into_pyobject(py)?.into_any(),
                        ],
                    )?
                    .unbind(),
                ),
                Listener::Unix(_) => None,
            });
            ls.push(l);
        }
        let wake = EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
            .map_err(|e| PyOSError::new_err(format!("eventfd: {e}")))?;
        let (stop_tx, _) = watch::channel(false);
        let shared = Shared {
            cfg,
            phase: PhaseCell::new(),
            stop_tx,
            served: AtomicU64::new(0),
            board,
            slot,
            events: Mutex::new(Vec::new()),
            notified: AtomicBool::new(false),
            wake,
            next_id: AtomicU64::new(1),
            open: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            io_beat: AtomicU64::new(now_ms()),
            access: opts.access,
            outbox: Mutex::new(Vec::new()),
            flush_armed: AtomicBool::new(false),
            flush_ready: tokio::sync::Notify::new(),
            flusher: OnceLock::new(),
        };
        let root = opts.env.script_name.as_str();
        let scope_base = [
            scope_base(py, false, &asgi, root)?,
            scope_base(py, true, &asgi, root)?,
        ];
        Ok(AsgiWorker {
            shared: Arc::new(shared),
            setup: Mutex::new(Some(Setup { listeners: ls })),
            servers,
            log,
            scope_base,
            state: Mutex::new(None),
            io: Mutex::new(None),
        })
    }

    /// The descriptor the loop watches with `add_reader`.
    fn fileno(&self) -> RawFd {
        self.shared.wake.as_raw_fd()
    }

    /// `loop.call_soon(core.flush)`: how a batch of commands gets flushed at the end
    /// of the loop's current pass (see `Shared::send_cmd`). Until it is set, commands
    /// go out one by one.
    fn set_flusher(&self, flusher: Py<PyAny>) {
        let _ = self.shared.flusher.set(flusher);
    }

    /// Sends the commands queued during the loop's pass to their I/O tasks.
    fn flush(&self) {
        self.shared.flush();
    }

    /// The lifespan state; each request scope gets a shallow copy.
    fn set_state(&self, state: Py<PyDict>) {
        *lock(&self.state) = Some(state);
    }

    /// Starts the I/O thread (after lifespan startup).
    fn start(&self) -> PyResult<()> {
        let Setup { listeners } = lock(&self.setup)
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("AsgiWorker.start() called twice"))?;
        let old = block_async_signals();
        let shared = self.shared.clone();
        let h = std::thread::Builder::new()
            .name("ferrocorn-io".into())
            .spawn(move || io_thread(shared, listeners));
        if let Some(old) = old {
            let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
        }
        let h = h.map_err(|e| PyRuntimeError::new_err(format!("starting the I/O thread: {e}")))?;
        *lock(&self.io) = Some(h);
        // The event loop runs on this thread from now on; the I/O thread, started
        // above, keeps the default policy.
        batch_this_thread();
        Ok(())
    }

    /// Graceful stop (SIGTERM): stop accepting, finish what is in flight.
    fn stop(&self) {
        self.shared.phase.advance(Phase::Draining);
        self.shared.begin_stop();
    }

    /// Requests admitted so far (gunicorn's `worker.nr`).
    #[getter]
    fn requests(&self) -> u64 {
        self.shared.served.load(Ordering::Relaxed)
    }

    /// Whether the worker stopped because of max-requests.
    #[getter]
    fn max_requests_reached(&self) -> bool {
        self.shared.phase.get() == Phase::Exiting
    }

    /// Called by the loop every tick: heartbeats the slot when the I/O thread is alive
    /// too, so the master's `--timeout` sees a blocked loop or a stuck I/O thread.
    /// `cycles` is the loop's running requests, oldest first (a dict keeps insertion
    /// order), each with its `conn`: the first whose response is still in progress is
    /// the request `top` and `/stats` show. Looked up here, once a tick, rather than
    /// kept in a map by every request: its label and map entry were 1.7k of a hello
    /// world's 61k instructions (callgrind).
    #[pyo3(signature = (cycles=None))]
    fn heartbeat(&self, cycles: Option<&Bound<'_, PyDict>>) {
        let io_age = now_ms().saturating_sub(self.shared.io_beat.load(Ordering::Relaxed));
        let limit = u64::try_from(self.shared.cfg.heartbeat_every().as_millis())
            .unwrap_or(1000)
            .saturating_mul(4);
        if io_age > limit && lock(&self.io).is_some() {
            return;
        }
        if let Some(s) = self.shared.slot() {
            let state = if self.shared.phase.get() != Phase::Serving {
                SlotState::Draining
            } else if self.shared.active.load(Ordering::Relaxed) > 0 {
                SlotState::Busy
            } else {
                SlotState::Idle
            };
            if let Some((text, started)) = cycles.and_then(oldest_running) {
                s.set_request_text(&text, started);
            }
            s.set_state(state);
            s.set_gauges(
                0,
                self.shared.active.load(Ordering::Relaxed),
                self.shared.open.load(Ordering::Relaxed),
            );
        }
    }

    /// Takes what the I/O thread queued. Each item is a tuple:
    /// `(0, conn, scope, body, more_body)` a new request; `(1, id, body, more_body)` a
    /// body piece; `(2, id)` the client went away; `(3, id)` a connection's queue fell
    /// under the high-water mark; `(4,)` the I/O thread is done; `(5, id, message)` a
    /// WebSocket message (the `websocket.receive` dict); `(6, id, code, reason)` a
    /// WebSocket closed.
    fn events<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        // Drain first, then re-arm, then take: an event pushed after the re-arm writes
        // a new wake-up byte, so none is lost (at worst one wake-up finds nothing).
        // One read resets the counter (EAGAIN when a previous pass already did).
        let _ = self.shared.wake.read();
        self.shared.notified.store(false, Ordering::SeqCst);
        let (evs, more) = take_batch(&mut lock(&self.shared.events), EVENTS_PER_PASS);
        if more && !self.shared.notified.swap(true, Ordering::SeqCst) {
            // The rest waits for the loop's next pass: wake it for that.
            let _ = self.shared.wake.write(1);
        }
        let out = PyList::empty(py);
        for ev in evs {
            match ev {
                Event::Request(req) => {
                    let req = *req;
                    let scope = self.scope(py, &req)?;
                    let body = PyBytes::new(py, &req.body);
                    let more = req.more_body;
                    let conn = Conn::new(&self.shared, req);
                    out.append((0, Py::new(py, conn)?, scope, body, more))?;
                }
                Event::Body { id, data, more } => {
                    out.append((1, id, PyBytes::new(py, &data), more))?;
                }
                Event::Disconnect(id) => out.append((2, id))?,
                Event::Drained(id) => out.append((3, id))?,
                Event::WsMessage { id, text, bytes } => {
                    // The app's message itself, so the loop hands it on as it is.
                    let msg = PyDict::new(py);
                    msg.set_item(intern!(py, "type"), intern!(py, "websocket.receive"))?;
                    match (text, bytes) {
                        (Some(t), _) => msg.set_item(intern!(py, "text"), t)?,
                        (None, b) => msg.set_item(
                            intern!(py, "bytes"),
                            PyBytes::new(py, &b.unwrap_or_default()),
                        )?,
                    }
                    out.append((5, id, msg))?;
                }
                Event::WsClosed { id, code, reason } => out.append((6, id, code, reason))?,
                Event::Log(level, msg) => {
                    if let Err(e) = self.log.bind(py).call_method1(level, (msg,)) {
                        e.print(py);
                    }
                }
                Event::IoDone => {
                    if let Some(h) = lock(&self.io).take() {
                        py.detach(|| {
                            let _ = h.join();
                        });
                    }
                    out.append((4,))?;
                }
            }
        }
        Ok(out)
    }
}

impl AsgiWorker {
    fn scope<'py>(&self, py: Python<'py>, req: &NewRequest) -> PyResult<Bound<'py, PyDict>> {
        // Keys and constant values are interned: building them from UTF-8 for every
        // request was the loop thread's largest single cost in a hello-world profile
        // (py-spy --native: unicode_decode_utf8 under events()).
        let head = &req.head;
        // `type`, `asgi`, `root_path` and the usual `http_version` and `scheme` come
        // with the copy.
        let d = self.scope_base[usize::from(req.websocket)]
            .bind(py)
            .copy()?;
        if head.version == Version::Http10 {
            d.set_item(intern!(py, "http_version"), intern!(py, "1.0"))?;
        }
        let trusted = req.client.trusted;
        let proto = if trusted { forwarded_proto(head) } else { None };
        let https = proto.is_some_and(|p| p == "https" || p == "wss");
        if req.websocket {
            if https {
                d.set_item(intern!(py, "scheme"), intern!(py, "wss"))?;
            }
            let protos: Vec<String> = head
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-protocol"))
                .flat_map(|(_, v)| {
                    String::from_utf8_lossy(v)
                        .split(',')
                        .map(|p| p.trim().to_owned())
                        .filter(|p| !p.is_empty())
                        .collect::<Vec<_>>()
                })
                .collect();
            d.set_item(intern!(py, "subprotocols"), protos)?;
        } else {
            d.set_item(intern!(py, "method"), method_str(py, &head.method))?;
            if https {
                d.set_item(intern!(py, "scheme"), intern!(py, "https"))?;
            }
        }
        let (raw_path, query, _) = head.split_target();
        let decoded = percent_decode(raw_path);
        let path = String::from_utf8_lossy(&decoded);
        let root = &self.shared.cfg.root_path;
        if root.is_empty() {
            d.set_item(intern!(py, "path"), path.as_ref())?;
        } else {
            d.set_item(intern!(py, "path"), format!("{root}{path}"))?;
        }
        d.set_item(
            intern!(py, "raw_path"),
            PyBytes::new(py, raw_path.as_bytes()),
        )?;
        d.set_item(
            intern!(py, "query_string"),
            PyBytes::new(py, query.as_bytes()),
        )?;
        let headers = PyList::empty(py);
        for (name, value) in &head.headers {
            headers.append(PyTuple::new(
                py,
                [
                    lowercase_bytes(py, name.as_bytes())?,
                    PyBytes::new(py, value),
                ],
            )?)?;
        }
        d.set_item(intern!(py, "headers"), headers)?;
        let forwarded = if trusted {
            forwarded_client(head, &self.shared.cfg.trust)
        } else {
            None
        };
        let client = intern!(py, "client");
        match (forwarded, &req.client.peer) {
            (Some(host), _) => d.set_item(client, (host, 0))?,
            (None, Peer::Tcp { addr, host }) => {
                let tuple = match req.client.scope_client.get() {
                    Some(t) => t.bind(py).clone(),
                    None => {
                        let t = PyTuple::new(
                            py,
                            [
                                PyString::new(py, host).into_any(),
                                addr.port().into_pyobject(py)?.into_any(),
                            ],
                        )?;
                        let _ = req.client.scope_client.set(t.clone().unbind());
                        t
                    }
                };
                d.set_item(client, tuple)?
            }
            (None, Peer::Unix) => d.set_item(client, py.None())?,
        }
        match self.servers.get(req.listener).and_then(Option::as_ref) {
            Some(s) => d.set_item(intern!(py, "server"), s.bind(py))?,
            None => d.set_item(intern!(py, "server"), py.None())?,
        }
        match lock(&self.state).as_ref() {
            Some(state) => d.set_item(intern!(py, "state"), state.bind(py).copy()?)?,
            None => d.set_item(intern!(py, "state"), PyDict::new(py))?,
        }
        let ext = PyDict::new(py);
        if req.websocket {
            ext.set_item(intern!(py, "websocket.http.response"), PyDict::new(py))?;
        } else {
            ext.set_item(intern!(py, "http.response.pathsend"), PyDict::new(py))?;
        }
        d.set_item(intern!(py, "extensions"), ext)?;
        Ok(d)
    }
}

/// At most this many events per pass of the loop (see [`take_batch`]).
const EVENTS_PER_PASS: usize = 64;

/// The first `max` events of the queue, and whether any are left for the next pass.
/// A pass builds every new request's scope and task, then runs the tasks, then
/// flushes their responses to the I/O thread, so the I/O thread waits for the whole
/// pass. At 512 connections a pass took about 140 requests (perf: 0.007 loop wake-ups
/// per request), whose objects no longer sat in the caches when their tasks ran;
/// in passes of at most 64 the I/O thread writes one part's responses while the
/// loop works on the next. One worker, hello world, 512 connections: 52-64k -> 77k
/// req/s and 15.7-20.6 -> 13.5-13.7 µs of CPU a request; two workers: 80-82k ->
/// 82-86k req/s, 15.9-16.7 -> 14.8-15.9 µs; 64 connections (passes under 64)
/// unchanged.
fn take_batch<T>(queue: &mut Vec<T>, max: usize) -> (Vec<T>, bool) {
    if queue.len() > max {
        let rest = queue.split_off(max);
        (std::mem::replace(queue, rest), true)
    } else {
        (std::mem::take(queue), false)
    }
}

/// A header name as the scope's lowercase `bytes`, written straight into the new
/// object rather than lowercased into a `String` first (an allocation per header).
fn lowercase_bytes<'py>(py: Python<'py>, name: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    PyBytes::new_with(py, name.len(), |out| {
        for (o, b) in out.iter_mut().zip(name) {
            *o = b.to_ascii_lowercase();
        }
        Ok(())
    })
}

/// "METHOD /path" and start (CLOCK_MONOTONIC ms) of the first request among `cycles`
/// (see [`AsgiWorker::heartbeat`]) whose response is in progress.
fn oldest_running(cycles: &Bound<'_, PyDict>) -> Option<(String, u64)> {
    let py = cycles.py();
    cycles.values().iter().find_map(|cycle| {
        let conn = cycle.getattr(pyo3::intern!(py, "conn")).ok()?;
        let conn = conn.cast::<Conn>().ok()?.get();
        let inner = lock(&conn.inner);
        if !inner.active {
            return None;
        }
        let age = u64::try_from(inner.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let text = format!("{} {}", inner.head.method, inner.head.split_target().0);
        Some((text, now_ms().saturating_sub(age)))
    })
}

/// `X-Forwarded-Proto` when it names a known scheme (uvicorn's proxy-headers rule).
/// The dict every scope of a kind starts as a copy of: the keys in the order
/// `AsgiWorker::scope` fills them (as uvicorn's), the constant values (`type`,
/// `asgi`, `root_path`, and `http_version` 1.1 and an unforwarded `scheme` until a
/// request says otherwise) and a placeholder for each per-request key. The copy has
/// every slot already, so filling it replaces values: a fresh dict grew twice on the
/// way and took an insertion per key (callgrind, hello world: see docs/benchmarks.md).
fn scope_base(
    py: Python<'_>,
    websocket: bool,
    asgi: &Py<PyDict>,
    root: &str,
) -> PyResult<Py<PyDict>> {
    use pyo3::intern;
    let d = PyDict::new(py);
    let none = py.None();
    if websocket {
        d.set_item(intern!(py, "type"), intern!(py, "websocket"))?;
    } else {
        d.set_item(intern!(py, "type"), intern!(py, "http"))?;
    }
    d.set_item(intern!(py, "asgi"), asgi.bind(py))?;
    d.set_item(intern!(py, "http_version"), intern!(py, "1.1"))?;
    if websocket {
        d.set_item(intern!(py, "scheme"), intern!(py, "ws"))?;
        d.set_item(intern!(py, "subprotocols"), &none)?;
    } else {
        d.set_item(intern!(py, "scheme"), intern!(py, "http"))?;
        d.set_item(intern!(py, "method"), &none)?;
    }
    d.set_item(intern!(py, "path"), &none)?;
    if root.is_empty() {
        d.set_item(intern!(py, "root_path"), intern!(py, ""))?;
    } else {
        d.set_item(intern!(py, "root_path"), root)?;
    }
    for key in [
        intern!(py, "raw_path"),
        intern!(py, "query_string"),
        intern!(py, "headers"),
        intern!(py, "client"),
        intern!(py, "server"),
        intern!(py, "state"),
        intern!(py, "extensions"),
    ] {
        d.set_item(key, &none)?;
    }
    Ok(d.unbind())
}

fn forwarded_proto(head: &RequestHead) -> Option<&'static str> {
    let v = head.header("x-forwarded-proto")?;
    let v = String::from_utf8_lossy(v).trim().to_ascii_lowercase();
    ["http", "https", "ws", "wss"].into_iter().find(|p| *p == v)
}

/// The client from `X-Forwarded-For`: the rightmost address that is not a trusted
/// proxy (the leftmost when all are, or when every peer is trusted), as uvicorn.
fn forwarded_client(head: &RequestHead, trust: &Trust) -> Option<String> {
    let v = head.header("x-forwarded-for")?;
    let v = String::from_utf8_lossy(v);
    let hosts: Vec<&str> = v
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect();
    let first = (*hosts.first()?).to_owned();
    if matches!(trust, Trust::All) {
        return Some(first);
    }
    for h in hosts.iter().rev() {
        let trusted = h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| trust.allows_ip(&ip));
        if !trusted {
            return Some((*h).to_owned());
        }
    }
    Some(first)
}

/// How the response body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body may be sent (HEAD, 1xx, 204, 304).
    None,
    /// Content-Length: this many bytes still to come.
    Length(u64),
    Chunked,
    /// Until the connection closes (HTTP/1.0 without a length).
    Close,
}

#[derive(Debug)]
enum Resp {
    NotStarted,
    Started {
        status: u16,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
    },
    Streaming {
        framing: Framing,
    },
    Done,
}

/// One request's connection, as the loop sees it: `start`, `body`, `read_body`, `end`.
#[pyclass(module = "ferrocorn._ferrocorn", name = "AsgiConn", frozen)]
#[derive(Debug)]
pub struct Conn {
    #[pyo3(get)]
    id: u64,
    #[pyo3(get)]
    expect_continue: bool,
    websocket: bool,
    tx: mpsc::UnboundedSender<Cmd>,
    conn: Arc<ConnShared>,
    shared: Arc<Shared>,
    inner: Mutex<ConnInner>,
}

#[derive(Debug)]
struct ConnInner {
    resp: Resp,
    head: RequestHead,
    peer: Peer,
    keep_alive: bool,
    close_requested: bool,
    started: Instant,
    status: u16,
    /// The response headers as sent, kept as bytes: made text only for the access
    /// log and `post_request`, not for every response (four `String`s and their
    /// UTF-8 checks a hello world, under callgrind).
    log_headers: Vec<(Vec<u8>, Vec<u8>)>,
    sent: u64,
    active: bool,
}

impl Conn {
    fn new(shared: &Arc<Shared>, req: NewRequest) -> Conn {
        shared.active.fetch_add(1, Ordering::Relaxed);
        Conn {
            id: req.id,
            expect_continue: req.head.expect_continue,
            websocket: req.websocket,
            tx: req.tx,
            conn: req.conn,
            shared: shared.clone(),
            inner: Mutex::new(ConnInner {
                resp: Resp::NotStarted,
                head: req.head,
                peer: req.client.peer,
                keep_alive: req.keep_alive,
                close_requested: false,
                started: Instant::now(),
                status: 0,
                log_headers: Vec::new(),
                sent: 0,
                active: true,
            }),
        }
    }

    fn cmd(&self, py: Python<'_>, cmd: Cmd) {
        self.shared.send_cmd(py, &self.tx, cmd, None);
    }

    /// Queues response bytes for the I/O task. With `pace`, returns false when the
    /// connection is over [`HIGH_WATER`] and the caller must wait for `Drained` before
    /// sending more; without (the response's last bytes: waiting would bound nothing
    /// and cost a round trip between the threads, as a 64 KiB body with its head always
    /// crossed the mark; uvicorn's send() likewise waits only before writing more),
    /// always true.
    fn push(&self, py: Python<'_>, bytes: Payload, pace: bool) -> bool {
        let n = bytes.len();
        if n == 0 {
            return true;
        }
        if self.conn.closed.load(Ordering::Acquire) {
            return true;
        }
        if self.tx.is_closed() {
            return true;
        }
        let b = self.conn.buffered.fetch_add(n, Ordering::AcqRel) + n;
        self.cmd(py, Cmd::Write(bytes));
        !pace || !self.must_wait(b)
    }

    /// After queueing brought the connection to `queued` bytes: whether `send()` must
    /// wait for `Drained` (over [`HIGH_WATER`]; the I/O task is then asked to post
    /// it once it has written the queue back under the mark).
    fn must_wait(&self, queued: usize) -> bool {
        if queued <= HIGH_WATER {
            return false;
        }
        self.conn.want_drain.store(true, Ordering::SeqCst);
        if self.conn.buffered.load(Ordering::SeqCst) <= HIGH_WATER {
            // The I/O task may already have taken the flag and posted a stray Drained,
            // which the loop ignores when nobody waits.
            self.conn.want_drain.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    fn finish(&self, py: Python<'_>, inner: &mut ConnInner, keep_alive: bool) {
        inner.resp = Resp::Done;
        self.cmd(py, Cmd::End { keep_alive });
        self.access_log(inner);
        self.deactivate(inner);
    }

    fn deactivate(&self, inner: &mut ConnInner) {
        if inner.active {
            inner.active = false;
            self.shared.active.fetch_sub(1, Ordering::Relaxed);
            if let Some(s) = self.shared.slot() {
                let micros = u64::try_from(inner.started.elapsed().as_micros()).unwrap_or(u64::MAX);
                s.add_request(micros, inner.status);
            }
        }
    }

    fn access_log(&self, inner: &ConnInner) {
        let Some(log) = self.shared.access.as_ref() else {
            return;
        };
        let head = &inner.head;
        let (raw_path, query, _) = head.split_target();
        let decoded = String::from_utf8_lossy(&percent_decode(raw_path)).into_owned();
        let remote = inner.peer.host();
        let env = |_: &str| None;
        log.write(&Record {
            remote_addr: remote,
            method: &head.method,
            raw_uri: &head.target,
            path: &decoded,
            query,
            protocol: head.version.as_str(),
            request_headers: &head.headers,
            status: inner.status,
            response_headers: &text_headers(&inner.log_headers),
            bytes_sent: Some(inner.sent),
            duration: inner.started.elapsed(),
            environ: &env,
        });
    }

    /// Builds the head once the framing is known (first body message).
    fn head_bytes(
        &self,
        inner: &mut ConnInner,
        status: u16,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
        first: &[u8],
        more: bool,
    ) -> (Vec<u8>, Framing) {
        let head = &inner.head;
        let is_head = head.method == "HEAD";
        let bodyless = (100..200).contains(&status) || status == 204 || status == 304;
        let mut length: Option<u64> = None;
        let mut has_server = false;
        let mut has_date = false;
        let mut out = Vec::with_capacity(256 + first.len());
        out.extend_from_slice(head.version.as_str().as_bytes());
        out.push(b' ');
        let mut b = itoa::Buffer::new();
        out.extend_from_slice(b.format(status).as_bytes());
        out.push(b' ');
        out.extend_from_slice(reason_phrase(status).as_bytes());
        out.extend_from_slice(b"\r\n");
        let mut log_headers = headers;
        log_headers.retain(|(name, value)| {
            let is = |s: &[u8]| name.eq_ignore_ascii_case(s);
            if is(b"content-length") {
                length = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok());
            } else if is(b"transfer-encoding") {
                return false;
            } else if is(b"connection") {
                if value
                    .split(|&c| c == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
                {
                    inner.close_requested = true;
                }
                return false;
            } else if is(b"server") {
                has_server = true;
            } else if is(b"date") {
                has_date = true;
            }
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
            true
        });
        let framing = if bodyless {
            Framing::None
        } else if let Some(n) = length {
            if is_head {
                Framing::None
            } else {
                Framing::Length(n)
            }
        } else if !more {
            let n = first.len();
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(b.format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
            if is_head {
                Framing::None
            } else {
                Framing::Length(n as u64)
            }
        } else if is_head {
            Framing::None
        } else if head.version == Version::Http11 {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Framing::Chunked
        } else {
            Framing::Close
        };
        if !has_server {
            out.extend_from_slice(b"server: ferrocorn\r\n");
        }
        if !has_date {
            out.extend_from_slice(b"date: ");
            write_http_date_lower(&mut out);
            out.extend_from_slice(b"\r\n");
        }
        let keep = self.keep_alive_now(inner, framing);
        if !keep {
            out.extend_from_slice(b"connection: close\r\n");
        } else if head.version == Version::Http10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
        inner.status = status;
        inner.log_headers = log_headers;
        (out, framing)
    }

    fn keep_alive_now(&self, inner: &ConnInner, framing: Framing) -> bool {
        inner.keep_alive
            && !inner.close_requested
            && framing != Framing::Close
            && self.shared.phase.get() == Phase::Serving
    }
}

/// Accept balancing's unit for an asgi worker: a worker holding 4 connections more
/// than the least loaded one starts to defer accepts to it (see `accept_delay`).
/// Connections to an asgi worker are often long-lived (WebSockets, a proxy's
/// keep-alive pool), so a split made at connect time lasts. With 16, 64 WebSocket
/// connections opened at once to 2 workers split up to 25/39; with 4, no further
/// apart than 30/34 in six runs (hello world at 512 connections: unchanged).
const ACCEPT_STEP: usize = 4;

/// `AsgiConn.body()` results: queued; queued, but wait for `Drained` before sending
/// more; not sent, the client is gone.
const BODY_SENT: u8 = 1;
const BODY_WAIT: u8 = 0;
const BODY_GONE: u8 = 2;

/// The answer to an app that failed before starting its response: uvicorn's plain
/// text 500 (what ASGI apps and their tests expect), not gunicorn's HTML error page.
/// Response headers as text, for the access log and `post_request`.
fn text_headers(headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| {
            (
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect()
}

fn app_error_500() -> Vec<u8> {
    let mut out = Vec::with_capacity(192);
    out.extend_from_slice(
        b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain; charset=utf-8\r\n\
          content-length: 21\r\nconnection: close\r\nserver: ferrocorn\r\ndate: ",
    );
    write_http_date(&mut out);
    out.extend_from_slice(b"\r\n\r\nInternal Server Error");
    out
}

fn write_http_date_lower(out: &mut Vec<u8>) {
    // write_http_date appends the value itself.
    write_http_date(out);
}

fn header_pair(item: &Bound<'_, PyAny>) -> PyResult<(Vec<u8>, Vec<u8>)> {
    let (n, v): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item.extract().map_err(|_| {
        PyTypeError::new_err("ASGI response headers must be [name, value] pairs of bytes")
    })?;
    let n = n
        .cast::<PyBytes>()
        .map_err(|_| PyTypeError::new_err("ASGI header names must be bytes"))?
        .as_bytes()
        .to_vec();
    let v = v
        .cast::<PyBytes>()
        .map_err(|_| PyTypeError::new_err("ASGI header values must be bytes"))?
        .as_bytes()
        .to_vec();
    if n.is_empty() || !n.iter().all(|&b| is_tchar(b)) {
        return Err(PyValueError::new_err(format!(
            "invalid response header name {:?}",
            String::from_utf8_lossy(&n)
        )));
    }
    if v.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(PyValueError::new_err(format!(
            "invalid response header value for {:?}",
            String::from_utf8_lossy(&n)
        )));
    }
    Ok((n, v))
}

#[pymethods]
impl Conn {
    /// `http.response.start`.
    fn start(&self, status: &Bound<'_, PyAny>, headers: &Bound<'_, PyAny>) -> PyResult<()> {
        let status: u16 = status
            .extract()
            .map_err(|_| PyTypeError::new_err("ASGI response status must be an int"))?;
        // uvicorn's status lines cover 100..=599; anything else fails the app's
        // send and, before the response started, makes it a 500.
        if !(100..=599).contains(&status) {
            return Err(PyValueError::new_err(format!(
                "invalid ASGI response status {status}"
            )));
        }
        let mut hs = Vec::new();
        for item in headers.try_iter()? {
            hs.push(header_pair(&item?)?);
        }
        let mut inner = lock(&self.inner);
        match inner.resp {
            Resp::NotStarted => {}
            _ => {
                return Err(PyRuntimeError::new_err(
                    "Expected ASGI message 'http.response.body', but got 'http.response.start'.",
                ))
            }
        }
        inner.resp = Resp::Started {
            status,
            headers: hs,
        };
        Ok(())
    }

    /// Whether `http.response.start` was sent.
    #[getter]
    fn started(&self) -> bool {
        !matches!(lock(&self.inner).resp, Resp::NotStarted)
    }

    /// Whether the final body was sent.
    #[getter]
    fn complete(&self) -> bool {
        matches!(lock(&self.inner).resp, Resp::Done)
    }

    /// The response status (0 before `http.response.start`), for `post_request`.
    #[getter]
    fn status(&self) -> u16 {
        let inner = lock(&self.inner);
        match &inner.resp {
            Resp::Started { status, .. } => *status,
            _ => inner.status,
        }
    }

    /// Body bytes sent so far, for `post_request`.
    #[getter]
    fn bytes_sent(&self) -> u64 {
        lock(&self.inner).sent
    }

    /// The response headers as sent (names as the app gave them), for `post_request`.
    #[getter]
    fn response_headers(&self) -> Vec<(String, String)> {
        text_headers(&lock(&self.inner).log_headers)
    }

    /// Whether the client went away.
    #[getter]
    fn closed(&self) -> bool {
        self.conn.closed.load(Ordering::Acquire)
    }

    /// Whether what this connection has queued is under the high-water mark.
    #[getter]
    fn writable(&self) -> bool {
        self.conn.buffered.load(Ordering::Acquire) <= HIGH_WATER
    }

    /// `http.response.body`. Returns False when the caller must wait for the
    /// connection to drain (the `Drained` event) before sending more.
    fn body(&self, body: &Bound<'_, PyBytes>, more: bool) -> PyResult<u8> {
        let py = body.py();
        let data = body.as_bytes();
        let mut inner = lock(&self.inner);
        if self.conn.closed.load(Ordering::Acquire) && !matches!(inner.resp, Resp::Done) {
            // Gone before the response completed: the caller raises
            // ClientDisconnected (one call instead of two getters and this one).
            return Ok(BODY_GONE);
        }
        let resp = std::mem::replace(&mut inner.resp, Resp::Done);
        let (mut out, framing) = match resp {
            Resp::NotStarted => {
                inner.resp = Resp::NotStarted;
                return Err(PyRuntimeError::new_err(
                    "Expected ASGI message 'http.response.start', but got 'http.response.body'.",
                ));
            }
            Resp::Done => {
                // Messages after the final body are ignored (spec).
                return Ok(BODY_SENT);
            }
            Resp::Started { status, headers } => {
                self.head_bytes(&mut inner, status, headers, data, more)
            }
            Resp::Streaming { framing } => (Vec::with_capacity(data.len() + 16), framing),
        };
        let mut framing = framing;
        // A large body under plain framing goes out from the bytes object itself.
        let mut shared_body = None;
        let mut append = |out: &mut Vec<u8>| {
            if data.len() >= ZERO_COPY_MIN {
                shared_body = Some(SharedBytes::new(body));
            } else {
                out.extend_from_slice(data);
            }
        };
        match framing {
            Framing::None => {}
            Framing::Length(left) => {
                let n = data.len() as u64;
                if n > left {
                    inner.resp = Resp::Done;
                    self.cmd(py, Cmd::Abort);
                    self.deactivate(&mut inner);
                    return Err(PyRuntimeError::new_err(
                        "Response content longer than Content-Length",
                    ));
                }
                append(&mut out);
                framing = Framing::Length(left - n);
            }
            Framing::Chunked => {
                if !data.is_empty() {
                    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                    out.extend_from_slice(data);
                    out.extend_from_slice(b"\r\n");
                }
                if !more {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
            }
            Framing::Close => append(&mut out),
        }
        if framing != Framing::None {
            inner.sent += data.len() as u64;
        }
        let payload = match shared_body {
            Some(b) => Payload::Shared(out, b),
            None => Payload::Owned(out),
        };
        let ok = self.push(py, payload, more);
        if more {
            inner.resp = Resp::Streaming { framing };
        } else {
            let complete = !matches!(framing, Framing::Length(n) if n > 0);
            let keep = complete && self.keep_alive_now(&inner, framing);
            self.finish(py, &mut inner, keep);
        }
        Ok(if ok { BODY_SENT } else { BODY_WAIT })
    }

    /// `websocket.accept`: answers the handshake with `101 Switching Protocols`.
    #[pyo3(signature = (subprotocol=None, headers=None))]
    fn ws_accept(
        &self,
        py: Python<'_>,
        subprotocol: Option<String>,
        headers: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let mut hs = Vec::new();
        if let Some(h) = headers {
            for item in h.try_iter()? {
                let (n, v) = header_pair(&item?)?;
                if n.eq_ignore_ascii_case(b"sec-websocket-protocol") {
                    return Err(PyValueError::new_err(
                        "websocket.accept headers must not contain sec-websocket-protocol",
                    ));
                }
                hs.push((n, v));
            }
        }
        let mut inner = lock(&self.inner);
        let key = inner.head.header("sec-websocket-key").unwrap_or_default();
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key);
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n",
        );
        out.extend_from_slice(b"sec-websocket-accept: ");
        out.extend_from_slice(accept.as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Some(p) = subprotocol {
            if p.contains(['\r', '\n']) {
                return Err(PyValueError::new_err("invalid subprotocol"));
            }
            out.extend_from_slice(b"sec-websocket-protocol: ");
            out.extend_from_slice(p.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        let deflate = match inner.head.header("sec-websocket-extensions") {
            Some(offer) if self.shared.cfg.ws_deflate => {
                DeflateParams::negotiate(&String::from_utf8_lossy(offer))
            }
            _ => None,
        };
        let deflate = deflate.map(|(params, answer)| {
            out.extend_from_slice(b"sec-websocket-extensions: ");
            out.extend_from_slice(answer.as_bytes());
            out.extend_from_slice(b"\r\n");
            params
        });
        let mut has_server = false;
        let mut has_date = false;
        for (n, v) in &hs {
            has_server |= n.eq_ignore_ascii_case(b"server");
            has_date |= n.eq_ignore_ascii_case(b"date");
            out.extend_from_slice(n);
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
        if !has_server {
            out.extend_from_slice(b"server: ferrocorn\r\n");
        }
        if !has_date {
            out.extend_from_slice(b"date: ");
            write_http_date(&mut out);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        inner.status = 101;
        inner.resp = Resp::Streaming {
            framing: Framing::None,
        };
        self.cmd(py, Cmd::WsAccept(out, deflate));
        self.access_log(&inner);
        Ok(())
    }

    /// `websocket.send`. Returns False when the caller must wait for `Drained`.
    #[pyo3(signature = (text=None, data=None))]
    fn ws_send(&self, py: Python<'_>, text: Option<String>, data: Option<Vec<u8>>) -> bool {
        self.ws_frame(py, text, data)
    }

    /// `send()`'s fast path on an open WebSocket: the whole `websocket.send` message
    /// checked and queued here, where the dict lookups cost no bytecode (the loop
    /// thread runs one of these per message of an echo). True: queued; False: queued,
    /// and the caller must wait for `Drained`; None: not a plain `websocket.send`
    /// dict with `str` text or `bytes` data, for `send()`'s general path to handle.
    fn ws_send_message(
        &self,
        py: Python<'_>,
        message: &Bound<'_, PyAny>,
    ) -> PyResult<Option<bool>> {
        let Ok(msg) = message.cast::<PyDict>() else {
            return Ok(None);
        };
        let Some(kind) = msg.get_item(intern!(py, "type"))? else {
            return Ok(None);
        };
        if !kind
            .cast::<PyString>()
            .is_ok_and(|k| k.to_str().is_ok_and(|k| k == "websocket.send"))
        {
            return Ok(None);
        }
        let text = msg.get_item(intern!(py, "text"))?.filter(|t| !t.is_none());
        let data = msg.get_item(intern!(py, "bytes"))?.filter(|d| !d.is_none());
        let (text, data) = match (text, data) {
            (Some(t), None) => match t.cast::<PyString>() {
                Ok(t) => (Some(t.to_str()?.to_owned()), None),
                Err(_) => return Ok(None),
            },
            (None, Some(d)) => match d.cast::<PyBytes>() {
                Ok(d) => (None, Some(d.as_bytes().to_vec())),
                Err(_) => return Ok(None),
            },
            _ => {
                return Err(PyRuntimeError::new_err(
                    "websocket.send needs exactly one of 'text' and 'bytes'",
                ))
            }
        };
        Ok(Some(self.ws_frame(py, text, data)))
    }

    /// `websocket.close` after the accept: sends a close frame.
    #[pyo3(signature = (code=1000, reason=String::new()))]
    fn ws_close(&self, py: Python<'_>, code: u16, reason: String) {
        let mut inner = lock(&self.inner);
        inner.resp = Resp::Done;
        self.cmd(py, Cmd::WsClose(code, reason));
        self.deactivate(&mut inner);
    }

    /// `websocket.close` before the accept: the handshake is refused with 403.
    fn ws_reject(&self, py: Python<'_>) {
        let mut inner = lock(&self.inner);
        if !matches!(inner.resp, Resp::NotStarted) {
            return;
        }
        inner.resp = Resp::Done;
        inner.status = 403;
        self.push(
            py,
            Payload::Owned(error_response(403, "Forbidden", "")),
            false,
        );
        self.cmd(py, Cmd::End { keep_alive: false });
        self.access_log(&inner);
        self.deactivate(&mut inner);
    }

    /// The app wants the next request-body piece (the `Body` event brings it).
    fn read_body(&self, py: Python<'_>) {
        // After its response a request's `Conn` must not reach the connection's
        // next request, which shares the channel.
        if !matches!(lock(&self.inner).resp, Resp::Done) {
            self.cmd(py, Cmd::ReadBody);
        }
    }

    /// The app is done (returned or raised). Before the response started: a 500.
    /// After: close unless the response was complete. Returns what was unfinished,
    /// for the caller's log line, in one call instead of three getters: 0 nothing (or
    /// the client is gone), 1 the response had not started, 2 it had not completed.
    fn end(&self, py: Python<'_>) -> u8 {
        let mut inner = lock(&self.inner);
        let unfinished = match inner.resp {
            _ if self.conn.closed.load(Ordering::Acquire) => 0,
            Resp::Done => 0,
            Resp::NotStarted => 1,
            _ => 2,
        };
        match inner.resp {
            Resp::Done => {}
            Resp::NotStarted => {
                let bytes = app_error_500();
                inner.status = 500;
                inner.sent = 0;
                inner.resp = Resp::Done;
                self.push(py, Payload::Owned(bytes), false);
                self.cmd(py, Cmd::End { keep_alive: false });
                self.access_log(&inner);
                self.deactivate(&mut inner);
            }
            Resp::Started { .. } if self.empty_body_is_complete(&inner) => {
                // Only `http.response.start`, but its headers already describe the
                // whole response (Content-Length: 0, a bodyless status, HEAD): send
                // it, as uvicorn does, rather than cut the connection.
                drop(inner);
                let _ = self.body(&PyBytes::new(py, b""), false);
            }
            _ => {
                inner.resp = Resp::Done;
                self.cmd(py, Cmd::Abort);
                self.access_log(&inner);
                self.deactivate(&mut inner);
            }
        }
        unfinished
    }
}

impl Conn {
    /// Queues one WebSocket message (`text` or else `data`). False when the caller
    /// must wait for `Drained`: the connection holds more than `HIGH_WATER`.
    fn ws_frame(&self, py: Python<'_>, text: Option<String>, data: Option<Vec<u8>>) -> bool {
        let (n, cmd) = match (text, data) {
            (Some(t), _) => (t.len().max(1), Cmd::WsText(t)),
            (None, d) => {
                let d = d.unwrap_or_default();
                (d.len().max(1), Cmd::WsBinary(d))
            }
        };
        if self.conn.closed.load(Ordering::Acquire) || self.tx.is_closed() {
            return true;
        }
        let b = self.conn.buffered.fetch_add(n, Ordering::AcqRel) + n;
        self.shared.send_cmd(py, &self.tx, cmd, Some(&self.conn));
        !self.must_wait(b)
    }

    /// Whether a started response with no body message yet is complete as it stands.
    fn empty_body_is_complete(&self, inner: &ConnInner) -> bool {
        let Resp::Started { status, headers } = &inner.resp else {
            return false;
        };
        let bodyless = (100..200).contains(status) || *status == 204 || *status == 304;
        let zero_length = headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case(b"content-length") && v.trim_ascii() == b"0");
        bodyless || zero_length || inner.head.method == "HEAD"
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        if !self.websocket && !matches!(inner.resp, Resp::Done) {
            // Gone without `end()` (its task was dropped): the connection cannot
            // finish this response. An HTTP request's channel outlives it (see
            // `serve_conn`), so say so; a WebSocket's closes with its only sender.
            let _ = self.tx.send(Cmd::Abort);
        }
        if inner.active {
            inner.active = false;
            self.shared.active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

fn io_thread(shared: Arc<Shared>, listeners: Vec<Listener>) {
    match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(rt) => {
            rt.block_on(io_main(shared.clone(), listeners));
            drop(rt);
        }
        Err(e) => shared.log("error", format!("cannot start the I/O runtime: {e}")),
    }
    shared.event(Event::IoDone);
}

async fn io_main(shared: Arc<Shared>, listeners: Vec<Listener>) {
    let cap = shared.cfg.worker_connections;
    let conns = Arc::new(Semaphore::new(cap));
    let hb = tokio::spawn(io_heartbeat(shared.clone()));
    let dispatcher = tokio::spawn(shared.clone().dispatch_commands());
    let mut accepting = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        match IoListener::new(l) {
            Ok(fd) => accepting.push(tokio::spawn(accept_loop(
                shared.clone(),
                Arc::new(fd),
                i,
                conns.clone(),
            ))),
            Err(e) => shared.log("error", format!("listener: {e}")),
        }
    }
    let mut stop = shared.stop_tx.subscribe();
    let _ = stop.wait_for(|s| *s).await;
    for a in accepting {
        let _ = a.await;
    }
    let all = u32::try_from(cap).unwrap_or(u32::MAX);
    tokio::select! {
        _ = conns.acquire_many(all) => {}
        _ = tokio::time::sleep(shared.cfg.graceful) => {
            shared.log(
                "warning",
                format!(
                    "Graceful timeout: closing {} connection(s) still open",
                    shared.open.load(Ordering::Relaxed)
                ),
            );
        }
    }
    hb.abort();
    dispatcher.abort();
}

async fn io_heartbeat(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.cfg.heartbeat_every());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        shared.io_beat.store(now_ms(), Ordering::Relaxed);
    }
}

async fn accept_loop(shared: Arc<Shared>, l: Arc<IoListener>, index: usize, conns: Arc<Semaphore>) {
    let mut stop = shared.stop_tx.subscribe();
    loop {
        if *stop.borrow() {
            return;
        }
        let permit = tokio::select! {
            p = conns.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        // Accept balancing, as the gthread worker does (see `accept_delay`): without
        // it the first worker to wake took a whole burst of a load generator's 512
        // connections, and the others idled (hello world, 2 workers: 28k req/s with
        // a 524 ms p99 at 512 connections against 66k at 64; measured before the
        // benchmark harness stopped holding servers to one core, see
        // docs/benchmarks.md).
        let cap = shared.cfg.worker_connections;
        let delay = || {
            let held = cap.saturating_sub(conns.available_permits());
            accept_delay(
                held.saturating_sub(1),
                shared.board.get().least_connections_except(shared.slot),
                ACCEPT_STEP,
            )
        };
        let accepted = tokio::select! {
            r = l.accept(delay) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        match accepted {
            Ok((s, peer)) => {
                shared.open.fetch_add(1, Ordering::Relaxed);
                shared.publish_connections();
                let sh = shared.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    serve_conn(&sh, s, peer, index).await;
                    sh.open.fetch_sub(1, Ordering::Relaxed);
                    sh.publish_connections();
                });
            }
            Err(e) if is_transient_accept_error(&e) => {}
            Err(e) => {
                shared.log("error", format!("accept() failed: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Decodes body bytes already buffered into `out` (at most `max` bytes of data).
fn decode_buffered(
    dec: &mut Decoder,
    buf: &[u8],
    pos: &mut usize,
    out: &mut Vec<u8>,
    max: usize,
) -> Result<(), HttpError> {
    while !dec.is_done() && out.len() < max && *pos < buf.len() {
        let end = buf.len().min(*pos + (max - out.len()).max(1));
        let d = dec.decode(&buf[*pos..end])?;
        if d.consumed == 0 {
            if end < buf.len() {
                // The chunked framing needs more than the window: widen it.
                let d = dec.decode(&buf[*pos..])?;
                if d.consumed == 0 {
                    break;
                }
                out.extend_from_slice(&buf[*pos + d.data.start..*pos + d.data.end]);
                *pos += d.consumed;
                continue;
            }
            break;
        }
        out.extend_from_slice(&buf[*pos + d.data.start..*pos + d.data.end]);
        *pos += d.consumed;
    }
    Ok(())
}

/// Reads the next piece of body: returns the data (possibly empty only when done).
async fn read_body_piece(
    cfg: &Cfg,
    io: &mut IoStream,
    buf: &mut Vec<u8>,
    pos: &mut usize,
    dec: &mut Decoder,
    max: usize,
    wait_full: bool,
) -> Result<Vec<u8>, ()> {
    let mut out = Vec::new();
    let deadline = cfg.timeout.map(|t| Instant::now() + t);
    loop {
        decode_buffered(dec, buf, pos, &mut out, max).map_err(|_| ())?;
        if dec.is_done() || out.len() >= max || (!out.is_empty() && !wait_full) {
            return Ok(out);
        }
        compact(buf, pos);
        let r = tokio::select! {
            r = io.read_more(buf) => Some(r),
            _ = sleep_until_opt(deadline) => None,
        };
        match r {
            Some(Ok(0)) | Some(Err(_)) | None => return Err(()),
            Some(Ok(_)) => {}
        }
    }
}

fn admit(shared: &Shared) -> bool {
    let served = shared.served.fetch_add(1, Ordering::Relaxed) + 1;
    if shared.cfg.max_requests > 0 && served == shared.cfg.max_requests {
        shared.log(
            "info",
            "Autorestarting worker after current request.".to_owned(),
        );
        shared.phase.advance(Phase::Exiting);
        shared.begin_stop();
    }
    shared.cfg.keepalive.is_some() && shared.phase.get() == Phase::Serving
}

/// One client connection, from accept to close.
async fn serve_conn(shared: &Arc<Shared>, mut io: IoStream, peer: Peer, listener: usize) {
    let client = Client::new(peer, &shared.cfg.trust);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut pos = 0usize;
    let mut first = true;
    // One command channel for all the connection's requests: a channel per request
    // was 4.2k instructions of a hello world's 66k (its creation and its receiver's
    // drop, callgrind). Only one request's `Conn` can still send: the others are done
    // (see `Conn::read_body`), and a `Conn` dropped mid-response aborts in `Drop`,
    // since this task's sender keeps the channel open.
    let (tx, mut rx) = mpsc::unbounded_channel();
    loop {
        let cfg = &shared.cfg;
        let wait = HeadWait {
            limits: &cfg.limits,
            timeout: cfg.timeout,
            idle_until: (!first).then(|| Instant::now() + cfg.keepalive.unwrap_or(Duration::ZERO)),
            linger: cfg.stop_linger(),
        };
        let read = read_head(&mut io, &mut buf, &mut pos, &wait, &shared.stop_tx, || {}).await;
        let head = match read {
            HeadRead::Head(h) => h,
            HeadRead::Closed => return,
            HeadRead::Invalid(err) => {
                if err.wants_response() {
                    let ip = client.peer.host();
                    shared.log("warning", format!("Invalid request from ip={ip}: {err}"));
                    let _ = io.write_all(&err.to_response()).await;
                }
                close_gracefully(io).await;
                return;
            }
            HeadRead::TimedOut => {
                let _ = io
                    .write_all(&error_response(408, "Request Timeout", ""))
                    .await;
                close_gracefully(io).await;
                return;
            }
        };
        first = false;
        if is_websocket_upgrade(&head) {
            serve_ws(shared, io, buf, pos, head, client, listener).await;
            return;
        }
        let mut dec = Decoder::new(head.body, &shared.cfg.limits);
        let expect_continue = head.expect_continue;
        let first_piece = if expect_continue || dec.is_done() {
            Vec::new()
        } else {
            match read_body_piece(
                &shared.cfg,
                &mut io,
                &mut buf,
                &mut pos,
                &mut dec,
                BODY_PIECE,
                true,
            )
            .await
            {
                Ok(b) => b,
                Err(()) => {
                    let _ = io.write_all(&error_response(400, "Bad Request", "")).await;
                    close_gracefully(io).await;
                    return;
                }
            }
        };
        let keep_alive = admit(shared) && head.keep_alive;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let cs = Arc::new(ConnShared::new(id));
        shared.event(Event::Request(Box::new(NewRequest {
            id,
            head,
            client: client.clone(),
            listener,
            more_body: !dec.is_done(),
            body: first_piece,
            keep_alive,
            conn: cs.clone(),
            tx: tx.clone(),
            websocket: false,
        })));
        let mut sent_continue = false;
        let mut disconnected = false;
        // EOF while the app runs: the app hears `http.disconnect` (as under uvicorn),
        // but the response is still written, for a client that only half-closed.
        let mut peer_eof = false;
        let outcome = loop {
            let watch_eof =
                !disconnected && !peer_eof && dec.is_done() && buf.len() - pos < BODY_PIECE;
            let cmd = tokio::select! {
                c = rx.recv() => c,
                r = io.read_more(&mut buf), if watch_eof => {
                    match r {
                        Ok(0) => {
                            peer_eof = true;
                            shared.event(Event::Disconnect(id));
                        }
                        Err(_) => {
                            disconnected = true;
                            cs.closed.store(true, Ordering::Release);
                            shared.event(Event::Disconnect(id));
                        }
                        Ok(_) => {}
                    }
                    continue;
                }
            };
            match cmd {
                None => break None,
                Some(Cmd::Write(bytes)) => {
                    let n = bytes.len();
                    if !disconnected && bytes.write_to(&mut io).await.is_err() {
                        disconnected = true;
                        cs.closed.store(true, Ordering::Release);
                        shared.event(Event::Disconnect(id));
                    }
                    let left = cs.buffered.fetch_sub(n, Ordering::AcqRel) - n;
                    if left <= HIGH_WATER && cs.want_drain.swap(false, Ordering::SeqCst) {
                        shared.event(Event::Drained(id));
                    }
                }
                Some(Cmd::ReadBody) => {
                    if disconnected {
                        continue;
                    }
                    if expect_continue && !sent_continue {
                        sent_continue = true;
                        if io
                            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                            .await
                            .is_err()
                        {
                            disconnected = true;
                        }
                    }
                    let piece = if disconnected {
                        Err(())
                    } else {
                        read_body_piece(
                            &shared.cfg,
                            &mut io,
                            &mut buf,
                            &mut pos,
                            &mut dec,
                            BODY_PIECE,
                            false,
                        )
                        .await
                    };
                    match piece {
                        Ok(data) => shared.event(Event::Body {
                            id,
                            data,
                            more: !dec.is_done(),
                        }),
                        Err(()) => {
                            disconnected = true;
                            cs.closed.store(true, Ordering::Release);
                            shared.event(Event::Disconnect(id));
                        }
                    }
                }
                Some(Cmd::End { keep_alive }) => break Some(keep_alive),
                Some(Cmd::Abort) => break None,
                Some(_) => break None,
            }
        };
        // Tell the app its response is over if it still waits in receive().
        match outcome {
            Some(true) if !disconnected && !peer_eof => {
                if !dec.is_done() {
                    // The app answered without reading the whole body: skip the rest
                    // if it is small and quick, else close.
                    let ok = tokio::time::timeout(
                        Duration::from_secs(1),
                        read_body_piece(
                            &shared.cfg,
                            &mut io,
                            &mut buf,
                            &mut pos,
                            &mut dec,
                            1024 * 1024,
                            true,
                        ),
                    )
                    .await;
                    if !matches!(ok, Ok(Ok(_))) || !dec.is_done() {
                        close_gracefully(io).await;
                        return;
                    }
                }
                if buf.len() - pos == 0 {
                    buf.clear();
                    pos = 0;
                    buf.shrink_to(4096);
                }
            }
            Some(_) if !disconnected => {
                close_gracefully(io).await;
                return;
            }
            _ => return,
        }
    }
}

// ------------------------------------------------------------------ WebSocket

/// Largest WebSocket message accepted by default (`--websocket-max-message-size`).
const WS_MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// How long a closing WebSocket waits for the peer's close frame.
const WS_CLOSE_WAIT: Duration = Duration::from_secs(2);

fn is_websocket_upgrade(head: &RequestHead) -> bool {
    head.method == "GET"
        && head.version == Version::Http11
        && head
            .header("upgrade")
            .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"websocket"))
}

/// A WebSocket connection: the handshake request goes to the app like an HTTP request
/// (scope type "websocket"); after `websocket.accept` the socket is handed to
/// tokio-tungstenite for framing.
async fn serve_ws(
    shared: &Arc<Shared>,
    mut io: IoStream,
    mut buf: Vec<u8>,
    pos: usize,
    head: RequestHead,
    client: Client,
    listener: usize,
) {
    let key_ok = head
        .header("sec-websocket-key")
        .is_some_and(|k| !k.is_empty());
    let version_ok = head
        .header("sec-websocket-version")
        .is_some_and(|v| v.trim_ascii() == b"13");
    if !key_ok || !version_ok {
        let _ = io
            .write_all(&error_response(
                400,
                "Bad Request",
                "Missing or invalid Sec-WebSocket-Key or Sec-WebSocket-Version",
            ))
            .await;
        close_gracefully(io).await;
        return;
    }
    admit(shared);
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cs = Arc::new(ConnShared::new(id));
    shared.event(Event::Request(Box::new(NewRequest {
        id,
        head,
        client,
        listener,
        body: Vec::new(),
        more_body: false,
        keep_alive: false,
        conn: cs.clone(),
        tx,
        websocket: true,
    })));
    // Until the app accepts (or refuses) the handshake. EOF meanwhile tells the app
    // (1006), but an HTTP answer is still written: the client may only have
    // half-closed.
    let mut peer_eof = false;
    let accepted = loop {
        let cmd = tokio::select! {
            c = rx.recv() => c,
            r = io.read_more(&mut buf), if !peer_eof && buf.len() - pos < BODY_PIECE => {
                match r {
                    Ok(0) => {
                        peer_eof = true;
                        shared.event(Event::WsClosed { id, code: 1006, reason: String::new() });
                        continue;
                    }
                    Err(_) => {
                        cs.closed.store(true, Ordering::Release);
                        shared.event(Event::WsClosed { id, code: 1006, reason: String::new() });
                        return;
                    }
                    Ok(_) => continue,
                }
            }
        };
        match cmd {
            Some(Cmd::Write(bytes)) => {
                let n = bytes.len();
                let _ = bytes.write_to(&mut io).await;
                cs.buffered.fetch_sub(n, Ordering::AcqRel);
            }
            Some(Cmd::WsAccept(bytes, deflate)) => {
                if io.write_all(&bytes).await.is_err() {
                    cs.closed.store(true, Ordering::Release);
                    shared.event(Event::WsClosed {
                        id,
                        code: 1006,
                        reason: String::new(),
                    });
                    return;
                }
                break Some(deflate);
            }
            Some(Cmd::End { .. }) | Some(Cmd::Abort) | None => break None,
            Some(_) => {}
        }
    };
    let Some(deflate) = accepted else {
        close_gracefully(io).await;
        return;
    };
    let leftover = buf.get(pos..).map(<[u8]>::to_vec).unwrap_or_default();
    match io {
        IoStream::Tcp(s) => run_ws(shared, s, leftover, id, &cs, rx, deflate).await,
        IoStream::Unix(s) => run_ws(shared, s, leftover, id, &cs, rx, deflate).await,
    }
}

async fn run_ws<S>(
    shared: &Arc<Shared>,
    stream: S,
    leftover: Vec<u8>,
    id: u64,
    cs: &ConnShared,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    deflate: Option<DeflateParams>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + AsRawFd + Unpin,
{
    let max = match shared.cfg.ws_max_message {
        0 => WS_MAX_MESSAGE,
        n => n,
    };
    let fd = stream.as_raw_fd();
    let direct_ok = deflate.is_none();
    let mut ws = WsConn::new(stream, leftover, max, deflate);
    // After `ws`: dropped first, withdrawing the descriptor before it is closed.
    let direct = DirectWrites::new(cs, direct_ok.then_some(fd));
    let closed = |code: u16, reason: String| {
        cs.closed.store(true, Ordering::Release);
        shared.event(Event::WsClosed { id, code, reason });
    };
    let mut stop = shared.stop_tx.subscribe();
    // Keepalive pings, as uvicorn (the websockets library) sends them: one every
    // interval; a ping unanswered for the timeout closes the connection with 1011.
    // The two timers are made once and reset, not rebuilt by every pass of the select
    // below (one pass per message each way): a fresh `sleep_until` registers with the
    // timer wheel on its first poll and deregisters when dropped.
    let interval = shared.cfg.ws_ping_interval;
    let never = || tokio::time::Instant::now() + Duration::from_secs(365 * 86400);
    let ping_timer =
        tokio::time::sleep_until(interval.map_or_else(never, |i| (Instant::now() + i).into()));
    tokio::pin!(ping_timer);
    let pong_timer = tokio::time::sleep_until(never());
    tokio::pin!(pong_timer);
    let mut pong_due = false;
    // The server's stop, as one future for the connection's life: `stop.changed()`
    // made afresh by each pass registered and dropped a waiter every message (perf,
    // WebSocket echo: `changed_impl`, `BigNotify::notified` and `drop_notified` in
    // the I/O thread's top symbols).
    let stopping = async {
        loop {
            if stop.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            if *stop.borrow() {
                return;
            }
        }
    };
    tokio::pin!(stopping);
    loop {
        tokio::select! {
            () = &mut ping_timer, if interval.is_some() => {
                if let Some(i) = interval {
                    ping_timer.as_mut().reset((Instant::now() + i).into());
                }
                let _held = direct.hold();
                if ws.send_ping(b"").await.is_err() {
                    closed(1006, String::new());
                    return;
                }
                if !pong_due {
                    if let Some(t) = shared.cfg.ws_ping_timeout {
                        pong_due = true;
                        pong_timer.as_mut().reset((Instant::now() + t).into());
                    }
                }
            }
            () = &mut pong_timer, if pong_due => {
                let _held = direct.hold();
                let reason = "keepalive ping timeout";
                let _ = tokio::time::timeout(WS_CLOSE_WAIT, ws.send_close(Some((1011, reason))))
                    .await;
                closed(1011, reason.to_owned());
                return;
            }
            msg = ws.next() => match msg {
                Ok(Incoming::Text(t)) => shared.event(Event::WsMessage {
                    id,
                    text: Some(t),
                    bytes: None,
                }),
                Ok(Incoming::Binary(b)) => shared.event(Event::WsMessage {
                    id,
                    text: None,
                    bytes: Some(b),
                }),
                Ok(Incoming::Ping(p)) => {
                    let _held = direct.hold();
                    if ws.send_pong(&p).await.is_err() {
                        closed(1006, String::new());
                        return;
                    }
                }
                Ok(Incoming::Pong) => pong_due = false,
                Ok(Incoming::Close(frame)) => {
                    let _held = direct.hold();
                    // Echo the client's code in our close reply (RFC 6455 §5.5.1).
                    let reply = frame.as_ref().map(|(c, _)| (*c, ""));
                    let _ = tokio::time::timeout(WS_CLOSE_WAIT, ws.send_close(reply)).await;
                    let (code, reason) = frame.unwrap_or((1005, String::new()));
                    closed(code, reason);
                    return;
                }
                Err(e) => {
                    let _held = direct.hold();
                    if let Some(code) = e.close_code() {
                        let _ = tokio::time::timeout(
                            WS_CLOSE_WAIT,
                            ws.send_close(Some((code, ""))),
                        )
                        .await;
                        closed(code, String::new());
                    } else {
                        closed(1006, String::new());
                    }
                    return;
                }
            },
            cmd = rx.recv() => match cmd {
                Some(Cmd::WsText(t)) => {
                    let n = t.len().max(1);
                    let _held = direct.hold();
                    let r = ws.send_data(true, t.as_bytes()).await;
                    if !ws_sent(shared, cs, id, n, r.is_ok()) {
                        closed(1006, String::new());
                        return;
                    }
                }
                Some(Cmd::WsBinary(b)) => {
                    let n = b.len().max(1);
                    let _held = direct.hold();
                    let r = ws.send_data(false, &b).await;
                    if !ws_sent(shared, cs, id, n, r.is_ok()) {
                        closed(1006, String::new());
                        return;
                    }
                }
                Some(Cmd::WsRaw(bytes, n)) => {
                    let _held = direct.hold();
                    let r = ws.send_raw(&bytes).await;
                    if !ws_sent(shared, cs, id, n, r.is_ok()) {
                        closed(1006, String::new());
                        return;
                    }
                }
                Some(Cmd::WsClose(code, reason)) => {
                    let _held = direct.hold();
                    let _ = tokio::time::timeout(WS_CLOSE_WAIT, async {
                        if ws.send_close(Some((code, &reason))).await.is_ok() {
                            ws.wait_close_reply().await;
                        }
                    })
                    .await;
                    closed(code, reason);
                    return;
                }
                Some(_) => {}
                None => {
                    closed(1006, String::new());
                    return;
                }
            },
            () = &mut stopping => {
                let _held = direct.hold();
                // Server shutdown: close 1012 (service restart), as uvicorn.
                let _ = tokio::time::timeout(WS_CLOSE_WAIT, async {
                    if ws.send_close(Some((1012, ""))).await.is_ok() {
                        ws.wait_close_reply().await;
                    }
                })
                .await;
                closed(1012, String::new());
                return;
            }
        }
    }
}

/// Accounts for a message written (or not): releases its share of the buffered
/// bytes and wakes a `send()` waiting for the drain. False when the write failed.
fn ws_sent(shared: &Shared, cs: &ConnShared, id: u64, n: usize, ok: bool) -> bool {
    let left = cs.buffered.fetch_sub(n, Ordering::AcqRel) - n;
    if left <= HIGH_WATER && cs.want_drain.swap(false, Ordering::SeqCst) {
        shared.event(Event::Drained(id));
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse_head;

    fn head(raw: &[u8]) -> RequestHead {
        let limits = Limits::from_settings(4094, 100, 8190);
        match parse_head(raw, &limits) {
            Ok(Some((h, _))) => h,
            other => panic!("unparsed: {other:?}"),
        }
    }

    #[test]
    fn events_are_taken_in_passes_of_at_most_max() {
        let mut q: Vec<u32> = (0..150).collect();
        let (first, more) = take_batch(&mut q, 64);
        assert_eq!(first, (0..64).collect::<Vec<_>>());
        assert!(more);
        assert_eq!(q, (64..150).collect::<Vec<_>>());
        q.push(150); // arrives meanwhile: behind the rest, order kept
        let (second, more) = take_batch(&mut q, 64);
        assert_eq!(second, (64..128).collect::<Vec<_>>());
        assert!(more);
        let (third, more) = take_batch(&mut q, 64);
        assert_eq!(third, (128..151).collect::<Vec<_>>());
        assert!(!more);
        assert!(q.is_empty());
        let (none, more) = take_batch(&mut q, 64);
        assert!(none.is_empty() && !more);
    }

    #[test]
    fn forwarded_headers() {
        let trust =
            Trust::parse(&["127.0.0.1".to_owned(), "10.0.0.0/8".to_owned()]).unwrap_or(Trust::All);
        let h = head(
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-Proto: HTTPS \r\n\
              X-Forwarded-For: 203.0.113.7, 198.51.100.1, 10.1.2.3\r\n\r\n",
        );
        assert_eq!(forwarded_proto(&h), Some("https"));
        // The rightmost untrusted hop, not what the client claims further left.
        assert_eq!(
            forwarded_client(&h, &trust).as_deref(),
            Some("198.51.100.1")
        );
        assert_eq!(
            forwarded_client(&h, &Trust::All).as_deref(),
            Some("203.0.113.7")
        );
        let h = head(b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-Proto: gopher\r\n\r\n");
        assert_eq!(forwarded_proto(&h), None);
        assert_eq!(forwarded_client(&h, &trust), None);
        let h = head(b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.0.0.1, 127.0.0.1\r\n\r\n");
        assert_eq!(forwarded_client(&h, &trust).as_deref(), Some("10.0.0.1"));
    }

    #[test]
    fn websocket_upgrade_detection() {
        assert!(is_websocket_upgrade(&head(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\r\n"
        )));
        assert!(!is_websocket_upgrade(&head(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n\r\n"
        )));
        assert!(!is_websocket_upgrade(&head(
            b"POST /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n"
        )));
        assert!(!is_websocket_upgrade(&head(
            b"GET /ws HTTP/1.0\r\nUpgrade: websocket\r\n\r\n"
        )));
    }

    #[test]
    fn body_pieces_respect_the_window() {
        let limits = Limits::from_settings(4094, 100, 8190);
        let body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nNEXT";
        let mut dec = Decoder::new(crate::http::BodyKind::Chunked, &limits);
        let mut pos = 0;
        let mut out = Vec::new();
        decode_buffered(&mut dec, body, &mut pos, &mut out, 3).unwrap_or(());
        assert!(out.len() >= 3 && out.len() <= 5);
        decode_buffered(&mut dec, body, &mut pos, &mut out, 1024).unwrap_or(());
        assert_eq!(out, b"hello world");
        assert!(dec.is_done());
        assert_eq!(&body[pos..], b"NEXT");
    }

    /// Everything the peer end of a socket pair holds right now.
    fn drain(peer: &mut std::os::unix::net::UnixStream) -> Vec<u8> {
        use std::io::Read;
        peer.set_nonblocking(true).expect("nonblocking");
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match peer.read(&mut buf) {
                Ok(0) => return out,
                Ok(k) => out.extend_from_slice(&buf[..k]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return out,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    #[test]
    fn direct_writes_go_out_whole_and_only_when_nothing_is_ahead() {
        let (ours, mut peer) = std::os::unix::net::UnixStream::pair().expect("pair");
        let cs = ConnShared::new(7);
        cs.buffered.store(3, Ordering::SeqCst);
        // Not published (the task is writing, or the socket is gone): the task's.
        let r = write_direct(&cs, Cmd::WsText("abc".into()));
        assert!(matches!(r, Err(Cmd::WsText(ref t)) if t == "abc"), "{r:?}");
        assert!(drain(&mut peer).is_empty());

        cs.direct_fd.store(ours.as_raw_fd(), Ordering::SeqCst);
        assert_eq!(write_direct(&cs, Cmd::WsText("abc".into())).ok(), Some(3));
        assert_eq!(drain(&mut peer), b"\x81\x03abc");

        // A message still queued for the task counts in `buffered`: this one would
        // overtake it.
        cs.buffered.store(3 + 5, Ordering::SeqCst);
        let r = write_direct(&cs, Cmd::WsBinary(vec![1; 5]));
        assert!(
            matches!(r, Err(Cmd::WsBinary(ref b)) if b.len() == 5),
            "{r:?}"
        );
        assert!(drain(&mut peer).is_empty());

        // Only data messages: a close is the task's (it waits for the reply).
        let r = write_direct(&cs, Cmd::WsClose(1000, String::new()));
        assert!(matches!(r, Err(Cmd::WsClose(1000, _))), "{r:?}");
    }

    #[test]
    fn the_rest_of_a_frame_taken_in_part_goes_to_the_task() {
        let (ours, mut peer) = std::os::unix::net::UnixStream::pair().expect("pair");
        nix::sys::socket::setsockopt(&ours, nix::sys::socket::sockopt::SndBuf, &4096)
            .expect("SO_SNDBUF");
        let cs = ConnShared::new(7);
        cs.direct_fd.store(ours.as_raw_fd(), Ordering::SeqCst);
        let big = vec![9u8; 1 << 20];
        cs.buffered.store(big.len(), Ordering::SeqCst);
        let (rest, n) = match write_direct(&cs, Cmd::WsBinary(big.clone())) {
            Err(Cmd::WsRaw(rest, n)) => (rest, n),
            other => panic!("expected the rest of the frame, got {other:?}"),
        };
        assert_eq!(n, big.len());
        // The socket is full now: the next message is not written at all.
        cs.buffered.store(3, Ordering::SeqCst);
        let r = write_direct(&cs, Cmd::WsText("abc".into()));
        assert!(matches!(r, Err(Cmd::WsText(_))), "{r:?}");
        let mut wire = drain(&mut peer);
        assert!(!wire.is_empty() && !rest.is_empty());
        wire.extend_from_slice(&rest);
        assert_eq!(wire, data_frame(false, &big).expect("frame"));
    }
}
