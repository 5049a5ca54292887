"""The sans-IO side of ACME: when to renew, backoff, the storage folder, tls-alpn-01, reading a ClientHello."""

from __future__ import annotations

import hashlib
import os
import ssl
import stat

import pytest

from proxy.acme import plan
from proxy.acme.challenges import (ACME_IDENTIFIER_OID, NotHello, alpn_certificate, client_hello, is_validation,
                                   register_tls_alpn, self_signed)
from proxy.acme.store import Store, ca_slug, read_facts, write_private

DAY = 86400.0


def facts(not_before: float = 0.0, days: float = 90, names=("shop.example",), serial="A1") -> plan.Facts:
    return plan.Facts(names=tuple(names), issuer="Test CA", serial=serial, not_before=not_before,
                      not_after=not_before + days * DAY)


# --- when ---

def test_a_site_without_a_certificate_asks_at_once():
    due = plan.due(("shop.example",), None, plan.Record(), None)
    assert due.at == float("-inf") and due.why == "no certificate yet"


def test_renewal_by_default_when_a_third_of_the_lifetime_remains():
    assert plan.due(("shop.example",), facts(), plan.Record(), None).at == 60 * DAY
    assert plan.due(("shop.example",), facts(), plan.Record(), 10 * DAY).at == 80 * DAY


def test_changed_names_ask_at_once_whatever_the_dates():
    due = plan.due(("shop.example", "www.shop.example"), facts(), plan.Record(), None)
    assert due.at == float("-inf") and "names changed" in due.why
    assert plan.due(("shop.example",), facts(names=("shop.example",)), plan.Record(), None).at > 0


def test_renew_before_longer_than_the_lifetime_renews_once_then_every_third():
    old = facts(serial="A1")
    record = plan.succeeded(plan.Record(), 0.0, old, None)  # obtained under the default
    assert plan.due(("shop.example",), old, record, 400 * DAY).at < 0  # due now: once
    new = facts(not_before=5.0, serial="B2")
    record = plan.succeeded(record, 5.0, new, 400 * DAY)  # obtained under the long setting
    due = plan.due(("shop.example",), new, record, 400 * DAY)
    assert due.at == 5.0 + 30 * DAY and "longer than the certificate's lifetime" in due.why
    assert plan.too_eager(new, 400 * DAY) and not plan.too_eager(new, 30 * DAY)


def test_failures_back_off_doubling_up_to_a_bound():
    record = plan.Record()
    delays = []
    for n in range(12):
        record = plan.failed(record, 1000.0, "connection refused", first_delay=60)
        delays.append(record.retry_at - 1000.0)
    assert delays[:4] == [60, 120, 240, 480]
    assert max(delays) == plan.MAX_BACKOFF and record.failures == 12 and record.last_error == "connection refused"
    assert plan.failed(plan.Record(), 0.0, "slow down", 1, rate_limited=True).retry_at == plan.RATE_LIMITED_WAIT


def test_a_failure_postpones_the_next_attempt_and_says_so():
    record = plan.failed(plan.Record(), 100.0, "no", first_delay=30)
    due = plan.due(("shop.example",), None, record, None)
    assert due.at == 130.0 and due.why == "no certificate yet, try 2 after 1 failed"
    record = plan.succeeded(record, 200.0, facts(), None)
    assert record.failures == 0 and record.retry_at is None and record.last_error == ""


# --- the storage folder ---

def test_ca_slug_names_the_directory():
    assert ca_slug("https://acme-v02.api.letsencrypt.org/directory") == "acme-v02.api.letsencrypt.org-directory"
    assert ca_slug("https://127.0.0.1:14000/dir") == "127.0.0.1-14000-dir"


def test_files_are_written_0600_in_0700_folders(tmp_path):
    store = Store(tmp_path / "acme", "https://ca.test/dir")
    path = store.certificate(("shop.example",))
    write_private(path, b"secret")
    assert path.read_bytes() == b"secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for folder in (path.parent, store.ca, store.root):
        assert stat.S_IMODE(folder.stat().st_mode) & 0o077 == 0
    os.chmod(path, 0o644)
    write_private(path, b"again")  # a replaced file gets the mode again
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["shop.example.pem"]  # no temporary left behind


def test_records_round_trip_and_a_bad_one_reads_as_none_tried(tmp_path):
    store = Store(tmp_path, "https://ca.test/dir")
    names = ("shop.example",)
    assert store.read_record(names) == plan.Record()
    record = plan.failed(plan.Record(), 5.0, "urn:x: refused", 60)
    store.write_record(names, record)
    assert store.read_record(names) == record
    store.record_path(names).write_text("{not json")
    assert store.read_record(names) == plan.Record()


