"""Steps 2.5 and 2.6: who is calling. Every authentication failure makes the caller anonymous;
it is never an error of its own (the anonymous gate then decides)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from extproc import errors
from extproc.auth.rules import email_blacklisted, is_uuid
from extproc.auth.tokens import bearer_token, pepper_matches, verify_token
from extproc.catalogue import Catalogue
from extproc.directory import User
from extproc.pipeline.ports import Accounts
from extproc.pipeline.rejection import Rejection
from extproc.settings import Settings

ORGANIZATION_HEADER = "x-kilocode-organizationid"


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str  # the user's id, or "anon:<ip>"
    user: User | None  # None when anonymous
    organization_id: str | None
    bot_id: str | None
    token_source: str | None

    @property
    def anonymous(self) -> bool:
        return self.user is None


async def authenticate(headers: Mapping[str, str], settings: Settings, directory: Accounts) -> Identity | None:
    """The authenticated identity, or None. Raises DirectoryUnavailable when a valid token's
    user cannot be looked up (Postgres down, nothing cached): that cannot be decided safely."""
    token = bearer_token(headers.get("authorization"))
    secret = settings.nextauth_secret
    if token is None or secret is None:
        return None
    claims = verify_token(token, secret.get_secret_value())
    if claims is None:
        return None
    user = await directory.user(claims.kilo_user_id)
    if (
        user is None
        or not pepper_matches(user.api_token_pepper, claims.api_token_pepper)
        or email_blacklisted(user.email, settings.blacklisted_domains)
        or user.blocked_reason is not None
    ):
        return None
    # The organisation comes only from this header, never from the token (contract 2.5).
    organization_id = (headers.get(ORGANIZATION_HEADER) or "").strip() or None
    if organization_id is not None and (
        not is_uuid(organization_id) or not await directory.is_member(organization_id, user.id)
    ):
        return None
    return Identity(user.id, user, organization_id, claims.bot_id, claims.token_source)


def admit_anonymous(model_lower: str, ip: str, catalogue: Catalogue) -> Identity:
    """Step 2.6: anonymous callers may use free models only."""
    if not catalogue.is_free_model(model_lower):
        raise Rejection(errors.PAID_MODEL_AUTH_REQUIRED)
    return Identity(f"anon:{ip}", None, None, None, None)
