"""Unit tests for ferrocorn.settings and ferrocorn.config (no native extension needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from ferrocorn import settings
from ferrocorn.config import Config, ConfigError, build_parser, load_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Run each test in an empty directory with an untouched sys.path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "__config__", raising=False)


def load(argv, environ=None):
    return load_config(argv, environ or {})


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# -- the table


def test_table_lists_every_gunicorn_setting():
    names = [s.name for s in settings.SETTINGS]
    # gunicorn 27.0.1's 120 + 5 of ours (max_worker_memory, stats_bind, websocket_ping_*,
    # websocket_per_message_deflate)
    assert len(names) == len(set(names)) == 125
    for name in ("limit_request_field_size", "ssl_context", "dirty_worker_exit", "paste"):
        assert name in settings.SETTINGS_BY_NAME
    assert settings.SETTINGS_BY_NAME["limit_request_field_size"].cli == (
        "--limit-request-field_size",
    )


def test_flags_are_unique():
    flags = [flag for s in settings.SETTINGS for flag in s.cli]
    assert len(flags) == len(set(flags))


def test_every_default_passes_its_validator():
    cfg = Config({})
    for name, setting in cfg.settings.items():
        assert setting.source == "default", name


def test_status_of_key_settings():
    by_name = settings.SETTINGS_BY_NAME
    for name in ("bind", "workers", "timeout", "on_starting", "post_request", "max_worker_memory",
                 "control_socket", "statsd_host"):
        assert by_name[name].status == "supported"
    for name in ("certfile", "ssl_context", "syslog", "spew"):
        assert by_name[name].status == "not_yet"
    for name in ("daemon", "reload", "user", "group", "initgroups", "reuse_port", "proc_name"):
        assert by_name[name].status == "supported"
    assert by_name["header_map"].supported_values == ("drop",)


def test_docs_match_the_table():
    committed = (REPO / "docs" / "settings.md").read_text()
    assert committed == settings.render_markdown(), (
        "docs/settings.md is stale: run `PYTHONPATH=python python -m ferrocorn.settings "
        "> docs/settings.md`"
    )


# -- precedence


def test_defaults():
    cfg, app = load(["app:application"])
    assert app == "app:application"
    assert cfg.bind == ["127.0.0.1:8000"]
    assert cfg.address == [("tcp", "127.0.0.1", 8000)]
    assert cfg.workers == 1
    assert cfg.worker_class_str == "sync"
    assert cfg.chdir == str(Path.cwd())
    assert cfg.proc_name == "app:application"
    assert cfg.sendfile is True
    assert cfg.is_default("workers")
    assert cfg.config_file is None


def test_environment_defaults():
    env = {"PORT": "9000", "WEB_CONCURRENCY": "3", "FORWARDED_ALLOW_IPS": "*", "SENDFILE": "0"}
    cfg, _ = load(["app"], env)
    assert cfg.bind == ["0.0.0.0:9000"]
    assert cfg.workers == 3
    assert cfg.forwarded_allow_ips == ["*"]
    assert cfg.sendfile is False
    assert cfg.is_default("workers")


def test_file_beats_environment_defaults(tmp_path):
    write(tmp_path / "gunicorn.conf.py", "workers = 5\nbind = '0.0.0.0:1'\n")
    cfg, _ = load(["app"], {"WEB_CONCURRENCY": "3", "PORT": "9000"})
    assert cfg.workers == 5
    assert cfg.bind == ["0.0.0.0:1"]
    assert not cfg.is_default("workers")


def test_env_args_beat_file_and_cli_beats_env_args(tmp_path):
    write(tmp_path / "gunicorn.conf.py", "workers = 5\ntimeout = 11\nbacklog = 12\n")
    env = {"GUNICORN_CMD_ARGS": "--workers 6 --timeout 21", "FERROCORN_CMD_ARGS": "--timeout 31"}
    cfg, _ = load(["app", "--backlog", "99"], env)
    assert cfg.workers == 6
    assert cfg.timeout == 31
    assert cfg.backlog == 99
    cfg, _ = load(["app", "--timeout", "41"], env)
    assert cfg.timeout == 41


def test_default_config_files(tmp_path):
    write(tmp_path / "ferrocorn.conf.py", "workers = 4\n")
    cfg, _ = load(["app"])
    assert cfg.workers == 4
    assert cfg.config_file.endswith("ferrocorn.conf.py")
    write(tmp_path / "gunicorn.conf.py", "workers = 2\n")
    cfg, _ = load(["app"])
    assert cfg.workers == 2


def test_config_path_from_cli_and_env_args(tmp_path):
    write(tmp_path / "gunicorn.conf.py", "workers = 2\n")
    write(tmp_path / "a.py", "workers = 7\n")
    write(tmp_path / "b.py", "workers = 8\n")
    assert load(["-c", "a.py", "app"])[0].workers == 7
    assert load(["app"], {"GUNICORN_CMD_ARGS": "-c b.py"})[0].workers == 8
    env = {"GUNICORN_CMD_ARGS": "-c b.py", "FERROCORN_CMD_ARGS": "-c a.py"}
    assert load(["app"], env)[0].workers == 7
    assert load(["app", "--config", "b.py"], env)[0].workers == 8


def test_config_file_features(tmp_path):
    write(
        tmp_path / "conf.py",
        "import os\n"
        "HERE = __file__\n"
        "unrelated = 'ignored'\n"
        "wsgi_app = 'pkg.mod:app'\n"
        "raw_env = ['A=1', 'B=x=y']\n"
        "def on_starting(server):\n"
        "    server.append(HERE)\n",
    )
    cfg, app = load(["-c", "conf.py"])
    assert app == "pkg.mod:app"
    assert cfg.env == {"A": "1", "B": "x=y"}
    calls = []
    cfg.on_starting(calls)
    assert calls == [str(tmp_path / "conf.py")]
    assert cfg.proc_name == "ferrocorn"


def test_cli_app_beats_wsgi_app(tmp_path):
    write(tmp_path / "gunicorn.conf.py", "wsgi_app = 'file:app'\n")
    assert load(["cli:app"])[1] == "cli:app"


def test_python_module_config(tmp_path):
    write(tmp_path / "my_gconf.py", "workers = 9\n")
    cfg, _ = load(["-c", "python:my_gconf", "app"])
    assert cfg.workers == 9


def test_config_file_without_py_extension_warns(tmp_path):
    write(tmp_path / "conf.txt", "workers = 3\n")
    cfg, _ = load(["-c", "conf.txt", "app"])
    assert cfg.workers == 3
    assert cfg.warnings == ["configuration file should have a valid Python extension."]


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="doesn't exist"):
        load(["-c", "missing.py", "app"])
    write(tmp_path / "bad.py", "workers = (\n")
    with pytest.raises(ConfigError, match="Failed to read config file"):
        load(["-c", "bad.py", "app"])
    write(tmp_path / "bad2.py", "workers = 'many'\n")
    with pytest.raises(ConfigError, match="Invalid value for workers: 'many'"):
        load(["-c", "bad2.py", "app"])


def test_no_application():
    with pytest.raises(ConfigError, match=r"^No application module specified\.$"):
        load([])


# -- argparse behaviour


def test_prefix_abbreviation():
    cfg, _ = load(["--timeo", "7", "--bac", "64", "app"])
    assert (cfg.timeout, cfg.backlog) == (7, 64)


def test_ambiguous_prefix_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        load(["--stats", "x", "app"])
    assert exc.value.code == 2
    assert "ambiguous option: --stats could match" in capsys.readouterr().err


def test_unknown_flag_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        load(["--no-such-flag", "app"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_unknown_flag_in_env_args_exits_2():
    with pytest.raises(SystemExit) as exc:
        load(["app"], {"GUNICORN_CMD_ARGS": "--nope"})
    assert exc.value.code == 2


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        load(["-v"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == "ferrocorn (version 0.1.0)"


def test_repeatable_and_special_flags():
    cfg, _ = load(["-b", "127.0.0.1:1", "--bind", "unix:/tmp/s", "-e", "X=1", "-e", "Y=2", "app"])
    assert cfg.bind == ["127.0.0.1:1", "unix:/tmp/s"]
    assert cfg.env == {"X": "1", "Y": "2"}
    cfg, _ = load(["--limit-request-field_size", "100", "--no-sendfile", "--preload", "app"])
    assert cfg.limit_request_field_size == 100
    assert cfg.sendfile is False
    assert cfg.preload_app is True


def test_optional_argument_flag():
    parser = build_parser()
    assert parser.parse_args(["--proxy-protocol"]).proxy_protocol == "auto"
    assert parser.parse_args(["--proxy-protocol", "v2"]).proxy_protocol == "v2"
    assert parser.parse_args([]).proxy_protocol is None


def test_help_is_generated_from_the_table():
    text = Config({}).render_help()
    assert text.startswith("usage: ferrocorn [OPTIONS] [APP_MODULE]")
    assert "--limit-request-field_size INT" in text
    assert "--max-worker-memory MIB" in text
    assert "not supported by ferrocorn yet" in text


def test_print_config_text():
    cfg, _ = load(["-w", "3", "app"])
    lines = cfg.print_config_text().splitlines()
    assert len(lines) == len(settings.SETTINGS)
    names = [line.split(" ", 1)[0] for line in lines]
    assert names == sorted(names)
    width = max(len(n) for n in names)
    assert f"{'workers':{width}} = 3" in lines
    assert f"{'on_starting':{width}} = <on_starting()>" in lines


# -- not yet supported settings


def test_not_yet_refused_from_cli():
    with pytest.raises(ConfigError) as exc:
        load(["--certfile", "x.pem", "app"])
    assert str(exc.value) == (
        "setting 'certfile' (--certfile) is not supported by ferrocorn yet; "
        "remove it or run gunicorn for now"
    )


def test_not_yet_refused_from_file_and_env_args(tmp_path):
    write(tmp_path / "gunicorn.conf.py", "syslog = True\n")
    with pytest.raises(ConfigError, match="setting 'syslog' \\(--log-syslog\\) is not supported"):
        load(["app"])
    (tmp_path / "gunicorn.conf.py").unlink()
    with pytest.raises(ConfigError, match="'spew'"):
        load(["app"], {"GUNICORN_CMD_ARGS": "--spew"})


def test_not_yet_hook_refused(tmp_path):
    write(tmp_path / "gunicorn.conf.py", "def ssl_context(conf, factory):\n    return factory()\n")
    with pytest.raises(ConfigError, match="setting 'ssl_context' is not supported"):
        load(["app"])


def test_not_yet_at_default_value_is_accepted(tmp_path):
    write(
        tmp_path / "gunicorn.conf.py", "spew = False\ncertfile = None\nsyslog_facility = 'user'\n"
    )
    cfg, _ = load(["app"])
    assert cfg.spew is False


def test_partially_supported_value():
    assert load(["--header-map", "DROP", "app"])[0].header_map == "drop"
    with pytest.raises(ConfigError, match="'header_map' \\(--header-map\\) with value 'refuse'"):
        load(["--header-map", "refuse", "app"])


def test_no_control_socket_is_accepted():
    assert load(["--no-control-socket", "app"])[0].control_socket_disable is True


# -- validators


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["-w", "abc"],
            "Invalid value for workers: 'abc' (expected a positive integer or \"auto\")",
        ),
        (["-w", "0"], "Invalid value for workers: '0'"),
        (["-t", "-1"], "Invalid value for timeout: '-1' (expected a non-negative integer)"),
        (["--log-level", "loud"], "Invalid value for loglevel: 'loud' (expected one of debug"),
        (["-k", "gevent"], "Invalid value for worker_class: 'gevent' (expected one of sync"),
        (["--forwarded-allow-ips", "10.0.0.1/8"], "Invalid value for forwarded_allow_ips"),
        (["-b", "host:port"], "Invalid value for bind: ['host:port']"),
        (["-e", "NOEQUALS"], "Invalid value for raw_env: ['NOEQUALS']"),
        (["--chdir", "/no/such/dir"], "Invalid value for chdir: '/no/such/dir'"),
        (["--reuse-port", "--preload", "--threads", "0"], "Invalid value for threads: '0'"),
    ],
)
def test_invalid_values(argv, message):
    with pytest.raises(ConfigError) as exc:
        load([*argv, "app"])
    assert str(exc.value).startswith(message)


def test_invalid_environment_default():
    with pytest.raises(ConfigError, match=r"Invalid value for workers from \$WEB_CONCURRENCY"):
        load(["app"], {"WEB_CONCURRENCY": "lots"})


def test_value_conversions(tmp_path):
    write(
        tmp_path / "gunicorn.conf.py",
        "umask = 0o22\npreload_app = 'true'\nforwarded_allow_ips = '10.0.0.0/8, 127.0.0.1'\n"
        "forwarder_headers = 'SCRIPT_NAME'\nbind = ['unix:/tmp/a', 'fd://3']\nloglevel = 'DEBUG'\n",
    )
    cfg, _ = load(["app"])
    assert cfg.umask == 0o22
    assert cfg.preload_app is True
    assert cfg.forwarded_allow_ips == ["10.0.0.0/8", "127.0.0.1"]
    assert cfg.forwarder_headers == ["SCRIPT_NAME"]
    assert cfg.address == [("unix", "/tmp/a"), ("fd", 3)]
    assert cfg.loglevel == "debug"
    assert load(["-m", "022", "app"])[0].umask == 0o22
    assert load(["-m", "18", "app"])[0].umask == 18


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("sync", "sync"),
        ("GTHREAD", "gthread"),
        ("asgi", "asgi"),
        ("uvicorn.workers.UvicornWorker", "asgi"),
        ("uvicorn_worker.UvicornWorker", "asgi"),
        ("gunicorn.workers.sync.SyncWorker", "sync"),
    ],
)
def test_worker_class_aliases(value, expected):
    assert load(["-k", value, "app"])[0].worker_class == expected


def test_threads_switch_sync_to_gthread():
    cfg, _ = load(["--threads", "4", "app"])
    assert cfg.worker_class == "sync"
    assert cfg.worker_class_str == "gthread"
    assert cfg.notes == ["threads = 4 with the sync worker: using gthread instead"]
    assert load(["--threads", "4", "-k", "asgi", "app"])[0].worker_class_str == "asgi"


def test_set_and_attribute_protection():
    cfg = Config({})
    cfg.set("timeout", "12")
    assert cfg.timeout == 12
    assert not cfg.is_default("timeout")
    with pytest.raises(AttributeError):
        cfg.timeout = 3
    with pytest.raises(AttributeError, match="No configuration setting for: nope"):
        _ = cfg.nope
    with pytest.raises(ConfigError, match="No configuration setting"):
        cfg.set("nope", 1)
    assert cfg.settings["timeout"].get() == 12


# -- bind parsing


@pytest.mark.parametrize(
    ("bind", "parsed"),
    [
        ("127.0.0.1:8001", ("tcp", "127.0.0.1", 8001)),
        ("localhost", ("tcp", "localhost", 8000)),
        ("LOCALHOST:1", ("tcp", "localhost", 1)),
        ("[::1]:8080", ("tcp", "::1", 8080)),
        ("[::]", ("tcp", "::", 8000)),
        ("tcp://0.0.0.0:80", ("tcp", "0.0.0.0", 80)),
        (":9000", ("tcp", "0.0.0.0", 9000)),
        ("unix:/run/app.sock", ("unix", "/run/app.sock")),
        ("unix:///run/app.sock", ("unix", "/run/app.sock")),
        ("unix:rel.sock", ("unix", "rel.sock")),
        ("fd://3", ("fd", 3)),
    ],
)
def test_parse_address(bind, parsed):
    assert settings.parse_address(bind) == parsed


@pytest.mark.parametrize("bind", ["fd://x", "host:", "host:99999", "[::1", "[::1]x", "unix:"])
def test_parse_address_errors(bind):
    with pytest.raises(ValueError):
        settings.parse_address(bind)


# -- workers = auto


def _cgroup(tmp_path, proc: str, files: dict[str, str]):
    root = tmp_path / "cg"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (tmp_path / "proc").write_text(proc)
    return str(root), str(tmp_path / "proc")


def test_usable_cpus_cgroup_v2(tmp_path, monkeypatch):
    monkeypatch.setattr(settings.os, "sched_getaffinity", lambda pid: set(range(8)))
    root, proc = _cgroup(
        tmp_path, "0::/app/web\n", {"cpu.max": "max 100000\n", "app/cpu.max": "150000 100000\n"}
    )
    count, reason = settings.usable_cpus(root, proc)
    assert count == 2
    assert "cgroup v2 cpu.max 150000/100000" in reason
    assert "8 CPUs in the affinity mask" in reason


def test_usable_cpus_cgroup_v1(tmp_path, monkeypatch):
    monkeypatch.setattr(settings.os, "sched_getaffinity", lambda pid: set(range(4)))
    root, proc = _cgroup(
        tmp_path,
        "4:cpu,cpuacct:/docker/abc\n",
        {
            "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "100000",
            "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000",
        },
    )
    assert settings.usable_cpus(root, proc)[0] == 1


def test_usable_cpus_no_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(settings.os, "sched_getaffinity", lambda pid: {0, 1, 2})
    root, proc = _cgroup(tmp_path, "0::/\n", {"cpu.max": "max 100000\n"})
    assert settings.usable_cpus(root, proc) == (3, "3 usable CPUs: 3 CPUs in the affinity mask")


def test_workers_auto(monkeypatch):
    monkeypatch.setattr(settings, "usable_cpus", lambda: (3, "3 usable CPUs: test"))
    cfg, _ = load(["-w", "auto", "app"])
    assert cfg.workers == 7
    assert cfg.workers_reason == "2 x 3 + 1 (3 usable CPUs: test)"
    assert cfg.notes == ["workers = auto: 7 workers, 2 x 3 + 1 (3 usable CPUs: test)"]
    cfg, _ = load(["app"], {"WEB_CONCURRENCY": "auto"})
    assert cfg.workers == 7
    cfg, _ = load(["app", "-w", "2"], {"WEB_CONCURRENCY": "auto"})
    assert (cfg.workers, cfg.workers_reason, cfg.notes) == (2, None, [])


# -- hooks


def test_hook_arity(tmp_path):
    write(tmp_path / "gunicorn.conf.py", "def post_fork(server):\n    pass\n")
    with pytest.raises(ConfigError) as exc:
        load(["app"])
    message = str(exc.value)
    assert message.startswith("Invalid value for post_fork: <post_fork()>")
    assert "2 positional argument(s) (server, worker); it takes 1" in message


def test_hook_not_callable(tmp_path):
    write(tmp_path / "gunicorn.conf.py", "on_exit = 3\n")
    with pytest.raises(ConfigError, match="Invalid value for on_exit: 3 \\(expected a callable\\)"):
        load(["app"])


@pytest.mark.parametrize("params", ["worker, req", "worker, req, environ", "w, r, e, resp"])
def test_post_request_arities(tmp_path, params):
    write(
        tmp_path / "gunicorn.conf.py",
        f"calls = []\ndef post_request({params}):\n    calls.append(({params}))\n",
    )
    cfg, _ = load(["app"])
    cfg.post_request("w", "r", "e", "resp")
    calls = sys.modules["__config__"].calls
    assert calls == [("w", "r", "e", "resp")[: params.count(",") + 1]]


def test_post_request_bad_arity():
    cfg = Config({})
    with pytest.raises(ConfigError, match="2, 3 or 4 positional arguments"):
        cfg.set("post_request", lambda worker: None)


def test_hook_from_import_string(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    write(tmp_path / "myhooks.py", "def ready(server):\n    return 'ready'\n")
    cfg = Config({})
    cfg.set("when_ready", "myhooks.ready")
    assert cfg.when_ready(None) == "ready"


def test_default_hooks_are_noops():
    cfg = Config({})
    assert cfg.on_starting(object()) is None
    assert cfg.nworkers_changed(object(), 2, 1) is None
    assert cfg.post_request(1, 2, 3, 4) is None
    assert cfg.ssl_context(cfg, lambda: "ctx") == "ctx"
