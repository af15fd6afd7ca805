"""Black-box fixtures: start the real server process and talk to it over sockets.

The server command comes from ``FERROCORN_TEST_SERVER`` (default ``ferrocorn``; set it to
``gunicorn`` to validate the suite against gunicorn).  It may contain arguments
(it is shlex-split), e.g. ``FERROCORN_TEST_SERVER="python -m gunicorn"``.

Fixture API (see ``Server``):

    def test_x(server):
        srv = server(["--workers", "2"], "wsgiapps:app")   # cwd defaults to tests/apps
        server(args, app, prefix=[launcher, ...])  # the launcher execs the server command
        srv.url, srv.port, srv.host, srv.pid, srv.addresses
        srv.raw(b"GET / HTTP/1.0\\r\\n\\r\\n", split="byte")    # -> bytes until EOF
        srv.request("GET", "/path", headers={...}, body=b"")  # -> Response (raw socket)
        srv.log(), srv.access_log(), srv.wait_for_log(regex), srv.wait_for_access(regex)
        srv.worker_pids(), srv.wait_workers(n)
        srv.stop(signal.SIGTERM, timeout=30)                  # -> exit code
        srv.wait_exit(timeout)                                # -> exit code

Readiness: the fixture waits for the ``Listening at: URL[,URL...]`` log line, then polls the
first address with a real ``GET /__ready__`` until any status line comes back (deadline
``FERROCORN_TEST_BOOT_TIMEOUT``, default 30 s).  stdout/stderr go to files; at teardown the
process group is killed and the logs are printed (pytest shows them for failed tests).

``server(..., wait=False)`` returns without waiting for readiness (boot-failure tests).
``server_pool.get(args, app)`` is a session-wide cache of servers for read-only tests
(``echo_server`` and ``app_server`` are two of them).
Test modules must not import this file; helpers come as fixtures: ``helpers`` (a namespace with
``parse_responses``, ``final_response``, ``build_request``, ``raw_exchange``, ``connect``,
``read_until_eof``, ``has_ipv6_loopback``, ``is_gunicorn``, ``apps_dir``...) and ``cli``
(``cli(args)`` runs the server command to completion: ``--version``, ``--check-config``...).

Markers: ``ferrocorn_only`` (skipped when the server under test is gunicorn) and ``slow``.

Worker classes: a module with ``pytestmark = pytest.mark.usefixtures("worker_class")`` runs
each test once per class (``sync``, ``gthread``); ``server``, ``server_pool``, ``app_server``
and ``echo_server`` then start servers with that class's arguments (``WORKER_CLASS_ARGS``)
unless the test's own arguments choose a class or thread count.  Tests read the current
class from the ``worker_class`` fixture.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pytest

TESTS_DIR = Path(__file__).resolve().parent
APPS_DIR = TESTS_DIR / "apps"
REPO_DIR = TESTS_DIR.parent

SERVER_CMD = shlex.split(os.environ.get("FERROCORN_TEST_SERVER", "ferrocorn"))
IS_GUNICORN = any(Path(p).name.startswith("gunicorn") for p in SERVER_CMD)

BOOT_TIMEOUT = float(os.environ.get("FERROCORN_TEST_BOOT_TIMEOUT", "30"))
IO_TIMEOUT = 20.0

# Environment variables that change server defaults; removed from the server's environment.
_SCRUB_ENV = ("WEB_CONCURRENCY", "GUNICORN_CMD_ARGS", "PORT", "FORWARDED_ALLOW_IPS", "SENDFILE",
              "SCRIPT_NAME", "LISTEN_FDS", "LISTEN_PID", "GUNICORN_FD", "GUNICORN_PID",
              "NOTIFY_SOCKET")

_LISTEN_RE = re.compile(r"Listening at: (\S+)")

# Extra arguments per worker class for the tests that run once per class.
WORKER_CLASS_ARGS = {"sync": [], "gthread": ["--worker-class", "gthread", "--threads", "4"]}


# --------------------------------------------------------------------------- markers


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "ferrocorn_only: ferrocorn intentionally differs from gunicorn here "
        "(skipped when FERROCORN_TEST_SERVER=gunicorn)",
    )
    config.addinivalue_line("markers", "slow: takes several seconds (signals, load)")


def pytest_collection_modifyitems(config, items):
    if not IS_GUNICORN:
        return
    skip = pytest.mark.skip(reason="ferrocorn-only behaviour (server under test is gunicorn)")
    for item in items:
        if "ferrocorn_only" in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config):
    return f"server under test: {' '.join(SERVER_CMD)} (gunicorn={IS_GUNICORN})"


# --------------------------------------------------------------------------- HTTP parsing


@dataclasses.dataclass
class Response:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes = b""
    complete: bool = True  # False: the body was cut short (missing bytes / last chunk)
    chunked: bool = False

    def header(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def has_header(self, name: str) -> bool:
        return self.header(name) is not None

    def json(self):
        import json

        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def _no_body(status: int, method: str | None) -> bool:
    return method == "HEAD" or 100 <= status < 200 or status in (204, 304)


def parse_responses(data: bytes, method: str | None = None) -> list[Response]:
    """Split raw bytes read from a connection into responses (interim 1xx included)."""
    out: list[Response] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            raise ValueError(f"incomplete response head: {data[pos:pos + 200]!r}")
        head = data[pos:end]
        pos = end + 4
        lines = head.split(b"\r\n")
        m = re.match(rb"(HTTP/\d\.\d) (\d{3})(?: (.*))?$", lines[0])
        if not m:
            raise ValueError(f"bad status line: {lines[0]!r}")
        headers = []
        for line in lines[1:]:
            k, sep, v = line.partition(b":")
            if not sep:
                raise ValueError(f"bad header line: {line!r}")
            headers.append((k.decode("latin-1"), v.strip().decode("latin-1")))
        resp = Response(m.group(1).decode(), int(m.group(2)),
                        (m.group(3) or b"").decode("latin-1"), headers, b"", head)
        te = (resp.header("transfer-encoding") or "").lower()
        cl = resp.header("content-length")
        if _no_body(resp.status, method):
            pass
        elif "chunked" in te:
            resp.chunked = True
            body = bytearray()
            complete = False
            while True:
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    break
                size_s = data[pos:eol].split(b";")[0].strip()
                try:
                    size = int(size_s, 16)
                except ValueError:
                    break
                pos = eol + 2
                if size == 0:
                    # trailers until an empty line
                    while True:
                        eol = data.find(b"\r\n", pos)
                        if eol < 0:
                            break
                        line = data[pos:eol]
                        pos = eol + 2
                        if not line:
                            complete = True
                            break
                    break
                if len(data) < pos + size + 2:
                    body += data[pos:pos + size]
                    pos = len(data)
                    break
                body += data[pos:pos + size]
                pos += size
                if data[pos:pos + 2] != b"\r\n":
                    break
                pos += 2
            resp.body = bytes(body)
            resp.complete = complete
            if not complete:
                pos = len(data)
        elif cl is not None:
            n = int(cl)
            resp.body = data[pos:pos + n]
            resp.complete = len(resp.body) == n
            pos += len(resp.body)
        else:
            resp.body = data[pos:]
            pos = len(data)
        out.append(resp)
    return out


def final_response(data: bytes, method: str | None = None) -> Response:
    """The first non-1xx response in ``data`` (fails if there is none)."""
    for r in parse_responses(data, method):
        if r.status >= 200:
            return r
    raise AssertionError(f"no final response in {data[:300]!r}")


# --------------------------------------------------------------------------- sockets


def _connect(address, timeout: float = IO_TIMEOUT) -> socket.socket:
    if isinstance(address, str):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    elif ":" in address[0]:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(address)
    except BaseException:
        s.close()
        raise
    return s


def _split(data: bytes, split) -> list[bytes]:
    if split is None or split == "whole":
        return [data]
    if split == "byte":
        return [data[i:i + 1] for i in range(len(data))]
    if split == "random":
        rng = random.Random(len(data))
        parts, i = [], 0
        while i < len(data):
            n = rng.randint(1, 17)
            parts.append(data[i:i + n])
            i += n
        return parts
    if isinstance(split, int):
        return [data[i:i + split] for i in range(0, len(data), split)]
    if isinstance(split, (list, tuple)):
        parts, i = [], 0
        for n in split:
            parts.append(data[i:i + n])
            i += n
        if i < len(data):
            parts.append(data[i:])
        return parts
    raise ValueError(f"bad split {split!r}")


class RawResult(bytes):
    """Bytes read from a connection; ``eof`` tells whether the peer closed (or reset) it,
    as opposed to the read timing out."""

    eof: bool = False


def read_until_eof(s: socket.socket, timeout: float = IO_TIMEOUT) -> RawResult:
    """Read until EOF, a reset or ``timeout`` (then returns what was read, eof=False)."""
    deadline = time.monotonic() + timeout
    buf = bytearray()
    eof = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            break
        except (ConnectionResetError, BrokenPipeError):
            eof = True
            break
        if not chunk:
            eof = True
            break
        buf += chunk
    out = RawResult(bytes(buf))
    out.eof = eof
    return out


def _has_final_status(buf: bytes) -> bool:
    """True once ``buf`` holds the status line of a non-1xx response (or garbage)."""
    pos = 0
    while pos < len(buf):
        m = re.match(rb"HTTP/\d\.\d (\d)\d\d", bytes(buf[pos:pos + 12]))
        if not m:
            return len(buf) - pos >= 12
        if m.group(1) != b"1":
            return True
        end = buf.find(b"\r\n\r\n", pos)
        if end < 0:
            return False
        pos = end + 4
    return False


def raw_exchange(address, data: bytes, split=None, timeout: float = IO_TIMEOUT,
                 shut_wr: bool = True) -> RawResult:
    """Connect, send ``data`` (whole / 'byte' / 'random' / int / list of sizes),
    half-close and read until EOF.  Sending stops early if the peer already answered
    or closed (a server may reject a request before it is complete)."""
    s = _connect(address, timeout)
    try:
        buf = bytearray()
        peer_closed = False
        for part in _split(data, split):
            r, _, _ = select.select([s], [], [], 0)
            if r:
                try:
                    chunk = s.recv(65536)
                except ConnectionResetError:
                    peer_closed = True
                    break
                if not chunk:
                    peer_closed = True
                    break
                buf += chunk
                if _has_final_status(buf):
                    # answered already (e.g. rejected early): stop sending
                    break
            try:
                s.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                peer_closed = True
                break
        if shut_wr and not peer_closed:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_WR)
        rest = read_until_eof(s, timeout)
        out = RawResult(bytes(buf) + rest)
        out.eof = rest.eof
        return out
    finally:
        s.close()


def build_request(method: str, path: str, headers=None, body: bytes = b"",
                  version: str = "HTTP/1.1", host: str = "127.0.0.1") -> bytes:
    hdrs = dict(headers or {})
    lines = [f"{method} {path} {version}"]
    if version != "HTTP/1.0" and not any(k.lower() == "host" for k in hdrs):
        lines.append(f"Host: {host}")
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k in hdrs):
        lines.append(f"Content-Length: {len(body)}")
    for k, v in hdrs.items():
        lines.append(f"{k}: {v}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# --------------------------------------------------------------------------- server process


class ServerExited(Exception):
    pass


def _scrubbed_env(extra=None, runtime_dir=None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    if runtime_dir:
        # gunicorn >= 25.1 opens a control socket in $XDG_RUNTIME_DIR by default;
        # keep each server's socket private.
        env["XDG_RUNTIME_DIR"] = str(runtime_dir)
    if extra:
        for k, v in extra.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
    return env


def _has_bind(args) -> bool:
    return any(a in ("-b", "--bind") or a.startswith(("--bind=", "-b")) for a in args)


def _has_opt(args, *names) -> bool:
    return any(a in names or any(a.startswith(n + "=") for n in names) for a in args)


class Server:
    def __init__(self, args, app, cwd=None, env=None, bind=True, workdir=None, prefix=()):
        self.args = list(args)
        self.app = app
        self.cwd = str(cwd or APPS_DIR)
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="fctest-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        # prefix: a launcher that execs the server (e.g. a socket-activation stand-in)
        cmd = [*prefix, *SERVER_CMD]
        if bind and not _has_bind(self.args):
            cmd += ["-b", "127.0.0.1:0"]
        if not _has_opt(self.args, "--error-logfile", "--log-file"):
            cmd += ["--error-logfile", "-"]
        cmd += self.args
        if app:
            cmd.append(app)
        self.cmd = cmd
        self.stdout_path = self.workdir / "stdout.log"
        self.stderr_path = self.workdir / "stderr.log"
        self._stdout = open(self.stdout_path, "wb")
        self._stderr = open(self.stderr_path, "wb")
        # short private runtime dir (unix socket paths are limited to 108 bytes)
        self.runtime_dir = tempfile.mkdtemp(prefix="fcrt")
        self.env = _scrubbed_env(env, runtime_dir=self.runtime_dir)
        self.addresses: list = []
        self.listen_urls: list[str] = []
        self.returncode: int | None = None
        self._known_children: set[int] = set()
        self.proc = subprocess.Popen(
            cmd, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
            stdout=self._stdout, stderr=self._stderr, start_new_session=True,
        )
        self.pid = self.proc.pid

    # ----------------------------------------------------------------- logs

    def log(self) -> str:
        """The error log (stderr) so far."""
        return self.stderr_path.read_bytes().decode("utf-8", "replace")

    def access_log(self) -> str:
        """stdout so far (where ``--access-logfile -`` writes)."""
        return self.stdout_path.read_bytes().decode("utf-8", "replace")

    def _wait_for(self, getter, pattern, timeout, what):
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            text = getter()
            m = rx.search(text)
            if m:
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: {pattern!r} not seen within {timeout}s; got:\n"
                                     f"{text[-4000:]}")
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def wait_for_log(self, pattern, timeout=BOOT_TIMEOUT):
        return self._wait_for(self.log, pattern, timeout, "error log")

    def wait_for_access(self, pattern, timeout=BOOT_TIMEOUT):
        return self._wait_for(self.access_log, pattern, timeout, "access log")

    # ----------------------------------------------------------------- lifecycle

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout=BOOT_TIMEOUT):
        """Wait for ``Listening at:`` and then for a real HTTP answer on the first address."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            if self.proc.poll() is not None:
                raise ServerExited(f"server exited with {self.proc.returncode} during boot:\n"
                                   f"{self.log()[-6000:]}")
            m = _LISTEN_RE.search(self.log())
            if m:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"no 'Listening at:' line within {timeout}s:\n{self.log()}")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        self.listen_urls = m.group(1).split(",")
        self.addresses = [self._parse_listen(u) for u in self.listen_urls]
        self.probe(self.addresses[0], deadline)
        return self

    @staticmethod
    def _parse_listen(url: str):
        if url.startswith("unix:"):
            return url[len("unix:"):]
        m = re.match(r"https?://\[([^\]]+)\]:(\d+)$", url) or re.match(
            r"https?://([^:/]+):(\d+)$", url)
        if not m:
            raise AssertionError(f"cannot parse listen address {url!r}")
        return (m.group(1), int(m.group(2)))

    def probe(self, address, deadline):
        """Poll ``address`` with a real request until any HTTP status line comes back."""
        delay = 0.02
        last_err = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerExited(f"server exited with {self.proc.returncode} during boot:\n"
                                   f"{self.log()[-6000:]}")
            try:
                data = self._probe_once(address, deadline)
                if re.match(rb"HTTP/1\.[01] \d{3}", data):
                    return
                last_err = data[:200]
            except OSError as e:
                last_err = e
            time.sleep(delay)
            delay = min(delay * 2, 0.25)
        raise AssertionError(f"server at {address} never answered (last: {last_err!r}):\n"
                             f"{self.log()[-6000:]}")

    @staticmethod
    def _probe_once(address, deadline) -> bytes:
        """One probe: returns as soon as a status line arrived (or at EOF / the deadline)."""
        with _connect(address, max(0.5, deadline - time.monotonic())) as s:
            s.sendall(b"GET /__ready__ HTTP/1.0\r\n\r\n")
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_WR)
            buf = b""
            while b"\r\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                s.settimeout(left)
                try:
                    chunk = s.recv(4096)
                except TimeoutError:
                    break
                if not chunk:
                    break
                buf += chunk
            return buf

    def wait_exit(self, timeout=BOOT_TIMEOUT) -> int:
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"server did not exit within {timeout}s:\n"
                                 f"{self.log()[-6000:]}") from None
        return self.returncode

    def stop(self, sig=signal.SIGTERM, timeout=BOOT_TIMEOUT) -> int:
        """Send ``sig`` to the master and wait for it to exit; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait_exit(timeout)

    def kill(self):
        """Kill the whole process group (and any known worker) — teardown."""
        pids = set(self._known_children)
        with contextlib.suppress(Exception):
            pids |= {c.pid for c in psutil.Process(self.pid).children(recursive=True)}
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        for p in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.proc.wait(10)
        for f in (self._stdout, self._stderr):
            with contextlib.suppress(Exception):
                f.close()
        shutil.rmtree(self.runtime_dir, ignore_errors=True)

    # ----------------------------------------------------------------- workers

    def worker_pids(self) -> list[int]:
        """Direct children of the master (the worker processes)."""
        try:
            kids = psutil.Process(self.pid).children(recursive=False)
        except psutil.NoSuchProcess:
            return []
        pids = []
        for k in kids:
            try:
                if k.status() != psutil.STATUS_ZOMBIE:
                    pids.append(k.pid)
            except psutil.NoSuchProcess:
                pass
        self._known_children.update(pids)
        return sorted(pids)

    def wait_workers(self, n, timeout=BOOT_TIMEOUT, exclude=()) -> list[int]:
        """Wait until exactly ``n`` live workers exist (none of them in ``exclude``)."""
        deadline = time.monotonic() + timeout
        while True:
            pids = [p for p in self.worker_pids() if p not in exclude]
            if len(pids) == n and len(self.worker_pids()) == n:
                return pids
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {n} workers, have {self.worker_pids()}:\n"
                                     f"{self.log()[-4000:]}")
            time.sleep(0.05)

    # ----------------------------------------------------------------- client helpers

    @property
    def address(self):
        return self.addresses[0]

    @property
    def host(self) -> str:
        return self.addresses[0][0]

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    @property
    def url(self) -> str:
        host = self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def raw(self, data: bytes, split=None, timeout=IO_TIMEOUT, address=None,
            shut_wr=True, expect_eof=True) -> RawResult:
        """Send ``data``, half-close, read until EOF.  Fails if the server keeps the connection
        open for ``timeout`` s (a response always ends with a close here: we half-closed)."""
        out = raw_exchange(address or self.address, data, split, timeout, shut_wr)
        if expect_eof and not out.eof:
            raise AssertionError(
                f"the server did not close the connection within {timeout}s after our half-close "
                f"(read {len(out)} bytes: {bytes(out[:300])!r})")
        return out

    def request(self, method="GET", path="/", headers=None, body=b"", version="HTTP/1.1",
                split=None, timeout=IO_TIMEOUT, address=None) -> Response:
        data = build_request(method, path, headers, body, version)
        raw = self.raw(data, split=split, timeout=timeout, address=address)
        return final_response(raw, method)

    def get(self, path="/", **kw) -> Response:
        return self.request("GET", path, **kw)

    parse = staticmethod(parse_responses)
    connect = staticmethod(_connect)

    def __repr__(self):
        return f"<Server pid={self.pid} {' '.join(self.cmd)}>"

    def dump(self) -> str:
        return (f"==== server: {' '.join(self.cmd)} (cwd={self.cwd}) rc={self.proc.poll()}\n"
                f"---- stderr\n{self.log()[-20000:]}\n---- stdout\n{self.access_log()[-8000:]}")


def start_server(args, app, cwd=None, env=None, wait=True, bind=True, timeout=BOOT_TIMEOUT,
                 workdir=None) -> Server:
    srv = Server(args, app, cwd=cwd, env=env, bind=bind, workdir=workdir)
    if wait:
        try:
            srv.wait_ready(timeout)
        except BaseException:
            print(srv.dump())
            srv.kill()
            raise
    return srv


def current_worker_class(request) -> str:
    """The ``worker_class`` parameter of the running test (``sync`` when it has none)."""
    callspec = getattr(request.node, "callspec", None)
    return callspec.params.get("worker_class", "sync") if callspec else "sync"


def with_worker_class(request, args) -> list[str]:
    """``args`` plus the current worker class's arguments, unless they pick one already."""
    args = list(args)
    if _has_opt(args, "-k", "--worker-class", "--threads"):
        return args
    return WORKER_CLASS_ARGS[current_worker_class(request)] + args


