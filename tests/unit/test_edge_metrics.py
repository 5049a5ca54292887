"""Tunnel, TLS and HTTP/2 counters add up across workers like the others (metrics.merge_edge)."""

from __future__ import annotations

from proxy.metrics import _edge_samples, merge_edge


NO_HTTP2 = {"connections_open": 0, "connections_total": 0, "streams_total": 0, "resets_by_client": 0, "goaway": {}}


def edge(open_, total, up, down, tls=None, http2=None, refused=0):
    return {"tunnels": {"open": open_, "total": total, "bytes_to_upstream": up, "bytes_to_client": down},
            "tls": tls, "http2": http2 or NO_HTTP2, "proxy_protocol": {"refused": refused}}


def test_tunnels_and_handshakes_are_summed():
    merged = merge_edge([edge(2, 5, 100, 200, {"handshakes": 7, "failures": {"plain_http": 1}}, refused=4),
                         edge(1, 3, 10, 20, {"handshakes": 3, "failures": {"plain_http": 2, "version": 1}})])
    assert merged == {"tunnels": {"open": 3, "total": 8, "bytes_to_upstream": 110, "bytes_to_client": 220},
                      "tls": {"handshakes": 10, "failures": {"plain_http": 3, "version": 1}}, "http2": NO_HTTP2,
                      "proxy_protocol": {"refused": 4}}
    text = "\n".join(_edge_samples(merged))
    assert "proxy_tunnels_open 3" in text and 'proxy_tunnel_bytes_total{direction="to_client"} 220' in text
    assert 'proxy_tls_handshake_failures_total{reason="plain_http"} 3' in text
    assert "proxy_protocol_refused_total 4" in text


def test_tls_is_none_when_off_and_no_views_count_zero():
    assert merge_edge([edge(0, 1, 1, 1)])["tls"] is None
    assert merge_edge([]) == {"tunnels": {"open": 0, "total": 0, "bytes_to_upstream": 0, "bytes_to_client": 0},
                              "tls": None, "http2": NO_HTTP2, "proxy_protocol": {"refused": 0}}


def test_http2_connections_and_streams_are_summed():
    one = {"connections_open": 2, "connections_total": 5, "streams_total": 40, "resets_by_client": 1,
           "goaway": {"shutdown": 1}}
    two = {"connections_open": 1, "connections_total": 2, "streams_total": 9, "resets_by_client": 0,
           "goaway": {"shutdown": 2, "rapid_reset": 1}}
    merged = merge_edge([edge(0, 0, 0, 0, http2=one), edge(0, 0, 0, 0, http2=two)])
    assert merged["http2"] == {"connections_open": 3, "connections_total": 7, "streams_total": 49,
                               "resets_by_client": 1, "goaway": {"rapid_reset": 1, "shutdown": 3}}
    text = "\n".join(_edge_samples(merged))
    assert "proxy_http2_connections_open 3" in text and "proxy_http2_streams_total 49" in text
    assert 'proxy_http2_goaway_total{reason="shutdown"} 3' in text
