"""A header over a lowered --limit-request-field_size."""

status = 431
args = ['--limit-request-field_size', '50']
