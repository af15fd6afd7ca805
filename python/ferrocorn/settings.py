"""The settings table: the single source of truth for the CLI, ``--help`` and docs/settings.md.

Every gunicorn 27.0.1 setting is listed under its gunicorn name and flags, plus a few
ferrocorn-only ones. Each entry says whether ferrocorn implements it (``supported``) or only
recognises it (``not_yet``). Run ``python -m ferrocorn.settings`` to print the Markdown reference.

Validators take a value from the command line (a string) or from a config file (any Python
object) and return the normalised value. They raise ``ValueError`` (or ``TypeError``) whose
text completes the sentence "expected ..."; :class:`ferrocorn.config.Config` turns that into
a ``ConfigError`` naming the setting and the value.
"""

from __future__ import annotations

import copy
import dataclasses
import grp
import importlib
import inspect
import ipaddress
import math
import os
import pwd
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

Action = Literal["store", "append", "store_true", "store_false", "store_const", "optional"]
Status = Literal["supported", "not_yet"]
Validator = Callable[[Any], Any]

WORKER_CLASS_ALIASES: dict[str, str] = {
    "sync": "sync",
    "gthread": "gthread",
    "asgi": "asgi",
    "gunicorn.workers.sync.SyncWorker": "sync",
    "gunicorn.workers.gthread.ThreadWorker": "gthread",
    "gunicorn.workers.gasgi.ASGIWorker": "asgi",
    "egg:gunicorn#sync": "sync",
    "egg:gunicorn#gthread": "gthread",
    "egg:gunicorn#asgi": "asgi",
    "uvicorn.workers.UvicornWorker": "asgi",
    "uvicorn_worker.UvicornWorker": "asgi",
}
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclasses.dataclass(eq=False)
class Setting:
    """One setting: its static description plus, inside a Config, its current value."""

    name: str
    section: str
    cli: tuple[str, ...]
    default: Any
    validator: Validator
    help: str
    meta: str | None = None
    action: Action = "store"
    const: Any = None
    doc: str = ""
    default_doc: str | None = None
    env_var: str | None = None
    env_value: Callable[[str], Any] | None = None
    status: Status = "supported"
    supported_values: tuple[str, ...] | None = None
    hook_args: tuple[str, ...] | None = None
    ferrocorn_only: bool = False
    value: Any = None
    source: str = "default"

    def get(self) -> Any:
        """Return the current value (gunicorn's ``Setting.get``)."""
        return self.value

    @property
    def flag(self) -> str | None:
        """The long flag (or the only one), used in messages."""
        return self.cli[-1] if self.cli else None

    def fresh(self) -> Setting:
        """A copy holding the validated built-in default."""
        clone = dataclasses.replace(self)
        default = copy.deepcopy(self.default)
        clone.value = None if default is None else self.validator(default)
        clone.source = "default"
        return clone


# ---------------------------------------------------------------------------------------------
# Validators


def validate_string(val: Any) -> str | None:
    if val is None:
        return None
    if not isinstance(val, str):
        raise TypeError("a string")
    return val.strip()


def validate_bool(val: Any) -> bool | None:
    if val is None or isinstance(val, bool):
        return val
    if isinstance(val, int) and val in (0, 1):
        return bool(val)
    if isinstance(val, str):
        text = val.strip().lower()
        if text in ("true", "yes", "y", "on", "1"):
            return True
        if text in ("false", "no", "n", "off", "0"):
            return False
    raise ValueError("a boolean: true or false")


def _to_int(val: Any, expected: str) -> int:
    if isinstance(val, int):
        return int(val)
    if isinstance(val, float) and val.is_integer():
        return int(val)
    if isinstance(val, str):
        text = val.strip()
        for base in (10, 0):
            try:
                return int(text, base)
            except ValueError:
                continue
    raise ValueError(expected)


def validate_uint(val: Any) -> int:
    number = _to_int(val, "a non-negative integer")
    if number < 0:
        raise ValueError("a non-negative integer")
    return number


def validate_seconds(val: Any) -> float:
    """A non-negative number of seconds (fractions allowed); 0 turns the thing off."""
    expected = "a non-negative number of seconds"
    try:
        number = float(val.strip() if isinstance(val, str) else val)
    except (TypeError, ValueError):
        raise ValueError(expected) from None
    if not number >= 0 or number == float("inf"):
        raise ValueError(expected)
    return number


def validate_positive_int(val: Any) -> int:
    number = _to_int(val, "a positive integer")
    if number < 1:
        raise ValueError("a positive integer")
    return number


def int_range(low: int, high: int) -> Validator:
    def validate(val: Any) -> int:
        number = _to_int(val, f"an integer from {low} to {high}")
        if not low <= number <= high:
            raise ValueError(f"an integer from {low} to {high}")
        return number

    return validate


def validate_octal(val: Any) -> int:
    """Like gunicorn's umask parsing: a leading 0 means octal (``022``, ``0o22``, ``18``)."""
    expected = "a non-negative integer; a leading 0 means octal, e.g. 022"
    if isinstance(val, str) and re.match(r"\s*0\d", val):
        val = val.strip().replace("0", "0o", 1)
    number = _to_int(val, expected)
    if number < 0:
        raise ValueError(expected)
    return number


def validate_workers(val: Any) -> int:
    if isinstance(val, str) and val.strip().lower() == "auto":
        return auto_workers()[0]
    number = _to_int(val, 'a positive integer or "auto"')
    if number < 1:
        raise ValueError('a positive integer or "auto"')
    return number


def validate_list_string(val: Any) -> list[str]:
    if not val:
        return []
    if isinstance(val, str):
        val = [val]
    if not isinstance(val, list | tuple):
        raise TypeError("a string or a list of strings")
    items = []
    for item in val:
        if not isinstance(item, str):
            raise TypeError("a string or a list of strings")
        items.append(item.strip())
    return items


def validate_comma_list(val: Any) -> list[str]:
    if val is None:
        return []
    if isinstance(val, str):
        return [part.strip() for part in val.split(",") if part.strip()]
    return [part for part in validate_list_string(val) if part]


def validate_ip_list(val: Any) -> list[str]:
    expected = 'a comma-separated list of IP addresses or networks, or "*"'
    try:
        items = validate_comma_list(val)
    except TypeError:
        raise ValueError(expected) from None
    for item in items:
        if item == "*":
            continue
        try:
            ipaddress.ip_network(item)
        except ValueError:
            raise ValueError(f"{expected}; {item!r} is neither") from None
    return items


def validate_bind(val: Any) -> list[str]:
    binds = validate_list_string(val)
    for bind in binds:
        parse_address(bind)
    return binds


