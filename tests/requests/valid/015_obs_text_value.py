"""obs-text (bytes >= 0x80) in a header value is kept (latin-1)."""

request = {'method': 'GET',
 'uri': '/',
 'version': (1, 1),
 'headers': [('HOST', 'example.org'), ('X-LATIN', 'café crème')],
 'body': b''}
