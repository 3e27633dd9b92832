"""Plain SGD runs once (issue #22): at mu_max = 0 under Eq. 5 (or a constant schedule) CM and NAG
are the same updates, so a grid over optimizer {cm, nag} runs the CM point only and Table 1 shows
its runs in both columns. Checked against training itself: cm and nag give the same float64
errors where the merge applies, and different ones where it does not."""

from __future__ import annotations

import pytest
import torch

from study.report import load_study, tables
from study.report.finding_verdicts import evaluate
from study.spec.expand import grid_points, sgd_duplicates, task_config_dict
from study.spec.model import StudySpec
from trainables.config import parse_config
from trainables.train import member_schedules, train

from test_report import ae_trial, make_study


def grid_spec(task: str = "curves", config: dict | None = None, mus=(0.0, 0.9), sampler: str = "grid") -> StudySpec:
    kind = "grid" if sampler == "grid" else "categorical"
    return StudySpec.model_validate({
        "name": "t1", "task": task, "config": {"updates": 600, "batch_size": 10, **(config or {})},
        "search": {"optimizer": {"type": kind, "values": ["cm", "nag"]},
                   "mu_max": {"type": kind, "values": list(mus)},
                   "lr": {"type": kind, "values": [0.01, 0.005]}},
        "sampler": sampler, "repeats": 2})


def test_a_grid_runs_plain_sgd_once_for_cm_and_nag():
    spec = grid_spec()
    assert spec.grid_size() == 8 and spec.trials == 6
    points = grid_points(spec)
    assert len(points) == 6
    assert not [p for p in points if p["optimizer"] == "nag" and p["mu_max"] == 0.0]
    assert [p for p in points if p["optimizer"] == "cm" and p["mu_max"] == 0.0]  # the one that runs
    assert sorted(p["lr"] for p in sgd_duplicates(spec)) == [0.005, 0.01]
    # Each left-out point's run and its kept twin's keep mu = 0 at every update, final phase included.
    for dropped in sgd_duplicates(spec):
        for optimizer in ("cm", "nag"):
            cfg = parse_config(task_config_dict(spec, {**dropped, "optimizer": optimizer}))
            for schedule in member_schedules(cfg):
                assert all(schedule(t) == 0.0 for t in range(cfg.updates))
    # A constant schedule at 0 is plain SGD too; no mu_max = 0 in the grid: nothing to merge.
    assert grid_spec(config={"momentum_schedule": "constant"}).trials == 6
    assert grid_spec(mus=(0.9, 0.99)).trials == 8


def test_no_merge_where_momentum_is_not_zero_throughout_or_points_are_drawn():
    # The RNN schedule runs its warm-up at mu = 0.9 whatever mu_max is: CM and NAG differ there.
    assert grid_spec(task="mem5").trials == 8 and not sgd_duplicates(grid_spec(task="mem5"))
    assert grid_spec(config={"momentum_schedule": "rnn"}).trials == 8
    # A sampler that draws points is not a grid: nothing is left out.
    assert sgd_duplicates(grid_spec(sampler="random")) == []


def test_cm_and_nag_train_identically_at_mu_max_0_and_not_above():
    torch.set_num_threads(1)
    base = {"task": "curves", "updates": 60, "batch_size": 10, "report_every": 30, "train_cases": 100,
            "eval_cases": 100, "dtype": "float64", "device": "cpu", "lr": 0.01, "seed": [0, 1]}
    sgd = [[m.error for m in train({**base, "optimizer": o, "mu_max": 0.0})] for o in ("cm", "nag")]
    assert sgd[0] == sgd[1]  # exact, float64
    momentum = [[m.error for m in train({**base, "optimizer": o, "mu_max": 0.9})] for o in ("cm", "nag")]
    assert momentum[0] != momentum[1]  # the comparison can tell CM from NAG where they differ


@pytest.fixture
def sgd_once_study(tmp_path):
    """A Table 1 grid as it now runs: CM and NAG at 0.99, plain SGD as CM only."""
    spec = {"config": {"updates": 1000, "train_cases": 2000},
            "search": {"optimizer": {"type": "grid", "values": ["cm", "nag"]},
                       "mu_max": {"type": "grid", "values": [0.0, 0.99]},
                       "lr": {"type": "grid", "values": [0.01, 0.05]}},
            "sampler": {"type": "grid"}, "repeats": 2}
    trials = [
        ae_trial("s0a", "cm", 0.0, 0.01, [0.60, 0.64]),
        ae_trial("s0b", "cm", 0.0, 0.05, [0.50, 0.52]),
        ae_trial("c99a", "cm", 0.99, 0.01, [0.30, 0.32]),
        ae_trial("c99b", "cm", 0.99, 0.05, [0.40, 0.41]),
        ae_trial("n99a", "nag", 0.99, 0.01, [0.10, 0.12]),
        ae_trial("n99b", "nag", 0.99, 0.05, [0.20, 0.22]),
    ]
    root = tmp_path / "studies"
    make_study(root, "sgd1", "curves", spec, trials)
    return root


def test_table1_shows_the_sgd_runs_in_both_columns(sgd_once_study):
    m = load_study("sgd1", sgd_once_study).members
    t1 = tables.table1(m, "curves").set_index(["optimizer", "mu_max"])
    cm, nag = t1.loc[("cm", 0.0)], t1.loc[("nag", 0.0)]
    assert nag["error"] == cm["error"] == pytest.approx(0.51) and nag["best_lr"] == cm["best_lr"] == 0.05
    assert nag["sgd_shared"] and cm["sgd_shared"] and not t1.loc[("nag", 0.99), "sgd_shared"]
    assert nag["paper"] == cm["paper"] == published_sgd()
    shown = tables.display(t1.reset_index())
    assert "plain SGD" in " ".join(shown["optimizer"])
    # The finding that compares NAG with SGD reads the shared runs (not "was not run").
    found = {r["finding"]: r for r in evaluate("table1", tables.table1(m, "curves"), m, "curves")}
    beats = found["momentum beats SGD"]
    assert beats["worse_n"] == 2 and beats["worse_mean"] == pytest.approx(0.51)
    assert "not run" not in (beats["why"] or "")


def published_sgd() -> float:
    from study.report import published_value

    return published_value("table1", "curves", "nag", mu_max=0.0)


def test_a_study_that_ran_both_keeps_both(tmp_path):
    """An older study that ran NAG at mu_max 0 too keeps its own NAG runs, unmarked."""
    spec = {"config": {"updates": 1000, "train_cases": 2000},
            "search": {"optimizer": {"type": "grid", "values": ["cm", "nag"]},
                       "mu_max": {"type": "grid", "values": [0.0]}, "lr": {"type": "grid", "values": [0.01]}},
            "sampler": {"type": "grid"}, "repeats": 2}
    trials = [ae_trial("c", "cm", 0.0, 0.01, [0.60, 0.64]), ae_trial("n", "nag", 0.0, 0.01, [0.70, 0.74])]
    make_study(tmp_path, "both", "curves", spec, trials)
    t1 = tables.table1(load_study("both", tmp_path).members, "curves").set_index("optimizer")
    assert t1.loc["nag", "error"] == pytest.approx(0.72) and not t1["sgd_shared"].any()
