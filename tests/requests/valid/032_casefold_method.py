"""With --casefold-http-method (and permit) the method is upper-cased."""

request = {'method': 'get',
 'uri': '/folded',
 'version': (1, 1),
 'headers': [('HOST', 'example.org')],
 'body': b''}
expect = {'REQUEST_METHOD': 'GET'}
args = ['--permit-unconventional-http-method', '--casefold-http-method']
