"""Query string is passed through undecoded."""

request = {'method': 'GET',
 'uri': '/search/items?q=a%20b&lang=en&empty=',
 'version': (1, 1),
 'headers': [('HOST', 'example.org')],
 'body': b''}
