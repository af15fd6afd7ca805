"""Response framing and server-generated responses (gunicorn behaviour §4.2-4.3)."""

from __future__ import annotations

import email.utils
import re
import time
from datetime import UTC, datetime

import pytest

# Issue 4: the same behaviour from both worker classes (see conftest.py).
pytestmark = pytest.mark.usefixtures("worker_class")

# --------------------------------------------------------------------------- error responses


@pytest.mark.parametrize(("request_bytes", "status", "reason"), [
    (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n", 400, "Bad Request"),
    (b"get / HTTP/1.0\r\n\r\n", 400, "Bad Request"),
    (b"GET /" + b"u" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "URI Too Long"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"v" * 9000 + b"\r\n\r\n", 431,
     "Request Header Fields Too Large"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nExpect: whatever\r\n\r\n", 417, "Expectation Failed"),
])
def test_error_response_format(echo_server, request_bytes, status, reason):
    raw = echo_server.raw(request_bytes)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    # always HTTP/1.1, even for an HTTP/1.0 request
    assert lines[0] == f"HTTP/1.1 {status} {reason}".encode(), lines[0]
    r = echo_server.parse(raw)[0]
    assert r.header("Connection").lower() == "close"
    assert r.header("Content-Type").startswith("text/html")
    assert int(r.header("Content-Length")) == len(body)
    assert r.complete
    assert f"<title>{reason}</title>".encode() in body


def test_unsupported_transfer_coding_is_501(echo_server):
    raw = echo_server.raw(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: br, chunked\r\n\r\n"
                          b"0\r\n\r\n")
    assert re.match(rb"HTTP/1\.1 501 ", raw), raw[:100]
    assert echo_server.parse(raw)[0].header("Connection").lower() == "close"


def test_error_html_escapes_request_data(echo_server):
    raw = echo_server.raw(b"GET / HTTP/1.1\r\nHost: x\r\n<script>: v\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400")
    assert b"<script>" not in raw.partition(b"\r\n\r\n")[2]


def test_invalid_request_is_logged(server):
    srv = server([], "wsgiapps:echo")
    srv.raw(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n")
    srv.wait_for_log(r"Invalid request from ip=127\.0\.0\.1")


# --------------------------------------------------------------------------- standard headers


def test_server_and_date_headers(app_server):
    before = datetime.now(UTC)
    r = app_server.get("/pid")
    after = datetime.now(UTC)
    assert r.status == 200
    assert len(r.header_all("Server")) == 1 and r.header("Server")
    dates = r.header_all("Date")
    assert len(dates) == 1
    # IMF-fixdate, e.g. "Sun, 06 Nov 1994 08:49:37 GMT"
    assert re.fullmatch(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT",
                        dates[0]), dates[0]
    d = email.utils.parsedate_to_datetime(dates[0])
    assert before.replace(microsecond=0).timestamp() - 2 <= d.timestamp() <= after.timestamp() + 2


def test_app_cannot_duplicate_hop_by_hop_headers(app_server, worker_class):
    r = app_server.get("/headers?Server=mine&Date=yesterday&Connection=keep-alive&X-Ok=1")
    assert r.status == 200
    assert r.header("X-Ok") == "1"
    assert len(r.header_all("Server")) == 1
    assert len(r.header_all("Date")) == 1
    assert r.header("Date") != "yesterday"
    assert r.header_all("Connection") == ["close" if worker_class == "sync" else "keep-alive"]


def test_sync_worker_closes_connection(app_server, helpers, worker_class):
    """sync: a keep-alive request still gets Connection: close and the socket is closed.
    gthread: the connection is kept alive, then closed once idle for --keep-alive (2 s)."""
    s = helpers.connect(app_server.address)
    try:
        s.sendall(b"GET /pid HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
        data = helpers.read_until_eof(s, timeout=20)  # EOF without our half-close
    finally:
        s.close()
    assert data.eof
    r = helpers.final_response(data)
    assert r.status == 200
    assert r.header("Connection").lower() == ("close" if worker_class == "sync" else "keep-alive")


# --------------------------------------------------------------------------- framing


def test_http11_without_content_length_is_chunked(app_server):
    raw = app_server.raw(b"GET /body?size=5000&chunks=4&iter=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    r = app_server.parse(raw)[0]
    assert r.status == 200
    assert r.header("Transfer-Encoding").lower() == "chunked"
    assert r.header("Content-Length") is None
    assert r.chunked and r.complete
    assert r.body == (b"0123456789abcdef" * 400)[:5000]
    assert raw.endswith(b"0\r\n\r\n")


def test_http10_without_content_length_is_close_delimited(app_server):
    raw = app_server.raw(b"GET /body?size=5000&chunks=4&iter=1 HTTP/1.0\r\n\r\n")
    assert raw.startswith(b"HTTP/1.0 200 ")
    r = app_server.parse(raw)[0]
    assert r.header("Transfer-Encoding") is None
    assert r.header("Content-Length") is None
    assert r.header("Connection").lower() == "close"
    assert r.body == (b"0123456789abcdef" * 400)[:5000]


@pytest.mark.ferrocorn_only
@pytest.mark.parametrize("version", [b"HTTP/1.1", b"HTTP/1.0"])
def test_list_body_without_content_length_gets_one(app_server, version):
    """ferrocorn knows a list body's length before sending it, so it says so rather
    than chunking (gunicorn chunks) or delimiting by close."""
    raw = app_server.raw(b"GET /body?size=5000&chunks=4 " + version + b"\r\nHost: x\r\n\r\n")
    r = app_server.parse(raw)[0]
    assert r.header("Content-Length") == "5000"
    assert r.header("Transfer-Encoding") is None
    assert r.body == (b"0123456789abcdef" * 400)[:5000]


def test_content_length_from_app_is_used(app_server):
    raw = app_server.raw(b"GET /body?size=3000&cl=1&chunks=3 HTTP/1.1\r\nHost: x\r\n\r\n")
    r = app_server.parse(raw)[0]
    assert r.header("Content-Length") == "3000"
    assert r.header("Transfer-Encoding") is None
    assert len(r.body) == 3000


def test_response_version_follows_request(app_server):
    assert app_server.raw(b"GET /pid HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 200 OK\r\n")
    assert app_server.raw(b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n").startswith(
        b"HTTP/1.1 200 OK\r\n")


@pytest.mark.parametrize("query", ["size=500", "size=500&cl=1"])
def test_head_has_no_body(app_server, query):
    raw = app_server.raw(f"HEAD /body?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert raw.startswith(b"HTTP/1.1 200 ")
    head, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep and rest == b""
    assert b"Transfer-Encoding" not in head
    if "cl=1" in query:
        assert b"Content-Length: 500" in head


@pytest.mark.parametrize("status", ["204_No_Content", "304_Not_Modified"])
def test_no_body_statuses(app_server, status):
    raw = app_server.raw(f"GET /body?size=50&status={status} HTTP/1.1\r\nHost: x\r\n\r\n"
                         .encode())
    code = status.split("_")[0]
    assert raw.startswith(f"HTTP/1.1 {code} ".encode())
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert rest == b""
    assert b"Transfer-Encoding" not in head


def test_large_response_intact(app_server):
    size = 8 * 1024 * 1024 + 17
    r = app_server.get(f"/body?size={size}&chunks=64", timeout=60)
    assert r.complete
    assert len(r.body) == size
    assert r.body == (b"0123456789abcdef" * (size // 16 + 1))[:size]


# --------------------------------------------------------------------------- 100-continue


def test_expect_100_continue_interim_before_body(app_server, helpers):
    body = b"payload after continue"
    s = helpers.connect(app_server.address)
    try:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body))
        # the interim response must arrive before we send any body byte
        buf = b""
        deadline = time.monotonic() + 20
        while b"\r\n\r\n" not in buf and time.monotonic() < deadline:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
        assert buf.startswith(b"HTTP/1.1 100 Continue\r\n"), buf
        s.sendall(body)
        rest = helpers.read_until_eof(s)
    finally:
        s.close()
    responses = helpers.parse_responses(buf + rest)
    assert [r.status for r in responses] == [100, 200]
    e = responses[1].json()
    assert e["body_length"] == len(body)
    assert e["HTTP_EXPECT"] == "100-continue"


def test_no_100_continue_for_http10(app_server):
    raw = app_server.raw(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nab")
    assert raw.startswith(b"HTTP/1.0 200 ")
    assert b" 100 Continue" not in raw


# --------------------------------------------------------------------------- app mistakes


@pytest.mark.parametrize("query", [
    "X-Bad=a%0Ab",       # LF in a header value (response splitting)
    "X-Bad=a%0D%0AX-Injected:%201",
    "X-Bad=a%01b",       # control character in a value
    "Bad%20Name=1",      # not a token
])
def test_invalid_response_header_is_500(app_server, query):
    raw = app_server.raw(f"GET /headers?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert raw.startswith(b"HTTP/1.1 500 "), raw[:200]
    head = raw.partition(b"\r\n\r\n")[0]
    assert b"X-Injected" not in head
    assert b"X-Bad" not in head


def test_invalid_status_is_500(app_server):
    raw = app_server.raw(b"GET /body?status=abc HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 500 "), raw[:200]
