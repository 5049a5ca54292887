"""Which load generator drives a scenario: wrk for HTTP/1.1 in cleartext, h2load for HTTP/2 over TLS."""

from __future__ import annotations

from . import h2load, wrk
from .scenarios import Scenario
from .wrk import WrkResult

# Scenario.protocol -> (over TLS, the runner: (scenario, url, seconds, wrk threads) -> WrkResult)
TOOLS = {
    "http/1.1": (False, lambda s, url, seconds, threads: wrk.run(url, s.connections, seconds, threads, s.headers)),
    "h2": (True, lambda s, url, seconds, threads: h2load.run(url, s.connections, s.streams, seconds)),
}


def tls(scenario: Scenario) -> bool:
    return TOOLS[scenario.protocol][0]


def run(scenario: Scenario, url: str, seconds: float, threads: int) -> WrkResult:
    return TOOLS[scenario.protocol][1](scenario, url, seconds, threads)
