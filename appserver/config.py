"""appserver.toml -> a frozen ``Settings``, and Settings -> Gunicorn's own settings.

Every setting is declared once, in ``Settings`` below, with its default, the
kind of value it takes, what it does and (when it has one) its command-line
flag. The loader, the error messages, the ``appserver`` flags, the plain
``gunicorn -c appserver/gunicorn_conf.py`` defaults and docs/app-tier.md's
reference table are all derived from those declarations (proxy/config.py
does the same for proxy.toml).

Strategy: ``load(path)`` reads TOML with tomllib; ``from_dict`` rejects
unknown keys and sends each value through its ``Kind``; the first problem
raises ``ConfigError`` with one line naming the file, the key and what was
expected. ``with_overrides`` applies command-line values through the same
kinds, so a bad flag reads like a bad key. Nothing here starts Gunicorn.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

DEFAULT_APP = "demo_app.wsgi:app"

# gunicorn's access_log_format atoms: %(h)s is REMOTE_ADDR as the app left it
# (ProxyFix rewrites it to the client's address), %(L)s the request time in
# seconds, %(p)s the worker pid, and %({x-request-id}o)s the id that the
# middleware put on the response (the proxy's, or a new one when called
# directly), so one grep finds a request in both tiers' logs.
ACCESS_LOG_FORMAT = ('%(h)s - - %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" '
                     'rt=%(L)s pid=%(p)s rid=%({x-request-id}o)s')


class ConfigError(Exception):
    """A one-line message for the user: file, key, and what was expected."""


class Invalid(ValueError):
    """Raised by a converter; the caller adds the file and the key."""


@dataclass(frozen=True)
class Kind:
    """A kind of value: what a user is told to write, and how it is converted."""

    expected: str
    convert: Callable[[Any], Any]
    # A flag's value is text; this turns it into what the same key holds in TOML.
    from_text: Callable[[str], Any] = str


def setting(default: Any, kind: Kind, doc: str, *, flag: str = "", metavar: str = "", shown: str = "") -> Any:
    """Declare one key: default (already converted), kind, one line of docs, and its CLI flag if any."""
    return field(default=default,
                 metadata={"kind": kind, "doc": doc, "flag": flag, "metavar": metavar, "shown": shown})


# --- kinds ------------------------------------------------------------------

def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise Invalid
    return value


def _choice(*names: str) -> Kind:
    def convert(value: Any) -> str:
        if value not in names:
            raise Invalid
        return value

    return Kind("one of " + ", ".join(f'"{n}"' for n in names), convert)


_BIND_RE = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):\d{1,5}$|^unix:/.+$")


def _bind(value: Any) -> tuple[str, ...]:
    # One address (a flag, or a TOML string) or a TOML list of them.
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise Invalid
    for item in items:
        if not isinstance(item, str) or not _BIND_RE.match(item):
            raise Invalid
        if not item.startswith("unix:") and int(item.rsplit(":", 1)[1]) > 65535:
            raise Invalid
    return tuple(items)


def _address_list(value: Any) -> tuple[str, ...]:
    # Gunicorn takes a comma-separated string; TOML users may prefer a list.
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise Invalid
    items = [i.strip() for i in items if i.strip()]
    if not items:
        raise Invalid
    return tuple(items)


_APP_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*(\(.*\))?$")


def _app(value: Any) -> str:
    if not isinstance(value, str) or not _APP_RE.match(value):
        raise Invalid
    return value


def _log_target(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise Invalid
    return value


def _number_text(text: str) -> Any:
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return text  # left for the kind to reject, with the usual message


POSITIVE_INT = Kind("a whole number >= 1", _positive_int, _number_text)
# Gunicorn takes its timeouts as whole seconds.
SECONDS = Kind("a whole number of seconds >= 1", _positive_int, _number_text)
BIND = Kind('"host:port", "[v6]:port" or "unix:/path", or a list of them', _bind)
ADDRESS_LIST = Kind('IP addresses or networks, comma-separated or as a list, or "*"', _address_list)
APP = Kind('a WSGI application as "module:callable"', _app)
ACCESS_LOG = Kind('a file path, "-" for standard output, or "off"', _log_target)
ERROR_LOG = Kind('a file path, or "-" for standard error', _log_target)


def default_workers() -> int:
    """2 x cores + 1: Gunicorn's rule of thumb (one worker waits on I/O while another computes).

    Cores this process may run on (taskset, a container's cpuset), not all the machine has."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return 2 * cores + 1


# --- the settings ------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    """Everything appserver.toml may hold. Each default is explained in docs/app-tier.md."""

    app: str = setting(
        DEFAULT_APP, APP, "The WSGI application to serve (also the APP argument).")
    bind: tuple[str, ...] = setting(
        ("127.0.0.1:8000",), BIND, "Where Gunicorn listens. Loopback only: the proxy is the one public door.",
        flag="--bind", metavar="HOST:PORT", shown='"127.0.0.1:8000"')
    workers: int = setting(
        default_workers(), POSITIVE_INT, "Worker processes: 2 x cores + 1.", flag="--workers", metavar="N",
        shown="2 x cores + 1")
    worker_class: str = setting(
        "gthread", _choice("sync", "gthread"),
        "gthread keeps connections alive, so the proxy's upstream pool is used: measured 1.6x to 2.3x the "
        "requests/s of sync behind the proxy. sync closes the connection after every answer.",
        flag="--worker-class", metavar="sync|gthread")
    threads: int = setting(
        4, POSITIVE_INT, "Requests one gthread worker handles at once (sync: always 1).",
        flag="--threads", metavar="N")
    keepalive: int = setting(
        75, SECONDS,
        "Seconds an idle kept-alive connection stays open (gthread). Longer than the proxy's idle_timeout "
        "(60 s) so Gunicorn never closes a connection the proxy is about to reuse.")
    timeout: int = setting(
        30, SECONDS, "A worker silent for this long is killed and replaced (a stuck request).")
    graceful_timeout: int = setting(
        30, SECONDS,
        "On SIGTERM, in-flight requests get this long to finish; the same as the proxy's grace_period.")
    forwarded_allow_ips: tuple[str, ...] = setting(
        ("127.0.0.1",), ADDRESS_LIST,
        "Peers whose X-Forwarded-Proto Gunicorn believes: the proxy's address only.",
        flag="--forwarded-allow-ips", metavar="LIST", shown='"127.0.0.1"')
    access_log: str = setting("-", ACCESS_LOG, "Access log, one line per request with the request id.")
    error_log: str = setting("-", ERROR_LOG, "Error log: start, stop, worker and application errors.")
    log_level: str = setting("info", _choice("debug", "info", "warning", "error", "critical"),
                             "Error log verbosity.")


def declared() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(Settings)}


