"""The typed configuration record and its consumers, without Ray: outcome's records and rule, the
recorder against a real SQLite results DB and a real MLflow store (SQLite), a journal left by an
earlier version replayed, and the progress display rendering the records it is handed.

The records are built the way a trial builds them (study/run/trial.py, ``summarize``) from
trainables' own report types.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import math
import re

import pytest
from mlflow import MlflowClient
from rich.console import Console

from study.locations import resolve
from study.plan.population import Configuration
from study.record import outcome, results, tracking
from study.record.journal import JOURNAL_FILE, Journal
from study.record.outcome import ConfigurationEnd, ConfigurationReport, Endings
from study.record import recorder as rec
from study.run.progress import Progress
from study.run.trial import summarize
from study.spec.model import load_spec
from trainables.api import MemberMetrics, Report

SPEC = {
    "name": "units",
    "task": "addition",
    "config": {"updates": 40, "report_every": 10, "seq_length": 20, "eval_cases": 100, "mu_0": 0.9},
    "search": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
    "sampler": {"type": "tpe", "seed": 0},
    "num_samples": 2,
    "repeats": 2,
}


def report(cid: str, step: int, errors: list[float], status: str = "running", final: bool = False,
           number: int = 0, mode: str = "min") -> ConfigurationReport:
    """A configuration's report as the trial builds it, its seeds 3 and 4."""
    members = tuple(MemberMetrics(k, e, 2 * e, 0.9, 1e-3, status, None, {"averaged_error": e / 2})
                    for k, e in enumerate(errors))
    return summarize(Report(step, members, final, dict), [3, 4][: len(errors)], "error", mode, cid, number, "pop1")


# --- outcome ---------------------------------------------------------------------------------------


def test_a_report_is_plain_data_both_ways_and_reads_what_the_earlier_trial_wrote():
    r = report("pop1-0", 20, [0.25, 0.75])
    assert (r.metric_value, r.objective, r.error, r.loss) == (0.5, 0.5, 0.5, 1.0)
    plain = r.to_dict()
    assert json.loads(json.dumps(plain)) == plain  # Tune results and checkpoints hold plain data
    assert ConfigurationReport.from_dict(plain) == r
    # What trial.py put under "configs" before the record existed (no population key).
    earlier = {
        "step": 20, "final": False, "error": 0.5, "loss": 1.0, "mu": 0.9, "lr": 1e-3, "metric_value": 0.5,
        "objective": 0.5, "scheduler_objective": 0.5, "members_diverged": 0, "config_id": "pop1-0",
        "optuna_number": 0, "ended": False,
        "members": [{"member": k, "seed": s, "error": e, "loss": 2 * e, "mu": 0.9, "lr": 1e-3, "status": "running",
                     "diverged_at": None, "extra": {"averaged_error": e / 2}}
                    for k, (s, e) in enumerate([(3, 0.25), (4, 0.75)])],
    }
    assert ConfigurationReport.from_dict(earlier) == dataclasses.replace(r, population=None)
    assert outcome.reports_in({outcome.CONFIGS_KEY: [earlier]})["pop1-0"].members[1].seed == 4


@pytest.mark.parametrize("mode", ["min", "max"])
def test_the_state_rule_on_records(mode):
    sign = 1 if mode == "min" else -1
    running = report("c", 10, [0.3, 0.4], mode=mode)
    assert running.state == "running" and outcome.ended_state(running) == "pruned"
    assert report("c", 40, [0.3, 0.4], "completed", final=True, mode=mode).state == "completed"
    diverged = report("c", 20, [0.3, 0.4], "diverged", mode=mode)
    assert diverged.state == "diverged"
    assert diverged.objective == sign * math.inf and diverged.scheduler_objective == sign * outcome.SCHEDULER_WORST
    stopped = running.stopped()
    assert stopped.state == "pruned" and {m.status for m in stopped.members} == {"pruned"}
    assert outcome.ended_state(None) == "pruned"
    assert outcome.ended_state(running, errored=True) == "failed"
    assert set(outcome.STATES) == {"running", *outcome.TERMINAL}


