"""HTTP/0.9 is not accepted."""

status = 400
