"""A header line just under the default 8190-byte limit."""

request = {'method': 'GET',
 'uri': '/',
 'version': (1, 1),
 'headers': [('HOST', 'example.org'),
             ('X-BIG',
              'v' * 8000)],
 'body': b''}
