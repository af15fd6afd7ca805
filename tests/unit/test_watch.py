"""Unit tests for ferrocorn.watch: the memory-climb rule and the accept-queue reader."""

from __future__ import annotations

import socket

from ferrocorn.watch import MEMORY_MIN_GROWTH, MEMORY_SAMPLES, accept_queue, memory_climbing

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
