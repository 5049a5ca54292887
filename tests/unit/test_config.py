"""proxy.toml validation: every mistake is one line naming the file, the key and what was expected."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import trustme

from proxy import cli, config
from proxy.config import Address, ConfigError, Listen, UnixAddress, parse_address, parse_size

ROOT = Path(__file__).resolve().parents[2]


def load_text(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "proxy.toml"
    path.write_text(text)
    return config.load(path)


def test_defaults_with_an_empty_file(tmp_path):
    cfg = load_text(tmp_path, "")
    assert cfg.server.listen == (Listen(Address("127.0.0.1", 8080)),)
    assert cfg.limits.max_body_bytes == 1024 * 1024
    assert cfg.limits.max_header_bytes == 32768
    assert cfg.log.format == "combined"
    assert cfg.routes == ()


def test_open_file_cache_settings(tmp_path):
    defaults = load_text(tmp_path, "").server
    assert (defaults.open_file_cache_valid, defaults.open_file_cache_entries, defaults.open_file_cache_bytes) == (
        1.0, 10000, 64 * 1024**2)
    off = load_text(tmp_path, "[server]\nopen_file_cache_valid = 0\nopen_file_cache_bytes = \"1m\"\n").server
    assert (off.open_file_cache_valid, off.open_file_cache_bytes) == (0.0, 1024**2)


def test_full_example_loads(tmp_path):
    (tmp_path / "static").mkdir()
    cfg = load_text(tmp_path, """
        [server]
        listen = ["127.0.0.1:8080", "[::1]:8080"]
        [limits]
        max_body_bytes = "16k"
        [upstreams.app]
        servers = ["127.0.0.1:8000", "app:8001"]
        keepalive = 0
        [[routes]]
        prefix = "/static/"
        static = "static"
        [[routes]]
        prefix = "/"
        upstream = "app"
    """.replace("\n        ", "\n"))
    assert cfg.server.listen[1] == Listen(Address("::1", 8080))
    assert cfg.limits.max_body_bytes == 16384
    assert cfg.upstreams["app"].servers[1].address == Address("app", 8001)
    assert cfg.routes[0].static == (tmp_path / "static").resolve()


@pytest.mark.parametrize("text, message", [
    ("[server]\nlisten = 8080\n", 'server.listen: expected a list of "host:port"'),
    ("[server]\nbogus = 1\n", "server.bogus: unknown key"),
    ("[nope]\n", "nope: unknown section"),
    ("[limits]\nmax_body_bytes = \"lots\"\n", "limits.max_body_bytes: expected a size"),
    ("[limits]\nheader_timeout = -1\n", "limits.header_timeout: expected a number of seconds > 0"),
    ("[limits]\nmax_headers = true\n", "limits.max_headers: expected a whole number"),
    ("[server]\nopen_file_cache_valid = -1\n", "server.open_file_cache_valid: expected a number of seconds >= 0"),
    ("[server]\nopen_file_cache_valid = \"1s\"\n", "server.open_file_cache_valid: expected a number of seconds >= 0"),
    ("[server]\nopen_file_cache_bytes = \"lots\"\n", "server.open_file_cache_bytes: expected a size"),
    ("[log]\nformat = \"xml\"\n", 'log.format: expected one of "combined", "json"'),
    ("[server]\nlisten = [\"127.0.0.1:8080\", \"127.0.0.1:8080\"]\n", "server.listen: 127.0.0.1:8080 is listed twice"),
    ("[[routes]]\nprefix = \"/\"\nupstream = \"nope\"\n", "routes[0].upstream: unknown upstream 'nope'"),
    ("[[routes]]\nprefix = \"/\"\nstatic = \"missing\"\n", "routes[0].static: folder"),
    ("[[routes]]\nprefix = \"/\"\n", "routes[0]: expected static, upstream, both, or redirect"),
    ("[[routes]]\nupstream = \"a\"\n", "routes[0].prefix: missing"),
    ("[[routes]]\nprefix = \"x\"\n", "routes[0].prefix: expected a URL path prefix"),
    ("[upstreams.app]\nkeepalive = 2\n", "upstreams.app.servers: missing"),
    ("[upstreams.app]\nservers = [\"nohost\"]\n", "upstreams.app.servers: expected"),
    ("[upstreams.app]\nservers = []\n", "upstreams.app.servers: expected"),
    ("this is not toml", "not valid TOML"),
    ("[upstreams.app]\nservers = [{address = \"a:1\", weight = 0}]\n", "upstreams.app.servers[0].weight: expected a whole number from 1 to 1000"),
    ("[upstreams.app]\nservers = [{address = \"a:1\", colour = 1}]\n", "upstreams.app.servers[0].colour: unknown key"),
    ("[upstreams.app]\nservers = [{weight = 2}]\n", "upstreams.app.servers[0].address: missing"),
    ("[upstreams.app]\nservers = [\"a:1\"]\nbalance = \"fastest\"\n", 'upstreams.app.balance: expected one of "round_robin"'),
    ("[upstreams.app]\nservers = [\"a:1\"]\nnext_upstream = [\"http_500\"]\n", "upstreams.app.next_upstream: expected a list of"),
    ("[upstreams.app]\nservers = [\"a:1\"]\n[upstreams.app.health]\ninterval = 0\n", "upstreams.app.health.interval: expected a number of seconds > 0"),
    ("[upstreams.app]\nservers = [\"a:1\"]\n[upstreams.app.health]\nexpect_status = [700]\n", "upstreams.app.health.expect_status: expected a list of HTTP status codes"),
    ("[status]\nallow = [\"nonsense\"]\n", "status.allow: expected a list of an address or network"),
])
def test_errors_name_the_file_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    text_of_error = str(caught.value)
    assert text_of_error.startswith(str(tmp_path / "proxy.toml")), text_of_error
    assert message in text_of_error
    assert "\n" not in text_of_error


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        config.load(tmp_path / "absent.toml")


@pytest.mark.parametrize("value, expected", [
    (0, 0), (1024, 1024), ("16k", 16384), ("1m", 1048576), ("2G", 2 * 1024**3), ("10kb", 10240), ("5", 5)])
def test_sizes(value, expected):
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", ["", "k", "1.5m", "-1", "1t", True, 1.5, -3])
def test_bad_sizes(value):
    with pytest.raises(config.Invalid):
        parse_size(value)


@pytest.mark.parametrize("value, expected", [
    ("127.0.0.1:80", Address("127.0.0.1", 80)),
    ("[::1]:8080", Address("::1", 8080)),
    ("app:8000", Address("app", 8000)),
    ("localhost:0", Address("localhost", 0)),
])
def test_addresses(value, expected):
    assert parse_address(value) == expected


@pytest.mark.parametrize("value", ["127.0.0.1", ":80", "host:99999", "[zz]:80", "a b:1", "[::1]"])
def test_bad_addresses(value):
    with pytest.raises(config.Invalid):
        parse_address(value)


@pytest.mark.parametrize("name, ok", [
    ("twotier", True), ("TwoTier", True), ("My-Proxy", True), ("edge_1.2~x", True),
    ("", False), ("two tier", False), ("a/b", False), ("caf\u00e9", False), ('"q"', False),
])
def test_server_name_is_any_http_token(tmp_path, name, ok):
    # Both directions: the names the message promises are taken as written, the rest refused.
    text = f"[server]\nname = {json.dumps(name)}\n"  # a JSON string is a TOML basic string
    if ok:
        assert load_text(tmp_path, text).server.name == name
    else:
        with pytest.raises(ConfigError, match="server.name: expected a name of letters"):
            load_text(tmp_path, text)


@pytest.mark.parametrize("protocols, expected", [
    ('["websocket"]', ("websocket",)), ('["WebSocket", "foo/2"]', ("websocket", "foo/2")), ("[]", ()),
    ('["a b"]', None), ('["x/y/z"]', None), ('[""]', None),
])
def test_upgrade_protocols(tmp_path, protocols, expected):
    text = f'[upstreams.app]\nservers = ["a:1"]\nupgrade = {protocols}\n'
    if expected is not None:
        assert load_text(tmp_path, text).upstreams["app"].upgrade == expected
    else:
        with pytest.raises(ConfigError, match="upstreams.app.upgrade: expected a list of an Upgrade protocol"):
            load_text(tmp_path, text)


@pytest.mark.parametrize("listen, expected", [
    ('["8080"]', Address("0.0.0.0", 8080)), ('[":8080"]', Address("0.0.0.0", 8080)),
    ('["*:8080"]', Address("0.0.0.0", 8080)), ('"localhost:0"', Address("localhost", 0)),
    ('["[::]:80"]', Address("::", 80)),
])
def test_listen_accepts_what_nginx_accepts(tmp_path, listen, expected):
    assert load_text(tmp_path, f"[server]\nlisten = {listen}\n").server.listen == (Listen(expected),)


@pytest.mark.parametrize("listen, message", [
    ("999.1.1.1:80", "server.listen: 999.1.1.1 is not a valid IPv4 address"),
    ("1.2.3:80", "server.listen: 1.2.3 is not a valid IPv4 address"),
    ("no-such-host.invalid:80", "server.listen: cannot resolve 'no-such-host.invalid' to an address to listen on"),
    (":99999", "server.listen: expected a list of"),
    ("localhost:65536", "server.listen: expected a list of"),
])
def test_listen_is_checked_as_nginx_t_does(tmp_path, listen, message):
    # --check-config loads the file this way: what it calls ok must also bind.
    with pytest.raises(ConfigError, match=message):
        load_text(tmp_path, f'[server]\nlisten = ["{listen}"]\n')
    with pytest.raises(ConfigError, match=message.replace("server.", "tls.")):
        load_text(tmp_path, f'[tls]\nlisten = ["{listen}"]\ncertificate = "x.pem"\n')


def test_a_mistyped_ip_is_not_taken_for_an_upstream_host_name(tmp_path):
    with pytest.raises(ConfigError, match=r"upstreams.app.servers: 10.0.0.256 is not a valid IPv4 address"):
        load_text(tmp_path, '[upstreams.app]\nservers = ["10.0.0.256:8000"]\n')


def test_paths_are_relative_to_the_config_files_folder(tmp_path, monkeypatch):
    # The current directory differs between a shell, systemd and a container; the file's folder does not.
    (tmp_path / "spill").mkdir()
    monkeypatch.chdir("/")
    cfg = load_text(tmp_path, '[server]\ntemp_dir = "spill"\n[log]\naccess = "logs/access.log"\n'
                              'error = "../error.log"\n')
    assert cfg.server.temp_dir == str(tmp_path / "spill")
    assert cfg.log.access == str(tmp_path / "logs" / "access.log")
    assert cfg.log.error == str(tmp_path.parent / "error.log")


def test_log_words_are_kept_as_written(tmp_path):
    cfg = load_text(tmp_path, '[log]\naccess = "off"\nerror = "-"\n')
    assert (cfg.log.access, cfg.log.error) == ("off", "-")
    assert load_text(tmp_path, '[log]\naccess = "-"\n').log.access == "-"
    with pytest.raises(ConfigError, match="server.temp_dir: folder .*nope does not exist"):
        load_text(tmp_path, '[server]\ntemp_dir = "nope"\n')
    with pytest.raises(ConfigError, match="log.access: expected a file"):
        load_text(tmp_path, '[log]\naccess = ""\n')


def test_reference_doc_is_current():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert config.reference() in doc, "regenerate: python -m proxy.config --update docs/configuration.md"


def test_shipped_configs_are_valid():
    shipped = config.load(ROOT / "proxy.toml")
    assert [s.address for s in shipped.upstreams["app"].servers] == [Address("127.0.0.1", 8000)]
    # make up's status pages (the demo page links them), for this machine only
    assert shipped.status is not None and shipped.status.allows("127.0.0.1") and not shipped.status.allows("10.0.0.1")


def test_upstream_group_settings(tmp_path):
    cfg = load_text(tmp_path, """
