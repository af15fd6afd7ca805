"""Transfer-Encoding without chunked at the end."""

status = 400
