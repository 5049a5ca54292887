"""One conversation with the CA, through the ``acme`` library: an account, an order, its challenges, a certificate.

``obtain`` is synchronous (the library speaks through ``requests``) and runs
in the certificate manager's process only (server/acme.py). It:

1. reads the CA's directory, then uses the stored account (``account.json``)
   or registers one, agreeing to the CA's terms of service (setting
   ``[tls.acme]`` is that agreement, as it is with Caddy);
2. orders a certificate for the site's names with a fresh P-256 key;
3. for each authorization, picks the first of ``[tls.acme] challenges`` the
   CA offers, publishes what the listeners must answer (``publish``), and
   tells the CA to validate;
4. polls until the order is valid, fetches the chain, and withdraws the
   challenges (also when anything failed).

Every failure becomes ``CaError`` with one line saying what the CA said (its
problem document's type and detail, RFC 8555 6.7) or why it could not be
reached: that line is what the log and the status page show.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Callable

from .. import __version__
from .challenges import alpn_certificate, register_tls_alpn
from .store import HTTP01, TLSALPN01, Store, remove, write_private

log = logging.getLogger("proxy")

ORDER_DEADLINE = 90.0  # seconds for validation and issuance once the challenges are answered
NETWORK_TIMEOUT = 30  # seconds for any one request to the CA


class CaError(Exception):
    """An attempt failed; ``str()`` is the one line to log. ``rate_limited``: the CA said so (RFC 8555 6.6)."""

    def __init__(self, message: str, rate_limited: bool = False) -> None:
        super().__init__(message)
        self.rate_limited = rate_limited


@dataclass(frozen=True)
class Settings:
    """What a conversation needs of ``[tls.acme]`` (a plain value, so tests and the config need not meet)."""

    directory: str
    email: str
    ca_file: str  # "" for the system's CAs
    challenges: tuple[str, ...]


Publish = Callable[[], None]  # tells the workers the challenge files changed


def obtain(settings: Settings, store: Store, names: tuple[str, ...], published: Publish) -> bytes:
    """A certificate chain for ``names`` with its new private key after it (PEM); CaError when it fails."""
    import requests
    from acme import errors, messages

    register_tls_alpn()
    try:
        return _obtain(settings, store, names, published)
    except CaError:
        raise
    except errors.ValidationError as exc:
        raise CaError(_validation_failures(exc)) from None
    except messages.Error as exc:
        raise CaError(_problem(exc), rate_limited=exc.code == "rateLimited") from None
    except errors.TimeoutError:
        raise CaError(f"the CA did not finish validating within {ORDER_DEADLINE:g}s") from None
    except errors.Error as exc:
        raise CaError(f"{type(exc).__name__}: {exc}") from None
    except requests.RequestException as exc:
        raise CaError(_network(exc, settings.directory)) from None
    except OSError as exc:  # the storage folder
        raise CaError(f"cannot write {exc.filename}: {exc.strerror}") from None
    except ValueError as exc:  # an answer that is not what RFC 8555 says (not JSON, a field missing)
        raise CaError(f"unexpected answer from the CA: {exc}") from None


def _obtain(settings: Settings, store: Store, names: tuple[str, ...], published: Publish) -> bytes:
    from acme import client as acme_client, crypto_util, messages

    key = _account_key(store)
    net = acme_client.ClientNetwork(key, alg=_alg(), verify_ssl=settings.ca_file or True,
                                    user_agent=f"twotier-proxy/{__version__}", timeout=NETWORK_TIMEOUT)
    directory = acme_client.ClientV2.get_directory(settings.directory, net)
    ca = acme_client.ClientV2(directory, net)
    _account(ca, settings, store, known=True)
    certificate_key = _new_key()
    csr = crypto_util.make_csr(certificate_key, list(names))
    try:
        order = ca.new_order(csr)
    except messages.Error as exc:
        if exc.code != "accountDoesNotExist":
            raise
        # The CA forgot the account (a test CA restarted, an account deactivated elsewhere): register again.
        log.warning("acme: %s: the CA does not know the stored account (%s); registering again",
                    settings.directory, _problem(exc))
        _account(ca, settings, store, known=False)
        order = ca.new_order(csr)
    published_files = []
    try:
        for authz in order.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                continue  # validated earlier for this account (CAs reuse authorizations for a while)
            published_files.append(_answer(ca, key, settings, store, authz, published))
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_DEADLINE)
        order = ca.poll_and_finalize(order, deadline)
    finally:
        for path in published_files:
            remove(path)
        if published_files:
            published()
    return order.fullchain_pem.encode("ascii") + certificate_key


def _answer(ca, key, settings: Settings, store: Store, authz, published: Publish):
    """Publish the first challenge of ``settings.challenges`` that the CA offers, and ask it to validate."""
    name = authz.body.identifier.value
    offered = {challenge.chall.typ: challenge for challenge in authz.body.challenges}
    chosen = next((kind for kind in settings.challenges if kind in offered), None)
    if chosen is None:
        raise CaError(f"{name}: the CA offers {', '.join(sorted(offered))}; [tls.acme] challenges allows "
                      f"{', '.join(settings.challenges)}")
    challenge = offered[chosen]
    key_authorization = challenge.chall.key_authorization(key)
    if chosen == HTTP01:
        path = store.http01(challenge.chall.encode("token"))
        write_private(path, key_authorization.encode("ascii"))
    else:
        path = store.alpn(name)
        write_private(path, alpn_certificate(name, key_authorization))
    published()  # the workers see it before the CA is told to look
    log.info("acme: %s: answering %s", name, chosen)
    ca.answer_challenge(challenge, challenge.chall.response(key))
    return path


# --- the account ---

def _alg():
    import josepy

    return josepy.ES256


def _new_key() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _account_key(store: Store):
    """The stored account key, or a new one (written 0600 before it is ever used)."""
    import josepy
    from cryptography.hazmat.primitives import serialization

    try:
        pem = store.account_key.read_bytes()
    except FileNotFoundError:
        pem = _new_key()
        write_private(store.account_key, pem)
        remove(store.account)  # a registration belongs to the key it was made with
    return josepy.JWKEC(key=serialization.load_pem_private_key(pem, password=None))


def _account(ca, settings: Settings, store: Store, known: bool) -> None:
    """Use the stored registration (``known``), or register the account key with the CA and store it."""
    from acme import errors, messages

    if known:
        try:
            ca.net.account = messages.RegistrationResource.json_loads(store.account.read_text())
            return
        except (OSError, ValueError):
            pass
    # A new-account request is signed with the key itself (RFC 8555 6.2: "jwk", not "kid"): the library
    # signs with the account URL whenever it holds an account, so a forgotten one is dropped first.
    ca.net.account = None
    registration = messages.NewRegistration.from_data(email=settings.email or None, terms_of_service_agreed=True)
    try:
        account = ca.new_account(registration)
    except errors.ConflictError as exc:  # this key has an account there already: its URL is all we need
        account = messages.RegistrationResource(uri=exc.location, body=messages.Registration())
        ca.net.account = account
    write_private(store.account, account.json_dumps(indent=1).encode())
    log.info("acme: %s: account %s registered%s", settings.directory, account.uri,
             f" for {settings.email}" if settings.email else "")


# --- what a failure says ---

def _problem(error) -> str:
    """An RFC 8555 problem document in one line: its short type, its detail, and its subproblems'."""
    text = f"{error.code or error.typ}: {error.detail or error.title or error.description or 'no detail'}"
    for sub in error.subproblems or ():
        identifier = f"{sub.identifier.value}: " if sub.identifier is not None else ""
        text += f"; {identifier}{sub.code or sub.typ}: {sub.detail}"
    return text


