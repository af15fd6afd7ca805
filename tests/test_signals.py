"""Process management: signals, respawn, timeouts (gunicorn behaviour §2.2-2.5)."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = pytest.mark.slow


def in_background(fn, *args, **kwargs):
    """Run fn in a thread; returns a function that joins it and returns/raises its result."""
    box = {}

    def run():
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def join(timeout=60):
        t.join(timeout)
        assert not t.is_alive(), "background request did not finish"
        if "error" in box:
            raise box["error"]
        return box["result"]

    return join


def test_sigterm_lets_inflight_request_finish(server):
    srv = server(["--workers", "2", "--graceful-timeout", "30"], "wsgiapps:app")
    join = in_background(srv.get, "/sleep?s=2&tag=term", timeout=40)
    srv.wait_for_log(r"sleep-start pid=\d+ tag=term")
    t0 = time.monotonic()
    rc = srv.stop(signal.SIGTERM, timeout=40)
    r = join()
    assert r.status == 200
    assert r.json()["slept"] == 2
    assert rc == 0
    assert time.monotonic() - t0 < 25
    srv.wait_for_log(r"Handling signal: term")
    srv.wait_for_log(r"Shutting down: Master")


def test_sigterm_idle_exits_quickly(server):
    srv = server(["--workers", "3"], "wsgiapps:app")
    srv.wait_workers(3)
    t0 = time.monotonic()
    assert srv.stop(signal.SIGTERM, timeout=30) == 0
    assert time.monotonic() - t0 < 10


def _response_on(sock, helpers, timeout=30.0):
    """One complete response read from an open connection."""
    sock.settimeout(timeout)
    buf = b""
    while True:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a full response: {buf[:300]!r}"
        buf += chunk
        try:
            responses = helpers.parse_responses(buf, "GET")
        except ValueError:
            continue  # the head is not all in yet
        if responses and responses[0].complete:
            return responses[0]


@pytest.mark.parametrize("klass,app", [
    (["-k", "gthread", "--threads", "4"], "wsgiapps:app"),
    (["-k", "asgi"], "asgiapps:app"),
])
def test_request_on_idle_connection_after_sigterm_is_answered(server, helpers, klass, app):
    """A kept-alive connection idle when the worker stops lingers (gunicorn 27's
    behaviour) rather than being closed at once: a request already on its way gets an
    answer, with Connection: close, instead of a closed socket."""
    srv = server([*klass, "--workers", "1", "--keep-alive", "20", "--graceful-timeout", "30"],
                 app)
    sleep_path = "/sleep?s=1.5" if app.startswith("wsgi") else "/sleep?1.5"
    with helpers.connect(srv.address) as idle, helpers.connect(srv.address) as busy:
        idle.sendall(helpers.build_request("GET", "/"))
        first = _response_on(idle, helpers)
        assert first.status == 200 and first.header("connection") != "close"
        busy.sendall(helpers.build_request("GET", sleep_path))
        srv.proc.send_signal(signal.SIGTERM)
        # The slow request's answer says the worker was stopping by then (keep-alive
        # refused): from here on, the old behaviour had closed the idle connection.
        slow = _response_on(busy, helpers)
        assert slow.status == 200
        assert slow.header("connection") == "close"
        idle.sendall(helpers.build_request("GET", "/"))
        late = _response_on(idle, helpers)
        assert late.status == 200
        assert late.header("connection") == "close"
    assert srv.wait_exit(30) == 0


def test_sigterm_stops_listening(server, helpers):
    srv = server([], "wsgiapps:app")
    address = srv.address
    assert srv.stop(signal.SIGTERM) == 0
    with pytest.raises(OSError):
        helpers.connect(address, timeout=5).close()


def test_graceful_timeout_kills_long_request(server):
    srv = server(["--workers", "1", "--graceful-timeout", "2"], "wsgiapps:app")
    join = in_background(srv.raw, b"GET /sleep?s=60&tag=long HTTP/1.0\r\n\r\n", timeout=60)
    srv.wait_for_log(r"sleep-start pid=\d+ tag=long")
    t0 = time.monotonic()
    srv.stop(signal.SIGTERM, timeout=40)
    elapsed = time.monotonic() - t0
    assert elapsed < 20, elapsed
    raw = join()
    assert b" 200 OK" not in raw


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGQUIT])
def test_quick_stop(server, sig):
    srv = server(["--workers", "2", "--graceful-timeout", "60"], "wsgiapps:app")
    join = in_background(srv.raw, b"GET /sleep?s=60&tag=quick HTTP/1.0\r\n\r\n", timeout=90)
    srv.wait_for_log(r"sleep-start pid=\d+ tag=quick")
    t0 = time.monotonic()
    rc = srv.stop(sig, timeout=30)
    elapsed = time.monotonic() - t0
    assert elapsed < 10, f"quick stop took {elapsed:.1f}s"
    assert rc == 0
    raw = join()
    assert b" 200 OK" not in raw  # the slow request was abandoned


def test_killed_worker_is_respawned(server):
    srv = server(["--workers", "2"], "wsgiapps:app")
    before = srv.wait_workers(2)
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    after = srv.wait_workers(2, exclude=[victim])
    assert victim not in after
    assert set(after) & set(before) == {before[1]}
    new_pid = (set(after) - set(before)).pop()
    srv.wait_for_log(rf"Booting worker with pid: {new_pid}\b")
    srv.wait_for_log(rf"Worker \(pid:{victim}\) was sent SIGKILL!")
    for _ in range(6):
        assert srv.get("/pid").status == 200


def test_worker_exit_is_respawned_after_sigterm(server):
    srv = server(["--workers", "2"], "wsgiapps:app")
    before = srv.wait_workers(2)
    os.kill(before[1], signal.SIGTERM)
    after = srv.wait_workers(2, exclude=[before[1]])
    assert before[1] not in after
    assert srv.get("/pid").status == 200


def test_ttin_ttou(server):
    srv = server(["--workers", "2"], "wsgiapps:app")
    srv.wait_workers(2)
    os.kill(srv.pid, signal.SIGTTIN)
    srv.wait_workers(3)
    os.kill(srv.pid, signal.SIGTTOU)
    srv.wait_workers(2)
    os.kill(srv.pid, signal.SIGTTOU)
    srv.wait_workers(1)
    os.kill(srv.pid, signal.SIGTTOU)  # never below one worker
    time.sleep(1.5)  # give a (wrong) extra kill the time to happen
    assert len(srv.wait_workers(1)) == 1
    assert srv.get("/pid").status == 200


def test_hup_replaces_workers(server):
    srv = server(["--workers", "2"], "wsgiapps:app")
    before = set(srv.wait_workers(2))
    os.kill(srv.pid, signal.SIGHUP)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = set(srv.worker_pids())
        if len(now) == 2 and not (now & before):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"workers not replaced: before={before} now={srv.worker_pids()}")
    srv.wait_for_log(r"Handling signal: hup")
    assert srv.get("/pid").status == 200
    assert srv.alive()


def test_max_requests_recycles_worker(server):
    srv = server(["--workers", "1", "--max-requests", "3"], "wsgiapps:app")
    first = srv.wait_workers(1)[0]
    pids = []
    for _ in range(7):
        # the readiness probe counted as one request of the first worker
        r = srv.get("/pid")
        assert r.status == 200
        pids.append(int(r.body))
    assert first in pids
    assert len(set(pids)) >= 3, pids
    srv.wait_for_log(r"Autorestarting worker after current request")


def test_worker_timeout(server):
    srv = server(["--workers", "1", "--timeout", "2"], "wsgiapps:app")
    first = srv.wait_workers(1)[0]
    t0 = time.monotonic()
    r = srv.get("/sleep?s=30&tag=timeout", timeout=40)
    elapsed = time.monotonic() - t0
    assert r.status == 500
    assert elapsed < 15, elapsed
    srv.wait_for_log(rf"WORKER TIMEOUT \(pid:{first}\)")
    new = srv.wait_workers(1, exclude=[first])
    assert new != [first]
    assert srv.get("/pid").status == 200


def test_worker_term_under_load_drops_nothing(server):
    """A worker told to stop while others keep serving: connections waiting in the
    backlog must be served by the remaining workers (no reset, no error)."""
    srv = server(["--workers", "4"], "wsgiapps:app")
    pids = srv.wait_workers(4)
    stop = threading.Event()
    results: list = []
    lock = threading.Lock()

    def client():
        n = 0
        while not stop.is_set() and n < 2000:
            n += 1
            try:
                r = srv.get("/sleep?s=0.02", timeout=30)
                ok = r.status
            except Exception as e:  # a reset or a parse error
                ok = repr(e)
            with lock:
                results.append(ok)

    with ThreadPoolExecutor(8) as ex:
        futures = [ex.submit(client) for _ in range(8)]
        deadline = time.monotonic() + 30
        while len(results) < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(pids[0], signal.SIGTERM)
        srv.wait_workers(4, exclude=[pids[0]])
        count = len(results)
        deadline = time.monotonic() + 30
        while len(results) < count + 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        for f in futures:
            f.result(60)
    failures = [x for x in results if x != 200]
    assert len(results) >= 80
    assert not failures, f"{len(failures)} failed of {len(results)}: {failures[:5]}"


def test_workers_exit_when_master_is_killed(server):
    """Orphaned workers notice that their parent is gone and exit."""
    import psutil

    srv = server(["--workers", "2", "--timeout", "6"], "wsgiapps:app")
    workers = srv.wait_workers(2)
    os.kill(srv.pid, signal.SIGKILL)
    srv.wait_exit(10)
    deadline = time.monotonic() + 30
    alive = workers
    while time.monotonic() < deadline:
        alive = []
        for pid in workers:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive:
            break
        time.sleep(0.1)
    assert not alive, f"workers {alive} survived their master"


def test_usr1_reopens_log_files(server, tmp_path):
    log = tmp_path / "access.log"
    srv = server(["--workers", "2", "--access-logfile", str(log)], "wsgiapps:app")
    srv.wait_workers(2)
    assert srv.get("/before-rotate").status == 200
    deadline = time.monotonic() + 20
    while "/before-rotate" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, "no access line before rotation"
        time.sleep(0.05)
    rotated = tmp_path / "access.log.1"
    log.rename(rotated)
    os.kill(srv.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 30
    n = 0
    while True:
        n += 1
        assert srv.get(f"/after-rotate-{n}").status == 200
        if log.exists() and "/after-rotate-" in log.read_text():
            break
        assert time.monotonic() < deadline, "log file was not reopened after USR1"
        time.sleep(0.2)
    assert "/before-rotate" in rotated.read_text()
    assert "/before-rotate" not in log.read_text()
    assert srv.alive()
