"""One error hierarchy that carries the HTTP status; converted to a response once, at the edge.

Modelled on h11's ``ProtocolError(msg, error_status_hint=400)``: code deep in the
sans-IO layer raises with the status it would like the client to see, and
``server/client.py`` is the only place that turns an exception into bytes.
"""

from __future__ import annotations


class ProxyError(Exception):
    """Base class. ``status`` is the response the client gets for it, ``headers`` any
    headers that response needs (Allow for 405, Retry-After for 503)."""

    status = 500
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def __init__(self, message: str, status: int | None = None,
                 headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        if headers:
            self.headers = headers


ALLOW_GET_HEAD = ((b"allow", b"GET, HEAD"),)


class ClientError(ProxyError):
    """The client sent something we will not accept (4xx). The connection is closed
    afterwards unless ``keep_alive`` says the framing is still intact."""

    status = 400

    def __init__(self, message: str, status: int | None = None, headers: tuple = (), *,
                 keep_alive: bool = False) -> None:
        super().__init__(message, status, headers)
        self.keep_alive = keep_alive


class ClientTimeout(ClientError):
    """The client was too slow sending a head or a body (408)."""

    status = 408


class ProxyHeaderError(ClientError):
    """A connection on a ``proxy_protocol`` listener did not begin with a valid PROXY header
    (http/proxyproto.py). Never answered: the peer is a load balancer, not an HTTP client, and
    whatever follows cannot be trusted to be HTTP; the connection is closed."""


class UpstreamError(ProxyError):
    """The upstream refused, broke the protocol, or closed early (502)."""

    status = 502


class UpstreamTimeout(UpstreamError):
    """Connect or read timed out (504)."""

    status = 504


class NoUpstreamAvailable(ProxyError):
    """Every server of the group is down or busy (503, with Retry-After)."""

    status = 503

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message, headers=((b"retry-after", b"%d" % retry_after),))


class ConfigError(ProxyError):
    """A problem in proxy.toml. The message names the file, the key and what was expected."""

    status = 500


# --- the I/O boundary: OS errors become proxy errors here, and only here ---

def tls_failure(exc: BaseException) -> str | None:
    """Why a TLS handshake with an upstream server failed, in words; None when ``exc`` is no TLS error."""
    import ssl

    if isinstance(exc, ssl.SSLCertVerificationError):
        # verify_message: "unable to get local issuer certificate", "Hostname mismatch, certificate is
        # not valid for 'x'.", "certificate has expired"...
        return f"its certificate is not accepted: {exc.verify_message or exc.reason}".rstrip(".")
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or str(exc)).lower().replace("_", " ")
        hint = " (does it speak HTTPS on that port?)" if exc.reason == "WRONG_VERSION_NUMBER" else ""
        return f"TLS handshake failed: {reason}{hint}"
    return None


def connect_error(exc: BaseException, address) -> UpstreamError:
    """What a failed connect to an upstream server means for the client (502, or 504 for a timeout)."""
    import socket

    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"connect to {address} timed out")
    if isinstance(exc, ConnectionRefusedError):
        return UpstreamError(f"connection refused by {address}")
    tls = tls_failure(exc)
    if tls is not None:
        return UpstreamError(f"HTTPS to {address}: {tls}")
    if isinstance(exc, socket.gaierror):
        return UpstreamError(f"cannot resolve {address}: {exc.strerror}")
    return UpstreamError(f"cannot connect to {address}: {getattr(exc, 'strerror', None) or exc}")


def connection_error(exc: BaseException | None, address) -> UpstreamError:
    """What an upstream connection lost mid-exchange means (502)."""
    detail = getattr(exc, "strerror", None) or exc or "the server closed the connection"
    return UpstreamError(f"{address}: {detail}")
