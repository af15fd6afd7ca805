"""Replay the request corpus in tests/requests/ over real sockets against ``wsgiapps:echo``.

Corpus format (modelled on gunicorn's tests/requests, cases are our own):

* ``NAME.http``: the request bytes, written readably.  Real newlines are removed, then the
  escapes ``\\r``, ``\\n``, ``\\t``, ``\\0``, ``\\xHH`` and ``\\\\`` are decoded.
* ``NAME.py`` (valid/): ``request = {method, uri, version, headers, body}`` where ``uri`` is the
  raw target, ``headers`` the (UPPER-NAME, value) pairs the app must see (after policy such as the
  underscore drop).  Optional: ``expect`` (environ values that override the derived ones),
  ``absent`` (environ keys that must not exist), ``interim`` (1xx statuses expected before the
  final response), ``args`` (extra server arguments).
* ``NAME.py`` (invalid/): ``status = 400`` (or 414, 431, 501, 417...) or ``"closed"`` for a
  connection closed without any response; optional ``args``.

Each case is sent whole, byte by byte and in random chunks; the connection is half-closed and
read until EOF.  A case with ``args`` is skipped (not failed) when the server refuses one of
them as "not supported" (ferrocorn refuses gunicorn settings it does not implement yet).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

# Issue 4: the same behaviour from both worker classes (see conftest.py).
pytestmark = pytest.mark.usefixtures("worker_class")

CORPUS = Path(__file__).resolve().parent / "requests"
SPLITS = ["whole", "byte", "random"]
BASE_ARGS = ["--workers", "2"]

_ESCAPE = re.compile(rb"\\(r|n|t|0|x[0-9a-fA-F]{2}|\\)")


def decode_http(text: bytes) -> bytes:
    text = text.replace(b"\r", b"").replace(b"\n", b"")

    def repl(m: re.Match) -> bytes:
        e = m.group(1)
        if e == b"r":
            return b"\r"
        if e == b"n":
            return b"\n"
        if e == b"t":
            return b"\t"
        if e == b"0":
            return b"\x00"
        if e == b"\\":
            return b"\\"
        return bytes([int(e[1:], 16)])

    out = _ESCAPE.sub(repl, text)
    # every backslash must have been an escape
    if b"\\" in _ESCAPE.sub(b"", text):
        raise ValueError("unknown escape in .http file")
    return out


def load_case(http_path: Path) -> tuple[bytes, dict]:
    data = decode_http(http_path.read_bytes())
    ns: dict = {}
    py = http_path.with_suffix(".py")
    exec(compile(py.read_text(), str(py), "exec"), ns)
    return data, ns


def _cases(kind: str):
    for p in sorted((CORPUS / kind).glob("*.http")):
        for split in SPLITS:
            yield pytest.param(p, split, id=f"{p.stem}-{split}")


def expected_environ(req: dict) -> dict:
    uri = req["uri"]
    exp = {
        "REQUEST_METHOD": req["method"],
        "RAW_URI": uri,
        "SERVER_PROTOCOL": "HTTP/{}.{}".format(*req["version"]),
    }
    target = uri.split("#", 1)[0]
    if "://" in target:
        parts = urlsplit(target)
        path, query = parts.path, parts.query
    else:
        path, _, query = target.partition("?")
    exp["PATH_INFO"] = unquote(path, encoding="latin-1")
    exp["QUERY_STRING"] = query
    joined: dict[str, list[str]] = {}
    for name, value in req["headers"]:
        if name in ("CONTENT-TYPE", "CONTENT-LENGTH"):
            key = name.replace("-", "_")
        else:
            key = "HTTP_" + name.replace("-", "_")
        joined.setdefault(key, []).append(value)
    for key, values in joined.items():
        exp[key] = ",".join(values)
    return exp


@pytest.mark.parametrize(("path", "split"), list(_cases("valid")))
def test_valid(path, split, server_pool, helpers):
    data, ns = load_case(path)
    req = ns["request"]
    srv = server_pool.get(BASE_ARGS + list(ns.get("args", [])), "wsgiapps:echo",
                          skip_unsupported=bool(ns.get("args")))
    raw = srv.raw(data, split=split)
    assert raw.eof, "the connection was not closed after the response and our half-close"
    responses = helpers.parse_responses(raw, req["method"])
    assert responses, f"no response at all for {path.name} ({split})"
    interim = [r.status for r in responses if r.status < 200]
    final = [r for r in responses if r.status >= 200]
    assert interim == list(ns.get("interim", [])), raw[:500]
    assert len(final) == 1, raw[:500]
    resp = final[0]
    assert resp.status == 200, resp.body[:1000]
    echo = resp.json()

    exp = expected_environ(req)
    exp.update(ns.get("expect", {}))
    for key, value in exp.items():
        assert echo.get(key) == value, f"{key}: {echo.get(key)!r} != {value!r}"
    for key in ns.get("absent", []):
        assert key not in echo, f"{key} should not be in environ"
    # no header the case did not send shows up (underscore headers in particular)
    sent_keys = {k for k in exp if k.startswith(("HTTP_", "CONTENT_"))}
    got_keys = {k for k in echo if k.startswith(("HTTP_", "CONTENT_"))}
    assert got_keys == sent_keys
    assert echo["body_length"] == len(req["body"])
    assert echo["body_sha256"] == hashlib.sha256(req["body"]).hexdigest()


@pytest.mark.parametrize(("path", "split"), list(_cases("invalid")))
def test_invalid(path, split, server_pool, helpers):
    data, ns = load_case(path)
    srv = server_pool.get(BASE_ARGS + list(ns.get("args", [])), "wsgiapps:echo",
                          skip_unsupported=bool(ns.get("args")))
    raw = srv.raw(data, split=split)
    expected = ns["status"]
    if expected == "closed":
        assert raw == b"", f"expected the connection to be closed without a response: {raw[:300]!r}"
        assert raw.eof, "the server neither answered nor closed the connection"
        return
    assert raw.eof, "the server did not close the connection after an error response"
    statuses = re.findall(rb"^HTTP/1\.[01] (\d{3})", raw, re.M)
    assert statuses, f"no response for {path.name} ({split}); got {raw[:200]!r}"
    assert int(statuses[0]) == expected, raw[:600]
    assert len(statuses) == 1, raw[:600]
    resp = helpers.parse_responses(raw)[0]
    assert (resp.header("connection") or "").lower() == "close"


def test_corpus_is_complete():
    valid = sorted(p.stem for p in (CORPUS / "valid").glob("*.http"))
    invalid = sorted(p.stem for p in (CORPUS / "invalid").glob("*.http"))
    assert len(valid) >= 25 and len(invalid) >= 40
    for kind, names in (("valid", valid), ("invalid", invalid)):
        for name in names:
            assert (CORPUS / kind / f"{name}.py").exists(), name
