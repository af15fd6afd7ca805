#!/usr/bin/env python3
"""Benchmark harness: ferrocorn against its peers (gunicorn, granian, uvicorn, ...).

    python benches/run.py [--quick] [--scenarios sync[,gthread,...]] [--servers gunicorn]

For every case of a scenario (app x connections x workers) each server is started on a
free loopback port, polled until it answers, warmed up, and loaded with ``wrk``.  Measured:
requests/s and latency percentiles (from wrk), the server's CPU time per request (utime +
stime of the whole process tree, from /proc/PID/stat, before/after the run), memory per
worker (RSS and PSS from /proc/PID/smaps_rollup after the run) and wrk's socket/HTTP
errors.  Results go to docs/benchmarks.md (one marked section per scenario) and raw JSON to
benches/results/.

Scenarios are data (``SCENARIOS`` below): a new one is a table entry, not new code.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import importlib
import importlib.metadata
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

BENCHES = Path(__file__).resolve().parent
ROOT = BENCHES.parent
RESULTS = BENCHES / "results"
DOCS = ROOT / "docs" / "benchmarks.md"
REQUIREMENTS = BENCHES / "requirements.txt"
WRK_SCRIPT = BENCHES / "wrk_report.lua"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
KIB = 1024
MIB = 1024 * 1024

READY_TIMEOUT_S = 30.0
WORKERS_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 15.0
WRK_TIMEOUT = "10s"


# =========================================================================== scenario table


@dataclass(frozen=True)
class App:
    name: str  # label used in tables and file names
    target: str  # module:attribute, resolved with benches/ as working directory
    body_len: int  # expected body length of GET / (sanity check at readiness)


@dataclass(frozen=True)
class Server:
    id: str  # what --servers matches
    label: str  # row label in tables
    # Command template, split like a shell would, then each word is str.format()ted with
    # {python} {ferrocorn} {workers} {threads} {host} {port} {app}.
    cmd: str
    packages: tuple[str, ...] = ()  # names from benches/requirements.txt it needs


@dataclass(frozen=True)
class Scenario:
    name: str  # docs/benchmarks.md section is <!-- bench:NAME:start --> ... end
    title: str
    servers: tuple[Server, ...]
    apps: tuple[App, ...]
    connections: tuple[int, ...] = (64,)
    workers: tuple[int, ...] | None = None  # None: --workers (default 2)
    threads: int = 1  # {threads}
    subject: str = "ferrocorn"  # ratios are subject / each other server
    notes: tuple[str, ...] = ()


HELLO = App("hello", "apps:hello", 13)
BIG = App("64KiB", "apps:big", 64 * KIB)
SLEEP = App("sleep 20ms", "apps:sleep", 13)
HELLO_ASGI = App("hello", "apps:hello_asgi", 13)
BIG_ASGI = App("64KiB", "apps:big_asgi", 64 * KIB)
SLEEP_ASGI = App("sleep 20ms", "apps:sleep_asgi", 13)

GUNICORN = "{python} -m gunicorn -w {workers} -b {host}:{port}"
FERROCORN = "{ferrocorn} -w {workers} -b {host}:{port}"
GRANIAN = "{python} -m granian --workers {workers} --host {host} --port {port} --log-level warning"
UVICORN = "{python} -m uvicorn --workers {workers} --host {host} --port {port} --no-access-log"

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            name="sync",
            title="sync workers: ferrocorn vs gunicorn",
            servers=(
                Server("ferrocorn", "ferrocorn sync", f"{FERROCORN} {{app}}"),
                Server("gunicorn", "gunicorn sync", f"{GUNICORN} {{app}}", ("gunicorn",)),
            ),
            apps=(HELLO, BIG),
        ),
        Scenario(
            name="gthread",
            title="threaded workers: ferrocorn gthread vs gunicorn gthread vs granian wsgi",
            servers=(
                Server(
                    "ferrocorn",
                    "ferrocorn gthread",
                    f"{FERROCORN} -k gthread --threads {{threads}} {{app}}",
                ),
                Server(
                    "gunicorn",
                    "gunicorn gthread",
                    f"{GUNICORN} -k gthread --threads {{threads}} {{app}}",
                    ("gunicorn",),
                ),
                Server(
                    "granian",
                    "granian wsgi",
                    f"{GRANIAN} --interface wsgi --blocking-threads {{threads}} {{app}}",
                    ("granian",),
                ),
            ),
            apps=(HELLO, BIG, SLEEP),
            connections=(64, 512),
            workers=(2, 5),
            threads=8,
        ),
        Scenario(
            name="asgi",
            title="ASGI: ferrocorn vs uvicorn, gunicorn+uvicorn-worker, gunicorn asgi, granian",
            servers=(
                Server("ferrocorn", "ferrocorn asgi", f"{FERROCORN} -k asgi {{app}}"),
                Server(
                    "uvicorn", "uvicorn", f"{UVICORN} --log-level warning {{app}}", ("uvicorn",)
                ),
                Server(
                    "gunicorn-uvicorn",
                    "gunicorn + UvicornWorker",
                    f"{GUNICORN} -k uvicorn_worker.UvicornWorker {{app}}",
                    ("gunicorn", "uvicorn", "uvicorn-worker"),
                ),
                Server(
                    "gunicorn-asgi", "gunicorn asgi", f"{GUNICORN} -k asgi {{app}}", ("gunicorn",)
                ),
                Server(
                    "granian", "granian asgi", f"{GRANIAN} --interface asgi {{app}}", ("granian",)
                ),
            ),
            apps=(HELLO_ASGI, BIG_ASGI, SLEEP_ASGI),
            connections=(64, 512),
            notes=(
                "Provisional (issue 5); the WebSocket echo app (apps:ws_echo_asgi) needs "
                "a WebSocket load generator, which wrk is not.",
                "uvicorn --workers N (N >= 2) showed a ~44 ms median latency floor at "
                "0.15 cores busy when the harness was validated (5.7 ms with --workers 1): "
                "it looks like Nagle/delayed ACK on the workers' sockets; check before "
                "quoting its numbers.",
            ),
        ),
        Scenario(
            name="stats",
            title="the cost of measuring: ferrocorn with and without --stats-bind",
            servers=(
                Server("ferrocorn", "ferrocorn sync", f"{FERROCORN} {{app}}"),
                Server(
                    "ferrocorn-stats",
                    "ferrocorn sync --stats-bind",
                    f"{FERROCORN} --stats-bind {{host}}:0 {{app}}",
                ),
            ),
            apps=(HELLO,),
            notes=(
                "Both rows record every request in the scoreboard (count, latency "
                "histogram, 5xx, busy time: one clock read and three atomic additions), "
                "which is always on; the second also runs the stats process, which "
                "samples the scoreboard and /proc once a second (it is not scraped "
                "during the run).",
                "With --stats-bind the memory columns also average in the stats process "
                "(a child of the master like the workers).",
            ),
        ),
    )
}


# =========================================================================== results


@dataclass
class Run:
    scenario: str
    server: str
    label: str
    app: str
    connections: int
    workers: int
    round: int
    command: list[str]
    status: str = "ok"  # ok | failed | skipped
    note: str = ""
    requests: int = 0
    duration_s: float = 0.0
    rps: float = 0.0
    latency_us: dict[str, float] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    cpu_s: float = 0.0
    cpu_us_per_req: float = 0.0
    server_cores: float = 0.0  # cpu_s / duration: how many cores the server used
    wrk_cpu_s: float = 0.0
    processes: int = 0  # processes in the server's tree after the run
    worker_pids: list[int] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)
    pss_mib: list[float] = field(default_factory=list)

    @property
    def case(self) -> tuple[str, int, int]:
        return (self.app, self.connections, self.workers)


class StartError(Exception):
    pass


# =========================================================================== /proc


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    ticks: int  # utime + stime + cutime + cstime


def read_proc(pid: int) -> Proc | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) may contain spaces/parens: split after the last ')'.
    rest = data[data.rindex(")") + 2 :].split()
    # rest[i] is field i+3 of proc(5): ppid=4, utime=14, stime=15, cutime=16, cstime=17.
    return Proc(pid, int(rest[1]), sum(int(x) for x in rest[11:15]))


def all_procs() -> dict[int, Proc]:
    procs: dict[int, Proc] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (p := read_proc(int(entry.name))) is not None:
            procs[p.pid] = p
    return procs


def children_map(procs: dict[int, Proc]) -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for p in procs.values():
        kids.setdefault(p.ppid, []).append(p.pid)
    return kids


def tree(root: int) -> dict[int, Proc]:
    """The root process and all its descendants."""
    procs = all_procs()
    kids = children_map(procs)
    out: dict[int, Proc] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in procs and pid not in out:
            out[pid] = procs[pid]
            todo.extend(kids.get(pid, []))
    return out


def cpu_ticks(root: int) -> int:
    """CPU ticks of the whole tree.  c{u,s}time carry the time of children the process
    already reaped (e.g. a worker that was restarted), so every tick is counted once."""
    return sum(p.ticks for p in tree(root).values())


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def worker_pids(root: int) -> list[int]:
    """Workers are the master's children.  The master is the root, unless the root is a
    wrapper with a single child that itself has children (e.g. a launcher)."""
    kids = children_map(all_procs())
    master = root
    while len(kids.get(master, [])) == 1 and kids.get(kids[master][0]):
        master = kids[master][0]
    helpers = ("resource_tracker", "semaphore_tracker", "forkserver")
    workers = [p for p in kids.get(master, []) if not any(h in cmdline(p) for h in helpers)]
    return sorted(workers) or [master]


def memory_mib(pid: int) -> tuple[float, float] | None:
    """(RSS, PSS) in MiB from /proc/PID/smaps_rollup."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    values = dict(re.findall(r"^(Rss|Pss):\s+(\d+) kB", text, re.M))
    if "Rss" not in values or "Pss" not in values:
        return None
    return int(values["Rss"]) * KIB / MIB, int(values["Pss"]) * KIB / MIB


