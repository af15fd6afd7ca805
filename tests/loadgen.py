"""Client threads that keep a server busy while a test does something else to it (a
reload, worker rotation, an upgrade, a measurement), recording every request's result."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from typing import Any

# request(conn, n) -> (ok, value): see Load.
Request = Callable[[http.client.HTTPConnection | None, int], tuple[bool, Any]]


class Load:
    """``threads`` client threads making requests back to back until ``total`` requests
    were made (``None``: no limit) or the load is stopped (``stop()``, or the end of a
    ``with`` block). The threads start at once.

    Each request is ``request(conn, n)``, which returns ``(ok, value)``: ``n`` numbers
    the requests from 1 across all threads; ``conn`` is the thread's ``http.client``
    connection to ``address``, kept alive from one request to the next with
    ``keepalive`` (http.client reconnects by itself after a ``Connection: close``
    answer) and a new one for each request without; ``None`` when there is no
    ``address`` (``request`` connects by itself). An exception is a failed request and
    drops the connection; the thread then waits ``pause_after_failure`` seconds.

    Each result is ``(ok, value or error, time.monotonic() when it came)``."""

    def __init__(
        self,
        request: Request,
        address: tuple[str, int] | None = None,
        threads: int = 4,
        total: int | None = None,
        keepalive: bool = True,
        pause_after_failure: float = 0.0,
    ):
        self.request = request
        self.address = address
        self.total = total
        self.keepalive = keepalive
        self.pause_after_failure = pause_after_failure
        self.results: list[tuple[bool, Any, float]] = []
        self._lock = threading.Lock()
        self._issued = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True)
                         for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _ticket(self) -> int | None:
        with self._lock:
            if self._stop.is_set() or (self.total is not None and self._issued >= self.total):
                return None
            self._issued += 1
            return self._issued

    def _connect(self) -> http.client.HTTPConnection | None:
        if self.address is None:
            return None
        host, port = self.address
        return http.client.HTTPConnection(host, port, timeout=20)

    def _client(self):
        conn = None
        while (n := self._ticket()) is not None:
            if conn is None or not self.keepalive:
                conn = self._connect()
            try:
                ok, value = self.request(conn, n)
            except Exception as e:  # any failure counts
                ok, value = False, f"#{n}: {e!r}"
                if conn is not None:
                    conn.close()
                conn = None
            if not self.keepalive and conn is not None:
                conn.close()
            with self._lock:
                self.results.append((ok, value, time.monotonic()))
            if not ok and self.pause_after_failure:
                self._stop.wait(self.pause_after_failure)
        if conn is not None:
            conn.close()

    def count(self) -> int:
        """Requests made so far, failed ones included."""
        with self._lock:
            return len(self.results)

    def wait_count(self, n: int, timeout: float = 60) -> None:
        """Wait until ``n`` requests were made; fails if the clients all ended before."""
        deadline = time.monotonic() + timeout
        while self.count() < n:
            if not any(t.is_alive() for t in self._threads):
                raise AssertionError(f"load ended after {self.count()} requests (wanted {n})")
            if time.monotonic() > deadline:
                raise AssertionError(f"only {self.count()} of {n} requests within {timeout}s")
            time.sleep(0.01)

    def join(self, timeout: float = 120) -> list[tuple[bool, Any, float]]:
        """Wait for the clients to finish; fails if one is still running after
        ``timeout`` seconds. Returns the results."""
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self._threads), "load clients did not finish"
        return self.results

    def stop(self, timeout: float = 120) -> list[tuple[bool, Any, float]]:
        """No new request; wait for those in flight (see ``join``)."""
        self._stop.set()
        return self.join(timeout)

    def failures(self) -> list[tuple[Any, float]]:
        """(error, time) of every failed request."""
        with self._lock:
            return [(v, t) for ok, v, t in self.results if not ok]

    def values(self, since: float = 0.0) -> list[Any]:
        """The values of the requests that succeeded at or after ``since``."""
        with self._lock:
            return [v for ok, v, t in self.results if ok and t >= since]

    def __enter__(self) -> Load:
        return self

    def __exit__(self, exc_type, *_):
        self._stop.set()
        if exc_type is None:  # an assertion here would hide the exception on its way
            self.join()
