"""Upstream responses the proxy must refuse (502), shared by the socket tests of the current server
(tests/integration/test_upstream_strict.py) and the sans-IO tests of both codec engines."""

GOOD = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood"

# name -> the raw response the upstream sends; each must become a 502.
BAD = {
    "cl-and-te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-and-cl": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    "cl-conflicting": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
    "cl-list": b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok!",
    "cl-negative": b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nok",
    "te-unknown": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok",
    "cr-in-value": b"HTTP/1.1 200 OK\r\nX-Bad: a\rInjected: yes\r\nContent-Length: 2\r\n\r\nok",
    "lf-in-value": b"HTTP/1.1 200 OK\r\nX-Bad: a\nInjected: yes\r\nContent-Length: 2\r\n\r\nok",
    "nul-in-value": b"HTTP/1.1 200 OK\r\nX-Bad: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    "ctl-in-value": b"HTTP/1.1 200 OK\r\nX-Bad: a\x01b\r\nContent-Length: 2\r\n\r\nok",
    # RFC 9110 8.6 lets a recipient merge identical lengths or refuse them; llhttp refuses, so does the proxy.
    "cl-duplicate-identical": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
    "obs-fold": b"HTTP/1.1 200 OK\r\nX-Bad: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
    "bare-lf-head": b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    "space-before-colon": b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
    "status-no-space": b"HTTP/1.1 200OK\r\nContent-Length: 2\r\n\r\nok",
    "status-two-digits": b"HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\nok",
    "status-over-599": b"HTTP/1.1 999 Custom\r\nContent-Length: 2\r\n\r\nok",
    "status-under-100": b"HTTP/1.1 099 Low\r\nContent-Length: 2\r\n\r\nok",
    "version-2": b"HTTP/2 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "not-http": b"ICY 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "garbage": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
    "unsolicited-101": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
}
POISON = GOOD[:-4] + b"okHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON"
