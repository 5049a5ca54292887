"""The servers' configurations, written so that they do the same work.

All of them: one worker, access log off, a plain listener and a TLS one
that offers HTTP/2 (the same self-signed certificate; nginx ``listen ...
ssl http2``), /static/ served from the same folder,
/api/ forwarded to the same Gunicorn over pooled HTTP/1.1 keep-alive
connections (32 idle per server), the client's address and scheme passed on
in X-Forwarded-* / X-Real-IP / Forwarded, a request id added both ways, and
64 KiB of response buffered in memory before spilling to a temporary file.
Where the proxy has a default that nginx does not (precompressed siblings),
nginx is given the matching directive (gzip_static), so neither is spared a
stat the other makes. The gzip scenario's path compresses on both: nginx's
``gzip on`` with the proxy's settings (level, minimum length, the type,
proxied answers, Vary), the proxy's ``compress`` limited to gzip at that
level; every other path compresses on neither. The gzip and policy paths
are served only when their scenario runs, so an older proxy (``--proxy-src``)
without those settings can still be measured on the others. /api/cached/ is
/api/ with a response cache on both: nginx's proxy_cache (a disk cache with
its keys in shared memory, the cache lock on) and the proxy's (memory, and a
disk tier the proxies share, as a proxy's workers would), each adding
X-Cache-Status. ``keepalive_requests`` is high on both: h2load does not open
a new connection after a GOAWAY, so a limit it reaches would end its run in
errors.

The proxy runs once per HTTP/1.1 engine (``ENGINES``): one config each,
identical but for ``[server] http_engine``.

What each URL prefix does is one row of ``LOCATIONS``: nginx's ``location``
block and the proxy's ``[[routes]]`` entry side by side, with what either
needs beside them (an nginx ``http``-level directive such as
``proxy_cache_path``, a top-level proxy table such as ``[caches.NAME]``), so
a new scenario that needs a new kind of work adds one row and both servers
get it.

Pure functions of a ``Layout``: nothing here touches the file system.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .scenarios import GZIP_LEVEL, GZIP_PATH

# The proxy's [server] http_engine values the harness measures, in the order they are reported.
# "auto" means llhttp; the harness names the engine so the label and the config cannot disagree.
ENGINES = ("llhttp", "h11")


@dataclass(frozen=True)
class Layout:
    """Where everything of one run lives, and the options that shape the configs."""

    work: Path  # the run's temporary folder (nginx prefix, configs, logs)
    static: Path  # the shared static folder
    app_port: int  # Gunicorn
    nginx_port: int
    nginx_tls_port: int
    certificate: Path  # and key: made for the run (proxy gencert), used by both servers
    key: Path
    nginx_sendfile: bool
    proxy_sendfile: bool
    workers: int = 1
    proxy_master: bool = False  # the proxy has [server] workers: a master forks that many workers
    run_as_root: bool = False  # nginx's master then needs a `user` for its worker
    policy: bool = False  # serve /policy/ too (a proxy older than request policy has no such keys)
    gzip: bool = False  # serve the gzip scenario's path too (a proxy older than compression has no such key)

    def proxy_config(self, engine: str) -> Path:
        """Where the config of the proxy running ``engine`` is written."""
        return self.work / f"proxy-{engine}.toml"


def _nothing(layout: Layout) -> str:
    return ""


@dataclass(frozen=True)
class Location:
    """One URL prefix, served alike by both servers. Each part is a function of the Layout, giving lines."""

    prefix: str
    nginx: Callable[[Layout], str]  # the directives inside nginx's `location PREFIX { }`
    proxy: Callable[[Layout], str]  # the keys of the proxy's [[routes]] entry, beside `prefix`
    nginx_http: Callable[[Layout], str] = _nothing  # directives it needs in nginx's http block
    proxy_tables: Callable[[Layout], str] = _nothing  # top-level TOML tables it needs in the proxy's config
    wanted: Callable[[Layout], bool] = lambda layout: True  # whether this run serves it at all


def _nginx_static(layout: Layout) -> str:
    return f"""\
alias {layout.static}/;
gzip_static on;
"""


def _nginx_api(layout: Layout) -> str:
    return """\
proxy_pass http://app;
proxy_http_version 1.1;
proxy_set_header Connection "";
proxy_set_header Host $http_host;
proxy_set_header X-Forwarded-For $remote_addr;
proxy_set_header X-Forwarded-Proto $scheme;
proxy_set_header X-Forwarded-Host $http_host;
proxy_set_header X-Real-IP $remote_addr;
proxy_set_header Forwarded "for=$remote_addr;proto=$scheme;host=\\"$http_host\\"";
proxy_set_header X-Request-ID $request_id;
add_header X-Request-ID $request_id always;
proxy_connect_timeout 3s;
proxy_read_timeout 60s;
proxy_send_timeout 60s;
proxy_buffer_size 8k;
proxy_buffers 8 8k;
"""


def _nginx_gzip(layout: Layout) -> str:
    return _nginx_api(layout) + f"""\
gzip on;
gzip_comp_level {GZIP_LEVEL};
gzip_min_length 1024;
gzip_types application/json;
gzip_proxied any;
gzip_vary on;
"""


def _nginx_cached(layout: Layout) -> str:
    return _nginx_api(layout) + """\
