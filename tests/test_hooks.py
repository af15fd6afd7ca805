"""Server hooks from a config file (tests/apps/hooks_conf.py): call points, order, the
process each runs in, and the live objects they receive (gunicorn behaviour §1.1, §2.1,
§2.2, §3.1; issue 3 item 6).

Every hook appends ``name:getpid=P key=value ...`` to ``$HOOKS_LOG``.
"""

from __future__ import annotations

import os
import re
import signal
import textwrap
import time

import pytest

pytestmark = pytest.mark.slow

HOOK_LINE = re.compile(r"^(\w+):(.*)$")


class Hooks:
    def __init__(self, path):
        self.path = path

    def lines(self) -> list[tuple[str, dict[str, str]]]:
        if not os.path.exists(self.path):
            return []
        out = []
        with open(self.path) as f:
            for line in f:
                m = HOOK_LINE.match(line.rstrip("\n"))
                assert m, f"bad hook line {line!r}"
                fields = dict(kv.split("=", 1) for kv in m.group(2).split())
                out.append((m.group(1), fields))
        return out

    def named(self, name, **match) -> list[dict[str, str]]:
        return [f for n, f in self.lines() if n == name
                and all(f.get(k) == str(v) for k, v in match.items())]

    def index(self, name, **match) -> int:
        for i, (n, f) in enumerate(self.lines()):
            if n == name and all(f.get(k) == str(v) for k, v in match.items()):
                return i
        raise AssertionError(f"no {name} {match} in hooks log:\n{self.text()}")

    def wait(self, name, count=1, timeout=20, **match) -> list[dict[str, str]]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.named(name, **match)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} x {name} {match} not seen within {timeout}s; "
                                     f"hooks log:\n{self.text()}")
            time.sleep(0.05)

    def text(self) -> str:
        try:
            with open(self.path) as f:
                return f.read()
        except FileNotFoundError:
            return "<no hooks log>"


@pytest.fixture
def hooked(server, tmp_path):
    """``hooked(args) -> (srv, hooks)``: a server with ``-c hooks_conf.py``."""

    def start(args=("--workers", "2"), app="wsgiapps:app"):
        log = tmp_path / "hooks.log"
        srv = server(["-c", "hooks_conf.py", *args], app, env={"HOOKS_LOG": str(log)})
        return srv, Hooks(str(log))

    return start


def test_startup_and_shutdown_hooks_order(hooked):
    srv, hooks = hooked()
    master = srv.pid
    workers = srv.wait_workers(2)
    inits = hooks.wait("post_worker_init", count=2)
    assert {int(f["worker_pid"]) for f in inits} == set(workers)

    # master-side startup hooks: in the master, with a live server object, in order
    starting = hooks.named("on_starting")
    assert starting == [{"getpid": str(master), "pid": str(master), "workers": "2"}]
    assert hooks.named("when_ready") == [{"getpid": str(master), "pid": str(master),
                                          "workers": "2"}]
    assert hooks.index("on_starting") < hooks.index("when_ready") < hooks.index("pre_fork")

    # per worker: pre_fork (master) < post_fork (worker) < post_worker_init (worker)
    ages = sorted(int(f["age"]) for f in hooks.named("pre_fork"))
    assert len(ages) == 2 and ages[0] < ages[1], hooks.text()
    for age in ages:
        [pre] = hooks.named("pre_fork", age=age)
        [post] = hooks.named("post_fork", age=age)
        [init] = hooks.named("post_worker_init", age=age)
        assert pre["getpid"] == str(master) and pre["pid"] == str(master)
        wpid = post["worker_pid"]
        assert int(wpid) in workers
        assert post["getpid"] == wpid and post["pid"] == str(master)
        assert init["getpid"] == wpid and init["worker_pid"] == wpid
        assert init["ppid"] == str(master)
        assert (hooks.index("pre_fork", age=age) < hooks.index("post_fork", age=age)
                < hooks.index("post_worker_init", age=age))
    # the loggers handed to hooks work
    srv.wait_for_log(rf"\[{master}\] \[INFO\] hooks-conf: when_ready via server\.log")
    for pid in workers:
        srv.wait_for_log(rf"\[{pid}\] \[INFO\] hooks-conf: post_worker_init via worker\.log "
                         rf"pid={pid}")
    assert not hooks.named("on_exit")

    # graceful stop: worker_exit in each worker, child_exit in the master, on_exit last
    assert srv.stop(signal.SIGTERM) == 0
    for pid in workers:
        [wexit] = hooks.named("worker_exit", worker_pid=pid)
        assert wexit["getpid"] == str(pid) and wexit["pid"] == str(master)
        [cexit] = hooks.named("child_exit", worker_pid=pid)
        assert cexit["getpid"] == str(master)
        assert hooks.index("worker_exit", worker_pid=pid) < hooks.index("child_exit",
                                                                        worker_pid=pid)
    names = [n for n, _ in hooks.lines()]
    assert names[-1] == "on_exit", names
    assert hooks.named("on_exit") == [{"getpid": str(master), "pid": str(master)}]
    assert not hooks.named("on_reload")


