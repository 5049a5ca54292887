"""A Flask app with WebSocket routes (Flask-Sock on Gunicorn's threaded workers) for the edge tests.

Run it as Gunicorn does in the tests: ``gunicorn -k gthread --threads N tests.apps.websocket:app``.
Each open WebSocket holds one worker thread, so N bounds the tunnels one worker serves.
"""

from __future__ import annotations

from flask import Flask, jsonify, request, url_for
from flask_sock import Sock
from werkzeug.middleware.proxy_fix import ProxyFix

app = Flask(__name__)
# Trust exactly one proxy hop (ours) for the client address, scheme and host, as appserver does.
app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)
app.config["SOCK_SERVER_OPTIONS"] = {"max_message_size": 4 * 1024 * 1024}
sock = Sock(app)


@app.get("/scheme")
def scheme():
    """What the app believes about the request after ProxyFix: the https test reads this."""
    return jsonify(scheme=request.scheme, url=url_for("scheme", _external=True),
                   forwarded=request.headers.get("Forwarded", ""), remote_addr=request.remote_addr)


@app.get("/plain")
def plain():
    return "plain\n"


@sock.route("/ws/echo")
def echo(ws):
    """Sends every message back, text or binary, until the client closes."""
    while True:
        ws.send(ws.receive())


@sock.route("/ws/bye")
def bye(ws):
    """Answers one message with "bye" and then closes from the server side."""
    ws.receive()
    ws.send("bye")
    ws.close(reason=1000, message="server done")
