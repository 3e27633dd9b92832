"""A real study on a real local Ray: results DB, Optuna storage and MLflow agree."""

from __future__ import annotations

import json
import math

import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import quick_spec, study_in_process
from study import api
from study.run import runner
from study.locations import resolve
from study.spec.model import load_spec
from trainables.config import TaskConfig


def _child_runs(loc):
    c = MlflowClient(loc.mlflow_uri)
    exp = c.get_experiment_by_name(loc.name)
    runs = c.search_runs([exp.experiment_id], filter_string="tags.`momentum_study.role` = 'trial'")
    return c, runs


def test_quick_study_records_num_samples_trials_everywhere(quick_study):
    loc = quick_study
    trials = api.trials(loc.name, results_db=loc.results_db)
    assert len(trials) == 3
    assert set(trials["state"]) == {"completed"}
    assert trials["trial_id"].is_unique

    ot = optuna.load_study(study_name=loc.name, storage=loc.results_db)
    assert len(ot.trials) == 3
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in ot.trials)
    assert sorted(trials["optuna_trial_number"]) == sorted(t.number for t in ot.trials)

    _, runs = _child_runs(loc)
    assert len(runs) == 3
    assert {r.data.tags["trial_id"] for r in runs} == set(trials["trial_id"])
    assert {r.data.tags["state"] for r in runs} == {"completed"}
    assert all(r.info.status == "FINISHED" for r in runs)


def test_repeats_make_each_trial_a_population_over_seeds(quick_study):
    points = api.metrics(quick_study.name, results_db=quick_study.results_db)
    # 2 members (seeds 0 and 1) x 4 report steps per trial, one row each.
    per_trial = points.groupby("trial_id").size()
    assert list(per_trial) == [8, 8, 8]
    assert sorted(points["seed"].unique()) == [0, 1]
    assert not points.duplicated(["trial_id", "step", "member"]).any()
    assert sorted(points["step"].unique()) == [10, 20, 30, 40]


def test_mlflow_histories_match_the_database(quick_study):
    loc = quick_study
    points = api.metrics(loc.name, results_db=loc.results_db)
    trials = api.trials(loc.name, results_db=loc.results_db)
    c, runs = _child_runs(loc)
    for run in runs:
        tid = run.data.tags["trial_id"]
        mine = points[points["trial_id"] == tid]
        for seed in (0, 1):
            history = c.get_metric_history(run.info.run_id, f"error/seed_{seed}")
            from_mlflow = sorted((m.step, m.value) for m in history)
            member = mine[mine["seed"] == seed].sort_values("step")
            assert [s for s, _ in from_mlflow] == list(member["step"])
            assert [v for _, v in from_mlflow] == pytest.approx(list(member["error"]))
        mean = sorted((m.step, m.value) for m in c.get_metric_history(run.info.run_id, "error"))
        db_mean = mine.groupby("step")["error"].mean()
        assert [s for s, _ in mean] == list(db_mean.index)
        assert [v for _, v in mean] == pytest.approx(list(db_mean))
        row = trials[trials["trial_id"] == tid].iloc[0]
        assert run.data.tags["optuna_trial_number"] == str(row["optuna_trial_number"])


def test_child_runs_hold_every_resolved_parameter_and_system_metrics(quick_study):
    c, runs = _child_runs(quick_study)
    for run in runs:
        params = run.data.params
        assert set(TaskConfig.model_fields) <= set(params)
        assert params["seed"] == "[0, 1]"
        # The sampled lr is the config's lr: one parameter, not `lr` beside `sampled.lr`.
        assert not any(k.startswith("sampled.") for k in params)
        assert float(params["lr"]) > 0
        assert run.data.tags["mlflow.parentRunId"]
    assert any(k.startswith("system/cpu_utilization") for r in runs for k in r.data.metrics)
    parent = c.get_run(runs[0].data.tags["mlflow.parentRunId"])
    assert parent.data.params["name"] == quick_study.name
    assert [a.path for a in c.list_artifacts(parent.info.run_id)] == ["spec.yaml"]


def test_diverging_trial_is_recorded_and_the_study_carries_on(ray_session, study_env):
    spec = load_spec(
        quick_spec(
            "diverge",
            search={"lr": {"type": "grid", "values": [1e-3, 10.0]}},
            sampler={"type": "grid", "seed": 0},
            num_samples=None,
        )
    )
    loc = resolve(spec.name)
    assert runner.run(spec, loc) == "completed"
    trials = api.trials(spec.name).set_index("lr")
    assert trials.loc[10.0, "state"] == "diverged"
    assert trials.loc[10.0, "members_diverged"] == 1
    assert math.isinf(trials.loc[10.0, "objective"])
    assert trials.loc[1e-3, "state"] == "completed"
    points = api.metrics(spec.name)
    assert "diverged" in set(points["status"])
    c = MlflowClient(loc.mlflow_uri)
    run = c.get_run(trials.loc[10.0, "mlflow_run_id"])
    assert run.data.tags["state"] == "diverged"
    ot = optuna.load_study(study_name=spec.name, storage=loc.results_db)
    values = sorted(t.value for t in ot.trials)
    assert len(values) == 2 and math.isinf(values[1]) and math.isfinite(values[0])


def _cli(*args, env=None):
    # In this process: these check what the commands print and refuse; the real executable's runs of
    # status, results and query are in tests/test_cli_output.py and tests/test_study_names.py.
    return study_in_process(*args, env=env)


def test_cli_status_lists_studies_and_trials(quick_study):
    root = str(quick_study.root)
    out = _cli("status", "--dir", root)
    assert out.returncode == 0, out.stderr
    assert quick_study.name in out.stdout
    out = _cli("status", quick_study.name, "--dir", root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("completed") >= 3


def test_cli_results_csv_and_json(quick_study):
    root = str(quick_study.root)
    out = _cli("results", quick_study.name, "--dir", root, "--format", "csv")
    assert out.returncode == 0, out.stderr
    import io

    df = pd.read_csv(io.StringIO(out.stdout))
    assert len(df) == 3 and {"trial_id", "state", "metric_value", "lr"} <= set(df.columns)
    out = _cli("results", quick_study.name, "--dir", root, "--format", "json", "--metrics")
    rows = json.loads(out.stdout)
    assert len(rows) == 24 and {"step", "member", "seed", "error"} <= set(rows[0])


def test_cli_query_runs_select_and_refuses_writes(quick_study):
    root = str(quick_study.root)
    out = _cli("query", quick_study.name, "SELECT COUNT(*) AS n FROM ms_metric_points", "--dir", root, "--format", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [{"n": 24}]
    for sql in ("DELETE FROM ms_trials", "SELECT 1; DROP TABLE ms_trials", "UPDATE ms_trials SET state='failed'"):
        out = _cli("query", quick_study.name, sql, "--dir", root)
        assert out.returncode == 2
        assert "only a single read-only SELECT" in out.stderr
    # Even a statement that slips past the check cannot write: the file is opened with mode=ro.
    from study.record.queries import read_only_engine

    engine = read_only_engine(quick_study.results_db)
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    with pytest.raises(OperationalError, match="readonly"):
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM ms_metric_points"))
    assert len(api.metrics(quick_study.name, results_db=quick_study.results_db)) == 24
