# Everyday commands. `make demo` and `make test` work on a fresh machine: they create
# the virtualenv and install keepalived/haproxy from Debian when missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: setup system-deps test-deps demo test check lint typecheck unit bench image clean

setup: system-deps $(STAMP)

system-deps:
	@scripts/install-system-deps

# The real parts the heavier tests drive, built once and cached outside the checkout
# (/var/cache/vip-agent): a qemu guest with Debian's kernel for IPVS, Kubernetes 1.20 from
# Debian's sources (kube-apiserver and the node's programs in one build, about 7 minutes
# the first time; build-kube-apiserver alone then has nothing left to do), and the
# container image (about 2 minutes). Root only; without them those tests skip locally
# (and fail in CI: VIP_AGENT_CI_STRICT=1).
test-deps:
	@if [ "$$(id -u)" = 0 ]; then scripts/build-ipvs-guest && scripts/build-kube-node && \
		scripts/build-kube-apiserver && scripts/build-image >/dev/null; \
	else echo "test-deps: not root; guest, API server, node and image tests will skip" >&2; fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

demo: setup
	$(BIN)/vip-agent render --dry-run --manifests examples/cluster.yaml --config examples/config.yaml

# ruff, the import contracts (.importlinter: the pure core imports nothing from the shell;
# tests/ and bench/ share labkit/) and a ceiling: no function in agent/ above cyclomatic
# complexity 20 (radon grade D or worse).
lint: setup
	$(BIN)/ruff check agent tests bench labkit
	$(BIN)/ruff format --check agent tests bench labkit
	$(BIN)/lint-imports --no-cache
	@complex="$$($(BIN)/radon cc -n D agent)"; if [ -n "$$complex" ]; then \
		echo "functions above cyclomatic complexity 20:"; echo "$$complex"; exit 1; fi

typecheck: setup
	$(BIN)/mypy --strict agent

unit: setup test-deps
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck unit

# Everyday work: lint, types and the pure tier, in under a minute (no root, no builds).
check: lint typecheck
	$(BIN)/pytest -q -m unit $(PYTEST_ARGS)

bench: setup
	$(BIN)/python bench/render_bench.py

# The container image, localhost/vip-agent:<version>, from Debian packages and PyPI only
# (mmdebstrap makes the base, buildah builds container/Containerfile on it); root. Cached
# in /var/cache/vip-agent/images: prints the image's docker-archive there, in seconds when
# nothing changed. `scripts/build-image --refresh` rebuilds with Debian's current packages.
image:
	@scripts/build-image

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
