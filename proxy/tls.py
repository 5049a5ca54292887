"""TLS termination, the parts that do no I/O: SSL contexts from ``[tls]``, SNI, redirects, failed handshakes.

Strategy: ``load_certificates`` turns the ``[tls]`` settings into a frozen
``Certificates`` value holding ready ``ssl.SSLContext`` objects. It runs when
the configuration is loaded (so a missing, unreadable or mismatched file is
a config error naming it, ``--check-config`` included) and again for every
``Runtime``; a reload builds a new value and swaps it in, and connections
already open keep the context they shook hands with.

Every context gets the same settings (Mozilla's "intermediate" profile, which
is also roughly what nginx ships): TLS 1.2 or newer, forward-secret AEAD
ciphers only for TLS 1.2 (TLS 1.3's suites are all AEAD and fixed by
OpenSSL), no compression (CRIME), the server's cipher order, ALPN
``h2`` then ``http/1.1`` (only ``http/1.1`` with ``[tls] http2 = false``;
naming it stops a client that wants only h2 from guessing). The TLS 1.2
suites are all allowed for HTTP/2 (RFC 9113 section 9.2.2: ephemeral key
exchange, AEAD). ``[[tls.sites]]`` contexts are chosen in
the SNI callback by swapping the handshake's context, the standard way with
Python's ``ssl``.

The asyncio side (accepting, the handshake task) is ``server/tls.py``.
"""

from __future__ import annotations

import hashlib
import re
import ssl
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from .config import TlsSettings, UpstreamTls
from .errors import ConfigError

VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
# TLS 1.2 suites: ephemeral key exchange (forward secrecy) and AEAD only.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS"
ALPN = {True: ("h2", "http/1.1"), False: ("http/1.1",)}  # by [tls] http2: the server's preference first

_PEM_CERT_RE = re.compile(rb"-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----")


class _Encrypted(Exception):
    """The private key asked for a passphrase (a server has nobody to type it)."""


def _no_passphrase() -> bytes:
    raise _Encrypted


