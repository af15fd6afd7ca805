"""``ferrocorn stats [--json]`` and ``ferrocorn top``: a running server's statistics,
once or live, like htop.

The server is found, in this order, by ``--control-socket PATH``, by ``--pid PIDFILE``
(the master's control socket, read from /proc; or its ``--stats-bind`` address), by
``--stats-url URL`` (or ``$FERROCORN_STATS_URL``), else at the default control socket
(``$XDG_RUNTIME_DIR/ferrocorn.ctl`` or ``~/.ferrocorn/ferrocorn.ctl``). Both transports
answer with the same snapshot (``Collector.snapshot`` in stats.py, docs/metrics.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import sys
from collections.abc import Iterator
from typing import Any

from ferrocorn import control
from ferrocorn.stats import listen_addresses

NOT_RUNNING = "no ferrocorn server is running"
HOW_TO_FIND = "(start one, or give --control-socket/--pid)"


class NoServer(LookupError):
    """No server where we looked: one line for the user."""


class ControlSource:
    def __init__(self, path: str) -> None:
        self.path = path

    def __str__(self) -> str:
        return f"the control socket {self.path}"

    def fetch(self) -> dict[str, Any]:
        try:
            data = control.request(self.path, "stats")
        except control.ControlError as e:
            text = str(e)
            if text.startswith(("no control socket", "the control socket")):
                raise NoServer(f"{NOT_RUNNING}: {text} {HOW_TO_FIND}") from None
            raise NoServer(text) from None
        if not isinstance(data, dict):
            raise NoServer(f"{self.path} answered something other than a snapshot")
        return data


class HttpSource:
    def __init__(self, url: str) -> None:
        self.url = url if "://" in url else "http://" + url

    def __str__(self) -> str:
        return self.url

    def fetch(self) -> dict[str, Any]:
        from urllib.request import urlopen

        try:
            with urlopen(self.url.rstrip("/") + "/stats", timeout=control.CLIENT_TIMEOUT) as r:
                data = json.loads(r.read())
        except (OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            raise NoServer(f"no ferrocorn stats server at {self.url} ({reason})") from None
        if not isinstance(data, dict):
            raise NoServer(f"{self.url}/stats answered something other than a snapshot")
        return data


Source = ControlSource | HttpSource


def find_source(args: argparse.Namespace) -> Source:
    if args.control_socket:
        return ControlSource(os.path.abspath(args.control_socket))
    if args.pid:
        return source_for_pidfile(args.pid)
    url = args.stats_url or os.environ.get("FERROCORN_STATS_URL", "")
    if url:
        return HttpSource(url)
    return ControlSource(control.default_path())


def source_for_pidfile(pidfile: str) -> Source:
    try:
        with open(pidfile) as f:
            master = int(f.read().strip())
    except (OSError, ValueError) as e:
        raise NoServer(f"cannot read a pid from {pidfile}: {e}") from None
    if not os.path.exists(f"/proc/{master}"):
        raise NoServer(f"{NOT_RUNNING}: no server is running with pid {master} (from {pidfile})")
    path = control.find_socket(master)
    if path:
        return ControlSource(path)
    url = find_stats_url(master)
    if url:
        return HttpSource(url)
    raise NoServer(
        f"the server with pid {master} has no control socket (--no-control-socket, or "
        "its path was taken) and no --stats-bind"
    )


def find_stats_url(master: int) -> str | None:
    """The --stats-bind URL of ``master``: the TCP socket its stats child listens on."""
    addresses = listen_addresses()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != master:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read().strip()
            if "stats [" not in cmdline and not comm.startswith("ferrocorn: stat"):
                continue
            for fd in os.listdir(f"/proc/{entry}/fd"):
                link = os.readlink(f"/proc/{entry}/fd/{fd}")
                if link.startswith("socket:["):
                    inode = int(link[8:-1])
                    if inode in addresses:
                        host, _, port = addresses[inode].rpartition(":")
                        host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]"}.get(host, host)
                        return f"http://{host}:{port}"
        except (OSError, ValueError, IndexError):
            continue
    return None


# --------------------------------------------------------------------------- command line


def cli(argv: list[str]) -> int:
    """``ferrocorn stats [--json]`` prints one snapshot; ``ferrocorn top`` redraws it
    every ``--interval`` seconds until q or Ctrl-C."""
    command, argv = argv[0], argv[1:]
    top = command == "top"
    parser = argparse.ArgumentParser(
        prog=f"ferrocorn {command}",
        description=(
            "Show a running server's master and workers live (q quits)"
            if top
            else "Print one snapshot of a running server's statistics"
        )
        + ". The server is found by --control-socket, --pid or --stats-url, else at "
        f"the default control socket ({control.default_path()}).",
    )
    if top:
        parser.add_argument("--interval", type=float, default=1.0, metavar="SECONDS")
        parser.add_argument("--iterations", type=int, default=0, help=argparse.SUPPRESS)
    else:
        parser.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--control-socket", metavar="PATH", help="the server's control socket (--control-socket)"
    )
    where.add_argument("--pid", metavar="PIDFILE", help="find the server by its pidfile")
    where.add_argument("--stats-url", metavar="URL", help="the server's --stats-bind address")
    args = parser.parse_args(argv)
    try:
        source = find_source(args)
        snap = source.fetch()
    except NoServer as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    if top:
        return run_top(source, snap, args.interval, args.iterations)
    if args.json:
        print(json.dumps(snap, indent=1))
        return 0
    print("\n".join(render(snap)))
    return 0


def run_top(source: Source, snap: dict[str, Any], interval: float, iterations: int) -> int:
    """Redraw until q, Ctrl-C or the server goes away (or ``iterations`` frames)."""
    out = sys.stdout
    frames = 0
    error = ""
    with _screen(out) as keys:
        try:
            while True:
                width = _width(out)
                frame = render(snap, width=width, tty=out.isatty())
                out.write("\x1b[H\x1b[2J" + "\n".join(frame) + "\n")
                out.flush()
                frames += 1
                if iterations and frames >= iterations:
                    break
                if keys.wait(max(0.1, interval)):
                    break
                try:
                    snap = source.fetch()
                except NoServer as e:
                    error = f"{source} stopped answering: {e}"
                    break
        except KeyboardInterrupt:
            pass
    if error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    return 0


class _Keys:
    """Waits for the next frame, returning True early when q is pressed."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def wait(self, seconds: float) -> bool:
        if self.fd is None:
            select.select([], [], [], seconds)
            return False
        ready, _, _ = select.select([self.fd], [], [], seconds)
        if ready:
            data = os.read(self.fd, 64)
            return not data or b"q" in data.lower()
        return False