def test_http01_tokens_are_looked_up_only_when_they_look_like_tokens(tmp_path):
    store = Store(tmp_path, "https://ca.test/dir")
    write_private(store.http01("abc_DEF-123"), b"abc_DEF-123.thumb")
    assert store.key_authorization("abc_DEF-123") == b"abc_DEF-123.thumb"
    assert store.key_authorization("missing") is None
    assert store.key_authorization("../../account.key") is None and store.key_authorization("") is None


def test_self_signed_certificates_carry_the_names_and_load(tmp_path):
    pem = self_signed(("shop.example", "www.shop.example"), 7)
    found = read_facts(pem)
    assert found.names == ("shop.example", "www.shop.example") and found.issuer == "shop.example"
    assert 6.9 * DAY < found.lifetime < 7.1 * DAY
    path = tmp_path / "both.pem"
    path.write_bytes(pem)
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(path)  # chain then key, in one file
    assert read_facts(b"not a certificate") is None


# --- tls-alpn-01 (RFC 8737) ---

def test_the_validation_certificate_carries_the_key_authorization_digest():
    from cryptography import x509

    pem = alpn_certificate("shop.example", "token.thumbprint")
    cert = x509.load_pem_x509_certificate(pem)
    extension = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(ACME_IDENTIFIER_OID))
    assert extension.critical
    assert extension.value.value == b"\x04\x20" + hashlib.sha256(b"token.thumbprint").digest()
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["shop.example"]


def test_the_acme_library_parses_tls_alpn_challenges_once_registered():
    import josepy
    from acme import challenges
    from cryptography.hazmat.primitives.asymmetric import ec

    register_tls_alpn()
    register_tls_alpn()  # twice is harmless
    token = josepy.b64encode(b"x" * 32).decode()
    challenge = challenges.Challenge.from_json({"type": "tls-alpn-01", "token": token})
    assert challenge.typ == "tls-alpn-01"
    key = josepy.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    assert challenge.validation(key).startswith(token + ".")
    assert challenge.response(key).to_partial_json() == {}  # RFC 8555 7.5.1: an empty object


# --- reading a ClientHello ---

