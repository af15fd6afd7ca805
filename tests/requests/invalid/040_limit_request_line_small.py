"""A request line over a lowered --limit-request-line."""

status = 414
args = ['--limit-request-line', '100']
