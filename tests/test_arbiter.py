"""The arbiter, black-box: signals, the worker timeout, configuration precedence, preload
(gunicorn behaviour §1.1, §2.1-2.6, §2.10; issue 3 items 2, 4, 5, 7, 10).

Load tests (HUP, max-requests and kill -9 under load) are in test_rotation.py, hooks in
test_hooks.py.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytestmark = pytest.mark.slow


class Background:
    """Run ``fn`` in a daemon thread; ``done()`` polls it, ``result()`` joins it."""

    def __init__(self, fn, *args, **kwargs):
        self._box: dict = {}
        self._thread = threading.Thread(target=self._run, args=(fn, args, kwargs), daemon=True)
        self._thread.start()

    def _run(self, fn, args, kwargs):
        try:
            self._box["result"] = fn(*args, **kwargs)
        except BaseException as e:
            self._box["error"] = e
        self._box["end"] = time.monotonic()

    def done(self) -> bool:
        return not self._thread.is_alive()

    @property
    def finished_at(self) -> float:
        return self._box["end"]

    def result(self, timeout=60):
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "background call did not finish"
        if "error" in self._box:
            raise self._box["error"]
        return self._box["result"]


def poll(predicate, timeout, what, interval=0.05):
    """Call ``predicate`` until it returns a truthy value (returned) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true within {timeout}s")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- signals


def test_ttin_adds_and_ttou_removes_a_worker(server):
    srv = server(["--workers", "2"])
    original = srv.wait_workers(2)
    os.kill(srv.pid, signal.SIGTTIN)
    three = srv.wait_workers(3, timeout=20)
    assert set(original) < set(three)
    os.kill(srv.pid, signal.SIGTTIN)
    four = srv.wait_workers(4, timeout=20)
    os.kill(srv.pid, signal.SIGTTOU)
    after = srv.wait_workers(3, timeout=20)
    removed = set(four) - set(after)
    assert len(removed) == 1 and set(after) < set(four), (four, after)
    # TTOU stops the oldest worker, i.e. one of the two started at boot
    assert removed <= set(original), (original, four, after)
    srv.wait_for_log(r"Handling signal: ttin")
    srv.wait_for_log(r"Handling signal: ttou")
    assert srv.get("/pid").status == 200


def test_usr1_reopens_access_log(server, tmp_path):
    log = tmp_path / "access.log"
    srv = server(["--workers", "2", "--access-logfile", str(log)])
    srv.wait_workers(2)
    assert srv.get("/before-usr1").status == 200
    poll(lambda: log.exists() and "/before-usr1" in log.read_text(), 20,
         "access line before USR1")
    moved = tmp_path / "access.log.1"
    log.rename(moved)
    # still open: a request now lands in the moved file
    assert srv.get("/while-moved").status == 200
    poll(lambda: "/while-moved" in moved.read_text(), 20, "access line in the moved file")
    assert not log.exists()
    os.kill(srv.pid, signal.SIGUSR1)
    srv.wait_for_log(r"Handling signal: usr1")
    n = 0

    def reopened():
        nonlocal n
        n += 1
        assert srv.get(f"/after-usr1-{n}").status == 200
        return log.exists() and "/after-usr1-" in log.read_text()

    # every worker must reopen: repeat until one lands, then check the others did too
    poll(reopened, 20, "a new access log at the original path", interval=0.1)
    for i in range(6):
        assert srv.get(f"/after-all-{i}").status == 200
    poll(lambda: log.read_text().count("/after-all-") == 6, 20,
         "all later lines in the new file")
    assert "/after-all-" not in moved.read_text()
    assert "/before-usr1" in moved.read_text()
    assert "/before-usr1" not in log.read_text()
    assert srv.alive()


def test_term_is_graceful(server):
    srv = server(["--workers", "2", "--graceful-timeout", "30"])
    workers = srv.wait_workers(2)
    slow = Background(srv.get, "/sleep?s=2&tag=graceful", timeout=40)
    srv.wait_for_log(r"sleep-start pid=\d+ tag=graceful")
    t0 = time.monotonic()
    rc = srv.stop(signal.SIGTERM, timeout=40)
    r = slow.result()
    assert r.status == 200, r
    assert r.json()["tag"] == "graceful"
    assert rc == 0
    assert time.monotonic() - t0 < 20
    srv.wait_for_log(r"Handling signal: term")
    srv.wait_for_log(r"Shutting down: Master")
    for pid in workers:
        assert poll(lambda p=pid: not _alive(p), 10, f"worker {pid} gone")


