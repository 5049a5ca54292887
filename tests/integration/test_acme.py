"""Automatic HTTPS against a real ACME server: Pebble (Let's Encrypt's test CA) on loopback.

Pebble validates on the proxy's own listeners (its ``httpPort`` and ``tlsPort``
are the proxy's plain and TLS ports) and resolves every name to 127.0.0.1
(pebble-challtestsrv), so each test runs the real conversation: account,
order, challenge answered by the proxy, certificate, and a client that
verifies what the proxy then serves against Pebble's issuing root.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import ssl
import stat
import time
import urllib.request

import pytest
from cryptography import x509

from tests import pebble
from tests.edge import https_port
from tests.helpers import EVENT_LOOPS, ProxyProcess, free_port, raw_request, status_of, wait_until
from tests.integration.test_sites import tls_get

pytestmark = pytest.mark.skipif(not pebble.INSTALLED, reason=pebble.WHY_NOT)

SHOP = ("shop.example.test", "www.shop.example.test")
ISSUANCE_TIMEOUT = 60.0  # Pebble issues in 1-3 s here; a busy machine gets room


def acme_config(folder, plain: int, secure: int, ca: pebble.Pebble, *, challenges=("http-01",), names=SHOP,
                extra_acme: str = "", extra_tls: str = "", extra: str = "", workers: int = 1) -> str:
    (folder / "site").mkdir(exist_ok=True)
    (folder / "site" / "hello.txt").write_text("hello from the shop\n")
    listed = ", ".join(f'"{c}"' for c in challenges)
    sites = ", ".join(f'"{n}"' for n in names)
    return f"""
[server]
listen = ["127.0.0.1:{plain}"]
workers = {workers}
{extra}
[tls]
listen = ["127.0.0.1:{secure}"]
{extra_tls}
[tls.acme]
directory = "{ca.directory}"
email = "ops@shop.example.test"
storage = "acme"
ca_file = "{ca.ca_file}"
challenges = [{listed}]
retry_delay = 0.5
{extra_acme}
[status]
allow = ["127.0.0.1"]
[[sites]]
names = [{sites}]
acme = true
[[sites.routes]]
prefix = "/"
static = "site"
"""


def verified(port: int, roots: str, name: str) -> x509.Certificate:
    """The certificate the proxy serves for ``name``, verified against ``roots`` (ssl.SSLError if it fails)."""
    context = ssl.create_default_context(cadata=roots)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def served(port: int, name: str) -> x509.Certificate:
    """The certificate the proxy serves for ``name``, unverified."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def wait_verified(port: int, ca: pebble.Pebble, name: str, proxy: ProxyProcess) -> x509.Certificate:
    assert https_port(proxy) == port  # the TLS listener is bound after the plain one
    roots = ca.issuing_roots()

    def attempt():
        try:
            return verified(port, roots, name)
        except ssl.SSLCertVerificationError:
            if proxy.proc.poll() is not None:
                raise RuntimeError(proxy.output()) from None
            return None
    return wait_until(attempt, ISSUANCE_TIMEOUT, interval=0.2, what=f"a certificate for {name} from Pebble")


def https_get(port: int, roots: str, name: str, path: str) -> tuple[int, bytes]:
    answer = tls_get(port, ssl.create_default_context(cadata=roots), name, name, path)
    return status_of(answer), answer.partition(b"\r\n\r\n")[2]


@pytest.fixture
def ports():
    return free_port(), free_port()


@pytest.fixture
def ca(tmp_path, ports):
    server = pebble.Pebble(tmp_path / "pebble", *ports)
    yield server
    server.close()


