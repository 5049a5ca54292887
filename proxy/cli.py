"""The ``proxy`` command: run, check a configuration, or explain a request."""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__, config as config_module
from .accesslog import cannot_open
from .errors import ConfigError
from .logfiles import setup_logging

log = logging.getLogger("proxy")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="proxy",
        description="twotier's web-server tier: serves static files and forwards the rest to app servers.")
    parser.add_argument("--config", "-c", default="proxy.toml", help="proxy.toml to use (default: %(default)s)")
    parser.add_argument("--check-config", "-t", action="store_true",
                        help="validate the configuration, print a summary, and exit (like nginx -t)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    explain = commands.add_parser(
        "explain", help="show what the proxy would do with one request, without sending anything",
        description="A dry run: which route matches and why, the file it would serve (or why not), the "
                    "upstream server it would pick, and the headers the upstream would receive.")
    explain.add_argument("--config", "-c", default=argparse.SUPPRESS, help="proxy.toml to use")
    explain.add_argument("method", help="GET, POST, ...")
    explain.add_argument("target", help="request target, e.g. /api/whoami?x=1")
    explain.add_argument("-H", "--header", action="append", default=[], metavar="'Name: value'",
                         help="a request header (repeatable)")
    explain.add_argument("--client-ip", default="127.0.0.1", help="the client address to assume")
    explain.add_argument("--scheme", choices=["http", "https"], default="http",
                         help="the listener the request came on (default: %(default)s)")
    explain.add_argument("--sni", metavar="NAME", help="with --scheme https: the name the client asked for in TLS")
    acme = commands.add_parser(
        "acme", help="the certificates of acme = true sites: 'proxy acme status' lists them",
        description="Lists each acme = true site's certificate from [tls.acme] storage: issuer, serial, expiry, "
                    "the last attempt and its error, and when the CA will be asked next. Never contacts the CA.")
    acme.add_argument("--config", "-c", default=argparse.SUPPRESS, help="proxy.toml to use")
    acme.add_argument("action", choices=["status"], help="status: list the certificates")
    hashing = commands.add_parser(
        "hash-password", help="print a bcrypt hash for an htpasswd file (basic_auth users_file)",
        description="Reads a password (twice from a terminal, or one line from standard input) and prints its "
                    "bcrypt hash, or a whole 'user:hash' line with --user, as `htpasswd -B` does. "
                    "Needs no configuration file.")
    hashing.add_argument("--user", help="print 'USER:hash', a line for the users file")
    hashing.add_argument("--cost", type=int, default=10,
                         help="bcrypt cost, 4 to 31: each step doubles the work of every check and of every "
                              "guess (default: %(default)s, about 60 ms per check on one core)")
    gencert = commands.add_parser(
        "gencert", help="write a self-signed certificate and key for trying [tls] locally (uses openssl)",
        description="Writes OUT/cert.pem and OUT/key.pem, valid for the names given. Browsers will warn: "
                    "nobody vouches for a self-signed certificate. Needs no configuration file.")
    gencert.add_argument("names", nargs="*", metavar="NAME",
                         help="host names and IP addresses (default: localhost 127.0.0.1 ::1)")
    gencert.add_argument("--out", default="certs", help="folder to write into (default: %(default)s)")
    gencert.add_argument("--days", type=int, default=30, help="validity in days (default: %(default)s)")
    return parser


def summary(cfg: config_module.Config) -> str:
    lines = [f"configuration ok: {cfg.path}", "listen: " + ", ".join(str(a) for a in cfg.server.listen)]
    if cfg.server.trusted_proxies:
        lines.append("trusted proxies: " + ", ".join(str(n) for n in cfg.server.trusted_proxies))
    for site in cfg.sites:
        if site.where:
            names = ", ".join(site.names) or "(no names)"
            lines.append(f"site {names}" + (" (default)" if site.default else "")
                         + (f" with {site.certificate}" if site.certificate else "") + ":")
        lines.append("routes:")
        for route in sorted(site.routes, key=lambda r: len(r.prefix), reverse=True):
            lines.append(f"  {route.prefix:<16} -> " + _route_summary(route))
    lines.append("upstreams:")
    for name, upstream in cfg.upstreams.items():
        servers = ", ".join(str(s) for s in upstream.servers)
        checks = f", health {upstream.health.path}" if upstream.health else ""
        if upstream.tls is not None:
            checks += ", tls " + ("verify" if upstream.tls.verify else "no verify") + (
                f" ca_file {upstream.tls.ca_file}" if upstream.tls.ca_file else "") + (
                f" server_name {upstream.tls.server_name}" if upstream.tls.server_name else "")
        lines.append(f"  {name}: {servers} ({upstream.balance}, keepalive {upstream.keepalive}, "
                     f"read_timeout {upstream.read_timeout:g}s{checks})")
    for name, cache in cfg.caches.items():
        disk = f"disk {cache.path} up to {cache.max_size} bytes" if cache.path else "no disk tier"
        lines.append(f"cache {name}: memory {cache.memory} bytes per worker, {disk}, key {cache.key}")
    if cfg.status is not None:
        lines.append(f"status: {cfg.status.path}, {cfg.status.metrics_path} "
                     f"(allow {', '.join(str(n) for n in cfg.status.allow)})")
    for name, zone in cfg.rate_limits.items():
        lines.append(f"rate limit {name}: {zone.rate:g}r/s per {zone.key}, burst {zone.burst}, delay {zone.delay}, "
                     f"{zone.max_keys} keys")
    if cfg.tls is not None:
        tls = cfg.tls
        default = tls.certificate or "the first ACME site's certificate"
        lines.append(f"tls: {', '.join(str(a) for a in tls.listen)} with {default} (min {tls.min_version}"
                     + (", redirect_http" if tls.redirect_http else "") + (", hsts" if tls.hsts else "") + ")")
        lines += [f"  sites: {', '.join(site.names)} -> {'ACME' if site.acme else site.certificate}"
                  for site in tls.sites]
        if tls.acme is not None:
            acme = tls.acme
            lines.append(f"acme: {acme.directory} ({', '.join(acme.challenges)}), storage {acme.storage}"
                         + (f", email {acme.email}" if acme.email else "") + (f", ca_file {acme.ca_file}" if
                                                                                  acme.ca_file else ""))
    return "\n".join(lines)


