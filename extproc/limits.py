"""Per-IP free-model and promotion rate limits (contract 2.4, 2.7, 2.8; decision 20).

Two sliding windows per client IP, kept in Redis as sorted sets (score = admission time in
ms, member = request id):

* ``<prefix>free:{<ip>}``  -- Kilo-hosted free-model requests, every caller: at most
  ``free_limit`` (200) per ``free_window_seconds`` (1 h), else 429 (`FREE_MODEL_LIMIT`).
* ``<prefix>promo:{<ip>}`` -- anonymous Kilo-hosted free-model requests: anonymous callers of
  any free model are refused once it holds ``promotion_limit`` (10 000) entries within
  ``promotion_window_seconds`` (24 h), with the 401 promotion refusal (`PROMOTION_LIMIT`).

Checking and counting happen together in ONE Lua script per request (one round trip, atomic on
the Redis server), so the limits are exact across any number of gateway replicas sharing one
Redis: of 260 concurrent requests from one IP exactly 200 are admitted. A request is counted
exactly when it is admitted as a Kilo free-model request, which is when the contract logs its
free-model usage (2.8); a refused request is never counted, and an anonymous request for a
generic (non-Kilo) free model is checked against the promotion window but not counted.

* Time comes from Redis ``TIME`` inside the script, so replicas with skewed clocks agree.
* The member is the request id, so a retry of the same request id is counted once (the check
  still runs: a retry arriving when the window is full is refused like any other request).
  The request id must therefore be one the gateway generated (Envoy's ``x-request-id`` with
  ``preserve_external_request_id`` off), never one a client can choose and reuse. An empty
  request id is replaced by a random one, so it can never collapse many requests into one.
* Old entries are trimmed with ZREMRANGEBYSCORE and every written key gets PEXPIRE = its
  window, so the key of an idle IP vanishes by itself.
* Both keys of an IP carry the hash tag ``{<ip>}``, so they live in one Redis Cluster slot and
  the script is cluster-safe. The key prefix must therefore not contain ``{`` or ``}``.
* The script is registered with ``register_script``: EVALSHA, falling back to SCRIPT LOAD +
  EVALSHA when the server answers NOSCRIPT (after a restart or a failover).

Failure policy: the limiter FAILS OPEN. If Redis is unreachable, fails, or does not answer
in time, `admit` returns `ADMITTED`, logs an error (exception type only, no address or secret)
and increments ``llm_gateway_rate_limit_errors_total``. "In time" is the client's
``socket_timeout`` and, because redis-py 8 retries connection errors and timeouts up to 10 times
with backoff by default (a 0.2 s socket timeout became ~7 s in a test), also an overall
deadline per `admit` call, ``timeout_seconds`` (default 1 s; None = only the client's own
limits). A deadline hit after the script ran on the server leaves that request counted, which
only errs towards the limit. A client whose connection pool is exhausted also fails open
(redis-py's default pool raises MaxConnectionsError past 100 concurrent commands), so give the
client a pool that waits instead (``BlockingConnectionPool``) or one large enough for the
replica's concurrency. Refusing every free-model request while the
limiter's store is down would be an outage of the free tier; letting them through for the
duration costs at most some free inference. Such requests are not counted afterwards.

Metrics: ``llm_gateway_rate_limit_decisions_total{decision}`` counts every returned decision
(``admitted`` includes fail-open admissions), ``llm_gateway_rate_limit_errors_total`` the
fail-open ones.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import uuid

import redis.asyncio
from prometheus_client import Counter
from redis.exceptions import RedisError

from extproc import logs, metrics

logger = logging.getLogger(__name__)

RATE_LIMIT_ERRORS = Counter(
    "llm_gateway_rate_limit_errors",
    "Rate-limit checks that failed (Redis unreachable, slow or erroring) and were let through.",
)
RATE_LIMIT_DECISIONS = Counter(
    "llm_gateway_rate_limit_decisions",
    "Rate-limit decisions, by outcome (fail-open admissions count as admitted).",
    ["decision"],
)


class Admission(enum.Enum):
    ADMITTED = "admitted"
    FREE_MODEL_LIMIT = "free_model_limit"
    PROMOTION_LIMIT = "promotion_limit"


# A zero series per decision from the start, so a rejection rate is 0 rather than absent.
for _admission in Admission:
    RATE_LIMIT_DECISIONS.labels(decision=_admission.value)


# KEYS[1] free window, KEYS[2] promotion window (same hash slot).
# ARGV: kilo_free (0/1), anonymous (0/1), member, free_limit, free_window_ms,
#       promotion_limit, promotion_window_ms.
# Returns 0 admitted, 1 free-model limit, 2 promotion limit.
_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local kilo_free = ARGV[1] == '1'
local anonymous = ARGV[2] == '1'
local member = ARGV[3]
local free_limit = tonumber(ARGV[4])
local free_window = tonumber(ARGV[5])
local promo_limit = tonumber(ARGV[6])
local promo_window = tonumber(ARGV[7])

if kilo_free then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - free_window)
  if redis.call('ZCARD', KEYS[1]) >= free_limit then
    return 1
  end
end
if anonymous then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - promo_window)
  if redis.call('ZCARD', KEYS[2]) >= promo_limit then
    return 2
  end
end
if kilo_free then
  redis.call('ZADD', KEYS[1], 'NX', now, member)
  redis.call('PEXPIRE', KEYS[1], free_window)
  if anonymous then
    redis.call('ZADD', KEYS[2], 'NX', now, member)
    redis.call('PEXPIRE', KEYS[2], promo_window)
  end
end
return 0
"""

