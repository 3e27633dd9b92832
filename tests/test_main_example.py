"""The README's main example (search_spaces/quick.yaml) and the verdict that ends it (study/report/verdict.py).

The verdict logic runs on results databases built here with study.record.results (no Ray); the shipped
spec runs for real (local Ray, SQLite, MLflow) at a reduced budget, then is deleted as `make run` does
before its next run (that a deleted study's name runs anew in the same stores:
tests/test_cli_output.py::test_delete_asks_then_removes_rows_optuna_mlflow_and_the_tune_directory).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sqlite3
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import STUDY_BIN
from study.record import results
from study.report.bias_only import bias_only_error
from study.spec.model import load_spec
from study.report.verdict import LEARNS_BELOW, LEARNS_NOT_ABOVE, study_verdict

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "search_spaces" / "quick.yaml"

ADDITION_T20 = {"task": "addition", "seq_length": 20, "lr": 0.005, "momentum_schedule": "constant", "updates": 2500}


def _study_db(tmp_path: Path, name: str, outcomes: list[tuple[dict, list[float | None]]], metric: str = "error") -> str:
    """A results DB holding one finished grid study: per trial its searched values and its seeds'
    final errors (None: that seed diverged)."""
    url = results.sqlite_url(tmp_path / "results.db")
    search = {k: {"type": "grid", "values": sorted({v[k] for v, _ in outcomes})} for k in outcomes[0][0]}
    spec_yaml = yaml.safe_dump({"name": name, "task": "addition", "search": search, "sampler": "grid", "repeats": 2})
    study_id = results.upsert_study(
        url, name=name, task="addition", metric=metric, mode="min", num_samples=len(outcomes), repeats=2,
        state="completed", spec_yaml=spec_yaml, tune_path=str(tmp_path / "tune"), mlflow_uri="sqlite:///unused.db",
    )
    now = dt.datetime(2026, 1, 1)
    for i, (values, errors) in enumerate(outcomes):
        trial_id = f"t{i}"
        config = {**ADDITION_T20, **values, "seed": list(range(len(errors)))}
        diverged = sum(e is None for e in errors)
        finite = [e for e in errors if e is not None]
        results.start_trial(url, study_id, trial_id, now, params=values, config=config, members=len(errors),
                            optuna_trial_number=i)
        results.report_trial(url, study_id, trial_id, "min", last_step=2500, members_diverged=diverged,
                             metric_value=sum(finite) / len(finite) if finite else None,
                             objective=float("inf") if diverged else sum(finite) / len(finite))
        results.record_trial_points(url, study_id, trial_id, 2500, [
            {"member": k, "seed": k, "error": 1.0 if e is None else e, "loss": 0.1, "mu": values.get("mu_max"),
             "lr": 0.005, "status": "diverged" if e is None else "completed", "diverged_at": 900 if e is None else None}
            for k, e in enumerate(errors)
        ])
        results.finish_trial(url, study_id, trial_id, "diverged" if diverged == len(errors) else "completed", now)
    return url


def _level() -> float:
    return bias_only_error(ADDITION_T20)[0]


# The bias-only level of addition, in closed form: the target is the sum of two values uniform on
# [0, 1] (triangular on [0, 2], mean 1), the constant prediction is that mean, and a case is wrong
# when it is off by more than d = 0.04: P(|a + b - 1| > d) = 1 - (2d - d^2) = 0.9216. The task
# scores its constant on BIAS_ONLY_SEQUENCES = 4000 drawn sequences, so it may differ from this by
# sampling error: 4 standard errors of a proportion over 4000 cases.
ADDITION_BIAS_ONLY = 1 - (2 * 0.04 - 0.04**2)
ADDITION_BIAS_ONLY_TOL = 4 * (ADDITION_BIAS_ONLY * (1 - ADDITION_BIAS_ONLY) / 4000) ** 0.5


def test_bias_only_level_of_the_main_example_is_the_mean_output_error_at_t20():
    level, how = bias_only_error(ADDITION_T20)
    assert how == "mean output"
    assert level == pytest.approx(ADDITION_BIAS_ONLY, abs=ADDITION_BIAS_ONLY_TOL)


def test_verdict_says_the_best_learns_and_the_worst_does_not(tmp_path):
    level = _level()
    url = _study_db(tmp_path, "grid", [
        ({"mu_max": 0.0, "spectral_radius": 1.1}, [0.90, 0.91]),
        ({"mu_max": 0.99, "spectral_radius": 1.1}, [0.02, 0.10]),
        ({"mu_max": 0.9, "spectral_radius": 1.1}, [0.45, 0.50]),
        ({"mu_max": 0.99, "spectral_radius": 0.3}, [0.92, 0.93]),
    ])
    v = study_verdict("grid", results_db=url)
    assert v.best.values == {"mu_max": 0.99, "spectral_radius": 1.1} and v.best.error == pytest.approx(0.06)
    assert [s.outcome() for s in v.settings] == ["learns", "learns a little", "does not", "does not"]
    assert v.best_line() == f"best configuration: mu_max 0.99, spectral_radius 1.1: error 0.06 (seeds: 0.02, 0.1); bias-only {level:.3g}"
    # One-factor contrasts from the best: the worst other momentum, the other radius.
    assert v.line() == (
        f"verdict: mu_max 0.99, spectral_radius 1.1 learns (error 0.06 vs bias-only {level:.3g}); "
        "with mu_max 0: does not (0.905); with spectral_radius 0.3: does not (0.925); 1 of 4 configurations learn"
    )


def test_verdict_of_a_sampled_search_names_the_worst_configuration(tmp_path):
    url = _study_db(tmp_path, "sampled", [
        ({"mu_max": 0.99, "spectral_radius": 1.1}, [0.05, 0.05]),
        ({"mu_max": 0.0, "spectral_radius": 0.5}, [0.92, 0.93]),
    ])
    line = study_verdict("sampled", results_db=url).line()
    assert line.endswith("; mu_max 0, spectral_radius 0.5 does not (0.925); 1 of 2 configurations learn")


def test_verdict_thresholds_follow_the_bias_only_level_not_fixed_numbers(tmp_path):
    level = _level()
    just_learns, just_fails = LEARNS_BELOW * level * 0.99, LEARNS_NOT_ABOVE * level * 1.01
    url = _study_db(tmp_path, "edges", [({"mu_max": 0.9}, [just_learns, just_learns]),
                                        ({"mu_max": 0.0}, [just_fails, just_fails])])
    v = study_verdict("edges", results_db=url)
    assert [s.outcome() for s in v.settings] == ["learns", "does not"]
    assert v.line().startswith("verdict: mu_max 0.9 learns (") and "; with mu_max 0: does not (" in v.line()


def test_verdict_when_nothing_learns_and_a_configuration_diverges(tmp_path):
    url = _study_db(tmp_path, "nothing", [
        ({"mu_max": 0.0}, [0.91, 0.90]),
        ({"mu_max": 0.995}, [None, None]),
        ({"mu_max": 0.9}, [0.88, None]),  # one seed diverged: the configuration has no error
    ])
    v = study_verdict("nothing", results_db=url)
    assert v.best.values == {"mu_max": 0.0} and v.best.outcome() == "does not"
    assert [(s.values["mu_max"], s.outcome()) for s in v.settings[1:]] == [(0.9, "diverges"), (0.995, "diverges")]
    assert v.line().startswith("verdict: mu_max 0 does not (error 0.905 vs bias-only")
    assert v.line().endswith("; with mu_max 0.995: diverges (every seed diverged); 0 of 3 configurations learn")


def test_verdict_without_a_bias_only_level_compares_best_and_worst(tmp_path):
    url = _study_db(tmp_path, "by-loss", [({"mu_max": 0.0}, [0.3, 0.5]), ({"mu_max": 0.99}, [0.1, 0.1])], metric="loss")
    v = study_verdict("by-loss", results_db=url)
    assert v.line() == "verdict: mu_max 0.99 is best (loss 0.1), mu_max 0 worst (loss 0.4); no bias-only level to compare"


def test_shipped_quick_spec_is_a_momentum_by_init_grid_whose_momentum_applies_from_the_start():
    spec = load_spec(QUICK)
    assert spec.name == "quick" and spec.sampler.type == "grid" and spec.repeats >= 2
    assert spec.config["momentum_schedule"] == "constant"  # not the RNN warm-up at 0.9 (issue #13)
    mus = spec.search["mu_max"].values
    assert min(mus) == 0.0 and max(mus) >= 0.99
    assert 1.1 in spec.search["spectral_radius"].values and min(spec.search["spectral_radius"].values) < 1.0


def test_quick_study_at_a_reduced_budget_ends_with_its_verdict_and_is_deleted_as_make_run_does(
    ray_session, study_env, tmp_path
):
    spec = yaml.safe_load(QUICK.read_text())
    spec["config"].update(updates=100, report_every=50, eval_cases=200)  # the grid as shipped, tiny budget
    path = tmp_path / "quick.yaml"
    path.write_text(yaml.safe_dump(spec))
    n = len(spec["search"]["mu_max"]["values"]) * len(spec["search"]["spectral_radius"]["values"])
    env = {**os.environ, "RAY_ADDRESS": ray_session}

    # As `make run` does, in a process of its own.
    run = subprocess.run([STUDY_BIN, "run", str(path)], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.strip().splitlines()
    assert lines[-3].startswith("  next: study status quick"), run.stdout
    best = re.fullmatch(r"best configuration: mu_max (\S+), spectral_radius (\S+): error (\S+) "
                        r"\(seeds: \S+, \S+\); bias-only (\S+)", lines[-2])
    assert best, lines[-2]
    verdict = re.fullmatch(rf"verdict: mu_max {re.escape(best[1])}, spectral_radius {re.escape(best[2])} "
                           rf"(learns|learns a little|does not) \(error {re.escape(best[3])} vs bias-only "
                           rf"{re.escape(best[4])}\); with mu_max \S+: .*; with spectral_radius \S+: .*; "
                           rf"\d of {n} configurations learn", lines[-1])
    assert verdict, lines[-1]
    # The printed figures against the raw metric points, read with plain SQL rather than the
    # reporting code: the best configuration is the one whose seeds' mean error at its last
    # step is smallest, none diverged; the bias-only level is addition's closed form.
    con = sqlite3.connect(f"file:{study_env / 'quick' / 'results.db'}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT t.params, p.member, p.error, p.status FROM ms_trials t JOIN ms_metric_points p "
            "ON p.trial_pk = t.id WHERE p.step = (SELECT MAX(q.step) FROM ms_metric_points q "
            "WHERE q.trial_pk = t.id)").fetchall()
    finally:
        con.close()
    per_config: dict[str, list] = {}
    for params, member, error, status in rows:
        per_config.setdefault(params, []).append((member, error, status))
    assert len(per_config) == n
    clean = {p: [e for _, e, _ in sorted(ms)] for p, ms in per_config.items()
             if all(st != "diverged" for _, _, st in ms)}
    params, errors = min(clean.items(), key=lambda kv: sum(kv[1]) / len(kv[1]))
    params = json.loads(params)
    assert (best[1], best[2]) == (f"{params['mu_max']:.3g}", f"{params['spectral_radius']:.3g}"), lines[-2]
    assert best[3] == f"{sum(errors) / len(errors):.3g}", (lines[-2], errors)
    assert lines[-2].endswith(f"(seeds: {', '.join(f'{e:.3g}' for e in errors)}); bias-only {best[4]}")
    assert float(best[4]) == pytest.approx(ADDITION_BIAS_ONLY, abs=ADDITION_BIAS_ONLY_TOL)

    # `make run` deletes the previous quick study before it runs again: in a process of its own,
    # everything of the study goes (its rows, its Optuna and MLflow stores, the Tune directory).
    deleted = subprocess.run([STUDY_BIN, "delete", "quick", "--yes"], capture_output=True, text=True, env=env)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert not (study_env / "quick").exists()
