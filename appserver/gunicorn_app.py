"""Gunicorn run programmatically: ``gunicorn.app.base.BaseApplication`` fed from Settings.

BaseApplication (unlike gunicorn's own command line) reads no argv, no
GUNICORN_CMD_ARGS and no gunicorn.conf.py, so what runs is exactly what
appserver.toml and the flags say.
"""

from __future__ import annotations

from gunicorn.app.base import BaseApplication
from gunicorn.util import import_app

from .config import Settings, gunicorn_settings


class AppServer(BaseApplication):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def __repr__(self) -> str:
        return f"<AppServer {self.settings.app} on {', '.join(self.settings.bind)}>"

    def load_config(self) -> None:
        for name, value in gunicorn_settings(self.settings).items():
            self.cfg.set(name, value)

    def load(self):
        # Called in each worker (no preload): the app's import side effects happen there.
        return import_app(self.settings.app)
