"""USR2: replace the running master by a new one without closing the listeners.

As gunicorn (``Arbiter.reexec``): the master forks; the child runs ``pre_exec`` and
execs ``python -m ferrocorn <the original arguments>`` in the original directory,
with the environment the master started with plus

- ``GUNICORN_FD=3,4,...``: the listening descriptors, inherited across exec;
- ``GUNICORN_PID``: the old master's pid;
- under systemd socket activation, ``LISTEN_FDS``/``LISTEN_PID`` instead of
  ``GUNICORN_FD`` (the descriptors keep their numbers, 3 and up).

The new master adopts those sockets instead of binding, writes ``<pidfile>.2``,
names itself ``master [NAME.2]`` and starts its own workers, so old and new workers
serve the same sockets side by side. The operator then stops the old master (WINCH
stops its workers if it is a daemon, TERM stops it); once its parent has changed,
the new master logs ``Master has been promoted.``, renames its pidfile and drops the
``.2``. Rolling back is HUP to the old master and TERM to the new one.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn

# Variables describing inherited sockets: never passed on from the old environment.
INHERIT_VARS = ("GUNICORN_FD", "GUNICORN_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


def inherited_master_pid(environ: Mapping[str, str] | None = None) -> int:
    """The old master's pid when this master was started by USR2, else 0."""
    env = os.environ if environ is None else environ
    try:
        return int(env.get("GUNICORN_PID", "0") or 0)
    except ValueError:
        return 0


def take_gunicorn_fds() -> list[int]:
    """The descriptors in ``GUNICORN_FD`` (removed from the environment)."""
    raw = os.environ.pop("GUNICORN_FD", "")
    return [int(fd) for fd in raw.split(",") if fd.strip()]


def new_master_environ(
    env_orig: Mapping[str, str], master_pid: int, fds: Sequence[int], systemd: bool
) -> dict[str, str]:
    env = {k: v for k, v in env_orig.items() if k not in INHERIT_VARS}
    env["GUNICORN_PID"] = str(master_pid)
    if systemd:
        env["LISTEN_PID"] = str(os.getpid())
        env["LISTEN_FDS"] = str(len(fds))
    else:
        env["GUNICORN_FD"] = ",".join(str(fd) for fd in fds)
    return env


def exec_new_master(
    argv: Sequence[str],
    cwd: str,
    env_orig: Mapping[str, str],
    master_pid: int,
    fds: Sequence[int],
    systemd: bool,
) -> NoReturn:
    """In the forked child: become the new master. Never returns."""
    for fd in fds:
        os.set_inheritable(fd, True)
    env = new_master_environ(env_orig, master_pid, fds, systemd)
    os.chdir(cwd)
    os.execve(sys.executable, [sys.executable, "-m", "ferrocorn", *argv], env)
