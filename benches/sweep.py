#!/usr/bin/env python3
"""Validation of ``ferrocorn advise`` by brute force.

    python benches/sweep.py [--quick] [--apps cpu_bound,io_bound,mixed] [--connections 256]

For each test app of ``benches/apps.py`` (``cpu_bound``: ~3 ms of Python per request;
``io_bound``: a 30 ms sleep; ``mixed``: ~1.5 ms of Python and a 3 ms sleep):

1. ``ferrocorn advise apps:APP --json`` (self-driven mode) gives the advised
   configuration and the memory budget;
2. every point of the grid class x workers x threads (sync: threads 1; gthread:
   threads 1..32) whose memory, workers x (USS + (threads - 1) x THREAD_BYTES) as in
   advise, fits the same budget is started and loaded with wrk (``benches/run.py``'s
   ``measure``: same readiness checks, warm-up, CPU and memory readings);
3. the advised configuration is measured the same way; then it and the grid's best
   point are measured again ``--confirm`` times, alternately, and the medians of those
   runs are compared: the advice passes when it reaches at least 90% of the best.

Results go to the ``sweep`` section of docs/benchmarks.md and raw JSON to
benches/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # benches/run.py: the harness whose helpers are reused
from ferrocorn.advise import THREAD_BYTES

PASS_RATIO = 0.9
APPS = {
    "cpu_bound": (bench.App("cpu_bound", "apps:cpu_bound", 13), "~3 ms of Python per request"),
    "io_bound": (bench.App("io_bound", "apps:io_bound", 13), "a 30 ms sleep per request"),
    "mixed": (bench.App("mixed", "apps:mixed", 13), "~1.5 ms of Python and a 3 ms sleep"),
}
WORKERS = (1, 2, 3, 4, 6, 8)
THREADS = (1, 2, 4, 8, 16, 32)
QUICK_WORKERS = (1, 2, 4, 8)
QUICK_THREADS = (1, 4, 16, 32)
BASE = "{ferrocorn} -b {host}:{port} --no-control-socket"


# =========================================================================== advise


def advise(app: bench.App, opts: argparse.Namespace) -> dict[str, Any]:
    argv = [opts.ferrocorn, "advise", app.target, "--json", "--duration", str(opts.advise_s)]
    if opts.memory:
        argv += ["--memory", str(opts.memory)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(bench.BENCHES), os.environ.get("PYTHONPATH")])
        ),
    }
    bench.log(f"{app.name}: {shlex.join(argv)}")
    p = subprocess.run(
        argv, cwd=bench.BENCHES, env=env, capture_output=True, text=True, check=False
    )
    if p.returncode != 0:
        sys.exit(f"ferrocorn advise failed on {app.target}: {p.stderr.strip()}")
    report: dict[str, Any] = json.loads(p.stdout)
    report["command"] = "ferrocorn " + shlex.join(argv[1:])
    bench.log(f"  advised: {' '.join(report['args'])} ({report['profile']['kind']})")
    return report


def memory_of(report: dict[str, Any], workers: int, threads: int) -> int:
    m = report["measured"]
    per = m["worker_uss"] or m["worker_pss"] or m["worker_rss"] or 0
    return workers * (per + (threads - 1) * THREAD_BYTES)


# =========================================================================== measuring


def point_args(klass: str, workers: int, threads: int) -> list[str]:
    return ["-k", klass, "-w", str(workers)] + (
        ["--threads", str(threads)] if klass == "gthread" else []
    )


def cpu_busy(seconds: float = 1.0) -> float:
    """The share of the machine's CPU time that was not idle over ``seconds``."""

    def read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(x) for x in f.readline().split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values) - idle, sum(values)

    busy0, total0 = read()
    time.sleep(seconds)
    busy1, total1 = read()
    return (busy1 - busy0) / max(1, total1 - total0)


def wait_idle(opts: argparse.Namespace) -> float:
    """On a shared machine: wait (at most ``--idle-timeout`` s) until other work uses
    less than ``--idle-below`` of the CPUs, so a point is not measured during someone
    else's burst. Returns the last busy share seen (recorded with the run)."""
    deadline = time.monotonic() + opts.idle_timeout
    busy = cpu_busy()
    waited = False
    while busy > opts.idle_below and time.monotonic() < deadline:
        if not waited:
            bench.log(f"  machine {busy:.0%} busy: waiting for it to calm down")
            waited = True
        busy = cpu_busy(2.0)
    return busy


