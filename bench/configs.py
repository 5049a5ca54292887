"""The two servers' configurations, written so that they do the same work.

Both: one worker, access log off, /static/ served from the same folder,
/api/ forwarded to the same Gunicorn over pooled HTTP/1.1 keep-alive
connections (32 idle per server), the client's address and scheme passed on
in X-Forwarded-* / X-Real-IP / Forwarded, a request id added both ways, and
64 KiB of response buffered in memory before spilling to a temporary file.
Where the proxy has a default that nginx does not (precompressed siblings),
nginx is given the matching directive (gzip_static), so neither is spared a
stat the other makes. The gzip scenario's path compresses on both: nginx's
``gzip on`` with the proxy's settings (level, minimum length, the type,
proxied answers, Vary), the proxy's ``compress`` limited to gzip at that
level.

Pure functions of a ``Layout``: nothing here touches the file system.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

from .scenarios import GZIP_LEVEL, GZIP_PATH


@dataclass(frozen=True)
class Layout:
    """Where everything of one run lives, and the options that shape the configs."""

    work: Path  # the run's temporary folder (nginx prefix, configs, logs)
    static: Path  # the shared static folder
    app_port: int  # Gunicorn
    nginx_port: int
    nginx_sendfile: bool
    proxy_sendfile: bool
    workers: int = 1
    proxy_master: bool = False  # the proxy has [server] workers: a master forks that many workers
    run_as_root: bool = False  # nginx's master then needs a `user` for its worker


# One nginx location's forwarding, the same in every location that forwards.
NGINX_PROXY = """\
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
            proxy_buffers 8 8k;"""


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
    keepalive_requests 1000;
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

        location /static/ {{
            alias {layout.static}/;
            gzip_static on;
        }}

        location /api/ {{
{NGINX_PROXY}
        }}

        location {GZIP_PATH} {{
{NGINX_PROXY}
            gzip on;
            gzip_comp_level {GZIP_LEVEL};
            gzip_min_length 1024;
            gzip_types application/json;
            gzip_proxied any;
            gzip_vary on;
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

        [[routes]]
        prefix = "{GZIP_PATH}"
        upstream = "app"
        compress = {{ encodings = ["gzip"], level = {{ gzip = {GZIP_LEVEL} }} }}
        """)
