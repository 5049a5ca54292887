"""Counters behind /_proxy/status and /_proxy/metrics, and their two renderings.

Every finished request already becomes an AccessRecord; ``Metrics.observe``
counts it (requests by route and status, a duration histogram), so the
numbers and the access log can never disagree. Upstream state is read from
the groups when a page is asked for.

The pipeline is plain data all the way: ``worker_view`` describes one
worker, ``merge`` adds the views of every worker (read from the shared
board, see server/board.py), and ``status_document`` / ``render_prometheus``
render the merged view: JSON for people and scripts, the Prometheus text
exposition format (version 0.0.4, simple enough that a dependency would not
pay for itself) for scrapers.

Workers come and go (a reload replaces them all, a dead one is replaced);
the counters must not. The master publishes a ``master_view`` on the same
board: its pid, its start time, and ``retired``, the counters of every
worker that has left, each folded in by ``retire`` from the last view the
worker published. ``merge`` adds those to the live workers' numbers, so a
Prometheus counter only ever grows while the master lives.
"""

from __future__ import annotations

import json
import os
import time
from bisect import bisect_left
from collections import Counter

from .accesslog import AccessRecord, iso8601
from .upstream.group import STATES

# Request duration buckets in seconds (Prometheus client defaults, which suit web requests).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# A server's state as most workers see it (upstream/group.py says what each means); on a tie, the one
# that needs attention.
_SEVERITY = {state: rank for rank, state in enumerate(STATES)}

# Per-server numbers that add up across workers; the counters among them also across workers' lives
# (in_flight and idle_connections describe now, so a departed worker's are not kept).
_SUMMED = ("in_flight", "requests", "failures", "idle_connections", "active_connections", "connects")
_COUNTERS = ("requests", "failures", "connects")


class Metrics:
    def __init__(self) -> None:
        self.started = time.time()
        self.requests: Counter[tuple[str, int]] = Counter()  # (route, status) -> count
        self.buckets: Counter[tuple[str, float]] = Counter()  # (route, le) -> count in that bucket alone
        self.duration_sum: Counter[str] = Counter()
        self.duration_count: Counter[str] = Counter()
        # Edge protocols: kept up to date by server/tls.py and server/tunnel.py as things happen.
        self.tls_handshakes = 0
        self.tls_failures: Counter[str] = Counter()  # by tls.Failure.kind
        self.tunnels_open = 0
        self.tunnels_total = 0
        self.tunnel_bytes: Counter[str] = Counter()  # "to_upstream", "to_client"
        # HTTP/2 (server/h2conn.py): connections open and opened, streams answered, streams the client reset
        # while they were answered, GOAWAY frames sent by reason.
        self.http2_open = 0
        self.http2_connections = 0
        self.http2_streams = 0
        self.http2_resets = 0
        self.http2_goaway: Counter[str] = Counter()
        self.proxy_protocol_refused = 0  # connections closed for a missing or malformed PROXY header

    def observe(self, record: AccessRecord) -> None:
        self.count(record.route, record.status, record.request_time, bool(record.tunnel))

    def count(self, route: str, status: int, seconds: float, tunnel: bool = False) -> None:
        route = route or "-"
        self.requests[route, status] += 1
        if tunnel:
            return  # a tunnel's lifetime (minutes) would swamp the request-duration histogram
        self.duration_sum[route] += seconds
        self.duration_count[route] += 1
        i = bisect_left(BUCKETS, seconds)  # the first bucket whose bound is >= seconds
        if i < len(BUCKETS):
            self.buckets[route, BUCKETS[i]] += 1

    def as_data(self) -> dict:
        return {
            "requests": [[route, status, count] for (route, status), count in self.requests.items()],
            "durations": {route: {"sum": self.duration_sum[route], "count": count,
                                  "buckets": [self.buckets[route, le] for le in BUCKETS]}
                          for route, count in self.duration_count.items()},
        }


_PROCESS_STATS: list = [0.0, {}]  # when last read, and what


def process_stats(max_age: float = 1.0) -> dict:
    """This worker's open file descriptors, asyncio tasks and memory: what a leak would grow.

    Counting descriptors lists /proc/self/fd, which grows with the connections; read at most once
    a second, so a status page costs the same however many connections are open.
    """
    now = time.monotonic()
    if now - _PROCESS_STATS[0] >= max_age:
        _PROCESS_STATS[:] = [now, _read_process_stats()]
    return dict(_PROCESS_STATS[1])


def _read_process_stats() -> dict:
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