def _read(path: Path, where: str, source: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:  # it was readable a moment ago, at conversion: say what changed
        raise ConfigError(f"{source}: {where}: cannot read {path}: {exc.strerror}") from None


def fingerprint(pem: bytes) -> str:
    """SHA-256 of the first certificate in a PEM file, as ``openssl x509 -fingerprint -sha256`` prints it."""
    match = _PEM_CERT_RE.search(pem)
    if not match:
        return ""
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(match[0].decode("ascii"))).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def server_context(certificate: Path, key: Path | None, min_version: str, where: str, source: Path,
                   http2: bool = True) -> ssl.SSLContext:
    """One server-side context, or ConfigError naming the file that is wrong (``where`` is e.g. "tls")."""
    cert_pem = _read(certificate, f"{where}.certificate", source)
    key_pem = cert_pem if key is None else _read(key, f"{where}.key", source)
    key_where, key_file = (f"{where}.certificate", certificate) if key is None else (f"{where}.key", key)
    if not _PEM_CERT_RE.search(cert_pem):
        raise ConfigError(f"{source}: {where}.certificate: {certificate} holds no PEM certificate")
    if b"PRIVATE KEY-----" not in key_pem:
        hint = " (set key, or append the key to it)" if key is None else ""
        raise ConfigError(f"{source}: {key_where}: {key_file} holds no PEM private key{hint}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = VERSIONS[min_version]
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    context.set_ciphers(CIPHERS)
    context.set_alpn_protocols(list(ALPN[http2]))
    try:
        context.load_cert_chain(certificate, key, password=_no_passphrase)
    except _Encrypted:
        raise ConfigError(f"{source}: {key_where}: {key_file} is encrypted with a passphrase; give the proxy an "
                          f"unencrypted copy (openssl pkey -in KEY -out KEY.plain), readable only by it") from None
    except ssl.SSLError as exc:
        reason = getattr(exc, "reason", None)
        if reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(f"{source}: {key_where}: the key in {key_file} does not match the certificate "
                              f"in {certificate}") from None
        raise ConfigError(f"{source}: {where}.certificate: cannot load {certificate}"
                          + ("" if key is None else f" with {key}") + f": {reason or 'not valid PEM'}") from None
    except OSError as exc:
        raise ConfigError(f"{source}: {where}.certificate: cannot read {certificate}: {exc.strerror}") from None
    return context


@dataclass(frozen=True)
class Certificates:
    """The contexts for one ``[tls]`` section: the default one and those chosen by SNI."""

    settings: TlsSettings
    default: ssl.SSLContext
    exact: Mapping[str, ssl.SSLContext]  # "api.example.test" -> context
    wildcard: Mapping[str, ssl.SSLContext]  # "example.test" for "*.example.test" -> context
    fingerprints: tuple[str, ...]  # the default certificate's, then each site's, for the log
    hsts: tuple[tuple[bytes, bytes], ...] = field(default=())  # the header to add, or none
    shown: tuple[str, ...] = ()  # what each fingerprint is the certificate of (a file, or an ACME site's), for the log
    pending: tuple[str, ...] = ()  # ACME sites served a self-signed certificate until the CA issues theirs: why

    def __repr__(self) -> str:
        return f"<Certificates default={self.fingerprints[0][:11]} sites={len(self.fingerprints) - 1}>"

    def for_name(self, server_name: str | None) -> ssl.SSLContext | None:
        """The site context for an SNI name, or None for the default."""
        if not server_name:
            return None
        name = server_name.lower().rstrip(".")
        found = self.exact.get(name)
        if found is None and "." in name:
            found = self.wildcard.get(name.partition(".")[2])
        return found

    def _sni(self, ssl_object, server_name: str | None, context) -> None:
        # OpenSSL's servername callback: switching the context switches the certificate. The name is kept on
        # the connection too: a request whose Host no site serves gets 421 when it differs (http/sites.py).
        ssl_object.sni_name = server_name
        chosen = self.for_name(server_name)
        if chosen is not None:
            ssl_object.context = chosen


def sni_name(ssl_object) -> str | None:
    """The name a TLS client asked for (SNI), lower-cased, or None when it sent none."""
    name = getattr(ssl_object, "sni_name", None)
    return name.lower().rstrip(".") if name else None


def load_certificates(settings: TlsSettings, source: Path) -> Certificates:
    """Build every context of ``[tls]``; ConfigError (one line, naming the file) when one cannot be.

    An ACME site's certificate is read from ``[tls.acme] storage``; until the CA has issued one, the site
    gets a self-signed certificate (``pending`` says why). Without ``[tls] certificate``, clients that name
    no site get the first ACME site's certificate.
    """
    exact: dict[str, ssl.SSLContext] = {}
    wildcard: dict[str, ssl.SSLContext] = {}
    prints, shown, pending = [], [], []
    if settings.certificate is not None:
        default = server_context(settings.certificate, settings.key, settings.min_version, "tls", source,
                                 settings.http2)
        prints.append(fingerprint(settings.certificate.read_bytes()))
        shown.append(str(settings.certificate))
    else:
        first = next(site for site in settings.sites if site.acme)
        default, pem, text, _ = _acme_context(first, settings, source)
        prints.append(fingerprint(pem))
        shown.append(f"{text} (as the default)")
    for i, site in enumerate(settings.sites):
        where = site.where or f"tls.sites[{i}]"
        if site.acme:
            context, pem, text, why = _acme_context(site, settings, source)
            pending += [why] if why else []
        else:
            context = server_context(site.certificate, site.key, settings.min_version, where, source,
                                     settings.http2)
            pem, text = site.certificate.read_bytes(), str(site.certificate)
        prints.append(fingerprint(pem))
        shown.append(text)
        for name in site.names:
            if name.startswith("*."):
                wildcard[name[2:]] = context
            else:
                exact[name] = context
    hsts = ((b"strict-transport-security", settings.hsts.encode("latin-1")),) if settings.hsts else ()
    certificates = Certificates(settings, default, MappingProxyType(exact), MappingProxyType(wildcard),
                                tuple(prints), hsts, tuple(shown), tuple(pending))
    default.sni_callback = certificates._sni  # always: the SNI name is also kept for the 421 of http/sites.py
    return certificates


def describe(certificates: Certificates) -> str:
    """One line for the log: which certificates (files, or ACME sites'), by fingerprint."""
    return ", ".join(f"{text} (sha256 {fp[:23]}...)" for text, fp in zip(certificates.shown, certificates.fingerprints))


# --- ACME sites: the stored certificate, or a self-signed one until the CA has issued it ---

_FALLBACKS: dict[tuple[str, ...], bytes] = {}  # names -> PEM: one self-signed certificate per site and process


def _acme_context(site, settings: TlsSettings, source: Path) -> tuple[ssl.SSLContext, bytes, str, str]:
    """(context, PEM, what it is, why it is self-signed or "") for an ACME site."""
    from .acme.store import Store

    store = Store(settings.acme.storage, settings.acme.directory)
    path = store.certificate(site.names)
    label = ", ".join(site.names)
    try:
        pem = path.read_bytes()
        context = server_context(path, None, settings.min_version, f"{site.where}.acme", source, settings.http2)
        return context, pem, f"{path} (ACME)", ""
    except FileNotFoundError:
        why = f"{site.where} ({label}): no certificate from the CA yet: serving a self-signed one until it comes"
    except (OSError, ConfigError) as exc:
        why = f"{site.where} ({label}): cannot use {path} ({exc}): serving a self-signed certificate"
    pem = _FALLBACKS.get(site.names)
    if pem is None:
        from .acme.challenges import self_signed

        pem = _FALLBACKS[site.names] = self_signed(site.names, 7)
    return _pem_context(pem, settings, source), pem, f"{label}: self-signed (ACME pending)", why


def _pem_context(pem: bytes, settings: TlsSettings, source: Path) -> ssl.SSLContext:
    """A server context from PEM bytes (``ssl`` loads only files: a private temporary one, removed at once)."""
    import os
    import tempfile

    fd, name = tempfile.mkstemp(suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        return server_context(Path(name), None, settings.min_version, "tls", source, settings.http2)
    finally:
        os.unlink(name)


# --- the proxy as a client: HTTPS to upstream servers -------------------------

def client_context(settings: UpstreamTls, where: str, source: Path) -> ssl.SSLContext:
    """The context for connections to a group's HTTPS servers; ConfigError naming ``where.ca_file``.

    TLS 1.2 or newer, ALPN http/1.1 (so a server that also speaks h2 answers in the only version the
    pools speak), and, unless ``verify`` is off, the chain checked against ``ca_file`` or the system's
    CAs and the name against ``server_name`` (Python's ssl checks IP addresses against the
    certificate's IP entries, and sends no SNI for them, as RFC 6066 section 3 requires).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(list(ALPN[False]))  # the docstring says why: HTTP/1.1, whatever clients speak
    if not settings.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if settings.ca_file is None:
        context.load_default_certs()
        return context
    try:
        context.load_verify_locations(cafile=settings.ca_file)
    except ssl.SSLError as exc:
        reason = str(getattr(exc, "reason", None) or "not valid PEM").lower().replace("_", " ")
        raise ConfigError(f"{source}: {where}.ca_file: {settings.ca_file} holds no PEM CA certificate "
                          f"({reason})") from None
    except OSError as exc:
        raise ConfigError(f"{source}: {where}.ca_file: cannot read {settings.ca_file}: {exc.strerror}") from None
    return context


# --- redirects and headers -------------------------------------------------

def https_location(host: bytes, target: bytes, port: int) -> bytes:
    """Location of the 308 that ``redirect_http`` sends: same host and target, the TLS port.

    ``host`` is the request's effective host (already checked by http/rules.py);
    its port, if any, is the plain one and is replaced. 443 is left implicit.
    """
    if host.startswith(b"["):
        name = host[: host.find(b"]") + 1]
    else:
        name = host.partition(b":")[0]
    return b"https://" + name + (b"" if port == 443 else b":%d" % port) + target


# --- failed handshakes -----------------------------------------------------

@dataclass(frozen=True, slots=True)
class Failure:
    kind: str  # a short label for metrics
    text: str  # what the log says


# OpenSSL's reason codes (ssl.SSLError.reason) for the failures a server sees in practice.
_SSL_REASONS = {
    "HTTP_REQUEST": Failure("plain_http", "plain HTTP sent to the TLS port"),
    "HTTPS_PROXY_REQUEST": Failure("plain_http", "a proxy CONNECT sent to the TLS port"),
    "WRONG_VERSION_NUMBER": Failure("not_tls", "the client does not speak TLS"),
    "UNSUPPORTED_PROTOCOL": Failure("version", "the client offers only TLS versions older than min_version"),
    "VERSION_TOO_LOW": Failure("version", "the client offers only TLS versions older than min_version"),
    "NO_SHARED_CIPHER": Failure("cipher", "no cipher in common with the client"),
    "TLSV1_ALERT_UNKNOWN_CA": Failure("certificate", "the client does not trust the certificate"),
    "SSLV3_ALERT_BAD_CERTIFICATE": Failure("certificate", "the client rejected the certificate"),
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": Failure("certificate", "the client rejected the certificate"),
    "TLSV1_ALERT_DECRYPT_ERROR": Failure("certificate", "the client rejected the certificate"),
}
# Failures that are not OpenSSL's, by exception type (asyncio's start_tls raises these).
_ERRORS = {
    ConnectionAbortedError: Failure("timeout", "no handshake within header_timeout"),
    ConnectionResetError: Failure("closed", "the client closed the connection during the handshake"),
    TimeoutError: Failure("timeout", "no handshake within header_timeout"),
}


def classify(exc: BaseException) -> Failure:
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", None)  # set by OpenSSL errors, absent when made by hand
        known = _SSL_REASONS.get(reason or "")
        return known or Failure("other", str(reason or exc).lower().replace("_", " "))
    for kind in type(exc).__mro__:
        if kind in _ERRORS:
            return _ERRORS[kind]
    return Failure("other", str(exc) or type(exc).__name__)


class FailureLog:
    """Failed handshakes, said once: the first of each ``window`` seconds is logged with its cause, the
    others are only counted, and their count is added to the next line logged.

    A flood of port scans or plain-HTTP probes then costs one log line a minute, not one per connection.
    """

    __slots__ = ("window", "what", "_last", "_held")

    def __init__(self, window: float = 60.0, what: str = "TLS handshake failed") -> None:
        self.window = window
        self.what = what  # the start of each line
        self._last: float | None = None
        self._held: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"<FailureLog held={sum(self._held.values())}>"

    def note(self, failure: Failure, peer: str, now: float) -> str | None:
        """The line to log for this failure, or None when it is only counted."""
        if self._last is not None and now - self._last < self.window:
            self._held[failure.kind] += 1
            return None
        line = f"{self.what} from {peer}: {failure.text}"
        if self._held:
            counts = ", ".join(f"{kind} {n}" for kind, n in sorted(self._held.items()))
            line += f" ({sum(self._held.values())} more since the last such line: {counts})"
        else:
            line += f" (further failures are counted and reported at most every {self.window:g}s)"
        self._held.clear()
        self._last = now
        return line
