"""USR2: zero-downtime upgrade by re-executing the master (behaviour reference §2.9).

The old master forks a child that runs ``pre_exec`` and execs a new master with the
listening sockets (``GUNICORN_FD``) and ``GUNICORN_PID``; the new master writes
``<pidfile>.2``, serves on the same sockets, and is promoted (pidfile renamed) once
the old one has gone.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest
from loadgen import Load
from waiting import until

pytestmark = pytest.mark.slow


def read_pid(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def live_children(pid: int) -> list[int]:
    try:
        kids = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []
    out = []
    for k in kids:
        try:
            if k.status() != psutil.STATUS_ZOMBIE:
                out.append(k.pid)
        except psutil.NoSuchProcess:
            pass
    return sorted(out)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def client_loop(srv, threads=4) -> Load:
    """Threads sending GET / back to back until stopped, each on a new connection; a
    result's value is the pid that answered."""

    def get(conn, n):
        r = srv.get("/", timeout=20)
        if r.status != 200:
            return False, f"status {r.status}"
        return True, int(r.text.split()[1])

    return Load(get, threads=threads)


def served_by(load: Load, pids) -> int:
    """The requests answered by one of ``pids``."""
    return sum(1 for p in load.values() if p in pids)


def test_usr2_upgrade_under_load_loses_nothing(server, tmp_path, helpers):
    pidfile = tmp_path / "master.pid"
    srv = server(["--workers", "2", "--pid", str(pidfile)], "procapp:app")
    old_workers = srv.wait_workers(2)
    assert read_pid(pidfile) == srv.pid
    with client_loop(srv) as load:
        until(lambda: served_by(load, old_workers) >= 20, what="old workers serving")
        srv.proc.send_signal(signal.SIGUSR2)
        new_master = until(lambda: read_pid(Path(f"{pidfile}.2")), what="pidfile.2")
        assert new_master != srv.pid
        assert psutil.Process(new_master).ppid() == srv.pid
        new_workers = until(lambda: (lambda k: k if len(k) == 2 else None)(
            live_children(new_master)), what="the new master's 2 workers")
        until(lambda: served_by(load, new_workers) >= 20, what="new workers serving")

        assert srv.stop(signal.SIGTERM) == 0  # retire the old master
        srv.wait_for_log(r"Master has been promoted\.")
        until(lambda: read_pid(pidfile) == new_master, what="pidfile renamed")
        assert not Path(f"{pidfile}.2").exists()
        served = served_by(load, new_workers)
        until(lambda: served_by(load, new_workers) >= served + 50,
              what="the new master serving alone")
    assert load.failures() == [], load.failures()[:5]
    assert load.values()
    assert not (set(load.values()) - set(old_workers) - set(new_workers))

    if not helpers.is_gunicorn:
        try:
            import setproctitle  # noqa: F401

            title = Path(f"/proc/{new_master}/cmdline").read_bytes().split(b"\0")[0]
            assert title == b"ferrocorn: master [procapp:app]"
        except ImportError:
            pass
    os.kill(new_master, signal.SIGTERM)
    until(lambda: gone(new_master), what="new master exit")
    until(lambda: not pidfile.exists(), what="pidfile removed by the new master")


def test_usr2_second_signal_refused_and_pre_exec(server, tmp_path):
    conf = tmp_path / "conf.py"
    conf.write_text(
        "import os\n"
        "def pre_exec(server):\n"
        "    server.log.info('pre-exec-hook pid=%s ppid=%s', os.getpid(), os.getppid())\n"
    )
    srv = server(["-c", str(conf), "--workers", "1"], "procapp:app")
    srv.proc.send_signal(signal.SIGUSR2)
    m = srv.wait_for_log(r"pre-exec-hook pid=(\d+) ppid=(\d+)")
    assert int(m.group(2)) == srv.pid
    child = int(m.group(1))
    srv.proc.send_signal(signal.SIGUSR2)
    srv.wait_for_log(r"USR2 signal ignored\. Child exists\.")
    # The new master (the same pid, after exec) is up and serving too.
    srv.wait_for_log(rf"Listening at: \S+ \({child}\)")
    until(lambda: len(live_children(child)) == 1, what="the new master's worker")
    assert srv.get("/").status == 200


def test_usr2_new_master_refuses_usr2_while_parent_lives(server, tmp_path):
    pidfile = tmp_path / "m.pid"
    srv = server(["--workers", "1", "--pid", str(pidfile)], "procapp:app")
    srv.proc.send_signal(signal.SIGUSR2)
    new_master = until(lambda: read_pid(Path(f"{pidfile}.2")), what="pidfile.2")
    srv.wait_for_log(rf"Listening at: \S+ \({new_master}\)")
    os.kill(new_master, signal.SIGUSR2)
    srv.wait_for_log(r"USR2 signal ignored\. Parent exists\.")


def test_usr2_unix_socket_survives_old_master(server, tmp_path):
    """The old master must not unlink the socket path the new master serves on."""
    path = str(tmp_path / "up.sock")
    pidfile = tmp_path / "u.pid"
    srv = server(["-b", f"unix:{path}", "--workers", "1", "--pid", str(pidfile)],
                 "procapp:app")
    srv.proc.send_signal(signal.SIGUSR2)
    new_master = until(lambda: read_pid(Path(f"{pidfile}.2")), what="pidfile.2")
    until(lambda: len(live_children(new_master)) == 1, what="the new master's worker")
    assert srv.stop(signal.SIGTERM) == 0
    assert os.path.exists(path)
    srv.wait_for_log(r"Master has been promoted\.")
    r = srv.get("/")
    assert r.status == 200
    assert int(r.text.split()[1]) in live_children(new_master)
    os.kill(new_master, signal.SIGTERM)
    until(lambda: gone(new_master), what="new master exit")
    until(lambda: not os.path.exists(path), what="socket removed by the last master")
