"""WSGI entry point: ``gunicorn demo_app.wsgi:app``.

$DEMO_TALLY_DIR, when set, is the folder where each worker process records the
POSTs to /api/tally it received (see demo_app.Tally).
"""

import os

from . import create_app

app = create_app(tally_folder=os.environ.get("DEMO_TALLY_DIR") or None)
