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
import ssl
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
from tests.tls_certs import issue

ALLOWED = "127.0.0.2"
INTERNAL = "127.0.0.3"
HOST = "llm.rebinding.test"
TLS_HOST = "tls.rebinding.test"  # the name on the TLS mock's certificate
OTHER_NAME = "other.rebinding.test"  # resolves to the same TLS mock, not on its certificate


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


def _serve_mock(
    host: str, port: int, started: threading.Event, stop: threading.Event, tls: ssl.SSLContext | None = None
) -> None:
    async def main() -> None:
        runner = web.AppRunner(build_app())
        await runner.setup()
        await web.TCPSite(runner, host, port, ssl_context=tls).start()
        started.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await runner.cleanup()

    asyncio.run(main())


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, RebindingDns, Recorder, str, int]]:
    """The stack, the DNS server, the internal address's recorder, the plain custom LLM's base
    URL, and the port of a TLS mock (certificate for TLS_HOST, from a CA the stack trusts)."""
    port, tls_port = free_port(), free_port()
    certificate = issue(tmp_path_factory.mktemp("tls"), TLS_HOST)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(certificate.cert_file, certificate.key_file)
    started, tls_started, stop = threading.Event(), threading.Event(), threading.Event()
    mocks = [
        threading.Thread(target=_serve_mock, args=(ALLOWED, port, started, stop), daemon=True),
        threading.Thread(target=_serve_mock, args=(ALLOWED, tls_port, tls_started, stop, tls), daemon=True),
    ]
    for mock in mocks:
        mock.start()
    assert started.wait(10) and tls_started.wait(10)
    recorder = Recorder(INTERNAL, port)
    with RebindingDns() as dns:
        dns.answers[TLS_HOST] = [ALLOWED]
        dns.answers[OTHER_NAME] = [ALLOWED]
        extra = {
            "LLM_GATEWAY_CUSTOM_LLM_ALLOWED_NETWORKS": f'["{ALLOWED}/32"]',
            "LLM_GATEWAY_CUSTOM_LLM_DNS_SERVERS": f'["{dns.address}"]',
            # The providers of this stack are the plain-HTTP mock; only the custom LLM uses TLS.
            "LLM_GATEWAY_CA_BUNDLE": str(certificate.ca_file),
        }
        with running_stack(tmp_path_factory.mktemp("pinning"), **extra) as gateway:
            yield gateway, dns, recorder, f"http://{HOST}:{port}/v1", tls_port
    recorder.close()
    stop.set()
    for mock in mocks:
        mock.join(10)


def _chat(gateway: Gateway, token: str, org: str, model: str) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}", "x-forwarded-for": fresh_ip(), "x-kilocode-organizationid": org}
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(gateway.chat_url, json=body, headers=headers, timeout=30)


def test_a_dns_answer_that_changes_after_the_check_never_reaches_the_internal_address(
    setup: tuple[Gateway, RebindingDns, Recorder, str, int],
) -> None:
    gateway, dns, recorder, base_url, _ = setup
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
    setup: tuple[Gateway, RebindingDns, Recorder, str, int],
) -> None:
    gateway, dns, recorder, base_url, _ = setup
    internal_host = f"inside-{uuid.uuid4().hex[:8]}.test"
    dns.answers[internal_host] = [INTERNAL]
    user = new_user(gateway)
    org = org_with_member(gateway, user, credits="10")
    llm = add_custom_llm(gateway, org, base_url=base_url.replace(HOST, internal_host))
    response = _chat(gateway, user["token"], org, llm["public_id"])
    assert response.status_code != 200
    assert dns.queries[internal_host] >= 1
    assert recorder.connections == 0


def test_tls_to_a_pinned_address_verifies_the_certificate_against_the_host_name(
    setup: tuple[Gateway, RebindingDns, Recorder, str, int],
) -> None:
    """Envoy connects by address, but SNI and the certificate check use the custom LLM's name:
    the right name is served, a name the certificate does not carry is refused."""
    gateway, _, _, _, tls_port = setup
    user = new_user(gateway)
    org = org_with_member(gateway, user, credits="10")
    good = add_custom_llm(gateway, org, base_url=f"https://{TLS_HOST}:{tls_port}/v1")
    response = _chat(gateway, user["token"], org, good["public_id"])
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"].startswith("Mock reply")
    wrong = add_custom_llm(gateway, org, base_url=f"https://{OTHER_NAME}:{tls_port}/v1")
    refused = _chat(gateway, user["token"], org, wrong["public_id"])
    assert refused.status_code == 503
