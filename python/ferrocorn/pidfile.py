"""The ``--pid`` file, as gunicorn manages it: written at start, refused when another
live master owns it, removed on exit only if it still names this process."""

from __future__ import annotations

import errno
import os


class PidfileError(Exception):
    """The pidfile belongs to a running process or cannot be written."""


class Pidfile:
    def __init__(self, path: str) -> None:
        self.path = path
        self.pid: int | None = None

    def create(self, pid: int, force: bool = False) -> None:
        old = None if force else self.validate()
        if old and old != os.getpid():
            raise PidfileError(
                f"Already running on PID {old} (or pid file '{self.path}' is stale); "
                "stop that server or remove the file"
            )
        self.pid = pid
        directory = os.path.dirname(os.path.abspath(self.path))
        tmp = os.path.join(directory, f".{os.path.basename(self.path)}.{pid}.tmp")
        try:
            with open(tmp, "w") as f:
                f.write(f"{pid}\n")
            os.replace(tmp, self.path)
        except OSError as e:
            raise PidfileError(f"Cannot write pid file '{self.path}': {e.strerror}") from e

    def rename(self, path: str) -> None:
        """A master promoted after USR2 moves from ``<pidfile>.2`` to the real name.
        The old master is gone by then (possibly a zombie not yet reaped, which
        ``validate`` would take for alive), so the file is written unconditionally."""
        self.unlink()
        self.path = path
        self.create(self.pid if self.pid is not None else os.getpid(), force=True)

    def unlink(self) -> None:
        """Remove the file if it is still ours."""
        try:
            with open(self.path) as f:
                if int(f.read().strip() or 0) == self.pid:
                    os.unlink(self.path)
        except (OSError, ValueError):
            pass

    def validate(self) -> int | None:
        """The pid of a live process named by the file, or None."""
        try:
            with open(self.path) as f:
                pid = int(f.read().strip() or 0)
        except (OSError, ValueError):
            return None
        if pid <= 0:
            return None
        try:
            os.kill(pid, 0)
        except OSError as e:
            if e.errno == errno.ESRCH:
                return None
            if e.errno == errno.EPERM:
                return pid
            raise
        return pid
