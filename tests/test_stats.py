"""--stats-bind: the stats process's /metrics, /stats, /healthz and /readyz, and
``ferrocorn stats --json``. The numbers are checked against what the test did and
against /proc."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import psutil
import pytest
from terminal import read_pty, spawn_in_pty
from waiting import until as wait_until

pytestmark = pytest.mark.ferrocorn_only

STATS_RE = re.compile(r"Stats listening at: (http://\S+)")


def fetch(url: str, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url + path, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def stats(url: str) -> dict:
    status, body = fetch(url, "/stats")
    assert status == 200
    return json.loads(body)


def start(server, args=(), app="wsgiapps:app", **kw):
    srv = server(["--stats-bind", "127.0.0.1:0", *args], app, **kw)
    return srv, srv.wait_for_log(STATS_RE.pattern).group(1)




def booted(url: str, n: int) -> dict:
    return wait_until(
        lambda: (s := stats(url))["server"]["idle_workers"] == n and s,
        what=f"{n} idle workers",
    )


def stats_pid(master: int) -> int:
    for child in psutil.Process(master).children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            if "stats" in " ".join(child.cmdline()) or child.name().startswith("ferrocorn: stat"):
                return child.pid
        except psutil.Error:
            continue
    return 0


@pytest.mark.parametrize("klass", ["sync", "gthread"])
def test_requests_and_latency_are_counted(server, klass):
    args = ["-w", "2"] + (["-k", "gthread", "--threads", "2"] if klass == "gthread" else [])
    srv, url = start(server, args)
    before = booted(url, 2)["server"]
    n = 25
    for _ in range(n):
        assert srv.get("/pid").status == 200
    assert srv.get("/raise/before").status == 500
    after = wait_until(
        lambda: (s := stats(url))["server"]["requests"] == before["requests"] + n + 1 and s,
        what="the requests to be counted",
    )
    server_stats = after["server"]
    assert server_stats["errors_5xx"] == before["errors_5xx"] + 1
    workers = after["workers"]
    assert len(workers) == 2
    assert {w["class"] for w in workers} == {klass}
    assert sum(w["requests"] for w in workers) == server_stats["requests"]
    for w in workers:
        assert sum(w["latency_buckets"]) == w["requests"]
        if w["requests"]:
            assert 0 < w["p50"] <= w["p99"] < 5
            assert w["busy_seconds"] > 0
    assert 0 < server_stats["p50"] <= server_stats["p99"] < 5
    assert sorted(w["pid"] for w in workers) == sorted(
        p for p in srv.worker_pids() if p != stats_pid(srv.pid)
    )


def test_busy_worker_shows_its_request(server):
    srv, url = start(server, ["-w", "1"])
    booted(url, 1)
    t = threading.Thread(target=lambda: srv.get("/sleep?s=2&tag=busy"))
    t.start()
    try:
        w = wait_until(
            lambda: [
                w
                for w in stats(url)["workers"]
                if w["state"] == "busy" and (w["request_seconds"] or 0) > 0.3
            ],
            what="a busy worker",
        )[0]
        assert w["request"] == "GET /sleep"
        assert stats(url)["server"]["busy_workers"] == 1
    finally:
        t.join()
    w = wait_until(lambda: stats(url)["workers"][0]["state"] == "idle" and stats(url)["workers"])
    assert w[0]["request"] is None
    assert w[0]["p99"] >= 1.0  # the 2 s request is in the histogram's tail


def test_busy_asgi_worker_shows_its_oldest_request(server):
    """An asgi worker shows the oldest request whose app is still running."""
    srv, url = start(server, ["-w", "1", "-k", "asgi", "--asgi-lifespan", "off"],
                     app="asgiapps:app")
    booted(url, 1)
    slow = threading.Thread(target=lambda: srv.get("/sleep?3"))
    slow.start()
    try:
        wait_until(lambda: stats(url)["workers"][0]["state"] == "busy", what="busy")
        # A later, shorter request does not replace the older one in the slot.
        assert srv.get("/sleep?0.3").status == 200
        w = wait_until(
            lambda: [w for w in stats(url)["workers"]
                     if w["state"] == "busy" and (w["request_seconds"] or 0) > 0.5],
            what="the slow request, still running",
        )[0]
        assert w["request"] == "GET /sleep"
    finally:
        slow.join()
    wait_until(lambda: stats(url)["workers"][0]["state"] == "idle", what="idle again")


def test_memory_matches_proc(server):
    srv, url = start(server, ["-w", "2"])
    snap = booted(url, 2)
    for w in snap["workers"]:
        rss = psutil.Process(w["pid"]).memory_info().rss
        assert abs(w["rss_bytes"] - rss) <= max(0.1 * rss, 2 << 20), (w, rss)
        full = psutil.Process(w["pid"]).memory_full_info()
        assert abs(w["pss_bytes"] - full.pss) <= max(0.1 * full.pss, 2 << 20)
        assert abs(w["uss_bytes"] - full.uss) <= max(0.1 * full.uss, 2 << 20)
        assert w["age"] >= 0 and w["max_requests"] is None
    assert snap["master"]["pid"] == srv.pid
    assert snap["master"]["rss_bytes"] > 0


def test_requests_left_before_rotation(server):
    srv, url = start(server, ["-w", "1", "--max-requests", "100"])
    booted(url, 1)
    for _ in range(3):
        srv.get("/pid")
    w = wait_until(lambda: (ws := stats(url)["workers"]) and ws[0]["requests"] >= 3 and ws)[0]
    assert w["max_requests"] == 100
    assert w["requests_left"] == 100 - w["requests"]


def test_server_counts_survive_worker_rotation(server):
    """--max-requests 1: every request ends its worker. The server's totals (and the
    Prometheus server-wide counters) still count every request, where a sum over the
    current workers would show at most one."""
    srv, url = start(server, ["-w", "1", "--max-requests", "1", "--max-requests-jitter", "0"])
    before = booted(url, 1)["server"]["requests"]  # the harness's readiness probe
    n = 4
    for _ in range(n):
        assert srv.get("/pid").status == 200
    total = before + n
    after = wait_until(
        lambda: (s := stats(url))["server"]["requests"] >= total and s,
        what="the requests of the rotated workers to be counted",
    )
    assert after["server"]["requests"] == total
    assert after["server"]["statuses"] == {"200": total}
    assert after["server"]["errors_5xx"] == 0
    assert sum(w["requests"] for w in after["workers"]) <= 1
    status, body = fetch(url, "/metrics")
    assert status == 200
    text = body.decode()
    assert f"ferrocorn_requests_total {total}\n" in text
    assert f'ferrocorn_responses_total{{status="200"}} {total}\n' in text


def test_prometheus_output_parses(server):
    from prometheus_client.parser import text_string_to_metric_families

    srv, url = start(server, ["-w", "2"])
    booted(url, 2)
    for _ in range(10):
        srv.get("/pid")
    status, body = fetch(url, "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    for name in (
        "ferrocorn_workers",
        "ferrocorn_worker_requests",
        "ferrocorn_worker_state",
        "ferrocorn_request_duration_seconds",
        "ferrocorn_worker_rss_bytes",
        "ferrocorn_worker_cpu_wait_seconds",
        "ferrocorn_listen_backlog",
    ):
        assert name in families, sorted(families)
    assert families["ferrocorn_worker_requests"].type == "counter"
    assert families["ferrocorn_request_duration_seconds"].type == "histogram"
    assert families["ferrocorn_workers"].samples[0].value == 2
    requests = {
        s.labels["pid"]: s.value
        for s in families["ferrocorn_worker_requests"].samples
        if s.name == "ferrocorn_worker_requests_total"
    }
    assert len(requests) == 2 and sum(requests.values()) >= 10
    hist = families["ferrocorn_request_duration_seconds"].samples
    counts = {s.labels["pid"]: s.value for s in hist if s.name.endswith("_count")}
    inf = {s.labels["pid"]: s.value for s in hist if s.labels.get("le") == "+Inf"}
    assert counts == inf
    for pid, value in requests.items():
        assert counts[pid] == value
    states = [s for s in families["ferrocorn_worker_state"].samples if s.value == 1]
    assert {s.labels["state"] for s in states} <= {"idle", "io", "busy"}
    assert len(states) == 2
    backlog = families["ferrocorn_listen_backlog"].samples
    assert backlog and backlog[0].labels["listener"] == srv.listen_urls[0]
    assert backlog[0].value == 0


def test_health_and_readiness(server):
    _, url = start(server, ["-w", "1"])
    booted(url, 1)
    assert fetch(url, "/healthz") == (200, b"ok\n")
    assert fetch(url, "/readyz") == (200, b"ready\n")
    assert fetch(url, "/nope")[0] == 404


def test_stats_process_is_respawned_and_stopped(server):
    srv, url = start(server, ["-w", "1"])
    booted(url, 1)
    first = stats_pid(srv.pid)
    assert first
    psutil.Process(first).kill()
    wait_until(lambda: stats_pid(srv.pid) not in (0, first), what="a new stats process")
    wait_until(lambda: fetch(url, "/healthz")[0] == 200, what="stats served again")
    second = stats_pid(srv.pid)
    assert srv.stop(signal.SIGTERM) == 0
    assert not psutil.pid_exists(second) or psutil.Process(second).status() == "zombie"


def run_stats_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "ferrocorn", "stats", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_stats_command(server, tmp_path):
    pidfile = tmp_path / "server.pid"
    srv, url = start(server, ["-w", "1", "--pid", str(pidfile)])
    booted(url, 1)
    out = run_stats_cli("--json", "--stats-url", url)
    assert out.returncode == 0, out.stderr
    snap = json.loads(out.stdout)
    assert snap["master"]["pid"] == srv.pid
    assert len(snap["workers"]) == 1
    out = run_stats_cli("--json", "--pid", str(pidfile))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["master"]["pid"] == srv.pid
    out = run_stats_cli("--stats-url", url)
    assert out.returncode == 0 and "REQS" in out.stdout


def test_stats_command_without_server(tmp_path):
    out = run_stats_cli("--json", "--stats-url", "http://127.0.0.1:1")
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "no ferrocorn stats server" in out.stderr
    pidfile = tmp_path / "none.pid"
    pidfile.write_text("999999999\n")
    out = run_stats_cli("--json", "--pid", str(pidfile))
    assert out.returncode == 1
    assert "no server is running" in out.stderr


def test_top_renders_in_a_terminal(server):
    srv, url = start(server, ["-w", "2"])
    snap = booted(url, 2)
    primary, proc = spawn_in_pty(
        [sys.executable, "-m", "ferrocorn", "top", "--stats-url", url, "--interval", "0.2",
         "--iterations", "3"]
    )
    out = read_pty(primary, proc, time.monotonic() + 20)
    os.close(primary)
    assert proc.wait(timeout=20) == 0
    text = out.decode(errors="replace")
    assert text.count("\x1b[2J") == 3
    assert "REQS" in text and f"master {srv.pid}" in text
    for w in snap["workers"]:
        assert str(w["pid"]) in text


def test_warnings_when_the_numbers_call_for_action(server, helpers):
    """One worker held by a 7 s request with --timeout 8: 'all busy' after 5 s, 'close
    to the timeout' after 6 s, and connections piling up in the backlog meanwhile."""
    srv = server(["-w", "1", "--timeout", "8"])
    t = threading.Thread(target=lambda: srv.get("/sleep?s=7"))
    t.start()
    srv.wait_for_log(r"sleep-start")
    queued = []
    try:
        for _ in range(8):  # one more waiting connection every half second
            s = helpers.connect(srv.address)
            s.sendall(b"GET /pid HTTP/1.0\r\n\r\n")
            queued.append(s)
            time.sleep(0.5)
        srv.wait_for_log(r"listen backlog of http://\S+ keeps growing \(\d+ connections", 10)
        srv.wait_for_log(r"All 1 workers have been busy for \d+ s", 10)
        srv.wait_for_log(
            r"Worker \(pid:\d+\) has been serving GET /sleep for \d+\.\d s, close to the 8 s "
            r"--timeout",
            10,
        )
    finally:
        t.join()
        for s in queued:
            s.close()
    assert "WORKER TIMEOUT" not in srv.log()
