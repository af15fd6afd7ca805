"""A bare LF as line terminator in the head."""

status = 400
