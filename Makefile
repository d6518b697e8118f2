# Two commands for a fresh machine: `make run` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt
PYTEST_ARGS ?=

.PHONY: run test lint install install-dev browser bench format lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) -e '.[dev]'
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

## Serve the demo salon on http://127.0.0.1:8000 (SQLite, sample data on first run); prints the login.
run: install
	$(BIN)/mailtrack demo

## Lint, type-check, then the whole suite on SQLite and PostgreSQL (and the dashboard in Chromium).
test: install-dev lint browser
	$(BIN)/pytest -n 2 $(PYTEST_ARGS)

## Debian's Chromium for the browser tests (never a downloaded browser); installed once when missing.
browser:
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) || \
		echo "chromium is missing and cannot be installed here: browser tests will skip (or fail under CI=true)"; }

lint: install-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: install-dev
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

## Benchmarks: each prints its figures next to a reference measured in the same run (wrk: Debian).
bench: install-dev
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m bench.ingest
	$(BIN)/python -m bench.tracking
	$(BIN)/python -m bench.dashboard_render
	$(BIN)/python -m bench.dashboard
	$(BIN)/python -m bench.sendtime

## Re-pin every dependency after changing pyproject.toml.
lock: install-dev
	$(BIN)/pip freeze --exclude-editable | grep -v '^mailtrack' > constraints.txt

clean:
	rm -rf $(VENV) build *.egg-info mailtrack.db mailtrack.db-wal mailtrack.db-shm
