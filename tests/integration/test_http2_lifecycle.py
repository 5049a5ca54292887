"""HTTP/2 connections through a reload (SIGHUP) and a graceful stop (SIGTERM): GOAWAY, in-flight streams
finish, newer streams are refused (REFUSED_STREAM: safe to send again) and go to the new workers."""

from __future__ import annotations

import json
import signal

from h2.errors import ErrorCodes

from tests.edge import https_port, tls_site_config, write_cert
from tests.h2client import H2Client
from tests.helpers import wait_until


def start(tmp_path, ca, start_proxy, app: str):
    write_cert(ca.issue_cert("localhost"), tmp_path, "site")
    proxy = start_proxy(tls_site_config(app, server="grace_period = 10.0"))
    return proxy, https_port(proxy)


def answering_worker(port: int) -> int:
    with H2Client(port) as client:
        return json.loads(client.request("GET", "/_proxy/status").body)["pid"]


def in_flight(client: H2Client) -> int:
    servers = json.loads(client.request("GET", "/_proxy/status").body)["upstreams"]["app"]["servers"]
    return servers[0]["in_flight"]


def test_reload_sends_goaway_lets_streams_finish_and_refuses_newer_ones(tmp_path, ca, start_proxy,
                                                                       test_app_gunicorn):
    proxy, port = start(tmp_path, ca, start_proxy, test_app_gunicorn.address)
    old_worker = answering_worker(port)
    with H2Client(port) as client:
        slow = client.start("GET", "/slow?s=1.5")
        wait_until(lambda: in_flight(client) == 1, what="the slow request to reach the app")
        proxy.signal(signal.SIGHUP)
        client.wait(lambda: client.goaway is not None)
        assert client.goaway.error_code == ErrorCodes.NO_ERROR
        assert client.goaway.last_stream_id >= slow
        # A request the client sends after the GOAWAY (as one on its way does): refused, not served, not lost.
        late = client.start("GET", "/echo")
        assert late > client.goaway.last_stream_id
        assert client.response(late).reset == ErrorCodes.REFUSED_STREAM
        response = client.response(slow)
        assert (response.status, bytes(response.body)) == (200, b"slow")
        client.wait_closed()  # once its streams are done, the old worker's connection closes
    proxy.wait_for_line("reload complete")
    assert wait_until(lambda: answering_worker(port) != old_worker, what="a new worker to answer")
    assert any('"GET /slow?s=1.5 HTTP/2.0" 200' in line for line in proxy.access_lines())


def test_sigterm_drains_http2_connections(tmp_path, ca, start_proxy, test_app_gunicorn):
    proxy, port = start(tmp_path, ca, start_proxy, test_app_gunicorn.address)
    with H2Client(port) as idle, H2Client(port) as busy:
        assert idle.request("GET", "/echo").status == 200
        slow = busy.start("GET", "/slow?s=1.5")
        wait_until(lambda: in_flight(busy) == 1, what="the slow request to reach the app")
        proxy.signal(signal.SIGTERM)
        proxy.wait_for_line(r"shutting down: 1 request\(s\) in flight")
        assert idle.wait_closed(5).error_code == ErrorCodes.NO_ERROR  # GOAWAY, then closed after a short linger
        response = busy.response(slow)
        assert (response.status, bytes(response.body)) == (200, b"slow")
        assert busy.goaway is not None and busy.goaway.error_code == ErrorCodes.NO_ERROR
        busy.wait_closed()
    assert proxy.proc.wait(10) == 0
