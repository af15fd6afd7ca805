"""The worker process: what a forked child does until it exits.

Gunicorn's ``Worker.init_process`` order is kept: environment, RNG reseed, signal
handlers, app import, ``post_worker_init``, then the serving loop, which here is the
Rust ``SyncWorker`` (``src/worker/sync.rs``). Python signal handlers stay in charge:
the Rust loop polls the ``set_wakeup_fd`` pipe and runs them, so hooks such as
``worker_int`` and ``worker_abort`` get live objects exactly as under gunicorn.
"""

from __future__ import annotations

import faulthandler
import os
import random
import signal
import sys
import time
from types import FrameType
from typing import Any

from ferrocorn import _ferrocorn, daemon, reloader
from ferrocorn._version import __version__
from ferrocorn.app import AppImportError, import_app
from ferrocorn.glogging import Logger
from ferrocorn.sock import Listener

# See arbiter.SIG_DUMP_STACKS (defined here to avoid an import cycle).
SIG_DUMP_STACKS = signal.SIGRTMIN + 1
# The master's request for a last-resort 500 on a request hung past --timeout; the
# sync worker's Rust watchdog handles it (src/worker/watchdog.rs). Ignored until then,
# since a real-time signal's default action would end the process.
SIG_ANSWER_HUNG = signal.SIGRTMIN + 2

# Exit codes that make the master halt instead of respawning (gunicorn's values).
WORKER_BOOT_ERROR = 3
APP_LOAD_ERROR = 4


