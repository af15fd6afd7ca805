"""Unit tests for ferrocorn.app: import_app and prepare_sys_path."""

from __future__ import annotations

import os
import sys
import uuid

import pytest
from ferrocorn.app import AppImportError, import_app, prepare_sys_path
from ferrocorn.config import Config

APP_SOURCE = """
def application(environ, start_response):
    return [b"default"]

def app(environ, start_response):
    return [b"app"]

def create_app(name="x", *, debug=False):
    def inner(environ, start_response):
        return [name.encode(), str(debug).encode()]
    return inner

def broken_factory():
    raise TypeError("boom inside")

def none_factory():
    return None

not_callable = 42
nothing = None
"""


@pytest.fixture
def module(tmp_path, monkeypatch):
    """A fresh importable module with a unique name; returns that name."""
    name = f"fc_app_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(APP_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def call(app):
    return app({}, lambda *a: None)


def test_default_attribute(module):
    assert call(import_app(module)) == [b"default"]


def test_named_attribute(module):
    assert call(import_app(f"{module}:app")) == [b"app"]


def test_factory_with_literal_args(module):
    assert call(import_app(f"{module}:create_app()")) == [b"x", b"False"]
    app = import_app(f"{module}:create_app('hi', debug=True)")
    assert call(app) == [b"hi", b"True"]


def test_missing_attribute(module):
    with pytest.raises(AppImportError) as exc:
        import_app(f"{module}:nope")
    assert str(exc.value) == f"Failed to find attribute 'nope' in '{module}'."


@pytest.mark.parametrize("target", ["app(", "1 + 2", "app.attr"])
def test_unparsable_target(module, target):
    with pytest.raises(AppImportError, match=r"Failed to parse .* as an attribute name"):
        import_app(f"{module}:{target}")


def test_non_literal_arguments(module):
    with pytest.raises(AppImportError, match="Failed to parse arguments as literal values"):
        import_app(f"{module}:create_app(os.environ)")
    with pytest.raises(AppImportError, match="Failed to parse arguments as literal values"):
        import_app(f"{module}:create_app(**{{'name': 'x'}})")


def test_function_reference_must_be_simple(module):
    with pytest.raises(AppImportError, match="Function reference must be a simple name"):
        import_app(f"{module}:factories.make()")


def test_factory_called_with_wrong_arguments(module):
    with pytest.raises(AppImportError, match=r"TypeError: .*unexpected keyword argument 'bad'"):
        import_app(f"{module}:create_app(bad=1)")


def test_type_error_inside_factory_propagates(module):
    with pytest.raises(TypeError, match="boom inside"):
        import_app(f"{module}:broken_factory()")


def test_not_callable(module):
    with pytest.raises(AppImportError, match=r"^Application object must be callable\.$"):
        import_app(f"{module}:not_callable")


def test_none_application(module):
    with pytest.raises(AppImportError, match="Failed to find application object: 'nothing'"):
        import_app(f"{module}:nothing")
    with pytest.raises(AppImportError, match="Failed to find application object"):
        import_app(f"{module}:none_factory()")


def test_import_errors_propagate_unchanged(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError):
        import_app("fc_no_such_module_at_all:app")
    (tmp_path / "fc_raises_on_import.py").write_text("raise RuntimeError('import boom')\n")
    with pytest.raises(RuntimeError, match="import boom"):
        import_app("fc_raises_on_import:app")
    sys.modules.pop("fc_raises_on_import", None)


def test_file_path_hint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hint.py").write_text("app = None\n")
    with pytest.raises(ImportError, match="did you mean 'hint:app'"):
        import_app("hint.py:app")


def test_prepare_sys_path(tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "a").mkdir(parents=True)
    (work / "b").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    cfg = Config({})
    cfg.set("chdir", "work")
    cfg.set("pythonpath", "a,b")
    prepare_sys_path(cfg)
    assert os.getcwd() == str(work)
    assert sys.path[:3] == [str(work / "b"), str(work / "a"), str(work)]
