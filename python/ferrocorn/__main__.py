"""The ``ferrocorn`` command: gunicorn's command line, served by ferrocorn."""

from __future__ import annotations

import os
import sys

from ferrocorn.config import ConfigError, load_config


def _fail(msg: str, code: int = 1) -> int:
    print(f"Error: {msg}", file=sys.stderr)
    return code


def run(argv: list[str]) -> int:
    """Parse the configuration, then serve; returns the process exit code."""
    if argv[:1] in (["stats"], ["top"]):
        from ferrocorn.top import cli

        return cli(argv)
    if argv[:1] == ["advise"]:
        from ferrocorn.advise import cli as advise_cli

        return advise_cli(argv)
    try:
        cfg, app_uri = load_config(argv, os.environ)
    except ConfigError as e:
        return _fail(str(e), e.exit_code)

    from ferrocorn.app import AppImportError, import_app, prepare_sys_path

    try:
        prepare_sys_path(cfg)
    except OSError as e:
        return _fail(f"Cannot use --chdir {cfg.chdir!r}: {e.strerror}")

    if cfg.print_config:
        print(cfg.print_config_text())
    if cfg.print_config or cfg.check_config:
        try:
            import_app(app_uri)
        except AppImportError as e:
            return _fail(str(e))
        except Exception as e:
            return _fail(f"{type(e).__name__}: {e} (while importing {app_uri!r})")
        return 0

    worker_class = cfg.worker_class_str
    if worker_class not in ("sync", "gthread", "asgi"):
        return _fail(
            f"worker class {worker_class!r} is not supported by ferrocorn yet; "
            "use -k sync (the default), -k gthread or -k asgi for now"
        )

    from ferrocorn.arbiter import Arbiter
    from ferrocorn.glogging import Logger
    from ferrocorn.sock import BindError

    log = Logger(cfg)
    for warning in getattr(cfg, "warnings", []):
        log.warning("%s", warning)
    arbiter = Arbiter(cfg, app_uri, log, argv)
    if cfg.preload_app:
        # As gunicorn: with --preload an import error stops the master itself.
        try:
            arbiter.preload()
        except AppImportError as e:
            return _fail(str(e))
        except Exception as e:
            log.exception("Exception while preloading the application")
            return _fail(f"{type(e).__name__}: {e} (while importing {app_uri!r})")
    try:
        return arbiter.run()
    except BindError as e:
        log.error("%s", e)
        return 1


def main() -> None:
    """Console-script entry point."""
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
