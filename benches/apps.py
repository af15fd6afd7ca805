"""Applications served by the benchmark harness (``benches/run.py``).

Every server loads these as ``apps:<name>`` with ``benches/`` as its working directory
and on ``PYTHONPATH``.  Keep them trivial: the point is to measure the server, not the app.

WSGI: ``hello``, ``big``, ``sleep``; for the advise sweep (``benches/sweep.py``),
``cpu_bound`` (about 3 ms of pure-Python work per request), ``io_bound`` (a 30 ms
sleep, standing for a database or API call) and ``mixed`` (about 1.5 ms of work and a
3 ms sleep).  ASGI: ``hello_asgi``, ``big_asgi``, ``sleep_asgi``,
``ws_echo_asgi`` (WebSocket echo; HTTP requests to it get the hello response, so the
harness's readiness probe works against it too).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

HELLO_BODY = b"Hello, World!"
BIG_BODY = b"x" * (64 * 1024)
SLEEP_SECONDS = 0.020

StartResponse = Callable[..., Any]
Environ = dict[str, Any]
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def _headers(body: bytes) -> list[tuple[str, str]]:
    return [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]


# --------------------------------------------------------------------------- WSGI


def hello(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", _headers(HELLO_BODY))
    return [HELLO_BODY]


def big(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", _headers(BIG_BODY))
    return [BIG_BODY]


def sleep(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    time.sleep(SLEEP_SECONDS)
    start_response("200 OK", _headers(HELLO_BODY))
    return [HELLO_BODY]


def _work(n: int) -> int:
    """Pure-Python arithmetic holding the GIL: 50_000 rounds take about 3 ms on the
    machine the sweep was written on (a fixed amount of work, not a fixed time)."""
    x = 0
    for i in range(n):
        x = (x * 31 + i) % 1000003
    return x


def cpu_bound(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    _work(50_000)
    start_response("200 OK", _headers(HELLO_BODY))
    return [HELLO_BODY]


def io_bound(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    time.sleep(0.030)
    start_response("200 OK", _headers(HELLO_BODY))
    return [HELLO_BODY]


def mixed(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    _work(25_000)
    time.sleep(0.003)
    start_response("200 OK", _headers(HELLO_BODY))
    return [HELLO_BODY]


# --------------------------------------------------------------------------- ASGI


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _respond(send: Send, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(k.lower().encode(), v.encode()) for k, v in _headers(body)],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _drain(receive: Receive) -> None:
    """Consume the request body (benchmark requests have none, but be correct)."""
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)


ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _asgi_http(body: bytes, delay: float = 0.0) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        await _drain(receive)
        if delay:
            await asyncio.sleep(delay)
        await _respond(send, body)

    return app


hello_asgi = _asgi_http(HELLO_BODY)
big_asgi = _asgi_http(BIG_BODY)
sleep_asgi = _asgi_http(HELLO_BODY, SLEEP_SECONDS)


async def ws_echo_asgi(scope: Scope, receive: Receive, send: Send) -> None:
    """Echo every WebSocket message back; plain HTTP gets the hello response."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] == "http":
        await _drain(receive)
        await _respond(send, HELLO_BODY)
        return
    while True:
        message = await receive()
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif message["type"] == "websocket.receive":
            if message.get("bytes") is not None:
                await send({"type": "websocket.send", "bytes": message["bytes"]})
            else:
                await send({"type": "websocket.send", "text": message.get("text") or ""})
        elif message["type"] == "websocket.disconnect":
            return
