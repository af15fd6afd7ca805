"""Plain WSGI applications used by the black-box test suite.

Every callable here is served by the server under test as ``wsgiapps:<name>``
(the tests start the server with ``tests/apps`` as its working directory).

* ``echo``      -- returns a JSON description of the request (reads all of wsgi.input).
* ``app``       -- a small router with behaviour-specific endpoints (see ``ROUTES``);
                   unknown paths fall back to ``echo``.
* ``validated`` -- an app wrapped in ``wsgiref.validate.validator``.
* ``create_app`` -- an application factory (``wsgiapps:create_app()``).
"""

import hashlib
import json
import os
import sys
import tempfile
import time
from urllib.parse import parse_qs
from wsgiref.validate import validator

ECHO_KEYS = (
    "REQUEST_METHOD",
    "RAW_URI",
    "PATH_INFO",
    "QUERY_STRING",
    "SERVER_PROTOCOL",
    "SCRIPT_NAME",
    "SERVER_NAME",
    "SERVER_PORT",
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "wsgi.url_scheme",
    "wsgi.multithread",
    "wsgi.multiprocess",
    "wsgi.run_once",
    "wsgi.input_terminated",
)


def _json_response(start_response, data, status="200 OK", extra_headers=()):
    body = json.dumps(data, sort_keys=True).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    headers.extend(extra_headers)
    start_response(status, headers)
    return [body]


def _query(environ):
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _read_all(stream, size=65536):
    h = hashlib.sha256()
    n = 0
    while True:
        chunk = stream.read(size)
        if not chunk:
            break
        h.update(chunk)
        n += len(chunk)
    return n, h.hexdigest()


def echo(environ, start_response):
    """Describe the request as JSON: selected environ keys, headers, body size and hash."""
    data = {}
    for key in ECHO_KEYS:
        if key in environ:
            data[key] = environ[key]
    for key, value in environ.items():
        if key.startswith(("HTTP_", "CONTENT_")):
            data[key] = value
    n, digest = _read_all(environ["wsgi.input"])
    data["body_length"] = n
    data["body_sha256"] = digest
    data["pid"] = os.getpid()
    data["wsgi.version"] = list(environ.get("wsgi.version", ()))
    data["has_file_wrapper"] = "wsgi.file_wrapper" in environ
    data["SERVER_SOFTWARE"] = environ.get("SERVER_SOFTWARE")
    # The environ starts from a base holding placeholders (src/wsgi/environ.rs): every
    # one must have been filled.
    data["none_keys"] = sorted(k for k, v in environ.items() if v is None)
    return _json_response(start_response, data)


# --------------------------------------------------------------------------- router


def sleep(environ, start_response):
    """``/sleep?s=2``: log a marker line to wsgi.errors, sleep, answer with the pid."""
    q = _query(environ)
    seconds = float(q.get("s", "1"))
    tag = q.get("tag", "")
    errors = environ["wsgi.errors"]
    errors.write(f"sleep-start pid={os.getpid()} tag={tag}\n")
    errors.flush()
    time.sleep(seconds)
    return _json_response(start_response, {"pid": os.getpid(), "slept": seconds, "tag": tag})


def pid(environ, start_response):
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def input_read(environ, start_response):
    """``/input/read?n=N``: read(N) until EOF (read() without size when n is absent)."""
    q = _query(environ)
    stream = environ["wsgi.input"]
    sizes = []
    h = hashlib.sha256()
    if "n" in q:
        n = int(q["n"])
        while True:
            chunk = stream.read(n)
            if not chunk:
                break
            sizes.append(len(chunk))
            h.update(chunk)
    else:
        chunk = stream.read()
        sizes.append(len(chunk))
        h.update(chunk)
        sizes.append(len(stream.read()))  # a second read() at EOF returns b""
    return _json_response(start_response, {"sizes": sizes, "sha256": h.hexdigest()})


