"""X-Forwarded-Proto from a peer not in --forwarded-allow-ips is ignored."""

request = {'method': 'GET',
 'uri': '/',
 'version': (1, 1),
 'headers': [('HOST', 'example.org'), ('X-FORWARDED-PROTO', 'https')],
 'body': b''}
expect = {'wsgi.url_scheme': 'http'}
args = ['--forwarded-allow-ips', '192.0.2.1']
