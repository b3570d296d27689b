# The two commands: `make run` (the whole stack on embedded defaults) and `make test`.
# Both create the project-local virtualenv on first use; nothing needs installing beforehand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test fuzz bench bench-peers envoy-config clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed: make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/llm-gateway run

test: $(STAMP)
	$(BIN)/ruff check extproc tests bench
	$(BIN)/python -m pytest

# Hostile input through real Envoy beyond the default suite's 10,000 fixed cases: FUZZ_CASES
# new ones, from a random FUZZ_SEED (printed; set it to replay a run).
FUZZ_CASES ?= 100000
fuzz: $(STAMP)
	@seed=$${FUZZ_SEED:-$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}; echo "FUZZ_SEED=$$seed"; \
		FUZZ_CASES=$(FUZZ_CASES) FUZZ_SEED=$$seed $(BIN)/python -m pytest tests/test_hostile_e2e.py -x -q

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