def validate_raw_env(val: Any) -> list[str]:
    items = validate_list_string(val)
    for item in items:
        if "=" not in item or item.startswith("="):
            raise ValueError(f"KEY=VALUE entries; {item!r} has no '='")
    return items


def validate_dict(val: Any) -> dict[Any, Any]:
    if not isinstance(val, dict):
        raise TypeError("a dictionary")
    return val


def validate_secure_scheme_headers(val: Any) -> dict[str, str]:
    headers = validate_dict(val)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise ValueError("a dictionary of header name to header value strings")
    return headers


def choice(*choices: str, aliases: Mapping[str, str] | None = None) -> Validator:
    """A case-insensitive choice; ``None`` gives the first choice."""
    mapping = {c: c for c in choices} | dict(aliases or {})

    def validate(val: Any) -> str:
        if val is None:
            return choices[0]
        if isinstance(val, bool) and aliases:
            val = str(val)
        if isinstance(val, str) and val.strip().lower() in mapping:
            return mapping[val.strip().lower()]
        raise ValueError("one of " + ", ".join(choices))

    return validate


def validate_loglevel(val: Any) -> str:
    if isinstance(val, str) and val.strip().lower() in LOG_LEVELS:
        return val.strip().lower()
    raise ValueError("one of " + ", ".join(LOG_LEVELS))


def validate_worker_class(val: Any) -> str:
    if inspect.isclass(val):
        val = f"{val.__module__}.{val.__qualname__}"
    if isinstance(val, str):
        name = val.strip()
        if "." not in name:
            name = name.lower()
        if name in WORKER_CLASS_ALIASES:
            return WORKER_CLASS_ALIASES[name]
    raise ValueError(
        "one of sync, gthread, asgi, uvicorn.workers.UvicornWorker or "
        "uvicorn_worker.UvicornWorker; other gunicorn worker classes are not supported"
    )


def validate_class_path(val: Any) -> str:
    if inspect.isclass(val):
        return f"{val.__module__}.{val.__qualname__}"
    text = validate_string(val)
    if not text:
        raise ValueError("a dotted class path")
    return text


def validate_chdir(val: Any) -> str:
    text = validate_string(val)
    if not text:
        raise ValueError("a directory path")
    path = os.path.abspath(os.path.join(os.getcwd(), text))
    if not os.path.isdir(path):
        raise ValueError("an existing directory")
    return path


def validate_user(val: Any) -> int:
    if val is None:
        return os.geteuid()
    if isinstance(val, int):
        return val
    if isinstance(val, str) and val.strip().isdigit():
        return int(val)
    try:
        return pwd.getpwnam(str(val)).pw_uid
    except KeyError:
        raise ValueError("an existing user name or a numeric uid") from None


def validate_group(val: Any) -> int:
    if val is None:
        return os.getegid()
    if isinstance(val, int):
        return val
    if isinstance(val, str) and val.strip().isdigit():
        return int(val)
    try:
        return grp.getgrnam(str(val)).gr_gid
    except KeyError:
        raise ValueError("an existing group name or a numeric gid") from None


def validate_optional_address(val: Any) -> str | None:
    text = validate_string(val)
    if text:
        parse_address(text)
    return text or None


def validate_statsd_address(val: Any) -> str | None:
    from ferrocorn.statsd import validate

    return validate(val)


def validate_http_protocols(val: Any) -> list[str]:
    items = [item.lower() for item in validate_comma_list(val)] or ["h1"]
    if any(item not in ("h1", "h2") for item in items):
        raise ValueError("a comma-separated list of h1 and h2")
    return items


def validate_anything(val: Any) -> Any:
    return val


def get_arity(func: Callable[..., Any]) -> int:
    """Count positional parameters, as gunicorn does when checking hooks."""
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = inspect.signature(func).parameters.values()
    return sum(1 for param in params if param.kind in positional)


def _load_callable(val: Any) -> Callable[..., Any]:
    if isinstance(val, str):
        module_name, _, attr = val.rpartition(".")
        if not module_name:
            raise ValueError("a callable or an import string module.function")
        try:
            val = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"an importable callable ({exc})") from None
    if not callable(val):
        raise ValueError("a callable")
    func: Callable[..., Any] = val
    return func


def hook(*args: str) -> Validator:
    """Validator for a hook taking exactly ``args`` positional arguments."""

    def validate(val: Any) -> Callable[..., Any]:
        func = _load_callable(val)
        expected = f"a callable taking {len(args)} positional argument(s) ({', '.join(args)})"
        try:
            arity = get_arity(func)
        except (TypeError, ValueError):
            raise ValueError(f"{expected}; its signature cannot be inspected") from None
        if arity != len(args):
            raise ValueError(f"{expected}; it takes {arity}")
        return func

    return validate


def validate_post_request(val: Any) -> Callable[..., Any]:
    """post_request accepts 2, 3 or 4 arguments; the result always takes 4."""
    func = _load_callable(val)
    expected = "a callable taking 2, 3 or 4 positional arguments (worker, req, environ, resp)"
    try:
        arity = get_arity(func)
    except (TypeError, ValueError):
        raise ValueError(f"{expected}; its signature cannot be inspected") from None
    if arity == 4:
        return func
    if arity not in (2, 3):
        raise ValueError(f"{expected}; it takes {arity}")

    def post_request(worker: Any, req: Any, environ: Any, resp: Any) -> Any:
        return func(*(worker, req, environ)[:arity])

    post_request.__qualname__ = getattr(func, "__qualname__", "post_request")
    return post_request


def default_hook(name: str, args: tuple[str, ...], body: str = "pass") -> Callable[..., Any]:
    """Build the default for a hook: a function with the hook's name and arity doing ``body``."""
    namespace: dict[str, Any] = {}
    exec(f"def {name}({', '.join(args)}):\n    {body}\n", namespace)
    func: Callable[..., Any] = namespace[name]
    func.__module__ = __name__
    return func


# ---------------------------------------------------------------------------------------------
# Addresses and CPU counting


