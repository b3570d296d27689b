"""The one typed configuration of the gateway: defaults < YAML file < secrets directory < environment.

Operator-facing names that other tools rely on are fixed: ``DATABASE_URL``, ``REDIS_URL``,
``NEXTAUTH_SECRET`` and ``<PROVIDER>_API_URL`` / ``<PROVIDER>_API_KEY`` for every provider of
the contract's table (behaviour.md 3.1). Everything else is ``LLM_GATEWAY_<FIELD>`` in the
environment or ``<field>:`` in the YAML file named by ``LLM_GATEWAY_CONFIG``. The fixed names
may also be files in the directory named by ``LLM_GATEWAY_SECRETS_DIR``.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from extproc.catalogue import (
    DEFAULT_FREE_MODELS,
    DEFAULT_PROMOTIONS,
    DEFAULT_RATE_LIMITED_TO_DEATH,
    Catalogue,
    FreeModel,
    Promotion,
)

MIB = 1024 * 1024

# Contract 3.1. `custom` is not here: its URL and key come from the custom_llm row.
DEFAULT_PROVIDERS: dict[str, dict[str, Any]] = {
    "openrouter": {"api_url": "https://openrouter.ai/api/v1", "has_generation_endpoint": True},
    "gigapotato": {"api_url": None, "has_generation_endpoint": False},
    "corethink": {"api_url": "https://api.corethink.ai/v1/code", "has_generation_endpoint": False},
    "martian": {"api_url": "https://api.withmartian.com/v1", "has_generation_endpoint": False},
    "mistral": {"api_url": "https://api.mistral.ai/v1", "has_generation_endpoint": False},
    "vercel": {"api_url": "https://ai-gateway.vercel.sh/v1", "has_generation_endpoint": True},
}

# The environment names of providers whose id differs from their secret's prefix.
PROVIDER_ENV_PREFIX: dict[str, str] = {"vercel": "VERCEL_AI_GATEWAY"}


def provider_env_prefix(provider_id: str) -> str:
    return PROVIDER_ENV_PREFIX.get(provider_id, provider_id.upper().replace("-", "_"))


class Provider(BaseModel):
    """One upstream: where it lives, its key, and whether it has a generation endpoint."""

    model_config = {"frozen": True}

    id: str
    api_url: str | None = None
    api_key: SecretStr | None = None
    has_generation_endpoint: bool = False

    @field_validator("api_url")
    @classmethod
    def _url_is_http(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"provider URL must be http(s)://host[:port][/path], got {value!r}")
        return value.rstrip("/")

    @property
    def configured(self) -> bool:
        return self.api_url is not None

    @property
    def tls(self) -> bool:
        return urlsplit(self.api_url or "").scheme == "https"

    @property
    def host(self) -> str:
        return urlsplit(self.api_url or "").hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.api_url or "")
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def authority(self) -> str:
        default_port = 443 if self.tls else 80
        return self.host if self.port == default_port else f"{self.host}:{self.port}"

    @property
    def base_path(self) -> str:
        return urlsplit(self.api_url or "").path.rstrip("/")

    @property
    def cluster(self) -> str:
        """The Envoy cluster, and the value of the routing header that selects it."""
        return f"provider_{self.id}"


class _FixedNamesSource(PydanticBaseSettingsSource):
    """Values under the operators' fixed names (``DATABASE_URL``, ``<PROVIDER>_API_KEY``, ...)
    from `lookup`: the environment, or a secrets directory with one file per name (the
    Docker and Kubernetes secrets convention), so keys never need to be in a config file."""

    def __init__(
        self, settings_cls: type[BaseSettings], lookup: Callable[[str], str | None], *, aliased_fields: bool
    ) -> None:
        super().__init__(settings_cls)
        self.lookup = lookup
        self.aliased_fields = aliased_fields

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        if self.aliased_fields:  # the environment source already reads these from os.environ
            for name, field in self.settings_cls.model_fields.items():
                alias = field.validation_alias
                if isinstance(alias, str) and (value := self.lookup(alias)):
                    values[name] = value
        providers: dict[str, dict[str, str]] = {}
        for provider_id in DEFAULT_PROVIDERS:
            prefix = provider_env_prefix(provider_id)
            found = {
                key: value
                for key, suffix in (("api_url", "API_URL"), ("api_key", "API_KEY"))
                if (value := self.lookup(f"{prefix}_{suffix}"))
            }
            if found:
                providers[provider_id] = found
        if providers:
            values["providers"] = providers
        return values


def _secret_file(directory: Path) -> Callable[[str], str | None]:
    def lookup(name: str) -> str | None:
        path = directory / name
        return path.read_text().strip() if path.is_file() else None

    return lookup


def _default_ca_bundle() -> str:
    cafile = ssl.get_default_verify_paths().cafile
    if cafile and Path(cafile).exists():
        return cafile
    import certifi  # shipped with httpx/aiohttp's dependency tree; the fallback on odd systems

    return certifi.where()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LLM_GATEWAY_", extra="ignore", frozen=True, populate_by_name=True
    )

    # Client-facing listener (Envoy).
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    envoy_admin_port: int = 9901
    # Number of trusted proxies in front of Envoy; the client IP is the address they reported.
    trusted_proxy_hops: int = Field(default=0, ge=0)
    # The client's body limit, enforced by the ext_proc (a JSON 413). Envoy buffers up to
    # `envoy_request_buffer_bytes`: the body it forwards is the shaped one, which is larger.
    max_request_body_bytes: int = Field(default=8 * MIB, gt=0)
    request_shaping_headroom_bytes: int = Field(default=1 * MIB, ge=0)
    # Contract 2.15: the upstream request is aborted after 10 minutes; idle streams sooner.
    upstream_timeout_seconds: int = Field(default=600, gt=0)
    stream_idle_timeout_seconds: int = Field(default=300, gt=0)
    ca_bundle: str = Field(default_factory=_default_ca_bundle)

    # The ext_proc gRPC server and its metrics endpoint.
    extproc_host: str = "127.0.0.1"
    extproc_port: int = 50051
    # Processes behind Envoy's ext_proc cluster (ports extproc_port + i).
    extproc_workers: int = Field(default=1, ge=1)
    # Where Envoy dials the ext_proc when that is not where it binds (containers: a hostname).
    extproc_connect_host: str | None = None
    # Envoy waits this long for each ext_proc reply before failing the request closed.
    extproc_message_timeout_ms: int = Field(default=5000, gt=0)
    extproc_max_message_bytes: int = Field(default=64 * MIB, gt=0)
    # Shutdown (SIGTERM), sized to fit Kubernetes' default terminationGracePeriodSeconds (30)
    # with room to spare; README "Deploying" maps them to Envoy's and Docker's timeouts.
    # The ext_proc: streams in flight get this long to finish after health turns NOT_SERVING.
    extproc_drain_seconds: float = Field(default=20.0, ge=0)
    # Before that drain, the ext_proc keeps taking new streams this long after SIGTERM (health
    # already NOT_SERVING): for an Envoy beside it that is told to stop at the same moment and
    # drains its listeners first (README "Stopping"), so the requests it still takes are served.
    extproc_stop_delay_seconds: float = Field(default=0.0, ge=0)
    # Then the ext_proc hands its last usage records over, and the ledger writer finishes the
    # writes it has started, within this; records still waiting on a generation lookup stay in
    # the outbox for the next writer (or another replica).
    accounting_drain_seconds: float = Field(default=5.0, ge=0)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464
    # The ledger writer process (`llm-gateway ledger-writer`): its outbox consumer name, kept
    # across restarts so a restarted writer takes back what it had read but not written, and
    # its metrics port when it runs on its own (under `llm-gateway run` the stack serves every
    # process's metrics on metrics_port).
    ledger_consumer: str = Field(default_factory=lambda: f"{socket.gethostname()}:ledger")
    # A replica that goes this long without renewing its heartbeat in Redis is taken for dead:
    # the ledger writer then moves the write-ahead records of its requests in flight into the
    # outbox (accounting/inflight.py). Longer than any pause a live replica has (a Redis
    # failover, a long GC), short enough that the rows of a crash arrive soon.
    inflight_ttl_seconds: float = Field(default=10.0, gt=0)
    ledger_metrics_port: int = 9465
    # Attempts at a record whose write fails with an error that is neither a lost connection
    # (retried until Postgres is back) nor refused data (dead-lettered at once), before it goes
    # to the dead letters too: no record is retried forever.
    ledger_max_attempts: int = Field(default=20, ge=1)

    # Dependencies. Unset: `llm-gateway run` and the tests start embedded ones.
    database_url: SecretStr | None = Field(default=None, validation_alias="DATABASE_URL")
    redis_url: SecretStr | None = Field(default=None, validation_alias="REDIS_URL")
    nextauth_secret: SecretStr | None = Field(default=None, validation_alias="NEXTAUTH_SECRET")

    # Admission (contract 2.4-2.13, 4). Tables and limits are the contract's values.
    free_models: tuple[FreeModel, ...] = Field(
        default_factory=lambda: tuple(FreeModel.model_validate(m) for m in DEFAULT_FREE_MODELS)
    )
    rate_limited_to_death: tuple[str, ...] = DEFAULT_RATE_LIMITED_TO_DEATH
    promotions: tuple[Promotion, ...] = Field(
        default_factory=lambda: tuple(Promotion.model_validate(p) for p in DEFAULT_PROMOTIONS)
    )
    free_model_limit: int = Field(default=200, gt=0)  # per IP ...
    free_model_window_seconds: int = Field(default=3600, gt=0)  # ... per hour
    promotion_limit: int = Field(default=10_000, gt=0)  # anonymous per IP ...
    promotion_window_seconds: int = Field(default=24 * 3600, gt=0)  # ... per day
    # `|`-separated e-mail domains whose users are refused (always anonymous).
    blacklist_domains: str = Field(default="", validation_alias="BLACKLIST_DOMAINS")
    employee_organization_id: str = "9d278969-5453-4ae3-a51f-a8d2274a7b56"
    app_url: str = "https://app.kilo.ai"
    # The first top-up bonus quoted in the first-time 402 (24 until 2025-10-14T08:01Z).
    first_topup_bonus_usd: int = 20
    # How long the ext_proc trusts a cached user, membership or balance before asking
    # Postgres again, and how long past that it keeps serving them while Postgres is down.
    directory_cache_seconds: float = Field(default=5.0, ge=0)
    directory_stale_seconds: float = Field(default=600.0, ge=0)
    # Postgres queries on the request path give up after this; the request gets a 503.
    directory_query_timeout_seconds: float = Field(default=2.0, gt=0)

    # The price catalogue (extproc/pricing/, issue 23): each priced provider's `/models` is
    # fetched by one replica of the fleet at a time once the stored table is older than
    # `price_catalogue_refresh_seconds`; every replica looks (and loads newer tables from
    # Postgres) every `price_catalogue_check_seconds`. A fetch gives up after the timeout.
    price_catalogue_refresh_seconds: float = Field(default=600.0, gt=0)
    price_catalogue_check_seconds: float = Field(default=30.0, gt=0)
    price_catalogue_fetch_timeout_seconds: float = Field(default=30.0, gt=0)
    # The shortest reply a request is admitted with when its spend bound does not fit the
    # balance and `max_tokens` is lowered to fit (issue 23, part 4).
    spend_minimum_reply_tokens: int = Field(default=256, ge=1)
    # Spend holds (issue 23, extproc/admission; the decision beside contract 2.12 in
    # docs/ARCHITECTURE.md). Off: the contract's rule exactly (a positive balance admits).
    spend_holds: bool = Field(default=True, validation_alias="SPEND_HOLDS")
    # Redis unreachable at admission: `open` falls back to the contract's check (logged,
    # counted, alerted), `refuse` answers the contract's 503.
    spend_holds_redis_down: Literal["open", "refuse"] = Field(default="open", validation_alias="SPEND_HOLDS_REDIS_DOWN")
    spend_hold_timeout_seconds: float = Field(default=1.0, gt=0)

    # Routing (contract 3). BYOK keys are stored AES-256-GCM encrypted with this key (base64
    # of 32 bytes); unset, BYOK routing is off.
    byok_encryption_key: SecretStr | None = Field(default=None, validation_alias="BYOK_ENCRYPTION_KEY")
    # Emergency switch of the Vercel A/B (contract 3.5): route every eligible model past the
    # first two exclusions.
    universal_vercel_routing: bool = Field(default=False, validation_alias="ENABLE_UNIVERSAL_VERCEL_ROUTING")
    # Networks a custom LLM may live in although they are not public (e.g. "10.0.0.0/8").
    custom_llm_allowed_networks: tuple[str, ...] = ()
    # DNS servers ("host" or "host:port") the custom-LLM address check asks; empty: the
    # system's resolver (/etc/resolv.conf).
    custom_llm_dns_servers: tuple[str, ...] = ()

    # Upstream resilience (issue 25). Envoy retries an attempt that failed before any byte
    # reached the client: a connection it could not make, a refused or reset-before-sent
    # stream, or one of these statuses; never another 4xx, never once the response started.
    upstream_retries: int = Field(default=1, ge=0, le=5)
    upstream_retry_statuses: tuple[int, ...] = (502, 503)
    # A 429 with Retry-After cools that provider and model for that long, capped here; this
    # many 5xx within the window cool it for `cooldown_seconds`. Cooled providers go last.
    cooldown_max_seconds: int = Field(default=300, gt=0)
    cooldown_5xx_burst: int = Field(default=5, gt=0)
    cooldown_5xx_window_seconds: int = Field(default=10, gt=0)
    cooldown_seconds: int = Field(default=30, gt=0)

    # Upstream identification headers (contract 2.15).
    http_referer: str = "https://kilocode.ai"
    x_title: str = "Kilo Code"

    providers: dict[str, Provider] = Field(default_factory=dict)

    # Side services (behaviour.md 8.1, 8.3, 7.5; extproc/side/). Each is off while its URL or
    # key is unset, and fail-open: an outage is logged and counted, never seen by a client.
    abuse_service_url: str | None = Field(default=None, validation_alias="ABUSE_SERVICE_URL")
    abuse_cf_access_client_id: SecretStr | None = Field(default=None, validation_alias="ABUSE_CF_ACCESS_CLIENT_ID")
    abuse_cf_access_client_secret: SecretStr | None = Field(
        default=None, validation_alias="ABUSE_CF_ACCESS_CLIENT_SECRET"
    )
    # Contract 8.3: the classification is awaited at most this long after the upstream responded.
    abuse_classify_budget_seconds: float = Field(default=2.0, ge=0)
    o11y_service_url: str | None = Field(default=None, validation_alias="O11Y_SERVICE_URL")
    o11y_kilo_gateway_client_secret: SecretStr | None = Field(
        default=None, validation_alias="O11Y_KILO_GATEWAY_CLIENT_SECRET"
    )
    posthog_api_key: SecretStr | None = Field(default=None, validation_alias="POSTHOG_API_KEY")
    posthog_url: str = "https://us.i.posthog.com"
    # Each side-service call gives up after this (connection, request and answer together).
    side_service_timeout_seconds: float = Field(default=10.0, gt=0)

    # Local stack (`llm-gateway run`): where embedded services keep their data, and the mock.
    data_dir: Path = Path(".data")
    mock_upstream_port: int = 8090
    # fsync and Redis' append-only file for the embedded services; tests turn them off.
    embedded_durable: bool = True

    @field_validator("providers", mode="before")
    @classmethod
    def _provider_ids(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {key: {**(spec or {}), "id": key} for key, spec in value.items()}
        return value

    @field_validator("abuse_service_url", "o11y_service_url", mode="before")
    @classmethod
    def _service_url(cls, value: Any) -> Any:
        """A blank URL leaves the service off; a trailing slash is dropped (paths are appended)."""
        if isinstance(value, str):
            return value.strip().rstrip("/") or None
        return value

    @field_validator("posthog_url")
    @classmethod
    def _posthog_url(cls, value: str) -> str:
        return value.strip().rstrip("/")

    @field_validator("upstream_retry_statuses")
    @classmethod
    def _retry_statuses(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        """A 4xx is the request's own fault (or a limit): sending it again cannot help."""
        if any(not 500 <= status <= 599 for status in value):
            raise ValueError(f"upstream_retry_statuses must be 5xx statuses, got {list(value)}")
        return value

    @property
    def envoy_request_buffer_bytes(self) -> int:
        """Envoy's request buffer: the client's limit plus room for what shaping adds (tool
        repair, provider fields, a translation), so a body just within the limit still fits
        once the ext_proc has rewritten it."""
        return self.max_request_body_bytes + self.request_shaping_headroom_bytes

    @cached_property
    def catalogue(self) -> Catalogue:
        return Catalogue.build(self.free_models, self.rate_limited_to_death)

    @cached_property
    def blacklisted_domains(self) -> tuple[str, ...]:
        return tuple(d.strip().lower() for d in self.blacklist_domains.split("|") if d.strip())

    @cached_property
    def routable_providers(self) -> dict[str, Provider]:
        return {key: p for key, p in self.providers.items() if p.configured}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest priority first; dicts are deep-merged, so a YAML file or an environment
        # variable can change one provider's key without restating the provider table.
        sources: list[PydanticBaseSettingsSource] = [
            init_settings,
            env_settings,
            _FixedNamesSource(settings_cls, os.environ.get, aliased_fields=False),
        ]
        secrets_dir = os.environ.get("LLM_GATEWAY_SECRETS_DIR")
        if secrets_dir:
            if not Path(secrets_dir).is_dir():
                raise FileNotFoundError(f"LLM_GATEWAY_SECRETS_DIR names a missing directory: {secrets_dir}")
            sources.append(_FixedNamesSource(settings_cls, _secret_file(Path(secrets_dir)), aliased_fields=True))
        config_file = os.environ.get("LLM_GATEWAY_CONFIG")
        if config_file:
            if not Path(config_file).is_file():
                raise FileNotFoundError(f"LLM_GATEWAY_CONFIG names a missing file: {config_file}")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        sources.append(InitSettingsSource(settings_cls, init_kwargs={"providers": DEFAULT_PROVIDERS}))
        return tuple(sources)


def load_settings(**overrides: Any) -> Settings:
    return Settings(**overrides)
