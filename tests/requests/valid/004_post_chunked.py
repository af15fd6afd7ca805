"""Chunked body with hex sizes (mixed case), an extension and a trailer."""

request = {'method': 'POST',
 'uri': '/upload',
 'version': (1, 1),
 'headers': [('HOST', 'example.org'), ('TRANSFER-ENCODING', 'chunked')],
 'body': b'helloabcdefghijklmnopqrstuvwxyz0123456789'}
