"""A minimal GET with a couple of headers."""

request = {'method': 'GET',
 'uri': '/hello',
 'version': (1, 1),
 'headers': [('HOST', 'example.org'), ('USER-AGENT', 'corpus/1.0'), ('ACCEPT', '*/*')],
 'body': b''}
