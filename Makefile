# itsup: `make demo` shows a real backup and restore; `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test

.PHONY: venv install test lint typecheck demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The package and its runtime dependencies.
install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

# Everything the tests need: the package, test tools, the real S3 server
# (juicefs gateway), sops, and the plain `age`/`tar`/`gzip` tools.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	@command -v age >/dev/null 2>&1 || { \
		echo "installing the plain 'age' tool (used to prove archives restore without itsup)"; \
		(apt-get update -qq && apt-get install -y -qq age) >/dev/null; }
	@touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check itsup tests bench bin
	$(BIN)/ruff format --check itsup tests bench bin

typecheck: $(STAMP)
	$(BIN)/mypy

# Installs what the tests need, then runs them all. The tests start their own
# services (an S3-compatible server on loopback) and fail, never skip, when
# one cannot be started.
test: $(STAMP) lint typecheck
	$(BIN)/pytest -q

demo: install
	$(BIN)/python bin/demo.py

bench: $(STAMP)
	$(BIN)/python bench/bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