# =========================================================================== setup


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pins() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[name.strip().lower()] = version.strip()
    return out


def installed_version(name: str) -> str | None:
    importlib.invalidate_caches()
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def ensure_packages(names: set[str]) -> dict[str, str]:
    """pip-install the pinned version of each package that is missing or differs.
    Returns {name: error} for packages that could not be installed."""
    pinned = pins()
    todo = [f"{n}=={pinned[n]}" for n in sorted(names) if installed_version(n) != pinned[n]]
    if not todo:
        return {}
    log(f"pip install {' '.join(todo)}")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", *todo], check=False)
    if proc.returncode == 0:
        return {}
    return {
        n: f"pip install failed ({proc.returncode})"
        for n in names
        if installed_version(n) != pinned[n]
    }


def ensure_wrk() -> None:
    if shutil.which("wrk"):
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log("wrk not found: apt-get update && apt-get install -y wrk")
    subprocess.run([*sudo, "apt-get", "update"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "wrk"], check=True, env=env)
    if not shutil.which("wrk"):
        sys.exit("wrk is still not on PATH after apt-get install")


def raise_nofile_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def first_line(argv: Sequence[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (p.stdout or p.stderr).strip().splitlines()[0] if (p.stdout or p.stderr) else ""


def git_rev() -> str:
    return first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "kernel": f"{platform.system()} {platform.release()}",
        "memory_gib": round(mem_gib, 1),
        "python": platform.python_version(),
        "wrk": first_line(["wrk", "-v"]).split(" [")[0],
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


# =========================================================================== one run


def render(cmd: str, **values: object) -> list[str]:
    return [word.format(**values) for word in shlex.split(cmd)]


def probe(port: int) -> tuple[int, int]:
    conn = http.client.HTTPConnection(HOST, port, timeout=2)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        return resp.status, len(resp.read())
    finally:
        conn.close()


def wait_ready(proc: subprocess.Popen[bytes], port: int) -> tuple[int, int]:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if (rc := proc.poll()) is not None:
            raise StartError(f"exited with status {rc} before answering")
        try:
            return probe(port)
        except (OSError, http.client.HTTPException):
            time.sleep(0.05)
    raise StartError(f"no HTTP answer within {READY_TIMEOUT_S:.0f} s")


def wait_workers(root: int, workers: int) -> int:
    deadline = time.monotonic() + WORKERS_TIMEOUT_S
    while (n := len(worker_pids(root))) < workers and time.monotonic() < deadline:
        time.sleep(0.05)
    return n


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group, wait, then SIGKILL whatever is left."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log(f"pid {proc.pid} ignored SIGTERM for {STOP_TIMEOUT_S:.0f} s: SIGKILL")
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def wrk_argv(threads: int, conns: int, seconds: int, url: str, script: str = "") -> list[str]:
    return [
        "wrk",
        f"-t{min(threads, conns) if conns else threads}",
        f"-c{conns}",
        f"-d{seconds}s",
        "--latency",
        "--timeout",
        WRK_TIMEOUT,
        "-s",
        script or str(WRK_SCRIPT),
        url,
    ]


def run_wrk(threads: int, conns: int, seconds: int, url: str) -> tuple[dict[str, Any], float]:
    """Run wrk; return its WRK_JSON report and the CPU seconds wrk itself used."""
    argv = wrk_argv(threads, conns, seconds, url)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=seconds + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    for line in p.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            report: dict[str, Any] = json.loads(line[len("WRK_JSON ") :])
            report["stdout"] = p.stdout
            return report, cpu
    raise RuntimeError(f"wrk failed ({p.returncode}): {p.stderr.strip() or p.stdout.strip()}")


def log_tail(path: Path, lines: int = 3) -> str:
    with contextlib.suppress(OSError):
        tail = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        return " / ".join(tail[-lines:])
    return ""


def measure(
    sc: Scenario,
    server: Server,
    app: App,
    conns: int,
    workers: int,
    rnd: int,
    opts: argparse.Namespace,
) -> Run:
    port = free_port()
    values = {
        "python": sys.executable,
        "ferrocorn": opts.ferrocorn,
        "workers": workers,
        "threads": sc.threads,
        "host": HOST,
        "port": port,
        "app": app.target,
    }
    argv = render(server.cmd, **values)
    run = Run(sc.name, server.id, server.label, app.name, conns, workers, rnd, argv)
    logdir = RESULTS / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "_", f"{sc.name}-{server.id}-{app.name}-c{conns}-w{workers}")
    logfile = logdir / f"{slug}-r{rnd}.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(BENCHES), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
        "PYTHONUNBUFFERED": "1",
    }
    url = f"http://{HOST}:{port}/"
    log(f"{sc.name}: {server.label} / {app.name} / c={conns} w={workers} round {rnd + 1}")
    proc: subprocess.Popen[bytes] | None = None
    try:
        with open(logfile, "wb") as out:
            try:
                proc = subprocess.Popen(
                    argv,
                    cwd=BENCHES,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as e:
                raise StartError(str(e)) from e
        status, length = wait_ready(proc, port)
        notes = []
        if status != 200 or length != app.body_len:
            notes.append(f"GET / gave {status} with {length} bytes (want 200, {app.body_len})")
        if (n := wait_workers(proc.pid, workers)) != workers:
            notes.append(f"{n} worker processes seen (asked {workers})")
        if opts.warmup > 0:
            run_wrk(opts.wrk_threads, conns, opts.warmup, url)
        before = cpu_ticks(proc.pid)
        report, run.wrk_cpu_s = run_wrk(opts.wrk_threads, conns, opts.duration, url)
        after = cpu_ticks(proc.pid)
        if proc.poll() is not None:
            notes.append(f"server exited ({proc.returncode}) during the run")
        run.worker_pids = worker_pids(proc.pid)
        run.processes = len(tree(proc.pid))
        for pid in run.worker_pids:
            if (mem := memory_mib(pid)) is not None:
                run.rss_mib.append(round(mem[0], 2))
                run.pss_mib.append(round(mem[1], 2))
        run.requests = int(report["requests"])
        run.duration_s = report["duration_us"] / 1e6
        run.rps = run.requests / run.duration_s if run.duration_s else 0.0
        run.latency_us = report["latency_us"]
        run.errors = report["errors"]
        run.cpu_s = (after - before) / CLK_TCK
        run.cpu_us_per_req = run.cpu_s * 1e6 / run.requests if run.requests else 0.0
        run.server_cores = run.cpu_s / run.duration_s if run.duration_s else 0.0
        run.note = "; ".join(notes)
        log(
            f"  {run.rps:,.0f} req/s, p99 {run.latency_us['p99'] / 1000:.2f} ms, "
            f"{run.cpu_us_per_req:.0f} CPU µs/req, {total_errors(run)} errors"
            + (f" ({run.note})" if run.note else "")
        )
    except StartError as e:
        run.status = "failed"
        tail = log_tail(logfile)
        run.note = f"failed to start: {e}" + (f" — {tail}" if tail else "")
        log(f"  {run.note}")
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        run.status = "failed"
        run.note = f"load run failed: {e}"
        log(f"  {run.note}")
    finally:
        if proc is not None:
            stop(proc)
    return run


def total_errors(run: Run) -> int:
    return sum(run.errors.values())


# =========================================================================== report


def fmt_errors(run: Run) -> str:
    if not run.errors:
        return "—"
    e = run.errors
    parts = [f"{k} {e[k]}" for k in ("connect", "read", "write", "timeout") if e.get(k)]
    if e.get("status"):
        parts.append(f"HTTP≥400 {e['status']}")
    return ", ".join(parts) or "0"


def median_run(runs: list[Run]) -> Run:
    """Per-metric median over rounds (errors summed) of successful runs of one case."""
    ok = [r for r in runs if r.status == "ok"]
    if not ok:
        return runs[0]
    if len(ok) == 1:
        return ok[0]
    m = Run(**{**asdict(ok[0]), "round": -1})
    med = statistics.median
    m.rps = med(r.rps for r in ok)
    m.cpu_us_per_req = med(r.cpu_us_per_req for r in ok)
    m.latency_us = {k: med(r.latency_us[k] for r in ok) for k in ok[0].latency_us}
    m.rss_mib = [med(statistics.fmean(r.rss_mib) for r in ok if r.rss_mib)]
    m.pss_mib = [med(statistics.fmean(r.pss_mib) for r in ok if r.pss_mib)]
    m.errors = {k: sum(r.errors.get(k, 0) for r in ok) for k in ok[0].errors}
    m.note = "; ".join(sorted({r.note for r in ok if r.note}))
    return m


def mean(xs: list[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def num(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    return "—" if not a or not b else f"{a / b:.2f}x"


def case_table(sc: Scenario, runs: list[Run]) -> list[str]:
    rows = [
        "| server | req/s | p99 ms | CPU µs/req | RSS MiB/worker | PSS MiB/worker | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    by_id: dict[str, Run] = {}
    for r in runs:
        by_id[r.server] = r
        if r.status != "ok":
            rows.append(f"| {r.label} | — | — | — | — | — | {r.status} (see notes) |")
            continue
        rows.append(
            f"| {r.label} | {r.rps:,.0f} | {num(r.latency_us['p99'] / 1000, 2)} | "
            f"{num(r.cpu_us_per_req, 0)} | {num(mean(r.rss_mib))} | "
            f"{num(mean(r.pss_mib))} | {fmt_errors(r)} |"
        )
    subject = by_id.get(sc.subject)
    if subject is not None and subject.status == "ok":
        for r in runs:
            if r.server == sc.subject or r.status != "ok":
                continue
            rows.append(
                f"| *{subject.label} / {r.label}* | {ratio(subject.rps, r.rps)} | "
                f"{ratio(subject.latency_us['p99'], r.latency_us['p99'])} | "
                f"{ratio(subject.cpu_us_per_req, r.cpu_us_per_req)} | "
                f"{ratio(mean(subject.rss_mib), mean(r.rss_mib))} | "
                f"{ratio(mean(subject.pss_mib), mean(r.pss_mib))} | |"
            )
    return rows


def section(
    sc: Scenario,
    servers: Sequence[Server],
    runs: list[Run],
    meta: dict[str, Any],
    opts: argparse.Namespace,
    json_path: Path,
) -> str:
    m = meta["machine"]
    quick = " (quick run: indicative only)" if opts.quick else ""
    versions = ", ".join(f"{k} {v}" for k, v in sorted(meta["versions"].items()))
    out = [f"## Scenario `{sc.name}`: {sc.title}{quick}", ""]
    out.append(
        f"Measured {meta['date']} on {m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, "
        f"{m['kernel']}, Python {m['python']}, {m['wrk']}. Versions: {versions}. "
        f"1-minute load average before the run: {m['loadavg_1m']}"
        + (" (other work was competing for the CPUs)." if m["loadavg_1m"] >= 0.5 else ".")
    )
    out += [
        "",
        "Command:",
        "",
        "```sh",
        meta["command"],
        "```",
        "",
        f"Each server, started from `benches/` with `benches/` on `PYTHONPATH` "
        f"(`python` is `{sys.executable}`; `PORT` is a free loopback port, `APP` the app "
        f"below):",
        "",
    ]
    cases = list(iter_cases(sc, opts))
    workers = sorted({w for _, _, w in cases})
    conns = sorted({c for _, c, _ in cases})
    values = {
        "python": "python",
        "ferrocorn": opts.ferrocorn,
        "workers": workers[0] if len(workers) == 1 else "W",
        "threads": sc.threads,
        "host": HOST,
        "port": "PORT",
        "app": "APP",
    }
    for s in servers:
        out.append(f"- {s.label}: `{shlex.join(render(s.cmd, **values))}`")
    load = wrk_argv(opts.wrk_threads, 0, opts.duration, f"http://{HOST}:PORT/", "wrk_report.lua")
    load[2] = f"-c{conns[0]}" if len(conns) == 1 else "-cC"
    out += [
        "",
        f"Load: `{shlex.join(load)}` after a {opts.warmup} s warm-up with the same "
        f"settings (not counted); {opts.rounds} round(s), median reported. Raw JSON: "
        f"`{json_path.relative_to(ROOT)}`.",
        "",
    ]
    apps = {a.name: a for a in sc.apps}
    cases: dict[tuple[str, int, int], list[Run]] = {}
    for r in runs:
        cases.setdefault(r.case, []).append(r)
    notes: list[str] = []
    for (app, conns, workers), case_runs in cases.items():
        per_server: dict[str, list[Run]] = {}
        for r in case_runs:
            per_server.setdefault(r.server, []).append(r)
        merged = [median_run(rs) for rs in per_server.values()]
        target = apps[app].target if app in apps else app
        out += [f"### {app} (`{target}`), {conns} connections, {workers} workers", ""]
        out += case_table(sc, merged)
        out.append("")
        for r in merged:
            if r.note:
                notes.append(f"{r.label}, {app}, c={conns}, w={workers}: {r.note}")
    out += [
        "Ratios are ferrocorn / peer: above 1 is better for req/s, below 1 is better for "
        "p99, CPU and memory. Memory is the mean over worker processes after the run.",
        "",
    ]
    if notes or sc.notes or opts.servers:
        out += ["Notes:", ""]
        if opts.servers:
            out.append(f"- Servers restricted with `--servers {opts.servers}`.")
        out += [f"- {n}" for n in (*sc.notes, *notes)]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


DOC_INTRO = """\
# Benchmarks

Generated by `benches/run.py`; each scenario's section below is rewritten in place by the
harness (between its `<!-- bench:NAME:start/end -->` markers), the rest of this file is
kept.

## How to run

```sh
python benches/run.py                      # the sync scenario, 10 s per run
python benches/run.py --quick              # 3 s runs, 1 s warm-up: a smoke test
python benches/run.py --scenarios sync,gthread --rounds 3
python benches/run.py --servers gunicorn   # only some servers
python benches/run.py --list               # the scenario table
```

The harness installs what it needs: the pinned peer servers from
`benches/requirements.txt` (only those the selected scenarios use) with pip, and `wrk`
with apt-get. Raw results (JSON, and each server's log) go to `benches/results/`, which
is not committed.

## What is measured

For every case (app, connections, workers) every server of the scenario is started on a
free loopback port, polled until `GET /` answers (the body length is checked), given time
to spawn its workers, warmed up with wrk, then loaded with wrk. The servers of a case run
back to back, all in the same invocation; then the server's process group gets SIGTERM.

- **req/s** and **p99**: from wrk (`--latency`, exact figures via `benches/wrk_report.lua`).
- **CPU µs/req**: CPU time (user + system) of the server's whole process tree, master and
  workers (from `/proc/PID/stat`, including the time of reaped children), over the run,
  divided by the requests completed.
- **RSS / PSS per worker**: from `/proc/PID/smaps_rollup` of each worker process after the
  run, mean over the workers. PSS shares pages that are shared with the master and the
  other workers, so it is the fairer per-worker cost for forking servers.
- **errors**: wrk's socket errors (connect, read, write, timeout) and HTTP responses ≥ 400.

wrk runs on the same machine as the server and competes with it for the CPUs, so req/s and
latency depend on how the scheduler shares the cores between them; **CPU time per request
is the steadiest figure** and the one to compare first. Treat req/s as relative, within
one table, and rerun with `--rounds 3` before drawing conclusions from small differences.

## Adding a scenario

Scenarios are data: add an entry to `SCENARIOS` in `benches/run.py` with its servers
(an id, a label, a command template with `{python}`, `{ferrocorn}`, `{workers}`,
`{threads}`, `{host}`, `{port}`, `{app}`, and the pinned packages it needs), its apps
(from `benches/apps.py`), connection counts and worker counts. A server whose command is
missing or does not start is skipped, with a note in the table. The scenario's section is
added to this file at the end on its first run.

"""


def write_docs(name: str, body: str) -> None:
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    block = f"{start}\n{body}{end}"
    text = DOCS.read_text() if DOCS.exists() else DOC_INTRO
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(text)


# =========================================================================== main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--scenarios",
        default="sync",
        help=f"comma-separated, from: {', '.join(SCENARIOS)}, or 'all' (default sync)",
    )
    p.add_argument(
        "--servers",
        default="",
        help="comma-separated server ids to run (default: all of the scenario)",
    )
    p.add_argument("--apps", default="", help="comma-separated app names (default: all)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default 2; scenarios may set their own)",
    )
    p.add_argument(
        "--connections",
        default="",
        help="comma-separated wrk connection counts (default: the scenario's)",
    )
    p.add_argument("--quick", action="store_true", help="3 s runs, 1 s warm-up")
    p.add_argument("--duration", type=int, default=None, help="seconds per run (default 10)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up seconds (default 3)")
    p.add_argument(
        "--rounds", type=int, default=1, help="repeat every case; medians are reported (default 1)"
    )
    p.add_argument(
        "--wrk-threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="wrk -t (default: nproc)",
    )
    p.add_argument("--ferrocorn", default="ferrocorn", help="ferrocorn executable")
    p.add_argument("--no-docs", action="store_true", help="don't touch docs/benchmarks.md")
    p.add_argument("--no-install", action="store_true", help="don't pip/apt-get install")
    p.add_argument("--list", action="store_true", help="print the scenario table and exit")
    opts = p.parse_args(argv)
    opts.duration = opts.duration or (3 if opts.quick else 10)
    opts.warmup = opts.warmup if opts.warmup is not None else (1 if opts.quick else 3)
    return opts


def csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def print_table() -> None:
    for sc in SCENARIOS.values():
        print(f"{sc.name}: {sc.title}")
        print(
            f"  apps: {', '.join(f'{a.name}={a.target}' for a in sc.apps)}; "
            f"connections {sc.connections}; workers {sc.workers or 'from --workers'}; "
            f"threads {sc.threads}"
        )
        for s in sc.servers:
            print(f"  {s.id:18} {s.cmd}")


def iter_cases(sc: Scenario, opts: argparse.Namespace) -> Iterator[tuple[App, int, int]]:
    workers = [opts.workers] if opts.workers else list(sc.workers or (2,))
    conns = [int(c) for c in csv(opts.connections)] or list(sc.connections)
    apps = [a for a in sc.apps if not opts.apps or a.name in csv(opts.apps)]
    for w in workers:
        for app in apps:
            for c in conns:
                yield app, c, w


def run_scenario(sc: Scenario, opts: argparse.Namespace) -> None:
    wanted = csv(opts.servers)
    servers = [s for s in sc.servers if not wanted or s.id in wanted]
    if not servers:
        log(f"{sc.name}: no server selected (ids: {', '.join(s.id for s in sc.servers)})")
        return
    unavailable: dict[str, str] = {}
    if not opts.no_install:
        failed = ensure_packages({p for s in servers for p in s.packages})
        for s in servers:
            if bad := [f"{p}: {failed[p]}" for p in s.packages if p in failed]:
                unavailable[s.id] = "; ".join(bad)
    for s in servers:
        exe = shlex.split(s.cmd)[0].format(python=sys.executable, ferrocorn=opts.ferrocorn)
        if shutil.which(exe) is None:
            unavailable[s.id] = f"skipped: `{exe}` not found on PATH"
        elif missing := [p for p in s.packages if installed_version(p) is None]:
            unavailable.setdefault(s.id, f"skipped: {', '.join(missing)} not installed")
    versions = {p: installed_version(p) or "missing" for s in servers for p in s.packages}
    if "ferrocorn" in {s.id for s in servers}:
        fv = installed_version("ferrocorn")
        versions["ferrocorn"] = f"{fv or '?'} (git {git_rev() or '?'})"

    host_info = machine()  # before the runs: the load average is the background load
    runs: list[Run] = []
    cases = list(iter_cases(sc, opts))
    for rnd in range(opts.rounds):
        order = servers if rnd % 2 == 0 else servers[::-1]  # alternate who goes first
        for app, conns, workers in cases:
            for s in order:
                if s.id in unavailable:
                    if rnd == 0:
                        runs.append(
                            Run(
                                sc.name,
                                s.id,
                                s.label,
                                app.name,
                                conns,
                                workers,
                                rnd,
                                [],
                                status="skipped",
                                note=unavailable[s.id],
                            )
                        )
                    continue
                runs.append(measure(sc, s, app, conns, workers, rnd, opts))
    # Keep table rows in scenario order.
    rank = {s.id: i for i, s in enumerate(sc.servers)}
    case_rank = {(a.name, c, w): i for i, (a, c, w) in enumerate(cases)}
    runs.sort(key=lambda r: (case_rank[r.case], rank[r.server], r.round))

    now = dt.datetime.now(dt.UTC)
    meta: dict[str, Any] = {
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python benches/run.py " + shlex.join(sys.argv[1:]),
        "machine": host_info,
        "versions": versions,
        "duration_s": opts.duration,
        "warmup_s": opts.warmup,
        "rounds": opts.rounds,
        "wrk_threads": opts.wrk_threads,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / f"{sc.name}-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    json_path.write_text(
        json.dumps({"scenario": sc.name, "meta": meta, "runs": [asdict(r) for r in runs]}, indent=2)
    )
    log(f"raw results: {json_path}")
    body = section(sc, servers, runs, meta, opts, json_path)
    print(body)
    if not opts.no_docs:
        write_docs(sc.name, body)
        log(f"updated {DOCS.relative_to(ROOT)} (section {sc.name})")


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwind through the finally blocks that stop servers


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.list:
        print_table()
        return 0
    names = list(SCENARIOS) if opts.scenarios == "all" else csv(opts.scenarios)
    if unknown := [n for n in names if n not in SCENARIOS]:
        sys.exit(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    signal.signal(signal.SIGTERM, on_sigterm)
    raise_nofile_limit()
    if not opts.no_install:
        ensure_wrk()
    elif not shutil.which("wrk"):
        sys.exit("wrk is not installed (drop --no-install to apt-get it)")
    try:
        for name in names:
            run_scenario(SCENARIOS[name], opts)
    except KeyboardInterrupt:
        log("interrupted; the server under test was stopped")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
