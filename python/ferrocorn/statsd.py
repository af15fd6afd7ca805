"""StatsD metrics under gunicorn's names (``--statsd-host``, ``--statsd-prefix``,
``--dogstatsd-tags``).

gunicorn sends a datagram per request from each worker (``gunicorn.requests``,
``gunicorn.request.status.<code>``, ``gunicorn.request.duration``). ferrocorn's request
path is Rust and stays free of syscalls it does not need, so the stats process sends
the request metrics once a second instead, from what every worker counts in its
scoreboard slot (``Reporter``):

- ``gunicorn.requests``: counter, the requests served since the last send;
- ``gunicorn.request.status.<code>``: counter per status code, likewise;
- ``gunicorn.request.duration``: timer in ms; one sample per non-empty latency-histogram
  bucket (its midpoint) with the sample rate ``@1/count``, so a StatsD server counts
  ``count`` requests of about that duration;
- ``gunicorn.workers``: gauge, when the number of workers changes;
- ``gunicorn.backlog`` (``--enable-backlog-metric``): the connections waiting in the
  listen queues, each second, as a timer like gunicorn's.

The log counters ``gunicorn.log.critical|error|warning|exception`` are sent as in
gunicorn, from the process that logs the line (``LogHandler``, installed by
glogging.py), and so are custom metrics passed as ``extra={"metric": ..., "value":
..., "mtype": "counter"|"gauge"|"histogram"}`` to ``server.log`` calls.

Sending never blocks and never raises: the socket is non-blocking and a datagram that
cannot be sent is dropped, as UDP would drop it anyway. Lines sent together are packed
into datagrams of at most ``MAX_DATAGRAM`` bytes, one metric per line.
"""

from __future__ import annotations

import logging
import re
import socket
from typing import Any

DEFAULT_PORT = 8125
MAX_DATAGRAM = 1432  # fits one Ethernet frame with IPv6 and UDP headers
STARTUP_NOTE = (
    "statsd: request metrics are sent once a second, aggregated from every worker's "
    "counters by the stats process (gunicorn sends a packet per request)"
)


def parse_address(value: str) -> tuple[int, Any]:
    """``HOST[:PORT]`` (port 8125 by default), ``[V6]:PORT``, ``unix:PATH`` or
    ``unix://PATH``, as gunicorn accepts for ``--statsd-host``: (family, address).
    ``unix:NUMBER`` is the host ``unix`` at that port, as in gunicorn."""
    text = value.strip()
    m = re.fullmatch(r"unix:(\d+)", text)
    if m:
        return socket.AF_INET, ("unix", int(m.group(1)))
    if text.startswith("unix:"):
        path = text[len("unix://") :] if text.startswith("unix://") else text[len("unix:") :]
        if not path:
            raise ValueError("unix:PATH needs a path")
        return socket.AF_UNIX, path
    host, port = text, str(DEFAULT_PORT)
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{value!r} is not [IPV6]:PORT")
        port = rest[1:] or port
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host:
        raise ValueError(f"{value!r} has no host")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} has no valid port")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return family, (host, int(port))


