"""Chunked body with binary data including CRLF and NUL bytes."""

request = {'method': 'POST',
 'uri': '/bin',
 'version': (1, 1),
 'headers': [('HOST', 'example.org'),
             ('TRANSFER-ENCODING', 'chunked'),
             ('CONTENT-TYPE', 'application/octet-stream')],
 'body': b'\x00\x01\r\n\xff\xfe\r\n\r\n\x00'}
