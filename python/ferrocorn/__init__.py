"""ferrocorn: a Rust-powered, Gunicorn-compatible application server for Python."""

from ferrocorn._version import __version__

__all__ = ["__version__"]
