"""A fragment stays in RAW_URI but not in PATH_INFO or QUERY_STRING."""

request = {'method': 'GET',
 'uri': '/page?x=1#section-2',
 'version': (1, 1),
 'headers': [('HOST', 'example.org')],
 'body': b''}
expect = {'PATH_INFO': '/page', 'QUERY_STRING': 'x=1'}
