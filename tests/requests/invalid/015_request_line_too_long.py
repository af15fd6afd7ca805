"""A request line over the default 4094-byte limit."""

status = 414
