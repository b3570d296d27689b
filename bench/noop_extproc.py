"""The floor of this design in Python: an ext_proc that decides nothing.

`python -m bench.noop_extproc --port P --cluster C --path /api/v1/chat/completions` answers each
Envoy message with the least the gateway's own Envoy configuration needs to work: the request
body is routed to the provider cluster (the routing header, path and content length the real
ext_proc sets), the response is streamed, every chunk passes unchanged (the query string is
kept, as the gateway keeps it). Same gRPC stack and server options as the gateway. Behind a minimal Envoy configuration it measures what the protocol
costs; behind the gateway's own, what that configuration adds; the gateway's figures above the
latter are what its own work costs.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator

import grpc
from envoy.service.ext_proc.v3.external_processor_pb2 import ProcessingRequest, ProcessingResponse
from envoy.service.ext_proc.v3.external_processor_pb2_grpc import (
    ExternalProcessorServicer,
    add_ExternalProcessorServicer_to_server,
)

from extproc import protocol
from extproc.envoy_config import UPSTREAM_HEADER
from extproc.event_loop import run_event_loop
from extproc.server import grpc_options
from extproc.settings import load_settings


class Noop(ExternalProcessorServicer):
    def __init__(self, cluster: str, path: str) -> None:
        self.cluster = cluster
        self.path = path

    async def Process(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ProcessingResponse]:
        query = ""
        async for request in request_iterator:
            phase = request.WhichOneof("request")
            if phase == "request_headers":
                path = next(h.raw_value for h in request.request_headers.headers.headers if h.key == ":path")
                query = path.decode().partition("?")[2]
                yield protocol.request_headers_continue()
            elif phase == "request_body":
                body = request.request_body.body
                headers = {
                    UPSTREAM_HEADER: self.cluster,
                    ":path": f"{self.path}?{query}" if query else self.path,
                    "content-length": str(len(body)),
                }
                yield protocol.request_body_replace(body, headers, (), clear_route_cache=True)
            elif phase == "response_headers":
                yield protocol.response_headers_reply(None, (), protocol.STREAMED)
            else:
                yield protocol.RESPONSE_BODY_CONTINUE
                if request.response_body.end_of_stream:
                    return


async def serve(port: int, cluster: str, path: str) -> None:
    server = grpc.aio.server(options=grpc_options(load_settings()))
    add_ExternalProcessorServicer_to_server(Noop(cluster, path), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cluster", required=True, help="the provider cluster to route every request to")
    parser.add_argument("--path", required=True, help="the upstream path of chat completions")
    args = parser.parse_args()
    run_event_loop(serve(args.port, args.cluster, args.path))


if __name__ == "__main__":
    main()
