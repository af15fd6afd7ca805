"""A trusted peer (127.0.0.1) may set SCRIPT_NAME with a header."""

request = {'method': 'GET',
 'uri': '/mount/inner',
 'version': (1, 1),
 'headers': [('HOST', 'example.org'), ('SCRIPT_NAME', '/mount')],
 'body': b''}
expect = {'PATH_INFO': '/inner', 'SCRIPT_NAME': '/mount'}
