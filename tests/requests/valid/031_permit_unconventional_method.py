"""--permit-unconventional-http-method keeps a lower-case method."""

request = {'method': 'get',
 'uri': '/lower',
 'version': (1, 1),
 'headers': [('HOST', 'example.org')],
 'body': b''}
args = ['--permit-unconventional-http-method']
