"""``ferrocorn advise``: against a running server (under load from the test) and
self-driven on an app, for a CPU-bound app (3 ms of pure-Python work) and a sleeping
one (20 ms): the classification, the JSON report, and one-line errors."""

from __future__ import annotations

import json
import re
import socket
import subprocess

import pytest
from loadgen import Load
from waiting import until

pytestmark = pytest.mark.ferrocorn_only

STATS_RE = re.compile(r"Stats listening at: (http://\S+)")
SETTINGS = ("worker_class", "workers", "threads", "timeout", "max_requests")


def advise_json(cli, *args, timeout=90):
    proc = cli(["advise", "--json", *args], timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    for name in SETTINGS:
        setting = report["settings"][name]
        assert setting["reason"], name
        assert isinstance(setting["numbers"], dict) and setting["numbers"], name
    assert report["measured"]["requests"] > 0
    return report


def get_load(srv, threads: int) -> Load:
    """``threads`` clients sending ``GET /`` to ``srv`` over kept-alive connections until
    stopped; any answer counts as a success (advise measures it, the test does not)."""

    def get(conn, n):
        conn.request("GET", "/")
        resp = conn.getresponse()
        resp.read()
        return True, resp.status

    # A failure (the server not taking connections yet) is retried after a pause, not
    # in a busy loop that would take the CPU from the server being measured.
    return Load(get, ("127.0.0.1", srv.port), threads=threads, pause_after_failure=0.05)


def wait_serving(srv, load: Load) -> None:
    """Until 20 requests were answered: the workers are booted and serving."""
    until(lambda: len(load.values()) >= 20, timeout=20, what="20 answers", detail=srv.log)


def advise_running(server, cli, app, args, load):
    srv = server(["--stats-bind", "127.0.0.1:0", *args], app)
    url = srv.wait_for_log(STATS_RE.pattern).group(1)
    with get_load(srv, load) as traffic:
        wait_serving(srv, traffic)
        report = advise_json(cli, "--stats-url", url, "--duration", "3")
    return report


def test_running_cpu_bound_gthread_server_gets_sync(server, cli):
    """A CPU-bound app served by gthread: its threads queue for the GIL, which no CPU
    counter shows; advise must not take that wait for I/O."""
    report = advise_running(
        server, cli, "advisapps:cpu", ["-k", "gthread", "--threads", "4", "-w", "2"], 8
    )
    assert report["measured"]["worker_class"] == "gthread"
    assert report["profile"]["kind"] == "cpu-bound", report["profile"]
    assert report["settings"]["worker_class"]["value"] == "sync"
    assert report["settings"]["threads"]["value"] == 1
    assert report["args"][:2] == ["-k", "sync"]


def test_running_sleep_bound_server_gets_gthread(server, cli):
    report = advise_running(server, cli, "advisapps:sleepy", ["-w", "2"], 4)
    assert report["profile"]["kind"] == "io-bound", report["profile"]
    assert report["settings"]["worker_class"]["value"] == "gthread"
    assert report["settings"]["threads"]["value"] > 1
    assert report["profile"]["io_ms"] > 15


def test_self_driven_cpu_bound(cli):
    report = advise_json(cli, "advisapps:cpu", "--duration", "3")
    assert report["profile"]["kind"] == "cpu-bound", report["profile"]
    assert report["settings"]["worker_class"]["value"] == "sync"
    assert report["settings"]["threads"]["value"] == 1
    assert report["settings"]["timeout"]["value"] == 30
    assert report["measured"]["slowest"][0]["request"] == "GET /"
    assert report["measured"]["worker_uss"] > 0


def test_self_driven_sleep_bound_text(cli):
    proc = cli(["advise", "advisapps:sleepy", "--duration", "3", "--path", "/a"], timeout=90)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "-> io-bound" in out
    assert re.search(r"^  --worker-class gthread$", out, re.M), out
    threads = int(re.search(r"^  --threads (\d+)$", out, re.M).group(1))
    assert threads > 1
    assert re.search(r"^  ferrocorn -k gthread -w \d+ --threads \d+ .*advisapps:sleepy$", out, re.M)
    assert "GET /a" in out


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("ferrocorn advise:")]
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    return lines[0]


def test_no_server_is_one_error_line(cli, tmp_path):
    line = _one_error_line(
        cli(["advise", "--stats-url", f"127.0.0.1:{_closed_port()}", "--duration", "1"])
    )
    assert "no ferrocorn stats server" in line
    line = _one_error_line(cli(["advise", "--pid", str(tmp_path / "nope.pid")]))
    assert "nope.pid" in line
    # Nothing given, nothing at the default control socket.
    env = {"XDG_RUNTIME_DIR": str(tmp_path), "FERROCORN_STATS_URL": None}
    assert _one_error_line(cli(["advise", "--duration", "1"], env=env))


def test_app_that_fails_to_load_is_one_error_line(cli):
    line = _one_error_line(cli(["advise", "advisapps:nothing", "--duration", "1"]))
    assert "exited with status 4" in line and "nothing" in line


def test_idle_server_is_one_error_line(server, cli):
    srv = server(["--stats-bind", "127.0.0.1:0"], "advisapps:cpu")
    url = srv.wait_for_log(STATS_RE.pattern).group(1)
    line = _one_error_line(cli(["advise", "--stats-url", url, "--duration", "1"]))
    assert "served no request" in line


def test_running_server_found_by_pidfile_through_its_control_socket(server, cli, tmp_path):
    """No --stats-bind: advise finds the master's control socket from its pidfile."""
    pidfile = tmp_path / "server.pid"
    srv = server(["-w", "2", "--pid", str(pidfile), "--control-socket", str(tmp_path / "c.ctl")],
                 "advisapps:sleepy")
    with get_load(srv, 4) as traffic:
        wait_serving(srv, traffic)
        report = advise_json(cli, "--pid", str(pidfile), "--duration", "2")
    assert "c.ctl" in report["source"]
    assert report["settings"]["worker_class"]["value"] == "gthread"
