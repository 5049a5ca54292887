"""The sans-IO side of TLS: [tls] validation, certificate loading, SNI choice, redirects, failure logging."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from pathlib import Path

import pytest
import trustme

from proxy import config, tls
from proxy.config import Address, ConfigError, Listen
from proxy.gencert import openssl_command, subject_alt_names
from proxy.server.tls import _feed


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def write(folder: Path, stem: str, cert: trustme.LeafCert) -> None:
    (folder / f"{stem}.pem").write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    (folder / f"{stem}.key").write_bytes(cert.private_key_pem.bytes())


def load(folder: Path, text: str) -> config.Config:
    path = folder / "proxy.toml"
    path.write_text(text)
    return config.load(path)


def test_tls_section_loads_with_defaults(tmp_path, ca):
    write(tmp_path, "a", ca.issue_cert("localhost"))
    cfg = load(tmp_path, '[tls]\ncertificate = "a.pem"\nkey = "a.key"\n')
    assert cfg.tls.listen == (Listen(Address("127.0.0.1", 8443)),)
    assert cfg.tls.min_version == "TLSv1.2" and not cfg.tls.redirect_http and cfg.tls.hsts == ""
    assert cfg.tls.certificate == tmp_path / "a.pem"
    assert load(tmp_path, "").tls is None


@pytest.mark.parametrize("event_loop", ["auto", "asyncio", "uvloop"])
def test_tls_runs_on_every_event_loop(tmp_path, ca, event_loop):
    write(tmp_path, "a", ca.issue_cert("localhost"))
    write(tmp_path, "b", ca.issue_cert("api.example.test"))
    cfg = load(tmp_path, f'[server]\nevent_loop = "{event_loop}"\n[tls]\ncertificate = "a.pem"\nkey = "a.key"\n'
                         '[[tls.sites]]\nnames = ["api.example.test"]\ncertificate = "b.pem"\nkey = "b.key"\n')
    assert cfg.server.event_loop == event_loop and len(cfg.tls.sites) == 1


class _SmallBuffers(asyncio.BufferedProtocol):
    """A buffered protocol whose buffer is smaller than what is fed to it, as asyncio's TLS protocol's can be."""

    def __init__(self, size: int) -> None:
        self.buffer = bytearray(size)
        self.received = bytearray()

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.received += self.buffer[:nbytes]


class _Plain(asyncio.Protocol):
    def __init__(self) -> None:
        self.received = bytearray()

    def data_received(self, data: bytes) -> None:
        self.received += data


@pytest.mark.parametrize("protocol", [_SmallBuffers(7), _SmallBuffers(4096), _Plain()],
                         ids=["7-byte buffer", "4 KiB buffer", "data_received"])
def test_bytes_read_before_the_handshake_are_fed_in_order(protocol):
    # What server/tls.py hands to the TLS protocol that start_tls installed: the whole of it, in order,
    # whatever the size of the buffers that protocol offers.
    data = bytes(range(256)) * 3
    _feed(protocol, data)
    assert protocol.received == data


def test_key_may_live_in_the_certificate_file(tmp_path, ca):
    cert = ca.issue_cert("localhost")
    (tmp_path / "both.pem").write_bytes(cert.private_key_and_cert_chain_pem.bytes())
    cfg = load(tmp_path, '[tls]\ncertificate = "both.pem"\n')
    assert cfg.tls.key is None
    assert tls.load_certificates(cfg.tls, cfg.path).default.minimum_version == ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize("text, message", [
    ('[tls]\nkey = "a.key"\n', "tls.certificate: missing (expected a PEM file"),
    ('[tls]\ncertificate = "nope.pem"\n', "tls.certificate: file {d}/nope.pem does not exist"),
    ('[tls]\ncertificate = "a.pem"\nkey = "b.key"\n',
     "tls.key: the key in {d}/b.key does not match the certificate in {d}/a.pem"),
    ('[tls]\ncertificate = "a.pem"\n', "tls.certificate: {d}/a.pem holds no PEM private key (set key"),
    ('[tls]\ncertificate = "a.key"\nkey = "a.key"\n', "tls.certificate: {d}/a.key holds no PEM certificate"),
    ('[tls]\ncertificate = "a.pem"\nkey = "a.pem"\n', "tls.key: {d}/a.pem holds no PEM private key"),
    ('[tls]\ncertificate = "a.pem"\nkey = "enc.key"\n', "tls.key: {d}/enc.key is encrypted with a passphrase"),
    ('[tls]\ncertificate = "a.pem"\nkey = "a.key"\nmin_version = "TLSv1.1"\n',
     'tls.min_version: expected one of "TLSv1.2", "TLSv1.3"'),
    ('[tls]\ncertificate = "a.pem"\nkey = "a.key"\ncolour = 1\n', "tls.colour: unknown key"),
    ('[server]\nlisten = ["127.0.0.1:8443"]\n[tls]\ncertificate = "a.pem"\nkey = "a.key"\n',
     "tls.listen: 127.0.0.1:8443 is listed twice (in [server] or [tls])"),
    ('[tls]\ncertificate = "a.pem"\nkey = "a.key"\n[[tls.sites]]\nnames = ["x.test"]\ncertificate = "b.pem"\n'
     'key = "a.key"\n', "tls.sites[0].key: the key in {d}/a.key does not match the certificate in {d}/b.pem"),
    ('[tls]\ncertificate = "a.pem"\nkey = "a.key"\n[[tls.sites]]\nnames = ["bad name"]\ncertificate = "b.pem"\n',
     "tls.sites[0].names: expected a list of a host name"),
    ('[tls]\ncertificate = "a.pem"\nkey = "a.key"\n[[tls.sites]]\nnames = ["x.test"]\ncertificate = "b.pem"\n'
     'key = "b.key"\n[[tls.sites]]\nnames = ["X.test"]\ncertificate = "b.pem"\nkey = "b.key"\n',
     "tls.sites[1].names: 'x.test' is named by an earlier site"),
    ('[tls]\ncertificate = "a.pem"\nkey = "a.key"\n[[tls.sites]]\ncertificate = "b.pem"\n',
     "tls.sites[0].names: missing"),
])
def test_tls_errors_name_the_file_and_key(tmp_path, ca, text, message):
    write(tmp_path, "a", ca.issue_cert("localhost"))
    write(tmp_path, "b", ca.issue_cert("x.test"))
    subprocess.run(["openssl", "pkey", "-in", tmp_path / "a.key", "-aes256", "-passout", "pass:secret",
                    "-out", tmp_path / "enc.key"], check=True, capture_output=True)
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    error = str(caught.value)
    assert error.startswith(f"{tmp_path / 'proxy.toml'}: "), error
    assert message.format(d=tmp_path) in error
    assert "\n" not in error


def test_contexts_have_modern_settings(tmp_path, ca):
    write(tmp_path, "a", ca.issue_cert("localhost"))
    cfg = load(tmp_path, '[tls]\ncertificate = "a.pem"\nkey = "a.key"\nmin_version = "TLSv1.3"\n')
    context = tls.load_certificates(cfg.tls, cfg.path).default
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    for option in (ssl.OP_NO_COMPRESSION, ssl.OP_CIPHER_SERVER_PREFERENCE):
        assert context.options & option
    suites = {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert suites and all("GCM" in name or "CHACHA20" in name for name in suites)
    assert all(name.startswith(("ECDHE", "DHE")) for name in suites)


def test_sni_names_map_to_site_contexts(tmp_path, ca):
    write(tmp_path, "a", ca.issue_cert("localhost"))
    write(tmp_path, "b", ca.issue_cert("api.example.test", "*.wild.test"))
    cfg = load(tmp_path, '[tls]\ncertificate = "a.pem"\nkey = "a.key"\n[[tls.sites]]\n'
                         'names = ["api.example.test", "*.wild.test"]\ncertificate = "b.pem"\nkey = "b.key"\n')
    certificates = tls.load_certificates(cfg.tls, cfg.path)
    site = certificates.exact["api.example.test"]
    assert certificates.for_name("api.example.test") is site
    assert certificates.for_name("API.example.test.") is site
    assert certificates.for_name("chat.wild.test") is site
    assert certificates.for_name("wild.test") is None  # a wildcard covers exactly one more label
    assert certificates.for_name("a.b.wild.test") is None
    assert certificates.for_name(None) is None and certificates.for_name("other.test") is None
    assert certificates.default.sni_callback is not None
    assert len(certificates.fingerprints) == 2 and certificates.fingerprints[0].count(":") == 31


@pytest.mark.parametrize("host, target, port, location", [
    (b"example.test", b"/a?b=1", 443, b"https://example.test/a?b=1"),
    (b"example.test:8080", b"/", 8443, b"https://example.test:8443/"),
    (b"[::1]:8080", b"/x", 8443, b"https://[::1]:8443/x"),
    (b"127.0.0.1", b"/%2F", 443, b"https://127.0.0.1/%2F"),
])
def test_https_location(host, target, port, location):
    assert tls.https_location(host, target, port) == location


@pytest.mark.parametrize("exc, kind", [
    (ssl.SSLError(1, "[SSL: HTTP_REQUEST] http request"), "other"),  # no .reason set: not recognised
    (ConnectionAbortedError("SSL handshake is taking longer than 10 seconds"), "timeout"),
    (ConnectionResetError(), "closed"),
    (OSError("weird"), "other"),
])
def test_classify_by_exception_type(exc, kind):
    assert tls.classify(exc).kind == kind


def test_classify_reads_openssl_reasons():
    error = ssl.SSLError(1, "http request")
    error.reason = "HTTP_REQUEST"
    assert tls.classify(error) == tls.Failure("plain_http", "plain HTTP sent to the TLS port")
    error.reason = "SOMETHING_NEW"
    assert tls.classify(error) == tls.Failure("other", "something new")


def test_failure_log_says_one_line_per_window_and_counts_the_rest():
    failures = tls.FailureLog(window=60.0)
    plain = tls.Failure("plain_http", "plain HTTP sent to the TLS port")
    late = tls.Failure("version", "old")
    first = failures.note(plain, "1.2.3.4:5", now=100.0)
    assert first.startswith("TLS handshake failed from 1.2.3.4:5: plain HTTP sent to the TLS port")
    assert [failures.note(plain, "x", now=100.0 + i) for i in range(1, 50)] == [None] * 49
    assert failures.note(late, "x", now=159.0) is None
    summary = failures.note(late, "9.9.9.9:1", now=161.0)
    assert summary == "TLS handshake failed from 9.9.9.9:1: old (50 more since the last such line: plain_http 49, " \
                      "version 1)"
    assert failures.note(plain, "x", now=200.0) is None


def test_gencert_command_names():
    assert subject_alt_names(["localhost", "127.0.0.1", "::1"]) == "DNS:localhost,IP:127.0.0.1,IP:::1"
    command = openssl_command(Path("c.pem"), Path("k.pem"), ["example.test"], 7)
    assert command[:3] == ["openssl", "req", "-x509"] and "/CN=example.test" in command and "7" in command