proxy_cache cached;
proxy_cache_lock on;
add_header X-Cache-Status $upstream_cache_status;
"""


def _nginx_cache_path(layout: Layout) -> str:
    return (f"proxy_cache_path {layout.work}/nginx-cache levels=1:2 keys_zone=cached:16m max_size=1g inactive=60m "
            f"use_temp_path=off;\n")


def _proxy_cache_table(layout: Layout) -> str:
    return f'[caches.bench]\nmemory = "64m"\npath = "{layout.work}/proxy-cache"\n'


# /policy/: /api/ through a route with a request header rule, an allow list and a rate limit, at a rate no
# run reaches (every request is counted, none refused): what request policy costs a proxied request.
POLICY_RATE = 1_000_000


def _nginx_policy(layout: Layout) -> str:
    return _nginx_api(layout) + f"""\
proxy_set_header X-Site shop;
allow 127.0.0.0/8;
deny all;
limit_req zone=bench burst={POLICY_RATE} nodelay;
"""


def _proxy_policy(layout: Layout) -> str:
    return """\
upstream = "app"
request_headers = { set = { "X-Site" = "shop" } }
allow = ["127.0.0.0/8"]
rate_limit = "bench"
"""


LOCATIONS: tuple[Location, ...] = (
    Location("/static/", _nginx_static, lambda layout: f'static = "{layout.static}"\n'),
    Location("/api/", _nginx_api, lambda layout: 'upstream = "app"\n'),
    Location(GZIP_PATH, _nginx_gzip, lambda layout: (
        f'upstream = "app"\ncompress = {{ encodings = ["gzip"], level = {{ gzip = {GZIP_LEVEL} }} }}\n'),
             wanted=lambda layout: layout.gzip),
    # /api/ with a response cache on both (scenario cached-4k, bench/collapse.py).
    Location("/api/cached/", _nginx_cached, lambda layout: 'upstream = "app"\ncache = "bench"\n',
             nginx_http=_nginx_cache_path, proxy_tables=_proxy_cache_table),
    Location("/policy/", _nginx_policy, _proxy_policy,
             nginx_http=lambda layout: f"limit_req_zone $binary_remote_addr zone=bench:10m rate={POLICY_RATE}r/s;\n",
             proxy_tables=lambda layout: f'[rate_limits.bench]\nrate = "{POLICY_RATE}r/s"\nburst = {POLICY_RATE}\n',
             wanted=lambda layout: layout.policy),
)


def _locations(layout: Layout) -> list[Location]:
    return [loc for loc in LOCATIONS if loc.wanted(layout)]


def _nginx_locations(layout: Layout) -> str:
    blocks = [f"location {loc.prefix} {{\n{textwrap.indent(loc.nginx(layout), '    ')}}}\n"
              for loc in _locations(layout)]
    return textwrap.indent("\n".join(blocks), " " * 8)


def _nginx_http(layout: Layout) -> str:
    return textwrap.indent("".join(loc.nginx_http(layout) for loc in _locations(layout)), " " * 4)


KEEPALIVE_REQUESTS = 1_000_000


def nginx_conf(layout: Layout) -> str:
    work = layout.work
    user = "user root root;\n" if layout.run_as_root else ""
    return f"""\
# Written by bench/configs.py for one benchmark run; not for deployment.
{user}worker_processes {layout.workers};
daemon off;
master_process on;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
worker_rlimit_nofile 16384;

events {{
    worker_connections 8192;
}}

http {{
    access_log off;
    server_tokens off;
    default_type application/octet-stream;
    types {{
        text/html html;
        application/json json;
        application/octet-stream bin;
    }}
    sendfile {"on" if layout.nginx_sendfile else "off"};
    tcp_nodelay on;
    keepalive_timeout 5s;
    keepalive_requests {KEEPALIVE_REQUESTS};
    client_max_body_size 1m;
    client_body_temp_path {work}/nginx-client-body;
    proxy_temp_path {work}/nginx-proxy-temp;
    fastcgi_temp_path {work}/nginx-fastcgi-temp;
    uwsgi_temp_path {work}/nginx-uwsgi-temp;
    scgi_temp_path {work}/nginx-scgi-temp;
{_nginx_http(layout)}
    upstream app {{
        server 127.0.0.1:{layout.app_port};
        keepalive 32;
        keepalive_timeout 60s;
    }}

    server {{
        listen 127.0.0.1:{layout.nginx_port} backlog=1024;
        listen 127.0.0.1:{layout.nginx_tls_port} ssl http2 backlog=1024;
        ssl_certificate {layout.certificate};
        ssl_certificate_key {layout.key};
        ssl_protocols TLSv1.2 TLSv1.3;

{_nginx_locations(layout)}    }}
}}
"""


def proxy_toml(layout: Layout, engine: str = ENGINES[0]) -> str:
    workers = f"workers = {layout.workers}\n" if layout.proxy_master else ""
    routes = "".join(f'\n[[routes]]\nprefix = "{loc.prefix}"\n{loc.proxy(layout)}' for loc in _locations(layout))
    tables = "".join(f"\n{text}" for text in (loc.proxy_tables(layout) for loc in _locations(layout)) if text)
    return textwrap.dedent(f"""\
        # Written by bench/configs.py for one benchmark run; not for deployment.
        [server]
        listen = ["127.0.0.1:0"]
        sendfile = {"true" if layout.proxy_sendfile else "false"}
        http_engine = "{engine}"
        """) + workers + textwrap.dedent(f"""\

        [limits]
        keepalive_requests = {KEEPALIVE_REQUESTS}

        [tls]
        listen = ["127.0.0.1:0"]
        certificate = "{layout.certificate}"
        key = "{layout.key}"

        [log]
        access = "off"

        [upstreams.app]
        servers = ["127.0.0.1:{layout.app_port}"]
        keepalive = 32
        """) + routes + tables
