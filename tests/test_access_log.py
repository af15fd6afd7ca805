"""Access log (gunicorn behaviour §4.9)."""

from __future__ import annotations

import os
import re
import time

import pytest

# Issue 4: the same behaviour from both worker classes (see conftest.py).
pytestmark = pytest.mark.usefixtures("worker_class")

ALL_ATOMS = ("h=%(h)s|l=%(l)s|u=%(u)s|t=%(t)s|r=%(r)s|m=%(m)s|U=%(U)s|q=%(q)s|H=%(H)s|"
             "s=%(s)s|B=%(B)s|b=%(b)s|f=%(f)s|a=%(a)s|T=%(T)s|D=%(D)s|M=%(M)s|L=%(L)s|"
             "p=%(p)s|hi=%({x-in}i)s|hu=%({X-IN}i)s|ho=%({x-out}o)s|e=%({raw_uri}e)s|"
             "eu=%({RAW_URI}e)s|missing=%({x-missing}i)s|unknown=%(zz)s")

DATE_RE = r"\[\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\]"


def parse_atoms(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split("|"))


def access_line(srv, marker: str, timeout: float = 20) -> str:
    m = srv.wait_for_access(rf"(?m)^.*{re.escape(marker)}.*$", timeout)
    return m.group(0)


def test_access_log_off_by_default(server):
    srv = server([], "wsgiapps:app")
    assert srv.get("/no-access-log-please").status == 200
    # make sure the request was fully processed before looking
    assert srv.get("/pid").status == 200
    assert srv.stop() == 0
    assert srv.access_log() == ""
    assert "/no-access-log-please" not in srv.log()


def test_default_format(server):
    srv = server(["--access-logfile", "-"], "wsgiapps:app")
    r = srv.get("/headers?x=1", headers={"User-Agent": "curl/8.0", "Referer": "http://ref/"})
    assert r.status == 200
    line = access_line(srv, "/headers?x=1")
    assert re.fullmatch(
        rf'127\.0\.0\.1 - - {DATE_RE} "GET /headers\?x=1 HTTP/1\.1" 200 7 '
        r'"http://ref/" "curl/8\.0"', line), line


def test_default_format_missing_headers_are_dashes(server):
    srv = server(["--access-logfile", "-"], "wsgiapps:app")
    srv.raw(b"GET /bare HTTP/1.0\r\n\r\n")
    line = access_line(srv, "/bare")
    assert re.fullmatch(rf'127\.0\.0\.1 - - {DATE_RE} "GET /bare HTTP/1\.0" 200 \d+ "-" "-"',
                        line), line


def test_access_log_to_file(server, tmp_path):
    path = tmp_path / "access.log"
    srv = server(["--access-logfile", str(path)], "wsgiapps:app")
    assert srv.get("/to-file").status == 200
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if path.exists() and "/to-file" in path.read_text():
            break
        time.sleep(0.05)
    text = path.read_text()
    assert re.search(rf'(?m)^127\.0\.0\.1 - - {DATE_RE} "GET /to-file HTTP/1\.1" 200 ', text)
    assert "/to-file" not in srv.access_log()


def test_all_atoms(server):
    srv = server(["--access-logfile", "-", "--access-logformat", ALL_ATOMS], "wsgiapps:app")
    raw = srv.raw(b"GET /headers?x-out=yes&z=1 HTTP/1.1\r\nHost: x\r\nX-In: val\r\n"
                  b"Authorization: Basic Ym9iOnNlY3JldA==\r\nReferer: http://ref/\r\n"
                  b"User-Agent: agent/1\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200")
    line = access_line(srv, "r=GET /headers?x-out=yes")
    a = parse_atoms(line)
    assert a["h"] == "127.0.0.1"
    assert a["l"] == "-"
    assert a["u"] == "bob"
    assert re.fullmatch(DATE_RE, a["t"]), a["t"]
    assert a["r"] == "GET /headers?x-out=yes&z=1 HTTP/1.1"
    assert a["m"] == "GET"
    assert a["U"] == "/headers"
    assert a["q"] == "x-out=yes&z=1"
    assert a["H"] == "HTTP/1.1"
    assert a["s"] == "200"
    assert a["B"] == "7" and a["b"] == "7"
    assert a["f"] == "http://ref/"
    assert a["a"] == "agent/1"
    assert a["T"] == "0"
    assert a["D"].isdigit()
    assert a["M"].isdigit()
    assert re.fullmatch(r"\d+\.\d{6}", a["L"]), a["L"]
    workers = srv.worker_pids()
    assert a["p"] in {f"<{w}>" for w in workers}, (a["p"], workers)
    assert a["hi"] == "val" and a["hu"] == "val"
    assert a["ho"] == "yes"
    assert a["e"] == "/headers?x-out=yes&z=1" and a["eu"] == a["e"]
    assert a["missing"] == "-"
    assert a["unknown"] == "-"


