"""systemd integration without libsystemd: socket activation and ``sd_notify``.

Socket activation (``sd_listen_fds``): systemd starts the service with the listening
sockets at descriptors 3, 4, ... and sets ``LISTEN_FDS`` (how many) and ``LISTEN_PID``
(who they are for). They are ours only when ``LISTEN_PID`` is this process; the
variables are then removed so that no child mistakes them for its own.

Notifications (``sd_notify``): one datagram of ``KEY=VALUE`` lines to the unix socket
named by ``NOTIFY_SOCKET`` (a leading ``@`` names an abstract socket). Without that
variable every call is a no-op, so the master can notify unconditionally.

The master sends, beyond gunicorn (which sends one ``READY=1`` before any worker has
booted): ``READY=1`` once every worker of the first generation has booted (its
scoreboard slot left ``booting``), ``RELOADING=1`` on HUP and ``READY=1`` again once
the new generation is up, and ``STOPPING=1`` when it starts to shut down. A master
started by USR2 adds ``MAINPID=`` so that systemd follows the upgrade.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

SD_LISTEN_FDS_START = 3


def listen_fds(unset_environment: bool = True) -> int:
    """How many sockets systemd passed to this process (0 when none or not for us)."""
    try:
        fds = int(os.environ.get("LISTEN_FDS", "0") or 0)
        listen_pid = int(os.environ.get("LISTEN_PID", "0") or 0)
    except ValueError:
        return 0
    if listen_pid != os.getpid():
        return 0
    if unset_environment:
        os.environ.pop("LISTEN_PID", None)
        os.environ.pop("LISTEN_FDS", None)
        os.environ.pop("LISTEN_FDNAMES", None)
    return max(0, fds)


def listen_fd_numbers(count: int) -> list[int]:
    return list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count))


def notify_address() -> str | bytes | None:
    """The ``NOTIFY_SOCKET`` address in the form ``socket.connect`` takes."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return None
    if addr[0] == "@":
        return "\0" + addr[1:]
    return addr


def sd_notify(state: str, log: Any = None) -> bool:
    """Send ``state`` to systemd; True if a datagram went out. Never raises."""
    addr = notify_address()
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(addr)
            sock.sendall(state.encode("utf-8"))
    except OSError as e:
        if log is not None:
            log.debug("sd_notify(%r) to %s failed: %s", state, os.environ["NOTIFY_SOCKET"], e)
        return False
    return True


def reloading_message() -> str:
    """``RELOADING=1`` with the timestamp that ``Type=notify-reload`` requires."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return f"RELOADING=1\nMONOTONIC_USEC={usec}"
