"""The challenges the proxy answers itself, and the self-signed certificates it makes.

**http-01** (RFC 8555 8.3): the CA fetches
``http://<name>/.well-known/acme-challenge/<token>`` on port 80 and expects the
key authorization (``token.thumbprint``) as the body. The plain listener
answers it (http/decide.py) from ``store.Store.key_authorization``.

**tls-alpn-01** (RFC 8737): the CA opens a TLS connection to port 443 with
the name in SNI and ``acme-tls/1`` as the only ALPN protocol, and expects a
self-signed certificate for that one name carrying the SHA-256 of the key
authorization in a critical acmeIdentifier extension. Python's ``ssl`` chooses
a certificate by SNI before ALPN is known, so a worker with a tls-alpn-01
challenge pending reads the ClientHello itself first (``client_hello``, below)
and shakes hands with the validation certificate only when the client asks
for ``acme-tls/1``: browsers asking for the same name meanwhile still get the
site's certificate.

The ``acme`` library (5.x) no longer ships a tls-alpn-01 challenge class; the
two below plug it into the library's own registry, so orders that offer it
parse into a challenge with a ``response`` like http-01's.
"""

from __future__ import annotations

import datetime
import hashlib
import struct
from dataclasses import dataclass

ACME_TLS_1 = "acme-tls/1"
ACME_IDENTIFIER_OID = "1.3.6.1.5.5.7.1.31"  # id-pe-acmeIdentifier, RFC 8737 section 6.1
MAX_HELLO = 16 * 1024 + 5  # a ClientHello larger than one full record is not worth reading for a challenge


def register_tls_alpn() -> None:
    """Teach the acme library the tls-alpn-01 challenge (once; a library that knows it already is left as is)."""
    from acme import challenges

    if "tls-alpn-01" in challenges.Challenge.TYPES:
        return

    class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
        """The client's answer: an empty object (RFC 8555 7.5.1); the key authorization is in the certificate."""

        typ = "tls-alpn-01"

    class TLSALPN01(challenges.KeyAuthorizationChallenge):
        response_cls = TLSALPN01Response
        typ = TLSALPN01Response.typ

        def validation(self, account_key, **unused) -> str:
            return self.key_authorization(account_key)

    challenges.ChallengeResponse.register(TLSALPN01Response)
    challenges.Challenge.register(TLSALPN01)


# --- self-signed certificates: tls-alpn-01 validation and the fallback before the first certificate ---

def self_signed(names: tuple[str, ...], days: float, acme_identifier: bytes | None = None) -> bytes:
    """A P-256 key and a self-signed end-entity certificate for ``names``, as one PEM (chain then key).

    With ``acme_identifier`` (the SHA-256 of a key authorization), the certificate carries it in the critical
    acmeIdentifier extension: a tls-alpn-01 validation certificate (RFC 8737 section 3).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    if acme_identifier is not None:
        # The extension's value is an ASN.1 OCTET STRING holding the 32-byte digest: tag 4, length 32.
        value = b"\x04\x20" + acme_identifier
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(ACME_IDENTIFIER_OID), value), critical=True)
    cert = builder.sign(key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def alpn_certificate(name: str, key_authorization: str) -> bytes:
    """The tls-alpn-01 validation certificate for ``name`` (RFC 8737 section 3), with its key."""
    return self_signed((name,), 7, hashlib.sha256(key_authorization.encode("ascii")).digest())


# --- reading a ClientHello (RFC 8446 4.1.2, the same framing in TLS 1.2): the SNI name and ALPN list ---

@dataclass(frozen=True, slots=True)
class Hello:
    server_name: str | None  # lower-cased
    alpn: tuple[str, ...]


class NotHello(ValueError):
    """The bytes are not the start of a TLS ClientHello (OpenSSL will say what they are)."""


_RECORD = struct.Struct("!BHH")  # content type, legacy version, length
_HANDSHAKE = 22
_CLIENT_HELLO = 1
_SNI, _ALPN = 0, 16


def client_hello(data: bytes) -> Hello | None:
    """The SNI name and ALPN protocols of the ClientHello ``data`` begins with; None while it is incomplete.

    The hello may span several handshake records; they are joined first. Raises NotHello for anything
    else, or for a hello larger than MAX_HELLO.
    """
    body = bytearray()
    offset = 0
    while True:
        if len(data) - offset < _RECORD.size:
            return _incomplete(data)
        kind, _, length = _RECORD.unpack_from(data, offset)
        if kind != _HANDSHAKE or length == 0:
            raise NotHello("not a TLS handshake record")
        if len(data) - offset - _RECORD.size < length:
            return _incomplete(data)
        body += data[offset + _RECORD.size: offset + _RECORD.size + length]
        offset += _RECORD.size + length
        if len(body) >= 4:
            if body[0] != _CLIENT_HELLO:
                raise NotHello("not a ClientHello")
            size = int.from_bytes(body[1:4], "big")
            if len(body) >= 4 + size:
                return _parse_hello(bytes(body[4:4 + size]))


def _incomplete(data: bytes) -> None:
    if len(data) > MAX_HELLO:
        raise NotHello("ClientHello too large")
    return None


class _Reader:
    __slots__ = ("data", "at")

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise NotHello("truncated ClientHello")
        chunk = self.data[self.at:self.at + n]
        self.at += n
        return chunk

    def vector(self, length_bytes: int) -> bytes:
        return self.take(int.from_bytes(self.take(length_bytes), "big"))

    def done(self) -> bool:
        return self.at >= len(self.data)


def _parse_hello(body: bytes) -> Hello:
    reader = _Reader(body)
    reader.take(2 + 32)  # legacy_version, random
    reader.vector(1)  # legacy_session_id
    reader.vector(2)  # cipher_suites
    reader.vector(1)  # legacy_compression_methods
    server_name, alpn = None, ()
    if reader.done():
        return Hello(None, ())
    extensions = _Reader(reader.vector(2))
    while not extensions.done():
        kind = int.from_bytes(extensions.take(2), "big")
        data = _Reader(extensions.vector(2))
        if kind == _SNI:  # RFC 6066 3: a list of (type, name); type 0 is host_name
            names = _Reader(data.vector(2))
            while not names.done():
                name_type = names.take(1)[0]
                name = names.vector(2)
                if name_type == 0 and server_name is None:
                    server_name = name.decode("ascii", "replace").lower().rstrip(".")
        elif kind == _ALPN:  # RFC 7301 3.1: a list of length-prefixed protocol names
            protocols = _Reader(data.vector(2))
            found = []
            while not protocols.done():
                found.append(protocols.vector(1).decode("ascii", "replace"))
            alpn = tuple(found)
    return Hello(server_name, alpn)


def is_validation(hello: Hello) -> bool:
    """An ACME server's tls-alpn-01 validation: it offers ``acme-tls/1`` alone (RFC 8737 section 3)."""
    return hello.alpn == (ACME_TLS_1,) and hello.server_name is not None
