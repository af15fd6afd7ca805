"""Lower-case methods are refused by default."""

status = 400
