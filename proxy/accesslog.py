"""The access log: one line per request, nginx's combined format plus timings, or JSON.

Lines written in one turn of the event loop are joined and written together
(``call_soon``), so a busy proxy makes one write per loop iteration rather
than one per request, and a test reading the log sees each line at once.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import weakref
from dataclasses import dataclass
from datetime import datetime
from typing import IO


@dataclass(frozen=True, slots=True)
class AccessRecord:
    """What happened to one request: the values both formats are made from."""

    remote_addr: str
    time: float  # when the request head was complete, seconds since the epoch
    request: str  # the request line
    status: int
    body_bytes_sent: int
    referer: str
    user_agent: str
    request_time: float  # seconds in the proxy
    request_id: str
    route: str  # the prefix of the matched route, "" when none
    handler: str  # "static", "proxy", "cache" (answered from a response cache), "redirect" (to https), or
    # "local" for the proxy's own answers
    upstream_addr: str  # every server tried, ", "-separated as nginx does; "" when none
    upstream_status: str
    upstream_connect_time: float | None
    upstream_header_time: float | None
    upstream_response_time: float | None
    cache: str = ""  # what a response cache did (HIT, MISS, EXPIRED, STALE, UPDATING, REVALIDATED, BYPASS)
    # A request that became a tunnel (101) is logged once, when the tunnel ends; body_bytes_sent and
    # request_time then cover the whole tunnel.
    tunnel: str = ""  # the protocol, e.g. "websocket"; "" for ordinary requests
    tunnel_bytes_to_upstream: int = 0
    tunnel_bytes_to_client: int = 0
    tunnel_end: str = ""  # who ended it: "client", "upstream", "idle" or "shutdown"


def iso8601(when: float) -> str:
    """Seconds since the epoch as local time in ISO 8601 with milliseconds and the UTC offset
    (nginx's $time_iso8601, to the millisecond): 2026-11-25T14:03:07.112+01:00."""
    return datetime.fromtimestamp(when).astimezone().isoformat(timespec="milliseconds")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


# Like nginx's log escaping: a quote, a backslash and every byte outside printable ASCII become
# \xHH, so a header value can never end a field or a line early (U+0085 and U+2028 are line
# breaks to str.splitlines(), for one).
_ESCAPES = {code: f"\\x{code:02X}" for code in [*range(0x20), *range(0x7F, 0x100), ord('"'), ord("\\")]}


def _quote(value: str) -> str:
    return value.translate(_ESCAPES) if value else "-"


class _LocalTime:
    """nginx's $time_local, formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def __call__(self, when: float) -> str:
        second = int(when)
        if second != self._second:
            self._second = second
            self._text = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(second))
        return self._text


_local_time = _LocalTime()


def format_combined(record: AccessRecord) -> str:
    return (
        f'{record.remote_addr} - - [{_local_time(record.time)}] "{_quote(record.request)}" '
        f'{record.status} {record.body_bytes_sent} "{_quote(record.referer)}" "{_quote(record.user_agent)}" '
        f"rt={record.request_time:.3f} uaddr={record.upstream_addr or '-'} "
        f"us={record.upstream_status or '-'} ut={_seconds(record.upstream_response_time)} "
        f"rid={record.request_id}"
        + (f" cache={record.cache}" if record.cache else "")
        + (f" tunnel={record.tunnel} up={record.tunnel_bytes_to_upstream} down={record.tunnel_bytes_to_client} "
           f"end={record.tunnel_end}" if record.tunnel else "")
    )


def _tries(joined: str) -> list[str]:
    return joined.split(", ") if joined else []


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)  # milliseconds, as nginx logs times


def json_fields(record: AccessRecord) -> dict:
    """One JSON access-log object: a type per key, whatever happened (docs/configuration.md lists them;
    a test keeps that list in step). Times of day are ISO 8601, durations seconds to the millisecond,
    statuses numbers, and the upstream keys lists with one entry per server tried, in order."""
    return {
        "time": iso8601(record.time),
        "remote_addr": record.remote_addr,
        "request": record.request,
        "status": record.status,
        "body_bytes_sent": record.body_bytes_sent,
        "referer": record.referer,
        "user_agent": record.user_agent,
        "request_time": _rounded(record.request_time),
        "request_id": record.request_id,
        "route": record.route,
        "handler": record.handler,
        "upstream_addr": _tries(record.upstream_addr),
        "upstream_status": [int(status) for status in _tries(record.upstream_status) if status.isdigit()],
        "upstream_connect_time": _rounded(record.upstream_connect_time),
        "upstream_header_time": _rounded(record.upstream_header_time),
        "upstream_response_time": _rounded(record.upstream_response_time),
        "cache": record.cache,
        "tunnel": record.tunnel,
        "tunnel_bytes_to_upstream": record.tunnel_bytes_to_upstream,
        "tunnel_bytes_to_client": record.tunnel_bytes_to_client,
        "tunnel_end": record.tunnel_end,
    }


def format_json(record: AccessRecord) -> str:
    return json.dumps(json_fields(record), separators=(",", ":"))


FORMATS = {"combined": format_combined, "json": format_json}


def cannot_open(target: str) -> str | None:
    """Why a log file named in the configuration cannot be opened for appending (None: it can).

    Checked before workers start, so a bad path is one clear line rather than
    a worker that dies at birth.
    """
    if target in ("-", "off"):
        return None
    try:
        with open(target, "a", encoding="utf-8"):
            return None
    except OSError as exc:
        return f"cannot open {target} for appending: {exc.strerror}"


# This process's access logs that write to a file, for reopen_access_logs (SIGUSR1).
_FILES: "weakref.WeakSet[AccessLog]" = weakref.WeakSet()


def reopen_access_logs() -> list[str]:
    """Open every access log file of this process again by its name, after log rotation renamed it.

    Returns what could not be reopened (that log keeps writing to the file it had).
    """
    problems = []
    for log in list(_FILES):
        try:
            log.reopen()
        except OSError as exc:
            problems.append(f"cannot reopen {log.target}: {exc.strerror}")
    return problems


class AccessLog:
    def __init__(self, target: str, fmt: str) -> None:
        self.target = target
        self._format = FORMATS[fmt]
        self._pending: list[str] = []
        self._stream: IO[str] | None
        if target == "off":
            self._stream = None
        elif target == "-":
            self._stream = sys.stdout
        else:
            self._stream = self._open()
            _FILES.add(self)

    def _open(self) -> IO[str]:
        return open(self.target, "a", encoding="utf-8", errors="backslashreplace")

    def reopen(self) -> None:
        """Write to a file of this name from now on (raises OSError and keeps the old one if it cannot)."""
        if self not in _FILES:
            return
        new = self._open()
        self.flush()
        old, self._stream = self._stream, new
        old.close()

    def write(self, record: AccessRecord) -> None:
        if self._stream is None:
            return
        if not self._pending:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:
                self._pending.append(self._format(record))
                self.flush()
                return
        self._pending.append(self._format(record))

    def flush(self) -> None:
        if self._pending and self._stream is not None:
            lines, self._pending = self._pending, []
            try:
                self._stream.write("\n".join(lines) + "\n")
                self._stream.flush()
            except (OSError, ValueError):
                pass  # a closed stdout must not take the proxy down

    def close(self) -> None:
        self.flush()
        if self in _FILES:
            _FILES.discard(self)
            self._stream.close()
