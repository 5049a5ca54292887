"""`docker compose up` from the working tree: the two tiers in containers, checked from outside.

One stack per module, under a compose project name of its own, published on a
free loopback port and with a backend subnet no other Docker network uses, so
it never touches a stack someone else runs. Readiness is polled (container
health, then HTTP), never slept for; every wait is bounded; the stack is
removed with ``down -v`` whatever happened.

Requests go only to the port published on 127.0.0.1. Images are tagged
``twotier-proxy:e2e`` and ``twotier-app:e2e`` and kept as build cache.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import secrets
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass

import pytest

from tests.e2e.dockerlib import BUILD_SECONDS, COMMAND_SECONDS, ROOT, base_image, docker, free_subnet, why_no_daemon
from tests.helpers import free_port, wait_until

pytestmark = pytest.mark.e2e

HEALTHY_SECONDS = 120.0


def why_no_docker() -> str | None:
    """Why this machine cannot run the stack, or None when it can."""
    reason = why_no_daemon()
    if reason:
        return reason
    if compose_command() is None:
        return "neither `docker compose` nor `docker-compose` is installed"
    return None


def compose_command() -> list[str] | None:
    """`docker compose` (v2) when installed, else `docker-compose` (v1)."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=20, check=False).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


@dataclass
class Stack:
    project: str
    port: int
    subnet: str
    env: dict[str, str]
    compose: list[str]

    def run(self, *args: str, timeout: float = COMMAND_SECONDS, check: bool = True) -> subprocess.CompletedProcess:
        argv = [*self.compose, "--project-name", self.project, "--project-directory", str(ROOT),
                "--file", str(ROOT / "docker-compose.yml"), *args]
        result = subprocess.run(argv, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout,
                                check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed:\n{result.stdout}{result.stderr}")
        return result

    def containers(self, service: str) -> list[dict]:
        ids = docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={self.project}",
                     "--filter", f"label=com.docker.compose.service={service}").stdout.split()
        return json.loads(docker("inspect", *ids).stdout) if ids else []

    def network(self, name: str) -> dict:
        ids = docker("network", "ls", "-q", "--filter", f"label=com.docker.compose.project={self.project}",
                     "--filter", f"label=com.docker.compose.network={name}").stdout.split()
        assert len(ids) == 1, f"network {name} of {self.project}: {ids}"
        return json.loads(docker("network", "inspect", ids[0]).stdout)[0]

    def wait_healthy(self, counts: dict[str, int]) -> None:
        def healthy() -> bool:
            for service, count in counts.items():
                states = [c["State"] for c in self.containers(service)]
                for state in states:
                    if state["Status"] in ("exited", "dead"):
                        raise AssertionError(f"{service} exited:\n{self.run('logs', '--tail', '50', service).stdout}")
                if sum(s.get("Health", {}).get("Status") == "healthy" for s in states) != count:
                    return False
            return True

        wait_until(healthy, HEALTHY_SECONDS, interval=0.5, what=f"healthy containers {counts}")

    def proxy_status(self) -> dict:
        """The proxy's status page, read from inside its container (deploy/proxy.toml allows 127.0.0.1 only)."""
        code = ("import urllib.request; "
                "print(urllib.request.urlopen('http://127.0.0.1:8080/_proxy/status', timeout=5).read().decode())")
        return json.loads(self.run("exec", "-T", "proxy", "python", "-c", code).stdout)

    def request(self, path: str, headers: dict | None = None, timeout: float = 10.0) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def stack():
    reason = why_no_docker()
    if reason:
        pytest.skip(reason)
    port = free_port()
    subnet = free_subnet()
    env = {**os.environ, "TWOTIER_PORT": str(port), "TWOTIER_BACKEND_SUBNET": subnet,
           "TWOTIER_TAG": "e2e", "PYTHON_IMAGE": base_image()}
    stack = Stack(f"twotier-e2e-{os.getpid()}-{secrets.token_hex(3)}", port, subnet, env, compose_command())
    try:
        stack.run("up", "--detach", "--build", timeout=BUILD_SECONDS)
        stack.wait_healthy({"proxy": 1, "app": 1})
        yield stack
    finally:
        logs = stack.run("logs", "--no-color", "--tail", "40", check=False, timeout=60)
        print(f"--- last lines of {stack.project}'s logs ---\n{logs.stdout}{logs.stderr}")
        stack.run("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False, timeout=COMMAND_SECONDS)


def test_static_file_comes_from_the_proxy_image(stack):
    status, headers, body = stack.request("/static/index.html")
    assert status == 200
    assert body == (ROOT / "demo_app" / "static" / "index.html").read_bytes()
    assert headers["cache-control"] == "public, max-age=3600"   # the /static/ route of deploy/proxy.toml
    assert "upstream" not in headers.get("server-timing", "")


def test_the_proxy_image_has_what_basic_auth_and_acme_need(stack):
    """The proxy image is installed without the app tier's dependencies; basic_auth (bcrypt) and
    [tls.acme] (acme) must still be there, or a config using them fails only inside the container."""
    made = docker("run", "--rm", "-i", "twotier-proxy:e2e", "hash-password", "--user", "alice",
                  input="secret\n")
    assert made.stdout.startswith("alice:$2"), made.stdout + made.stderr
    imported = docker("run", "--rm", "--entrypoint", "/opt/twotier/bin/python", "twotier-proxy:e2e",
                      "-c", "import proxy.server.acme, acme.client, josepy, OpenSSL; print('ok')")
    assert imported.stdout.strip() == "ok", imported.stderr


def test_whoami_sees_the_client_and_the_request_id(stack):
    request_id = f"e2e-{secrets.token_hex(8)}"
    status, headers, body = stack.request(
        "/api/whoami", {"X-Request-ID": request_id, "X-Forwarded-For": "203.0.113.9"})
    assert status == 200, body
    seen = json.loads(body)
    assert seen["request_id"] == request_id
    assert headers["x-request-id"] == request_id
    # The client as the proxy saw it: the published port hands connections over
    # from the edge network's gateway. Not the spoofed header, not the proxy.
    gateway = stack.network("edge")["IPAM"]["Config"][0]["Gateway"]
    proxy_ips = {n["IPAddress"] for n in stack.containers("proxy")[0]["NetworkSettings"]["Networks"].values()}
    assert seen["remote_addr"] == gateway
    assert seen["remote_addr"] not in proxy_ips | {"203.0.113.9"}
    app_hostnames = {c["Config"]["Hostname"] for c in stack.containers("app")}
    assert seen["hostname"] in app_hostnames


def test_app_port_is_not_published(stack):
    [app] = stack.containers("app")
    assert not app["HostConfig"]["PortBindings"]
    assert all(not bindings for bindings in (app["NetworkSettings"]["Ports"] or {}).values())
    assert set(app["NetworkSettings"]["Networks"]) == {stack.network("backend")["Name"]}
    assert stack.network("backend")["Internal"] is True
    [proxy] = stack.containers("proxy")
    assert proxy["HostConfig"]["PortBindings"] == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(stack.port)}]}


