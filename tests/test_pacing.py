"""A sampler that learns from results sees results (issue 21): the searcher asks TPE, GP and
CMA-ES in rounds (study/plan/pacing.py), the plan shows the populations that makes, and a spec that
leaves such a sampler blind is warned about before anything runs.

The searcher is driven as Tune drives it (suggest, on_trial_result, on_trial_complete) on a real
Optuna study in a real SQLite results database, its results told by the study's own rule
(optuna_study.tell_ended); the end-to-end test runs a small TPE study on the session's Ray and
reads from Optuna's storage what each suggestion could have seen."""

from __future__ import annotations

import pytest
from ray.tune.search import Searcher

from conftest import quick_spec, study_in_process
from study.plan import pacing
from study.run import optuna_study, searcher as search
from study.spec.model import load_spec


def _spec(name="paced", **overrides):
    return load_spec(quick_spec(name, **overrides))


def test_the_start_up_and_the_window_come_from_the_sampler_and_the_study_size():
    tpe = optuna_study.study_pacing(_spec(num_samples=30), per_trial=4)
    assert (tpe.startup, tpe.window) == (10, 5)  # TPE's n_startup_trials; ceil(20 / 4 rounds)
    own = optuna_study.study_pacing(_spec(num_samples=30, sampler={"type": "tpe", "options": {"n_startup_trials": 2}}))
    assert (own.startup, own.window) == (2, 7)
    gp = optuna_study.study_pacing(_spec(num_samples=14, sampler={"type": "gp"}))
    assert (gp.startup, gp.window) == (10, 1)
    cma = optuna_study.study_pacing(_spec(num_samples=30, sampler={"type": "cmaes"}), per_trial=6)
    assert (cma.startup, cma.window) == (6, 6)  # one generation of the batch's popsize at a time
    for free in ("random", "qmc"):
        assert optuna_study.study_pacing(_spec(sampler={"type": free})) is None
    grid = load_spec({**quick_spec("g"), "num_samples": None, "sampler": {"type": "grid"}, "search": {"lr": {"type": "grid", "values": [1e-3]}}})
    assert optuna_study.study_pacing(grid) is None


def test_populations_take_the_start_up_then_one_window_at_a_time():
    pace = pacing.pacing("tpe", 30, startup=10)
    assert pace.allowed(asked=0, pending=0) == 10
    assert pace.allowed(asked=8, pending=8) == 2  # start-up suggestions need no results
    assert pace.allowed(asked=10, pending=10) == 0
    assert pace.allowed(asked=10, pending=2) == 3
    assert pacing.population_sizes(pace, 30, per_trial=4) == [4, 4, 2, 4, 4, 4, 4, 4]  # window 5 > 4
    assert pacing.population_sizes(pace, 30, per_trial=8) == [8, 2, 5, 5, 5, 5]
    assert pacing.population_sizes(None, 30, per_trial=8) == [8, 8, 8, 6]


def test_a_spec_that_leaves_a_learning_sampler_blind_is_warned_about():
    blind = pacing.blind_warnings(optuna_study.study_pacing(_spec(num_samples=8)), 8, "sampler.options.n_startup_trials")
    assert len(blind) == 1 and "num_samples=8" in blind[0] and "n_startup_trials=10" in blind[0]
    assert "raise num_samples above 10" in blind[0]
    assert pacing.blind_warnings(optuna_study.study_pacing(_spec(num_samples=30)), 30, "x") == []
    assert pacing.blind_warnings(None, 3, "x") == []  # random search learns nothing: nothing to warn


def test_study_plan_warns_before_anything_runs_and_shows_the_paced_populations(tmp_path):
    spec = tmp_path / "tpe.yaml"
    spec.write_text("name: tpe8\ntask: addition\nsearch:\n  lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
                    "num_samples: 8\nconfig: {updates: 40, report_every: 10, seq_length: 20}\n")
    done = study_in_process("plan", str(spec))
    assert done.returncode == 0, done.stderr
    assert "warning:" in done.stdout and "num_samples=8" in done.stdout and "n_startup_trials=10" in done.stdout
    spec.write_text(spec.read_text().replace("num_samples: 8", "num_samples: 30") + "sampler: {type: tpe, options: {n_startup_trials: 4}}\n")
    import json

    done = study_in_process("plan", str(spec), "--format", "json")
    run = json.loads(done.stdout)["run"]
    assert run["warnings"] == []
    sizes = [p["configurations"] for p in run["populations"] for _ in range(p["count"])]
    assert sum(sizes) == 30 and sizes[0] <= 4 and max(sizes[1:]) <= 7  # start-up 4, then windows of ceil(26/4)


