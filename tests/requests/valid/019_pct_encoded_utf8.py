"""Percent-encoded UTF-8 is decoded to bytes and exposed as latin-1 (PEP 3333)."""

request = {'method': 'GET',
 'uri': '/caf%C3%A9?q=%C3%A9',
 'version': (1, 1),
 'headers': [('HOST', 'example.org')],
 'body': b''}
expect = {'PATH_INFO': '/cafÃ©', 'QUERY_STRING': 'q=%C3%A9'}
