"""Reserved characters in the query are untouched; '+' is not a space."""

request = {'method': 'GET',
 'uri': '/q?a=1+2&b=%26&c=/x?y',
 'version': (1, 1),
 'headers': [('HOST', 'example.org')],
 'body': b''}
expect = {'QUERY_STRING': 'a=1+2&b=%26&c=/x?y'}
