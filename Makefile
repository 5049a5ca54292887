# The two commands: `make up` runs the stack, `make test` runs the tests.
# `make bench` measures the proxy against nginx (needs nginx and wrk; BENCH_ARGS=--quick for a smoke run).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: up test bench clean

$(BIN)/python:
	@echo "==> creating $(VENV) with $$($(PYTHON) --version)"
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@echo "==> installing twotier into $(VENV)"
	$(BIN)/pip install --disable-pip-version-check -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	@echo "==> installing twotier with the dev extra into $(VENV)"
	$(BIN)/pip install --disable-pip-version-check -e '.[dev]'
	@touch $@ $(VENV)/.installed

up: $(VENV)/.installed
	$(BIN)/python -m appserver.stack

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed-dev
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
