"""``proxy gencert``: a self-signed certificate for trying TLS locally, made by the ``openssl`` command.

The standard library cannot write X.509 certificates, and a cryptography
package as a runtime dependency would be a heavy price for a development
helper, so this runs the same ``openssl req`` command the README shows. The
certificate is an end-entity one (CA:FALSE, serverAuth) valid for the names
given, with a P-256 key; browsers will still warn, since nobody vouches for it.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from pathlib import Path

DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")


def subject_alt_names(names: list[str]) -> str:
    """``["localhost", "127.0.0.1"]`` -> ``"DNS:localhost,IP:127.0.0.1"``."""
    out = []
    for name in names:
        try:
            ipaddress.ip_address(name)
            out.append(f"IP:{name}")
        except ValueError:
            out.append(f"DNS:{name}")
    return ",".join(out)


def openssl_command(cert: Path, key: Path, names: list[str], days: int) -> list[str]:
    return ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-days", str(days), "-subj", f"/CN={names[0]}",
            "-addext", f"subjectAltName={subject_alt_names(names)}",
            "-addext", "basicConstraints=critical,CA:FALSE",
            "-addext", "extendedKeyUsage=serverAuth",
            "-keyout", str(key), "-out", str(cert)]


def generate(folder: Path, names: list[str], days: int) -> tuple[Path, Path]:
    """Write folder/cert.pem and folder/key.pem (mode 600); OSError with a one-line reason on failure."""
    if shutil.which("openssl") is None:
        raise OSError("the openssl command is not installed (Debian: apt-get install openssl)")
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    for path in (cert, key):
        if path.exists():
            raise OSError(f"{path} exists already; remove it or choose another --out folder")
    result = subprocess.run(openssl_command(cert, key, names, days), capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["failed"])[-1]
        raise OSError(f"openssl: {last}")
    os.chmod(key, 0o600)
    return cert, key
