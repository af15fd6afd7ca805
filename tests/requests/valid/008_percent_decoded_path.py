"""PATH_INFO is percent-decoded (%2F becomes '/'), RAW_URI is not."""

request = {'method': 'GET',
 'uri': '/a%2Fb/c%20d/%7Euser',
 'version': (1, 1),
 'headers': [('HOST', 'example.org')],
 'body': b''}
expect = {'PATH_INFO': '/a/b/c d/~user'}
