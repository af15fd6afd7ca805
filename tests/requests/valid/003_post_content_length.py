"""POST body delimited by Content-Length."""

request = {'method': 'POST',
 'uri': '/submit',
 'version': (1, 1),
 'headers': [('HOST', 'example.org'),
             ('CONTENT-TYPE', 'application/x-www-form-urlencoded'),
             ('CONTENT-LENGTH', '23')],
 'body': b'name=ferro&kind=corn%21'}