def test_nworkers_changed_at_startup(hooked):
    """gunicorn's Arbiter.setup() sets num_workers, which calls nworkers_changed(server,
    workers, None) once, before on_starting (the server's pid is not set yet then)."""
    srv, hooks = hooked(("--workers", "1"))
    hooks.wait("post_worker_init")
    first_name, first = hooks.lines()[0]
    assert first_name == "nworkers_changed", hooks.text()
    assert (first["new"], first["old"]) == ("1", "None")
    assert first["getpid"] == str(srv.pid)


def test_ttin_ttou_call_nworkers_changed(hooked):
    srv, hooks = hooked()
    master = srv.pid
    srv.wait_workers(2)
    hooks.wait("post_worker_init", count=2)
    os.kill(master, signal.SIGTTIN)
    [changed] = hooks.wait("nworkers_changed", new=3, old=2)
    assert changed["getpid"] == str(master)
    [third] = hooks.wait("post_worker_init", age=3)
    srv.wait_workers(3)
    os.kill(master, signal.SIGTTOU)
    [changed] = hooks.wait("nworkers_changed", new=2, old=3)
    assert changed["getpid"] == str(master)
    # the oldest worker (age 1) is stopped: its exit hooks run
    [oldest] = hooks.named("post_worker_init", age=1)
    hooks.wait("worker_exit", worker_pid=oldest["worker_pid"])
    [child] = hooks.wait("child_exit", worker_pid=oldest["worker_pid"])
    assert child["getpid"] == str(master) and child["age"] == "1"
    remaining = srv.wait_workers(2, timeout=20)
    assert int(third["worker_pid"]) in remaining


def test_hup_calls_on_reload_then_forks_new_workers(hooked):
    srv, hooks = hooked()
    master = srv.pid
    old = srv.wait_workers(2)
    hooks.wait("post_worker_init", count=2)
    os.kill(master, signal.SIGHUP)
    [reload_] = hooks.wait("on_reload")
    assert reload_ == {"getpid": str(master), "pid": str(master), "workers": "2"}
    new_inits = hooks.wait("post_worker_init", count=4)[2:]
    assert {int(f["age"]) for f in new_inits} == {3, 4}
    for age in (3, 4):
        assert hooks.index("on_reload") < hooks.index("pre_fork", age=age)
    for pid in old:
        hooks.wait("child_exit", worker_pid=pid)
    srv.wait_workers(2, exclude=old, timeout=20)
    assert len(hooks.named("on_starting")) == 1
    assert len(hooks.named("when_ready")) == 1


def test_worker_int_and_worker_abort(hooked):
    """INT/QUIT to a worker run worker_int; ABRT runs worker_abort; both in the worker,
    which then exits and is replaced."""
    srv, hooks = hooked()
    master = srv.pid
    a, b = srv.wait_workers(2)
    hooks.wait("post_worker_init", count=2)
    os.kill(a, signal.SIGINT)
    [wint] = hooks.wait("worker_int", worker_pid=a)
    assert wint["getpid"] == str(a)
    hooks.wait("worker_exit", worker_pid=a)
    hooks.wait("child_exit", worker_pid=a, getpid=master)
    os.kill(b, signal.SIGABRT)
    [wabort] = hooks.wait("worker_abort", worker_pid=b)
    assert wabort["getpid"] == str(b)
    hooks.wait("child_exit", worker_pid=b, getpid=master)
    assert not hooks.named("worker_abort", worker_pid=a)
    assert not hooks.named("worker_int", worker_pid=b)
    srv.wait_workers(2, exclude=[a, b], timeout=20)
    assert srv.get("/pid").status == 200


