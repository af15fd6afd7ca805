"""The body ends after the last-chunk without the final CRLF."""

status = 400