@pytest.fixture(params=list(WORKER_CLASS_ARGS))
def worker_class(request):
    """Runs the test once per worker class; see the module docstring."""
    return request.param


@pytest.fixture
def server(tmp_path, request):
    """Factory: ``server(args, app, cwd=None, env=None, wait=True, bind=True)``."""
    started: list[Server] = []
    n = 0

    def factory(args=(), app="wsgiapps:app", cwd=None, env=None, wait=True, bind=True,
                timeout=BOOT_TIMEOUT, prefix=()):
        nonlocal n
        n += 1
        args = with_worker_class(request, args)
        srv = Server(args, app, cwd=cwd, env=env, bind=bind, workdir=tmp_path / f"server{n}",
                     prefix=prefix)
        started.append(srv)
        if wait:
            srv.wait_ready(timeout)
        return srv

    yield factory
    for srv in started:
        # printed output is shown by pytest only when the test failed
        print(srv.dump())
        srv.kill()


class ServerPool:
    """Session-wide servers shared by read-only tests (keyed by args + app)."""

    def __init__(self, base: Path):
        self.base = base
        self.servers: dict[tuple, Server] = {}
        self.refused: dict[tuple, str] = {}

    def get(self, args=(), app="wsgiapps:echo", cwd=None, skip_unsupported=False) -> Server:
        """A running server for (args, app).  With ``skip_unsupported``, a server that refuses
        one of ``args`` as "not supported" skips the test instead of failing it."""
        key = (tuple(args), app, str(cwd))
        if key in self.refused and skip_unsupported:
            pytest.skip(self.refused[key])
        srv = self.servers.get(key)
        if srv is not None and srv.alive():
            return srv
        if srv is not None:
            print(srv.dump())
            srv.kill()
        try:
            srv = start_server(list(args), app, cwd=cwd,
                               workdir=self.base / f"pool{len(self.servers)}-{int(time.time())}")
        except ServerExited as e:
            m = re.search(r"^.*not supported.*$", str(e), re.M)
            if skip_unsupported and m:
                self.refused[key] = f"server refuses {list(args)}: {m.group(0).strip()}"
                pytest.skip(self.refused[key])
            raise
        self.servers[key] = srv
        return srv

    def close(self):
        for srv in self.servers.values():
            srv.kill()


