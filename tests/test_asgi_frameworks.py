"""Real ASGI frameworks on the asgi worker: Starlette with lifespan state, and Django
Channels (HTTP through Django's handler, a WebSocket consumer) with the ``websockets``
client. FastAPI, plain Django ASGI and ASGI 2 are in tests/test_asgi.py.
"""

from __future__ import annotations

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

websockets = pytest.importorskip("websockets")
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402
from websockets.sync.client import connect as ws_connect  # noqa: E402

pytestmark = pytest.mark.ferrocorn_only

ASGI = ["-k", "asgi"]


def _ws(srv, path: str, **kw):
    kw.setdefault("open_timeout", 10)
    kw.setdefault("close_timeout", 5)
    kw.setdefault("proxy", None)
    return ws_connect(f"ws://{srv.host}:{srv.port}{path}", **kw)


# --------------------------------------------------------------------------- Starlette


@pytest.fixture
def starlette_server(server, tmp_path):
    pytest.importorskip("starlette")
    out = tmp_path / "out"
    out.mkdir()
    srv = server([*ASGI, "--workers", "2"], "starletteapp:app", env={"ASGI_TEST_DIR": str(out)})
    srv.out = out
    return srv


def test_starlette_lifespan_state_in_every_request_of_every_worker(starlette_server):
    srv = starlette_server
    pids = srv.wait_workers(2)
    srv.wait_for_log("Application startup complete.")
    seen: dict[int, list[int]] = {}
    deadline = time.monotonic() + 20

    def one(_):
        return httpx.get(srv.url + "/state", timeout=10).json()

    with ThreadPoolExecutor(8) as ex:
        while len(seen) < 2 or min(len(v) for v in seen.values()) < 3:
            assert time.monotonic() < deadline, f"requests reached only {sorted(seen)}"
            for r in ex.map(one, range(16)):
                # Each worker's own lifespan state reaches each of its requests...
                assert r["boot_pid"] == r["pid"]
                # ...as a shallow copy: attributes set by one request do not leak.
                assert r["leaked"] is False
                seen.setdefault(r["pid"], []).append(r["hits"])
    assert set(seen) == set(pids)
    for hits in seen.values():
        # The dict in the state is shared by the requests of one worker.
        assert len(set(hits)) == len(hits)
    assert srv.log().count("Application startup complete.") == 2


def test_starlette_state_in_websocket_scope(starlette_server):
    with _ws(starlette_server, "/ws") as ws:
        first = json.loads(ws.recv(timeout=10))
        assert first["boot_pid"] == first["pid"]
        ws.send("abc")
        assert ws.recv(timeout=10) == "cba"


def test_starlette_shutdown_runs_in_each_worker(starlette_server):
    pids = starlette_server.wait_workers(2)
    assert httpx.get(starlette_server.url + "/state", timeout=10).status_code == 200
    assert starlette_server.stop(signal.SIGTERM) == 0
    assert sorted(p.name for p in starlette_server.out.iterdir()) == sorted(
        f"shutdown-{p}" for p in pids)
    assert starlette_server.log().count("Application shutdown complete.") == 2


def test_starlette_background_task_does_not_hold_the_connection(starlette_server, helpers):
    # gunicorn 27.0.1's fix: the next request on a kept-alive connection is served once
    # the response is complete, while the app's background task still runs.
    with httpx.Client(base_url=starlette_server.url, timeout=20) as c:
        assert c.get("/background?s=3").text == "queued"
        t0 = time.monotonic()
        r = c.get("/state")
        assert r.status_code == 200
        assert time.monotonic() - t0 < 2


@pytest.mark.parametrize("mode", ["on", "auto"])
def test_starlette_failing_startup_halts_with_3(server, mode):
    srv = server([*ASGI, "--asgi-lifespan", mode], "starletteapp:failing", wait=False)
    assert srv.wait_exit(30) == 3
    log = srv.log()
    assert "database unreachable" in log
    assert "Application startup failed. Exiting." in log
    assert "Worker failed to boot." in log


# --------------------------------------------------------------------------- Channels


@pytest.fixture
def channels_server(server_pool, helpers):
    pytest.importorskip("channels")
    project = helpers.apps_dir / "djangoproject"
    return server_pool.get([*ASGI, "--chdir", str(project)], "config.channels_asgi:application")


def _origin(srv) -> str:
    return f"http://127.0.0.1:{srv.port}"


def test_channels_http_through_django(channels_server):
    r = httpx.get(channels_server.url + "/", timeout=30)
    assert r.status_code == 200
    assert "The install worked successfully" in r.text
    r = httpx.get(channels_server.url + "/admin/", timeout=30)
    assert r.status_code == 302
    assert r.headers["location"] == "/admin/login/?next=/admin/"
    r = httpx.get(channels_server.url + "/admin/login/", timeout=30)
    assert r.status_code == 200
    assert "csrftoken" in r.cookies
    channels_server.wait_for_log("ASGI 'lifespan' protocol appears unsupported.")


def test_channels_websocket_subprotocol_and_echo(channels_server):
    with _ws(channels_server, "/ws/echo/", origin=_origin(channels_server),
             subprotocols=["v2", "chat"]) as ws:
        assert ws.subprotocol == "chat"
        ws.send("hello")
        assert ws.recv(timeout=10) == "echo: hello"
        ws.send("dé")
        assert ws.recv(timeout=10) == "echo: dé"
        ws.send(b"\x01\x02\x03")
        assert ws.recv(timeout=10) == b"\x03\x02\x01"


def test_channels_close_code_from_the_server(channels_server):
    with _ws(channels_server, "/ws/echo/", origin=_origin(channels_server)) as ws:
        assert ws.subprotocol is None
        ws.send("close")
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
    assert ws.close_code == 4001
    assert ws.close_reason == "asked to"


def test_channels_refused_subprotocol_is_403(channels_server):
    with pytest.raises(InvalidStatus) as info, _ws(channels_server, "/ws/echo/",
                                                   origin=_origin(channels_server),
                                                   subprotocols=["v2"]):
        pass
    assert info.value.response.status_code == 403


def test_channels_foreign_origin_is_403(channels_server):
    with pytest.raises(InvalidStatus) as info, _ws(channels_server, "/ws/echo/",
                                                   origin="http://evil.example"):
        pass
    assert info.value.response.status_code == 403


def test_channels_unknown_websocket_path_is_refused(channels_server):
    # URLRouter raises for an unknown route before accepting: a 500, and the error log.
    with pytest.raises(InvalidStatus) as info, _ws(channels_server, "/ws/nope/",
                                                   origin=_origin(channels_server)):
        pass
    assert info.value.response.status_code == 500
    channels_server.wait_for_log("No route found for path 'ws/nope/'")
