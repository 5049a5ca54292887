"""TLS termination against real sockets: certificates made by trustme at test time, a real Gunicorn behind."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest
import requests

from tests.edge import (EagerClient, client_context, der, https_port, peer_certificate, read_until_eof, worker_pid,
                        write_cert)
from tests.helpers import EVENT_LOOPS, ROOT, ProxyProcess, wait_until

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # what an HTTP/2 client sends first (RFC 9113 section 3.4)


def tls_config(certificate: str, key: str, *, event_loop: str, upstream: str = "", static: str = "", extra: str = "",
               workers: int = 1) -> str:
    """A proxy.toml with a plain and a TLS listener (ports chosen at run time), [status], and one route;
    ``extra`` goes at the end of [tls] (and may open tables of its own)."""
    route = 'upstream = "app"' if upstream else f'static = "{static}"'
    backend = f'[upstreams.app]\nservers = ["{upstream}"]' if upstream else ""
    return f"""
[server]
listen = ["127.0.0.1:0"]
workers = {workers}
event_loop = "{event_loop}"
[tls]
listen = ["127.0.0.1:0"]
certificate = "{certificate}"
key = "{key}"
{extra}
[status]
{backend}
[[routes]]
prefix = "/"
{route}
"""


@pytest.fixture(scope="module", params=EVENT_LOOPS)
def site(request, tmp_path_factory, ca, ws_gunicorn):
    """A proxy with [tls] (a default certificate and two SNI sites), redirect_http and HSTS, on each event loop."""
    folder = tmp_path_factory.mktemp("tls")
    default = ca.issue_cert("localhost", "127.0.0.1")
    api = ca.issue_cert("api.example.test")
    wild = ca.issue_cert("*.wild.test")
    write_cert(default, folder, "default")
    write_cert(api, folder, "api")
    write_cert(wild, folder, "wild")
    proxy = ProxyProcess(folder, tls_config("default.pem", "default.key", event_loop=request.param,
                                            upstream=ws_gunicorn.address, extra="""
