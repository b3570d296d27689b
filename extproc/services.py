"""The process's wiring: the request core's collaborators, built once and shared by every stream."""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass

from extproc.accounting.inflight import InFlightLog
from extproc.accounting.outbox import Outbox
from extproc.accounting.submit import UsageSubmitter
from extproc.accounting.writer import LedgerWriter
from extproc.admission import settle
from extproc.admission.holds import SpendHolds
from extproc.admission.replica import ReplicaHolds
from extproc.byok import ByokDirectory, parse_encryption_key
from extproc.collaborators import Collaborators
from extproc.cooldowns import Cooldowns
from extproc.custom_llm import CustomLlms
from extproc.directory import Directory
from extproc.error_rates import ErrorRates
from extproc.limits import FreeModelLimiter
from extproc.pipeline.free_usage import FreeModelUsageLog
from extproc.pipeline.routing import Router
from extproc.pricing.catalogue import PriceCatalogue
from extproc.pricing.refresh import PriceRefresher
from extproc.resources import Resources
from extproc.settings import Settings
from extproc.side import SideServices
from extproc.translate.openai_phase import PhaseMemory


@dataclass(frozen=True, slots=True)
class Services:
    core: Collaborators
    submitter: UsageSubmitter  # the server runs and drains it
    price_refresher: PriceRefresher  # the server runs it: the catalogue `core.prices` reads

    @classmethod
    def build(cls, settings: Settings, resources: Resources) -> Services:
        side = SideServices.build(settings)  # optional and fail-open
        outbox = Outbox(resources.redis, settings.ledger_consumer)
        # Each process start is a replica of its own for the write-ahead records.
        replica = uuid.uuid4().hex
        inflight = InFlightLog(replica=replica, ttl_ms=int(settings.inflight_ttl_seconds * 1000))
        submitter = UsageSubmitter(outbox, LedgerWriter(settings, resources.db, outbox, side), inflight)
        query_timeout = settings.directory_query_timeout_seconds
        cooldowns = Cooldowns(resources.redis, settings)
        prices = PriceCatalogue()
        price_refresher = PriceRefresher(settings, lambda: resources.db.acquire(timeout=5), prices, holder=replica)
        router = Router(
            settings=settings,
            byok=ByokDirectory(resources.db, settings),
            byok_key=(
                parse_encryption_key(settings.byok_encryption_key.get_secret_value())
                if settings.byok_encryption_key is not None
                else None
            ),
            custom_llms=CustomLlms(resources.db, settings),
            error_rates=ErrorRates(resources.db),
            cooldowns=cooldowns,
        )
        core = Collaborators(
            settings=settings,
            router=router,
            accounts=Directory(resources.db, settings),
            limiter=FreeModelLimiter(
                resources.redis,
                free_limit=settings.free_model_limit,
                free_window_seconds=settings.free_model_window_seconds,
                promotion_limit=settings.promotion_limit,
                promotion_window_seconds=settings.promotion_window_seconds,
            ),
            free_usage=FreeModelUsageLog(resources.db, query_timeout),
            phase_memories=functools.partial(PhaseMemory, resources.db, query_timeout),
            submitter=submitter,
            abuse=side.abuse,
            api_metrics=side.api_metrics,
            cooldowns=cooldowns,
            prices=prices,
            holds=ReplicaHolds(
                SpendHolds(
                    resources.redis,
                    settle.retention_ms(settings.directory_cache_seconds, settings.directory_stale_seconds),
                    settings.spend_hold_timeout_seconds,
                ),
                inflight,
                submitter,
            ),
        )
        return cls(core=core, submitter=submitter, price_refresher=price_refresher)