def test_status_page_is_private(stack):
    status, _, _ = stack.request("/_proxy/status")
    assert status == 404           # through the published port: not from 127.0.0.1 as the proxy sees it
    [upstream] = stack.proxy_status()["upstreams"].values()
    assert upstream["servers"] and upstream["servers"][0]["configured_as"] == "app:8000"


def test_scale_to_three_app_containers_spreads_requests(stack):
    stack.run("up", "--detach", "--no-build", "--no-recreate", "--scale", "app=3", timeout=COMMAND_SECONDS)
    stack.wait_healthy({"proxy": 1, "app": 3})
    expected = {c["Config"]["Hostname"] for c in stack.containers("app")}
    assert len(expected) == 3
    seen: set[str] = set()

    def whoami(_) -> str:
        status, _, body = stack.request("/api/whoami")
        assert status == 200, body
        return json.loads(body)["hostname"]

    # Concurrent requests, so the proxy needs several upstream connections;
    # repeated until the proxy has re-resolved `app` and reached all three.
    deadline = time.monotonic() + 60
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        while seen != expected and time.monotonic() < deadline:
            seen.update(pool.map(whoami, range(24)))
    assert seen == expected


def test_stop_lets_a_request_in_flight_finish(stack):
    """SIGTERM through `docker compose stop` while /api/slow is being answered: the client still gets it.

    `stop` is run once the proxy's status page shows the request in flight to
    the app tier. Both tiers must then exit 0 (SIGKILL after
    stop_grace_period would give 137).
    """
    request_id = f"e2e-stop-{secrets.token_hex(6)}"
    sent = threading.Event()
    outcome: dict = {}

    def slow_request() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=30)
        try:
            conn.request("GET", "/api/slow?seconds=3", headers={"X-Request-ID": request_id})
            sent.set()
            response = conn.getresponse()
            outcome.update(status=response.status, body=response.read(), at=time.monotonic())
        except (OSError, http.client.HTTPException) as exc:  # reported by the assertion below
            outcome.update(error=repr(exc))
        finally:
            sent.set()
            conn.close()

    client = threading.Thread(target=slow_request)
    client.start()
    assert sent.wait(10), "the request was not sent"

    def in_flight() -> int:
        return sum(server["in_flight"] for upstream in stack.proxy_status()["upstreams"].values()
                   for server in upstream["servers"])

    wait_until(in_flight, 10, interval=0.1, what="the slow request to be in flight to the app tier")
    stop_started = time.monotonic()
    stack.run("stop", timeout=COMMAND_SECONDS)
    client.join(30)
    assert not client.is_alive()
    assert "error" not in outcome, outcome
    assert outcome["status"] == 200, outcome
    assert outcome["at"] > stop_started
    for service in ("proxy", "app"):
        for container in stack.containers(service):
            assert container["State"]["Status"] == "exited"
            assert container["State"]["ExitCode"] == 0, (service, container["State"])
    access = stack.run("logs", "--no-color", "proxy").stdout
    assert any(request_id in line and '" 200 ' in line for line in access.splitlines()), access[-2000:]