@pytest.mark.ferrocorn_only
def test_term_drains_the_listen_backlog(server, helpers):
    """Beyond gunicorn (#3397): connections already queued in the listen backlog when TERM
    arrives are answered, not reset."""
    srv = server(["--workers", "1", "--graceful-timeout", "30"])
    srv.wait_workers(1)
    slow = Background(srv.get, "/sleep?s=1.5&tag=drain", timeout=40)
    srv.wait_for_log(r"sleep-start pid=\d+ tag=drain")
    queued = []
    for i in range(3):
        s = helpers.connect(srv.address, timeout=30)  # accepted by the kernel: queued
        s.sendall(f"GET /queued-{i} HTTP/1.0\r\n\r\n".encode())
        queued.append(s)
    try:
        rc = srv.stop(signal.SIGTERM, timeout=40)
        answers = []
        for s in queued:
            data = helpers.read_until_eof(s, timeout=10)
            answers.append(data.split(b"\r\n", 1)[0])
    finally:
        for s in queued:
            s.close()
    assert slow.result().status == 200
    assert rc == 0
    assert len(answers) == 3
    assert all(re.match(rb"HTTP/1\.[01] 200 OK$", a) for a in answers), answers


@pytest.mark.parametrize("sig", [signal.SIGQUIT, signal.SIGINT], ids=["QUIT", "INT"])
def test_quit_and_int_are_quick(server, sig):
    srv = server(["--workers", "2", "--graceful-timeout", "60"])
    workers = srv.wait_workers(2)
    slow = Background(srv.raw, b"GET /sleep?s=60&tag=quick HTTP/1.0\r\n\r\n", timeout=90)
    srv.wait_for_log(r"sleep-start pid=\d+ tag=quick")
    t0 = time.monotonic()
    rc = srv.stop(sig, timeout=30)
    elapsed = time.monotonic() - t0
    assert rc == 0
    assert elapsed < 10, f"quick stop took {elapsed:.1f}s (graceful timeout is 60 s)"
    raw = slow.result()
    assert b" 200 OK" not in raw  # the slow request was abandoned
    for pid in workers:
        assert poll(lambda p=pid: not _alive(p), 10, f"worker {pid} gone")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# --------------------------------------------------------------------------- timeout


def _hang_and_serve_others(srv, hang_seconds=60):
    """Start a hung request; while it hangs keep asking /pid. Returns
    (hung worker pid, hung response, seconds until it came back, /pid answers)."""
    t0 = time.monotonic()
    hung = Background(srv.get, f"/sleep?s={hang_seconds}&tag=hung", timeout=40)
    hung_pid = int(srv.wait_for_log(r"sleep-start pid=(\d+) tag=hung").group(1))
    others = []
    deadline = time.monotonic() + 30
    while not hung.done() and time.monotonic() < deadline:
        r = srv.get("/pid", timeout=10)
        others.append((r.status, int(r.body) if r.status == 200 else None))
        time.sleep(0.1)
    resp = hung.result()
    return hung_pid, resp, hung.finished_at - t0, others


def test_timeout_kills_hung_view_while_others_serve(server):
    srv = server(["--workers", "2", "--timeout", "2"])
    srv.wait_workers(2)
    hung_pid, resp, elapsed, others = _hang_and_serve_others(srv)
    assert resp.status == 500, resp
    assert elapsed < 15, f"the hung request came back after {elapsed:.1f}s"
    srv.wait_for_log(rf"WORKER TIMEOUT \(pid:{hung_pid}\)")
    # the other worker answered all along
    assert len(others) >= 5, others
    assert all(status == 200 for status, _ in others), others
    assert hung_pid not in {pid for _, pid in others}
    # the hung worker is replaced and the server keeps serving
    srv.wait_workers(2, exclude=[hung_pid], timeout=20)
    assert srv.get("/pid").status == 200


