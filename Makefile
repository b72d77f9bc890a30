# The two commands of the README: `make demo` and `make test`. Everything else is for developers.
# The distribution interpreter is built with PGO/LTO: ~27% faster on this workload than a plain build.
PYTHON ?= $(shell /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	&& echo /usr/bin/python3 || echo python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_CONFORMANCE := tests/conformance/node
NODE_STAMP := $(NODE_CONFORMANCE)/node_modules/.installed
# The per-request modules compiled to C with mypyc (setup.py); rebuilt whenever a source changes.
NATIVE := src/bastion/_native_manifest.json
SOURCES := $(shell find src/bastion -name '*.py')

.PHONY: demo test lint typecheck unit e2e security bench install native pure clean docs

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 'setuptools==80.9.0'
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# openid-client, the independent OAuth client of the conformance tests (npm; skipped without node).
$(NODE_STAMP): $(NODE_CONFORMANCE)/package-lock.json
	@if command -v npm >/dev/null; then \
		npm ci --prefix $(NODE_CONFORMANCE) --no-audit --no-fund --silent && touch $(NODE_STAMP); \
	else echo "npm not found: the openid-client conformance tests will be skipped"; fi

$(NATIVE): $(STAMP) setup.py $(SOURCES)
	@$(PY) -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
		|| { echo "the native build needs the Python headers (Debian: apt-get install python3-dev); 'make pure' runs without"; exit 1; }
	BASTION_NATIVE=1 $(PY) setup.py -q build_ext --inplace

install: $(STAMP)

native: $(NATIVE)

# Back to the interpreted sources (the next demo/test/bench builds the native modules again).
pure:
	rm -f $(NATIVE)
	find src/bastion -name '*.so' -delete

demo: $(NATIVE)
	$(VENV)/bin/bastion demo

test: $(NATIVE) $(NODE_STAMP)
	$(VENV)/bin/ruff check setup.py src tests bench
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -n 2 tests

lint: $(STAMP)
	$(VENV)/bin/ruff check setup.py src tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

docs: $(STAMP)
	$(PY) -m bastion.config.docs

bench: $(NATIVE)
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build $(NATIVE) $(NODE_CONFORMANCE)/node_modules .bastion .bastion-demo .pytest_cache .mypy_cache .ruff_cache
	find src/bastion -name '*.so' -delete
