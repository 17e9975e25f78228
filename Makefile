# Everyday commands. `make demo` and `make test` work on a fresh machine: they create
# the virtualenv and install keepalived/haproxy from Debian when missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: setup system-deps demo test lint typecheck unit bench clean

setup: system-deps $(STAMP)

system-deps:
	@scripts/install-system-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

demo: setup
	$(BIN)/vip-agent render --dry-run --manifests examples/cluster.yaml --config examples/config.yaml

lint: setup
	$(BIN)/ruff check agent tests bench
	$(BIN)/ruff format --check agent tests bench

typecheck: setup
	$(BIN)/mypy --strict agent

unit: setup
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck unit

bench: setup
	$(BIN)/python bench/render_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