def measure(
    app: bench.App, args: list[str], workers: int, opts: argparse.Namespace, rnd: int, tag: str
) -> bench.Run:
    busy = wait_idle(opts) if opts.idle_below < 1 else None
    sc = bench.Scenario(name="sweep", title="", servers=(), apps=(app,))
    server = bench.Server(
        id=f"{tag}{'-'.join(a.lstrip('-') for a in args)}",
        label=" ".join(args),
        cmd=f"{BASE} {shlex.join(args)} {{app}}",
    )
    run = bench.measure(sc, server, app, opts.connections, workers, rnd, opts)
    if busy is not None:
        run.note = "; ".join(filter(None, [run.note, f"machine {busy:.0%} busy before"]))
    return run


def value(args: list[str], flag: str, default: int) -> int:
    return int(args[args.index(flag) + 1]) if flag in args else default


def sweep_app(name: str, opts: argparse.Namespace) -> dict[str, Any]:
    app, what = APPS[name]
    report = advise(app, opts)
    budget = report["measured"]["memory_budget"]
    grid: list[dict[str, Any]] = []
    points = [("sync", w, 1) for w in opts.workers] + [
        ("gthread", w, t) for w in opts.workers for t in opts.threads
    ]
    for klass, w, t in points:
        entry = {"class": klass, "workers": w, "threads": t, "memory": memory_of(report, w, t)}
        if entry["memory"] > budget:
            entry.update(status="over budget", rps=None)
        else:
            r = measure(app, point_args(klass, w, t), w, opts, 0, "grid-")
            entry.update(
                status=r.status,
                rps=r.rps if r.status == "ok" else None,
                p99_ms=r.latency_us.get("p99", 0) / 1000,
                run=asdict(r),
            )
        grid.append(entry)
    measured = [e for e in grid if e["rps"]]
    if not measured:
        sys.exit(f"{name}: no grid point could be measured")
    best = max(measured, key=lambda e: e["rps"])
    advised_args = report["args"]
    adv_workers = value(advised_args, "-w", 1)
    best_args = point_args(best["class"], best["workers"], best["threads"])
    advised = [measure(app, advised_args, adv_workers, opts, 0, "advised-")]
    confirm_best: list[bench.Run] = []
    confirm_adv: list[bench.Run] = []
    for rnd in range(1, opts.confirm + 1):
        pair = [("best", best_args, best["workers"]), ("advised", advised_args, adv_workers)]
        for kind, args, w in pair if rnd % 2 else pair[::-1]:
            r = measure(app, args, w, opts, rnd, f"confirm-{kind}-")
            (confirm_best if kind == "best" else confirm_adv).append(r)

    def med(runs: list[bench.Run]) -> float | None:
        ok = [r.rps for r in runs if r.status == "ok"]
        return statistics.median(ok) if ok else None

    adv_rps, best_rps = med(confirm_adv or advised), med(confirm_best) or best["rps"]
    ratio = adv_rps / best_rps if adv_rps and best_rps else None
    bench.log(
        f"{name}: advised {adv_rps or 0:,.0f} req/s, best {best_rps or 0:,.0f} req/s "
        f"({' '.join(best_args)}): {ratio or 0:.2f}"
    )
    return {
        "app": name,
        "target": app.target,
        "what": what,
        "advice": report,
        "budget": budget,
        "grid": grid,
        "best": {**{k: best[k] for k in ("class", "workers", "threads", "rps")}},
        "advised_first_rps": advised[0].rps if advised[0].status == "ok" else None,
        "advised_rps": adv_rps,
        "best_rps": best_rps,
        "confirm_runs": {
            "advised": [r.rps for r in confirm_adv],
            "best": [r.rps for r in confirm_best],
        },
        "ratio": ratio,
        "passed": ratio is not None and ratio >= PASS_RATIO,
        "advised_runs": [asdict(r) for r in advised + confirm_adv],
    }


# =========================================================================== report


def fmt(x: float | None) -> str:
    return bench.num(x, 0)


