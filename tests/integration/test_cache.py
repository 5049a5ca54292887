"""The response cache against real Gunicorn (tests/apps/cacheable.py counts every request it receives).

Each test uses paths of its own, so one proxy and one Gunicorn serve the module; waits are polls, and
expiry is the upstream's max-age of one or two seconds, waited for by polling the answer.
"""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.helpers import GunicornProcess, ProxyProcess, free_port, raw_request, status_of, wait_until

CONFIG = """
[server]
listen = ["127.0.0.1:0"]
{server}
[status]
{status}
[upstreams.app]
servers = ["{upstream}"]
read_timeout = 5.0
[caches.main]
memory = "4m"
max_entry_size = "2m"
lock_timeout = 3.0
{cache}
[[routes]]
prefix = "/"
upstream = "app"
cache = "main"
{route}
"""


class Counted:
    """The requests Gunicorn received for one path (one line each: method and conditional headers)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def lines(self, path: str) -> list[str]:
        file = self.folder / (path.strip("/").replace("/", "_") or "root")
        return file.read_text().splitlines() if file.exists() else []

    def __call__(self, path: str) -> int:
        return len(self.lines(path))


@pytest.fixture(scope="module")
def counted(tmp_path_factory):
    return Counted(tmp_path_factory.mktemp("counts"))


@pytest.fixture(scope="module")
def app(counted):
    gunicorn = GunicornProcess("tests.apps.cacheable:app", "--threads", "16", worker_class="gthread",
                               env={"TEST_COUNT_DIR": str(counted.folder)})
    yield gunicorn
    gunicorn.stop()


def start_proxy(folder: Path, upstream: str, cache: str = "", server: str = "", status: str = "",
                route: str = "") -> ProxyProcess:
    return ProxyProcess(folder, CONFIG.format(upstream=upstream, cache=cache, server=server, status=status,
                                              route=route))


@pytest.fixture(scope="module")
def proxy(app, tmp_path_factory):
    proxy = start_proxy(tmp_path_factory.mktemp("proxy"), app.address, cache='use_stale = ["error", "http_500"]')
    yield proxy
    proxy.stop()


def get(proxy, path: str, session=None, **kwargs) -> requests.Response:
    return (session or requests).get(proxy.url + path, timeout=10, **kwargs)


def status_json(proxy) -> dict:
    return requests.get(proxy.url + "/_proxy/status", timeout=5).json()["caches"]["main"]


def test_a_hit_is_answered_without_gunicorn(proxy, counted):
    path = "/hit?cc=max-age%3D60"
    first = get(proxy, path)
    assert first.headers["x-cache-status"] == "MISS" and first.text.startswith("answer 1 ")
    before = status_json(proxy)["hits"]
    with requests.Session() as session:
        for _ in range(5):
            again = get(proxy, path, session)
            assert again.headers["x-cache-status"] == "HIT" and again.text == first.text
            assert int(again.headers["age"]) >= 0 and 'desc="cache /"' in again.headers["server-timing"]
    assert counted("/hit") == 1
    assert status_json(proxy)["hits"] == before + 5
    wait_until(lambda: any("cache=HIT" in line and "/hit?" in line for line in proxy.access_lines()),
               what="cache=HIT in the access log")


def test_head_is_answered_from_the_get_entry_and_a_head_miss_fills_it(proxy, counted):
    head = requests.head(proxy.url + "/head?cc=max-age%3D60", timeout=10)
    assert head.headers["x-cache-status"] == "MISS" and head.content == b""
    assert counted.lines("/head") == ["GET - - -"]  # sent upstream as a GET
    full = get(proxy, "/head?cc=max-age%3D60")
    assert full.headers["x-cache-status"] == "HIT" and int(head.headers["content-length"]) == len(full.content)
    again = requests.head(proxy.url + "/head?cc=max-age%3D60", timeout=10)
    assert again.headers["x-cache-status"] == "HIT" and again.headers["content-length"] == head.headers["content-length"]
    assert counted("/head") == 1


def test_one_entry_per_variant(proxy, counted):
    path = "/vary?cc=max-age%3D60&vary=Accept-Language"
    answers = {lang: get(proxy, path, headers={"Accept-Language": lang}) for lang in ("de", "fr", "de", "fr")}
    assert counted("/vary") == 2
    german = get(proxy, path, headers={"Accept-Language": "de"})
    assert german.headers["x-cache-status"] == "HIT" and "lang=de" in german.text
    assert "lang=fr" in answers["fr"].text


def test_no_store_private_and_set_cookie_are_never_stored(proxy, counted):
    for name, query in (("nostore", "cc=no-store"), ("private", "cc=private%2C+max-age%3D60"),
                        ("cookie", "cc=max-age%3D60&cookie=s%3D1"), ("silent", "x=1")):
        for _ in range(2):
            assert get(proxy, f"/{name}?{query}").headers["x-cache-status"] == "MISS"
        assert counted(f"/{name}") == 2, name


def test_expiry_revalidation_and_a_304_that_refreshes(proxy, counted):
    path = "/reval?cc=max-age%3D1&etag=%22v1%22"
    first = get(proxy, path)
    wait_until(lambda: get(proxy, path).headers["x-cache-status"] == "REVALIDATED", timeout=10,
               what="the entry to expire and be revalidated")
    assert counted.lines("/reval")[-1].startswith('GET "v1"')  # the cache's own If-None-Match
    again = get(proxy, path)
    assert again.headers["x-cache-status"] == "HIT" and again.text == first.text  # the body kept, refreshed


def test_no_cache_answers_are_revalidated_every_time(proxy, counted):
    path = "/nocache?cc=no-cache&etag=%22n1%22"
    get(proxy, path)
    for _ in range(3):
        assert get(proxy, path).headers["x-cache-status"] == "REVALIDATED"
    assert counted("/nocache") == 4


def test_an_expired_entry_without_validators_is_replaced_expired(proxy, counted):
    path = "/replaced?cc=max-age%3D1"
    first = get(proxy, path)
    replaced = wait_until(lambda: (r := get(proxy, path)).headers["x-cache-status"] == "EXPIRED" and r, timeout=10,
                          what="the entry to expire and be fetched again")
    assert replaced.text != first.text and counted.lines("/replaced")[-1] == "GET - - -"  # no validator to send
    assert get(proxy, path).text == replaced.text  # the new answer is the entry now


def test_authorization_and_range_requests_bypass_the_cache(proxy, counted):
    path = "/bypassed?cc=max-age%3D60"
    get(proxy, path)
    assert get(proxy, path).headers["x-cache-status"] == "HIT"
    private = get(proxy, path, headers={"Authorization": "Bearer x"})
    ranged = get(proxy, path, headers={"Range": "bytes=0-3"})
    assert private.headers["x-cache-status"] == ranged.headers["x-cache-status"] == "BYPASS"
    assert counted("/bypassed") == 3 and get(proxy, path).headers["x-cache-status"] == "HIT"


def test_the_clients_conditional_request_is_answered_by_the_cache(proxy, counted):
    path = "/cond?cc=max-age%3D60&etag=%22c1%22"
    miss = get(proxy, path, headers={"If-None-Match": '"c1"'})
    assert miss.status_code == 304 and miss.headers["x-cache-status"] == "MISS"
    assert counted.lines("/cond") == ["GET - - -"]  # the whole answer was asked for, and stored
    hit = get(proxy, path, headers={"If-None-Match": '"c1"'})
    assert hit.status_code == 304 and hit.headers["x-cache-status"] == "HIT" and hit.headers["etag"] == '"c1"'
    assert get(proxy, path, headers={"If-None-Match": '"other"'}).status_code == 200
    assert counted("/cond") == 1


def test_unsafe_methods_invalidate(proxy, counted):
    path = "/posted?cc=max-age%3D60"
    get(proxy, path)
    assert get(proxy, path).headers["x-cache-status"] == "HIT"
    assert requests.post(proxy.url + path, data=b"x", timeout=10).status_code == 200
    assert get(proxy, path).headers["x-cache-status"] == "MISS"
    failed = requests.delete(proxy.url + path + "&status=500", timeout=10)  # another URI, and an error
    assert failed.status_code == 500
    assert get(proxy, path).headers["x-cache-status"] == "HIT"


def test_purge_and_the_cache_page(proxy, counted):
    path = "/purged?cc=max-age%3D60"
    get(proxy, path)
    purged = requests.request("PURGE", proxy.url + path, timeout=10)
    assert purged.status_code == 200 and purged.json() == {"purged": 1}
    assert requests.request("PURGE", proxy.url + path, timeout=10).status_code == 404
    assert get(proxy, path).headers["x-cache-status"] == "MISS"
    key = f"http127.0.0.1:{proxy.port}{path}"
    deleted = requests.delete(proxy.url + "/_proxy/cache", params={"key": key}, timeout=10)
    assert deleted.status_code == 200 and deleted.json() == {"purged": 1}
    get(proxy, "/purged-a?cc=max-age%3D60")
    get(proxy, "/purged-b?cc=max-age%3D60")
    everything = requests.delete(proxy.url + "/_proxy/cache", params={"key": f"http127.0.0.1:{proxy.port}/purged-*"},
                                 timeout=10)
    assert everything.json() == {"purged": 2}
    assert requests.delete(proxy.url + "/_proxy/cache", timeout=10).status_code == 400
    assert requests.get(proxy.url + "/_proxy/cache", timeout=10).status_code == 405
    assert counted("/purged") == 2


def test_purge_is_refused_outside_the_status_networks(app, tmp_path):
    proxy = start_proxy(tmp_path, app.address, status='allow = ["10.9.8.7/32"]')
    try:
        get(proxy, "/guarded?cc=max-age%3D60")
        assert requests.request("PURGE", proxy.url + "/guarded?cc=max-age%3D60", timeout=10).status_code == 405
        assert requests.delete(proxy.url + "/_proxy/cache", params={"key": "x"}, timeout=10).status_code == 404
        assert get(proxy, "/guarded?cc=max-age%3D60").headers["x-cache-status"] == "HIT"
    finally:
        proxy.stop()


def burst(port: int, path: str, clients: int = 100) -> list[bytes]:
    """``clients`` connections send the same request at the same moment; every answer, as received."""
    barrier = threading.Barrier(clients)
    def client() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            barrier.wait()
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        answers.append(data)

    answers: list[bytes] = []
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return answers


def test_collapsed_forwarding_100_concurrent_misses_reach_gunicorn_once(proxy, counted):
    path = "/collapsed?cc=max-age%3D60&sleep=0.5"
    answers = burst(proxy.port, path)
    assert len(answers) == 100 and all(status_of(a) == 200 for a in answers)
    assert counted("/collapsed") == 1, "more than one request reached Gunicorn"
    bodies = {a.partition(b"\r\n\r\n")[2] for a in answers}
    assert len(bodies) == 1
    labels = sorted(line.split(b": ")[1] for a in answers for line in a.split(b"\r\n")
                    if line.lower().startswith(b"x-cache-status"))
    assert labels.count(b"MISS") == 1 and labels.count(b"HIT") == 99
    print(f"\nmeasured: 100 concurrent misses for one key -> {counted('/collapsed')} request to Gunicorn")


def test_a_waiter_goes_upstream_itself_after_lock_timeout(proxy, counted):
    path = "/lockslow?cc=max-age%3D60&sleep=4"
    first = threading.Thread(target=get, args=(proxy, path))
    first.start()
    wait_until(lambda: counted("/lockslow") == 1, what="the first request to reach Gunicorn")
    started = time.monotonic()
    second = get(proxy, path)
    assert second.status_code == 200 and time.monotonic() - started >= 2.5  # lock_timeout = 3
    first.join(10)
    assert counted("/lockslow") == 2


def test_responses_above_max_entry_size_are_relayed_not_stored(proxy, counted):
    path = "/huge?cc=max-age%3D60&size=5000000"
    for _ in range(2):
        answer = get(proxy, path)
        assert len(answer.content) == 5_000_000 and answer.headers["x-cache-status"] == "MISS"
    assert counted("/huge") == 2
    # A HEAD goes upstream as a GET; once the body cannot be stored, the rest of it is not read.
    head = requests.head(proxy.url + "/huge-head?cc=max-age%3D60&size=50000000", timeout=10)
    assert head.status_code == 200 and head.headers["content-length"] == "50000000"
    assert get(proxy, "/huge-head?cc=max-age%3D60&size=10").headers["x-cache-status"] == "MISS"


def test_stale_served_while_revalidating_in_the_background(proxy, counted):
    path = "/swr?cc=max-age%3D4%2C+stale-while-revalidate%3D30&sleep=1.5"  # every answer takes 1.5 s
    get(proxy, path)
    stale = wait_until(lambda: (r := get(proxy, path)).headers["x-cache-status"] == "STALE" and r, timeout=15,
                       what="a stale answer")
    assert stale.text.startswith("answer 1 ")  # the old body, while Gunicorn makes the new one
    updating = get(proxy, path)  # while the background refresh waits for its answer
    assert updating.headers["x-cache-status"] == "UPDATING" and updating.text == stale.text
    wait_until(lambda: counted("/swr") == 2, what="the background refresh")
    fresh = wait_until(lambda: (r := get(proxy, path)).text.startswith("answer 2 ") and r, what="the new entry")
    assert fresh.headers["x-cache-status"] == "HIT"


def test_stale_answers_instead_of_an_upstream_error_status(proxy, counted):
    # use_stale = ["error", "http_500"] (this module's proxy), and the upstream's own stale-if-error.
    for name, query, failing in (("flaky500", "cc=max-age%3D1&status=500", "500"),
                                 ("flaky503", "cc=max-age%3D1%2C+stale-if-error%3D60&status=503", "503")):
        path = f"/{name}?{query}&fail={name}.fail"
        kept = get(proxy, path)
        assert kept.status_code == 200
        (counted.folder / f"{name}.fail").touch()  # from now on the app answers the error status
        stale = wait_until(lambda: (r := get(proxy, path)).headers["x-cache-status"] == "STALE" and r, timeout=10,
                           what=f"a stale answer instead of a {failing}")
        assert stale.status_code == 200 and stale.text == kept.text
    strict = "/flaky-strict?cc=max-age%3D1%2C+must-revalidate&status=500&fail=flaky-strict.fail"
    get(proxy, strict)
    (counted.folder / "flaky-strict.fail").touch()
    wait_until(lambda: get(proxy, strict).status_code == 500, timeout=10, what="must-revalidate: the 500 itself")


def test_a_fill_goes_on_when_its_client_leaves_and_others_wait(proxy, counted):
    path = "/abandoned?cc=max-age%3D60&sleep=1"
    leaving = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    leaving.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    wait_until(lambda: counted("/abandoned") == 1, what="the first request to reach Gunicorn")
    waiting = threading.Thread(target=lambda: answers.append(get(proxy, path, headers={"Host": "t"})))
    answers: list = []
    waiting.start()
    # Both requests in flight (and the status request itself): the second waits for the first one's answer.
    wait_until(lambda: requests.get(proxy.url + "/_proxy/status", timeout=5).json()["connections"]["active"] >= 3,
               what="the second request to wait")
    leaving.close()
    waiting.join(10)
    assert answers[0].status_code == 200 and answers[0].headers["x-cache-status"] == "HIT"
    assert counted("/abandoned") == 1


def test_client_no_cache_is_ignored_by_default(proxy, counted):
    path = "/reload?cc=max-age%3D60"
    get(proxy, path)
    again = get(proxy, path, headers={"Cache-Control": "no-cache", "Pragma": "no-cache"})
    assert again.headers["x-cache-status"] == "HIT" and counted("/reload") == 1


def test_metrics_and_status(proxy):
    get(proxy, "/metrics-hit?cc=max-age%3D60")
    get(proxy, "/metrics-hit?cc=max-age%3D60")
    text = requests.get(proxy.url + "/_proxy/metrics", timeout=5).text
    assert 'proxy_cache_requests_total{cache="main",status="HIT"}' in text
    assert 'proxy_cache_bytes{cache="main",tier="memory"}' in text
    status = status_json(proxy)
    assert status["memory"]["entries"] >= 1 and status["memory"]["bytes"] > 0 and status["disk"] is None
    assert set(status["statuses"]) == {"HIT", "MISS", "EXPIRED", "STALE", "UPDATING", "REVALIDATED", "BYPASS"}


# --- the upstream goes away --------------------------------------------------------------------

def test_stale_served_when_gunicorn_is_killed(tmp_path, counted):
    gunicorn = GunicornProcess("tests.apps.cacheable:app", "--threads", "4", worker_class="gthread",
                               env={"TEST_COUNT_DIR": str(counted.folder)})
    proxy = start_proxy(tmp_path, gunicorn.address, cache='use_stale = ["error", "timeout"]')
    try:
        kept = get(proxy, "/killed?cc=max-age%3D1")
        plain = get(proxy, "/killed-strict?cc=max-age%3D1%2C+must-revalidate")
        gunicorn.stop()
        wait_until(lambda: get(proxy, "/killed?cc=max-age%3D1").headers["x-cache-status"] == "STALE", timeout=10,
                   what="a stale answer once the entry expired and Gunicorn is gone")
        stale = get(proxy, "/killed?cc=max-age%3D1")
        assert stale.status_code == 200 and stale.text == kept.text
        assert int(stale.headers["age"]) >= 1
        assert plain.status_code == 200
        assert wait_until(lambda: get(proxy, "/killed-strict?cc=max-age%3D1%2C+must-revalidate").status_code == 502,
                          timeout=10, what="must-revalidate: no stale answer")
    finally:
        gunicorn.stop()
        proxy.stop()


# --- the disk tier -----------------------------------------------------------------------------

def test_disk_tier_survives_a_restart_and_is_shared_by_the_workers(app, counted, tmp_path):
    disk = f'path = "{tmp_path / "disk"}"\nmax_size = "10m"'
    proxy = start_proxy(tmp_path, app.address, cache=disk, server="workers = 2")
    path = "/disk?cc=max-age%3D600"
    host = {"Host": "cache.test"}  # the key holds the host: the same one after the restart (a new port)
    once = {**host, "Connection": "close"}  # a new connection each: either worker answers
    try:
        first = get(proxy, path, headers=host)
        large = get(proxy, "/disk-large?cc=max-age%3D600&size=1500000", headers=host)  # > memory / 8: disk only
        for _ in range(10):
            answer = get(proxy, path, headers=once)
            assert answer.headers["x-cache-status"] == "HIT" and answer.text == first.text
        again = get(proxy, "/disk-large?cc=max-age%3D600&size=1500000", headers=host)
        assert again.headers["x-cache-status"] == "HIT" and again.content == large.content
        status = status_json(proxy)
        assert status["disk"]["entries"] == 2 and status["disk"]["bytes"] > 1_500_000
    finally:
        proxy.stop()
    proxy = start_proxy(tmp_path, app.address, cache=disk, server="workers = 2")
    try:
        after = get(proxy, path, headers=host)
        assert after.headers["x-cache-status"] == "HIT" and after.text == first.text
        assert counted("/disk") == 1 and counted("/disk-large") == 1
        for _ in range(6):  # into every worker's memory tier; then a purge through one of them
            get(proxy, path, headers=once)
        assert requests.request("PURGE", proxy.url + path, headers=host, timeout=10).json()["purged"] >= 1
        refetched = get(proxy, path, headers=once)
        assert refetched.headers["x-cache-status"] == "MISS"
        for _ in range(6):
            answer = get(proxy, path, headers=once)
            assert answer.text != first.text, "a worker still answered from its memory tier after the purge"
        # The other worker did not fetch it too: the first one's claim made it wait for the entry.
        assert counted("/disk") == 2
    finally:
        proxy.stop()


def test_collapsed_forwarding_spans_the_workers_through_the_disk_tier(app, counted, tmp_path):
    proxy = start_proxy(tmp_path, app.address, cache=f'path = "{tmp_path / "disk"}"', server="workers = 2")
    try:
        answers = burst(proxy.port, "/collapsed-workers?cc=max-age%3D60&sleep=0.5")
        assert len(answers) == 100 and all(status_of(a) == 200 for a in answers)
        assert len({a.partition(b"\r\n\r\n")[2] for a in answers}) == 1
        assert counted("/collapsed-workers") == 1, "more than one worker sent the request to Gunicorn"
        assert not list((tmp_path / "disk" / "claims").iterdir())  # every claim let go of
    finally:
        proxy.stop()


def test_status_header_can_be_renamed_or_turned_off(app, tmp_path):
    proxy = start_proxy(tmp_path, app.address, cache='status_header = ""')
    try:
        get(proxy, "/quiet?cc=max-age%3D60")
        hit = get(proxy, "/quiet?cc=max-age%3D60")
        assert "x-cache-status" not in hit.headers and "age" in hit.headers
    finally:
        proxy.stop()


def test_renamed_header_and_client_no_cache_honoured_on_request(app, counted, tmp_path):
    proxy = start_proxy(tmp_path, app.address, cache='status_header = "X-Proxy-Cache"\nclient_no_cache = "revalidate"')
    path = "/honoured?cc=max-age%3D60&etag=%22h1%22"
    try:
        assert get(proxy, path).headers["x-proxy-cache"] == "MISS"
        assert get(proxy, path).headers["x-proxy-cache"] == "HIT"
        reload = get(proxy, path, headers={"Cache-Control": "no-cache"})
        assert reload.headers["x-proxy-cache"] == "REVALIDATED" and "x-cache-status" not in reload.headers
        assert counted.lines("/honoured")[-1].startswith('GET "h1"')
        assert get(proxy, path, headers={"Pragma": "no-cache"}).headers["x-proxy-cache"] == "REVALIDATED"
        assert get(proxy, path).headers["x-proxy-cache"] == "HIT"
        assert counted("/honoured") == 3
    finally:
        proxy.stop()


# --- a route that caches and compresses ----------------------------------------------------------

def fetch(proxy, path: str, headers=None) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body as sent: http.client undoes the chunking, not the coding."""
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


