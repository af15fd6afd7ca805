"""The asgi worker's event-loop side (``-k asgi``, ``uvicorn.workers.UvicornWorker``).

The Rust core (``_ferrocorn.AsgiWorker``, ``src/worker/asgi.rs``) owns the sockets on
its own I/O thread: it accepts, parses, builds each request's scope and writes the
response bytes. This module runs on the worker's main thread: the asyncio event loop
(uvloop when installed and allowed), the lifespan protocol, and one task per request
with the app's ``receive``/``send`` callables. The loop learns about new requests, body
pieces, disconnects and drained write buffers from a single descriptor it watches with
``add_reader``: one wake-up per batch of events, no per-message thread hop.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
from http import HTTPStatus
from typing import Any

from ferrocorn import _ferrocorn

DISCONNECT = {"type": "http.disconnect"}
# AsgiConn.body() results (src/worker/asgi.rs).
BODY_WAIT, BODY_SENT, BODY_GONE = 0, 1, 2
_PHRASES = frozenset(int(s) for s in HTTPStatus)
PATHSEND_PIECE = 256 * 1024
# Request tasks' names: one string for all, rather than a "Task-N" formatted per task.
HTTP_TASK_NAME = "ferrocorn-http"
WS_TASK_NAME = "ferrocorn-websocket"
Task = asyncio.Task
Future = asyncio.Future


def is_asgi3(app: Any) -> bool:
    """uvicorn's test: a coroutine function (or object with one as ``__call__``) is an
    ASGI 3 app; anything else is an ASGI 2 double callable."""
    if inspect.isclass(app):
        return hasattr(app, "__await__")
    if inspect.isfunction(app):
        return inspect.iscoroutinefunction(app)
    call = getattr(app, "__call__", None)  # noqa: B004
    return inspect.iscoroutinefunction(call)


def as_asgi3(app: Any) -> tuple[Any, str]:
    """The app as an ASGI 3 callable, and the ``asgi.version`` its scopes carry."""
    if is_asgi3(app):
        return app, "3.0"

    async def asgi2(scope: dict, receive: Any, send: Any) -> Any:
        instance = app(scope)
        return await instance(receive, send)

    return asgi2, "2.0"


def choose_loop(name: str) -> asyncio.AbstractEventLoop:
    if name in ("auto", "uvloop"):
        try:
            import uvloop  # type: ignore[import-not-found]

            return uvloop.new_event_loop()
        except ImportError:
            if name == "uvloop":
                raise
    return asyncio.new_event_loop()


# The worker's one event loop, set when it starts: asyncio.get_running_loop() costs a
# getpid() syscall per call on Python 3.11, once per receive() that waits.
_LOOP: asyncio.AbstractEventLoop | None = None


def _new_future() -> asyncio.Future[Any]:
    # asyncio.Future itself: uvloop's create_future() makes the same object through a
    # keyword-argument call of its own (195 against 153 ns, timeit).
    return Future(loop=_LOOP if _LOOP is not None else asyncio.get_running_loop())


class _Paced:
    """``send()`` backpressure, for HTTP and WebSocket alike: when the connection has
    more than its high-water mark queued, ``send()`` waits for the I/O thread's
    ``Drained`` event (or the connection's loss, which also sets it)."""

    __slots__ = ("drain",)
    drain: asyncio.Future[None] | None

    async def _wait_drained(self) -> None:
        self.drain = _new_future()
        try:
            await self.drain
        finally:
            self.drain = None

    def on_drained(self) -> None:
        fut = self.drain
        if fut is not None and not fut.done():
            fut.set_result(None)


class Cycle(_Paced):
    """One HTTP request: the app's ``receive`` and ``send``."""

    __slots__ = (
        "body",
        "conn",
        "disconnected",
        "more_body",
        "scope",
        "task",
        "waiter",
    )

    def __init__(self, conn: Any, scope: dict, body: bytes, more_body: bool) -> None:
        self.conn = conn
        self.scope = scope
        # The first piece, delivered by the first receive(); with Expect: 100-continue
        # nothing was read yet and the first receive() asks for it (sending 100).
        self.body: bytes | None = body if (body or not more_body) else None
        self.more_body = more_body
        self.waiter: asyncio.Future[dict] | None = None
        self.drain = None
        self.disconnected = False
        self.task: asyncio.Task | None = None

    async def receive(self) -> dict:
        if self.body is not None:
            body, self.body = self.body, None
            return {"type": "http.request", "body": body, "more_body": self.more_body}
        if self.disconnected or self.conn.complete:
            return DISCONNECT
        if self.more_body:
            self.conn.read_body()
        fut = self.waiter = _new_future()
        try:
            return await fut
        finally:
            self.waiter = None

    def wake(self, message: dict) -> None:
        fut = self.waiter
        if fut is not None and not fut.done():
            fut.set_result(message)

    def on_body(self, data: bytes, more: bool) -> None:
        self.more_body = more
        self.wake({"type": "http.request", "body": data, "more_body": more})

    def on_disconnect(self) -> None:
        self.disconnected = True
        self.wake(DISCONNECT)
        self.on_drained()

    async def send(self, message: dict) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            # Inline rather than a helper coroutine: one coroutine object less for
            # every body message.
            body = message.get("body", b"")
            more = bool(message.get("more_body", False))
            if not isinstance(body, bytes):
                body = bytes(body)
            sent = self.conn.body(body, more)
            if sent == BODY_GONE:
                # The connection is gone (reset, or a write failed): ASGI 2.4's
                # OSError, so an app that streams without reading receive() stops.
                raise ClientDisconnected("client disconnected; cannot send the response body")
            if sent == BODY_WAIT and not self.conn.closed:
                await self._wait_drained()
            if not more and self.waiter is not None:
                self.wake(DISCONNECT)
        elif kind == "http.response.start":
            self.conn.start(message["status"], message.get("headers", ()))
        elif kind == "http.response.pathsend":
            await self._pathsend(message["path"])
        else:
            raise RuntimeError(f"Unexpected ASGI message '{kind}' sent, for an HTTP response.")

    async def _pathsend(self, path: str) -> None:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            left = size
            while True:
                piece = f.read(min(PATHSEND_PIECE, max(left, 0)) or 1)
                left -= len(piece)
                more = bool(piece) and left > 0
                await self.send({"type": "http.response.body", "body": piece, "more_body": more})
                if not more:
                    return


class ClientDisconnected(OSError):
    """``send()`` on a connection the client already closed (ASGI spec 2.4)."""


class WsCycle(_Paced):
    """One WebSocket connection: ``websocket.connect``, messages, ``disconnect``."""

    __slots__ = ("closed_code", "conn", "open", "queue", "scope", "state", "task", "waiter")

    def __init__(self, conn: Any, scope: dict) -> None:
        self.conn = conn
        self.scope = scope
        # Messages nobody is waiting for yet; a waiting receive() gets its message
        # handed to its future instead (the loop's _on_events, kind 5).
        self.queue: list[dict] = [{"type": "websocket.connect"}]
        self.waiter: asyncio.Future[dict] | None = None
        self.drain = None
        self.state = "connecting"  # accepted, closed (by the app), rejected
        # Accepted and not closed either way: send()'s fast path.
        self.open = False
        self.closed_code: int | None = None  # set once the connection is gone
        self.task: asyncio.Task[None] | None = None

    @property
    def disconnected(self) -> bool:
        return self.closed_code is not None

    async def receive(self) -> dict:
        if self.queue:
            return self.queue.pop(0)
        # One per message of an echo: made here, not through _new_future().
        fut = self.waiter = Future(loop=_LOOP)
        try:
            return await fut
        except asyncio.CancelledError:
            # Cancelled after its message was handed over but before this task ran
            # again: the message stays first for the next receive() (an
            # asyncio.Queue keeps it the same way).
            if fut.done() and not fut.cancelled():
                self.queue.insert(0, fut.result())
            raise
        finally:
            self.waiter = None

    def deliver(self, message: dict) -> None:
        fut = self.waiter
        if fut is not None and not fut.done():
            fut.set_result(message)
        else:
            self.queue.append(message)

    def on_closed(self, code: int, reason: str) -> None:
        if self.closed_code is None:
            self.closed_code = code
            self.open = False
            self.deliver({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.on_drained()

    def _refused(self) -> None:
        # The handshake was answered with an HTTP response and the server closes the
        # connection: a later receive() is the disconnect (1006, as uvicorn).
        self.state = "rejected"
        self.on_closed(1006, "")

    async def send(self, message: dict) -> None:
        if self.open:
            # The common case, one per message of an echo: a websocket.send dict,
            # checked and queued in Rust (None: anything else, handled below).
            sent = self.conn.ws_send_message(message)
            if sent is not None:
                if not sent and self.closed_code is None:
                    await self._wait_drained()
                return
        kind = message["type"]
        if kind == "websocket.send" and self.state == "accepted" and self.closed_code is None:
            # A Mapping that is not a dict, bytes-like data that is not bytes, or
            # text that is not a str (whose error ws_send raises).
            text = message.get("text")
            data = message.get("bytes")
            if (text is None) == (data is None):
                raise RuntimeError("websocket.send needs exactly one of 'text' and 'bytes'")
            if data is not None and type(data) is not bytes:
                data = bytes(data)
            if not self.conn.ws_send(text, data) and self.closed_code is None:
                await self._wait_drained()
            return
        if self.state == "connecting":
            if kind == "websocket.accept":
                self.conn.ws_accept(message.get("subprotocol"), message.get("headers") or ())
                self.state = "accepted"
                self.open = self.closed_code is None
            elif kind == "websocket.close":
                self.conn.ws_reject()
                self._refused()
            elif kind == "websocket.http.response.start":
                # The websocket.http.response extension: an HTTP answer instead.
                self.conn.start(message["status"], message.get("headers", ()))
                self.state = "responding"
            else:
                raise RuntimeError(
                    "Expected ASGI message 'websocket.accept', 'websocket.close' or "
                    f"'websocket.http.response.start', but got '{kind}'."
                )
            return
        if self.state == "responding":
            if kind != "websocket.http.response.body":
                raise RuntimeError(
                    f"Expected ASGI message 'websocket.http.response.body' but got '{kind}'."
                )
            body = message.get("body", b"")
            more = bool(message.get("more_body", False))
            sent = self.conn.body(body if isinstance(body, bytes) else bytes(body), more)
            if not more:
                self._refused()
            elif sent == BODY_WAIT and not self.conn.closed:
                await self._wait_drained()
            return
        if self.state != "accepted" or self.closed_code is not None:
            raise ClientDisconnected(f"WebSocket closed; cannot send '{kind}'")
        if kind == "websocket.close":
            self.state = "closed"
            self.open = False
            self.conn.ws_close(int(message.get("code") or 1000), message.get("reason") or "")
        else:
            raise RuntimeError(f"Unexpected ASGI message '{kind}' sent, for a WebSocket.")


class Lifespan:
    """The lifespan protocol, as uvicorn's ``LifespanOn`` (modes auto, on)."""

    def __init__(self, app: Any, version: str, mode: str, log: Any) -> None:
        self.app = app
        self.version = version
        self.mode = mode
        self.log = log
        self.state: dict[str, Any] = {}
        self.queue: asyncio.Queue[dict] = asyncio.Queue()
        self.startup_event = asyncio.Event()
        self.shutdown_event = asyncio.Event()
        self.startup_failed = False
        self.shutdown_failed = False
        self.error_occurred = False
        self.task: asyncio.Task[None] | None = None

    async def startup(self) -> bool:
        self.log.info("Waiting for application startup.")
        self.task = asyncio.get_running_loop().create_task(self.main())
        await self.queue.put({"type": "lifespan.startup"})
        await self.startup_event.wait()
        if self.startup_failed or (self.error_occurred and self.mode == "on"):
            self.log.error("Application startup failed. Exiting.")
            return False
        if not self.error_occurred:
            self.log.info("Application startup complete.")
        return True

    async def shutdown(self) -> None:
        if self.error_occurred or self.task is None:
            return
        self.log.info("Waiting for application shutdown.")
        await self.queue.put({"type": "lifespan.shutdown"})
        await self.shutdown_event.wait()
        if self.shutdown_failed or (self.error_occurred and self.mode == "on"):
            self.log.error("Application shutdown failed. Exiting.")
        else:
            self.log.info("Application shutdown complete.")

    async def main(self) -> None:
        scope = {
            "type": "lifespan",
            "asgi": {"version": self.version, "spec_version": "2.0"},
            "state": self.state,
        }
        try:
            await self.app(scope, self.queue.get, self.send)
        except BaseException as exc:
            self.error_occurred = True
            if self.startup_failed or self.shutdown_failed:
                return
            if self.mode == "auto":
                self.log.info("ASGI 'lifespan' protocol appears unsupported.")
            else:
                self.log.error("Exception in 'lifespan' protocol\n", exc_info=exc)
        finally:
            self.startup_event.set()
            self.shutdown_event.set()

    async def send(self, message: dict) -> None:
        kind = message["type"]
        if kind in ("lifespan.startup.complete", "lifespan.startup.failed"):
            if self.startup_event.is_set():
                raise RuntimeError(f"Unexpected ASGI message '{kind}' sent.")
            self.startup_failed = kind.endswith("failed")
            if self.startup_failed and message.get("message"):
                self.log.error(message["message"])
            self.startup_event.set()
        elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            if not self.startup_event.is_set() or self.shutdown_event.is_set():
                raise RuntimeError(f"Unexpected ASGI message '{kind}' sent.")
            self.shutdown_failed = kind.endswith("failed")
            if self.shutdown_failed and message.get("message"):
                self.log.error(message["message"])
            self.shutdown_event.set()
        else:
            raise RuntimeError(f"Unexpected ASGI message '{kind}' sent, for lifespan.")


class AsgiServer:
    """Drives one asgi worker process: lifespan, events from Rust, request tasks."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.cfg = worker.cfg
        self.log = worker.log
        self.app, self.version = as_asgi3(worker.wsgi)
        self.cycles: dict[int, Cycle] = {}
        self.core: Any = None
        self.done: asyncio.Future[None] | None = None
        self.spawn: Any = None
        # pre_request/post_request, as the WSGI workers call them (None: not set).
        self.hooks: dict[str, Any] | None = worker.hooks()
        # What runs each HTTP request: chosen once, not per request.
        self.run_request = self._run if self.hooks is None else self._run_hooked

    def run(self) -> None:
        loop = choose_loop(str(self.cfg.asgi_loop))
        asyncio.set_event_loop(loop)
        try:
            code = loop.run_until_complete(self.main())
        finally:
            asyncio.set_event_loop(None)
        if code:
            raise SystemExit(code)

    async def main(self) -> int:
        global _LOOP
        loop = _LOOP = asyncio.get_running_loop()
        w = self.worker
        listeners = [(s.fileno(), s.is_unix) for s in w.sockets]
        options = w.options()
        options.update(
            worker_connections=int(self.cfg.worker_connections),
            keepalive=float(self.cfg.keepalive),
            graceful_timeout=float(self.cfg.graceful_timeout),
            websocket_max_message_size=int(self.cfg.websocket_max_message_size),
            websocket_per_message_deflate=bool(self.cfg.websocket_per_message_deflate),
            websocket_ping_interval=float(self.cfg.websocket_ping_interval),
            websocket_ping_timeout=float(self.cfg.websocket_ping_timeout),
        )
        asgi = {"version": self.version, "spec_version": "2.3"}
        self.core = _ferrocorn.AsgiWorker(
            listeners, options, self.log.error_log, w.board, w.slot, asgi
        )
        w._core = self.core
        # Commands for the I/O thread are sent in one batch per pass of the loop.
        self.core.set_flusher(functools.partial(loop.call_soon, self.core.flush))
        loop.add_reader(w._wake_r, self._drain_wakeups)
        self._heartbeat()

        lifespan = None
        mode = str(self.cfg.asgi_lifespan)
        if mode != "off":
            lifespan = Lifespan(self.app, self.version, mode, self.log)
            if not await lifespan.startup():
                return 3  # WORKER_BOOT_ERROR: the master halts
            self.core.set_state(lifespan.state)

        # Request tasks are made directly, not through loop.create_task: uvloop's
        # wrapper and the "Task-N" name it leaves asyncio to format were 2k of a hello
        # world's 63k instructions (callgrind). A task factory the app installed (in
        # its lifespan startup, say) is still used.
        self.spawn = None if loop.get_task_factory() is None else loop.create_task
        self.done = loop.create_future()
        loop.add_reader(self.core.fileno(), self._on_events)
        if not w.alive:
            self.core.stop()
        self.core.start()
        await self.done
        loop.remove_reader(self.core.fileno())
        # Every running request task is in `cycles` (each removes itself at its end).
        tasks = [c.task for c in self.cycles.values() if c.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        self.core.flush()  # what the cancelled tasks queued: the loop stops after this
        if lifespan is not None:
            await lifespan.shutdown()
        return 0

    def _drain_wakeups(self) -> None:
        # Python already ran the signal handlers; just empty the pipe.
        try:
            while os.read(self.worker._wake_r, 4096):
                pass
        except OSError:
            pass

    def _heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        core = self.core
        if core is not None:
            core.heartbeat(self.cycles)
            if os.getppid() != self.worker.ppid and self.worker.alive:
                self.log.info("Parent changed, shutting down: %s", os.getpid())
                self.worker.alive = False
                core.stop()
        timeout = float(self.cfg.timeout)
        every = min(1.0, max(0.1, timeout / 4)) if timeout > 0 else 1.0
        loop.call_later(every, self._heartbeat)

    def _on_events(self) -> None:
        cycles = self.cycles
        loop = _LOOP or asyncio.get_running_loop()
        spawn = self.spawn
        run = self.run_request
        for ev in self.core.events():
            kind = ev[0]
            if kind == 0:
                conn = ev[1]
                scope = ev[2]
                if scope["type"] == "websocket":
                    ws = WsCycle(conn, scope)
                    cycles[conn.id] = ws  # type: ignore[assignment]
                    ws.task = loop.create_task(self._run_ws(ws), name=WS_TASK_NAME)
                else:
                    cycle = Cycle(conn, scope, ev[3], ev[4])
                    cycles[conn.id] = cycle
                    cycle.task = (
                        Task(run(cycle), loop=loop, name=HTTP_TASK_NAME)
                        if spawn is None
                        else spawn(run(cycle), name=HTTP_TASK_NAME)
                    )
            elif kind == 5:
                # A WebSocket message, its websocket.receive dict built in Rust
                # (checked second: one per message of an echo). WsCycle.deliver,
                # inlined: handed to a waiting receive(), else queued.
                c = cycles.get(ev[1])
                if c is not None:
                    fut = c.waiter
                    if fut is not None and not fut.done():
                        fut.set_result(ev[2])
                    else:
                        c.queue.append(ev[2])  # type: ignore[attr-defined]
            elif kind == 1:
                c = cycles.get(ev[1])
                if c is not None:
                    c.on_body(ev[2], ev[3])
            elif kind == 2:
                c = cycles.get(ev[1])
                if c is not None:
                    c.on_disconnect()
                    self._cancel_after_grace(c)
            elif kind == 3:
                c = cycles.get(ev[1])
                if c is not None:
                    c.on_drained()
            elif kind == 6:
                c = cycles.get(ev[1])
                if c is not None:
                    c.on_closed(ev[2], ev[3])  # type: ignore[attr-defined]
            elif kind == 4:
                if self.done is not None and not self.done.done():
                    self.done.set_result(None)

    def _cancel_after_grace(self, cycle: Any) -> None:
        """``--asgi-disconnect-grace-period``: an app still producing a response for a
        client that is gone gets that long to notice (its receive() says
        ``http.disconnect``, its send() raises), then its task is cancelled. An app
        whose response is complete is left alone: after the response Starlette runs
        background tasks in the same call, and those must not die with the client."""
        grace = float(self.cfg.asgi_disconnect_grace_period)
        task = getattr(cycle, "task", None)
        if grace <= 0 or task is None or cycle.conn.complete:
            return

        def cancel() -> None:
            if not task.done() and not cycle.conn.complete:
                scope = cycle.scope
                self.log.info(
                    "Cancelling the ASGI app for %s %s: its client disconnected %g s ago "
                    "(--asgi-disconnect-grace-period)",
                    scope.get("method", ""),
                    scope.get("path", ""),
                    grace,
                )
                task.cancel()

        asyncio.get_running_loop().call_later(grace, cancel)

    def _hook_request(self, scope: dict) -> Any:
        """gunicorn's ``req`` for the hooks, from the scope."""
        assert self.hooks is not None
        path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string", b"").decode("latin-1")
        path_text = path.decode("latin-1")
        uri = f"{path_text}?{query}" if query else path_text
        major, _, minor = scope.get("http_version", "1.1").partition(".")
        headers = [(n.decode("latin-1").upper(), v.decode("latin-1")) for n, v in scope["headers"]]
        return self.hooks["make_request"](
            scope["method"], uri, path_text, query, "", (int(major), int(minor or 0)), headers
        )

    def _post_request(self, req: Any, scope: dict, conn: Any) -> None:
        assert self.hooks is not None
        post = self.hooks["post_request"]
        if post is None:
            return
        try:
            status = int(conn.status)
            resp = self.hooks["make_response"](
                f"{status} {HTTPStatus(status).phrase}" if status in _PHRASES else str(status),
                status,
                conn.response_headers,
                int(conn.bytes_sent),
            )
            post(self.worker, req, scope, resp)
        except Exception:
            self.log.exception("Exception in post_request hook")

    async def _run_hooked(self, cycle: Cycle) -> None:
        """``_run`` between ``pre_request`` and ``post_request`` (only when set: a
        coroutine layer less per request otherwise)."""
        conn = cycle.conn
        req = None
        if self.hooks is not None:
            scope = cycle.scope
            try:
                req = self._hook_request(scope)
                pre = self.hooks["pre_request"]
                if pre is not None:
                    pre(self.worker, req)
            except Exception:
                self.log.exception("Error handling request %s %s", scope["method"], scope["path"])
                conn.end()  # nothing sent yet: 500
                self.cycles.pop(conn.id, None)
                return
        try:
            await self._run(cycle)
        finally:
            if req is not None:
                self._post_request(req, cycle.scope, conn)

    async def _run(self, cycle: Cycle) -> None:
        conn = cycle.conn
        try:
            result = await self.app(cycle.scope, cycle.receive, cycle.send)
        except asyncio.CancelledError:
            conn.end()
            raise
        except BaseException as exc:
            if not isinstance(exc, ClientDisconnected):
                self.log.error("Exception in ASGI application\n", exc_info=exc)
            conn.end()
            if not isinstance(exc, Exception):
                raise
        else:
            if result is not None:
                self.log.error("ASGI callable should return None, but returned '%s'.", result)
            unfinished = conn.end()
            if unfinished == 1:
                self.log.error("ASGI callable returned without starting response.")
            elif unfinished == 2:
                self.log.error("ASGI callable returned without completing response.")
        finally:
            self.cycles.pop(conn.id, None)

    async def _ws_finish(self, ws: WsCycle, error: bool) -> None:
        conn = ws.conn
        if ws.state in ("connecting", "responding"):
            conn.end()  # no handshake answer: 500 (or close a denial response cut short)
        elif ws.state == "accepted" and not ws.disconnected:
            conn.ws_close(1011 if error else 1000, "")

    async def _run_ws(self, ws: WsCycle) -> None:
        conn = ws.conn
        try:
            result = await self.app(ws.scope, ws.receive, ws.send)
        except asyncio.CancelledError:
            await self._ws_finish(ws, True)
            raise
        except BaseException as exc:
            if not isinstance(exc, ClientDisconnected):
                self.log.error("Exception in ASGI application\n", exc_info=exc)
            await self._ws_finish(ws, True)
            if not isinstance(exc, Exception):
                raise
        else:
            if result is not None:
                self.log.error("ASGI callable should return None, but returned '%s'.", result)
            if ws.state == "connecting":
                self.log.error("ASGI callable returned without sending handshake.")
            await self._ws_finish(ws, False)
        finally:
            self.cycles.pop(conn.id, None)


def run(worker: Any) -> None:
    """``Worker.run`` for the asgi class."""
    AsgiServer(worker).run()
