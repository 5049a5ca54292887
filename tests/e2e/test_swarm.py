"""deploy/stack.yml on a one-node Docker Swarm, under a steady load, while its replicas roll, die and scale.

`make swarm-up` deploys the stack from this working tree under a stack name of
its own, published on a free port and with a backend subnet no Docker network
uses. Clients then keep a bounded, steady load on 127.0.0.1:<port> for the
whole module: GETs of /api/whoami (which name the app container that
answered), POSTs to /api/tally, and slow GETs that are still in flight when a
task is told to stop. No client retries: every failure is counted.

The app tasks record the request id of every POST they receive in a folder
bound from the host (demo_app.Tally), so a POST the proxy sent twice, or one
answered 200 that no task received, shows. The tests run in file order, one
phase each: roll the app, SIGKILL a task, scale 3 -> 5 -> 2, roll
the proxy; each reports what it measured (pytest prints it under "measured").

The swarm is left as found: if this module ran `docker swarm init`, it
leaves with `docker swarm leave --force`; otherwise it removes only its own
stack. Skipped, saying why, without a Docker engine, without `docker stack`,
or on a swarm of several nodes (the images are built on this one).
"""

from __future__ import annotations

import collections
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.e2e.dockerlib import BUILD_SECONDS, COMMAND_SECONDS, ROOT, base_image, docker, free_subnet, why_no_daemon
from tests.helpers import compose_duration, free_port, wait_until

pytestmark = pytest.mark.e2e

STACK_FILE = ROOT / "deploy" / "stack.yml"
PROXY_TOML = ROOT / "deploy" / "swarm" / "proxy.toml"
TAG = "e2e-swarm"

CONVERGE_SECONDS = 240.0   # a rolling update of every task, on a busy machine
LOAD_SECONDS = 1500.0      # no client sends anything after this, whatever happens
MAX_REQUESTS = 100_000     # per client
CLIENTS = 3                # keep-alive clients, each sending GET, GET, POST, ...
SLOW_CLIENTS = 2           # keep-alive clients whose GETs the app answers after SLOW_SECONDS
SLOW_SECONDS = 3
PACE = 0.025               # seconds between two requests of one client
CLIENT_TIMEOUT = 30.0
SLACK = 5.0                # added to the timing bounds: a busy 2-core machine runs probes late


STACK = yaml.safe_load(STACK_FILE.read_text())
REPLICAS = STACK["services"]["app"]["deploy"]["replicas"]
HEALTH_INTERVAL = compose_duration(STACK["services"]["app"]["healthcheck"]["interval"])
RESOLVE_INTERVAL = tomllib.loads(PROXY_TOML.read_text())["upstreams"]["app"]["resolve_interval"]


# --- the load -------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    """One request as its client saw it."""

    kind: str             # "GET", "POST" or "SLOW" (a GET the app answers after SLOW_SECONDS)
    request_id: str
    started: float        # time.time(), comparable with Docker's event times
    ended: float
    status: int | None    # None: no response at all
    hostname: str = ""    # the app container that answered
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error


