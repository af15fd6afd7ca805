"""Content-Length must be digits only."""

status = 400