def parse_address(bind: str) -> tuple[str, str, int] | tuple[str, str] | tuple[str, int]:
    """Parse one bind string into ("tcp", host, port), ("unix", path) or ("fd", n).

    Accepts ``HOST``, ``HOST:PORT``, ``[IPV6]:PORT``, ``tcp://...``, ``unix:PATH``,
    ``unix://PATH`` and ``fd://N``; the port defaults to 8000 as in gunicorn.
    """
    forms = "HOST, HOST:PORT, [IPV6]:PORT, unix:PATH or fd://N"
    unix = re.match(r"unix:(//)?", bind)
    if unix:
        if not bind[unix.end() :]:
            raise ValueError(f"{forms}; {bind!r} has no socket path")
        return ("unix", bind[unix.end() :])
    if bind.startswith("fd://"):
        try:
            return ("fd", int(bind[5:]))
        except ValueError:
            raise ValueError(f"{forms}; {bind!r} has no valid file descriptor") from None
    netloc = bind.removeprefix("tcp://")
    host, port = netloc, "8000"
    if netloc.startswith("["):
        host, sep, rest = netloc[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{forms}; {bind!r} is not a valid [IPV6]:PORT")
        port = rest[1:] if rest else port
    elif ":" in netloc:
        host, port = netloc.split(":", 1)
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"{forms}; {bind!r} has no valid port number") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"{forms}; the port in {bind!r} is not between 0 and 65535")
    return ("tcp", host.lower() or "0.0.0.0", number)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _walk_up(root: Path, rel: str) -> list[Path]:
    """The cgroup directory for ``rel`` under ``root`` and its ancestors up to ``root``."""
    current = root / rel.strip("/")
    dirs = []
    while True:
        dirs.append(current)
        if current == root or root not in current.parents:
            return dirs
        current = current.parent


def _cgroup_quota(root: Path, proc_cgroup: Path) -> tuple[float, str] | None:
    """The tightest CPU quota (in CPUs) of this process's cgroup and its ancestors."""
    lines = (_read(proc_cgroup) or "").splitlines()
    best: tuple[float, str] | None = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        controllers, rel = parts[1].split(","), parts[2]
        if parts[0] == "0" and parts[1] == "":
            for base in (root, root / "unified"):
                for folder in _walk_up(base, rel):
                    fields = (_read(folder / "cpu.max") or "max").split()
                    if fields[0] != "max" and len(fields) == 2:
                        quota, period = int(fields[0]), int(fields[1])
                        cpus = quota / period
                        if best is None or cpus < best[0]:
                            best = (cpus, f"cgroup v2 cpu.max {quota}/{period}")
        elif "cpu" in controllers:
            for mount in ("cpu,cpuacct", "cpuacct,cpu", "cpu"):
                for folder in _walk_up(root / mount, rel):
                    quota_text = _read(folder / "cpu.cfs_quota_us")
                    period_text = _read(folder / "cpu.cfs_period_us")
                    if not quota_text or not period_text:
                        continue
                    quota, period = int(quota_text), int(period_text)
                    if quota > 0 and period > 0:
                        cpus = quota / period
                        if best is None or cpus < best[0]:
                            best = (cpus, f"cgroup v1 cpu.cfs_quota_us {quota}/{period}")
    return best


def usable_cpus(
    cgroup_root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup"
) -> tuple[int, str]:
    """CPUs this process may use: the affinity mask, capped by any cgroup CPU quota."""
    try:
        affinity = len(os.sched_getaffinity(0))
        what = f"{affinity} CPUs in the affinity mask"
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 1
        what = f"{affinity} CPUs"
    try:
        quota = _cgroup_quota(Path(cgroup_root), Path(proc_cgroup))
    except (OSError, ValueError):
        quota = None
    if quota is not None and math.ceil(quota[0]) < affinity:
        limit = max(1, math.ceil(quota[0]))
        return limit, f"{limit} usable CPUs: {quota[1]} limits the {what}"
    return max(1, affinity), f"{max(1, affinity)} usable CPUs: {what}"


def auto_workers() -> tuple[int, str]:
    """``workers = "auto"``: 2 x usable CPUs + 1, with the reason for the log."""
    cpus, reason = usable_cpus()
    return 2 * cpus + 1, f"2 x {cpus} + 1 ({reason})"


# ---------------------------------------------------------------------------------------------
# The table

CONFIG_FILE = "Config File"
SOCKET = "Server Socket"
WORKERS = "Worker Processes"
SECURITY = "Security"
DEBUGGING = "Debugging"
MECHANICS = "Server Mechanics"
LOGGING = "Logging"
NAMING = "Process Naming"
HOOKS = "Server Hooks"
SSL = "SSL"
HTTP2 = "HTTP/2"
DIRTY = "Dirty Arbiters"
DIRTY_HOOKS = "Dirty Arbiter Hooks"
CONTROL = "Control"
FERROCORN = "Ferrocorn Extensions"
NOT_YET: Status = "not_yet"


def _flag(name: str, section: str, cli: tuple[str, ...], help: str, **kw: Any) -> Setting:
    """A boolean ``store_true`` flag defaulting to False."""
    kw.setdefault("action", "store_true")
    return Setting(name, section, cli, kw.pop("default", False), validate_bool, help, **kw)


def _hook(name: str, section: str, args: tuple[str, ...], help: str, **kw: Any) -> Setting:
    validator = kw.pop("validator", None) or hook(*args)
    default = default_hook(name, args, kw.pop("body", "pass"))
    return Setting(name, section, (), default, validator, help, hook_args=args, **kw)


def _port_bind(port: str) -> list[str]:
    return [f"0.0.0.0:{port}"]


def _sendfile_env(value: str) -> bool:
    return value.strip().lower() in ("y", "1", "yes", "true")


ACCESS_LOG_FORMAT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
LOOPBACK = "127.0.0.1,::1"

