"""Chunk data not followed by CRLF."""

status = 400
