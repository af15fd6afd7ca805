"""--strip-header-spaces accepts whitespace before the colon."""

request = {'method': 'GET',
 'uri': '/',
 'version': (1, 1),
 'headers': [('HOST', 'example.org'), ('X-SPACED', '1')],
 'body': b''}
args = ['--strip-header-spaces']
