"""Pure identity rules: blacklisted e-mail domains (contract 2.5), org id format, employees (8.2)."""

from __future__ import annotations

import re
from collections.abc import Iterable

# ASCII hex only and the whole string (fullmatch): a non-canonical id never reaches the DB query.
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
EMPLOYEE_EMAIL_SUFFIXES = ("@kilo.ai", "@kilocode.ai")


def email_blacklisted(email: str, domains: Iterable[str]) -> bool:
    """The domain itself or any subdomain of it; `domains` are already lowercased."""
    email = email.lower()
    return any(email.endswith(f"@{domain}") or email.endswith(f".{domain}") for domain in domains)


def is_uuid(value: str) -> bool:
    return _UUID.fullmatch(value) is not None


def is_employee(email: str | None, organization_id: str | None, employee_org_id: str) -> bool:
    """Employees' requests are logged in full (contract 8.2). Case-sensitive, as the reference."""
    return (email is not None and email.endswith(EMPLOYEE_EMAIL_SUFFIXES)) or organization_id == employee_org_id
