"""One handler per operator command: validate, resolve, connect, do, report (a JSON object)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import orjson

from extproc.admin.connections import (
    UpstreamUnavailable,
    open_database,
    open_outbox,
    resolve_nextauth_secret,
    resolve_priced_providers,
)
from extproc.admin.inputs import (
    AdminError,
    normalize_email,
    parse_byok_provider,
    parse_nonempty,
    parse_org_id,
    parse_settings_json,
    parse_user_id,
    usd_to_exact_microdollars,
)
from extproc.admin.queries import (
    add_credits,
    add_member,
    create_org,
    create_user,
    rotate_pepper,
    set_blocked,
    set_daily_limit,
    set_org_settings,
    store_byok_key,
    usage_report,
    user_pepper,
)
from extproc.db import Connection
from extproc.settings import Settings


def _mint(user_id: str, secret: str, *, pepper: str | None) -> str:
    from extproc.auth.tokens import (
        mint_token as mint,  # pyjwt: only the commands that mint pay for it
    )

    return mint(user_id, secret, pepper=pepper)


Command = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, dict[str, Any]]]


async def user_create(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    email = normalize_email(args.email)
    credits = usd_to_exact_microdollars(args.credits_usd, what="--credits-usd")
    secret = resolve_nextauth_secret(settings)
    async with open_database(settings) as conn:
        user = await create_user(conn, email, credits_microdollars=credits, is_free=args.free)
    return {**user, "token": _mint(user["id"], secret, pepper=None)}


async def user_block(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    user_id = parse_user_id(args.user)
    reason = parse_nonempty(args.reason, "--reason")
    async with open_database(settings) as conn:
        return await set_blocked(conn, user_id, reason)


async def user_unblock(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    user_id = parse_user_id(args.user)
    async with open_database(settings) as conn:
        return await set_blocked(conn, user_id, None)


async def _token(
    args: argparse.Namespace, settings: Settings, pepper_of: Callable[[Connection, str], Awaitable[str | None]]
) -> dict[str, Any]:
    """A token for `--user`, under the pepper `pepper_of` reads (or sets)."""
    user_id = parse_user_id(args.user)
    secret = resolve_nextauth_secret(settings)
    async with open_database(settings) as conn:
        pepper = await pepper_of(conn, user_id)
    return {"user_id": user_id, "token": _mint(user_id, secret, pepper=pepper)}


async def user_revoke_tokens(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    return await _token(args, settings, rotate_pepper)


async def token_mint(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    return await _token(args, settings, user_pepper)


async def credits_add(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    user_id = parse_user_id(args.user)
    amount = usd_to_exact_microdollars(args.usd, what="--usd", allow_zero=False)
    description = parse_nonempty(args.description, "--description")
    async with open_database(settings) as conn:
        return await add_credits(conn, user_id, amount, is_free=args.free, description=description)


async def org_create(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    name = parse_nonempty(args.name, "--name")
    credits = usd_to_exact_microdollars(args.credits_usd, what="--credits-usd")
    async with open_database(settings) as conn:
        return await create_org(conn, name, plan=args.plan, credits_microdollars=credits)


async def org_add_member(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    org_id = parse_org_id(args.org)
    user_id = parse_user_id(args.user)
    async with open_database(settings) as conn:
        return await add_member(conn, org_id, user_id, args.role)


async def org_settings(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    org_id = parse_org_id(args.org)
    value = parse_settings_json(args.json)
    async with open_database(settings) as conn:
        return await set_org_settings(conn, org_id, value)


async def org_daily_limit(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    org_id = parse_org_id(args.org)
    user_id = parse_user_id(args.user)
    limit = usd_to_exact_microdollars(args.usd, what="--usd")
    async with open_database(settings) as conn:
        return await set_daily_limit(conn, org_id, user_id, limit)


async def byok_add(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from extproc import byok  # cryptography: only this command pays for it

    user_id = parse_user_id(args.user) if args.user is not None else None
    org_id = parse_org_id(args.org) if args.org is not None else None
    provider = parse_byok_provider(args.provider, byok.BYOK_PROVIDER_IDS)
    key = parse_nonempty(sys.stdin.read() if args.key == "-" else args.key, "--key")
    if provider == "bedrock":
        try:
            byok.parse_aws_credentials(key)
        except byok.ByokDecryptionError:
            raise AdminError(
                "--key of a bedrock key must be the JSON object"
                ' {"accessKeyId": ..., "secretAccessKey": ..., "region": ...} (strings)'
            ) from None
    try:
        encryption_key = byok.encryption_key_from_env()
    except ValueError as error:
        raise AdminError(str(error)) from None
    encrypted = byok.encrypt_api_key(key, encryption_key)
    async with open_database(settings) as conn:
        row_id = await store_byok_key(conn, provider, encrypted, user_id=user_id, org_id=org_id)
    owner = {"user": user_id} if user_id is not None else {"org": org_id}
    return {"id": row_id, "provider": provider, "owner": owner}



async def usage(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    user_id = parse_user_id(args.user)
    if args.limit < 1:
        raise AdminError("--limit must be at least 1")
    async with open_database(settings) as conn:
        return await usage_report(conn, user_id, args.limit)


async def outbox_dead_letters(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    async with open_outbox(settings) as outbox:
        letters = [letter.summary() for letter in await outbox.dead_letters()]
    return {"count": len(letters), "dead_letters": letters}


async def outbox_replay(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from extproc.accounting.dead_letters import replay_all

    async with open_outbox(settings) as outbox, open_database(settings) as conn:
        try:
            return await replay_all(outbox, conn, args.entry or None)
        except LookupError as error:
            raise AdminError(str(error)) from None



def _table_age(table: Any) -> dict[str, Any]:
    from datetime import datetime, timezone

    return {
        "fetched_at": datetime.fromtimestamp(table.fetched_at, timezone.utc).isoformat(),
        "age_seconds": round(max(0.0, time.time() - table.fetched_at), 3),
        "models": len(table.models),
    }


async def catalogue_show(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """The stored prices of a model at each priced provider, as the spend bound uses them."""
    from extproc.pricing.candidates import candidate_models
    from extproc.pricing.catalogue import PriceCatalogue
    from extproc.pricing.refresh import PriceRefresher

    model = parse_nonempty(args.model, "MODEL").strip().lower()
    catalogue = PriceCatalogue()
    async with open_database(settings) as conn:
        await PriceRefresher(settings, lambda: _lent(conn), catalogue, holder="cli").load()
    if not catalogue.tables:
        raise AdminError("no price catalogue stored yet: run `llm-gateway catalogue refresh`")
    providers: dict[str, Any] = {}
    for provider, model_id in candidate_models(model, {}, settings.catalogue, routed_to="vercel"):
        table = catalogue.tables.get(provider)
        if table is None:
            providers[provider] = {"model_id": model_id, "listed": False, "table": None}
            continue
        entry = catalogue.entry(provider, model_id)
        providers[provider] = {
            "model_id": model_id,
            "listed": entry is not None,
            # An unlisted model is bounded at the table's highest prices.
            "prices": (entry or table.highest).as_json(),
            "table": _table_age(table),
        }
    return {"model": model, "unit": PRICE_UNIT, "providers": providers}


async def catalogue_refresh(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Fetch every priced provider's `/models` now and store what passes the checks."""
    from extproc.pricing.catalogue import PriceCatalogue
    from extproc.pricing.refresh import FetchFailed, PriceRefresher

    results: dict[str, Any] = {}
    catalogue = PriceCatalogue()
    async with open_database(settings) as conn:
        refresher = PriceRefresher(
            settings, lambda: _lent(conn), catalogue, holder=f"cli:{os.getpid()}", priced=resolve_priced_providers(settings)
        )
        await refresher.load()
        for provider in refresher.providers():
            try:
                table = await refresher.refresh(provider, force=True)
            except FetchFailed as error:
                results[provider.id] = {"stored": False, "error": str(error)}
                continue
            if table is None:
                results[provider.id] = {"stored": False, "error": "another replica is fetching it now"}
            else:
                results[provider.id] = {"stored": True, **_table_age(table)}
    if not any(r["stored"] for r in results.values()):
        raise UpstreamUnavailable(f"no price catalogue refreshed: {orjson.dumps(results).decode()}")
    return {"providers": results}


PRICE_UNIT = "picodollars (1e-12 USD) per token; request, image and web_search per request, image and search"


@asynccontextmanager
async def _lent(connection: Connection) -> AsyncIterator[Connection]:
    yield connection
