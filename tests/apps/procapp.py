"""App for process-setting tests (tests/test_process_settings.py, tests/test_usr2.py).

At import it records the environment it saw (``-e`` with ``--preload`` must already be
applied in the master) and, when ``PROCAPP_IMPORT_DELAY`` is set, sleeps that long so
that booting is slow and observable; then it prints ``procapp-imported pid=N``.

Routes answer ``key=value`` lines (no json: a worker that dropped root privileges may
be unable to import modules the master has not loaded): ``/whoami`` (pid, ppid, uid,
gid, groups), ``/import-env?name=X`` (the value at import time), ``/env?name=X`` (the
value now); anything else answers ``ok <pid>``.
"""

import os
import sys
import time
from urllib.parse import parse_qs

IMPORT_ENV = dict(os.environ)
IMPORT_PID = os.getpid()

_delay = float(os.environ.get("PROCAPP_IMPORT_DELAY", "0") or 0)
if _delay:
    time.sleep(_delay)
print(f"procapp-imported pid={os.getpid()}", file=sys.stderr, flush=True)


def _lines(start_response, data):
    text = "".join(f"{k}={'<unset>' if v is None else v}\n" for k, v in data.items())
    body = text.encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    if path == "/whoami":
        return _lines(start_response, {
            "pid": os.getpid(), "ppid": os.getppid(), "uid": os.getuid(), "euid": os.geteuid(),
            "gid": os.getgid(), "egid": os.getegid(),
            "groups": ",".join(str(g) for g in sorted(os.getgroups())),
            "import_pid": IMPORT_PID,
        })
    if path == "/import-env":
        return _lines(start_response, {"value": IMPORT_ENV.get(query.get("name", ""))})
    if path == "/env":
        return _lines(start_response, {"value": os.environ.get(query.get("name", ""))})
    body = f"ok {os.getpid()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