class Load:
    """Clients on 127.0.0.1:port until close(), LOAD_SECONDS or MAX_REQUESTS each, whichever comes first."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.run = secrets.token_hex(4)
        self.outcomes: list[Outcome] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.deadline = time.monotonic() + LOAD_SECONDS
        self.threads = [threading.Thread(target=self._client, args=(f"c{n}", False), daemon=True)
                        for n in range(CLIENTS)]
        self.threads += [threading.Thread(target=self._client, args=(f"s{n}", True), daemon=True)
                         for n in range(SLOW_CLIENTS)]
        for thread in self.threads:
            thread.start()

    def close(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(CLIENT_TIMEOUT + SLOW_SECONDS + 5)

    def _client(self, name: str, slow: bool) -> None:
        conn = None
        for n in range(MAX_REQUESTS):
            if self.stopping.is_set() or time.monotonic() > self.deadline:
                break
            kind = "SLOW" if slow else ("POST" if n % 3 == 2 else "GET")
            outcome, conn = self._send(conn, kind, f"{self.run}-{name}-{n}")
            with self.lock:
                self.outcomes.append(outcome)
            self.stopping.wait(PACE if outcome.ok else 4 * PACE)
        if conn is not None:
            conn.close()

    def _send(self, conn, kind: str, request_id: str) -> tuple[Outcome, http.client.HTTPConnection | None]:
        body = (request_id * 8).encode() if kind == "POST" else None
        target = {"GET": "/api/whoami", "POST": "/api/tally", "SLOW": f"/api/slow?seconds={SLOW_SECONDS}"}[kind]
        started = time.time()
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=CLIENT_TIMEOUT)
            conn.request(kind if kind != "SLOW" else "GET", target, body=body, headers={"X-Request-ID": request_id})
            response = conn.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as exc:
            if conn is not None:
                conn.close()
            return Outcome(kind, request_id, started, time.time(), None, error=repr(exc)), None
        ended = time.time()
        if response.will_close:
            conn.close()
            conn = None
        if response.status != 200:
            error = payload[:200].decode("latin-1")
            return Outcome(kind, request_id, started, ended, response.status, error=error), conn
        answer = json.loads(payload)
        error = ""
        sent = (request_id, hashlib.sha256(body).hexdigest()) if kind == "POST" else None
        if sent and (answer["request_id"], answer["sha256"]) != sent:
            error = f"the app answered for another POST: {answer}"
        return Outcome(kind, request_id, started, ended, 200, answer["hostname"], error), conn

    def between(self, began: float, ended: float) -> list[Outcome]:
        with self.lock:
            return [o for o in self.outcomes if began <= o.started < ended]

    def hosts_since(self, since: float) -> set[str]:
        with self.lock:
            return {o.hostname for o in self.outcomes if o.ok and o.ended >= since}

    def first_answer(self, hostname: str) -> float | None:
        with self.lock:
            return min((o.ended for o in self.outcomes if o.ok and o.hostname == hostname), default=None)

    def answered_by(self, hostname: str) -> list[Outcome]:
        with self.lock:
            return [o for o in self.outcomes if o.ok and o.hostname == hostname]


def counts(outcomes: list[Outcome]) -> dict[str, tuple[int, int]]:
    """(sent, failed) per kind."""
    return {kind: (sum(o.kind == kind for o in outcomes), sum(o.kind == kind and not o.ok for o in outcomes))
            for kind in ("GET", "POST", "SLOW")}


def describe(outcomes: list[Outcome]) -> str:
    c = counts(outcomes)
    return (f"GET {c['GET'][0]} sent / {c['GET'][1]} failed, POST {c['POST'][0]} / {c['POST'][1]}, "
            f"slow GET {c['SLOW'][0]} / {c['SLOW'][1]}")


def failures(outcomes: list[Outcome], kinds=("GET", "POST", "SLOW")) -> list[Outcome]:
    return [o for o in outcomes if o.kind in kinds and not o.ok]


def why_failed(outcomes: list[Outcome]) -> dict[str, int]:
    """How the failed requests failed: the status they got, or the client's exception."""
    reasons = collections.Counter(str(o.status) if o.status else o.error.split("(")[0] for o in outcomes if not o.ok)
    return dict(reasons.most_common())


# --- Docker's events for the stack's containers -----------------------------------

@dataclass(frozen=True)
class Event:
    time: float
    action: str           # "start", "kill", "die", "health_status: healthy", ...
    hostname: str         # a swarm task's hostname is its container id's first 12 characters
    service: str
    exit_code: str
    signal: str


