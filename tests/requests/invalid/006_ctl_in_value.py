"""A control character (0x01) in a header value."""

status = 400