[upstreams.app]
servers = [
  "127.0.0.1:8001",
  { address = "127.0.0.1:8002", weight = 2 },
  { address = "127.0.0.1:8003", backup = true },
  { address = "app:8000", max_conns = 100 },
]
balance = "least_conn"
max_fails = 3
tries = 2
next_upstream = ["error", "http_503"]
[upstreams.app.health]
path = "/ping"
expect_status = [200, 204]
[status]
allow = ["10.0.0.0/8"]
""")
    app = cfg.upstreams["app"]
    assert [s.weight for s in app.servers] == [1, 2, 1, 1]
    assert app.servers[2].backup and app.servers[3].max_conns == 100
    assert app.balance == "least_conn" and app.tries == 2
    assert app.next_upstream == {"error", "http_503"}
    assert app.health.path == "/ping" and app.health.expect_status == (200, 204)
    assert app.health.interval == 2.0
    assert cfg.status.allows("10.1.2.3") and not cfg.status.allows("127.0.0.1")


def test_status_is_off_unless_configured(tmp_path):
    assert load_text(tmp_path, "").status is None
    assert load_text(tmp_path, "[status]\n").status.allows("::1")


def test_event_loop_choice(tmp_path, monkeypatch):
    assert load_text(tmp_path, '[server]\nevent_loop = "asyncio"\n').server.event_loop == "asyncio"
    assert load_text(tmp_path, '[server]\nevent_loop = "uvloop"\n').server.event_loop == "uvloop"  # a dependency
    with pytest.raises(ConfigError, match='server.event_loop: expected one of "auto", "asyncio", "uvloop"'):
        load_text(tmp_path, '[server]\nevent_loop = "trio"\n')
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as on a platform uvloop has no build for
    with pytest.raises(ConfigError, match="uvloop cannot be imported here .*reinstall twotier.*or use \"auto\""):
        load_text(tmp_path, '[server]\nevent_loop = "uvloop"\n')
    assert load_text(tmp_path, '[server]\nevent_loop = "auto"\n').server.event_loop == "auto"


def test_with_absolute_paths_keeps_words_and_absolute_paths():
    data = {"log": {"access": "off", "error": "err.log"}, "server": {"pid_file": "", "temp_dir": "/var/tmp"},
            "tls": {"certificate": "certs/c.pem", "key": "", "sites": [{"names": ["a.test"], "certificate": "s.pem"}]},
            "routes": [{"prefix": "/", "static": "www", "upstream": "app"}]}
    out = config.with_absolute_paths(data, Path("/etc/twotier"))
    assert out["log"] == {"access": "off", "error": "/etc/twotier/err.log"}
    assert out["server"] == {"pid_file": "", "temp_dir": "/var/tmp"}
    assert (out["tls"]["certificate"], out["tls"]["key"]) == ("/etc/twotier/certs/c.pem", "")
    assert out["tls"]["sites"][0]["certificate"] == "/etc/twotier/s.pem"
    assert out["routes"][0] == {"prefix": "/", "static": "/etc/twotier/www", "upstream": "app"}
    assert data["log"]["error"] == "err.log"  # the original is untouched


# --- where the proxy listens and what it talks to ---------------------------

def test_listen_entries_as_strings_and_tables(tmp_path):
    cfg = load_text(tmp_path, """