redirect_http = true
hsts = "max-age=31536000"
[[tls.sites]]
names = ["api.example.test"]
certificate = "api.pem"
key = "api.key"
[[tls.sites]]
names = ["*.wild.test"]
certificate = "wild.pem"
key = "wild.key"
"""))
    proxy.tls_port = https_port(proxy)
    proxy.certs = {"default": default, "api": api, "wild": wild}
    yield proxy
    proxy.stop()


def test_https_request_reaches_the_app_as_https(site, ca):
    with ca.cert_pem.tempfile() as ca_file:
        response = requests.get(f"https://localhost:{site.tls_port}/scheme", verify=ca_file)
    assert response.status_code == 200
    seen = response.json()
    # The app (werkzeug ProxyFix trusting one hop) sees https, so url_for(_external=True) builds https URLs.
    assert seen["scheme"] == "https"
    assert seen["url"] == f"https://localhost:{site.tls_port}/scheme"
    assert seen["forwarded"] == f'for=127.0.0.1;proto=https;host="localhost:{site.tls_port}"'
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000"


def test_alpn_offers_h2_then_http11(site, ca):
    context = client_context(ca)
    context.set_alpn_protocols(["http/1.1", "h2"])  # the server's preference decides (test_http2.py goes on)
    with socket.create_connection(("127.0.0.1", site.tls_port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.selected_alpn_protocol() == "h2"
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            assert tls.compression() is None


def test_http2_false_offers_http11_only_and_h2c_is_off_by_default(tmp_path, ca, start_proxy):
    write_cert(ca.issue_cert("localhost"), tmp_path, "site")
    proxy = start_proxy(tls_config("site.pem", "site.key", event_loop="auto", static=str(tmp_path),
                                   extra="http2 = false"))
    context = client_context(ca)
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", https_port(proxy)), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.selected_alpn_protocol() == "http/1.1"
            tls.sendall(PREFACE)  # HTTP/2 all the same: an HTTP/1.1 request line of version 2.0
            assert read_until_eof(tls).startswith(b"HTTP/1.1 505 ")
    # [server] h2c is off unless asked for: the plain listener answers the preface as HTTP/1.1 does.
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(PREFACE)
        assert read_until_eof(sock).startswith(b"HTTP/1.1 505 ")


def test_plain_http_is_redirected_with_308_and_no_hsts(site):
    response = requests.post(f"http://127.0.0.1:{site.port}/scheme?a=1", data=b"x", allow_redirects=False)
    assert response.status_code == 308  # keeps the method and the body, unlike 301/302
    assert response.headers["Location"] == f"https://127.0.0.1:{site.tls_port}/scheme?a=1"
    assert "Strict-Transport-Security" not in response.headers  # RFC 6797 7.2: never over plain HTTP
    by_name = requests.get(f"http://127.0.0.1:{site.port}/x", headers={"Host": "shop.test:8080"},
                           allow_redirects=False)
    assert by_name.headers["Location"] == f"https://shop.test:{site.tls_port}/x"


def test_status_page_is_not_redirected(site):
    status = requests.get(f"http://127.0.0.1:{site.port}/_proxy/status").json()
    assert status["tls"]["handshakes"] >= 0
    assert status["tunnels"]["open"] == 0


def _no_verify() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@pytest.mark.parametrize("server_name, expected", [
    ("localhost", "default"),
    ("api.example.test", "api"),
    ("API.Example.Test", "api"),
    ("chat.wild.test", "wild"),
    ("unknown.test", "default"),
    (None, "default"),
])
def test_sni_chooses_the_certificate(site, server_name, expected):
    assert peer_certificate(site.tls_port, _no_verify(), server_name) == der(site.certs[expected])


def test_sni_site_serves_requests(site, ca):
    context = client_context(ca)
    with socket.create_connection(("127.0.0.1", site.tls_port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="api.example.test") as tls:
            tls.sendall(b"GET /scheme HTTP/1.1\r\nHost: api.example.test\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b'"url":"https://api.example.test/scheme"' in answer


def test_hellos_sent_before_the_worker_runs_are_not_lost(site):
    """Regression: uvloop starts reading a connection as soon as it is accepted, before start_tls owns
    it, and the proxy used to drop what it read then, the ClientHello: the handshake waited for bytes
    that had come and gone until header_timeout (it looked like a hang with [[tls.sites]]). With the
    worker stopped while clients connect and send their hellos, every hello is in its socket before
    the worker accepts; each handshake must still complete, with the certificate its name asks for."""
    worker = worker_pid(site)
    names = [("api.example.test", "api"), ("localhost", "default"), (None, "default"), ("chat.wild.test", "wild")] * 4
    before = _tls_status(site)
    clients: list[EagerClient] = []
    os.kill(worker, signal.SIGSTOP)
    try:
        for name, _ in names:
            clients.append(EagerClient(site.tls_port, _no_verify(), name))
    finally:
        os.kill(worker, signal.SIGCONT)
    try:
        presented = [client.finish(timeout=10) for client in clients]  # TimeoutError, not a hang, if lost
    finally:
        for client in clients:
            client.close()
    assert presented == [der(site.certs[expected]) for _, expected in names]
    wait_until(lambda: _tls_status(site)["handshakes"] == before["handshakes"] + len(names), timeout=5,
               what="every handshake counted")
    assert _tls_status(site)["failures"] == before["failures"]


def test_a_handshake_that_never_completes_is_closed_after_header_timeout(tmp_path, ca, start_proxy, event_loop):
    write_cert(ca.issue_cert("localhost"), tmp_path, "site")
    proxy = start_proxy(tls_config("site.pem", "site.key", event_loop=event_loop, static=".",
                                   extra="[limits]\nheader_timeout = 1.0"))
    port = https_port(proxy)
    started = time.monotonic()
    silent = socket.create_connection(("127.0.0.1", port), timeout=10)  # never says hello
    half = EagerClient(port, client_context(ca), "localhost", send=slice(0, 100))  # the start of a hello only
    try:
        for sock in (silent, half.sock):
            sock.settimeout(10)
            try:
                assert sock.recv(1) == b""
            except ConnectionResetError:
                pass
        assert time.monotonic() - started > 0.9  # closed by the timeout, not at once
    finally:
        silent.close()
        half.close()
    wait_until(lambda: _failures(proxy).get("timeout") == 2, timeout=5, what="both counted as timeouts")


def _tls11_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with pytest.warns(DeprecationWarning):
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # so OpenSSL's own security level does not refuse it client-side
    return context


def test_tls11_is_refused_by_the_server(site, ca, tmp_path):
    # Control: the same client completes a TLS 1.1 handshake with a server that allows it, so the
    # refusal below is the proxy's and not this machine's OpenSSL policy.
    cert = ca.issue_cert("localhost")
    chain, key = write_cert(cert, tmp_path, "old")
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with pytest.warns(DeprecationWarning):
        server_context.minimum_version = ssl.TLSVersion.TLSv1_1
    server_context.set_ciphers("DEFAULT:@SECLEVEL=0")
    server_context.load_cert_chain(chain, key)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def accept_one():
            conn, _ = listener.accept()
            try:
                with server_context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

        thread = threading.Thread(target=accept_one, daemon=True)
        thread.start()
        try:
            with socket.create_connection(listener.getsockname(), timeout=5) as raw:
                with _tls11_context().wrap_socket(raw) as tls:
                    control_version = tls.version()
        except ssl.SSLError as exc:
            pytest.skip(f"this OpenSSL cannot speak TLS 1.1 at all ({exc.reason}): nothing to prove")
        thread.join(5)
    assert control_version == "TLSv1.1"

    before = _failures(site).get("version", 0)
    with pytest.raises(ssl.SSLError):
        with socket.create_connection(("127.0.0.1", site.tls_port), timeout=5) as raw:
            with _tls11_context().wrap_socket(raw):
                pass
    wait_until(lambda: _failures(site).get("version", 0) == before + 1, timeout=5, what="the refusal counted")


def _tls_status(proxy) -> dict:
    return requests.get(f"http://127.0.0.1:{proxy.port}/_proxy/status").json()["tls"]


def _failures(proxy) -> dict:
    return _tls_status(proxy)["failures"]


def test_failed_handshakes_are_logged_once_and_cost_nothing_else(tmp_path, ca, start_proxy, ws_gunicorn, event_loop):
    write_cert(ca.issue_cert("localhost"), tmp_path, "site")
    proxy = start_proxy(tls_config("site.pem", "site.key", event_loop=event_loop, upstream=ws_gunicorn.address))
    port = https_port(proxy)
    flood = 40
    for _ in range(flood):  # plain HTTP to the TLS port, as a misconfigured client or a scanner sends it
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(100) == b""  # closed, nothing else
    wait_until(lambda: _failures(proxy).get("plain_http") == flood, timeout=10, what="every failure counted")
    lines = [line for line in proxy.lines if "TLS handshake failed" in line]
    assert len(lines) == 1, lines
    assert "plain HTTP sent to the TLS port" in lines[0]
    assert "Traceback" not in proxy.output()
    with ca.cert_pem.tempfile() as ca_file:
        assert requests.get(f"https://localhost:{port}/plain", verify=ca_file).text == "plain\n"


def test_handshakes_in_progress_count_against_max_connections(tmp_path, ca, start_proxy, event_loop):
    write_cert(ca.issue_cert("localhost"), tmp_path, "site")
    proxy = start_proxy(tls_config("site.pem", "site.key", event_loop=event_loop, static=".", workers=1)
                        .replace("workers = 1", "workers = 1\nmax_connections = 6"))
    port = https_port(proxy)
    proxy.wait_for_line("is accepting connections")  # so the five below are the first it takes
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(6)]  # never say hello
    try:
        for _ in range(10):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
                assert extra.recv(1) == b""  # closed at once: the silent six hold every place
        reply = requests.get(f"http://127.0.0.1:{proxy.port}/_proxy/status")
        assert reply.status_code == 503  # the same limit for plain connections
    finally:
        for sock in silent:
            sock.close()
    counts = wait_until(lambda: (r := requests.get(f"http://127.0.0.1:{proxy.port}/_proxy/status")).ok and r.json(),
                        what="room again once the silent ones left")
    assert counts["connections"]["refused_at_max"] >= 11


def test_sighup_reloads_the_certificate(tmp_path, ca, start_proxy, event_loop):
    first, second = ca.issue_cert("localhost"), ca.issue_cert("localhost")
    write_cert(first, tmp_path, "site")
    # Two workers: the master builds the contexts once per generation and the forked workers share them.
    proxy = start_proxy(tls_config("site.pem", "site.key", event_loop=event_loop, static=".", workers=2))
    port = https_port(proxy)
    wait_until(lambda: _count(proxy, "is accepting connections") == 2, what="both workers to accept")
    context = client_context(ca)
    assert {peer_certificate(port, context, "localhost") for _ in range(6)} == {der(first)}

    write_cert(second, tmp_path, "site")  # rotation: new files at the same paths, then SIGHUP to the master
    proxy.signal(signal.SIGHUP)
    wait_until(lambda: peer_certificate(port, context, "localhost") == der(second), timeout=20,
               what="the new certificate to be served")
    proxy.wait_for_line(r"TLS certificates for the new workers: .*site\.pem")
    # Until the old generation has exited, a connection may still reach one of its workers.
    wait_until(lambda: _count(proxy, " exited") == 2, what="the old workers to exit")
    with requests.get(f"https://localhost:{port}/site.pem", verify=_ca_file(ca, tmp_path)) as response:
        assert response.status_code == 200

    (tmp_path / "site.key").write_text("not a key\n")  # a broken rotation keeps what works
    proxy.signal(signal.SIGHUP)
    proxy.wait_for_line(r"reload failed, still serving the previous configuration: .*site\.key")
    assert {peer_certificate(port, context, "localhost") for _ in range(6)} == {der(second)}


def _count(proxy, text: str) -> int:
    return sum(text in line for line in proxy.lines)


def _ca_file(ca, folder) -> str:
    path = folder / "ca.pem"
    path.write_bytes(ca.cert_pem.bytes())
    return str(path)


def run_proxy(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "proxy", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=20)


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "tls.certificate: file {d}/missing.pem does not exist"),
    (lambda d: (d / "missing.pem").mkdir(), "tls.certificate: {d}/missing.pem is a folder, not a file"),
    (lambda d: (d / "missing.pem").write_text("junk\n"), "tls.certificate: {d}/missing.pem holds no PEM certificate"),
])
def test_bad_certificate_path_fails_check_config(tmp_path, setup, message):
    setup(tmp_path)
    config = tmp_path / "proxy.toml"
    config.write_text('[tls]\ncertificate = "missing.pem"\n')
    for args in (("--check-config",), ()):
        result = run_proxy("--config", str(config), *args)
        assert result.returncode == 1
        assert result.stderr == f"proxy: {config}: {message.format(d=tmp_path)}\n"


def test_mismatched_key_fails_check_config(tmp_path, ca):
    write_cert(ca.issue_cert("localhost"), tmp_path, "a")
    write_cert(ca.issue_cert("localhost"), tmp_path, "b")
    config = tmp_path / "proxy.toml"
    config.write_text('[tls]\ncertificate = "a.pem"\nkey = "b.key"\n')
    result = run_proxy("--config", str(config), "--check-config")
    assert result.returncode == 1
    assert result.stderr == (f"proxy: {config}: tls.key: the key in {tmp_path}/b.key does not match the "
                             f"certificate in {tmp_path}/a.pem\n")


def test_check_config_summarises_tls(tmp_path, ca):
    write_cert(ca.issue_cert("localhost"), tmp_path, "a")
    config = tmp_path / "proxy.toml"
    config.write_text('[tls]\ncertificate = "a.pem"\nkey = "a.key"\nhsts = "max-age=60"\n')
    result = run_proxy("--config", str(config), "--check-config")
    assert result.returncode == 0, result.stderr
    assert f"tls: 127.0.0.1:8443 with {tmp_path}/a.pem (min TLSv1.2, hsts)" in result.stdout


def test_gencert_makes_a_certificate_the_proxy_serves(tmp_path, start_proxy):
    result = run_proxy("gencert", "--out", str(tmp_path / "certs"), "localhost", "127.0.0.1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert oct((tmp_path / "certs" / "key.pem").stat().st_mode & 0o777) == "0o600"
    proxy = start_proxy(tls_config("certs/cert.pem", "certs/key.pem", event_loop="auto", static="certs"))
    port = https_port(proxy)
    for host in ("localhost", "127.0.0.1"):  # both names are in the certificate, which verifies as its own anchor
        response = requests.get(f"https://{host}:{port}/cert.pem", verify=str(tmp_path / "certs" / "cert.pem"))
        assert response.status_code == 200
    again = run_proxy("gencert", "--out", str(tmp_path / "certs"), cwd=tmp_path)
    assert again.returncode == 1
    assert again.stderr.count("\n") == 1 and "exists already" in again.stderr
