"""What the proxy says of its ACME certificates: the status page, the metrics, and ``proxy acme status``.

Everything here is read from the storage folder (the certificate files and
the record of what was tried beside each, acme/store.py): never a request to
the CA, so a status page or ``proxy acme status`` works while the CA is down.
A site without a stored certificate is served a self-signed one (tls.py):
``issuer`` is then null and ``self_signed`` true.
"""

from __future__ import annotations

from ..accesslog import iso8601
from ..metrics import _label
from . import plan
from .store import Store


def _when(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return "now" if timestamp == float("-inf") else iso8601(timestamp)


def certificates(settings, sites, now: float) -> list[dict]:
    """One entry per ``acme = true`` site (``sites``: config.TlsSite values), in the order of [[sites]]."""
    store = Store(settings.storage, settings.directory)
    rows = []
    for site in sites:
        facts = store.facts(site.names)
        record = store.read_record(site.names)
        due = plan.due(site.names, facts, record, settings.renew_before)
        rows.append({
            "names": list(site.names),
            "self_signed": facts is None,
            "issuer": facts.issuer if facts else None,
            "serial": facts.serial if facts else None,
            "not_after": _when(facts.not_after) if facts else None,
            "expires_in_seconds": round(facts.not_after - now) if facts else None,
            "last_attempt": _when(record.last_attempt),
            "last_success": _when(record.last_success),
            "failures": record.failures,
            "last_error": record.last_error,
            "next_attempt": _when(max(due.at, now) if due.at != float("-inf") else due.at),
            "next_attempt_why": due.why,
        })
    return rows


def prometheus(settings, sites) -> list[str]:
    """The exposition-format samples: expiry, last attempt and failures of each certificate, by its names."""
    store = Store(settings.storage, settings.directory)
    series = {
        "proxy_acme_certificate_expiry_timestamp_seconds": "When each ACME certificate expires (0: none yet, "
                                                           "a self-signed one is served).",
        "proxy_acme_last_attempt_timestamp_seconds": "When the CA was last asked for each certificate (0: never).",
        "proxy_acme_failures": "Failed attempts in a row for each certificate (0 after a success).",
    }
    samples: dict[str, list[str]] = {name: [] for name in series}
    for site in sites:
        facts = store.facts(site.names)
        record = store.read_record(site.names)
        label = f'names="{_label(",".join(site.names))}",issuer="{_label(facts.issuer if facts else "")}"'
        samples["proxy_acme_certificate_expiry_timestamp_seconds"].append(
            f"proxy_acme_certificate_expiry_timestamp_seconds{{{label}}} {facts.not_after if facts else 0:.0f}")
        samples["proxy_acme_last_attempt_timestamp_seconds"].append(
            f"proxy_acme_last_attempt_timestamp_seconds{{{label}}} {record.last_attempt or 0:.0f}")
        samples["proxy_acme_failures"].append(f"proxy_acme_failures{{{label}}} {record.failures}")
    out = []
    for name, text in series.items():
        out += [f"# HELP {name} {text}", f"# TYPE {name} gauge", *samples[name]]
    return out


def report(rows: list[dict], directory: str) -> str:
    """``proxy acme status``: a few lines per certificate."""
    lines = [f"ACME CA: {directory}"]
    for row in rows:
        lines.append(", ".join(row["names"]) + ":")
        if row["self_signed"]:
            lines.append("  no certificate from the CA yet (a self-signed one is served)")
        else:
            lines.append(f"  issued by {row['issuer']}, serial {row['serial']}, valid until {row['not_after']} "
                         f"({_days(row['expires_in_seconds'])})")
        if row["last_attempt"] is not None:
            outcome = f"failed ({row['failures']} in a row): {row['last_error']}" if row["failures"] else "succeeded"
            lines.append(f"  last attempt {row['last_attempt']}: {outcome}")
        lines.append(f"  next attempt {row['next_attempt']} ({row['next_attempt_why']})")
    if not rows:
        lines.append("no site has acme = true")
    return "\n".join(lines)


def _days(seconds: int) -> str:
    if seconds < 0:
        return "expired"
    return f"{seconds / 86400:.1f} days left" if seconds >= 86400 else f"{seconds / 3600:.1f} hours left"
