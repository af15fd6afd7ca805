"""--permit-obsolete-folding joins folded lines with one space."""

request = {'method': 'GET',
 'uri': '/',
 'version': (1, 1),
 'headers': [('HOST', 'example.org'), ('X-FOLDED', 'first second')],
 'body': b''}
args = ['--permit-obsolete-folding']
