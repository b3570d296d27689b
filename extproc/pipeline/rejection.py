from __future__ import annotations

from extproc.errors import GatewayError


class Rejection(Exception):
    """A pipeline step refuses the request with an entry of the error catalogue."""

    def __init__(self, error: GatewayError) -> None:
        super().__init__(error.status)
        self.error = error
