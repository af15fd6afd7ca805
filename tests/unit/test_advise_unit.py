"""Unit tests for ferrocorn.advise: the queueing model, the recommendation from
synthetic measurements, and the helpers that read the scoreboard's numbers."""

from __future__ import annotations

import math
import socket
import threading

import pytest
from ferrocorn.advise import (
    BUCKET_BOUNDS,
    MAX_THREADS,
    MIB,
    AdviseError,
    Measurement,
    Window,
    busy_share,
    http_snapshot,
    in_flight_per_core,
    memory_growth,
    quantile,
    recommend,
)

GIB = 1024 * MIB


def measure(
    cpu_ms: float,
    io_ms: float,
    wait_ms: float | None = 0.0,
    cores: float = 2,
    requests: int = 10_000,
    **kw,
) -> Measurement:
    """A sync measurement where each request took ``cpu_ms`` of CPU, waited ``io_ms``
    on I/O and ``wait_ms`` for a CPU."""
    wall = cpu_ms + io_ms + (wait_ms or 0.0)
    values = dict(
        source="test",
        duration=10.0,
        worker_class="sync",
        workers=2,
        threads=1,
        requests=requests,
        cpu_seconds=cpu_ms / 1000 * requests,
        busy_seconds=wall / 1000 * requests,
        wait_seconds=None if wait_ms is None else wait_ms / 1000 * requests,
        cores=cores,
        cores_source="test",
        memory_budget=16 * GIB,
        memory_source="test",
        worker_uss=50 * MIB,
        latency={"p50": 0.01, "p99": 0.05, "p99_9": 0.1, "max": 0.2},
    )
    values.update(kw)
    return Measurement(**values)


def value(advice, name):
    return advice["settings"][name]["value"]


# --------------------------------------------------------------------------- model


def test_busy_share_is_one_request_alone_then_saturates():
    assert busy_share(1, 1.0, 0.0) == pytest.approx(1.0)
    assert busy_share(1, 1.0, 3.0) == pytest.approx(0.25)  # c / (c + io)
    shares = [busy_share(n, 1.0, 3.0) for n in range(1, 12)]
    assert shares == sorted(shares) and shares[-1] > 0.95
    assert busy_share(5, 0.0, 1.0) == 0.0


def test_in_flight_per_core_follows_the_io_ratio():
    assert in_flight_per_core(1.0, 0.0) == 1
    assert in_flight_per_core(1.0, 0.02) == 1
    mixed = in_flight_per_core(1.0, 2.0)
    assert 3 <= mixed <= 6
    io_bound = in_flight_per_core(0.2, 30.0)  # (c + io) / c = 151
    assert 140 <= io_bound <= 200
    assert busy_share(io_bound, 0.2, 30.0) >= 0.95 > busy_share(io_bound - 1, 0.2, 30.0)


# --------------------------------------------------------------------------- recommend


def test_cpu_bound_gets_sync_one_worker_per_core_and_a_spare():
    advice = recommend(measure(cpu_ms=3, io_ms=0.05, cores=4))
    assert advice["profile"]["kind"] == "cpu-bound"
    assert value(advice, "worker_class") == "sync"
    assert value(advice, "workers") == 4 + 1
    assert value(advice, "threads") == 1
    assert advice["args"] == ["-k", "sync", "-w", "5", "--timeout", "30"]
    for setting in advice["settings"].values():
        assert setting["reason"] and setting["numbers"]


def test_one_core_still_gets_two_workers():
    advice = recommend(measure(cpu_ms=3, io_ms=0, cores=1))
    assert value(advice, "workers") == 2
    assert "1 spare" in advice["settings"]["workers"]["reason"]


def test_io_bound_gets_gthread_with_threads_for_every_core():
    advice = recommend(measure(cpu_ms=0.2, io_ms=30, cores=2))
    assert advice["profile"]["kind"] == "io-bound"
    assert value(advice, "worker_class") == "gthread"
    workers, threads = value(advice, "workers"), value(advice, "threads")
    needed = advice["settings"]["workers"]["numbers"]["in_flight_needed"]
    assert workers * threads >= needed >= 2 * 140
    assert threads <= MAX_THREADS
    assert workers >= 2  # one per core, more when the threads would pass the cap
    assert advice["args"][:2] == ["-k", "gthread"] and "--threads" in advice["args"]


def test_mixed_app_fits_in_sync_processes_up_to_gunicorns_rule():
    advice = recommend(measure(cpu_ms=2, io_ms=0.7, cores=2))
    assert advice["profile"]["kind"] == "mixed"
    assert value(advice, "worker_class") == "sync"
    assert value(advice, "workers") == 5  # 2 per core keep it 95% busy, + 1 spare


