"""Warnings in the error log when the numbers call for action (issue 6, item 4).

Called from the master's loop once per tick (at most a second apart, more often under
signals). It reads only what the master already has: the scoreboard slots and the
listening sockets (TCP_INFO: one getsockopt each). It never blocks and never raises
into the loop. Each kind of warning is rate-limited.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import time
from typing import Any

# A kind of warning is repeated at most this often.
REPEAT_AFTER = 60.0
# Every worker busy for this long: too few workers (or threads).
ALL_BUSY_AFTER = 5.0
# A request past this fraction of --timeout.
NEAR_TIMEOUT = 0.75
# The accept queue grew on this many consecutive ticks.
BACKLOG_GROWTH_TICKS = 3
# Worker memory: sampled this often; "climbing" means every one of the last
# MEMORY_SAMPLES samples grew, by MEMORY_MIN_GROWTH in total (and 10% at least).
MEMORY_INTERVAL = 10.0
MEMORY_SAMPLES = 6
MEMORY_MIN_GROWTH = 16 << 20
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def memory_climbing(samples: list[int]) -> bool:
    """Whether RSS samples (bytes, oldest first) show a steady climb: each one above
    the previous over the last ``MEMORY_SAMPLES``, by at least ``MEMORY_MIN_GROWTH``
    and 10% overall. A worker that warms up once and levels off does not qualify."""
    last = samples[-MEMORY_SAMPLES:]
    if len(last) < MEMORY_SAMPLES or not all(b > a for a, b in itertools.pairwise(last)):
        return False
    growth = last[-1] - last[0]
    return growth >= MEMORY_MIN_GROWTH and growth >= 0.1 * last[0]


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


def accept_queue(sock: socket.socket) -> int | None:
    """Connections waiting in a listening TCP socket's accept queue (``tcpi_unacked``
    of TCP_INFO, as ``Listener::queued`` in src/net.rs); None for other sockets."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except OSError:
        return None
    # Eight one-byte fields, then u32 rto, ato, snd_mss, rcv_mss, unacked.
    return struct.unpack_from("=I", info, 24)[0] if len(info) >= 28 else None


class Watch:
    def __init__(self, arbiter: Any) -> None:
        self.arbiter = arbiter
        self.last_warned: dict[str, float] = {}
        self.all_busy_since: float | None = None
        self.backlog: dict[str, list[int]] = {}
        self.slow_reported: set[tuple[int, str, int]] = set()
        self.memory: dict[int, list[int]] = {}
        self.memory_at = 0.0

    def warn(self, key: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self.last_warned.get(key, -REPEAT_AFTER) < REPEAT_AFTER:
            return
        self.last_warned[key] = now
        self.arbiter.log.warning(msg, *args)

    def tick(self) -> None:
        try:
            self._tick()
        except Exception:  # a bug here must never stop the master
            self.arbiter.log.debug("watch: failed", exc_info=True)

    def _tick(self) -> None:
        arb = self.arbiter
        now = time.monotonic()
        timeout = float(arb.cfg.timeout)
        threads = max(1, int(arb.cfg.threads))
        gthread = arb.cfg.worker_class_str == "gthread"
        # An asgi worker serves up to --worker-connections requests at once; "busy"
        # (an app running) says nothing about capacity, and its --timeout is about a
        # blocked event loop, not a long request (a WebSocket lasts for hours).
        asgi = arb.cfg.worker_class_str == "asgi"
        connections = max(1, int(arb.cfg.worker_connections))
        snaps = []
        for pid, worker in list(arb.workers.items()):
            snap = arb.board.snapshot(worker.slot)
            if snap["state"] in ("free", "booting"):
                continue
            snaps.append((pid, snap))

        # Every worker busy.
        def busy(snap: dict[str, Any]) -> bool:
            if asgi:
                return snap["busy_threads"] >= connections
            if gthread:
                return snap["busy_threads"] >= threads
            return snap["state"] in ("busy", "io")

        if snaps and all(busy(s) for _, s in snaps):
            if self.all_busy_since is None:
                self.all_busy_since = now
            elif now - self.all_busy_since >= ALL_BUSY_AFTER:
                what = f"{len(snaps)} workers" + (
                    f" x {threads} threads"
                    if gthread
                    else f" x {connections} connections"
                    if asgi
                    else ""
                )
                self.warn(
                    "all_busy",
                    "All %s have been busy for %.0f s: new requests wait in the listen "
                    "backlog. Add workers (or threads), or make the slow requests faster.",
                    what,
                    now - self.all_busy_since,
                )
        else:
            self.all_busy_since = None

        # Requests close to the timeout. A worker the master has just aborted for its
        # timeout is past "close": its own lines name the request, and a warning here
        # would land in the middle of the stack dump it is writing to the same log.
        if timeout > 0 and not asgi:
            for pid, snap in snaps:
                age = snap["request_age"]
                if snap["state"] != "busy" or not age or age < NEAR_TIMEOUT * timeout:
                    continue
                worker = arb.workers.get(pid)
                if worker is None or worker.aborted:
                    continue
                key = (pid, snap["request"] or "", int(now - age))
                if key in self.slow_reported:
                    continue
                self.slow_reported.add(key)
                arb.log.warning(
                    "Worker (pid:%s) has been serving %s for %.1f s, close to the %s s "
                    "--timeout: move that work to a background task rather than raising "
                    "the timeout.",
                    pid,
                    snap["request"],
                    age,
                    f"{timeout:g}",
                )
            live = {pid for pid, _ in snaps}
            self.slow_reported = {k for k in self.slow_reported if k[0] in live}

        # A worker's memory climbing steadily.
        if now - self.memory_at >= MEMORY_INTERVAL:
            self.memory_at = now
            live = {pid for pid, _ in snaps}
            self.memory = {pid: hist for pid, hist in self.memory.items() if pid in live}
            for pid in live:
                rss = rss_bytes(pid)
                if rss is None:
                    continue
                hist = self.memory.setdefault(pid, [])
                hist.append(rss)
                del hist[:-MEMORY_SAMPLES]
                if memory_climbing(hist):
                    self.warn(
                        f"memory {pid}",
                        "Worker (pid:%s) memory keeps climbing: %.0f MiB, up %.0f MiB in "
                        "%.0f s. If it leaks, set --max-requests (with --max-requests-jitter) "
                        "or --max-worker-memory to recycle workers.",
                        pid,
                        hist[-1] / 1048576,
                        (hist[-1] - hist[0]) / 1048576,
                        MEMORY_INTERVAL * (len(hist) - 1),
                    )

        # The listen backlog keeps growing.
        for lst in arb.listeners:
            queued = accept_queue(lst.sock)
            if queued is None:
                continue
            url = lst.url()
            hist = self.backlog.setdefault(url, [])
            hist.append(queued)
            del hist[: -(BACKLOG_GROWTH_TICKS + 1)]
            growing = len(hist) > BACKLOG_GROWTH_TICKS and all(
                b > a for a, b in itertools.pairwise(hist)
            )
            if growing:
                self.warn(
                    f"backlog {url}",
                    "The listen backlog of %s keeps growing (%s connections waiting): "
                    "too few workers for the load, clients will soon see timeouts or 502s "
                    "from a proxy. Add workers or threads.",
                    url,
                    queued,
                )
