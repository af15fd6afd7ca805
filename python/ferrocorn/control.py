"""The control socket: a Unix socket the master answers on, for ``ferrocorn stats``,
``ferrocorn top`` and gunicorn's ``gunicornc``.

Where: ``--control-socket PATH``, else ``$XDG_RUNTIME_DIR/ferrocorn.ctl``, else
``~/.ferrocorn/ferrocorn.ctl`` (mode ``--control-socket-mode``, 0600 by default);
``--no-control-socket`` turns it off. The master logs ``Control socket listening at
PATH``.

Protocol: gunicorn's (``gunicorn/ctl``): each message is a 4-byte big-endian length
and a JSON object; a request is ``{"id": 1, "command": "show workers", "args": []}``
and the answer ``{"id": 1, "status": "ok", "data": {...}}`` or ``{"id": 1, "status":
"error", "error": "..."}``. For shell use, a line of text (``echo stats | socat -
UNIX-CONNECT:PATH``) gets the same JSON answer on one line. Several requests may
follow each other on one connection.

The master serves it from its own loop, without a thread: the listening socket and
the client connections are non-blocking and sit in the loop's ``select`` next to the
signal pipe. A request is at most ``MAX_REQUEST`` bytes and must arrive within
``REQUEST_TIMEOUT`` of its first byte; an answer must be taken within
``WRITE_TIMEOUT``; at most ``MAX_CLIENTS`` connections are open (a new one evicts the
oldest idle one). So a slow or hostile client costs the master a few non-blocking
system calls, never a wait. A ``stats`` answer costs the master a scoreboard read and a
few /proc reads per worker (well under a millisecond each).

USR2: the new master, until it is promoted, listens at ``PATH.2`` (as its pidfile is
``PIDFILE.2``); once the old master has gone it renames ``PATH.2`` to ``PATH``. A
master only ever unlinks the socket file it created itself (same device and inode).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import signal
import socket
import struct
import time
from typing import Any

DEFAULT_NAME = "ferrocorn.ctl"
MAX_REQUEST = 4096
MAX_CLIENTS = 16
REQUEST_TIMEOUT = 2.0
WRITE_TIMEOUT = 5.0
IDLE_TIMEOUT = 60.0
# Keep sampling for req/s and CPU % this long after the last ``stats`` request.
SAMPLE_WHILE_WATCHED = 60.0
CLIENT_TIMEOUT = 5.0


class ControlError(Exception):
    """A client-side failure, as one line for the user."""


# --------------------------------------------------------------------------- paths


def default_path(environ: dict[str, str] | None = None) -> str:
    """``$XDG_RUNTIME_DIR/ferrocorn.ctl`` when that directory exists, else
    ``~/.ferrocorn/ferrocorn.ctl``."""
    env = os.environ if environ is None else environ
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isdir(runtime):
        return os.path.join(runtime, DEFAULT_NAME)
    return os.path.join(os.path.expanduser("~"), ".ferrocorn", DEFAULT_NAME)


def configured_path(cfg: Any) -> str | None:
    """The control socket path ``cfg`` asks for (absolute), or None when disabled."""
    if cfg.control_socket_disable:
        return None
    return os.path.abspath(cfg.control_socket or default_path())


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def probe(path: str, timeout: float = 0.5) -> int | None:
    """Whether a live server listens at ``path``: its pid (from SO_PEERCRED, or -1 if
    unknown), or None when nothing answers (no file, a stale file, not a socket)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except OSError:
        return None
    try:
        creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", creds)[0]
    except OSError:
        return -1
    finally:
        s.close()


# --------------------------------------------------------------------------- framing


def encode(message: Any) -> bytes:
    payload = json.dumps(message).encode()
    return struct.pack(">I", len(payload)) + payload


