"""The ext_proc gRPC server process: processor, health service, metrics, graceful drain."""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from envoy.service.ext_proc.v3.external_processor_pb2_grpc import (
    add_ExternalProcessorServicer_to_server,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from extproc import metrics, tracing
from extproc.event_loop import run_event_loop
from extproc.processor import Processor
from extproc.resources import Resources
from extproc.services import Services
from extproc.settings import Settings

logger = logging.getLogger(__name__)


def grpc_options(settings: Settings) -> list[tuple[str, int]]:
    limit = settings.extproc_max_message_bytes
    return [
        # Request bodies arrive whole (BUFFERED); the 4 MiB default is too small for LLM prompts.
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.max_concurrent_streams", 100_000),
        ("grpc.so_reuseport", 1),
        # Envoy pings its ext_proc connection every 30 s (envoy_config.py); gRPC's default
        # policy would answer pings on an idle connection with GOAWAY "too_many_pings".
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 0),
    ]


async def serve(settings: Settings) -> None:
    tracing.configure("extproc")
    resources = await Resources.open(settings)
    services = Services.build(settings, resources)
    server = grpc.aio.server(options=grpc_options(settings))
    add_ExternalProcessorServicer_to_server(Processor(services.core), server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    address = f"{settings.extproc_host}:{settings.extproc_port}"
    server.add_insecure_port(address)
    stop_metrics = metrics.serve(settings.metrics_host, settings.metrics_port)
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    logger.info("ext_proc listening", extra={"address": address})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    submitter_stop = asyncio.Event()
    submitter = asyncio.create_task(services.submitter.run(submitter_stop))
    prices_stop = asyncio.Event()
    prices = asyncio.create_task(services.price_refresher.run(prices_stop))
    await stop.wait()

    # Drain: report NOT_SERVING, keep serving a moment (an Envoy told to stop with us goes
    # first: settings.extproc_stop_delay_seconds), refuse new streams, let open generations
    # finish, then hand their usage records over (the ledger writer process writes them).
    logger.info("ext_proc draining", extra={"grace_seconds": settings.extproc_drain_seconds})
    await health.enter_graceful_shutdown()
    await asyncio.sleep(settings.extproc_stop_delay_seconds)
    prices_stop.set()
    await server.stop(grace=settings.extproc_drain_seconds)
    submitter_stop.set()
    await submitter
    await services.submitter.drain(timeout=settings.accounting_drain_seconds)
    prices.cancel()  # a fetch under way is abandoned: the lease expires, another replica fetches
    await asyncio.gather(prices, return_exceptions=True)
    await resources.close()
    stop_metrics()
    tracing.shutdown()
    logger.info("ext_proc stopped")


def run(settings: Settings) -> None:
    run_event_loop(serve(settings))
