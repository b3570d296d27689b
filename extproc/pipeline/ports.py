"""What the pipeline's steps and the router read from the outside world, as small Protocols.

The production classes (Directory, FreeModelLimiter, ByokDirectory, CustomLlms, ErrorRates, Cooldowns,
FreeModelUsageLog) satisfy them structurally; unit tests pass in-memory fakes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from extproc.admission.holds import Hold, ScopeRead
from extproc.custom_llm import CustomLlm, PinnedUpstream
from extproc.directory import OrganizationAccount, User
from extproc.limits import Admission
from extproc.shaping.provider_rules import ByokKey


class Accounts(Protocol):
    """Users, memberships and balances (2.5, 2.12)."""

    async def user(self, user_id: str) -> User | None: ...

    async def is_member(self, organization_id: str, user_id: str) -> bool: ...

    async def organization_account(self, organization_id: str, user_id: str) -> OrganizationAccount | None: ...

    async def is_returning_customer(self, user_id: str) -> bool: ...


class Limiter(Protocol):
    """The free-model and promotion windows (2.4, 2.7)."""

    async def admit(self, ip: str, *, kilo_free: bool, anonymous: bool, request_id: str) -> Admission: ...


class FreeUsageLog(Protocol):
    """The `free_model_usage` row of a Kilo free-model request (2.8)."""

    async def record(self, ip: str, model_lower: str, user_id: str | None) -> None: ...


class ByokKeys(Protocol):
    """The caller's own provider keys (3.3)."""

    async def providers_for_model(self, model_lower: str, vercel_model_id: str) -> list[str]: ...

    async def keys(
        self, provider_ids: Sequence[str], *, user_id: str, organization_id: str | None, encryption_key: bytes
    ) -> list[ByokKey]: ...


class CustomLlmSource(Protocol):
    """Organisations' custom LLMs (3.4)."""

    async def get(self, public_id: str) -> CustomLlm | None: ...

    async def upstream(self, llm: CustomLlm) -> PinnedUpstream: ...


class CooldownSource(Protocol):
    """Providers cooling down for a model, shared by the replicas (issue 25)."""

    async def cooled(self, providers: Iterable[str], model: str) -> frozenset[str]: ...


class ErrorRateSource(Protocol):
    """OpenRouter's and Vercel's recent error rates (3.5)."""

    async def get(self) -> tuple[float, float]: ...


class SpendHolder(Protocol):
    """The spend holds of paid requests (issue 23; extproc/admission)."""

    async def hold(self, usage_id: str, reads: Sequence[ScopeRead], bound: int, floor: int) -> Hold: ...

    def release(self, usage_id: str, scopes: list[str], microdollars: int) -> None: ...