def validate(value: Any) -> str | None:
    """The settings-table validator: the address as text, checked."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError("HOST:PORT or unix:PATH")
    text = value.strip()
    if not text:
        return None
    try:
        parse_address(text)
    except ValueError as e:
        raise ValueError(f"HOST:PORT or unix:PATH; {e}") from None
    return text


def metric_prefix(prefix: str) -> str:
    """gunicorn's rule: the prefix ends with exactly one dot, unless it is shorter
    than two characters once trailing dots are removed (then it is kept as given)."""
    stem = prefix.rstrip(".")
    return stem + "." if len(stem) >= 2 else prefix


class Client:
    """A connected, non-blocking datagram socket and the metric line format."""

    def __init__(self, host: str, prefix: str = "", tags: str = "") -> None:
        self.address = host
        self.prefix = metric_prefix(prefix or "")
        self.suffix = f"|#{tags}" if tags else ""
        self.sock: socket.socket | None = None
        try:
            family, addr = parse_address(host)
            if family != socket.AF_UNIX:
                infos = socket.getaddrinfo(addr[0], addr[1], 0, socket.SOCK_DGRAM)
                family, addr = infos[0][0], infos[0][4]
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            try:
                sock.connect(addr)
            except BlockingIOError:
                pass
            self.sock = sock
        except (OSError, ValueError):
            self.sock = None  # as gunicorn: metrics are off, the server runs on

    @classmethod
    def from_cfg(cls, cfg: Any) -> Client:
        return cls(cfg.statsd_host, cfg.statsd_prefix or "", cfg.dogstatsd_tags or "")

    def line(self, name: str, value: Any, kind: str, rate: str = "") -> str:
        return f"{self.prefix}{name}:{value}|{kind}{rate}{self.suffix}"

    def counter(self, name: str, value: int) -> str:
        return self.line(name, value, "c", "|@1.0")

    def send(self, lines: list[str]) -> None:
        """Send ``lines``, packed into as few datagrams as fit; never raises."""
        if self.sock is None or not lines:
            return
        packet = b""
        for line in lines:
            data = line.encode("ascii", "replace")
            if packet and len(packet) + 1 + len(data) > MAX_DATAGRAM:
                self._send(packet)
                packet = b""
            packet = packet + b"\n" + data if packet else data
        if packet:
            self._send(packet)

    def _send(self, packet: bytes) -> None:
        try:
            assert self.sock is not None
            self.sock.send(packet)
        except OSError:
            pass  # full buffer, nobody listening, network down: the metric is lost

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


# --------------------------------------------------------------------------- logging


class LogHandler(logging.Handler):
    """Counts error-log lines by level (``gunicorn.log.<level>``), in whichever
    process logs them; an ERROR line with a traceback counts as ``exception``."""

    def __init__(self, client: Client) -> None:
        super().__init__(logging.WARNING)
        self.client = client

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.levelno >= logging.CRITICAL:
                kind = "critical"
            elif record.levelno >= logging.ERROR:
                kind = "exception" if record.exc_info else "error"
            elif record.levelno >= logging.WARNING:
                kind = "warning"
            else:
                return
            self.client.send([self.client.counter(f"gunicorn.log.{kind}", 1)])
        except Exception:
            pass  # never let metrics break logging

    def close(self) -> None:
        self.client.close()
        super().close()


def extra_metric(client: Client, extra: Any) -> None:
    """gunicorn's custom metrics: ``log.info(msg, extra={"metric": name, "value": v,
    "mtype": "counter"|"gauge"|"histogram"})`` sends that metric."""
    try:
        if not isinstance(extra, dict):
            return
        name, value, mtype = extra.get("metric"), extra.get("value"), extra.get("mtype")
        if not (name and value and mtype):
            return
        kind = {"counter": "c", "gauge": "g", "histogram": "ms"}.get(mtype)
        if kind == "c":
            client.send([client.counter(name, value)])
        elif kind:
            client.send([client.line(name, value, kind)])
    except Exception:
        pass


# --------------------------------------------------------------------------- requests


def _rate(count: int) -> str:
    """The sample rate that makes a StatsD server count ``count`` samples: ``1/count``
    with enough decimals (no exponent form, which not every server parses)."""
    return f"{1 / count:.{6 + len(str(count))}f}".rstrip("0")


class Reporter:
    """In the stats process: turns the scoreboard's counters into StatsD deltas once per
    call to ``flush``.

    It reads each slot's ``slot_*`` counters, which count over every worker the slot
    has had (a new worker does not reset them), so the last requests of a worker that
    exited and was replaced between two flushes are sent too. ``fresh`` says that
    nothing was sent before this process: the first flush then sends everything
    counted so far. A respawned stats process (after a crash or HUP) takes the counters
    it finds as already sent, so nothing is counted twice.
    """

    def __init__(self, client: Client, board: Any, cfg: Any, fresh: bool) -> None:
        self.client = client
        self.board = board
        self.cfg = cfg
        self.fresh = fresh
        self.first = True
        bounds = list(board.bucket_bounds())
        # A bucket's representative duration in ms: the midpoint (the lower bound for
        # the last, open-ended bucket).
        self.midpoints_ms = []
        lower = 0.0
        for upper in bounds:
            mid = lower if upper == float("inf") else (lower + upper) / 2
            self.midpoints_ms.append(round(mid * 1000, 3))
            lower = upper
        # slot -> (requests, {status: responses}, latency buckets) as last sent
        self.seen: dict[int, tuple[int, dict[int, int], list[int]]] = {}
        self.workers: int | None = None

    def flush(self, backlog: int | None = None) -> list[str]:
        """Read every slot, send the deltas since the last call; returns the lines."""
        requests = 0
        statuses: dict[int, int] = {}
        buckets = [0] * len(self.midpoints_ms)
        workers = 0
        for i in range(self.board.capacity):
            snap = self.board.snapshot(i)
            if snap["pid"] and snap["state"] != "free":
                workers += 1
            now_req = snap["slot_requests"]
            now_status = {int(k): v for k, v in snap["slot_statuses"].items()}
            now_buckets = list(snap["slot_latency_buckets"])
            prev = self.seen.get(i)
            if prev is None:
                if self.first and not self.fresh:
                    prev = (now_req, now_status, now_buckets)  # sent by our predecessor
                else:
                    prev = (0, {}, [0] * len(now_buckets))
            requests += max(0, now_req - prev[0])
            for code, n in now_status.items():
                delta = n - prev[1].get(code, 0)
                if delta > 0:
                    statuses[code] = statuses.get(code, 0) + delta
            for j, n in enumerate(now_buckets):
                buckets[j] += max(0, n - prev[2][j])
            self.seen[i] = (now_req, now_status, now_buckets)
        self.first = False

        c = self.client
        lines = []
        if requests:
            lines.append(c.counter("gunicorn.requests", requests))
        for code in sorted(statuses):
            lines.append(c.counter(f"gunicorn.request.status.{code}", statuses[code]))
        for j, n in enumerate(buckets):
            if n:
                rate = "" if n == 1 else f"|@{_rate(n)}"
                lines.append(c.line("gunicorn.request.duration", self.midpoints_ms[j], "ms", rate))
        if workers != self.workers:
            self.workers = workers
            lines.append(c.line("gunicorn.workers", workers, "g"))
        if backlog is not None and self.cfg.enable_backlog_metric:
            lines.append(c.line("gunicorn.backlog", backlog, "ms"))
        c.send(lines)
        return lines
