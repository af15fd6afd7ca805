"""Command line and configuration sources (gunicorn behaviour §1.1)."""

from __future__ import annotations

import re

import pytest


def test_unknown_flag_exits_2(cli):
    p = cli(["--definitely-not-a-flag", "wsgiapps:app"])
    assert p.returncode == 2
    assert "usage:" in p.stderr.lower()
    assert "--definitely-not-a-flag" in p.stderr


def test_bad_int_type_exits_2(cli):
    p = cli(["--workers", "many", "wsgiapps:app"])
    assert p.returncode == 2
    assert "--workers" in p.stderr


def expected_version(helpers) -> str:
    from importlib import metadata

    name = "gunicorn" if helpers.is_gunicorn else "ferrocorn"
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        import tomllib

        pyproject = helpers.tests_dir.parent / "pyproject.toml"
        return tomllib.loads(pyproject.read_text())["project"]["version"]


@pytest.mark.parametrize("flag", ["--version", "-v"])
def test_version(cli, helpers, flag):
    p = cli([flag])
    assert p.returncode == 0
    out = p.stdout + p.stderr
    assert expected_version(helpers) in out, out
    assert re.search(r"\(version \d+\.\d+(\.\d+)?", out), out


def test_check_config_ok(cli):
    p = cli(["--check-config", "wsgiapps:app"])
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("app", ["wsgiapps:does_not_exist", "bootfail_import:app"])
def test_check_config_bad_app(cli, app):
    p = cli(["--check-config", app])
    assert p.returncode == 1


def test_print_config(cli):
    p = cli(["--print-config", "-w", "3", "-b", "127.0.0.1:9123", "wsgiapps:app"])
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert any(re.fullmatch(r"workers\s*=\s*3", x) for x in lines), p.stdout
    assert any(re.fullmatch(r"bind\s*=\s*\['127\.0\.0\.1:9123'\]", x) for x in lines)
    assert any(re.fullmatch(r"timeout\s*=\s*30", x) for x in lines)
    assert any(re.fullmatch(r"worker_class\s*=\s*sync", x) for x in lines)
    assert any(re.fullmatch(r"limit_request_line\s*=\s*4094", x) for x in lines)
    names = [x.split("=")[0].strip() for x in lines if "=" in x]
    assert names == sorted(names)


def test_print_config_defaults(cli):
    p = cli(["--print-config", "wsgiapps:app"])
    assert p.returncode == 0
    assert re.search(r"(?m)^workers\s*=\s*1$", p.stdout)
    assert re.search(r"(?m)^keepalive\s*=\s*2$", p.stdout)
    assert re.search(r"(?m)^accesslog\s*=\s*None$", p.stdout)


@pytest.mark.parametrize("args", [["--workers", "-1"], ["--max-requests", "-3"],
                                  ["--limit-request-line", "-5"]])
def test_bad_value_one_error_line(cli, args):
    p = cli([*args, "wsgiapps:app"])
    assert p.returncode == 1
    error_lines = [x for x in p.stderr.splitlines() if x.startswith("Error:")]
    assert len(error_lines) == 1, p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.ferrocorn_only
@pytest.mark.parametrize("args", [["--certfile", "cert.pem"], ["--keyfile", "key.pem"]])
def test_unsupported_setting_refused(cli, args):
    p = cli([*args, "wsgiapps:app"])
    assert p.returncode != 0
    assert "not supported" in (p.stdout + p.stderr)


def test_web_concurrency(server):
    srv = server([], "wsgiapps:app", env={"WEB_CONCURRENCY": "3"})
    assert len(srv.wait_workers(3)) == 3
    assert srv.get("/pid").status == 200


def test_cli_workers_beats_web_concurrency(server):
    srv = server(["--workers", "2"], "wsgiapps:app", env={"WEB_CONCURRENCY": "4"})
    assert len(srv.wait_workers(2)) == 2


def test_gunicorn_cmd_args(server):
    srv = server([], "wsgiapps:app", env={"GUNICORN_CMD_ARGS": "--workers 3"})
    assert len(srv.wait_workers(3)) == 3


def test_command_line_beats_gunicorn_cmd_args(server):
    srv = server(["-w", "2"], "wsgiapps:app", env={"GUNICORN_CMD_ARGS": "--workers 3"})
    assert len(srv.wait_workers(2)) == 2


def test_prefix_abbreviation(cli):
    """argparse accepts unambiguous prefixes (``--timeo 7``) and refuses ambiguous ones."""
    p = cli(["--print-config", "--timeo", "7", "--bac", "64", "wsgiapps:app"])
    assert p.returncode == 0, p.stderr
    assert re.search(r"(?m)^timeout\s*=\s*7$", p.stdout)
    assert re.search(r"(?m)^backlog\s*=\s*64$", p.stdout)
    p = cli(["--work", "2", "wsgiapps:app"])
    assert p.returncode == 2
    assert "ambiguous" in p.stderr


def test_config_file(server, tmp_path):
    conf = tmp_path / "conf.py"
    conf.write_text("workers = 3\n"
                    "accesslog = '-'\n"
                    "access_log_format = 'CONF %(m)s %(U)s %(s)s'\n"
                    "not_a_setting = 'ignored'\n")
    srv = server(["-c", str(conf)], "wsgiapps:app")
    assert len(srv.wait_workers(3)) == 3
    assert srv.get("/from-config").status == 200
    srv.wait_for_access(r"(?m)^CONF GET /from-config 200$")


def test_default_config_file_in_cwd(server, tmp_path, helpers):
    (tmp_path / "gunicorn.conf.py").write_text("workers = 2\n")
    srv = server(["--chdir", str(helpers.apps_dir)], "wsgiapps:app", cwd=tmp_path)
    assert len(srv.wait_workers(2)) == 2


def test_command_line_beats_config_file(server, tmp_path):
    conf = tmp_path / "conf.py"
    conf.write_text("workers = 3\n")
    srv = server(["-c", str(conf), "--workers", "1"], "wsgiapps:app")
    assert len(srv.wait_workers(1)) == 1


def test_wsgi_app_from_config_file(server, tmp_path, helpers):
    conf = tmp_path / "conf.py"
    conf.write_text(f"wsgi_app = 'wsgiapps:create_app()'\nchdir = {str(helpers.apps_dir)!r}\n")
    srv = server(["-c", str(conf)], None)
    assert srv.get("/").body == b"factory"


def test_pidfile(server, tmp_path):
    pidfile = tmp_path / "server.pid"
    srv = server(["--pid", str(pidfile)], "wsgiapps:app")
    assert pidfile.read_text().strip() == str(srv.pid)
    assert srv.stop() == 0
    assert not pidfile.exists()


def test_log_level_warning_hides_info(server, helpers):
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = server(["-b", f"127.0.0.1:{port}", "--log-level", "warning"], "wsgiapps:app",
                 wait=False)
    srv.addresses = [("127.0.0.1", port)]
    srv.probe(srv.address, time.monotonic() + 30)
    assert srv.get("/raise/before").status == 500
    srv.wait_for_log(r"\[ERROR\] Error handling request")
    assert "[INFO]" not in srv.log()
    assert "Listening at" not in srv.log()


def test_log_level_debug(server):
    srv = server(["--log-level", "debug"], "wsgiapps:app")
    assert srv.get("/debug-me").status == 200
    srv.wait_for_log(r"\[DEBUG\]")