def _validation_failures(exc) -> str:
    """Which names failed validation, by which challenge, and what the CA saw."""
    parts = []
    for authz in exc.failed_authzrs:
        for challenge in authz.body.challenges:
            if challenge.error is not None:
                parts.append(f"{authz.body.identifier.value}: {challenge.chall.typ} failed: {_problem(challenge.error)}")
    return "; ".join(parts) or "validation failed"


_ERRNO_RE = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")
_SSL_RE = re.compile(r"certificate verify failed: ([^'\")(]+)")


def _network(exc: OSError, directory: str) -> str:
    """Why the CA could not be reached, without requests' nested reprs."""
    text = str(exc)
    found = _SSL_RE.search(text)
    if found:
        return (f"cannot reach the CA at {directory}: its certificate is not trusted ({found[1].strip()}): "
                "for a private CA, give its root in [tls.acme] ca_file")
    found = _ERRNO_RE.search(text)
    reason = found[1].strip() if found else (getattr(exc, "strerror", None) or type(exc).__name__)
    if "timed out" in text.lower() and not found:
        reason = "timed out"
    return f"cannot reach the CA at {directory}: {reason}"


def registration_uri(store: Store) -> str | None:
    """The stored account's URL, for status (None before the first registration)."""
    try:
        return json.loads(store.account.read_text()).get("uri")
    except (OSError, ValueError, AttributeError):
        return None


def elapsed(since: float) -> str:
    return f"{time.monotonic() - since:.1f}s"
