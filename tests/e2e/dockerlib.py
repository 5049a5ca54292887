"""What the Docker end-to-end tests share: running the docker command, the base image, a free subnet.

test_compose.py runs the stack with compose, test_swarm.py on a one-node
swarm; both build the images from this working tree on the same base image
and put their backend network on a /24 that no Docker network overlaps.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD_SECONDS = 900.0     # a first build downloads every dependency
COMMAND_SECONDS = 120.0
DEFAULT_BASE = "python:3.12-slim"
# A Python base built on the machine itself, where no container registry is reachable (README.md, Docker:
# another base image); used when it is there and the default base is not.
LOCAL_BASE = "local/python:3.11-bookworm"


def docker(*args: str, timeout: float = COMMAND_SECONDS, check: bool = True, env: dict | None = None,
           input: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False,
                            cwd=ROOT, env=env, input=input)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result


def why_no_daemon() -> str | None:
    """Why this machine cannot run containers, or None when it can."""
    if not shutil.which("docker"):
        return "no docker command on this machine"
    try:
        info = docker("info", "--format", "{{.ServerVersion}}", timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return "docker info did not answer within 20s"
    if info.returncode != 0:
        first = (info.stderr.strip().splitlines() or ["?"])[0]
        return f"no Docker daemon reachable ({first})"
    return None


def base_image() -> str:
    """PYTHON_IMAGE from the environment; else the default base, or the local one if only it is present."""
    if os.environ.get("PYTHON_IMAGE"):
        return os.environ["PYTHON_IMAGE"]
    for image in (DEFAULT_BASE, LOCAL_BASE):
        if docker("image", "inspect", image, check=False).returncode == 0:
            return image
    return DEFAULT_BASE


def free_subnet() -> str:
    """A /24 in 172.30.0.0/16 that no Docker network on this machine (or in its swarm) overlaps."""
    ids = docker("network", "ls", "-q").stdout.split()
    used = []
    for network in json.loads(docker("network", "inspect", *ids).stdout) if ids else []:
        for config in (network.get("IPAM") or {}).get("Config") or []:
            if config.get("Subnet"):
                used.append(ipaddress.ip_network(config["Subnet"], strict=False))
    candidates = list(ipaddress.ip_network("172.30.0.0/16").subnets(new_prefix=24))
    random.shuffle(candidates)
    for subnet in candidates:
        if not any(subnet.version == u.version and subnet.overlaps(u) for u in used):
            return str(subnet)
    pytest.skip("no free /24 in 172.30.0.0/16 for the backend network")
