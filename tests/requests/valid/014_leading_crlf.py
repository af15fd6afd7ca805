"""One empty line before the request line is ignored (RFC 9112 2.2)."""

request = {'method': 'GET',
 'uri': '/after-crlf',
 'version': (1, 1),
 'headers': [('HOST', 'example.org')],
 'body': b''}
