"""Automatic HTTPS at run time: the certificate manager process, and what each worker does with its work.

**One manager, never one per worker.** The master forks one certificate
manager (``manager_main``) when a site has ``acme = true``, restarts it if it
dies, stops it with the workers, and replaces it on a reload. It alone talks
to the CA (acme/client.py), on a plain synchronous loop: for each site, when
acme/plan.py says the certificate is due, one attempt; then it sleeps until
the next one is due. An attempt that fails is logged once, with what the CA
said, and recorded beside the certificate (so a new manager goes on with the
same backoff); the certificate already held is served meanwhile, expiring or
not. A lock on the storage folder keeps two managers (a reload's old and new
one, or two proxies sharing the folder) from ordering the same certificate.

**Workers learn of a change from two counters in shared memory**
(``Notices``): the manager bumps ``certificates`` after it stored a new
certificate, and ``challenges`` after it published or withdrew a
tls-alpn-01 validation certificate. A worker compares them at the start of
each TLS handshake (``AcmeEdge.check``: two reads of shared memory) and, when
one moved, reads the storage folder again: new handshakes get the new
certificate, connections already open keep the one they shook hands with, and
no process restarts. (http-01 needs no notice: a request for a challenge reads
its file, and the manager writes the file before it asks the CA to look.)
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import signal
import ssl
import time
from datetime import datetime, timezone
from pathlib import Path

from ..acme import plan, status
from ..acme.challenges import Hello, is_validation
from ..acme.client import CaError, Settings, obtain
from ..acme.store import Store, make_folder, read_facts, write_private
from ..config import AcmeSettings, Config, TlsSite, acme_sites
from ..errors import ConfigError

log = logging.getLogger("proxy")

MAX_SLEEP = 3600.0  # plan again at least hourly: the wall clock may have jumped (a suspended VM, a fixed clock)
NAP = 5.0  # sleeping is done in naps this long, to notice a master that is gone
LOCK_RETRY = 5.0


class Notices:
    """Two counters in an anonymous shared mapping, made by the master before it forks: the only writer is
    the certificate manager, so a counter needs no lock (a reader sees the old value or the new one)."""

    __slots__ = ("_map", "_counts")

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, mmap.PAGESIZE)
        self._counts = memoryview(self._map).cast("Q")

    def __repr__(self) -> str:
        return f"<Notices certificates={self.certificates} challenges={self.challenges}>"

    @property
    def certificates(self) -> int:
        return self._counts[0]

    @property
    def challenges(self) -> int:
        return self._counts[1]

    def certificates_changed(self) -> None:
        self._counts[0] += 1

    def challenges_changed(self) -> None:
        self._counts[1] += 1


def store_of(settings: AcmeSettings) -> Store:
    return Store(settings.storage, settings.directory)


# --- the manager process ---

class Stop(BaseException):
    """SIGTERM reached the manager: whatever it was doing (a request to the CA, a sleep) ends here (a
    BaseException, so that no ``except Exception`` on the way takes it for a failed attempt)."""


def _stop(signum, frame) -> None:
    raise Stop


class Manager:
    """The certificate manager's loop (see the module docstring); ``clock`` is the wall clock."""

    def __init__(self, config: Config, notices: Notices, clock=time.time) -> None:
        self.settings = config.tls.acme
        self.sites = acme_sites(config)
        self.notices = notices
        self.clock = clock
        self.store = store_of(self.settings)
        self.client = Settings(self.settings.directory, self.settings.email,
                               str(self.settings.ca_file) if self.settings.ca_file else "",
                               self.settings.challenges)

    def __repr__(self) -> str:
        return f"<Manager {self.settings.directory} sites={[site.names[0] for site in self.sites]}>"

    def run(self, parent: int | None = None) -> None:
        """Until Stop (SIGTERM, or ``parent`` gone): each certificate when it is due, sleeping in between."""
        with self._locked():
            self._tell_held()
            while True:
                now = self.clock()
                for site in self.sites:
                    due = self._due(site)
                    if due.at <= now:
                        self.attempt(site, due)
                wake = min(min(self._due(site).at for site in self.sites), self.clock() + MAX_SLEEP)
                while (left := wake - self.clock()) > 0:
                    time.sleep(min(left, NAP))
                    if parent is not None and os.getppid() != parent:
                        log.warning("acme: certificate manager %d: the master process is gone; stopping",
                                    os.getpid())
                        raise Stop

    def _tell_held(self) -> None:
        """At the start: what is stored and not due, so the log says why the CA is not asked."""
        now = self.clock()
        for site in self.sites:
            facts, due = self.store.facts(site.names), self._due(site)
            if facts is not None and due.at > now:
                log.info("acme: %s: stored certificate serial %s from %s, valid until %s; next attempt %s (%s)",
                         ", ".join(site.names), facts.serial, facts.issuer, _when(facts.not_after), _when(due.at),
                         due.why)

    def _due(self, site: TlsSite) -> plan.Due:
        return plan.due(site.names, self.store.facts(site.names), self.store.read_record(site.names),
                        self.settings.renew_before)

    def attempt(self, site: TlsSite, due: plan.Due) -> None:
        """One try at a certificate for ``site``: stored and announced, or a failure recorded and logged."""
        names = site.names
        record = self.store.read_record(names)
        label = ", ".join(names)
        log.info("acme: %s: asking %s for a certificate (%s)", label, self.settings.directory, due.why)
        started = time.monotonic()
        try:
            pem = obtain(self.client, self.store, names, self.notices.challenges_changed)
            facts = read_facts(pem)
            if facts is None:
                raise CaError("the CA's answer holds no certificate")
            write_private(self.store.certificate(names), pem)
        except CaError as exc:
            self._failed(site, record, str(exc), started, exc.rate_limited)
            return
        except OSError as exc:  # the storage folder
            self._failed(site, record, f"cannot write {exc.filename}: {exc.strerror}", started)
            return
        except Exception as exc:  # noqa: BLE001 - a bug must not become a loop of immediate retries
            log.exception("acme: %s: attempt failed", label)
            self._failed(site, record, f"internal error: {type(exc).__name__}: {exc}", started)
            return
        now = self.clock()
        self.store.write_record(names, plan.succeeded(record, now, facts, self.settings.renew_before))
        self.notices.certificates_changed()
        renew = plan.due(names, facts, self.store.read_record(names), self.settings.renew_before)
        log.info("acme: %s: certificate obtained in %.1fs: serial %s from %s, valid until %s; next renewal %s",
                 label, time.monotonic() - started, facts.serial, facts.issuer, _when(facts.not_after),
                 _when(renew.at))
        if plan.too_eager(facts, self.settings.renew_before):
            log.warning("acme: %s: renew_before (%gs) is not shorter than the certificate's lifetime (%gs): it is "
                        "renewed when a third of its lifetime has passed", label, self.settings.renew_before,
                        facts.lifetime)

    def _failed(self, site: TlsSite, record: plan.Record, error: str, started: float,
                rate_limited: bool = False) -> None:
        now = self.clock()
        record = plan.failed(record, now, error, self.settings.retry_delay, rate_limited)
        try:
            self.store.write_record(site.names, record)
        except OSError as exc:
            log.error("acme: cannot write %s: %s", exc.filename, exc.strerror)
        held = self.store.facts(site.names)
        serving = ("still serving the certificate valid until " + _when(held.not_after)) if held else \
            "still serving a self-signed certificate"
        log.error("acme: %s: attempt %d failed after %.1fs: %s; %s; next attempt in %s", ", ".join(site.names),
                  record.failures, time.monotonic() - started, error, serving, _duration(record.retry_at - now))

    def _locked(self):
        return _StorageLock(self.store.root / "lock")


