"""Whitespace between the header name and the colon."""

status = 400