class Events:
    """`docker events` for one stack's containers, read as they happen (the daemon keeps only the last few)."""

    def __init__(self, stack: str) -> None:
        argv = ["docker", "events", "--format", "{{json .}}", "--filter", "type=container",
                "--filter", f"label=com.docker.stack.namespace={stack}",
                "--until", str(int(time.time() + LOAD_SECONDS + CONVERGE_SECONDS))]
        for action in ("start", "kill", "die", "health_status"):
            argv += ["--filter", f"event={action}"]
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.events: list[Event] = []
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            raw = json.loads(line)
            attributes = raw["Actor"]["Attributes"]
            event = Event(raw["timeNano"] / 1e9, raw["Action"], raw["id"][:12],
                          attributes.get("com.docker.swarm.service.name", ""),
                          attributes.get("exitCode", ""), attributes.get("signal", ""))
            with self.lock:
                self.events.append(event)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.reader.join(10)

    def first(self, action: str, hostname: str) -> Event | None:
        with self.lock:
            return next((e for e in self.events if e.action == action and e.hostname == hostname), None)

    def wait(self, action: str, hostname: str, timeout: float) -> Event:
        return wait_until(lambda: self.first(action, hostname), timeout, interval=0.2,
                          what=f"docker event {action!r} of container {hostname}")


# --- the stack ------------------------------------------------------------------

ACCESS_LINE = re.compile(r" uaddr=(?P<uaddr>.*?) us=(?P<us>.*?) ut=.*? rid=(?P<rid>\S+)")


@dataclass
class Swarm:
    stack: str
    port: int
    ledger: Path
    events: Events

    def service(self, name: str) -> str:
        return f"{self.stack}_{name}"

    def running(self, name: str) -> list[dict]:
        ids = docker("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={self.service(name)}").stdout.split()
        return json.loads(docker("inspect", *ids).stdout) if ids else []

    def hosts(self, name: str) -> set[str]:
        return {c["Config"]["Hostname"] for c in self.running(name)}

    def wait_steady(self, name: str, replicas: int, load: Load | None = None, since: float = 0.0) -> set[str]:
        """Exactly ``replicas`` tasks running, all healthy, and (given a load) each has answered since ``since``."""
        def steady() -> set[str] | None:
            containers = self.running(name)
            if len(containers) != replicas:
                return None
            if any(c["State"].get("Health", {}).get("Status") != "healthy" for c in containers):
                return None
            hosts = {c["Config"]["Hostname"] for c in containers}
            if load is not None and not hosts <= load.hosts_since(since):
                return None
            return hosts

        try:
            return wait_until(steady, CONVERGE_SECONDS, interval=0.5,
                              what=f"{replicas} healthy {name} task(s)" + (" answering requests" if load else ""))
        except TimeoutError as exc:
            tasks = docker("service", "ps", "--no-trunc", "--format", "{{.Name}} {{.CurrentState}} {{.Error}}",
                           self.service(name), check=False)
            raise AssertionError(f"{exc}; the service's tasks:\n{tasks.stdout}{tasks.stderr}") from None

    def wait_stopped(self, hostnames: set[str]) -> dict[str, Event]:
        """The `die` event of each container, once it has stopped (within its stop_grace_period and more)."""
        return {h: self.events.wait("die", h, CONVERGE_SECONDS) for h in hostnames}

    def received(self) -> collections.Counter:
        """How many times the app tasks received each POST's request id (demo_app.Tally's records)."""
        seen: collections.Counter = collections.Counter()
        for record in self.ledger.glob("*.ids"):
            seen.update(record.read_text().split())
        return seen

    def retried(self, outcomes: list[Outcome], since: float) -> dict[str, str]:
        """Request id -> upstream statuses, for each of ``outcomes`` the proxy had to send to a second server."""
        ids = {o.request_id for o in outcomes}
        logs = docker("service", "logs", "--raw", "--since", f"{int(since) - 1}", self.service("proxy"),
                      timeout=COMMAND_SECONDS).stdout
        logged, tried = set(), {}
        for line in logs.splitlines():
            match = ACCESS_LINE.search(line)
            if match and match["rid"] in ids:
                logged.add(match["rid"])
                if "," in match["uaddr"]:
                    tried[match["rid"]] = match["us"]
        answered = {o.request_id for o in outcomes if o.ok}
        # Otherwise this check could not fail: every answered request must have its access-log line.
        missing = answered - logged
        assert not missing, f"{len(missing)} answered requests have no access-log line with uaddr= us= rid="
        return tried

    def proxy_status(self) -> dict:
        """The proxy's status page, read from inside its container (it answers 127.0.0.1 only)."""
        [proxy] = self.running("proxy")
        code = ("import urllib.request; "
                "print(urllib.request.urlopen('http://127.0.0.1:8080/_proxy/status', timeout=5).read().decode())")
        return json.loads(docker("exec", proxy["Id"], "python", "-c", code).stdout)