def worker_view(runtime) -> dict:
    """One worker's counters and upstream view, as plain data (what it pins on the board).

    ``runtime`` is the worker (server/worker.py): counters only, nothing that walks its connections."""
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
                "active_connections": peer.pool.counts["active"],
                "connects": peer.pool.connects,
                "last_error": peer.last_error or peer.health.last_error or None,
                "last_check_seconds_ago": (round(now - peer.health.last_check, 3)
                                           if peer.health.last_check is not None else None),
            })
        upstreams[name] = {"balance": group.config.balance, "queued": len(group.waiting), "servers": servers}
    return {
        "pid": os.getpid(),
        "published": time.time(),
        "started": runtime.metrics.started,
        "connections": {"open": len(runtime.conns.open), "active": runtime.conns.active,
                        "refused_at_max": runtime.conns.refused},
        "process": process_stats(),
        "metrics": runtime.metrics.as_data(),
        "upstreams": upstreams,
        "edge": edge_view(runtime),
        "caches": runtime.caches.view(),
    }


# --- edge protocols: open tunnels and their bytes, TLS handshakes, HTTP/2 ----

TUNNEL_KEYS = ("open", "total", "bytes_to_upstream", "bytes_to_client")
HTTP2_KEYS = ("connections_open", "connections_total", "streams_total", "resets_by_client")


def edge_view(runtime) -> dict:
    metrics = runtime.metrics
    tunnels = (metrics.tunnels_open, metrics.tunnels_total, metrics.tunnel_bytes["to_upstream"],
               metrics.tunnel_bytes["to_client"])
    http2 = (metrics.http2_open, metrics.http2_connections, metrics.http2_streams, metrics.http2_resets)
    return {"tunnels": dict(zip(TUNNEL_KEYS, tunnels)),
            "tls": ({"handshakes": metrics.tls_handshakes, "failures": dict(metrics.tls_failures)}
                    if runtime.tls is not None else None),
            "http2": {**dict(zip(HTTP2_KEYS, http2)), "goaway": dict(metrics.http2_goaway)},
            "proxy_protocol": {"refused": metrics.proxy_protocol_refused}}


def merge_edge(edges) -> dict:
    """Every worker's tunnel, TLS and HTTP/2 numbers added up; "tls" is None when TLS is off."""
    tunnels: Counter[str] = Counter()
    http2: Counter[str] = Counter()
    goaway: Counter[str] = Counter()
    handshakes, failures, tls_on, refused = 0, Counter(), False, 0
    for edge in edges:
        tunnels.update(edge["tunnels"])
        refused += edge.get("proxy_protocol", {}).get("refused", 0)
        if edge["tls"] is not None:
            tls_on = True
            handshakes += edge["tls"]["handshakes"]
            failures.update(edge["tls"]["failures"])
        if edge.get("http2"):
            http2.update({key: edge["http2"][key] for key in HTTP2_KEYS})
            goaway.update(edge["http2"]["goaway"])
    return {"tunnels": {key: tunnels[key] for key in TUNNEL_KEYS},
            "tls": {"handshakes": handshakes, "failures": dict(sorted(failures.items()))} if tls_on else None,
            "http2": {**{key: http2[key] for key in HTTP2_KEYS}, "goaway": dict(sorted(goaway.items()))},
            "proxy_protocol": {"refused": refused}}


