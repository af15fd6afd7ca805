"""Two Content-Length headers (even with equal values)."""

status = 400
