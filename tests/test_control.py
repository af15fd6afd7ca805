"""The control socket (gunicorn's protocol: 4-byte big-endian length + JSON), and
``ferrocorn stats`` / ``ferrocorn top`` finding a server through it: by the default
path, --control-socket, or --pid. The numbers are checked against what the test did;
``top`` is read from a pseudo-terminal."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from terminal import read_pty, spawn_in_pty
from waiting import until

pytestmark = pytest.mark.ferrocorn_only

CTL_RE = r"Control socket listening at (\S+)"




def ctl(path, command, request_id=1, timeout=10.0):
    """One request in gunicorn's framing; returns the whole answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        # With a timeout, a Unix socket's connect says EAGAIN while the queue is full.
        until(lambda: s.connect_ex(str(path)) != errno.EAGAIN, what="connect")
        payload = json.dumps({"id": request_id, "command": command, "args": []}).encode()
        s.sendall(struct.pack(">I", len(payload)) + payload)
        return read_frame(s)


def read_frame(s):
    def exactly(n):
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            assert chunk, "connection closed mid-answer"
            buf += chunk
        return buf

    (length,) = struct.unpack(">I", exactly(4))
    return json.loads(exactly(length))


def snapshot(path):
    answer = ctl(path, "stats")
    assert answer["status"] == "ok", answer
    return answer["data"]


