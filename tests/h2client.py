"""A real HTTP/2 client for the tests, written with ``h2`` (the client side of the same state machine).

Blocking sockets, one connection per ``H2Client``, over TLS (ALPN "h2") or in
cleartext with prior knowledge. It sends what a test tells it to (its own
header validation is off, so malformed requests go out as written), can send
raw frames for the attacks, and reads until the stream or the connection it
waits for ends, with a deadline: a test never hangs on it.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

_CONFIG = h2.config.H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=False,
                                    normalize_outbound_headers=False, validate_inbound_headers=False)


@dataclass
class Response:
    """What came back on one stream: ``reset`` is the RST_STREAM error code when the server reset it."""

    stream_id: int
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    informational: list[int] = field(default_factory=list)
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    data_frames: int = 0
    ended: bool = False
    reset: int | None = None

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n == name), None)

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None


@dataclass(frozen=True)
class GoAway:
    """A GOAWAY the server sent (read by the client itself, see ``read_once``)."""

    error_code: int
    last_stream_id: int


class ConnectionClosed(Exception):
    pass


class H2Client:
    """One HTTP/2 connection to the proxy on 127.0.0.1:``port``."""

    def __init__(self, port: int, *, tls: bool = True, server_name: str = "localhost", timeout: float = 10.0,
                 settings: dict | None = None, window: bool = True, authority: bytes | None = None,
                 prefix: bytes = b"") -> None:
        """``prefix``: bytes sent first, in cleartext (a PROXY protocol header, as a load balancer sends)."""
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if prefix:
            raw.sendall(prefix)
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            context.set_alpn_protocols(["h2", "http/1.1"])
            raw = context.wrap_socket(raw, server_hostname=server_name)
            assert raw.selected_alpn_protocol() == "h2", raw.selected_alpn_protocol()
        self.sock = raw
        self.timeout = timeout
        self.window = window  # False: never acknowledge received data (the zero-window tests)
        self.authority = authority or f"localhost:{port}".encode()
        self.scheme = b"https" if tls else b"http"
        self.conn = h2.connection.H2Connection(config=_CONFIG)
        if settings:
            self.conn.local_settings = h2.settings.Settings(client=True, initial_values=settings)
        self.conn.initiate_connection()
        self.responses: dict[int, Response] = {}
        self.held: dict[int, int] = {}  # stream id -> bytes received and not acknowledged (a stalled reader)
        self.goaway: GoAway | None = None
        self._inbox = bytearray()
        self.closed = False
        self.remote_settings: dict = {}
        self.flush()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "H2Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- sending ---

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def start(self, method: str = "GET", path: str = "/", headers=(), body: bytes | None = None, *,
              end: bool = True, pseudo: list | None = None) -> int:
        """Open a stream with a request; returns its id. ``pseudo`` replaces the pseudo-header fields."""
        stream_id = self.conn.get_next_available_stream_id()
        fields = pseudo if pseudo is not None else [
            (b":method", method.encode()), (b":scheme", self.scheme), (b":authority", self.authority),
            (b":path", path.encode())]
        fields = [(n if isinstance(n, bytes) else n.encode(), v if isinstance(v, bytes) else v.encode())
                  for n, v in [*fields, *headers]]
        self.conn.send_headers(stream_id, fields, end_stream=end and not body)
        self.responses[stream_id] = Response(stream_id)
        if body:
            self.send_body(stream_id, body, end=end)
        self.flush()
        return stream_id

    def send_body(self, stream_id: int, body: bytes, end: bool = True) -> None:
        """Send ``body`` as the windows allow, reading the server's WINDOW_UPDATEs as needed."""
        view = memoryview(body)
        deadline = time.monotonic() + self.timeout
        while view:
            if self.responses[stream_id].reset is not None or self.closed:
                return  # the server answered and reset the stream: the rest is not wanted (RFC 9113 8.1)
            room = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
            if room <= 0:
                if time.monotonic() > deadline:
                    raise TimeoutError("the server never opened its window")
                self.read_once()
                continue
            chunk, view = view[:room], view[room:]
            self.conn.send_data(stream_id, chunk.tobytes(), end_stream=end and not view)
            self.flush()
        if end and not body and not self.responses[stream_id].done:
            self.conn.end_stream(stream_id)
            self.flush()

    def hold(self, stream_id: int) -> None:
        """Stop reading ``stream_id``: its window is no longer opened (the connection's still is)."""
        self.held[stream_id] = 0

    def release(self, stream_id: int) -> None:
        """Read ``stream_id`` again: open its window by what arrived meanwhile."""
        held = self.held.pop(stream_id)
        if held and not self.responses[stream_id].done:
            self.conn.increment_flow_control_window(held, stream_id)
            self.flush()

    def reset(self, stream_id: int, code: int = 8) -> None:
        self.conn.reset_stream(stream_id, code)
        self.flush()

    def ping(self, payload: bytes = b"12345678") -> None:
        self.conn.ping(payload)
        self.flush()

    # --- receiving ---

    def read_once(self, timeout: float | None = None) -> bool:
        """Read what the socket has (waiting up to ``timeout``); False once the connection is closed."""
        if self.closed:
            return False
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, BlockingIOError, ssl.SSLWantReadError):
            return True  # nothing yet
        except (ConnectionError, ssl.SSLError, OSError):
            data = b""
        if not data:
            self.closed = True
            return False
        try:
            events = self.conn.receive_data(self._frames(data))
        except h2.exceptions.ProtocolError:
            self.closed = True
            return False
        for event in events:
            self._handle(event)
        try:
            self.flush()
        except OSError:
            self.closed = True
        return True

    def _frames(self, data: bytes) -> bytes:
        """The complete frames received so far, but GOAWAY, which is noted here: h2 stops a connection at
        the first GOAWAY, while a graceful one (RFC 9113 6.8) lets the streams under way finish."""
        inbox = self._inbox
        inbox += data
        out = bytearray()
        while len(inbox) >= 9:
            end = 9 + int.from_bytes(inbox[:3], "big")
            if len(inbox) < end:
                break
            if inbox[3] == 0x7:  # GOAWAY: last stream id, error code
                self.goaway = GoAway(int.from_bytes(inbox[13:17], "big"),
                                     int.from_bytes(inbox[9:13], "big") & 0x7FFFFFFF)
            else:
                out += inbox[:end]
            del inbox[:end]
        return bytes(out)

    def _handle(self, event) -> None:
        kind = type(event)
        stream = self.responses.get(getattr(event, "stream_id", None) or 0)
        if kind is h2.events.ResponseReceived:
            stream.headers = list(event.headers)
            stream.status = int(stream.header(b":status"))
        elif kind is h2.events.InformationalResponseReceived:
            stream.informational.append(int(dict(event.headers)[b":status"]))
        elif kind is h2.events.TrailersReceived:
            stream.trailers = list(event.headers)
        elif kind is h2.events.DataReceived:
            stream.body += event.data
            stream.data_frames += 1
            if event.stream_id in self.held:
                # This stream's reader stopped; the connection's window is opened, so others go on.
                self.held[event.stream_id] += event.flow_controlled_length
                if event.flow_controlled_length:
                    self.conn.increment_flow_control_window(event.flow_controlled_length)
            elif self.window and event.flow_controlled_length:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif kind is h2.events.StreamEnded:
            stream.ended = True
        elif kind is h2.events.StreamReset:
            if stream is not None:
                stream.reset = event.error_code
        elif kind is h2.events.RemoteSettingsChanged:
            self.remote_settings.update({k: v.new_value for k, v in event.changed_settings.items()})

    def wait(self, predicate, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the HTTP/2 condition was not met in time")
            if not self.read_once(min(left, 1.0)) and not predicate():
                raise ConnectionClosed(f"connection closed (GOAWAY: {self.goaway})")

    def response(self, stream_id: int, timeout: float | None = None) -> Response:
        self.wait(lambda: self.responses[stream_id].done, timeout)
        return self.responses[stream_id]

    def request(self, method: str = "GET", path: str = "/", headers=(), body: bytes | None = None,
                timeout: float | None = None) -> Response:
        return self.response(self.start(method, path, headers, body), timeout)

    def wait_closed(self, timeout: float | None = None) -> GoAway | None:
        """Read until the server closes the connection; returns the GOAWAY it sent, if any."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while self.read_once(max(0.01, min(1.0, deadline - time.monotonic()))):
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not close the connection")
        return self.goaway
