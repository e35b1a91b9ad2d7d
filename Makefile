# dicomlake — the two quick-start commands are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LAKE ?= ./dicomlake-data

.PHONY: install deb run test bench fuzz lint docs clean

install: deb $(VENV)/.installed

deb:
	@bash util/install-deb.sh

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=25.3" "setuptools>=78.1.1"
	$(PY) -m pip install -q -e ".[all]" --group test --group lint
	touch $@

run: install
	$(PY) -m dicomlake.demo --lake $(LAKE) && $(VENV)/bin/dicomlake serve --lake $(LAKE)

# The quality gate first (ruff, ruff format, mypy, doctests of src/), then the suite; the
# layer contract is tests/test_layers.py. Any finding fails `make test`, and so CI.
test: install lint
	$(PY) -m pytest -q -p no:cacheprovider --doctest-modules src/dicomlake
	$(PY) -m pytest -q -p no:cacheprovider

# the long fuzz run: every target for FUZZ_SECONDS (default 600) each; findings land in tests/data/fuzz
fuzz: install
	$(PY) fuzz/run.py --seconds $${FUZZ_SECONDS:-600}

bench: install
	$(PY) -m pip install -q --group bench
	$(PY) -m bench

lint: install
	$(VENV)/bin/ruff check src tests bench fuzz util
	$(VENV)/bin/ruff format --check src tests bench fuzz util
	$(VENV)/bin/mypy src

# The docs: reference pages and the Conformance Statement generated from the code, then HTML in site/
# (offline: markdown-it-py comes with rich). Open site/index.html.
docs: install
	$(PY) util/gen_docs.py
	$(PY) util/build_docs.py --out site

clean:
	rm -rf $(VENV) $(LAKE) build dist site *.egg-info
