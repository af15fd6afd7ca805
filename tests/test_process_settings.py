"""The rest of gunicorn's process settings (behaviour reference §1.2, §2.1, §2.7, §2.8, §3.1):
process titles, systemd socket activation and sd_notify, --daemon, --user/--group,
--umask, -e with --preload, --reload and --reuse-port. USR2 is in test_usr2.py."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path

import psutil
import pytest
from waiting import until

pytestmark = pytest.mark.slow

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="switching users needs root")




def fields(resp) -> dict[str, str]:
    """procapp answers key=value lines."""
    assert resp.status == 200, resp
    return dict(line.split("=", 1) for line in resp.text.splitlines() if "=" in line)


def name_of_server(helpers) -> str:
    return "gunicorn" if helpers.is_gunicorn else "ferrocorn"


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()


def status_field(pid: int, name: str) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError(f"no {name} in /proc/{pid}/status")


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_address(text: str):
    m = re.search(r"Listening at: http://([\d.]+):(\d+)", text)
    return (m.group(1), int(m.group(2))) if m else None


# --------------------------------------------------------------------------- titles


@pytest.fixture
def setproctitle_installed():
    pytest.importorskip("setproctitle")


@pytest.mark.usefixtures("setproctitle_installed")
@pytest.mark.parametrize("name", [None, "fc-title"])
def test_process_titles(server, helpers, name):
    args = ["--workers", "2"] + (["-n", name] if name else [])
    srv = server(args, "procapp:app")
    shown = name or "procapp:app"
    prefix = name_of_server(helpers)
    workers = srv.wait_workers(2)
    until(lambda: cmdline(srv.pid) == f"{prefix}: master [{shown}]",
          what=f"master title (now {cmdline(srv.pid)!r})")
    for pid in workers:
        until(lambda pid=pid: cmdline(pid) == f"{prefix}: worker [{shown}]",
              what=f"worker title (now {cmdline(pid)!r})")


@pytest.mark.ferrocorn_only
def test_title_fallback_sets_comm_without_setproctitle(tmp_path):
    """Without setproctitle, prctl(PR_SET_NAME) sets the 15-byte comm name."""
    code = (
        "import sys; sys.modules['setproctitle'] = None\n"
        "from ferrocorn import proctitle\n"
        "assert not proctitle.has_setproctitle()\n"
        "proctitle.set_title('worker [x]')\n"
        "print(open('/proc/self/comm').read().strip())\n"
    )
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ferrocorn: work"


# --------------------------------------------------------------------------- systemd

LAUNCHER = Path(__file__).resolve().parent / "apps" / "socket_activate.py"


def test_socket_activation_tcp_and_unix(server, tmp_path):
    """LISTEN_PID == our pid: adopt fds 3.. (family from the socket), ignore -b,
    unset LISTEN_FDS/LISTEN_PID, keep the unix socket file at exit (systemd owns it)."""
    path = str(tmp_path / "sa.sock")
    srv = server(["--workers", "2", "-b", "127.0.0.1:1"], "procapp:app",
                 prefix=[sys.executable, str(LAUNCHER), "127.0.0.1:0", f"unix:{path}", "--"])
    assert len(srv.addresses) == 2, srv.listen_urls
    assert srv.addresses[1] == path
    assert srv.addresses[0][1] != 1
    for address in srv.addresses:
        assert fields(srv.get("/env?name=LISTEN_FDS", address=address))["value"] == "<unset>"
        assert fields(srv.get("/env?name=LISTEN_PID", address=address))["value"] == "<unset>"
    assert srv.stop(signal.SIGTERM) == 0
    assert os.path.exists(path)


def test_socket_activation_not_for_us_binds_normally(server):
    """LISTEN_PID naming another process: the variables are not ours; -b is used."""
    srv = server(["--workers", "1"], "procapp:app",
                 env={"LISTEN_FDS": "1", "LISTEN_PID": "1"})
    assert srv.get("/").status == 200
    assert srv.addresses[0][0] == "127.0.0.1"


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request, tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
        env_value = address
    else:
        name = f"fc-notify-{os.getpid()}-{time.monotonic_ns()}"
        sock.bind("\0" + name)
        env_value = "@" + name
    sock.settimeout(30)
    yield sock, env_value
    sock.close()


def next_message(sock, timeout=30.0) -> str:
    sock.settimeout(timeout)
    return sock.recv(4096).decode()


def test_sd_notify_ready(server, notify_socket):
    sock, env_value = notify_socket
    srv = server(["--workers", "2"], "procapp:app", env={"NOTIFY_SOCKET": env_value})
    msg = next_message(sock)
    assert "READY=1" in msg.splitlines(), msg
    assert srv.get("/").status == 200


@pytest.mark.ferrocorn_only
def test_sd_notify_ready_after_workers_booted_reloading_stopping(server, tmp_path):
    """READY=1 only once every worker has imported the app (gunicorn sends it before
    any worker runs); RELOADING=1 on HUP, then READY=1 once the new workers are up;
    STOPPING=1 on TERM."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = str(tmp_path / "notify.sock")
    sock.bind(address)
    try:
        srv = server(["--workers", "2"], "procapp:app", wait=False,
                     env={"NOTIFY_SOCKET": address, "PROCAPP_IMPORT_DELAY": "1.5"})
        msg = next_message(sock)
        assert "READY=1" in msg.splitlines(), msg
        assert len(re.findall(r"procapp-imported pid=\d+", srv.log())) == 2, srv.log()
        srv.wait_ready()

        srv.proc.send_signal(signal.SIGHUP)
        msg = next_message(sock)
        assert msg.startswith("RELOADING=1\nMONOTONIC_USEC="), msg
        msg = next_message(sock)
        assert "READY=1" in msg.splitlines(), msg
        assert len(re.findall(r"procapp-imported pid=\d+", srv.log())) == 4, srv.log()

        srv.proc.send_signal(signal.SIGTERM)
        assert next_message(sock) == "STOPPING=1"
        assert srv.wait_exit() == 0
    finally:
        sock.close()


