"""The make-up launcher's proxy.toml copy: other ports, absolute folders, same meaning (no sockets)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from appserver.stack import derive_proxy_config, dump_toml, write_proxy_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("data", [
    {},
    {"a": 1, "b": 2.5, "c": True, "d": "x \"q\" \\ é", "e": ["1", "2"], "f": [1, 2]},
    {"server": {"listen": ["127.0.0.1:1"]}, "upstreams": {"app": {"servers": ["h:1"], "keepalive": 0},
                                                          "two words": {"servers": []}},
     "routes": [{"prefix": "/a/", "static": "x"}, {"prefix": "/", "upstream": "app"}]},
])
def test_dump_toml_round_trips(data):
    assert tomllib.loads(dump_toml(data)) == data


def test_derived_config_moves_ports_and_resolves_folders(tmp_path):
    data = tomllib.loads((ROOT / "proxy.toml").read_text())
    data["upstreams"]["other"] = {"servers": ["10.0.0.9:8000"]}
    derived = derive_proxy_config(data, ROOT, proxy_port=18080, app_port=18000)
    assert derived["server"]["listen"] == ["127.0.0.1:18080"]
    assert derived["upstreams"]["app"]["servers"] == ["127.0.0.1:18000"]
    assert derived["upstreams"]["other"]["servers"] == ["10.0.0.9:8000"]  # not the app tier's: left alone
    assert all(Path(r["static"]).is_absolute() for r in derived["routes"] if "static" in r)
    assert data["server"]["listen"] == ["127.0.0.1:8080"]  # the original is untouched


def test_the_copy_means_the_same_paths_as_the_original(tmp_path):
    # Relative paths are relative to the config file's folder: the launcher's copy lives elsewhere.
    (tmp_path / "site" / "www").mkdir(parents=True)
    (tmp_path / "site" / "spill").mkdir()
    original = tmp_path / "site" / "proxy.toml"
    original.write_text('[server]\ntemp_dir = "spill"\npid_file = "run.pid"\n'
                        '[log]\naccess = "logs/access.log"\nerror = "-"\n'
                        '[[routes]]\nprefix = "/"\nstatic = "www"\n')
    (tmp_path / "site" / "logs").mkdir()
    from proxy import config as proxy_config

    before = proxy_config.load(original)
    (tmp_path / "elsewhere").mkdir()
    after = proxy_config.load(write_proxy_config(original, tmp_path / "elsewhere", 18080, 18000))
    assert (after.server.temp_dir, after.server.pid_file, after.log.access, after.log.error, after.routes[0].static) \
        == (before.server.temp_dir, before.server.pid_file, before.log.access, "-", before.routes[0].static)
    assert after.log.access == str(tmp_path / "site" / "logs" / "access.log")


def test_written_copy_is_a_valid_proxy_config(tmp_path):
    from proxy import config as proxy_config

    copy = write_proxy_config(ROOT / "proxy.toml", tmp_path, 18080, 18000)
    cfg = proxy_config.load(copy)
    assert [str(a) for a in cfg.server.listen] == ["127.0.0.1:18080"]
    assert [str(s) for s in cfg.upstreams["app"].servers] == ["127.0.0.1:18000"]
    assert cfg.routes[0].static == (ROOT / "demo_app" / "static").resolve()


def test_a_broken_proxy_toml_is_reported_against_itself(tmp_path):
    from proxy.errors import ConfigError

    broken = tmp_path / "proxy.toml"
    broken.write_text("[server]\nlisten = 8080\n")
    with pytest.raises(ConfigError, match=rf"^{broken}: server.listen"):
        write_proxy_config(broken, tmp_path / "out", 1, 2)
