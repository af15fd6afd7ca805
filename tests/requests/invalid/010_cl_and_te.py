"""Content-Length together with Transfer-Encoding: chunked."""

status = 400
