"""Virtual hosts against real sockets: sites chosen by Host (and by SNI over TLS), each with its own
certificate and routes; an unknown Host gets 404, or 421 over TLS when the SNI name differs."""

from __future__ import annotations

import socket
import ssl

import pytest

from tests.edge import client_context, der, https_port, peer_certificate, write_cert
from tests.helpers import ProxyProcess, raw_request, status_of

CONFIG = """
[server]
listen = ["127.0.0.1:0"]
event_loop = "{event_loop}"
[log]
access = "off"
[tls]
listen = ["127.0.0.1:0"]
certificate = "default.pem"
key = "default.key"

[[sites]]
names = ["shop.example.test", "*.shop.example.test"]
certificate = "shop.pem"
key = "shop.key"
  [[sites.routes]]
  prefix = "/"
  static = "shop"

[[sites]]
names = ["static.example.test"]
  [[sites.routes]]
  prefix = "/"
  static = "static"
  [[sites.routes]]
  prefix = "/old/"
  redirect = "https://{{host}}/new/{{path}}"
  redirect_status = 301
"""


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def proxy(request, tmp_path_factory, ca):
    folder = tmp_path_factory.mktemp("sites")
    for name in ("shop", "static"):
        (folder / name).mkdir()
        (folder / name / "index.html").write_text(f"<p>{name}</p>")
    default = ca.issue_cert("localhost", "127.0.0.1")
    shop = ca.issue_cert("shop.example.test", "*.shop.example.test")
    write_cert(default, folder, "default")
    write_cert(shop, folder, "shop")
    running = ProxyProcess(folder, CONFIG.format(event_loop=request.param))
    running.tls_port = https_port(running)
    running.certs = {"default": default, "shop": shop}
    yield running
    running.stop()


def get(port: int, host: str, path: str = "/") -> bytes:
    return raw_request(port, f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())


def tls_get(port: int, context: ssl.SSLContext, server_name: str | None, host: str, path: str = "/") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
    return answer


def test_host_chooses_the_site(proxy):
    assert get(proxy.port, "shop.example.test").endswith(b"<p>shop</p>")
    assert get(proxy.port, "www.shop.example.test:8080").endswith(b"<p>shop</p>")
    assert get(proxy.port, "STATIC.example.test").endswith(b"<p>static</p>")


def test_each_site_has_its_own_routes(proxy):
    moved = get(proxy.port, "static.example.test", "/old/a/b?x=1")
    assert status_of(moved) == 301 and b"\r\nlocation: https://static.example.test/new/a/b\r\n" in moved
    assert status_of(get(proxy.port, "shop.example.test", "/old/a")) == 404  # shop has no such route


def test_unknown_host_without_a_default_site_is_404(proxy):
    assert status_of(get(proxy.port, "elsewhere.test")) == 404
    assert status_of(get(proxy.port, "a.b.shop.example.test")) == 404  # a wildcard is one label


def test_a_sites_certificate_is_chosen_by_sni(proxy):
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    assert peer_certificate(proxy.tls_port, context, "shop.example.test") == der(proxy.certs["shop"])
    assert peer_certificate(proxy.tls_port, context, "m.shop.example.test") == der(proxy.certs["shop"])
    assert peer_certificate(proxy.tls_port, context, "static.example.test") == der(proxy.certs["default"])


def test_sites_over_tls(proxy, ca):
    context = client_context(ca)
    assert tls_get(proxy.tls_port, context, "shop.example.test", "shop.example.test").endswith(b"<p>shop</p>")
    context.check_hostname = False  # the default certificate is for localhost
    assert tls_get(proxy.tls_port, context, "static.example.test", "static.example.test").endswith(b"<p>static</p>")


def test_unknown_host_over_tls_is_421_when_sni_differs(proxy, ca):
    context = client_context(ca)
    misdirected = tls_get(proxy.tls_port, context, "shop.example.test", "elsewhere.test")
    assert status_of(misdirected) == 421
    context.check_hostname = False
    assert status_of(tls_get(proxy.tls_port, context, "elsewhere.test", "elsewhere.test")) == 404
    assert status_of(tls_get(proxy.tls_port, context, None, "elsewhere.test")) == 404