def test_endings_decide_each_configuration_once():
    endings = Endings()
    table = [Configuration("pop1-0", 0, {}), Configuration("pop1-1", 1, {}), Configuration("pop1-2", 2, {})]
    first = [report("pop1-0", 10, [0.3, 0.4]), report("pop1-1", 10, [0.3, 0.4], "diverged", number=1)]
    assert endings.running(first) == first
    ends = endings.at_report("pop1", first)
    assert [(e.config_id, e.state, e.last) for e in ends] == [("pop1-1", "diverged", first[1])]
    # The next result repeats the ended one's frozen report: it is not handed on again.
    second = [report("pop1-0", 20, [0.2, 0.3]), first[1]]
    assert endings.running(second) == second[:1]
    assert endings.at_report("pop1", endings.running(second)) == []
    # The trial fails: what had not ended fails with it, with the error; the rest stands.
    ends = endings.at_trial_end("pop1", table, {"pop1-0": second[0]}, error="boom", errored=True)
    assert [(e.config_id, e.state, e.error, e.optuna_number) for e in ends] == [
        ("pop1-0", "failed", "boom", 0), ("pop1-2", "failed", "boom", 2)]
    assert ends[0].objective == second[0].objective and ends[1].last is None and ends[1].objective is None
    assert endings.get("pop1-1").state == "diverged"
    assert endings.at_trial_end("pop1", table, {}) == []


# --- the recorder ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A study's results DB and MLflow store (both SQLite) under a study directory of its own."""
    spec = load_spec(SPEC)
    loc = resolve(spec.name, tmp_path_factory.mktemp("studies"), None, None, None)
    loc.study_dir.mkdir(parents=True)
    study_id = results.upsert_study(loc.results_db, name=spec.name, task=spec.task, metric=spec.metric,
                                    mode=spec.mode, num_samples=spec.trials, repeats=spec.repeats, state="running",
                                    spec_yaml="", tune_path="", mlflow_uri="")
    experiment_id, parent = tracking.setup_study(loc.mlflow_uri, spec.name, spec.model_dump(mode="json"), "", loc.artifact_location)
    return spec, loc, study_id, experiment_id, parent


def _recorder(stores, journal_name: str = JOURNAL_FILE) -> rec.Recorder:
    spec, loc, study_id, experiment_id, parent = stores
    return rec.Recorder(spec, loc, study_id, experiment_id, parent, Journal(loc.study_dir / journal_name),
                        rec.RunIds())


def _row(stores, cid: str):
    spec, loc, study_id, *_ = stores
    return next(t for t in results.study_trials(loc.results_db, study_id) if t.trial_id == cid)


def _points(stores, cid: str) -> list[tuple]:
    spec, loc, *_ = stores
    from study import api

    return [tuple(r) for r in api.query(
        spec.name, "SELECT p.step, p.member, p.seed, p.error FROM ms_metric_points p JOIN ms_trials t "
        f"ON p.trial_pk = t.id WHERE t.trial_id = '{cid}' ORDER BY p.step, p.member",
        results_db=loc.results_db).itertuples(index=False)]


def test_the_recorder_writes_rows_points_and_runs_from_the_records_it_is_handed(stores):
    recorder = _recorder(stores)
    table = [Configuration("popA-0", 0, {"lr": 1e-3}), Configuration("popA-1", 1, {"lr": 1e-2})]
    recorder.started("popA", table)
    where = {"hostname": "h", "node_ip": "10.0.0.1", "ray_node_id": "n1", "pid": 7, "time_this_iter_s": 0.5,
             "timestamp": 1_700_000_000}
    recorder.reported([report("popA-0", 10, [0.4, 0.6]), report("popA-1", 10, [0.5, 0.7], number=1)], where)
    diverged = report("popA-1", 20, [0.2, 0.3], "diverged", number=1)
    recorder.reported([report("popA-0", 20, [0.2, 0.4]), diverged], where)
    recorder.ended(ConfigurationEnd("popA-1", 1, "popA", "diverged", diverged))
    last = report("popA-0", 40, [0.1, 0.3], "completed", final=True)
    recorder.reported([last], where)
    recorder.ended(ConfigurationEnd("popA-0", 0, "popA", "completed", last))
    assert recorder.drain() is None

    done, bad = _row(stores, "popA-0"), _row(stores, "popA-1")
    assert (done.state, done.last_step, done.metric_value, done.best_metric_value) == ("completed", 40, 0.2, 0.2)
    assert (done.optuna_trial_number, done.population, done.hostname, done.worker_pid) == (0, "popA", "h", 7)
    assert (bad.state, bad.members_diverged, bad.best_metric_value, bad.objective) == ("diverged", 2, None, math.inf)
    assert _points(stores, "popA-0") == [(10, 0, 3, 0.4), (10, 1, 4, 0.6), (20, 0, 3, 0.2), (20, 1, 4, 0.4),
                                          (40, 0, 3, 0.1), (40, 1, 4, 0.3)]
    # One MLflow child run per configuration, its id noted for Optuna in the shared RunIds.
    spec, loc, *_ = stores
    assert done.mlflow_run_id == recorder.run_ids["popA-0"] and bad.mlflow_run_id == recorder.run_ids["popA-1"]
    client = MlflowClient(loc.mlflow_uri)
    run = client.get_run(done.mlflow_run_id)
    assert (run.info.status, run.data.tags[tracking.STATE_TAG]) == ("FINISHED", "completed")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "error")] == [10, 20, 40]
    assert run.data.metrics["error/seed_4"] == 0.3 and run.data.metrics["averaged_error/seed_3"] == 0.05
    assert client.get_run(bad.mlflow_run_id).data.tags[tracking.STATE_TAG] == "diverged"
    assert recorder.cost()["trial_compute_s"] == 1.5
    # The stored config is the one the run trains with: the task's defaults filled in (the paper's
    # addition problem: input scale 0.001, ESN init, the RNN schedule, minibatch 100), not None.
    stored = done.config
    assert (stored["init"], stored["init_scale"], stored["momentum_schedule"], stored["batch_size"]) == (
        "esn", 0.001, "rnn", 100)
    assert (stored["seq_length"], stored["lr"]) == (20, 1e-3)
    assert run.data.params["init_scale"] == "0.001"


