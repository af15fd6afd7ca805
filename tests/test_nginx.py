"""nginx in front of the server under test: requests arrive intact, and worker rotation
(max-requests + jitter, HUP) under load loses no request (issue 3 item 3; gunicorn's
issue #3038 reports 502s behind proxies when workers recycle).

nginx runs with a private configuration in the test's tmp_path, in the usual production
shape: an upstream with ``keepalive 16``, ``proxy_http_version 1.1`` and an empty
``Connection`` header, so nginx reuses idle connections to the workers (the gthread worker
keeps them open; the sync worker answers ``Connection: close``). The clients keep their own
connections to nginx alive. A failure is an exception or any status other than 200 (a 502
from nginx included). Each test runs once per worker class.

The module is skipped when no nginx binary can be found; scripts/test.sh installs it.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from loadgen import Load


def _find_nginx() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if os.access(path, os.X_OK):
            return path
    return None


NGINX = _find_nginx()

pytestmark = [
    pytest.mark.skipif(NGINX is None, reason="nginx not found (scripts/test.sh installs it)"),
    pytest.mark.usefixtures("worker_class"),
]

ROTATION_ARGS = ["--workers", "3", "--max-requests", "20", "--max-requests-jitter", "5"]
READY_TIMEOUT = 30.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _temp_path_directives(tmp: Path) -> list[str]:
    """Temp paths for every module compiled in (their defaults are under /var/lib/nginx)."""
    flags = subprocess.run([NGINX, "-V"], capture_output=True, text=True).stderr
    out = [f"client_body_temp_path {tmp}/client_body;", f"proxy_temp_path {tmp}/proxy;"]
    for mod in ("fastcgi", "uwsgi", "scgi"):
        if f"--without-http_{mod}_module" not in flags:
            out.append(f"{mod}_temp_path {tmp}/{mod};")
    return out


class Nginx:
    """An nginx master (+1 worker) proxying 127.0.0.1:<port> to ``upstream``."""

    def __init__(self, tmp: Path, upstream):
        self.dir = tmp
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.error_log = self.dir / "error.log"
        if isinstance(upstream, str):
            target = f"unix:{upstream}"
        else:
            host, port = upstream
            target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        user = "user root root;" if os.geteuid() == 0 else ""  # workers reach tmp_path
        temp_paths = "\n    ".join(_temp_path_directives(self.dir))
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(f"""\
daemon off;
master_process on;
worker_processes 1;
{user}
error_log {self.error_log} warn;
pid {self.dir}/nginx.pid;

events {{
    worker_connections 512;
}}

http {{
    access_log off;
    {temp_paths}

    upstream app {{
        server {target};
        keepalive 16;
    }}

    server {{
        listen 127.0.0.1:{self.port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
        }}
    }}
}}
""")
        self.stderr_path = self.dir / "stderr.log"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(self.dir), "-e", str(self.error_log), "-c", str(self.conf)],
            stdin=subprocess.DEVNULL, stdout=self._stderr, stderr=self._stderr,
            start_new_session=True,
        )

    def log(self) -> str:
        text = ""
        for path in (self.stderr_path, self.error_log):
            with contextlib.suppress(OSError):
                text += path.read_bytes().decode("utf-8", "replace")
        return text

    def wait_ready(self, timeout=READY_TIMEOUT):
        """Poll until a GET through nginx comes back with any status line."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"nginx exited with {self.proc.returncode}:\n{self.log()}")
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                conn.request("GET", "/__ready__")
                resp = conn.getresponse()
                resp.read()
                return self
            except OSError as e:
                last = e
            finally:
                conn.close()
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
        raise AssertionError(f"nginx not ready within {timeout}s (last: {last!r}):\n{self.log()}")

    def kill(self):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.proc.wait(10)
        self._stderr.close()


@pytest.fixture
def nginx(tmp_path):
    """Factory: ``nginx(srv)`` starts nginx in front of ``srv`` (its first address)."""
    started: list[Nginx] = []

    def factory(srv) -> Nginx:
        ngx = Nginx(tmp_path / f"nginx{len(started) + 1}", srv.address)
        started.append(ngx)
        return ngx.wait_ready()

    yield factory
    for ngx in started:
        ngx.kill()
        print(f"==== nginx on port {ngx.port}\n{ngx.log()[-8000:]}")


