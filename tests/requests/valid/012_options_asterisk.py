"""OPTIONS with the asterisk-form target."""

request = {'method': 'OPTIONS',
 'uri': '*',
 'version': (1, 1),
 'headers': [('HOST', 'example.org')],
 'body': b''}
expect = {'PATH_INFO': '*'}