class _Conn:
    """One client connection: what it sent so far, what is left to write."""

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.out = b""
        self.line_mode: bool | None = None  # decided by the first byte
        self.deadline = now + IDLE_TIMEOUT
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def idle(self) -> bool:
        return not self.inbuf and not self.out

    def next_request(self) -> tuple[bytes | None, str | None]:
        """(request bytes, error) from the buffer: (None, None) while incomplete."""
        buf = self.inbuf
        if not buf:
            return None, None
        if self.line_mode is None:
            # A framed request starts with its length's high byte: zero for any request
            # we accept. Text starts with a printable character.
            self.line_mode = 0x20 <= buf[0] < 0x7F
        if self.line_mode:
            end = buf.find(b"\n")
            if end < 0:
                return (None, "request too long") if len(buf) > MAX_REQUEST else (None, None)
            line = bytes(buf[:end]).strip()
            del buf[: end + 1]
            return line, None
        if len(buf) < 4:
            return None, None
        (length,) = struct.unpack(">I", buf[:4])
        if length > MAX_REQUEST:
            return None, f"request too long ({length} bytes, at most {MAX_REQUEST})"
        if len(buf) < 4 + length:
            return None, None
        payload = bytes(buf[4 : 4 + length])
        del buf[: 4 + length]
        return payload, None

    def queue(self, message: dict[str, Any]) -> None:
        if self.line_mode:
            self.out = json.dumps(message).encode() + b"\n"
        else:
            self.out = encode(message)
        self.deadline = time.monotonic() + WRITE_TIMEOUT


# --------------------------------------------------------------------------- server


