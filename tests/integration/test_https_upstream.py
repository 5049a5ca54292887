"""HTTPS to upstream servers against a real TLS upstream (Gunicorn with a trustme certificate for
"localhost"): a certificate the group trusts for the right name works, on both event loops; one from
another CA, for another name, or checked against the system's CAs is a 502 with a line that says why;
health checks go over TLS too."""

from __future__ import annotations

import asyncio
import os

import pytest
import requests
import trustme
from websockets.asyncio.client import connect

from tests.edge import write_cert
from tests.helpers import GunicornProcess, wait_until


@pytest.fixture(scope="module")
def tls_app(tmp_path_factory, ca):
    """Gunicorn's threaded worker (it keeps connections alive) serving HTTPS with a certificate for
    "localhost" only, from the session's test CA."""
    folder = tmp_path_factory.mktemp("tls-app")
    chain, key = write_cert(ca.issue_cert("localhost"), folder, "app")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    trustme.CA().cert_pem.write_to_path(str(folder / "other-ca.pem"))
    gunicorn = GunicornProcess("tests.apps.basic:app", "--threads", "4", "--keep-alive", "75",
                               "--certfile", str(chain), "--keyfile", str(key), worker_class="gthread")
    gunicorn.folder = folder
    yield gunicorn
    gunicorn.stop()


def config(server: str, tls: str = "", extra: str = "", event_loop: str = "auto") -> str:
    return f"""
        [server]
        listen = ["127.0.0.1:0"]
        event_loop = "{event_loop}"
        [upstreams.app]
        servers = ["{server}"]
        max_fails = 0
        {tls}
        {extra}
        [status]
        [[routes]]
        prefix = "/"
        upstream = "app"
    """


def trusting(app, **keys) -> str:
    """A tls table that trusts the test CA, plus ``keys`` as TOML."""
    items = {"ca_file": f'"{app.folder / "ca.pem"}"', **keys}
    return "tls = { " + ", ".join(f"{k} = {v}" for k, v in items.items()) + " }"


def server_status(proxy) -> dict:
    [group] = requests.get(proxy.url + "/_proxy/status").json()["upstreams"].values()
    [server] = group["servers"]
    return server


def test_a_trusted_certificate_for_the_right_name_works(start_proxy, tls_app, event_loop):
    proxy = start_proxy(config(f"https://127.0.0.1:{tls_app.port}", trusting(tls_app, server_name='"localhost"'),
                               event_loop=event_loop))
    for _ in range(3):
        response = requests.get(proxy.url + "/echo")
        assert response.status_code == 200, proxy.output()
    assert response.json()["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert server_status(proxy)["connects"] == 1  # kept alive over TLS like over TCP
    big = requests.get(proxy.url + "/big?size=3000000")
    assert big.status_code == 200 and len(big.content) == 3000000


def test_the_name_checked_is_the_host_as_written(start_proxy, tls_app):
    # No server_name: "localhost" is both what SNI says and what the certificate must name, whatever
    # addresses it resolves to.
    proxy = start_proxy(config(f"localhost:{tls_app.port}", trusting(tls_app)))
    assert requests.get(proxy.url + "/echo").status_code == 200, proxy.output()


@pytest.mark.parametrize("tls, why", [
    ("tls = { ca_file = \"{folder}/other-ca.pem\", server_name = \"localhost\" }",
     "its certificate is not accepted: unable to get local issuer certificate"),
    ("tls = { ca_file = \"{folder}/ca.pem\", server_name = \"other.example.test\" }",
     "its certificate is not accepted: Hostname mismatch, certificate is not valid for 'other.example.test'"),
    ("tls = { ca_file = \"{folder}/ca.pem\" }",  # the address is an IP the certificate does not name
     "its certificate is not accepted: IP address mismatch, certificate is not valid for '127.0.0.1'"),
    ("", "its certificate is not accepted: unable to get local issuer certificate"),  # https://, system CAs
], ids=["wrong-ca", "wrong-name", "ip-not-named", "verified-by-default"])
def test_a_certificate_that_is_not_accepted_is_a_502_that_says_why(start_proxy, tls_app, tls, why):
    proxy = start_proxy(config(f"https://127.0.0.1:{tls_app.port}", tls.replace("{folder}", str(tls_app.folder))))
    response = requests.get(proxy.url + "/echo")
    assert response.status_code == 502
    proxy.wait_for_line(rf"GET /echo HTTP/1\.1: HTTPS to 127\.0\.0\.1:{tls_app.port}: {why}$".replace("(", r"\(")
                        .replace(")", r"\)"))
    assert requests.get(proxy.url + "/echo").status_code == 502  # and again: nothing was let through


def test_verify_false_accepts_any_certificate(start_proxy, tls_app):
    proxy = start_proxy(config(f"https://127.0.0.1:{tls_app.port}", "tls = { verify = false }"))
    assert requests.get(proxy.url + "/echo").status_code == 200


def test_a_plain_http_server_named_https_is_a_clear_502(start_proxy, test_app_gunicorn):
    # Gunicorn answers the ClientHello with a plain 400, which the handshake reads as a bad record.
    plain = test_app_gunicorn.address
    proxy = start_proxy(config(f"https://{plain}"))
    assert requests.get(proxy.url + "/echo").status_code == 502
    proxy.wait_for_line(rf"HTTPS to {plain}: TLS handshake failed: .*\(does it speak HTTPS on that port\?\)")


@pytest.mark.parametrize("trusted", [True, False])
def test_health_checks_go_over_tls(start_proxy, tls_app, trusted):
    ca_file = tls_app.folder / ("ca.pem" if trusted else "other-ca.pem")
    proxy = start_proxy(config(f"https://127.0.0.1:{tls_app.port}",
                               f'tls = {{ ca_file = "{ca_file}", server_name = "localhost" }}', extra="""
        [upstreams.app.health]
        path = "/healthz"
        interval = 0.2
        healthy_threshold = 1
        unhealthy_threshold = 1
    """))
    state = wait_until(lambda: (s := server_status(proxy))["last_check_seconds_ago"] is not None and s,
                       what="a health check")
    if trusted:
        assert state["state"] == "up", state
        assert requests.get(proxy.url + "/echo").status_code == 200
    else:
        state = wait_until(lambda: (s := server_status(proxy))["state"] == "down" and s, what="the server down")
        assert state["last_error"] == "its certificate is not accepted: unable to get local issuer certificate"


def test_a_websocket_tunnels_to_an_https_server(start_proxy, ca, tmp_path, event_loop):
    # The upgraded connection is relayed over the upstream's TLS transport, which has no half-close.
    chain, key = write_cert(ca.issue_cert("localhost"), tmp_path, "ws")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    app = GunicornProcess("tests.apps.websocket:app", "--threads", "8", "--certfile", str(chain), "--keyfile", str(key),
                          worker_class="gthread")
    try:
        proxy = start_proxy(config(f"https://127.0.0.1:{app.port}",
                                   f'tls = {{ ca_file = "{tmp_path / "ca.pem"}", server_name = "localhost" }}',
                                   event_loop=event_loop))

        async def go():
            async with connect(f"ws://127.0.0.1:{proxy.port}/ws/echo", max_size=2 * 1024 * 1024) as ws:
                for message in ("hello", os.urandom(1024 * 1024)):
                    await ws.send(message)
                    assert await ws.recv() == message
        asyncio.run(asyncio.wait_for(go(), 60))
        wait_until(lambda: any(" tunnel=websocket " in line for line in proxy.access_lines()), what="the tunnel's line")
    finally:
        app.stop()
