"""Header names may use every tchar."""

request = {'method': 'GET',
 'uri': '/',
 'version': (1, 1),
 'headers': [('HOST', 'example.org'), ("X-ODD!#$%&'*+.^`|~", 'tchars')],
 'body': b''}
