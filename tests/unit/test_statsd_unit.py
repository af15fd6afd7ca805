"""statsd.py without a server: address forms, gunicorn's prefix rule, and the
Reporter's deltas from scoreboard slots (a fake board)."""

from __future__ import annotations

import socket
import types

import pytest
from ferrocorn import statsd

BOUNDS = [16e-6 * 2**i for i in range(23)] + [float("inf")]


class FakeBoard:
    """The scoreboard as the Reporter sees it: per slot, the current worker's counters
    (reset by a new worker) and the ``slot_*`` ones (kept across workers)."""

    def __init__(self, capacity=4):
        self.capacity = capacity
        self.slots = {i: self.empty() for i in range(capacity)}

    @staticmethod
    def worker_counters():
        return {"requests": 0, "statuses": {}, "latency_buckets": [0] * len(BOUNDS)}

    @classmethod
    def empty(cls):
        return {"pid": 0, "state": "free", "spawns": 0, **cls.worker_counters(),
                "slot_requests": 0, "slot_statuses": {},
                "slot_latency_buckets": [0] * len(BOUNDS)}

    def spawn(self, i, pid):
        s = self.slots[i]
        s.update(self.worker_counters(), pid=pid, state="idle", spawns=s["spawns"] + 1)

    def exit(self, i):
        self.slots[i].update(pid=0, state="free")

    def serve(self, i, status, bucket=3, n=1):
        s = self.slots[i]
        for prefix in ("", "slot_"):
            s[prefix + "requests"] += n
            codes = s[prefix + "statuses"]
            codes[status] = codes.get(status, 0) + n
            s[prefix + "latency_buckets"][bucket] += n

    def snapshot(self, i):
        s = self.slots[i]
        copied = {k: type(v)(v) for k, v in s.items() if isinstance(v, (dict, list))}
        return s | copied

    @staticmethod
    def bucket_bounds():
        return BOUNDS


class Recorder(statsd.Client):
    def __init__(self, prefix="", tags=""):
        super().__init__("127.0.0.1:9", prefix, tags)
        self.sent: list[str] = []

    def send(self, lines):
        self.sent.extend(lines)


def totals(lines):
    out: dict[str, float] = {}
    for line in lines:
        name, rest = line.split(":", 1)
        value, kind, *extra = rest.split("|")
        rate = next((float(e[1:]) for e in extra if e.startswith("@")), 1.0)
        out[name] = out.get(name, 0) + (float(value) if kind == "c" else 1 / rate)
    return out


CFG = types.SimpleNamespace(enable_backlog_metric=False)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("localhost", (socket.AF_INET, ("localhost", 8125))),
        ("127.0.0.1:9125", (socket.AF_INET, ("127.0.0.1", 9125))),
        ("[::1]:9125", (socket.AF_INET6, ("::1", 9125))),
        ("unix:/run/statsd.sock", (socket.AF_UNIX, "/run/statsd.sock")),
        ("unix:///run/statsd.sock", (socket.AF_UNIX, "/run/statsd.sock")),
        ("unix:8125", (socket.AF_INET, ("unix", 8125))),  # gunicorn's compatibility rule
    ],
)
def test_addresses(text, expected):
    assert statsd.parse_address(text) == expected


@pytest.mark.parametrize("text", ["host:port", "host:0", "host:70000", ":8125", "unix:", "[::1"])
def test_bad_addresses(text):
    with pytest.raises(ValueError):
        statsd.validate(text)


def test_prefix_as_gunicorn():
    assert statsd.metric_prefix("") == ""
    assert statsd.metric_prefix("app") == "app."
    assert statsd.metric_prefix("app...") == "app."
    assert statsd.metric_prefix("a.b") == "a.b."
    assert statsd.metric_prefix("a") == "a"  # gunicorn's regex needs two characters


def test_line_format_with_prefix_and_tags():
    c = Recorder("app", "env:prod,team:web")
    assert c.counter("gunicorn.requests", 3) == "app.gunicorn.requests:3|c|@1.0|#env:prod,team:web"
    assert c.line("gunicorn.workers", 2, "g") == "app.gunicorn.workers:2|g|#env:prod,team:web"


def test_reporter_sends_exact_deltas():
    board = FakeBoard()
    board.spawn(0, 100)
    board.spawn(1, 101)
    for _ in range(7):
        board.serve(0, 200)
    board.serve(1, 404, bucket=5, n=3)
    client = Recorder()
    reporter = statsd.Reporter(client, board, CFG, fresh=True)
    first = totals(reporter.flush())
    assert first["gunicorn.requests"] == 10
    assert first["gunicorn.request.status.200"] == 7
    assert first["gunicorn.request.status.404"] == 3
    assert round(first["gunicorn.request.duration"], 4) == 10
    assert "gunicorn.workers:2|g" in client.sent
    assert reporter.flush() == []  # nothing new: nothing sent

    board.serve(0, 500)
    board.serve(1, 200)  # worker 101 served one more, then exited
    board.exit(1)
    second = totals(reporter.flush())
    assert second == {
        "gunicorn.requests": 2,
        "gunicorn.request.status.500": 1,
        "gunicorn.request.status.200": 1,
        "gunicorn.request.duration": pytest.approx(2),
        "gunicorn.workers": 1,
    }
    board.spawn(1, 102)  # its replacement starts from zero in the same slot
    board.serve(1, 201, n=2)
    assert totals(reporter.flush())["gunicorn.request.status.201"] == 2


def test_a_worker_replaced_between_flushes_is_counted():
    """The last requests of a worker that exits, and whose slot a new worker takes,
    between two flushes: counted once, with the new worker's."""
    board = FakeBoard()
    board.spawn(0, 100)
    board.serve(0, 200, n=2)
    reporter = statsd.Reporter(Recorder(), board, CFG, fresh=True)
    assert totals(reporter.flush())["gunicorn.requests"] == 2
    board.serve(0, 200, n=3)
    board.exit(0)
    board.spawn(0, 101)
    board.serve(0, 404)
    second = totals(reporter.flush())
    assert second["gunicorn.requests"] == 4
    assert second["gunicorn.request.status.200"] == 3
    assert second["gunicorn.request.status.404"] == 1
    assert second["gunicorn.request.duration"] == pytest.approx(4)
    assert "gunicorn.requests" not in totals(reporter.flush())


def test_a_respawned_reporter_does_not_count_twice():
    board = FakeBoard()
    board.spawn(0, 100)
    board.serve(0, 200, n=5)
    reporter = statsd.Reporter(Recorder(), board, CFG, fresh=False)
    assert "gunicorn.requests" not in totals(reporter.flush())
    board.serve(0, 200, n=2)
    board.spawn(2, 103)  # a worker seen for the first time later: counted from zero
    board.serve(2, 200)
    assert totals(reporter.flush())["gunicorn.requests"] == 3


def test_duration_samples_use_bucket_midpoints():
    board = FakeBoard()
    board.spawn(0, 100)
    board.serve(0, 200, bucket=0)
    board.serve(0, 200, bucket=6, n=3)
    reporter = statsd.Reporter(Recorder(), board, CFG, fresh=True)
    lines = [line for line in reporter.flush() if "duration" in line]
    assert lines == [
        "gunicorn.request.duration:0.008|ms",  # 0..16 µs
        "gunicorn.request.duration:0.768|ms|@0.3333333",  # 512..1024 µs, 3 requests
    ]
