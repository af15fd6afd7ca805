"""A raw NUL byte in the request target."""

status = 400
