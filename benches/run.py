#!/usr/bin/env python3
"""Benchmark harness: ferrocorn against its peers (gunicorn, granian, uvicorn, ...).

    python benches/run.py [--quick] [--scenarios sync[,gthread,...]] [--servers gunicorn]

For every case of a scenario (app x connections x workers) each server is started on a
free loopback port, polled until it answers, warmed up, and loaded with ``wrk`` (HTTP apps)
or ``benches/wsload`` (WebSocket echo apps: a small Rust client built here with cargo).
Measured: requests (or echoed messages)/s and latency percentiles (from the load
generator), the server's CPU time per request (utime + stime of the whole process tree,
from /proc/PID/stat, before/after the run), memory per worker (RSS and PSS from
/proc/PID/smaps_rollup after the run) and the load generator's errors.  A scenario may
state targets (ferrocorn at least N times the best of some peers); its section says
whether each is met.  Results go to docs/benchmarks.md (one marked section per scenario)
and raw JSON to benches/results/.

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
WSLOAD_MANIFEST = BENCHES / "wsload" / "Cargo.toml"
WSLOAD_BIN = BENCHES / "wsload" / "target" / "release" / "wsload"
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
    kind: str = "http"  # "http": loaded with wrk; "ws": WebSocket echo, loaded with wsload
    # Milliseconds the app itself takes per request (sleep 20ms: 20). When the warm-up's
    # load generator stops, its last requests are still queued in the server, which
    # serves them for nobody: up to connections x service time / (workers x threads),
    # 0.64 s at 512 connections and 2 workers x 8 threads. The measured run starts only
    # after that (see `settle_seconds`); otherwise its first requests wait behind the
    # leftovers and the p99 measures the warm-up, not the server (gthread scenario, 2
    # workers, 512 connections: 947 ms for ferrocorn and 940 ms for Granian before this
    # wait, 670 and 672 ms with it).
    service_ms: float = 0.0


@dataclass(frozen=True)
class Server:
    id: str  # what --servers matches
    label: str  # row label in tables
    # Command template, split like a shell would, then each word is str.format()ted with
    # {python} {ferrocorn} {workers} {threads} {host} {port} {app}.
    cmd: str
    packages: tuple[str, ...] = ()  # names from benches/requirements.txt it needs


@dataclass(frozen=True)
class Target:
    """The subject's req/s (msg/s) on ``app`` must be at least ``factor`` times the best of
    ``peers`` (server ids), in every case (connections, workers) of the run."""

    app: str  # App.name
    peers: tuple[str, ...]
    factor: float
    text: str  # as the issue states it


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
    targets: tuple[Target, ...] = ()


HELLO = App("hello", "apps:hello", 13)
BIG = App("64KiB", "apps:big", 64 * KIB)
SLEEP = App("sleep 20ms", "apps:sleep", 13, service_ms=20)
HELLO_ASGI = App("hello", "apps:hello_asgi", 13)
BIG_ASGI = App("64KiB", "apps:big_asgi", 64 * KIB)
SLEEP_ASGI = App("sleep 20ms", "apps:sleep_asgi", 13, service_ms=20)
WS_ECHO = App("ws echo", "apps:ws_echo_asgi", 13, kind="ws")

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
            targets=(
                Target("hello", ("granian",), 1.2, "hello world ≥ 1.2x Granian's requests/s"),
                Target(
                    "hello", ("gunicorn",), 6.0, "hello world ≥ 6x gunicorn gthread's requests/s"
                ),
            ),
        ),
        Scenario(
            name="asgi",
            title="ASGI: ferrocorn vs uvicorn, gunicorn+uvicorn-worker, gunicorn asgi, granian",
            servers=(
                Server(
                    "ferrocorn",
                    "ferrocorn asgi",
                    f"{FERROCORN} -k asgi --asgi-loop uvloop {{app}}",
                    ("uvloop",),
                ),
                Server(
                    "uvicorn",
                    "uvicorn",
                    f"{UVICORN} --log-level warning --http httptools --loop uvloop "
                    "--ws websockets-sansio {app}",
                    ("uvicorn", "httptools", "uvloop", "websockets"),
                ),
                Server(
                    "gunicorn-uvicorn",
                    "gunicorn + UvicornWorker",
                    f"{GUNICORN} -k uvicorn_worker.UvicornWorker {{app}}",
                    ("gunicorn", "uvicorn", "uvicorn-worker", "httptools", "uvloop", "websockets"),
                ),
                Server(
                    "gunicorn-asgi",
                    "gunicorn asgi",
                    f"{GUNICORN} -k asgi --http-parser fast --asgi-loop uvloop {{app}}",
                    ("gunicorn", "gunicorn_h1c", "uvloop"),
                ),
                Server(
                    "granian",
                    "granian asgi",
                    f"{GRANIAN} --interface asgi --loop uvloop {{app}}",
                    ("granian", "uvloop"),
                ),
            ),
            apps=(HELLO_ASGI, BIG_ASGI, SLEEP_ASGI, WS_ECHO),
            connections=(64, 512),
            workers=(2, 5),
            targets=(
                Target("hello", ("uvicorn",), 2.0, "hello world ≥ 2x uvicorn's requests/s"),
                Target(
                    "hello",
                    ("granian", "gunicorn-asgi"),
                    1.3,
                    "hello world ≥ 1.3x the best of Granian and gunicorn `-k asgi` "
                    "(C parser, `--http-parser fast`)",
                ),
                Target("ws echo", ("uvicorn",), 1.5, "WebSocket echo ≥ 1.5x uvicorn's messages/s"),
            ),
            notes=(
                "Every server runs its event loop on uvloop: `--asgi-loop uvloop`, "
                "`--loop uvloop`; gunicorn + UvicornWorker cannot be given uvicorn's options "
                "on the command line and takes uvicorn's automatic choices, which are the "
                "same here (httptools, uvloop, websockets-sansio, all installed).",
                "uvicorn is given `--http httptools --loop uvloop --ws websockets-sansio` "
                "explicitly (`--ws auto` picks websockets-sansio when websockets is "
                "installed). Without httptools (h11 and asyncio) uvicorn --workers 2 had a "
                "44 ms median latency floor at about 1,350 req/s on hello; with httptools "
                "it has none.",
                "gunicorn `-k asgi --http-parser fast` refuses every connection unless "
                "gunicorn_h1c imports, so its answers show that the C parser is in use. "
                "gunicorn 27.0.1's `fast` extra asks for gunicorn_h1c >= 0.6.14; the "
                "newest on the package index this was set up with is 0.6.10 (pinned), "
                "which gunicorn accepts (it needs >= 0.4.1, and 0.6.9 for h2c upgrade, "
                "not used here).",
                "WebSocket echo (`ws echo`): every connection sends a binary message and "
                "waits for its echo before sending the next (ping-pong; `-w` of the wsload "
                "line above keeps more in flight); msg/s counts the echoes received in the "
                "run, CPU µs/msg is the server's CPU time per echoed message. Granian's "
                "WebSockets are on by default (`--ws`).",
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


def ferrocorn_version(exe: str) -> str | None:
    """The version the benchmarked executable reports (an editable checkout has no
    package metadata)."""
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"version ([^)\s]+)", out.stdout)
    return m.group(1) if m else None


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


def run_client(argv: list[str], seconds: int) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run a load generator; return it and the CPU seconds it used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=seconds + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return p, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run_wrk(threads: int, conns: int, seconds: int, url: str) -> tuple[dict[str, Any], float]:
    """Run wrk; return its WRK_JSON report and the CPU seconds wrk itself used."""
    p, cpu = run_client(wrk_argv(threads, conns, seconds, url), seconds)
    for line in p.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            report: dict[str, Any] = json.loads(line[len("WRK_JSON ") :])
            report["stdout"] = p.stdout
            return report, cpu
    raise RuntimeError(f"wrk failed ({p.returncode}): {p.stderr.strip() or p.stdout.strip()}")


def wsload_argv(
    threads: int, conns: int, seconds: int, url: str, size: int, window: int, exe: str = ""
) -> list[str]:
    return [
        exe or str(WSLOAD_BIN),
        "--url",
        url,
        "-c",
        str(conns),
        "-d",
        str(seconds),
        "-s",
        str(size),
        "-w",
        str(window),
        "-t",
        str(threads),
    ]


def build_wsload() -> str:
    """Build benches/wsload (cargo keeps it in benches/wsload/target, so this is quick
    after the first time).  Returns why WebSocket cases cannot run, or ""."""
    cargo = shutil.which("cargo")
    if cargo is None:
        return (
            "n/a: cargo is not on PATH, and the WebSocket load generator (benches/wsload) is Rust"
        )
    log(f"cargo build --release --manifest-path {WSLOAD_MANIFEST.relative_to(ROOT)}")
    p = subprocess.run(
        [cargo, "build", "--release", "--quiet", "--manifest-path", str(WSLOAD_MANIFEST)],
        check=False,
    )
    if p.returncode != 0 or not WSLOAD_BIN.exists():
        return f"n/a: building benches/wsload failed (cargo exited {p.returncode})"
    return ""


def run_wsload(argv: list[str], seconds: int) -> tuple[dict[str, Any], float]:
    """Run wsload; return its JSON report and the CPU seconds it used."""
    p, cpu = run_client(argv, seconds)
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines or not lines[-1].startswith("{"):
        raise RuntimeError(
            f"wsload failed ({p.returncode}): {p.stderr.strip() or p.stdout.strip()}"
        )
    report: dict[str, Any] = json.loads(lines[-1])
    return report, cpu


def log_tail(path: Path, lines: int = 3) -> str:
    with contextlib.suppress(OSError):
        tail = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        return " / ".join(tail[-lines:])
    return ""


def settle_seconds(app: App, conns: int, workers: int, threads: int) -> float:
    """How long to wait after the warm-up for the server to finish the requests the
    warm-up left queued, counted as if each worker ran `threads` at a time (an async
    server runs them all at once and is done sooner)."""
    if app.service_ms <= 0:
        return 0.0
    queued = conns * app.service_ms / 1000 / (workers * max(threads, 1))
    return min(queued + 0.5, 10.0)


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
                    # Its own process group (for killpg) but not its own session: with
                    # the kernel's autogroup scheduling (sched_autogroup_enabled=1 here)
                    # a new session is a new scheduling group, and CFS would then split
                    # the CPUs evenly between the server's group and the load
                    # generator's, capping any server at half the machine whatever it
                    # could use. Measured: ferrocorn asgi WebSocket echo, 2 workers,
                    # 46-76k msg/s with setsid against 89-100k without.
                    process_group=0,
                )
            except OSError as e:
                raise StartError(str(e)) from e
        status, length = wait_ready(proc, port)
        notes = []
        if status != 200 or length != app.body_len:
            notes.append(f"GET / gave {status} with {length} bytes (want 200, {app.body_len})")
        if (n := wait_workers(proc.pid, workers)) != workers:
            notes.append(f"{n} worker processes seen (asked {workers})")

        def load(seconds: int) -> tuple[dict[str, Any], float]:
            if app.kind != "ws":
                return run_wrk(opts.wrk_threads, conns, seconds, url)
            ws_url = f"ws://{HOST}:{port}/"
            argv = wsload_argv(
                opts.wrk_threads, conns, seconds, ws_url, opts.ws_size, opts.ws_window
            )
            return run_wsload(argv, seconds)

        if opts.warmup > 0:
            load(opts.warmup)
            time.sleep(settle_seconds(app, conns, workers, sc.threads))
        before = cpu_ticks(proc.pid)
        report, run.wrk_cpu_s = load(opts.duration)
        after = cpu_ticks(proc.pid)
        if proc.poll() is not None:
            notes.append(f"server exited ({proc.returncode}) during the run")
        if report.get("first_error"):
            notes.append(f"first wsload error: {report['first_error']}")
        if not report["requests"]:
            raise RuntimeError("; ".join(notes) or "no request completed")
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
        unit = "msg" if app.kind == "ws" else "req"
        log(
            f"  {run.rps:,.0f} {unit}/s, p99 {run.latency_us['p99'] / 1000:.2f} ms, "
            f"{run.cpu_us_per_req:.0f} CPU µs/{unit}, {total_errors(run)} errors"
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
    if e.get("mismatch"):
        parts.append(f"wrong echo {e['mismatch']}")
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


def case_table(sc: Scenario, runs: list[Run], kind: str = "http") -> list[str]:
    unit = "msg" if kind == "ws" else "req"
    rows = [
        f"| server | {unit}/s | p99 ms | CPU µs/{unit} | RSS MiB/worker | PSS MiB/worker "
        "| errors |",
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


def targets_table(
    sc: Scenario, merged_cases: dict[tuple[str, int, int], dict[str, Run]]
) -> list[str]:
    """One row per target and case: the subject's rate against the best of the target's
    peers in the same case, the ratio, and whether the target is met."""
    if not sc.targets:
        return []
    labels = {s.id: s.label for s in sc.servers}
    kinds = {a.name: a.kind for a in sc.apps}
    rows = [
        "### Targets",
        "",
        "From this run only: each case's ferrocorn figure against the best of the named "
        "peers in the same case, with the server CPU time per request beside it.",
        "",
        "| target | case | ferrocorn | best peer | ratio | met |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    met = total = unknown = 0
    for t in sc.targets:
        unit = "msg" if kinds.get(t.app) == "ws" else "req"
        for (app, c, w), by_server in merged_cases.items():
            if app != t.app:
                continue
            case = f"{app}, c={c}, w={w}"
            subject = by_server.get(sc.subject)
            peers = [r for p in t.peers if (r := by_server.get(p)) is not None]
            ok_peers = [r for r in peers if r.status == "ok" and r.rps > 0]
            if subject is None or subject.status != "ok" or not ok_peers:
                unknown += 1
                if subject is None or subject.status != "ok":
                    why = f"{sc.subject} {subject.status if subject else 'not run'}"
                else:
                    why = f"{' and '.join(t.peers)} not measured"
                rows.append(f"| {t.text} | {case} | — | — | — | n/a ({why}, see notes) |")
                continue
            total += 1
            best = max(ok_peers, key=lambda r: r.rps)
            r_value = subject.rps / best.rps
            ok = r_value >= t.factor
            met += ok
            rows.append(
                f"| {t.text} | {case} | {subject.rps:,.0f} {unit}/s "
                f"({num(subject.cpu_us_per_req, 0)} µs/{unit}) | "
                f"{labels.get(best.server, best.label)} {best.rps:,.0f} {unit}/s "
                f"({num(best.cpu_us_per_req, 0)} µs/{unit})"
                f" | {r_value:.2f}x (≥ {t.factor:g}x) | {'yes' if ok else '**no**'} |"
            )
    rows += [
        "",
        f"Targets met in {met} of {total} measured cases"
        + (f" ({unknown} could not be judged)." if unknown else "."),
        "",
    ]
    return rows


def section_head(
    name: str, title: str, meta: dict[str, Any], quick: bool, software: str, busy: str
) -> list[str]:
    """The opening lines of a docs/benchmarks.md section (``sweep.py``'s too): its title,
    the machine and ``software`` measured with, the load average before the run (with
    ``busy`` when it shows other work competing for the CPUs) and the command."""
    m = meta["machine"]
    return [
        f"## Scenario `{name}`: {title}" + (" (quick run: indicative only)" if quick else ""),
        "",
        f"Measured {meta['date']} on {m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, "
        f"{m['kernel']}, Python {m['python']}, {m['wrk']}{software}. "
        f"1-minute load average before the run: {m['loadavg_1m']}"
        + (f" ({busy})." if m["loadavg_1m"] >= 0.5 else "."),
        "",
        "Command:",
        "",
        "```sh",
        meta["command"],
        "```",
        "",
    ]


def section(
    sc: Scenario,
    servers: Sequence[Server],
    runs: list[Run],
    meta: dict[str, Any],
    opts: argparse.Namespace,
    json_path: Path,
) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in sorted(meta["versions"].items()))
    out = section_head(
        sc.name,
        sc.title,
        meta,
        opts.quick,
        f". Versions: {versions}",
        "other work was competing for the CPUs",
    )
    out += [
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
    kinds = {a.kind for a, _, _ in cases}
    c_word = f"{conns[0]}" if len(conns) == 1 else "C"
    loads = []
    if "http" in kinds:
        load = wrk_argv(
            opts.wrk_threads, 0, opts.duration, f"http://{HOST}:PORT/", "wrk_report.lua"
        )
        load[2] = f"-c{c_word}"
        loads.append(f"`{shlex.join(load)}`")
    if "ws" in kinds:
        ws = wsload_argv(
            opts.wrk_threads,
            0,
            opts.duration,
            f"ws://{HOST}:PORT/",
            opts.ws_size,
            opts.ws_window,
            str(WSLOAD_BIN.relative_to(ROOT)),
        )
        ws[4] = c_word
        loads.append(
            f"`{shlex.join(ws)}` for WebSocket echo (built with `cargo build --release "
            f"--manifest-path {WSLOAD_MANIFEST.relative_to(ROOT)}`)"
        )
    out += [
        "",
        f"Load: {' and '.join(loads)}, after a {opts.warmup} s warm-up with the same "
        f"settings (not counted); {opts.rounds} round(s), median reported. Raw JSON: "
        f"`{json_path.relative_to(ROOT)}`.",
        "",
    ]
    settled = sorted({(a.name, a.service_ms) for a, _, _ in cases if a.service_ms > 0})
    for name, ms in settled:
        out += [
            f"The {name} cases wait after the warm-up until the server has served what "
            f"the warm-up left queued (connections x {ms:g} ms / (workers x threads) "
            "+ 0.5 s), "
            "so the measured run starts on empty queues (`settle_seconds` in "
            "benches/run.py).",
            "",
        ]
    apps = {a.name: a for a in sc.apps}
    by_case: dict[tuple[str, int, int], list[Run]] = {}
    for r in runs:
        by_case.setdefault(r.case, []).append(r)
    notes: list[str] = []
    tables: list[str] = []
    merged_cases: dict[tuple[str, int, int], dict[str, Run]] = {}
    for (app, c, w), case_runs in by_case.items():
        per_server: dict[str, list[Run]] = {}
        for r in case_runs:
            per_server.setdefault(r.server, []).append(r)
        merged = [median_run(rs) for rs in per_server.values()]
        merged_cases[(app, c, w)] = {r.server: r for r in merged}
        target = apps[app].target if app in apps else app
        tables += [f"### {app} (`{target}`), {c} connections, {w} workers", ""]
        tables += case_table(sc, merged, apps[app].kind if app in apps else "http")
        tables.append("")
        for r in merged:
            if r.note:
                notes.append(f"{r.label}, {app}, c={c}, w={w}: {r.note}")
    out += targets_table(sc, merged_cases)
    out += tables
    out += [
        "Ratios are ferrocorn / peer: above 1 is better for req/s (msg/s), below 1 is "
        "better for p99, CPU and memory. Memory is the mean over worker processes after "
        "the run.",
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
python benches/run.py --scenarios asgi --apps "ws echo" --ws-window 8   # 8 in flight
python benches/run.py --list               # the scenario table
```

The harness installs what it needs: the pinned peer servers from
`benches/requirements.txt` (only those the selected scenarios use) with pip, and `wrk`
with apt-get; for WebSocket cases it builds `benches/wsload` with cargo. Raw results
(JSON, and each server's log) go to `benches/results/`, which is not committed.

## What is measured

For every case (app, connections, workers) every server of the scenario is started on a
free loopback port, polled until `GET /` answers (the body length is checked), given time
to spawn its workers, warmed up, then loaded with wrk (HTTP apps) or `benches/wsload`
(WebSocket echo). The servers of a case run back to back, all in the same invocation; then
the server's process group gets SIGTERM.

- **req/s** and **p99**: from wrk (`--latency`, exact figures via `benches/wrk_report.lua`).
- **msg/s** and **p99** (WebSocket echo): from `benches/wsload`, a small Rust client
  (tokio and tokio-tungstenite, its own Cargo project, built into `benches/wsload/target`).
  It opens C connections; once all are open, each sends a binary message of `--ws-size`
  bytes (64) and waits for the echo before sending the next (`--ws-window N` keeps N in
  flight). Every echo is checked against what was sent; msg/s counts the echoes received
  within the run, p99 is send-to-echo. **CPU µs/msg** is the server's CPU time per echo.
- **CPU µs/req**: CPU time (user + system) of the server's whole process tree, master and
  workers (from `/proc/PID/stat`, including the time of reaped children), over the run,
  divided by the requests completed.
- **RSS / PSS per worker**: from `/proc/PID/smaps_rollup` of each worker process after the
  run, mean over the workers. PSS shares pages that are shared with the master and the
  other workers, so it is the fairer per-worker cost for forking servers.
- **errors**: wrk's socket errors (connect, read, write, timeout) and HTTP responses ≥ 400;
  wsload's connect (TCP or handshake), read, write and timeout errors and wrong echoes.
- **Targets**: a scenario may list the targets of its issue (ferrocorn at least N times
  the best of some peers); its section then opens with a table giving, for every case,
  the ratio computed from that run and whether the target is met.

The load generator runs on the same machine as the server and competes with it for the
CPUs, so req/s and latency depend on how the scheduler shares the cores between them;
**CPU time per request is the steadiest figure** and the one to compare first. Treat req/s
as relative, within one table, and rerun with `--rounds 3` before drawing conclusions from
small differences.

Every server runs in a process group of its own (so that SIGTERM reaches all its
processes) but in the harness's session, like the load generator. This matters on Linux
with autogroup scheduling (`/proc/sys/kernel/sched_autogroup_enabled` = 1, as here): a
new session is a new scheduling group, and CFS shares the CPUs evenly between groups, so
a server started with `setsid` was held to one of the two cores while the load generator
held the other, whatever the server could have used. Until 2026-11-26 the harness did
that; the sections measured before then undercount every multi-threaded server
(ferrocorn's I/O thread plus Python, Granian), and their ratios against single-threaded
peers were lower than the servers' real difference: ferrocorn asgi WebSocket echo at 2
workers measured 46-76k msg/s in its own session and 89-100k in the shared one.

## Adding a scenario

Scenarios are data: add an entry to `SCENARIOS` in `benches/run.py` with its servers
(an id, a label, a command template with `{python}`, `{ferrocorn}`, `{workers}`,
`{threads}`, `{host}`, `{port}`, `{app}`, and the pinned packages it needs), its apps
(from `benches/apps.py`; `kind="ws"` for a WebSocket echo app, loaded with wsload),
connection counts, worker counts and, optionally, targets. A server whose command is
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
    p.add_argument(
        "--ws-size", type=int, default=64, help="WebSocket echo message bytes (default 64)"
    )
    p.add_argument(
        "--ws-window",
        type=int,
        default=1,
        help="WebSocket echo messages in flight per connection (default 1: ping-pong)",
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
        fv = installed_version("ferrocorn") or ferrocorn_version(opts.ferrocorn)
        versions["ferrocorn"] = f"{fv or '?'} (git {git_rev() or '?'})"

    cases = list(iter_cases(sc, opts))
    no_ws = build_wsload() if any(a.kind == "ws" for a, _, _ in cases) else ""
    if no_ws:
        log(f"WebSocket cases: {no_ws}")
    host_info = machine()  # before the runs: the load average is the background load
    runs: list[Run] = []
    for rnd in range(opts.rounds):
        order = servers if rnd % 2 == 0 else servers[::-1]  # alternate who goes first
        for app, conns, workers in cases:
            for s in order:
                why = unavailable.get(s.id) or (no_ws if app.kind == "ws" else "")
                if why:
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
                                status="n/a" if why.startswith("n/a") else "skipped",
                                note=why,
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
        "ws_size": opts.ws_size,
        "ws_window": opts.ws_window,
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