def _route_summary(route: config_module.Route) -> str:
    if route.redirect is not None:
        action = [f"redirect {route.redirect_status} {route.redirect}"]
    else:
        action = [f"static {route.static}"] if route.static is not None else []
        if route.upstream:
            action.append(f"upstream {route.upstream}" + (f" through cache {route.cache}" if route.cache else ""))
    policy = [name for name, on in (
        ("strip_prefix", route.strip_prefix), (f"upstream_prefix {route.upstream_prefix}", route.upstream_prefix),
        ("request_headers", route.request_headers), ("response_headers", route.response_headers),
        ("error_pages", route.error_pages), ("allow/deny", route.allow or route.deny),
        (f"basic_auth {route.basic_auth.realm!r}" if route.basic_auth else "", route.basic_auth),
        (f"rate_limit {route.rate_limit}", route.rate_limit), (f"conn_limit {route.conn_limit}", route.conn_limit))
        if on]
    return ", else ".join(action) + (f" ({', '.join(policy)})" if policy else "")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "gencert":
        return _gencert(args)
    if args.command == "hash-password":
        return _hash_password(args)
    try:
        cfg = config_module.load(args.config)
    except ConfigError as exc:
        print(f"proxy: {exc}", file=sys.stderr)
        return 1
    problem = cannot_open(cfg.log.access)
    if problem:
        print(f"proxy: {cfg.path}: log.access: {problem}", file=sys.stderr)
        return 1
    if args.check_config:
        print(summary(cfg))
        return 0
    if args.command == "explain":
        return _explain(cfg, args)
    if args.command == "acme":
        return _acme_status(cfg)
    try:
        setup_logging(cfg.log.error)
    except OSError as exc:
        print(f"proxy: {cfg.path}: log.error: cannot open {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    return run(cfg)


def _explain(cfg: config_module.Config, args: argparse.Namespace) -> int:
    from .explain import explain

    headers = []
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            print(f"proxy explain: -H {item!r}: expected 'Name: value'", file=sys.stderr)
            return 2
        headers.append((name.strip(), value.strip()))
    if args.sni and args.scheme != "https":
        print("proxy explain: --sni needs --scheme https", file=sys.stderr)
        return 2
    print(explain(cfg, args.method.upper(), args.target, headers, args.client_ip, args.scheme,
                  args.sni.lower() if args.sni else None))
    return 0


def _acme_status(cfg: config_module.Config) -> int:
    import time

    from .acme.status import certificates, report

    sites = config_module.acme_sites(cfg)
    if not sites:
        print(f"proxy acme: {cfg.path}: no [[sites]] entry has acme = true", file=sys.stderr)
        return 1
    print(report(certificates(cfg.tls.acme, sites, time.time()), cfg.tls.acme.directory))
    return 0


def _hash_password(args: argparse.Namespace) -> int:
    import getpass

    import bcrypt

    if not 4 <= args.cost <= 31:
        print("proxy hash-password: --cost: expected a number from 4 to 31", file=sys.stderr)
        return 2
    if args.user is not None and (not args.user or ":" in args.user):
        print("proxy hash-password: --user: a name without ':'", file=sys.stderr)
        return 2
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("proxy hash-password: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("proxy hash-password: empty password", file=sys.stderr)
        return 1
    # $2y$: the prefix Apache's htpasswd -B writes; the same algorithm as bcrypt's $2b$.
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(args.cost)).decode().replace("$2b$", "$2y$", 1)
    print(f"{args.user}:{hashed}" if args.user is not None else hashed)
    return 0


def _gencert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .gencert import DEFAULT_NAMES, generate

    names = args.names or list(DEFAULT_NAMES)
    try:
        cert, key = generate(Path(args.out), names, args.days)
    except OSError as exc:
        print(f"proxy gencert: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"wrote {cert} and {key} for {', '.join(names)}, valid {args.days} days. In proxy.toml:\n\n"
          f'[tls]\nlisten = ["127.0.0.1:8443"]\ncertificate = "{cert}"\nkey = "{key}"')
    return 0


def run(cfg: config_module.Config) -> int:
    """Run the master process (which forks the workers) until it is told to stop."""
    from .server.master import Master
    from .server.sockets import ListenError

    try:
        return Master(cfg).run()
    except ListenError as exc:
        print(f"proxy: {exc.strerror}", file=sys.stderr)
        return 1
    except ConfigError as exc:  # a certificate file that changed since the configuration was checked
        print(f"proxy: {exc}", file=sys.stderr)
        return 1
