"""HTTP/1.1 and ASGI-semantics rows of the checklist (uvicorn's tests, the ASGI spec) for
the asgi worker, over raw sockets. Apps: tests/apps/asgichecks.py. What tests/test_asgi.py
already covers is not repeated here. ``xfail(strict=True)`` marks what the Rust worker
does not do yet: remove the marker when it does.
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import time

import pytest

pytestmark = pytest.mark.ferrocorn_only

ASGI = ["-k", "asgi"]


@pytest.fixture
def checks(server_pool):
    return server_pool.get(ASGI, "asgichecks:app")


@pytest.fixture
def short_keepalive(server_pool):
    return server_pool.get([*ASGI, "--keep-alive", "1"], "asgichecks:app")


def _read_response(s: socket.socket, helpers, method="GET", timeout=10.0):
    """One complete response from an open connection."""
    s.settimeout(timeout)
    buf = b""
    while True:
        if buf:
            try:
                rs = helpers.parse_responses(buf, method)
            except Exception:
                rs = []
            if rs and rs[0].complete:
                return rs[0]
        chunk = s.recv(65536)
        assert chunk, f"connection closed before a full response: {buf[:300]!r}"
        buf += chunk


def _eof_within(s: socket.socket, timeout: float) -> tuple[bool, bytes]:
    """(closed by the server within timeout, bytes read meanwhile)."""
    s.settimeout(timeout)
    got = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return True, got
            got += chunk
    except TimeoutError:
        return False, got
    except ConnectionResetError:
        return True, got


# --------------------------------------------------------------------------- connections


def test_idle_keepalive_connection_is_closed_after_keepalive(short_keepalive, helpers):
    with helpers.connect(short_keepalive.address) as s:
        s.sendall(helpers.build_request("GET", "/a"))
        assert _read_response(s, helpers).status == 200
        t0 = time.monotonic()
        closed, extra = _eof_within(s, 5)
        assert closed and extra == b""
        assert 0.5 < time.monotonic() - t0 < 4


def test_pipelined_slow_request_is_not_cut_by_keepalive(short_keepalive, helpers):
    with helpers.connect(short_keepalive.address) as s:
        s.sendall(helpers.build_request("GET", "/sleep?2")
                  + helpers.build_request("GET", "/after"))
        s.settimeout(15)
        buf = b""
        while b'"/after"' not in buf:
            chunk = s.recv(65536)
            assert chunk, buf
            buf += chunk
    rs = helpers.parse_responses(buf)
    assert rs[0].body == b"slept"
    assert rs[1].json()["path"] == "/after"


def test_client_connection_close(checks, helpers):
    with helpers.connect(checks.address) as s:
        s.sendall(helpers.build_request("GET", "/one", headers={"Connection": "close"})
                  + helpers.build_request("GET", "/two"))
        closed, data = _eof_within(s, 10)
    assert closed
    rs = helpers.parse_responses(data)
    assert len(rs) == 1  # the request after Connection: close is not served
    assert rs[0].json()["path"] == "/one"
    assert rs[0].header("connection") == "close"


def test_http10_closes_unless_keep_alive_asked(checks, helpers):
    with helpers.connect(checks.address) as s:
        s.sendall(b"GET /ten HTTP/1.0\r\n\r\n")
        closed, data = _eof_within(s, 10)
    assert closed
    assert helpers.parse_responses(data)[0].status == 200
    with helpers.connect(checks.address) as s:
        s.sendall(b"GET /ten HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        r = _read_response(s, helpers)
        assert r.header("connection").lower() == "keep-alive"
        s.sendall(b"GET /again HTTP/1.0\r\n\r\n")
        assert _read_response(s, helpers).json()["path"] == "/again"


def test_request_split_in_single_bytes(checks):
    r = checks.get("/bytes-at-a-time", split="byte")
    assert r.status == 200
    assert r.json()["path"] == "/bytes-at-a-time"


@pytest.mark.parametrize("line", [b"G?T / HTTP/1.1", b"GET /?x=y z HTTP/1.1", b"GET / HTTP1.1"])
def test_invalid_request_line_is_400(checks, line):
    raw = checks.raw(line + b"\r\nHost: x\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400 ")


def test_garbage_is_400(checks):
    raw = checks.raw(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400 ")


def test_header_value_characters(checks):
    r = checks.get("/hv", headers={"X-Tab": "a\tb c", "X-Latin": "µ".encode("latin-1")})
    assert r.status == 200


def test_huge_header_is_refused(checks):
    raw = checks.raw(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 431 ")  # as the sync worker (the same parser)


def test_h2c_upgrade_is_ignored(checks):
    r = checks.get("/h2c", headers={"Connection": "Upgrade, HTTP2-Settings",
                                   "Upgrade": "h2c", "HTTP2-Settings": "AAMAAABkAARAAAAAAAIAAAAA"})
    assert r.status == 200
    assert r.json()["path"] == "/h2c"


def test_term_closes_idle_connection_without_bytes(server, helpers):
    srv = server(ASGI, "asgichecks:app")
    with helpers.connect(srv.address) as s:
        s.sendall(helpers.build_request("GET", "/x"))
        assert _read_response(s, helpers).status == 200
        srv.proc.send_signal(signal.SIGTERM)
        closed, data = _eof_within(s, 10)
    assert closed and data == b""
    assert srv.wait_exit(30) == 0


@pytest.mark.parametrize("xff,client", [
    ("203.0.113.7, 10.1.1.1, 127.0.0.1", "203.0.113.7"),  # every proxy trusted: skip them
    ("203.0.113.7, 198.51.100.9", "198.51.100.9"),  # the rightmost untrusted address
    ("", "127.0.0.1"),  # an empty header is no header
])
def test_forwarded_for_through_several_proxies(server_pool, xff, client):
    srv = server_pool.get([*ASGI, "--forwarded-allow-ips", "127.0.0.1,10.1.1.1"],
                          "asgiapps:app")
    scope = srv.get("/scope", headers={"X-Forwarded-For": xff}).json()
    assert scope["client"][0] == client


@pytest.mark.parametrize("proto,scheme", [("https", "https"), ("HTTPS", "https"),
                                          ("nonsense", "http"), ("https, http", "http")])
def test_forwarded_proto_values(server_pool, proto, scheme):
    srv = server_pool.get(ASGI, "asgiapps:app")
    assert srv.get("/scope", headers={"X-Forwarded-Proto": proto}).json()["scheme"] == scheme


# --------------------------------------------------------------------------- response framing


def test_app_transfer_encoding_is_not_doubled(checks, helpers):
    raw = checks.raw(helpers.build_request("GET", "/app-chunked"))
    r = helpers.final_response(raw)
    assert r.body == b"abcd"
    assert r.header_all("transfer-encoding") == ["chunked"]
    assert raw.count(b"0\r\n\r\n") == 1


def test_app_transfer_encoding_empty_body(checks, helpers):
    raw = checks.raw(helpers.build_request("GET", "/app-chunked-empty"))
    r = helpers.final_response(raw)
    assert r.status == 200
    assert r.body == b""
    assert raw.count(b"0\r\n\r\n") <= 1


def test_app_transfer_encoding_on_head(checks, helpers):
    raw = checks.raw(helpers.build_request("HEAD", "/app-chunked"))
    head, _, rest = bytes(raw).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert rest == b""


def test_bodyless_status_ignores_transfer_encoding(checks, helpers):
    raw = checks.raw(helpers.build_request("GET", "/no-content-te"))
    head, _, rest = bytes(raw).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 204")
    assert b"transfer-encoding" not in head.lower()
    assert rest == b""


def test_body_shorter_than_content_length_closes(checks, helpers):
    with helpers.connect(checks.address) as s:
        s.sendall(helpers.build_request("GET", "/short-length")
                  + helpers.build_request("GET", "/next"))
        closed, data = _eof_within(s, 10)
    assert closed
    assert data.endswith(b"12345")
    assert b'"/next"' not in data


def test_body_longer_than_content_length_is_not_sent(checks, helpers):
    with helpers.connect(checks.address) as s:
        s.sendall(helpers.build_request("GET", "/long-length")
                  + helpers.build_request("GET", "/next"))
        closed, data = _eof_within(s, 10)
    assert closed
    assert b"4567890" not in data  # nothing past the announced length
    assert b'"/next"' not in data


def test_headers_from_an_iterator(checks):
    r = checks.get("/iter-headers")
    assert (r.header("x-one"), r.header("x-two"), r.body) == ("1", "2", b"iter")


def test_app_server_and_date_headers_replace_the_defaults(checks):
    r = checks.get("/own-server-header")
    assert r.header_all("server") == ["mine"]
    assert r.header_all("date") == ["yesterday"]


# --------------------------------------------------------------------------- ASGI messages


def test_body_before_start_is_500(checks):
    assert checks.get("/body-before-start").status == 500


@pytest.mark.parametrize("path", ["/partial", "/double-start"])
def test_broken_response_after_start_closes_without_500(checks, path):
    raw = checks.raw(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b" 500 " not in raw


def test_message_after_final_body_is_ignored(checks, helpers):
    # The spec: messages after the final body are ignored (uvicorn closes the connection;
    # ferrocorn keeps it).
    with helpers.connect(checks.address) as s:
        s.sendall(helpers.build_request("GET", "/after-complete"))
        assert _read_response(s, helpers).body == b"done"
        s.sendall(helpers.build_request("GET", "/still-here"))
        assert _read_response(s, helpers).json()["path"] == "/still-here"


def test_value_returned_is_logged(checks):
    r = checks.get("/return-value")
    assert (r.status, r.body) == (200, b"value")
    checks.wait_for_log("ASGI callable should return None, but returned '123'.")


@pytest.mark.parametrize("path", ["/str-headers", "/unknown-message"])
def test_invalid_message_raises_in_send(checks, path):
    assert checks.get(path).status == 500


def test_unknown_keys_in_messages_are_accepted(checks):
    r = checks.get("/extra-keys")
    assert (r.status, r.body) == (200, b"extra")


def test_http_scope_extensions(checks):
    assert checks.get("/ext").json()["extensions"] == ["http.response.pathsend"]


def test_send_to_a_gone_client_raises_oserror(server, tmp_path, helpers):
    # ASGI spec 2.4: send() on a closed connection raises an OSError subclass, and the
    # server does not log it as an application error.
    out = tmp_path / "out"
    out.mkdir()
    srv = server(ASGI, "asgichecks:app", env={"ASGI_TEST_DIR": str(out)})
    with helpers.connect(srv.address) as s:
        s.sendall(helpers.build_request("GET", "/stream-forever?id=gone"))
        s.settimeout(10)
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
    record = out / "gone.json"
    deadline = time.monotonic() + 10
    while not record.exists():
        assert time.monotonic() < deadline, "send() never failed"
        time.sleep(0.05)
    assert json.loads(record.read_text()) == {"error": "ClientDisconnected", "oserror": True}
    time.sleep(0.2)
    assert "Exception in ASGI application" not in srv.log()


@pytest.mark.xfail(strict=True, reason="Rust + asgi.py: the http.response.trailers "
                   "extension (advertise it, chunk the body, send trailers when the "
                   "request has TE: trailers) is not implemented")
def test_response_trailers(checks, helpers):
    assert "http.response.trailers" in checks.get("/ext").json()["extensions"]
    raw = checks.raw(helpers.build_request("GET", "/trailers", headers={"TE": "trailers"}))
    assert b"\r\n0\r\nx-checksum: abc\r\n\r\n" in bytes(raw).lower()


def test_disconnect_grace_period_cancels_the_app(server, tmp_path, helpers):
    out = tmp_path / "out"
    out.mkdir()
    srv = server([*ASGI, "--asgi-disconnect-grace-period", "1"], "asgichecks:app",
                 env={"ASGI_TEST_DIR": str(out)})
    with helpers.connect(srv.address) as s:
        s.sendall(helpers.build_request("GET", "/wait-disconnect?id=grace"))
        time.sleep(0.3)
    deadline = time.monotonic() + 6
    record = out / "grace.json"
    while not record.exists():
        assert time.monotonic() < deadline, "the app was not cancelled"
        time.sleep(0.05)
    assert json.loads(record.read_text()) == {"cancelled": True}


# --------------------------------------------------------------------------- lifespan


@pytest.mark.parametrize("app,version", [("asgichecks:lifespan_recorder", "3.0"),
                                         ("asgichecks:asgi2_lifespan", "2.0")])
def test_lifespan_scope(server, tmp_path, app, version):
    out = tmp_path / "out"
    out.mkdir()
    srv = server(ASGI, app, env={"ASGI_TEST_DIR": str(out)})
    srv.wait_for_log("Application startup complete.")
    assert json.loads((out / "lifespan-scope.json").read_text()) == {
        "type": "lifespan", "asgi": {"version": version, "spec_version": "2.0"}, "state": {}}
    assert srv.get("/").body == b"ok"


def test_lifespan_shutdown_failed_is_logged(server, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    srv = server(ASGI, "asgichecks:lifespan_shutdown_fails", env={"ASGI_TEST_DIR": str(out)})
    srv.wait_for_log("Application startup complete.")
    srv.stop(signal.SIGTERM)
    log = srv.log()
    assert "could not flush the cache" in log
    assert "Application shutdown failed. Exiting." in log