# The table is laid out by hand, one setting per block.
# fmt: off
SETTINGS: tuple[Setting, ...] = (
    # -- Config File
    Setting(
        "config", CONFIG_FILE, ("-c", "--config"), "./gunicorn.conf.py", validate_string,
        "Config file: PATH, file:PATH or python:MODULE_NAME.",
        meta="CONFIG",
        doc="Without this flag ferrocorn reads `./gunicorn.conf.py`, else `./ferrocorn.conf.py`, "
        "if one exists in the current directory. The file is executed as Python and every "
        "global whose name is a setting is applied. `-c` may also come from "
        "`GUNICORN_CMD_ARGS` or `FERROCORN_CMD_ARGS`.",
    ),
    Setting(
        "wsgi_app", CONFIG_FILE, (), None, validate_string,
        "Application to serve (MODULE:VARIABLE) when none is given on the command line.",
        meta="STRING",
    ),
    # -- Server Socket
    Setting(
        "bind", SOCKET, ("-b", "--bind"), ["127.0.0.1:8000"], validate_bind,
        "Address to listen on; repeat to listen on several.",
        meta="ADDRESS", action="append",
        doc="Forms: `HOST`, `HOST:PORT`, `[IPV6]:PORT`, `tcp://HOST:PORT`, `unix:PATH`, "
        "`unix://PATH`, `fd://FD`. The port defaults to 8000. Under systemd socket "
        "activation (`LISTEN_PID` is this process) the sockets at fd 3 and up are used "
        "and the other binds are ignored, as in gunicorn; the same goes for the sockets a "
        "USR2 upgrade hands over (`GUNICORN_FD`). Once every worker has booted, "
        "`READY=1` goes to `NOTIFY_SOCKET` (gunicorn sends it before any worker runs); "
        "also `RELOADING=1` on HUP and `STOPPING=1` on shutdown.",
        default_doc="['127.0.0.1:8000']", env_var="PORT", env_value=_port_bind,
    ),
    Setting(
        "backlog", SOCKET, ("--backlog",), 2048, validate_uint,
        "Length of the queue of connections waiting to be accepted.", meta="INT",
    ),
    # -- Worker Processes
    Setting(
        "workers", WORKERS, ("-w", "--workers"), 1, validate_workers,
        'Number of worker processes, or "auto" for 2 x usable CPUs + 1.',
        meta="INT",
        doc='"auto" counts the CPUs in the scheduler affinity mask, capped by a cgroup (v1 or '
        "v2) CPU quota, so a container limited to 2 CPUs gets 5 workers.",
        env_var="WEB_CONCURRENCY",
    ),
    Setting(
        "worker_class", WORKERS, ("-k", "--worker-class"), "sync", validate_worker_class,
        "Worker type: sync, gthread or asgi.",
        meta="STRING",
        doc="`uvicorn.workers.UvicornWorker` and `uvicorn_worker.UvicornWorker` are accepted "
        "and mean `asgi`; gunicorn's own class paths for sync, gthread and asgi work too. "
        "`sync` with `--threads` above 1 runs as `gthread`, like gunicorn. Other worker "
        "classes (gevent, tornado, custom classes) are refused.",
    ),
    Setting(
        "threads", WORKERS, ("--threads",), 1, validate_positive_int,
        "Threads per worker for gthread; more than 1 turns a sync worker into gthread.",
        meta="INT",
    ),
    Setting(
        "worker_connections", WORKERS, ("--worker-connections",), 1000, validate_positive_int,
        "Most connections a gthread or asgi worker keeps open at once.", meta="INT",
    ),
    Setting(
        "max_requests", WORKERS, ("--max-requests",), 0, validate_uint,
        "Restart a worker after it has served this many requests (0 = never).", meta="INT",
    ),
    Setting(
        "max_requests_jitter", WORKERS, ("--max-requests-jitter",), 0, validate_uint,
        "Add a random 0..N to max_requests per worker so restarts do not line up.",
        meta="INT",
    ),
    Setting(
        "timeout", WORKERS, ("-t", "--timeout"), 30, validate_uint,
        "Kill and replace a worker silent for this many seconds (0 = never).", meta="INT",
    ),
    Setting(
        "graceful_timeout", WORKERS, ("--graceful-timeout",), 30, validate_uint,
        "Seconds workers get to finish in-flight requests on stop or reload.", meta="INT",
    ),
    Setting(
        "keepalive", WORKERS, ("--keep-alive",), 2, validate_uint,
        "Seconds an idle keep-alive connection stays open (ignored by sync).", meta="INT",
    ),
    Setting(
        "asgi_loop", WORKERS, ("--asgi-loop",), "auto", choice("auto", "asyncio", "uvloop"),
        "Event loop for the asgi worker: auto (uvloop when installed), asyncio or uvloop.",
        meta="STRING",
    ),
    Setting(
        "asgi_lifespan", WORKERS, ("--asgi-lifespan",), "auto", choice("auto", "on", "off"),
        "ASGI lifespan protocol: auto, on or off.", meta="STRING",
    ),
    Setting(
        "asgi_disconnect_grace_period", WORKERS, ("--asgi-disconnect-grace-period",), 3,
        validate_uint,
        "Seconds an ASGI app still producing a response gets, after its client "
        "disconnected, before its task is cancelled (0 = never cancel, as uvicorn).",
        meta="INT",
    ),
    Setting(
        "websocket_max_message_size", WORKERS, ("--websocket-max-message-size",), 16777216,
        validate_uint,
        "Largest WebSocket message accepted, in bytes (asgi worker); larger ones close 1009.",
        meta="INT",
    ),
    Setting(
        "websocket_per_message_deflate", WORKERS,
        ("--websocket-per-message-deflate", "--ws-per-message-deflate"), True, validate_bool,
        "Accept the permessage-deflate WebSocket extension (RFC 7692) when a client offers "
        "it (asgi worker). uvicorn's --ws-per-message-deflate.", meta="BOOL",
    ),
    Setting(
        "websocket_ping_interval", WORKERS,
        ("--websocket-ping-interval", "--ws-ping-interval"), 20.0, validate_seconds,
        "Seconds between the server's keepalive pings on each open WebSocket "
        "(asgi worker; 0 = none). uvicorn's --ws-ping-interval.", meta="SECONDS",
    ),
    Setting(
        "websocket_ping_timeout", WORKERS,
        ("--websocket-ping-timeout", "--ws-ping-timeout"), 20.0, validate_seconds,
        "Seconds a WebSocket client gets to answer a keepalive ping before the server "
        "closes the connection with 1011 (0 = wait forever). uvicorn's --ws-ping-timeout.",
        meta="SECONDS",
    ),
    Setting(
        "http_parser", WORKERS, ("--http-parser",), "auto", choice("auto", "fast", "python"),
        "gunicorn's HTTP parser choice: auto, fast or python.", meta="STRING", status=NOT_YET,
    ),
    # -- Security
    Setting(
        "limit_request_line", SECURITY, ("--limit-request-line",), 4094, validate_uint,
        "Longest request line in bytes (0 = no limit; values above 8190 act as 8190).",
        meta="INT",
    ),
    Setting(
        "limit_request_fields", SECURITY, ("--limit-request-fields",), 100, validate_uint,
        "Most header fields per request (0 or above 32768 act as 32768).", meta="INT",
    ),
    Setting(
        "limit_request_field_size", SECURITY, ("--limit-request-field_size",), 8190,
        validate_uint, "Longest header line in bytes (0 acts as 8190, like gunicorn 27).",
        meta="INT",
    ),
    # -- Debugging
    _flag("reload", DEBUGGING, ("--reload",), "Restart workers when source files change.",
          doc="Development only. Each worker polls, once a second, the files of every loaded "
          "module and the `--reload-extra-file` paths; on a change it logs `Worker reloading: "
          "FILE modified`, runs `worker_int`, finishes the request in hand and exits, and the "
          "master starts a fresh worker. An app that fails to compile is answered with a 500 "
          "showing the traceback until the file is fixed. With `--preload` the code is in "
          "the master and a restarted worker does not see changes (as gunicorn)."),
    Setting(
        "reload_engine", DEBUGGING, ("--reload-engine",), "auto",
        choice("auto", "poll", "inotify"), "How --reload watches files: auto, poll or inotify.",
        meta="STRING",
        doc="ferrocorn always polls: `inotify` is accepted and behaves like `poll` (a change "
        "is seen within a second).",
    ),
    Setting(
        "reload_extra_files", DEBUGGING, ("--reload-extra-file",), [], validate_list_string,
        "Extra files or glob patterns that trigger a reload; repeatable.",
        meta="FILES", action="append",
        doc="Patterns (`*`, `?`, `[`, `**`) are expanded on every poll, so files created "
        "later count too.",
    ),
    _flag("spew", DEBUGGING, ("--spew",), "Trace every executed line (very noisy).",
          status=NOT_YET),
    _flag("check_config", DEBUGGING, ("--check-config",),
          "Load the configuration and the application, then exit 0 or 1."),
    _flag("print_config", DEBUGGING, ("--print-config",),
          "Print the resolved configuration, then act like --check-config."),
    # -- Server Mechanics
    _flag("preload_app", MECHANICS, ("--preload",),
          "Import the application in the master before forking workers."),
    Setting(
        "sendfile", MECHANICS, ("--no-sendfile",), None, validate_bool,
        "Do not use sendfile() for file responses.",
        action="store_const", const=False, env_var="SENDFILE", env_value=_sendfile_env,
        default_doc="None (sendfile is used)",
        doc="Unset means enabled. The `SENDFILE` variable (`1`/`yes`/`true` or anything "
        "else) sets the default.",
    ),
    Setting(
        "chdir", MECHANICS, ("--chdir",), None, validate_chdir,
        "Change to this directory (and put it on sys.path) before loading the app.",
        default_doc="the current directory",
    ),
    _flag("reuse_port", MECHANICS, ("--reuse-port",),
          "Set SO_REUSEPORT on the listening sockets.",
          doc="The master's sockets get SO_REUSEPORT, so another server (a second ferrocorn "
          "during a migration) can bind the same port. Workers do not bind sockets of their "
          "own as gunicorn 24+ does with this flag: ferrocorn's workers poll the shared "
          "socket only while idle, so connections already go to free workers."),
    _flag("daemon", MECHANICS, ("-D", "--daemon"), "Detach from the terminal and run in the "
          "background.",
          doc="Double fork and `setsid`, umask 022, the working directory kept; stdin, stdout "
          "and stderr go to /dev/null unless `--enable-stdio-inheritance`, so give "
          "`--error-logfile`. The pidfile holds the daemon's pid. WINCH to a daemonized "
          "master stops its workers (used during a USR2 upgrade)."),
    Setting(
        "raw_env", MECHANICS, ("-e", "--env"), [], validate_raw_env,
        "Set an environment variable, KEY=VALUE; repeatable.", meta="ENV", action="append",
        doc="Set in the master (before the app is imported with `--preload`) and in every "
        "worker; HUP restores the previous values before applying the new ones.",
    ),
    Setting(
        "pidfile", MECHANICS, ("-p", "--pid"), None, validate_string,
        "Write the master's PID to this file.", meta="FILE",
        doc="A master started by USR2 writes `FILE.2` and renames it to `FILE` once the "
        "old master has exited.",
    ),
    Setting(
        "worker_tmp_dir", MECHANICS, ("--worker-tmp-dir",), None, validate_string,
        "Accepted for compatibility and ignored: ferrocorn keeps no heartbeat files, so "
        "a disk-backed /tmp cannot stall workers.", meta="DIR",
    ),
    Setting(
        "user", MECHANICS, ("-u", "--user"), os.geteuid(), validate_user,
        "Run workers as this user (name or uid).", meta="USER",
        default_doc="the current user",
        doc="Workers switch after fork, before the app is imported; the master keeps its "
        "user. Only root can switch. Unix sockets and log files are given to this user "
        "and group. Beyond gunicorn, a worker leaving root without `--initgroups` also "
        "drops root's supplementary groups.",
    ),
    Setting(
        "group", MECHANICS, ("-g", "--group"), os.getegid(), validate_group,
        "Run workers as this group (name or gid).", meta="GROUP",
        default_doc="the current group",
    ),
    Setting(
        "umask", MECHANICS, ("-m", "--umask"), 0, validate_octal,
        "umask for files the server creates, e.g. unix sockets (022 is octal).", meta="INT",
        doc="As in gunicorn it applies while unix sockets are created; `--daemon` sets the "
        "process umask to 022.",
    ),
    _flag("initgroups", MECHANICS, ("--initgroups",),
          "Give workers all groups of the --user account."),
    Setting(
        "tmp_upload_dir", MECHANICS, (), None, validate_string,
        "Legacy upload directory; unused by gunicorn itself.", meta="DIR", status=NOT_YET,
    ),
    Setting(
        "secure_scheme_headers", MECHANICS, (),
        {"X-FORWARDED-PROTOCOL": "ssl", "X-FORWARDED-PROTO": "https", "X-FORWARDED-SSL": "on"},
        validate_secure_scheme_headers,
        "Headers (upper-case name: value) by which a trusted proxy marks a request as https.",
    ),
    Setting(
        "forwarded_allow_ips", MECHANICS, ("--forwarded-allow-ips",), LOOPBACK,
        validate_ip_list,
        'Proxies (IPs or CIDR networks, comma separated, or "*") trusted for forwarded headers.',
        meta="STRING", env_var="FORWARDED_ALLOW_IPS",
        doc="Unix-socket peers are always trusted.",
    ),
    Setting(
        "pythonpath", MECHANICS, ("--pythonpath",), None, validate_string,
        "Comma-separated directories added to the front of sys.path.", meta="STRING",
    ),
    Setting(
        "paste", MECHANICS, ("--paste", "--paster"), None, validate_string,
        "Load a PasteDeploy application from an ini file (file.ini#section).",
        meta="STRING", status=NOT_YET,
    ),
    Setting(
        "raw_paste_global_conf", MECHANICS, ("--paste-global",), [], validate_list_string,
        "Global KEY=VALUE for --paste; repeatable.", meta="CONF", action="append",
        status=NOT_YET,
    ),
    Setting(
        "proxy_protocol", MECHANICS, ("--proxy-protocol",), "off",
        choice("off", "v1", "v2", "auto", aliases={
            "false": "off", "0": "off", "none": "off", "true": "auto", "1": "auto"}),
        "Accept a PROXY protocol header: off, v1, v2 or auto (bare flag = auto).",
        meta="MODE", action="optional", const="auto", status=NOT_YET,
    ),
    Setting(
        "proxy_allow_ips", MECHANICS, ("--proxy-allow-from",), LOOPBACK, validate_ip_list,
        'Peers allowed to send a PROXY header (comma separated, or "*").', status=NOT_YET,
    ),
    Setting(
        "protocol", MECHANICS, ("--protocol",), "http", choice("http", "uwsgi"),
        "Wire protocol on the listeners: http or uwsgi.", meta="STRING", status=NOT_YET,
    ),
    Setting(
        "uwsgi_allow_ips", MECHANICS, ("--uwsgi-allow-from",), LOOPBACK, validate_ip_list,
        'Peers allowed to speak the uwsgi protocol (comma separated, or "*").',
        status=NOT_YET,
    ),
    _flag("permit_obsolete_folding", MECHANICS, ("--permit-obsolete-folding",),
          "Accept obsolete folded (multi-line) header values.", status=NOT_YET),
    _flag("strip_header_spaces", MECHANICS, ("--strip-header-spaces",),
          "Accept whitespace before the colon of a header (unsafe).", status=NOT_YET),
    _flag("permit_unconventional_http_method", MECHANICS,
          ("--permit-unconventional-http-method",),
          "Accept lower-case or unusually long or short request methods.", status=NOT_YET),
    _flag("permit_unconventional_http_version", MECHANICS,
          ("--permit-unconventional-http-version",),
          "Accept HTTP versions other than 1.0 and 1.x.", status=NOT_YET),
    _flag("casefold_http_method", MECHANICS, ("--casefold-http-method",),
          "Upper-case request methods before handing them to the app.", status=NOT_YET),
    Setting(
        "forwarder_headers", MECHANICS, ("--forwarder-headers",), "SCRIPT_NAME,PATH_INFO",
        validate_comma_list,
        "Underscore headers a trusted proxy may set in the environ (comma separated).",
    ),
    Setting(
        "header_map", MECHANICS, ("--header-map",), "drop",
        choice("drop", "refuse", "dangerous"),
        "What to do with header names containing underscores: drop, refuse or dangerous.",
        supported_values=("drop",),
    ),
    Setting(
        "root_path", MECHANICS, ("--root-path",), "", validate_string,
        "ASGI root_path, for apps mounted below a URL prefix.", meta="STRING",
        status=NOT_YET,
    ),
    # -- Logging
    Setting(
        "accesslog", LOGGING, ("--access-logfile",), None, validate_string,
        'Access log file; "-" is stdout. Unset means no access log.', meta="FILE",
    ),
    _flag("disable_redirect_access_to_syslog", LOGGING,
          ("--disable-redirect-access-to-syslog",),
          "Keep access log lines out of syslog.", status=NOT_YET),
    Setting(
        "access_log_format", LOGGING, ("--access-logformat",), ACCESS_LOG_FORMAT,
        validate_string, "Access log line format, with gunicorn's %(x)s atoms.",
        meta="STRING",
    ),
    Setting(
        "errorlog", LOGGING, ("--error-logfile", "--log-file"), "-", validate_string,
        'Error log file; "-" is stderr.', meta="FILE",
    ),
    Setting(
        "loglevel", LOGGING, ("--log-level",), "info", validate_loglevel,
        "Error log level: debug, info, warning, error or critical.", meta="LEVEL",
    ),
    _flag("capture_output", LOGGING, ("--capture-output",),
          "Send the app's stdout and stderr to the error log file.", status=NOT_YET),
    Setting(
        "logger_class", LOGGING, ("--logger-class",), "gunicorn.glogging.Logger",
        validate_class_path, "Python logger class.", meta="STRING", status=NOT_YET,
    ),
    Setting(
        "logconfig", LOGGING, ("--log-config",), None, validate_string,
        "logging.config.fileConfig ini file.", meta="FILE", status=NOT_YET,
    ),
    Setting(
        "logconfig_dict", LOGGING, (), {}, validate_dict,
        "logging.config.dictConfig dictionary.", status=NOT_YET,
    ),
    Setting(
        "logconfig_json", LOGGING, ("--log-config-json",), None, validate_string,
        "JSON file for logging.config.dictConfig.", meta="FILE", status=NOT_YET,
    ),
    Setting(
        "syslog_addr", LOGGING, ("--log-syslog-to",), "udp://localhost:514", validate_string,
        "Syslog address: unix://PATH#TYPE, udp://HOST:PORT or tcp://HOST:PORT.",
        meta="SYSLOG_ADDR", status=NOT_YET,
    ),
    _flag("syslog", LOGGING, ("--log-syslog",), "Also send log lines to syslog.",
          status=NOT_YET),
    Setting(
        "syslog_prefix", LOGGING, ("--log-syslog-prefix",), None, validate_string,
        "Program name used in syslog lines.", meta="SYSLOG_PREFIX", status=NOT_YET,
    ),
    Setting(
        "syslog_facility", LOGGING, ("--log-syslog-facility",), "user", validate_string,
        "Syslog facility name.", meta="SYSLOG_FACILITY", status=NOT_YET,
    ),
    _flag("enable_stdio_inheritance", LOGGING, ("-R", "--enable-stdio-inheritance"),
          "Keep stdio open when daemonizing.",
          doc="stdout and stderr are kept when they are not a terminal, so "
          "`ferrocorn -D -R app > out.log 2>&1` logs to out.log."),
    Setting(
        "statsd_host", LOGGING, ("--statsd-host",), None, validate_statsd_address,
        "StatsD server (HOST:PORT or unix://PATH) to send metrics to.",
        meta="STATSD_ADDR",
        doc="gunicorn's metric names (`gunicorn.requests`, `gunicorn.request.status.<code>`, "
        "`gunicorn.request.duration`, `gunicorn.workers`, `gunicorn.log.<level>`); the port "
        "defaults to 8125. Unlike gunicorn, which sends a packet per request from the worker, "
        "ferrocorn's stats process sends the request metrics once a second, aggregated from "
        "the workers' counters (durations as one sample per latency bucket with a sample "
        "rate); it says so at start-up. See docs/metrics.md.",
    ),
    Setting(
        "dogstatsd_tags", LOGGING, ("--dogstatsd-tags",), "", validate_string,
        "Comma-separated key:value tags added to every StatsD metric.",
        meta="DOGSTATSD_TAGS",
    ),
    Setting(
        "statsd_prefix", LOGGING, ("--statsd-prefix",), "", validate_string,
        "Prefix for StatsD metric names.", meta="STATSD_PREFIX",
    ),
    _flag("enable_backlog_metric", LOGGING, ("--enable-backlog-metric",),
          "Report the listen backlog length as a StatsD metric.",
          doc="`gunicorn.backlog`: the connections waiting in the TCP listen queues, sent "
          "each second (as a timer, like gunicorn)."),
    # -- Process Naming
    Setting(
        "proc_name", NAMING, ("-n", "--name"), None, validate_string,
        "Name shown in process titles; defaults to the application module.", meta="STRING",
        doc="Titles are `ferrocorn: master [NAME]` and `ferrocorn: worker [NAME]` (`NAME.2` "
        "for a master started by USR2 until it is promoted). They replace the command line "
        "in `ps` when the optional `setproctitle` package is installed "
        "(`pip install ferrocorn[setproctitle]`); without it only the 15-character process "
        "name (`/proc/PID/comm`) is set.",
    ),
    Setting(
        "default_proc_name", NAMING, (), "ferrocorn", validate_string,
        "Internal: the process name used when proc_name is unset (the APP_MODULE).",
    ),
    # -- Server Hooks
    _hook("on_starting", HOOKS, ("server",), "Called in the master just before it starts."),
    _hook("on_reload", HOOKS, ("server",), "Called in the master when it reloads on HUP."),
    _hook("when_ready", HOOKS, ("server",),
          "Called in the master once the listeners are bound, before workers start."),
    _hook("pre_fork", HOOKS, ("server", "worker"),
          "Called in the master just before a worker is forked."),
    _hook("post_fork", HOOKS, ("server", "worker"),
          "Called in the new worker just after the fork."),
    _hook("post_worker_init", HOOKS, ("worker",),
          "Called in a worker once the application is loaded."),
    _hook("worker_int", HOOKS, ("worker",), "Called in a worker on SIGINT or SIGQUIT."),
    _hook("worker_abort", HOOKS, ("worker",),
          "Called in a worker on SIGABRT, which the master sends on timeout."),
    _hook("pre_exec", HOOKS, ("server",),
          "Called in the new master just before it execs on USR2.",
          doc="USR2 forks the master; the child runs this hook, then execs `python -m "
          "ferrocorn` with the original arguments and the listening sockets "
          "(`GUNICORN_FD`, `GUNICORN_PID`)."),
    _hook("pre_request", HOOKS, ("worker", "req"),
          "Called in a worker before each request is handled."),
    _hook("post_request", HOOKS, ("worker", "req", "environ", "resp"),
          "Called in a worker after each request (2, 3 or 4 arguments).",
          validator=validate_post_request),
    _hook("child_exit", HOOKS, ("server", "worker"),
          "Called in the master after a worker has exited and been reaped."),
    _hook("worker_exit", HOOKS, ("server", "worker"),
          "Called in a worker just before it exits."),
    _hook("nworkers_changed", HOOKS, ("server", "new_value", "old_value"),
          "Called in the master when the number of workers changes."),
    _hook("on_exit", HOOKS, ("server",), "Called in the master just before it exits."),
    _hook("ssl_context", HOOKS, ("config", "default_ssl_context_factory"),
          "Builds the SSLContext for TLS listeners; the default just calls the factory.",
          body="return default_ssl_context_factory()", status=NOT_YET),
    # -- SSL
    Setting("keyfile", SSL, ("--keyfile",), None, validate_string,
            "TLS private key file.", meta="FILE", status=NOT_YET),
    Setting("certfile", SSL, ("--certfile",), None, validate_string,
            "TLS certificate file.", meta="FILE", status=NOT_YET),
    Setting("ssl_version", SSL, ("--ssl-version",), 2, validate_anything,
            "Deprecated in gunicorn and ignored; use the ssl_context hook.", status=NOT_YET),
    Setting("cert_reqs", SSL, ("--cert-reqs",), 0, validate_uint,
            "Client certificates: 0 none, 1 optional, 2 required.", status=NOT_YET),
    Setting("ca_certs", SSL, ("--ca-certs",), None, validate_string,
            "CA certificates file for verifying clients.", meta="FILE", status=NOT_YET),
    _flag("suppress_ragged_eofs", SSL, ("--suppress-ragged-eofs",),
          "Treat a TLS connection closed without close_notify as a normal EOF.",
          default=True, status=NOT_YET),
    _flag("do_handshake_on_connect", SSL, ("--do-handshake-on-connect",),
          "Do the TLS handshake as soon as a connection is accepted.", status=NOT_YET),
    Setting("ciphers", SSL, ("--ciphers",), None, validate_string,
            "OpenSSL cipher list for TLS.", status=NOT_YET),
    # -- HTTP/2
    Setting(
        "http_protocols", HTTP2, ("--http-protocols",), "h1", validate_http_protocols,
        "Protocols to offer, in order of preference: h1, h2.", meta="STRING",
        status=NOT_YET,
    ),
    Setting(
        "http2_cleartext", HTTP2, ("--http2-cleartext",), "off",
        choice("off", "prior-knowledge", "upgrade", "both",
               aliases={"true": "prior-knowledge", "false": "off"}),
        "HTTP/2 without TLS: off, prior-knowledge, upgrade or both.", meta="STRING",
        status=NOT_YET,
    ),
    Setting(
        "http2_max_concurrent_streams", HTTP2, ("--http2-max-concurrent-streams",), 100,
        validate_positive_int, "Most concurrent HTTP/2 streams per connection.", meta="INT",
        status=NOT_YET,
    ),
    Setting(
        "http2_initial_window_size", HTTP2, ("--http2-initial-window-size",), 65535,
        int_range(0, 2**31 - 1), "Initial HTTP/2 flow-control window in bytes.", meta="INT",
        status=NOT_YET,
    ),
    Setting(
        "http2_max_frame_size", HTTP2, ("--http2-max-frame-size",), 16384,
        int_range(16384, 16777215), "Largest HTTP/2 frame payload in bytes.", meta="INT",
        status=NOT_YET,
    ),
    Setting(
        "http2_max_header_list_size", HTTP2, ("--http2-max-header-list-size",), 65536,
        validate_uint, "Largest HTTP/2 header list in bytes.", meta="INT", status=NOT_YET,
    ),
    # -- Dirty Arbiters
    Setting(
        "dirty_apps", DIRTY, ("--dirty-app",), [], validate_list_string,
        "Dirty application to run in the dirty worker pool; repeatable.",
        meta="STRING", action="append", status=NOT_YET,
    ),
    Setting("dirty_workers", DIRTY, ("--dirty-workers",), 0, validate_uint,
            "Number of dirty worker processes.", meta="INT", status=NOT_YET),
    Setting("dirty_timeout", DIRTY, ("--dirty-timeout",), 300, validate_uint,
            "Seconds a dirty task may run.", meta="INT", status=NOT_YET),
    Setting("dirty_threads", DIRTY, ("--dirty-threads",), 1, validate_uint,
            "Threads per dirty worker.", meta="INT", status=NOT_YET),
    Setting("dirty_graceful_timeout", DIRTY, ("--dirty-graceful-timeout",), 30, validate_uint,
            "Seconds dirty workers get to stop gracefully.", meta="INT", status=NOT_YET),
    _hook("on_dirty_starting", DIRTY_HOOKS, ("arbiter",),
          "Called when the dirty arbiter starts.", status=NOT_YET),
    _hook("dirty_post_fork", DIRTY_HOOKS, ("arbiter", "worker"),
          "Called after a dirty worker is forked.", status=NOT_YET),
    _hook("dirty_worker_init", DIRTY_HOOKS, ("worker",),
          "Called when a dirty worker has loaded its apps.", status=NOT_YET),
    _hook("dirty_worker_exit", DIRTY_HOOKS, ("arbiter", "worker"),
          "Called when a dirty worker exits.", status=NOT_YET),
    # -- Control
    Setting(
        "control_socket", CONTROL, ("--control-socket",), None, validate_string,
        "Unix socket for runtime control (worker status, scaling, reload).", meta="PATH",
        default_doc="$XDG_RUNTIME_DIR/ferrocorn.ctl",
        doc="The master listens there (gunicorn's protocol and command names, so "
        "`gunicornc -s PATH` works too); `ferrocorn stats` and `ferrocorn top` find the "
        "server through it. Default: `$XDG_RUNTIME_DIR/ferrocorn.ctl`, else "
        "`~/.ferrocorn/ferrocorn.ctl` (gunicorn: `gunicorn.ctl` in the same places); a "
        "relative path is taken from the `--chdir` directory. A master started by USR2 "
        "listens at `PATH.2` until it is promoted. If another running server holds the path, "
        "ferrocorn logs a warning and runs without one. See docs/metrics.md.",
    ),
    Setting(
        "control_socket_mode", CONTROL, ("--control-socket-mode",), 0o600, validate_octal,
        "Permission bits of the control socket.", meta="INT",
    ),
    _flag("control_socket_disable", CONTROL, ("--no-control-socket",),
          "Do not create a control socket."),
    # -- Ferrocorn extensions
    Setting(
        "max_worker_memory", FERROCORN, ("--max-worker-memory",), 0, validate_uint,
        "Gracefully restart a worker whose resident memory exceeds this many MiB (0 = off).",
        meta="MIB", ferrocorn_only=True,
    ),
    Setting(
        "stats_bind", FERROCORN, ("--stats-bind",), None, validate_optional_address,
        "HOST:PORT of an HTTP endpoint serving a live dashboard (/), /metrics (Prometheus), "
        "/stats (JSON), /healthz and /readyz, from a separate stats process.", meta="ADDRESS",
        ferrocorn_only=True,
        doc="See docs/metrics.md for the metric names and labels. "
        "`ferrocorn stats --json --stats-url URL` prints one snapshot.",
    ),
)
# fmt: on

