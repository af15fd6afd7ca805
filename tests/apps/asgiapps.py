"""Raw ASGI apps for tests/test_asgi.py."""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import weakref
from types import MappingProxyType


async def _json(send, obj, status=200, headers=()):
    body = json.dumps(obj).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _scope_view(scope):
    out = {}
    for k, v in scope.items():
        if k == "headers":
            out[k] = [[n.decode("latin-1"), val.decode("latin-1")] for n, val in v]
        elif isinstance(v, bytes):
            out[k] = v.decode("latin-1")
        elif isinstance(v, tuple):
            out[k] = list(v)
        elif k == "state":
            out[k] = {sk: repr(sv) for sk, sv in v.items()}
        else:
            out[k] = v
    return out


async def _read_body(receive):
    body = b""
    pieces = 0
    while True:
        msg = await receive()
        assert msg["type"] == "http.request", msg
        body += msg.get("body", b"")
        pieces += 1
        if not msg.get("more_body", False):
            return body, pieces


async def websocket(scope, receive, send):
    path = scope["path"]
    msg = await receive()
    assert msg["type"] == "websocket.connect", msg
    if path == "/ws/reject":
        await send({"type": "websocket.close"})
        return
    if path == "/ws/raise":
        raise RuntimeError("no handshake")
    if path == "/ws/deny":
        assert "websocket.http.response" in scope["extensions"]
        await send({"type": "websocket.http.response.start", "status": 401,
                    "headers": [(b"content-type", b"text/plain"), (b"x-why", b"token")]})
        await send({"type": "websocket.http.response.body", "body": b"go ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"away"})
        return
    subprotocol = scope["subprotocols"][0] if scope["subprotocols"] else None
    await send({"type": "websocket.accept", "subprotocol": subprotocol,
                "headers": [(b"x-ws", b"yes")]})
    if path == "/ws/scope":
        await send({"type": "websocket.send", "text": json.dumps(_scope_view(scope))})
    while True:
        msg = await receive()
        if msg["type"] == "websocket.disconnect":
            out = os.environ.get("ASGI_TEST_OUT")
            if out:
                with open(out, "w") as f:
                    json.dump({"code": msg["code"], "reason": msg.get("reason", "")}, f)
            return
        if msg.get("text") == "close-me":
            await send({"type": "websocket.close", "code": 4000, "reason": "bye"})
            return
        if msg.get("text") == "send-kinds":
            # Messages that are not a plain dict with str text or bytes data, then a
            # malformed one: send() must take them all as uvicorn does.
            await send({"type": "websocket.send", "bytes": bytearray(b"bytearray")})
            await send({"type": "websocket.send", "bytes": memoryview(b"memoryview")})
            await send(MappingProxyType({"type": "websocket.send", "text": "mapping"}))
            await send({"type": "websocket.send", "text": None, "bytes": b"text-none"})
            try:
                await send({"type": "websocket.send", "text": "a", "bytes": b"b"})
            except RuntimeError as e:
                await send({"type": "websocket.send", "text": f"RuntimeError: {e}"})
            try:
                await send({"type": "websocket.send", "text": 5})
            except TypeError:
                await send({"type": "websocket.send", "text": "TypeError"})
            continue
        if msg.get("text") is not None:
            await send({"type": "websocket.send", "text": msg["text"]})
        else:
            await send({"type": "websocket.send", "bytes": msg["bytes"]})


async def app(scope, receive, send):
    """Routes by path; no lifespan support (raises on it, like Django)."""
    if scope["type"] == "websocket":
        await websocket(scope, receive, send)
        return
    if scope["type"] != "http":
        raise RuntimeError(f"unsupported scope {scope['type']}")
    path = scope["path"][len(scope["root_path"]) :]
    if path.startswith("/scope"):
        await _json(send, _scope_view(scope))
    elif path == "/pid":
        await _json(send, {"pid": os.getpid()})
    elif path == "/echo":
        body, pieces = await _read_body(receive)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"x-pieces", str(pieces).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
    elif path == "/stream":
        n = int(scope["query_string"] or b"5")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(n):
            await send({"type": "http.response.body", "body": b"part%d\n" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/big":
        size = int(scope["query_string"] or b"1048576")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        piece = b"x" * 65536
        sent = 0
        while sent < size:
            n = min(len(piece), size - sent)
            sent += n
            await send({"type": "http.response.body", "body": piece[:n], "more_body": sent < size})
    elif path == "/big-length":
        # Content-Length framing, pieces of different sizes (large ones are written from
        # the bytes objects themselves), every byte depending on its offset.
        size = int(scope["query_string"] or b"1048576")
        data = bytes((i * 7 + i // 251) % 256 for i in range(size))
        headers = [(b"content-length", str(size).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        pos, step = 0, 1000
        while pos < size:
            piece = data[pos : pos + step]
            pos += len(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": pos < size})
            step = 300_000 if step == 1000 else 1000 if step == 70_000 else 70_000
    elif path == "/error-before":
        raise ValueError("boom before start")
    elif path == "/error-after":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise ValueError("boom after start")
    elif path == "/no-response":
        return
    elif path == "/early":
        # Answers without reading the body.
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"early"})
    elif path == "/after-response":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})
        msg = await receive()
        msg2 = await receive()
        assert msg["type"] == "http.request"
        assert msg2["type"] == "http.disconnect", msg2
    elif path == "/listen-disconnect":
        # Starlette's listen_for_disconnect: a receive() already waiting when the
        # response completes is answered with http.disconnect.
        await receive()
        listener = asyncio.ensure_future(receive())
        await asyncio.sleep(0)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})
        try:
            msg = await asyncio.wait_for(listener, 5)
            got = msg["type"]
        except TimeoutError:
            got = "timeout"
        with open(os.environ["ASGI_TEST_OUT"], "w") as f:
            f.write(got)
    elif path == "/disconnect":
        # Waits for the client to go away, then records what receive() said.
        await receive()
        msg = await receive()
        with open(os.environ["ASGI_TEST_OUT"], "w") as f:
            f.write(msg["type"])
    elif path == "/sleep":
        await asyncio.sleep(float(scope["query_string"] or b"0.5"))
        await _json(send, {"slept": True})
    elif path == "/block":
        import sys
        import time

        print("blocking the event loop", file=sys.stderr, flush=True)
        time.sleep(float(scope["query_string"] or b"60"))
        await _json(send, {"blocked": True})
    elif path == "/close":
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"connection", b"close")]}
        )
        await send({"type": "http.response.body", "body": b"bye"})
    elif path == "/bad-header":
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"1\r\nx-b: 2")]}
        )
        await send({"type": "http.response.body", "body": b"no"})
    elif path == "/pathsend":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.pathsend", "path": os.path.abspath(__file__)})
    else:
        await _json(send, {"path": path})


