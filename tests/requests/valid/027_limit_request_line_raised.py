"""A 6000-byte request line is accepted with --limit-request-line 8000."""

request = {'method': 'GET',
 'uri': '/' + 'b' * 6000,
 'version': (1, 1),
 'headers': [('HOST', 'example.org')],
 'body': b''}
args = ['--limit-request-line', '8000']