_RESULTS = {0: Admission.ADMITTED, 1: Admission.FREE_MODEL_LIMIT, 2: Admission.PROMOTION_LIMIT}


class FreeModelLimiter:
    """Atomic check-and-count of the free-model (2.4) and promotion (2.7) limits per IP."""

    def __init__(
        self,
        redis: redis.asyncio.Redis,
        *,
        free_limit: int = 200,
        free_window_seconds: int = 3600,
        promotion_limit: int = 10_000,
        promotion_window_seconds: int = 86_400,
        key_prefix: str = "gw:rl:",
        timeout_seconds: float | None = 1.0,
    ) -> None:
        if free_limit < 0 or promotion_limit < 0:
            raise ValueError("rate limits must not be negative")
        if free_window_seconds <= 0 or promotion_window_seconds <= 0:
            raise ValueError("rate-limit windows must be positive")
        if timeout_seconds is not None and timeout_seconds <= 0:
            raise ValueError("the rate-limit timeout must be positive (or None)")
        if "{" in key_prefix or "}" in key_prefix:
            raise ValueError("the rate-limit key prefix must not contain '{' or '}' (hash tag)")
        self._script = redis.register_script(_SCRIPT)
        self._free_limit = free_limit
        self._free_window_ms = int(free_window_seconds * 1000)
        self._promotion_limit = promotion_limit
        self._promotion_window_ms = int(promotion_window_seconds * 1000)
        self._prefix = key_prefix
        self._timeout = timeout_seconds

    def free_key(self, ip: str) -> str:
        return f"{self._prefix}free:{{{ip}}}"

    def promotion_key(self, ip: str) -> str:
        return f"{self._prefix}promo:{{{ip}}}"

    async def admit(self, ip: str, *, kilo_free: bool, anonymous: bool, request_id: str) -> Admission:
        """Check the IP's limits and, when admitted as a Kilo free-model request, count it.

        One Redis round trip; fails open (see the module docstring).
        """
        member = request_id or f"no-request-id:{uuid.uuid4().hex}"
        try:
            async with asyncio.timeout(self._timeout):
                code = await self._script(
                    keys=[self.free_key(ip), self.promotion_key(ip)],
                    args=[
                        1 if kilo_free else 0,
                        1 if anonymous else 0,
                        member,
                        self._free_limit,
                        self._free_window_ms,
                        self._promotion_limit,
                        self._promotion_window_ms,
                    ],
                )
            decision = _RESULTS[int(code)]
        except (RedisError, OSError, asyncio.TimeoutError, KeyError, ValueError, TypeError) as exc:
            # KeyError/ValueError/TypeError: an unexpected script reply; fail open just the same.
            RATE_LIMIT_ERRORS.inc()
            logger.error(
                "rate limiter unavailable; failing open",
                extra={"request_id": request_id, **logs.failure(exc, "redis EVALSHA free-model limiter")},
            )
            decision = Admission.ADMITTED
        metrics.child(RATE_LIMIT_DECISIONS, decision.value).inc()
        return decision