class ControlServer:
    """The master's side: bound in ``Arbiter.start``, served from ``Arbiter.sleep``."""

    def __init__(self, arbiter: Any) -> None:
        self.arbiter = arbiter
        self.log = arbiter.log
        self.sock: socket.socket | None = None
        self.path: str | None = None  # where we listen (with .2 before promotion)
        self.base: str | None = None  # the configured path
        self.mode = 0o600
        self.file_id: tuple[int, int] | None = None
        self.conns: list[_Conn] = []
        self.collector: Any = None
        self.watched_until = 0.0
        self.sampled_at = 0.0
        self.started = time.time()

    # ---- binding -------------------------------------------------------------

    def open(self, cfg: Any) -> None:
        """Listen at the configured path; never fails the boot (a warning instead)."""
        base = configured_path(cfg)
        mode = int(cfg.control_socket_mode)
        if base is None:
            self.log.info("Control socket disabled (--no-control-socket)")
            return
        path = base + (".2" if self.arbiter.master_pid else "")
        self.base, self.mode = base, mode
        try:
            self.sock = self._bind(path, mode)
        except OSError as e:
            self.log.warning("No control socket: cannot listen at %s (%s)", path, e.strerror or e)
            return
        except _InUse as e:
            self.log.warning(
                "No control socket: %s belongs to another running server (pid %s); "
                "give this one --control-socket PATH (ferrocorn stats/top find it with "
                "--control-socket or --pid)",
                path,
                e.pid if e.pid > 0 else "unknown",
            )
            return
        self.path = path
        self.file_id = _file_id(path)
        self.log.info("Control socket listening at %s", path)

    def _bind(self, path: str, mode: int) -> socket.socket:
        if os.path.lexists(path):
            if not _is_socket(path):
                raise OSError(errno.EEXIST, "the path exists and is not a socket")
            pid = probe(path)
            if pid is not None:
                raise _InUse(pid)
            os.unlink(path)  # stale: its server is gone
            self.log.info("Removed a stale control socket at %s", path)
        directory = os.path.dirname(path)
        if directory and not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o777 & ~mode)  # no window with wider permissions
        try:
            sock.bind(path)
            os.chmod(path, mode)
            sock.listen(64)
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old_umask)
        sock.setblocking(False)
        return sock

    def reconfigure(self, cfg: Any) -> None:
        """HUP: keep the socket unless its path or mode changed."""
        base = configured_path(cfg)
        if base == self.base and int(cfg.control_socket_mode) == self.mode and self.sock:
            return
        self.close()
        self.open(cfg)

    def promote(self) -> None:
        """The old master has exited: move ``PATH.2`` to ``PATH``."""
        if self.path is None or self.base is None or self.path == self.base:
            return
        if probe(self.base) is not None:
            self.log.warning(
                "Control socket stays at %s: %s belongs to another running server",
                self.path,
                self.base,
            )
            return
        try:
            os.rename(self.path, self.base)
        except OSError as e:
            self.log.warning("Cannot move the control socket to %s: %s", self.base, e)
            return
        self.path = self.base
        self.file_id = _file_id(self.base)
        self.log.info("Control socket listening at %s", self.base)

    def close_in_child(self) -> None:
        """After fork: a worker must not keep the master's control socket alive."""
        for conn in self.conns:
            conn.sock.close()
        self.conns = []
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def close(self) -> None:
        """At exit (or HUP with a new path): close, and unlink the file if it is ours."""
        for conn in self.conns:
            conn.sock.close()
        self.conns = []
        if self.sock is None:
            return
        self.sock.close()
        self.sock = None
        if self.path and self.file_id is not None and _file_id(self.path) == self.file_id:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        self.path = None
        self.file_id = None

    # ---- the loop ------------------------------------------------------------

    def select_sets(self) -> tuple[list[Any], list[Any]]:
        """What the master's select waits on: (readable, writable)."""
        if self.sock is None:
            return [], []
        readers: list[Any] = [self.sock]
        writers: list[Any] = []
        for conn in self.conns:
            if conn.sock.fileno() >= 0:
                (writers if conn.out else readers).append(conn)
        return readers, writers

    def timeout(self, default: float) -> float:
        """The select timeout: ``default``, or sooner when a client's deadline is due."""
        if not self.conns:
            return default
        soonest = min(c.deadline for c in self.conns) - time.monotonic()
        return max(0.0, min(default, soonest))

    def handle(self, readable: list[Any], writable: list[Any]) -> None:
        """Serve whatever select reported; never blocks, never raises into the loop."""
        try:
            if self.sock is not None and self.sock in readable:
                self._accept()
            for conn in list(self.conns):
                if conn in writable:
                    self._write(conn)
                elif conn in readable:
                    self._read(conn)
            now = time.monotonic()
            for conn in list(self.conns):
                if now >= conn.deadline:
                    self._drop(conn)
        except Exception:  # a bug here must not stop the master
            self.log.exception("Control socket error")

    def tick(self) -> None:
        """Every master tick: sample for rates while someone watches the stats."""
        now = time.monotonic()
        if self.collector is not None and now < self.watched_until:
            if now - self.sampled_at >= 1.0:
                self._sample(now)

    def _accept(self) -> None:
        assert self.sock is not None
        for _ in range(4 * MAX_CLIENTS):  # drain the backlog, evicting idle clients
            try:
                client, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.log.warning("Control socket: cannot accept (%s)", e.strerror)
                return
            client.setblocking(False)
            if len(self.conns) >= MAX_CLIENTS:
                idle = [c for c in self.conns if c.idle]
                if not idle:
                    client.close()  # too busy: this client is turned away
                    continue
                self._drop(min(idle, key=lambda c: c.deadline))
            self.conns.append(_Conn(client, time.monotonic()))

    def _drop(self, conn: _Conn) -> None:
        conn.sock.close()
        if conn in self.conns:
            self.conns.remove(conn)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(MAX_REQUEST + 4)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        if not data:
            self._drop(conn)
            return
        if not conn.inbuf:
            conn.deadline = time.monotonic() + REQUEST_TIMEOUT
        conn.inbuf += data
        self._serve_next(conn)

    def _serve_next(self, conn: _Conn) -> None:
        raw, error = conn.next_request()
        if error is not None:
            conn.queue({"id": None, "status": "error", "error": error})
            conn.inbuf.clear()
            conn.closed = True  # answer, then hang up: the framing is lost
            self._write(conn)
            return
        if raw is None:
            return
        conn.queue(self.answer(raw, conn.line_mode))
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        conn.out = conn.out[sent:]
        if conn.out:
            return
        if conn.closed:
            self._drop(conn)
            return
        conn.deadline = time.monotonic() + (REQUEST_TIMEOUT if conn.inbuf else IDLE_TIMEOUT)
        if conn.inbuf:
            self._serve_next(conn)  # a request that followed in the same read

    # ---- commands ------------------------------------------------------------

    def answer(self, raw: bytes, line_mode: bool | None) -> dict[str, Any]:
        request_id: Any = None
        try:
            if line_mode:
                command, args = raw.decode(), []
            else:
                message = json.loads(raw)
                if not isinstance(message, dict):
                    raise ValueError("a request is a JSON object")
                request_id = message.get("id")
                command = str(message.get("command", ""))
                args = [str(a) for a in message.get("args") or []]
            parts = shlex.split(command) + args
            if not parts:
                raise ValueError("empty command; try help")
            return {"id": request_id, "status": "ok", "data": self.execute(parts)}
        except (ValueError, UnicodeDecodeError) as e:
            return {"id": request_id, "status": "error", "error": str(e)}
        except Exception as e:
            self.log.exception("Control command failed")
            return {"id": request_id, "status": "error", "error": f"command failed: {e}"}

    def execute(self, parts: list[str]) -> Any:
        cmd, rest = parts[0].lower(), [p.lower() for p in parts[1:]]
        if cmd == "stats":
            return self.stats()
        if cmd == "show":
            target = rest[0] if rest else ""
            shows = {
                "stats": self.show_stats,
                "workers": self.show_workers,
                "all": self.show_all,
                "config": self.show_config,
                "listeners": self.show_listeners,
                "dirty": lambda: {"enabled": False, "pid": None, "workers": [], "apps": []},
            }
            if target not in shows:
                raise ValueError(f"show what? one of: {', '.join(shows)}")
            return shows[target]()
        if cmd == "worker":
            return self.worker(rest)
        if cmd == "dirty":
            raise ValueError("ferrocorn has no dirty arbiter")
        if cmd in ("reload", "reopen"):
            os.kill(self.arbiter.pid, signal.SIGHUP if cmd == "reload" else signal.SIGUSR1)
            return {"status": "reloading" if cmd == "reload" else "reopening"}
        if cmd == "shutdown":
            mode = rest[0] if rest else "graceful"
            if mode not in ("graceful", "quick"):
                raise ValueError("shutdown graceful or shutdown quick")
            os.kill(self.arbiter.pid, signal.SIGINT if mode == "quick" else signal.SIGTERM)
            return {"status": "shutting_down", "mode": mode}
        if cmd == "help":
            return {"commands": HELP}
        raise ValueError(f"unknown command {parts[0]!r}; try help")

    def worker(self, rest: list[str]) -> dict[str, Any]:
        arb = self.arbiter
        action = rest[0] if rest else ""
        if action in ("add", "remove"):
            count = _count(rest[1:])
            old = arb.num_workers
            new = old + count if action == "add" else max(1, old - count)
            if new > arb.board.capacity:
                raise ValueError(f"at most {arb.board.capacity} workers (the scoreboard's slots)")
            if new != old:
                arb.set_num_workers(new)  # the loop spawns or retires workers next
            key = "added" if action == "add" else "removed"
            return {key: abs(new - old), "previous": old, "total": new}
        if action == "kill":
            if len(rest) < 2 or not rest[1].isdigit():
                raise ValueError("worker kill PID")
            pid = int(rest[1])
            if pid not in arb.workers:
                return {"success": False, "error": f"Worker {pid} not found"}
            arb.kill_worker(pid, signal.SIGTERM)
            return {"success": True, "killed": pid}
        raise ValueError("worker add [N], worker remove [N] or worker kill PID")

    def stats(self) -> dict[str, Any]:
        """The same snapshot as ``/stats`` of ``--stats-bind``."""
        from ferrocorn import stats

        arb = self.arbiter
        now = time.monotonic()
        self.watched_until = now + SAMPLE_WHILE_WATCHED
        if self.collector is None:
            self.collector = stats.Collector(arb.board, arb.cfg, arb.pid, [])
        c = self.collector
        c.cfg = arb.cfg
        c.listeners = stats.tcp_listeners(arb.listeners)
        if now - self.sampled_at >= 1.0:
            self._sample(now)
        snap: dict[str, Any] = c.snapshot()
        snap["master"]["control_socket"] = self.path
        return snap

    def _sample(self, now: float) -> None:
        self.sampled_at = now
        self.collector.sample()

    def _slot_snapshots(self) -> dict[int, dict[str, Any]]:
        board = self.arbiter.board
        return {pid: board.snapshot(w.slot) for pid, w in self.arbiter.workers.items()}

    def show_workers(self) -> dict[str, Any]:
        snaps = self._slot_snapshots()
        workers = []
        for pid, w in sorted(self.arbiter.workers.items(), key=lambda kv: kv[1].age):
            snap = snaps[pid]
            workers.append(
                {
                    "pid": pid,
                    "age": w.age,
                    "booted": snap["state"] not in ("booting", "free"),
                    "aborted": bool(w.aborted),
                    "last_heartbeat": round(snap["heartbeat_age"], 2),
                    "state": snap["state"],
                    "requests": snap["requests"],
                }
            )
        return {"workers": workers, "count": len(workers)}

    def show_stats(self) -> dict[str, Any]:
        """gunicorn's ``show stats`` fields."""
        arb = self.arbiter
        return {
            "uptime": round(time.time() - self.started, 2),
            "pid": arb.pid,
            "workers_current": len(arb.workers),
            "workers_target": arb.num_workers,
            "workers_spawned": arb.worker_age,
            "workers_killed": arb.worker_age - len(arb.workers),
            "reloads": getattr(arb, "reloads", 0),
            "dirty_arbiter_pid": None,
        }

    def show_all(self) -> dict[str, Any]:
        web = [
            {k: w[k] for k in ("pid", "age", "booted", "last_heartbeat")} | {"type": "web"}
            for w in self.show_workers()["workers"]
        ]
        return {
            "arbiter": {"pid": self.arbiter.pid, "type": "arbiter", "role": "master"},
            "web_workers": web,
            "web_worker_count": len(web),
            "dirty_arbiter": None,
            "dirty_workers": [],
            "dirty_worker_count": 0,
        }

    def show_config(self) -> dict[str, Any]:
        cfg = self.arbiter.cfg
        keys = (
            "bind",
            "workers",
            "worker_class",
            "threads",
            "timeout",
            "graceful_timeout",
            "keepalive",
            "max_requests",
            "max_requests_jitter",
            "worker_connections",
            "preload_app",
            "daemon",
            "pidfile",
            "proc_name",
            "reload",
            "control_socket",
            "control_socket_disable",
            "stats_bind",
            "statsd_host",
        )
        out: dict[str, Any] = {}
        for key in keys:
            value = getattr(cfg, key)
            if not isinstance(value, (str, int, float, bool, list, type(None))):
                value = str(value)
            out[key] = value
        out["workers"] = self.arbiter.num_workers
        out["worker_class"] = cfg.worker_class_str
        out["control_socket"] = self.path
        return out

    def show_listeners(self) -> dict[str, Any]:
        out = []
        for lst in self.arbiter.listeners:
            family = lst.sock.family
            kind = {socket.AF_UNIX: "unix", socket.AF_INET: "tcp", socket.AF_INET6: "tcp6"}
            out.append({"address": lst.url(), "fd": lst.fileno(), "type": kind.get(family, "?")})
        return {"listeners": out, "count": len(out)}


