"""More headers than a lowered --limit-request-fields."""

status = 431
args = ['--limit-request-fields', '3']