class _StorageLock:
    """An exclusive flock on the storage folder, waited for (and said so) when another manager holds it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self):
        make_folder(self.path.parent)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        said = False
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if not said:
                    log.info("acme: %s is locked by another certificate manager; waiting for it", self.path)
                    said = True
                time.sleep(LOCK_RETRY)

    def __exit__(self, *exc) -> None:
        os.close(self.fd)  # closing releases the lock


def manager_main(config: Config, notices: Notices) -> int:
    """The certificate manager process (forked by the master): runs until SIGTERM."""
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)  # Ctrl-C and a reload reach the process group; the master decides
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGTERM, _stop)
    from .master import HANDLED

    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)  # blocked by the master around fork()
    manager = Manager(config, notices)
    log.info("acme: certificate manager %d: %d site(s) from %s", os.getpid(), len(manager.sites),
             manager.settings.directory)
    try:
        manager.run(parent=os.getppid())
    except Stop:
        pass
    except OSError as exc:  # the storage folder cannot be made or locked
        log.error("acme: %s: %s; the certificate manager stops", exc.filename or "storage", exc.strerror)
        return 1
    return 0


def _when(timestamp: float) -> str:
    if timestamp == float("-inf"):
        return "now"
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.3g}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


# --- a worker's side ---

class AcmeEdge:
    """What one worker knows of ACME: the counters it last acted on, and the pending tls-alpn-01 validations
    (server name -> the context with the validation certificate)."""

    __slots__ = ("settings", "sites", "notices", "store", "seen_certificates", "seen_challenges", "alpn",
                 "min_version")

    def __init__(self, config: Config, notices: Notices | None, certificates_version: int) -> None:
        self.settings = settings = config.tls.acme
        self.sites = acme_sites(config)
        self.notices = notices
        self.store = store_of(settings)
        self.seen_certificates = certificates_version
        self.seen_challenges = -1  # read the folder once: a validation may be pending already
        self.alpn: dict[str, ssl.SSLContext] = {}
        self.min_version = config.tls.min_version

    def __repr__(self) -> str:
        return f"<AcmeEdge seen={self.seen_certificates}/{self.seen_challenges} alpn={sorted(self.alpn)}>"

    def check(self, worker) -> None:
        """At a handshake: take up a new certificate or new validations, if the manager announced any."""
        notices = self.notices
        if notices is None:
            return
        if notices.certificates != self.seen_certificates:
            self._reload(worker, notices.certificates)
        if notices.challenges != self.seen_challenges:
            self.seen_challenges = notices.challenges
            self.alpn = self._validations()

    def _reload(self, worker, version: int) -> None:
        from ..tls import load_certificates

        self.seen_certificates = version  # also when it fails: one error per change, not one per handshake
        try:
            worker.tls = load_certificates(worker.config.tls, worker.config.path)
        except ConfigError as exc:
            log.error("acme: worker %d keeps its certificates: %s", os.getpid(), exc)
            return
        log.info("acme: worker %d took up the new certificates", os.getpid())

    def _validations(self) -> dict[str, ssl.SSLContext]:
        from ..acme.challenges import ACME_TLS_1
        from ..tls import VERSIONS

        found = {}
        for name, path in self.store.alpn_challenges().items():
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = VERSIONS[self.min_version]
            context.set_alpn_protocols([ACME_TLS_1])
            try:
                context.load_cert_chain(path)
            except (OSError, ssl.SSLError):  # withdrawn meanwhile, or being replaced
                continue
            found[name] = context
        return found

    def status(self) -> list[dict]:
        """The status page's "certificates" (acme/status.py; read from the storage folder)."""
        return status.certificates(self.settings, self.sites, time.time())

    def samples(self) -> list[str]:
        """The metrics page's ACME samples."""
        return status.prometheus(self.settings, self.sites)

    def validation_context(self, hello: Hello) -> ssl.SSLContext | None:
        """The context for a tls-alpn-01 validation (RFC 8737: ALPN acme-tls/1 alone, SNI the name)."""
        if not is_validation(hello):
            return None
        return self.alpn.get(hello.server_name)
