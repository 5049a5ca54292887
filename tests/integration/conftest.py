"""Fixtures for the edge-protocol integration tests: a Gunicorn serving WebSockets, and test certificates."""

from __future__ import annotations

import pytest
import trustme

from tests.helpers import EVENT_LOOPS, GunicornProcess


@pytest.fixture(params=EVENT_LOOPS)
def event_loop(request) -> str:
    """The proxy workers' [server] event_loop: a test that takes this runs once on each loop."""
    return request.param


@pytest.fixture(scope="session")
def ws_gunicorn():
    """tests/apps/websocket.py on Gunicorn's threaded worker: each open WebSocket holds one thread,
    so 230 threads leave room for the 200-tunnel test and a few more."""
    gunicorn = GunicornProcess("tests.apps.websocket:app", "--threads", "230", "--keep-alive", "75",
                               workers=1, worker_class="gthread")
    yield gunicorn
    gunicorn.stop()


@pytest.fixture(scope="session")
def ca():
    return trustme.CA()
