"""Apps for ``ferrocorn advise`` (tests/test_advise.py): one that spends its request in
pure-Python CPU work (about 3 ms), one that sleeps 20 ms (I/O-bound)."""

import time


def _work(n):
    x = 0
    for i in range(n):
        x = (x * 31 + i) % 1000003
    return x


def _ok(start_response, body=b"ok"):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def cpu(environ, start_response):
    _work(50000)
    return _ok(start_response)


def sleepy(environ, start_response):
    time.sleep(0.02)
    return _ok(start_response)
