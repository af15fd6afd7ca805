"""Repeated header names (any case) are joined with ',' and no space."""

request = {'method': 'GET',
 'uri': '/',
 'version': (1, 1),
 'headers': [('HOST', 'example.org'),
             ('X-MULTI', 'one'),
             ('X-MULTI', 'two'),
             ('X-MULTI', 'three'),
             ('ACCEPT', 'a/b'),
             ('ACCEPT', 'c/d')],
 'body': b''}
expect = {'HTTP_ACCEPT': 'a/b,c/d', 'HTTP_X_MULTI': 'one,two,three'}