[server]
listen = ["127.0.0.1:8080", "unix:/run/twotier.sock", { address = ":8081", proxy_protocol = true },
          { address = "unix:/run/twotier/lb.sock", proxy_protocol = true, mode = 0o660 }]
""")
    assert cfg.server.listen == (
        Listen(Address("127.0.0.1", 8080)), Listen(UnixAddress("/run/twotier.sock")),
        Listen(Address("0.0.0.0", 8081), proxy_protocol=True),
        Listen(UnixAddress("/run/twotier/lb.sock"), proxy_protocol=True, mode=0o660))
    assert [e.socket_mode for e in cfg.server.listen[1::2]] == [0o666, 0o660]
    assert [str(e) for e in cfg.server.listen] == ["127.0.0.1:8080", "unix:/run/twotier.sock",
                                                   "0.0.0.0:8081 (PROXY protocol)",
                                                   "unix:/run/twotier/lb.sock (PROXY protocol)"]
    assert load_text(tmp_path, '[server]\nlisten = [{address = "unix:/a.sock", mode = "640"}]\n').server.listen[0].mode \
        == 0o640


def test_servers_on_unix_sockets_and_https(tmp_path):
    cfg = load_text(tmp_path, """
[upstreams.app]
servers = ["unix:/run/gunicorn.sock", "https://10.0.0.5:8443", "http://10.0.0.6:8000",
           { address = "https://app.internal:8443", weight = 2 }]