def test_typed_writes_come_back_from_the_journal_file_as_they_were(stores, tmp_path):
    at = dt.datetime(2026, 1, 2, 3, 4, 5)
    writes = [rec.AdoptRow("c", 3), rec.StartRow("c", at, {"params": {"lr": 0.1}, "population": "p"}),
              rec.UpdateRow("c", {"state": "running", "error_message": None}),
              rec.PointsRows("c", 10, [{"member": 0, "seed": 1, "error": 0.5}]), rec.ReportRow("c", {"last_step": 10}),
              rec.FinishRow("c", "failed", at, "boom"), rec.StudyState("", "completed", None)]
    runs = [rec.AdoptRun("c", 3), rec.CreateRun("c", 3, {"lr": 0.1}, {"lr": 0.1}, "p", 17),
            rec.LogMetrics("c", 10, {"error": 0.5}, 17), rec.FinishRun("c", "pruned", {"objective": "0.5"}, 18)]
    journal = Journal(tmp_path / JOURNAL_FILE)
    journal.save("results-db", [w.to_dict() for w in writes])
    journal.save("mlflow", [w.to_dict() for w in runs])
    assert [rec.decode(rec.DB_WRITES, d) for d in journal.load("results-db")] == writes
    assert [rec.decode(rec.MLFLOW_WRITES, d) for d in journal.load("mlflow")] == runs


def test_a_journal_left_by_the_earlier_recorder_replays(stores):
    """The lines the recorder wrote before its writes were typed ({"kind": ...} dicts)."""
    spec, loc, study_id, *_ = stores
    name = "earlier-journal.jsonl"
    started = {"__datetime__": "2026-01-02T03:04:05"}
    member = {"member": 0, "seed": 3, "error": 0.25, "loss": 0.5, "mu": 0.9, "lr": 0.001, "status": "completed",
              "diverged_at": None, "extra": {}}
    lines = [
        {"store": "results-db", "write": {"kind": "adopt", "trial_id": "old-0", "optuna": 5}},
        {"store": "mlflow", "write": {"kind": "adopt", "trial_id": "old-0", "optuna": 5}},
        {"store": "results-db", "write": {"kind": "start", "trial_id": "old-0", "started_at": started, "values": {
            "params": {"lr": 0.001}, "config": {}, "members": 1, "optuna_trial_number": 5, "population": "old"}}},
        {"store": "mlflow", "write": {"kind": "run", "trial_id": "old-0", "optuna": 5, "config": {"lr": 0.001},
                                      "sampled": {"lr": 0.001}, "population": "old", "started_ms": 1_700_000_000_000}},
        {"store": "results-db", "write": {"kind": "points", "trial_id": "old-0", "step": 10, "members": [member]}},
        {"store": "results-db", "write": {"kind": "report", "trial_id": "old-0", "values": {
            "last_step": 10, "metric_value": 0.25, "objective": 0.25, "members_diverged": 0, "hostname": "h",
            "node_ip": None, "ray_node_id": None, "worker_pid": 1}}},
        {"store": "mlflow", "write": {"kind": "metrics", "trial_id": "old-0", "step": 10,
                                      "metrics": {"error": 0.25}, "timestamp": 1_700_000_000_000}},
        {"store": "results-db", "write": {"kind": "finish", "trial_id": "old-0", "state": "completed",
                                          "ended_at": {"__datetime__": "2026-01-02T03:05:05"}, "error": None}},
        {"store": "mlflow", "write": {"kind": "finish", "trial_id": "old-0", "state": "completed",
                                      "tags": {"objective": "0.25"}, "ended_ms": 1_700_000_060_000}},
        {"store": "results-db", "write": {"kind": "study", "trial_id": "", "state": "completed", "reason": None}},
    ]
    (loc.study_dir / name).write_text("".join(json.dumps(line) + "\n" for line in lines))
    recorder = _recorder(stores, name)
    assert len(recorder.db.backlog) == 6 and len(recorder.mlflow.backlog) == 4
    assert recorder.drain() is None
    assert not (loc.study_dir / name).exists()  # everything landed
    row = _row(stores, "old-0")
    assert (row.state, row.last_step, row.best_metric_value, row.optuna_trial_number) == ("completed", 10, 0.25, 5)
    assert row.started_at == dt.datetime(2026, 1, 2, 3, 4, 5)
    assert _points(stores, "old-0") == [(10, 0, 3, 0.25)]
    run = MlflowClient(loc.mlflow_uri).get_run(row.mlflow_run_id)
    assert (run.info.status, run.info.end_time, run.data.metrics["error"]) == ("FINISHED", 1_700_000_060_000, 0.25)
    assert results.get_study(loc.results_db, spec.name).state == "completed"


