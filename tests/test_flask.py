"""A Flask application (tests/apps/flaskapp.py)."""

from __future__ import annotations

import hashlib

import httpx
import pytest


@pytest.fixture
def flask_server(server_pool):
    return server_pool.get(["--workers", "2"], "flaskapp:app")


@pytest.fixture(scope="module")
def sample(helpers):
    return (helpers.apps_dir / "sample.txt").read_bytes()


def test_index(flask_server):
    r = httpx.get(flask_server.url + "/", timeout=30)
    assert r.status_code == 200
    assert r.text == "hello from flask"


def test_streamed_response_is_chunked(flask_server):
    r = flask_server.get("/stream?n=50")
    assert r.status == 200
    assert r.chunked and r.complete
    lines = r.body.decode().splitlines()
    assert lines == [f"line {i} of 50" for i in range(50)]


def test_streamed_response_http10(flask_server):
    r = flask_server.get("/stream?n=3", version="HTTP/1.0")
    assert r.status == 200
    assert not r.chunked
    assert r.body == b"line 0 of 3\nline 1 of 3\nline 2 of 3\n"


def test_send_file(flask_server, sample):
    r = httpx.get(flask_server.url + "/file", timeout=30)
    assert r.status_code == 200
    assert r.content == sample
    assert r.headers["content-length"] == str(len(sample))


def test_send_file_range(flask_server, sample):
    r = httpx.get(flask_server.url + "/file", headers={"Range": "bytes=100-1099"}, timeout=30)
    assert r.status_code == 206
    assert r.content == sample[100:1100]
    assert r.headers["content-range"] == f"bytes 100-1099/{len(sample)}"


def test_send_file_conditional(flask_server):
    first = httpx.get(flask_server.url + "/file", timeout=30)
    etag = first.headers["etag"]
    raw = flask_server.raw(f"GET /file HTTP/1.1\r\nHost: x\r\nIf-None-Match: {etag}\r\n\r\n"
                           .encode())
    assert raw.startswith(b"HTTP/1.1 304 ")
    assert raw.endswith(b"\r\n\r\n")


def test_send_file_head(flask_server, sample):
    raw = flask_server.raw(b"HEAD /file HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert raw.endswith(b"\r\n\r\n")
    assert f"Content-Length: {len(sample)}".encode() in raw


@pytest.mark.parametrize("size", [0, 1, 65536, 3 * 1024 * 1024 + 5])
def test_chunked_upload(flask_server, helpers, size):
    data = bytes((i * 31) % 251 for i in range(size))
    step = 32_768
    chunks = b"".join(b"%x\r\n" % len(data[i:i + step]) + data[i:i + step] + b"\r\n"
                      for i in range(0, len(data), step))
    raw = flask_server.raw(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                           b"Content-Type: application/octet-stream\r\n\r\n" + chunks
                           + b"0\r\n\r\n", timeout=60)
    r = helpers.final_response(raw)
    assert r.status == 200, r.body[:500]
    got = r.json()
    assert got["size"] == size
    assert got["sha256"] == hashlib.sha256(data).hexdigest()


def test_chunked_upload_with_httpx_generator(flask_server):
    parts = [b"alpha-" * 1000, b"beta-" * 3000, b"gamma"]

    def gen():
        yield from parts

    r = httpx.post(flask_server.url + "/upload", content=gen(), timeout=60)
    assert r.status_code == 200
    body = b"".join(parts)
    assert r.json()["size"] == len(body)
    assert r.json()["sha256"] == hashlib.sha256(body).hexdigest()
    assert r.json()["transfer_encoding"] == "chunked"


def test_content_length_upload(flask_server):
    body = b"x" * 100_000
    r = httpx.post(flask_server.url + "/upload", content=body, timeout=60)
    assert r.json()["size"] == len(body)


def test_form_post(flask_server):
    r = httpx.post(flask_server.url + "/form", data={"a": "1", "b": "two words"}, timeout=30)
    assert r.json() == {"a": "1", "b": "two words"}
