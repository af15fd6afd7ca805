"""``--reload``: restart a worker when a source file changes (development only).

As gunicorn's poll reloader: a daemon thread in each worker stats, once a second,
the file of every loaded module (``sys.modules``, so modules imported later are
watched too), the ``--reload-extra-file`` paths and the files matching its glob
patterns (expanded on every pass, so new files count). The first pass records the
modification times; a later, newer time calls back once and the thread ends.

The callback logs ``Worker reloading: FILE modified``, runs ``worker_int`` and asks
the Rust loop to stop after the request in hand (the same path as SIGTERM); the
worker exits 0 and the master starts a fresh one, which imports the new code. The
Rust loop releases the GIL while it waits, so this thread gets to run.

``--reload-engine inotify`` is accepted and polls too (ferrocorn has no inotify
dependency); one second of latency is the only difference.
"""

from __future__ import annotations

import glob
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any

COMPILED_EXT_RE = re.compile(r"py[co]$")
GLOB_MAGIC_RE = re.compile(r"[*?[]")


def is_glob_pattern(value: str) -> bool:
    return GLOB_MAGIC_RE.search(value) is not None


class Reloader(threading.Thread):
    """Polls module and extra files every ``interval`` seconds."""

    def __init__(
        self,
        extra_files: Iterable[str] = (),
        interval: float = 1.0,
        callback: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(name="ferrocorn-reloader", daemon=True)
        self._extra_files: set[str] = set()
        self._extra_patterns: set[str] = set()
        for entry in extra_files:
            (self._extra_patterns if is_glob_pattern(entry) else self._extra_files).add(entry)
        self._interval = interval
        self._callback = callback
        self._stop_event = threading.Event()

    def add_extra_file(self, filename: str) -> None:
        self._extra_files.add(filename)

    def get_files(self) -> list[str]:
        names = [
            COMPILED_EXT_RE.sub("py", module.__file__)
            for module in tuple(sys.modules.values())
            if isinstance(getattr(module, "__file__", None), str)
        ]
        names.extend(self._extra_files)
        for pattern in self._extra_patterns:
            names.extend(sorted(glob.glob(pattern, recursive=True)))
        return names

    def changed_file(self, mtimes: dict[str, float]) -> str | None:
        """One polling pass: the first file newer than last seen, else None."""
        for filename in self.get_files():
            try:
                mtime = os.stat(filename).st_mtime
            except OSError:
                continue
            old = mtimes.get(filename)
            if old is None:
                mtimes[filename] = mtime
            elif mtime > old:
                return filename
        return None

    def run(self) -> None:
        mtimes: dict[str, float] = {}
        while not self._stop_event.is_set():
            changed = self.changed_file(mtimes)
            if changed is not None:
                if self._callback is not None:
                    self._callback(changed)
                return
            self._stop_event.wait(self._interval)

    def stop(self) -> None:
        self._stop_event.set()


def worker_reloader(worker: Any) -> Reloader:
    """The reloader for ``worker`` (not started yet: start it once the app is loaded)."""
    cfg, log = worker.cfg, worker.log

    def changed(filename: str) -> None:
        log.info("Worker reloading: %s modified", filename)
        worker.alive = False
        try:
            cfg.worker_int(worker)
        except Exception:
            log.exception("Exception in worker_int hook")
        time.sleep(0.1)
        core = getattr(worker, "_core", None)
        if core is not None:
            core.stop()
        wake = getattr(worker, "_wake_w", None)
        if wake is not None:
            try:  # wake the Rust loop now rather than at its next idle tick
                os.write(wake, b"\0")
            except OSError:
                pass

    log.warning("Reloader is on. Use in development only!")
    if cfg.reload_engine == "inotify":
        log.info("reload_engine inotify: ferrocorn polls the files once a second instead")
    return Reloader(extra_files=cfg.reload_extra_files, callback=changed)


def make_fail_app(msg: str) -> Callable[..., list[bytes]]:
    """With ``--reload``, an app that fails to compile is replaced by one answering
    500 with the traceback, so the developer sees it and the next save reloads."""
    body = msg.encode("utf-8", "replace")

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response(
            "500 Internal Server Error",
            [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
        )
        return [body]

    return app


def format_exception(e: BaseException) -> str:
    return "".join(traceback.format_exception(e))
