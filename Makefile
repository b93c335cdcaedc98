# The commands of the README: `make serve`, `make test`, `make test-fast`. Each sets up .venv
# first: `serve` with the runtime dependencies only, the others with the dev extra as well.
VENV ?= .venv
# Where PYTHONDONTWRITEBYTECODE is set (some images do), every Python process compiles casd's
# modules anew and pytest rewrites the test modules anew; the suite starts casd some 250 times.
unexport PYTHONDONTWRITEBYTECODE
PYTHON ?= python3
BIN = $(VENV)/bin

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Runtime only: what `pip install .` gives a user.
$(VENV)/.runtime: pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# The browser of the page tests (tests/test_web.py): Debian's chromium, installed once, as root
# (CI is root on a fresh machine); Playwright drives it and never downloads a browser itself.
CHROMIUM = /usr/bin/chromium

$(CHROMIUM):
	@if [ "$$(id -u)" != 0 ]; then echo "the page tests need chromium: sudo apt-get install chromium" >&2; exit 1; fi
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

# PgBouncer in transaction mode, which casd must refuse at start (tests/test_database_checks.py):
# Debian's pgbouncer, installed once, as root like chromium; the tests start it themselves.
PGBOUNCER = /usr/sbin/pgbouncer

$(PGBOUNCER):
	@if [ "$$(id -u)" != 0 ]; then echo "the database checks need pgbouncer: sudo apt-get install pgbouncer" >&2; exit 1; fi
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer

# Runtime plus the test and lint toolchain.
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.runtime

.PHONY: serve test test-fast lint bench
serve: $(VENV)/.runtime
	$(BIN)/casd serve

lint: $(VENV)/.installed
	$(BIN)/ruff check
	$(BIN)/ruff format --check
	$(BIN)/mypy

# Every tier: unit, service, http, the end-to-end tests with real casd processes and the
# multi-node tier (three casd nodes over one database), in TEST_PROCESSES pytest processes: the
# suite mostly waits on casd, PostgreSQL and SeaweedFS, so three keep two cores busy. One
# module is one unit of work (tests/conftest.py, GroupScheduling).
TEST_PROCESSES ?= 3
test: lint $(CHROMIUM) $(PGBOUNCER)
	$(BIN)/python -m pytest -n $(TEST_PROCESSES)

# Everything but the end-to-end and multi-node tiers.
test-fast: lint
	$(BIN)/python -m pytest -m 'not e2e and not multinode'

bench: $(VENV)/.runtime
	$(BIN)/python -m bench
