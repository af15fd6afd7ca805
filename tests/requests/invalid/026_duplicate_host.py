"""Two Host headers."""

status = 400
