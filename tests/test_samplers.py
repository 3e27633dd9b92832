"""The samplers no other study test runs (GP, QMC, random) and `mode: max`, end to end: a tiny
study each on the session's real local Ray, SQLite results DB, MLflow store and Optuna storage.

What each shows: the spec's sampler is the one that suggests (the configurations are the ones
plain Optuna's sampler with the same seed suggests: GP's first suggestions are its random
start-up, QMC's and random's never depend on results); Optuna is told every configuration's
value as the results DB holds it, in the study's direction; and a trial's best is the best of its
reports in that direction, computed here from the raw metric points.
"""

from __future__ import annotations

import warnings

import optuna
import pytest

from conftest import quick_spec
from study import api
from study.locations import resolve
from study.run import runner
from study.spec.model import load_spec

SAMPLES = 4  # two populations of two

PLAIN = {
    "gp": lambda: optuna.samplers.GPSampler(seed=0),
    "qmc": lambda: optuna.samplers.QMCSampler(seed=0),
    "random": lambda: optuna.samplers.RandomSampler(seed=0),
}


def _plain_suggestions(kind: str) -> list[float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental samplers
        study = optuna.create_study(sampler=PLAIN[kind]())
        lr = optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
        return [study.ask({"lr": lr}).params["lr"] for _ in range(SAMPLES)]


@pytest.mark.parametrize("kind, mode", [("gp", "min"), ("qmc", "min"), ("random", "max")])
def test_a_study_with_each_sampler_and_either_mode_runs_end_to_end(ray_session, study_env, kind, mode):
    name = f"sampler-{kind}-{mode}"
    # The loss as the metric: continuous, so a trial's reports differ and min and max pick apart.
    raw = quick_spec(name, num_samples=SAMPLES, max_members=2, max_concurrent_trials=1,
                     sampler={"type": kind, "seed": 0}, mode=mode, metric="loss")
    raw["config"].update(updates=20, report_every=10)
    spec = load_spec(raw)
    loc = resolve(name)
    assert runner.run(spec, loc) == "completed"

    trials = api.trials(name)
    assert len(trials) == SAMPLES and set(trials["state"]) == {"completed"}
    by_number = trials.set_index("optuna_trial_number").sort_index()
    assert by_number.index.tolist() == list(range(SAMPLES))
    assert by_number["lr"].tolist() == _plain_suggestions(kind)

    ot = optuna.load_study(study_name=name, storage=loc.results_db)
    want = optuna.study.StudyDirection.MAXIMIZE if mode == "max" else optuna.study.StudyDirection.MINIMIZE
    assert ot.direction == want
    assert [t.state for t in ot.trials] == [optuna.trial.TrialState.COMPLETE] * SAMPLES
    for t in ot.trials:
        assert t.value == pytest.approx(by_number.loc[t.number, "metric_value"], rel=1e-12)
        assert t.user_attrs["state"] == "completed"
    pick = max if mode == "max" else min
    assert ot.best_value == pick(t.value for t in ot.trials)

    # A trial's best, from the raw points: per report the mean over its members, best by mode.
    points = api.metrics(name)
    for trial_id, best in trials.set_index("trial_id")["best_metric_value"].items():
        per_step = points[points["trial_id"] == trial_id].groupby("step")[spec.metric].mean()
        assert len(per_step) == 2 and per_step.iloc[0] != per_step.iloc[1]  # so min and max differ
        assert best == pytest.approx(pick(per_step), rel=1e-12), (trial_id, best, per_step.tolist())
