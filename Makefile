# itsup: `make demo` shows a real backup and restore; `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test

.PHONY: venv install test test-unit test-integration test-e2e lint typecheck demo bench bench-dumps bench-smallfiles clean reliability

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

# The tests run on WORKERS pytest-xdist workers: they mostly wait on subprocesses,
# servers and disk, so more workers than cores pays (4 measured best on 2 cores).
# Each worker starts its own services. Tests marked `serial` run alone afterwards.
WORKERS ?= 4
PYTEST := $(BIN)/pytest -q
PARALLEL := $(PYTEST) -n $(WORKERS) --dist loadgroup

# Installs what the tests need, then runs them all: lint, types, every tier. The
# tests start their own services (an S3-compatible server on loopback) and fail,
# never skip, when one cannot be started. One tier: make test-unit (in-process,
# seconds), test-integration (real S3 server, git, sops, tar) or test-e2e (the
# itsup command); one file: .venv/bin/pytest tests/e2e/test_verify.py
#
# Tests marked `docker` run real database engines in containers: DOCKER_UP installs
# Docker and Compose when missing, starts a daemon when none answers and builds the
# stand-in images once, before the workers start (tests/dockerenv.py). DOCKER_DOWN
# stops the daemon DOCKER_UP started, also when pytest fails; pytest's exit code is kept.
DOCKER_UP := $(BIN)/python tests/dockerenv.py up
DOCKER_DOWN := $(BIN)/python tests/dockerenv.py down

test: $(STAMP) lint typecheck
	$(DOCKER_UP) && { $(PARALLEL) -m "not serial" && $(PYTEST) -m serial; }; \
	rc=$$?; $(DOCKER_DOWN); exit $$rc

test-unit: $(STAMP)
	$(PYTEST) tests/unit

test-integration: $(STAMP)
	$(DOCKER_UP) && $(PARALLEL) tests/integration; \
	rc=$$?; $(DOCKER_DOWN); exit $$rc

test-e2e: $(STAMP)
	$(DOCKER_UP) && { $(PARALLEL) -m "not serial" tests/e2e && $(PYTEST) -m serial tests/e2e; }; \
	rc=$$?; $(DOCKER_DOWN); exit $$rc

demo: install
	$(BIN)/python bin/demo.py

bench: $(STAMP)
	$(BIN)/python bench/bench.py

# A PostgreSQL dump beside the file backup, and its restore (bench/README.md): needs
# a PostgreSQL server, by default on 127.0.0.1:5432 as postgres (bench/dumps.py --help).
bench-dumps: $(STAMP)
	$(BIN)/python bench/dumps.py

# 200,000 small files: itsup against tar | igzip and restic (if installed), backup and
# restore, medians of 3 (bench/README.md). FILES=1000000 for the big tree; ARGS for more
# options, e.g. ARGS="--workdir DIR --profile".
FILES ?= 200000
bench-smallfiles: $(STAMP)
	$(BIN)/python bench/smallfiles.py --files $(FILES) $(ARGS)

# The fault suite (tests marked `faults`) with its ledger, rendered into the tables
# of docs/reliability.md (only when every test passed; the prose is kept).
reliability: $(STAMP)
	@ledger=$$(mktemp -d)/ledger.json; \
	ITSUP_RELIABILITY_OUT=$$ledger $(PARALLEL) -m "faults and not serial"; status=$$?; \
	ITSUP_RELIABILITY_OUT=$$ledger $(PYTEST) -m "faults and serial" || status=$$?; \
	if [ $$status -eq 0 ]; then $(BIN)/python bench/reliability.py $$ledger docs/reliability.md; \
	else echo "fault tests failed: docs/reliability.md not updated (ledger: $$ledger)"; fi; \
	exit $$status

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .mypy_cache .ruff_cache build *.egg-info