@contextlib.contextmanager
def _screen(out: Any) -> Iterator[_Keys]:
    """htop's terminal handling: the alternate screen, no cursor, single keys; all
    restored on the way out. Without a terminal, nothing changes."""
    if not out.isatty():
        yield _Keys(None)
        return
    saved = None
    fd = None
    if sys.stdin.isatty():
        import termios
        import tty

        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
    out.write("\x1b[?1049h\x1b[?25l")
    try:
        yield _Keys(fd)
    finally:
        out.write("\x1b[?25h\x1b[?1049l")
        out.flush()
        if saved is not None and fd is not None:
            import termios

            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _width(out: Any) -> int | None:
    """The terminal's width; None when it does not say (a pty nobody sized)."""
    try:
        columns = os.get_terminal_size(out.fileno()).columns
    except (OSError, ValueError, AttributeError):
        columns = shutil.get_terminal_size((0, 0)).columns
    return columns if columns > 0 else None


# --------------------------------------------------------------------------- rendering


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.1f}"


def _mib(v: int | None) -> str:
    return "-" if v is None else f"{v / 1048576:.1f}"


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def render(snap: dict[str, Any], width: int | None = None, tty: bool = False) -> list[str]:
    """The snapshot as lines: a summary of the master and the server, then a table of
    the workers. ``width``: cut every line to it (the column header is drawn across the
    full width in reverse video when ``tty``)."""
    s = snap["server"]
    m = snap["master"]
    cfg = snap.get("config", {})
    klass = cfg.get("worker_class", "?")
    threads = int(cfg.get("threads") or 1)
    requests, rps = s["requests"], s["req_per_s"]
    errors_ps = s.get("errors_5xx_per_s", 0.0)
    share = f"{100 * errors_ps / rps:.1f}%" if rps else "-"
    control_path = m.get("control_socket")
    lines = [
        f"ferrocorn {snap.get('version', '?')}  master {m['pid']}  RSS {_mib(m.get('rss_bytes'))} "
        f"MiB  {klass}"
        + (f" x {threads} threads" if klass == "gthread" else "")
        + (f"  control {control_path}" if control_path else ""),
        f"Workers: {s['workers']} (busy {s['busy_workers']}, idle {s['idle_workers']})  "
        f"Requests: {requests}  {rps:.1f} req/s  5xx: {s['errors_5xx']} "
        f"({errors_ps:.2f}/s, {share})  p50 {_ms(s['p50'])} ms  p99 {_ms(s['p99'])} ms  "
        f"restarts {s.get('restarts', '-')}",
    ]
    backlog = "  ".join(
        f"{b['listener']} {'-' if b['queued'] is None else b['queued']}/{b['max']}"
        for b in s["listen_backlog"]
    )
    third = f"Backlog: {backlog or '- (unix sockets only)'}"
    if klass == "gthread":
        third += (
            f"  gthread: queue {s['queue_depth']}, busy threads {s['busy_threads']}"
            f"/{threads * max(1, s['workers'])}"
        )
    lines += [third, ""]

    gthread = klass == "gthread"
    header = (
        f"{'PID':>7} {'CLASS':<7} {'STATE':<8} {'REQS':>7} {'REQ/S':>7} {'P50ms':>7} "
        f"{'P99ms':>7} {'RSS MiB':>8} {'PSS MiB':>8} {'USS MiB':>8} {'CPU%':>5} {'AGE':>7} "
        f"{'LEFT':>6} {'RESTARTS':>8} "
        + (f"{'THR':>5} {'QUEUE':>5} " if gthread else "")
        + "REQUEST"
    )
    lines.append(header)
    for w in snap["workers"]:
        cpu = "-" if w["cpu_percent"] is None else f"{w['cpu_percent']:.0f}"
        left = "-" if w.get("requests_left") is None else str(w["requests_left"])
        restarts = "-" if w.get("restarts") is None else str(w["restarts"])
        now = ""
        if w["state"] in ("busy", "io") and w["request"]:
            now = f"busy for {w['request_seconds'] or 0:.1f} s on {w['request']}"
        row = (
            f"{w['pid']:>7} {w['class'][:7]:<7} {w['state']:<8} {w['requests']:>7} "
            f"{w['req_per_s']:>7.1f} {_ms(w['p50']):>7} {_ms(w['p99']):>7} "
            f"{_mib(w['rss_bytes']):>8} {_mib(w['pss_bytes']):>8} "
            f"{_mib(w.get('uss_bytes')):>8} {cpu:>5} {_duration(w['age']):>7} {left:>6} "
            f"{restarts:>8} "
        )
        if gthread:
            row += f"{w['busy_threads']:>2}/{threads:<2} {w['queue_depth']:>5} "
        lines.append(row + now)
    out = lines if width is None else [line[:width] for line in lines]
    if tty:
        row = len(lines) - len(snap["workers"]) - 1
        full = header if width is None else header.ljust(width)[:width]
        out[row] = "\x1b[7m" + full + "\x1b[0m"
    return out
