"""The error log and access-log plumbing, shaped like gunicorn's ``glogging``.

The error log goes through Python's ``logging`` under gunicorn's logger names
(``gunicorn.error``, ``gunicorn.access``), so apps that borrow gunicorn's handlers
(``logging.getLogger("gunicorn.error").handlers``) keep working. Access-log lines are
rendered and written by the Rust worker straight to a file descriptor owned here.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import IO, Any

ERROR_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


class Logger:
    """Owns the error-log handler and the access-log file of one process tree."""

    def __init__(self, cfg: Any) -> None:
        self.error_log = logging.getLogger("gunicorn.error")
        self.error_log.propagate = False
        self.access_log = logging.getLogger("gunicorn.access")
        self.access_log.propagate = False
        self._error_handler: logging.Handler | None = None
        self._statsd_handler: Any = None  # statsd.LogHandler with --statsd-host
        self._access_file: IO[str] | None = None
        self.setup(cfg)

    def setup(self, cfg: Any) -> None:
        """(Re)configure both logs from ``cfg``."""
        self.cfg = cfg
        level = LEVELS.get(str(cfg.loglevel).lower(), logging.INFO)
        self.error_log.setLevel(level)
        self.access_log.setLevel(logging.INFO)
        if self._error_handler is not None:
            self.error_log.removeHandler(self._error_handler)
            self._error_handler.close()
        target = cfg.errorlog
        handler: logging.Handler
        if target in (None, "-"):
            handler = logging.StreamHandler(sys.stderr)
        else:
            handler = logging.FileHandler(target)
        handler.setFormatter(logging.Formatter(ERROR_FORMAT, DATE_FORMAT))
        self.error_log.addHandler(handler)
        self._error_handler = handler
        self._setup_statsd(cfg)
        self._open_access(cfg.accesslog)

    def _setup_statsd(self, cfg: Any) -> None:
        """``--statsd-host``: count warning and error lines as gunicorn does
        (``gunicorn.log.<level>``), in every process (workers inherit the handler)."""
        if self._statsd_handler is not None:
            self.error_log.removeHandler(self._statsd_handler)
            self._statsd_handler.close()
            self._statsd_handler = None
        if getattr(cfg, "statsd_host", None):
            from ferrocorn import statsd

            self._statsd_handler = statsd.LogHandler(statsd.Client.from_cfg(cfg))
            self.error_log.addHandler(self._statsd_handler)

    def _metric(self, kw: dict[str, Any]) -> None:
        """gunicorn's custom metrics: ``extra={"metric", "value", "mtype"}``, at any level."""
        if self._statsd_handler is not None and "extra" in kw:
            from ferrocorn import statsd

            statsd.extra_metric(self._statsd_handler.client, kw["extra"])

    def _open_access(self, target: str | None) -> None:
        if self._access_file is not None and self._access_file not in (sys.stdout,):
            self._access_file.close()
        self._access_file = None
        if target is None:
            return
        if target == "-":
            self._access_file = sys.stdout
        else:
            self._access_file = open(target, "a", buffering=1)

    @property
    def access_fd(self) -> int | None:
        """The descriptor the Rust worker writes access lines to, or None when off."""
        if self._access_file is None:
            return None
        self._access_file.flush()
        return self._access_file.fileno()

    def reopen_files(self) -> None:
        """USR1: reopen log files in place, keeping descriptor numbers (the Rust worker
        holds the access-log fd number), so log rotation works like gunicorn's."""
        handler = self._error_handler
        if isinstance(handler, logging.FileHandler):
            handler.acquire()
            try:
                handler.stream.close()
                handler.stream = handler._open()
            finally:
                handler.release()
        target = self.cfg.accesslog
        if target not in (None, "-") and self._access_file is not None:
            fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.dup2(fd, self._access_file.fileno())
            os.close(fd)

    def error_stream(self) -> IO[str]:
        """The stream behind the error log, for ``wsgi.errors``."""
        handler = self._error_handler
        if isinstance(handler, logging.StreamHandler):
            return handler.stream  # type: ignore[no-any-return]
        return sys.stderr

    # Delegations, so ``server.log.info(...)`` works in hooks as in gunicorn.
    def debug(self, msg: str, *args: object, **kw: Any) -> None:
        self._metric(kw)
        self.error_log.debug(msg, *args, **kw)

    def info(self, msg: str, *args: object, **kw: Any) -> None:
        self._metric(kw)
        self.error_log.info(msg, *args, **kw)

    def warning(self, msg: str, *args: object, **kw: Any) -> None:
        self._metric(kw)
        self.error_log.warning(msg, *args, **kw)

    def error(self, msg: str, *args: object, **kw: Any) -> None:
        self._metric(kw)
        self.error_log.error(msg, *args, **kw)

    def critical(self, msg: str, *args: object, **kw: Any) -> None:
        self._metric(kw)
        self.error_log.critical(msg, *args, **kw)

    def exception(self, msg: str, *args: object, **kw: Any) -> None:
        self._metric(kw)
        self.error_log.exception(msg, *args, **kw)

    def flush(self) -> None:
        """Flush every handler and the access file (before fork and before _exit)."""
        for h in self.error_log.handlers:
            h.flush()
        if self._access_file is not None:
            self._access_file.flush()