# --------------------------------------------------------------------------- daemon


def daemon_pid(pidfile: Path, not_pid: int) -> int:
    def read():
        try:
            pid = int(pidfile.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0
        return pid if pid and pid != not_pid else 0

    return until(read, what=f"pid in {pidfile}")


@contextlib.contextmanager
def reaped_daemon(pidfile: Path, launcher_pid: int):
    """Yields the daemon's pid; kills its process group at the end whatever happens."""
    box: dict[str, int] = {}
    try:
        box["pid"] = daemon_pid(pidfile, launcher_pid)
        yield box["pid"]
    finally:
        pid = box.get("pid")
        if pid and not gone(pid):
            with contextlib.suppress(OSError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)


def test_daemon(server, helpers, tmp_path):
    pidfile = tmp_path / "d.pid"
    logfile = tmp_path / "d.log"
    srv = server(["-D", "--workers", "2", "--pid", str(pidfile), "--error-logfile",
                  str(logfile)], "procapp:app", wait=False)
    assert srv.wait_exit() == 0  # the launching process returns at once
    with reaped_daemon(pidfile, srv.pid) as pid:
        address = until(lambda: listening_address(logfile.read_text()) if logfile.exists()
                        else None, what="Listening at in the log file")
        r = helpers.raw_exchange(address, b"GET /whoami HTTP/1.0\r\n\r\n")
        info = fields(helpers.final_response(r))
        assert int(info["ppid"]) == pid
        proc = psutil.Process(pid)
        # a new session (the launcher led its own: the fixture starts it with setsid)
        assert os.getsid(pid) not in (srv.pid, os.getsid(0))
        assert os.getsid(pid) != pid  # not its leader: it cannot regain a terminal
        for fd in (0, 1, 2):
            assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null"
        until(lambda: len(proc.children()) == 2, what="2 workers")

        # WINCH to a daemonized master stops its workers (for a USR2 upgrade).
        os.kill(pid, signal.SIGWINCH)
        until(lambda: "graceful stop of workers" in logfile.read_text(), what="WINCH log")
        until(lambda: not [c for c in proc.children() if not gone(c.pid)],
              what="workers stopped after WINCH")
        assert not gone(pid)

        os.kill(pid, signal.SIGTERM)
        until(lambda: gone(pid), what="daemon exit")
        until(lambda: not pidfile.exists(), what="pidfile removed")


def test_daemon_stdio_inheritance(server, helpers, tmp_path):
    """-R keeps stdout/stderr that are not terminals: the log still reaches stderr."""
    pidfile = tmp_path / "d.pid"
    srv = server(["-D", "-R", "--pid", str(pidfile)], "procapp:app", wait=False)
    assert srv.wait_exit() == 0
    with reaped_daemon(pidfile, srv.pid) as pid:
        m = srv.wait_for_log(rf"Listening at: http://[\d.]+:\d+ \({pid}\)")
        address = listening_address(m.group(0))
        r = helpers.raw_exchange(address, b"GET / HTTP/1.0\r\n\r\n")
        assert helpers.final_response(r).status == 200
        os.kill(pid, signal.SIGTERM)
        until(lambda: gone(pid), what="daemon exit")


# --------------------------------------------------------------------------- user / group


def test_winch_ignored_when_not_daemonized(server):
    srv = server(["--workers", "2", "--log-level", "debug"], "procapp:app")
    workers = srv.wait_workers(2)
    srv.proc.send_signal(signal.SIGWINCH)
    srv.wait_for_log(r"SIGWINCH ignored. Not daemonized")
    assert srv.worker_pids() == workers


@pytest.fixture
def nobody_apps(helpers):
    """procapp.py in a directory the unprivileged worker user can read: the checkout
    itself may sit under a private directory (mktemp -d makes them 0700)."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="ferrocorn-nobody-"))
    d.chmod(0o755)
    shutil.copy(helpers.apps_dir / "procapp.py", d / "procapp.py")
    (d / "procapp.py").chmod(0o644)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@needs_root
def test_user_and_group(server, helpers, nobody_apps):
    import grp
    import pwd

    uid = pwd.getpwnam("nobody").pw_uid
    gid = grp.getgrnam("nogroup").gr_gid
    srv = server(["--workers", "2", "-u", "nobody", "-g", "nogroup"], "procapp:app",
                 cwd=nobody_apps)
    info = fields(srv.get("/whoami"))
    assert (int(info["uid"]), int(info["euid"])) == (uid, uid)
    assert (int(info["gid"]), int(info["egid"])) == (gid, gid)
    if not helpers.is_gunicorn:
        # beyond gunicorn: root's supplementary groups are dropped
        assert info["groups"] == str(gid)
    for pid in srv.wait_workers(2):
        assert status_field(pid, "Uid") == [uid] * 4
        assert status_field(pid, "Gid") == [gid] * 4
    assert status_field(srv.pid, "Uid")[0] == 0  # the master keeps its user


@needs_root
def test_initgroups(server, nobody_apps):
    import grp
    import pwd

    user = pwd.getpwnam("nobody")
    gid = grp.getgrnam("nogroup").gr_gid
    srv = server(["-u", "nobody", "-g", "nogroup", "--initgroups"], "procapp:app",
                 cwd=nobody_apps)
    info = fields(srv.get("/whoami"))
    assert sorted(int(g) for g in info["groups"].split(",")) == sorted(
        set(os.getgrouplist(user.pw_name, gid)))


@needs_root
def test_unix_socket_owner_and_umask(server, tmp_path, nobody_apps):
    import pwd

    path = str(tmp_path / "owned.sock")
    os.chmod(tmp_path, 0o755)
    srv = server(["-b", f"unix:{path}", "-u", "nobody", "-g", "nogroup", "-m", "077"],
                 "procapp:app", cwd=nobody_apps)
    st = os.stat(path)
    assert st.st_uid == pwd.getpwnam("nobody").pw_uid
    assert st.st_mode & 0o777 == 0o700
    assert fields(srv.get("/whoami"))["uid"] == str(st.st_uid)


def test_umask_applies_to_unix_socket(server, tmp_path):
    path = str(tmp_path / "umask.sock")
    server(["-b", f"unix:{path}", "-m", "027"], "procapp:app")
    assert os.stat(path).st_mode & 0o777 == 0o750


# --------------------------------------------------------------------------- -e / --env


def test_env_in_master_before_preload(server):
    srv = server(["--preload", "--workers", "2", "-e", "FC_PROC_VAR=preloaded"], "procapp:app")
    info = fields(srv.get("/whoami"))
    assert int(info["import_pid"]) == srv.pid  # imported in the master
    assert fields(srv.get("/import-env?name=FC_PROC_VAR"))["value"] == "preloaded"
    assert fields(srv.get("/env?name=FC_PROC_VAR"))["value"] == "preloaded"


def test_env_in_workers(server):
    srv = server(["-e", "FC_PROC_VAR=worker", "-e", "FC_OTHER=a=b"], "procapp:app")
    assert fields(srv.get("/import-env?name=FC_PROC_VAR"))["value"] == "worker"
    assert fields(srv.get("/env?name=FC_OTHER"))["value"] == "a=b"


# --------------------------------------------------------------------------- --reload

RELOAD_APP = '''
VERSION = {version!r}


def app(environ, start_response):
    body = ("version=" + VERSION).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''


def write_module(path: Path, text: str) -> None:
    """Rewrite ``path`` and push its mtime forward, so a poller with coarse
    timestamps sees a change."""
    before = path.stat().st_mtime if path.exists() else 0
    path.write_text(text)
    bump = max(time.time(), before) + 2
    os.utime(path, (bump, bump))


def version_is(srv, expected: str) -> bool:
    try:
        r = srv.get("/", timeout=5)
    except OSError:
        return False
    return r.status == 200 and r.text == f"version={expected}"


def test_reload_on_source_change(server, tmp_path):
    module = tmp_path / "reloadapp.py"
    write_module(module, RELOAD_APP.format(version="one"))
    srv = server(["--reload", "--workers", "1"], "reloadapp:app", cwd=tmp_path)
    srv.wait_for_log(r"Reloader is on. Use in development only!")
    assert version_is(srv, "one")
    old = srv.wait_workers(1)
    time.sleep(1.5)  # the first poll records the mtimes (poll interval: 1 s)
    write_module(module, RELOAD_APP.format(version="two"))
    srv.wait_for_log(r"Worker reloading: \S*reloadapp.py modified")
    until(lambda: version_is(srv, "two"), what="the new code served")
    assert srv.wait_workers(1, exclude=old)
    assert srv.alive()


def test_reload_syntax_error_serves_traceback(server, tmp_path):
    module = tmp_path / "reloadapp.py"
    write_module(module, RELOAD_APP.format(version="one"))
    srv = server(["--reload"], "reloadapp:app", cwd=tmp_path)
    assert version_is(srv, "one")
    time.sleep(1.5)
    write_module(module, "def app(environ, start_response:\n")
    srv.wait_for_log(r"Worker reloading: \S*reloadapp.py modified")

    def error_page():
        try:
            r = srv.get("/", timeout=5)
        except OSError:
            return None
        return r if r.status == 500 and b"SyntaxError" in r.body else None

    until(error_page, what="500 with the SyntaxError")
    time.sleep(1.5)
    write_module(module, RELOAD_APP.format(version="fixed"))
    until(lambda: version_is(srv, "fixed"), what="the fixed code served")


def test_reload_extra_file_glob(server, tmp_path):
    module = tmp_path / "reloadapp.py"
    write_module(module, RELOAD_APP.format(version="one"))
    conf = tmp_path / "conf"
    conf.mkdir()
    data = conf / "settings.txt"
    write_module(data, "a")
    srv = server(["--reload", "--reload-extra-file", str(conf / "*.txt")], "reloadapp:app",
                 cwd=tmp_path)
    old = srv.wait_workers(1)
    time.sleep(1.5)
    write_module(data, "b")
    srv.wait_for_log(r"Worker reloading: \S*settings.txt modified")
    srv.wait_workers(1, exclude=old)
    assert version_is(srv, "one")


# --------------------------------------------------------------------------- reuse_port


@pytest.mark.ferrocorn_only  # gunicorn 24+ binds in each worker and logs "Listening at: " empty
def test_reuse_port(server):
    """ferrocorn keeps one SO_REUSEPORT socket in the master (see settings.md)."""
    port = free_port()
    srv = server(["--reuse-port", "--workers", "2", "-b", f"127.0.0.1:{port}"], "procapp:app")
    assert srv.get("/").status == 200
    # Another SO_REUSEPORT socket (a second server) may bind the same address.
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", port))
    assert srv.get("/").status == 200
