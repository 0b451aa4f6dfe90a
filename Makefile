# The two set-up commands of the README, plus helpers. Everything runs inside a git-ignored
# virtual environment in the checkout, created on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test lab export clean-nbs bench readme check

$(STAMP): settings.ini setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/unilearn demo

# tests/browser/setup.sh installs Debian's chromium + playwright-core where it can (never fails);
# without them the JupyterLab browser test skips with a message.
test: $(STAMP)
	-tests/browser/setup.sh
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

# nbdev's pre-save hook cleans a notebook as JupyterLab saves it (jupyter_hooks = True in settings.ini).
lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=nbs --ContentsManager.pre_save_hook=nbdev.clean.clean_jupyter

# Notebook -> module, clean notebooks, regenerate README.md from nbs/index.ipynb.
export: $(STAMP)
	$(BIN)/nbdev_export
	$(BIN)/nbdev_clean
	$(BIN)/jupyter nbconvert --to markdown --stdout nbs/index.ipynb > README.md

bench: $(STAMP)
	$(BIN)/python -m unilearn.bench
