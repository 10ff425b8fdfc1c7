# Two commands matter: `make run` and `make test`. Both install what they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the pure core compiled with mypyc (metering/native_core.py); rebuilt when a source changes
NATIVE := build/native-core/manifest.json

.PHONY: install run test test-unit bench bench-gateway lint typecheck pytest deploy-tools schemas lock clean mutation

install: $(STAMP) $(NATIVE)

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required, found " + sys.version.split()[0])'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# pip 23.2 (the venv's own, here) refuses a hash-checked lock where a package asks for extras
	# of a pinned one (litellm[proxy] → fastapi-sso → pydantic[email]); pip 24.2+ installs it
	$(BIN)/python -m pip install --quiet --disable-pip-version-check 'pip>=24.2'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

$(NATIVE): $(STAMP) $(wildcard metering/core/*.py) metering/native_core.py
	$(BIN)/python -m metering.native_core

## make run: the whole system on the embedded broker and database (Ctrl-C stops it);
## PORT=N puts the services on N, N+1, N+2; STATE_DIR=dir keeps state and logs there
PORT ?= 8001
STATE_DIR ?= .run
run: install
	$(BIN)/metering dev --base-port $(PORT) --state-dir $(STATE_DIR)

## make test: lint, types, then every test (unit and integration, real broker and database)
test: lint typecheck pytest

## make test-unit: lint, types and the unit tests only (no broker, no database): the fast loop
test-unit: lint typecheck
	$(BIN)/pytest tests/unit
	$(PURE_PASS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

# the unit tests again on the core's source, as `make mutation` and an edited checkout run it
PURE_PASS = METERING_PURE_CORE=1 $(BIN)/pytest tests/unit -q

pytest: install deploy-tools
	$(BIN)/pytest
	$(PURE_PASS)

## make bench: throughput, freshness, authorize, fold and replay on this machine (~7 min);
## writes bench/results.json, bench/summary.md and bench/throughput_latency.png
bench: install
	$(BIN)/metering bench --out bench

## make mutation: mutation testing of all of metering/core, killed by tests/unit alone (slow, not
## part of `make test`); writes mutation/report.md (score per module, survivors, equivalents)
MUTATION_WORKERS ?= 2
mutation: install
	rm -rf mutants
	@start=$$(date +%s); \
	METERING_PURE_CORE=1 nice -n 19 $(BIN)/mutmut run --max-children $(MUTATION_WORKERS) > mutation/run.log 2>&1 \
		|| { tail -c 3000 mutation/run.log; exit 1; }; \
	$(BIN)/python mutation/report.py --seconds $$(( $$(date +%s) - start )) \
		--commit "$$(git rev-parse --short HEAD 2>/dev/null)" > mutation/report.md
	@sed -n '/^| module/,/^$$/p' mutation/report.md

## make deploy-tools: kubectl (for kustomize) and Prometheus's promtool, for the deploy tests,
## and Debian's chromium and chromium-driver, for the console's browser tests
deploy-tools: install
	bash deploy/k8s/ensure-kustomize.sh
	sh deploy/prometheus/ensure-prometheus.sh
	sh deploy/browser/ensure-chromium.sh

## make schemas: regenerate the JSON Schema / AsyncAPI documents from the pydantic contracts
schemas: install
	$(BIN)/python -m schemas.generate

## make lock: re-resolve requirements.lock after changing dependencies in pyproject.toml
lock: install
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 -o requirements.lock

clean:
	rm -rf $(VENV) .run .mypy_cache .ruff_cache .pytest_cache .hypothesis mutants build

## make bench-gateway: what the LiteLLM plugin adds per call (p50/p99, with and without the
## allow cache) and calls/s of one proxy worker with metering on; writes bench/gateway.json
bench-gateway: install
	$(BIN)/python -m metering_litellm.bench --out bench/gateway.json