SETTINGS_BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(s.section for s in SETTINGS))


# ---------------------------------------------------------------------------------------------
# Presentation


def format_default(setting: Setting) -> str:
    """The default as shown in --help and the docs."""
    if setting.default_doc is not None:
        return setting.default_doc
    if setting.hook_args is not None:
        return "no-op"
    if setting.default == "":
        return "''"
    if setting.name in ("umask", "control_socket_mode"):
        return f"0{setting.default:o}" if setting.default else "0"
    return str(setting.default)


def flag_spellings(setting: Setting) -> list[str]:
    if setting.action in ("store_true", "store_false", "store_const"):
        return list(setting.cli)
    meta = setting.meta or setting.name.upper()
    if setting.action == "optional":
        return [f"{flag} [{meta}]" for flag in setting.cli]
    return [f"{flag} {meta}" for flag in setting.cli]


def env_note(setting: Setting) -> str:
    if setting.env_var is None:
        return ""
    if setting.name == "bind":
        return "`0.0.0.0:$PORT` if `PORT` is set"
    return f"`${setting.env_var}` if set"


def _markdown_entry(setting: Setting) -> list[str]:
    lines = [f"### `{setting.name}`", ""]
    if setting.cli:
        lines.append("- Command line: " + ", ".join(f"`{f}`" for f in flag_spellings(setting)))
    else:
        lines.append("- Command line: none (config file only)")
    if setting.hook_args is not None:
        lines.append(f"- Signature: `def {setting.name}({', '.join(setting.hook_args)})`")
    lines.append(f"- Default: `{format_default(setting)}`")
    if setting.env_var:
        lines.append(f"- Environment: {env_note(setting)}")
    status = "supported" if setting.status == "supported" else "**not yet supported**"
    if setting.supported_values:
        status += " (only " + ", ".join(f"`{v}`" for v in setting.supported_values) + ")"
    if setting.ferrocorn_only:
        status += "; ferrocorn only"
    lines += [f"- Status: {status}", "", setting.help]
    if setting.doc:
        lines += ["", setting.doc]
    return [*lines, ""]


