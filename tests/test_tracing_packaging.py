"""One install, whatever the order (issue 28, part 5).

xds-protos 1.85 ships an older copy of the OpenTelemetry protocol files under the same package
as opentelemetry-proto (`opentelemetry/proto/`; its `ResourceSpans` has
`instrumentation_library_spans`, not `scope_spans`), and whichever pip installs last wins.
The runtime exports with the OTLP/HTTP JSON exporter, which never imports that package, so the
order cannot break it; the tests' receiver does decode with it, so `make` installs
opentelemetry-proto last, and the second test says when the collision won anyway.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.otlp_receiver import OtlpReceiver

# Run in a process of its own, with `opentelemetry.proto` made unimportable, as if xds-protos'
# copy had won: the runtime still sets tracing up and delivers a span.
_WITHOUT_OPENTELEMETRY_PROTO = """
import importlib.abc, sys

class Collided(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry.proto" or name.startswith("opentelemetry.proto."):
            raise ImportError(f"{name}: the collision won")
        return None

sys.meta_path.insert(0, Collided())
import extproc.server, extproc.ledger_server
from extproc import tracing
tracing.configure("extproc")
assert tracing.TRACER is not None
tracing.TRACER.start_span("packaging-check").end()
tracing.shutdown(timeout_seconds=10)
from extproc import otel_sdk
assert otel_sdk.SPANS_EXPORTED._value.get() == 1, "the span was not delivered"
print("delivered")
"""


def test_the_runtime_traces_whichever_copy_of_opentelemetry_proto_won() -> None:
    with OtlpReceiver() as receiver:
        result = subprocess.run(
            [sys.executable, "-c", _WITHOUT_OPENTELEMETRY_PROTO],
            env={**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert [span.name for span in receiver.spans] == ["packaging-check"]


def test_opentelemetry_proto_is_not_xds_protos_older_copy() -> None:
    from opentelemetry.proto.common.v1 import common_pb2
    from opentelemetry.proto.trace.v1 import trace_pb2

    fields = trace_pb2.ResourceSpans.DESCRIPTOR.fields_by_name
    assert "scope_spans" in fields and hasattr(common_pb2, "InstrumentationScope"), (
        "xds-protos' older opentelemetry/proto/ overwrote opentelemetry-proto's: "
        "reinstall it last (`make .venv/.installed` does: see the Makefile)"
    )
