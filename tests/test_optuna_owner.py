"""Optuna has one owner in study/ (study/run/optuna_study.py and its reading side
optuna_study_analysis.py, which know nothing of Ray), and what the service does through it holds
on a real SQLite results database: the sampler a run builds is the one its searcher asks, a grid's
last tell does not raise, the sampler's saved state comes back as it was, and deleting a study
drops its Optuna study."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from conftest import quick_spec
from study.run import optuna_study
from study.run.optuna_study import OptunaStudy
from study.spec.model import load_spec

REPO = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


OWNERS = ["study/run/optuna_study.py", "study/run/optuna_study_analysis.py"]


def test_only_optuna_study_imports_optuna_in_the_service():
    importers = sorted(
        str(p.relative_to(REPO)) for p in (REPO / "study").rglob("*.py")
        if any(n == "optuna" or n.startswith("optuna.") for n in _imports(p))
    )
    assert importers == OWNERS


def test_optuna_study_imports_no_ray():
    for owner in OWNERS:
        assert not any(n == "ray" or n.startswith("ray.") for n in _imports(REPO / owner)), owner
    # Nor through what they import: a fresh interpreter has no ray module after importing them.
    code = "import sys, study.run.optuna_study, study.run.optuna_study_analysis; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def _spec(name: str, **kw):
    return load_spec(yaml.safe_dump(quick_spec(name, **kw)))


def test_the_searcher_asks_the_sampler_the_run_built(tmp_path):
    from study.run import searcher as search

    spec = _spec("one-sampler", num_samples=4, sampler={"type": "tpe", "seed": 0})
    sampler = optuna_study.batch_sampler(spec, 2)
    found = search.searcher(spec, f"sqlite:///{tmp_path / 'results.db'}", 2, sampler)
    assert found._sampler is sampler and found._optuna.sampler is sampler


def test_a_grids_last_tell_is_stored_and_does_not_raise(tmp_path):
    """GridSampler stops the study once its grid is exhausted, which raises outside Optuna's own
    optimize loop; the tell still lands."""
    url = f"sqlite:///{tmp_path / 'results.db'}"
    space = {"lr": optuna.distributions.CategoricalDistribution([0.1, 0.2])}
    study = OptunaStudy.create(url, "grid", optuna.samplers.GridSampler({"lr": [0.1, 0.2]}, seed=0), "min", "error")
    asked = [study.ask(space) for _ in range(2)]
    assert sorted(t.params["lr"] for t in asked) == [0.1, 0.2]
    study.tell(asked[0]._trial_id, 0.5)
    study.tell(asked[1]._trial_id, state="PRUNED")  # the grid's last: GridSampler calls Study.stop()
    states = [t.state for t in OptunaStudy.load(url, "grid").trials()]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED]
    assert study.finished(asked[1]._trial_id) and not optuna_study.is_running(study.trial(asked[1]._trial_id))


def test_the_saved_sampler_draws_what_the_live_one_draws_next(tmp_path):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    space = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    study = OptunaStudy.create(url, "state", optuna.samplers.RandomSampler(seed=3), "min", "error")
    first = study.ask(space)
    study.keep_sampler(first.number)
    assert study.saved_sampler(first.number + 1) is None  # older than the newest ask: not used
    saved = study.saved_sampler(first.number)
    live = study.ask(space).params["x"]
    reopened = OptunaStudy.load(url, "state", saved)
    assert reopened.ask(space).params["x"] == live


@pytest.mark.parametrize("with_rows", [False, True])
def test_deleting_a_study_drops_its_optuna_study(tmp_path, with_rows):
    from study.record import results

    url = f"sqlite:///{tmp_path / 'results.db'}"
    if with_rows:
        results.upsert_study(url, name="gone", task="addition", metric="error", mode="min", num_samples=1,
                             repeats=1, state="running", spec_yaml="", tune_path="tune", mlflow_uri="")
    OptunaStudy.create(url, "gone", optuna.samplers.RandomSampler(seed=0), "min", "error")
    results.delete_study(url, "gone")
    assert optuna.get_all_study_names(optuna_study.storage(url)) == []
    assert results.get_study(url, "gone") is None
    results.delete_study(url, "gone")  # nothing left: not an error
