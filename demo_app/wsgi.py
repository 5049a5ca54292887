"""WSGI entry point: ``gunicorn demo_app.wsgi:app``."""

from . import create_app

app = create_app()
