# Two commands do everything on a fresh machine (see README):
#   make reports [DATA=path/to/face-mask-detection]   install into .venv, then regenerate reports/
#   make test                                         install into .venv, then run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?=

.PHONY: setup reports test

$(VENV)/.installed: requirements.txt requirements-nodeps.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install -q --no-deps -e .
	$(VENV)/bin/nbdime config-git --enable
	touch $@

setup: $(VENV)/.installed

reports: setup
	$(PY) -m maskclf reports $(if $(DATA),--data $(DATA))

test: setup
	$(PY) -m pytest