def leads(swarm: Swarm, load: Load, hostnames: set[str]) -> list[float]:
    """For each stopped task, how long before its SIGTERM it was sent its last new request (sorted)."""
    return sorted(swarm.events.wait("kill", h, 10).time - max(o.started for o in load.answered_by(h))
                  for h in hostnames)


def check_posts(swarm: Swarm, outcomes: list[Outcome]) -> dict[str, list[str]]:
    """POSTs answered 200 that no task received once, POSTs received twice, failed POSTs a task did receive."""
    received = swarm.received()
    posts = [o for o in outcomes if o.kind == "POST"]
    return {
        "lost": [o.request_id for o in posts if o.ok and received[o.request_id] != 1],
        "duplicated": sorted(rid for rid, n in received.items() if n > 1),
        "failed but received": [o.request_id for o in posts if not o.ok and received[o.request_id]],
    }


def swarm_state() -> tuple[str, bool]:
    """(LocalNodeState, is a manager) of this engine."""
    state, manager = docker("info", "--format", "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}",
                            timeout=20).stdout.split()
    return state, manager == "true"


def why_no_swarm() -> str | None:
    reason = why_no_daemon()
    if reason:
        return reason
    if docker("stack", "--help", check=False, timeout=20).returncode != 0:
        return "this docker command has no `stack` subcommand"
    if not shutil.which("make"):
        return "make is not installed (the stack is deployed with `make swarm-up`)"
    state, manager = swarm_state()
    if state == "active" and not manager:
        return "this engine is a swarm worker: stacks are deployed from a manager"
    if state == "active" and len(docker("node", "ls", "-q").stdout.split()) > 1:
        return "the swarm has several nodes: this test builds its images on this one and needs a one-node swarm"
    if state not in ("active", "inactive"):
        return f"the swarm is {state}: see docker info"
    return None


