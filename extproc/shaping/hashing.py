"""The provider-specific hash H of behaviour.md 2.14 (prompt_cache_key, safety_identifier)."""

from __future__ import annotations

import base64
import hashlib

# Part of every hash: changing it changes every id the upstreams have seen (and their caches).
_SALT = "d20250815"
_OPENROUTER_PEPPER = "henk is a boss"


def _pepper(provider_id: str, provider_base_url: str) -> str:
    # Each upstream sees different ids for the same user, so they cannot be correlated across
    # providers; custom LLMs are told apart by their URL because they all share the id "custom".
    if provider_id == "custom":
        return provider_base_url
    if provider_id == "openrouter":
        return _OPENROUTER_PEPPER
    return provider_id


def provider_hash(payload: str, provider_id: str, provider_base_url: str) -> str:
    """base64 (standard alphabet, padded) of SHA-256 over salt + pepper + payload, UTF-8."""
    data = (_SALT + _pepper(provider_id, provider_base_url) + payload).encode("utf-8")
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")
