"""A request line just under the default 4094-byte limit."""

request = {'method': 'GET',
 'uri': '/' + 'a' * 4000,
 'version': (1, 1),
 'headers': [('HOST', 'example.org')],
 'body': b''}
