"""``--stats-bind``: the stats process, serving ``/metrics``, ``/stats``, ``/healthz``,
``/readyz`` from the scoreboard and the live dashboard ``/`` (``dashboard.html``, which
polls ``/stats``).

The master binds the stats socket (so a bad address fails at start-up, and a
respawned stats process serves the same port) and forks one small process after the
listeners are bound. That process inherits the scoreboard mapping and only reads it;
it runs Python's ``http.server`` with a thread per connection and a sampler thread
for rates (req/s, CPU %). The master stays single-threaded: it never serves a request
itself, it only respawns the stats process when it dies and kills it at stop.

Everything here is the cold path: a scrape reads every live slot and /proc.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ferrocorn._version import __version__
from ferrocorn.settings import parse_address

# How far back req/s and CPU % look.
RATE_WINDOW = 10.0
SAMPLE_INTERVAL = 1.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
LIVE_STATES = ("idle", "io", "busy", "draining")


# --------------------------------------------------------------------------- /proc


def proc_memory(pid: int) -> dict[str, int | None]:
    """RSS (from /proc/PID/statm), PSS and USS (from smaps_rollup) in bytes."""
    out: dict[str, int | None] = {"rss_bytes": None, "pss_bytes": None, "uss_bytes": None}
    try:
        with open(f"/proc/{pid}/statm") as f:
            out["rss_bytes"] = int(f.read().split()[1]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return out
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            uss = 0
            for line in f:
                key, _, rest = line.partition(":")
                if key == "Pss":
                    out["pss_bytes"] = int(rest.split()[0]) * 1024
                elif key in ("Private_Clean", "Private_Dirty"):
                    uss += int(rest.split()[0]) * 1024
            out["uss_bytes"] = uss
    except (OSError, ValueError, IndexError):
        pass
    return out


def proc_cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of ``pid`` (all its threads), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, ValueError, IndexError):
        return None


def proc_run_delay_seconds(pid: int) -> float | None:
    """Time ``pid``'s threads spent runnable but waiting for a CPU (the run queue), in
    seconds: field 2 of /proc/PID/task/TID/schedstat, summed over the live threads
    (/proc/PID/schedstat alone covers only the main thread)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    total = 0
    seen = False
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
            seen = True
        except (OSError, ValueError, IndexError):
            continue  # a thread that just exited
    return total / 1e9 if seen else None


def socket_inode(fd: int) -> int | None:
    try:
        return os.fstat(fd).st_ino
    except OSError:
        return None


def tcp_listeners(listeners: list[Any]) -> list[tuple[str, int]]:
    """(url, socket inode) of the app's TCP listeners, for ``Collector.backlog``."""
    return [(lst.url(), socket_inode(lst.fileno()) or 0) for lst in listeners if not lst.is_unix]


def listen_queues() -> dict[int, int]:
    """Every listening TCP socket of this network namespace by inode: the connections
    waiting for accept. For a socket in LISTEN state the kernel reports the accept
    queue's length as rx_queue in /proc/net/tcp{,6}."""
    out: dict[int, int] = {}
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f, None)
                for line in f:
                    parts = line.split()
                    if len(parts) < 10 or parts[3] != "0A":  # 0A: TCP_LISTEN
                        continue
                    out[int(parts[9])] = int(parts[4].split(":")[1], 16)
        except OSError:
            continue
    return out


def listen_addresses() -> dict[int, str]:
    """Listening TCP sockets by inode: ``host:port`` (for ``ferrocorn stats --pid``)."""
    out: dict[int, str] = {}
    for path, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            with open(path) as f:
                next(f, None)
                for line in f:
                    parts = line.split()
                    if len(parts) < 10 or parts[3] != "0A":
                        continue
                    hexaddr, hexport = parts[1].split(":")
                    raw = bytes.fromhex(hexaddr)
                    # /proc prints the address as 32-bit words in host byte order.
                    words = [raw[i : i + 4][::-1] for i in range(0, len(raw), 4)]
                    packed = b"".join(words) if sys.byteorder == "little" else raw
                    family = socket.AF_INET6 if v6 else socket.AF_INET
                    host = socket.inet_ntop(family, packed)
                    port = int(hexport, 16)
                    out[int(parts[9])] = f"[{host}]:{port}" if v6 else f"{host}:{port}"
        except (OSError, ValueError):
            continue
    return out


