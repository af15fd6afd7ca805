"""A bare CR inside a header value."""

status = 400