def render_markdown() -> str:
    """The docs/settings.md text."""
    supported = sum(1 for s in SETTINGS if s.status == "supported")
    out = [
        "<!-- Generated by `python -m ferrocorn.settings` from python/ferrocorn/settings.py;"
        " do not edit by hand. -->",
        "",
        "# Settings",
        "",
        f"ferrocorn knows all settings of gunicorn 27.0.1 plus a few of its own ({len(SETTINGS)}"
        f" in total, {supported} supported). Setting a *not yet supported* setting to anything "
        "but its default is an error, so a configuration is never silently half-applied.",
        "",
        "Precedence, lowest first: defaults; defaults from the environment (`PORT`, "
        "`WEB_CONCURRENCY`, `FORWARDED_ALLOW_IPS`, `SENDFILE`); the config file; "
        "`GUNICORN_CMD_ARGS`; `FERROCORN_CMD_ARGS`; the command line. Long flags may be "
        "abbreviated to any unambiguous prefix.",
        "",
        "| setting | command line | default | status |",
        "|---|---|---|---|",
    ]
    for s in SETTINGS:
        flags = ", ".join(f"`{f}`" for f in s.cli) or "(file)"
        status = "supported" if s.status == "supported" else "not yet"
        if s.supported_values:
            status += " (" + ", ".join(s.supported_values) + " only)"
        default = format_default(s).replace("|", "\\|")
        out.append(f"| [`{s.name}`](#{s.name}) | {flags} | `{default}` | {status} |")
    out.append("")
    for section in SECTIONS:
        out += [f"## {section}", ""]
        for setting in (s for s in SETTINGS if s.section == section):
            out += _markdown_entry(setting)
    return "\n".join(out).rstrip("\n") + "\n"


if __name__ == "__main__":
    print(render_markdown(), end="")