@pytest.mark.ferrocorn_only
def test_timeout_logs_stack_of_hung_view(server):
    """Beyond gunicorn: the master dumps every thread's stack of the hung worker (and the
    request it was serving) to the error log before killing it."""
    srv = server(["--workers", "2", "--timeout", "2"])
    srv.wait_workers(2)
    hung_pid, resp, elapsed, _ = _hang_and_serve_others(srv)
    assert resp.status == 500
    assert elapsed < 15, elapsed
    m = srv.wait_for_log(rf"WORKER TIMEOUT \(pid:{hung_pid}\)")
    after = srv.log()[m.start():]
    # the view's frame: "File ".../wsgiapps.py", line N in sleep" (faulthandler) or
    # "..., line N, in sleep" (traceback)
    frame = re.search(r'File "[^"]*wsgiapps\.py", line \d+,? in sleep\b', after)
    assert frame, f"no stack frame of the hung view after the timeout line:\n{after[:4000]}"
    assert "/sleep" in after[:frame.start()], "the hung request is not named before its stack"
    # the stack is dumped before the worker is aborted: ahead of the abort's own error
    # (gunicorn only has that traceback) and of the master's reaping line
    for later in (r"Error handling request",
                  rf"Worker \(pid:{hung_pid}\) (was sent|was stopped|exited with)"):
        m_later = re.search(later, after)
        if m_later:
            assert frame.start() < m_later.start(), f"stack only after {later!r}:\n{after}"


@pytest.mark.ferrocorn_only
def test_timeout_logs_stack_of_view_hung_in_c_code(server):
    """Beyond gunicorn: a worker stuck in C code with the GIL released (hangapp's
    pthread_mutex_timedlock, which ignores signals like a hung database driver) cannot run
    a Python signal handler; its stack still reaches the log, and it is killed."""
    srv = server(["--workers", "2", "--timeout", "2"], "hangapp:app")
    srv.wait_workers(2)
    hung = Background(srv.raw, b"GET /c-hang?s=40 HTTP/1.0\r\n\r\n", timeout=60)
    hung_pid = int(srv.wait_for_log(r"c-hang-start pid=(\d+)").group(1))
    m = srv.wait_for_log(rf"WORKER TIMEOUT \(pid:{hung_pid}\)", timeout=20)
    srv.wait_workers(2, exclude=[hung_pid], timeout=20)
    after = srv.log()[m.start():]
    frame = re.search(r'File "[^"]*hangapp\.py", line \d+,? in c_hang\b', after)
    assert frame, f"no stack frame of the hung view after the timeout line:\n{after[:4000]}"
    assert "/c-hang" in after[:frame.start()], "the hung request is not named before its stack"
    raw = hung.result()
    assert b"c-hang returned" not in raw
    # The Python SIGABRT path cannot run; the worker's Rust watchdog still answers.
    assert raw.startswith(b"HTTP/1.1 500 Internal Server Error\r\n"), raw[:200]
    assert srv.get("/pid").status == 200


def test_timeout_zero_disables_it(server):
    srv = server(["--workers", "1", "--timeout", "0"])
    [worker] = srv.wait_workers(1)
    r = srv.get("/sleep?s=3&tag=notimeout", timeout=30)
    assert r.status == 200
    assert r.json()["pid"] == worker
    assert int(srv.get("/pid").body) == worker
    assert srv.worker_pids() == [worker]
    assert "WORKER TIMEOUT" not in srv.log()


# --------------------------------------------------------------------------- configuration


CONF = """\
workers = 3
bind = "127.0.0.1:{port}"
timeout = 55
graceful_timeout = 17
keepalive = 7
"""