def hello_bytes(server_name: str | None, alpn: list[str] | None) -> bytes:
    """The ClientHello Python's own TLS client sends (no socket: memory BIOs)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_a_validation_hello_is_recognised():
    found = client_hello(hello_bytes("Shop.Example", ["acme-tls/1"]))
    assert found.server_name == "shop.example" and found.alpn == ("acme-tls/1",)
    assert is_validation(found)


@pytest.mark.parametrize("alpn", [None, ["h2", "http/1.1"], ["acme-tls/1", "http/1.1"]])
def test_other_hellos_are_not_validations(alpn):
    found = client_hello(hello_bytes("shop.example", alpn))
    assert found.alpn == tuple(alpn or ()) and not is_validation(found)
    assert client_hello(hello_bytes(None, ["acme-tls/1"])).server_name is None


def test_a_hello_cut_anywhere_asks_for_more_and_split_records_are_joined():
    data = hello_bytes("shop.example", ["acme-tls/1"])
    for cut in (0, 1, 4, 5, 9, 50, len(data) - 1):
        assert client_hello(data[:cut]) is None
    body = data[5:]
    split = b"".join(b"\x16\x03\x01" + len(part).to_bytes(2, "big") + part for part in (body[:7], body[7:]))
    assert client_hello(split) == client_hello(data)


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00",
                                  b"\x16\x03\x01\x00\x00", b"\x16\x03\x01\x00\x06\x01\x00\x00\x02\x03\x03"])
def test_what_is_not_a_hello_is_refused(data):
    with pytest.raises(NotHello):
        client_hello(data)


def test_a_hello_larger_than_a_record_is_not_waited_for():
    with pytest.raises(NotHello):
        client_hello(b"\x16\x03\x01\x40\x00" + b"\x01" + b"\xff" * 17000)


# --- [tls.acme] and acme = true in the configuration ---

def acme_config(tmp_path, acme: dict | None = None, names=("shop.example", "www.shop.example"), tls: dict | None = None,
                challenges=None):
    from proxy import config

    data = {"upstreams": {"app": {"servers": ["127.0.0.1:1"]}}, "status": {},
            "tls": {"listen": ["127.0.0.1:8443"], **(tls or {})},
            "sites": [{"names": list(names), "acme": True, "routes": [{"prefix": "/", "upstream": "app"}]}]}
    if acme is not None:
        data["tls"]["acme"] = acme
    return config.from_dict(data, tmp_path / "proxy.toml")


def test_defaults_need_no_certificate_and_store_beside_the_config(tmp_path):
    from proxy.config import LETS_ENCRYPT, acme_sites

    cfg = acme_config(tmp_path)
    acme = cfg.tls.acme
    assert cfg.tls.certificate is None and acme.directory == LETS_ENCRYPT
    assert acme.storage == tmp_path / "acme" and not acme.storage.exists()  # made when the proxy starts
    assert acme.challenges == ("http-01", "tls-alpn-01") and acme.renew_before is None and acme.email == ""
    assert [site.names for site in acme_sites(cfg)] == [("shop.example", "www.shop.example")]


def test_settings_are_read_and_durations_take_units(tmp_path):
    cfg = acme_config(tmp_path, {"directory": "https://ca.test/dir", "email": "ops@shop.example",
                                 "storage": "state/acme", "challenges": ["tls-alpn-01"], "renew_before": "30d"})
    acme = cfg.tls.acme
    assert (acme.directory, acme.email, acme.storage) == ("https://ca.test/dir", "ops@shop.example",
                                                          tmp_path / "state" / "acme")
    assert acme.challenges == ("tls-alpn-01",) and acme.renew_before == 30 * DAY
    assert acme_config(tmp_path, {"renew_before": 3600}).tls.acme.renew_before == 3600.0
    assert acme_config(tmp_path, {"renew_before": "12h"}).tls.acme.renew_before == 12 * 3600.0


@pytest.mark.parametrize("names, acme, message", [
    (("*.shop.example",), {}, "'*.shop.example' is a wildcard: a CA certifies one only by the DNS-01 challenge, "
                              "which the proxy does not support"),
    (("localhost",), {}, "'localhost' is not a public domain name a CA can certify"),
    (("shop.example",), {"challenges": ["dns-01"]}, "dns-01 is not supported"),
    (("shop.example",), {"directory": "http://ca.test/dir"}, "tls.acme.directory"),
    (("shop.example",), {"email": "not an address"}, "tls.acme.email"),
    (("shop.example",), {"renew_before": "soon"}, "tls.acme.renew_before"),
    (("shop.example",), {"challenges": ["http-01", "http-01"]}, "each challenge once"),
    (("shop.example",), {"ca_file": "missing.pem"}, "tls.acme.ca_file"),
])
def test_what_a_ca_cannot_do_is_refused_in_one_line(tmp_path, names, acme, message):
    from proxy.errors import ConfigError

    with pytest.raises(ConfigError) as refused:
        acme_config(tmp_path, acme, names=names)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_a_storage_folder_that_cannot_be_made_is_refused(tmp_path):
    from proxy.errors import ConfigError

    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"tls.acme.storage: .*file is not a folder"):
        acme_config(tmp_path, {"storage": "file/acme"})


def test_a_site_with_a_certificate_file_cannot_also_use_acme(tmp_path):
    from proxy import config
    from proxy.errors import ConfigError

    (tmp_path / "site.pem").write_bytes(self_signed(("shop.example",), 7))
    with pytest.raises(ConfigError, match="the certificate comes from the CA: remove certificate and key"):
        config.from_dict({"upstreams": {"app": {"servers": ["127.0.0.1:1"]}}, "tls": {"listen": ["127.0.0.1:8443"]},
                          "sites": [{"names": ["shop.example"], "acme": True, "certificate": "site.pem",
                                     "routes": [{"prefix": "/", "upstream": "app"}]}]}, tmp_path / "proxy.toml")


# --- http-01 in decide(): before any route or redirect, for the managed names only ---

def test_http01_is_answered_before_the_https_redirect_for_managed_names(tmp_path):
    from proxy.explain import build_request, parse
    from proxy.http.decide import ConnFacts, Decider, Reply

    cfg = acme_config(tmp_path, tls={"redirect_http": True})
    pending = {"tok_EN-1": b"tok_EN-1.thumbprint"}
    decider = Decider(cfg, challenges=pending.get)
    plain = ConnFacts(b"http", "192.0.2.1", b"127.0.0.1:80", 443)

    def decide(target, host="shop.example", method="GET"):
        return decider.decide(parse(cfg, build_request(method, target, [("Host", host)], "127.0.0.1:80")), plain)

    answer = decide("/.well-known/acme-challenge/tok_EN-1", "www.shop.example")
    assert type(answer) is Reply and (answer.status, answer.body, answer.handler) == \
        (200, b"tok_EN-1.thumbprint", "acme")
    assert decide("/.well-known/acme-challenge/other").status == 404  # not a pending token: not redirected
    assert decide("/.well-known/acme-challenge/tok_EN-1", method="POST").status == 405
    assert decide("/.well-known/acme-challenge/tok_EN-1", "other.example").status == 308  # not a managed name
    assert decide("/index.html").status == 308
    https = ConnFacts(b"https", "192.0.2.1", b"127.0.0.1:443", 443)
    routed = decider.decide(parse(cfg, build_request("GET", "/.well-known/acme-challenge/tok_EN-1",
                                                     [("Host", "shop.example")], "127.0.0.1:443")), https)
    assert type(routed) is not Reply  # over TLS the path is the site's own


def test_without_http01_in_challenges_the_path_is_the_sites(tmp_path):
    from proxy.explain import build_request, parse
    from proxy.http.decide import ConnFacts, Decider, Forward

    cfg = acme_config(tmp_path, {"challenges": ["tls-alpn-01"]})
    decider = Decider(cfg, challenges={"tok": b"tok.thumb"}.get)
    action = decider.decide(parse(cfg, build_request("GET", "/.well-known/acme-challenge/tok",
                                                     [("Host", "shop.example")], "127.0.0.1:80")),
                            ConnFacts(b"http", "192.0.2.1", b"127.0.0.1:80", 443))
    assert type(action) is Forward


# --- status, metrics, proxy acme status: read from the storage folder ---

def test_status_lists_each_certificate_and_the_last_attempt(tmp_path):
    from proxy.acme import status
    from proxy.config import acme_sites

    cfg = acme_config(tmp_path)
    settings, sites = cfg.tls.acme, acme_sites(cfg)
    rows = status.certificates(settings, sites, 1000.0)
    assert rows[0]["self_signed"] and rows[0]["issuer"] is None and rows[0]["next_attempt"] == "now"
    store = Store(settings.storage, settings.directory)
    pem = self_signed(sites[0].names, 7)
    write_private(store.certificate(sites[0].names), pem)
    held = read_facts(pem)
    store.write_record(sites[0].names, plan.failed(plan.Record(), held.not_before, "rateLimited: too many", 60))
    row = status.certificates(settings, sites, held.not_before)[0]
    assert row["names"] == ["shop.example", "www.shop.example"] and not row["self_signed"]
    assert (row["issuer"], row["serial"], row["failures"], row["last_error"]) == \
        ("shop.example", held.serial, 1, "rateLimited: too many")
    assert row["expires_in_seconds"] == round(held.lifetime)
    samples = "\n".join(status.prometheus(settings, sites))
    assert (f'proxy_acme_certificate_expiry_timestamp_seconds{{names="shop.example,www.shop.example",'
            f'issuer="shop.example"}} {held.not_after:.0f}') in samples
    assert 'proxy_acme_failures{names="shop.example,www.shop.example",issuer="shop.example"} 1' in samples
    text = status.report([row], settings.directory)
    assert "issued by shop.example" in text and "failed (1 in a row): rateLimited: too many" in text


def test_proxy_acme_status_reads_the_storage_and_never_the_ca(tmp_path, capsys):
    from proxy.cli import main

    (tmp_path / "proxy.toml").write_text('[tls]\nlisten = ["127.0.0.1:8443"]\n[tls.acme]\n'
                                         'directory = "https://127.0.0.1:9/dir"\n[[sites]]\n'
                                         'names = ["shop.example"]\nacme = true\n[[sites.routes]]\nprefix = "/"\n'
                                         'static = "."\n')
    assert main(["--config", str(tmp_path / "proxy.toml"), "acme", "status"]) == 0
    out = capsys.readouterr().out
    assert "ACME CA: https://127.0.0.1:9/dir" in out and "no certificate from the CA yet" in out
    assert main(["--config", str(tmp_path / "proxy.toml"), "--check-config"]) == 0
    assert "acme: https://127.0.0.1:9/dir (http-01, tls-alpn-01)" in capsys.readouterr().out


def test_tls_without_a_certificate_needs_an_acme_site(tmp_path):
    from proxy import config
    from proxy.errors import ConfigError

    with pytest.raises(ConfigError, match=r"tls.certificate: missing .*it may be left out when a \[\[sites\]\] "
                                          r"entry has acme = true"):
        config.from_dict({"upstreams": {"app": {"servers": ["127.0.0.1:1"]}}, "tls": {"listen": ["127.0.0.1:8443"]},
                          "routes": [{"prefix": "/", "upstream": "app"}]}, tmp_path / "proxy.toml")
