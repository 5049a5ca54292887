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
    lines = [f"configuration ok: {cfg.path}", "listen: " + ", ".join(str(a) for a in cfg.server.listen), "routes:"]
    for route in sorted(cfg.routes, key=lambda r: len(r.prefix), reverse=True):
        action = []
        if route.static is not None:
            action.append(f"static {route.static}")
        if route.upstream:
            action.append(f"upstream {route.upstream}")
        lines.append(f"  {route.prefix:<16} -> " + (", else ".join(action)))
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
    if cfg.status is not None:
        lines.append(f"status: {cfg.status.path}, {cfg.status.metrics_path} "
                     f"(allow {', '.join(str(n) for n in cfg.status.allow)})")
    if cfg.tls is not None:
        tls = cfg.tls
        lines.append(f"tls: {', '.join(str(a) for a in tls.listen)} with {tls.certificate} (min {tls.min_version}"
                     + (", redirect_http" if tls.redirect_http else "") + (", hsts" if tls.hsts else "") + ")")
        lines += [f"  sites: {', '.join(site.names)} -> {site.certificate}" for site in tls.sites]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "gencert":
        return _gencert(args)
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
    print(explain(cfg, args.method.upper(), args.target, headers, args.client_ip))
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
