"""--permit-unconventional-http-version accepts HTTP/2.0 in a request line."""

request = {'method': 'GET',
 'uri': '/',
 'version': (2, 0),
 'headers': [('HOST', 'example.org')],
 'body': b''}
args = ['--permit-unconventional-http-version']
