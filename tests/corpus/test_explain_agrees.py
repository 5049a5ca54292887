"""``proxy explain`` and the server decide alike: every corpus case through both.

The server's answer to each case is its ``.expect`` (test_corpus.py checks it
against the real proxy); here the same bytes go through ``explain_bytes``,
which parses them with the same codec and asks the same ``Decider``. The first
answer must agree: the same status, or "forwarded" exactly when the upstream
received the request.
"""

from __future__ import annotations

import pytest

from proxy import config
from proxy.explain import explain_bytes

from . import casefile
from .test_corpus import CONFIG, NAMES, build_site


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    folder = tmp_path_factory.mktemp("explain")
    (folder / "site").mkdir()
    build_site(folder / "site")
    (folder / "proxy.toml").write_text(CONFIG.format(upstream="127.0.0.1:9"))
    return config.load(folder / "proxy.toml")


@pytest.mark.parametrize("engine", ["llhttp", "h11"])
@pytest.mark.parametrize("name", NAMES)
def test_explain_gives_the_servers_first_answer(cfg, name, engine):
    import dataclasses

    cfg = dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, http_engine=engine))
    case = casefile.load(name)
    expect = case.expect
    told = explain_bytes(cfg, case.data, eof=expect.half_close)
    first = expect.statuses[0] if expect.statuses else None
    if told.forwarded:
        assert expect.upstream >= 1, f"{name}: explain forwards it, the server did not:\n{told}"
        assert first == 200, f"{name}: the recording upstream answers 200:\n{told}"
    else:
        assert told.status == first, f"{name}: the server answered {expect.statuses}:\n{told}"
        if first is not None and first != 200:
            assert expect.upstream == 0 or len(expect.statuses) > 1, f"{name}: the server forwarded it:\n{told}"
