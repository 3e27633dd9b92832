"""Interrupt a real `study run` (SIGINT, as Ctrl+C) after its first finished trial, then
`study resume`: every trial finishes once, with no duplicate and no missing row anywhere."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import time

import optuna
import pandas as pd
import yaml
from mlflow.tracking import MlflowClient

from conftest import STUDY_BIN, quick_spec
from study import api


STEPS = [200, 400, 600, 800, 1000]


def _finished(db: str) -> int:
    if not os.path.exists(db):
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as c:
            return c.execute(
                "SELECT COUNT(*) FROM ms_trials WHERE state IN ('completed', 'diverged')"
            ).fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_interrupted_study_resumes_without_duplicates_or_gaps(ray_session, study_env, tmp_path):
    # Fused: three populations of two configurations (TPE asks two at a time), one at a time,
    # each long enough (about 4 s here) that two are still to train when the first has finished,
    # on machines several times faster than this one.
    spec = quick_spec("resumable", num_samples=6, max_concurrent_trials=1, checkpoint_every=1, max_members=2)
    spec["config"].update(updates=1000, report_every=200)
    path = tmp_path / "resumable.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "RAY_ADDRESS": ray_session}
    db = str(study_env / "resumable" / "results.db")

    proc = subprocess.Popen([STUDY_BIN, "run", str(path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while _finished(db) < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert proc.poll() is None, "the study ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "study resume resumable" in out
    before = api.trials("resumable")
    assert 1 <= (before["state"] == "completed").sum() < 6

    _a_copy_whose_searcher_class_is_gone_is_refused_and_left_as_it_was(study_env, tmp_path, env)

    done = subprocess.run([STUDY_BIN, "resume", "resumable"], env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr

    trials = api.trials("resumable")
    assert len(trials) == 6 and set(trials["state"]) == {"completed"}
    # Trials finished before the interrupt were not rerun.
    first = before[before["state"] == "completed"].set_index("trial_id")["ended_at"]
    after = trials.set_index("trial_id")["ended_at"]
    assert all(after[t] == first[t] for t in first.index)

    points = api.metrics("resumable")
    assert not points.duplicated(["trial_id", "step", "member"]).any()
    for _, steps in points.groupby("trial_id")["step"]:
        assert sorted(steps) == STEPS

    ot = optuna.load_study(study_name="resumable", storage=f"sqlite:///{db}")
    complete = [t for t in ot.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 6
    assert sorted(trials["optuna_trial_number"]) == sorted(t.number for t in complete)

    uri = f"sqlite:///{study_env / 'resumable' / 'mlflow.db'}"
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("resumable")
    runs = c.search_runs([exp.experiment_id], filter_string="tags.`momentum_study.role` = 'trial'")
    assert len(runs) == 6
    for run in runs:
        steps = [m.step for m in c.get_metric_history(run.info.run_id, "error")]
        assert sorted(steps) == STEPS
    parents = c.search_runs([exp.experiment_id], filter_string="tags.`momentum_study.role` = 'parent'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"


def _a_copy_whose_searcher_class_is_gone_is_refused_and_left_as_it_was(study_env, tmp_path, env):
    """A study saved by a version whose searcher class no longer exists (as one saved before fused
    studies, with StudyOptunaSearch): `study resume` says so in one line and writes nothing."""
    root = tmp_path / "copy"
    shutil.copytree(study_env / "resumable", root / "resumable")
    (pickled,) = (root / "resumable" / "tune").rglob("tuner.pkl")
    data = pickled.read_bytes()
    assert data.count(b"PopulationSearch") == 1  # the searcher is pickled by reference to its class
    pickled.write_bytes(data.replace(b"PopulationSearch", b"RetiredSearchCls"))  # same length: framing holds
    db = f"sqlite:///{root / 'resumable' / 'results.db'}"
    mlflow_uri = f"sqlite:///{root / 'resumable' / 'mlflow.db'}"
    before = (_state(db), _parent_status(mlflow_uri))
    trials_before = api.trials("resumable", str(root))

    refused = subprocess.run([STUDY_BIN, "resume", "resumable", "--dir", str(root)], env=env, capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "study 'resumable' cannot be resumed" in refused.stderr, refused.stderr
    assert "earlier version of momentum-study" in refused.stderr and "RetiredSearchCls" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert (_state(db), _parent_status(mlflow_uri)) == before
    # assert_frame_equal, not ==: a configuration that had not reported yet holds NaN, and NaN != NaN
    pd.testing.assert_frame_equal(api.trials("resumable", str(root)), trials_before)
    assert before[0] == "interrupted"


def _state(db: str) -> str:
    with sqlite3.connect(db.removeprefix("sqlite:///")) as c:
        return c.execute("SELECT state FROM ms_studies").fetchone()[0]


def _parent_status(uri: str) -> str:
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("resumable")
    (parent,) = c.search_runs([exp.experiment_id], filter_string="tags.`momentum_study.role` = 'parent'")
    return parent.info.status
