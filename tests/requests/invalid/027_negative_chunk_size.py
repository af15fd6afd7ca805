"""A signed chunk size."""

status = 400
