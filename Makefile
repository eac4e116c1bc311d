# Every target bootstraps .venv itself from the lock, so a fresh machine needs only python3 and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: install system-deps demo test lint format bench lock clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# Debian packages the integration tests start for real: a PostgreSQL server and an OpenSSH server.
system-deps:
	bash scripts/install-system-deps.sh

demo: install
	$(BIN)/python -m prefect_neurodata.demo

test: install system-deps
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

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
	.lock-venv/bin/pip install --quiet -e '.[cave,aind,sandbox,dask,dev]'
	.lock-venv/bin/pip freeze --exclude-editable | grep -v '^prefect-neurodata' > requirements.lock
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .sandbox .pytest_cache
