"""Raw ASGI apps for the checklist tests (tests/test_asgi_ws.py, tests/test_asgi_http.py).

What an app saw (a disconnect message, an exception from ``send``) is written as JSON to
``$ASGI_TEST_DIR/<name>.json``, ``name`` coming from the ``id`` query parameter; the file
appears whole (written aside, then renamed), so a test can poll for it.
"""

from __future__ import annotations

import asyncio
import json
import os
from urllib.parse import parse_qs


def _query(scope) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}


def _record(scope, obj) -> None:
    name = _query(scope).get("id", "out")
    path = os.path.join(os.environ["ASGI_TEST_DIR"], name + ".json")
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f)
    os.replace(path + ".tmp", path)


def _opt(q: dict[str, str], key: str, message: dict) -> None:
    """``key=none`` leaves the key out, ``key=null`` sends None, else the value."""
    if key not in q or q[key] == "none":
        return
    v: object = None if q[key] == "null" else q[key]
    if key == "code" and v is not None:
        v = int(q[key])
    message[key] = v


def _headers_view(headers) -> list[list[str]]:
    return [[n.decode("latin-1"), v.decode("latin-1")] for n, v in headers]


# --------------------------------------------------------------------------- WebSocket


async def _echo_until_disconnect(scope, receive, send) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "websocket.disconnect":
            _record(scope, {"code": msg["code"], "reason": msg.get("reason", "")})
            return
        if msg.get("text") is not None:
            await send({"type": "websocket.send", "text": msg["text"]})
        else:
            await send({"type": "websocket.send", "bytes": msg["bytes"]})


