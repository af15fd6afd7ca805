"""A Starlette app with a lifespan context manager that yields state
(tests/test_asgi_frameworks.py).

``app``: the lifespan yields ``boot_pid`` (the worker that ran it) and a shared
``hits`` dict; every request reads them from ``request.state``. On shutdown it writes
``shutdown-<pid>`` into ``$ASGI_TEST_DIR`` when that is set.
``failing``: the lifespan raises before yielding (startup fails).
"""

from __future__ import annotations

import asyncio
import os
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


@asynccontextmanager
async def lifespan(app):
    yield {"boot_pid": os.getpid(), "hits": {"n": 0}}
    out = os.environ.get("ASGI_TEST_DIR")
    if out:
        with open(os.path.join(out, f"shutdown-{os.getpid()}"), "w") as f:
            f.write("done")


async def state(request: Request):
    hits = request.state.hits  # the same dict in every request: a shallow copy
    hits["n"] += 1
    leaked = getattr(request.state, "leaked", False)
    request.state.leaked = True  # must not reach the next request
    return JSONResponse({"pid": os.getpid(), "boot_pid": request.state.boot_pid,
                         "hits": hits["n"], "leaked": leaked})


async def background(request: Request):
    async def slow():
        await asyncio.sleep(float(request.query_params.get("s", "2")))

    return PlainTextResponse("queued", background=BackgroundTask(slow))


async def ws_state(websocket: WebSocket):
    await websocket.accept()
    await websocket.send_json({"pid": os.getpid(), "boot_pid": websocket.state.boot_pid})
    try:
        while True:
            await websocket.send_text((await websocket.receive_text())[::-1])
    except WebSocketDisconnect:
        pass


routes = [
    Route("/state", state),
    Route("/background", background),
    WebSocketRoute("/ws", ws_state),
]

app = Starlette(routes=routes, lifespan=lifespan)


@asynccontextmanager
async def failing_lifespan(app):
    raise RuntimeError("database unreachable")
    yield {}  # pragma: no cover


failing = Starlette(routes=routes, lifespan=failing_lifespan)
