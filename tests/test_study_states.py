"""What a trial and a study end as, told the same way everywhere, and a study that ends in a true
state whatever happens: pruned trials in Optuna, schedulers that survive divergence, rungs after
the RNN warm-up, the best figure across resumes, WAL readers, missing checkpoints, one driver per
study, and a failed start that leaves nothing. Real Ray, SQLite, MLflow and Optuna throughout."""

from __future__ import annotations

import datetime as dt
import os
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from conftest import STUDY_BIN, quick_spec
from study import api
from study.record import results
from study.run import runner, tuner
from study.locations import resolve
from study.spec.model import SpecError, load_spec


def _spec(**overrides):
    return load_spec(quick_spec("states", **overrides))


# --- schedulers and the searcher -----------------------------------------------------------------


def _report(step: int, errors: list[float], diverged: list[bool]):
    from trainables.api import MemberMetrics, Report

    members = tuple(
        MemberMetrics(k, e, e, 0.9, 1e-3, "diverged" if d else "running", 5 if d else None)
        for k, (e, d) in enumerate(zip(errors, diverged))
    )
    return Report(step=step, members=members, final=False, checkpoint=dict)


def test_asha_still_stops_trials_after_a_rung_of_diverged_trials():
    """A diverged trial's objective is +inf: in ASHA's rung it made the cutoff NaN, so nothing was
    stopped any more. Schedulers get a finite worst value; Optuna keeps +inf."""
    from ray.tune.experiment import Trial

    from study.run.trial import summarize

    spec = _spec(scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 3}, fuse="off")
    asha = tuner.scheduler(spec, reports=4)
    trials = [Trial("run_trial", stub=True, trial_id=f"t{i}") for i in range(4)]
    for t in trials:
        asha.on_trial_add(None, t)
    # Two fully diverged trials, one good one, then a population with one diverged member.
    reports = [([0.9], [True]), ([0.9], [True]), ([0.5], [False]), ([0.4, 0.9], [False, True])]
    actions = []
    for t, (errors, diverged) in zip(trials, reports):
        result = summarize(_report(10, errors, diverged), list(range(len(errors))), "error", "min", t.trial_id, 0).to_dict()
        assert result["objective"] == float("inf") and result["scheduler_objective"] == 1e30 or not any(diverged)
        result["training_iteration"] = 1
        actions.append(asha.on_trial_result(None, t, result))
    assert actions == ["CONTINUE", "CONTINUE", "CONTINUE", "STOP"]


def test_asha_rungs_inside_the_rnn_warmup_are_refused_when_mu_0_is_searched():
    raw = quick_spec(
        "warmup",
        search={"mu_0": {"type": "float", "low": 1e-3, "high": 0.5, "log": True, "transform": "one_minus"}},
        scheduler={"type": "asha", "grace_period": 4},
    )
    raw["config"].update(updates=5000, report_every=250, lr=1e-3)
    del raw["config"]["mu_0"]
    with pytest.raises(SpecError, match=r"scheduler.grace_period=4 .*update 1000.*grace_period >= 5"):
        tuner.prepare(load_spec(raw), resolve("warmup", "/nonexistent-dir"))
    raw["scheduler"]["grace_period"] = 5
    tuner.prepare(load_spec(raw), resolve("warmup", "/nonexistent-dir"))
    # The shipped TPE search over mu_0 passes.
    shipped = load_spec(Path(__file__).parents[1] / "search_spaces" / "search_rnn_tpe.yaml")
    tuner.prepare(shipped, resolve(shipped.name, "/nonexistent-dir"))


