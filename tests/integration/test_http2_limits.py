"""HTTP/2 limits and known attacks, each run against the real proxy with a real HTTP/2 client (h2).

Each attack must end the attacker's connection (or stream) within a bound, while another client on the
same worker is served throughout, and the worker's memory must stay bounded. Flow control: a slow stream
does not stall the others, a large download to a slow reader is spooled (the upstream is released), and
a reader that never opens its window is cut after send_timeout; an idle connection goes after
keepalive_timeout whatever PINGs it sends.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager

import hpack
import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import ContinuationFrame, HeadersFrame, PingFrame, SettingsFrame

from tests.edge import https_port, rss_bytes, tls_site_config, worker_pid, write_cert
from tests.h2client import ConnectionClosed, H2Client
from tests.helpers import wait_until

MIB = 1024 * 1024
BIG = 4 * MIB


def limits_config(app: str, send_timeout: float = 1.5) -> str:
    return tls_site_config(app, limits=f"send_timeout = {send_timeout}\nkeepalive_timeout = 1.5\nbody_timeout = 1.5",
                           static=True)


@pytest.fixture(scope="module")
def site(tmp_path_factory, ca, test_app_gunicorn):
    from tests.helpers import ProxyProcess

    folder = tmp_path_factory.mktemp("h2limits")
    write_cert(ca.issue_cert("localhost", "127.0.0.1"), folder, "site")
    (folder / "static").mkdir()
    (folder / "static" / "big.bin").write_bytes(b"b" * BIG)
    (folder / "static" / "small.txt").write_bytes(b"small\n")
    proxy = ProxyProcess(folder, limits_config(test_app_gunicorn.address))
    proxy.tls_port = https_port(proxy)
    proxy.worker = worker_pid(proxy)
    yield proxy
    proxy.stop()


class Bystander:
    """Another client on the same worker, requesting all along; ``failures`` must stay empty."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.served = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with H2Client(self.port, timeout=10) as client:
                    while not self._stop.is_set() and client.goaway is None:
                        self._one(client)
            except ConnectionClosed:
                if client.goaway is None or client.goaway.error_code != ErrorCodes.NO_ERROR:
                    self.failures.append(f"connection lost: {client.goaway}")
                    return
                # A graceful GOAWAY (keepalive_requests): a new connection, as any client would.
            except Exception as exc:  # noqa: BLE001: anything at all is a failure to report
                self.failures.append(repr(exc))
                return

    def _one(self, client: H2Client) -> None:
        response = client.request("GET", "/static/small.txt")
        if response.reset == ErrorCodes.REFUSED_STREAM:
            return  # sent after a graceful GOAWAY: not served, to be sent again on a new connection
        if (response.status, bytes(response.body)) != (200, b"small\n"):
            self.failures.append(f"{response.status} {bytes(response.body)[:50]!r}")
        self.served += 1

    def __enter__(self) -> "Bystander":
        self._thread.start()
        wait_until(lambda: self.served > 0 or self.failures, what="the bystander's first answer")
        return self

    def __exit__(self, *exc) -> None:
        before = self.served
        wait_until(lambda: self.served > before or self.failures, what="the bystander to be served after")
        self._stop.set()
        self._thread.join(15)
        assert not self.failures, self.failures


@contextmanager
def attack(site):
    """Around an attack: another client is served all along (Bystander), and the worker's memory grows by
    less than 16 MiB."""
    baseline = rss_bytes(site.worker)
    with Bystander(site.tls_port):
        yield
    growth = rss_bytes(site.worker) - baseline
    assert growth < 16 * MIB, f"the worker grew by {growth / MIB:.1f} MiB"


def goaway_code(client: H2Client, timeout: float = 10.0) -> int | None:
    event = client.wait_closed(timeout)
    return None if event is None else event.error_code


def request_fields(path: str = "/static/small.txt") -> list[tuple[str, str]]:
    return [(":method", "GET"), (":scheme", "https"), (":path", path), (":authority", "localhost")]


def test_settings_advertise_the_limits(site):
    with H2Client(site.tls_port) as client:
        client.wait(lambda: client.remote_settings)
        assert client.remote_settings[0x3] == 128  # SETTINGS_MAX_CONCURRENT_STREAMS
        assert client.remote_settings[0x6] == 32768  # SETTINGS_MAX_HEADER_LIST_SIZE: [limits] max_header_bytes