# --------------------------------------------------------------------------- snapshot


class Collector:
    """Reads the scoreboard and /proc; keeps a short history for rates."""

    def __init__(
        self, board: Any, cfg: Any, master_pid: int, listeners: list[tuple[str, int]]
    ) -> None:
        self.board = board
        self.cfg = cfg
        self.master_pid = master_pid
        self.master_started = time.time()
        self.listeners = listeners  # (url, socket inode) of the app's TCP listeners
        self.lock = threading.Lock()
        # pid -> deque of (monotonic time, requests, cpu seconds, 5xx responses)
        self.history: dict[int, deque[tuple[float, int, float | None, int]]] = {}

    def slots(self, every: list[dict[str, Any]] | None = None) -> list[tuple[int, dict[str, Any]]]:
        """The slots that hold a worker, from ``every`` slot's snapshot (taken now when
        not given)."""
        if every is None:
            every = [self.board.snapshot(i) for i in range(self.board.capacity)]
        return [
            (i, snap) for i, snap in enumerate(every) if snap["pid"] and snap["state"] != "free"
        ]

    def sample(self) -> None:
        now = time.monotonic()
        with self.lock:
            seen = set()
            for _, snap in self.slots():
                pid = snap["pid"]
                seen.add(pid)
                hist = self.history.setdefault(pid, deque())
                hist.append((now, snap["requests"], proc_cpu_seconds(pid), snap["errors_5xx"]))
                while len(hist) > 2 and now - hist[0][0] > RATE_WINDOW:
                    hist.popleft()
            for pid in list(self.history):
                if pid not in seen:
                    del self.history[pid]

    def rates(
        self, pid: int, snap: dict[str, Any], cpu: float | None
    ) -> tuple[float, float | None, float]:
        """(req/s, CPU %, 5xx/s) of ``pid`` since the oldest sample in the window; over
        the worker's life when there is no earlier sample (a first request to the
        master's control socket)."""
        with self.lock:
            hist = self.history.get(pid)
            first = hist[0] if hist else None
        dt = time.monotonic() - first[0] if first is not None else 0.0
        if first is None or dt <= 0.05:
            first, dt = (0.0, 0, 0.0, 0), snap["age"]
            if dt <= 0.05:
                return 0.0, None, 0.0
        rps = max(0, snap["requests"] - first[1]) / dt
        errors = max(0, snap["errors_5xx"] - first[3]) / dt
        cpu_pct = None
        if cpu is not None and first[2] is not None:
            cpu_pct = 100.0 * max(0.0, cpu - first[2]) / dt
        return rps, cpu_pct, errors

    def backlog(self) -> list[dict[str, Any]]:
        queues = listen_queues()
        limit = int(self.cfg.backlog)
        try:
            with open("/proc/sys/net/core/somaxconn") as f:
                limit = min(limit, int(f.read()))
        except (OSError, ValueError):
            pass
        return [
            {"listener": url, "queued": queues.get(inode), "max": limit}
            for url, inode in self.listeners
        ]

    def snapshot(self) -> dict[str, Any]:
        cfg = self.cfg
        every = [self.board.snapshot(i) for i in range(self.board.capacity)]
        workers = []
        for i, snap in self.slots(every):
            pid = snap["pid"]
            cpu = proc_cpu_seconds(pid)
            rps, cpu_pct, errors_ps = self.rates(pid, snap, cpu)
            spawns = snap.get("spawns")  # missing before the scoreboard counted them
            limit = snap["max_requests"]
            state = snap["state"]
            busy_for = snap["request_age"] if state == "busy" else None
            workers.append(
                {
                    "pid": pid,
                    "slot": i,
                    "class": cfg.worker_class_str,
                    "state": state,
                    "request": snap["request"] or None,
                    "request_seconds": snap["request_age"],
                    "busy_seconds_now": busy_for,
                    "requests": snap["requests"],
                    "req_per_s": round(rps, 3),
                    "p50": snap["p50"],
                    "p99": snap["p99"],
                    "errors_5xx": snap["errors_5xx"],
                    "errors_5xx_per_s": round(errors_ps, 3),
                    "statuses": {str(k): v for k, v in (snap.get("statuses") or {}).items()},
                    "restarts": None if spawns is None else max(0, spawns - 1),
                    "busy_seconds": snap["busy_seconds"],
                    "cpu_seconds": cpu,
                    "cpu_percent": None if cpu_pct is None else round(cpu_pct, 1),
                    "cpu_wait_seconds": proc_run_delay_seconds(pid),
                    **proc_memory(pid),
                    "age": snap["age"],
                    "heartbeat_age": snap["heartbeat_age"],
                    "max_requests": limit or None,
                    "requests_left": max(0, limit - snap["requests"]) if limit else None,
                    "queue_depth": snap["queue_depth"],
                    "busy_threads": snap["busy_threads"],
                    "connections": snap["connections"],
                    "latency_buckets": snap["latency_buckets"],
                }
            )
        buckets = [0] * len(self.board.bucket_bounds())
        for w in workers:
            for j, c in enumerate(w["latency_buckets"]):
                buckets[j] += c
        # The server's counts are since the master started: each slot's `slot_*`
        # counters keep the counts of the workers it had before, which a sum over the
        # current workers would lose at every rotation or crash.
        total = sum(snap["slot_requests"] for snap in every)
        statuses: dict[str, int] = {}
        for snap in every:
            for code, n in snap["slot_statuses"].items():
                statuses[str(code)] = statuses.get(str(code), 0) + n
        master = {"pid": self.master_pid, "alive": master_alive(self.master_pid)}
        master.update(proc_memory(self.master_pid))
        return {
            "version": __version__,
            "time": time.time(),
            "master": master,
            "config": {
                "worker_class": cfg.worker_class_str,
                "workers": int(cfg.workers),
                "threads": int(cfg.threads),
                "timeout": cfg.timeout,
                "max_requests": int(cfg.max_requests),
            },
            "server": {
                "workers": len(workers),
                "busy_workers": sum(1 for w in workers if w["state"] in ("busy", "io")),
                "idle_workers": sum(1 for w in workers if w["state"] == "idle"),
                "requests": total,
                "req_per_s": round(sum(w["req_per_s"] for w in workers), 3),
                "errors_5xx": sum(n for code, n in statuses.items() if code.startswith("5")),
                "errors_5xx_per_s": round(sum(w["errors_5xx_per_s"] for w in workers), 3),
                "statuses": statuses,
                "restarts": sum(w["restarts"] or 0 for w in workers),
                "p50": self.board.quantile_of(buckets, 0.5),
                "p99": self.board.quantile_of(buckets, 0.99),
                "queue_depth": sum(w["queue_depth"] for w in workers),
                "busy_threads": sum(w["busy_threads"] for w in workers),
                "listen_backlog": self.backlog(),
            },
            "workers": workers,
        }


