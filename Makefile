# Every target bootstraps .venv itself from the lock, so a fresh machine needs only python3 and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# A user's project that tests its own flow with the sandbox pytest plugin (docs/testing.md).
EXAMPLE := examples/synapse_tagging
EXAMPLE_STAMP := $(VENV)/.example-installed-stamp
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: install install-example system-deps demo test test-example compat lint format bench lock clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# Installed the way a user installs it: with its dependencies (prefect-neurodata[sandbox]),
# which the lock already satisfies, so the plugin comes from our entry point, not a path hack.
$(EXAMPLE_STAMP): $(STAMP) $(EXAMPLE)/pyproject.toml
	$(BIN)/pip install --quiet -e $(EXAMPLE)
	touch $(EXAMPLE_STAMP)

install-example: $(EXAMPLE_STAMP)

# Debian packages the integration tests start for real: a PostgreSQL server and an OpenSSH server.
system-deps:
	bash scripts/install-system-deps.sh

demo: install
	$(BIN)/python -m prefect_neurodata.demo

test: install system-deps
	$(BIN)/pytest $(PYTEST_ARGS)
	$(MAKE) test-example

# The example project's own suite, run from its directory so its pytest settings apply.
test-example: install-example
	cd $(EXAMPLE) && $(CURDIR)/$(BIN)/pytest -p no:cacheprovider

# The official clients' own test suites, downloaded from their sdists at run time, run against the
# official packages (own venv from compat/official-requirements.lock) and against ours.
compat: install
	$(BIN)/python compat/run.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

# Re-resolve every dependency (with all extras) and rewrite the lock.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet -e '.[cave,aind,sandbox,dask,dev,helpers]'
	.lock-venv/bin/pip freeze --exclude-editable | grep -v '^prefect-neurodata' > requirements.lock
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .sandbox .pytest_cache .compat