def input_readline(environ, start_response):
    """``/input/readline[?n=N]``: readline() (or readline(N)) until EOF."""
    q = _query(environ)
    stream = environ["wsgi.input"]
    lines = []
    while True:
        line = stream.readline(int(q["n"])) if "n" in q else stream.readline()
        if not line:
            break
        lines.append(line.decode("latin-1"))
        if len(lines) > 100000:
            raise RuntimeError("readline did not reach EOF")
    return _json_response(start_response, {"lines": lines})


def input_readlines(environ, start_response):
    lines = environ["wsgi.input"].readlines()
    return _json_response(start_response, {"lines": [x.decode("latin-1") for x in lines]})


def input_iter(environ, start_response):
    lines = [x.decode("latin-1") for x in environ["wsgi.input"]]
    return _json_response(start_response, {"lines": lines})


def input_ignore(environ, start_response):
    """Answers without reading the request body at all."""
    body = b"ignored"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "7")])
    return [body]


def write_callable(environ, start_response):
    """Uses the legacy write() callable, then returns more data from the iterable."""
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"first;")
    write(b"second;")
    return [b"third;", b"fourth"]


def exc_info_before(environ, start_response):
    """start_response, then an error, then start_response(..., exc_info) before any output."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    try:
        raise ValueError("boom before output")
    except ValueError:
        start_response(
            "500 Internal Server Error",
            [("Content-Type", "text/plain"), ("X-Handled", "yes")],
            sys.exc_info(),
        )
    return [b"handled error"]


def exc_info_after(environ, start_response):
    """Output is sent, then start_response(..., exc_info): the server must re-raise."""

    def gen():
        yield b"partial-" * 16
        try:
            raise ValueError("boom after output")
        except ValueError:
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")],
                           sys.exc_info())
        yield b"never sent"

    start_response("200 OK", [("Content-Type", "text/plain")])
    return gen()


def raise_before(environ, start_response):
    raise RuntimeError("app raised before start_response")


def raise_after(environ, start_response):
    """Headers and a first chunk go out, then the generator raises."""

    def gen():
        yield b"first chunk of a response that will be cut;"
        raise RuntimeError("app raised after the headers were sent")

    cl = _query(environ).get("cl")
    headers = [("Content-Type", "text/plain")]
    if cl:
        headers.append(("Content-Length", cl))
    start_response("200 OK", headers)
    return gen()


class _RecordingIterable:
    """An iterable whose close() appends a line to the file named by $CLOSE_LOG."""

    def __init__(self, tag, n, size, fail_at=None):
        self.tag = tag
        self.n = n
        self.size = size
        self.fail_at = fail_at
        self._record("created")

    def _record(self, what):
        path = os.environ.get("CLOSE_LOG")
        if path:
            with open(path, "a") as f:
                f.write(f"{what} {self.tag}\n")

    def __iter__(self):
        for i in range(self.n):
            if self.fail_at is not None and i == self.fail_at:
                raise RuntimeError("recording iterable fails on purpose")
            yield bytes([65 + i % 26]) * self.size

    def close(self):
        self._record("closed")


def close_record(environ, start_response):
    """``/close?tag=T[&fail=1][&n=N&size=S][&cl=1]``: records creation and close()."""
    q = _query(environ)
    n = int(q.get("n", "3"))
    size = int(q.get("size", "10"))
    fail_at = 1 if q.get("fail") else None
    headers = [("Content-Type", "text/plain")]
    if q.get("cl"):
        headers.append(("Content-Length", str(n * size)))
    start_response("200 OK", headers)
    return _RecordingIterable(q.get("tag", "x"), n, size, fail_at)


def body(environ, start_response):
    """``/body?size=N[&cl=1|&declare=M][&status=S][&chunks=K][&iter=1]``: a body of N
    bytes, as a list (or, with iter=1, a generator, whose length the server cannot know)."""
    q = _query(environ)
    size = int(q.get("size", "100"))
    chunks = max(1, int(q.get("chunks", "1")))
    data = (b"0123456789abcdef" * (size // 16 + 1))[:size]
    status = q.get("status", "200 OK").replace("_", " ")
    headers = [("Content-Type", "text/plain")]
    if q.get("cl"):
        headers.append(("Content-Length", str(size)))
    elif q.get("declare"):  # a Content-Length that does not match the body
        headers.append(("Content-Length", q["declare"]))
    start_response(status, headers)
    step = max(1, -(-size // chunks))
    parts = [data[i:i + step] for i in range(0, size, step)] or [b""]
    if q.get("iter"):
        return (p for p in parts)
    return parts


def headers(environ, start_response):
    """``/headers?Name=value&...``: response with the given extra headers."""
    extra = [(k, v) for k, v in _query(environ).items()]
    data = b"headers"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "7"), *extra])
    return [data]


def _fixture_file(size):
    path = os.path.join(tempfile.gettempdir(), f"ferrocorn-test-file-{size}.bin")
    if not os.path.exists(path) or os.path.getsize(path) != size:
        data = bytes((i * 7 + i // 256) % 256 for i in range(size))
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return path


def file_wrapper(environ, start_response):
    """``/file?size=N[&cl=1][&offset=K]``: returns wsgi.file_wrapper(open file)."""
    q = _query(environ)
    size = int(q.get("size", "100000"))
    offset = int(q.get("offset", "0"))
    f = open(_fixture_file(size), "rb")
    f.seek(offset)
    headers = [("Content-Type", "application/octet-stream")]
    if q.get("cl"):
        headers.append(("Content-Length", str(size - offset)))
    start_response("200 OK", headers)
    return environ["wsgi.file_wrapper"](f, 8192)


def stderr_print(environ, start_response):
    """Writes a line to wsgi.errors (it must end up in the error log)."""
    environ["wsgi.errors"].write("message-from-wsgi-errors\n")
    environ["wsgi.errors"].flush()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def osenv(environ, start_response):
    """``/osenv?name=X``: the worker's os.environ value (JSON null when unset)."""
    return _json_response(start_response, {"value": os.environ.get(_query(environ)["name"])})