def test_pre_and_post_request_hooks(hooked):
    srv, hooks = hooked(("--workers", "1"))
    [worker] = srv.wait_workers(1)
    hooks.wait("post_worker_init")
    r = srv.get("/pid?x=1", headers={"X-Hook-Test": "hello"})
    assert r.status == 200 and int(r.body) == worker
    [pre] = hooks.wait("pre_request", path="/pid")
    assert pre == {"getpid": str(worker), "worker_pid": str(worker), "method": "GET",
                   "path": "/pid", "x_hook": "hello"}
    [post] = hooks.wait("post_request", path="/pid")
    assert post == {"getpid": str(worker), "worker_pid": str(worker), "method": "GET",
                    "path": "/pid", "environ_path": "/pid", "status": "200"}
    assert hooks.index("pre_request", path="/pid") < hooks.index("post_request", path="/pid")

    r = srv.request("POST", "/echo/path", body=b"abc")
    assert r.status == 200
    [pre] = hooks.wait("pre_request", path="/echo/path")
    assert (pre["method"], pre["x_hook"]) == ("POST", "<absent>")
    [post] = hooks.wait("post_request", path="/echo/path")
    assert (post["method"], post["status"]) == ("POST", "200")

    r = srv.get("/body?size=3&status=404_Not_Found")
    assert r.status == 404
    [post] = hooks.wait("post_request", path="/body")
    assert post["status"] == "404"


@pytest.mark.ferrocorn_only
def test_pre_and_post_request_hooks_on_asgi(hooked):
    """The asgi worker calls the same request hooks; ``environ`` is the ASGI scope."""
    srv, hooks = hooked(("--workers", "1", "-k", "asgi", "--asgi-lifespan", "off"),
                        app="asgiapps:app")
    [worker] = srv.wait_workers(1)
    hooks.wait("post_worker_init")
    r = srv.get("/somewhere?x=1", headers={"X-Hook-Test": "hello"})
    assert r.status == 200
    [pre] = hooks.wait("pre_request", path="/somewhere")
    assert pre == {"getpid": str(worker), "worker_pid": str(worker), "method": "GET",
                   "path": "/somewhere", "x_hook": "hello"}
    [post] = hooks.wait("post_request", path="/somewhere")
    assert (post["getpid"], post["method"], post["status"]) == (str(worker), "GET", "200")
    assert hooks.index("pre_request", path="/somewhere") < hooks.index(
        "post_request", path="/somewhere")
    r = srv.get("/error-before")
    assert r.status == 500
    [post] = hooks.wait("post_request", path="/error-before")
    assert post["status"] == "500"


BAD_HOOKS = {
    "on_starting": "def on_starting():\n    pass\n",
    "post_fork": "def post_fork(server):\n    pass\n",
    "worker_exit": "def worker_exit(server, worker, extra):\n    pass\n",
    "pre_request": "def pre_request(worker, req, extra):\n    pass\n",
    "post_request": "def post_request(worker, req, environ, resp, extra):\n    pass\n",
    "nworkers_changed": "nworkers_changed = lambda server, new: None\n",
}


@pytest.mark.parametrize("hook", sorted(BAD_HOOKS))
def test_hook_with_wrong_arity_is_a_config_error(server, tmp_path, hook):
    conf = tmp_path / "bad_hook.py"
    conf.write_text(textwrap.dedent(BAD_HOOKS[hook]))
    srv = server(["-c", str(conf)], "wsgiapps:app", wait=False)
    rc = srv.wait_exit(30)
    out = srv.log() + srv.access_log()
    assert rc == 1, out
    assert hook in out, out
    assert "Listening at" not in out
