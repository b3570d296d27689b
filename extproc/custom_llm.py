"""Custom LLMs (contract 3.4): an organisation's own endpoint, looked up in `custom_llm`.

Their `base_url` is any host. Before a request goes there, every address the host resolves to
must be public: loopback, private, link-local (cloud metadata), multicast and reserved addresses
are refused unless an operator listed the network in `custom_llm_allowed_networks` (server-side
request forgery). Envoy then connects to an address that passed this check, the one handed to
it with the request (`PinnedUpstream.address`), never resolving the host again: a DNS answer
that changes after the check (rebinding) cannot move the connection. The host name still goes
in Host and SNI, and the certificate is verified against it.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiodns
import asyncpg
from pydantic import SecretStr

from extproc.db.cache import TtlCache, fetch
from extproc.settings import Provider, Settings
from extproc.translate.chat import ChunkWriter, ProviderRequest, ResponseTranslator
from extproc.translate.chat_to_anthropic import AnthropicTranslator, anthropic_request
from extproc.translate.chat_to_responses import PhaseCallback, ResponsesTranslator, responses_request
from extproc.translate.openai_phase import OPENAI_BASE_URL

if TYPE_CHECKING:
    from extproc.catalogue import FreeModel

# This kind is forwarded as-is (with `extra_body` merged); the others are translated.
FORWARDABLE_KIND = "openai-compatible"
TRANSLATED_KINDS = frozenset({"anthropic", "openai"})

_SQL = """
SELECT public_id, internal_id, provider, base_url, api_key, organization_ids, extra_body,
       max_completion_tokens, force_reasoning
FROM custom_llm WHERE public_id = $1
"""


@dataclass(frozen=True, slots=True)
class PinnedUpstream:
    """A custom LLM's upstream and the checked address Envoy must connect to."""

    provider: Provider
    address: str  # "ip:port" ("[ip]:port" for IPv6)


def _address_with_port(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class UnsafeCustomLlmUrl(Exception):
    """The custom LLM's URL is malformed or points at a network the gateway must not reach."""


@dataclass(frozen=True, slots=True)
class CustomLlm:
    public_id: str
    internal_id: str
    kind: str  # the row's `provider`: anthropic, openai, openai-compatible
    base_url: str
    api_key: str
    organization_ids: tuple[str, ...]
    extra_body: dict[str, Any] | None
    max_completion_tokens: int
    force_reasoning: bool

    def provider_request(self, body: dict[str, Any], *, legacy_extension: bool) -> ProviderRequest:
        """The translated request for an `anthropic` or `openai` row (contract 3.4)."""
        if self.kind == "anthropic":
            return anthropic_request(
                body,
                model=self.internal_id,
                api_key=self.api_key,
                default_max_tokens=self.max_completion_tokens,
                legacy_extension=legacy_extension,
            )
        return responses_request(
            body,
            model=self.internal_id,
            api_key=self.api_key,
            force_reasoning=self.force_reasoning,
            legacy_extension=legacy_extension,
        )

    @property
    def remembers_phases(self) -> bool:
        """Contract 3.4: OpenAI's `phase` is persisted for OpenAI's own endpoint only."""
        return self.kind == "openai" and self.base_url == OPENAI_BASE_URL

    def response_translator(self, *, legacy_extension: bool, on_phase: PhaseCallback | None = None) -> ResponseTranslator:
        writer = ChunkWriter(model=self.public_id, legacy_extension=legacy_extension)
        if self.kind == "anthropic":
            return AnthropicTranslator(writer)
        return ResponsesTranslator(writer, on_phase)


def martian_llm(entry: FreeModel, martian: Provider) -> CustomLlm:
    """Contract 3.4: the Martian free model is a synthetic custom LLM of kind `openai`."""
    return CustomLlm(
        public_id=entry.public_id,
        internal_id=entry.internal_id,
        kind="openai",
        base_url=martian.api_url or "",
        api_key=martian.api_key.get_secret_value() if martian.api_key is not None else "",
        organization_ids=(),
        extra_body=None,
        max_completion_tokens=entry.max_completion_tokens,
        force_reasoning=True,
    )


def address_allowed(address: str, allowed: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    ip = ipaddress.ip_address(address)
    if any(ip in network for network in allowed):
        return True
    return ip.is_global and not (ip.is_multicast or ip.is_reserved)


class CustomLlms:
    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self.pool = pool
        self.timeout = settings.directory_query_timeout_seconds
        self.allowed = tuple(ipaddress.ip_network(n, strict=False) for n in settings.custom_llm_allowed_networks)
        self._rows: TtlCache[str, CustomLlm | None] = TtlCache(
            "custom_llm", settings.directory_cache_seconds, settings.directory_stale_seconds
        )
        # Per host, its addresses once all of them passed the check (empty: refused). The
        # answer is reused for a minute: the connection goes to a checked address either way.
        self._hosts: TtlCache[str, tuple[str, ...]] = TtlCache("custom_llm_dns", 60.0, 0.0)
        self._resolver: aiodns.DNSResolver | None = None
        self._dns_servers = list(settings.custom_llm_dns_servers) or None

    async def get(self, public_id: str) -> CustomLlm | None:
        async def load() -> CustomLlm | None:
            rows = await fetch(self.pool, self.timeout, _SQL, public_id)
            if not rows:
                return None
            row = rows[0]
            extra = row["extra_body"]
            return CustomLlm(
                public_id=row["public_id"],
                internal_id=row["internal_id"],
                kind=row["provider"],
                base_url=row["base_url"],
                api_key=row["api_key"],
                organization_ids=tuple(str(o) for o in (row["organization_ids"] or ())),
                extra_body=extra if isinstance(extra, dict) else None,
                max_completion_tokens=row["max_completion_tokens"],
                force_reasoning=row["force_reasoning"],
            )

        return await self._rows.get(public_id, load)

    async def upstream(self, llm: CustomLlm) -> PinnedUpstream:
        """The row as a provider and the address to connect to, once every address its host
        resolves to is one the gateway may reach."""
        try:
            provider = Provider(id="custom", api_url=llm.base_url, api_key=SecretStr(llm.api_key))
        except ValueError as exc:
            raise UnsafeCustomLlmUrl(f"invalid base URL: {exc}") from None
        addresses = await self._hosts.get(provider.host, lambda: self._safe_addresses(provider.host))
        if not addresses:
            raise UnsafeCustomLlmUrl(f"{provider.host} resolves to an address that is not allowed")
        return PinnedUpstream(provider, _address_with_port(addresses[0], provider.port))

    async def _safe_addresses(self, host: str) -> tuple[str, ...]:
        """The host's addresses if it has some and all are allowed, else ()."""
        try:
            return (host,) if address_allowed(host, self.allowed) else ()
        except ValueError:
            pass  # not an IP literal: a name to resolve
        if self._resolver is None:  # created on first use, inside the running loop
            self._resolver = aiodns.DNSResolver(nameservers=self._dns_servers, timeout=2.0, tries=2)
        try:
            result = await self._resolver.getaddrinfo(host, type=socket.SOCK_STREAM)
        except aiodns.error.DNSError:
            return ()
        addresses = tuple(dict.fromkeys(node.addr[0].decode() for node in result.nodes))
        return addresses if addresses and all(address_allowed(a, self.allowed) for a in addresses) else ()

