"""Keeping the price catalogue fresh, in the background, never on a request's path.

Each replica, every `price_catalogue_check_seconds`:
1. for each priced provider, asks Postgres for the fetch lease (`store.take_lease`: granted to
   one replica of the fleet while the stored table is older than
   `price_catalogue_refresh_seconds`); the holder fetches `GET <api_url>/models`, checks the
   answer (`catalogue.accept`) and replaces the stored table, or records why not and keeps the
   last good one;
2. loads every stored table newer than its own copy.
With Postgres unreachable it fetches on its own once its copy is older than the refresh
interval (the fleet then fetches once per replica, and nothing is persisted), so prices
never go stale for want of Postgres. At start-up the stored tables are loaded first, so a
replica that starts while the provider is down still has prices.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import aiohttp
import orjson
from prometheus_client import Counter, Gauge

from extproc import logs
from extproc.db import POSTGRES_ERRORS, Connection
from extproc.pricing import store
from extproc.pricing.catalogue import PRICED_PROVIDERS, PriceCatalogue, PriceTable, accept
from extproc.pricing.prices import BadAnswer, ParsedModels, parse_openrouter_models, parse_vercel_models
from extproc.settings import Provider, Settings

logger = logging.getLogger(__name__)

AGE = Gauge(
    "llm_gateway_price_catalogue_age_seconds",
    "Seconds since the provider's price table in use was fetched (+Inf: none loaded).",
    ["provider"],
    multiprocess_mode="livemax",
)
REFRESHES = Counter(
    "llm_gateway_price_catalogue_refreshes",
    "Fetches of a provider's /models by outcome: stored, refused (bad or partial answer, the "
    "last good table kept), failed (unreachable, HTTP error).",
    ["provider", "outcome"],
)
for _provider in PRICED_PROVIDERS:
    for _outcome in ("stored", "refused", "failed"):
        REFRESHES.labels(_provider, _outcome)

PARSERS: dict[str, Callable[[object], ParsedModels]] = {
    "openrouter": parse_openrouter_models,
    "vercel": parse_vercel_models,
}
# OpenRouter's answer is ~1-2 MB; past this it is not a catalogue.
_MAX_ANSWER_BYTES = 64 * 1024 * 1024


class FetchFailed(Exception):
    """The provider could not be asked (`outcome` "failed"), or its answer was refused
    ("refused"); the message says why."""

    def __init__(self, reason: str, outcome: str = "failed") -> None:
        super().__init__(reason)
        self.outcome = outcome


@dataclass(slots=True)
class PriceRefresher:
    settings: Settings
    connect: Callable[[], AbstractAsyncContextManager[Connection]]  # a pool's acquire, or one connection
    catalogue: PriceCatalogue
    holder: str  # this replica, in the lease

    # The providers whose `/models` are fetched: the settings' (the CLI passes its own).
    priced: tuple[Provider, ...] | None = None

    def providers(self) -> list[Provider]:
        if self.priced is not None:
            return list(self.priced)
        return [p for key, p in self.settings.routable_providers.items() if key in PRICED_PROVIDERS]

    async def fetch(self, provider: Provider) -> PriceTable:
        """Ask the provider and check its answer against the table in use; a failure is counted
        and logged here (the last good table stays in use)."""
        try:
            return await self._fetch(provider)
        except FetchFailed as exc:
            REFRESHES.labels(provider.id, exc.outcome).inc()
            logger.error(
                "price catalogue not refreshed; the last good table stays in use",
                extra={
                    "provider": provider.id,
                    "reason": str(exc),
                    "age_seconds": self.catalogue.age_seconds(provider.id),
                },
            )
            raise

    async def _fetch(self, provider: Provider) -> PriceTable:
        url = f"{provider.api_url}/models"
        headers = {"accept": "application/json"}
        if provider.api_key is not None:
            headers["authorization"] = f"Bearer {provider.api_key.get_secret_value()}"
        timeout = aiohttp.ClientTimeout(total=self.settings.price_catalogue_fetch_timeout_seconds)
        context: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=self.settings.ca_bundle) if provider.tls else False
        )
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.get(url, headers=headers, ssl=context) as response:
                    raw = await response.content.read(_MAX_ANSWER_BYTES + 1)
                    status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise FetchFailed(f"{type(exc).__name__}: {exc}") from None
        if status != 200:
            raise FetchFailed(f"HTTP {status}")
        if len(raw) > _MAX_ANSWER_BYTES:
            raise FetchFailed("the answer is too large")
        try:
            parsed = PARSERS[provider.id](orjson.loads(raw))
        except (orjson.JSONDecodeError, BadAnswer) as exc:
            raise FetchFailed(f"refused: {exc}", "refused") from None
        for model_id, reason in list(parsed.refused.items())[:20]:
            logger.warning("price entry refused", extra={"provider": provider.id, "model": model_id, "reason": reason})
        why = accept(parsed, self.catalogue.tables.get(provider.id))
        if why is not None:
            raise FetchFailed(f"refused: {why}", "refused")
        return PriceTable.build(provider.id, parsed.models, time.time())

    async def refresh(self, provider: Provider, *, force: bool = False) -> PriceTable | None:
        """One provider, if this replica gets the lease (always tried when `force`). Returns the
        table stored, or None when another replica holds the lease or the table is fresh.
        Raises FetchFailed (recorded in Postgres) and Postgres' errors."""
        interval = self.settings.price_catalogue_refresh_seconds
        lease = self.settings.price_catalogue_fetch_timeout_seconds * 2 + 5
        async with self.connect() as connection:
            leased = await store.take_lease(
                connection,
                provider.id,
                self.holder,
                lease_seconds=lease,
                older_than_seconds=None if force else interval,
                retry_seconds=self.settings.price_catalogue_check_seconds,
            )
        if not leased:
            return None
        try:
            table = await self.fetch(provider)
        except FetchFailed as exc:
            async with self.connect() as connection:
                await store.record_failure(connection, provider.id, self.holder, str(exc))
            raise
        async with self.connect() as connection:
            fetched_at = await store.save_table(connection, table, self.holder)
        if fetched_at is None:
            logger.warning("price catalogue lease lost while fetching; not stored", extra={"provider": provider.id})
            return None
        REFRESHES.labels(provider.id, "stored").inc()
        table = PriceTable(table.provider, table.models, fetched_at, table.highest)
        self.catalogue.replace(table)
        logger.info("price catalogue stored", extra={"provider": provider.id, "models": len(table.models)})
        return table

    async def load(self) -> None:
        """Every stored table newer than the one in use."""
        async with self.connect() as connection:
            versions = await store.stored_versions(connection)
            for provider, fetched_at in versions.items():
                current = self.catalogue.tables.get(provider)
                if current is not None and current.fetched_at >= fetched_at:
                    continue
                table = await store.load_table(connection, provider, fetched_at)
                if table is not None:
                    self.catalogue.replace(table)
                    logger.info("price catalogue loaded", extra={"provider": provider, "models": len(table.models)})

    async def check(self) -> None:
        """One round: load what the fleet stored, then refresh what is due (if this replica
        gets the lease). Loading first: a replica starting while the provider hangs has the
        stored prices at once, not after the fetch's timeout."""
        try:
            await self.load()
            postgres_down = False
        except POSTGRES_ERRORS as exc:
            postgres_down = True
            logger.error("price catalogue: postgres unreachable", extra=logs.failure(exc, "price load"))
        for provider in self.providers():
            if postgres_down:
                await self._fetch_alone(provider)
                continue
            try:
                await self.refresh(provider)
            except FetchFailed:
                pass
            except POSTGRES_ERRORS as exc:
                logger.error("price catalogue: postgres unreachable", extra=logs.failure(exc, "price lease"))
                await self._fetch_alone(provider)
        self.report_age()

    async def _fetch_alone(self, provider: Provider) -> None:
        if self.catalogue.age_seconds(provider.id) < self.settings.price_catalogue_refresh_seconds:
            return
        try:
            table = await self.fetch(provider)
        except FetchFailed:
            return
        self.catalogue.replace(table)
        logger.warning("price catalogue fetched without postgres (not stored)", extra={"provider": provider.id})

    def report_age(self) -> None:
        now = time.time()
        for provider in self.providers():
            AGE.labels(provider.id).set(self.catalogue.age_seconds(provider.id, now))

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`: a check at once, then one every `price_catalogue_check_seconds`."""
        while not stop.is_set():
            try:
                await self.check()
            except Exception as exc:  # a bug must not end the refreshing for good
                logger.exception("price catalogue check failed", extra=logs.failure(exc, "price check"))
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.settings.price_catalogue_check_seconds)
            except TimeoutError:
                pass
