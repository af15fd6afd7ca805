"""The example app the README serves: a page that says which server answered."""

import os


def app(environ, start_response):
    body = (
        "<!doctype html><title>ferrocorn</title>"
        "<h1>Hello from ferrocorn</h1>"
        f"<p>Served by {environ['SERVER_SOFTWARE']}, worker pid {os.getpid()}, "
        f"for {environ['REQUEST_METHOD']} {environ['RAW_URI']}.</p>"
    ).encode()
    start_response(
        "200 OK",
        [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body)))],
    )
    return [body]
