# Two commands do everything on a fresh machine (see README):
#   make reports [DATA=path/to/face-mask-detection]   install into .venv, then regenerate reports/
#   make test                                         install into .venv, then run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?=

.PHONY: setup reports test lab

PYTHON ?= python3

$(VENV)/.installed: requirements.txt requirements-nodeps.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "error: $(PYTHON) is $$($(PYTHON) -V 2>&1); the pinned stack (numpy, pandas, keras, scikit-learn, onnxruntime) needs Python 3.11 or newer. Run: make PYTHON=python3.11 ..." >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	# a venv made before OpenVINO moved to requirements-nodeps.txt still has its telemetry (see there)
	$(PY) -m pip uninstall -q -y openvino-telemetry 2>/dev/null || true
	$(PY) -m pip install -q --no-deps -e .
	$(VENV)/bin/nbdime config-git --enable
	# nbdime writes bare command names; point git at the venv's drivers so diffs work from any shell
	git config diff.jupyternotebook.command "$(abspath $(VENV))/bin/git-nbdiffdriver diff"
	git config merge.jupyternotebook.driver "$(abspath $(VENV))/bin/git-nbmergedriver merge %O %A %B %L %P"
	git config difftool.nbdime.cmd '$(abspath $(VENV))/bin/git-nbdifftool diff "$$LOCAL" "$$REMOTE" "$$BASE"'
	git config mergetool.nbdime.cmd '$(abspath $(VENV))/bin/git-nbmergetool merge "$$BASE" "$$LOCAL" "$$REMOTE" "$$MERGED"'
	touch $@

setup: $(VENV)/.installed

reports: setup
	$(PY) -m maskclf reports $(if $(DATA),--data $(DATA))

test: setup
	$(PY) -m pytest

lab: setup  ## JupyterLab from the venv; its python3 kernel imports maskclf
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)
