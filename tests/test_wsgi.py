"""WSGI (PEP 3333) semantics, exercised with the plain apps in tests/apps/wsgiapps.py."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import time
from pathlib import Path

import pytest

# Issue 4: the same behaviour from both worker classes (see conftest.py).
pytestmark = pytest.mark.usefixtures("worker_class")


def fixture_bytes(size: int) -> bytes:
    """The content of wsgiapps._fixture_file(size)."""
    return bytes((i * 7 + i // 256) % 256 for i in range(size))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wait_for_file_lines(path: Path, pattern: str, count: int = 1, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if len(re.findall(pattern, text, re.M)) >= count:
            return text
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} x{count} not found in {path}: {text!r}")


# --------------------------------------------------------------------------- environ


def test_environ_basics(app_server, worker_class):
    r = app_server.get("/some/path?x=1&y=2", headers={"X-Test": "a", "User-Agent": "t/1"})
    assert r.status == 200
    e = r.json()
    assert e["REQUEST_METHOD"] == "GET"
    assert e["PATH_INFO"] == "/some/path"
    assert e["QUERY_STRING"] == "x=1&y=2"
    assert e["RAW_URI"] == "/some/path?x=1&y=2"
    assert e["SCRIPT_NAME"] == ""
    assert e["SERVER_PROTOCOL"] == "HTTP/1.1"
    # SERVER_NAME / SERVER_PORT come from the listening socket, not from Host
    assert e["SERVER_NAME"] == "127.0.0.1"
    assert e["SERVER_PORT"] == str(app_server.port)
    assert e["REMOTE_ADDR"] == "127.0.0.1"
    assert e["REMOTE_PORT"].isdigit()
    assert e["HTTP_X_TEST"] == "a"
    assert e["HTTP_USER_AGENT"] == "t/1"
    assert e["HTTP_HOST"] == "127.0.0.1"
    assert e["wsgi.url_scheme"] == "http"
    assert e["wsgi.version"] == [1, 0]
    assert e["none_keys"] == []
    assert e["wsgi.multithread"] is (worker_class == "gthread")
    assert e["wsgi.multiprocess"] is True  # --workers 2
    assert e["wsgi.run_once"] is False
    assert e["wsgi.input_terminated"] is True
    assert e["has_file_wrapper"] is True
    assert isinstance(e["SERVER_SOFTWARE"], str) and e["SERVER_SOFTWARE"]
    assert "CONTENT_LENGTH" not in e and "CONTENT_TYPE" not in e


def test_server_name_ignores_host_header(app_server):
    e = app_server.get("/", headers={"Host": "example.com:8080"}).json()
    assert e["HTTP_HOST"] == "example.com:8080"
    assert e["SERVER_NAME"] == "127.0.0.1"
    assert e["SERVER_PORT"] == str(app_server.port)


def test_multiprocess_false_with_one_worker(server):
    srv = server(["--workers", "1"], "wsgiapps:echo")
    assert srv.get("/").json()["wsgi.multiprocess"] is False


def test_x_forwarded_for_not_used_for_remote_addr(app_server):
    e = app_server.get("/", headers={"X-Forwarded-For": "203.0.113.9"}).json()
    assert e["REMOTE_ADDR"] == "127.0.0.1"
    assert e["HTTP_X_FORWARDED_FOR"] == "203.0.113.9"


def test_script_name_from_process_env(server):
    srv = server([], "wsgiapps:echo", env={"SCRIPT_NAME": "/mount"})
    e = srv.get("/mount/inner/page?q=1").json()
    assert e["SCRIPT_NAME"] == "/mount"
    assert e["PATH_INFO"] == "/inner/page"
    assert e["RAW_URI"] == "/mount/inner/page?q=1"


def test_content_headers_without_http_prefix(app_server):
    r = app_server.request("POST", "/", headers={"Content-Type": "text/plain; charset=utf-8"},
                           body=b"hello")
    e = r.json()
    assert e["CONTENT_TYPE"] == "text/plain; charset=utf-8"
    assert e["CONTENT_LENGTH"] == "5"
    assert "HTTP_CONTENT_TYPE" not in e and "HTTP_CONTENT_LENGTH" not in e
    assert e["body_length"] == 5 and e["body_sha256"] == sha(b"hello")


# --------------------------------------------------------------------------- wsgi.input


BODY_LINES = b"first line\nsecond\n\nfourth is longer than the others\nno newline at end"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("n", [1, 7, 4096])
def test_input_read_n(app_server, helpers, framing, n):
    body = BODY_LINES * 20
    if framing == "chunked":
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 100]), body[i:i + 100])
                          for i in range(0, len(body), 100))
        raw = app_server.raw(
            b"POST /input/read?n=%d HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            % n + chunks + b"0\r\n\r\n")
        r = helpers.final_response(raw)
    else:
        r = app_server.request("POST", f"/input/read?n={n}", body=body)
    assert r.status == 200, r.body
    data = r.json()
    assert data["sha256"] == sha(body)
    assert sum(data["sizes"]) == len(body)
    assert all(0 < s <= n for s in data["sizes"])
    # read(n) returns exactly n bytes until the last piece
    assert all(s == n for s in data["sizes"][:-1])


def test_input_read_all_then_eof(app_server):
    r = app_server.request("POST", "/input/read", body=b"0123456789")
    assert r.json()["sizes"] == [10, 0]


def test_input_readline(app_server):
    r = app_server.request("POST", "/input/readline", body=BODY_LINES)
    assert r.json()["lines"] == [
        "first line\n", "second\n", "\n", "fourth is longer than the others\n",
        "no newline at end"]


def test_input_readline_size(app_server):
    r = app_server.request("POST", "/input/readline?n=5", body=b"ab\ncdefgh\nijklmnop")
    assert r.json()["lines"] == ["ab\n", "cdefg", "h\n", "ijklm", "nop"]


def test_input_readlines_chunked(app_server, helpers):
    raw = app_server.raw(
        b"POST /input/readlines HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhe\nll\r\n6\r\no\nwor\n\r\n1\r\nX\r\n0\r\n\r\n")
    assert helpers.final_response(raw).json()["lines"] == ["he\n", "llo\n", "wor\n", "X"]


def test_input_iteration(app_server):
    r = app_server.request("POST", "/input/iter", body=b"a\nbb\n\nccc")
    assert r.json()["lines"] == ["a\n", "bb\n", "\n", "ccc"]


def test_input_empty_body(app_server):
    r = app_server.request("POST", "/input/readline", body=b"", headers={"Content-Length": "0"})
    assert r.json()["lines"] == []


def test_large_body_content_length(app_server):
    body = bytes(range(256)) * 4096 * 5  # 5 MiB
    r = app_server.request("POST", "/", body=body, timeout=60)
    e = r.json()
    assert e["body_length"] == len(body)
    assert e["body_sha256"] == sha(body)


def test_large_body_chunked(app_server, helpers):
    body = bytes(range(256)) * 4096 * 3
    parts = []
    step = 100_003
    for i in range(0, len(body), step):
        piece = body[i:i + step]
        parts.append(b"%x\r\n" % len(piece) + piece + b"\r\n")
    raw = app_server.raw(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + b"".join(parts) + b"0\r\n\r\n", timeout=60)
    e = helpers.final_response(raw).json()
    assert e["body_length"] == len(body)
    assert e["body_sha256"] == sha(body)


def test_unread_body_is_fine(app_server):
    r = app_server.request("POST", "/input/ignore", body=b"x" * 100_000)
    assert r.status == 200 and r.body == b"ignored"
    # the server is still healthy
    assert app_server.get("/pid").status == 200


# --------------------------------------------------------------------------- responses


def test_write_callable(app_server):
    r = app_server.get("/write")
    assert r.status == 200
    assert r.body == b"first;second;third;fourth"


def test_exc_info_before_output(app_server):
    r = app_server.get("/exc_info/before")
    assert r.status == 500
    assert r.body == b"handled error"
    assert r.header("X-Handled") == "yes"
    assert "text/plain" in r.header_all("Content-Type")


@pytest.mark.ferrocorn_only
def test_exc_info_replaces_headers(app_server):
    """PEP 3333: a start_response(exc_info) call before output replaces the headers.
    gunicorn 27 appends them instead (two Content-Type headers)."""
    r = app_server.get("/exc_info/before")
    assert r.header_all("Content-Type") == ["text/plain"]


def test_exc_info_after_output_closes_connection(server):
    srv = server([], "wsgiapps:app")
    raw = srv.raw(b"GET /exc_info/after HTTP/1.1\r\nHost: x\r\n\r\n")
    r = srv.parse(raw)[0]
    assert r.status == 200
    assert r.body.startswith(b"partial-")
    assert b"never sent" not in raw
    assert not r.complete  # no terminating zero-size chunk
    srv.wait_for_log(r"boom after output")


def test_exception_before_start_response(server):
    srv = server([], "wsgiapps:app")
    r = srv.get("/raise/before")
    assert r.status == 500
    assert r.header("Content-Type").startswith("text/html")
    assert (r.header("Connection") or "").lower() == "close"
    assert int(r.header("Content-Length")) == len(r.body)
    assert b"Internal Server Error" in r.body
    assert b"app raised before" not in r.body  # no traceback leaked to the client
    srv.wait_for_log(r"Error handling request")
    srv.wait_for_log(r"Traceback")
    srv.wait_for_log(r"RuntimeError: app raised before start_response")


@pytest.mark.parametrize("variant", ["chunked", "content-length"])
def test_exception_after_headers_truncates(server, variant):
    srv = server([], "wsgiapps:app")
    path = "/raise/after" + ("?cl=1000" if variant == "content-length" else "")
    raw = srv.raw(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    r = srv.parse(raw)[0]
    assert r.status == 200
    assert r.body == b"first chunk of a response that will be cut;"
    assert not r.complete
    if variant == "content-length":
        assert r.header("Content-Length") == "1000"
    srv.wait_for_log(r"RuntimeError: app raised after the headers were sent")
    # a second response never follows
    assert raw.count(b"HTTP/1.1 ") == 1


def test_content_length_is_not_exceeded(app_server):
    raw = app_server.raw(b"GET /body?size=40&declare=10 HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"Content-Length: 10" in head
    assert rest == b"0123456789"


@pytest.mark.parametrize("cl", [False, True])
def test_file_wrapper(app_server, cl):
    size = 200_000
    r = app_server.get(f"/file?size={size}" + ("&cl=1" if cl else ""), timeout=60)
    assert r.status == 200
    assert r.complete
    assert r.body == fixture_bytes(size)
    if cl:
        assert r.header("Content-Length") == str(size)
        assert not r.chunked
    else:
        # gunicorn chunks; ferrocorn knows the file's size and sends it as the length.
        assert r.chunked or r.header("Content-Length") == str(size)


def test_file_wrapper_from_offset_http10(app_server):
    size, offset = 50_000, 1234
    r = app_server.get(f"/file?size={size}&cl=1&offset={offset}", version="HTTP/1.0")
    assert r.status == 200
    assert r.body == fixture_bytes(size)[offset:]


def test_wsgi_errors_goes_to_error_log(server):
    srv = server([], "wsgiapps:app")
    assert srv.get("/stderr").body == b"ok"
    srv.wait_for_log(r"message-from-wsgi-errors")


# --------------------------------------------------------------------------- close()


@pytest.fixture
def close_server(server, tmp_path):
    log = tmp_path / "close.log"
    srv = server(["--workers", "2"], "wsgiapps:app", env={"CLOSE_LOG": str(log)})
    srv.close_log = log
    return srv


def test_close_called_after_full_iteration(close_server):
    r = close_server.get("/close?tag=full&n=3&size=10")
    assert r.body == b"A" * 10 + b"B" * 10 + b"C" * 10
    text = wait_for_file_lines(close_server.close_log, r"^closed full$")
    assert text.count("created full") == 1 and text.count("closed full") == 1


def test_close_called_when_iteration_fails(close_server):
    r = close_server.get("/close?tag=failing&n=3&size=10")
    assert r.status == 200
    r = close_server.get("/close?tag=boom&fail=1")
    assert r.body.startswith(b"A" * 10)
    assert not r.complete
    wait_for_file_lines(close_server.close_log, r"^closed boom$")
    close_server.wait_for_log("recording iterable fails on purpose")


def test_close_called_with_content_length(close_server):
    r = close_server.get("/close?tag=cl&cl=1&n=4&size=5")
    assert r.header("Content-Length") == "20"
    assert len(r.body) == 20
    wait_for_file_lines(close_server.close_log, r"^closed cl$")


def test_close_called_on_head(close_server):
    raw = close_server.raw(b"HEAD /close?tag=head HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200")
    assert raw.endswith(b"\r\n\r\n")
    wait_for_file_lines(close_server.close_log, r"^closed head$")


def test_close_called_when_client_disconnects(close_server, helpers):
    # ~256 MiB response: the server cannot finish it before the client goes away
    s = helpers.connect(close_server.address)
    try:
        s.sendall(b"GET /close?tag=gone&n=4096&size=65536 HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while len(got) < 100_000:
            chunk = s.recv(65536)
            assert chunk
            got += chunk
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    finally:
        s.close()  # RST thanks to SO_LINGER 0
    wait_for_file_lines(close_server.close_log, r"^closed gone$", timeout=30)
    # and the worker keeps serving
    assert close_server.get("/pid").status == 200


# --------------------------------------------------------------------------- validator


def test_wsgiref_validator_clean(server, helpers):
    srv = server(["--workers", "1"], "wsgiapps:validated")
    body = b"validated body " * 1000

    r = srv.get("/")
    assert r.status == 200, r.body
    assert r.json() == {"method": "GET", "length": 0, "sha256": sha(b"")}

    raw = srv.raw(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert raw.endswith(b"\r\n\r\n")  # no body after the head

    r = srv.request("POST", "/", body=body, headers={"Content-Type": "application/octet-stream"})
    assert r.status == 200, r.body
    assert r.json() == {"method": "POST", "length": len(body), "sha256": sha(body)}

    chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 999]), body[i:i + 999])
                       for i in range(0, len(body), 999)) + b"0\r\n\r\n"
    raw = srv.raw(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked)
    r = helpers.final_response(raw)
    assert r.status == 200, r.body
    assert r.json() == {"method": "POST", "length": len(body), "sha256": sha(body)}

    r = srv.get("/file")
    assert r.status == 200
    assert r.body == fixture_bytes(20000)

    r = srv.get("/write")
    assert r.status == 200
    assert r.body == b"written;returned"

    # the validator reports problems as warnings or assertion errors (tracebacks)
    srv.stop()
    log = srv.log()
    for bad in ("Warning", "WARNING", "Traceback", "AssertionError", "[ERROR]",
                "garbage collected"):
        assert bad not in log, f"{bad!r} in error log:\n{log}"


# --------------------------------------------------------------------------- factories


def test_app_factory(server):
    srv = server([], "wsgiapps:create_app()")
    assert srv.get("/").body == b"factory"


def test_app_factory_with_args(server):
    srv = server([], "wsgiapps:create_app('hello')")
    assert srv.get("/").body == b"hello"


def test_default_attribute_name_is_application(server, tmp_path):
    (tmp_path / "defaultname.py").write_text(
        "def application(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'default attribute']\n")
    srv = server([], "defaultname", cwd=tmp_path)
    assert srv.get("/").body == b"default attribute"


def test_echo_json_is_valid_json(echo_server):
    # sanity check for the corpus replay: the echo app answers JSON with the pid
    data = json.loads(echo_server.get("/").body)
    assert data["pid"] in echo_server.worker_pids()
