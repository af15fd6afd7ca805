"""DEL (0x7f) in a header value."""

status = 400
