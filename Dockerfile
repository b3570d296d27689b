# One image for the ext_proc server, the mock upstream and the Envoy config renderer.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY extproc ./extproc
RUN pip install --no-cache-dir . && useradd --system --uid 10001 gateway
USER gateway
ENV LLM_GATEWAY_EXTPROC_HOST=0.0.0.0 \
    LLM_GATEWAY_METRICS_HOST=0.0.0.0
EXPOSE 50051 9464 9465
CMD ["llm-gateway", "serve"]
