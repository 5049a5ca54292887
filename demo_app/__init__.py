"""The demo Flask application (the app tier's workload)."""

from __future__ import annotations

import os
import threading

from flask import Flask, jsonify, request


def create_app() -> Flask:
    app = Flask(__name__, static_folder=None)

    @app.get("/api/whoami")
    def whoami():
        return jsonify(
            remote_addr=request.remote_addr,
            worker_pid=os.getpid(),
            thread=threading.current_thread().name,
            headers=dict(request.headers),
        )

    return app
