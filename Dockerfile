# The runtime image: the ext_proc server, the ledger writer and the Envoy config renderer.
# `pip install .` installs no local-stack wheels (Envoy, Postgres, Redis are the `local` extra).
# docker-compose.yml's dev-only mock upstream runs from it too: it needs only aiohttp, which
# the runtime has for the generation lookups.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY extproc ./extproc
RUN pip install --no-cache-dir . && useradd --system --uid 10001 gateway
USER gateway
ENV LLM_GATEWAY_EXTPROC_HOST=0.0.0.0 \
    LLM_GATEWAY_METRICS_HOST=0.0.0.0
EXPOSE 50051 9464 9465
# The ext_proc drains on SIGTERM (README "Deploying": how the grace periods fit together).
STOPSIGNAL SIGTERM
CMD ["llm-gateway", "serve"]
