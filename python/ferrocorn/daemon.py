"""Process set-up shared by the master and the workers: ``--daemon``, ``--user`` and
``--group`` (with ``--initgroups``), ``-e/--env``.

Each follows gunicorn (``util.daemonize``, ``util.set_owner_process``,
``Arbiter.setup``); the differences are noted where they are.
"""

from __future__ import annotations

import os
import pwd
import sys
from collections.abc import Mapping
from typing import Any

REDIRECT_TO = getattr(os, "devnull", "/dev/null")


def daemonize(enable_stdio_inheritance: bool = False) -> None:
    """``-D``: detach from the terminal, as gunicorn does.

    Fork twice (the first parent exits 0 at once, so the shell gets its prompt back),
    ``setsid`` in between so the daemon has no controlling terminal and cannot get
    one, umask 022. The working directory is kept (``--chdir`` already applied).
    stdin always becomes /dev/null; stdout and stderr too, unless
    ``--enable-stdio-inheritance``, which keeps them when they are not a terminal
    (``ferrocorn -D -R ... > out.log 2>&1``). The pidfile, written later, names the
    daemon's pid.
    """
    if os.environ.get("NOTIFY_SOCKET"):
        print(
            "Warning: you shouldn't specify `daemon = True` when launching by systemd "
            "with `Type = notify`",
            file=sys.stderr,
            flush=True,
        )
    sys.stdout.flush()
    sys.stderr.flush()
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.umask(0o22)

    fd_null = os.open(REDIRECT_TO, os.O_RDWR)
    if not enable_stdio_inheritance:
        for fd in (0, 1, 2):
            os.dup2(fd_null, fd)
    else:
        os.dup2(fd_null, 0)
        for stream, fd in ((sys.stdout, 1), (sys.stderr, 2)):
            try:
                if stream.fileno() == fd and stream.isatty():
                    os.dup2(fd_null, fd)
            except (AttributeError, OSError, ValueError):
                pass
    if fd_null > 2:
        os.close(fd_null)


def set_owner_process(uid: int, gid: int, initgroups: bool = False) -> None:
    """``--user``/``--group`` in a worker, after fork and before the app is imported.

    As gunicorn: the group first (``initgroups`` gives the user's supplementary groups),
    then the user; nothing changes when the ids are already ours. Beyond gunicorn: a
    root master switching to another user without ``--initgroups`` also drops root's
    supplementary groups (gunicorn leaves group 0 in the worker's list).
    """
    switching_user = bool(uid) and uid != os.getuid()
    if gid or switching_user:
        gid = abs(gid) & 0x7FFFFFFF
        username = None
        if initgroups:
            try:
                username = pwd.getpwuid(uid).pw_name
            except KeyError:
                username = None
        if username is not None:
            os.initgroups(username, gid)
        elif switching_user and os.geteuid() == 0:
            os.setgroups([gid])
        if gid != os.getgid():
            os.setgid(gid)
    if switching_user:
        os.setuid(uid)


def chown_log_files(cfg: Any, log: Any) -> None:
    """Give the log files to ``--user``/``--group`` so workers can reopen them on
    USR1 after dropping privileges (gunicorn's ``glogging`` does the same)."""
    if os.geteuid() != 0 or (cfg.uid == os.geteuid() and cfg.gid == os.getegid()):
        return
    for path in (cfg.errorlog, cfg.accesslog):
        if path in (None, "-") or not os.path.exists(path):
            continue
        try:
            os.chown(path, cfg.uid, cfg.gid)
        except OSError as e:
            log.warning("Cannot give %s to uid %s gid %s: %s", path, cfg.uid, cfg.gid, e)


def apply_env(env: Mapping[str, str]) -> None:
    """``-e KEY=VALUE``: set in this process (the master sets them before it imports
    the app with ``--preload``; each worker sets them again after fork)."""
    for key, value in env.items():
        os.environ[key] = value


def restore_env(keys: Mapping[str, str], original: Mapping[str, str]) -> None:
    """Undo ``apply_env`` for ``keys`` before a reload applies the new ones."""
    for key in keys:
        if key in original:
            os.environ[key] = original[key]
        else:
            os.environ.pop(key, None)
