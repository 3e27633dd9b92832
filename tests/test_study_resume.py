"""Interrupt a real `study run` (SIGINT, as Ctrl+C) after its first finished trial, then
`study resume`: every trial finishes once, with no duplicate and no missing row anywhere. And the
searcher as `study resume` restores it from a file older than Optuna's storage (a kill -9 between
Tune's saves; the real kill is in tests/test_faults.py): each configuration asked once, each the
sampler's own suggestion."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time

import optuna
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import STUDY_BIN, quick_spec
from study import api
from study.report.verdict import study_verdict


STEPS = [200, 400, 600, 800, 1000]
# The best in a progress line (study/run/progress.py): a completed configuration's result.
BEST = re.compile(r"\| best error (?:none finished yet|(?P<value>\S+) \(trial (?P<trial>\S+)\))$")


def _bests(output: str) -> list[tuple[str | None, str | None]]:
    """(value, configuration) of the best in each progress line of a run's output, in order."""
    return [(m["value"], m["trial"]) for m in map(BEST.search, output.splitlines()) if m]


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
    # on machines several times faster than this one. A checkpoint every other report: a population
    # resumed from one reports again what it had reported since.
    spec = quick_spec("resumable", num_samples=6, max_concurrent_trials=1, checkpoint_every=2, max_members=2)
    spec["config"].update(updates=1000, report_every=200)
    path = tmp_path / "resumable.yaml"
    path.write_text(yaml.safe_dump(spec))
    # A progress line (no terminal here) at every step of Tune's loop, besides each configuration's end.
    env = {**os.environ, "RAY_ADDRESS": ray_session, "MOMENTUM_STUDY_PROGRESS_EVERY": "0.5"}
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

    # One "best" (issue 21): each progress line's best is a completed configuration's result, its
    # mean over seeds at its last report, never a figure of one still running; resume keeps the
    # best it had (it shows no worse one, and never "none finished yet", as one had completed)
    # and ends at the verdict's best; Optuna's warning for steps reported again is not shown.
    final = trials.set_index("trial_id")["metric_value"]
    before_bests, after_bests = _bests(out), _bests(done.stdout + done.stderr)
    assert before_bests and after_bests, out + done.stderr
    for value, trial in before_bests + after_bests:
        assert value is None or (trial in final.index and value == f"{final[trial]:.4g}"), (value, trial)
    kept = before_bests[-1][0]
    assert kept is not None and all(v is not None and float(v) <= float(kept) for v, _ in after_bests), (
        kept, after_bests)
    assert after_bests[-1] == (f"{final.min():.4g}", final.idxmin())
    assert study_verdict("resumable").best.trial_id == final.idxmin()
    assert "is already reported" not in done.stdout + done.stderr

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


# --- a searcher restored from a file older than Optuna's storage (issue 18) ---------------------


# Each sampler as plain Optuna builds it for a study asking two at a time (study/run/searcher.py adds
# the constant liar to TPE and the batch as CMA-ES's popsize).
PLAIN_SAMPLERS = {
    "tpe": lambda: optuna.samplers.TPESampler(seed=0, constant_liar=True),
    "gp": lambda: optuna.samplers.GPSampler(seed=0),
    "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=0, popsize=2),
    "qmc": lambda: optuna.samplers.QMCSampler(seed=0),
    "random": lambda: optuna.samplers.RandomSampler(seed=0),
}


def _reference(n: int, kind: str = "tpe") -> list[dict]:
    """The sampler's first n suggestions for the quick spec's lr, asked in a row in plain Optuna
    with nothing told (so they follow from the seed alone, as in a study whose populations are
    still training)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental samplers, CMA-ES on one dimension
        study = optuna.create_study(sampler=PLAIN_SAMPLERS[kind]())
        lr = optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
        return [study.ask({"lr": lr}).params for _ in range(n)]


def _searcher(tmp_path, kind: str = "tpe"):
    from study.run import optuna_study
    from study.run import searcher as search
    from study.spec.model import load_spec

    spec = load_spec(yaml.safe_dump(quick_spec("stale-searcher", num_samples=6, max_members=2,
                                               sampler={"type": kind, "seed": 0})))
    url = f"sqlite:///{tmp_path / 'results.db'}"
    return search.searcher(spec, url, 2, optuna_study.batch_sampler(spec, 2)), url


def _restored(searcher_file: bytes, url: str, tune_lists: dict) -> "object":
    """The searcher as `study resume` restores it: Tune lists ``tune_lists`` (trial id -> member
    table) and hands it the searcher's file, which may be older."""
    import pickle

    from study.run import searcher as search

    search.use_storage(url)
    search.use_restored_populations(tune_lists)
    try:
        return pickle.loads(searcher_file)
    finally:
        search.use_restored_populations(None)