def _print_config(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(\w+)\s*=\s?(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def test_config_precedence_print_config(cli, helpers, tmp_path):
    """defaults < ./gunicorn.conf.py < GUNICORN_CMD_ARGS < command line."""
    port = free_port()
    (tmp_path / "gunicorn.conf.py").write_text(CONF.format(port=port))
    env = {"PYTHONPATH": str(helpers.apps_dir),
           "GUNICORN_CMD_ARGS": "--timeout 44 --graceful-timeout 12"}
    res = cli(["--print-config", "--graceful-timeout", "9", "wsgiapps:app"], cwd=tmp_path,
              env=env)
    assert res.returncode == 0, res.stderr
    cfg = _print_config(res.stdout)
    assert cfg["workers"] == "3"  # config file over the default
    assert cfg["bind"] == f"['127.0.0.1:{port}']"
    assert cfg["keepalive"] == "7"
    assert cfg["timeout"] == "44"  # environment over the config file
    assert cfg["graceful_timeout"] == "9"  # command line over environment and file
    assert cfg["max_requests"] == "0"  # untouched default
    # without the environment the file's values show
    res = cli(["--print-config", "wsgiapps:app"], cwd=tmp_path,
              env={"PYTHONPATH": str(helpers.apps_dir)})
    cfg = _print_config(res.stdout)
    assert (cfg["timeout"], cfg["graceful_timeout"]) == ("55", "17")


@pytest.mark.parametrize(
    ("env_args", "cli_args", "expected"),
    [(None, [], 3), ("--workers 2", [], 2), ("--workers 2", ["--workers", "4"], 4)],
    ids=["file", "env-over-file", "cli-over-env"],
)
def test_config_precedence_live(server, helpers, tmp_path, env_args, cli_args, expected):
    port = free_port()
    (tmp_path / "gunicorn.conf.py").write_text(CONF.format(port=port))
    env = {"PYTHONPATH": str(helpers.apps_dir), "GUNICORN_CMD_ARGS": env_args}
    srv = server(cli_args, "wsgiapps:app", cwd=tmp_path, env=env, bind=False)
    assert srv.address == ("127.0.0.1", port)  # bind from the config file
    assert len(srv.wait_workers(expected, timeout=20)) == expected
    time.sleep(1.2)  # a master loop or so: no extra worker shows up later
    assert len(srv.worker_pids()) == expected
    assert srv.get("/pid").status == 200


# --------------------------------------------------------------------------- preload


def _smaps_rollup(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            m = re.match(r"^(\w+):\s+(\d+) kB", line)
            if m:
                out[m.group(1)] = int(m.group(2))
    return out


def _django_worker_memory(server, helpers, preload: bool, workers: int = 3):
    project = helpers.apps_dir / "djangoproject"
    args = ["--chdir", str(project), "--workers", str(workers)]
    if preload:
        args.append("--preload")
    srv = server(args, "config.wsgi:application", cwd=project, timeout=60)
    pids = srv.wait_workers(workers, timeout=60)
    # httpx reads by Content-Length (this test is about memory, not connection handling)
    with httpx.Client(base_url=srv.url, timeout=30) as client, ThreadPoolExecutor(6) as ex:
        statuses = list(ex.map(lambda _: client.get("/").status_code, range(6 * workers)))
    assert set(statuses) == {200}, statuses
    mem = [_smaps_rollup(pid) for pid in pids]
    srv.stop(signal.SIGTERM, timeout=30)
    shared = sum(m["Shared_Clean"] + m["Shared_Dirty"] for m in mem) / len(mem)
    pss = sum(m["Pss"] for m in mem) / len(mem)
    return shared, pss


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="needs Linux 4.14+")
def test_preload_workers_share_more_memory(server, helpers):
    """--preload imports the app in the master, so the workers share its pages
    copy-on-write: more shared memory per worker (and a lower PSS) than without."""
    shared_plain, pss_plain = _django_worker_memory(server, helpers, preload=False)
    shared_pre, pss_pre = _django_worker_memory(server, helpers, preload=True)
    print(f"per worker, kB: without --preload shared={shared_plain:.0f} pss={pss_plain:.0f}; "
          f"with --preload shared={shared_pre:.0f} pss={pss_pre:.0f}")
    # a relation with a margin above run-to-run noise, not a fixed number (measured on
    # Django 5.2: about 2.2x the shared memory and half the PSS)
    assert shared_pre > 1.2 * shared_plain, (shared_pre, shared_plain)
    assert pss_pre < 0.9 * pss_plain, (pss_pre, pss_plain)
