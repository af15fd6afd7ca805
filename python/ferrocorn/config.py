"""Configuration loading with gunicorn's precedence rules.

Lowest to highest: setting defaults; defaults from the environment (``PORT``,
``WEB_CONCURRENCY``, ``FORWARDED_ALLOW_IPS``, ``SENDFILE``); the config file; the arguments in
``GUNICORN_CMD_ARGS``; those in ``FERROCORN_CMD_ARGS``; the real command line.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import importlib.util
import os
import shlex
import sys
import traceback
from collections.abc import Mapping
from typing import Any

from ferrocorn._version import __version__
from ferrocorn.settings import (
    SECTIONS,
    SETTINGS,
    Setting,
    auto_workers,
    format_default,
    parse_address,
)

Address = tuple[str, str, int] | tuple[str, str] | tuple[str, int]
CMD_ARGS_VARS = ("GUNICORN_CMD_ARGS", "FERROCORN_CMD_ARGS")
DEFAULT_CONFIG_FILES = ("gunicorn.conf.py", "ferrocorn.conf.py")
USAGE = "%(prog)s [OPTIONS] [APP_MODULE]"


class ConfigError(Exception):
    """A configuration problem; the caller prints ``Error: <message>`` and exits with
    ``exit_code``: 2 for a bad value on the command line (gunicorn's argparse type
    errors), 1 otherwise (config file, environment)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _not_a_number(setting: Setting, value: Any) -> bool:
    """gunicorn's argparse converts numeric flags before validating them: text that is
    not a number is a usage error (exit 2); a number out of range fails validation
    later (exit 1). ``--workers auto`` is ferrocorn's own valid word."""
    default = setting.fresh().value
    if isinstance(default, bool) or not isinstance(default, int | float):
        return False
    if not isinstance(value, str) or (setting.name == "workers" and value == "auto"):
        return False
    try:
        float(value)
    except ValueError:
        return True
    return False


def _show(value: Any) -> str:
    if callable(value) and hasattr(value, "__qualname__"):
        return f"<{value.__qualname__}()>"
    return repr(value)


class Config:
    """All setting values; read them as attributes (``cfg.workers``, ``cfg.on_starting``)."""

    settings: dict[str, Setting]

    def __init__(self, environ: Mapping[str, str] | None = None, cwd: str | None = None) -> None:
        env = dict(os.environ if environ is None else environ)
        object.__setattr__(self, "settings", {s.name: s.fresh() for s in SETTINGS})
        self.environ: dict[str, str] = env
        self.cwd: str = cwd or _getcwd(env)
        self.notes: list[str] = []
        self.warnings: list[str] = []
        self.workers_reason: str | None = None
        self.app_uri: str | None = None
        self.config_file: str | None = None
        self.settings["chdir"].value = self.cwd
        for setting in SETTINGS:
            if setting.env_var and env.get(setting.env_var, "").strip():
                raw = env[setting.env_var]
                value = setting.env_value(raw) if setting.env_value else raw
                self.set(setting.name, value, source="env", shown=raw)

    # -- attribute access

    def __getattr__(self, name: str) -> Any:
        if name == "settings":
            raise AttributeError(name)
        if name not in self.settings:
            raise AttributeError(f"No configuration setting for: {name}")
        return self.settings[name].value

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.settings:
            raise AttributeError(f"use cfg.set({name!r}, value) to change a setting")
        object.__setattr__(self, name, value)

    def set(self, name: str, value: Any, source: str = "api", shown: Any = None) -> None:
        """Validate ``value`` and store it; raise ConfigError if invalid or not supported."""
        if name not in self.settings:
            raise ConfigError(f"No configuration setting for: {name}")
        setting = self.settings[name]
        origin = f" from ${setting.env_var}" if source == "env" else ""
        try:
            validated = setting.validator(value)
        except (ValueError, TypeError) as exc:
            shown_value = _show(value if shown is None else shown)
            from_args = source in ("cli", *CMD_ARGS_VARS)
            where = f", given as {'/'.join(setting.cli)}" if from_args and setting.cli else ""
            raise ConfigError(
                f"Invalid value for {name}{origin}: {shown_value} (expected {exc}){where}",
                2 if from_args and _not_a_number(setting, value) else 1,
            ) from None
        _check_supported(setting, validated)
        setting.value = validated
        setting.source = source
        if name == "workers":
            is_auto = isinstance(value, str) and value.strip().lower() == "auto"
            self.workers_reason = auto_workers()[1] if is_auto else None

    def is_default(self, name: str) -> bool:
        """True unless a config file or arguments set it (environment defaults count as default)."""
        return self.settings[name].source in ("default", "env")

    # -- derived values

    @property
    def worker_class_str(self) -> str:
        """The worker that will run: sync, gthread or asgi (sync with threads > 1 is gthread)."""
        worker: str = self.settings["worker_class"].value
        if worker == "sync" and self.threads > 1:
            return "gthread"
        return worker

    @property
    def address(self) -> list[Address]:
        """Parsed binds: ("tcp", host, port), ("unix", path) or ("fd", n)."""
        return [parse_address(bind) for bind in self.settings["bind"].value]

    @property
    def proc_name(self) -> str:
        name: str | None = self.settings["proc_name"].value
        return name if name is not None else self.settings["default_proc_name"].value

    @property
    def sendfile(self) -> bool:
        value: bool | None = self.settings["sendfile"].value
        return True if value is None else value

    @property
    def env(self) -> dict[str, str]:
        """raw_env as a dict."""
        pairs = (item.split("=", 1) for item in self.settings["raw_env"].value)
        return {key: value for key, value in pairs}

    @property
    def uid(self) -> int:
        return int(self.settings["user"].value)

    @property
    def gid(self) -> int:
        return int(self.settings["group"].value)

    @property
    def is_ssl(self) -> bool:
        return bool(self.settings["certfile"].value or self.settings["keyfile"].value)

    # -- output

    def print_config_text(self) -> str:
        """gunicorn's ``--print-config`` text: ``name = value`` for every setting, by name."""
        width = max(len(name) for name in self.settings)
        lines = []
        for name in sorted(self.settings):
            value = self.settings[name].value
            if callable(value):
                value = f"<{getattr(value, '__qualname__', value)}()>"
            lines.append(f"{name:{width}} = {value}")
        return "\n".join(lines)

    def parser(self) -> argparse.ArgumentParser:
        return build_parser()

    def render_help(self) -> str:
        return build_parser().format_help()


