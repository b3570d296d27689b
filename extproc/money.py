"""Money is integer microdollars; upstream USD amounts are converted exactly, not via floats."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

__all__ = ["MICRODOLLARS_PER_USD", "parse_usd", "usd_to_microdollars"]

MICRODOLLARS_PER_USD = Decimal(1_000_000)
# Largest USD amount whose microdollars still fit the ledger's bigint columns; anything larger
# is garbage from upstream and must not reach an insert (or build a gigantic int).
_MAX_USD = Decimal((2**63 - 1) // 1_000_000)


def parse_usd(value: object) -> Decimal | None:
    """The exact decimal of an upstream USD amount, or None when it is not a usable number.

    A float goes through its shortest repr, the decimal the upstream actually wrote, so
    0.0000145 stays 0.0000145 instead of the binary 0.00001449999...
    """
    if isinstance(value, bool):  # bool is an int subclass, but never an amount
        return None
    if isinstance(value, float):
        value = repr(value)
    elif not isinstance(value, (int, str, Decimal)):
        return None
    try:
        amount = Decimal(value)
    except InvalidOperation:
        return None
    if not amount.is_finite() or amount.copy_abs() > _MAX_USD:
        return None
    return amount


def usd_to_microdollars(value: object) -> int:
    """USD to integer microdollars, rounding half away from zero; 0 for anything unusable."""
    amount = parse_usd(value)
    if amount is None:
        return 0
    return int((amount * MICRODOLLARS_PER_USD).to_integral_value(rounding=ROUND_HALF_UP))
