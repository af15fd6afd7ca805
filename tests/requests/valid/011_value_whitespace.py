"""Leading/trailing SP and HTAB around values are trimmed; inner HTAB kept; empty value allowed."""

request = {'method': 'GET',
 'uri': '/',
 'version': (1, 1),
 'headers': [('HOST', 'example.org'),
             ('X-PAD', 'padded'),
             ('X-EMPTY', ''),
             ('X-INNER', 'a\tb  c')],
 'body': b''}