def app_section(res: dict[str, Any], opts: argparse.Namespace) -> list[str]:
    adv = res["advice"]
    p = adv["profile"]
    m = adv["measured"]
    best = res["best"]
    best_label = " ".join(point_args(best["class"], best["workers"], best["threads"]))
    out = [
        f"### {res['app']} (`{res['target']}`: {res['what']})",
        "",
        f"`{adv['command']}` measured {p['wall_ms']:.2f} ms per request in the app = "
        f"{p['cpu_ms']:.2f} ms CPU + {p['io_ms']:.2f} ms I/O"
        + (f" + {p['cpu_wait_ms']:.2f} ms waiting for a CPU" if p.get("cpu_wait_ms") else "")
        + f" (**{p['kind']}**), a worker {m['worker_uss'] / bench.MIB:.1f} MiB USS, and "
        f"advised **`{' '.join(adv['args'])}`**.",
        "",
        f"req/s by workers (rows) and class/threads (columns); budget "
        f"{res['budget'] / bench.MIB:,.0f} MiB:",
        "",
    ]
    cols = [("sync", 1)] + [("gthread", t) for t in opts.threads]
    out.append(
        "| workers | "
        + " | ".join("sync" if k == "sync" else f"gthread t={t}" for k, t in cols)
        + " |"
    )
    out.append("| ---: | " + " | ".join("---:" for _ in cols) + " |")
    cells = {(e["class"], e["workers"], e["threads"]): e for e in res["grid"]}
    for w in opts.workers:
        row = []
        for k, t in cols:
            e = cells.get((k, w, t))
            if e is None:
                row.append("")
            elif e["rps"] is None:
                row.append(e["status"])
            else:
                mark = (
                    "**" if (k, w, t) == (best["class"], best["workers"], best["threads"]) else ""
                )
                row.append(f"{mark}{fmt(e['rps'])}{mark}")
        out.append(f"| {w} | " + " | ".join(row) + " |")
    confirm = res["confirm_runs"]
    verdict = "passes" if res["passed"] else "**fails**"
    out += [
        "",
        f"Best grid point: `{best_label}`, {fmt(best['rps'])} req/s. Advised "
        f"configuration: {fmt(res['advised_first_rps'])} req/s on its first run. "
        f"Re-measured alternately ({opts.confirm} round(s)): advised "
        f"{', '.join(fmt(x) for x in confirm['advised'])}; best "
        f"{', '.join(fmt(x) for x in confirm['best'])}. Median ratio "
        f"**{res['ratio']:.2f}**: the advice {verdict} (≥ {PASS_RATIO})."
        if res["ratio"] is not None
        else "The ratio could not be computed (a run failed; see the JSON).",
        "",
    ]
    return out


def section(
    results: list[dict[str, Any]], meta: dict[str, Any], opts: argparse.Namespace, json_path: Path
) -> str:
    out = bench.section_head(
        "sweep",
        "does `ferrocorn advise` find the best configuration?",
        meta,
        opts.quick,
        f", ferrocorn git {meta['git']}",
        "other work was competing for the CPUs: expect noise",
    )
    out += [
        "| app | advise says | advised req/s | best of the sweep | best req/s | ratio |",
        "| --- | --- | ---: | --- | ---: | ---: |",
    ]
    for r in results:
        b = r["best"]
        best = " ".join(point_args(b["class"], b["workers"], b["threads"]))
        out.append(
            f"| {r['app']} | `{' '.join(r['advice']['args'])}` ({r['advice']['profile']['kind']}) "
            f"| {fmt(r['advised_rps'])} | `{best}` "
            f"| {fmt(r['best_rps'])} | {'—' if r['ratio'] is None else format(r['ratio'], '.2f')} "
            f"{'✔' if r['passed'] else '✘'} |"
        )
    load = bench.wrk_argv(
        opts.wrk_threads,
        opts.connections,
        opts.duration,
        f"http://{bench.HOST}:PORT/",
        "wrk_report.lua",
    )
    out += [
        "",
        "Each point: `ferrocorn -b 127.0.0.1:PORT --no-control-socket -k CLASS -w W "
        "[--threads T] APP` started from `benches/` (as `benches/run.py` does), loaded with "
        f"`{shlex.join(load)}`"
        + (
            f" after a {opts.warmup} s warm-up"
            if opts.warmup
            else " with no separate warm-up (its wrk would leave up to "
            f"{opts.connections} requests queued in the backlog, which a sync worker then "
            "serves for nothing at the start of the measured run)"
        )
        + ". The ratio compares the "
        f"medians of {opts.confirm} alternate re-run(s) of the advised configuration and of "
        "the grid's best point (the grid's own best figure is biased upwards: it is the "
        "maximum of noisy runs). A point runs only if workers x (USS + (threads - 1) x "
        f"{THREAD_BYTES // 1024} KiB) fits the memory budget advise computed (80% of "
        f"MemAvailable plus the measured workers'). Raw JSON: "
        f"`{json_path.relative_to(bench.ROOT)}`.",
        "",
        "wrk runs on the same machine and competes for its cores, as in the other scenarios; "
        "with 2 CPUs the differences between the top points are within the noise of "
        "single short runs."
        + (
            f" Before each point the harness waited (at most {opts.idle_timeout:g} s) until "
            f"the machine was less than {opts.idle_below:.0%} busy, so that other users' "
            "bursts fall between points rather than in them; the busy share seen is in "
            "each run's note in the JSON."
            if opts.idle_below < 1
            else ""
        ),
        "",
    ]
    for r in results:
        out += app_section(r, opts)
    return "\n".join(out).rstrip() + "\n"


