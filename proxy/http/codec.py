"""INTERIM: a stand-in for the codec while it is being written (h11 only), so the shell can run."""

from __future__ import annotations

from dataclasses import dataclass

import h11

from ..errors import ClientError, UpstreamError
from .inbound import ClientConnection, RequestHead  # noqa: F401
from .outbound import UpstreamProtocol


@dataclass(frozen=True, slots=True)
class Data:
    data: bytes


@dataclass(frozen=True, slots=True)
class ResponseHead:
    status: int
    reason: bytes
    http_version: bytes
    headers: list
    content_length: int | None
    chunked: bool
    keep_alive: bool


@dataclass(frozen=True, slots=True)
class Informational:
    status: int
    reason: bytes
    headers: list


class _Sentinel:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


EndOfMessage = _Sentinel("EndOfMessage")
NEED_DATA = _Sentinel("NEED_DATA")
PAUSED = _Sentinel("PAUSED")
CLOSED = _Sentinel("CLOSED")


class _RequestParser:
    def __init__(self, limits):
        self.limits = limits
        self.conn = ClientConnection(limits)
        self.requests = 0

    @property
    def head_started(self):
        return self.conn.head_started

    def feed(self, data):
        self.conn.receive_data(data)

    def next_event(self):
        event = self.conn.next_event()
        if type(event) is RequestHead:
            self.requests += 1
            return event
        if type(event) is h11.Data:
            return Data(event.data)
        if type(event) is h11.EndOfMessage:
            return EndOfMessage
        if event is h11.NEED_DATA:
            return NEED_DATA
        if event is h11.PAUSED:
            return PAUSED
        return CLOSED

    def _rest(self):
        data, closed = self.conn.h11.trailing_data
        return bytes(data), closed

    def start_next_cycle(self):
        data, closed = self._rest()
        self.conn = ClientConnection(self.limits)
        self.conn.requests = self.requests
        data = data.lstrip(b"\r\n")
        if data:
            self.conn.receive_data(data)
        if closed:
            self.conn.receive_data(b"")

    def take_trailing(self):
        return self._rest()[0]


def request_parser(engine, limits):
    return _RequestParser(limits)


class _ResponseParser:
    def __init__(self):
        self.proto = UpstreamProtocol()

    def expect(self, method, upgrade):
        headers = [(b"host", b"x")]
        if upgrade:
            headers += [(b"connection", b"upgrade"), (b"upgrade", b"x")]
        self.proto.h11.send(h11.Request(method=method, target=b"/", headers=headers))
        self.proto.h11.send(h11.EndOfMessage())

    def feed(self, data):
        self.proto.receive_data(data)

    def next_event(self):
        event = self.proto.next_event()
        kind = type(event)
        if kind is h11.Response:
            headers = list(event.headers)
            cl = None
            chunked = False
            for n, v in headers:
                if n == b"content-length":
                    cl = int(v)
                if n == b"transfer-encoding":
                    chunked = True
            if event.status_code in (204, 304):
                cl = None
                headers = [(n, v) for n, v in headers if n != b"content-length"]
            return ResponseHead(event.status_code, event.reason, event.http_version, headers, cl, chunked, True)
        if kind is h11.InformationalResponse:
            return Informational(event.status_code, event.reason, list(event.headers))
        if kind is h11.Data:
            return Data(event.data)
        if kind is h11.EndOfMessage:
            return EndOfMessage
        if event is h11.NEED_DATA or event is h11.PAUSED:
            return NEED_DATA
        raise UpstreamError("unexpected")

    @property
    def reusable(self):
        return self.proto.reusable

    def start_next_cycle(self):
        self.proto.start_next_cycle()

    def take_trailing(self):
        return bytes(self.proto.h11.trailing_data[0])


def response_parser(engine):
    return _ResponseParser()


def response_head(status, reason, headers):
    lines = [b"HTTP/1.1 %d %s" % (status, reason)]
    lines += [n + b": " + v for n, v in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def request_head(method, target, headers):
    lines = [method + b" " + target + b" HTTP/1.1"]
    lines += [n + b": " + v for n, v in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def chunk(data):
    return b"%x\r\n" % len(data) + bytes(data) + b"\r\n"


LAST_CHUNK = b"0\r\n\r\n"


def response_framing(version, method, keep_alive, status, length):
    if status < 200 or status in (204, 304) or method == b"HEAD":
        return "none", keep_alive
    if length is not None:
        return "length", keep_alive
    if version == b"1.0":
        return "close", False
    return "chunked", keep_alive
