"""The HTTP-name is case-sensitive."""

status = 400
