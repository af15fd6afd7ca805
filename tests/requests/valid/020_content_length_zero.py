"""An explicit zero Content-Length."""

request = {'method': 'POST',
 'uri': '/empty',
 'version': (1, 1),
 'headers': [('HOST', 'example.org'), ('CONTENT-LENGTH', '0')],
 'body': b''}
