"""The gthread worker (issue 4): a thread pool for the app, connections and keep-alive in
the I/O loop (gunicorn behaviour §3.3, §2.4, §2.10, §4.1)."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from waiting import until

GTHREAD = ["--worker-class", "gthread"]


def _read_response(sock: socket.socket, buf: bytearray) -> bytes:
    """Read one Content-Length-framed response from ``sock`` (``buf`` keeps the rest)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"EOF before a full response head: {bytes(buf)!r}")
        buf += chunk
    head, _, _ = bytes(buf).partition(b"\r\n\r\n")
    m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    length = int(m.group(1)) if m else 0
    total = len(head) + 4 + length
    while len(buf) < total:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError("EOF inside a response body")
        buf += chunk
    out = bytes(buf[:total])
    del buf[:total]
    return out


def _get(url: str, timeout: float = 30) -> tuple[int, float, dict]:
    """GET ``url``; returns the status, the time it completed and the JSON body."""
    r = httpx.get(url, timeout=timeout)
    return r.status_code, time.monotonic(), r.json()


def test_threads_run_in_parallel_and_the_next_request_waits(server):
    """T slow requests run at once in one worker; request T+1 waits for a free thread."""
    srv = server([*GTHREAD, "--threads", "4", "--workers", "1"], "wsgiapps:app")
    url = srv.url + "/sleep?s=1"
    start = time.monotonic()
    with ThreadPoolExecutor(5) as ex:
        futures = []
        for _ in range(5):
            futures.append(ex.submit(_get, url))
            time.sleep(0.05)  # keep the arrival order, so the fifth is the one that waits
        results = [f.result() for f in futures]
    done = [r[1] - start for r in results]
    assert [r[0] for r in results] == [200] * 5
    assert len({r[2]["pid"] for r in results}) == 1  # one worker did them all
    assert max(done[:4]) < 1.8, done  # in parallel: about 1 s in all, not 4 s
    assert done[4] >= 1.9, done  # queued until the first of the others finished
    assert done[4] < 3.5, done


def test_keep_alive_reuses_the_connection(server):
    srv = server([*GTHREAD, "--threads", "2", "--workers", "1"], "wsgiapps:echo")
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=10)
    try:
        ports = set()
        for i in range(5):
            conn.request("POST" if i % 2 else "GET", f"/n/{i}", body=b"x" * (i * 1000))
            r = conn.getresponse()
            data = json.loads(r.read())
            assert r.status == 200
            assert r.getheader("Connection").lower() == "keep-alive"
            assert data["PATH_INFO"] == f"/n/{i}"
            assert data["body_length"] == i * 1000
            assert data["wsgi.multithread"] is True
            ports.add(data["REMOTE_PORT"])
        assert ports == {str(conn.sock.getsockname()[1])}
    finally:
        conn.close()


