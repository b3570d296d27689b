"""What the request core (extproc/exchange.py) is built from: one Protocol per collaborator.

The process wires the real ones (extproc/services.py); unit tests pass fakes. Every stream of
the process shares one `Collaborators`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from extproc.accounting.record import RequestFacts, UsageRecord
from extproc.pipeline.client_headers import ClientInfo
from extproc.pipeline.identity import Identity
from extproc.pipeline.parse import ChatRequest
from extproc.pipeline.ports import Accounts, FreeUsageLog, Limiter, SpendHolder
from extproc.pipeline.routing import Route
from extproc.pricing.catalogue import PriceCatalogue
from extproc.response_usage import ResponseSummary
from extproc.settings import Settings
from extproc.side.abuse import Classification
from extproc.side.api_metrics import AnsweredRequest
from extproc.translate.openai_phase import PhaseMemory


class RouteSelector(Protocol):
    """Step 3.2 (extproc.pipeline.routing.Router)."""

    async def select(self, chat: ChatRequest, identity: Identity, task_id: str | None) -> Route: ...


class Submitter(Protocol):
    """Finished requests' usage records to the outbox (extproc.accounting.submit)."""

    def submit(self, record: UsageRecord, abuse_request_id: Awaitable[int] | None = None) -> None: ...

    def write_ahead(self, record: UsageRecord) -> None:
        """The record an admitted request gets if this replica dies before it ends; taken as it
        is now (serialised), so the caller may complete the same record afterwards."""

    def forget(self, usage_id: str) -> None:
        """An admitted request that ends unaccounted: its written-ahead record goes."""


class AbuseClassifier(Protocol):
    """Contract 8.3: started at provider selection, never awaited by the request."""

    def classify(
        self,
        chat: ChatRequest,
        identity: Identity,
        client: ClientInfo,
        facts: RequestFacts,
        provider_id: str,
        user_byok: bool,
        request_id: str = "",
    ) -> Classification | None: ...


class ApiMetricsReporter(Protocol):
    """Contract 8.1: one report per upstream response."""

    @property
    def enabled(self) -> bool:
        """False when the service is not configured: nothing need be built for `report`."""

    def report(self, request: AnsweredRequest, summary: ResponseSummary | None) -> None: ...


class CooldownRecorder(Protocol):
    """Issue 25: an upstream answer that may cool its provider down for the model
    (extproc.cooldowns.Cooldowns); never awaited by the request."""

    def observe(self, provider: str, model: str, status: int, retry_after: str | None) -> object: ...


# (user id, task id) -> the OpenAI phase memory of that task (contract 3.4).
PhaseMemories = Callable[[str, str | None], PhaseMemory]


@dataclass(frozen=True, slots=True)
class Collaborators:
    settings: Settings
    router: RouteSelector
    accounts: Accounts
    limiter: Limiter
    free_usage: FreeUsageLog
    phase_memories: PhaseMemories
    submitter: Submitter
    abuse: AbuseClassifier
    api_metrics: ApiMetricsReporter
    cooldowns: CooldownRecorder
    # The price catalogue (issue 23), kept fresh in the background by the server; read
    # synchronously on the request path. Empty (every lookup PricesUnavailable) until loaded.
    prices: PriceCatalogue = field(default_factory=PriceCatalogue)
    # Spend holds (issue 23): None, the contract's balance check alone.
    holds: SpendHolder | None = None
