"""``ferrocorn advise``: recommend the worker class, workers, threads, timeout and
max-requests from measurements, each with its reason and the numbers behind it.

Two ways to measure (see docs/advise.md):

- against a running server, found as ``ferrocorn stats`` finds it (``--control-socket``,
  ``--pid``, ``--stats-url``, else the default control socket): its stats snapshots
  are sampled for ``--duration`` seconds of real traffic;
- ``ferrocorn advise APP_MODULE``: ferrocorn is started on a free loopback port with
  sync workers, loaded by a small load generator in this process (threads on raw
  sockets, one request per connection) for ``--duration`` seconds, then stopped.

The model, per request: CPU time ``c`` (user + system), wall time in the app ``w``
(busy time / requests), time runnable but waiting for a CPU ``q`` (schedstat) and, for
gthread, an estimate of the time waiting for the GIL ``g``. What is left, ``io = w - c
- q - g``, is the app's own waiting (database, network, sleep). The sizing is
mean-value analysis of a closed queue per core: ``n`` requests in flight, each
needing ``c`` of the core then ``io`` away from it; the smallest ``n`` that keeps the
core busy ``TARGET_UTILISATION`` of the time. Everything below ``recommend`` is a
pure function of a ``Measurement``, unit-tested with synthetic numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

MIB = 1 << 20

# A core (or a gthread worker's GIL) counts as used when busy this share of the time.
TARGET_UTILISATION = 0.95
# Below this share of I/O in a request's service time the app is CPU-bound, above
# IO_BOUND it is I/O-bound; in between, mixed.
CPU_BOUND = 0.25
IO_BOUND = 0.75
# Part of the memory budget the workers may fill (the rest: page cache, the master,
# spikes).
MEMORY_HEADROOM = 0.8
# A gthread pool thread's own memory: stack pages touched plus interpreter state
# (about 30 KiB measured with a trivial app; app thread-locals come on top).
THREAD_BYTES = 256 * 1024
MAX_THREADS = 128  # beyond this, add processes rather than threads
# Sync workers beyond the requests in flight the cores need: a sync worker also waits
# on its client, for the request's bytes after accepting the connection (a client or
# proxy that is slow to send, or descheduled), which the busy time does not count; a
# spare one keeps the cores busy meanwhile (the "+ 1" of gunicorn's rule).
SPARE_WORKERS = 1
DEFAULT_TIMEOUT = 30  # gunicorn's
TIMEOUT_P999_FACTOR = 3.0
TIMEOUT_MAX_FACTOR = 1.5
# Memory growth counts only if every worker grew by this much in both halves.
GROWTH_MIN_BYTES = 2 * MIB
GROWTH_MIN_SHARE = 0.05
GROWTH_ALLOWANCE = 0.5  # let a leaking worker grow by half its size before rotating
FEW_REQUESTS = 200
SAMPLE_INTERVAL = 0.25
# The scoreboard's latency buckets: bucket j holds durations up to 2^(j+4) µs, the
# last one everything above 2^26 µs (see docs/metrics.md).
BUCKET_BOUNDS = [16e-6 * 2**j for j in range(23)] + [math.inf]


class AdviseError(Exception):
    """A user-facing problem: printed as one ``Error:`` line, exit status 1."""


# =========================================================================== the model


@dataclass
class Measurement:
    """What a measuring window found; every time is in seconds, sizes in bytes."""

    source: str
    duration: float
    worker_class: str
    workers: int
    threads: int
    requests: int
    cpu_seconds: float  # summed over the workers
    busy_seconds: float  # summed over the workers (and threads)
    wait_seconds: float | None  # run-queue delay; None when schedstat was unreadable
    cores: float
    cores_source: str
    memory_budget: int
    memory_source: str
    worker_uss: int | None = None  # median over the workers
    worker_pss: int | None = None
    worker_rss: int | None = None
    # gthread only, per worker process (means): the share of the window its threads
    # ran or waited for a CPU (how busy its GIL was: a preempted thread keeps it), and
    # the requests in flight; for the GIL-wait estimate
    gil_share: float = 0.0
    process_concurrency: float = 0.0
    growth_per_request: float | None = None  # RSS, when it grew steadily
    growth_note: str = ""
    latency: dict[str, float | None] = field(default_factory=dict)  # p50 p90 p99 p99_9 max
    errors_5xx: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    restarts: int = 0
    slowest: list[dict[str, Any]] = field(default_factory=list)
    current_timeout: float = DEFAULT_TIMEOUT
    current_max_requests: int = 0
    warnings: list[str] = field(default_factory=list)


def busy_share(n: int, cpu: float, io: float) -> float:
    """Mean-value analysis of a closed queue: ``n`` requests cycling through one
    server (a core, or a process's GIL) that each use for ``cpu`` seconds, then spend
    ``io`` seconds elsewhere. Returns the server's busy share."""
    if cpu <= 0:
        return 0.0
    queued = 0.0
    throughput = 0.0
    for k in range(1, n + 1):
        response = cpu * (1 + queued)
        throughput = k / (response + io)
        queued = throughput * response
    return min(1.0, throughput * cpu)


def in_flight_per_core(cpu: float, io: float, target: float = TARGET_UTILISATION) -> int:
    """The fewest requests in flight that keep one core busy ``target`` of the time."""
    ratio = (cpu + io) / cpu
    limit = math.ceil(4 * ratio) + 4
    for n in range(1, limit + 1):
        if busy_share(n, cpu, io) >= target:
            return n
    return limit


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 10:
        return f"{seconds:.1f} s"
    ms = seconds * 1000
    return f"{ms:.0f} ms" if ms >= 100 else f"{ms:.2f} ms" if ms < 1 else f"{ms:.1f} ms"


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / MIB:.1f} MiB"