HELP = {
    "stats": "the full statistics snapshot (as /stats of --stats-bind)",
    "show stats": "uptime, worker counts, reloads",
    "show workers": "workers with their state and last heartbeat",
    "show all": "the master and its workers",
    "show config": "the running configuration (main settings)",
    "show listeners": "listening sockets",
    "worker add [N]": "N more workers (as TTIN)",
    "worker remove [N]": "N fewer workers, at least 1 (as TTOU)",
    "worker kill PID": "gracefully stop one worker (it is replaced)",
    "reload": "reload the configuration and the workers (as HUP)",
    "reopen": "reopen the log files (as USR1)",
    "shutdown [graceful|quick]": "stop the server (as TERM or INT)",
    "help": "this list",
}


class _InUse(Exception):
    def __init__(self, pid: int) -> None:
        super().__init__(pid)
        self.pid = pid


def _count(args: list[str]) -> int:
    if not args:
        return 1
    if not args[0].isdigit() or int(args[0]) < 1:
        raise ValueError(f"a count of workers is a positive number, not {args[0]!r}")
    return int(args[0])


def _is_socket(path: str) -> bool:
    import stat

    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except OSError:
        return False


# --------------------------------------------------------------------------- client


def request(path: str, command: str, timeout: float = CLIENT_TIMEOUT) -> Any:
    """Send one command to the control socket at ``path``; its ``data``, or
    ControlError with a one-line reason."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            _connect(s, path, timeout)
        except FileNotFoundError:
            raise ControlError(f"no control socket at {path}") from None
        except ConnectionRefusedError:
            raise ControlError(
                f"the control socket at {path} is stale (its server has exited)"
            ) from None
        except PermissionError:
            raise ControlError(
                f"permission denied on the control socket at {path} (it belongs to another "
                "user: run as that user, or see --control-socket-mode)"
            ) from None
        except TimeoutError:
            raise ControlError(f"the server at {path} is too busy to accept") from None
        except OSError as e:
            raise ControlError(f"cannot connect to {path}: {e.strerror or e}") from None
        try:
            s.sendall(encode({"id": 1, "command": command, "args": []}))
            head = _recv_exactly(s, 4)
            (length,) = struct.unpack(">I", head)
            reply = json.loads(_recv_exactly(s, length))
        except TimeoutError:
            raise ControlError(
                f"the server at {path} did not answer within {timeout:g} s"
            ) from None
        except (OSError, ValueError) as e:
            raise ControlError(f"bad answer from {path}: {e}") from None
    finally:
        s.close()
    if reply.get("status") != "ok":
        raise ControlError(f"the server refused {command!r}: {reply.get('error')}")
    return reply.get("data")


def _connect(s: socket.socket, path: str, timeout: float) -> None:
    """connect(), waiting while the listen queue is full (a Unix socket with a
    timeout says EAGAIN then, instead of waiting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            s.connect(path)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise TimeoutError from None
            time.sleep(0.01)


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ValueError("the connection closed early")
        buf += chunk
    return bytes(buf)


def _socket_inodes(pid: int) -> set[int]:
    out = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(int(link[8:-1]))
    return out


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return out


def _unix_listeners(pid: int) -> dict[int, str]:
    """Listening Unix sockets with a path in ``pid``'s network namespace: inode -> path."""
    out = {}
    try:
        with open(f"/proc/{pid}/net/unix") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        parts = line.split(None, 7)
        try:
            # Flags 00010000 (__SO_ACCEPTCON): listening; a path that is not abstract.
            if len(parts) == 8 and int(parts[3], 16) & 0x10000 and parts[7][0] != "@":
                out[int(parts[6])] = parts[7]
        except (ValueError, IndexError):
            continue
    return out


def find_socket(master: int) -> str | None:
    """The control socket of the master with pid ``master``: a listening Unix socket
    that the master holds and none of its children do (the workers share the app's
    Unix listeners; the control socket is closed in every child)."""
    candidates = _socket_inodes(master)
    for child in _children(master):
        candidates -= _socket_inodes(child)
    listeners = _unix_listeners(master)
    paths = sorted(listeners[i] for i in candidates if i in listeners)
    paths.sort(key=lambda p: not p.endswith((".ctl", ".ctl.2")))
    return paths[0] if paths else None
