"""The proxy in front of a real Gunicorn: forwarding, headers, bodies, errors."""

from __future__ import annotations

import hashlib
import json
import socket

import pytest
import requests

from tests.helpers import free_port, raw_request, single_upstream_config, status_of


@pytest.fixture(scope="module")
def stack(tmp_path_factory, test_app_gunicorn):
    from tests.helpers import ProxyProcess

    folder = tmp_path_factory.mktemp("forwarding")
    (folder / "public").mkdir()
    (folder / "public" / "hello.txt").write_text("hello from disk\n")
    proxy = ProxyProcess(folder, f"""
        [server]
        listen = ["127.0.0.1:0"]
        [limits]
        max_body_bytes = "4m"
        body_buffer_bytes = "16k"
        [upstreams.app]
        servers = ["{test_app_gunicorn.address}"]
        [[routes]]
        prefix = "/"
        static = "public"
        upstream = "app"
    """)
    yield proxy
    proxy.stop()


def test_get_is_forwarded_with_forwarding_headers(stack):
    response = requests.get(stack.url + "/echo?x=1", headers={
        "X-Forwarded-For": "6.6.6.6", "X-Real-IP": "6.6.6.6", "Forwarded": "for=6.6.6.6",
        "X-Forwarded-Proto": "https", "X_Forwarded_For": "7.7.7.7"})
    assert response.status_code == 200
    seen = response.json()
    headers = seen["headers"]
    assert seen["query"] == "x=1"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-real-ip"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == f"127.0.0.1:{stack.port}"
    assert headers["forwarded"] == f'for=127.0.0.1;proto=http;host="127.0.0.1:{stack.port}"'
    assert headers["host"] == f"127.0.0.1:{stack.port}"
    assert headers["via"] == "1.1 twotier"
    assert headers["x-request-id"] == response.headers["X-Request-ID"]
    assert response.headers["Via"] == "1.1 twotier"
    assert response.headers["Server"] == "twotier"
    assert "upstream-ttfb" in response.headers["Server-Timing"]


def test_well_formed_request_id_is_kept_and_bad_one_replaced(stack):
    kept = requests.get(stack.url + "/echo", headers={"X-Request-ID": "abc-123"})
    assert kept.headers["X-Request-ID"] == "abc-123"
    assert kept.json()["headers"]["x-request-id"] == "abc-123"
    replaced = requests.get(stack.url + "/echo", headers={"X-Request-ID": "bad id with spaces"})
    assert replaced.headers["X-Request-ID"] != "bad id with spaces"
    assert len(replaced.headers["X-Request-ID"]) == 32


def test_hop_by_hop_request_headers_are_removed(stack):
    response = requests.get(stack.url + "/echo", headers={
        "Connection": "keep-alive, X-Drop-Me", "X-Drop-Me": "1", "Keep-Alive": "timeout=5",
        "TE": "trailers", "Proxy-Connection": "keep-alive", "Upgrade": "h2c", "X-Keep": "yes"})
    headers = response.json()["headers"]
    for name in ("connection", "x-drop-me", "keep-alive", "te", "proxy-connection", "upgrade"):
        assert name not in headers, name
    assert headers["x-keep"] == "yes"


@pytest.mark.parametrize("size", [0, 1, 15000, 100_000, 3_000_000])
def test_post_bodies_arrive_intact(stack, size):
    body = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    response = requests.post(stack.url + "/echo", data=body)
    seen = response.json()
    assert seen["body_length"] == size
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_chunked_request_body_is_buffered_and_sent_with_content_length(stack):
    def chunks():
        yield b"a" * 1000
        yield b"b" * 50_000
    response = requests.post(stack.url + "/echo", data=chunks())
    seen = response.json()
    assert seen["body_length"] == 51_000
    assert seen["headers"].get("transfer-encoding") is None


def test_body_over_the_limit_is_413(stack):
    response = requests.post(stack.url + "/echo", data=b"x" * (4 * 1024 * 1024 + 1))
    assert response.status_code == 413


def test_expect_100_continue(stack):
    with socket.create_connection(("127.0.0.1", stack.port), timeout=5) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = sock.recv(1024)
        assert interim.startswith(b"HTTP/1.1 100 ")
        sock.sendall(b"hello")
        data = b""
        while b"body_length" not in data:
            data += sock.recv(65536)
        assert b'"body_length": 5' in data


def test_streamed_response_is_chunked_to_the_client(stack):
    response = requests.get(stack.url + "/stream?n=7", stream=True)
    assert response.headers.get("Transfer-Encoding") == "chunked"
    assert response.content == b"".join(b"chunk %d\n" % i for i in range(7))


def test_large_response_intact(stack):
    response = requests.get(stack.url + "/big?size=5000000")
    assert len(response.content) == 5_000_000


def test_head_request_has_no_body(stack):
    reply = raw_request(stack.port, b"HEAD /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert status_of(reply) == 200 and body == b""


def test_pipelined_requests_answered_in_order(stack):
    reqs = b"".join(b"GET /echo?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5))
    reqs += b"GET /echo?n=last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    reply = raw_request(stack.port, reqs)
    order = [json.loads(part.split(b"\r\n\r\n", 1)[1])["query"]
             for part in reply.split(b"HTTP/1.1 ")[1:]]
    assert order == [f"n={i}" for i in range(5)] + ["n=last"]


def test_upstream_error_status_passes_through(stack):
    response = requests.get(stack.url + "/status?code=500")
    assert response.status_code == 500 and response.text == "status"


def test_static_file_wins_over_upstream(stack):
    response = requests.get(stack.url + "/hello.txt")
    assert response.text == "hello from disk\n"
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert "Via" not in response.headers


def test_pooled_connection_is_reused(stack):
    with requests.Session() as session:
        timings = [session.get(stack.url + "/echo").headers["Server-Timing"] for _ in range(5)]
    assert any('desc="reused"' in t for t in timings)


def test_refused_upstream_is_502(start_proxy):
    port = free_port()
    proxy = start_proxy(single_upstream_config(f"127.0.0.1:{port}"))
    response = requests.get(proxy.url + "/")
    assert response.status_code == 502
    assert "502 Bad Gateway" in response.text
    assert requests.get(proxy.url + "/again").status_code == 502


@pytest.mark.parametrize("setting, allow, shown", [
    ('"all"', None, True),
    ('"off"', None, False),
    ('"trusted"', None, True),  # [status] absent: loopback is trusted
    ('"trusted"', '["10.0.0.0/8"]', False),  # 127.0.0.1 is not in [status] allow
])
def test_server_timing_goes_to_whom_server_timing_says(start_proxy, recording_upstream, setting, allow, shown):
    upstream = recording_upstream()
    status = f"[status]\nallow = {allow}\n" if allow else ""
    proxy = start_proxy(f"""
[server]
listen = ["127.0.0.1:0"]
server_timing = {setting}
{status}
[upstreams.app]
servers = ["{upstream.address}"]
[[routes]]
prefix = "/"
upstream = "app"
""")
    response = requests.get(proxy.url + "/x")
    assert response.status_code == 200
    assert ("Server-Timing" in response.headers) is shown
    if shown:
        assert 'upstream-ttfb;dur=' in response.headers["Server-Timing"]
        assert 'desc="upstream time to first byte"' in response.headers["Server-Timing"]