def test_more_streams_than_max_concurrent_streams_ends_the_connection(site):
    with attack(site):
        with H2Client(site.tls_port) as client:
            # Requests whose bodies never come: each holds a stream open.
            for _ in range(128):
                client.start("POST", "/echo", end=False)
            with pytest.raises(TimeoutError):
                client.wait(lambda: client.closed, timeout=2)  # 128 are fine: the connection stays
        with H2Client(site.tls_port) as client:
            for _ in range(129):
                client.start("POST", "/echo", end=False)
            assert goaway_code(client) == ErrorCodes.PROTOCOL_ERROR


def test_a_head_over_max_header_bytes_is_431_on_its_stream(site):
    with H2Client(site.tls_port) as client:
        assert client.request("GET", "/echo", [("x-big", "v" * 40000)]).status == 431
        assert client.request("GET", "/static/small.txt").status == 200  # the connection goes on


def test_heads_over_the_limit_in_a_loop(site):
    """Oversized heads sent as fast as they go, many at once: each is a 431 on its own stream."""
    with attack(site), H2Client(site.tls_port, timeout=30) as client:
        for _ in range(5):
            ids = [client.start("GET", f"/echo?n={i}", [("x-big", "v" * 40000)]) for i in range(20)]
            assert {client.response(i).status for i in ids} == {431}
        assert client.request("GET", "/static/small.txt").status == 200


def test_hpack_bomb(site):
    encoder = hpack.Encoder()
    # One 4 KB field enters the dynamic table; each further copy is a one-byte reference to it: a 14 KB
    # block that decodes to 40 MB.
    block = encoder.encode(request_fields() + [("x-bomb", "a" * 4000)] * 10000)
    assert len(block) < 16384
    with attack(site), H2Client(site.tls_port) as client:
        frame = HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"])
        client.send_raw(frame.serialize())
        assert goaway_code(client) == ErrorCodes.ENHANCE_YOUR_CALM


def test_continuation_flood(site):
    block = hpack.Encoder().encode(request_fields())
    with attack(site), H2Client(site.tls_port) as client:
        client.send_raw(HeadersFrame(1, block).serialize())  # no END_HEADERS: CONTINUATION frames follow
        sent = 0
        try:
            while sent < 10000 and client.goaway is None:
                client.send_raw(ContinuationFrame(1, b"\x00" * 1024).serialize() * 16)
                sent += 16
                client.read_once(0)
        except OSError:
            pass
        # h2 refuses the 65th frame of a header block (the client's count includes what was in flight).
        assert goaway_code(client) == ErrorCodes.PROTOCOL_ERROR
    print(f"\nCONTINUATION flood: GOAWAY after {sent} frames were sent")


def resets_counted(site) -> int:
    """The streams the proxy saw reset by their client, from its status page."""
    with H2Client(site.tls_port) as client:
        return json.loads(client.request("GET", "/_proxy/status").body)["http2"]["resets_by_client"]


def test_rapid_reset(site):
    """CVE-2023-44487: streams opened and reset at once, in a loop."""
    before = resets_counted(site)
    with attack(site), H2Client(site.tls_port) as client:
        opened = 0
        began = time.monotonic()
        try:
            while opened < 20000 and client.goaway is None:
                stream_id = client.start("GET", f"/echo?n={opened}")
                client.reset(stream_id)
                opened += 1
                if opened % 50 == 0:
                    client.read_once(0)
        except OSError:
            pass
        assert goaway_code(client) == ErrorCodes.ENHANCE_YOUR_CALM
        elapsed = time.monotonic() - began
    # The budget is 200 at once and 50 a second. The client had sent more by then (they were in the
    # sockets' buffers, never looked at); what counts is what the proxy handled before it stopped reading.
    handled = resets_counted(site) - before
    assert handled <= 200 + 50 * elapsed + 1, (handled, elapsed)
    print(f"\nrapid reset: cut off after {handled} streams handled ({opened} sent) in {elapsed:.2f}s")


@pytest.mark.parametrize("frame", [PingFrame(0, b"12345678"), SettingsFrame(0)], ids=["ping", "settings"])
def test_control_frame_floods(site, frame):
    raw = frame.serialize() * 2000
    with attack(site), H2Client(site.tls_port) as client:
        try:
            client.send_raw(raw)
        except OSError:
            pass
        assert goaway_code(client) == ErrorCodes.ENHANCE_YOUR_CALM


