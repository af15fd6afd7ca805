"""Boot: app loading, boot failures and their exit codes (gunicorn behaviour §2.1, §2.5)."""

from __future__ import annotations

import pytest

BOOT_ERROR = 3  # WORKER_BOOT_ERROR
APP_LOAD_ERROR = 4  # APP_LOAD_ERROR


def test_boot_log_lines(server):
    srv = server(["--workers", "2"], "wsgiapps:app")
    srv.wait_workers(2)
    log = srv.log()
    assert f"Listening at: http://127.0.0.1:{srv.port} ({srv.pid})" in log
    srv.wait_for_log(r"Using worker: sync")
    for pid in srv.worker_pids():
        srv.wait_for_log(rf"Booting worker with pid: {pid}\b")
    # error-log line format: [YYYY-mm-dd HH:MM:SS +zzzz] [PID] [LEVEL] message
    srv.wait_for_log(rf"(?m)^\[\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{{4}}\] \[{srv.pid}\] "
                     r"\[INFO\] Listening at: ")


def test_import_error_exits_3(server):
    srv = server(["--workers", "1"], "bootfail_import:app", wait=False)
    assert srv.wait_exit(60) == BOOT_ERROR
    log = srv.log()
    assert "Worker failed to boot." in log
    assert "this module refuses to be imported" in log
    assert "Traceback" in log


def test_missing_module_exits_3(server):
    srv = server(["--workers", "1"], "no_such_module_here:app", wait=False)
    assert srv.wait_exit(60) == BOOT_ERROR
    assert "Worker failed to boot." in srv.log()
    assert "no_such_module_here" in srv.log()


def test_missing_attribute_exits_4(server):
    srv = server(["--workers", "1"], "wsgiapps:does_not_exist", wait=False)
    assert srv.wait_exit(60) == APP_LOAD_ERROR
    log = srv.log()
    assert "Failed to find attribute 'does_not_exist' in 'wsgiapps'." in log
    assert "App failed to load." in log


def test_not_callable_exits_4(server):
    srv = server(["--workers", "1"], "wsgiapps:not_callable", wait=False)
    assert srv.wait_exit(60) == APP_LOAD_ERROR
    assert "Application object must be callable." in srv.log()


def test_unparsable_app_expression_exits_4(server):
    srv = server(["--workers", "1"], "wsgiapps:create_app(", wait=False)
    assert srv.wait_exit(60) == APP_LOAD_ERROR
    assert "App failed to load." in srv.log()


@pytest.mark.ferrocorn_only
@pytest.mark.parametrize(("app", "code", "reason"), [
    ("bootfail_import:app", BOOT_ERROR, "Worker failed to boot."),
    ("wsgiapps:does_not_exist", APP_LOAD_ERROR, "App failed to load."),
])
def test_boot_failure_exit_code_with_several_workers(server, app, code, reason):
    """gunicorn 27.0.1 exits 1 with an uncaught HaltServer traceback when several workers
    fail to boot (HaltServer is raised again while halting); the code must stay 3/4."""
    srv = server(["--workers", "3"], app, wait=False)
    assert srv.wait_exit(60) == code
    assert reason in srv.log()


def test_no_app_module_exits_1(cli):
    p = cli([])
    assert p.returncode == 1
    assert "No application module specified" in p.stderr


def test_preload_import_error_exits_1(server):
    srv = server(["--preload"], "bootfail_import:app", wait=False)
    assert srv.wait_exit(60) == 1
    assert "this module refuses to be imported" in srv.log()


def test_preload_serves(server):
    srv = server(["--preload", "--workers", "2"], "wsgiapps:app")
    assert srv.get("/pid").status == 200


def test_chdir(server, helpers):
    srv = server(["--chdir", str(helpers.apps_dir)], "wsgiapps:app", cwd="/")
    assert srv.get("/pid").status == 200


def test_pythonpath(server, tmp_path, helpers):
    d = tmp_path / "elsewhere"
    d.mkdir()
    (d / "otherapp.py").write_text(
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'from pythonpath']\n")
    srv = server(["--pythonpath", str(d)], "otherapp:app", cwd=tmp_path)
    assert srv.get("/").body == b"from pythonpath"


def test_raw_env(server):
    srv = server(["-e", "FERRO_TEST_A=1", "--env", "FERRO_TEST_B=hello world"], "wsgiapps:app")
    assert srv.get("/osenv?name=FERRO_TEST_A").json() == {"value": "1"}
    assert srv.get("/osenv?name=FERRO_TEST_B").json() == {"value": "hello world"}
