"""chunked must be the final transfer coding."""

status = 400
