"""Process titles: ``ferrocorn: master [NAME]`` and ``ferrocorn: worker [NAME]``.

With the optional ``setproctitle`` package (``pip install ferrocorn[setproctitle]``) the
whole title replaces the command line shown by ``ps``/``top`` (``/proc/PID/cmdline``),
as under gunicorn. Without it only the kernel's 15-byte process name
(``/proc/PID/comm``, what ``ps -e`` and ``top`` show by default) is set through
``prctl(PR_SET_NAME)``, with the same text cut to fit: ``ferrocorn: mast`` and
``ferrocorn: work``.

``setproctitle`` is initialised at import, before anything edits the process
environment: it relocates ``environ`` on first use, and doing that after a variable
was removed (``LISTEN_FDS`` under socket activation) garbles titles (gunicorn #3430).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

PREFIX = "ferrocorn: "
PR_SET_NAME = 15
COMM_LEN = 15

_setproctitle: Callable[[str], None] | None
try:
    import setproctitle as _spt

    _spt.getproctitle()
    _setproctitle = _spt.setproctitle
except ImportError:  # optional dependency
    _setproctitle = None


def _set_comm(name: str) -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        buf = ctypes.create_string_buffer(name.encode("utf-8", "replace")[:COMM_LEN])
        return int(libc.prctl(PR_SET_NAME, buf, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def set_title(title: str) -> None:
    """Set this process's title to ``ferrocorn: <title>``."""
    full = PREFIX + title
    if _setproctitle is not None:
        _setproctitle(full)
    else:
        _set_comm(full)


def has_setproctitle() -> bool:
    return _setproctitle is not None
