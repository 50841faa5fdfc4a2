# hsmvault — every set-up step a fresh machine needs lives here.
#   make test   lint, type-check, import contracts and the whole test suite
#   make demo   set up and run the product's main job on its embedded defaults
#   make up     set up and run a local deployment (hsmvault up; Ctrl-C stops it)
#   make bench  the benchmarks (not part of the tests)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Debian packages the tests need (installed with apt-get when absent).
DEB_PACKAGES := libsodium23 softhsm2 postgresql chromium

.PHONY: test lint typecheck contracts pytest demo up bench deps venv clean

deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: deps $(STAMP)

lint: venv
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: venv
	$(VENV)/bin/mypy --strict

contracts: venv
	$(VENV)/bin/lint-imports

# pytest exits 5 when it collected no test: a suite that ran nothing has proved nothing.
# Bytecode caching is switched back on (some machines export PYTHONDONTWRITEBYTECODE=1):
# the suite starts hundreds of node processes, each of which would recompile our modules.
pytest: venv
	@rc=0; PYTHONDONTWRITEBYTECODE= $(VENV)/bin/pytest -n auto --timeout=600 $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

test: lint typecheck contracts pytest

# The guided walk on a temporary deployment (5 node processes, witness stub, gateway).
demo: venv
	$(VENV)/bin/hsmvault demo $(DEMO_ARGS)

up: venv
	$(VENV)/bin/hsmvault up $(UP_ARGS)

bench: venv
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
