"""The ACME storage folder: what is kept, where, and how it is written.

Layout, under ``[tls.acme] storage``::

    <ca>/account.key                 the account's private key (P-256)
    <ca>/account.json                its registration at that CA (the account URL)
    <ca>/certificates/<name>.pem     a certificate chain with its private key after it
    <ca>/certificates/<name>.json    what was tried for it (plan.Record)
    challenges/http-01/<token>       key authorizations the plain listener answers
    challenges/tls-alpn-01/<name>.pem  validation certificates for the TLS listener

``<ca>`` is made of the directory URL (``acme-v02.api.letsencrypt.org-directory``):
an account and its certificates belong to one CA, so moving from a staging
CA to the production one starts afresh instead of serving staging
certificates. ``<name>`` is a site's first name.

A certificate and its key share one file, replaced with one ``rename(2)``: a
worker loading it while it is renewed gets the old pair or the new one,
never a new certificate beside an old key. Folders are made 0700 and every
file is written 0600 (a temporary file in the same folder, then the rename),
as an ACME account key or a certificate key must never be readable by
anyone else.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from datetime import timezone
from pathlib import Path

from .plan import Facts, Record

FOLDER_MODE = 0o700
FILE_MODE = 0o600
HTTP01 = "http-01"
TLSALPN01 = "tls-alpn-01"
# An http-01 token is base64url (RFC 8555 8.1): anything else in the path names no token we made.
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


def ca_slug(directory: str) -> str:
    """``https://acme-v02.api.letsencrypt.org/directory`` -> ``acme-v02.api.letsencrypt.org-directory``."""
    rest = directory.split("://", 1)[-1]
    return re.sub(r"[^A-Za-z0-9.]+", "-", rest).strip("-") or "ca"


def make_folder(path: Path) -> None:
    """``path`` and its missing parents, each 0700 (``Path.mkdir`` gives parents the default mode)."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=FOLDER_MODE)
        except FileExistsError:  # made meanwhile by another process
            pass


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` at once, mode 0600, creating its folder (0700) when needed."""
    make_folder(path.parent)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # O_CREAT's mode only applies to a new file
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


class Store:
    """The files of one storage folder for one CA (see the module docstring)."""

    def __init__(self, root: Path, directory: str) -> None:
        self.root = root
        self.ca = root / ca_slug(directory)

    def __repr__(self) -> str:
        return f"<Store {self.ca}>"

    # --- the account ---

    @property
    def account_key(self) -> Path:
        return self.ca / "account.key"

    @property
    def account(self) -> Path:
        return self.ca / "account.json"

    # --- certificates ---

    def certificate(self, names: tuple[str, ...]) -> Path:
        return self.ca / "certificates" / f"{names[0]}.pem"

    def record_path(self, names: tuple[str, ...]) -> Path:
        return self.ca / "certificates" / f"{names[0]}.json"

    def read_record(self, names: tuple[str, ...]) -> Record:
        try:
            data = json.loads(self.record_path(names).read_text())
            fields = {f.name for f in dataclasses.fields(Record)}
            return Record(**{k: v for k, v in data.items() if k in fields})
        except (OSError, ValueError, TypeError):
            return Record()  # none yet, or unreadable: as if nothing had been tried

    def write_record(self, names: tuple[str, ...], record: Record) -> None:
        data = {"names": list(names), **dataclasses.asdict(record)}
        write_private(self.record_path(names), json.dumps(data, indent=1).encode())

    def facts(self, names: tuple[str, ...]) -> Facts | None:
        """The stored certificate for ``names``: None when there is none (or it is not a certificate)."""
        try:
            return read_facts(self.certificate(names).read_bytes())
        except OSError:
            return None

    # --- challenges (shared by every CA: a token or a name is answered whatever CA asked) ---

    def http01(self, token: str) -> Path:
        return self.root / "challenges" / HTTP01 / token

    def alpn_folder(self) -> Path:
        return self.root / "challenges" / TLSALPN01

    def alpn(self, name: str) -> Path:
        return self.alpn_folder() / f"{name}.pem"

    def key_authorization(self, token: str) -> bytes | None:
        """What the plain listener answers for ``token``, or None when no challenge is pending for it."""
        if not TOKEN_RE.fullmatch(token):
            return None
        try:
            return self.http01(token).read_bytes()
        except OSError:
            return None

    def alpn_challenges(self) -> dict[str, Path]:
        """Server name -> the validation certificate (and key) file of each pending tls-alpn-01 challenge."""
        try:
            entries = list(os.scandir(self.alpn_folder()))
        except OSError:
            return {}
        return {entry.name[:-4]: Path(entry.path) for entry in entries if entry.name.endswith(".pem")
                and not entry.name.startswith(".")}


def read_facts(pem: bytes) -> Facts | None:
    """Names, issuer, serial and dates of the first certificate in ``pem`` (None when there is none)."""
    from cryptography import x509  # a dependency of acme; loaded only where ACME is configured

    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    return Facts(names=names, issuer=_name(cert.issuer), serial=f"{cert.serial_number:X}",
                 not_before=cert.not_valid_before_utc.replace(tzinfo=timezone.utc).timestamp(),
                 not_after=cert.not_valid_after_utc.replace(tzinfo=timezone.utc).timestamp())


def _name(name) -> str:
    """An X.509 name as people read it: its common name, else its organization, else the RFC 4514 string."""
    from cryptography.x509.oid import NameOID

    for oid in (NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME):
        found = name.get_attributes_for_oid(oid)
        if found:
            return str(found[0].value)
    return name.rfc4514_string()
