"""A list-form Content-Length."""

status = 400
