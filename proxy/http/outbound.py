"""The upstream side of a connection, sans-IO: requests to bytes, bytes to checked responses.

An upstream is trusted to be an HTTP server, not to be correct: a response
that a second parser could read differently (Content-Length together with
Transfer-Encoding, two different lengths, CR or LF inside a value, a bad
status line) is a 502 and the connection is discarded, as nginx does. h11
already rejects most of these; the CL+TE pair it accepts (TE wins), so that
one is checked here, and so are the line endings h11 is lenient about (bare
LF, obs-fold), which the proxy refuses from clients too.
"""

from __future__ import annotations

import h11

from ..errors import UpstreamError

# Largest response head accepted from an upstream (nginx: "upstream sent too big header", 502).
# h11's own limit (16 KiB) holds only while a head is incomplete, so a head that arrives in
# one read would pass whatever its size, and one that arrives in two would not.
MAX_RESPONSE_HEAD = 64 * 1024


class UpstreamProtocol:
    """Wraps ``h11.Connection(h11.CLIENT)`` for one upstream connection, across requests."""

    __slots__ = ("h11", "requests", "_head")

    def __init__(self) -> None:
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)
        self.requests = 0
        self._head = bytearray()  # raw bytes of the response head being received

    def __repr__(self) -> str:
        return f"<UpstreamProtocol {self.h11.our_state}/{self.h11.their_state} requests={self.requests}>"

    def request(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
        self.requests += 1
        # The client's head passed h11's parser and check_head; what the proxy adds is built from
        # validated parts: h11's regexes need not run again (see tests/unit/test_h11_contract.py).
        return self.h11.send(h11.Request(method=method, target=target, headers=headers, _parsed=True))

    def data(self, payload: bytes) -> bytes:
        return self.h11.send(h11.Data(data=payload))

    def end(self) -> bytes:
        return self.h11.send(h11.EndOfMessage())

    def receive_data(self, data: bytes) -> None:
        if self.h11.their_state is h11.SEND_RESPONSE:
            self._head += data
        self.h11.receive_data(data)

    def next_event(self):
        """h11.Response, h11.InformationalResponse, h11.Data, h11.EndOfMessage or h11.NEED_DATA.

        An upstream that closes before the response ends raises UpstreamError.
        """
        try:
            event = self.h11.next_event()
        except h11.RemoteProtocolError as exc:
            raise UpstreamError(f"invalid response: {exc}") from None
        kind = type(event)
        if kind is h11.Response or kind is h11.InformationalResponse:
            self._check_head(event)
        if kind is h11.Response:
            framing = 0
            for name, _ in event.headers:
                if name == b"content-length" or name == b"transfer-encoding":
                    framing += 1
            if framing > 1:
                raise UpstreamError("invalid response: both Content-Length and Transfer-Encoding")
        elif kind is h11.ConnectionClosed:
            raise UpstreamError("upstream closed the connection before the response ended")
        return event

    def _check_head(self, event) -> None:
        # The raw head (minus what h11 has not parsed yet), for what h11 accepts but we do not.
        head = bytes(self._head[: len(self._head) - len(self.h11.trailing_data[0])])
        if type(event) is h11.Response:
            self._head = bytearray()
        if len(head) > MAX_RESPONSE_HEAD:
            raise UpstreamError(f"invalid response: head larger than {MAX_RESPONSE_HEAD} bytes")
        # RFC 9112 section 2.2 lets a recipient accept a bare LF, and 5.2 lets a proxy
        # unfold obs-fold; we take neither: "X: a\nInjected: b" from an app that echoes
        # input into a header must not become a second field. 5.2 allows the 502.
        if head.count(b"\n") != head.count(b"\r\n"):
            raise UpstreamError("invalid response: bare LF in the head")
        if b"\n " in head or b"\n\t" in head:
            raise UpstreamError("invalid response: obsolete line folding")
        # RFC 9110 section 15: codes outside 100..599 are invalid and a client SHOULD
        # treat them as 5xx; h11 lets 600..999 through.
        if event.status_code > 599:
            raise UpstreamError(f"invalid response: status {event.status_code}")

    @property
    def reusable(self) -> bool:
        """Both sides finished cleanly, neither asked to close, and nothing came after the response.

        Bytes beyond the declared length (nginx: "upstream sent more data than specified")
        would otherwise be read as the next client's response: response queue poisoning.
        """
        return (self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE
                and not self.h11.trailing_data[0])

    def start_next_cycle(self) -> None:
        self.h11.start_next_cycle()
