"""Fixtures: the whole stack, started exactly as `make run` starts it, on free ports.

`llm-gateway run` is launched as a subprocess with a temporary data directory; it brings up
embedded Postgres and Redis (or uses DATABASE_URL / REDIS_URL when set), the mock upstream,
the ext_proc server and a real Envoy. Tests talk to Envoy like any client would.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from extproc.local.embedded import start_postgres, start_redis
from extproc.local.processes import free_port

STARTUP_TIMEOUT = 120


def pytest_configure(config: pytest.Config) -> None:
    """Temporary files of this run in a directory of its own. Under root, the embedded Postgres
    runs as a system user that must traverse the data directory's parents, and every pytest
    run that starts re-locks the shared `/tmp/pytest-of-root` to 0700: two runs on one machine
    (two checkouts, a developer beside CI) then break each other's Postgres at start-up."""
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        config.option.basetemp = str(Path(tempfile.gettempdir()) / f"llm-gateway-tests-{os.getpid()}")
        config.add_cleanup(lambda: shutil.rmtree(config.option.basetemp, ignore_errors=True))


@dataclass
class Gateway:
    url: str
    admin_url: str
    metrics_url: str
    mock_url: str
    extproc_address: str
    database_url: str
    redis_url: str
    process: subprocess.Popen[bytes]
    ports: dict[str, int]
    children: dict[str, int]
    data_dir: Path
    env: dict[str, str]  # what the stack was started with beyond the defaults

    def cli(self, *args: str) -> dict[str, Any]:
        """Run an operator command against this stack's database, as an operator would."""
        result = subprocess.run(
            [sys.executable, "-m", "extproc.cli", *args],
            env={
                **os.environ,
                **self.env,
                "LLM_GATEWAY_DATA_DIR": str(self.data_dir),
                "DATABASE_URL": self.database_url,
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        """The rows of one statement on this stack's database (a connection of its own)."""

        async def fetch() -> list[asyncpg.Record]:
            connection = await asyncpg.connect(self.database_url)
            try:
                return await connection.fetch(query, *args)
            finally:
                await connection.close()

        return asyncio.run(fetch())

    def new_user(self, credits_usd: str = "10", email: str | None = None) -> dict[str, Any]:
        email = email or f"user-{uuid.uuid4().hex[:12]}@example.com"
        return self.cli("user", "create", "--email", email, "--credits-usd", credits_usd)

    @property
    def chat_url(self) -> str:
        return f"{self.url}/api/gateway/chat/completions"

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/api/gateway"

    def upstream_requests(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.mock_url}/__mock/requests").json()

    def clear_upstream_requests(self) -> None:
        httpx.delete(f"{self.mock_url}/__mock/requests").raise_for_status()

    def metrics(self) -> str:
        return httpx.get(self.metrics_url).text


def stack_environment(data_dir: Path, **extra: str) -> tuple[dict[str, str], dict[str, int]]:
    ports = {name: free_port() for name in ("listen", "admin", "metrics", "mock")}
    ports["extproc"] = free_port(block=4)  # workers listen on consecutive ports
    env = {
        key: value
        for key, value in os.environ.items()
        # The suite runs against the mock upstream: a real key in the caller's shell must not
        # send test traffic to a provider.
        if not key.endswith(("_API_KEY", "_API_URL"))
    }
    env.update(
        {
        "LLM_GATEWAY_DATA_DIR": str(data_dir),
        "LLM_GATEWAY_LISTEN_PORT": str(ports["listen"]),
        "LLM_GATEWAY_ENVOY_ADMIN_PORT": str(ports["admin"]),
        "LLM_GATEWAY_EXTPROC_PORT": str(ports["extproc"]),
        "LLM_GATEWAY_METRICS_PORT": str(ports["metrics"]),
        "LLM_GATEWAY_MOCK_UPSTREAM_PORT": str(ports["mock"]),
        "LLM_GATEWAY_EMBEDDED_DURABLE": "false",
        "LLM_GATEWAY_EXTPROC_DRAIN_SECONDS": "2",
        }
        | extra
    )
    return env, ports


def start_stack(data_dir: Path, **extra: str) -> Gateway:
    env, ports = stack_environment(data_dir, **extra)
    log = (data_dir / "stack.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "extproc.cli", "run"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    state_file = data_dir / "stack.json"
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not state_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"stack did not start; log:\n{(data_dir / 'stack.log').read_text()[-5000:]}")
        time.sleep(0.1)
    state = json.loads(state_file.read_text())
    return Gateway(
        url=state["gateway_url"],
        admin_url=state["envoy_admin_url"],
        metrics_url=state["metrics_url"],
        mock_url=state["mock_upstream_url"],
        extproc_address=f"127.0.0.1:{ports['extproc']}",
        database_url=state["database_url"],
        redis_url=state["redis_url"],
        process=process,
        ports=ports,
        children=state["children"],
        data_dir=data_dir,
        env=extra,
    )


def stop_stack(gateway: Gateway, timeout: float = 60) -> int:
    gateway.process.send_signal(signal.SIGTERM)
    return gateway.process.wait(timeout)


@contextmanager
def running_stack(data_dir: Path, **extra: str) -> Iterator[Gateway]:
    gateway = start_stack(data_dir, **extra)
    try:
        yield gateway
    finally:
        stop_stack(gateway)


# The shared stack trusts one proxy hop, so each test can be its own client IP by sending
# `x-forwarded-for` (as a load balancer in front of Envoy would), and has a small anonymous
# promotion limit so that limit can be reached in a test.
SESSION_STACK = {
    "LLM_GATEWAY_TRUSTED_PROXY_HOPS": "1",
    "LLM_GATEWAY_PROMOTION_LIMIT": "5",
    "BLACKLIST_DOMAINS": "blocked.example|banned.test",
    # Base64 of 32 bytes, for BYOK keys stored by the tests.
    "BYOK_ENCRYPTION_KEY": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
    # The mock upstream is on loopback: custom LLMs pointing at it must be reachable.
    "LLM_GATEWAY_CUSTOM_LLM_ALLOWED_NETWORKS": '["127.0.0.0/8"]',
}


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_stack(tmp_path_factory.mktemp("stack"), **SESSION_STACK) as gw:
        yield gw


@pytest.fixture
def upstream(gateway: Gateway) -> Gateway:
    """The gateway with the mock's request record emptied, for asserting what went upstream."""
    gateway.clear_upstream_requests()
    return gateway


@pytest.fixture(scope="session")
def account(gateway: Gateway) -> dict[str, Any]:
    """A user with plenty of credits, shared by tests that only need to be let in."""
    return gateway.new_user(credits_usd="1000")


@pytest.fixture(scope="session")
def auth(account: dict[str, Any]) -> dict[str, str]:
    return {"authorization": f"Bearer {account['token']}"}


_ip_counter = iter(range(1, 1_000_000))


def fresh_ip() -> str:
    """A client address no other test used, so per-IP limits start empty."""
    n = next(_ip_counter)
    return f"198.18.{n // 250}.{n % 250 + 1}"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis of the test module's own (embedded, thrown away), for tests without a stack."""
    child, url = start_redis(tmp_path_factory.mktemp("redis"), free_port(), durable=False)
    try:
        yield url
    finally:
        child.stop()


@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Postgres of the test module's own (embedded, thrown away), for tests without a stack."""
    child, url = start_postgres(tmp_path_factory.mktemp("postgres") / "pg", free_port(), durable=False)
    try:
        yield url
    finally:
        child.stop()


# ---------------------------------------------------------------------------------------
# `e2e` marker (issue 15, part 7): a test is end-to-end when it, one of its fixtures, or a
# function of their modules that they call refers to one of these names, i.e. starts a stack,
# a database, a Redis or any other process. `make test-unit` runs the rest (`-m "not e2e"`).
# Found from the code rather than listed by hand, so a new test is classified without a marker.
_PROCESS_STARTERS = frozenset(
    {"running_stack", "start_stack", "start_postgres", "start_redis", "subprocess", "Popen", "run_many"}
)


def _names(code: types.CodeType) -> set[str]:
    """Every global or attribute name the code (and the functions nested in it) refers to."""
    names: set[str] = set()
    pending = [code]
    while pending:
        current = pending.pop()
        names.update(current.co_names)
        pending.extend(const for const in current.co_consts if isinstance(const, types.CodeType))
    return names


def _starts_processes(function: Any, seen: set[Any]) -> bool:
    function = getattr(function, "__func__", function)
    if not inspect.isfunction(function):
        return False
    function = inspect.unwrap(function)
    if function in seen:
        return False
    seen.add(function)
    names = _names(function.__code__)
    if names & _PROCESS_STARTERS:
        return True
    module_globals = function.__globals__
    return any(_starts_processes(module_globals[name], seen) for name in names if name in module_globals)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        seen: set[Any] = set()
        fixtures = [
            definition.func for definitions in item._fixtureinfo.name2fixturedefs.values() for definition in definitions
        ]
        if any(_starts_processes(function, seen) for function in [item.obj, *fixtures]):
            item.add_marker(pytest.mark.e2e)