def _convert(f: dataclasses.Field, value: Any, where: str, *, text: bool = False) -> Any:
    kind: Kind = f.metadata["kind"]
    try:
        return kind.convert(kind.from_text(value) if text else value)
    except Invalid:
        raise ConfigError(f"{where}: expected {kind.expected}, got {value!r}") from None


def from_dict(data: Mapping[str, Any], source: str) -> Settings:
    """Validate an already-parsed appserver.toml; ``source`` names it in messages."""
    fields = declared()
    values = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"{source}: {key}: unknown key (expected one of: {', '.join(fields)})")
        values[key] = _convert(fields[key], value, f"{source}: {key}")
    return Settings(**values)


def load(path: str | os.PathLike) -> Settings:
    """Read and validate an appserver.toml; raise ConfigError with a one-line message."""
    source = Path(path)
    try:
        return from_dict(tomllib.loads(source.read_text(encoding="utf-8")), str(source))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        reason = {FileNotFoundError: "no such file", tomllib.TOMLDecodeError: f"not valid TOML: {exc}"}.get(
            type(exc), f"cannot read: {getattr(exc, 'strerror', None) or exc}")
        raise ConfigError(f"{source}: {reason}") from None


def with_overrides(settings: Settings, overrides: Mapping[str, Any]) -> Settings:
    """Command-line values (None = not given) over the file's; converted by the same kinds."""
    fields = declared()
    changes = {}
    for name, value in overrides.items():
        if value is None:
            continue
        label = fields[name].metadata["flag"] or "APP"
        changes[name] = _convert(fields[name], value, label, text=True)
    return dataclasses.replace(settings, **changes)


# --- Gunicorn's view ---------------------------------------------------------

def gunicorn_settings(settings: Settings) -> dict[str, Any]:
    """The Gunicorn settings (names as in gunicorn.config) that run ``settings``."""
    from .middleware import wrap_worker_app

    return {
        "bind": list(settings.bind),
        "workers": settings.workers,
        "worker_class": settings.worker_class,
        # Gunicorn quietly turns a "sync" worker with threads > 1 into gthread.
        "threads": settings.threads if settings.worker_class == "gthread" else 1,
        "keepalive": settings.keepalive,
        "timeout": settings.timeout,
        "graceful_timeout": settings.graceful_timeout,
        "forwarded_allow_ips": ",".join(settings.forwarded_allow_ips),
        "accesslog": None if settings.access_log == "off" else settings.access_log,
        "access_log_format": ACCESS_LOG_FORMAT,
        "errorlog": settings.error_log,
        "loglevel": settings.log_level,
        # Gunicorn 25+ opens a control socket at one shared per-user path
        # ($XDG_RUNTIME_DIR or ~/.gunicorn/gunicorn.ctl), so a second app
        # server on the machine (make up and a test run, two apps) would take
        # it over. Nothing here uses it; signals do the same job.
        "control_socket_disable": True,
        # Request limits are the proxy's job ([limits] in proxy.toml); Gunicorn's
        # own defaults are tighter than the proxy's, so a request the proxy
        # accepted could still get a 400 from Gunicorn. These sit at or above
        # the proxy's defaults: max_request_line 8192 (0 = no line limit here),
        # max_header_bytes 32768 for the whole head (so for any one field), and
        # max_headers 100 plus the up to 9 headers the proxy adds (Host,
        # X-Forwarded-For/-Proto/-Host, X-Real-IP, Forwarded, Via, X-Request-ID,
        # Content-Length).
        "limit_request_line": 0,
        "limit_request_field_size": 32768,
        "limit_request_fields": 128,
        # The middleware goes around whatever app each worker loaded, so it is
        # applied the same way for `appserver` and for `gunicorn -c gunicorn_conf.py`.
        "post_worker_init": wrap_worker_app,
    }


# --- reference documentation --------------------------------------------------

def _shown(f: dataclasses.Field) -> str:
    if f.metadata["shown"]:
        return f.metadata["shown"]
    default = f.default
    return f'"{default}"' if isinstance(default, str) else f"{default:g}" if isinstance(default, float) else str(default)


def reference() -> str:
    """The appserver.toml reference as a Markdown table, generated from ``Settings``."""
    out = ["| key | flag | default | meaning |", "|---|---|---|---|"]
    for name, f in declared().items():
        flag = f"`{f.metadata['flag']}`" if f.metadata["flag"] else ("`APP`" if name == "app" else "")
        out.append(f"| `{name}` | {flag} | `{_shown(f)}` | {f.metadata['doc']} ({f.metadata['kind'].expected}.) |")
    return "\n".join(out)


if __name__ == "__main__":
    print(reference())