def test_trials_asha_stops_are_pruned_in_optuna_with_their_last_value(ray_session, study_env):
    spec = load_spec(
        quick_spec(
            "asha-pruned",
            search={"lr": {"type": "grid", "values": [3e-2, 1e-5, 1e-6, 1e-7]}},
            sampler={"type": "grid", "seed": 0},
            num_samples=None,
            max_concurrent_trials=1,
            scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2},
            # Continuous, so the learning rates differ at the rungs: ASHA (Ray's rule) stops only a
            # configuration strictly worse than its rung's cutoff, and the error ties at these rates.
            metric="loss",
        )
    )
    assert runner.run(spec, resolve(spec.name)) == "completed"
    trials = api.trials(spec.name)
    pruned = trials[trials["state"] == "pruned"]
    assert len(pruned) >= 1, trials[["lr", "state", "last_step"]]
    ot = {t.number: t for t in optuna.load_study(study_name=spec.name, storage=resolve(spec.name).results_db).trials}
    for row in trials.itertuples():
        t = ot[row.optuna_trial_number]
        assert t.user_attrs["state"] == row.state
        if row.state == "pruned":
            assert t.state == optuna.trial.TrialState.PRUNED
            assert row.last_step < 40
            assert t.value == t.intermediate_values[t.last_step] == pytest.approx(row.metric_value)
            # Optuna's steps are the updates the DB records.
            assert t.last_step == row.last_step
        else:  # completed, or diverged (lr 3e-2, at update 30) where the rungs let it go on
            assert t.state == optuna.trial.TrialState.COMPLETE and (row.last_step == 40 or row.state == "diverged")


# --- the results DB ------------------------------------------------------------------------------


def _db(tmp_path):
    url = results.sqlite_url(tmp_path / "results.db")
    sid = results.upsert_study(url, name="s", task="addition", metric="error", mode="min", num_samples=1,
                               repeats=1, state="running", spec_yaml="", tune_path="", mlflow_uri="")
    return url, sid


def test_best_survives_a_resume_and_a_diverged_configuration_has_none(tmp_path):
    url, sid = _db(tmp_path)
    results.report_trial(url, sid, "t1", "min", metric_value=0.5, members_diverged=0)
    results.engine_for(url).dispose()
    results._engines.clear()  # a new driver process: nothing kept in memory
    results.report_trial(url, sid, "t1", "min", metric_value=0.7, members_diverged=0)
    rows = api.query("s", "SELECT best_metric_value FROM ms_trials", results_db=url)
    assert rows.iloc[0, 0] == 0.5
    results.report_trial(url, sid, "t1", "min", metric_value=0.3, members_diverged=1)
    assert api.query("s", "SELECT best_metric_value FROM ms_trials", results_db=url).iloc[0, 0] is None


def test_a_restart_keeps_the_first_start_the_retry_error_and_a_finished_state(tmp_path):
    url, sid = _db(tmp_path)
    first = dt.datetime(2026, 1, 1)
    results.start_trial(url, sid, "t1", first, params={"lr": 0.1}, config={}, members=1)
    results.upsert_trial(url, sid, "t1", error_message="worker died")
    results.start_trial(url, sid, "t1", dt.datetime(2026, 1, 2), params={"lr": 0.1}, config={}, members=1)
    results.finish_trial(url, sid, "t1", "completed", dt.datetime(2026, 1, 3))
    results.start_trial(url, sid, "t1", dt.datetime(2026, 1, 4), params={"lr": 0.1}, config={}, members=1)
    row = api.query("s", "SELECT state, started_at, error_message FROM ms_trials", results_db=url).iloc[0]
    assert row["state"] == "completed"
    assert str(row["started_at"]).startswith("2026-01-01")
    assert row["error_message"] == "worker died"


def test_a_long_reader_never_blocks_the_drivers_writes(tmp_path):
    url, sid = _db(tmp_path)
    reader = sqlite3.connect(tmp_path / "results.db", timeout=1)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM ms_trials").fetchone()  # a read transaction held open
    done = threading.Event()

    def write():
        results.report_trial(url, sid, "t1", "min", metric_value=0.5, members_diverged=0)
        results.record_trial_points(url, sid, "t1", 10, [{"member": 0, "seed": 0, "error": 0.5}])
        done.set()

    threading.Thread(target=write, daemon=True).start()
    # In rollback-journal mode the commit waits for the reader (busy timeout: 60 s).
    assert done.wait(20), "the write waited for a reader"
    reader.rollback()
    reader.close()
    with sqlite3.connect(tmp_path / "results.db") as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# --- checkpoints ---------------------------------------------------------------------------------


def test_a_checkpoint_deleted_under_tunes_saved_state_falls_back_to_the_newest(tmp_path):
    from ray import tune

    from study.run.trial import CHECKPOINT_FILE, _load_checkpoint

    trial_dir = tmp_path / "trial_x"
    for i, step in ((1, 10), (2, 20)):
        (trial_dir / f"checkpoint_00000{i}").mkdir(parents=True)
        torch.save({"step": step}, trial_dir / f"checkpoint_00000{i}" / CHECKPOINT_FILE)
    named = tune.Checkpoint.from_directory(str(trial_dir / "checkpoint_000003"))  # deleted since
    assert _load_checkpoint(named) == {"step": 20}
    assert _load_checkpoint(tune.Checkpoint.from_directory(str(trial_dir / "checkpoint_000001"))) == {"step": 10}


