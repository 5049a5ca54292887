"""The upstream side of a connection, sans-IO: requests to bytes, bytes to checked responses.

An upstream is trusted to be an HTTP server, not to be correct: a response
that a second parser could read differently (Content-Length together with
Transfer-Encoding, two different lengths, CR or LF inside a value, a bad
status line) is a 502 and the connection is discarded, as nginx does. h11
already rejects most of these; what it accepts (the CL+TE pair, bare LF,
obs-fold, control bytes, status 600-999) is refused by rules.py, the same
checks codec.py applies to both of its engines.
"""

from __future__ import annotations

import h11

from ..errors import UpstreamError
from . import rules
from .codec import MAX_RESPONSE_HEAD, split_fields

# h11's own size limit holds only while a head is incomplete, so a head that arrived in one
# read would pass whatever its size; the raw head is measured here instead.


class UpstreamProtocol:
    """Wraps ``h11.Connection(h11.CLIENT)`` for one upstream connection, across requests."""

    __slots__ = ("h11", "requests", "_head", "_method", "_upgrade")

    def __init__(self) -> None:
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)
        self.requests = 0
        self._head = bytearray()  # raw bytes of the response head being received
        self._method = b"GET"
        self._upgrade = False

    def __repr__(self) -> str:
        return f"<UpstreamProtocol {self.h11.our_state}/{self.h11.their_state} requests={self.requests}>"

    def request(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
        self.requests += 1
        self._method = method
        self._upgrade = any(name == b"upgrade" for name, _ in headers)
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
            head = self._check_head(event)
            if event.status_code == 204 and len(head.headers) != len(event.headers):
                # RFC 9110 section 8.6: a 204 MUST NOT carry Content-Length; the client never sees it.
                event = h11.Response(status_code=204, headers=head.headers, reason=event.reason,
                                     http_version=event.http_version, _parsed=True)
        elif kind is h11.ConnectionClosed:
            raise UpstreamError("upstream closed the connection before the response ended")
        return event

    def _check_head(self, event):
        # The raw head (minus what h11 has not parsed yet), for what h11 accepts but we do not.
        head = bytes(self._head[: len(self._head) - len(self.h11.trailing_data[0])])
        if type(event) is h11.Response:
            self._head = bytearray()
        if len(head) > MAX_RESPONSE_HEAD:
            raise UpstreamError(f"invalid response: head larger than {MAX_RESPONSE_HEAD} bytes")
        fields = split_fields(head)
        rules.check_lax_syntax(head, fields, UpstreamError)
        return rules.check_response(event.status_code, bytes(event.reason), event.http_version, fields,
                                    self._method, self._upgrade)

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
