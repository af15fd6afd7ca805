"""--statsd-host: gunicorn's metric names, sent by the stats process once a second from
the scoreboard, and the log counters from each process. A UDP (or Unix datagram)
socket in the test plays the StatsD server; counts must be exact."""

from __future__ import annotations

import json
import re
import socket
import struct
import threading

import pytest
from waiting import until

pytestmark = pytest.mark.ferrocorn_only

LINE_RE = re.compile(r"^(?P<name>[^:]+):(?P<value>[^|]+)\|(?P<kind>[a-z]+)(?P<rest>.*)$")


class StatsdServer:
    """Collects every metric line received (datagrams may hold several lines)."""

    def __init__(self, family=socket.AF_INET, address=("127.0.0.1", 0)):
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)
        self.lines: list[str] = []
        self.lock = threading.Lock()
        self.stopped = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        addr = self.sock.getsockname()
        return f"unix:{addr}" if isinstance(addr, str) else f"{addr[0]}:{addr[1]}"

    def _run(self):
        while not self.stopped:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                self.lines.extend(data.decode().split("\n"))

    def snapshot(self) -> list[str]:
        with self.lock:
            return list(self.lines)

    def total(self, name: str, kind: str = "c") -> float:
        """A counter's sum, or a timer's sample count (each sample counts 1/rate)."""
        out = 0.0
        for line in self.snapshot():
            m = LINE_RE.match(line)
            if not m or m["name"] != name or m["kind"] != kind:
                continue
            rate = re.search(r"\|@([0-9.]+)", m["rest"])
            if kind == "c":
                out += float(m["value"])
            else:
                out += 1 / float(rate.group(1)) if rate else 1
        return out

    def close(self):
        self.stopped = True
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def statsd_server():
    srv = StatsdServer()
    yield srv
    srv.close()




def control_stats(srv) -> dict:
    path = srv.wait_for_log(r"Control socket listening at (\S+)").group(1)
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        payload = json.dumps({"id": 1, "command": "stats"}).encode()
        s.sendall(struct.pack(">I", len(payload)) + payload)
        data = b""
        while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
            chunk = s.recv(65536)
            assert chunk
            data += chunk
    return json.loads(data[4:])["data"]


@pytest.mark.parametrize("klass", ["sync", "gthread"])
def test_request_counts_are_exact(server, statsd_server, klass):
    args = ["-w", "2", "--statsd-host", statsd_server.address, "--statsd-prefix", "app"]
    if klass == "gthread":
        args += ["-k", "gthread", "--threads", "2"]
    srv = server(args)
    srv.wait_for_log(
        r"statsd: request metrics are sent once a second, aggregated from every worker's "
        r"counters by the stats process \(gunicorn sends a packet per request\); sending to "
        + re.escape(statsd_server.address)
    )
    received = statsd_server.snapshot
    until(lambda: "app.gunicorn.workers:2|g" in received(), what="workers gauge", detail=received)
    # Everything served so far (the fixture's readiness probes) has been reported.
    base = until(
        lambda: (n := control_stats(srv)["server"]["requests"])
        and statsd_server.total("app.gunicorn.requests") == n
        and n,
        what="the probes to be reported",
        detail=lambda: f"{received()} {control_stats(srv)['workers']}",
    )
    for _ in range(7):
        assert srv.get("/pid").status == 200
    for _ in range(3):
        assert srv.get("/body?status=404_Not_Found").status == 404
    until(
        lambda: statsd_server.total("app.gunicorn.requests") >= base + 10,
        what="10 more requests reported",
    )
    assert statsd_server.total("app.gunicorn.requests") == base + 10
    assert statsd_server.total("app.gunicorn.request.status.404") == 3
    assert statsd_server.total("app.gunicorn.request.status.200") == base + 7
    assert round(statsd_server.total("app.gunicorn.request.duration", "ms"), 3) == base + 10
    snap = control_stats(srv)["server"]
    assert snap["requests"] == base + 10
    assert snap["statuses"] == {"200": base + 7, "404": 3}
    for line in statsd_server.snapshot():
        assert line.startswith("app.gunicorn."), line
        m = LINE_RE.match(line)
        assert m, line
        if m["kind"] == "c":
            assert m["rest"] == "|@1.0", line  # gunicorn's counter format
        if m["name"] == "app.gunicorn.request.duration":
            assert 0 < float(m["value"]) < 1000, line


def test_requests_of_rotated_workers_are_counted_once(server, statsd_server):
    """--max-requests 1: each request ends its worker and the next one takes the same
    scoreboard slot, mostly before the stats process's next once-a-second read. The
    access log is the truth: every request in it counted exactly once."""
    srv = server(["-w", "1", "--max-requests", "1", "--max-requests-jitter", "0",
                  "--statsd-host", statsd_server.address, "--access-logfile", "-"])
    for _ in range(8):
        assert srv.get("/pid").status == 200
    until(lambda: srv.access_log().count('"GET /pid ') == 8, what="8 access log lines",
          detail=srv.access_log)
    served = len(re.findall(r'^.*"[A-Z]+ \S+ HTTP/1\.[01]" \d{3} ', srv.access_log(), re.M))
    assert served >= 9  # ours and the readiness probe(s)
    assert srv.log().count("Autorestarting worker after current request.") >= 8
    until(
        lambda: statsd_server.total("gunicorn.requests") >= served,
        timeout=15,
        what=f"{served} requests reported",
        detail=lambda: statsd_server.total("gunicorn.requests"),
    )
    assert statsd_server.total("gunicorn.requests") == served
    assert statsd_server.total("gunicorn.request.status.200") >= 8
    assert round(statsd_server.total("gunicorn.request.duration", "ms"), 3) == served


def test_tags_log_counters_and_unix_socket(server, tmp_path):
    statsd = StatsdServer(socket.AF_UNIX, str(tmp_path / "statsd.sock"))
    try:
        srv = server(["-w", "1", "--statsd-host", statsd.address,
                      "--dogstatsd-tags", "env:test,team:web"])
        assert srv.get("/raise/before").status == 500  # "Error handling request" + traceback
        until(lambda: statsd.total("gunicorn.log.exception") >= 1, what="log.exception")
        until(lambda: statsd.total("gunicorn.request.status.500") == 1, what="the 500")
        for line in statsd.snapshot():
            assert line.endswith("|#env:test,team:web"), line
        assert "gunicorn.log.exception:1|c|@1.0|#env:test,team:web" in statsd.snapshot()
    finally:
        statsd.close()


def test_bad_statsd_host_is_one_clear_error(cli):
    out = cli(["--statsd-host", "localhost:notaport", "wsgiapps:app"])
    assert out.returncode != 0
    assert "Invalid value for statsd_host" in out.stderr and out.stderr.count("\n") == 1