def run(*args, runtime_dir=None, timeout=30):
    env = dict(os.environ)
    env.pop("FERROCORN_STATS_URL", None)
    if runtime_dir is not None:
        env["XDG_RUNTIME_DIR"] = str(runtime_dir)
    return subprocess.run(
        [sys.executable, "-m", "ferrocorn", *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )


def control_path(srv) -> str:
    return srv.wait_for_log(CTL_RE).group(1)


def test_default_socket_and_stats_command(server, tmp_path):
    pidfile = tmp_path / "master.pid"
    srv = server(["-w", "2", "--pid", str(pidfile)])
    path = control_path(srv)
    assert path == os.path.join(srv.runtime_dir, "ferrocorn.ctl")
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    workers = srv.wait_workers(2)

    before = until(lambda: (s := snapshot(path))["server"]["idle_workers"] == 2 and s)
    for _ in range(5):
        assert srv.get("/pid").status == 200
    assert srv.get("/body?status=404_Not_Found").status == 404

    out = run("stats", "--json", runtime_dir=srv.runtime_dir)  # the default path
    assert out.returncode == 0, out.stderr
    snap = json.loads(out.stdout)
    assert snap["master"]["pid"] == srv.pid
    assert snap["master"]["control_socket"] == path
    assert sorted(w["pid"] for w in snap["workers"]) == workers
    after = snap["server"]
    assert after["requests"] == before["server"]["requests"] + 6
    statuses = after["statuses"]
    assert statuses.get("404", 0) == before["server"]["statuses"].get("404", 0) + 1
    assert sum(statuses.values()) == after["requests"]
    assert after["restarts"] == 0 and all(w["restarts"] == 0 for w in snap["workers"])

    for args in (["--control-socket", path], ["--pid", str(pidfile)]):
        out = run("stats", "--json", *args, runtime_dir=tmp_path / "elsewhere")
        assert out.returncode == 0, (args, out.stderr)
        assert json.loads(out.stdout)["master"]["pid"] == srv.pid
    out = run("stats", runtime_dir=srv.runtime_dir)
    assert out.returncode == 0 and "REQS" in out.stdout and f"master {srv.pid}" in out.stdout

    assert srv.stop(signal.SIGTERM) == 0
    assert not os.path.exists(path)  # removed on exit


def test_no_server_is_one_clear_line(tmp_path):
    runtime = tmp_path / "rt"
    runtime.mkdir()
    path = runtime / "ferrocorn.ctl"
    for command in (["stats", "--json"], ["stats"], ["top", "--iterations", "1"]):
        out = run(*command, runtime_dir=runtime)
        assert out.returncode == 1
        assert out.stderr == (
            f"Error: no ferrocorn server is running: no control socket at {path} "
            "(start one, or give --control-socket/--pid)\n"
        )
        assert out.stdout == ""
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: a server that was killed
    out = run("stats", runtime_dir=runtime)
    assert out.returncode == 1 and out.stderr.count("\n") == 1
    assert "no ferrocorn server is running" in out.stderr and "stale" in out.stderr
    pidfile = tmp_path / "gone.pid"
    pidfile.write_text("999999999\n")
    out = run("stats", "--pid", str(pidfile), runtime_dir=runtime)
    assert out.returncode == 1 and out.stderr.count("\n") == 1
    assert "no server is running with pid 999999999" in out.stderr


def test_stale_socket_is_replaced(server, tmp_path):
    path = tmp_path / "app.ctl"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    srv = server(["-w", "1", "--control-socket", str(path)])
    assert control_path(srv) == str(path)
    assert f"Removed a stale control socket at {path}" in srv.log()
    assert snapshot(path)["master"]["pid"] == srv.pid


def test_a_live_server_keeps_its_socket(server, tmp_path):
    path = tmp_path / "shared.ctl"
    first = server(["-w", "1", "--control-socket", str(path)])
    control_path(first)
    second = server(["-w", "1", "--control-socket", str(path)])  # boots all the same
    second.wait_for_log(
        rf"No control socket: {re.escape(str(path))} belongs to another running server "
        rf"\(pid {first.pid}\)"
    )
    assert second.get("/pid").status == 200
    assert snapshot(path)["master"]["pid"] == first.pid
    assert second.stop(signal.SIGTERM) == 0
    assert snapshot(path)["master"]["pid"] == first.pid  # not unlinked by the other one
    assert first.stop(signal.SIGTERM) == 0
    assert not path.exists()


def test_disabled_and_found_by_pid_next_to_a_unix_listener(server, tmp_path):
    pidfile = tmp_path / "off.pid"
    off = server(["-w", "1", "--no-control-socket", "--pid", str(pidfile)])
    off.wait_for_log("Control socket disabled")
    assert os.listdir(off.runtime_dir) == []
    out = run("stats", "--pid", str(pidfile))
    assert out.returncode == 1 and out.stderr.count("\n") == 1
    assert "has no control socket" in out.stderr

    # The app also listens on a Unix socket, and the control socket's name does not end
    # in .ctl: --pid still picks the control socket (the one no worker holds).
    pidfile = tmp_path / "unix.pid"
    app_sock = tmp_path / "app.sock"
    srv = server(["-w", "2", "-b", "127.0.0.1:0", "-b", f"unix:{app_sock}",
                  "--control-socket", str(tmp_path / "control"), "--pid", str(pidfile)])
    srv.wait_workers(2)
    out = run("stats", "--json", "--pid", str(pidfile))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["master"]["pid"] == srv.pid


def test_gunicorn_protocol_and_commands(server):
    srv = server(["-w", "2"])
    path = control_path(srv)
    workers = srv.wait_workers(2)
    answer = ctl(path, "show workers", request_id=7)
    assert answer["id"] == 7 and answer["status"] == "ok"
    assert sorted(w["pid"] for w in answer["data"]["workers"]) == workers
    assert answer["data"]["count"] == 2

    bad = ctl(path, "frobnicate", request_id=8)
    assert bad == {"id": 8, "status": "error", "error": "unknown command 'frobnicate'; try help"}

    assert ctl(path, "worker add 2")["data"] == {"added": 2, "previous": 2, "total": 4}
    too_many = ctl(path, "worker add 100000")
    assert too_many["status"] == "error" and "scoreboard" in too_many["error"]
    srv.wait_workers(4)
    assert ctl(path, "worker remove 3")["data"]["total"] == 1
    (survivor,) = srv.wait_workers(1)
    assert ctl(path, "show stats")["data"]["workers_target"] == 1
    assert ctl(path, "worker kill 1")["data"]["success"] is False
    assert ctl(path, f"worker kill {survivor}")["data"] == {"success": True, "killed": survivor}
    srv.wait_workers(1, exclude=(survivor,))

    # gunicorn's own client (gunicornc) talks to it unchanged.
    from gunicorn.ctl.client import ControlClient

    with ControlClient(path, timeout=10) as client:
        assert client.send_command("show stats")["pid"] == srv.pid
        assert client.send_command("show listeners")["listeners"][0]["address"] == srv.url

    # A line of text gets one line of JSON; requests may follow each other.
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(b"stats\nshow stats\n")
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    first, second = data.decode().splitlines()
    assert json.loads(first)["data"]["master"]["pid"] == srv.pid
    assert json.loads(second)["data"]["workers_current"] == 1

    inode = os.stat(path).st_ino
    assert ctl(path, "reload")["data"] == {"status": "reloading"}
    srv.wait_for_log("Hang up: Master")
    until(lambda: ctl(path, "show stats")["data"]["reloads"] == 1, what="the reload")
    assert os.stat(path).st_ino == inode  # HUP keeps the socket
    assert srv.log().count("Control socket listening at") == 1


def test_slow_and_hostile_clients_do_not_block_the_master(server):
    srv = server(["-w", "1"])
    path = control_path(srv)
    srv.wait_workers(1)
    clients = []
    try:
        for _ in range(20):  # more idle connections than the master keeps
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            clients.append(s)
        partial = socket.socket(socket.AF_UNIX)
        partial.connect(path)
        partial.sendall(b"\x00\x00\x00\x40{")  # a frame that never completes
        huge = socket.socket(socket.AF_UNIX)
        huge.connect(path)
        huge.sendall(b"\x7f\xff\xff\xff")  # a 2 GiB request
        start = time.monotonic()
        assert snapshot(path)["master"]["pid"] == srv.pid
        assert time.monotonic() - start < 2
        srv.proc.send_signal(signal.SIGTTIN)  # signals are still handled promptly
        srv.wait_workers(2, timeout=5)

        huge.settimeout(5)
        answer = read_frame(huge)
        assert answer["status"] == "error" and "too long" in answer["error"]
        assert huge.recv(1) == b""
        partial.settimeout(10)
        start = time.monotonic()
        assert partial.recv(1) == b""  # hung up after the request deadline
        assert time.monotonic() - start < 5
        partial.close()
        huge.close()
    finally:
        for s in clients:
            s.close()
    assert snapshot(path)["server"]["workers"] == 2


@pytest.mark.slow
def test_usr2_new_master_uses_path_2_until_promoted(server, tmp_path):
    pidfile = tmp_path / "m.pid"
    srv = server(["-w", "1", "--pid", str(pidfile)])
    path = control_path(srv)
    srv.wait_workers(1)
    srv.proc.send_signal(signal.SIGUSR2)
    new_pidfile = Path(f"{pidfile}.2")
    new_master = until(lambda: new_pidfile.exists() and int(new_pidfile.read_text() or 0))
    srv.wait_for_log(rf"Control socket listening at {re.escape(path)}\.2")
    assert snapshot(path)["master"]["pid"] == srv.pid
    assert snapshot(path + ".2")["master"]["pid"] == new_master
    out = run("stats", "--json", "--pid", str(new_pidfile))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["master"]["pid"] == new_master
    out = run("stats", "--json", "--pid", str(pidfile))
    assert json.loads(out.stdout)["master"]["pid"] == srv.pid

    assert srv.stop(signal.SIGTERM) == 0  # retire the old master
    srv.wait_for_log("Master has been promoted.")
    until(lambda: not os.path.exists(path + ".2"), what="PATH.2 renamed")
    assert snapshot(path)["master"]["pid"] == new_master
    out = run("stats", "--json", runtime_dir=srv.runtime_dir)
    assert json.loads(out.stdout)["master"]["pid"] == new_master
    os.kill(new_master, signal.SIGTERM)
    until(lambda: not psutil.pid_exists(new_master)
          or psutil.Process(new_master).status() == psutil.STATUS_ZOMBIE, what="exit")
    until(lambda: not os.path.exists(path), what="the socket removed")


def test_hup_moves_the_control_socket(server, tmp_path):
    first, second = tmp_path / "a.ctl", tmp_path / "b.ctl"
    conf = tmp_path / "conf.py"
    conf.write_text(f"control_socket = {str(first)!r}\n")
    srv = server(["-w", "1", "-c", str(conf)])
    assert control_path(srv) == str(first)
    conf.write_text(f"control_socket = {str(second)!r}\ncontrol_socket_mode = 0o660\n")
    srv.proc.send_signal(signal.SIGHUP)
    srv.wait_for_log(rf"Control socket listening at {re.escape(str(second))}")
    assert not first.exists()
    assert stat.S_IMODE(os.stat(second).st_mode) == 0o660
    assert snapshot(second)["master"]["pid"] == srv.pid


def _top(args, runtime_dir, columns=160):
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime_dir))
    env.pop("FERROCORN_STATS_URL", None)
    return spawn_in_pty([sys.executable, "-m", "ferrocorn", "top", *args], env=env,
                        size=(40, columns))