class ErrorsStream:
    """``wsgi.errors``: text written by the app lands in the error log's stream."""

    def __init__(self, log: Logger) -> None:
        self._log = log

    def write(self, data: str) -> int:
        stream = self._log.error_stream()
        n = stream.write(data)
        return n if isinstance(n, int) else len(data)

    def writelines(self, lines: list[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._log.error_stream().flush()


class HookRequest:
    """The ``req`` that ``pre_request``/``post_request`` hooks receive, with the
    attributes real config files read from gunicorn's ``Request``."""

    def __init__(
        self,
        method: str,
        uri: str,
        path: str,
        query: str,
        fragment: str,
        version: tuple[int, int],
        headers: list[tuple[str, str]],
    ) -> None:
        self.method = method
        self.uri = uri
        self.path = path
        self.query = query
        self.fragment = fragment
        self.version = version
        self.headers = headers

    def __repr__(self) -> str:
        return f"<HookRequest {self.method} {self.uri}>"


class HookResponse:
    """The ``resp`` that ``post_request`` receives."""

    def __init__(
        self, status: str, status_code: int, headers: list[tuple[str, str]], sent: int
    ) -> None:
        self.status = status
        self.status_code = status_code
        self.headers = headers
        self.sent = sent
        self.response_length = sent


class Worker:
    """One worker process, as hooks see it (``worker.pid``, ``worker.age``, ...).

    Built in the master before fork, so ``__init__`` must not touch the process.
    """

    def __init__(
        self,
        age: int,
        ppid: int,
        listeners: list[Listener],
        app_uri: str,
        cfg: Any,
        log: Logger,
        max_requests: int,
        preloaded_app: Any = None,
    ) -> None:
        self.age = age
        self.ppid = ppid
        self.sockets = listeners
        self.app_uri = app_uri
        self.cfg = cfg
        self.log = log
        self.max_requests = max_requests
        self.timeout = cfg.timeout
        self.booted = False
        self.aborted = False
        self.aborted_at = 0.0
        self.recycling = False  # the master asked it to stop over --max-worker-memory
        self.alive = True
        self.pid: int = 0
        self.wsgi: Any = preloaded_app
        self._core: Any = None
        self.board: Any = None  # the master's Scoreboard, set before fork
        self.reloader: reloader.Reloader | None = None  # --reload, started in the child
        self.slot = 0

    def __str__(self) -> str:
        return f"<Worker {self.pid}>"

    @property
    def nr(self) -> int:
        """Requests served so far (gunicorn's ``worker.nr``)."""
        return int(self._core.requests) if self._core is not None else 0

    def hooks(self) -> dict[str, Any] | None:
        """The request hooks for the Rust loop; None when the config sets neither, so
        requests pay nothing for them."""
        pre = None if self.cfg.is_default("pre_request") else self.cfg.pre_request
        post = None if self.cfg.is_default("post_request") else self.cfg.post_request
        if pre is None and post is None:
            return None
        return {
            "worker": self,
            "pre_request": pre,
            "post_request": post,
            "make_request": HookRequest,
            "make_response": HookResponse,
        }

    def init_process(self) -> None:
        """Runs in the child right after fork and never returns normally."""
        for key, value in self.cfg.env.items():
            os.environ[key] = value
        daemon.set_owner_process(self.cfg.uid, self.cfg.gid, bool(self.cfg.initgroups))
        random.seed()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.init_signals()
        if self.cfg.reload:
            self.reloader = reloader.worker_reloader(self)
        if self.wsgi is None:
            self.wsgi = self.load_wsgi()
        if self.reloader is not None:
            self.reloader.start()
        self.cfg.post_worker_init(self)
        self.booted = True
        self.run()

    def init_signals(self) -> None:
        for sig in (signal.SIGHUP, signal.SIGUSR2, signal.SIGCHLD, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, self.handle_exit)
        signal.signal(signal.SIGQUIT, self.handle_quit)
        signal.signal(signal.SIGINT, self.handle_quit)
        signal.signal(signal.SIGABRT, self.handle_abort)
        signal.signal(signal.SIGUSR1, self.handle_usr1)
        signal.signal(signal.SIGWINCH, signal.SIG_IGN)
        # Keep blocking syscalls running through TERM and USR1, as gunicorn does; the
        # wake-up pipe still tells the Rust loop that a handler is pending.
        signal.siginterrupt(signal.SIGTERM, False)
        signal.siginterrupt(signal.SIGUSR1, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        # Stacks of every thread on the master's request, from C: works while the
        # worker is stuck in C code with the GIL released (see arbiter.SIG_DUMP_STACKS).
        faulthandler.register(SIG_DUMP_STACKS, file=self.log.error_stream(), all_threads=True)
        signal.signal(SIG_ANSWER_HUNG, signal.SIG_IGN)

    def load_wsgi(self) -> Any:
        try:
            return import_app(self.app_uri)
        except SyntaxError as e:
            # --reload: serve the traceback and watch the broken file (as gunicorn).
            if self.reloader is None:
                raise
            self.log.exception("%s", e)
            if e.filename:
                self.reloader.add_extra_file(e.filename)
            return reloader.make_fail_app(reloader.format_exception(e))

    def handle_exit(self, signum: int, frame: FrameType | None) -> None:
        self.alive = False
        if self._core is not None:
            self._core.stop()

    def handle_quit(self, signum: int, frame: FrameType | None) -> None:
        self.alive = False
        self.cfg.worker_int(self)
        time.sleep(0.1)
        sys.exit(0)

    def handle_abort(self, signum: int, frame: FrameType | None) -> None:
        self.alive = False
        self.cfg.worker_abort(self)
        sys.exit(1)

    def handle_usr1(self, signum: int, frame: FrameType | None) -> None:
        self.log.reopen_files()

    def base_environ(self) -> dict[str, Any]:
        environ: dict[str, Any] = {
            "wsgi.version": (1, 0),
            "wsgi.errors": ErrorsStream(self.log),
            "wsgi.multithread": self.cfg.worker_class_str == "gthread",
            "wsgi.multiprocess": self.cfg.workers > 1,
            "wsgi.run_once": False,
            "wsgi.file_wrapper": _ferrocorn.FileWrapper,
            "wsgi.input_terminated": True,
            "SERVER_SOFTWARE": f"ferrocorn/{__version__}",
        }
        return environ

    def options(self) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "timeout": float(cfg.timeout),
            "max_requests": int(self.max_requests),
            "limit_request_line": int(cfg.limit_request_line),
            "limit_request_fields": int(cfg.limit_request_fields),
            "limit_request_field_size": int(cfg.limit_request_field_size),
            "sendfile": bool(cfg.sendfile),
            "forwarded_allow_ips": list(cfg.forwarded_allow_ips),
            "secure_scheme_headers": [
                (str(k), str(v)) for k, v in cfg.secure_scheme_headers.items()
            ],
            "forwarder_headers": list(cfg.forwarder_headers),
            "script_name": os.environ.get("SCRIPT_NAME", ""),
            "access_log_fd": self.log.access_fd,
            "access_log_format": cfg.access_log_format,
            "ppid": self.ppid,
        }

    def run(self) -> None:
        if self.cfg.worker_class_str == "asgi":
            from ferrocorn import asgi  # the event loop and the ASGI protocol

            asgi.run(self)
            return
        listeners = [(s.fileno(), s.is_unix) for s in self.sockets]
        options = self.options()
        core_class = _ferrocorn.SyncWorker
        if self.cfg.worker_class_str == "gthread":
            core_class = _ferrocorn.GthreadWorker  # src/worker/gthread.rs
            options.update(
                threads=int(self.cfg.threads),
                worker_connections=int(self.cfg.worker_connections),
                keepalive=float(self.cfg.keepalive),
                graceful_timeout=float(self.cfg.graceful_timeout),
            )
        self._core = core_class(
            self.wsgi,
            listeners,
            self._wake_r,
            options,
            self.log.error_log,
            self.base_environ(),
            self.board,
            self.slot,
            self.hooks(),
        )
        if not self.alive:
            self._core.stop()
        self._core.run()


def boot(worker: Worker) -> int:
    """Run ``worker`` in the freshly forked child; returns the exit code."""
    log = worker.log
    try:
        worker.init_process()
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except AppImportError as e:
        log.error("%s", e)
        return APP_LOAD_ERROR
    except Exception:
        log.exception("Exception in worker process")
        return WORKER_BOOT_ERROR if not worker.booted else 1
