"""proxy.toml -> frozen dataclasses.

Every setting is declared once, below, with its default, the kind of value it
takes and what it does (gunicorn's ``Setting`` classes are the model). The
loader, the error messages and docs/configuration.md are all derived from
those declarations, so they cannot drift apart.

Strategy: ``load(path)`` reads TOML with tomllib, then ``_build`` walks each
section's dataclass fields: unknown keys are errors, every value goes through
its ``Kind``, and the first problem raises ``ConfigError`` with a one-line
message naming the file, the key and what was expected. Cross-checks that need
the whole file (routes naming upstreams, duplicate listeners) run last.
"""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

from .errors import ConfigError


class Invalid(ValueError):
    """Raised by a converter; the loader adds the file and the key. A check across keys (in
    ``__post_init__``) names the key it blames with ``key``."""

    def __init__(self, message: str = "", key: str = "") -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Context:
    """Where a value sits: the file, the key path (for messages) and the folder paths are relative to."""

    source: Path
    where: str

    @property
    def base(self) -> Path:
        return self.source.parent

    def at(self, key: str) -> "Context":
        return Context(self.source, f"{self.where}{key}" if key.startswith("[") else f"{self.where}.{key}")


@dataclass(frozen=True)
class Kind:
    """A kind of value: what a user is told to write, and how it is converted.

    ``path_words``: for a path relative to the config file's folder, the
    values that are words rather than paths ("-", "off", ""); None otherwise.
    """

    expected: str
    convert: Callable[[Any, Context], Any]
    path_words: tuple[str, ...] | None = None


def setting(default: Any, kind: Kind, doc: str, *, shown: str | None = None) -> Any:
    """Declare one key: default (already converted), kind, and one line of docs."""
    return field(default=default, metadata={"kind": kind, "doc": doc, "shown": shown})


# --- kinds ------------------------------------------------------------------

def _convert_bool(value: Any, ctx: Context) -> bool:
    if not isinstance(value, bool):
        raise Invalid
    return value


def _convert_str(value: Any, ctx: Context) -> str:
    if not isinstance(value, str):
        raise Invalid
    return value


def _convert_count(value: Any, ctx: Context) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Invalid
    return value


def _convert_seconds(value: Any, ctx: Context, *, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (value == 0 and not zero):
        raise Invalid
    return float(value)


_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmg]?)i?b?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(value: Any) -> int:
    """``16384``, ``"16k"``, ``"1m"``, ``"2g"`` -> bytes (binary units, like nginx)."""
    if isinstance(value, bool):
        raise Invalid
    if isinstance(value, int):
        if value < 0:
            raise Invalid
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match:
            return int(match[1]) * _SIZE_UNITS[match[2].lower()]
    raise Invalid


@dataclass(frozen=True, order=True)
class Address:
    """A TCP address: a host name or IP literal, and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_ADDRESS_RE = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9._-]+)):(?P<port>\d{1,5})$")


def parse_address(value: Any) -> Address:
    """``"127.0.0.1:8080"``, ``"[::1]:8080"``, ``"app:8000"`` -> Address."""
    if not isinstance(value, str):
        raise Invalid
    match = _ADDRESS_RE.match(value.strip())
    if not match:
        raise Invalid
    port = int(match["port"])
    if port > 65535:
        raise Invalid
    if match["v6"]:
        try:
            host = str(ipaddress.IPv6Address(match["v6"]))
        except ValueError:
            raise Invalid from None
    else:
        host = match["host"]
        # A host name never ends in an all-numeric label (RFC 1123 2.1, RFC 3696 2), so "999.1.1.1"
        # is a mistyped IPv4 address, not a name to look up.
        if host.rpartition(".")[2].isdigit():
            try:
                host = str(ipaddress.IPv4Address(host))
            except ValueError:
                raise Invalid(f"{host} is not a valid IPv4 address") from None
    return Address(host, port)


ALL_ADDRESSES = "0.0.0.0"
_PORT_ONLY_RE = re.compile(r"^(?:\*?:)?(\d{1,5})$")


def parse_listen(value: Any) -> Address:
    """An address to listen on, checked as ``nginx -t`` checks one.

    ``"8080"``, ``":8080"`` and ``"*:8080"`` mean every IPv4 address, as in
    nginx (``"[::]:8080"`` is every IPv6 one). A host name must resolve now:
    the proxy binds it at start, and a name that does not resolve would only
    fail then.
    """
    match = _PORT_ONLY_RE.match(value.strip()) if isinstance(value, str) else None
    if match:
        address = Address(ALL_ADDRESSES, int(match[1]))
        if address.port > 65535:
            raise Invalid
        return address
    address = parse_address(value)
    if is_ip_literal(address.host):
        return address
    try:
        socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise Invalid(f"cannot resolve {address.host!r} to an address to listen on ({exc.strerror})") from None
    return address


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _list_of(kind: Kind, *, non_empty: bool = True) -> Kind:
    def convert(value: Any, ctx: Context) -> tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or (non_empty and not value):
            raise Invalid
        return tuple(kind.convert(item, ctx.at(f"[{i}]")) for i, item in enumerate(value))

    return Kind(f"a list of {kind.expected}" + (" (at least one)" if non_empty else ""), convert)


def _choice(*names: str) -> Kind:
    def convert(value: Any, ctx: Context) -> str:
        if value not in names:
            raise Invalid
        return value

    return Kind("one of " + ", ".join(f'"{n}"' for n in names), convert)


def _convert_folder(value: Any, ctx: Context) -> Path | None:
    if not isinstance(value, str):
        raise Invalid
    if value == "":
        return None
    folder = (ctx.base / value).resolve()
    if not folder.is_dir():
        raise Invalid(f"folder {folder} does not exist")
    return folder


def _path(value: str, ctx: Context) -> str:
    """An absolute path: a relative one is relative to the config file's folder, never the current
    directory (which differs between a shell, systemd and a container). Symlinks are kept, so a
    reload or a log reopen follows a changed link."""
    return os.path.abspath(ctx.base / value)


def _output_file(*special: str) -> Callable[[Any, Context], str]:
    """A file the proxy writes (a log, the pid file), or one of the ``special`` words as written."""
    def convert(value: Any, ctx: Context) -> str:
        if not isinstance(value, str) or (not value.strip() and value not in special):
            raise Invalid
        return value if value in special else _path(value, ctx)

    return convert


def _convert_temp_dir(value: Any, ctx: Context) -> str:
    folder = _convert_folder(value, ctx)
    return "" if folder is None else str(folder)


def _convert_prefix(value: Any, ctx: Context) -> str:
    # Printable ASCII without quotes or backslashes: a prefix is also written into the
    # Server-Timing header's quoted desc, and headers are not re-validated on the way out.
    if not isinstance(value, str) or not _PREFIX_RE.fullmatch(value):
        raise Invalid
    return value


_PREFIX_RE = re.compile(r'^/[!#-\[\]-~]*$')
_FIELD_VALUE_RE = re.compile(r"^[\x20-\x7e]*$")
_TOKEN_RE = re.compile(r"^[-!#$%&'*+.^_`|~0-9A-Za-z]+$")


def _convert_header_value(value: Any, ctx: Context) -> str:
    """A string that goes into a response header as it is: printable ASCII, no CR or LF."""
    if not isinstance(value, str) or not _FIELD_VALUE_RE.match(value) or value != value.strip():
        raise Invalid
    return value


def _convert_token(value: Any, ctx: Context) -> str:
    if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
        raise Invalid
    return value


BOOL = Kind("true or false", _convert_bool)
STRING = Kind("a string", _convert_str)
COUNT = Kind("a whole number >= 0", _convert_count)
SECONDS = Kind("a number of seconds > 0", _convert_seconds)
SECONDS_OR_ZERO = Kind("a number of seconds >= 0", lambda v, c: _convert_seconds(v, c, zero=True))
SIZE = Kind('a size: bytes as an integer, or a string like "16k", "1m"', lambda v, c: parse_size(v))
ADDRESS = Kind('"host:port" or "[v6]:port"', lambda v, c: parse_address(v))
FOLDER = Kind("a folder (relative to the config file), or \"\" for none", _convert_folder, ("",))
TEMP_DIR = Kind('a folder (relative to the config file), or "" for the system temp folder', _convert_temp_dir, ("",))
ACCESS_LOG = Kind('a file (relative to the config file), "-" or "off"', _output_file("-", "off"), ("-", "off"))
ERROR_LOG = Kind('a file (relative to the config file) or "-"', _output_file("-"), ("-",))
PID_FILE = Kind('a file (relative to the config file), or "" for none', _output_file(""), ("",))
PREFIX = Kind('a URL path prefix starting with "/" (printable ASCII, no quotes or backslashes)', _convert_prefix)
HEADER_VALUE = Kind("a header value: printable ASCII, no leading or trailing spaces", _convert_header_value)
TOKEN = Kind("a name of letters, digits and !#$%&'*+-.^_`|~ (an HTTP token)", _convert_token)


def _convert_weight(value: Any, ctx: Context) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
        raise Invalid
    return value


def _convert_statuses(value: Any, ctx: Context) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise Invalid
    if not all(isinstance(v, int) and not isinstance(v, bool) and 100 <= v <= 599 for v in value):
        raise Invalid
    return tuple(value)


def _convert_network(value: Any, ctx: Context):
    try:
        return ipaddress.ip_network(value, strict=False)
    except (TypeError, ValueError):
        raise Invalid from None


def _table(cls: type, expected: str) -> Kind:
    """A nested table, built with the same rules (its errors carry the full key path)."""
    return Kind(expected, lambda value, ctx: _build(cls, value, ctx))


def _convert_workers(value: Any, ctx: Context) -> int:
    if value == "auto":
        return os.cpu_count() or 1
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 256:
        raise Invalid
    return value


def _convert_event_loop(value: Any, ctx: Context) -> str:
    if value not in ("auto", "asyncio", "uvloop"):
        raise Invalid
    if value == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            raise Invalid("uvloop cannot be imported here (it is a dependency of twotier: reinstall twotier), "
                          'or use "auto"') from None
    return value


def _convert_http_engine(value: Any, ctx: Context) -> str:
    from .http.codec import ENGINES

    if value != "auto" and value not in ENGINES:
        raise Invalid
    return value


HTTP_ENGINE = Kind('one of "auto", "llhttp", "h11"', _convert_http_engine)
EVENT_LOOP = Kind('one of "auto", "asyncio", "uvloop"', _convert_event_loop)
WORKERS = Kind('a number of processes from 1 to 256, or "auto" for one per CPU core', _convert_workers)
WEIGHT = Kind("a whole number from 1 to 1000", _convert_weight)
STATUSES = Kind("a list of HTTP status codes", _convert_statuses)
NETWORK = Kind('an address or network like "127.0.0.1/32" or "::1/128"', _convert_network)
# "unix:" stands for every client of a unix: listener (they have no address; nginx's allow unix:).
NETWORK_OR_UNIX = Kind('an address or network like "127.0.0.1/32" or "::1/128", or "unix:"',
                       lambda value, ctx: value if value == "unix:" else _convert_network(value, ctx))


def matching_network(ip: str, networks: tuple):
    """The entry of ``networks`` (ip_network values, or "unix:" for every client of a unix: listener) that
    the client address ``ip`` is in, or None: one answer for [status] allow, trusted_proxies and allow/deny."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return "unix:" if ip == "unix:" and "unix:" in networks else None
    return next((network for network in networks if network != "unix:" and address in network), None)


