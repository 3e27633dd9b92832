# Set-up and the two entry points of README.md. Plain pip in a venv: torch==2.13.0 resolves to the
# CPU build on this disk; uv and poetry don't see it and would pull a multi-GB CUDA build.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup setup-test run test bench evidence clean

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

# The main example, on the embedded default (local Ray, studies/quick/ for SQLite and MLflow)
# whatever the environment points at, and afresh each time: the previous quick study is deleted
# first (`study delete` refuses while it is running). Keep one by running its spec under another name.
run: setup
	unset MOMENTUM_STUDY_DIR MOMENTUM_STUDY_RESULTS_DB MLFLOW_TRACKING_URI RAY_ADDRESS MOMENTUM_STUDY_STORAGE; \
	if [ -e studies/quick ]; then $(BIN)/study delete quick --yes || exit $$?; fi; \
	$(BIN)/study run search_spaces/quick.yaml

# Two pytest workers (pytest-xdist): most of the suite's time is spent starting `study` processes
# and Ray clusters and waiting on them, so two at a time use the two cores of a small machine;
# worksteal evens out the few long fault tests. One worker: `pytest -p no:xdist` or `-n 0`.
# One OpenMP thread per process: the tests' models are small, and with two workers (and their
# Ray trials) on two cores a second thread per process only spins (12.3 min against 13.2).
test: setup-test
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist worksteal

# Every report under docs/results/ made from scratch with this code (search_spaces/evidence.yaml;
# about two hours on two cores). `study evidence --only NAME` remakes one.
evidence: setup
	$(BIN)/study evidence

bench: setup
	$(BIN)/python benchmarks/updates_per_second.py

clean:
	rm -rf $(VENV) studies
