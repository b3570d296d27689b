"""A custom LLM's host is resolved once, by the SSRF check, and Envoy connects to the address that
passed it (issue 25, part 6): DNS rebinding cannot move the connection to an internal address.

The stack asks a DNS server of the test's own for custom LLM hosts. That server answers the
allowed address to the first query and an internal one to every later query (a rebinding
attacker's TTL-0 trick). The allowed address serves a mock LLM; the internal one, on the same
port, is a listener that records every byte it receives.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from extproc.local.mock_upstream import build_app
from extproc.local.processes import free_port
from tests.conftest import Gateway, fresh_ip, running_stack
from tests.dns_server import DnsServer
from tests.test_routing_e2e import add_custom_llm, new_user, org_with_member

ALLOWED = "127.0.0.2"
INTERNAL = "127.0.0.3"
HOST = "llm.rebinding.test"


class RebindingDns(DnsServer):
    """The allowed address for the first query of HOST, the internal one after that."""

    def _serve(self) -> None:
        self.answers[HOST] = [ALLOWED]
        super()._serve()

    def answered(self) -> None:
        self.answers[HOST] = [INTERNAL]


class Recorder:
    """A TCP listener that keeps every byte any connection sends it."""

    def __init__(self, host: str, port: int) -> None:
        self.received = bytearray()
        self.connections = 0
        self._socket = socket.create_server((host, port))
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            self.connections += 1
            connection.settimeout(5)
            try:
                while data := connection.recv(65536):
                    self.received += data
            except OSError:
                pass
            connection.close()

    def close(self) -> None:
        self._socket.close()


def _serve_mock(host: str, port: int, started: threading.Event, stop: threading.Event) -> None:
    async def main() -> None:
        runner = web.AppRunner(build_app())
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        started.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await runner.cleanup()

    asyncio.run(main())


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, RebindingDns, Recorder, str]]:
    port = free_port()
    started, stop = threading.Event(), threading.Event()
    mock = threading.Thread(target=_serve_mock, args=(ALLOWED, port, started, stop), daemon=True)
    mock.start()
    assert started.wait(10)
    recorder = Recorder(INTERNAL, port)
    with RebindingDns() as dns:
        extra = {
            "LLM_GATEWAY_CUSTOM_LLM_ALLOWED_NETWORKS": f'["{ALLOWED}/32"]',
            "LLM_GATEWAY_CUSTOM_LLM_DNS_SERVERS": f'["{dns.address}"]',
        }
        with running_stack(tmp_path_factory.mktemp("pinning"), **extra) as gateway:
            yield gateway, dns, recorder, f"http://{HOST}:{port}/v1"
    recorder.close()
    stop.set()
    mock.join(10)


def _chat(gateway: Gateway, token: str, org: str, model: str) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}", "x-forwarded-for": fresh_ip(), "x-kilocode-organizationid": org}
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(gateway.chat_url, json=body, headers=headers, timeout=30)


def test_a_dns_answer_that_changes_after_the_check_never_reaches_the_internal_address(
    setup: tuple[Gateway, RebindingDns, Recorder, str],
) -> None:
    gateway, dns, recorder, base_url = setup
    user = new_user(gateway)
    org = org_with_member(gateway, user, credits="10")
    llm = add_custom_llm(gateway, org, base_url=base_url)

    first = _chat(gateway, user["token"], org, llm["public_id"])
    assert dns.queries[HOST] >= 1  # the check asked our server
    dns.answered()  # from now on the name points inside
    assert first.status_code == 200, first.text
    assert first.json()["choices"][0]["message"]["content"].startswith("Mock reply")

    # Later requests, while the name resolves to the internal address, still go to the checked
    # one (or are refused once the check sees the new answer): never inside.
    for _ in range(3):
        response = _chat(gateway, user["token"], org, llm["public_id"])
        assert response.status_code in (200, 400, 403, 503), response.text
    assert recorder.connections == 0
    assert bytes(recorder.received) == b""
    # Host and SNI keep the name: the mock saw the request under its own host name.
    port = base_url.removeprefix(f"http://{HOST}:").removesuffix("/v1")
    received = httpx.get(f"http://{ALLOWED}:{port}/__mock/requests", timeout=10).json()
    assert received
    for request in received:
        assert request["headers"]["host"] == f"{HOST}:{port}"
        assert not any(name.startswith("x-gateway-") for name in request["headers"])


def test_a_host_that_resolves_inside_is_refused_before_any_byte_is_sent(
    setup: tuple[Gateway, RebindingDns, Recorder, str],
) -> None:
    gateway, dns, recorder, base_url = setup
    internal_host = f"inside-{uuid.uuid4().hex[:8]}.test"
    dns.answers[internal_host] = [INTERNAL]
    user = new_user(gateway)
    org = org_with_member(gateway, user, credits="10")
    llm = add_custom_llm(gateway, org, base_url=base_url.replace(HOST, internal_host))
    response = _chat(gateway, user["token"], org, llm["public_id"])
    assert response.status_code != 200
    assert dns.queries[internal_host] >= 1
    assert recorder.connections == 0