async def _deny(scope, receive, send, how: str) -> None:
    start = {"type": "websocket.http.response.start", "status": 403, "headers": []}
    if how == "single":
        start["headers"] = [(b"content-type", b"text/plain"), (b"content-length", b"6")]
        await send(start)
        await send({"type": "websocket.http.response.body", "body": b"denied"})
    elif how == "multi":
        start["status"] = 400
        start["headers"] = [(b"content-type", b"text/plain"), (b"content-length", b"20")]
        await send(start)
        await send({"type": "websocket.http.response.body", "body": b"x" * 10, "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"y" * 10})
    elif how == "nolength":
        start["headers"] = [(b"content-type", b"text/plain")]
        await send(start)
        await send({"type": "websocket.http.response.body", "body": b"den", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"ied"})
    elif how == "invalid-status":
        start["status"] = 700
        start["headers"] = [(b"content-length", b"0")]
        await send(start)
        return
    elif how == "double-start":
        start["status"] = 404
        start["headers"] = [(b"content-length", b"0")]
        await send(start)
        try:
            await send(start)
        except RuntimeError as exc:
            _record(scope, {"error": str(exc)})
            raise
        return
    elif how == "missing-body":
        start["status"] = 404
        start["headers"] = [(b"content-length", b"0")]
        await send(start)
        return
    elif how == "non-utf8":
        start["status"] = 400
        await send(start)
        await send({"type": "websocket.http.response.body", "body": b"\xff\xfe\xfd"})
    elif how == "custom-headers":
        start["status"] = 418
        start["headers"] = [
            (b"content-type", b"application/x-custom"),
            (b"content-length", b"5"),
            (b"x-custom", b"yes"),
        ]
        await send(start)
        await send({"type": "websocket.http.response.body", "body": b"teapo"})
    else:
        raise ValueError(how)
    # After the answer, the app learns the connection is gone.
    _record(scope, await receive())


async def websocket(scope, receive, send) -> None:
    path = scope["path"]
    q = _query(scope)
    msg = await receive()
    assert msg["type"] == "websocket.connect", msg

    # Before the accept.
    if path == "/ws/reject":
        await send({"type": "websocket.close"})
        return
    if path == "/ws/send-before-accept":
        await send({"type": "websocket.send", "text": "too early"})
        return
    if path == "/ws/return-before-accept":
        return
    if path == "/ws/deny":
        assert "websocket.http.response" in scope["extensions"]
        await _deny(scope, receive, send, q.get("how", "single"))
        return
    if path == "/ws/wait-before-accept":
        # The client goes away before we answer the handshake.
        msg = await receive()
        _record(scope, msg)
        return

    accept: dict = {"type": "websocket.accept"}
    if scope["subprotocols"]:
        accept["subprotocol"] = scope["subprotocols"][-1]
    if path == "/ws/extra-headers":
        accept["headers"] = [(b"x-extra", b"1"), (b"set-cookie", b"a=b")]
    await send(accept)

    if path.startswith("/ws/scope"):
        view = {k: v for k, v in scope.items() if k not in ("headers", "state", "extensions")}
        view["raw_path"] = scope["raw_path"].decode("latin-1")
        view["query_string"] = scope["query_string"].decode("latin-1")
        view["headers"] = _headers_view(scope["headers"])
        view["extensions"] = sorted(scope.get("extensions") or {})
        view["state"] = sorted(scope.get("state", {}))
        await send({"type": "websocket.send", "text": json.dumps(view)})
        await _echo_until_disconnect(scope, receive, send)
    elif path == "/ws/echo":
        await _echo_until_disconnect(scope, receive, send)
    elif path == "/ws/close":
        # Closes on the first message with the code/reason from the query.
        await receive()
        close: dict = {"type": "websocket.close"}
        _opt(q, "code", close)
        _opt(q, "reason", close)
        await send(close)
        msg = await receive()
        _record(scope, msg)
    elif path == "/ws/record":
        # Reads without answering until the disconnect; records everything.
        seen = []
        while True:
            msg = await receive()
            if msg.get("bytes") is not None:
                msg = {**msg, "bytes": msg["bytes"].hex()}
            seen.append(msg)
            if msg["type"] == "websocket.disconnect":
                break
        _record(scope, seen)
    elif path == "/ws/send-after-close":
        msg = await receive()
        assert msg["type"] == "websocket.disconnect", msg
        try:
            await send({"type": "websocket.send", "text": "late"})
        except Exception as exc:
            _record(scope, {"error": type(exc).__name__, "oserror": isinstance(exc, OSError)})
            raise
        _record(scope, {"error": None})
    elif path == "/ws/send-until-error":
        # Keeps sending after the client vanished: send() must raise an OSError.
        sent = 0
        try:
            while sent < 10000:
                await send({"type": "websocket.send", "text": "tick"})
                sent += 1
                await asyncio.sleep(0.01)
        except Exception as exc:
            _record(scope, {"error": type(exc).__name__, "oserror": isinstance(exc, OSError)})
            raise
        _record(scope, {"error": None})
    elif path == "/ws/double-accept":
        await send({"type": "websocket.accept"})
    elif path == "/ws/return-value":
        return 42  # type: ignore[return-value]
    elif path == "/ws/flood":
        # Sends 64 KiB messages as fast as send() lets it; a client that does not read
        # must slow it down. Progress goes to the record every 50 messages.
        piece = b"x" * 65536
        n = int(q.get("n", "400"))
        for i in range(n):
            try:
                await send({"type": "websocket.send", "bytes": piece})
            except Exception as exc:
                _record(scope, {"sent": i, "error": type(exc).__name__,
                                "oserror": isinstance(exc, OSError)})
                raise
            if i % 50 == 0:
                _record(scope, {"sent": i + 1})
        _record(scope, {"sent": n, "done": True})
        await _echo_until_disconnect({**scope, "query_string": b"id=flood-end"}, receive, send)
    elif path == "/ws/sequence":
        # n messages as fast as send() lets them go, text and binary, small and large
        # (a large one fills the socket and is written in parts): the client checks
        # that every byte arrives, in order.
        n = int(q.get("n", "300"))
        for i in range(n):
            await send(_sequence_message(i))
            if i % 2:
                # One message in a pass of the loop, then two: a lone message is
                # written by the I/O thread's dispatcher itself (write_direct in
                # src/worker/asgi.rs), two in a row go through the connection's task,
                # so the client sees both paths interleaved.
                await asyncio.sleep(0)
        _record(scope, {"sent": n})
        await _echo_until_disconnect(scope, receive, send)
    else:
        await send({"type": "websocket.close", "code": 4404})


def _sequence_message(i: int) -> dict:
    """The i-th message of /ws/sequence: text "text <i>", or binary: i in 4 bytes,
    then the byte i % 256 repeated (5 bytes to 23 KB: several fit under the
    high-water mark, so they go out back to back and some are written in parts)."""
    if i % 3 == 0:
        return {"type": "websocket.send", "text": f"text {i}"}
    size = (1, 1_000, 5, 3_000)[i % 4]
    return {"type": "websocket.send", "bytes": i.to_bytes(4, "big") + bytes([i % 256]) * size}


# --------------------------------------------------------------------------- HTTP


async def _start(send, status=200, headers=()) -> None:
    await send({"type": "http.response.start", "status": status, "headers": list(headers)})


async def http(scope, receive, send) -> None:
    path = scope["path"]
    if path == "/partial":
        await _start(send)
    elif path == "/double-start":
        await _start(send)
        await _start(send)
    elif path == "/body-before-start":
        await send({"type": "http.response.body", "body": b"x"})
    elif path == "/after-complete":
        await _start(send)
        await send({"type": "http.response.body", "body": b"done"})
        await send({"type": "http.response.body", "body": b"more"})
    elif path == "/return-value":
        await _start(send)
        await send({"type": "http.response.body", "body": b"value"})
        return 123  # type: ignore[return-value]
    elif path == "/short-length":
        await _start(send, headers=[(b"content-length", b"10")])
        await send({"type": "http.response.body", "body": b"12345"})
    elif path == "/long-length":
        await _start(send, headers=[(b"content-length", b"3")])
        await send({"type": "http.response.body", "body": b"1234567890"})
    elif path == "/app-chunked":
        await _start(send, headers=[(b"transfer-encoding", b"chunked")])
        await send({"type": "http.response.body", "body": b"ab", "more_body": True})
        await send({"type": "http.response.body", "body": b"cd", "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/app-chunked-empty":
        await _start(send, headers=[(b"transfer-encoding", b"chunked")])
        await send({"type": "http.response.body", "body": b""})
    elif path == "/no-content-te":
        await _start(send, 204, headers=[(b"transfer-encoding", b"chunked")])
        await send({"type": "http.response.body", "body": b""})
    elif path == "/iter-headers":
        headers = ((n, v) for n, v in [(b"x-one", b"1"), (b"x-two", b"2")])
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"iter"})
    elif path == "/own-server-header":
        await _start(send, headers=[(b"server", b"mine"), (b"date", b"yesterday")])
        await send({"type": "http.response.body", "body": b"own"})
    elif path == "/str-headers":
        await send({"type": "http.response.start", "status": 200, "headers": [("x-a", "1")]})
        await send({"type": "http.response.body", "body": b"no"})
    elif path == "/unknown-message":
        await send({"type": "http.response.nonsense"})
    elif path == "/extra-keys":
        await send({"type": "http.response.start", "status": 200, "headers": [], "extra": 1})
        await send({"type": "http.response.body", "body": b"extra", "whatever": True})
    elif path == "/trailers":
        await send({"type": "http.response.start", "status": 200, "trailers": True,
                    "headers": [(b"trailer", b"x-checksum")]})
        await send({"type": "http.response.body", "body": b"data"})
        await send({"type": "http.response.trailers", "headers": [(b"x-checksum", b"abc")],
                    "more_trailers": False})
    elif path == "/sleep":
        await asyncio.sleep(float(scope["query_string"] or b"1"))
        await _start(send)
        await send({"type": "http.response.body", "body": b"slept"})
    elif path == "/stream-forever":
        # Never reads receive(): only send() can tell it the client is gone.
        await _start(send)
        try:
            for _ in range(3000):
                await send({"type": "http.response.body", "body": b"x" * 1024,
                            "more_body": True})
                await asyncio.sleep(0.005)
        except Exception as exc:
            _record(scope, {"error": type(exc).__name__, "oserror": isinstance(exc, OSError)})
            raise
        _record(scope, {"error": None})
    elif path == "/wait-disconnect":
        # Ignores the client going away for a long time; records a cancellation.
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            _record(scope, {"cancelled": True})
            raise
        _record(scope, {"cancelled": False})
    else:
        body = json.dumps({"path": path, "extensions": sorted(scope.get("extensions") or {})})
        await _start(send, headers=[(b"content-type", b"application/json")])
        await send({"type": "http.response.body", "body": body.encode()})


async def app(scope, receive, send):
    if scope["type"] == "websocket":
        return await websocket(scope, receive, send)
    if scope["type"] == "http":
        return await http(scope, receive, send)
    raise RuntimeError("no lifespan here")


# --------------------------------------------------------------------------- lifespan


def _lifespan_recorder(shutdown_fails: bool):
    async def lifespan_app(scope, receive, send):
        if scope["type"] == "lifespan":
            out = os.path.join(os.environ["ASGI_TEST_DIR"], "lifespan-scope.json")
            with open(out + ".tmp", "w") as f:
                json.dump(scope, f)
            os.replace(out + ".tmp", out)
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    if shutdown_fails:
                        await send({"type": "lifespan.shutdown.failed",
                                    "message": "could not flush the cache"})
                    else:
                        await send({"type": "lifespan.shutdown.complete"})
                    return
        else:
            await _start(send)
            await send({"type": "http.response.body", "body": b"ok"})

    return lifespan_app


lifespan_recorder = _lifespan_recorder(False)
lifespan_shutdown_fails = _lifespan_recorder(True)


class Asgi2Lifespan:
    """An ASGI 2 app that records its lifespan scope."""

    def __init__(self, scope):
        self.scope = scope

    async def __call__(self, receive, send):
        await lifespan_recorder(self.scope, receive, send)


asgi2_lifespan = Asgi2Lifespan
