"""Running a command in a pseudo-terminal (``ferrocorn top`` draws only to a terminal)
and reading what it drew."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import termios
import time


def spawn_in_pty(argv, env=None, size=None) -> tuple[int, subprocess.Popen]:
    """Starts ``argv`` with a new pseudo-terminal as its stdin, stdout and stderr, of
    ``size`` (rows, columns) when given. Returns the terminal's primary side, which the
    caller reads, writes keys to and closes, and the process."""
    primary, secondary = pty.openpty()
    if size is not None:
        rows, columns = size
        fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    proc = subprocess.Popen(
        argv, stdin=secondary, stdout=secondary, stderr=secondary, close_fds=True, env=env,
    )
    # Our copy closed, the primary side reads EOF (EIO) once the process has gone.
    os.close(secondary)
    return primary, proc


def read_pty(primary, proc, deadline, until_text=None) -> bytes:
    """What the process drew, read until it closed the terminal or exited, the
    ``time.monotonic()`` ``deadline`` passed, or ``until_text`` showed up."""
    out = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
            if until_text and until_text in out:
                break
        elif proc.poll() is not None:
            break
    return out