# --- one driver per study; a failed start leaves nothing ----------------------------------------


def _env(study_env):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env.update(MOMENTUM_STUDY_DIR=str(study_env), TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1")
    return env


def _on_session_ray(study_env, ray_session):
    """The environment of a `study` executable that joins the session's Ray (with the session's
    own RAY_* settings, its token among them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MOMENTUM_STUDY_DIR=str(study_env), TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1", RAY_ADDRESS=ray_session)
    return env


def test_a_second_driver_on_a_running_study_is_refused(ray_session, study_env, tmp_path):
    # The first driver is frozen (SIGSTOP) as soon as it holds the study's lock (its pid file) and
    # has written the study's row, events on disk: it then runs "for as long as the test needs"
    # whatever the machine's speed (no sleep, no training budget to outlast); thawed, it must
    # complete the study undisturbed.
    from faults_util import Driver

    spec = quick_spec("locked", num_samples=2, max_concurrent_trials=1)
    spec["config"].update(updates=20, report_every=10)
    path = tmp_path / "locked.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = _on_session_ray(study_env, ray_session)  # the lock is the study's, not its Ray's
    pid_file = study_env / "locked" / ".lock.pid"
    first = Driver(["run", str(path)], env, tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 180
        while not (pid_file.exists() and pid_file.read_text().strip() == str(first.proc.pid)
                   and _has_study(study_env / "locked" / "results.db", "locked")):
            assert first.alive() and time.monotonic() < deadline, f"no lock taken:\n{first.output()}"
            time.sleep(0.05)
        os.killpg(first.proc.pid, signal.SIGSTOP)
        try:
            again = subprocess.run([STUDY_BIN, "run", str(path)], env=env, capture_output=True, text=True, timeout=120)
            assert again.returncode == 2, again.stdout + again.stderr
            assert "being run or resumed by another process" in again.stderr or "already exists" in again.stderr, again.stderr
            resumed = subprocess.run([STUDY_BIN, "resume", "locked"], env=env, capture_output=True, text=True, timeout=120)
            assert resumed.returncode == 2, resumed.stdout + resumed.stderr
            assert "being run or resumed by another process" in resumed.stderr, resumed.stderr
        finally:
            os.killpg(first.proc.pid, signal.SIGCONT)
        # The running driver was not disturbed: it completes, and the refused ones wrote nothing
        # of their own (one study, its two configurations).
        assert first.wait(timeout=300) == 0, first.output()
    finally:
        first.cleanup()
    assert len(api.studies()) == 1
    assert api.trials("locked")["state"].tolist() == ["completed", "completed"]


def _has_study(db: Path, name: str) -> bool:
    """Whether the results DB at ``db`` has the study's row yet (read-only: never creates the file)."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return con.execute("SELECT COUNT(*) FROM ms_studies WHERE name = ?", (name,)).fetchone()[0] > 0
        finally:
            con.close()
    except sqlite3.Error:
        return False  # not created (or migrated) yet


def test_a_start_that_fails_after_its_first_writes_leaves_nothing(ray_session, study_env, monkeypatch):
    spec = _spec()
    loc = resolve(spec.name)

    class BrokenTuner:  # fault injection: the Tuner cannot be built after the stores were written
        def __init__(self, *a, **k):
            assert results.get_study(loc.results_db, spec.name) is not None  # the first writes happened
            raise RuntimeError("injected: Tuner construction failed")

    monkeypatch.setattr(tuner.tune, "Tuner", BrokenTuner)
    with pytest.raises(RuntimeError, match="injected"):
        runner.run(spec, loc)
    assert not loc.study_dir.exists()
    # The name is free again: the same spec runs (a new process, as a user would run it).
    path = study_env.parent / "states.yaml"
    path.write_text(yaml.safe_dump(quick_spec("states", num_samples=1)))
    done = subprocess.run([STUDY_BIN, "run", str(path)], env=_env(study_env), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert MlflowClient(loc.mlflow_uri).get_experiment_by_name(spec.name) is not None


def test_a_trial_resumed_from_its_last_checkpoint_reports_its_end_again():
    """Killed after its final checkpoint but before Tune took the result, a trial resumed from that
    checkpoint has nothing left to train; it must still report its end, or it is recorded as
    stopped early (it was recorded failed or pruned although its work was done)."""
    from study.run.trial import train_to_the_end
    from trainables.config import parse_config

    cfg = parse_config({"task": "addition", "updates": 20, "report_every": 10, "seq_length": 20,
                        "eval_cases": 50, "lr": 1e-3, "seed": [0, 1], "dtype": "float64"})
    first: list = []
    train_to_the_end(cfg, lambda r: first.append((r, r.checkpoint())), None)
    last, state = first[-1]
    assert last.final and last.step == 20
    again: list = []
    train_to_the_end(cfg, again.append, state)
    assert len(again) == 1 and again[0].final and again[0].step == 20
    assert again[0].members == last.members


def test_a_configuration_finished_again_keeps_its_first_end(tmp_path):
    """A trial resumed at its end reports its end again: the row's end time and state must not move."""
    import datetime as dt

    from study.record import results

    url = results.sqlite_url(tmp_path / "r.db")
    sid = results.upsert_study(url, name="s", task="addition", metric="error", mode="min", num_samples=1, repeats=1,
                               state="running", spec_yaml="", tune_path="tune", mlflow_uri="")
    first, later = dt.datetime(2026, 1, 1, 12), dt.datetime(2026, 1, 1, 13)
    results.finish_trial(url, sid, "t-0", "completed", first)
    results.finish_trial(url, sid, "t-0", "completed", later)
    assert results.get_study(url, "s") is not None
    with results.session_scope(url) as s:
        row = results._trial(s, sid, "t-0")
        assert (row.state, row.ended_at) == ("completed", first)
    # Another state later (a population stopped after the configuration had ended): the first end
    # is final (issue 21: a diverged configuration was recorded pruned once the rungs stopped the rest).
    results.finish_trial(url, sid, "t-0", "failed", later, "boom")
    with results.session_scope(url) as s:
        row = results._trial(s, sid, "t-0")
        assert (row.state, row.ended_at, row.error_message) == ("completed", first, None)


# --- a study's end state tells the truth (issue 18) -----------------------------------------------


def test_the_study_end_rule():
    from study.record.outcome import ALL_FAILED, study_state

    def state(**ended):
        return study_state(ended, 4, "s")

    assert state(completed=4) == ("completed", None)
    assert state(diverged=2, pruned=2) == ("completed", None)  # results of the search, not failures
    s, reason = study_state({"completed": 1, "failed": 3}, 4, "s", first_error="ValueError: x")
    assert s == "completed" and reason.startswith("3 of 4 configurations failed") and "ValueError: x" in reason
    s, reason = study_state({"failed": 4}, 4, "s", first_error="ValueError: x")
    assert s == "failed" and reason.startswith(f"{ALL_FAILED} (4 of 4); the first error: ValueError: x")
    assert state(failed=2)[0] == "interrupted"  # configurations left: resume goes on
    assert study_state({"failed": 4}, 4, "s", failure=("interrupted", "by the user")) == ("interrupted", "by the user")
    s, reason = study_state({"completed": 4}, 4, "s", store_problem="results database unreachable")
    assert s == "failed" and "results database unreachable" in reason


# A tiny Curves study on the authors' file; data_dir holds a digs3pts_1.mat that is not one, which
# only reading it finds out (validation checks that the file is there).
def _corrupt_curves(tmp_path, name: str, **overrides) -> Path:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "digs3pts_1.mat").write_bytes(b"MATLAB 5.0 MAT-file, cut short by a failed copy")
    raw = {
        "name": name,
        "task": "curves",
        "config": {"dataset": "original", "data_dir": str(data), "updates": 8, "report_every": 4,
                   "train_cases": 20, "eval_cases": 20, "batch_size": 5},
        "search": {"lr": {"type": "grid", "values": [1e-3, 2e-3]}},
        "sampler": {"type": "grid", "seed": 0},
        "max_concurrent_trials": 1,
        **overrides,
    }
    for searched in raw["search"]:
        raw["config"].pop(searched, None)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _parent_run(loc, name):
    client = MlflowClient(loc.mlflow_uri)
    experiment = client.get_experiment_by_name(name)
    row = results.get_study(loc.results_db, name)
    return client.get_run(row.mlflow_parent_run_id), experiment


def test_a_study_whose_every_configuration_failed_ends_failed_and_exits_1(ray_session, study_env, tmp_path):
    """Every configuration failed (a data file that cannot be read) used to end `completed`, exit 0."""
    path = _corrupt_curves(tmp_path, "all-failed")
    # The executables on the session's Ray: what is checked is their exit status, output and
    # records, not a Ray of their own (starting two took most of this test's time).
    env = _on_session_ray(study_env, ray_session)
    done = subprocess.run([STUDY_BIN, "run", str(path)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "study all-failed failed: every configuration failed (2 of 2); the first error: " in done.stdout
    assert "continue it with" not in done.stdout  # a resume would not rerun them
    loc = resolve("all-failed")
    row = results.get_study(loc.results_db, "all-failed")
    assert row.state == "failed" and row.state_reason.startswith("every configuration failed (2 of 2)")
    errors = api.query("all-failed", "SELECT error_message FROM ms_trials", results_db=loc.results_db)["error_message"]
    # The reason quotes the exception a failed configuration's traceback ends with (scipy's, here).
    assert any(f"the first error: {e.strip().splitlines()[-1].strip()}" in row.state_reason for e in errors)
    assert sorted(api.trials("all-failed")["state"]) == ["failed", "failed"]
    parent, _ = _parent_run(loc, "all-failed")
    assert parent.info.status == "FAILED"
    assert parent.data.tags["state"] == "failed" and parent.data.tags["state_reason"] == row.state_reason
    # A resume reruns no failed configuration: it ends the same way, and says so.
    again = subprocess.run([STUDY_BIN, "resume", "all-failed"], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1, again.stdout + again.stderr
    assert "every configuration failed (2 of 2)" in again.stdout
    assert results.get_study(loc.results_db, "all-failed").state == "failed"
    assert len(api.trials("all-failed")) == 2


def test_a_study_with_some_failed_configurations_completes_and_counts_them(ray_session, study_env, tmp_path):
    import io

    from rich.console import Console

    from study.cli.run import report_end as _report_end

    path = _corrupt_curves(tmp_path, "some-failed", search={"dataset": {"type": "grid", "values": ["replica", "original"]}},
                           retries=1)
    spec = load_spec(path)
    loc = resolve(spec.name)
    assert runner.run(spec, loc) == "completed"
    trials = api.trials(spec.name).set_index("dataset")
    assert trials.loc["replica", "state"] == "completed" and trials.loc["original", "state"] == "failed"
    # Failed past its retries (docs/study-specs.md, "States and objectives"): tried 1 + retries
    # times (Tune numbers each failure in the trial's error.txt), then FAILED with its error in
    # MLflow and FAIL in Optuna.
    failures = [f.read_text() for f in loc.tune_path.rglob("error.txt")]
    assert len(failures) == 1 and "Failure # 2 " in failures[0] and "Failure # 3 " not in failures[0], failures
    failed_id = trials.loc["original", "trial_id"]
    run = next(r for r in MlflowClient(loc.mlflow_uri).search_runs(
        [_parent_run(loc, spec.name)[1].experiment_id], filter_string="tags.`momentum_study.role` = 'trial'")
        if r.data.tags.get("trial_id") == failed_id)
    assert run.info.status == "FAILED" and run.data.tags.get("error"), (run.info.status, run.data.tags)
    ot = {t.params["dataset"]: t for t in optuna.load_study(study_name=spec.name, storage=loc.results_db).trials}
    assert ot["original"].state == optuna.trial.TrialState.FAIL and ot["original"].user_attrs["state"] == "failed"
    assert ot["replica"].state == optuna.trial.TrialState.COMPLETE
    row = results.get_study(loc.results_db, spec.name)
    assert row.state == "completed"
    assert row.state_reason.startswith("1 of 2 configurations failed (`study results some-failed` shows which)")
    parent, _ = _parent_run(loc, spec.name)
    assert parent.info.status == "FINISHED" and parent.data.tags["state_reason"] == row.state_reason
    printed = io.StringIO()
    assert _report_end(spec.name, "completed", Console(file=printed, width=400), loc) == 0
    assert f"study some-failed completed: {row.state_reason}" in printed.getvalue()
