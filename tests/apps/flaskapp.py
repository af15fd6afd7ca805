"""A Flask application served as ``flaskapp:app`` (cwd tests/apps)."""

import hashlib
import os

from flask import Flask, Response, jsonify, request, send_file, stream_with_context

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE = os.path.join(HERE, "sample.txt")

app = Flask(__name__)


@app.get("/")
def index():
    return "hello from flask"


@app.get("/stream")
def stream():
    count = int(request.args.get("n", "5"))

    def generate():
        # stream_with_context keeps `request` usable inside the generator
        for i in range(count):
            yield f"line {i} of {request.args.get('n', '5')}\n"

    return Response(stream_with_context(generate()), mimetype="text/plain")


@app.get("/file")
def file():
    return send_file(SAMPLE, mimetype="text/plain", conditional=True)


@app.post("/upload")
def upload():
    h = hashlib.sha256()
    size = 0
    while True:
        chunk = request.stream.read(16384)
        if not chunk:
            break
        size += len(chunk)
        h.update(chunk)
    return jsonify(size=size, sha256=h.hexdigest(),
                   transfer_encoding=request.headers.get("Transfer-Encoding"))


@app.post("/form")
def form():
    return jsonify(dict(request.form))