def test_a_request_body_that_stops_gets_408_on_its_stream(site):
    with H2Client(site.tls_port) as client:
        stalled = client.start("POST", "/echo", [("content-length", "100")], end=False)
        client.send_body(stalled, b"x" * 10, end=False)
        began = time.monotonic()
        response = client.response(stalled, timeout=10)
        assert response.status == 408
        assert 1.0 < time.monotonic() - began < 8
        assert client.request("GET", "/static/small.txt").status == 200  # the connection goes on


def test_a_few_pings_are_answered(site):
    with H2Client(site.tls_port) as client:
        for _ in range(5):
            client.ping()
        assert client.request("GET", "/static/small.txt").status == 200


def test_a_slow_stream_does_not_stall_the_others(site):
    with H2Client(site.tls_port) as client:
        slow = client.start("GET", "/static/big.bin")
        client.hold(slow)
        fast = client.response(client.start("GET", "/static/big.bin"))
        assert len(fast.body) == BIG
        assert len(client.responses[slow].body) < BIG
        proxied = client.request("GET", "/big?size=1000000")
        assert len(proxied.body) == 1000000


def test_a_stream_whose_window_stays_shut_is_reset_after_send_timeout(site):
    with H2Client(site.tls_port) as client:
        stuck = client.start("GET", "/static/big.bin")
        client.hold(stuck)
        began = time.monotonic()
        client.wait(lambda: client.responses[stuck].reset is not None, timeout=10)
        assert client.responses[stuck].reset == ErrorCodes.CANCEL
        assert 1.0 < time.monotonic() - began < 8
        assert client.request("GET", "/static/small.txt").status == 200  # the connection goes on
    line = wait_until(lambda: [x for x in site.access_lines() if '"GET /static/big.bin HTTP/2.0" 200' in x])
    assert line


def test_a_client_that_never_opens_its_window_is_closed_after_send_timeout(site):
    with attack(site), H2Client(site.tls_port, window=False) as client:
        client.start("GET", "/static/big.bin")
        began = time.monotonic()
        client.wait_closed(timeout=15)
        assert 1.0 < time.monotonic() - began < 10


def test_an_idle_connection_is_closed_after_keepalive_timeout_even_with_pings(site):
    with H2Client(site.tls_port) as client:
        assert client.request("GET", "/static/small.txt").status == 200
        began = time.monotonic()
        while client.goaway is None and not client.closed and time.monotonic() - began < 15:
            client.ping()  # about three a second: a keep-alive, not a flood
            pinged = time.monotonic()
            while client.goaway is None and time.monotonic() - pinged < 0.3 and client.read_once(0.1):
                pass
        elapsed = time.monotonic() - began
        assert client.goaway is not None and client.goaway.error_code == ErrorCodes.NO_ERROR
        client.wait_closed(5)
        assert 1.0 < elapsed < 8


def test_a_large_download_to_a_slow_reader_is_spooled_with_bounded_memory(tmp_path, ca, start_proxy,
                                                                          test_app_gunicorn):
    write_cert(ca.issue_cert("localhost"), tmp_path, "site")
    (tmp_path / "static").mkdir()
    proxy = start_proxy(limits_config(test_app_gunicorn.address, send_timeout=60))
    port = https_port(proxy)
    worker = worker_pid(proxy)
    size = 64 * MIB
    with H2Client(port, timeout=60) as client:
        assert client.request("GET", "/big?size=1000").status == 200  # warm up: the pool, the code paths
        baseline = rss_bytes(worker)
        slow = client.start("GET", f"/big?size={size}")
        client.hold(slow)

        def upstream_released() -> bool:
            client.read_once(0.1)
            status = json.loads(H2Client(port).request("GET", "/_proxy/status").body)
            server = status["upstreams"]["app"]["servers"][0]
            return server["active_connections"] == 0 and server["in_flight"] == 0

        wait_until(upstream_released, timeout=60, interval=0.2, what="the upstream to be read to the end")
        growth = rss_bytes(worker) - baseline
        print(f"\n{size // MIB} MiB to a stalled HTTP/2 reader: the upstream released, proxy RSS +{growth / MIB:.1f} MiB")
        assert growth < 16 * MIB
        assert len(client.responses[slow].body) < size
        client.release(slow)
        client.window = True
        response = client.response(slow, timeout=60)
    assert len(response.body) == size
