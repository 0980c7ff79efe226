# The two quick-start commands: `make up` (set up and run an embedded farm)
# and `make test` (set up and run every test tier).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: up test install install-dev services browser bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first: installing it as a dependency of diffusers would pull the
# newest build with gigabytes of CUDA packages.
$(VENV)/.torch: | $(BIN)/python
	$(BIN)/pip install --quiet "torch==$(TORCH_VERSION)"
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

up: install
	$(BIN)/farm up

services:
	bash scripts/ensure-services.sh

browser:
	bash scripts/ensure-browser.sh

# Two lanes at once (scripts/run-tests.sh): end-to-end and fault tiers beside
# unit and integration tiers.
test: install services browser
	PYTHON=$(BIN)/python bash scripts/run-tests.sh

bench: install services
	$(BIN)/python bench/overhead.py --jobs 50

clean:
	rm -rf $(VENV) .pytest_cache
