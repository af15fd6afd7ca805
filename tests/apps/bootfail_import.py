"""A module whose import raises: the worker cannot boot (gunicorn exit code 3)."""

raise RuntimeError("bootfail_import: this module refuses to be imported")
