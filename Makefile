# Set-up and the two entry points of README.md. Plain pip in a venv: torch==2.13.0 resolves to the
# CPU build on this disk; uv and poetry don't see it and would pull a multi-GB CUDA build.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup setup-test run test bench clean

$(BIN)/study: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(BIN)/study

setup: $(BIN)/study

# Test services: Debian's chromium (the MLflow UI test) and PostgreSQL (cluster tests).
setup-test: setup
	bash tests/setup_browser.sh
	if [ -f tests/setup_postgres.sh ]; then bash tests/setup_postgres.sh; fi

run: setup
	$(BIN)/study run search_spaces/quick.yaml

test: setup-test
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/updates_per_second.py

clean:
	rm -rf $(VENV) studies
