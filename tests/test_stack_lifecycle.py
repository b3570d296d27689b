"""`llm-gateway run` as an operator uses it: it drains, and it leaves nothing behind."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extproc.local.processes import port_open
from tests.bodies import GATEWAY_REPLIES
from tests.conftest import Gateway, start_stack, stop_stack


def _listening(gateway: Gateway) -> list[str]:
    return [name for name, port in gateway.ports.items() if port_open("127.0.0.1", port)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_extproc_reports_serving_on_grpc_health(gateway: Gateway) -> None:
    with grpc.insecure_channel(gateway.extproc_address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_sigterm_stops_every_process_and_frees_every_port(tmp_path: Path) -> None:
    gateway = start_stack(tmp_path)
    assert httpx.post(gateway.chat_url, json={"model": "a/b:free", "messages": []}).status_code == 200
    assert set(_listening(gateway)) == {"listen", "admin", "extproc", "metrics", "mock"}

    assert stop_stack(gateway) == 0

    assert _listening(gateway) == []
    assert [name for name, pid in gateway.children.items() if _alive(pid)] == []
    assert not (tmp_path / "stack.json").exists()


@pytest.mark.parametrize("signum", [signal.SIGINT])
def test_ctrl_c_stops_the_stack_too(tmp_path: Path, signum: int) -> None:
    gateway = start_stack(tmp_path)
    gateway.process.send_signal(signum)
    assert gateway.process.wait(60) == 0
    assert _listening(gateway) == []  # as after SIGTERM: the supervisor exits last


def test_a_stalled_extproc_fails_closed_with_a_json_error_within_the_message_timeout(tmp_path: Path) -> None:
    gateway = start_stack(tmp_path, LLM_GATEWAY_EXTPROC_MESSAGE_TIMEOUT_MS="1000")
    extproc = gateway.children["ext_proc"]
    try:
        os.kill(extproc, signal.SIGSTOP)
        started = time.monotonic()
        response = httpx.post(gateway.chat_url, json={"model": "a/b:free", "messages": []}, timeout=30)
        elapsed = time.monotonic() - started
        os.kill(extproc, signal.SIGCONT)
        assert response.status_code == 504
        assert response.json() == GATEWAY_REPLIES["GATEWAY_TIMEOUT"].body
        assert elapsed < 5
        # Nothing reached the provider while the ext_proc could not decide.
        assert gateway.upstream_requests() == []
        # Once it is back, requests flow again.
        assert httpx.post(gateway.chat_url, json={"model": "a/b:free", "messages": []}, timeout=30).status_code == 200
    finally:
        os.kill(extproc, signal.SIGCONT)
        stop_stack(gateway)