def _edge_samples(edge: dict) -> list[str]:
    """Tunnels (upgraded connections) and TLS handshakes, in the exposition format."""
    tunnels = edge["tunnels"]
    out = ["# HELP proxy_tunnels_open Upgraded connections (WebSocket tunnels) open now.",
           "# TYPE proxy_tunnels_open gauge", f"proxy_tunnels_open {tunnels['open']}",
           "# HELP proxy_tunnels_total Upgraded connections opened.",
           "# TYPE proxy_tunnels_total counter", f"proxy_tunnels_total {tunnels['total']}",
           "# HELP proxy_tunnel_bytes_total Bytes relayed through tunnels, by direction.",
           "# TYPE proxy_tunnel_bytes_total counter"]
    out += [f'proxy_tunnel_bytes_total{{direction="{d}"}} {tunnels["bytes_" + d]}' for d in ("to_upstream", "to_client")]
    tls = edge["tls"] or {"handshakes": 0, "failures": {}}
    out += ["# HELP proxy_tls_handshakes_total TLS handshakes completed.",
            "# TYPE proxy_tls_handshakes_total counter", f"proxy_tls_handshakes_total {tls['handshakes']}",
            "# HELP proxy_tls_handshake_failures_total TLS handshakes that failed, by cause.",
            "# TYPE proxy_tls_handshake_failures_total counter"]
    out += [f'proxy_tls_handshake_failures_total{{reason="{_label(kind)}"}} {n}' for kind, n in tls["failures"].items()]
    http2 = edge["http2"]
    out += ["# HELP proxy_http2_connections_open Client connections speaking HTTP/2 now (the rest of "
            "proxy_connections speak HTTP/1.1).", "# TYPE proxy_http2_connections_open gauge",
            f"proxy_http2_connections_open {http2['connections_open']}",
            "# HELP proxy_http2_connections_total Client connections that spoke HTTP/2.",
            "# TYPE proxy_http2_connections_total counter",
            f"proxy_http2_connections_total {http2['connections_total']}",
            "# HELP proxy_http2_streams_total HTTP/2 requests answered (also in proxy_requests_total).",
            "# TYPE proxy_http2_streams_total counter", f"proxy_http2_streams_total {http2['streams_total']}",
            "# HELP proxy_http2_client_resets_total HTTP/2 streams the client reset while they were answered.",
            "# TYPE proxy_http2_client_resets_total counter",
            f"proxy_http2_client_resets_total {http2['resets_by_client']}",
            "# HELP proxy_http2_goaway_total GOAWAY frames sent, by reason.", "# TYPE proxy_http2_goaway_total counter"]
    out += [f'proxy_http2_goaway_total{{reason="{_label(reason)}"}} {n}' for reason, n in http2["goaway"].items()]
    refused = edge.get("proxy_protocol", {}).get("refused", 0)
    out += ["# HELP proxy_protocol_refused_total Connections closed for a missing or malformed PROXY header.",
            "# TYPE proxy_protocol_refused_total counter", f"proxy_protocol_refused_total {refused}"]
    return out


# --- response caches: answers by X-Cache-Status, bytes, entries, evictions --

def merge_caches(views, retired: dict) -> dict:
    """Every worker's cache numbers added up. The memory tiers are each worker's own (summed); the disk
    tier is shared, so its numbers are taken once (the first view: the answering worker's, live).
    ``retired``: the answers and memory evictions counted by workers that have left."""
    out: dict[str, dict] = {}
    for view in views:
        for name, cache in view.get("caches", {}).items():
            into = out.setdefault(name, {"statuses": Counter(), "memory": Counter(), "disk": None})
            into["statuses"].update(cache["statuses"])
            into["memory"].update(cache["memory"])
            into["disk"] = into["disk"] or cache["disk"]
    for name, counts in retired.items():
        if name in out:  # a cache no longer configured is left out
            out[name]["statuses"].update(counts["statuses"])
            out[name]["memory"]["evictions"] += counts["evictions"]
    from .http.cache import HIT, MISS, STATUSES

    return {name: {"hits": cache["statuses"][HIT], "misses": cache["statuses"][MISS],
                   "statuses": {label: cache["statuses"][label] for label in STATUSES},
                   "memory": dict(cache["memory"]), "disk": cache["disk"]} for name, cache in out.items()}


def retire_caches(retired: dict, view: dict) -> dict:
    """``retired`` plus the counters of a departing worker's caches (the gauges go with it)."""
    out = {name: {"statuses": Counter(counts["statuses"]), "evictions": counts["evictions"]}
           for name, counts in retired.items()}
    for name, cache in view.get("caches", {}).items():
        into = out.setdefault(name, {"statuses": Counter(), "evictions": 0})
        into["statuses"].update(cache["statuses"])
        into["evictions"] += cache["memory"]["evictions"]
    return {name: {"statuses": dict(counts["statuses"]), "evictions": counts["evictions"]}
            for name, counts in out.items()}


def _cache_samples(caches: dict) -> list[str]:
    out = ["# HELP proxy_cache_requests_total Answers on routes with a response cache, by what the cache did "
           "(X-Cache-Status).", "# TYPE proxy_cache_requests_total counter"]
    for name, cache in caches.items():
        out += [f'proxy_cache_requests_total{{cache="{_label(name)}",status="{label}"}} {count}'
                for label, count in cache["statuses"].items()]
    for metric, kind, text in (("bytes", "gauge", "Bytes held, by tier (memory: every worker's together)."),
                               ("entries", "gauge", "Responses held, by tier (memory: every worker's together)."),
                               ("evictions", "counter", "Least recently used entries removed to make room.")):
        series = f"proxy_cache_{metric}" + ("_total" if kind == "counter" else "")
        out += [f"# HELP {series} {text}", f"# TYPE {series} {kind}"]
        for name, cache in caches.items():
            for tier in ("memory", "disk"):
                numbers = cache[tier]
                if numbers:
                    out.append(f'{series}{{cache="{_label(name)}",tier="{tier}"}} {numbers.get(metric, 0)}')
    return out


