"""Phase 2: the request pipeline of behaviour.md section 2, in the contract's order."""

from __future__ import annotations

from envoy.service.ext_proc.v3.external_processor_pb2 import HttpBody, ProcessingResponse

from extproc import protocol
from extproc.pipeline.parse import parse_chat_request
from extproc.pipeline.rejection import Rejection
from extproc.pipeline.upstream import forward, select_provider
from extproc.settings import Settings
from extproc.state import RequestState


async def on_request_body(settings: Settings, state: RequestState, message: HttpBody) -> ProcessingResponse:
    try:
        state.chat = chat = parse_chat_request(message.body)  # 2.1
        # Admission (2.2-2.13: client IP, auto model, limits, auth, balance) comes here.
        state.provider = provider = select_provider(settings, chat)  # 3.2
        # Request shaping (2.14, 5) comes here.
        return forward(settings, state, chat, provider)  # 2.15
    except Rejection as rejection:
        state.status = rejection.error.status
        return protocol.immediate(rejection.error)
