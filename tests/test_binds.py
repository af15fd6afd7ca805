"""Listeners: unix sockets, IPv6, several binds, accept balance (gunicorn behaviour §2.8)."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections import Counter

import pytest

# Issue 4: the same behaviour from both worker classes (see conftest.py).
pytestmark = pytest.mark.usefixtures("worker_class")


@pytest.fixture
def short_tmp():
    """A short directory for unix sockets (sun_path is limited to 108 bytes)."""
    d = tempfile.mkdtemp(prefix="fcb")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_unix_socket(server, short_tmp, helpers):
    path = os.path.join(short_tmp, "app.sock")
    srv = server(["-b", f"unix:{path}"], "wsgiapps:echo")
    assert srv.listen_urls == [f"unix:{path}"]
    raw = srv.raw(b"GET /over-unix?a=b HTTP/1.1\r\nHost: example.com:8080\r\n\r\n")
    e = helpers.final_response(raw).json()
    assert e["PATH_INFO"] == "/over-unix"
    assert e["QUERY_STRING"] == "a=b"
    # without a TCP address, SERVER_NAME/PORT come from Host
    assert e["SERVER_NAME"] == "example.com"
    assert e["SERVER_PORT"] == "8080"
    assert srv.stop() == 0
    assert not os.path.exists(path), "unix socket file left behind"


def test_unix_socket_stale_file_is_replaced(server, short_tmp, helpers):
    import socket

    path = os.path.join(short_tmp, "stale.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)  # leaves a socket file nobody listens on
    s.close()
    srv = server(["-b", f"unix:{path}"], "wsgiapps:echo")
    assert helpers.final_response(srv.raw(b"GET / HTTP/1.0\r\n\r\n")).status == 200


def test_ipv6_loopback(server, helpers):
    if not helpers.has_ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    srv = server(["-b", "[::1]:0"], "wsgiapps:echo")
    assert srv.listen_urls[0].startswith("http://[::1]:")
    assert srv.host == "::1"
    e = srv.get("/v6").json()
    assert e["REMOTE_ADDR"] == "::1"
    assert e["SERVER_NAME"] == "::1"
    assert e["SERVER_PORT"] == str(srv.port)


def test_multiple_binds(server, short_tmp, helpers):
    path = os.path.join(short_tmp, "multi.sock")
    srv = server(["-b", "127.0.0.1:0", "-b", "127.0.0.1:0", "-b", f"unix:{path}",
                  "--workers", "2"], "wsgiapps:echo")
    assert len(srv.addresses) == 3
    (_, port1), (_, port2), unix_path = srv.addresses
    assert port1 != port2
    assert unix_path == path
    for address in srv.addresses:
        r = srv.request("GET", "/multi", address=address)
        assert r.status == 200
        if isinstance(address, tuple):
            assert r.json()["SERVER_PORT"] == str(address[1])


def test_port_in_use_fails(server):
    import socket

    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    try:
        srv = server(["-b", f"127.0.0.1:{port}"], "wsgiapps:app", wait=False)
        # gunicorn retries 5 times, one second apart, then exits 1
        assert srv.wait_exit(60) == 1
        assert "Connection in use" in srv.log()
    finally:
        s.close()


def _hammer(srv, path, clients, deadline, until):
    """``clients`` threads send requests until ``until(pids)`` or the deadline."""
    pids: Counter = Counter()
    failures: list = []
    lock = threading.Lock()
    done = threading.Event()

    def client():
        n = 0
        while not done.is_set() and time.monotonic() < deadline and n < 5000:
            n += 1
            try:
                r = srv.get(path, timeout=30)
                pid = r.json()["pid"] if r.status == 200 else None
            except Exception as e:
                pid = None
                with lock:
                    failures.append(repr(e))
            with lock:
                if pid is None:
                    failures.append("status")
                else:
                    pids[pid] += 1
                if until(pids):
                    done.set()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1, deadline - time.monotonic() + 30))
    return pids, failures


@pytest.mark.ferrocorn_only
@pytest.mark.slow
def test_load_spreads_over_all_workers(server):
    """16 concurrent clients on a slow-ish endpoint reach every one of 4 workers
    (sync workers close each connection, so this measures accept balance)."""
    srv = server(["--workers", "4"], "wsgiapps:app")
    workers = set(srv.wait_workers(4))
    deadline = time.monotonic() + 30

    def enough(pids):
        return set(pids) >= workers and sum(pids.values()) >= 200

    pids, failures = _hammer(srv, "/sleep?s=0.05", 16, deadline, enough)
    assert not failures, failures[:5]
    assert set(pids) == workers, f"pids seen {dict(pids)}, workers {workers}"
    # no worker starves: each got at least 5% of the requests
    total = sum(pids.values())
    assert min(pids.values()) >= total * 0.05, dict(pids)