def _driven(tmp_path, spec, per_trial):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    s = search.searcher(spec, url, per_trial, optuna_study.batch_sampler(spec, per_trial))
    return s, optuna_study.OptunaStudy.load(url, spec.name)


def _finish(study, table, value=0.5):
    for c in table:
        ot_id = next(t._trial_id for t in study.trials() if t.number == c["number"])
        optuna_study.tell_ended(study, ot_id, "completed", value)


def test_the_searcher_waits_for_results_and_never_when_nothing_runs(tmp_path):
    spec = _spec(num_samples=12, sampler={"type": "tpe", "seed": 0, "options": {"n_startup_trials": 3}})
    s, study = _driven(tmp_path, spec, per_trial=4)
    pace = s._pace
    assert (pace.startup, pace.window) == (3, 3)  # ceil(9 / 4 rounds)
    first = s.suggest("a")["population"]
    assert len(first) == 3  # the start-up only, though a population could take 4
    # Population "a" is running and none of its three has a result: the window is full.
    s.on_trial_result("a", {})
    assert s.suggest("b") is None
    _finish(study, first[:1])  # one result: one new suggestion is allowed
    second = s.suggest("b")["population"]
    assert len(second) == 1
    assert s.suggest("c") is None
    # Population "a" ends in Tune with two of its configurations never told (a driver that lost
    # them): they do not hold the study, since nothing can bring their results.
    s.on_trial_complete("a")
    third = s.suggest("c")["population"]
    assert len(third) == 2  # window 3 less second's one pending
    s.on_trial_complete("b")
    s.on_trial_complete("c")
    handed = len(first) + len(second) + len(third)
    while True:
        tid = f"p{handed}"
        got = s.suggest(tid)
        assert got is not None  # nothing live: never a wait
        if got == Searcher.FINISHED:
            break
        handed += len(got["population"])
        s.on_trial_complete(tid)
    assert handed == 12


@pytest.mark.parametrize("kind", ["random", "qmc"])
def test_samplers_that_do_not_learn_fill_populations_freely(tmp_path, kind):
    s, _ = _driven(tmp_path, _spec(num_samples=12, sampler={"type": kind}), per_trial=5)
    assert [len(s.suggest(t)["population"]) for t in "abc"] == [5, 5, 2]
    assert s.suggest("d") == Searcher.FINISHED


def test_a_tpe_study_asks_each_suggestion_after_the_start_up_with_results_in(ray_session, study_env):
    """A real fused TPE study: every configuration asked after the start-up had all but at most a
    window of the earlier ones finished in Optuna when it was asked, and the populations are no
    larger than the pacing allows."""
    import optuna

    from study import api
    from study.locations import resolve
    from study.run import runner

    raw = quick_spec("paced-tpe", num_samples=4, repeats=1, max_concurrent_trials=2,
                     sampler={"type": "tpe", "seed": 0, "options": {"n_startup_trials": 2}})
    raw["config"].update(updates=20, report_every=10)
    spec = load_spec(raw)
    loc = resolve(spec.name)
    assert runner.run(spec, loc) == "completed"
    window = optuna_study.study_pacing(spec).window
    assert window == 1
    trials = optuna.load_study(study_name=spec.name, storage=loc.results_db).trials
    assert len(trials) == 4
    for t in trials[2:]:
        earlier = [u for u in trials if u.number < t.number]
        unfinished = [u for u in earlier if u.datetime_complete is None or u.datetime_complete > t.datetime_start]
        assert len(unfinished) <= window, (t.number, [u.number for u in unfinished])
    sizes = api.trials(spec.name).groupby("population").size()
    assert sorted(sizes) == [1, 1, 2]  # the start-up's two, then one at a time


def test_a_population_whose_configurations_all_ended_holds_nothing_back(tmp_path):
    """A restored population Tune does not report complete to the searcher (its ConcurrencyLimiter
    passes that on only for trials it started): its last result, every configuration ended, is enough."""
    spec = _spec(num_samples=6, sampler={"type": "tpe", "seed": 0, "options": {"n_startup_trials": 2}})
    s, _ = _driven(tmp_path, spec, per_trial=2)
    first = s.suggest("a")["population"]
    s.on_trial_result("a", {"configs": [{"ended": False}, {"ended": True}]})
    assert s.suggest("b") is None  # window 1, two configurations without a result, "a" live
    s.on_trial_result("a", {"configs": [{"ended": True}] * len(first)})
    assert len(s.suggest("b")["population"]) == 1
