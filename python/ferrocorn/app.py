"""Finding and importing the application, with gunicorn's ``import_app`` semantics."""

from __future__ import annotations

import ast
import importlib
import os
import sys
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ferrocorn.config import Config


class AppImportError(Exception):
    """The module imported but the application could not be found or built.

    Import errors of the module itself are not wrapped: they propagate unchanged.
    """


def _parse_target(target: str) -> tuple[str, list[Any] | None, dict[str, Any] | None]:
    """Split ``name`` or ``name(literal args)`` into the name and the call arguments."""
    try:
        expression = ast.parse(target.strip(), mode="eval").body
    except SyntaxError:
        raise AppImportError(
            f"Failed to parse {target!r} as an attribute name or function call."
        ) from None
    if isinstance(expression, ast.Name):
        return expression.id, None, None
    if not isinstance(expression, ast.Call):
        raise AppImportError(f"Failed to parse {target!r} as an attribute name or function call.")
    if not isinstance(expression.func, ast.Name):
        raise AppImportError(f"Function reference must be a simple name: {target!r}")
    try:
        args = [ast.literal_eval(arg) for arg in expression.args]
        kwargs: dict[str, Any] = {}
        for keyword in expression.keywords:
            if keyword.arg is None:
                raise ValueError("** arguments are not literals")
            kwargs[keyword.arg] = ast.literal_eval(keyword.value)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise AppImportError(f"Failed to parse arguments as literal values: {target!r}") from None
    return expression.func.id, args, kwargs


def _failed_before_entering(func: Callable[..., Any], tb: Any) -> bool:
    """True if the traceback never reached ``func``'s own frame (a bad-arguments TypeError)."""
    code = getattr(func, "__code__", None)
    while tb is not None:
        if tb.tb_frame.f_code is code:
            return False
        tb = tb.tb_next
    return True


def import_app(uri: str) -> Any:
    """Import ``module:attr`` or ``module:factory(literal args)`` and return the application.

    The attribute defaults to ``application``. Errors importing the module propagate as they
    are (the worker maps them to exit code 3); problems finding, building or checking the
    application raise AppImportError (exit code 4).
    """
    module_name, sep, target = uri.partition(":")
    if not sep:
        target = "application"
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        if module_name.endswith(".py") and os.path.exists(module_name):
            suggestion = f"{module_name.rsplit('.', 1)[0]}:{target}"
            raise ImportError(f"Failed to find application, did you mean '{suggestion}'?") from None
        raise

    name, args, kwargs = _parse_target(target)
    try:
        app = getattr(module, name)
    except AttributeError:
        raise AppImportError(f"Failed to find attribute {name!r} in {module_name!r}.") from None

    if args is not None:
        factory = app
        try:
            app = factory(*args, **(kwargs or {}))
        except TypeError as exc:
            if _failed_before_entering(factory, exc.__traceback__):
                message = "".join(traceback.format_exception_only(TypeError, exc)).strip()
                raise AppImportError(message) from None
            raise

    if app is None:
        raise AppImportError(f"Failed to find application object: {target!r}")
    if not callable(app):
        raise AppImportError("Application object must be callable.")
    return app


def prepare_sys_path(cfg: Config) -> None:
    """chdir to ``cfg.chdir`` and put it on sys.path, then prepend ``cfg.pythonpath`` entries.

    Like gunicorn, each pythonpath entry is inserted at the front in turn, so with
    ``--pythonpath a,b`` the directory ``b`` comes first.
    """
    os.chdir(cfg.chdir)
    if cfg.chdir not in sys.path:
        sys.path.insert(0, cfg.chdir)
    if cfg.pythonpath:
        for entry in cfg.pythonpath.split(","):
            path = os.path.abspath(entry.strip())
            if path not in sys.path:
                sys.path.insert(0, path)
