# Two entry points (see README): `make run` and `make test`. Each bootstraps .venv itself.
PYTHON ?= python3
VENV   ?= .venv
CONFIG ?= config/shipper.toml
PY      = $(VENV)/bin/python

.PHONY: run test lint typecheck unit bench bench-wal bench-syslog bench-chain bench-stages bench-s3 bench-cef bench-webhook bench-verify screenshot clean

# A stamp file so the venv is rebuilt when the dependency list changes.
$(VENV)/.installed: pyproject.toml
	@# Debian's python3 may lack ensurepip (package python3-venv); fall back to a
	@# venv without pip and let the system pip install pip into it.
	$(PYTHON) -m venv $(VENV) 2>/dev/null || { rm -rf $(VENV) && $(PYTHON) -m venv --without-pip $(VENV) \
	    && $(PYTHON) -m pip --python $(PY) install --quiet pip; }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

run: $(VENV)/.installed
	$(VENV)/bin/shipper run -c $(CONFIG)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check shipper tests bench tools
	$(VENV)/bin/ruff format --check shipper tests bench tools

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

unit: $(VENV)/.installed
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test: lint typecheck unit

bench: $(VENV)/.installed
	$(PY) -m bench $(BENCH_ARGS)

bench-wal: $(VENV)/.installed
	$(PY) -m bench.wal $(BENCH_ARGS)

bench-syslog: $(VENV)/.installed
	$(PY) -m bench.syslog $(BENCH_ARGS)

bench-chain: $(VENV)/.installed
	$(PY) -m bench.chain $(BENCH_ARGS)

bench-stages: $(VENV)/.installed
	$(PY) -m bench.stages $(BENCH_ARGS)

bench-s3: $(VENV)/.installed
	$(PY) -m bench.s3 $(BENCH_ARGS)

bench-cef: $(VENV)/.installed
	$(PY) -m bench.cef $(BENCH_ARGS)

bench-webhook: $(VENV)/.installed
	$(PY) -m bench.webhook $(BENCH_ARGS)

bench-verify: $(VENV)/.installed
	$(PY) -m bench.verify $(BENCH_ARGS)

screenshot: $(VENV)/.installed  # docs/status-page.png, by headless chromium
	$(PY) -m tools.status_screenshot

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
