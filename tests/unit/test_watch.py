"""Unit tests for ferrocorn.watch: the memory-climb rule and the accept-queue reader."""

from __future__ import annotations

import socket
from types import SimpleNamespace

from ferrocorn.watch import (
    MEMORY_MIN_GROWTH,
    MEMORY_SAMPLES,
    Watch,
    accept_queue,
    memory_climbing,
)

MIB = 1 << 20


def test_steady_climb_is_reported():
    base = 100 * MIB
    step = MEMORY_MIN_GROWTH // (MEMORY_SAMPLES - 1) + MIB
    assert memory_climbing([base + i * step for i in range(MEMORY_SAMPLES)])


def test_warm_up_then_flat_is_not():
    samples = [50 * MIB, 90 * MIB, 120 * MIB, 120 * MIB, 120 * MIB, 121 * MIB, 121 * MIB]
    assert not memory_climbing(samples)


def test_small_or_short_growth_is_not():
    assert not memory_climbing([100 * MIB + i * 4096 for i in range(MEMORY_SAMPLES)])
    assert not memory_climbing([i * 100 * MIB for i in range(1, MEMORY_SAMPLES)])


def test_accept_queue_counts_waiting_connections():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    clients = [socket.create_connection(srv.getsockname()) for _ in range(3)]
    try:
        assert accept_queue(srv) == 3
        conn, _ = srv.accept()
        conn.close()
        assert accept_queue(srv) == 2
    finally:
        for c in clients:
            c.close()
        srv.close()
    unix = socket.socket(socket.AF_UNIX)
    assert accept_queue(unix) is None
    unix.close()


class _Log:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warning(self, msg: str, *args: object) -> None:
        self.warnings.append(msg % args)

    def debug(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("watch tick failed")


def _arbiter(aborted: bool) -> SimpleNamespace:
    """A master with one sync worker 1.9 s into a request under --timeout 2."""
    pid = 2**22 + 1  # above pid_max's default: no /proc entry, no memory sample
    snap = {"state": "busy", "busy_threads": 1, "request_age": 1.9, "request": "GET /slow"}
    return SimpleNamespace(
        cfg=SimpleNamespace(timeout=2, threads=1, worker_class_str="sync", worker_connections=1000),
        workers={pid: SimpleNamespace(slot=0, aborted=aborted)},
        board=SimpleNamespace(snapshot=lambda slot: dict(snap)),
        log=_Log(),
        listeners=[],
    )


def test_request_close_to_the_timeout_is_warned_once():
    arb = _arbiter(aborted=False)
    w = Watch(arb)
    w.tick()
    w.tick()
    assert len(arb.log.warnings) == 1, arb.log.warnings
    assert "GET /slow for 1.9 s, close to the 2 s --timeout" in arb.log.warnings[0]


def test_no_close_to_the_timeout_warning_for_an_aborted_worker():
    """Once the master has aborted the worker for its timeout, the worker is writing its
    stack dump to the same log; a warning then would split a frame line in two (seen in
    CI: 'line 30[...] [WARNING] ... in c_hang')."""
    arb = _arbiter(aborted=True)
    Watch(arb).tick()
    assert arb.log.warnings == []