def test_http10_keep_alive_on_request(server, helpers):
    srv = server([*GTHREAD, "--threads", "2"], "wsgiapps:app")
    s = helpers.connect(srv.address)
    try:
        buf = bytearray()
        s.sendall(b"GET /pid HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        first = _read_response(s, buf)
        assert first.startswith(b"HTTP/1.0 200 ")
        assert b"Connection: keep-alive" in first
        s.sendall(b"GET /pid HTTP/1.0\r\n\r\n")  # HTTP/1.0 without keep-alive: closes
        rest = helpers.read_until_eof(s, timeout=10)
        assert rest.eof
        assert helpers.final_response(bytes(buf) + rest).header("Connection") == "close"
    finally:
        s.close()


def test_pipelined_requests_are_answered_in_order(server, helpers):
    srv = server([*GTHREAD, "--threads", "4"], "wsgiapps:echo")
    data = (b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /second HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /third HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    raw = srv.raw(data, shut_wr=False)
    responses = helpers.parse_responses(raw)
    assert [r.status for r in responses] == [200, 200, 200]
    bodies = [r.json() for r in responses]
    assert [b["PATH_INFO"] for b in bodies] == ["/first", "/second", "/third"]
    assert bodies[1]["body_length"] == 5
    assert [r.header("Connection") for r in responses] == ["keep-alive", "keep-alive", "close"]


def test_idle_keep_alive_connection_is_closed(server, helpers):
    srv = server([*GTHREAD, "--threads", "2", "--keep-alive", "1"], "wsgiapps:app")
    s = helpers.connect(srv.address)
    try:
        buf = bytearray()
        s.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(s, buf).startswith(b"HTTP/1.1 200 ")
        idle_from = time.monotonic()
        rest = helpers.read_until_eof(s, timeout=10)
        idle = time.monotonic() - idle_from
    finally:
        s.close()
    assert rest.eof and rest == b""
    assert 0.7 <= idle <= 3.0, idle


def test_keep_alive_zero_closes_after_each_response(server, helpers):
    srv = server([*GTHREAD, "--threads", "2", "--keep-alive", "0"], "wsgiapps:app")
    s = helpers.connect(srv.address)
    try:
        s.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
        data = helpers.read_until_eof(s, timeout=10)
    finally:
        s.close()
    assert data.eof
    assert helpers.final_response(data).header("Connection") == "close"


@pytest.mark.ferrocorn_only
def test_trickling_clients_do_not_delay_others(server, helpers):
    """500 connections sending their heads a byte at a time hold no Python thread
    (gunicorn's gthread pins one per partial head), so a normal client is answered at
    once."""
    srv = server([*GTHREAD, "--threads", "4", "--workers", "1"], "wsgiapps:app")
    head = b"GET /pid HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 40 + b"\r\n\r\n"
    slow = []
    try:
        for _ in range(500):
            s = socket.create_connection(srv.address, timeout=10)
            s.sendall(head[:1])
            slow.append(s)
        stop = threading.Event()
        sent = [1]

        def trickle():
            while not stop.is_set() and sent[0] < len(head) - 1:
                for s in slow:
                    s.sendall(head[sent[0]:sent[0] + 1])
                sent[0] += 1
                stop.wait(0.05)

        t = threading.Thread(target=trickle, daemon=True)
        t.start()
        try:
            latencies = []
            for _ in range(5):
                start = time.monotonic()
                r = httpx.get(srv.url + "/pid", timeout=10)
                latencies.append(time.monotonic() - start)
                assert r.status_code == 200
        finally:
            stop.set()
            t.join(10)
        assert sent[0] > 1  # the slow clients really were mid-head meanwhile
        assert max(latencies) < 0.5, latencies
        # Each trickling client still gets its answer once its head is complete.
        for s in slow[:5]:
            s.sendall(head[sent[0]:])
            assert _read_response(s, bytearray()).startswith(b"HTTP/1.1 200 ")
    finally:
        for s in slow:
            s.close()


@pytest.mark.ferrocorn_only
def test_partial_head_times_out_with_408(server, helpers):
    srv = server([*GTHREAD, "--threads", "2", "--timeout", "1"], "wsgiapps:app")
    start = time.monotonic()
    raw = srv.raw(b"GET /pid HTTP/1.1\r\nHost: x\r\n", shut_wr=False, timeout=10)
    assert raw.startswith(b"HTTP/1.1 408 ")
    assert 0.8 <= time.monotonic() - start < 5


@pytest.mark.ferrocorn_only
def test_slow_body_is_read_before_a_thread_is_used(server, helpers):
    """A small body arriving slowly is buffered by the I/O loop; the only thread stays
    free for other clients meanwhile."""
    srv = server([*GTHREAD, "--threads", "1", "--workers", "1"], "wsgiapps:echo")
    s = helpers.connect(srv.address)
    try:
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
        start = time.monotonic()
        r = httpx.get(srv.url + "/other", timeout=10)
        assert r.status_code == 200
        assert time.monotonic() - start < 0.5
        s.sendall(b"world")
        buf = bytearray()
        resp = _read_response(s, buf)
        assert resp.startswith(b"HTTP/1.1 200 ")
        assert json.loads(resp.partition(b"\r\n\r\n")[2])["body_length"] == 10
    finally:
        s.close()


@pytest.mark.ferrocorn_only
def test_slow_reader_does_not_hold_a_thread(server, tmp_path, helpers):
    """A response that fits the write-behind buffer is finished by the I/O loop: a
    client that reads nothing does not keep the only thread from the next client
    (gunicorn's gthread blocks its thread in sendall until the reader catches up).

    Over a unix socket, whose kernel buffer is fixed (net.core.wmem_default, about
    210 KB of payload) where TCP on loopback would autotune to megabytes: 400 KB is
    more than the kernel takes, and less than the kernel plus the 256 KiB buffer."""
    path = str(tmp_path / "slow.sock")
    server([*GTHREAD, "--threads", "1", "--bind", f"unix:{path}"], "wsgiapps:app")
    size = 400_000
    s = helpers.connect(path)
    other = helpers.connect(path)
    try:
        s.sendall(f"GET /body?size={size}&cl=1 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        # The response has started, so the app ran for it and its bytes are queued.
        assert s.recv(16, socket.MSG_PEEK).startswith(b"HTTP/1.1 200")
        start = time.monotonic()
        other.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(other, bytearray()).startswith(b"HTTP/1.1 200")
        assert time.monotonic() - start < 2.0
        buf = bytearray()
        resp = _read_response(s, buf)
        body = resp.partition(b"\r\n\r\n")[2]
        assert body == (b"0123456789abcdef" * (size // 16 + 1))[:size]
        # The connection is still good for the next request.
        s.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(s, buf).startswith(b"HTTP/1.1 200")
    finally:
        s.close()
        other.close()


@pytest.mark.ferrocorn_only
def test_streamed_response_larger_than_the_buffer_arrives_whole(server):
    """A generator response far larger than the write-behind buffer is throttled by
    the client (backpressure) and arrives complete and in order to a slow reader."""
    srv = server([*GTHREAD, "--threads", "2", "--workers", "1"], "wsgiapps:app")
    size = 3_000_000
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect((srv.host, srv.port))
    try:
        s.sendall(
            f"GET /body?size={size}&chunks=300&iter=1 HTTP/1.1\r\nHost: x\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        data = bytearray()
        while chunk := s.recv(8192):
            data += chunk
        head, _, body = bytes(data).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert b"transfer-encoding: chunked" in head.lower()
        # De-chunk.
        out = bytearray()
        while True:
            line, _, body = body.partition(b"\r\n")
            n = int(line, 16)
            if n == 0:
                break
            out += body[:n]
            body = body[n + 2:]
        assert out == (b"0123456789abcdef" * (size // 16 + 1))[:size]
    finally:
        s.close()


def test_max_requests_closes_and_restarts(server, helpers):
    srv = server([*GTHREAD, "--threads", "2", "--workers", "1", "--max-requests", "3"],
                 "wsgiapps:app")
    first_pid = srv.wait_workers(1)[0]
    s = helpers.connect(srv.address)
    try:
        buf = bytearray()
        kinds = []
        for _ in range(4):
            s.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n")
            resp = _read_response(s, buf)
            assert resp.startswith(b"HTTP/1.1 200 ")
            kinds.append(re.search(rb"\r\nConnection: (\S+)", resp).group(1))
            if kinds[-1] == b"close":
                break
        rest = helpers.read_until_eof(s, timeout=10)
    finally:
        s.close()
    # The readiness probe counted too: the limit falls on this connection's 2nd request
    # or earlier; that response closes the connection.
    assert kinds[-1] == b"close" and set(kinds[:-1]) <= {b"keep-alive"}, kinds
    assert len(kinds) <= 3
    assert rest.eof and rest == b""
    srv.wait_for_log(r"Autorestarting worker after current request")
    new = srv.wait_workers(1, exclude=(first_pid,))
    assert new and new[0] != first_pid


def test_graceful_stop_finishes_in_flight_requests(server):
    srv = server([*GTHREAD, "--threads", "4", "--workers", "1"], "wsgiapps:app")
    with ThreadPoolExecutor(3) as ex:
        futures = [ex.submit(httpx.get, srv.url + f"/sleep?s=1&tag={i}", timeout=30)
                   for i in range(3)]
        for i in range(3):
            srv.wait_for_log(rf"sleep-start pid=\d+ tag={i}", timeout=10)
        start = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [200] * 3
    assert [r.headers["connection"] for r in responses] == ["close"] * 3
    assert srv.wait_exit(30) == 0
    assert time.monotonic() - start < 10


def test_threads_above_one_switch_sync_to_gthread(server):
    srv = server(["--threads", "3"], "wsgiapps:echo")
    srv.wait_for_log(r"Using worker: gthread")
    r = srv.get("/")
    assert r.json()["wsgi.multithread"] is True


def test_unix_socket_bind(server, tmp_path, helpers):
    path = str(tmp_path / "gthread.sock")
    srv = server([*GTHREAD, "--threads", "2", "--bind", f"unix:{path}"], "wsgiapps:echo")
    raw = srv.raw(b"GET /over/unix HTTP/1.1\r\nHost: x\r\n\r\n", address=path)
    r = helpers.final_response(raw)
    assert r.status == 200
    assert r.json()["PATH_INFO"] == "/over/unix"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_seed_command_line_serves_django(server, helpers):
    """The seed's command line, word for word (with ``ferrocorn``)."""
    port = _free_port()
    args = (f"--workers 5 --worker-class gthread --threads 8 --bind 127.0.0.1:{port} "
            "--timeout 30 --max-requests 1000 --max-requests-jitter 100 "
            "--access-logfile - --error-logfile -").split()
    srv = server(args, "config.wsgi:application", cwd=helpers.apps_dir / "djangoproject")
    assert srv.port == port
    assert len(srv.wait_workers(5)) == 5
    srv.wait_for_log(r"Using worker: gthread")
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        r = c.get("/")
        assert r.status_code == 200
        assert "The install worked successfully" in r.text
        assert r.headers["connection"] == "keep-alive"
        r = c.get("/admin/", follow_redirects=True)
        assert r.status_code == 200
        assert "csrfmiddlewaretoken" in r.text

    def fetch(i):
        path = "/admin/login/" if i % 2 else "/"
        return httpx.get(srv.url + path, timeout=60).status_code

    with ThreadPoolExecutor(16) as ex:
        assert list(ex.map(fetch, range(64))) == [200] * 64
    srv.wait_for_access(r'"GET /admin/login/ HTTP/1.1" 200')


@pytest.mark.ferrocorn_only
def test_request_past_timeout_is_logged_not_killed(server):
    """gthread's --timeout for a running request: logged once with method, path and
    duration; the request finishes and the worker (and its other threads) live on."""
    srv = server([*GTHREAD, "--threads", "2", "--workers", "1", "--timeout", "1"],
                 "wsgiapps:app")
    pid = srv.wait_workers(1)[0]
    r = httpx.get(srv.url + "/sleep?s=2.5", timeout=30)
    assert r.status_code == 200
    assert r.json()["pid"] == pid
    srv.wait_for_log(r"Slow request: GET /sleep has been running for \d+\.\d s on thread \d+, "
                     r"past the 1 s timeout", timeout=5)
    assert "WORKER TIMEOUT" not in srv.log()
    assert srv.worker_pids() == [pid]


def test_pool_threads_run_as_sched_batch(server, helpers):
    """The threads that run Python are SCHED_BATCH (and reset on fork); the I/O thread
    and the main thread keep the default policy (docs/ARCHITECTURE.md, gthread step 1)."""
    srv = server([*GTHREAD, "--threads", "3", "--workers", "1"], "wsgiapps:app")
    (pid,) = srv.worker_pids()

    def settled():
        ts = helpers.thread_policies(pid)
        pool = [t for t in ts.values() if t[0].startswith("ferrocorn-app-")]
        return ts if len(pool) == 3 and all(t[1] == os.SCHED_BATCH for t in pool) else None

    ts = until(settled, what="three SCHED_BATCH pool threads",
               detail=lambda: helpers.thread_policies(pid))
    for tid, (name, policy, reset) in ts.items():
        if name.startswith("ferrocorn-app-"):
            assert reset, (name, policy)
        else:
            assert policy == os.SCHED_OTHER, (tid, name, policy)
    assert any(name == "ferrocorn-io" for name, _, _ in ts.values())
    assert ts[pid][1] == os.SCHED_OTHER