def make(target: str, env: dict[str, str], timeout: float) -> None:
    result = subprocess.run(["make", "--no-print-directory", target], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"make {target} failed:\n{result.stdout}{result.stderr}"


def leftovers(stack: str) -> list[str]:
    label = f"label=com.docker.stack.namespace={stack}"
    return (docker("ps", "-aq", "--filter", label).stdout.split() + docker("network", "ls", "-q", "--filter", label)
            .stdout.split() + docker("config", "ls", "-q", "--filter", label).stdout.split())


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    reason = why_no_swarm()
    if reason:
        pytest.skip(reason)
    initialized = False
    had_gateway_bridge = docker("network", "inspect", "docker_gwbridge", check=False).returncode == 0
    if swarm_state()[0] == "inactive":
        init = docker("swarm", "init", "--advertise-addr", "127.0.0.1", check=False)
        if init.returncode != 0:
            pytest.skip(f"docker swarm init failed: {init.stderr.strip()}")
        initialized = True
    stack = f"twotier-e2e-{secrets.token_hex(3)}"
    ledger = tmp_path_factory.mktemp("tally")
    ledger.chmod(0o777)  # written by the app tasks' unprivileged user
    # The app tasks record each POST they receive in a host folder (demo_app.Tally).
    overlay = ledger.parent / f"{stack}.tally.yml"
    overlay.write_text(yaml.safe_dump({"version": STACK["version"], "services": {"app": {
        "environment": {"DEMO_TALLY_DIR": "/var/lib/twotier-tally"},
        "volumes": [{"type": "bind", "source": str(ledger), "target": "/var/lib/twotier-tally"}]}}}))
    env = {**os.environ, "SWARM_STACK": stack, "SWARM_FILES": f"{STACK_FILE} {overlay}",
           "TWOTIER_TAG": TAG, "TWOTIER_PORT": str(free_port()), "TWOTIER_BACKEND_SUBNET": free_subnet(),
           "PYTHON_IMAGE": base_image()}
    events = Events(stack)
    try:
        make("swarm-up", env, BUILD_SECONDS)
        swarm = Swarm(stack, int(env["TWOTIER_PORT"]), ledger, events)
        swarm.wait_steady("app", REPLICAS)
        swarm.wait_steady("proxy", 1)
        # Requests spread over the tasks once the proxy has resolved tasks.app.
        wait_until(lambda: json_get(swarm.port, "/api/whoami").get("hostname"), 60, interval=0.5,
                   what="the proxy to answer through the published port")
        yield swarm
    finally:
        try:
            make("swarm-down", env, COMMAND_SECONDS)
            wait_until(lambda: not leftovers(stack), CONVERGE_SECONDS, interval=1.0,
                       what=f"the containers, networks and config of stack {stack} to be removed")
        finally:
            events.close()
            if initialized:
                docker("swarm", "leave", "--force")
                if not had_gateway_bridge:  # `swarm init` made it; leaving does not remove it
                    docker("network", "rm", "docker_gwbridge", check=False)


def json_get(port: int, path: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        return json.loads(body) if response.status == 200 else {}
    except (OSError, http.client.HTTPException, ValueError):
        return {}
    finally:
        conn.close()


@pytest.fixture(scope="module")
def load(swarm):
    load = Load(swarm.port)
    try:
        yield load
    finally:
        load.close()


# --- the phases, in order -----------------------------------------------------------

def test_every_app_task_is_a_peer_of_the_proxy(swarm, load, figures):
    hosts = swarm.wait_steady("app", REPLICAS, load)
    # Events name a container by its id, requests by its hostname: for a swarm task they are the same.
    assert all(c["Config"]["Hostname"] == c["Id"][:12] for c in swarm.running("app"))
    upstream = swarm.proxy_status()["upstreams"]["app"]
    peers = {s["address"] for s in upstream["servers"] if s["state"] == "up"}
    assert {s["configured_as"] for s in upstream["servers"]} == {"tasks.app:8000"}
    tasks = {n["IPAddress"] for c in swarm.running("app") for n in c["NetworkSettings"]["Networks"].values()}
    assert {p.rsplit(":", 1)[0] for p in peers} == tasks, (peers, tasks)
    # The app tier publishes nothing: it is reachable through the proxy only.
    for container in swarm.running("app"):
        assert not container["HostConfig"]["PortBindings"]
    figures.append(f"swarm: {len(hosts)} app tasks, each a peer of the proxy: {sorted(peers)}")


def test_rolling_the_app_fails_no_request_and_loses_no_post(swarm, load, figures):
    before = swarm.wait_steady("app", REPLICAS, load)
    began = time.time()
    docker("service", "update", "--force", "--detach=false", swarm.service("app"), timeout=CONVERGE_SECONDS)
    after = swarm.wait_steady("app", REPLICAS, load, since=began)
    stopped = swarm.wait_stopped(before)
    window = load.between(began, time.time())
    posts = check_posts(swarm, window)
    retried = swarm.retried(window, began)
    figures.append(f"swarm roll app ({time.time() - began:.1f} s): {describe(window)}; "
                   f"sent to a second task: {len(retried)}; POSTs lost {len(posts['lost'])}, "
                   f"duplicated {len(posts['duplicated'])}; the old tasks got their last new request "
                   f"{', '.join(f'{lead:.1f} s' for lead in leads(swarm, load, before))} before SIGTERM")
    assert not after & before, "every task is replaced"
    assert failures(window) == []
    assert posts == {"lost": [], "duplicated": [], "failed but received": []}
    assert retried == {}, "a stopping task was sent a request it did not answer"
    assert {h: e.exit_code for h, e in stopped.items()} == {h: "0" for h in before}, "old tasks drain and exit 0"


def test_a_task_killed_with_sigkill_fails_no_get_and_its_replacement_gets_traffic(swarm, load, figures):
    before = swarm.wait_steady("app", REPLICAS, load)
    victim = min(before)
    killed = time.time()
    docker("kill", "--signal", "KILL", victim)
    after = swarm.wait_steady("app", REPLICAS, load, since=killed)
    [replacement] = after - before
    started = swarm.events.wait("start", replacement, 10).time
    healthy = swarm.events.wait("health_status: healthy", replacement, 10).time
    first = load.first_answer(replacement)
    window = load.between(killed, time.time())
    posts = check_posts(swarm, window)
    figures.append(
        f"swarm SIGKILL one app task: {describe(window)}; replacement started {started - killed:.1f} s after the "
        f"kill, healthy {healthy - started:.1f} s later, first answer {first - healthy:.1f} s after that "
        f"({first - started:.1f} s from its start; bound: health interval {HEALTH_INTERVAL:g} s + resolve "
        f"interval {RESOLVE_INTERVAL:g} s); failed: {why_failed(window)}, of which the killed task had received "
        f"{len(posts['failed but received'])}")
    assert failures(window, kinds=("GET", "SLOW")) == []
    assert posts["lost"] == posts["duplicated"] == []
    assert swarm.events.first("die", victim).exit_code == "137"
    assert first - started <= HEALTH_INTERVAL + RESOLVE_INTERVAL + SLACK


def test_scaling_up_spreads_traffic_over_the_new_tasks(swarm, load, figures):
    before = swarm.wait_steady("app", REPLICAS, load)
    began = time.time()
    docker("service", "scale", "--detach=false", f"{swarm.service('app')}=5", timeout=CONVERGE_SECONDS)
    after = swarm.wait_steady("app", 5, load, since=began)
    new = after - before
    delays = {h: load.first_answer(h) - swarm.events.wait("health_status: healthy", h, 10).time for h in new}
    spread_from = time.time()

    def share() -> collections.Counter:
        return collections.Counter(o.hostname for o in load.between(spread_from, time.time()) if o.ok)

    wait_until(lambda: all(share()[h] >= 10 for h in after), 60, interval=0.2, what="10 answers from each task")
    share = share()
    window = load.between(began, time.time())
    figures.append(f"swarm scale app 3 -> 5: {describe(window)}; new tasks answered "
                   f"{', '.join(f'{d:.1f} s' for d in sorted(delays.values()))} after they turned healthy "
                   f"(resolve interval {RESOLVE_INTERVAL:g} s); then answers per task: {sorted(share.values())}")
    assert len(new) == 2
    assert failures(window) == []
    assert max(delays.values()) <= RESOLVE_INTERVAL + SLACK
    assert set(share) == after


def test_scaling_down_drains_the_removed_tasks(swarm, load, figures):
    before = swarm.wait_steady("app", 5, load)
    began = time.time()
    docker("service", "scale", "--detach=false", f"{swarm.service('app')}=2", timeout=CONVERGE_SECONDS)
    after = swarm.wait_steady("app", 2, load, since=began)
    removed = before - after
    stopped = swarm.wait_stopped(removed)
    sigterm = {h: swarm.events.wait("kill", h, 10) for h in removed}
    window = load.between(began, time.time())
    posts = check_posts(swarm, window)
    retried = swarm.retried(window, began)
    finished_after = [o for h in removed for o in load.answered_by(h) if o.started < sigterm[h].time < o.ended]
    last = ", ".join(f"{lead:.1f} s" for lead in leads(swarm, load, removed))
    figures.append(f"swarm scale app 5 -> 2: {describe(window)}; sent to a second task: {len(retried)}; the removed "
                   f"tasks got their last new request {last} before SIGTERM and answered {len(finished_after)} "
                   f"request(s) in flight at SIGTERM")
    assert len(removed) == 3
    assert failures(window) == []
    assert posts == {"lost": [], "duplicated": [], "failed but received": []}
    assert retried == {}, "a stopping task was sent a request it did not answer"
    assert {h: e.exit_code for h, e in stopped.items()} == {h: "0" for h in removed}
    assert {h: e.signal for h, e in sigterm.items()} == {h: "15" for h in removed}


def test_rolling_the_proxy_has_a_gap_which_is_measured(swarm, load, figures):
    """One proxy per node on a host port: the new task starts only once the old one has stopped.

    Requests in flight when the old proxy gets SIGTERM are finished; new ones
    fail until the new proxy listens. The gap is measured, not hidden.
    """
    swarm.wait_steady("app", 2, load)
    [old] = swarm.hosts("proxy")
    began = time.time()
    docker("service", "update", "--force", "--detach=false", swarm.service("proxy"), timeout=CONVERGE_SECONDS)
    [new] = swarm.wait_steady("proxy", 1)
    wait_until(lambda: load.hosts_since(time.time() - 1), 60, interval=0.2, what="answers through the new proxy")
    sigterm = swarm.events.wait("kill", old, 10).time
    stopped = swarm.events.wait("die", old, 10)
    started = swarm.events.wait("start", new, 10).time
    wait_until(lambda: sum(o.ok for o in load.between(started, time.time())) >= 50, 60, interval=0.2,
               what="50 answers through the new proxy")
    window = load.between(began, time.time())
    failed = failures(window)
    posts = check_posts(swarm, window)
    in_flight = [o for o in window if o.started < sigterm < o.ended]
    # The gap: from the first request that failed to the first answer after the last one that did.
    outage = min((o.started for o in failed), default=sigterm)
    recovered = min(o.ended for o in window if o.ok and o.ended > max((f.ended for f in failed), default=0))
    gap = recovered - outage if failed else 0.0
    cut = sum(not o.ok for o in in_flight)
    figures.append(f"swarm roll proxy: {describe(window)}; gap {gap:.2f} s, from {outage - sigterm:.2f} s after the "
                   f"old proxy's SIGTERM; it drained {len(in_flight)} request(s) in flight ({cut} failed) and "
                   f"exited after {stopped.time - sigterm:.2f} s, the new task started "
                   f"{started - stopped.time:.2f} s later and answered {recovered - started:.2f} s after its start; "
                   f"failed attempts: {why_failed(failed)}")
    assert stopped.exit_code == "0", "the old proxy drained and exited 0"
    # What was sent before SIGTERM is answered (in flight or not); what fails is sent after it. The half
    # second covers a request racing the proxy's closing of idle keep-alive connections.
    assert [o for o in failed if o.started < sigterm - 0.5] == []
    assert posts["lost"] == posts["duplicated"] == posts["failed but received"] == []
    assert gap < compose_duration(STACK["services"]["proxy"]["stop_grace_period"]) + SLACK


def test_over_the_whole_run_no_post_was_lost_or_duplicated(swarm, load, figures):
    everything = load.between(0, time.time())
    posts = check_posts(swarm, everything)
    figures.append(f"swarm whole run: {describe(everything)}; POSTs lost {len(posts['lost'])}, duplicated "
                   f"{len(posts['duplicated'])}, failed but received {len(posts['failed but received'])}")
    assert posts["lost"] == posts["duplicated"] == []