ROUTES = {
    "/osenv": osenv,
    "/sleep": sleep,
    "/pid": pid,
    "/input/read": input_read,
    "/input/readline": input_readline,
    "/input/readlines": input_readlines,
    "/input/iter": input_iter,
    "/input/ignore": input_ignore,
    "/write": write_callable,
    "/exc_info/before": exc_info_before,
    "/exc_info/after": exc_info_after,
    "/raise/before": raise_before,
    "/raise/after": raise_after,
    "/close": close_record,
    "/body": body,
    "/headers": headers,
    "/file": file_wrapper,
    "/stderr": stderr_print,
}


def app(environ, start_response):
    handler = ROUTES.get(environ.get("PATH_INFO", ""), echo)
    return handler(environ, start_response)


# --------------------------------------------------------------------------- validator


def _validated_inner(environ, start_response):
    method = environ["REQUEST_METHOD"]
    path = environ.get("PATH_INFO", "")
    if path == "/file":
        f = open(_fixture_file(20000), "rb")
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", "20000")])
        return environ["wsgi.file_wrapper"](f, 4096)
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written;")
        return [b"returned"]
    stream = environ["wsgi.input"]
    h = hashlib.sha256()
    n = 0
    while True:
        chunk = stream.read(4096)
        if not chunk:
            break
        n += len(chunk)
        h.update(chunk)
    data = json.dumps({"method": method, "length": n, "sha256": h.hexdigest()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(data)))])
    if method == "HEAD":
        return [b""]
    return [data]


validated = validator(_validated_inner)


# --------------------------------------------------------------------------- factories


def create_app(greeting="factory"):
    """Application factory: ``wsgiapps:create_app()`` or ``wsgiapps:create_app('hi')``."""
    data = greeting.encode()

    def factory_app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(data)))])
        return [data]

    return factory_app


not_callable = 42