# --- the progress display ----------------------------------------------------------------------------


def test_progress_renders_the_records_it_is_handed():
    out = io.StringIO()
    progress = Progress("units", 4, "min", Console(file=out, force_terminal=False, width=300))
    with progress:
        progress.started([], ["p-0", "p-1", "p-2", "p-3"])
        progress.reported([], [report("p-0", 10, [0.4, 0.6]), report("p-1", 10, [0.2, 0.2], number=1),
                               report("p-2", 10, [0.1, 0.1], number=2), report("p-3", 10, [0.15, 0.15], number=3)])
        diverged = report("p-2", 20, [0.05, 0.05], "diverged", number=2)
        progress.reported([], [report("p-0", 20, [0.3, 0.3]), report("p-1", 20, [0.3, 0.5], number=1), diverged])
        progress.ended([], ConfigurationEnd("p-2", 2, "p", "diverged", diverged))
        progress.ended([], ConfigurationEnd("p-1", 1, "p", "failed", None, "boom"))
        stopped = report("p-3", 10, [0.15, 0.15], number=3).stopped()
        progress.ended([], ConfigurationEnd("p-3", 3, "p", "pruned", stopped))
        last = report("p-0", 40, [0.25, 0.35], "completed", final=True)
        progress.reported([], [last])
        progress.ended([], ConfigurationEnd("p-0", 0, "p", "completed", last))
    lines = out.getvalue().splitlines()
    # The best is a completed configuration's result (its mean over seeds at its last report):
    # none until p-0 completes, though p-1, p-2 and p-3 had lower figures at some report.
    assert lines[0].startswith("trial p-2 diverged; study units: 1/4 finished, 0 running")
    assert lines[0].endswith("best metric none finished yet")
    assert lines[1].startswith("trial p-1 failed; study units: 2/4 finished")
    assert lines[2].startswith("trial p-3 pruned; ") and lines[2].endswith("none finished yet")
    assert lines[3].startswith("trial p-0 completed; ") and lines[3].endswith("best metric 0.3 (trial p-0)")
    assert lines[-1].startswith("study units: 4/4 finished") and lines[-1].endswith("best metric 0.3 (trial p-0)")


def test_the_live_table_shows_time_the_best_and_the_searched_values_by_their_spec_names():
    """On a terminal: the line (elapsed, ETA, best) as the table's title, and each configuration's
    searched values, a ``one_minus`` field as the field itself (mu_max = 1 - one_minus_mu_max)."""
    out = io.StringIO()
    progress = Progress("units", 2, "min", Console(file=out, force_terminal=True, width=200, color_system=None))
    with progress:
        progress.started([], [Configuration("p-0", 0, {"one_minus_mu_max": 0.007, "lr": 0.003}),
                              Configuration("p-1", 1, {"one_minus_mu_max": 0.1, "lr": 0.01})])
        last = report("p-0", 40, [0.25, 0.35], "completed", final=True)
        progress.reported([], [last, report("p-1", 10, [0.5, 0.5], number=1)])
        progress.ended([], ConfigurationEnd("p-0", 0, "p", "completed", last))
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", out.getvalue())  # the last frame is drawn last
    title = [ln for ln in text.splitlines() if ln.startswith("study units:")][-1]
    assert "1/2 finished" in title and "elapsed 0:00:0" in title and "ETA " in title
    assert title.rstrip().endswith("best metric 0.3 (trial p-0)")
    header = [ln for ln in text.splitlines() if "trial" in ln and "state" in ln][-1]
    assert [c.strip() for c in header.split("┃")[1:-1]] == [
        "trial", "state", "step", "metric", "mu_max", "lr"]
    row = [ln for ln in text.splitlines() if "p-0" in ln][-1]
    assert [c.strip() for c in row.split("│")[1:-1]] == ["p-0", "completed", "40", "0.3", "0.993", "0.003"]
    assert "one_minus" not in text
