"""Raw (not percent-encoded) non-ASCII bytes in the target."""

status = 400
