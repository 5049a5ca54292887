"""The ``appserver`` command: Gunicorn, configured for life behind the proxy.

    appserver [--version] [--config FILE] [--bind HOST:PORT] [--workers N] [--worker-class sync|gthread]
              [--threads N] [--forwarded-allow-ips LIST] [--check-config] [APP]

Precedence: built-in defaults < the --config file < flags. SIGTERM stops
gracefully (workers finish their requests within graceful_timeout), SIGINT
and SIGQUIT quickly, SIGHUP reloads the workers: Gunicorn's own signals.
"""

from __future__ import annotations

import argparse
import errno
import importlib.util
import os
import socket
import stat
import sys

from . import config as config_module
from .config import ConfigError, Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appserver",
        description="twotier's app tier: Gunicorn serving a WSGI app, configured to sit behind the proxy.",
        epilog="Every setting, its default and why: docs/app-tier.md.")
    parser.add_argument("--config", "-c", metavar="FILE", help="an appserver.toml (default: built-in defaults)")
    parser.add_argument("--check-config", action="store_true",
                        help="validate, print the effective settings, and exit")
    parser.add_argument("--version", action="version", version=_version())
    # The flags come from the declarations, so they cannot drift from the file's keys.
    for name, f in config_module.declared().items():
        flag = f.metadata["flag"]
        if flag:
            parser.add_argument(flag, dest=name, metavar=f.metadata["metavar"],
                                help=f"{f.metadata['doc']} (default: {config_module._shown(f)})")
    parser.add_argument("app", nargs="?", metavar="APP",
                        help=f"WSGI application as module:callable (default: {config_module.DEFAULT_APP})")
    return parser


def _version() -> str:
    """The project's version (one for both tiers: they ship together) and the Gunicorn it runs."""
    from importlib.metadata import version

    from proxy import __version__

    return f"appserver {__version__} (Gunicorn {version('gunicorn')})"


def settings_from_args(argv: list[str] | None) -> tuple[Settings, bool]:
    """Parse the command line into validated Settings; raises ConfigError with one line."""
    args = _parser().parse_args(argv)
    settings = config_module.load(args.config) if args.config else Settings()
    overrides = {name: getattr(args, name, None) for name in config_module.declared()}
    return config_module.with_overrides(settings, overrides), args.check_config


def check_app_module(app: str) -> None:
    """Fail early, with one line, when the APP's module cannot be found. The module itself is
    not imported here (only its parent packages, to look inside them): the workers import it,
    so the master stays free of the application's import-time side effects."""
    module = app.split(":", 1)[0]
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise ConfigError(f"APP {app}: no module named {module!r} (is it on the Python path?)")


def check_bind(addresses: tuple[str, ...]) -> None:
    """One line when an address cannot be listened on, instead of Gunicorn's five retries in five seconds.
    Bound with SO_REUSEADDR, as Gunicorn binds: only a listener makes the port busy, not TIME_WAIT."""
    for address in addresses:
        if address.startswith("unix:"):
            check_unix_bind(address)
            continue
        host, port = address.rsplit(":", 1)
        host = host.strip("[]")
        try:
            family, kind, proto, _, sockaddr = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)[0]
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(sockaddr)
        except socket.gaierror as exc:
            raise ConfigError(f"cannot listen on {address}: {exc.strerror}") from None
        except OSError as exc:
            hint = " (is another server running there?)" if exc.errno == errno.EADDRINUSE else ""
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            raise ConfigError(f"cannot listen on {address}: {reason}{hint}") from None


def check_unix_bind(address: str) -> None:
    """Gunicorn removes any socket file at a unix: address and binds a new one: a second appserver would
    steal the socket of a running one. Refuse that, and a file that is no socket or a missing folder,
    in one line; a socket nobody listens on (left by a killed server) is Gunicorn's to replace."""
    path = address[len("unix:"):]
    if not os.path.isdir(os.path.dirname(path) or "."):
        raise ConfigError(f"cannot listen on {address}: the folder {os.path.dirname(path)} does not exist")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"cannot listen on {address}: a file that is not a socket is there")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)
        if probe.connect_ex(path) != errno.ECONNREFUSED:
            raise ConfigError(f"cannot listen on {address}: another process listens on it "
                              "(is another server running there?)")


def describe(settings: Settings) -> str:
    lines = ["configuration ok"]
    lines += [f"  {name} = {getattr(settings, name)!r}" for name in config_module.declared()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    try:
        settings, check_only = settings_from_args(argv)
        check_app_module(settings.app)
    except ConfigError as exc:
        print(f"appserver: {exc}", file=sys.stderr)
        return 1
    if check_only:
        print(describe(settings))
        return 0
    try:
        check_bind(settings.bind)
    except ConfigError as exc:
        print(f"appserver: {exc}", file=sys.stderr)
        return 1
    from .gunicorn_app import AppServer

    AppServer(settings).run()  # returns only through sys.exit, with Gunicorn's status
    return 0