def test_top_in_a_terminal(server):
    srv = server(["-w", "2", "--max-requests", "1000"])
    path = control_path(srv)
    first = srv.wait_workers(2)
    os.kill(first[0], signal.SIGKILL)  # its replacement shows one restart
    workers = srv.wait_workers(2, exclude=(first[0],))
    t = threading.Thread(target=lambda: srv.get("/sleep?s=3&tag=top"))
    t.start()
    try:
        srv.wait_for_log("sleep-start pid=")
        busy = until(lambda: [w for w in snapshot(path)["workers"] if w["state"] == "busy"])[0]
        primary, proc = _top(["--interval", "0.3", "--iterations", "3"], srv.runtime_dir)
        out = read_pty(primary, proc, time.monotonic() + 20)
        os.close(primary)
        assert proc.wait(timeout=20) == 0
    finally:
        t.join()
    text = out.decode(errors="replace")
    assert text.count("\x1b[2J") == 3
    assert text.startswith("\x1b[?1049h") and text.rstrip().endswith("\x1b[?1049l")
    frame = text.split("\x1b[2J")[-1]
    lines = frame.replace("\r", "").split("\n")
    assert f"master {srv.pid}" in lines[0]
    header = next(line for line in lines if "\x1b[7m" in line)
    visible = header.replace("\x1b[7m", "").replace("\x1b[0m", "")
    assert len(visible) == 160 and visible.split()[:3] == ["PID", "CLASS", "STATE"]
    assert all(len(line) <= 160 for line in lines if "\x1b" not in line)
    rows = {int(line.split()[0]): line for line in lines if line.strip()[:1].isdigit()}
    assert sorted(rows) == sorted(workers)
    assert "busy for " in rows[busy["pid"]] and "on GET /sleep" in rows[busy["pid"]]
    restarts = {pid: int(row.split()[13]) for pid, row in rows.items()}
    lefts = {pid: int(row.split()[12]) for pid, row in rows.items()}
    assert sorted(restarts.values()) == [0, 1]
    assert all(0 < left <= 1000 for left in lefts.values())
    assert "Backlog: http://127.0.0.1:" in frame and "req/s" in frame


def test_top_quits_on_q(server):
    srv = server(["-w", "1"])
    control_path(srv)
    primary, proc = _top(["--interval", "5"], srv.runtime_dir)
    try:
        out = read_pty(primary, proc, time.monotonic() + 15, until_text=b"REQS")
        assert b"REQS" in out
        os.write(primary, b"q")
        assert proc.wait(timeout=5) == 0  # long before the next 5 s frame
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(primary)