def master_alive(pid: int) -> bool:
    if pid == os.getpid():  # the master's own Collector (control socket)
        return True
    if os.getppid() != pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------- Prometheus


def _labels(**kw: Any) -> str:
    def esc(v: Any) -> str:
        return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in kw.items()) + "}"


def _num(v: float | int) -> str:
    if isinstance(v, float):
        if v == float("inf"):
            return "+Inf"
        return repr(v)
    return str(v)


def prometheus_text(snap: dict[str, Any], bounds: list[float]) -> str:
    """The snapshot as Prometheus text exposition format (0.0.4); see docs/metrics.md."""
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")

    workers = snap["workers"]
    server = snap["server"]
    family("ferrocorn_workers", "gauge", "Live worker processes.")
    lines.append(f"ferrocorn_workers {server['workers']}")
    family("ferrocorn_busy_workers", "gauge", "Workers serving a request right now.")
    lines.append(f"ferrocorn_busy_workers {server['busy_workers']}")
    # Server-wide counters that survive worker rotation: the per-worker series end
    # with their worker, taking its last increments with them.
    family("ferrocorn_requests_total", "counter", "Requests served, every worker included.")
    lines.append(f"ferrocorn_requests_total {server['requests']}")
    family("ferrocorn_responses_total", "counter", "Responses by status, every worker included.")
    for code, n in sorted(server["statuses"].items()):
        lines.append(f"ferrocorn_responses_total{_labels(status=code)} {n}")

    per_worker = [
        ("ferrocorn_worker_requests_total", "counter", "Requests served.", "requests"),
        (
            "ferrocorn_worker_errors_5xx_total",
            "counter",
            "Responses with a 5xx status.",
            "errors_5xx",
        ),
        (
            "ferrocorn_worker_busy_seconds_total",
            "counter",
            "Time spent in requests (summed over threads).",
            "busy_seconds",
        ),
        ("ferrocorn_worker_rss_bytes", "gauge", "Resident set size.", "rss_bytes"),
        ("ferrocorn_worker_pss_bytes", "gauge", "Proportional set size.", "pss_bytes"),
        ("ferrocorn_worker_uss_bytes", "gauge", "Unique (private) memory.", "uss_bytes"),
        (
            "ferrocorn_worker_cpu_seconds_total",
            "counter",
            "User plus system CPU time.",
            "cpu_seconds",
        ),
        (
            "ferrocorn_worker_cpu_wait_seconds_total",
            "counter",
            "Time runnable but waiting for a CPU (run queue, from schedstat).",
            "cpu_wait_seconds",
        ),
        ("ferrocorn_worker_age_seconds", "gauge", "Seconds since the worker was forked.", "age"),
        (
            "ferrocorn_worker_queue_depth",
            "gauge",
            "gthread: requests waiting for a free thread.",
            "queue_depth",
        ),
        (
            "ferrocorn_worker_busy_threads",
            "gauge",
            "gthread: threads running the app.",
            "busy_threads",
        ),
        (
            "ferrocorn_worker_connections",
            "gauge",
            "gthread: open client connections.",
            "connections",
        ),
    ]
    for name, kind, help_text, key in per_worker:
        family(name, kind, help_text)
        for w in workers:
            if w[key] is not None:
                lines.append(f"{name}{_labels(pid=w['pid'], slot=w['slot'])} {_num(w[key])}")

    family("ferrocorn_worker_state", "gauge", "1 for the worker's current state.")
    for w in workers:
        for state in ("booting", *LIVE_STATES):
            value = 1 if w["state"] == state else 0
            lines.append(
                f"ferrocorn_worker_state{_labels(pid=w['pid'], slot=w['slot'], state=state)} "
                f"{value}"
            )

    family(
        "ferrocorn_request_duration_seconds",
        "histogram",
        "Time from the parsed request head to the end of the response.",
    )
    for w in workers:
        cumulative = 0
        for bound, count in zip(bounds, w["latency_buckets"], strict=True):
            cumulative += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            lines.append(
                "ferrocorn_request_duration_seconds_bucket"
                f"{_labels(pid=w['pid'], slot=w['slot'], le=le)} {cumulative}"
            )
        lab = _labels(pid=w["pid"], slot=w["slot"])
        lines.append(f"ferrocorn_request_duration_seconds_sum{lab} {_num(w['busy_seconds'])}")
        lines.append(f"ferrocorn_request_duration_seconds_count{lab} {cumulative}")

    family(
        "ferrocorn_listen_backlog",
        "gauge",
        "Connections waiting in a listening socket's accept queue (TCP only).",
    )
    for b in server["listen_backlog"]:
        if b["queued"] is not None:
            lines.append(f"ferrocorn_listen_backlog{_labels(listener=b['listener'])} {b['queued']}")
    family("ferrocorn_listen_backlog_limit", "gauge", "The accept queue's size (--backlog).")
    for b in server["listen_backlog"]:
        if b["max"] is not None:
            lines.append(
                f"ferrocorn_listen_backlog_limit{_labels(listener=b['listener'])} {b['max']}"
            )

    master = snap["master"]
    family("ferrocorn_master_rss_bytes", "gauge", "The master's resident set size.")
    if master.get("rss_bytes") is not None:
        lines.append(f"ferrocorn_master_rss_bytes {master['rss_bytes']}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- HTTP


class _Handler(BaseHTTPRequestHandler):
    server_version = f"ferrocorn-stats/{__version__}"
    collector: Collector
    bounds: list[float]

    def log_message(self, format: str, *args: Any) -> None:
        pass  # no access log for scrapes

    def _send(
        self, status: int, body: bytes, ctype: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        c = self.collector
        if path == "/healthz":
            ok = master_alive(c.master_pid)
            self._send(200 if ok else 503, b"ok\n" if ok else b"master gone\n", "text/plain")
        elif path == "/readyz":
            ready = master_alive(c.master_pid) and any(
                snap["state"] in ("idle", "io", "busy") for _, snap in c.slots()
            )
            self._send(200 if ready else 503, b"ready\n" if ready else b"not ready\n", "text/plain")
        elif path == "/stats":
            body = json.dumps(c.snapshot(), indent=1).encode() + b"\n"
            self._send(200, body, "application/json")
        elif path == "/metrics":
            body = prometheus_text(c.snapshot(), self.bounds).encode()
            self._send(200, body, "text/plain; version=0.0.4; charset=utf-8")
        elif path in ("/", "/index.html"):
            try:
                page = dashboard_page()
            except OSError as e:
                msg = f"the dashboard page is missing from this ferrocorn installation: {e}\n"
                self._send(500, msg.encode(), "text/plain")
                return
            self._send(200, page, "text/html; charset=utf-8", (("Content-Security-Policy", CSP),))
        else:
            msg = b"not found: try /, /metrics, /stats, /healthz, /readyz\n"
            self._send(404, msg, "text/plain")


# The dashboard is one self-contained page: it may only talk to this server.
CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'"
)


@functools.cache
def dashboard_page() -> bytes:
    """``dashboard.html``, shipped next to this module (package data in the wheel)."""
    from importlib.resources import files

    return files(__package__ or "ferrocorn").joinpath("dashboard.html").read_bytes()


def serve(sock: socket.socket | None, collector: Collector, reporter: Any = None) -> None:
    """The stats process's main: never returns. ``sock``: serve HTTP (--stats-bind);
    ``reporter``: send StatsD metrics each second (statsd.Reporter, --statsd-host)."""

    def sampler() -> None:
        while True:
            if not master_alive(collector.master_pid):
                os._exit(0)
            try:
                collector.sample()
                if reporter is not None:
                    queued = [b["queued"] or 0 for b in collector.backlog()]
                    reporter.flush(sum(queued) if queued else None)
            except Exception:  # never let the sampler die silently mid-run
                pass
            time.sleep(SAMPLE_INTERVAL)

    if sock is None:
        sampler()
        return
    handler = type(
        "Handler", (_Handler,), {"collector": collector, "bounds": collector.board.bucket_bounds()}
    )
    server = ThreadingHTTPServer(sock.getsockname()[:2], handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    server.daemon_threads = True
    threading.Thread(target=sampler, name="stats-sampler", daemon=True).start()
    server.serve_forever(poll_interval=0.5)


# --------------------------------------------------------------------------- master side


class StatsProcess:
    """The master's handle on the stats process: binds, forks, respawns, stops.
    ``address`` None: no HTTP server, the process only sends StatsD metrics."""

    def __init__(self, arbiter: Any, address: str | None) -> None:
        self.arbiter = arbiter
        self.log = arbiter.log
        self.address = address
        self.pid = 0
        self.last_spawn = 0.0
        self.spawned = 0
        self.sock: socket.socket | None = None
        self.url = ""
        if address is None:
            return
        try:
            self.bind()
        except OSError as e:
            if not arbiter.master_pid:
                from ferrocorn.sock import BindError

                raise BindError(f"Cannot serve stats at {address}: {e.strerror or e}") from e
            # A USR2 master: the old one holds the port until it exits; retry then.
            self.log.warning("Stats address %s busy (%s); retrying", address, e.strerror)

    def bind(self) -> None:
        self.sock = bind_stats(self.address)
        host, port = self.sock.getsockname()[:2]
        self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        self.log.info("Stats listening at: %s", self.url)

    def close_in_child(self) -> None:
        """In a worker after fork: the stats socket is not the worker's business."""
        if self.sock is not None:
            self.sock.close()

    def ensure_running(self) -> None:
        """Called every master tick: (re)start the stats process when it is not running."""
        if self.pid or time.monotonic() - self.last_spawn < 1.0:
            return
        if self.sock is None and self.address is not None:
            self.last_spawn = time.monotonic()
            try:
                self.bind()
            except OSError:
                return
        self.spawn()

    def spawn(self) -> None:
        arb = self.arbiter
        listeners = tcp_listeners(arb.listeners)
        self.last_spawn = time.monotonic()
        fresh = self.spawned == 0  # no StatsD counts were sent before this process
        self.spawned += 1
        self.log.flush()
        pid = os.fork()
        if pid:
            self.pid = pid
            return
        code = 0
        try:  # the child: never return into the master's loop
            signal.set_wakeup_fd(-1)
            for sig in arb.SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            os.close(arb._pipe_r)
            os.close(arb._pipe_w)
            for lst in arb.listeners:  # the backlog is read by inode from /proc
                os.close(lst.sock.detach())
            if getattr(arb, "control", None) is not None:
                arb.control.close_in_child()
            from ferrocorn import proctitle

            proctitle.set_title(f"stats [{arb.proc_name}]")
            reporter = None
            if arb.cfg.statsd_host:
                from ferrocorn import statsd

                client = statsd.Client.from_cfg(arb.cfg)
                reporter = statsd.Reporter(client, arb.board, arb.cfg, fresh)
            collector = Collector(arb.board, arb.cfg, arb.pid, listeners)
            serve(self.sock, collector, reporter)
        except BaseException:
            self.log.exception("Stats process failed")
            code = 1
        finally:
            self.log.flush()
            os._exit(code)

    def reaped(self, pid: int, status: int) -> bool:
        """True when ``pid`` was the stats process (it is respawned on the next tick)."""
        if not self.pid or pid != self.pid:
            return False
        self.pid = 0
        code = os.waitstatus_to_exitcode(status)
        if code != -signal.SIGTERM:
            self.log.warning("Stats process (pid:%s) exited (%s); restarting it", pid, code)
        return True

    def close(self) -> None:
        """At shutdown: stop the process, close the socket."""
        self.stop()
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def stop(self) -> None:
        if not self.pid:
            return
        pid, self.pid = self.pid, 0
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return
            if done:
                return
            time.sleep(0.01)
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def bind_stats(address: str) -> socket.socket:
    parsed = parse_address(address)
    if parsed[0] != "tcp":
        raise ValueError(f"--stats-bind takes HOST:PORT, not {address!r}")
    _, host, port = parsed
    infos = socket.getaddrinfo(
        host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    )
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    return sock