def _nice_ceiling(x: float) -> int:
    """Round up to two significant digits (and to a multiple of 10 from 100 on)."""
    if x <= 10:
        return max(1, math.ceil(x))
    digits = 10 ** (len(str(int(x))) - 2)
    return int(math.ceil(x / digits) * digits)


def _nice_floor(x: float) -> int:
    if x < 100:
        return max(1, int(x))
    digits = 10 ** (len(str(int(x))) - 2)
    return int(x // digits * digits)


def _setting(flag: str, value: Any, reason: str, **numbers: Any) -> dict[str, Any]:
    return {"flag": flag, "value": value, "reason": reason, "numbers": numbers}


@dataclass
class Split:
    """One request's time in the app: what it needs (``cpu``, ``io``) and what it
    waited for (a CPU: ``cpu_wait``, None when unmeasured; the GIL: ``gil_wait``)."""

    wall: float
    cpu: float
    io: float
    cpu_wait: float | None
    gil_wait: float

    @property
    def io_share(self) -> float:
        return self.io / (self.cpu + self.io)

    @property
    def kind(self) -> str:
        share = self.io_share
        return "cpu-bound" if share < CPU_BOUND else "io-bound" if share > IO_BOUND else "mixed"

    def text(self) -> str:
        return (
            f"{_ms(self.wall)} per request = {_ms(self.cpu)} CPU + {_ms(self.io)} I/O"
            + (f" + {_ms(self.cpu_wait)} waiting for a CPU" if self.cpu_wait else "")
            + (f" + {_ms(self.gil_wait)} waiting for the GIL (estimated)" if self.gil_wait else "")
        )


def split_request(m: Measurement, warnings: list[str]) -> Split:
    """Per request: wall time w = c (CPU) + q (run queue) + g (GIL) + io."""
    if m.requests <= 0:
        raise AdviseError("no request was served during the measurement")
    if m.worker_class not in ("sync", "gthread"):
        raise AdviseError(
            f"advise sizes WSGI servers (sync, gthread); this one runs -k {m.worker_class}"
        )
    c = m.cpu_seconds / m.requests
    w = m.busy_seconds / m.requests
    q = (m.wait_seconds or 0.0) / m.requests
    if m.wait_seconds is None:
        warnings.append(
            "the run-queue wait (/proc/PID/schedstat) could not be read: on a busy "
            "machine the app looks more I/O-bound than it is"
        )
    if c <= 0:
        c = 0.01 / m.requests  # under one clock tick in the whole window
        warnings.append("almost no CPU time was measured; the CPU per request is an upper bound")
    if m.requests < FEW_REQUESTS:
        warnings.append(
            f"only {m.requests} requests were measured: the numbers are rough (a longer "
            "--duration gives steadier ones)"
        )
    # gthread: a thread queued for the GIL sleeps, so neither the CPU time nor the run
    # queue shows that wait. Estimate it as processor sharing of the process's one GIL,
    # at most the other requests in flight in that process.
    g = 0.0
    if m.worker_class == "gthread" and m.threads > 1 and m.process_concurrency > 1:
        share = min(m.gil_share, 0.95)
        held = c + q  # a thread preempted while holding the GIL still holds it
        g = min(held * share / (1 - share), held * (m.process_concurrency - 1))
        g = min(g, max(0.0, w - c))
    # The run-queue wait also counts wake-ups between requests (accept, heartbeats),
    # so it may exceed what the requests themselves waited: io never goes below zero.
    q = min(q, max(0.0, w - c - g))
    if q > 0.25 * w and q > 0.0005:
        warnings.append(
            f"requests waited {_ms(q)} each for a CPU ({q / w:.0%} of their time): the "
            "machine was short of cores while measuring (other processes, or the load "
            "generator); the advice leaves that wait out"
        )
    io = max(0.0, w - c - q - g)
    return Split(w, c, io, None if m.wait_seconds is None else q, g)


def size_pool(s: Split, m: Measurement, warnings: list[str]) -> dict[str, dict[str, Any]]:
    """Worker class, workers and threads: enough requests in flight to keep every core
    busy (mean-value analysis per core), in processes while that takes no more than
    gunicorn's (2 x cores) + 1 and fits in memory, else in threads."""
    cores = max(1.0, m.cores)
    whole = math.ceil(cores - 1e-9)
    per_core = in_flight_per_core(s.cpu, s.io)
    needed = math.ceil(cores * per_core)
    mem = m.worker_uss or m.worker_pss or m.worker_rss
    mem_kind = "USS" if m.worker_uss else "PSS" if m.worker_pss else "RSS"

    def fits(threads: int) -> int:
        """Worker processes of ``threads`` threads the memory budget holds."""
        return int(m.memory_budget // (mem + (threads - 1) * THREAD_BYTES)) if mem else 10**6

    rule = 2 * whole + 1
    sync = needed + SPARE_WORKERS
    queue = (
        f"{s.text()}: I/O is {s.io_share:.0%} of the service time, so {per_core} request(s) "
        f"in flight keep a core {TARGET_UTILISATION:.0%} busy, {needed} for {cores:g} cores"
    )
    if sync <= rule and sync <= fits(1):
        klass, workers, threads = "sync", sync, 1
        klass_reason = (
            f"{queue}; that few fit in single-threaded processes, which never wait for "
            "each other's GIL and have the shortest request path"
        )
        workers_reason = (
            f"one process per request in flight, {cores:g} cores x {per_core}, plus "
            f"{SPARE_WORKERS} spare that keeps the cores busy while a worker waits for a "
            "client to send its request (not in the measured time); gunicorn's (2 x cores) "
            f"+ 1 = {rule} assumes half of a request is I/O, this app's {s.io_share:.0%} is "
            "measured"
        )
        threads_reason = "a sync worker runs one request at a time"
    else:
        klass = "gthread"
        workers = whole
        if math.ceil(needed / workers) > MAX_THREADS:
            workers = math.ceil(needed / MAX_THREADS)
        threads = max(2, math.ceil(needed / workers))
        workers_reason = (
            "one process per core: a process runs Python on one core at a time (its GIL)"
            if workers == whole
            else f"{needed} requests in flight at {MAX_THREADS} threads per process at most"
        )
        if workers > fits(threads):
            workers = max(1, fits(threads))
            threads = min(MAX_THREADS, max(2, math.ceil(needed / workers)))
            workers_reason = (
                f"what the memory budget holds: {_mib(m.memory_budget)} / ({_mib(mem)} + "
                f"{threads - 1} x {THREAD_BYTES // 1024} KiB per extra thread)"
            )
        why = (
            f"{sync} sync processes would be more than gunicorn's (2 x cores) + 1 = {rule}"
            if sync > rule
            else f"{sync} sync processes of {_mib(mem)} do not fit in {_mib(m.memory_budget)}"
        )
        klass_reason = (
            f"{queue}; {why}. Threads waiting on I/O do not hold the GIL, so a few "
            "processes with many threads serve them"
        )
        threads_reason = f"{needed} requests in flight over {workers} process(es)" + (
            f", capped at {MAX_THREADS}" if threads >= MAX_THREADS else ""
        )
    if workers * threads < needed:
        warnings.append(
            f"the memory budget allows {workers * threads} requests in flight, fewer than "
            f"the {needed} that would keep every core busy"
        )
    if mem and workers > fits(threads):
        warnings.append(
            f"even {workers} worker(s) of {_mib(mem)} exceed the memory budget "
            f"({_mib(m.memory_budget)})"
        )
    split = {"cpu_ms": _r(s.cpu), "io_ms": _r(s.io), "io_share": round(s.io_share, 3)}
    return {
        "worker_class": _setting(
            "--worker-class", klass, klass_reason, **split, wall_ms=_r(s.wall),
            in_flight_per_core=per_core, in_flight_needed=needed, cores=cores,
        ),
        "workers": _setting(
            "--workers", workers, workers_reason, cores=cores, in_flight_needed=needed,
            gunicorn_rule=rule, spare=SPARE_WORKERS if klass == "sync" else 0,
            worker_memory_bytes=mem, worker_memory_kind=mem_kind,
            memory_budget_bytes=m.memory_budget,
            workers_that_fit=fits(threads) if mem else None,
            total_memory_bytes=workers * (mem + (threads - 1) * THREAD_BYTES) if mem else None,
        ),
        "threads": _setting(
            "--threads", threads, threads_reason, in_flight_needed=needed,
            max_threads=MAX_THREADS, thread_bytes=THREAD_BYTES,
        ),
    }  # fmt: skip


def advise_timeout(m: Measurement, klass: str) -> dict[str, Any]:
    """At least gunicorn's 30 s; more when 3 x p99.9 or 1.5 x the slowest request
    would not fit."""
    p999 = m.latency.get("p99_9") or m.latency.get("p99")
    slowest = m.latency.get("max")
    need = max((p999 or 0) * TIMEOUT_P999_FACTOR, (slowest or 0) * TIMEOUT_MAX_FACTOR)
    seen = f"p99.9 {_ms(p999)}, slowest {_ms(slowest)}"
    if need <= DEFAULT_TIMEOUT:
        value = DEFAULT_TIMEOUT
        reason = (
            f"{seen}: gunicorn's default {DEFAULT_TIMEOUT} s is over "
            f"{TIMEOUT_P999_FACTOR:g} x p99.9 and {TIMEOUT_MAX_FACTOR:g} x the slowest "
            "request, so it stops only stuck requests"
        )
    else:
        value = _nice_ceiling(need)
        reason = (
            f"{seen}: {TIMEOUT_P999_FACTOR:g} x p99.9 and {TIMEOUT_MAX_FACTOR:g} x the "
            "slowest request must fit, or legitimate requests are killed (better: move "
            "that work out of the request)"
        )
    if klass == "gthread":
        reason += (
            "; with gthread ferrocorn logs a request running past it and lets it finish "
            "(gunicorn's gthread does not notice it)"
        )
    return _setting(
        "--timeout", value, reason, p99_9_ms=_r(p999), max_ms=_r(slowest),
        current=m.current_timeout,
    )  # fmt: skip


def advise_max_requests(m: Measurement, workers: int, threads: int) -> dict[str, Any]:
    """A rotation that caps a steadily growing worker at GROWTH_ALLOWANCE of its size
    (within the budget); else the current value, or off."""
    mem = m.worker_uss or m.worker_pss or m.worker_rss
    numbers = {
        "growth_bytes_per_request": m.growth_per_request,
        "current": m.current_max_requests,
        "restarts_seen": m.restarts,
        "jitter": 0,
    }
    seen = m.growth_note or "not measured"
    if m.growth_per_request and mem:
        spare = m.memory_budget / max(1, workers) - (mem + (threads - 1) * THREAD_BYTES)
        allowance = max(GROWTH_MIN_BYTES, min(GROWTH_ALLOWANCE * mem, spare))
        value = _nice_floor(allowance / m.growth_per_request)
        numbers["jitter"] = jitter = max(1, value // 10)
        reason = (
            f"RSS grew {m.growth_per_request / 1024:.1f} KiB per request ({seen}); "
            f"rotating every {value} requests caps a worker's growth near "
            f"{_mib(allowance)} ({GROWTH_ALLOWANCE:.0%} of its {_mib(mem)}); a jitter of "
            f"{jitter} staggers the restarts. A short window: confirm over hours (ferrocorn "
            "top, or the master's memory-climb warning)"
        )
    elif m.current_max_requests:
        value = m.current_max_requests
        reason = f"no steady memory growth measured ({seen}); the current value is kept" + (
            f" ({m.restarts} worker restart(s) in the window)" if m.restarts else ""
        )
    else:
        value = 0
        reason = (
            f"no steady memory growth measured ({seen}): rotating workers would only cost restarts"
        )
    return _setting("--max-requests", value, reason, **numbers)


def _r(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def recommend(m: Measurement) -> dict[str, Any]:
    """The advice for measurement ``m``: the per-request profile, one entry per setting
    (``flag``, ``value``, ``reason``, ``numbers``), the arguments and warnings."""
    warnings = list(m.warnings)
    s = split_request(m, warnings)
    settings = size_pool(s, m, warnings)
    klass = settings["worker_class"]["value"]
    workers = settings["workers"]["value"]
    threads = settings["threads"]["value"]
    settings["timeout"] = advise_timeout(m, klass)
    settings["max_requests"] = mr = advise_max_requests(m, workers, threads)
    args = ["-k", klass, "-w", str(workers)]
    if klass == "gthread":
        args += ["--threads", str(threads)]
    args += ["--timeout", str(settings["timeout"]["value"])]
    if mr["value"]:
        args += ["--max-requests", str(mr["value"])]
        if mr["numbers"]["jitter"]:
            args += ["--max-requests-jitter", str(mr["numbers"]["jitter"])]
    bad = {k: v for k, v in m.statuses.items() if not k.startswith(("2", "3"))}
    if m.errors_5xx or bad:
        listed = ", ".join(f"{k}: {v}" for k, v in sorted(bad.items())) or "5xx"
        warnings.append(
            f"{sum(bad.values()) or m.errors_5xx} of {m.requests} responses were errors "
            f"({listed}): their timings may not be the app's normal path"
        )
    profile = {
        "kind": s.kind,
        "wall_ms": _r(s.wall),
        "cpu_ms": _r(s.cpu),
        "io_ms": _r(s.io),
        "cpu_wait_ms": _r(s.cpu_wait),
        "gil_wait_ms": _r(s.gil_wait),
        "io_share": round(s.io_share, 3),
        "observed_in_flight": round(m.busy_seconds / m.duration, 2) if m.duration else None,
    }
    return {"profile": profile, "settings": settings, "args": args, "warnings": warnings}


# =========================================================================== the machine


def memory_available() -> int | None:
    """MemAvailable from /proc/meminfo, in bytes (None if unreadable)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def cgroup_memory_room() -> int | None:
    """What the cgroup (v2) memory limit leaves, when there is a limit."""
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current") as f:
            return max(0, int(limit) - int(f.read().strip()))
    except (OSError, ValueError):
        return None


def effective_cores() -> tuple[float, str]:
    """CPUs this process may run on, capped by a cgroup v2 CPU quota."""
    cores = float(len(os.sched_getaffinity(0)))
    source = f"{cores:g} CPUs in the affinity mask"
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max" and float(quota) / float(period) < cores:
            cores = round(float(quota) / float(period), 2)
            source = f"cgroup CPU quota {quota}/{period}"
    except (OSError, ValueError):
        pass
    return cores, source


def is_local(host: str) -> bool:
    """True when ``host`` is an address of this machine (it can be bound to)."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    for family, _, _, _, addr in infos:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((addr[0], 0))
                return True
            except OSError:
                continue
    return False


# =========================================================================== sampling /stats


def quantile(buckets: list[int], q: float) -> float | None:
    """The ``q`` quantile of a scoreboard latency histogram, interpolated within the
    bucket as Prometheus' histogram_quantile does (the last bucket: its lower bound)."""
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for j, count in enumerate(buckets):
        if count and seen + count >= rank:
            lower = 0.0 if j == 0 else BUCKET_BOUNDS[j - 1]
            upper = BUCKET_BOUNDS[j]
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - seen) / count
        seen += count
    return None


def histogram_max(buckets: list[int]) -> float | None:
    """The upper bound of the highest non-empty bucket (the last one: its lower bound)."""
    for j in range(len(buckets) - 1, -1, -1):
        if buckets[j]:
            return BUCKET_BOUNDS[j] if not math.isinf(BUCKET_BOUNDS[j]) else BUCKET_BOUNDS[j - 1]
    return None


@dataclass
class _Track:
    first: dict[str, Any]
    last: dict[str, Any]
    t_first: float
    t_last: float
    rss: list[tuple[int, int]] = field(default_factory=list)  # (requests, rss)


class Window:
    """Accumulates /stats snapshots of a measuring window, per worker pid."""

    def __init__(self, local: bool) -> None:
        self.local = local
        self.tracks: dict[int, _Track] = {}
        self.first_pids: set[int] = set()
        self.snapshots = 0
        self.t0 = 0.0
        self.t1 = 0.0
        self.config: dict[str, Any] = {}
        self.in_flight: dict[str, list[float]] = {}  # "GET /x" -> [seconds seen, max age]

    def add(self, snap: dict[str, Any], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if not self.snapshots:
            self.t0 = now
            self.first_pids = {w["pid"] for w in snap.get("workers", [])}
        self.t1 = now
        self.snapshots += 1
        self.config = snap.get("config", self.config)
        for w in snap.get("workers", []):
            if w.get("state") == "booting":
                continue
            w = dict(w)
            if w.get("cpu_wait_seconds") is None and self.local:
                from ferrocorn.stats import proc_run_delay_seconds

                w["cpu_wait_seconds"] = proc_run_delay_seconds(w["pid"])
            t = self.tracks.get(w["pid"])
            if t is None:
                t = self.tracks[w["pid"]] = _Track(w, w, now, now)
            t.last, t.t_last = w, now
            if w.get("rss_bytes"):
                t.rss.append((w["requests"], w["rss_bytes"]))
            if w.get("state") == "busy" and w.get("request"):
                age = float(w.get("request_seconds") or 0.0)
                seen = self.in_flight.setdefault(w["request"], [0.0, 0.0])
                seen[0] += SAMPLE_INTERVAL
                seen[1] = max(seen[1], age)

    def measurement(
        self, source: str, cores: tuple[float, str], budget: tuple[int, str]
    ) -> Measurement:
        tracks = [t for t in self.tracks.values() if t.t_last > t.t_first]
        if self.snapshots < 2 or not tracks:
            raise AdviseError(f"no worker of {source} could be followed during the window")

        def delta(key: str) -> float:
            return sum(float(t.last.get(key) or 0) - float(t.first.get(key) or 0) for t in tracks)

        requests = int(delta("requests"))
        waits = [
            t
            for t in tracks
            if t.first.get("cpu_wait_seconds") is not None
            and t.last.get("cpu_wait_seconds") is not None
        ]
        wait = delta("cpu_wait_seconds") if len(waits) == len(tracks) else None
        buckets = [0] * len(BUCKET_BOUNDS)
        statuses: Counter[str] = Counter()
        for t in tracks:
            for j, (a, b) in enumerate(
                zip(
                    t.first.get("latency_buckets") or [],
                    t.last.get("latency_buckets") or [],
                    strict=False,
                )
            ):
                if j < len(buckets):
                    buckets[j] += max(0, b - a)
            before = {str(k): v for k, v in (t.first.get("statuses") or {}).items()}
            for k, v in (t.last.get("statuses") or {}).items():
                statuses[str(k)] += max(0, v - before.get(str(k), 0))
        span = self.t1 - self.t0

        def used(t: _Track, key: str) -> float:
            return float(t.last.get(key) or 0) - float(t.first.get(key) or 0)

        shares = [
            (used(t, "cpu_seconds") + used(t, "cpu_wait_seconds")) / (t.t_last - t.t_first)
            for t in tracks
        ]
        conc = [
            (float(t.last["busy_seconds"]) - float(t.first["busy_seconds"]))
            / (t.t_last - t.t_first)
            for t in tracks
        ]
        # The GIL contention a request met is that of the process that served it: weigh
        # each worker by its requests. A plain mean counted an idle worker (the
        # connections all kept alive on the other one) as half the evidence, halving
        # the estimated GIL wait, so a CPU-bound gthread app came out "mixed".
        weights = [max(0.0, used(t, "requests")) for t in tracks]
        if not any(weights):
            weights = [1.0] * len(tracks)

        def median_of(key: str) -> int | None:
            vals = [t.last.get(key) for t in tracks if t.last.get(key)]
            return int(statistics.median(vals)) if vals else None

        growth, note = memory_growth([t.rss for t in tracks])
        slowest = sorted(
            (
                {"request": r, "seen_seconds": round(s[0], 2), "max_seconds": round(s[1], 3)}
                for r, s in self.in_flight.items()
            ),
            key=lambda d: -d["max_seconds"],
        )[:5]
        latency = {
            "p50": quantile(buckets, 0.5),
            "p90": quantile(buckets, 0.9),
            "p99": quantile(buckets, 0.99),
            "p99_9": quantile(buckets, 0.999),
            "max": max(
                [x for x in (histogram_max(buckets), *(s["max_seconds"] for s in slowest)) if x]
                or [0.0]
            )
            or None,
        }
        cfg = self.config
        return Measurement(
            source=source,
            duration=span,
            worker_class=str(cfg.get("worker_class", "sync")),
            workers=len(tracks),
            threads=int(cfg.get("threads") or 1),
            requests=requests,
            cpu_seconds=delta("cpu_seconds"),
            busy_seconds=delta("busy_seconds"),
            wait_seconds=wait,
            cores=cores[0],
            cores_source=cores[1],
            memory_budget=budget[0],
            memory_source=budget[1],
            worker_uss=median_of("uss_bytes"),
            worker_pss=median_of("pss_bytes"),
            worker_rss=median_of("rss_bytes"),
            gil_share=statistics.fmean(shares, weights) if shares else 0.0,
            process_concurrency=statistics.fmean(conc, weights) if conc else 0.0,
            growth_per_request=growth,
            growth_note=note,
            latency=latency,
            errors_5xx=int(delta("errors_5xx")),
            statuses=dict(statuses),
            restarts=len(set(self.tracks) - self.first_pids),
            slowest=slowest,
            current_timeout=float(cfg.get("timeout") or DEFAULT_TIMEOUT),
            current_max_requests=int(cfg.get("max_requests") or 0),
        )


def memory_growth(series: list[list[tuple[int, int]]]) -> tuple[float | None, str]:
    """RSS growth per request when every worker's RSS rose in both halves of the window
    by at least GROWTH_MIN_BYTES / GROWTH_MIN_SHARE in all; else (None, what was seen).
    ``series``: per worker, (requests served, RSS) samples in time order."""
    grew = 0
    served = 0
    steady = True
    seen = False
    for s in series:
        if len(s) < 3 or s[-1][0] <= s[0][0]:
            continue
        seen = True
        mid = s[len(s) // 2]
        first, last = s[0], s[-1]
        if not (mid[1] > first[1] and last[1] > mid[1]):
            steady = False
        grew += last[1] - first[1]
        served += last[0] - first[0]
    if not seen or served <= 0:
        return None, "not enough samples"
    base = statistics.fmean(s[0][1] for s in series if s)
    workers = sum(1 for s in series if len(s) >= 3)
    note = f"{grew / MIB:+.1f} MiB over {served} requests"
    if steady and grew / workers >= max(GROWTH_MIN_BYTES, GROWTH_MIN_SHARE * base):
        return grew / served, note
    return None, note


# =========================================================================== load generator


@dataclass
class PathStats:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    errors: int = 0


class LoadGenerator:
    """``concurrency`` threads, each sending GET requests over a fresh connection
    (``Connection: close``) to the paths in turn, until stopped. Records per path only
    while ``recording`` is set."""

    def __init__(self, host: str, port: int, paths: list[str], concurrency: int) -> None:
        self.address = (host, port)
        self.paths = paths
        self.concurrency = concurrency
        self.stats = {p: PathStats() for p in paths}
        self.recording = threading.Event()
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.last_error = ""
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True, name=f"advise-load-{i}")
            for i in range(concurrency)
        ]

    def __enter__(self) -> LoadGenerator:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=35)

    def _one(self, path: str) -> str:
        request = f"GET {path} HTTP/1.1\r\nHost: advise\r\nConnection: close\r\n\r\n".encode()
        with socket.create_connection(self.address, timeout=30) as s:
            s.sendall(request)
            head = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                if len(head) < 16:
                    head += chunk[:16]
        m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
        if not m:
            raise OSError(f"no HTTP status line in {head!r}")
        return m.group(1).decode()

    def _run(self, i: int) -> None:
        k = i
        while not self.stopping.is_set():
            path = self.paths[k % len(self.paths)]
            k += 1
            t0 = time.monotonic()
            try:
                status = self._one(path)
            except OSError as e:
                with self.lock:
                    self.last_error = str(e) or type(e).__name__
                    if self.recording.is_set():
                        self.stats[path].errors += 1
                self.stopping.wait(0.05)
                continue
            elapsed = time.monotonic() - t0
            if self.recording.is_set():
                with self.lock:
                    st = self.stats[path]
                    st.latencies.append(elapsed)
                    st.statuses[status] += 1

    def slowest(self) -> list[dict[str, Any]]:
        out = []
        for path, st in self.stats.items():
            lat = sorted(st.latencies)
            if not lat:
                continue
            out.append(
                {
                    "request": f"GET {path}",
                    "count": len(lat),
                    "mean_seconds": round(statistics.fmean(lat), 6),
                    "p99_seconds": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 6),
                    "max_seconds": round(lat[-1], 6),
                    "statuses": dict(st.statuses),
                    "errors": st.errors,
                }
            )
        return sorted(out, key=lambda d: -d["mean_seconds"])

    def all_latencies(self) -> list[float]:
        return sorted(x for st in self.stats.values() for x in st.latencies)


# =========================================================================== measuring server


@contextlib.contextmanager
def measuring_server(
    app: str, workers: int, server_args: list[str], timeout: float = 60.0
) -> Iterator[tuple[int, Feed]]:
    """Start ``python -m ferrocorn`` on free loopback ports with sync workers and
    ``--stats-bind``; yield (its port, its stats feed); stop it afterwards. If the
    server exits meanwhile, the feed's error says why, from its log."""
    log = tempfile.NamedTemporaryFile(prefix="ferrocorn-advise-", suffix=".log", delete=False)
    cmd = [
        sys.executable, "-m", "ferrocorn",
        "--worker-class", "sync", "--workers", str(workers),
        "--bind", "127.0.0.1:0", "--stats-bind", "127.0.0.1:0",
        "--no-control-socket", "--error-logfile", "-", "--log-level", "info",
        *server_args, app,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("WEB_CONCURRENCY", "PORT")}
    # A process group of its own (killpg) but not a session: under autogroup scheduling
    # a new session is a scheduling group that CFS would hold to an even share against
    # the load generator's, measuring a server capped at half the machine.
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, process_group=0
    )
    try:
        port, url = _wait_started(proc, log.name, workers, timeout)
        feed = http_feed(url, local=True)

        def fetch() -> dict[str, Any]:
            try:
                return http_snapshot(url)
            except (OSError, ValueError) as e:
                if proc.poll() is None:
                    raise AdviseError(f"the server's stats at {url} did not answer ({e})") from None
                raise AdviseError(
                    f"the server exited with status {proc.returncode} while measuring: "
                    f"{_log_reason(log.name)}"
                ) from None

        feed.fetch = fetch
        yield port, feed
    finally:
        _stop(proc)
        log.close()
        with contextlib.suppress(OSError):
            os.unlink(log.name)


