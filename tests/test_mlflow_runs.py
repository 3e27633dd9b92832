"""What a study leaves in MLflow for its runs table and optuna-dashboard: the quick study's records
(each configuration's run with the paper's figures once, its seed-averaged error curve, its
duration; the parent run's best and counts; Optuna's links to the runs), and tracking.py's parts on
a real SQLite MLflow store (the experiment's view and layout, run names, start and end times,
system metrics of a short trial). `study ui` in a browser, and the servers, are in
tests/test_study_ui.py."""

from __future__ import annotations

import datetime as dt
import time

from mlflow.tracking import MlflowClient


def test_trial_runs_carry_the_paper_figures_once_each(quick_study):
    c = MlflowClient(quick_study.mlflow_uri)
    exp = c.get_experiment_by_name(quick_study.name)
    runs = c.search_runs([exp.experiment_id], filter_string="tags.`momentum_study.role` = 'trial'")
    assert len(runs) == 3
    for run in runs:
        params, metrics = run.data.params, run.data.metrics
        for name in ("lr", "mu_0", "mu_max", "init_scale", "spectral_radius"):
            assert name in params, (name, params)
        assert not [k for k in params if k.startswith("sampled.")], params  # lr once, not sampled.lr too
        assert run.data.tags["state"] == "completed"
        history = c.get_metric_history(run.info.run_id, "error")
        seen = c.get_metric_history(run.info.run_id, "lowest_error_seen")
        assert [m.step for m in seen] == [m.step for m in history]
        assert metrics["lowest_error_seen"] == min(m.value for m in history)


def test_each_configuration_has_its_seed_averaged_error_curve(quick_study):
    """error/mean_over_seeds (and error, the table's column) at each update is numpy's mean of the
    seeds' error/seed_N at that update."""
    import numpy as np

    c = MlflowClient(quick_study.mlflow_uri)
    exp = c.get_experiment_by_name(quick_study.name)
    for run in c.search_runs([exp.experiment_id], filter_string="tags.`momentum_study.role` = 'trial'"):
        seeds = sorted(k for k in run.data.metrics if k.startswith("error/seed_"))
        assert len(seeds) == 2, run.data.metrics  # the quick study's repeats
        curves = {k: {m.step: m.value for m in c.get_metric_history(run.info.run_id, k)} for k in seeds}
        mean = {m.step: m.value for m in c.get_metric_history(run.info.run_id, "error/mean_over_seeds")}
        # One point per report, at the update it was taken (report_every 10 of 40 updates).
        assert sorted(mean) == [10, 20, 30, 40] and all(sorted(v) == sorted(mean) for v in curves.values())
        for step, value in mean.items():
            assert value == np.mean([curves[k][step] for k in seeds]), (run.info.run_name, step)
        assert {m.step: m.value for m in c.get_metric_history(run.info.run_id, "error")} == mean


def test_trial_runs_last_as_long_as_their_trials(quick_study):
    from sqlalchemy import create_engine, text

    c = MlflowClient(quick_study.mlflow_uri)
    engine = create_engine(quick_study.results_db)
    with engine.connect() as db:
        rows = db.execute(text("SELECT mlflow_run_id, started_at, ended_at FROM ms_trials")).all()
    engine.dispose()
    for run_id, started_at, ended_at in rows:
        info = c.get_run(run_id).info
        started_at, ended_at = (dt.datetime.fromisoformat(str(v)) for v in (started_at, ended_at))
        trial_s = (ended_at - started_at).total_seconds()
        assert abs((info.end_time - info.start_time) / 1000 - trial_s) < 1.0, (run_id, info, trial_s)


def test_the_parent_run_holds_the_study_best_and_counts(quick_study):
    c = MlflowClient(quick_study.mlflow_uri)
    exp = c.get_experiment_by_name(quick_study.name)
    parent = c.search_runs([exp.experiment_id], filter_string="tags.`momentum_study.role` = 'parent'")[0]
    m = parent.data.metrics
    assert (m["trials_completed"], m["trials_diverged"], m["trials_pruned"], m["trials_failed"]) == (3, 0, 0, 0)
    trials = c.search_runs([exp.experiment_id], filter_string="tags.`momentum_study.role` = 'trial'")
    assert m["best_error"] == min(r.data.metrics["error"] for r in trials)  # the best configuration's result
    assert [a.path for a in c.list_artifacts(parent.info.run_id)] == ["spec.yaml"]
    assert parent.data.tags["state"] == "completed"


def test_optuna_names_the_objective_and_links_each_trial_to_its_runs(quick_study):
    import optuna

    c = MlflowClient(quick_study.mlflow_uri)
    study = optuna.load_study(study_name=quick_study.name, storage=quick_study.results_db)
    assert study.metric_names == ["error"]
    for t in study.trials:
        run = c.get_run(t.user_attrs["mlflow_run_id"])
        assert run.data.tags["trial_id"] == t.user_attrs["trial_id"]
        assert run.data.tags["population"] == t.user_attrs["ray_trial_id"]
        assert run.data.tags["optuna_trial_number"] == str(t.number)


