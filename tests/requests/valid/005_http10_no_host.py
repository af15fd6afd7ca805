"""HTTP/1.0 request without a Host header."""

request = {'method': 'GET',
 'uri': '/legacy',
 'version': (1, 0),
 'headers': [('USER-AGENT', 'old')],
 'body': b''}
