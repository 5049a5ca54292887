"""appserver.toml and the appserver flags: one declaration per setting, one-line errors, Gunicorn's view."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from appserver import cli, config
from appserver.config import ConfigError, Settings
from appserver.middleware import wrap_worker_app

ROOT = Path(__file__).resolve().parents[2]


def load_text(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "appserver.toml"
    path.write_text(text)
    return config.load(path)


def test_defaults_are_the_ones_for_life_behind_the_proxy():
    s = Settings()
    assert s.app == "demo_app.wsgi:app"
    assert s.bind == ("127.0.0.1:8000",)
    assert s.workers == 2 * len(os.sched_getaffinity(0)) + 1
    assert s.keepalive == 75  # > the proxy's upstream idle_timeout of 60 s
    assert s.forwarded_allow_ips == ("127.0.0.1",)
    assert s.graceful_timeout == 30


def test_keepalive_outlives_the_proxys_pooled_connections():
    from proxy.config import Upstream

    idle_timeout = next(f.default for f in Upstream.__dataclass_fields__.values() if f.name == "idle_timeout")
    assert Settings().keepalive > idle_timeout


def test_a_full_file_loads(tmp_path):
    s = load_text(tmp_path, """
app = "tests.apps.basic:app"
bind = ["127.0.0.1:9000", "[::1]:9000"]
workers = 3
worker_class = "gthread"
threads = 8
keepalive = 90
forwarded_allow_ips = ["10.0.0.2", "10.0.0.3"]
access_log = "off"
log_level = "warning"
""")
    assert s.bind == ("127.0.0.1:9000", "[::1]:9000")
    assert (s.workers, s.worker_class, s.threads, s.keepalive) == (3, "gthread", 8, 90)
    assert s.forwarded_allow_ips == ("10.0.0.2", "10.0.0.3")


@pytest.mark.parametrize("text, message", [
    ("wrkers = 3\n", "wrkers: unknown key (expected one of: app, bind, workers"),
    ('workers = "3"\n', "workers: expected a whole number >= 1, got '3'"),
    ("workers = 0\n", "workers: expected a whole number >= 1, got 0"),
    ("threads = true\n", "threads: expected a whole number >= 1, got True"),
    ("keepalive = 7.5\n", "keepalive: expected a whole number of seconds >= 1"),
    ('worker_class = "eventlet"\n', 'worker_class: expected one of "sync", "gthread"'),
    ('bind = "8000"\n', 'bind: expected "host:port"'),
    ('bind = "127.0.0.1:70000"\n', 'bind: expected "host:port"'),
    ("bind = []\n", 'bind: expected "host:port"'),
    ('app = "demo_app.wsgi"\n', 'app: expected a WSGI application as "module:callable"'),
    ('forwarded_allow_ips = ""\n', "forwarded_allow_ips: expected IP addresses"),
    ('log_level = "loud"\n', "log_level: expected one of"),
    ("[server]\nbind = 1\n", "server: unknown key"),
])
def test_mistakes_are_one_line_naming_file_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    text_of_error = str(info.value)
    assert text_of_error.startswith(f"{tmp_path / 'appserver.toml'}: ")
    assert message in text_of_error
    assert "\n" not in text_of_error


def test_unreadable_files_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        config.load(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_text(tmp_path, "workers = \n")


def test_flags_override_the_file_and_go_through_the_same_checks(tmp_path):
    path = tmp_path / "appserver.toml"
    path.write_text('workers = 3\nbind = "127.0.0.1:9000"\n')
    s, check = cli.settings_from_args(["--config", str(path), "--workers", "7", "--worker-class", "gthread",
                                       "--threads", "2", "--forwarded-allow-ips", "10.0.0.1, 10.0.0.2",
                                       "tests.apps.basic:app"])
    assert (s.workers, s.worker_class, s.threads, s.bind) == (7, "gthread", 2, ("127.0.0.1:9000",))
    assert s.forwarded_allow_ips == ("10.0.0.1", "10.0.0.2")
    assert s.app == "tests.apps.basic:app"
    assert check is False
    with pytest.raises(ConfigError, match=r"^--workers: expected a whole number >= 1, got 'many'$"):
        cli.settings_from_args(["--workers", "many"])
    with pytest.raises(ConfigError, match=r"^APP: expected a WSGI application"):
        cli.settings_from_args(["not an app"])


def test_every_flag_of_the_contract_exists():
    # The Docker/systemd files rely on exactly these.
    usage = " ".join(cli._parser().format_usage().split())
    for part in ("[--config FILE]", "[--bind HOST:PORT]", "[--workers N]", "[--worker-class sync|gthread]",
                 "[--threads N]", "[--forwarded-allow-ips LIST]", "[APP]"):
        assert part in usage, part


def test_an_app_module_that_does_not_exist_is_one_line():
    with pytest.raises(ConfigError, match=r"^APP nosuch\.mod:app: no module named 'nosuch\.mod'"):
        cli.check_app_module("nosuch.mod:app")
    cli.check_app_module("demo_app.wsgi:app")


def test_command_line_errors_exit_1_with_one_line():
    result = subprocess.run([sys.executable, "-m", "appserver", "--threads", "0"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr == "appserver: --threads: expected a whole number >= 1, got '0'\n"


@pytest.mark.parametrize("command", [["-m", "appserver"], ["-m", "proxy"]], ids=["appserver", "proxy"])
def test_version_is_printed_by_both_tiers(command):
    from importlib.metadata import version

    result = subprocess.run([sys.executable, *command, "--version"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith(f"{command[1]} {version('twotier')}")
    if command[1] == "appserver":
        assert f"(Gunicorn {version('gunicorn')})" in result.stdout


def test_gunicorn_settings():
    g = config.gunicorn_settings(Settings(workers=3, worker_class="gthread", threads=6))
    assert g["bind"] == ["127.0.0.1:8000"]
    assert (g["workers"], g["worker_class"], g["threads"]) == (3, "gthread", 6)
    assert g["keepalive"] == 75
    assert g["forwarded_allow_ips"] == "127.0.0.1"
    assert "%({x-request-id}o)s" in g["access_log_format"]
    assert g["post_worker_init"] is wrap_worker_app
    assert g["control_socket_disable"] is True
    # Gunicorn silently upgrades sync with threads > 1 to gthread: never let that happen.
    assert config.gunicorn_settings(Settings(worker_class="sync", threads=8))["threads"] == 1
    assert config.gunicorn_settings(Settings(access_log="off"))["accesslog"] is None


def test_gunicorn_accepts_every_setting():
    from gunicorn.config import Config

    cfg = Config()
    for name, value in config.gunicorn_settings(Settings()).items():
        cfg.set(name, value)
    assert cfg.worker_class_str == config.Settings().worker_class


def test_gunicorn_conf_module_has_the_same_defaults():
    namespace: dict = {}
    exec((ROOT / "appserver" / "gunicorn_conf.py").read_text(), namespace)
    assert {k: namespace[k] for k in config.gunicorn_settings(Settings())} == config.gunicorn_settings(Settings())


def test_repo_appserver_toml_is_valid():
    config.load(ROOT / "appserver.toml")


def test_reference_doc_is_current():
    doc = (ROOT / "docs" / "app-tier.md").read_text()
    assert config.reference() in doc, "regenerate the table in docs/app-tier.md with python -m appserver.config"

