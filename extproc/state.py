"""Per-request state: one object per ext_proc stream, owned by that stream's coroutine."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from extproc.pipeline.parse import ChatRequest
from extproc.response_usage import ResponseSummary, StreamTap
from extproc.settings import Provider
from extproc.side.api_metrics import AnsweredRequest

if TYPE_CHECKING:
    from extproc.accounting.record import RequestFacts
    from extproc.pipeline.client_headers import ClientInfo
    from extproc.pipeline.identity import Identity
    from extproc.response.rewrite import SseRewriter
    from extproc.shaping.transform import TransformResult
    from extproc.side.abuse import Classification
    from extproc.translate.chat import ResponseTranslator


@dataclass(slots=True)
class RequestState:
    started: float = field(default_factory=time.monotonic)
    request_id: str = ""
    method: str = ""
    path: str = ""  # the client's :path, query string included
    headers: dict[str, str] = field(default_factory=dict)
    client_ip: str | None = None

    chat: ChatRequest | None = None
    client: ClientInfo | None = None
    auto_model: str | None = None  # the kilo/auto* id the client asked for, when resolved
    identity: Identity | None = None
    provider: Provider | None = None

    facts: RequestFacts | None = None  # the request as sent (7.6, 8.3), taken before shaping
    abuse: Classification | None = None  # contract 8.3: running since provider selection
    promotion: bool = False
    user_byok: bool = False
    tools: TransformResult | None = None  # tools offered and used, for the API metrics (8.1)
    log_request: bool = False  # employees' requests are logged with their response (8.2)
    response_copy: bytearray | None = None

    upstream_body: bytes | None = None  # the request body as sent upstream

    status: int | None = None  # upstream (or immediate) response status
    response_content_type: str | None = None
    buffered: bool = False  # the response body arrives whole (not SSE, or an error)
    rewriter: SseRewriter | None = None  # free-model streams (contract 6.4)
    translator: ResponseTranslator | None = None  # custom LLMs of another protocol (3.4)
    translated: bytes | None = None  # the last chunk's translation, for the accounting tap
    first_byte_at: float | None = None
    first_chunk_at: float | None = None
    stream_tap: StreamTap | None = None
    json_body: bytearray | None = None
    summary: ResponseSummary | None = None

    @property
    def query(self) -> str:
        """The original query string with its '?', forwarded verbatim (contract 1)."""
        index = self.path.find("?")
        return self.path[index:] if index >= 0 else ""

    def answered_request(self) -> AnsweredRequest | None:
        """The API metrics' view of the request; None when nothing reached the upstream."""
        chat, identity, provider, status = self.chat, self.identity, self.provider, self.status
        if chat is None or identity is None or provider is None or self.first_byte_at is None:
            return None
        if status is None or not 100 <= status <= 599:
            return None
        return AnsweredRequest(
            user_id=identity.user_id,
            anonymous=identity.anonymous,
            organization_id=identity.organization_id,
            streaming=chat.stream,
            user_byok=self.user_byok,
            provider_id=provider.id,
            requested_model=self.auto_model or chat.model_lower,
            model_lower=chat.model_lower,
            tools_available=tuple(self.tools.tools_available) if self.tools is not None else (),
            tools_used=tuple(self.tools.tools_used) if self.tools is not None else (),
            mode=self.client.mode if self.client is not None else None,
            started=self.started,
            first_byte_at=self.first_byte_at,
            status=status,
        )