def _convert_file(value: Any, ctx: Context) -> Path:
    """A file that must exist and be readable now; kept unresolved so a reload follows a changed symlink."""
    if not isinstance(value, str) or not value:
        raise Invalid
    path = Path(os.path.abspath(ctx.base / value))
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise Invalid(f"file {path} does not exist") from None
    except IsADirectoryError:
        raise Invalid(f"{path} is a folder, not a file") from None
    except OSError as exc:
        raise Invalid(f"cannot read {path}: {exc.strerror}") from None
    return path


def _convert_optional_file(value: Any, ctx: Context) -> Path | None:
    return None if value == "" else _convert_file(value, ctx)


_SERVER_NAME_RE = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
# RFC 9110 7.8: protocol-name ["/" protocol-version], each a token; compared lower-cased.
_PROTOCOL_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]+(/[!#$%&'*+.^_`|~0-9a-z-]+)?$")


def _convert_server_name(value: Any, ctx: Context) -> str:
    if not isinstance(value, str) or not _SERVER_NAME_RE.fullmatch(value.lower()):
        raise Invalid
    return value.lower()


def _convert_protocol(value: Any, ctx: Context) -> str:
    if not isinstance(value, str) or not _PROTOCOL_RE.fullmatch(value.lower()):
        raise Invalid
    return value.lower()


PEM_FILE = Kind("a PEM file (relative to the config file)", _convert_file, ())
PEM_KEY = Kind('a PEM file (relative to the config file), or "" when the key is in the certificate file',
               _convert_optional_file, ("",))
SERVER_NAME = Kind('a host name like "api.example.test" or "*.example.test"', _convert_server_name)
PROTOCOL = Kind('an Upgrade protocol name like "websocket"', _convert_protocol)


# --- where the proxy listens and what it talks to ---------------------------
# Unix sockets beside TCP addresses, listen entries as tables (the PROXY protocol), HTTPS upstreams.

UNIX_PREFIX = "unix:"
UNIX_PATH_MAX = 107  # sun_path holds 108 bytes, the last one a NUL (unix(7))
DEFAULT_SOCKET_MODE = 0o666  # nginx's: any local user may connect, as to a TCP port of 127.0.0.1


@dataclass(frozen=True, order=True)
class UnixAddress:
    """A unix-domain stream socket, written ``"unix:/run/gunicorn.sock"`` (nginx's and Gunicorn's form)."""

    path: str

    def __str__(self) -> str:
        return UNIX_PREFIX + self.path


def parse_unix(value: str) -> UnixAddress:
    """``"unix:/absolute/path"``: absolute, because the proxy, Gunicorn and systemd each start in a
    different folder and must all mean the same file."""
    path = value[len(UNIX_PREFIX):]
    if not path.startswith("/") or "\0" in path:
        raise Invalid(f"{value!r}: a unix socket is written unix:/absolute/path")
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise Invalid(f"{value!r}: a unix socket path has at most {UNIX_PATH_MAX} bytes (unix(7)); use a shorter one")
    return UnixAddress(path)


def authority(address: "Address | UnixAddress") -> str:
    """What a request that reached ``address`` without a Host of its own is taken to have asked for."""
    return "localhost" if type(address) is UnixAddress else str(address)


def needs_lookup(address: "Address | UnixAddress") -> bool:
    """A host name, looked up (and again every resolve_interval), rather than an IP literal or a path."""
    return type(address) is Address and not is_ip_literal(address.host)


def _convert_listen_address(value: Any, ctx: Context) -> "Address | UnixAddress":
    if isinstance(value, str) and value.startswith(UNIX_PREFIX):
        return parse_unix(value)
    return parse_listen(value)


def _convert_mode(value: Any, ctx: Context) -> int:
    # TOML writes octal as 0o660; "0660" and "660" (chmod's form) are read as octal too.
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3}", value):
        value = int(value, 8)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
        raise Invalid
    return value


LISTEN_ADDRESS = Kind('"host:port", "[v6]:port", ":port", a port alone for every IPv4 address, or "unix:/path"',
                      _convert_listen_address)
SOCKET_MODE = Kind('permissions like 0o660 or "0660"', _convert_mode)


@dataclass(frozen=True)
class Listen:
    """One entry of ``listen``: an address as a string, or a table with these keys."""

    address: "Address | UnixAddress" = setting(
        None, LISTEN_ADDRESS,
        '"host:port", ":port" or "port" (every IPv4 address), "[::]:port", or "unix:/run/twotier.sock". A unix '
        "socket file left by a proxy that is gone is replaced; one a running process listens on is an error.",
        shown="(required)")
    proxy_protocol: bool = setting(
        False, BOOL,
        "Every connection begins with a PROXY protocol header (v1 or v2, as HAProxy's send-proxy and cloud load "
        "balancers send it), whose client address becomes the connection's: in the access log, X-Forwarded-For "
        "and everything that looks at the client. A connection without a valid one is closed. Read before the "
        "TLS handshake on [tls] listeners. (nginx: listen ... proxy_protocol.)")
    mode: int | None = setting(
        None, SOCKET_MODE,
        "unix: sockets only: the socket file's permissions. The default, 0o666, lets any local user connect "
        "(as to a TCP port on 127.0.0.1, and as nginx does); narrow it, or the folder's, to restrict who can.",
        shown="0o666")

    def __post_init__(self) -> None:
        if self.mode is not None and type(self.address) is not UnixAddress:
            raise Invalid("mode: only a unix: socket has permissions")

    def __str__(self) -> str:
        return str(self.address) + (" (PROXY protocol)" if self.proxy_protocol else "")

    @property
    def socket_mode(self) -> int:
        return DEFAULT_SOCKET_MODE if self.mode is None else self.mode


def _convert_listen(value: Any, ctx: Context) -> Listen:
    if isinstance(value, dict):
        return _build(Listen, value, ctx)
    return Listen(_convert_listen_address(value, ctx))


LISTEN = Kind('"host:port", "[v6]:port", a port alone for every IPv4 address, "unix:/path", or '
              '{address = ..., proxy_protocol = true}', _convert_listen)


_HOST_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")


def _convert_tls_name(value: Any, ctx: Context) -> str:
    if value == "" or (isinstance(value, str) and is_ip_literal(value)):
        return value
    if not isinstance(value, str) or not _HOST_NAME_RE.match(value.lower()):
        raise Invalid
    return value.lower()


@dataclass(frozen=True)
class UpstreamTls:
    """HTTPS to a group's servers: an ``[upstreams.NAME.tls]`` table, or the defaults for "https://" servers."""

    verify: bool = setting(
        True, BOOL,
        "Check the server's certificate: a chain to a trusted CA, and a name that matches server_name. "
        "A server that fails is a failed try (502) with the reason logged. (nginx's proxy_ssl_verify is off "
        "by default; here it is on.)")
    ca_file: Path | None = setting(
        None,
        Kind('a PEM file (relative to the config file), or "" for the system\'s CAs', _convert_optional_file, ("",)),
        "CA certificates to trust for this group instead of the system's (a private CA).", shown='""')
    server_name: str = setting(
        "", Kind('a host name or IP address, or ""', _convert_tls_name),
        "Name sent in SNI and checked against the certificate; \"\" for the host of each server's address "
        "(the name as written, not the address it resolves to). (nginx: proxy_ssl_name.)")


DEFAULT_UPSTREAM_TLS = UpstreamTls()
SCHEMES = ("http://", "https://")


# --- sections ---------------------------------------------------------------

@dataclass(frozen=True)
class ServerSettings:
    listen: tuple[Listen, ...] = setting(
        (Listen(Address("127.0.0.1", 8080)),), _list_of(LISTEN),
        "Addresses to accept connections on; several allowed. Port 0 picks a free port. A host name must "
        'resolve when the file is loaded; "8080" alone is "0.0.0.0:8080" (nginx\'s listen 8080); "unix:/path" is '
        "a unix socket. An entry may be a table to add options (see the listen entries table).",
        shown='["127.0.0.1:8080"]')
    name: str = setting("twotier", TOKEN, "Product name sent in the Server and Via headers.")
    sendfile: bool = setting(
        True, BOOL,
        "Send static file bodies over plain TCP with sendfile(2) (the kernel copies from the page cache "
        "to the socket) instead of read/write in chunks; files up to 64 KiB go out with their head in "
        "one write either way, and TLS always copies. A 1 MiB file: 295 us of CPU per request on, "
        "832 off (docs/performance.md).")
    workers: int = setting(
        1, WORKERS, "Worker processes sharing the listening sockets; a master process restarts any that dies "
        "and replaces them all, gracefully, on SIGHUP.")
    event_loop: str = setting(
        "auto", EVENT_LOOP, 'The workers\' event loop: "auto" takes uvloop (a dependency; TLS included) when it '
        'can be imported, asyncio otherwise.')
    http_engine: str = setting(
        "auto", HTTP_ENGINE,
        'The HTTP/1.1 parser: "llhttp" (C, through httptools; what "auto" means) or "h11" (pure Python, the '
        "reference both are tested against). Both refuse the same requests with the same statuses.")
    max_connections: int = setting(
        4096, COUNT, "Client connections one worker holds at once; beyond it a new connection is answered 503 "
        "and closed. The open-files limit is raised to its hard limit at start.")
    grace_period: float = setting(
        30.0, SECONDS, "On SIGTERM/SIGINT: how long in-flight requests may take to finish before the proxy exits.")
    temp_dir: str = setting(
        "", TEMP_DIR, 'Folder for request and response bodies spilled to disk; "" for the system temp folder.')
    pid_file: str = setting(
        "", PID_FILE, "File the master process writes its pid to at start and removes at exit (nginx's pid): "
        "where to send SIGHUP (reload) or SIGTERM (stop). The status page shows the same pid as master_pid.")
    server_timing: str = setting(
        "all", _choice("all", "trusted", "off"),
        'Who gets the Server-Timing header (the proxy\'s and the upstream\'s share of each response, which '
        'the demo page and browser developer tools show): "all", "trusted" (clients in [status] allow), or "off".')
    open_file_cache_valid: float = setting(
        1.0, SECONDS_OR_ZERO,
        "Static files (nginx open_file_cache): what a path resolved to, its headers and the bytes of files up to "
        "64 KiB are kept per worker and trusted this many seconds; then the file is checked again (and served "
        "fresh if it changed). 0 = no cache: every request looks the file up.")
    open_file_cache_entries: int = setting(
        10000, COUNT, "Paths the static file cache keeps per worker; the least recently used go first.")
    h2c: bool = setting(
        False, BOOL,
        "Also speak HTTP/2 on [server] listen to clients that start with the HTTP/2 preface (prior knowledge, "
        "RFC 9113 section 3.3), e.g. internal callers; HTTP/1.1 clients are served as before. Upgrade: h2c "
        "stays ignored. Browsers speak HTTP/2 only over TLS ([tls] http2).")
    open_file_cache_bytes: int = setting(
        64 * 1024**2, SIZE, "File bytes the static file cache holds in memory per worker; the least recently "
        "used entries go first.", shown='"64m"')
    trusted_proxies: tuple = setting(
        (), _list_of(NETWORK_OR_UNIX, non_empty=False),
        "Load balancers and proxies in front of this one (nginx set_real_ip_from with real_ip_recursive, Caddy "
        "trusted_proxies): for a connection from one of these networks the client is the right-most address "
        "in X-Forwarded-For that is not one of them. Logs, rate limits, allow/deny and the X-Forwarded-For "
        "sent upstream all use that address. On a proxy_protocol listener the connection's address is the one "
        'its PROXY header names; "unix:" trusts every client of a unix: listener.', shown="[]")


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = setting(
        32768, SIZE, "Largest request head (request line and headers) -> 431.")
    max_request_line: int = setting(8192, SIZE, "Longest request line -> 414.")
    max_headers: int = setting(100, COUNT, "Most header fields in one request -> 431.")
    max_body_bytes: int = setting(
        1024**2, SIZE, "Largest request body, declared or streamed -> 413 (nginx client_max_body_size).",
        shown='"1m"')
    body_buffer_bytes: int = setting(
        64 * 1024, SIZE,
        "Request body kept in memory up to this size; larger bodies are spilled to a temporary file.",
        shown='"64k"')
    header_timeout: float = setting(10.0, SECONDS, "Seconds to receive a complete request head -> 408 and close.")
    body_timeout: float = setting(30.0, SECONDS, "Seconds allowed between two reads of a request body -> 408 and close.")
    send_timeout: float = setting(
        60.0, SECONDS, "Seconds a client may go without accepting any response bytes before it is closed.")
    keepalive_timeout: float = setting(5.0, SECONDS, "An idle client connection is closed after this many seconds.")
    keepalive_requests: int = setting(
        1000, COUNT, "Requests served on one client connection; the last one is answered with Connection: close "
        "(HTTP/2: streams on one connection, then GOAWAY).")
    max_concurrent_streams: int = setting(
        128, COUNT, "HTTP/2: streams one client connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS); "
        "a client that opens more loses the connection (GOAWAY).")


@dataclass(frozen=True)
class LogSettings:
    access: str = setting("-", ACCESS_LOG, 'Access log: a file, "-" for standard output, or "off".')
    format: str = setting("combined", _choice("combined", "json"),
                          'Access log format: nginx "combined" plus timings, or one JSON object per line.')
    error: str = setting("-", ERROR_LOG, 'Error and state-change log: a file, or "-" for standard error.')


def _convert_server_address(value: Any, ctx: Context) -> "Address | UnixAddress":
    if isinstance(value, str) and value.startswith(UNIX_PREFIX):
        return parse_unix(value)
    return parse_address(value)


@dataclass(frozen=True)
class ServerSpec:
    """One entry of ``servers``: a string "host:port", or a table with these keys."""

    address: "Address | UnixAddress" = setting(
        None, Kind('"host:port", "https://host:port" or "unix:/path"', _convert_server_address),
        "host:port of the server (https:// in front for HTTPS), or unix:/path of its unix socket (Gunicorn's "
        "--bind unix:/path). A host name stands for every address it resolves to, re-resolved every "
        "resolve_interval.", shown="(required)")
    weight: int = setting(1, WEIGHT, "Share of requests relative to the other servers.")
    backup: bool = setting(False, BOOL, "Used only when no primary server is available.")
    max_conns: int = setting(0, COUNT, "Most requests in flight to this server at once; 0 = no limit.")
    scheme: str = field(default="", metadata={"internal": True})  # "http", "https", or "" as written

    def __post_init__(self) -> None:
        if self.scheme == "https" and type(self.address) is UnixAddress:
            raise Invalid(f"https://{self.address}: a unix: server speaks plain HTTP")

    def __str__(self) -> str:
        extras = [f"weight={self.weight}"] if self.weight != 1 else []
        extras += ["backup"] if self.backup else []
        extras += [f"max_conns={self.max_conns}"] if self.max_conns else []
        scheme = f"{self.scheme}://" if self.scheme else ""
        return " ".join([scheme + str(self.address), *extras])


def _split_scheme(value: Any) -> tuple[str, Any]:
    """"https://10.0.0.5:8443" -> ("https", "10.0.0.5:8443"); no scheme -> ("", value)."""
    if isinstance(value, str):
        for scheme in SCHEMES:
            if value.startswith(scheme):
                return scheme[:-3], value[len(scheme):]
    return "", value


def _convert_server(value: Any, ctx: Context) -> ServerSpec:
    if isinstance(value, str):
        scheme, rest = _split_scheme(value)
        return ServerSpec(address=_convert_server_address(rest, ctx), scheme=scheme)
    if isinstance(value, dict) and "address" in value:
        scheme, rest = _split_scheme(value["address"])
        return _build(ServerSpec, {**value, "address": rest}, ctx, {"scheme": scheme})
    return _build(ServerSpec, value, ctx)


SERVERS = Kind('a list of "host:port", "https://host:port" or "unix:/path" strings, or {address = ..., weight, '
               'backup, max_conns} tables', lambda value, ctx: _list_of(Kind("", _convert_server)).convert(value, ctx))


@dataclass(frozen=True)
class Health:
    """Active health checks: a GET to every server, repeated (Caddy's active checks)."""

    path: str = setting("/healthz", PREFIX, "Path requested from each server.", shown='"/healthz"')
    interval: float = setting(2.0, SECONDS, "Seconds between two probes of one server.")
    timeout: float = setting(1.0, SECONDS, "A probe taking longer than this failed.")
    healthy_threshold: int = setting(2, COUNT, "Good probes in a row that bring a down server back.")
    unhealthy_threshold: int = setting(2, COUNT, "Failed probes in a row that take a server down.")
    expect_status: tuple[int, ...] = setting((200,), STATUSES, "Statuses that count as healthy.", shown="[200]")


# The retry conditions of nginx's proxy_next_upstream that this proxy knows.
NEXT_UPSTREAM = ("error", "timeout", "http_502", "http_503", "http_504")


def _convert_next_upstream(value: Any, ctx: Context) -> frozenset[str]:
    if not isinstance(value, list) or not all(v in NEXT_UPSTREAM for v in value):
        raise Invalid
    return frozenset(value)


def _convert_policy(value: Any, ctx: Context) -> str:
    from .upstream.balancer import POLICIES

    if value not in POLICIES:
        raise Invalid
    return value


@dataclass(frozen=True)
class Upstream:
    name: str = field(metadata={"internal": True})
    servers: tuple[ServerSpec, ...] = setting(
        (), SERVERS, "The app servers of this group.", shown="(required)")
    balance: str = setting(
        "round_robin",
        Kind('one of "round_robin", "least_conn", "ip_hash", "random"', _convert_policy),
        "How a server is chosen: smooth weighted round robin (nginx's), fewest requests in flight, "
        "a hash of the client address, or the better of two random picks.")
    max_fails: int = setting(1, COUNT, "Passive health: this many failed tries within fail_timeout take a "
                             "server out for fail_timeout seconds; 0 = never.")
    fail_timeout: float = setting(10.0, SECONDS, "The window for max_fails, and how long a failed server rests.")
    tries: int = setting(3, WEIGHT, "Most servers tried for one request.")
    next_upstream: frozenset[str] = setting(
        frozenset({"error", "timeout"}),
        Kind("a list of " + ", ".join(f'"{n}"' for n in NEXT_UPSTREAM), _convert_next_upstream),
        "When to try the next server: a connection error, a timeout, or these statuses. A request that "
        "was sent is retried only when its method is idempotent.", shown='["error", "timeout"]')
    queue: int = setting(
        100, COUNT, "Requests that may wait for a server when every server is at its max_conns (nginx Plus "
        "queue); more than this get 503 at once.")
    queue_timeout: float = setting(
        60.0, SECONDS, "How long a request waits in that queue for a server before it gets 503.")
    resolve_interval: float = setting(5.0, SECONDS, "Seconds between two lookups of a server given by host name.")
    health: Health | None = setting(None, _table(Health, "a table"),
                                    "Active health checks, as an [upstreams.NAME.health] table; none when absent.",
                                    shown="(none)")
    keepalive: int = setting(
        32, COUNT, "Idle connections kept open per server for reuse; 0 = a new connection per request.")
    idle_timeout: float = setting(
        60.0, SECONDS,
        "How long an idle pooled connection is kept. Keep it below the app server's own keep-alive "
        "(appserver sets Gunicorn's to 75 s) so the server never closes a connection the proxy is about to reuse.")
    connect_timeout: float = setting(3.0, SECONDS, "Connecting to a server: refused -> 502, timed out -> 504.")
    read_timeout: float = setting(60.0, SECONDS, "Seconds between two reads of the upstream's response -> 504.")
    send_timeout: float = setting(60.0, SECONDS, "Seconds allowed for writing the request to the upstream -> 504.")
    buffer_bytes: int = setting(
        64 * 1024, SIZE,
        "Response bytes held in memory per request while the client reads slower than the upstream sends.",
        shown='"64k"')
    max_temp_file_bytes: int = setting(
        1024**3, SIZE,
        "Beyond buffer_bytes, up to this much of a response is spilled to a temporary file so the app server "
        "is released early; 0 = never spill (the upstream is then read at the client's pace).",
        shown='"1g"')
    # Edge protocols: which Upgrade requests become tunnels to this group, and how long one may idle.
    upgrade: tuple[str, ...] = setting(
        ("websocket",), _list_of(PROTOCOL, non_empty=False),
        "Protocols a client may switch to (Connection: Upgrade) on this group's servers; when a server answers "
        "101 the two connections are relayed as raw bytes. A request to upgrade to any other protocol gets 400 "
        '("h2c" is ignored instead, as RFC 9113 allows); [] refuses every upgrade.', shown='["websocket"]')
    websocket_idle_timeout: float = setting(
        300.0, SECONDS,
        "An upgraded connection (a WebSocket tunnel) that carries no bytes either way for this long is closed. "
        "Here rather than in [limits] because it is the app that knows how chatty its sockets are (nginx: "
        "proxy_read_timeout per location).")
    # HTTPS to the servers: a table makes every host:port server HTTPS (https:// servers are, table or not).
    tls: UpstreamTls | None = setting(
        None, _table(UpstreamTls, "a table"),
        "HTTPS to this group's servers, as an [upstreams.NAME.tls] table or tls = {verify, ca_file, server_name}: "
        "every host:port server is then HTTPS (http:// ones stay plain). An https:// server in a group without "
        "it gets the defaults (certificates verified against the system's CAs).", shown="(none)")

    def __post_init__(self) -> None:
        if self.tls is not None and not any(self.tls_for(spec) for spec in self.servers):
            raise Invalid("tls: no server of this group speaks HTTPS (unix: and http:// servers are plain)")

    def tls_for(self, spec: ServerSpec) -> UpstreamTls | None:
        """The TLS settings for connections to ``spec``, or None for plain HTTP."""
        if spec.scheme == "https":
            return self.tls or DEFAULT_UPSTREAM_TLS
        if spec.scheme == "" and self.tls is not None and type(spec.address) is not UnixAddress:
            return self.tls
        return None


# --- compression of responses (http/encoding.py) ---------------------------

def _convert_levels(value: Any, ctx: Context) -> tuple[tuple[str, int], ...]:
    from .http.encoding import CODINGS

    if not isinstance(value, dict):
        raise Invalid
    levels = dict(COMPRESS_LEVELS)
    for name, level in value.items():
        coding = CODINGS.get(name.encode())
        if coding is None:
            raise Invalid(f"unknown coding {name!r} (expected some of: {', '.join(COMPRESS_CODINGS)})")
        low, high = coding.levels
        if isinstance(level, bool) or not isinstance(level, int) or not low <= level <= high:
            raise Invalid(f"the {name} level must be a whole number from {low} to {high}, got {level!r}")
        levels[name] = level
    return tuple((name, levels[name]) for name in COMPRESS_CODINGS)


_MEDIA_TOKEN = r"[a-z0-9][a-z0-9!#$&^_.+-]*"
_MEDIA_RANGE_RE = re.compile(rf"^(?:\*/\*|{_MEDIA_TOKEN}/(?:\*|\*\+{_MEDIA_TOKEN}|{_MEDIA_TOKEN}))$")


def _convert_media_range(value: Any, ctx: Context) -> str:
    if not isinstance(value, str) or not _MEDIA_RANGE_RE.match(value.lower()):
        raise Invalid
    return value.lower()


COMPRESS_CODINGS = ("zstd", "br", "gzip")
# Measured with `python -m bench.compression` (docs/performance.md): past these the ratio gains a few
# per cent while the CPU per byte doubles or more.
COMPRESS_LEVELS = (("zstd", 3), ("br", 4), ("gzip", 5))
CODINGS = Kind('a list of "zstd", "br", "gzip"',
               _list_of(_choice(*COMPRESS_CODINGS)).convert)
LEVELS = Kind("a table of levels by coding, like { gzip = 6, br = 5 } (gzip 1-9, br 0-11, zstd 1-19)",
              _convert_levels)
MEDIA_RANGE = Kind('a media type like "application/json", "text/*", "application/*+json" or "*/*"',
                   _convert_media_range)


@dataclass(frozen=True)
class Compress:
    """A route's ``compress`` table: responses compressed on their way to the client."""

    encodings: tuple[str, ...] = setting(
        COMPRESS_CODINGS, CODINGS,
        "Codings offered, in the proxy's order of preference: the client's q-values decide, this order "
        "breaks ties.", shown='["zstd", "br", "gzip"]')
    level: tuple[tuple[str, int], ...] = setting(
        COMPRESS_LEVELS, LEVELS, "Compression level per coding; the ones not named keep their default.",
        shown="{zstd = 3, br = 4, gzip = 5}")
    min_length: int = setting(
        1024, SIZE, "A response whose length is known and smaller than this is sent as it is (a streamed one "
        "of unknown length is always compressed).")
    types: tuple[str, ...] = setting(
        ("text/*", "application/json", "application/*+json", "application/javascript", "application/xml",
         "application/*+xml", "image/svg+xml", "application/wasm"), _list_of(MEDIA_RANGE),
        "Media types compressed (Content-Type without its parameters); others are sent as they are.",
        shown='["text/*", "application/json", "application/*+json", "application/javascript", '
              '"application/xml", "application/*+xml", "image/svg+xml", "application/wasm"]')
    # Derived once, read by http/encoding.py on each response.
    codings: tuple[bytes, ...] = field(init=False, repr=False, compare=False, metadata={"internal": True})
    levels: Mapping[bytes, int] = field(init=False, repr=False, compare=False, metadata={"internal": True})
    exact_types: frozenset = field(init=False, repr=False, compare=False, metadata={"internal": True})
    wild_types: tuple[tuple[bytes, bytes], ...] = field(init=False, repr=False, compare=False,
                                                        metadata={"internal": True})

    def __post_init__(self) -> None:
        if len(set(self.encodings)) != len(self.encodings):
            raise Invalid("encodings: each coding at most once")
        # "text/*" -> ("text/", ""), "application/*+json" -> ("application/", "+json"), "*/*" -> ("", "")
        wild = [(b"", b"") if kind == "*/*" else tuple(part.encode() for part in kind.split("*"))
                for kind in self.types if "*" in kind]
        derived = {
            "codings": tuple(name.encode() for name in self.encodings),
            "levels": MappingProxyType({name.encode(): level for name, level in self.level}),
            "exact_types": frozenset(kind.encode() for kind in self.types if "*" not in kind),
            "wild_types": tuple(wild),
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)


def _convert_compress(value: Any, ctx: Context) -> Compress | None:
    if isinstance(value, bool):
        return Compress() if value else None
    if not isinstance(value, dict):
        raise Invalid
    return _build(Compress, value, ctx)


COMPRESS = Kind("true, false, or a table of encodings, level, min_length, types", _convert_compress)


# --- sites and request policy -------------------------------------------------
# What a route may do beyond serving and forwarding (redirects, rewriting, header rules, error pages,
# access control, limits) and the [[sites]] that hold routes. Turned into per-request decisions by
# http/policy.py and http/decide.py.

def _convert_template(value: Any, ctx: Context):
    from .http.placeholders import TemplateError, compile_template

    try:
        return compile_template(value)
    except TemplateError as exc:
        raise Invalid(str(exc)) from None


_REDIRECT_STARTS = ("/", "http://", "https://", "{scheme}://")


def _convert_redirect(value: Any, ctx: Context):
    if value == "":
        return None
    template = _convert_template(value, ctx)
    if not value.startswith(_REDIRECT_STARTS):
        raise Invalid(f'expected a URL starting with "/", "http://", "https://" or "{{scheme}}://", got {value!r}')
    return template


def _numbers(*allowed: int) -> Kind:
    def convert(value: Any, ctx: Context) -> int:
        if isinstance(value, bool) or value not in allowed:
            raise Invalid
        return value

    return Kind("one of " + ", ".join(str(n) for n in allowed), convert)


# Headers a rule may never touch. Hop-by-hop ones describe one connection (RFC 9110 7.6.1) and the framing
# ones are the proxy's to write (RFC 9112 6): a rule that changed them could desynchronise a connection
# (request smuggling) instead of changing a message. Host may only be set, never added or removed.
_RULE_REFUSED = frozenset({"connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade",
                           "trailer", "content-length"})


def _rule_name(value: Any, *, host: bool) -> bytes:
    if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
        raise Invalid(f"{value!r} is not a header name (an HTTP token)")
    name = value.lower()
    if name in _RULE_REFUSED:
        raise Invalid(f"{value} is a hop-by-hop or framing header: the proxy alone writes it")
    if name == "host" and not host:
        raise Invalid("Host can only be given in set (it is always sent)")
    return name.encode()


def _header_map(*, host: bool) -> Kind:
    def convert(value: Any, ctx: Context) -> tuple:
        if not isinstance(value, dict):
            raise Invalid
        out = []
        for name, text in value.items():
            try:
                out.append((_rule_name(name, host=host), _convert_template(text, ctx)))
            except Invalid as exc:
                raise Invalid(f"{name}: {exc or 'expected a string'}") from None
        return tuple(out)

    return Kind('a table of header names and values, e.g. { "X-Site" = "shop" }', convert)


def _convert_header_names(value: Any, ctx: Context) -> tuple[bytes, ...]:
    if not isinstance(value, list):
        raise Invalid
    return tuple(_rule_name(name, host=False) for name in value)


@dataclass(frozen=True)
class HeaderRules:
    """``request_headers`` / ``response_headers`` of a route: applied in the order remove, set, add.
    Values may hold placeholders ({scheme} {host} {uri} {path} {query} {client_ip} {request_id})."""

    set: tuple = setting((), _header_map(host=True),
                         "Headers given this value, replacing any of the same name.", shown="{}")
    add: tuple = setting((), _header_map(host=False),
                         "Headers added, beside any of the same name.", shown="{}")
    remove: tuple = setting((), Kind("a list of header names", _convert_header_names),
                            "Headers removed.", shown="[]")

    def __post_init__(self) -> None:
        removed = set(self.remove)
        for key in ("set", "add"):
            for name, _ in getattr(self, key):
                if name in removed:
                    raise Invalid(f"{name.decode()} is both in {key} and in remove", key="remove")

    def __bool__(self) -> bool:
        return bool(self.set or self.add or self.remove)


_ERROR_CODE_RE = re.compile(r"^(?:4\d\d|5\d\d|4xx|5xx)$")


def _convert_error_pages(value: Any, ctx: Context) -> tuple[tuple[str, Path], ...]:
    if not isinstance(value, dict) or not value:
        raise Invalid
    pages = []
    for code, file in value.items():
        code = str(code)
        if not _ERROR_CODE_RE.fullmatch(code):
            raise Invalid(f'{code}: expected a status from 400 to 599, "4xx" or "5xx"')
        try:
            pages.append((code, _convert_file(file, ctx.at(code))))
        except Invalid as exc:
            raise Invalid(f"{code}: {exc or 'expected a file (relative to the config file)'}") from None
    return tuple(pages)


_LIMIT_KEY_RE = re.compile(r"^(?:client_ip|host|header:[-!#$%&'*+.^_`|~0-9A-Za-z]+)$")


def _convert_limit_key(value: Any, ctx: Context) -> str:
    if not isinstance(value, str) or not _LIMIT_KEY_RE.fullmatch(value):
        raise Invalid
    return value if not value.startswith("header:") else value.lower()


_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*r/([sm])\s*$")


def _convert_rate(value: Any, ctx: Context) -> float:
    match = _RATE_RE.match(value) if isinstance(value, str) else None
    if not match or float(match[1]) <= 0:
        raise Invalid
    return float(match[1]) / (60.0 if match[2] == "m" else 1.0)


def _convert_realm(value: Any, ctx: Context) -> str:
    # Written into WWW-Authenticate as a quoted-string (RFC 7617 2): no quotes, backslashes or controls.
    if not isinstance(value, str) or not value or not re.fullmatch(r'^[ !#-\[\]-~]+$', value):
        raise Invalid
    return value


@dataclass(frozen=True)
class Users:
    """An htpasswd file, read when the configuration is loaded (and again on every reload)."""

    path: Path
    users: tuple[tuple[str, bytes], ...]  # (name, bcrypt hash)

    def __str__(self) -> str:
        return str(self.path)


_BCRYPT_RE = re.compile(rb"^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$")


def _convert_users_file(value: Any, ctx: Context) -> Users:
    path = _convert_file(value, ctx)
    users: dict[str, bytes] = {}
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(b"#"):
            continue
        name, sep, hashed = line.partition(b":")
        user = name.decode("utf-8", "replace")
        if not sep or not name:
            raise Invalid(f'{path} line {number}: expected "user:hash"')
        if not _BCRYPT_RE.fullmatch(hashed):
            raise Invalid(f"{path} line {number}: the hash of {user!r} is not bcrypt; make one with "
                          f"`htpasswd -B` or `proxy hash-password`")
        if user in users:
            raise Invalid(f"{path} line {number}: {user!r} is listed twice")
        users[user] = hashed
    return Users(path, tuple(users.items()))


@dataclass(frozen=True)
class BasicAuth:
    """``basic_auth = { realm = "...", users_file = "htpasswd" }``: HTTP Basic authentication (RFC 7617)."""

    realm: str = setting("restricted", Kind("a realm name: printable ASCII without quotes or backslashes",
                                            _convert_realm), "Realm named in the WWW-Authenticate challenge.")
    users_file: Users = setting(
        None, Kind("an htpasswd file of bcrypt hashes (relative to the config file)", _convert_users_file, ()),
        "Apache htpasswd file with bcrypt hashes (htpasswd -B, or proxy hash-password); re-read on SIGHUP.",
        shown="(required)")
    forward_auth: bool = setting(
        False, BOOL, "Pass the client's Authorization header on to the upstream; by default it is removed once "
        "checked, so the app never sees the password.")


def _convert_between(value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise Invalid
    return value


@dataclass(frozen=True)
class RateLimit:
    """``[rate_limits.NAME]``: nginx's limit_req zone, shared by every worker process."""

    name: str = field(default="", metadata={"internal": True})
    key: str = setting(
        "client_ip", Kind('"client_ip", "host" or "header:NAME"', _convert_limit_key),
        "What is counted: each client address, each Host, or each value of a request header (a request "
        "without that header is not limited).")
    rate: float = setting(
        None, Kind('a rate like "10r/s" or "600r/m"', _convert_rate),
        "Requests per second (r/s) or minute (r/m) each key may make on average.", shown="(required)")
    burst: int = setting(
        0, COUNT, "Requests beyond the rate that are still served (nginx burst); more than that get 429 "
        "with Retry-After.")
    delay: int = setting(
        0, COUNT, "Of the burst, how many are served at once; the rest are held back to the rate (nginx "
        "delay=). 0 = every request within the burst is served at once (nginx nodelay).")
    max_keys: int = setting(
        10000, Kind("a whole number from 1 to 1000000", lambda v, c: _convert_between(v, 1, 10**6)),
        "Keys remembered; when full, the least recently seen key is forgotten (nginx's zone size).")

    def __post_init__(self) -> None:
        if self.delay > self.burst:
            raise Invalid(f"{self.delay} is more than burst ({self.burst})", key="delay")


NETWORKS = _list_of(NETWORK_OR_UNIX, non_empty=False)


@dataclass(frozen=True)
class Route:
    where: str = field(default="routes[0]", metadata={"internal": True})  # "routes[2]", "sites[1].routes[0]"
    prefix: str = setting("", PREFIX, "Requests whose path starts with this are handled here; longest prefix wins.",
                          shown="(required)")
    static: Path | None = setting(
        None, FOLDER,
        "Serve files from this folder: the path after the prefix is looked up in it. "
        "With upstream set too, a file is served when one exists and the rest is forwarded (nginx try_files).",
        shown='""')
    upstream: str = setting("", STRING, "Name of an [upstreams.NAME] group to forward to.")
    cache_control: str = setting("", HEADER_VALUE, "Cache-Control header for static files served by this route.")
    index: str = setting("index.html", STRING, "File served for a folder; \"\" for none.")
    autoindex: bool = setting(False, BOOL, "List a folder's files when it has no index file.")
    dotfiles: bool = setting(False, BOOL, "Serve files and folders whose names start with a dot (.env, .git/).")
    precompressed: bool = setting(
        True, BOOL, "Serve a .br or .gz sibling of a file when the client accepts that encoding.")
    compress: Compress | None = setting(
        None, COMPRESS,
        "Compress responses on their way to the client (gzip, Brotli, zstd by Accept-Encoding): true for the "
        "defaults (compress of a route, below), or a table of them. Static files are compressed once and kept in "
        "the open-file cache; a .br/.gz sibling still wins.", shown="false")
    redirect: Any = setting(
        None, Kind('a URL starting with "/", "http://", "https://" or "{scheme}://"', _convert_redirect),
        "Answer every request with a redirect to this URL (nginx return 301 URL, Caddy redir); placeholders "
        "{scheme} {host} {uri} {path} {query} {client_ip} {request_id}, {path} being the path after the prefix. "
        "A route with redirect has no static or upstream.", shown='""')
    redirect_status: int = setting(302, _numbers(301, 302, 303, 307, 308),
                                   "Status of the redirect: 301/308 permanent, 302/303/307 temporary; 307 and 308 "
                                   "keep the method and body.")
    strip_prefix: bool = setting(
        False, BOOL, "Forward the path without the route's prefix: /api/x -> /x (Caddy handle_path, nginx "
        "proxy_pass http://app/;). The query is kept as sent.")
    upstream_prefix: str = setting(
        "", Kind('a URL path prefix starting with "/", or ""', lambda v, c: "" if v == "" else _convert_prefix(v, c)),
        'Put this in front of the forwarded path (after strip_prefix): "/v2/" makes /api/x -> /v2/x.')
    request_headers: HeaderRules = setting(
        HeaderRules(), _table(HeaderRules, "a table like { set = {...}, add = {...}, remove = [...] }"),
        "Change the headers sent upstream (nginx proxy_set_header, Caddy header_up) (its keys: below).",
        shown="{}")
    response_headers: HeaderRules = setting(
        HeaderRules(), _table(HeaderRules, "a table like { set = {...}, add = {...}, remove = [...] }"),
        "Change the headers of every response on this route, the proxy's own errors included (nginx add_header "
        "... always / proxy_hide_header, Caddy header).", shown="{}")
    error_pages: tuple = setting(
        (), Kind('a table of statuses (404, "5xx") and files', _convert_error_pages, ()),
        'Pages for errors the proxy makes on this route (404, 403, 413, 429, 502, 503, 504...): { 404 = '
        '"errors/404.html", "5xx" = "errors/5xx.html" }; an exact status wins over "4xx"/"5xx".', shown="{}")
    intercept_errors: bool = setting(
        False, BOOL, "Also replace an upstream's error response (400 and above) with the matching error page "
        "(nginx proxy_intercept_errors).")
    allow: tuple = setting(
        (), NETWORKS, "When given, only clients in these networks are served; others get 403 (nginx allow). "
        'The client is the address after [server] trusted_proxies; "unix:" stands for the clients of unix: '
        "listeners (nginx allow unix:).", shown="[]")
    deny: tuple = setting((), NETWORKS, "Clients in these networks get 403, even when allowed (nginx deny).",
                          shown="[]")
    basic_auth: BasicAuth | None = setting(
        None, _table(BasicAuth, "a table like { realm = \"...\", users_file = \"htpasswd\" }"),
        "Ask for a user and password from an htpasswd file (nginx auth_basic) (its keys: below).",
        shown="(none)")
    rate_limit: str = setting("", STRING, "Name of a [rate_limits.NAME] zone that limits this route's requests.")
    conn_limit: int = setting(
        0, COUNT, "Most requests in progress at once per conn_limit_key on this route, across every worker "
        "process (nginx limit_conn); 0 = no limit.")
    conn_limit_key: str = setting(
        "client_ip", Kind('"client_ip", "host" or "header:NAME"', _convert_limit_key),
        "What conn_limit counts per: each client address, each Host, or each value of a request header.")
    conn_limit_status: int = setting(429, _numbers(429, 503), "Status beyond conn_limit.")
    cache: str = setting(
        "", STRING, "Name of a [caches.NAME] response cache for what this route's upstream answers (nginx "
        'proxy_cache); "" for none.')

    @property
    def forwards(self) -> bool:
        return bool(self.upstream)


def _convert_routes(value: Any, ctx: Context) -> tuple[Route, ...]:
    if not isinstance(value, list):
        raise Invalid
    out = []
    for i, table in enumerate(value):
        at = ctx.at(f"[{i}]")
        out.append(_build(Route, table, at, {"where": at.where}))
    return tuple(out)


ROUTES = Kind("[[routes]] tables", _convert_routes)


@dataclass(frozen=True)
class Site:
    """One ``[[sites]]`` entry: a virtual host (nginx server block), chosen by the request's Host."""

    where: str = field(default="sites[0]", metadata={"internal": True})
    names: tuple[str, ...] = setting(
        (), _list_of(SERVER_NAME, non_empty=False),
        'Host names this site answers (nginx server_name): exact, or "*.example.test" for any one label in '
        "front. Also the SNI names its certificate is chosen for.", shown="[]")
    default: bool = setting(
        False, BOOL, "Serve requests for any Host no site names (nginx default_server). Without a default "
        "site they get 404 (421 over TLS when the SNI name differs from Host).")
    routes: tuple[Route, ...] = setting((), ROUTES, "This site's routes, as [[sites.routes]] tables (the keys "
                                        "of [[routes]]).", shown="[]")
    certificate: Path | None = setting(
        None, Kind('a PEM file (relative to the config file), or ""', _convert_optional_file, ("",)),
        "Certificate chain for this site's names, chosen by SNI; other names get [tls] certificate.", shown='""')
    key: Path | None = setting(None, PEM_KEY, "Private key of that certificate, unencrypted.", shown='""')
    acme: bool = setting(
        False, BOOL, "Get this site's certificate for its names from the ACME CA of [tls.acme] (Let's Encrypt by "
        "default), and renew it, instead of certificate and key. Wildcard names need DNS-01, which the proxy "
        "does not do.")


@dataclass(frozen=True)
class TlsSite:
    """One ``[[tls.sites]]`` entry: a certificate chosen by the name the client asks for (SNI). A [[sites]]
    entry with a certificate is turned into one of these too."""

    where: str = field(default="", metadata={"internal": True})  # for messages: "tls.sites[0]", "sites[1]"
    names: tuple[str, ...] = setting(
        (), _list_of(SERVER_NAME),
        'Server names this certificate is for; "*.example.test" matches one label. Other names (and clients '
        "that send none) get the [tls] certificate.", shown="(required)")
    certificate: Path = setting(None, PEM_FILE, "Certificate chain, leaf first.", shown="(required)")
    key: Path | None = setting(None, PEM_KEY, "Private key, unencrypted.", shown='""')
    # A [[sites]] entry with acme = true: its certificate (and key) come from [tls.acme] storage, not a file.
    acme: bool = field(default=False, metadata={"internal": True})


# --- ACME: [tls.acme] ---

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
CHALLENGES = ("http-01", "tls-alpn-01")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([dhms])\s*$")
_DURATION_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _convert_duration(value: Any, ctx: Context) -> float | None:
    """``"30d"``, ``"12h"``, ``"90m"``, ``"45s"`` or a number of seconds; ``""`` for none."""
    if value == "":
        return None
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match and float(match[1]) > 0:
            return float(match[1]) * _DURATION_UNITS[match[2]]
        raise Invalid
    return _convert_seconds(value, ctx)


def _convert_directory(value: Any, ctx: Context) -> str:
    # RFC 8555 6.1: every ACME request goes over HTTPS.
    if not isinstance(value, str) or not re.fullmatch(r"https://[^\s/]+(/\S*)?", value):
        raise Invalid
    return value


def _convert_email(value: Any, ctx: Context) -> str:
    if not isinstance(value, str) or (value and not _EMAIL_RE.fullmatch(value)):
        raise Invalid
    return value


def _convert_challenge(value: Any, ctx: Context) -> str:
    if value == "dns-01":
        raise Invalid('dns-01 is not supported: the proxy answers "http-01" and "tls-alpn-01" itself')
    if value not in CHALLENGES:
        raise Invalid
    return value


def _convert_challenges(value: Any, ctx: Context) -> tuple[str, ...]:
    found = _list_of(Kind("", _convert_challenge)).convert(value, ctx)
    if len(set(found)) != len(found):
        raise Invalid("each challenge once")
    return found


def _convert_storage(value: Any, ctx: Context) -> Path:
    """A folder the proxy may create (0700) and write: checked now, made when the proxy starts."""
    if not isinstance(value, str) or not value.strip():
        raise Invalid
    folder = Path(_path(value, ctx))
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise Invalid(f"{existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise Invalid(f"{existing} is not writable by this user" if existing == folder else
                      f"cannot create {folder}: {existing} is not writable by this user")
    return folder


def _convert_ca_file(value: Any, ctx: Context) -> Path | None:
    path = _convert_optional_file(value, ctx)
    if path is not None:
        import ssl

        try:
            ssl.create_default_context(cafile=str(path))
        except ssl.SSLError:
            raise Invalid(f"{path} holds no PEM certificate to trust") from None
    return path


@dataclass(frozen=True)
class AcmeSettings:
    """``[tls.acme]``: where the certificates of ``acme = true`` sites come from. Setting it (or a site's
    acme = true) agrees to the CA's terms of service."""

    directory: str = setting(
        LETS_ENCRYPT, Kind("an https:// URL", _convert_directory),
        "The CA's ACME directory URL. Let's Encrypt's staging CA, for trying: "
        '"https://acme-staging-v02.api.letsencrypt.org/directory".', shown=f'"{LETS_ENCRYPT}"')
    email: str = setting("", Kind('an email address, or ""', _convert_email),
                         "Contact address given to the CA (expiry warnings, policy changes).")
    storage: Path = setting(
        None, Kind("a folder (relative to the config file)", _convert_storage, ()),
        "Where the account key and the certificates are kept across restarts; created 0700, files 0600. "
        "Back it up: without it the proxy orders every certificate again.", shown='"acme"')
    ca_file: Path | None = setting(
        None, Kind('a PEM file (relative to the config file), or ""', _convert_ca_file, ("",)),
        "CA certificates to trust for the ACME server's own HTTPS, instead of the system's (a private CA, "
        'Pebble\'s in tests); "" for the system\'s.', shown='""')
    challenges: tuple[str, ...] = setting(
        CHALLENGES, Kind('a list of "http-01" and "tls-alpn-01"', _convert_challenges),
        "Challenges the proxy may answer, in order of preference: http-01 on [server] listen (port 80 for a "
        "real CA), tls-alpn-01 on [tls] listen (port 443).", shown='["http-01", "tls-alpn-01"]')
    renew_before: float | None = setting(
        None, Kind('a duration like "30d", "12h", or seconds; "" for a third of the lifetime', _convert_duration,),
        'Renew when this much of a certificate\'s lifetime remains; "" renews when a third remains (30 days '
        "of Let's Encrypt's 90).", shown='""')
    retry_delay: float = setting(
        60.0, SECONDS, "After a failed attempt, wait this long; doubled after each further failure, up to 6 hours "
        "(an hour at least when the CA says rate limited).")


TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")


@dataclass(frozen=True)
class TlsSettings:
    """TLS termination; on when [tls] is present. Certificates are checked when the file is loaded."""

    listen: tuple[Listen, ...] = setting(
        (Listen(Address("127.0.0.1", 8443)),), _list_of(LISTEN),
        "Addresses that speak HTTPS (written as [server].listen, tables included).", shown='["127.0.0.1:8443"]')
    certificate: Path | None = setting(
        None, PEM_FILE, "Certificate chain (leaf first, then intermediates), e.g. Let's Encrypt's fullchain.pem. "
        "Re-read on SIGHUP. Optional when a site has acme = true: clients that name no site then get the first "
        "such site's certificate.", shown="(required without ACME)")
    key: Path | None = setting(None, PEM_KEY, "Private key, unencrypted.", shown='""')
    min_version: str = setting("TLSv1.2", _choice(*TLS_VERSIONS),
                               "Oldest protocol version accepted; TLS 1.0 and 1.1 never are.")
    redirect_http: bool = setting(
        False, BOOL,
        "Answer every request on [server].listen with 308 to the same URL on the first [tls].listen port "
        "(the status pages excepted).")
    hsts: str = setting(
        "", STRING, 'Strict-Transport-Security value on every HTTPS response, e.g. "max-age=31536000" '
        '(unless the app sets its own); "" for none.')
    http2: bool = setting(
        True, BOOL, 'Offer HTTP/2 in the TLS handshake (ALPN "h2", then "http/1.1"); false offers HTTP/1.1 alone. '
        "WebSockets go over HTTP/1.1 either way.")
    sites: tuple[TlsSite, ...] = setting(
        (), Kind("[[tls.sites]] tables", _list_of(_table(TlsSite, "a table"), non_empty=False).convert),
        "Extra certificates chosen by the name the client asks for (SNI).", shown="[]")
    acme: AcmeSettings | None = setting(
        None, _table(AcmeSettings, "a table"), "The ACME CA for sites with acme = true ([tls.acme], below).",
        shown="(defaults)")


def acme_sites(config: "Config") -> tuple[TlsSite, ...]:
    """The sites whose certificates come from ACME, as TLS sites, in the order of [[sites]]."""
    return tuple(site for site in config.tls.sites if site.acme) if config.tls is not None else ()


@dataclass(frozen=True)
class Status:
    """The proxy's own status (JSON) and metrics (Prometheus text) pages; off unless [status] is present."""

    path: str = setting("/_proxy/status", PREFIX, "JSON status of every upstream and server.")
    metrics_path: str = setting("/_proxy/metrics", PREFIX, "Prometheus text exposition of the proxy's counters.")
    cache_path: str = setting(
        "/_proxy/cache", PREFIX, "DELETE here with ?key=KEY purges that key from every cache (a trailing * "
        "purges every key it begins); answers 200 when something was purged, 404 when nothing was.")
    allow: tuple = setting((ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128")),
                           _list_of(NETWORK_OR_UNIX), "Clients allowed to read the status pages and to purge the "
                           "caches (PURGE, DELETE on cache_path); anyone else gets 404 (405 for PURGE). "
                           '"unix:" allows clients of unix: listeners (nginx: allow unix:).',
                           shown='["127.0.0.1/32", "::1/128"]')

    def allows(self, ip: str) -> bool:
        return matching_network(ip, self.allow) is not None


# --- the response cache: [caches.NAME] (routes name one with cache = "NAME") ---

def _convert_cache_folder(value: Any, ctx: Context) -> str:
    """A folder the proxy may create: it must exist, or its parent must."""
    if not isinstance(value, str):
        raise Invalid
    if value == "":
        return ""
    folder = Path(_path(value, ctx))
    if folder.exists() and not folder.is_dir():
        raise Invalid(f"{folder} is not a folder")
    if not folder.exists() and not folder.parent.is_dir():
        raise Invalid(f"neither {folder} nor its parent folder exists")
    return str(folder)


def _convert_cache_key(value: Any, ctx: Context) -> str:
    from .http.cache import KeyTemplate

    if not isinstance(value, str):
        raise Invalid
    try:
        KeyTemplate(value)
    except ValueError as exc:
        raise Invalid(f"{value!r}: {exc}") from None
    return value


def _convert_use_stale(value: Any, ctx: Context) -> frozenset[str]:
    from .http.cache import STALE_CONDITIONS

    if not isinstance(value, list) or not all(v in STALE_CONDITIONS for v in value):
        raise Invalid
    return frozenset(value)


def _convert_header_name(value: Any, ctx: Context) -> str:
    if value == "":
        return ""
    return _convert_token(value, ctx)


CACHE_FOLDER = Kind('a folder (relative to the config file; created if missing), or "" for none',
                    _convert_cache_folder, ("",))
CACHE_KEY = Kind("text with $scheme, $host, $request_uri, $uri, $args, $http_NAME or $cookie_NAME", _convert_cache_key)
USE_STALE = Kind('a list of "error", "timeout", "updating", "http_500", "http_502", "http_503", "http_504"',
                 _convert_use_stale)
HEADER_NAME = Kind('a header name, or "" for none', _convert_header_name)


@dataclass(frozen=True)
class Cache:
    """A response cache (nginx proxy_cache, RFC 9111): a memory tier in each worker, and optionally a
    disk tier that every worker shares and that outlives restarts."""

    name: str = field(metadata={"internal": True})
    memory: int = setting(
        64 * 1024**2, SIZE, "Bytes of responses each worker keeps in memory; the least recently used go first. "
        "A response larger than an eighth of it is kept on disk only (with a path) or not at all.",
        shown='"64m"')
    path: str = setting(
        "", CACHE_FOLDER, "Folder of the disk tier: shared by the workers (one lookup there before the upstream "
        "is asked) and kept across restarts; \"\" for memory only.", shown='""')
    max_size: int = setting(
        1024**3, SIZE, "Bytes the disk tier may hold; the least recently used entries are removed beyond it.",
        shown='"1g"')
    max_entry_size: int = setting(
        1024**2, SIZE, "Largest response body stored; a larger one is relayed and not stored (while it "
        "streams, at most 256 KiB of it is held in memory when there is a disk tier).", shown='"1m"')
    default_ttl: float = setting(
        0.0, SECONDS_OR_ZERO, "Seconds a 200, 301 or 302 without freshness information (Cache-Control max-age, "
        "s-maxage, Expires) is fresh (nginx proxy_cache_valid); 0 = such answers are not stored.")
    key: str = setting(
        "$scheme$host$request_uri", CACHE_KEY, "What tells requests apart (nginx proxy_cache_key); add "
        "$http_NAME or $cookie_NAME to keep answers apart per header or cookie. Vary is honoured on top.")
    lock: bool = setting(
        True, BOOL, "Collapsed forwarding (nginx proxy_cache_lock): while one request for a key is sent "
        "upstream, others for the same key wait for its answer instead of going upstream too.")
    lock_timeout: float = setting(
        5.0, SECONDS, "How long a request waits for another's answer before it goes upstream itself "
        "(and its answer is not stored).")
    use_stale: frozenset[str] = setting(
        frozenset(), USE_STALE, "When an expired entry answers instead of the upstream (nginx "
        'proxy_cache_use_stale): "error", "timeout" or "http_5xx" when the upstream fails, "updating" while '
        "another request refreshes it. The upstream's stale-if-error and stale-while-revalidate allow it too; "
        "no-cache and must-revalidate forbid it.", shown="[]")
    client_no_cache: str = setting(
        "ignore", _choice("ignore", "revalidate"),
        'A client\'s Cache-Control: no-cache (or max-age=0, Pragma: no-cache): "ignore" (nginx\'s default: '
        'a browser\'s reload button does not reach the app) or "revalidate" (RFC 9111: the entry is validated '
        "with the upstream first, and a client's no-store is not stored).")
    status_header: str = setting(
        "X-Cache-Status", HEADER_NAME, "Response header naming what the cache did (HIT, MISS, EXPIRED, STALE, "
        'UPDATING, REVALIDATED, BYPASS); "" for none.')
    template: Any = field(default=None, init=False, compare=False, metadata={"internal": True})

    def __post_init__(self) -> None:
        from .http.cache import KeyTemplate

        object.__setattr__(self, "template", KeyTemplate(self.key))
        if not self.path and self.max_entry_size > self.memory:
            raise Invalid(f"max_entry_size ({self.max_entry_size}) is more than memory ({self.memory}) and there "
                          "is no disk tier: lower it, or set path")


@dataclass(frozen=True)
class Config:
    """The whole file, validated. ``path`` is where it was read from (for reloads and messages)."""

    path: Path
    server: ServerSettings
    limits: Limits
    log: LogSettings
    upstreams: Mapping[str, Upstream]
    routes: tuple[Route, ...]  # the top-level [[routes]]; every route is in ``sites`` too
    status: Status | None = None
    tls: TlsSettings | None = None
    sites: tuple[Site, ...] = ()  # [[sites]], or one default site holding ``routes``
    rate_limits: Mapping[str, RateLimit] = field(default_factory=lambda: MappingProxyType({}))
    caches: Mapping[str, Cache] = field(default_factory=lambda: MappingProxyType({}))

    def all_routes(self) -> tuple[Route, ...]:
        return tuple(route for site in self.sites for route in site.routes)


# The sections a file may hold, and the dataclass each is built into.
SECTIONS: dict[str, type] = {"server": ServerSettings, "limits": Limits, "log": LogSettings}


# --- loading ----------------------------------------------------------------

def _build(cls: type, table: Any, ctx: Context, internal: dict[str, Any] | None = None) -> Any:
    """Build one section dataclass from a TOML table; ``ctx.where`` names it in messages."""
    source, where = ctx.source, ctx.where
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: {where}: expected a table")
    declared = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for key in table:
        if key not in declared:
            known = ", ".join(declared)
            raise ConfigError(f"{source}: {where}.{key}: unknown key (expected one of: {known})")
    values = dict(internal or {})
    for name, f in declared.items():
        if name not in table:
            if f.metadata.get("shown") == "(required)":
                raise ConfigError(f"{source}: {where}.{name}: missing (expected {f.metadata['kind'].expected})")
            continue
        kind: Kind = f.metadata["kind"]
        try:
            values[name] = kind.convert(table[name], ctx.at(name))
        except Invalid as exc:
            detail = str(exc) or f"expected {kind.expected}, got {table[name]!r}"
            raise ConfigError(f"{source}: {where}.{name}: {detail}") from None
    try:
        return cls(**values)
    except Invalid as exc:  # a check across keys, in __post_init__
        raise ConfigError(f"{source}: {where}{'.' + exc.key if exc.key else ''}: {exc}") from None


def load(path: str | os.PathLike) -> Config:
    """Read and validate a proxy.toml; raise ConfigError with a one-line message."""
    source = Path(path)
    try:
        with open(source, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    return from_dict(data, source.resolve())


def from_dict(data: dict[str, Any], source: Path) -> Config:
    """Validate an already-parsed TOML document (tests use this directly)."""
    known = [*SECTIONS, "upstreams", "routes", "sites", "rate_limits", "status", "tls", "caches"]
    for key in data:
        if key not in known:
            raise ConfigError(f"{source}: {key}: unknown section (expected one of: {', '.join(known)})")
    sections = {name: _build(cls, data.get(name, {}), Context(source, name)) for name, cls in SECTIONS.items()}
    upstreams = _named_tables(data, "upstreams", Upstream, source)
    rate_limits = _named_tables(data, "rate_limits", RateLimit, source)
    routes = _convert_section(data, "routes", ROUTES, source)
    sites = _sites(data, routes, source)
    status = _build(Status, data["status"], Context(source, "status")) if "status" in data else None
    tls = _build(TlsSettings, data["tls"], Context(source, "tls")) if "tls" in data else None
    caches = _named_tables(data, "caches", Cache, source)
    tls = _site_certificates(tls, sites, "sites" in data, source)
    config = Config(path=source, upstreams=MappingProxyType(upstreams), routes=routes, status=status, tls=tls,
                    sites=sites, rate_limits=MappingProxyType(rate_limits), caches=MappingProxyType(caches),
                    **sections)
    _cross_check(config)
    return config


def _named_tables(data: dict[str, Any], section: str, cls: type, source: Path) -> dict[str, Any]:
    """``[section.NAME]`` tables, each built into ``cls`` with its name."""
    raw = data.get(section, {})
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {section}: expected tables like [{section}.NAME]")
    return {name: _build(cls, table, Context(source, f"{section}.{name}"), {"name": name})
            for name, table in raw.items()}


def _convert_section(data: dict[str, Any], section: str, kind: Kind, source: Path) -> Any:
    try:
        return kind.convert(data.get(section, []), Context(source, section))
    except Invalid:
        raise ConfigError(f"{source}: {section}: expected {kind.expected}") from None


def _sites(data: dict[str, Any], routes: tuple[Route, ...], source: Path) -> tuple[Site, ...]:
    """The [[sites]]; without any, the top-level [[routes]] are one default site."""
    raw = data.get("sites", [])
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: sites: expected [[sites]] tables")
    if not raw:
        return (Site(where="", default=True, routes=routes),)
    if routes:
        raise ConfigError(f"{source}: routes: with [[sites]], every route belongs to a site: move these "
                          f"[[routes]] into a site as [[sites.routes]] (the default site, for any Host)")
    return tuple(_build(Site, table, Context(source, f"sites[{i}]"), {"where": f"sites[{i}]"})
                 for i, table in enumerate(raw))


def _site_certificates(tls: TlsSettings | None, sites: tuple[Site, ...], explicit: bool,
                       source: Path) -> TlsSettings | None:
    """A site's certificate is served for its names (SNI): as if it were a [[tls.sites]] entry."""
    for site in sites:
        if site.acme:
            _check_acme_site(site, tls, source)
        if site.key is not None and site.certificate is None:
            raise ConfigError(f"{source}: {site.where}.key: given without a certificate")
        if site.certificate is None:
            continue
        if tls is None:
            raise ConfigError(f"{source}: {site.where}.certificate: needs a [tls] section (the HTTPS listen "
                              "addresses and the certificate for other names)")
        if not site.names:
            raise ConfigError(f"{source}: {site.where}.certificate: a site without names is chosen by no SNI "
                              "name; give it names, or make this the [tls] certificate")
    if tls is None or not explicit:
        return tls
    if tls.sites:
        raise ConfigError(f"{source}: tls.sites: with [[sites]], give each site's certificate in its own table "
                          "(certificate = \"...\", key = \"...\" under [[sites]]) instead of [[tls.sites]]")
    certified = tuple(TlsSite(where=site.where, names=site.names, certificate=site.certificate, key=site.key,
                              acme=site.acme) for site in sites if site.certificate is not None or site.acme)
    acme = tls.acme
    if acme is None and any(site.acme for site in sites):
        acme = _build(AcmeSettings, {}, Context(source, "tls.acme"))
    if acme is not None and acme.storage is None:  # its default is relative to the config file's folder
        acme = dataclasses.replace(acme, storage=_convert_storage("acme", Context(source, "tls.acme.storage")))
    return dataclasses.replace(tls, sites=certified, acme=acme)


def _check_acme_site(site: Site, tls: TlsSettings | None, source: Path) -> None:
    """A site that gets its certificate by ACME: a [tls] section, names a CA will certify, no files."""
    where = f"{source}: {site.where}"
    if site.certificate is not None:
        raise ConfigError(f"{where}.acme: the certificate comes from the CA: remove certificate and key, or "
                          "set acme = false")
    if tls is None:
        raise ConfigError(f"{where}.acme: needs a [tls] section (the HTTPS listen addresses)")
    if not site.names:
        raise ConfigError(f"{where}.acme: a CA certifies names: give this site names")
    for name in site.names:
        if name.startswith("*."):
            raise ConfigError(f"{where}.names: {name!r} is a wildcard: a CA certifies one only by the DNS-01 "
                              "challenge, which the proxy does not support: list the names, or give this site "
                              "a certificate file")
        if is_ip_literal(name) or "." not in name:
            raise ConfigError(f"{where}.names: {name!r} is not a public domain name a CA can certify: "
                              "give this site a certificate file for it")


def with_absolute_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """A copy of a parsed proxy.toml whose relative paths are made absolute against ``base``, the folder
    of the file it came from: the same configuration, written anywhere (appserver.stack writes one)."""
    out = copy.deepcopy(data)

    def fix(cls: type, table: Any) -> None:
        for f in dataclasses.fields(cls) if isinstance(table, dict) else ():
            kind = f.metadata.get("kind")
            value = table.get(f.name)
            if kind is None or kind.path_words is None:
                continue
            if isinstance(value, str) and value not in kind.path_words:
                table[f.name] = os.path.join(base, value)  # an absolute value stays as it is
            elif isinstance(value, dict):  # error_pages: a file per status
                table[f.name] = {k: os.path.join(base, v) if isinstance(v, str) else v for k, v in value.items()}

    def fix_routes(routes: Any) -> None:
        for route in routes if isinstance(routes, list) else ():
            fix(Route, route)
            fix(BasicAuth, route.get("basic_auth") if isinstance(route, dict) else None)

    for name, cls in SECTIONS.items():
        fix(cls, out.get(name))
    tls_table = out.get("tls")
    if isinstance(tls_table, dict) and isinstance(tls_table.get("acme"), dict):
        fix(AcmeSettings, tls_table["acme"])
    fix_routes(out.get("routes"))
    for site in out.get("sites", []) if isinstance(out.get("sites"), list) else ():
        fix(Site, site)
        fix_routes(site.get("routes") if isinstance(site, dict) else None)
    for upstream in out.get("upstreams", {}).values() if isinstance(out.get("upstreams"), dict) else ():
        fix(UpstreamTls, upstream.get("tls") if isinstance(upstream, dict) else None)
    tls = out.get("tls")
    fix(TlsSettings, tls)
    for table in out.get("caches", {}).values() if isinstance(out.get("caches"), dict) else ():
        fix(Cache, table)
    for site in tls.get("sites", []) if isinstance(tls, dict) and isinstance(tls.get("sites"), list) else ():
        fix(TlsSite, site)
    return out


def _cross_check(config: Config) -> None:
    source = config.path
    seen: set = set()
    _check_listen("server.listen", config.server.listen, seen, source, "")
    for name, upstream in config.upstreams.items():
        if upstream.tls is not None:
            from .tls import client_context  # built once here to check ca_file, and again per worker

            client_context(upstream.tls, f"upstreams.{name}.tls", source)
    _check_sites(config, source)
    if config.tls is not None:
        _check_tls(config.tls, seen, source)


def _check_route_cache(config: Config, route: Route) -> None:
    source = config.path
    if route.cache not in config.caches:
        defined = ", ".join(config.caches) or "none"
        raise ConfigError(f"{source}: {route.where}.cache: unknown cache {route.cache!r} (defined: {defined})")
    if not route.upstream:
        raise ConfigError(f"{source}: {route.where}.cache: a cache stores what an upstream answers: set upstream too")


def _check_sites(config: Config, source: Path) -> None:
    """Each name once, one default at most, and routes that make sense together."""
    names: dict[str, str] = {}
    default = ""
    for site in config.sites:
        if not site.names and not site.default:
            raise ConfigError(f"{source}: {site.where}: expected names, default = true, or both")
        for name in site.names:
            if name in names:
                raise ConfigError(f"{source}: {site.where}.names: {name!r} is named by {names[name]} too")
            names[name] = site.where
        if site.default and default:
            raise ConfigError(f"{source}: {site.where}.default: {default} is the default site already")
        default = site.where if site.default else default
        prefixes: set[str] = set()
        for route in site.routes:
            if route.prefix in prefixes:
                raise ConfigError(f"{source}: {route.where}.prefix: {route.prefix!r} is used by an earlier route")
            prefixes.add(route.prefix)
            _check_route(route, config, source)


def _check_route(route: Route, config: Config, source: Path) -> None:
    where = f"{source}: {route.where}"
    if route.redirect is not None:
        if route.static is not None or route.upstream:
            raise ConfigError(f"{where}.redirect: a redirect answers every request itself: remove static and "
                              "upstream from this route")
    elif route.static is None and not route.upstream:
        raise ConfigError(f"{where}: expected static, upstream, both, or redirect")
    if route.upstream and route.upstream not in config.upstreams:
        defined = ", ".join(config.upstreams) or "none"
        raise ConfigError(f"{where}.upstream: unknown upstream {route.upstream!r} (defined: {defined})")
    if not route.upstream:
        for key in ("strip_prefix", "upstream_prefix", "request_headers", "intercept_errors"):
            if getattr(route, key):
                raise ConfigError(f"{where}.{key}: only for a route with an upstream (it changes what is "
                                  "forwarded)")
    if route.intercept_errors and not route.error_pages:
        raise ConfigError(f"{where}.intercept_errors: needs error_pages to replace the upstream's errors with")
    if route.rate_limit and route.rate_limit not in config.rate_limits:
        defined = ", ".join(config.rate_limits) or "none"
        raise ConfigError(f"{where}.rate_limit: unknown rate limit {route.rate_limit!r} (defined: {defined})")
    if route.cache:
        _check_route_cache(config, route)


def _check_listen(where: str, listen: tuple[Listen, ...], seen: set, source: Path, again: str) -> None:
    """Each address once (port 0 excepted: every one is a new port), across [server] and [tls]."""
    for entry in listen:
        address = entry.address
        if address in seen and getattr(address, "port", None) != 0:
            raise ConfigError(f"{source}: {where}: {address} is listed twice{again}")
        seen.add(address)


def _check_tls(tls: TlsSettings, plain: set, source: Path) -> None:
    """Listen addresses apart from [server].listen, each SNI name once, and certificates that load."""
    _check_listen("tls.listen", tls.listen, set(plain), source, " (in [server] or [tls])")
    if tls.certificate is None and not any(site.acme for site in tls.sites):
        raise ConfigError(f"{source}: tls.certificate: missing (expected {PEM_FILE.expected}; it may be left out "
                          "when a [[sites]] entry has acme = true)")
    if tls.certificate is None and tls.key is not None:
        raise ConfigError(f"{source}: tls.key: given without a certificate")
    names: set[str] = set()
    for i, site in enumerate(tls.sites):
        for name in site.names:
            if name in names:
                raise ConfigError(f"{source}: {site.where or f'tls.sites[{i}]'}.names: {name!r} is named by an "
                                  "earlier site")
            names.add(name)
    from .tls import load_certificates  # ssl contexts are built once here to check them, and again per Runtime

    load_certificates(tls, source)


# --- reference documentation ------------------------------------------------

def _shown(f: dataclasses.Field) -> str:
    if f.metadata.get("shown"):
        return f.metadata["shown"]
    default = f.default
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, str):
        return f'"{default}"'
    return str(default)


def reference() -> str:
    """The configuration reference as Markdown, generated from the declarations above."""
    tables = [*((f"[{name}]", cls) for name, cls in SECTIONS.items()),
              ("listen = [{...}] entries", Listen),
              ("[upstreams.NAME]", Upstream), ("servers = [{...}] entries", ServerSpec),
              ("[upstreams.NAME.health]", Health), ("[upstreams.NAME.tls]", UpstreamTls), ("[[sites]]", Site),
              ("[[routes]] and [[sites.routes]]", Route), ("compress of a route", Compress),
              ("request_headers and response_headers of a route", HeaderRules),
              ("basic_auth of a route", BasicAuth), ("[rate_limits.NAME]", RateLimit), ("[status]", Status),
              ("[tls]", TlsSettings), ("[[tls.sites]]", TlsSite), ("[tls.acme]", AcmeSettings),
              ("[caches.NAME]", Cache)]
    out: list[str] = []
    for title, cls in tables:
        out += [f"### `{title}`", "", "| key | default | meaning |", "|---|---|---|"]
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                continue
            doc = f.metadata["doc"] + f" ({f.metadata['kind'].expected}.)"
            out.append(f"| `{f.name}` | `{_shown(f)}` | {doc} |")
        out.append("")
    return "\n".join(out)


def _update_doc(path: Path) -> None:
    """Replace the generated part of docs/configuration.md (between its markers)."""
    text = path.read_text()
    start, end = "<!-- reference:start -->\n", "<!-- reference:end -->"
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    path.write_text(head + start + reference() + end + tail)


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--update"]:
        _update_doc(Path(sys.argv[2]))
    else:
        print(reference())