# --- the master's share: counters of the workers that have left ------------

# ``retired`` before any worker has left.
NOTHING_RETIRED: dict = {"metrics": {"requests": [], "durations": {}}, "servers": {}, "edge": None, "caches": {}}


def master_view(pid: int, started: float, retired: dict) -> dict:
    """What the master pins on the board: who it is, since when, and what departed workers counted."""
    return {"role": "master", "pid": pid, "published": time.time(), "started": started, "retired": retired}


def retire(retired: dict, view: dict) -> dict:
    """``retired`` plus the counters in ``view``, the last view a departing worker published."""
    requests: Counter = Counter()
    durations: dict[str, dict] = {}
    for metrics in (retired["metrics"], view["metrics"]):
        _add_metrics(requests, durations, metrics)
    servers = {name: {address: dict(counts) for address, counts in by_address.items()}
               for name, by_address in retired["servers"].items()}
    for name, group in view["upstreams"].items():
        for server in group["servers"]:
            into = servers.setdefault(name, {}).setdefault(server["address"], dict.fromkeys(_COUNTERS, 0))
            for key in _COUNTERS:
                into[key] += server[key]
    edges = [retired["edge"]] if retired["edge"] else []
    if "edge" in view:  # a tunnel or an HTTP/2 connection that was open is closed now
        edge = {**view["edge"], "tunnels": {**view["edge"]["tunnels"], "open": 0}}
        if edge.get("http2"):
            edge["http2"] = {**edge["http2"], "connections_open": 0}
        edges.append(edge)
    return {"metrics": _metrics_data(requests, durations), "servers": servers,
            "edge": merge_edge(edges) if edges else None, "caches": retire_caches(retired.get("caches", {}), view)}


def _add_metrics(requests: Counter, durations: dict[str, dict], metrics: dict) -> None:
    """Add one ``Metrics.as_data()`` into the running totals."""
    for route, status, count in metrics["requests"]:
        requests[route, status] += count
    for route, d in metrics["durations"].items():
        total = durations.setdefault(route, {"sum": 0.0, "count": 0, "buckets": [0] * len(BUCKETS)})
        total["sum"] += d["sum"]
        total["count"] += d["count"]
        total["buckets"] = [a + b for a, b in zip(total["buckets"], d["buckets"])]


def _metrics_data(requests: Counter, durations: dict[str, dict]) -> dict:
    return {"requests": [[route, status, count] for (route, status), count in sorted(requests.items())],
            "durations": durations}


def merge(views: list[dict]) -> dict:
    """Add up the views of several workers (the first is the one answering), and the master's
    ``retired`` counters when its view is among them."""
    master = next((view for view in views if view.get("role") == "master"), None)
    views = [view for view in views if view.get("role") != "master"]
    retired = master["retired"] if master is not None else NOTHING_RETIRED
    requests: Counter = Counter()
    durations: dict[str, dict] = {}
    connections: Counter = Counter()
    upstreams: dict[str, dict] = {}
    _add_metrics(requests, durations, retired["metrics"])
    for view in views:
        connections.update(view["connections"])
        _add_metrics(requests, durations, view["metrics"])
        for name, group in view["upstreams"].items():
            merged = upstreams.setdefault(name, {"balance": group["balance"], "queued": 0, "servers": {}})
            merged["queued"] += group.get("queued", 0)
            for server in group["servers"]:
                into = merged["servers"].get(server["address"])
                if into is None:
                    merged["servers"][server["address"]] = {**server, "states": [server["state"]]}
                    continue
                for key in _SUMMED:
                    into[key] = into.get(key, 0) + server.get(key, 0)
                into["states"].append(server["state"])
                into["last_error"] = into["last_error"] or server["last_error"]
    for name, by_address in retired["servers"].items():  # servers no longer configured are left out
        for address, counts in by_address.items():
            into = upstreams.get(name, {}).get("servers", {}).get(address)
            for key in _COUNTERS if into is not None else ():
                into[key] += counts[key]
    for group in upstreams.values():
        for server in group["servers"].values():
            votes = Counter(server.pop("states"))
            server["state"] = max(votes, key=lambda s: (votes[s], _SEVERITY[s]))
            if len(votes) > 1:
                server["states_by_worker"] = dict(votes)
        group["servers"] = list(group["servers"].values())
    edges = [v["edge"] for v in views if "edge" in v] + ([retired["edge"]] if retired["edge"] else [])
    return {
        "workers": [{"pid": v["pid"], "requests": sum(c for _, _, c in v["metrics"]["requests"]),
                     "connections": v["connections"], "process": v["process"]} for v in views],
        "connections": dict(connections),
        **_metrics_data(requests, durations),
        "upstreams": upstreams,
        # Since the master started (a reload keeps it); a worker's own start without a master.
        "started": master["started"] if master is not None else min(v["started"] for v in views),
        "master_pid": master["pid"] if master is not None else None,
        "edge": merge_edge(edges),
        "caches": merge_caches(views, retired.get("caches", {})),
    }


