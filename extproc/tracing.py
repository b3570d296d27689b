"""Tracing's switch for one process (the ext_proc, the ledger writer): `TRACER` is None while
tracing is off, so the request path's only cost then is that check, and the OpenTelemetry SDK
(extproc/otel_sdk.py) is not even imported.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from extproc import logs, otel_settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import Tracer

logger = logging.getLogger(__name__)

TRACER: Tracer | None = None
_PROCESSOR: BatchSpanProcessor | None = None


def configure(component: str) -> None:
    """Called once at a process's start; leaves `TRACER` None when tracing is off."""
    global TRACER, _PROCESSOR
    settings = otel_settings.read()
    if not settings.enabled:
        return
    from extproc import otel_sdk

    TRACER, _PROCESSOR = otel_sdk.start(settings, component)
    logger.info(
        "tracing on",
        extra={"traces_url": logs.safe_url(settings.traces_url or ""), "sampler": settings.sampler, "ratio": settings.ratio},
    )


def shutdown(timeout_seconds: float = 2.0) -> None:
    """Sends what is queued, within the timeout (a stopping process does not wait longer)."""
    global TRACER, _PROCESSOR
    if _PROCESSOR is not None:
        _PROCESSOR.force_flush(int(timeout_seconds * 1000))
        _PROCESSOR.shutdown()  # type: ignore[no-untyped-call]
    TRACER, _PROCESSOR = None, None
