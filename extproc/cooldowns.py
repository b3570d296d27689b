"""Provider cooldowns shared by every replica (issue 25): a provider that answered a model with
429 and `Retry-After`, or with a burst of 5xx, goes last for that model until the cooldown
expires by itself.

Redis keys, per provider and model (the model's lower-case id):
* ``<prefix>cool:<provider>:<model>``  -- present while cooled; the value says why
  (``retry_after`` or ``5xx_burst``); PX = the cooldown.
* ``<prefix>5xx:<provider>:<model>``   -- a counter of 5xx answers, expiring
  ``cooldown_5xx_window_seconds`` after the first; at ``cooldown_5xx_burst`` the provider is
  cooled for ``cooldown_seconds``.

Reading is on the request path, so each replica keeps what it read for `_READ_CACHE_SECONDS`
per model: a cooldown reaches every replica within that long, and a request costs no Redis
round trip while the answer is fresh. Writing is off the request path: `observe` starts a task,
the response never waits on it. Redis failing means no cooldowns (fail open, logged and
counted): the routing is then the contract's plain one.

Only the gateway's own keys count: a BYOK caller's 429 is its own key's limit, not the
provider's state for everyone (the exchange never reports those).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import Iterable

import redis.asyncio
from prometheus_client import Counter
from redis.exceptions import RedisError

from extproc import logs, metrics
from extproc.settings import Settings

logger = logging.getLogger(__name__)

COOLDOWNS = Counter(
    "llm_gateway_provider_cooldowns",
    "Cooldowns started, by provider and why: a 429 with Retry-After, or a burst of 5xx.",
    ["provider", "reason"],
)
COOLDOWN_ERRORS = Counter(
    "llm_gateway_provider_cooldown_errors", "Cooldown reads or writes that failed (Redis); none applied."
)

_READ_CACHE_SECONDS = 1.0
_TIMEOUT_SECONDS = 0.5


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """RFC 9110 `Retry-After`: delay seconds or an HTTP date (`now` is the Unix time); None when
    absent, malformed or already past."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        seconds = float(text)
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - now
    return seconds if seconds > 0 else None


def cooldown_for_429(retry_after: str | None, now: float, cap_seconds: int) -> float | None:
    """The cooldown a 429 starts: its Retry-After, capped; none without one (a 429 without a
    time says nothing about when to come back, and may be the request's own doing)."""
    seconds = retry_after_seconds(retry_after, now)
    return None if seconds is None else min(seconds, float(cap_seconds))


class Cooldowns:
    def __init__(self, client: redis.asyncio.Redis, settings: Settings, prefix: str = "llm_gateway:") -> None:
        self.client = client
        self.settings = settings
        self.prefix = prefix
        self._read: dict[str, tuple[float, frozenset[str]]] = {}  # model -> (read at, cooled)
        self._tasks: set[asyncio.Task[None]] = set()

    def _key(self, kind: str, provider: str, model: str) -> str:
        return f"{self.prefix}{kind}:{provider}:{model}"

    async def cooled(self, providers: Iterable[str], model: str) -> frozenset[str]:
        """Which of `providers` are cooling down for `model`."""
        providers = tuple(providers)
        now = time.monotonic()
        cached = self._read.get(model)
        if cached is not None and now - cached[0] < _READ_CACHE_SECONDS:
            return cached[1] & frozenset(providers)
        try:
            async with asyncio.timeout(_TIMEOUT_SECONDS):
                values = await self.client.mget([self._key("cool", p, model) for p in providers])
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            COOLDOWN_ERRORS.inc()
            logger.warning("cooldown read failed; none applied", extra=logs.failure(exc, "MGET cooldowns"))
            return frozenset()
        cooled = frozenset(p for p, v in zip(providers, values, strict=True) if v is not None)
        self._read[model] = (now, cooled)
        if len(self._read) > 10_000:  # bounded: the oldest reads go first
            del self._read[next(iter(self._read))]
        return cooled

    def observe(self, provider: str, model: str, status: int, retry_after: str | None) -> asyncio.Task[None] | None:
        """An upstream answer the client got: a 429 with Retry-After or a 5xx may start a
        cooldown. Returns at once; Redis is written by the task returned (kept until done)."""
        if status != 429 and status < 500:
            return None
        task = asyncio.ensure_future(self._record(provider, model, status, retry_after))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _record(self, provider: str, model: str, status: int, retry_after: str | None) -> None:
        settings = self.settings
        try:
            async with asyncio.timeout(_TIMEOUT_SECONDS):
                if status == 429:
                    seconds = cooldown_for_429(retry_after, time.time(), settings.cooldown_max_seconds)
                    if seconds is not None:
                        await self._start(provider, model, "retry_after", seconds)
                    return
                key = self._key("5xx", provider, model)
                # The window starts with the first 5xx (SET NX keeps its expiry; INCR keeps it too).
                async with self.client.pipeline(transaction=True) as pipe:
                    pipe.set(key, 0, ex=settings.cooldown_5xx_window_seconds, nx=True)
                    pipe.incr(key)
                    _, count = await pipe.execute()
                if int(count) == settings.cooldown_5xx_burst:
                    await self._start(provider, model, "5xx_burst", float(settings.cooldown_seconds))
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            COOLDOWN_ERRORS.inc()
            logger.warning("cooldown write failed", extra=logs.failure(exc, "record cooldown"))

    async def _start(self, provider: str, model: str, reason: str, seconds: float) -> None:
        await self.client.set(self._key("cool", provider, model), reason, px=max(1, round(seconds * 1000)))
        self._read.pop(model, None)  # this replica sees it at once; the others within a second
        metrics.child(COOLDOWNS, provider, reason).inc()
        logger.warning(
            "provider cooling down for a model",
            extra={"provider": provider, "model": model, "reason": reason, "seconds": seconds},
        )