# --------------------------------------------------------------------------- intact


def test_get_and_post_through_nginx(server, nginx):
    srv = server(["--workers", "2"])
    ngx = nginx(srv)
    conn = http.client.HTTPConnection("127.0.0.1", ngx.port, timeout=20)
    try:
        conn.request("GET", "/some/path?a=1&b=two", headers={"X-Test": "hello"})
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, body
        got = json.loads(body)
        assert got["REQUEST_METHOD"] == "GET"
        assert got["PATH_INFO"] == "/some/path"
        assert got["QUERY_STRING"] == "a=1&b=two"
        assert got["HTTP_X_TEST"] == "hello"
        assert got["body_length"] == 0

        # larger than nginx's client_body_buffer_size: nginx buffers it to a temp file
        payload = os.urandom(200_000)
        conn.request("POST", "/upload", body=payload,
                     headers={"Content-Type": "application/octet-stream"})
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, body
        got = json.loads(body)
        assert got["REQUEST_METHOD"] == "POST"
        assert got["CONTENT_LENGTH"] == str(len(payload))
        assert got["CONTENT_TYPE"] == "application/octet-stream"
        assert got["body_length"] == len(payload)
        assert got["body_sha256"] == hashlib.sha256(payload).hexdigest()

        # a chunked request body: nginx buffers it and sends it on with a Content-Length
        parts = [b"x" * 1000, b"y" * 7, b"z" * 30000]
        conn.request("POST", "/input/read", body=iter(parts), encode_chunked=True,
                     headers={"Transfer-Encoding": "chunked"})
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, body
        assert json.loads(body)["sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()
    finally:
        conn.close()


# --------------------------------------------------------------------------- rotation


def nginx_load(port, threads=8, total=800) -> Load:
    """``threads`` clients, each with a kept-alive connection to nginx, alternating
    ``GET /pid`` and a ``POST`` of a small body to the echo app, until ``total`` requests
    were made. A result's value is the pid that answered."""

    def one(conn, n):
        if n % 2:
            conn.request("GET", f"/pid?n={n}")
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                return False, f"GET #{n}: status {resp.status}: {body[:200]!r}"
            return True, int(body)
        payload = f"request {n} ".encode() * 50
        conn.request("POST", f"/echo?n={n}", body=payload)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            return False, f"POST #{n}: status {resp.status}: {body[:200]!r}"
        got = json.loads(body)
        if got["body_sha256"] != hashlib.sha256(payload).hexdigest():
            return False, f"POST #{n}: body mangled: {got}"
        return True, got["pid"]

    return Load(one, ("127.0.0.1", port), threads=threads, total=total)


def _check(load, srv, ngx, total):
    failures = load.failures()
    assert len(load.results) == total
    assert not failures, (f"{len(failures)} of {total} failed: {failures[:10]}\n"
                          f"---- nginx error.log\n{ngx.log()[-4000:]}")
    per_pid = collections.Counter(load.values())
    # at most 25 requests per worker (20 + jitter <= 5): 800 requests need >= 32 workers
    assert len(per_pid) >= 20, f"workers did not rotate: {per_pid}"
    assert srv.log().count("Autorestarting worker after current request.") >= 15
    assert srv.alive()
    return per_pid


@pytest.mark.slow
def test_max_requests_rotation_behind_nginx(server, nginx):
    srv = server(ROTATION_ARGS)
    srv.wait_workers(3)
    ngx = nginx(srv)
    load = nginx_load(ngx.port, threads=8, total=800)
    load.join(timeout=90)
    _check(load, srv, ngx, 800)


@pytest.mark.slow
def test_hup_under_load_behind_nginx(server, nginx):
    srv = server(ROTATION_ARGS)
    srv.wait_workers(3)
    ngx = nginx(srv)
    load = nginx_load(ngx.port, threads=8, total=800)
    for at in (250, 500):
        load.wait_count(at)
        os.kill(srv.pid, signal.SIGHUP)
    load.join(timeout=90)
    _check(load, srv, ngx, 800)
    deadline = time.monotonic() + 20
    while srv.log().count("Handling signal: hup") < 2:
        assert time.monotonic() < deadline, "the master did not log both HUPs"
        time.sleep(0.05)
    assert len(srv.wait_workers(3, timeout=20)) == 3
