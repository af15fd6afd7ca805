"""Transfer-Encoding: chunked on an HTTP/1.0 request."""

status = 400
