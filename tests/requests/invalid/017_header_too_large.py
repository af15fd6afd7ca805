"""One header line over the default 8190-byte limit."""

status = 431