def test_more_io_than_gunicorns_rule_covers_goes_to_threads():
    advice = recommend(measure(cpu_ms=2, io_ms=4, cores=2))
    assert value(advice, "worker_class") == "gthread"
    assert "(2 x cores) + 1 = 5" in advice["settings"]["worker_class"]["reason"]


def test_cpu_wait_on_a_busy_machine_is_not_io():
    busy = recommend(measure(cpu_ms=3, io_ms=0, wait_ms=9))
    assert busy["profile"]["kind"] == "cpu-bound"
    assert busy["profile"]["cpu_wait_ms"] == pytest.approx(9)
    assert value(busy, "worker_class") == "sync"
    assert any("short of cores" in w for w in busy["warnings"])
    # Without schedstat the same numbers look I/O-heavy, and the report says so.
    blind = measure(cpu_ms=3, io_ms=9, wait_ms=None)
    advice = recommend(blind)
    assert advice["profile"]["kind"] != "cpu-bound"
    assert any("schedstat" in w for w in advice["warnings"])


def test_gil_wait_in_a_gthread_server_is_not_io():
    # 8 threads per process, all busy on 3 ms of CPU each: every request waits ~21 ms
    # for the GIL, which only shows as wall time.
    m = measure(
        cpu_ms=3,
        io_ms=21,
        worker_class="gthread",
        threads=8,
        gil_share=0.99,
        process_concurrency=8,
    )
    advice = recommend(m)
    assert advice["profile"]["kind"] == "cpu-bound", advice["profile"]
    assert advice["profile"]["gil_wait_ms"] == pytest.approx(21)
    assert value(advice, "worker_class") == "sync"
    # The same wall time with an idle GIL is real I/O.
    idle = recommend(
        measure(cpu_ms=3, io_ms=21, worker_class="gthread", threads=8, gil_share=0.2,
                process_concurrency=8)
    )  # fmt: skip
    assert idle["profile"]["io_ms"] > 15


def test_memory_budget_limits_the_workers():
    m = measure(cpu_ms=0.5, io_ms=1.5, cores=8, worker_uss=300 * MIB, memory_budget=1 * GIB)
    advice = recommend(m)
    workers, threads = value(advice, "workers"), value(advice, "threads")
    assert value(advice, "worker_class") == "gthread"
    assert workers == 3  # 1 GiB / (300 MiB + the threads' stacks)
    numbers = advice["settings"]["workers"]["numbers"]
    assert numbers["total_memory_bytes"] <= 1 * GIB
    assert "memory budget" in advice["settings"]["workers"]["reason"]
    assert threads > 1


def test_timeout_stays_at_30_unless_requests_are_slow():
    assert value(recommend(measure(cpu_ms=1, io_ms=1)), "timeout") == 30
    slow = measure(cpu_ms=1, io_ms=1, latency={"p99_9": 20.0, "max": 50.0})
    advice = recommend(slow)
    assert value(advice, "timeout") == 75  # 1.5 x the slowest
    assert "slowest 50.0 s" in advice["settings"]["timeout"]["reason"]


def test_max_requests_from_steady_growth():
    grow = measure(cpu_ms=1, io_ms=0, growth_per_request=10 * 1024, growth_note="x")
    advice = recommend(grow)
    assert value(advice, "max_requests") == 2500  # 25 MiB (half the USS) / 10 KiB
    assert advice["settings"]["max_requests"]["numbers"]["jitter"] == 250
    assert advice["args"][-4:] == ["--max-requests", "2500", "--max-requests-jitter", "250"]
    flat = recommend(measure(cpu_ms=1, io_ms=0, current_max_requests=1000))
    assert value(flat, "max_requests") == 1000
    assert "kept" in flat["settings"]["max_requests"]["reason"]
    assert value(recommend(measure(cpu_ms=1, io_ms=0)), "max_requests") == 0


def test_errors_and_few_requests_are_warned():
    advice = recommend(measure(cpu_ms=1, io_ms=0, requests=50, statuses={"200": 40, "404": 10}))
    text = " ".join(advice["warnings"])
    assert "only 50 requests" in text and "404: 10" in text
    with pytest.raises(AdviseError):
        recommend(measure(cpu_ms=1, io_ms=0, requests=0))


# --------------------------------------------------------------------------- helpers


