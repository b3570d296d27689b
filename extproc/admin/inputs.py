"""The operator commands' input validation: pure, and run before any connection is made."""

from __future__ import annotations

import re
import uuid
from typing import Any

import orjson

from extproc.money import MICRODOLLARS_PER_USD, parse_usd

ROLES = ("owner", "member", "billing_manager")
PLANS = ("teams", "enterprise")

_PLAIN_DECIMAL = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)", re.ASCII)
_EMAIL = re.compile(r"[^@\s]+@[^@\s.][^@\s]*\.[^@\s.][^@\s]*")


class AdminError(Exception):
    """Bad input (unknown id, invalid value): exit 2, nothing changed."""


def usd_to_exact_microdollars(text: str, *, what: str = "USD amount", allow_zero: bool = True) -> int:
    """Exact microdollars of a USD string: "0.000001" -> 1, "10" -> 10_000_000.

    Negative, non-numeric (including exponents and NaN) or more than 6 decimals is an error.
    """
    value = text.strip() if isinstance(text, str) else ""
    negative = value.startswith("-")
    digits = value[1:] if negative else value.removeprefix("+")
    if not _PLAIN_DECIMAL.fullmatch(digits):
        raise AdminError(f"{what} must be a plain decimal number of US dollars such as 10 or 0.5, got {text!r}")
    amount = parse_usd(digits)
    if amount is None:
        raise AdminError(f"{what} is too large for a microdollar amount, got {text!r}")
    if negative and amount != 0:
        raise AdminError(f"{what} must not be negative, got {text!r}")
    micro = amount * MICRODOLLARS_PER_USD  # exact: at most 19 significant digits
    if micro != micro.to_integral_value():
        raise AdminError(f"{what} has more than 6 decimals (1 microdollar = 0.000001 USD), got {text!r}")
    if micro == 0 and not allow_zero:
        raise AdminError(f"{what} must be greater than zero, got {text!r}")
    return int(micro)


def normalize_email(text: str) -> str:
    email = text.strip().lower()
    if not _EMAIL.fullmatch(email):
        raise AdminError(f"invalid email address: {text!r}")
    return email


def parse_org_id(text: str) -> str:
    try:
        return str(uuid.UUID(text.strip()))
    except (ValueError, AttributeError):
        raise AdminError(f"invalid organization id (not a UUID): {text!r}") from None


def parse_user_id(text: str) -> str:
    user_id = text.strip()
    if not user_id:
        raise AdminError("the user id must not be empty")
    return user_id


def parse_settings_json(text: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        raise AdminError(f"invalid JSON for the organization settings: {error}") from None
    if not isinstance(value, dict):
        raise AdminError(f"the organization settings must be a JSON object, got {type(value).__name__}")
    return value


def parse_nonempty(text: str, what: str) -> str:
    value = text.strip()
    if not value:
        raise AdminError(f"{what} must not be empty")
    return value


def parse_byok_provider(text: str, known: tuple[str, ...]) -> str:
    provider = text.strip().lower()
    if provider not in known:
        raise AdminError(f"unknown BYOK provider {text!r}: expected one of {', '.join(known)}")
    return provider

