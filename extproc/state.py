"""The stages of one request, each a type of its own: the fields a stage has are never None.

`ClientRequest` (request headers) -> `Caller` (2.1 to 2.9) -> `AdmittedRequest` (frozen once
the request-body phase sent it upstream) and, on the way back, the mutable `ResponseTap`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from extproc.pipeline.client_headers import ClientInfo
from extproc.pipeline.identity import Identity
from extproc.pipeline.parse import ChatRequest
from extproc.pipeline.routing import Route
from extproc.pipeline.spend import SpendHold
from extproc.response_usage import JsonTap, StreamTap
from extproc.settings import Provider
from extproc.side.api_metrics import AnsweredRequest

if TYPE_CHECKING:
    from extproc.accounting.record import RequestFacts
    from extproc.response.rewrite import SseRewriter
    from extproc.shaping.transform import TransformResult
    from extproc.side.abuse import Classification
    from extproc.translate.chat import ResponseTranslator


@dataclass(frozen=True, slots=True)
class ClientRequest:
    """Phase 1: the request line and headers as Envoy passed them on."""

    request_id: str
    method: str
    path: str  # the client's :path, query string included
    headers: dict[str, str]
    client_ip: str | None  # Envoy's source address (decision 2)
    started: float = field(default_factory=time.monotonic)

    @property
    def query(self) -> str:
        """The original query string with its '?', forwarded verbatim (contract 1)."""
        index = self.path.find("?")
        return self.path[index:] if index >= 0 else ""


@dataclass(frozen=True, slots=True)
class Caller:
    """Steps 2.1 to 2.9: the parsed request and who sent it, before provider selection."""

    chat: ChatRequest  # with a kilo/auto* model already resolved
    client: ClientInfo
    identity: Identity
    ip: str
    auto_model: str | None  # the kilo/auto* id the client asked for, when resolved
    log_request: bool  # employees' requests are logged with their response (8.2)


@dataclass(frozen=True, slots=True)
class AdmittedRequest:
    """A request on its way upstream. Accounting, the API metrics and the response phases read
    this one value; `chat.body` is the body as sent (after shaping)."""

    request: ClientRequest
    caller: Caller
    route: Route
    facts: RequestFacts  # the request as the client sent it (7.6, 8.3), taken before shaping
    abuse: Classification | None  # contract 8.3: running since provider selection
    promotion: bool
    tools: TransformResult  # tools offered and used, for the API metrics (8.1)
    upstream_body: bytes  # the request body as sent upstream
    translator: ResponseTranslator | None  # custom LLMs of another protocol (3.4)
    # The ledger row's id, from admission on: the write-ahead record and the final one share it.
    usage_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    hold: SpendHold | None = None  # issue 23: the spend hold the request took, if any

    @property
    def chat(self) -> ChatRequest:
        return self.caller.chat

    @property
    def identity(self) -> Identity:
        return self.caller.identity

    @property
    def client(self) -> ClientInfo:
        return self.caller.client

    @property
    def provider(self) -> Provider:
        return self.route.provider

    @property
    def user_byok(self) -> bool:
        return bool(self.route.user_byok)

    def answered(self, status: int, first_byte_at: float) -> AnsweredRequest | None:
        """The API metrics' view of the request; None for a status no HTTP response has."""
        if not 100 <= status <= 599:
            return None
        chat, identity = self.chat, self.identity
        return AnsweredRequest(
            user_id=identity.user_id,
            anonymous=identity.anonymous,
            organization_id=identity.organization_id,
            streaming=chat.stream,
            user_byok=self.user_byok,
            provider_id=self.provider.id,
            requested_model=self.caller.auto_model or chat.model_lower,
            model_lower=chat.model_lower,
            tools_available=tuple(self.tools.tools_available),
            tools_used=tuple(self.tools.tools_used),
            mode=self.client.mode,
            started=self.request.started,
            first_byte_at=first_byte_at,
            status=status,
        )


@dataclass(slots=True)
class ResponseTap:
    """Phases 3 and 4: the response as it passes, and what accounting keeps of it."""

    status: int
    content_type: str | None
    first_byte_at: float
    buffered: bool  # the response body arrives whole (not SSE, or an error)
    # The summary's reader, for an admitted request only (Envoy's own replies are not ours).
    reader: StreamTap | JsonTap | None = None
    rewriter: SseRewriter | None = None  # free-model streams (contract 6.4)
    translated: bytes | None = None  # the last chunk's translation, for the accounting tap
    first_chunk_at: float | None = None
    response_copy: bytearray | None = None  # employees' requests (8.2)
