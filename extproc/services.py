"""What every stream of one ext_proc process shares: settings, pools, caches, the limiter."""

from __future__ import annotations

from dataclasses import dataclass

from extproc.accounting.outbox import Outbox
from extproc.accounting.submit import UsageSubmitter
from extproc.accounting.writer import LedgerWriter
from extproc.byok import ByokDirectory, parse_encryption_key
from extproc.custom_llm import CustomLlms
from extproc.directory import Directory
from extproc.error_rates import ErrorRates
from extproc.limits import FreeModelLimiter
from extproc.resources import Resources
from extproc.settings import Settings
from extproc.side import SideServices


@dataclass(slots=True)
class Services:
    settings: Settings
    resources: Resources
    directory: Directory
    limiter: FreeModelLimiter
    submitter: UsageSubmitter  # finished requests' records to the outbox
    byok: ByokDirectory
    byok_key: bytes | None
    custom_llms: CustomLlms
    error_rates: ErrorRates
    side: SideServices  # abuse service, API metrics, analytics: optional and fail-open

    @classmethod
    def build(cls, settings: Settings, resources: Resources) -> Services:
        side = SideServices.build(settings)
        return cls(
            settings=settings,
            resources=resources,
            directory=Directory(resources.db, settings),
            limiter=FreeModelLimiter(
                resources.redis,
                free_limit=settings.free_model_limit,
                free_window_seconds=settings.free_model_window_seconds,
                promotion_limit=settings.promotion_limit,
                promotion_window_seconds=settings.promotion_window_seconds,
            ),
            submitter=UsageSubmitter(
                outbox := Outbox(resources.redis, settings.ledger_consumer),
                LedgerWriter(settings, resources.db, outbox, side),
            ),
            byok=ByokDirectory(resources.db, settings),
            byok_key=(
                parse_encryption_key(settings.byok_encryption_key.get_secret_value())
                if settings.byok_encryption_key is not None
                else None
            ),
            custom_llms=CustomLlms(resources.db, settings),
            error_rates=ErrorRates(resources.db),
            side=side,
        )
