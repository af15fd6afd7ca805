"""A view that hangs inside C code with the GIL released, like a stuck database driver.

``/c-hang?s=N`` blocks in ``pthread_mutex_timedlock`` on a mutex its own thread already
holds, for N seconds. POSIX says that call never fails with EINTR: signals arriving
meanwhile have their C-level handler run, but Python-level handlers (gunicorn's SIGABRT
handler, ``worker_abort``) cannot run until it returns. ``/pid`` answers with the pid.
"""

import ctypes
import ctypes.util
import os
import time

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def c_hang(environ, start_response):
    seconds = float(environ.get("QUERY_STRING", "").partition("s=")[2] or "30")
    errors = environ["wsgi.errors"]
    errors.write(f"c-hang-start pid={os.getpid()}\n")
    errors.flush()
    mutex = ctypes.create_string_buffer(64)  # zeroed: PTHREAD_MUTEX_INITIALIZER (glibc)
    _libc.pthread_mutex_lock(mutex)
    deadline = time.time() + seconds  # CLOCK_REALTIME, as timedlock wants
    abstime = _Timespec(int(deadline), int((deadline % 1) * 1e9))
    rc = _libc.pthread_mutex_timedlock(mutex, ctypes.byref(abstime))  # GIL released
    body = f"c-hang returned {rc}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def pid(environ, start_response):
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/c-hang":
        return c_hang(environ, start_response)
    return pid(environ, start_response)
