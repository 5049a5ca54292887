import pytest

from tests.helpers import GunicornProcess, ProxyProcess, RecordingUpstream


@pytest.fixture
def start_proxy(tmp_path):
    """start_proxy(config_text) -> a running ProxyProcess, stopped after the test."""
    started: list[ProxyProcess] = []

    def start(config: str, args=()):
        proxy = ProxyProcess(tmp_path, config, list(args))
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
def recording_upstream():
    started: list[RecordingUpstream] = []

    def start(respond=None, keep_alive=True):
        upstream = RecordingUpstream(respond, keep_alive)
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        upstream.close()


@pytest.fixture(scope="session")
def test_app_gunicorn():
    """One Gunicorn (gthread, keep-alive) serving tests/apps/basic.py for the session."""
    gunicorn = GunicornProcess("tests.apps.basic:app", "--threads", "4", "--keep-alive", "75",
                               workers=2, worker_class="gthread")
    yield gunicorn
    gunicorn.stop()
