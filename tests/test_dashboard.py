"""--stats-bind's live dashboard ``/``, loaded in a real headless Chromium (Debian's
``chromium`` package; scripts/test.sh installs it) and driven over the DevTools protocol:
while requests flow, every chart must have drawn points, the worker table must list the
real worker pids, and once the server stops the page must say so.

The page records what each chart drew in the DOM (``data-points``, ``data-series``,
``data-last`` on each ``figure.chart``), which is what these tests read."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from waiting import until as wait_until
from websockets.sync.client import connect

pytestmark = pytest.mark.ferrocorn_only

STATS_RE = re.compile(r"Stats listening at: (http://\S+)")
CHARTS = ("chart-rps", "chart-latency", "chart-memory", "chart-backlog")

# What the page shows, read in the browser (null while the page is still loading).
PAGE_STATE = """(() => document.readyState === "loading" || !document.body ? null : ({
  state: document.body.dataset.state,
  polls: Number(document.body.dataset.polls),
  banner: ((b) => (b.hidden ? "" : b.textContent))(document.getElementById("banner")),
  charts: Object.fromEntries([...document.querySelectorAll("figure.chart")].map((f) => [f.id, {
    points: Number(f.dataset.points), series: Number(f.dataset.series),
    last: JSON.parse(f.dataset.last)}])),
  pids: [...document.querySelectorAll("#workers tbody tr[data-pid]")]
    .map((r) => Number(r.dataset.pid)),
  states: [...document.querySelectorAll("#workers tbody .state")].map((s) => s.textContent),
}))()"""




def fetch_stats(url: str) -> dict:
    with urllib.request.urlopen(url + "/stats", timeout=10) as r:
        return json.loads(r.read())


def start(server, args):
    srv = server(["--stats-bind", "127.0.0.1:0", *args], "wsgiapps:app")
    url = srv.wait_for_log(STATS_RE.pattern).group(1)
    n = int(args[args.index("-w") + 1])
    wait_until(
        lambda: fetch_stats(url)["server"]["idle_workers"] == n, what=f"{n} idle workers"
    )
    return srv, url


@contextlib.contextmanager
def traffic(srv):
    """Requests in a loop (a mix of fast ones and short sleeps) until the block ends."""
    stop = threading.Event()
    sent = [0]

    def run():
        while not stop.is_set():
            path = "/sleep?s=0.02" if sent[0] % 4 == 0 else "/pid"
            with contextlib.suppress(OSError, AssertionError, ValueError):
                srv.get(path, timeout=5)
            sent[0] += 1
            stop.wait(0.01)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield sent
    finally:
        stop.set()
        t.join(10)


# --------------------------------------------------------------------------- browser


def find_chromium() -> str | None:
    override = os.environ.get("FERROCORN_TEST_CHROMIUM")
    if override:
        return override
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class DevTools:
    """A minimal DevTools-protocol client for one page target."""

    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0
        self.exceptions: list[str] = []  # uncaught JavaScript errors on the page

    def call(self, method: str, timeout: float = 30.0, **params):
        self.next_id += 1
        ident = self.next_id
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if msg.get("method") == "Runtime.exceptionThrown":
                details = msg["params"]["exceptionDetails"]
                self.exceptions.append(
                    details.get("exception", {}).get("description") or details.get("text", "")
                )
            if msg.get("id") == ident:
                if "error" in msg:
                    raise AssertionError(f"DevTools {method}: {msg['error']}")
                return msg["result"]

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> bytes:
        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        path.write_bytes(data)
        return data


@pytest.fixture
def browser(tmp_path):
    exe = find_chromium()
    if exe is None:
        pytest.skip("chromium not found (scripts/test.sh installs Debian's chromium package)")
    profile = tmp_path / "chromium-profile"
    log_path = tmp_path / "chromium.log"
    args = [
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--no-default-browser-check", "--disable-extensions",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--hide-scrollbars", "--mute-audio", "--window-size=1400,1300",
        f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0", "about:blank",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        port_file = profile / "DevToolsActivePort"

        def port():
            if proc.poll() is not None:
                raise AssertionError(f"chromium exited ({proc.returncode}): "
                                     f"{log_path.read_text(errors='replace')[-3000:]}")
            with contextlib.suppress(OSError, ValueError, IndexError):
                return int(port_file.read_text().split()[0])
            return 0

        p = wait_until(port, timeout=60, what="chromium's DevTools port")
        with urllib.request.urlopen(f"http://127.0.0.1:{p}/json/list", timeout=10) as r:
            page = next(t for t in json.loads(r.read()) if t["type"] == "page")
        with connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10) as ws:
            devtools = DevTools(ws)
            devtools.call("Runtime.enable")
            devtools.call("Page.enable")
            yield devtools
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


# --------------------------------------------------------------------------- tests


@pytest.mark.slow
@pytest.mark.parametrize("klass", ["sync", "gthread"])
def test_dashboard_draws_live_charts(server, browser, tmp_path, klass):
    args = ["-w", "2"] + (["-k", "gthread", "--threads", "2"] if klass == "gthread" else [])
    srv, url = start(server, args)
    with traffic(srv) as sent:
        browser.call("Page.navigate", url=url + "/")
        page = wait_until(
            lambda: (
                (p := browser.evaluate(PAGE_STATE))
                and all(p["charts"][c]["points"] >= 2 for c in CHARTS)
                and p["charts"]["chart-rps"]["last"].get("req/s", 0) > 0
                and p
            ),
            what="every chart to draw at least two points while requests flow",
            detail=lambda: browser.evaluate(PAGE_STATE),
        )
        snap = fetch_stats(url)
        browser.screenshot(tmp_path / "dashboard.png")
    assert sent[0] > 0
    assert page["state"] == "live" and page["banner"] == ""

    # The worker table lists the live workers, as /stats does.
    workers = {w["pid"]: w for w in snap["workers"]}
    assert sorted(page["pids"]) == sorted(workers) and len(workers) == 2
    assert set(page["states"]) <= {"booting", "idle", "io", "busy", "draining"}

    # Each chart drew real numbers.
    charts = page["charts"]
    latency = charts["chart-latency"]["last"]
    assert 0 < latency["p50"] <= latency["p99"] < 5000  # ms
    memory = charts["chart-memory"]
    assert memory["series"] == 2 * len(workers)  # RSS and PSS per worker
    for pid, w in workers.items():
        drawn = memory["last"][f"{pid} RSS"] * 1048576
        assert abs(drawn - w["rss_bytes"]) <= 0.25 * w["rss_bytes"], (pid, drawn, w)
        assert 0 < memory["last"][f"{pid} PSS"] <= memory["last"][f"{pid} RSS"]
    listener = srv.url.removeprefix("http://")
    backlog = charts["chart-backlog"]["last"]
    assert backlog[f"backlog {listener}"] >= 0
    assert ("queued for a thread" in backlog) == (klass == "gthread")
    assert browser.exceptions == []
    assert (tmp_path / "dashboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The server goes away: the page says so instead of showing stale numbers as live.
    assert srv.stop(signal.SIGTERM) == 0
    gone = wait_until(
        lambda: (p := browser.evaluate(PAGE_STATE))["state"] == "down" and p,
        timeout=15,
        what="the page to notice that /stats stopped answering",
        detail=lambda: browser.evaluate(PAGE_STATE),
    )
    assert "not answering" in gone["banner"]
    assert gone["pids"] == page["pids"]  # the last known table stays, greyed out
    assert browser.exceptions == []


def test_dashboard_page_is_self_contained(server):
    _, url = start(server, ["-w", "1"])
    with urllib.request.urlopen(url + "/", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/html; charset=utf-8"
        csp = r.headers["Content-Security-Policy"]
        body = r.read().decode()
    # The browser may load nothing from anywhere else and talk only to this server.
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "<canvas" in body and 'fetch("stats"' in body
    assert not re.search(r"\b(?:src|href)\s*=\s*\"(?!data:|stats\"|metrics\")", body)
    assert "http://" not in body and "https://" not in body
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("HEAD", "/")
    head = conn.getresponse()
    assert head.status == 200 and int(head.headers["Content-Length"]) == len(body.encode())
    assert head.read() == b""
    conn.close()
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url + "/nope", timeout=10)
    assert e.value.code == 404 and b"/metrics" in e.value.read()