def test_setup_study_puts_the_description_on_the_parent_and_the_runs_view_on_the_experiment(tmp_path):
    import json

    from study.record import tracking

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = {"name": "described", "task": "curves", "metric": "error", "mode": "min",
            "description": "NAG vs CM on CURVES, Table 1's mu_max column",
            "search": {"lr": {"type": "float"}, "final_momentum": {"type": "float"}}}
    experiment_id, parent = tracking.setup_study(uri, "described", spec, "name: described\n", str(tmp_path / "a"))
    c = MlflowClient(uri)
    assert c.get_run(parent).data.tags["mlflow.note.content"] == spec["description"]
    view = json.loads(c.get_experiment(experiment_id).tags[tracking.VIEW_TAG])
    assert view["orderByKey"] == "metrics.`error`" and view["orderByAsc"] is True
    # The searched fields first, then the state and the metric, then the rest of an autoencoder's
    # paper figures (Eq. 5's mu_max and the SI scale, no RNN-only ones); in that order on the page.
    columns = ["params.`lr`", "params.`final_momentum`", "tags.`state`", "metrics.`error`",
               "metrics.`lowest_error_seen`", "params.`mu_max`", "params.`init_scale`"]
    assert view["selectedColumns"] == columns
    assert view["columnOrder"] == ["attributes.`Run Name`", *columns, "duration"]
    # The parent apart from the configurations: the table groups runs by their role.
    assert view["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": tracking.ROLE_TAG}]
    assert c.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_study_made_before_the_training_layout_gets_it_on_resume(tmp_path):
    from study.record import tracking

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    c = MlflowClient(uri)
    experiment_id = c.create_experiment("older", artifact_location=str(tmp_path / "a"))  # no kind, no view
    spec = {"name": "older", "task": "addition", "metric": "error", "mode": "min"}
    assert tracking.setup_study(uri, "older", spec, "name: older\n", str(tmp_path / "a"))[0] == experiment_id
    tags = c.get_experiment(experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development" and tracking.VIEW_TAG in tags


def test_configurations_are_named_by_their_settings_and_told_apart_where_equal(tmp_path):
    from study.record import tracking
    from study.record.run_names import configuration_name

    assert configuration_name({"optimizer": "nag", "mu_max": 0.99, "spectral_radius": 1.1, "lr": 0.005},
                              {"mu_max": 0.99, "spectral_radius": 1.1}) == "nag mu 0.99 r 1.1"
    # A transformed search shows the value trained with; a momentum near 1 keeps its digits.
    assert configuration_name({"optimizer": "cm", "mu_0": 0.9995, "lr": 0.0031622776},
                              {"one_minus_mu_0": 0.0005, "lr": 0.0031622776}) == "cm mu0 0.9995 lr 0.00316"
    assert configuration_name({"optimizer": "nag"}, {"optimizer": "nag"}) == "nag"

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = {"name": "named", "task": "addition", "metric": "error", "mode": "min"}
    experiment_id, parent = tracking.setup_study(uri, "named", spec, "name: named\n", str(tmp_path / "a"))
    runs = [
        tracking.ensure_trial_run(uri, experiment_id, parent, "named", trial_id, n,
                                  {"optimizer": "nag", "mu_max": mu, "lr": 0.005}, {"mu_max": mu})
        for n, (trial_id, mu) in enumerate([("aa11-0", 0.99), ("bb22-0", 0.99), ("bb22-1", 0.9)])
    ]
    # The id only where two would be the same; a configuration found again keeps its run and name.
    assert tracking.ensure_trial_run(uri, experiment_id, parent, "named", "bb22-0", 1, {"optimizer": "nag",
                                     "mu_max": 0.99, "lr": 0.005}, {"mu_max": 0.99}) == runs[1]
    c = MlflowClient(uri)
    assert [c.get_run(r).info.run_name for r in runs] == ["nag mu 0.99", "nag mu 0.99 (bb22-0)", "nag mu 0.9"]


def test_child_runs_take_the_trials_own_start_and_end(tmp_path):
    from study.record import tracking

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = {"name": "timed", "task": "addition", "metric": "error", "mode": "min"}
    experiment_id, parent = tracking.setup_study(uri, "timed", spec, "name: timed\n", str(tmp_path / "a"))
    # A write that lands late (from the journal) still records when the trial ran.
    start = int(time.time() * 1000) - 600_000
    run_id = tracking.ensure_trial_run(uri, experiment_id, parent, "timed", "t1", 0, {"lr": 0.1},
                                       {"lr": 0.1, "one_minus_mu_max": 0.01}, start)
    tracking.finish_trial(uri, run_id, "completed", end_time_ms=start + 2_000)
    run = MlflowClient(uri).get_run(run_id)
    assert (run.info.start_time, run.info.end_time) == (start, start + 2_000)
    assert run.data.params == {"lr": "0.1", "sampled.one_minus_mu_max": "0.01"}


def _system_metrics(uri: str, run_id: str) -> list[str]:
    return [k for k in MlflowClient(uri).get_run(run_id).data.metrics if k.startswith("system/")]


def test_a_trial_shorter_than_the_sampling_interval_still_logs_system_metrics(tmp_path):
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    from study.record import tracking

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    c = MlflowClient(uri)
    experiment_id = c.create_experiment("short", artifact_location=str(tmp_path / "a"))
    ours, plain = (c.create_run(experiment_id).info.run_id for _ in range(2))
    for monitor in (tracking.TrialSystemMetrics(ours, sampling_interval=2, tracking_uri=uri),
                    SystemMetricsMonitor(plain, sampling_interval=2, tracking_uri=uri)):
        monitor.start()
        time.sleep(1.0)  # a trial that ends before the first interval does
        monitor.finish()
    assert "system/cpu_utilization_percentage" in _system_metrics(uri, ours)
    # MLflow's own monitor drops that sample: if this starts to fail, MLflow fixed it and
    # TrialSystemMetrics can go (study/record/tracking.py).
    assert _system_metrics(uri, plain) == []