def plain_get(port: int, host: str, path: str) -> tuple[int, bytes]:
    answer = raw_request(port, f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    return status_of(answer), answer


def test_http01_certificate_served_verified_and_reused_after_a_restart(tmp_path, ports, ca):
    plain, secure = ports
    config = acme_config(tmp_path, plain, secure, ca, extra_tls="redirect_http = true")
    started = time.monotonic()
    proxy = ProxyProcess(tmp_path, config)
    try:
        assert https_port(proxy) == secure
        proxy.wait_for_line(r"acme: sites\[0\] \(shop.example.test, www.shop.example.test\): no certificate from "
                            r"the CA yet: serving a self-signed one")
        cert = wait_verified(secure, ca, "www.shop.example.test", proxy)
        issued = time.monotonic() - started
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sorted(names.get_values_for_type(x509.DNSName)) == sorted(SHOP)
        assert "Pebble" in cert.issuer.rfc4514_string()
        assert https_get(secure, ca.issuing_roots(), "shop.example.test", "/hello.txt") == (200, b"hello from the shop\n")
        line = proxy.wait_for_line(r"acme: shop.example.test, www.shop.example.test: certificate obtained in ([\d.]+)s")
        print(f"http-01: certificate served {issued:.1f} s after the proxy started; the order took {line[1]} s")
        assert proxy.wait_for_line(r"acme: .*: answering http-01")
        # The challenge path was answered before redirect_http, which still sends everything else to HTTPS.
        status, head = plain_get(plain, "shop.example.test", "/hello.txt")
        assert status == 308 and f"location: https://shop.example.test:{secure}/hello.txt".encode() in head.lower()
        assert plain_get(plain, "shop.example.test", "/.well-known/acme-challenge/withdrawn")[0] == 404
        storage = tmp_path / "acme"
        assert stat.S_IMODE(storage.stat().st_mode) == 0o700
        keys = [p for p in storage.rglob("*") if p.is_file() and p.suffix in (".key", ".pem")]
        assert keys and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in keys)
    finally:
        proxy.stop()
    # A restart with a valid stored certificate serves it at once and never asks the CA: Pebble is stopped,
    # so any attempt would fail (and say so in the log).
    roots = ca.issuing_roots()
    ca.stop()
    proxy = ProxyProcess(tmp_path, config)
    try:
        assert https_port(proxy) == secure
        assert verified(secure, roots, "shop.example.test").serial_number == cert.serial_number
        assert "self-signed" not in proxy.output()
        proxy.wait_for_line(r"acme: shop.example.test, www.shop.example.test: stored certificate serial "
                            f"{cert.serial_number:X} from Pebble")
        status = wait_until(lambda: status_certificates(proxy), what="the certificate on the status page")
        assert status[0]["names"] == list(SHOP) and status[0]["serial"] == f"{cert.serial_number:X}"
        # A reload replaces the certificate manager (one at a time: the storage lock) and still asks nobody.
        proxy.signal(signal.SIGHUP)
        proxy.wait_for_line(r"reload complete")
        wait_until(lambda: len(re.findall(r"acme: \S+, \S+: stored certificate serial", proxy.output())) == 2,
                   what="the new certificate manager")
        assert proxy.output().count("certificate manager exited") == 1
        assert verified(secure, roots, "shop.example.test").serial_number == cert.serial_number
        assert "asking" not in proxy.output() and "failed" not in proxy.output()
    finally:
        proxy.stop()


def status_certificates(proxy: ProxyProcess) -> list[dict] | None:
    with urllib.request.urlopen(f"{proxy.url}/_proxy/status", timeout=5) as answer:
        return json.load(answer).get("certificates")


@pytest.mark.parametrize("loop", EVENT_LOOPS)  # the ClientHello is read before start_tls: both loops differ there
def test_tls_alpn01_certificate_obtained_on_the_tls_listener_alone(tmp_path, ports, ca, loop):
    plain, secure = ports
    proxy = ProxyProcess(tmp_path, acme_config(tmp_path, plain, secure, ca, challenges=("tls-alpn-01",),
                                               names=("alpn.example.test",), workers=2,
                                               extra=f'event_loop = "{loop}"'))
    try:
        assert https_port(proxy) == secure
        cert = wait_verified(secure, ca, "alpn.example.test", proxy)
        assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
            .get_values_for_type(x509.DNSName) == ["alpn.example.test"]
        assert proxy.wait_for_line(r"acme: tls-alpn-01 validation of alpn.example.test from 127.0.0.1:\d+ answered")
        assert "answering http-01" not in proxy.output()
        # Two workers, one certificate manager (forked by the master), one order.
        assert len(re.findall(r"acme: certificate manager \d+:", proxy.output())) == 1
        assert len(re.findall(r"acme: alpn.example.test: asking https://\S+ for a certificate", proxy.output())) == 1
        assert https_get(secure, ca.issuing_roots(), "alpn.example.test", "/hello.txt") == (200, b"hello from the shop\n")
        # Both workers took the new certificate up without a restart, each at its next handshake.

        def both_took_it_up():
            assert served(secure, "alpn.example.test").serial_number == cert.serial_number
            return len(set(re.findall(r"acme: worker (\d+) took up the new certificates", proxy.output()))) == 2
        wait_until(both_took_it_up, interval=0.05, what="both workers to take up the certificate")
    finally:
        proxy.stop()