def _log_reason(path: str) -> str:
    """Why the server stopped, from its log: the first error (or a traceback's last
    line) and the master's ``Reason:``."""
    with open(path, errors="replace") as f:
        lines = [ln.rstrip() for ln in f if ln.strip()]
    strip = re.compile(r"^\[[^\]]*\] \[\d+\] \[[A-Z]+\] ")
    cause = next((ln for ln in lines if re.match(r"^\w+(Error|Exception)\b.*:", ln)), "")
    if not cause:
        cause = next(
            (
                strip.sub("", ln)
                for ln in lines
                if "[ERROR]" in ln and not re.search(r"Worker \(pid:\d+\) exited|in worker", ln)
            ),
            "",
        )
    reason = next((strip.sub("", ln) for ln in reversed(lines) if "Reason:" in ln), "")
    return " ".join(x for x in (cause, f"({reason})" if reason else "") if x) or (
        strip.sub("", lines[-1]) if lines else "no output"
    )


def _wait_started(
    proc: subprocess.Popen[bytes], log_path: str, workers: int, timeout: float
) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    port = 0
    url = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AdviseError(
                f"the server exited with status {proc.returncode} before serving: "
                f"{_log_reason(log_path)}"
            )
        with open(log_path, errors="replace") as f:
            text = f.read()
        if not port and (m := re.search(r" Listening at: http://127\.0\.0\.1:(\d+)", text)):
            port = int(m.group(1))
        if not url and (m := re.search(r"Stats listening at: (\S+)", text)):
            url = m.group(1)
        if port and url:
            with contextlib.suppress(OSError, ValueError):
                snap = http_snapshot(url, timeout=2)
                if snap["server"]["idle_workers"] >= workers:
                    return port, url
        time.sleep(0.05)
    raise AdviseError(f"the server did not boot {workers} workers within {timeout:.0f} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


# =========================================================================== measuring


def _budget(override_mib: float | None, server_bytes: int) -> tuple[int, str]:
    if override_mib is not None:
        return int(override_mib * MIB), f"--memory {override_mib:g} MiB"
    avail = memory_available()
    room = cgroup_memory_room()
    if avail is None and room is None:
        raise AdviseError("cannot read MemAvailable from /proc/meminfo; give --memory MIB")
    free = min(x for x in (avail, room) if x is not None)
    what = "cgroup memory.max room" if room is not None and room == free else "MemAvailable"
    total = free + server_bytes
    return int(MEMORY_HEADROOM * total), (
        f"{MEMORY_HEADROOM:.0%} of {what} {_mib(free)} + the measured workers' {_mib(server_bytes)}"
    )


def http_snapshot(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """One ``/stats`` snapshot from a --stats-bind address."""
    from urllib.request import urlopen

    try:
        with urlopen(url.rstrip("/") + "/stats", timeout=timeout) as r:
            data = json.loads(r.read())
    except http.client.HTTPException as e:
        # A server that dies while answering (an app that failed to load, seen in CI)
        # cuts the reply short: IncompleteRead, not an OSError. Callers treat both as
        # the server not answering.
        raise ConnectionError(f"{type(e).__name__}: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{url}/stats answered something other than a snapshot")
    return data


@dataclass
class Feed:
    """Where the snapshots come from, and whether that server runs on this machine."""

    fetch: Callable[[], dict[str, Any]]
    name: str
    local: bool


def http_feed(url: str, local: bool | None = None) -> Feed:
    url = url if "://" in url else "http://" + url

    def fetch() -> dict[str, Any]:
        try:
            return http_snapshot(url)
        except (OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            raise AdviseError(f"no ferrocorn stats server at {url} ({reason})") from None

    if local is None:
        local = is_local(urlsplit(url).hostname or "127.0.0.1")
    return Feed(fetch, url, local)


def open_feed(args: argparse.Namespace) -> Feed:
    """The running server, found as ``ferrocorn stats`` finds it (top.py): by
    --control-socket, --pid, --stats-url or $FERROCORN_STATS_URL, else at the default
    control socket."""
    from ferrocorn import top

    try:
        src = top.find_source(args)
    except top.NoServer as e:
        raise AdviseError(str(e)) from None
    if isinstance(src, top.HttpSource):
        return http_feed(src.url, local=True if args.pid else None)

    def fetch() -> dict[str, Any]:
        try:
            return src.fetch()
        except top.NoServer as e:
            raise AdviseError(str(e)) from None

    return Feed(fetch, str(src), True)


def _sample(feed: Feed, window: Window, seconds: float) -> None:
    end = time.monotonic() + seconds
    while True:
        window.add(feed.fetch())
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(SAMPLE_INTERVAL, left))


def _finish(window: Window, source: str, args: argparse.Namespace) -> Measurement:
    tracks = window.tracks.values()
    server_bytes = sum(int(t.last.get("uss_bytes") or 0) for t in tracks) if window.local else 0
    cores = (args.cores, "--cores") if args.cores else effective_cores()
    m = window.measurement(source, cores, _budget(args.memory, server_bytes))
    if not window.local:
        m.warnings.append(
            "the server is on another machine: cores and memory are this machine's unless "
            "given with --cores and --memory"
        )
    return m


def measure_running(feed: Feed, args: argparse.Namespace) -> Measurement:
    window = Window(local=feed.local)
    feed.fetch()  # fails at once, with one line, when nothing answers
    _progress(f"measuring the server at {feed.name} for {args.duration:g} s of its traffic")
    _sample(feed, window, args.duration)
    m = _finish(window, f"the server at {feed.name}", args)
    if m.requests <= 0:
        raise AdviseError(
            f"the server at {feed.name} served no request in {args.duration:g} s; measure "
            "it under load, or give APP_MODULE to let advise load it"
        )
    return m


def measure_app(app: str, args: argparse.Namespace) -> Measurement:
    cores = args.cores or effective_cores()[0]
    workers = args.workers or max(2, min(4, math.ceil(cores)))
    concurrency = args.concurrency or workers
    warmup = min(2.0, 0.2 * args.duration)
    _progress(
        f"starting {app} with {workers} sync workers; {concurrency} connection(s) on "
        f"{', '.join(args.path)} for {warmup:g} s warm-up + {args.duration:g} s"
    )
    with measuring_server(app, workers, args.server_args) as (port, feed):
        window = Window(local=True)
        with LoadGenerator("127.0.0.1", port, args.path, concurrency) as load:
            time.sleep(warmup)
            load.recording.set()
            _sample(feed, window, args.duration)
            load.recording.clear()
        m = _finish(window, f"{app} (self-driven)", args)
    if m.requests <= 0:
        raise AdviseError(
            f"no request to {app} completed in {args.duration:g} s"
            + (f" ({load.last_error})" if load.last_error else "")
        )
    m.slowest = load.slowest()
    lat = load.all_latencies()
    if lat:
        # The client's view: exact, and includes the time a request waited to be accepted.
        for key, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99_9", 0.999)):
            m.latency[key] = lat[int(q * (len(lat) - 1))]
        m.latency["max"] = lat[-1]
    statuses: Counter[str] = Counter()
    for s in m.slowest:
        statuses.update(s["statuses"])
    m.statuses = dict(statuses)
    if errors := sum(s["errors"] for s in m.slowest):
        m.warnings.append(f"{errors} requests failed at the socket ({load.last_error})")
    return m


def _progress(msg: str) -> None:
    print(f"ferrocorn advise: {msg}", file=sys.stderr, flush=True)


# =========================================================================== output


def report(m: Measurement) -> dict[str, Any]:
    advice = recommend(m)
    return {
        "source": m.source,
        "measured": {
            **{k: v for k, v in asdict(m).items() if k not in ("warnings", "source")},
            "req_per_s": round(m.requests / m.duration, 2) if m.duration else None,
        },
        **advice,
    }


def render_text(r: dict[str, Any], app: str) -> str:
    m = r["measured"]
    p = r["profile"]
    lat = m["latency"]
    lines = [
        f"Measured {m['requests']} requests in {m['duration']:.1f} s from {r['source']} "
        f"({m['worker_class']}, {m['workers']} worker(s)"
        + (f" x {m['threads']} threads" if m["worker_class"] == "gthread" else "")
        + f", {m['req_per_s']} req/s)",
        f"Per request: {p['wall_ms']:.2f} ms in the app = {p['cpu_ms']:.2f} ms CPU + "
        f"{p['io_ms']:.2f} ms I/O"
        + (f" + {p['cpu_wait_ms']:.2f} ms waiting for a CPU" if p["cpu_wait_ms"] else "")
        + (f" + {p['gil_wait_ms']:.2f} ms waiting for the GIL" if p["gil_wait_ms"] else "")
        + f" -> {p['kind']} (I/O {p['io_share']:.0%} of the service time)",
        f"Machine: {m['cores']:g} cores ({m['cores_source']}); memory budget "
        f"{_mib(m['memory_budget'])} ({m['memory_source']}); a worker: "
        f"{_mib(m['worker_uss'])} USS, {_mib(m['worker_pss'])} PSS, {_mib(m['worker_rss'])} RSS",
        "Latency: "
        + ", ".join(
            f"{k.replace('_', '.')} {_ms(lat.get(k))}"
            for k in ("p50", "p90", "p99", "p99_9", "max")
        ),
    ]
    if m["slowest"]:
        lines.append("Slowest requests:")
        for s in m["slowest"]:
            if "mean_seconds" in s:
                lines.append(
                    f"  {s['request']}: mean {_ms(s['mean_seconds'])}, p99 "
                    f"{_ms(s['p99_seconds'])}, max {_ms(s['max_seconds'])} ({s['count']} requests)"
                )
            else:
                lines.append(
                    f"  {s['request']}: seen running up to {_ms(s['max_seconds'])} "
                    f"(in flight {s['seen_seconds']:g} s of the window)"
                )
    lines += ["", "Recommendation:"]
    for s in r["settings"].values():
        lines.append(f"  {s['flag']} {s['value']}")
        lines.append(f"      {s['reason']}")
    lines += ["", "  ferrocorn " + " ".join(r["args"]) + f" {app}"]
    if r["warnings"]:
        lines += ["", "Warnings:"] + [f"  - {w}" for w in r["warnings"]]
    return "\n".join(lines)


# =========================================================================== command line


def parse_args(argv: list[str]) -> argparse.Namespace:
    server_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, server_args = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(
        prog="ferrocorn advise",
        description="Measure an app and recommend --worker-class, --workers, --threads, "
        "--timeout and --max-requests, with the reasons and numbers. Either give "
        "APP_MODULE (ferrocorn is started and loaded for --duration seconds; arguments "
        "after -- go to that server, e.g. -- --chdir src), or measure a running server's "
        "traffic, found as ferrocorn stats finds it (--control-socket, --pid, --stats-url, "
        "else the default control socket). See docs/advise.md.",
    )
    p.add_argument("app", nargs="?", metavar="APP_MODULE", help="e.g. myproject.wsgi:application")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--control-socket", metavar="PATH", help="a running server's control socket")
    where.add_argument("--pid", metavar="PIDFILE", help="find a running server by its pidfile")
    where.add_argument("--stats-url", metavar="URL", help="a running server's --stats-bind address")
    p.add_argument(
        "--duration",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to measure (default 10)",
    )
    p.add_argument(
        "--path",
        action="append",
        default=[],
        metavar="PATH",
        help="with APP_MODULE: a path to request (repeatable; default /)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=0,
        metavar="N",
        help="with APP_MODULE: connections in flight (default: one per worker)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="with APP_MODULE: sync workers measured (default: cores, 2 to 4)",
    )
    p.add_argument(
        "--cores",
        type=float,
        default=0.0,
        metavar="N",
        help="plan for this many cores (default: this machine's)",
    )
    p.add_argument(
        "--memory",
        type=float,
        default=None,
        metavar="MIB",
        help="memory the workers may use, in MiB (default: 80%% of what is free)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    args.server_args = server_args
    if args.duration <= 0:
        p.error("--duration must be more than 0 seconds")
    if args.cores < 0 or (args.memory is not None and args.memory <= 0):
        p.error("--cores and --memory must be positive")
    if args.concurrency < 0 or args.workers < 0:
        p.error("--concurrency and --workers must be positive")
    if args.app and (args.stats_url or args.pid or args.control_socket):
        p.error("give APP_MODULE or --control-socket/--pid/--stats-url, not both")
    if not args.app and (args.path or args.concurrency or args.workers or server_args):
        p.error("--path, --concurrency, --workers and server arguments need APP_MODULE")
    for path in args.path:
        if not path.startswith("/") or any(ch.isspace() for ch in path):
            p.error(f"--path {path!r}: a path starts with / and has no spaces")
    args.path = args.path or ["/"]
    return args


def cli(argv: list[str]) -> int:
    """``ferrocorn advise ...`` (``argv`` starts with ``advise``)."""
    args = parse_args(argv[1:])
    try:
        if args.app:
            m = measure_app(args.app, args)
            app = args.app
        else:
            m = measure_running(open_feed(args), args)
            app = "APP_MODULE"
        r = report(m)
    except (AdviseError, LookupError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Error: interrupted", file=sys.stderr)
        return 130
    print(json.dumps(r, indent=1) if args.json else render_text(r, app))
    return 0
