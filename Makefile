# itsup: `make demo` shows a real backup and restore; `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test

.PHONY: venv install test lint typecheck demo bench clean reliability

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The package and its runtime dependencies.
install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

# Everything the tests need: the package, test tools, the real S3 server
# (juicefs gateway), sops, the plain `age`/`tar`/`gzip` tools, and
# systemd-analyze / logrotate to check generated schedules.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	@missing=""; \
	command -v age >/dev/null 2>&1 || missing="$$missing age"; \
	command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	command -v logrotate >/dev/null 2>&1 || missing="$$missing logrotate"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing (plain age proves archives restore without itsup;"; \
		echo "  systemd-analyze and logrotate check the schedules itsup writes)"; \
		(apt-get update -qq && apt-get install -y -qq $$missing) >/dev/null; \
	fi
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

# The fault suite (tests marked `faults`) with its ledger, rendered into the tables
# of docs/reliability.md (only when every test passed; the prose is kept).
reliability: $(STAMP)
	@ledger=$$(mktemp -d)/ledger.json; \
	ITSUP_RELIABILITY_OUT=$$ledger $(BIN)/pytest -q -m faults; status=$$?; \
	if [ $$status -eq 0 ]; then $(BIN)/python bench/reliability.py $$ledger docs/reliability.md; \
	else echo "fault tests failed: docs/reliability.md not updated (ledger: $$ledger)"; fi; \
	exit $$status

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
