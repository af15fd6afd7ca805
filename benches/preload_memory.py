#!/usr/bin/env python3
"""Memory per worker with and without ``--preload``: the Django project, 5 workers.

    python benches/preload_memory.py [--servers ferrocorn,gunicorn] [--workers 5]
                                     [--rounds 3] [--no-write]

For each server and mode (without / with ``--preload``) the Django project in
tests/apps/djangoproject (``config.wsgi:application``) is started on a free loopback port,
polled until ``GET /`` answers, then loaded with concurrent requests until every worker has
served some (each worker's CPU time has moved) and at least ``--requests`` were made.
Then, for every worker, ``/proc/PID/smaps_rollup`` gives Pss, Rss, Shared_Clean +
Shared_Dirty and Private_Clean + Private_Dirty; the table shows their means over the
workers, plus the master's PSS and the total PSS of the whole tree (master + workers).
With ``--rounds N`` each figure is the median over N fresh starts.

The table is printed and written to docs/benchmarks.md between
``<!-- bench:preload:start -->`` and ``<!-- bench:preload:end -->`` (the rest of that file
is left as it is; the section is appended at the end if the markers are missing).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import importlib.metadata
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "tests" / "apps" / "djangoproject"
APP = "config.wsgi:application"
DOCS = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- bench:preload:start -->", "<!-- bench:preload:end -->"
HOST = "127.0.0.1"
KIB_PER_MIB = 1024

# Run through the interpreter: independent of PATH and of console-script shims.
SERVERS = {
    "ferrocorn": [sys.executable, "-m", "ferrocorn"],
    "gunicorn": [sys.executable, "-m", "gunicorn"],
}
SCRUB_ENV = ("WEB_CONCURRENCY", "GUNICORN_CMD_ARGS", "FERROCORN_CMD_ARGS", "PORT",
             "LISTEN_FDS", "LISTEN_PID", "NOTIFY_SOCKET")
FIELDS = ("Rss", "Pss", "Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty")


def smaps_rollup(pid: int) -> dict[str, int]:
    """The kB figures of /proc/PID/smaps_rollup."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            m = re.match(r"^(\w+):\s+(\d+) kB", line)
            if m and m.group(1) in FIELDS:
                out[m.group(1)] = int(m.group(2))
    return out


