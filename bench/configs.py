"""The two servers' configurations, written so that they do the same work.

Both: one worker, access log off, a plain listener and a TLS one that
offers HTTP/2 (the same self-signed certificate; nginx ``listen ... ssl
http2``), /static/ served from the same folder,
/api/ forwarded to the same Gunicorn over pooled HTTP/1.1 keep-alive
connections (32 idle per server), the client's address and scheme passed on
in X-Forwarded-* / X-Real-IP / Forwarded, a request id added both ways, and
64 KiB of response buffered in memory before spilling to a temporary file.
Where the proxy has a default that nginx does not (precompressed siblings),
nginx is given the matching directive (gzip_static), so neither is spared a
stat the other makes. ``keepalive_requests`` is high on both: h2load does
not open a new connection after a GOAWAY, so a limit it reaches would end
its run in errors.

Pure functions of a ``Layout``: nothing here touches the file system.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path


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

        location /static/ {{
            alias {layout.static}/;
            gzip_static on;
        }}

        location /api/ {{
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
        }}
    }}
}}
"""


def proxy_toml(layout: Layout) -> str:
    workers = f"workers = {layout.workers}\n" if layout.proxy_master else ""
    return textwrap.dedent(f"""\
        # Written by bench/configs.py for one benchmark run; not for deployment.
        [server]
        listen = ["127.0.0.1:0"]
        sendfile = {"true" if layout.proxy_sendfile else "false"}
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

        [[routes]]
        prefix = "/static/"
        static = "{layout.static}"

        [[routes]]
        prefix = "/api/"
        upstream = "app"
        """)
