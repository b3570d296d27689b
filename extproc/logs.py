"""Structured (one JSON object per line) logs for every process of the gateway."""

from __future__ import annotations

import logging
import sys
import time
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

# The request being handled (Envoy's x-request-id), set by the ext_proc when a request's headers
# arrive. Each ext_proc stream runs in its own task, and tasks started for the request inherit
# it, so every log line written on the request's behalf carries the id that Envoy's access log
# prints too, even from code that never sees the request.
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
# The request's trace (hex), set alongside when the request is traced (extproc/request_trace.py).
TRACE_ID: ContextVar[str | None] = ContextVar("trace_id", default=None)

# Attributes every LogRecord has; anything else was passed with `extra=` and is logged.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "component": self.component,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if request_id := REQUEST_ID.get():
            entry["request_id"] = request_id
        if trace_id := TRACE_ID.get():
            entry["trace_id"] = trace_id
        entry.update((k, v) for k, v in vars(record).items() if k not in _STANDARD)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure(component: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(component))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def failure(exc: BaseException, operation: str | None = None) -> dict[str, str]:
    """The `extra=` of an error log: the exception's class and own message, and the operation
    that failed (given, or the last note added to the exception: see `extproc.accounting.outbox`).
    Not `repr(exc)`: redis-py's shows only the class (`server:ResponseError`), hiding Redis'
    answer."""
    fields = {"error": f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__}
    notes = getattr(exc, "__notes__", None)
    if operation is None and notes:
        operation = notes[-1]
    if operation:
        fields["operation"] = operation
    # Postgres errors (asyncpg) name what they hit.
    for name in ("sqlstate", "table_name", "constraint_name", "column_name", "detail"):
        if value := getattr(exc, name, None):
            fields[f"pg_{name}"] = str(value)
    return fields


def safe_url(url: str) -> str:
    """A URL fit for a log: no user name or password, no query string (where keys could be)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
