"""Two Content-Type headers."""

status = 400