def test_quantile_interpolates_within_a_bucket():
    buckets = [0] * len(BUCKET_BOUNDS)
    buckets[10] = 100  # (8.192 ms, 16.384 ms]
    assert quantile(buckets, 0.5) == pytest.approx((8.192e-3 + 16.384e-3) / 2)
    assert quantile(buckets, 1.0) == pytest.approx(16.384e-3)
    buckets[-1] = 1
    assert quantile(buckets, 1.0) == pytest.approx(BUCKET_BOUNDS[-2])
    assert quantile([0] * 24, 0.5) is None
    assert math.isinf(BUCKET_BOUNDS[-1]) and BUCKET_BOUNDS[0] == pytest.approx(16e-6)


def test_memory_growth_needs_a_steady_rise():
    steady = [[(i * 100, 100 * MIB + i * 2 * MIB) for i in range(6)]]
    per_request, note = memory_growth(steady)
    assert per_request == pytest.approx(10 * MIB / 500)
    assert "+10.0 MiB over 500 requests" in note
    warm_then_flat = [[(0, 100 * MIB), (100, 120 * MIB), (200, 120 * MIB), (300, 120 * MIB)]]
    assert memory_growth(warm_then_flat)[0] is None
    assert memory_growth([[(0, 100 * MIB)]])[0] is None


def test_window_takes_deltas_per_worker_and_follows_new_ones():
    def worker(pid, requests, busy, cpu, wait, rss=50 * MIB):
        buckets = [0] * 24
        buckets[10] = requests
        return {"pid": pid, "state": "idle", "requests": requests, "busy_seconds": busy,
                "cpu_seconds": cpu, "cpu_wait_seconds": wait, "rss_bytes": rss,
                "uss_bytes": 30 * MIB, "latency_buckets": buckets, "errors_5xx": 0}  # fmt: skip

    config = {"worker_class": "sync", "threads": 1, "timeout": 30, "max_requests": 0}
    w = Window(local=False)
    w.add({"config": config, "workers": [worker(1, 100, 1.0, 0.5, 0.1)]}, now=0.0)
    w.add({"config": config, "workers": [worker(1, 300, 3.0, 1.5, 0.3), worker(2, 0, 0, 0, 0)]},
          now=5.0)  # fmt: skip
    w.add({"config": config, "workers": [worker(1, 500, 5.0, 2.5, 0.5), worker(2, 50, 1, 1, 0)]},
          now=10.0)  # fmt: skip
    m = w.measurement("test", (2.0, "test"), (GIB, "test"))
    assert m.requests == 400 + 50
    assert m.busy_seconds == pytest.approx(4.0 + 1.0)
    assert m.cpu_seconds == pytest.approx(2.0 + 1.0)
    assert m.wait_seconds == pytest.approx(0.4)
    assert m.restarts == 1  # pid 2 appeared during the window
    assert m.worker_uss == 30 * MIB
    assert 8.192e-3 < m.latency["p50"] < 16.384e-3


def test_gil_contention_is_weighed_by_the_requests_each_worker_served():
    # Two gthread workers; every kept-alive connection went to worker 1 and worker 2
    # sat idle. The contention requests met is worker 1's, not the mean with an idle one.
    def worker(pid, requests, busy, cpu):
        return {"pid": pid, "state": "idle", "requests": requests, "busy_seconds": busy,
                "cpu_seconds": cpu, "cpu_wait_seconds": 0.0,
                "latency_buckets": [0] * 24}  # fmt: skip

    config = {"worker_class": "gthread", "threads": 4, "timeout": 30, "max_requests": 0}
    w = Window(local=False)
    w.add({"config": config, "workers": [worker(1, 0, 0, 0), worker(2, 0, 0, 0)]}, now=0.0)
    w.add({"config": config, "workers": [worker(1, 1000, 30.0, 9.0), worker(2, 0, 0, 0)]},
          now=10.0)  # fmt: skip
    m = w.measurement("test", (2.0, "test"), (GIB, "test"))
    assert m.process_concurrency == pytest.approx(3.0)
    assert m.gil_share == pytest.approx(0.9)


def test_asgi_servers_are_refused():
    with pytest.raises(AdviseError, match="-k asgi"):
        recommend(measure(cpu_ms=1, io_ms=1, worker_class="asgi"))


def test_a_snapshot_cut_short_is_a_connection_error():
    """A server that dies mid-reply (an app that failed to load) must read as 'not
    answering' (OSError), not escape as http.client.IncompleteRead: `ferrocorn advise`
    then prints one error line instead of a traceback."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def answer_half() -> None:
        conn, _ = srv.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
        conn.close()

    t = threading.Thread(target=answer_half)
    t.start()
    try:
        with pytest.raises(ConnectionError):
            http_snapshot(f"http://127.0.0.1:{srv.getsockname()[1]}", timeout=5)
    finally:
        t.join()
        srv.close()
