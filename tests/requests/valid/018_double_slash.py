"""A path starting with '//' is a path, not a network location."""

request = {'method': 'GET',
 'uri': '//cdn/x.js',
 'version': (1, 1),
 'headers': [('HOST', 'example.org')],
 'body': b''}
