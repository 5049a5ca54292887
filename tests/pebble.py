"""Pebble, Let's Encrypt's test CA (Debian's ``pebble`` package), on loopback for the ACME tests.

``Pebble`` starts two processes: ``pebble-challtestsrv`` as the DNS server
(every name resolves to 127.0.0.1, so sites can have real-looking names) and
``pebble`` itself, whose validation authority connects to the proxy's
listeners (``httpPort``, ``tlsPort`` in its config). Its own HTTPS API gets a
certificate from a trustme CA: that CA's PEM is what the proxy's
``[tls.acme] ca_file`` trusts. Pebble issues from a root it makes at every
start; ``issuing_roots`` fetches it from the management interface, for
clients that verify what the proxy serves.
"""

from __future__ import annotations

import json
import shutil
import ssl
import urllib.request
from pathlib import Path

import trustme

from tests.helpers import Process, accepting, free_port, wait_until

INSTALLED = shutil.which("pebble") is not None and shutil.which("pebble-challtestsrv") is not None
WHY_NOT = "Debian's pebble package is not installed (apt-get install pebble)"
ENV = {
    "PEBBLE_VA_NOSLEEP": "1",  # validate at once, not after a random pause
    "PEBBLE_WFE_NONCEREJECT": "0",  # by default Pebble refuses 5% of good nonces, to test clients' retries
    "PEBBLE_AUTHZREUSE": "0",  # every order is validated: each test sees its challenges answered
    "PEBBLE_VA_ALWAYS_VALID": "0",  # validate for real: a challenge nobody answers fails
}


class Pebble:
    """A running Pebble (and its DNS server) in ``folder``, validating on ``http_port`` and ``tls_port``."""

    def __init__(self, folder: Path, http_port: int, tls_port: int, env: dict | None = None,
                 validity: int | None = None) -> None:
        """``validity``: the lifetime of the certificates it issues, in seconds (Pebble's default: 5 years)."""
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = self.folder / "pebble-api-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        leaf.private_key_pem.write_to_path(str(self.folder / "pebble-key.pem"))
        leaf.cert_chain_pems[0].write_to_path(str(self.folder / "pebble-cert.pem"))
        self.port, self.management, self.dns = free_port(), free_port(), free_port()
        self.directory = f"https://127.0.0.1:{self.port}/dir"
        self.config = self.folder / "pebble.json"
        self.settings = {
            "listenAddress": f"127.0.0.1:{self.port}", "managementListenAddress": f"127.0.0.1:{self.management}",
            "certificate": str(self.folder / "pebble-cert.pem"), "privateKey": str(self.folder / "pebble-key.pem"),
            "httpPort": http_port, "tlsPort": tls_port, "ocspResponderURL": "",
            "externalAccountBindingRequired": False}
        if validity is not None:
            self.settings["certificateValidityPeriod"] = validity
        self.env = {**ENV, **(env or {})}
        self.dns_server = Process(["pebble-challtestsrv", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
                                   "-dns01", f"127.0.0.1:{self.dns}", "-http01", "", "-https01", "",
                                   "-tlsalpn01", "", "-management", f"127.0.0.1:{free_port()}"])
        self.process: Process | None = None
        self.start()

    def start(self, **settings) -> None:
        """Start (or start again, on the same ports: a new CA, with a new root and no accounts); ``settings``
        replace keys of its config (``httpPort=...``: validate http-01 elsewhere)."""
        self.settings.update(settings)
        self.config.write_text(json.dumps({"pebble": self.settings}))
        self.process = Process(["pebble", "-config", str(self.config), "-dnsserver", f"127.0.0.1:{self.dns}"],
                               env=self.env)
        wait_until(lambda: accepting(self.port) and accepting(self.management) or self.process.proc.poll() is not None,
                   what="pebble to listen")
        if self.process.proc.poll() is not None:
            raise RuntimeError(f"pebble exited:\n{self.process.output()}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def close(self) -> None:
        self.stop()
        self.dns_server.stop()

    def issuing_roots(self) -> str:
        """The PEM of the root Pebble issues from (it makes a new one at every start)."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        with urllib.request.urlopen(f"https://127.0.0.1:{self.management}/roots/0", context=context,
                                    timeout=10) as answer:
            return answer.read().decode("ascii")

    def output(self) -> str:
        return self.process.output() if self.process is not None else ""
