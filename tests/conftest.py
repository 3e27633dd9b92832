"""Shared fixtures. Study tests use one real local Ray per pytest session, real SQLite results
databases and real SQLite MLflow stores under tmp paths; no mocks."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STUDY_BIN = str(Path(sys.executable).with_name("study"))

# Tiny budgets: a trial of these takes seconds on two CPU cores.
QUICK_ADDITION = {
    "task": "addition",
    "updates": 40,
    "report_every": 10,
    "seq_length": 20,
    "eval_cases": 100,
    "lr": 1e-3,
    "mu_0": 0.9,
}


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session; the study code reuses it (ray.is_initialized)."""
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # System metrics at the shipped interval (2 s): a trial that ends sooner still logs the sample
    # taken as it started (study/record/tracking.py, TrialSystemMetrics); sampling every 0.2 s
    # only cost each trial process a write to its MLflow store five times a second.
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def study_in_process(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`study ARGS` through study.cli.main.main in this process, as a CompletedProcess.

    The same code as the executable behind the same non-terminal output (piped, 200 columns),
    without the interpreter start and imports each subprocess pays (seconds on two cores). For
    tests whose property is the command's output or effect; each command keeps at least one test
    that runs the real `study` executable (docs/testing.md). ``env`` replaces os.environ for
    the call, as a subprocess's env does.
    """
    from study.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(list(args))
            except SystemExit as exc:  # argparse's refusals
                rc = exc.code if isinstance(exc.code, int) else 2
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess([STUDY_BIN, *args], rc, out.getvalue(), err.getvalue())


@pytest.fixture
def study_env(tmp_path, monkeypatch):
    """A studies directory of its own, and no outside locations leaking in from the environment."""
    for var in ("MOMENTUM_STUDY_DIR", "MOMENTUM_STUDY_RESULTS_DB", "MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "studies"
    monkeypatch.setenv("MOMENTUM_STUDY_DIR", str(root))
    return root


def quick_spec(name: str, **overrides):
    """A small TPE study over the addition problem, as a spec mapping."""
    spec = {
        "name": name,
        "task": "addition",
        "config": {k: v for k, v in QUICK_ADDITION.items() if k not in ("task", "lr")},
        "search": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        "sampler": {"type": "tpe", "seed": 0},
        "num_samples": 3,
        "max_concurrent_trials": 2,
    }
    spec.update(overrides)
    return spec


@pytest.fixture(scope="session")
def quick_study(ray_session, tmp_path_factory):
    """A finished 3-trial study (repeats 2: each trial a fused population of two seeds), run once
    per session in this process on the session's Ray; yields its Locations."""
    from study.run import runner
    from study.locations import resolve
    from study.spec.model import load_spec

    root = tmp_path_factory.mktemp("studies")
    spec = load_spec(quick_spec("quick-test", repeats=2))
    loc = resolve(spec.name, root, None, None, None)
    state = runner.run(spec, loc)
    assert state == "completed"
    return loc


def pytest_collection_modifyitems(config, items):
    """Under worksteal, the heavy modules spread over the workers and run first (tests/worker_order.py)."""
    from worker_order import reorder

    reorder(config, items)
