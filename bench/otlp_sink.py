"""A collector stand-in for the benchmark: accepts OTLP/HTTP trace exports (Envoy's protobuf,
the gateway's JSON) on `/v1/traces` and answers them at once without decoding, so that what
the benchmark measures is the gateway's own cost of tracing, not a collector's.

    python -m bench.otlp_sink --port 4318
"""

from __future__ import annotations

import argparse

from aiohttp import web

# An empty ExportTraceServiceResponse: no body in protobuf, `{}` in JSON.
_JSON = "application/json"


async def _export(request: web.Request) -> web.Response:
    await request.read()
    if request.content_type == _JSON:
        return web.Response(body=b"{}", content_type=_JSON)
    return web.Response(body=b"", content_type="application/x-protobuf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", _export)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
