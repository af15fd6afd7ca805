"""--header-map dangerous maps underscore names like dashes."""

request = {'method': 'GET',
 'uri': '/',
 'version': (1, 1),
 'headers': [('HOST', 'example.org'), ('X-MAPPED', '1')],
 'body': b''}
args = ['--header-map', 'dangerous']
