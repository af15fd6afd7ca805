"""More header fields than the default limit of 100."""

status = 431