@pytest.fixture(scope="module", params=["memory", "disk"])
def compressing(request, app, tmp_path_factory):
    """A route with compress and a cache; "disk": bodies larger than an eighth of the memory tier stay on disk
    and are sent from the file, with sendfile on (asyncio's loop.sendfile, which would bypass the encoder)."""
    folder = tmp_path_factory.mktemp(f"compress-{request.param}")
    if request.param == "memory":
        proxy = start_proxy(folder, app.address, route="compress = true")
    else:
        proxy = start_proxy(folder, app.address, route="compress = true", cache=f'path = "{folder}/disk"',
                            server='sendfile = true\nevent_loop = "asyncio"')
    yield request.param, proxy
    proxy.stop()


def test_a_gzip_client_and_an_identity_client_each_get_their_body_from_one_entry(compressing, counted):
    tier, proxy = compressing
    size = 20000 if tier == "memory" else 800000  # above 4m / 8: kept on disk only
    path = f"/squeezed-{tier}?cc=max-age%3D60&etag=%22z1%22&size={size}"
    status, plain, body = fetch(proxy, path)
    assert status == 200 and plain["x-cache-status"] == "MISS" and "content-encoding" not in plain
    assert len(body) == size and plain["etag"] == '"z1"' and plain["vary"] == "Accept-Encoding"
    for _ in range(2):  # each client's answer from the one stored identity body, compressed or not as it asks
        status, zipped, squeezed = fetch(proxy, path, {"Accept-Encoding": "gzip"})
        assert zipped["x-cache-status"] == "HIT" and zipped["content-encoding"] == "gzip"
        assert gzip.decompress(squeezed) == body and len(squeezed) < size // 10
        assert zipped["etag"] == 'W/"z1"' and zipped["vary"] == "Accept-Encoding"
        status, again, same = fetch(proxy, path, {"Accept-Encoding": "identity"})
        assert again["x-cache-status"] == "HIT" and "content-encoding" not in again and same == body
        assert again["etag"] == '"z1"'
    # The gzip client revalidates with the weak tag it holds: a 304 from the entry, with that tag.
    status, revalidated, empty = fetch(proxy, path, {"Accept-Encoding": "gzip", "If-None-Match": 'W/"z1"'})
    assert status == 304 and revalidated["x-cache-status"] == "HIT" and revalidated["etag"] == 'W/"z1"'
    assert empty == b"" and counted(f"/squeezed-{tier}") == 1
