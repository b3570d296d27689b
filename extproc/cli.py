"""`llm-gateway`: the project's command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any, NoReturn

from extproc import logs


def _run(args: argparse.Namespace) -> int:
    from extproc.local import stack

    logs.configure("stack")
    return stack.run()


def _serve(args: argparse.Namespace) -> int:
    from extproc import server
    from extproc.settings import load_settings

    logs.configure("ext_proc")
    server.run(load_settings())
    return 0


def _ledger_writer(args: argparse.Namespace) -> int:
    from extproc import ledger_server
    from extproc.settings import load_settings

    logs.configure("ledger_writer")
    ledger_server.run(load_settings())
    return 0


def _mock_upstream(args: argparse.Namespace) -> int:
    from extproc.local import mock_upstream

    logs.configure("mock_upstream")
    try:
        asyncio.run(mock_upstream.serve(args.host, args.port, mock_upstream.options_from_cli(args)))
    except KeyboardInterrupt:
        pass
    return 0


def _envoy_config(args: argparse.Namespace) -> int:
    from extproc.envoy_config import render_bootstrap_yaml
    from extproc.settings import load_settings

    sys.stdout.write(render_bootstrap_yaml(load_settings()))
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, except that the operator commands report usage errors as JSON on stderr."""

    def __init__(self, *args: Any, json_errors: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.json_errors = json_errors

    def error(self, message: str) -> NoReturn:
        if self.json_errors:
            from extproc.admin.cli import usage_error

            usage_error(message)
        super().error(message)


def build_parser(command: str | None = None) -> _Parser:
    """The whole command line; `command`, the first word when known, lets the operator commands
    skip importing the mock upstream (aiohttp) just to describe its options."""
    from extproc.admin import cli as admin_cli

    parser = _Parser(prog="llm-gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="the whole stack in the foreground (embedded defaults; needs the local extra)").set_defaults(
        handler=_run
    )
    commands.add_parser("serve", help="the ext_proc gRPC server only").set_defaults(handler=_serve)
    commands.add_parser("ledger-writer", help="the ledger writer: outbox to Postgres").set_defaults(
        handler=_ledger_writer
    )
    commands.add_parser("envoy-config", help="print the Envoy bootstrap rendered from the settings").set_defaults(
        handler=_envoy_config
    )
    mock = commands.add_parser("mock-upstream", help="the OpenRouter-compatible mock upstream")
    if command not in admin_cli.COMMAND_GROUPS:
        from extproc.local import mock_upstream

        mock_upstream.add_cli_arguments(mock)
    mock.set_defaults(handler=_mock_upstream)
    # Operator commands: user, token, credits, org, byok, usage, outbox (extproc/admin/).
    admin_cli.add_subcommands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    from extproc.admin import cli as admin_cli

    words = sys.argv[1:] if argv is None else argv
    command = words[0] if words else None
    parser = build_parser(command)
    # Unrecognised arguments are reported by the top-level parser.
    parser.json_errors = command in admin_cli.COMMAND_GROUPS
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
