"""For plain Gunicorn: ``gunicorn -c appserver/gunicorn_conf.py demo_app.wsgi:app``.

The same defaults as the ``appserver`` command, taken from the same
declarations (appserver/config.py), middleware included. Gunicorn's own
flags still override them, e.g. ``gunicorn -c appserver/gunicorn_conf.py -w 4 myapp:app``.
"""

from appserver.config import Settings, gunicorn_settings

globals().update(gunicorn_settings(Settings()))