def status_document(merged: dict, server_name: str) -> dict:
    """The JSON status page: totals for the whole proxy; ``pid`` and ``process`` are the answering worker's,
    ``master_pid`` the process to signal (null when the proxy runs without a master)."""
    answering = merged["workers"][0]
    return {
        "server": server_name,
        "master_pid": merged["master_pid"],
        "pid": answering["pid"],
        "process": answering["process"],
        "started": iso8601(merged["started"]),
        "uptime_seconds": round(time.time() - merged["started"], 3),
        "workers": merged["workers"],
        "connections": {**merged["connections"], "by_protocol": {
            "http/1.1": merged["connections"].get("open", 0) - merged["edge"]["http2"]["connections_open"],
            "h2": merged["edge"]["http2"]["connections_open"]}},
        "requests": sum(count for _, _, count in merged["requests"]),
        "upstreams": merged["upstreams"],
        **merged["edge"],  # "tunnels" and "tls"
        "caches": merged["caches"],
    }


def render_json(data: dict) -> bytes:
    return json.dumps(data, indent=2).encode() + b"\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_prometheus(merged: dict) -> bytes:
    """The text exposition format: HELP, TYPE, then samples."""
    out = [
        "# HELP proxy_requests_total Requests answered, by route prefix and status.",
        "# TYPE proxy_requests_total counter",
    ]
    for route, status, count in merged["requests"]:
        out.append(f'proxy_requests_total{{route="{_label(route)}",status="{status}"}} {count}')
    out += ["# HELP proxy_request_duration_seconds Time from request head to the end of the answer.",
            "# TYPE proxy_request_duration_seconds histogram"]
    for route, d in sorted(merged["durations"].items()):
        label = _label(route)
        cumulative = 0
        for le, count in zip(BUCKETS, d["buckets"]):
            cumulative += count
            out.append(f'proxy_request_duration_seconds_bucket{{route="{label}",le="{le}"}} {cumulative}')
        out.append(f'proxy_request_duration_seconds_bucket{{route="{label}",le="+Inf"}} {d["count"]}')
        out.append(f'proxy_request_duration_seconds_sum{{route="{label}"}} {d["sum"]:.6f}')
        out.append(f'proxy_request_duration_seconds_count{{route="{label}"}} {d["count"]}')
    out += ["# HELP proxy_start_time_seconds When the proxy (its master process) started, since the epoch.",
            "# TYPE proxy_start_time_seconds gauge", f"proxy_start_time_seconds {merged['started']:.3f}",
            "# HELP proxy_connections Client connections open now.", "# TYPE proxy_connections gauge",
            f"proxy_connections {merged['connections'].get('open', 0)}",
            "# HELP proxy_workers Worker processes reporting.", "# TYPE proxy_workers gauge",
            f"proxy_workers {len(merged['workers'])}"]
    series = {
        "proxy_upstream_state": ("gauge", "1 for the state each upstream server is in."),
        "proxy_upstream_in_flight": ("gauge", "Requests in flight to each upstream server."),
        "proxy_upstream_requests_total": ("counter", "Tries sent to each upstream server."),
        "proxy_upstream_failures_total": ("counter", "Failed tries per upstream server."),
        "proxy_upstream_idle_connections": ("gauge", "Idle pooled connections per upstream server."),
    }
    samples: dict[str, list[str]] = {name: [] for name in series}
    for name, group in merged["upstreams"].items():
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
    out += _edge_samples(merged["edge"])
    out += _cache_samples(merged["caches"])
    return ("\n".join(out) + "\n").encode()
