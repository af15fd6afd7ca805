"""HTTP/1.0 POST with Content-Length."""

request = {'method': 'POST',
 'uri': '/form',
 'version': (1, 0),
 'headers': [('CONTENT-TYPE', 'text/plain'), ('CONTENT-LENGTH', '5')],
 'body': b'12345'}