@pytest.fixture(scope="session")
def session_server_pool(tmp_path_factory):
    pool = ServerPool(tmp_path_factory.mktemp("pool"))
    yield pool
    pool.close()


class _ClassPool:
    """``server_pool`` as a test sees it: the session pool, with the test's worker class."""

    def __init__(self, pool: ServerPool, request):
        self._pool = pool
        self._request = request

    def get(self, args=(), app="wsgiapps:echo", cwd=None, skip_unsupported=False) -> Server:
        return self._pool.get(with_worker_class(self._request, args), app, cwd=cwd,
                              skip_unsupported=skip_unsupported)


@pytest.fixture
def server_pool(session_server_pool, request):
    return _ClassPool(session_server_pool, request)


@pytest.fixture
def echo_server(server_pool):
    """A shared server running ``wsgiapps:echo`` with 2 workers."""
    return server_pool.get(["--workers", "2"], "wsgiapps:echo")


@pytest.fixture
def app_server(server_pool):
    """A shared server running the ``wsgiapps:app`` router with 2 workers."""
    return server_pool.get(["--workers", "2"], "wsgiapps:app")


def run_cli(args, cwd=None, env=None, timeout=60) -> subprocess.CompletedProcess:
    """Run the server command to completion (for --version, --check-config, usage errors)."""
    tmp = tempfile.mkdtemp(prefix="fccli-")
    try:
        return subprocess.run(
            [*SERVER_CMD, *args], cwd=str(cwd or APPS_DIR),
            env=_scrubbed_env(env, runtime_dir=tmp), stdin=subprocess.DEVNULL,
            capture_output=True, timeout=timeout, text=True, errors="replace",
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def thread_policies(pid: int) -> dict[int, tuple[str, int, bool]]:
    """Each thread of process ``pid``: tid -> (name, scheduling policy, whether
    SCHED_RESET_ON_FORK is set)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            policy = os.sched_getscheduler(int(tid))
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended meanwhile
        reset = bool(policy & os.SCHED_RESET_ON_FORK)
        out[int(tid)] = (name, policy & ~os.SCHED_RESET_ON_FORK, reset)
    return out


@pytest.fixture(scope="session")
def helpers():
    """Module-free access to the helpers above (test files must not import conftest)."""
    import types

    return types.SimpleNamespace(
        parse_responses=parse_responses, final_response=final_response,
        build_request=build_request, raw_exchange=raw_exchange, read_until_eof=read_until_eof,
        connect=_connect, run_cli=run_cli, start_server=start_server,
        has_ipv6_loopback=has_ipv6_loopback, is_gunicorn=IS_GUNICORN, server_cmd=SERVER_CMD,
        apps_dir=APPS_DIR, tests_dir=TESTS_DIR, Response=Response,
        thread_policies=thread_policies,
    )


@pytest.fixture(scope="session")
def cli():
    """``cli(args, cwd=None, env=None, timeout=60)`` -> CompletedProcess (text)."""
    return run_cli
