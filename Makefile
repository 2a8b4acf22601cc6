# Everyday commands. `make all` is what to run before pushing.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv lint test test-fast demo bench all clean

venv:
	bash scripts/bootstrap.sh

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test:
	bash scripts/test.sh

# The unit tier (tests/unit): the pytest process alone, no process or network. `make test`
# (and CI) run all three tiers once: tests/unit, tests/integration, tests/system.
test-fast:
	$(PY) -m pytest -q tests/unit

demo:
	bash scripts/demo.sh

bench:
	$(PY) -m bench

all: lint test

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
