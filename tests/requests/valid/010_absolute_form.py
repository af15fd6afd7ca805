"""Absolute-form target: path and query are taken from the URI."""

request = {'method': 'GET',
 'uri': 'http://example.org:8080/abs/path?k=v',
 'version': (1, 1),
 'headers': [('HOST', 'example.org')],
 'body': b''}
expect = {'PATH_INFO': '/abs/path', 'QUERY_STRING': 'k=v'}