def _table(searcher, trial_id: str) -> list[dict]:
    from study.plan.population import POPULATION_KEY

    table = searcher.suggest(trial_id)[POPULATION_KEY]
    # Ended in Tune: a paced sampler (CMA-ES here, study/plan/pacing.py) does not wait for its results.
    searcher.on_trial_complete(trial_id)
    return table


def test_a_population_tune_lists_is_not_handed_out_again_by_an_older_searcher_file(tmp_path):
    """A kill between Tune's two writes (its trial list, then the searcher's file) leaves a trial
    list that holds a population the searcher's file does not: the population resumes in Tune,
    so its Optuna trials are no orphans, and the next population is the sampler's next
    suggestions (its state comes from Optuna's storage, not the older file)."""
    import pickle

    searcher, url = _searcher(tmp_path)
    first = _table(searcher, "t1")
    older = pickle.dumps(searcher)  # the searcher's file as Tune last saved it: t1 only
    second = _table(searcher, "t2")
    restored = _restored(older, url, {"t1": first, "t2": second})
    # Tune resumes t2 with the config it saved (it asks no suggestion for it) and asks for t3.
    third = _table(restored, "t3")
    assert [c["number"] for c in first + second + third] == list(range(6))
    assert [c["params"] for c in first + second + third] == _reference(6)
    assert restored.suggest("t4") == restored.FINISHED  # six configurations, each asked once


@pytest.mark.parametrize("kind", sorted(PLAIN_SAMPLERS))
def test_a_population_tune_lost_is_trained_with_its_own_values_and_the_next_is_new(tmp_path, kind):
    """A kill after Tune's last save: Optuna holds a population Tune's state does not. Its trials
    are handed to the next population with their own values, and the sampler goes on from where
    the storage says it was, not from the older file (whose generator would draw the lost
    population's values again). QMC passed before too: its place in the sequence is in the
    storage."""
    import pickle

    searcher, url = _searcher(tmp_path, kind)
    first = _table(searcher, "t1")
    older = pickle.dumps(searcher)
    second = _table(searcher, "t2")  # lost with the kill
    restored = _restored(older, url, {"t1": first})
    orphans = _table(restored, "t3")
    assert [(c["number"], c["params"]) for c in orphans] == [(c["number"], c["params"]) for c in second]
    assert [c["params"] for c in first + orphans + _table(restored, "t4")] == _reference(6, kind)


def test_a_sampler_state_older_than_the_last_ask_is_reseeded_not_replayed(tmp_path):
    """The same kill, but right after the second population's asks, before the sampler's state
    after them was written: the storage's state is older than the trials it holds, and the
    sampler is reseeded: the next values are new ones."""
    import pickle

    from study.run.optuna_study import SAMPLER_ATTR

    searcher, url = _searcher(tmp_path)
    first = _table(searcher, "t1")
    study = searcher._optuna.study
    after_first = study._storage.get_study_system_attrs(study._study_id)[SAMPLER_ATTR]
    older = pickle.dumps(searcher)
    second = _table(searcher, "t2")
    study._storage.set_study_system_attr(study._study_id, SAMPLER_ATTR, after_first)
    restored = _restored(older, url, {"t1": first})
    assert _table(restored, "t3") == [dict(c, config_id=f"t3-{j}") for j, c in enumerate(second)]
    fourth = _table(restored, "t4")
    values = [c["params"]["lr"] for c in first + second + fourth]
    assert len(set(values)) == 6, values


def test_a_step_reported_again_by_a_resumed_population_is_not_reported_to_optuna_again(tmp_path):
    """A population resumed from a checkpoint reports again the steps since it: Optuna keeps the
    first value and says nothing (it warned "The reported value is ignored because this step=...
    is already reported" for each), also for the driver of `study resume`, which opens the study anew."""
    import warnings

    from study.run.optuna_study import OptunaStudy

    url = f"sqlite:///{tmp_path / 'results.db'}"
    first = OptunaStudy.create(url, "s", optuna.samplers.RandomSampler(seed=0), "min", "error")
    ot_id = first.study.ask()._trial_id
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first.report(ot_id, 0.5, 200)
        first.report(ot_id, 0.4, 200)
        resumed = OptunaStudy.load(url, "s")
        resumed.report(ot_id, 0.3, 200)
        resumed.report(ot_id, 0.2, 400)
    assert resumed.intermediate_values(ot_id) == {200: 0.5, 400: 0.2}
