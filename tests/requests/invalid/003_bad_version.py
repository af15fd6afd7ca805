"""A malformed version."""

status = 400