def test_duration_atoms(server):
    fmt = "dur %(U)s T=%(T)s D=%(D)s M=%(M)s L=%(L)s"
    srv = server(["--access-logfile", "-", "--access-logformat", fmt], "wsgiapps:app")
    assert srv.get("/sleep?s=1.2").status == 200
    line = access_line(srv, "dur /sleep")
    m = re.fullmatch(r"dur /sleep T=(\d+) D=(\d+) M=(\d+) L=(\d+\.\d{6})", line)
    assert m, line
    t, d, ms, sec = int(m[1]), int(m[2]), int(m[3]), float(m[4])
    assert t >= 1
    assert 1_200_000 <= d < 30_000_000
    assert 1200 <= ms < 30_000
    assert abs(sec - d / 1e6) < 0.001
    assert abs(ms - d // 1000) <= 1


def test_status_of_app_error_and_404(server):
    srv = server(["--access-logfile", "-", "--access-logformat", "st %(r)s %(s)s %(B)s"],
                 "wsgiapps:app")
    srv.get("/raise/before")
    # (gunicorn 27 logs %(U)s as "None" and %(B)s as 0 for this 500: not checked)
    assert re.fullmatch(r"st GET /raise/before HTTP/1\.1 500 \d+",
                        access_line(srv, "st GET /raise/before"))
    srv.get("/body?size=123&status=404_Not_Found")
    assert access_line(srv, "st GET /body") == "st GET /body?size=123&status=404_Not_Found " \
                                                "HTTP/1.1 404 123"


def test_quote_is_escaped(server):
    srv = server(["--access-logfile", "-"], "wsgiapps:app")
    srv.get("/quote", headers={"User-Agent": 'evil" 200 1 "-" "x', "Referer": 'a"b'})
    line = access_line(srv, "/quote")
    assert line.endswith(r'"a\"b" "evil\" 200 1 \"-\" \"x"'), line


def test_newline_in_header_cannot_forge_a_line(server):
    srv = server(["--access-logfile", "-"], "wsgiapps:app")
    raw = srv.raw(b"GET /forge HTTP/1.1\r\nHost: x\r\n"
                  b"User-Agent: a\n127.0.0.1 - - [forged] \"GET /admin HTTP/1.1\" 200 1\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400")
    assert srv.get("/after-forge").status == 200
    access_line(srv, "/after-forge")
    assert "forged" not in srv.access_log()


@pytest.mark.ferrocorn_only
def test_non_printable_bytes_are_escaped(server):
    """gunicorn writes a percent-decoded %0A in PATH_INFO (%(U)s) as a real newline, which lets a
    client forge access-log lines.  ferrocorn escapes non-printable bytes as \\xHH."""
    srv = server(["--access-logfile", "-", "--access-logformat", "np %(U)s %(a)s"],
                 "wsgiapps:app")
    srv.raw(b"GET /np%0Afake-line%1B[31m HTTP/1.1\r\nHost: x\r\nUser-Agent: ua\tx\r\n\r\n")
    line = access_line(srv, "np /np")
    assert re.fullmatch(r"np /np\\x0[aA]fake-line\\x1[bB]\[31m ua\\x09x", line), line
    assert not re.search(r"(?m)^fake-line", srv.access_log())


def test_access_and_error_log_to_same_stream(server):
    """``--access-logfile -`` goes to stdout, the error log (``--error-logfile -``) to stderr."""
    srv = server(["--access-logfile", "-"], "wsgiapps:app")
    assert srv.get("/streams").status == 200
    access_line(srv, "/streams")
    assert "/streams" not in srv.log()
    assert "Booting worker" not in srv.access_log()
    assert os.path.getsize(srv.stderr_path) > 0
