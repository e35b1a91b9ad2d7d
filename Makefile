# dicomlake — the two quick-start commands are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LAKE ?= ./dicomlake-data
# Debian packages the tests and tools need: "binary:package" pairs, installed when missing.
DEB := dcmdump:dcmtk dciodvfy:dicom3tools Orthanc:orthanc

.PHONY: install deb run test bench lint clean

install: deb $(VENV)/.installed

deb:
	@missing=""; for pair in $(DEB); do bin=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$bin >/dev/null 2>&1 || [ -x /usr/sbin/$$bin ] || missing="$$missing $$pkg"; done; \
	[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing="$$missing orthanc-dicomweb"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=25.1"
	$(PY) -m pip install -q -e ".[all]" --group test --group lint
	touch $@

run: install
	$(PY) -m dicomlake.demo --lake $(LAKE)

test: install
	$(PY) -m pytest -q -p no:cacheprovider

bench: install
	$(PY) -m bench

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy src

clean:
	rm -rf $(VENV) $(LAKE) build dist *.egg-info
