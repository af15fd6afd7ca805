"""An unregistered but well-formed (upper-case token) method."""

request = {'method': 'PURGE',
 'uri': '/cache/key',
 'version': (1, 1),
 'headers': [('HOST', 'example.org')],
 'body': b''}
