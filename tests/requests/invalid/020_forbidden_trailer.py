"""Content-Length in the trailer section."""

status = 400
