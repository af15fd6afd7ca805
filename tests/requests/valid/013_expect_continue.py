"""Expect: 100-continue gets an interim 100 before the final response."""

request = {'method': 'PUT',
 'uri': '/resource',
 'version': (1, 1),
 'headers': [('HOST', 'example.org'), ('EXPECT', '100-continue'), ('CONTENT-LENGTH', '11')],
 'body': b'hello world'}
interim = [100]
