"""Counters behind /_proxy/status and /_proxy/metrics, and their two renderings.

Every finished request already becomes an AccessRecord; ``Metrics.observe``
counts it (requests by route and status, a duration histogram), so the
numbers and the access log can never disagree. Upstream state is read from
the groups when a page is asked for. Rendering is plain functions: JSON for
people and scripts, the Prometheus text exposition format (version 0.0.4,
simple enough that a dependency would not pay for itself) for scrapers.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter

from .accesslog import AccessRecord

# Request duration buckets in seconds (Prometheus client defaults, which suit web requests).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.started = time.time()
        self.requests: Counter[tuple[str, int]] = Counter()  # (route, status) -> count
        self.buckets: Counter[tuple[str, float]] = Counter()  # (route, le) -> count
        self.duration_sum: Counter[str] = Counter()
        self.duration_count: Counter[str] = Counter()
        # Edge protocols: kept up to date by server/tls.py and server/tunnel.py as things happen.
        self.tls_handshakes = 0
        self.tls_failures: Counter[str] = Counter()  # by tls.Failure.kind
        self.tunnels_open = 0
        self.tunnels_total = 0
        self.tunnel_bytes: Counter[str] = Counter()  # "to_upstream", "to_client"

    def observe(self, record: AccessRecord) -> None:
        route = record.route or "-"
        self.requests[route, record.status] += 1
        if record.tunnel:
            return  # a tunnel's lifetime (minutes) would swamp the request-duration histogram
        seconds = record.request_time
        self.duration_sum[route] += seconds
        self.duration_count[route] += 1
        for le in BUCKETS:
            if seconds <= le:
                self.buckets[route, le] += 1
                break


def process_stats() -> dict:
    """This worker's open file descriptors, asyncio tasks and memory: what a leak would grow."""
    import asyncio

    stats = {"open_fds": len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None}
    try:
        stats["tasks"] = len(asyncio.all_tasks())
    except RuntimeError:
        stats["tasks"] = None
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key = "rss_bytes" if line.startswith("VmRSS") else "peak_rss_bytes"
                    stats[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return stats


def snapshot(runtime) -> dict:
    """Everything the status page shows, as plain data."""
    now = runtime.loop.time()
    upstreams = {}
    for name, group in runtime.groups.items():
        servers = []
        for peer in group.peers:
            servers.append({
                "address": str(peer.address),
                "configured_as": str(peer.spec.address),
                "state": peer.state(now),
                "weight": peer.weight,
                "backup": peer.spec.backup,
                "max_conns": peer.spec.max_conns,
                "in_flight": peer.in_flight,
                "requests": peer.requests,
                "failures": peer.failures,
                "idle_connections": len(peer.pool.idle),
                "connects": peer.pool.connects,
                "last_error": peer.last_error or peer.health.last_error or None,
                "last_check_seconds_ago": (round(now - peer.health.last_check, 3)
                                           if peer.health.last_check is not None else None),
            })
        upstreams[name] = {"balance": group.config.balance, "servers": servers}
    metrics = runtime.metrics
    return {
        "server": runtime.config.server.name,
        "pid": os.getpid(),
        "uptime_seconds": round(time.time() - metrics.started, 3),
        "connections": {"open": len(runtime.handlers), "active": sum(1 for h in runtime.handlers if h.busy),
                        "refused_at_max": runtime.refused},
        "process": process_stats(),
        "requests": sum(metrics.requests.values()),
        "upstreams": upstreams,
        "tunnels": {"open": metrics.tunnels_open, "total": metrics.tunnels_total,
                    "bytes_to_upstream": metrics.tunnel_bytes["to_upstream"],
                    "bytes_to_client": metrics.tunnel_bytes["to_client"]},
        "tls": ({"handshakes": metrics.tls_handshakes, "failures": dict(sorted(metrics.tls_failures.items()))}
                if runtime.tls is not None else None),
    }


def render_json(data: dict) -> bytes:
    return json.dumps(data, indent=2).encode() + b"\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


STATES = ("up", "down", "failed", "draining")


def _edge_samples(metrics: Metrics) -> list[str]:
    """Tunnels (upgraded connections) and TLS handshakes."""
    out = ["# HELP proxy_tunnels_open Upgraded connections (WebSocket tunnels) open now.",
           "# TYPE proxy_tunnels_open gauge", f"proxy_tunnels_open {metrics.tunnels_open}",
           "# HELP proxy_tunnels_total Upgraded connections opened.",
           "# TYPE proxy_tunnels_total counter", f"proxy_tunnels_total {metrics.tunnels_total}",
           "# HELP proxy_tunnel_bytes_total Bytes relayed through tunnels, by direction.",
           "# TYPE proxy_tunnel_bytes_total counter"]
    out += [f'proxy_tunnel_bytes_total{{direction="{d}"}} {metrics.tunnel_bytes[d]}' for d in ("to_upstream", "to_client")]
    out += ["# HELP proxy_tls_handshakes_total TLS handshakes completed.",
            "# TYPE proxy_tls_handshakes_total counter", f"proxy_tls_handshakes_total {metrics.tls_handshakes}",
            "# HELP proxy_tls_handshake_failures_total TLS handshakes that failed, by cause.",
            "# TYPE proxy_tls_handshake_failures_total counter"]
    out += [f'proxy_tls_handshake_failures_total{{reason="{_label(kind)}"}} {n}'
            for kind, n in sorted(metrics.tls_failures.items())]
    return out


def render_prometheus(runtime) -> bytes:
    """The text exposition format: HELP, TYPE, then samples."""
    metrics = runtime.metrics
    data = snapshot(runtime)
    out = [
        "# HELP proxy_requests_total Requests answered, by route prefix and status.",
        "# TYPE proxy_requests_total counter",
    ]
    for (route, status), count in sorted(metrics.requests.items()):
        out.append(f'proxy_requests_total{{route="{_label(route)}",status="{status}"}} {count}')
    out += ["# HELP proxy_request_duration_seconds Time from request head to the end of the answer.",
            "# TYPE proxy_request_duration_seconds histogram"]
    for route in sorted(metrics.duration_count):
        cumulative = 0
        for le in BUCKETS:
            cumulative += metrics.buckets[route, le]
            out.append(f'proxy_request_duration_seconds_bucket{{route="{_label(route)}",le="{le}"}} {cumulative}')
        out.append(f'proxy_request_duration_seconds_bucket{{route="{_label(route)}",le="+Inf"}} '
                   f"{metrics.duration_count[route]}")
        out.append(f'proxy_request_duration_seconds_sum{{route="{_label(route)}"}} {metrics.duration_sum[route]:.6f}')
        out.append(f'proxy_request_duration_seconds_count{{route="{_label(route)}"}} {metrics.duration_count[route]}')
    out += ["# HELP proxy_connections Client connections open now.", "# TYPE proxy_connections gauge",
            f"proxy_connections {data['connections']['open']}"]
    series = {
        "proxy_upstream_state": ("gauge", "1 for the state each upstream server is in."),
        "proxy_upstream_in_flight": ("gauge", "Requests in flight to each upstream server."),
        "proxy_upstream_requests_total": ("counter", "Tries sent to each upstream server."),
        "proxy_upstream_failures_total": ("counter", "Failed tries per upstream server."),
        "proxy_upstream_idle_connections": ("gauge", "Idle pooled connections per upstream server."),
    }
    samples: dict[str, list[str]] = {name: [] for name in series}
    for name, group in data["upstreams"].items():
        for server in group["servers"]:
            labels = f'upstream="{_label(name)}",server="{_label(server["address"])}"'
            for state in STATES:
                samples["proxy_upstream_state"].append(
                    f'proxy_upstream_state{{{labels},state="{state}"}} {int(server["state"] == state)}')
            samples["proxy_upstream_in_flight"].append(f"proxy_upstream_in_flight{{{labels}}} {server['in_flight']}")
            samples["proxy_upstream_requests_total"].append(
                f"proxy_upstream_requests_total{{{labels}}} {server['requests']}")
            samples["proxy_upstream_failures_total"].append(
                f"proxy_upstream_failures_total{{{labels}}} {server['failures']}")
            samples["proxy_upstream_idle_connections"].append(
                f"proxy_upstream_idle_connections{{{labels}}} {server['idle_connections']}")
    for name, (kind, text) in series.items():
        out += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", *samples[name]]
    out += _edge_samples(metrics)
    return ("\n".join(out) + "\n").encode()