def _getcwd(environ: Mapping[str, str]) -> str:
    """The cwd, keeping $PWD's spelling (symlinks) when it names the same directory."""
    cwd = os.getcwd()
    pwd = environ.get("PWD")
    try:
        if pwd and os.path.samefile(pwd, cwd):
            return pwd
    except OSError:
        pass
    return cwd


def _not_supported(setting: Setting, detail: str = "") -> ConfigError:
    where = f" ({setting.flag})" if setting.flag else ""
    return ConfigError(
        f"setting '{setting.name}'{where}{detail} is not supported by ferrocorn yet; "
        "remove it or run gunicorn for now"
    )


def _check_supported(setting: Setting, value: Any) -> None:
    if setting.status == "not_yet":
        default = setting.fresh().value
        if value != default:
            raise _not_supported(setting)
    elif setting.supported_values is not None and value not in setting.supported_values:
        raise _not_supported(setting, f" with value {value!r}")


# -- command line


def _help_text(setting: Setting) -> str:
    text = f"{setting.help} [{format_default(setting)}]"
    if setting.status == "not_yet":
        text += " (not supported by ferrocorn yet)"
    elif setting.supported_values:
        text += f" (ferrocorn supports only: {', '.join(setting.supported_values)})"
    return text.replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser, built from the settings table (prefix abbreviation is on)."""
    parser = argparse.ArgumentParser(prog="ferrocorn", usage=USAGE, allow_abbrev=True)
    parser.add_argument(
        "-v",
        "--version",
        action="version",
        version=f"%(prog)s (version {__version__})",
        help="show the version and exit",
    )
    parser.add_argument(
        "args",
        nargs="*",
        metavar="APP_MODULE",
        help="the application: MODULE:VARIABLE or MODULE:FACTORY(ARGS)",
    )
    for section in SECTIONS:
        group = parser.add_argument_group(section)
        for setting in SETTINGS:
            if setting.section == section and setting.cli:
                _add_option(group, setting)
    return parser


def _add_option(group: argparse._ArgumentGroup, setting: Setting) -> None:
    kwargs: dict[str, Any] = {"dest": setting.name, "default": None, "help": _help_text(setting)}
    if setting.action in ("store", "append", "optional"):
        kwargs["metavar"] = setting.meta or setting.name.upper()
    if setting.action == "optional":
        kwargs.update(nargs="?", const=setting.const)
    elif setting.action == "store_const":
        kwargs.update(action="store_const", const=setting.const)
    else:
        kwargs["action"] = setting.action
    group.add_argument(*setting.cli, **kwargs)


def _apply_args(cfg: Config, namespace: argparse.Namespace, source: str) -> None:
    for name, value in vars(namespace).items():
        if name != "args" and value is not None:
            cfg.set(name, value, source=source)


# -- config file


def _default_config_file(cwd: str) -> str | None:
    for name in DEFAULT_CONFIG_FILES:
        path = os.path.join(cwd, name)
        if os.path.exists(path):
            return path
    return None


def read_config_file(location: str, warnings: list[str] | None = None) -> dict[str, Any]:
    """Execute a config file (PATH, file:PATH or python:MODULE) and return its globals."""
    if location.startswith("python:"):
        try:
            return vars(importlib.import_module(location.removeprefix("python:")))
        except Exception as exc:
            raise ConfigError(f"Failed to import config module {location!r}: {exc}") from exc
    filename = location.removeprefix("file:")
    if not os.path.exists(filename):
        raise ConfigError(f"{filename!r} doesn't exist")
    module_name = "__config__"
    loader = None
    if os.path.splitext(filename)[1] not in (".py", ".pyc"):
        if warnings is not None:
            warnings.append("configuration file should have a valid Python extension.")
        loader = importlib.machinery.SourceFileLoader(module_name, filename)
    spec = importlib.util.spec_from_file_location(module_name, filename, loader=loader)
    if spec is None or spec.loader is None:
        raise ConfigError(f"Failed to read config file: {filename}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ConfigError(
            f"Failed to read config file: {filename}\n{traceback.format_exc().rstrip()}"
        ) from exc
    return vars(module)


def _apply_file(cfg: Config, location: str) -> None:
    for name, value in read_config_file(location, cfg.warnings).items():
        if name in cfg.settings:
            cfg.set(name, value, source="file")
    cfg.config_file = location


# -- entry point


def _env_args(parser: argparse.ArgumentParser, environ: Mapping[str, str], var: str) -> Any:
    try:
        argv = shlex.split(environ.get(var, ""))
    except ValueError as exc:
        raise ConfigError(f"Cannot parse ${var}: {exc}") from None
    return parser.parse_args(argv)


def load_config(argv: list[str], environ: Mapping[str, str]) -> tuple[Config, str]:
    """Build the Config from ``argv`` (without the program name) and ``environ``.

    Returns the config and the APP_MODULE. Raises ConfigError on bad or unsupported settings
    and when no application is given; argparse exits with code 2 on unknown flags.
    Side effect, as in gunicorn: the cwd goes on sys.path so the config file can import
    local modules.
    """
    cfg = Config(environ)
    parser = build_parser()
    cli = parser.parse_args(argv)
    env_args = {var: _env_args(parser, environ, var) for var in CMD_ARGS_VARS}

    app_uri: str | None = cli.args[0] if cli.args else None
    if app_uri:
        cfg.set("default_proc_name", app_uri, source="cli")

    if cfg.cwd not in sys.path:
        sys.path.insert(0, cfg.cwd)
    # -c from the command line wins over FERROCORN_CMD_ARGS, which wins over GUNICORN_CMD_ARGS.
    location = cli.config or env_args["FERROCORN_CMD_ARGS"].config
    location = location or env_args["GUNICORN_CMD_ARGS"].config or _default_config_file(cfg.cwd)
    if location:
        _apply_file(cfg, location)

    for var, namespace in env_args.items():
        _apply_args(cfg, namespace, var)
    _apply_args(cfg, cli, "cli")

    app_uri = app_uri or cfg.wsgi_app
    if not app_uri:
        raise ConfigError("No application module specified.")
    cfg.app_uri = app_uri
    _add_notes(cfg)
    return cfg, app_uri


def _add_notes(cfg: Config) -> None:
    if cfg.workers_reason:
        cfg.notes.append(f"workers = auto: {cfg.workers} workers, {cfg.workers_reason}")
    if not cfg.is_default("worker_tmp_dir"):
        cfg.notes.append("worker_tmp_dir is ignored: ferrocorn keeps no heartbeat files")
    if cfg.worker_class == "sync" and cfg.threads > 1:
        cfg.notes.append(f"threads = {cfg.threads} with the sync worker: using gthread instead")
