"""When to ask the CA: renewal times, and the backoff after a failure. Pure functions; the caller gives the time.

Strategy: a certificate is renewed when ``renew_before`` seconds of its
lifetime remain, or by default when a third remains (what certbot and Caddy
do: 30 days of Let's Encrypt's 90, and still 30 days to retry before it
expires). A site with no certificate yet, or one whose names changed, asks at
once. A failed attempt is retried after ``retry_delay``, doubled after every
further failure up to ``MAX_BACKOFF`` (bounded, so a CA that was down for a
day is asked again within hours of coming back), and never sooner than an
hour after the CA said "rate limited" (RFC 8555 6.6): asking again sooner
only prolongs the limit.

``renew_before`` at least as long as the lifetime makes every certificate
due the moment it is issued. It is honoured once (the certificate obtained
under another setting is renewed at once), and the certificate obtained
under it is then renewed when a third of its lifetime has passed, instead of
in a loop that would reach the CA's duplicate-certificate limit within hours.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

MAX_BACKOFF = 6 * 3600.0
RATE_LIMITED_WAIT = 3600.0


@dataclass(frozen=True, slots=True)
class Facts:
    """What the proxy needs to know of a certificate it holds (store.read_certificate reads them)."""

    names: tuple[str, ...]  # its DNS subjectAltNames, in order
    issuer: str
    serial: str  # hex, as openssl prints it
    not_before: float  # seconds since the epoch
    not_after: float

    @property
    def lifetime(self) -> float:
        return self.not_after - self.not_before


@dataclass(frozen=True, slots=True)
class Record:
    """What was tried for one certificate (store.py keeps it beside the certificate, so a restart, or a
    manager process that died, goes on with the same backoff instead of asking the CA at once)."""

    failures: int = 0  # failed attempts since the last success
    last_attempt: float | None = None
    last_error: str = ""
    retry_at: float | None = None  # after a failure: not before then
    last_success: float | None = None
    serial: str = ""  # of the certificate last obtained
    renew_before: float | None = None  # the setting it was obtained under (None: the default third)


@dataclass(frozen=True, slots=True)
class Due:
    at: float  # when to ask the CA (now or earlier: at once)
    why: str


def renewal_time(facts: Facts, renew_before: float | None) -> float:
    """When ``facts``' certificate enters its renewal window."""
    margin = facts.lifetime / 3 if renew_before is None else renew_before
    return facts.not_after - margin


def due(names: tuple[str, ...], facts: Facts | None, record: Record, renew_before: float | None) -> Due:
    """When to ask the CA next for the certificate of ``names``, and why."""
    if facts is None:
        plan = Due(float("-inf"), "no certificate yet")
    elif set(facts.names) != set(names):
        plan = Due(float("-inf"), f"the site's names changed (the certificate has {', '.join(facts.names)})")
    else:
        at = renewal_time(facts, renew_before)
        why = "renewal"
        if at <= facts.not_before and record.serial == facts.serial and record.renew_before == renew_before:
            at = facts.not_before + facts.lifetime / 3
            why = "renewal (renew_before is longer than the certificate's lifetime: once a third of it has passed)"
        plan = Due(at, why)
    if record.failures and record.retry_at is not None and record.retry_at > plan.at:
        plan = Due(record.retry_at, f"{plan.why}, try {record.failures + 1} after {record.failures} failed")
    return plan


def backoff(failures: int, first: float, rate_limited: bool = False) -> float:
    """Seconds to wait after the ``failures``-th failure in a row (1 for the first)."""
    delay = min(first * 2 ** max(failures - 1, 0), MAX_BACKOFF)
    return max(delay, RATE_LIMITED_WAIT) if rate_limited else delay


def failed(record: Record, now: float, error: str, first_delay: float, rate_limited: bool = False) -> Record:
    failures = record.failures + 1
    return replace(record, failures=failures, last_attempt=now, last_error=error,
                   retry_at=now + backoff(failures, first_delay, rate_limited))


def succeeded(record: Record, now: float, facts: Facts, renew_before: float | None) -> Record:
    return replace(record, failures=0, last_attempt=now, last_error="", retry_at=None, last_success=now,
                   serial=facts.serial, renew_before=renew_before)


def too_eager(facts: Facts, renew_before: float | None) -> bool:
    """``renew_before`` covers the whole lifetime: worth a warning when a certificate comes in."""
    return renew_before is not None and renew_before >= facts.lifetime
