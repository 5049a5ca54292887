"""The whole hostile corpus at once: sixteen clients in parallel against one proxy.

tests/corpus runs each case alone; here they overlap, so one client's refusal,
half-read body or lingering close must not leak into another's exchange. Each
case must still get exactly its expected responses, the upstream must receive
exactly as many requests as all cases together allow, and the proxy must serve
normally afterwards.
"""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.corpus import casefile
from tests.corpus.test_corpus import READ_TIMEOUT, SECRET, normal_request_works, play, start


@pytest.fixture
def stack(tmp_path):
    proxy, upstream = start(tmp_path)
    yield proxy, upstream
    proxy.stop()
    upstream.close()


def run(port: int, case: casefile.Case) -> tuple[list[int], bool, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT) as sock:
        statuses, reader, deadline = play(sock, case, timeout=2 * READ_TIMEOUT)
        closed = reader.closed(deadline) if case.expect.closed else not reader.eof
        return statuses, closed, reader.raw


def test_the_corpus_in_parallel(stack):
    proxy, upstream = stack
    cases = [casefile.load(name) for name in casefile.names()]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda case: run(proxy.port, case), cases))
    wrong = {case.name: (statuses, closed) for case, (statuses, closed, _) in zip(cases, results)
             if (statuses, closed) != (case.expect.statuses, True)}
    assert not wrong
    assert not any(SECRET in raw for _, _, raw in results)
    # Every forwarded request was answered before its client read the response, so the count is final.
    assert len(upstream.received) == sum(case.expect.upstream for case in cases)
    normal_request_works(proxy.port)
