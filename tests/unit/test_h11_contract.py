"""What the proxy assumes of h11 beyond its documented API, checked so an upgrade cannot break it silently.

The response and upstream-request heads are built with ``_parsed=True``
(h11's own flag for events it made from parsed bytes), which skips the
per-header regexes. That is only sound if every header value the proxy
writes is valid: these tests pin both halves.
"""

from __future__ import annotations

import h11
import pytest

from proxy import config
from proxy.http.headers import upstream_request_headers


def test_h11_still_takes_the_parsed_flag_and_frames_with_it():
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert type(conn.next_event()) is h11.Request
    data = conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"2"), (b"x-a", b"b")],
                                  reason=b"OK", _parsed=True))
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 2\r\n" in data
    client = h11.Connection(h11.CLIENT)
    assert client.send(h11.Request(method=b"GET", target=b"/", headers=[(b"host", b"h")], _parsed=True)) \
        == b"GET / HTTP/1.1\r\nhost: h\r\n\r\n"


@pytest.mark.parametrize("table, key, value", [
    ("server", "name", "two tier"),
    ("server", "name", "x\r\nSet-Cookie: a=b"),
    ("routes", "cache_control", "max-age=1\r\nX: y"),
    ("routes", "cache_control", " padded"),
    ("routes", "prefix", '/a"b'),
    ("routes", "prefix", "/a b"),
])
def test_config_strings_that_reach_headers_are_refused_unless_header_safe(tmp_path, table, key, value):
    (tmp_path / "www").mkdir()
    route = {"prefix": "/", "static": "www", key: value} if table == "routes" else {"prefix": "/", "static": "www"}
    data = {"routes": [route]}
    if table == "server":
        data["server"] = {key: value}
    with pytest.raises(config.ConfigError, match=key):
        config.from_dict(data, tmp_path / "proxy.toml")


def test_upstream_request_headers_pass_h11_validation():
    headers = upstream_request_headers(
        [(b"accept", b"*/*"), (b"x-custom", b"v a l")], host=b"example.test:8080", client_ip="::1",
        scheme=b"https", request_id=b"abc-1", via=b"1.1 twotier", body_length=5)
    h11.Request(method=b"POST", target=b"/x", headers=headers)  # validating constructor: raises if not