def children(pid: int) -> list[int]:
    """Live (non-zombie) direct children of ``pid``."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids = [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []
    return [p for p in pids if _state(p) not in ("Z", None)]


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return None


def cpu_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except (FileNotFoundError, IndexError):
        return -1


def get(port: int, path: str = "/") -> int:
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


class Run:
    """One server process tree: start, wait, warm, measure, stop."""

    def __init__(self, server: str, preload: bool, workers: int, logdir: Path) -> None:
        self.server, self.preload, self.workers = server, preload, workers
        self.log_path = logdir / f"{server}-{'preload' if preload else 'plain'}.log"
        cmd = [*SERVERS[server], "-b", f"{HOST}:0", "--workers", str(workers),
               "--chdir", str(PROJECT), "--error-logfile", "-"]
        if preload:
            cmd.append("--preload")
        cmd.append(APP)
        env = {k: v for k, v in os.environ.items() if k not in SCRUB_ENV}
        env["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="fcbench")  # gunicorn's ctl socket
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=PROJECT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=self._log,
                                     start_new_session=True)
        self.port = 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> list[int]:
        deadline = time.monotonic() + timeout
        while not self.port:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.server} exited:\n{self.log()[-3000:]}")
            m = re.search(r"Listening at: http://[^:]+:(\d+)", self.log())
            if m:
                self.port = int(m.group(1))
            elif time.monotonic() > deadline:
                raise RuntimeError(f"{self.server} did not listen:\n{self.log()[-3000:]}")
            time.sleep(0.05)
        while True:
            pids = children(self.proc.pid)
            status = None
            with contextlib.suppress(OSError):
                status = get(self.port)
            if status == 200 and len(pids) == self.workers:
                return pids
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.server}: {len(pids)} workers, status {status}:\n"
                                   f"{self.log()[-3000:]}")
            time.sleep(0.1)

    def warm(self, pids: list[int], minimum: int, limit: int = 3000) -> int:
        """Concurrent GET / until every worker's CPU time moved and ``minimum`` were made."""
        before = {p: cpu_ticks(p) for p in pids}
        lock = threading.Lock()
        made = [0]
        errors: list[str] = []

        def enough() -> bool:
            return made[0] >= minimum and all(cpu_ticks(p) > before[p] for p in pids)

        def client() -> None:
            while True:
                with lock:
                    if made[0] >= limit or (made[0] % 10 == 0 and enough()):
                        return
                    made[0] += 1
                try:
                    status = get(self.port)
                    if status != 200:
                        errors.append(f"status {status}")
                except OSError as e:
                    errors.append(repr(e))

        threads = [threading.Thread(target=client) for _ in range(2 * self.workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise RuntimeError(f"{len(errors)} failed requests: {errors[:3]}")
        return made[0]

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()


def measure(server: str, preload: bool, workers: int, minimum: int, logdir: Path) -> dict:
    run = Run(server, preload, workers, logdir)
    try:
        pids = run.wait_ready()
        requests = run.warm(pids, minimum)
        time.sleep(0.5)  # let the last responses finish before reading the maps
        per_worker = [smaps_rollup(p) for p in pids]
        master = smaps_rollup(run.proc.pid)
    finally:
        run.stop()

    def mean(key) -> float:
        return statistics.fmean(key(m) for m in per_worker)

    return {
        "pss": mean(lambda m: m["Pss"]),
        "rss": mean(lambda m: m["Rss"]),
        "shared": mean(lambda m: m["Shared_Clean"] + m["Shared_Dirty"]),
        "private": mean(lambda m: m["Private_Clean"] + m["Private_Dirty"]),
        "master_pss": master["Pss"],
        "total_pss": master["Pss"] + sum(m["Pss"] for m in per_worker),
        "requests": requests,
    }


def median_of(rounds: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def render(rows: list[tuple[str, bool, dict]], args: argparse.Namespace, notes: list[str]) -> str:
    mib = KIB_PER_MIB

    def f(kb: float) -> str:
        return f"{kb / mib:.1f}"

    lines = [
        f"## Preload: memory per worker (Django, {args.workers} workers)",
        "",
        f"Generated by `benches/preload_memory.py` on {dt.date.today().isoformat()}: "
        f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, Django {version('django')}, "
        f"ferrocorn {version('ferrocorn')}, gunicorn {version('gunicorn')}; "
        f"median of {args.rounds} run(s). Rerun with "
        f"`python benches/preload_memory.py --rounds 3`.",
        "",
        "The Django project in tests/apps/djangoproject (`config.wsgi:application`, the "
        "welcome page), started without and with `--preload`; each worker served requests "
        "(its CPU time moved) before its `/proc/PID/smaps_rollup` was read. Per-worker "
        "figures are means over the workers, in MiB. **PSS** charges each shared page to its "
        "sharers in equal parts, so it is the fair cost of one worker; **shared** is "
        "Shared_Clean + Shared_Dirty (pages mapped by more than one process), **private** "
        "is Private_Clean + Private_Dirty. **Tree PSS** is the master plus all workers.",
        "",
        "| server | --preload | PSS / worker | shared / worker | private / worker "
        "| RSS / worker | master PSS | tree PSS | requests |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for server, preload, r in rows:
        lines.append(
            f"| {server} | {'yes' if preload else 'no'} | {f(r['pss'])} | {f(r['shared'])} "
            f"| {f(r['private'])} | {f(r['rss'])} | {f(r['master_pss'])} "
            f"| {f(r['total_pss'])} | {r['requests']:.0f} |"
        )
    lines.append("")
    by_server: dict[str, dict[bool, dict]] = {}
    for server, preload, r in rows:
        by_server.setdefault(server, {})[preload] = r
    for server, modes in by_server.items():
        if True in modes and False in modes:
            plain, pre = modes[False], modes[True]
            lines.append(
                f"- {server}: with `--preload` each worker shares "
                f"{f(pre['shared'] - plain['shared'])} MiB more, and the tree's PSS goes from "
                f"{f(plain['total_pss'])} to {f(pre['total_pss'])} MiB "
                f"({100 * (pre['total_pss'] - plain['total_pss']) / plain['total_pss']:+.0f} %)."
            )
    lines.extend(f"- {n}" for n in notes)
    lines += [
        "",
        "With `--preload` the master imports the application (here Django's settings, "
        "apps and models) before forking, so those pages are shared copy-on-write; "
        "ferrocorn also calls `gc.freeze()` before forking so the collector's passes in a "
        "worker do not write to (and so copy) the objects inherited from the master. "
        "What a worker imports or builds on its first requests (URL resolver, templates) "
        "stays private either way. tests/test_arbiter.py::"
        "test_preload_workers_share_more_memory asserts the relation (more shared memory "
        "and a lower PSS per worker with `--preload`), not these numbers.",
        "",
    ]
    return "\n".join(lines)


def write_section(body: str) -> None:
    block = f"{START}\n{body}{END}"
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    if START in text and END in text:
        before, rest = text.split(START, 1)
        text = before + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOCS.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", default="ferrocorn,gunicorn",
                   help="comma-separated, from: " + ", ".join(SERVERS))
    p.add_argument("--workers", type=int, default=5)
    p.add_argument("--requests", type=int, default=50,
                   help="at least this many requests before measuring (default 50)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    if not os.path.exists("/proc/self/smaps_rollup"):
        print("needs /proc/PID/smaps_rollup (Linux 4.14+)", file=sys.stderr)
        return 2
    logdir = Path(tempfile.mkdtemp(prefix="preload-bench-"))
    rows: list[tuple[str, bool, dict]] = []
    notes: list[str] = []
    for server in [s.strip() for s in args.servers.split(",") if s.strip()]:
        if server not in SERVERS:
            p.error(f"unknown server {server!r}")
        for preload in (False, True):
            try:
                rounds = [measure(server, preload, args.workers, args.requests, logdir)
                          for _ in range(args.rounds)]
            except (RuntimeError, OSError) as e:
                first = str(e).splitlines()[0]
                notes.append(f"{server} {'with' if preload else 'without'} --preload: "
                             f"skipped ({first})")
                print(f"{server} preload={preload}: {e}", file=sys.stderr)
                continue
            rows.append((server, preload, median_of(rounds)))
            print(f"{server:10} preload={'yes' if preload else 'no '} " + " ".join(
                f"{k}={v / KIB_PER_MIB:.1f}MiB" for k, v in rows[-1][2].items()
                if k != "requests"), flush=True)
    body = render(rows, args, notes)
    print()
    print(body)
    if not args.no_write:
        write_section(body)
        print(f"written to {DOCS.relative_to(ROOT)} (logs in {logdir})")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