def keep_alive_get(tls: ssl.SSLSocket, name: str, path: str) -> int:
    tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(65536)
        assert chunk, "the connection was closed"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: (\d+)", head)[1])
    while len(body) < length:
        body += tls.recv(65536)
    return int(head.split()[1])


def test_renewal_is_served_without_a_restart_and_open_connections_stay(tmp_path, ports):
    """renew_before longer than the lifetime (Pebble issues for 45 s here): a new certificate a third of the
    way through, taken up by the workers while a connection made with the old one keeps working."""
    plain, secure = ports
    ca = pebble.Pebble(tmp_path / "pebble", plain, secure, validity=45)
    proxy = None
    try:
        proxy = ProxyProcess(tmp_path, acme_config(tmp_path, plain, secure, ca, extra_acme='renew_before = "1d"',
                                                   extra="[limits]\nkeepalive_timeout = 120", workers=2))
        first = wait_verified(secure, ca, "shop.example.test", proxy)
        roots = ca.issuing_roots()
        context = ssl.create_default_context(cadata=roots)
        with context.wrap_socket(socket.create_connection(("127.0.0.1", secure), timeout=5),
                                 server_hostname="shop.example.test") as old:
            assert keep_alive_get(old, "shop.example.test", "/hello.txt") == 200
            proxy.wait_for_line(r"renew_before \(86400s\) is not shorter than the certificate's lifetime")

            def renewed():
                cert = verified(secure, roots, "shop.example.test")
                return cert if cert.serial_number != first.serial_number else None
            second = wait_until(renewed, 30 + ISSUANCE_TIMEOUT, interval=0.5, what="a renewed certificate")
            assert second.not_valid_after_utc > first.not_valid_after_utc
            assert all(verified(secure, roots, "shop.example.test").serial_number == second.serial_number
                       for _ in range(6))  # whichever worker answers
            assert keep_alive_get(old, "shop.example.test", "/hello.txt") == 200  # the old connection stayed
        assert proxy.proc.poll() is None
    finally:
        if proxy is not None:
            proxy.stop()
        ca.close()


def test_a_ca_that_is_gone_or_refuses_gives_logged_retries_and_the_old_certificate(tmp_path, ports):
    plain, secure = ports
    ca = pebble.Pebble(tmp_path / "pebble", plain, secure, validity=30)
    proxy = None
    try:
        proxy = ProxyProcess(tmp_path, acme_config(tmp_path, plain, secure, ca, extra_acme='renew_before = "1d"'))
        held = wait_verified(secure, ca, "shop.example.test", proxy)
        ca.stop()
        # Renewal is due after 10 s: the CA cannot be reached, and each retry says so, once.
        failed = r"acme: shop.example.test, www.shop.example.test: attempt (\d+) failed after [\d.]+s: "
        proxy.wait_for_line(failed + r"cannot reach the CA at https://127.0.0.1:\d+/dir: .*still serving the "
                            r"certificate valid until .*; next attempt in", timeout=40)
        wait_until(lambda: len(re.findall(failed, proxy.output())) >= 2, 30, what="a second failed attempt")
        assert served(secure, "shop.example.test").serial_number == held.serial_number  # expiring or not
        # The CA comes back, but validates http-01 on a port nobody answers: the challenge fails, with its words.
        ca.start(httpPort=free_port())
        proxy.wait_for_line(failed + r".*http-01 failed: \S+: .*still serving the certificate",
                            timeout=60)
        assert served(secure, "shop.example.test").serial_number == held.serial_number
        certificates = status_certificates(proxy)
        assert certificates[0]["failures"] >= 3 and "http-01 failed" in certificates[0]["last_error"]
        assert proxy.proc.poll() is None and "Traceback" not in proxy.output()
    finally:
        if proxy is not None:
            proxy.stop()
        ca.close()
