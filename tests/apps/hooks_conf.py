"""A gunicorn.conf.py-style config file defining every server hook (tests/test_hooks.py).

Each hook appends one line ``name:key=value key=value ...`` to the file named by the
``HOOKS_LOG`` environment variable (one ``write`` on an ``O_APPEND`` descriptor, so lines
from the master and the workers do not interleave). The values are read from the live
objects the server passes in; an attribute the object lacks is written as
``<missing:NAME>`` instead of raising, so a test failure shows what was missing.

Every line carries ``getpid=`` (the process the hook ran in). ``when_ready`` and
``post_worker_init`` also write through ``server.log`` / ``worker.log`` to prove those
loggers work.
"""

import os

_MISSING = object()


def _attr(obj, dotted):
    value = obj
    for part in dotted.split("."):
        value = getattr(value, part, _MISSING)
        if value is _MISSING:
            return f"<missing:{dotted}>"
    return value


def _record(name, **fields):
    path = os.environ.get("HOOKS_LOG")
    if not path:
        return
    details = " ".join(f"{k}={v}" for k, v in fields.items())
    line = f"{name}:getpid={os.getpid()} {details}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _header(req, wanted):
    headers = _attr(req, "headers")
    if isinstance(headers, str):  # <missing:headers>
        return headers
    items = headers.items() if hasattr(headers, "items") else headers
    for k, v in items:
        if str(k).lower() == wanted.lower():
            return v
    return "<absent>"


def on_starting(server):
    _record("on_starting", pid=_attr(server, "pid"), workers=_attr(server, "cfg.workers"))


def on_reload(server):
    _record("on_reload", pid=_attr(server, "pid"), workers=_attr(server, "cfg.workers"))


def when_ready(server):
    _record("when_ready", pid=_attr(server, "pid"), workers=_attr(server, "cfg.workers"))
    server.log.info("hooks-conf: when_ready via server.log")


def pre_fork(server, worker):
    _record("pre_fork", pid=_attr(server, "pid"), age=_attr(worker, "age"))


def post_fork(server, worker):
    _record("post_fork", pid=_attr(server, "pid"), worker_pid=_attr(worker, "pid"),
            age=_attr(worker, "age"))


def post_worker_init(worker):
    _record("post_worker_init", worker_pid=_attr(worker, "pid"), age=_attr(worker, "age"),
            ppid=_attr(worker, "ppid"))
    worker.log.info("hooks-conf: post_worker_init via worker.log pid=%s", os.getpid())


def worker_int(worker):
    _record("worker_int", worker_pid=_attr(worker, "pid"), age=_attr(worker, "age"))


def worker_abort(worker):
    _record("worker_abort", worker_pid=_attr(worker, "pid"), age=_attr(worker, "age"))


def pre_request(worker, req):
    _record("pre_request", worker_pid=_attr(worker, "pid"), method=_attr(req, "method"),
            path=_attr(req, "path"), x_hook=_header(req, "X-Hook-Test"))


def post_request(worker, req, environ, resp):
    status = _attr(resp, "status")
    _record("post_request", worker_pid=_attr(worker, "pid"), method=_attr(req, "method"),
            path=_attr(req, "path"), environ_path=environ.get("PATH_INFO"),
            status=str(status).split()[0])


def child_exit(server, worker):
    _record("child_exit", pid=_attr(server, "pid"), worker_pid=_attr(worker, "pid"),
            age=_attr(worker, "age"))


def worker_exit(server, worker):
    _record("worker_exit", pid=_attr(server, "pid"), worker_pid=_attr(worker, "pid"),
            age=_attr(worker, "age"))


def nworkers_changed(server, new_value, old_value):
    _record("nworkers_changed", pid=_attr(server, "pid"), new=new_value, old=old_value)


def on_exit(server):
    _record("on_exit", pid=_attr(server, "pid"))
