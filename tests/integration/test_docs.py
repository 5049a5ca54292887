"""The configuration blocks of README.md and docs/ run as written: each ```toml block passes --check-config.

They are checked in a folder laid out as the README assumes (this checkout's
demo_app, and the certificates the README's HTTPS commands make, made by
running those very commands). A block that is deliberately a fragment says
so on the line before its fence: ``<!-- fragment: why -->``; only those are
skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FRAGMENT = "<!-- fragment:"


def blocks(language: str, path: Path) -> list[tuple[int, str, str]]:
    """(line, the line before the fence, body) of every fenced block in ``language``."""
    text = path.read_text()
    found = []
    for match in re.finditer(rf"^```{language}\n(.*?)^```$", text, re.MULTILINE | re.DOTALL):
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        found.append((text.count("\n", 0, match.start()) + 1, before, match[1]))
    return found


def toml_blocks():
    for path in DOCS:
        for line, before, body in blocks("toml", path):
            yield pytest.param(body, before, id=f"{path.name}:{line}")


def readme_certificate_commands() -> list[str]:
    """The README's shell lines that make certificates (continuation lines joined, comments dropped)."""
    for _, _, body in blocks("sh", ROOT / "README.md"):
        if "proxy gencert" in body:
            joined = body.replace("\\\n", " ")
            return [line.split(" #")[0].strip() for line in joined.splitlines()
                    if line.strip() and not line.lstrip().startswith("#")]
    raise AssertionError("README.md: no sh block with proxy gencert")


def run_commands(commands: list[str], folder: Path) -> None:
    """Run each line in ``folder`` with bash, the venv's console scripts (``proxy``) first on PATH."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed: the README's certificate commands cannot run")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for command in commands:
        result = subprocess.run(["bash", "-c", command], cwd=folder, env=env, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, f"README.md: {command}\n{result.stderr}"


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("docs")
    (folder / "demo_app").symlink_to(ROOT / "demo_app")
    run_commands(readme_certificate_commands(), folder)
    return folder


def test_the_readme_makes_the_certificates_its_config_names(checkout):
    assert {p.relative_to(checkout).as_posix() for p in (checkout / "certs").rglob("*.pem")} == {
        "certs/cert.pem", "certs/key.pem", "certs/api/cert.pem", "certs/api/key.pem"}


def test_the_openssl_way_works_on_its_own(tmp_path):
    """"The same with openssl itself": the non-proxy lines alone, in an empty folder, make a usable pair."""
    run_commands([c for c in readme_certificate_commands() if not c.startswith("proxy ")], tmp_path)
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(tmp_path / "certs" / "cert.pem",
                                                                       tmp_path / "certs" / "key.pem")


@pytest.mark.parametrize("body, before", list(toml_blocks()))
def test_config_block_passes_check_config(checkout, body, before, request):
    if before.startswith(FRAGMENT):
        pytest.skip(f"marked as a fragment: {before}")
    config = checkout / f"{request.node.callspec.id.replace(':', '-')}.toml"
    config.write_text(body)
    result = subprocess.run([sys.executable, "-m", "proxy", "--config", str(config), "--check-config"],
                            cwd=checkout, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("configuration ok: ")
