"""A header line without a colon."""

status = 400
