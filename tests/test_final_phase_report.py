"""Table 2's "before" is the error at exactly the update where the final low-momentum phase
begins (issue 22): the trainer reports there, off its report_every grid, and the report reads that
report. Float64 on the CPU, so the figures are compared exactly with a run that reports after
every update."""

from __future__ import annotations

import pytest

from study.report import load_study, tables
from trainables.config import parse_config
from trainables.train import default_final_updates, train

from test_report import make_study

CURVES = {"task": "curves", "train_cases": 50, "eval_cases": 50, "batch_size": 5, "dtype": "float64",
          "optimizer": "nag", "mu_max": 0.99, "lr": 0.01, "updates": 50, "seed": [0, 1]}


def errors_by_step(config: dict) -> dict[int, list[float]]:
    reports = []
    train(config, reports.append)
    return {r.step: [m.error for m in r.members] for r in reports}


def test_the_trainer_reports_where_the_final_phase_begins_without_changing_the_run():
    start = CURVES["updates"] - default_final_updates(parse_config(CURVES))
    assert start == 45  # the final phase is the last tenth of a short run: off the grid of 20
    grid = errors_by_step({**CURVES, "report_every": 20})
    assert list(grid) == [20, 40, 45, 50]
    every = errors_by_step({**CURVES, "report_every": 1})
    # The extra report is the model's error after exactly 45 updates, and the run is the same run.
    for step, errors in grid.items():
        assert errors == every[step], step
    assert every[45] != every[44] and every[45] != every[46]


def test_each_member_reports_at_its_own_phase_start_and_rnn_runs_keep_their_grid():
    assert list(errors_by_step({**CURVES, "report_every": 20, "final_momentum_updates": [5, 12]})) == [20, 38, 40, 45,
                                                                                                       50]
    rnn = {"task": "addition", "seq_length": 10, "batch_size": 5, "eval_cases": 20, "updates": 30, "report_every": 10,
           "final_momentum_updates": 5}
    assert list(errors_by_step(rnn)) == [10, 20, 30]


def test_table2_before_is_the_error_at_the_first_update_of_the_final_phase(tmp_path):
    grid = errors_by_step({**CURVES, "report_every": 20})
    trial = {"id": "t", "state": "completed", "config": {**CURVES, "report_every": 20},
             "points": {s: [(e, "completed" if s == 50 else "running") for e in errors] for s, errors in grid.items()}}
    make_study(tmp_path, "t2", "curves", {"config": {"updates": 50}}, [trial])
    t2 = tables.table2(load_study("t2", tmp_path).members, "curves")
    row = t2.iloc[0]
    assert row.before_step == 45 and row.final_phase_updates == 5
    assert row.before == pytest.approx(sum(grid[45]) / 2, rel=1e-12) and row.after == pytest.approx(sum(grid[50]) / 2,
                                                                                                      rel=1e-12)
