"""chunked applied twice."""

status = 400