class Asgi2:
    """An ASGI 2 double callable."""

    def __init__(self, scope):
        self.scope = scope

    async def __call__(self, receive, send):
        if self.scope["type"] != "http":
            raise RuntimeError("no lifespan")
        await _json(send, {"asgi": self.scope["asgi"]})


asgi2 = Asgi2


def _lifespan_app(fail=False, fail_raise=False):
    async def lifespan_app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    if fail_raise:
                        raise RuntimeError("startup exploded")
                    if fail:
                        await send({"type": "lifespan.startup.failed", "message": "no database"})
                        return
                    scope["state"]["db"] = "connected"
                    scope["state"]["pid"] = os.getpid()
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    out = os.environ.get("ASGI_TEST_OUT")
                    if out:
                        with open(out, "a") as f:
                            f.write("shutdown\n")
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        else:
            state = scope["state"]
            state["touched"] = True  # a shallow copy: does not leak into other requests
            await _json(send, {"db": state.get("db"), "keys": sorted(state)})

    return lifespan_app


lifespan = _lifespan_app()
lifespan_fails = _lifespan_app(fail=True)
lifespan_raises = _lifespan_app(fail_raise=True)


_REQUEST_VAR: contextvars.ContextVar[str | None] = contextvars.ContextVar("request", default=None)
_FACTORY_TASKS: weakref.WeakSet[asyncio.Task] = weakref.WeakSet()


async def task_context(scope, receive, send):
    """Sets a context variable in every request and reports the value it found there
    first, and whether its task came from the task factory its lifespan installs."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":

                def factory(loop, coro, **kwargs):
                    task = asyncio.Task(coro, loop=loop, **kwargs)
                    _FACTORY_TASKS.add(task)
                    return task

                asyncio.get_running_loop().set_task_factory(factory)
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    seen = _REQUEST_VAR.get()
    _REQUEST_VAR.set(scope["path"])
    task = asyncio.current_task()
    await _json(
        send,
        {"seen": seen, "from_factory": task in _FACTORY_TASKS, "port": scope["client"][1]},
    )


def make_fastapi():
    """A FastAPI app (``asgiapps:make_fastapi()``): lifespan state, routes, a streamed
    response and a WebSocket echo. Imported lazily: FastAPI is a test extra."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
    from fastapi.responses import StreamingResponse
    from pydantic import BaseModel

    @asynccontextmanager
    async def lifespan(app):
        yield {"greeting": "hello from lifespan"}

    api = FastAPI(lifespan=lifespan)

    class Item(BaseModel):
        name: str
        price: float

    # This module uses postponed annotations: FastAPI resolves them in module globals.
    globals().update(Item=Item, Request=Request, WebSocket=WebSocket)

    @api.get("/items/{item_id}")
    async def read_item(item_id: int, q: str | None = None):
        return {"item_id": item_id, "q": q}

    @api.post("/items")
    async def create_item(item: Item):
        return {"name": item.name, "price": item.price, "tax": round(item.price * 0.2, 2)}

    @api.get("/state")
    async def state(request: Request):
        return {"greeting": request.state.greeting}

    @api.get("/stream")
    async def stream():
        async def gen():
            for i in range(3):
                yield f"line {i}\n"
                await asyncio.sleep(0.01)

        return StreamingResponse(gen(), media_type="text/plain")

    @api.websocket("/ws")
    async def ws_echo(websocket: WebSocket):
        await websocket.accept(subprotocol="chat" if websocket.scope["subprotocols"] else None)
        try:
            while True:
                text = await websocket.receive_text()
                await websocket.send_text(f"echo: {text}")
        except WebSocketDisconnect:
            pass

    return api
