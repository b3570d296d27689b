"""The operator commands on the `llm-gateway` parser: their arguments, exit codes and output."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

import asyncpg
import orjson

from extproc.admin import commands as do
from extproc.admin.connections import DatabaseUnavailable
from extproc.admin.inputs import PLANS, ROLES, AdminError
from extproc.db import POSTGRES_ERRORS
from extproc.settings import load_settings

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1
# The top-level words of the operator commands (cli.py makes their usage errors JSON too).
COMMAND_GROUPS = ("user", "token", "credits", "org", "byok", "usage", "outbox", "catalogue")


def _print_error(message: str) -> None:
    sys.stderr.buffer.write(orjson.dumps({"error": message}) + b"\n")
    sys.stderr.flush()


def usage_error(message: str) -> NoReturn:
    """An argparse usage error of an operator command, reported like any other bad input."""
    _print_error(message)
    raise SystemExit(EXIT_BAD_INPUT)


def run(command: do.Command, args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
    except (ValueError, OSError) as error:  # pydantic's ValidationError is a ValueError
        _print_error(f"invalid configuration: {error}")
        return EXIT_BAD_INPUT
    try:
        result = asyncio.run(command(args, settings))
    except AdminError as error:
        _print_error(str(error))
        return EXIT_BAD_INPUT
    except asyncpg.DataError as error:  # a value Postgres refuses (out of range, bad text)
        _print_error(f"invalid value: {error}")
        return EXIT_BAD_INPUT
    except DatabaseUnavailable as error:
        _print_error(str(error))
        return EXIT_FAILURE
    except POSTGRES_ERRORS as error:
        _print_error(f"database error: {type(error).__name__}: {error}")
        return EXIT_FAILURE
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
    sys.stdout.flush()
    return 0


def _handler(command: do.Command) -> Callable[[argparse.Namespace], int]:
    return lambda args: run(command, args)


# extproc/cli.py's parser class: `add_subparsers` makes parsers of the caller's class, and
# `add_parser` hands that class's constructor the `json_errors` flag given below.
_Parser = TypeVar("_Parser", bound=argparse.ArgumentParser)


def add_subcommands(commands: argparse._SubParsersAction[_Parser]) -> None:
    """Register `user`, `token`, `credits`, `org`, `byok`, `usage` and `outbox` on the
    `llm-gateway` parser."""

    def group(name: str, help_text: str) -> argparse._SubParsersAction[_Parser]:
        parser = commands.add_parser(name, help=help_text, json_errors=True)
        return parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(
        sub: argparse._SubParsersAction[_Parser], name: str, help_text: str, command: do.Command
    ) -> _Parser:
        parser = sub.add_parser(name, help=help_text, description=help_text, json_errors=True)
        parser.set_defaults(handler=_handler(command))
        return parser

    users = group("user", "create, block, unblock users and revoke their tokens")
    p = action(users, "create", "create a user and print an API token for it", do.user_create)
    p.add_argument("--email", required=True)
    p.add_argument("--credits-usd", default="0", metavar="USD", help="initial credits (default 0)")
    p.add_argument("--free", action="store_true", help="record the initial credits as free (promotional)")
    p = action(users, "block", "block a user (requests become unauthenticated)", do.user_block)
    p.add_argument("--user", required=True, metavar="ID")
    p.add_argument("--reason", required=True)
    p = action(users, "unblock", "clear a user's blocked_reason", do.user_unblock)
    p.add_argument("--user", required=True, metavar="ID")
    p = action(
        users, "revoke-tokens", "invalidate every token of a user and print a fresh one", do.user_revoke_tokens
    )
    p.add_argument("--user", required=True, metavar="ID")

    tokens = group("token", "API tokens")
    p = action(tokens, "mint", "mint an API token for a user (valid 5 years)", do.token_mint)
    p.add_argument("--user", required=True, metavar="ID")

    credits = group("credits", "user credits")
    p = action(credits, "add", "add credits to a user (a credit transaction)", do.credits_add)
    p.add_argument("--user", required=True, metavar="ID")
    p.add_argument("--usd", required=True, metavar="USD")
    p.add_argument("--free", action="store_true", help="free (promotional) credits")
    p.add_argument("--description", default="llm-gateway credits add")

    orgs = group("org", "organisations")
    p = action(orgs, "create", "create an organisation", do.org_create)
    p.add_argument("--name", required=True)
    p.add_argument("--plan", choices=PLANS, default="teams")
    p.add_argument("--credits-usd", default="0", metavar="USD")
    p = action(orgs, "add-member", "add a user to an organisation, or change their role", do.org_add_member)
    p.add_argument("--org", required=True, metavar="ID")
    p.add_argument("--user", required=True, metavar="ID")
    p.add_argument("--role", choices=ROLES, default="member")
    p = action(orgs, "settings", "replace an organisation's settings with a JSON object", do.org_settings)
    p.add_argument("--org", required=True, metavar="ID")
    p.add_argument("--json", required=True, metavar="OBJECT")
    p = action(orgs, "daily-limit", "set a member's daily spending limit", do.org_daily_limit)
    p.add_argument("--org", required=True, metavar="ID")
    p.add_argument("--user", required=True, metavar="ID")
    p.add_argument("--usd", required=True, metavar="USD")

    p = commands.add_parser("usage", help="a user's ledger rows (newest first) and totals", json_errors=True)
    p.set_defaults(handler=_handler(do.usage))
    p.add_argument("--user", required=True, metavar="ID")
    p.add_argument("--limit", type=int, default=100, help="rows to show (default 100); totals cover all")

    outbox = group("outbox", "the accounting outbox's dead letters: records the ledger refused")
    action(outbox, "dead-letters", "list the dead letters (no prompt text)", do.outbox_dead_letters)
    p = action(
        outbox,
        "replay",
        "write the dead letters into the ledger once the cause is fixed (each written one leaves the stream)",
        do.outbox_replay,
    )
    p.add_argument("--entry", action="append", metavar="ID", help="only this entry (repeatable; default: all)")

    prices = group("catalogue", "the price catalogue: each model's prices from the providers' /models")
    p = action(prices, "show", "a model's stored prices at each provider (integer picodollars)", do.catalogue_show)
    p.add_argument("model", metavar="MODEL")
    action(prices, "refresh", "fetch the providers' /models now and store them", do.catalogue_refresh)

    byok_keys = group("byok", "customers' own provider keys (BYOK)")
    p = action(
        byok_keys,
        "add",
        "store (or replace and re-enable) a user's or an organisation's key for a provider,"
        " encrypted with BYOK_ENCRYPTION_KEY",
        do.byok_add,
    )
    owner = p.add_mutually_exclusive_group(required=True)
    owner.add_argument("--user", metavar="ID")
    owner.add_argument("--org", metavar="ID")
    p.add_argument(
        "--provider",
        required=True,
        metavar="ID",
        help="anthropic, bedrock, google, openai, minimax, mistral, xai, zai or codestral",
    )
    p.add_argument(
        "--key",
        required=True,
        metavar="KEY",
        help='the API key ("-" reads it from stdin); for bedrock the JSON {accessKeyId, secretAccessKey, region}',
    )