# =========================================================================== main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--apps", default=",".join(APPS), help=f"from: {', '.join(APPS)}")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"workers {QUICK_WORKERS}, threads {QUICK_THREADS}, 1 confirm round",
    )
    p.add_argument("--duration", type=int, default=3, help="seconds per point (default 3)")
    p.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="warm-up seconds (default 0: a separate warm-up wrk leaves its connections "
        "queued in the backlog, and a sync worker then serves them for nothing during the "
        "measured run)",
    )
    p.add_argument(
        "--advise-seconds",
        dest="advise_s",
        type=float,
        default=5.0,
        help="ferrocorn advise --duration (default 5)",
    )
    p.add_argument("--connections", type=int, default=256, help="wrk -c (default 256)")
    p.add_argument("--confirm", type=int, default=None, help="re-run rounds (default 3, quick 1)")
    p.add_argument(
        "--memory",
        type=float,
        default=None,
        metavar="MIB",
        help="memory budget for advise and the grid (default: advise's)",
    )
    p.add_argument(
        "--idle-below",
        type=float,
        default=0.25,
        metavar="SHARE",
        help="before each point, wait until the machine's CPUs are less busy than this "
        "(default 0.25; 1 turns the wait off)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="wait at most this long for the machine to calm down (default 120)",
    )
    p.add_argument("--wrk-threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--ferrocorn", default="ferrocorn", help="ferrocorn executable")
    p.add_argument("--no-docs", action="store_true", help="don't touch docs/benchmarks.md")
    p.add_argument("--no-install", action="store_true", help="don't apt-get install wrk")
    opts = p.parse_args(argv)
    opts.workers = QUICK_WORKERS if opts.quick else WORKERS
    opts.threads = QUICK_THREADS if opts.quick else THREADS
    opts.confirm = opts.confirm if opts.confirm is not None else (1 if opts.quick else 3)
    opts.apps = bench.csv(opts.apps)
    if unknown := [a for a in opts.apps if a not in APPS]:
        p.error(f"unknown app(s) {', '.join(unknown)}; known: {', '.join(APPS)}")
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    bench.raise_nofile_limit()
    if not opts.no_install:
        bench.ensure_wrk()
    host = bench.machine()
    results = []
    try:
        for name in opts.apps:
            results.append(sweep_app(name, opts))
    except KeyboardInterrupt:
        bench.log("interrupted")
        return 130
    now = dt.datetime.now(dt.UTC)
    meta = {
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python benches/sweep.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "machine": host,
        "git": bench.git_rev() or "?",
        "duration_s": opts.duration,
        "connections": opts.connections,
    }
    bench.RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = bench.RESULTS / f"sweep-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    json_path.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    body = section(results, meta, opts, json_path)
    print(body)
    if not opts.no_docs:
        bench.write_docs("sweep", body)
        bench.log(f"updated {bench.DOCS.relative_to(bench.ROOT)} (section sweep)")
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
