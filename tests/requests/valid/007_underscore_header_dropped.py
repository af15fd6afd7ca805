"""A header name with '_' is dropped, so it cannot merge into the dashed one."""

request = {'method': 'GET',
 'uri': '/',
 'version': (1, 1),
 'headers': [('HOST', 'example.org'), ('X-FORWARDED-FOR', '10.1.2.3')],
 'body': b''}
expect = {'HTTP_X_FORWARDED_FOR': '10.1.2.3'}
absent = ['HTTP_X_ONLY_UNDERSCORE']
