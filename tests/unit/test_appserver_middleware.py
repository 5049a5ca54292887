"""The app tier's middleware, driven as plain WSGI with an injected clock (no sockets)."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from appserver.middleware import AppTier, request_id, server_timing, wrap_worker_app


class Clock:
    def __init__(self, *times: float) -> None:
        self.times = list(times)

    def __call__(self) -> float:
        return self.times.pop(0)


def call(app, path="/x", method="GET", headers=None):
    environ = {"PATH_INFO": path, "REQUEST_METHOD": method, **(headers or {})}
    seen = {}

    def start_response(status, response_headers, exc_info=None):
        seen["status"] = status
        seen["headers"] = response_headers
        return lambda data: None

    body = b"".join(app(environ, start_response))
    return seen["status"], seen["headers"], body, environ


def recording_app(calls):
    def app(environ, start_response):
        calls.append(environ)
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Request-ID", "app-made")])
        return [b"hello"]
    return app


def test_adds_server_timing_measured_until_the_response_starts():
    calls = []
    app = AppTier(recording_app(calls), clock=Clock(10.0, 10.0125))
    status, headers, body, _ = call(app)
    assert (status, body) == ("200 OK", b"hello")
    assert ("Server-Timing", "app;dur=12.500") in headers


def test_keeps_an_application_server_timing_entry():
    def app(environ, start_response):
        start_response("200 OK", [("Server-Timing", "db;dur=3")])
        return []

    _, headers, _, _ = call(AppTier(app, clock=Clock(0.0, 0.001)))
    assert [v for n, v in headers if n == "Server-Timing"] == ["db;dur=3", "app;dur=1.000"]


def test_the_proxys_request_id_reaches_the_app_and_the_response():
    calls = []
    _, headers, _, _ = call(AppTier(recording_app(calls)), headers={"HTTP_X_REQUEST_ID": "abc-123"})
    assert calls[0]["HTTP_X_REQUEST_ID"] == "abc-123"
    # The response carries the tier's id (what Gunicorn's access log prints), once.
    assert [v for n, v in headers if n.lower() == "x-request-id"] == ["abc-123"]


@pytest.mark.parametrize("given", [None, "", 'has "quotes"', "x" * 129, "a b"])
def test_a_missing_or_malformed_request_id_is_replaced(given):
    calls = []
    headers = {} if given is None else {"HTTP_X_REQUEST_ID": given}
    _, response_headers, _, _ = call(AppTier(recording_app(calls)), headers=headers)
    made = calls[0]["HTTP_X_REQUEST_ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    assert ("X-Request-ID", made) in response_headers


def test_request_id_rules_match_the_proxys():
    from proxy.http.headers import request_id as proxy_request_id

    for value in ["abc-123", "a/b+c=d:e~f.g_h", "x" * 128, "x" * 129, "bad id", "", "é"]:
        assert (request_id(value) == value) == (proxy_request_id(value.encode()) == value.encode()), value


@pytest.mark.parametrize("method, status, body", [("GET", "200 OK", b"ok\n"), ("HEAD", "200 OK", b""),
                                                  ("POST", "405 Method Not Allowed", b"")])
def test_healthz_is_answered_without_calling_the_app(method, status, body):
    calls = []
    got_status, headers, got_body, _ = call(AppTier(recording_app(calls), clock=Clock(0.0, 0.0)), "/healthz", method)
    assert calls == []
    assert (got_status, got_body) == (status, body)
    assert any(n == "Server-Timing" for n, _ in headers)
    if status.startswith("200"):
        assert ("Cache-Control", "no-store") in headers
        assert ("Content-Length", "3") in headers


def test_other_paths_reach_the_app():
    calls = []
    call(AppTier(recording_app(calls)), "/healthz/more")
    call(AppTier(recording_app(calls)), "/api/healthz")
    assert len(calls) == 2


def test_server_timing_format():
    assert server_timing(0.0012345) == "app;dur=1.234"


def test_worker_hook_wraps_once():
    def app(environ, start_response):
        return []

    worker = SimpleNamespace(wsgi=app)
    wrap_worker_app(worker)
    assert isinstance(worker.wsgi, AppTier) and worker.wsgi.app is app
    wrapped = worker.wsgi
    wrap_worker_app(worker)
    assert worker.wsgi is wrapped
    assert "AppTier around" in repr(wrapped)
