"""Polling with a deadline, for tests that wait for a condition (never a fixed sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def until(
    fn: Callable[[], T],
    timeout: float = 30.0,
    what: str = "condition",
    detail: Callable[[], object] | None = None,
    interval: float = 0.05,
) -> T:
    """Calls ``fn`` every ``interval`` seconds until it returns something true, and
    returns that; after ``timeout`` seconds fails with ``what`` (and ``detail()``, the
    state last seen, when given)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            seen = f"; last seen: {detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{seen}")
        time.sleep(interval)