""")
    app = cfg.upstreams["app"]
    assert [(s.address, s.scheme) for s in app.servers] == [
        (UnixAddress("/run/gunicorn.sock"), ""), (Address("10.0.0.5", 8443), "https"),
        (Address("10.0.0.6", 8000), "http"), (Address("app.internal", 8443), "https")]
    assert [str(s) for s in app.servers][1:] == ["https://10.0.0.5:8443", "http://10.0.0.6:8000",
                                                 "https://app.internal:8443 weight=2"]
    # https:// without a tls table: verified against the system's CAs, named by the host as written.
    assert [app.tls_for(s) for s in app.servers] == [None, config.UpstreamTls(), None, config.UpstreamTls()]


def test_a_tls_table_makes_a_groups_host_port_servers_https(tmp_path):
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cfg = load_text(tmp_path, """
[upstreams.app]
servers = ["10.0.0.5:8443", "http://10.0.0.6:8000", "unix:/run/gunicorn.sock"]
tls = { ca_file = "ca.pem", server_name = "App.Internal" }
""")
    app = cfg.upstreams["app"]
    assert app.tls == config.UpstreamTls(verify=True, ca_file=tmp_path / "ca.pem", server_name="app.internal")
    assert [app.tls_for(s) for s in app.servers] == [app.tls, None, None]  # http:// and unix: stay plain
    assert "tls verify ca_file" in cli.summary(cfg)


@pytest.mark.parametrize("text, message", [
    ('[server]\nlisten = ["unix:run/x.sock"]\n', "server.listen: 'unix:run/x.sock': a unix socket is written unix:/absolute/path"),
    (f'[server]\nlisten = ["unix:/{"x" * 110}"]\n', "server.listen: 'unix:/xxx"),
    ('[server]\nlisten = [{address = "127.0.0.1:80", mode = 0o600}]\n',
     "server.listen[0]: mode: only a unix: socket has permissions"),
    ('[server]\nlisten = [{address = "unix:/a.sock", mode = 0o1777}]\n', "server.listen[0].mode: expected permissions"),
    ('[server]\nlisten = [{address = "unix:/a.sock", mode = "rw"}]\n', "server.listen[0].mode: expected permissions"),
    ('[server]\nlisten = [{address = "127.0.0.1:80", proxy_protocol = "yes"}]\n',
     "server.listen[0].proxy_protocol: expected true or false"),
    ('[server]\nlisten = [{address = "127.0.0.1:80", send_proxy = true}]\n', "server.listen[0].send_proxy: unknown key"),
    ('[server]\nlisten = [{proxy_protocol = true}]\n', "server.listen[0].address: missing"),
    ('[server]\nlisten = ["unix:/a.sock", {address = "unix:/a.sock"}]\n', "server.listen: unix:/a.sock is listed twice"),
    ('[upstreams.app]\nservers = ["unix:relative.sock"]\n', "upstreams.app.servers: 'unix:relative.sock': a unix socket"),
    ('[upstreams.app]\nservers = ["https://unix:/a.sock"]\n', "upstreams.app.servers: https://unix:/a.sock: a unix: server"),
    ('[upstreams.app]\nservers = [{address = "https://unix:/a.sock"}]\n',
     "upstreams.app.servers[0]: https://unix:/a.sock: a unix: server speaks plain HTTP"),
    ('[upstreams.app]\nservers = ["ftp://a:1"]\n', "upstreams.app.servers: expected"),
    ('[upstreams.app]\nservers = ["https://a:1/path"]\n', "upstreams.app.servers: expected"),
    ('[upstreams.app]\nservers = ["unix:/a.sock"]\ntls = {}\n',
     "upstreams.app: tls: no server of this group speaks HTTPS (unix: and http:// servers are plain)"),
    ('[upstreams.app]\nservers = ["a:1"]\ntls = { verify = "yes" }\n', "upstreams.app.tls.verify: expected true or false"),
    ('[upstreams.app]\nservers = ["a:1"]\ntls = { ca_file = "missing.pem" }\n', "upstreams.app.tls.ca_file: file"),
    ('[upstreams.app]\nservers = ["a:1"]\ntls = { server_name = "*.app.internal" }\n',
     "upstreams.app.tls.server_name: expected a host name or IP address"),
    ('[upstreams.app]\nservers = ["a:1"]\ntls = { sni = "x" }\n', "upstreams.app.tls.sni: unknown key"),
    ('[status]\nallow = ["unix"]\n', 'status.allow: expected a list of an address or network like "127.0.0.1/32" or '
                                     '"::1/128", or "unix:"'),
])
def test_listen_and_server_errors_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    assert str(caught.value).startswith(f"{tmp_path / 'proxy.toml'}: {message}"), str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_ca_file_that_holds_no_certificate_is_an_error(tmp_path):
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"upstreams.app.tls.ca_file: .*ca.pem holds no PEM CA certificate"):
        load_text(tmp_path, '[upstreams.app]\nservers = ["a:1"]\ntls = { ca_file = "ca.pem" }\n')


def test_status_allow_unix_clients(tmp_path):
    status = load_text(tmp_path, '[status]\nallow = ["unix:", "10.0.0.0/8"]\n').status
    assert status.allows("unix:") and status.allows("10.1.1.1") and not status.allows("127.0.0.1")
    assert not load_text(tmp_path, "[status]\n").status.allows("unix:")  # never by default: nginx's rule too


def test_with_absolute_paths_fixes_an_upstreams_ca_file(tmp_path):
    data = {"upstreams": {"app": {"servers": ["a:1"], "tls": {"ca_file": "ca.pem"}}}}
    assert config.with_absolute_paths(data, tmp_path)["upstreams"]["app"]["tls"]["ca_file"] == str(tmp_path / "ca.pem")
