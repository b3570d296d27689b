"""Running `llm-gateway` operator commands as an operator does: a subprocess each, several
side by side (each one is a Python start-up), with a clean environment."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict[str, Any]:
        """The one JSON line a successful command prints."""
        assert self.returncode == 0, self.stderr
        assert self.stdout.count("\n") == 1, self.stdout
        return orjson.loads(self.stdout)

    @property
    def error(self) -> str:
        """The message of a refused command: exit 2, nothing on stdout, JSON on stderr."""
        assert self.returncode == 2, (self.returncode, self.stdout, self.stderr)
        assert self.stdout == ""
        body = orjson.loads(self.stderr)
        assert list(body) == ["error"] and body["error"]
        return body["error"]


def cli_environment(data_dir: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without any gateway configuration, plus `extra`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "NEXTAUTH_SECRET", "BYOK_ENCRYPTION_KEY") and not key.startswith("LLM_GATEWAY_")
    }
    return {**env, "LLM_GATEWAY_DATA_DIR": str(data_dir), **extra}


def run_many(*commands: tuple[dict[str, str], tuple[str, ...], str | None]) -> list[Result]:
    """Independent commands side by side: (environment, arguments, standard input)."""
    processes = [
        (
            subprocess.Popen(
                [sys.executable, "-m", "extproc.cli", *args],
                env=env,
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
            stdin,
        )
        for env, args, stdin in commands
    ]
    results = []
    for process, stdin in processes:
        stdout, stderr = process.communicate(stdin or "", timeout=60)
        results.append(Result(process.returncode, stdout, stderr))
    return results
