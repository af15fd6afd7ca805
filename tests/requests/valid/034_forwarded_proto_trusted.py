"""X-Forwarded-Proto from a trusted peer sets wsgi.url_scheme."""

request = {'method': 'GET',
 'uri': '/',
 'version': (1, 1),
 'headers': [('HOST', 'example.org'), ('X-FORWARDED-PROTO', 'https')],
 'body': b''}
expect = {'wsgi.url_scheme': 'https'}
