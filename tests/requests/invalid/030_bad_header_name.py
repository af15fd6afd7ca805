"""A header name with a non-token character."""

status = 400
