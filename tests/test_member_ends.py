"""A member's end is final (issue 21): a seed that diverged stays diverged in every store and every
count, also when the rungs later stop the rest of its population, and pruned is recorded as pruned.

One population goes through the parts a study runs it through, as a Ray trial's results: the trial's
PopulationReporter with member-level rungs, the study's Tune callback (StudyFeed: Endings, the
recorder, Optuna, the progress), into a real SQLite results DB with its Optuna study and a real
MLflow store; then the verdict reads the results DB back. No Ray: the Tune trial is only the data
Tune hands its callback (an id, the config, the last result)."""

from __future__ import annotations

import io
import math
from types import SimpleNamespace

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from rich.console import Console

from study import api
from study.locations import resolve
from study.plan.population import POPULATION_KEY, Configuration, MemberRungs
from study.record import recorder as rec
from study.record import queries, results, tracking, tracking_experiment
from study.record.journal import Journal
from study.report.verdict import study_verdict
from study.run.feed import StudyFeed
from study.run.optuna_reports import OptunaReports
from study.run.optuna_study import OptunaStudy, distributions
from study.run.progress import Progress
from study.run.trial import CONTEXT_KEY, PopulationReporter
from study.spec.model import load_spec
from trainables.api import MemberMetrics, Report

SPEC = {
    "name": "ends",
    "task": "addition",
    "config": {"updates": 50, "report_every": 10, "seq_length": 20, "eval_cases": 100, "mu_0": 0.9},
    "search": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
    "sampler": {"type": "tpe", "seed": 0},
    "num_samples": 3,
    "repeats": 2,
    "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 2},
}
LRS = [1e-3, 2e-3, 5e-3]
SEEDS = [0, 1] * 3


def _report(step: int, members: list[tuple[float, str]], final: bool = False) -> Report:
    """The trainer's report: per member (error, status); a diverged member keeps its last good figures."""
    return Report(step=step, final=final, checkpoint=dict, members=tuple(
        MemberMetrics(k, e, e, 0.9, LRS[k // 2], status, 17 if status == "diverged" else None)
        for k, (e, status) in enumerate(members)))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The population run through the study's parts; yields (locations, progress lines)."""
    spec = load_spec(SPEC)
    loc = resolve(spec.name, tmp_path_factory.mktemp("studies"), None, None, None)
    loc.study_dir.mkdir(parents=True)
    study_id = results.upsert_study(loc.results_db, name=spec.name, task=spec.task, metric=spec.metric,
                                    mode=spec.mode, num_samples=spec.trials, repeats=spec.repeats, state="running",
                                    spec_yaml=yaml.safe_dump(SPEC), tune_path="", mlflow_uri=loc.mlflow_uri)
    experiment_id, parent = tracking.setup_study(loc.mlflow_uri, spec.name, spec.model_dump(mode="json"), "",
                                                 loc.artifact_location)
    ot = OptunaStudy.create(loc.results_db, spec.name, optuna.samplers.RandomSampler(seed=0), spec.mode, spec.metric)
    space = distributions(spec)
    table = [Configuration(f"pop-{j}", ot.ask(space).number, {"lr": lr}) for j, lr in enumerate(LRS)]

    run_ids = rec.RunIds()
    journal = Journal(loc.study_dir / "journal.jsonl")
    recorder = rec.Recorder(spec, loc, study_id, experiment_id, parent, journal, run_ids)
    out = io.StringIO()
    progress = Progress(spec.name, spec.trials, spec.mode, Console(file=out, force_terminal=False, width=300))
    feed = StudyFeed(recorder, OptunaReports(loc.results_db, spec.name, run_ids), progress)
    # Rungs at reports 2 and 4 (grace period 2, reduction factor 2, 5 reports in all).
    population = PopulationReporter(spec, table, SEEDS, MemberRungs(2, 2, 5, spec.mode), "pop")
    trial = SimpleNamespace(trial_id="pop", config={POPULATION_KEY: [c.to_dict() for c in table],
                                                    CONTEXT_KEY: {"spec": spec.model_dump(mode="json")}},
                            last_result=None, status="RUNNING")

    status = ["running"] * 6
    errors = [0.50, 0.52, 0.60, 0.62, 0.40, 0.40]

    def report(step: int, final: bool = False) -> None:
        result, stop = population.result(_report(step, list(zip(errors, status)), final))
        for k in stop:  # the trainer drops what the reporter stops (trainables: running members only)
            status[k] = "pruned" if status[k] == "running" else status[k]
        trial.last_result = result
        feed.on_trial_result(0, [trial], trial, result)
        feed.on_step_end(0, [trial])

    with progress:
        feed.on_trial_start(0, [trial], trial)
        feed.on_step_end(0, [trial])
        report(10)
        # Configuration pop-2's seed 1 diverges (its figures stay those of its last good report);
        # its seed 0 trains on, and pop-2 is already the worst for the rungs.
        status[5] = "diverged"
        errors[:4] = [0.30, 0.32, 0.45, 0.47]
        report(20)  # the first rung: pop-2, the worst, stops (its seed 0 pruned), and pop-1 at this one or the next
        errors[:4] = [0.20, 0.22, 0.35, 0.37]
        report(30)
        errors[:4] = [0.04, 0.04, 0.30, 0.32]  # pop-0's lowest at any report, below its result
        report(40)
        errors[:2] = [0.05, 0.07]
        status[:2] = ["completed"] * 2
        report(50, final=True)
        trial.status = "TERMINATED"
        feed.on_trial_complete(0, [trial], trial)
    assert recorder.drain() is None
    return loc, out.getvalue().splitlines()


def _rows(loc):
    return api.trials("ends", results_db=loc.results_db).set_index("trial_id")


def test_the_diverged_seed_stays_diverged_in_the_points_when_the_rungs_stop_the_rest(study):
    loc, _ = study
    points = api.metrics("ends", results_db=loc.results_db)
    mine = points[points["trial_id"] == "pop-2"].set_index(["step", "member"])["status"]
    assert mine.to_dict() == {(10, 0): "running", (10, 1): "running", (20, 0): "pruned", (20, 1): "diverged"}
    # pop-1 is stopped by a later rung or the same one (as ASHA ranks it against pop-0): pruned.
    stopped = points[points["trial_id"] == "pop-1"]
    assert set(stopped[stopped["step"] == stopped["step"].max()]["status"]) == {"pruned"}
    assert set(points[(points["trial_id"] == "pop-0") & (points["step"] == 50)]["status"]) == {"completed"}


def test_every_store_records_each_configuration_as_it_ended(study):
    loc, _ = study
    rows = _rows(loc)
    assert rows["state"].to_dict() == {"pop-0": "completed", "pop-1": "pruned", "pop-2": "diverged"}
    assert rows.loc["pop-2", "members_diverged"] == 1 and rows.loc["pop-2", "objective"] == math.inf
    assert rows.loc["pop-0", "metric_value"] == pytest.approx(0.06)

    client = MlflowClient(loc.mlflow_uri)
    runs = {cid: client.get_run(rows.loc[cid, "mlflow_run_id"]) for cid in rows.index}
    assert {cid: r.data.tags[tracking.STATE_TAG] for cid, r in runs.items()} == rows["state"].to_dict()
    assert {cid: r.info.status for cid, r in runs.items()} == {"pop-0": "FINISHED", "pop-1": "KILLED",
                                                               "pop-2": "FINISHED"}
    assert runs["pop-2"].data.metrics["members_diverged"] == 1
    # The lowest value seen at a report is named so; the run's own metric holds its result, and
    # the study's best (the parent run's, the studies list's) is the completed one's result.
    assert runs["pop-0"].data.metrics[tracking.seen_key("error")] == pytest.approx(0.04)
    assert runs["pop-0"].data.metrics["error"] == pytest.approx(0.06)
    assert tracking_experiment.study_summary(loc.mlflow_uri, runs["pop-0"].data.tags["mlflow.parentRunId"])[
        tracking.best_key("error")] == pytest.approx(0.06)
    assert rows.loc["pop-0", "best_metric_value"] == pytest.approx(0.04)
    assert queries.studies(loc.results_db).set_index("name").loc["ends", "best"] == pytest.approx(0.06)

    ot = {t.number: t for t in optuna.load_study(study_name="ends", storage=loc.results_db).trials}
    numbers = rows["optuna_trial_number"].to_dict()
    assert ot[numbers["pop-2"]].state == optuna.trial.TrialState.COMPLETE and ot[numbers["pop-2"]].value == math.inf
    assert ot[numbers["pop-2"]].user_attrs["state"] == "diverged"
    assert ot[numbers["pop-1"]].state == optuna.trial.TrialState.PRUNED
    assert ot[numbers["pop-0"]].value == pytest.approx(0.06)


def test_the_verdict_counts_the_diverged_seed_and_the_pruned_configuration(study):
    loc, _ = study
    v = study_verdict("ends", results_db=loc.results_db)
    assert [s.trial_id for s in v.settings] == ["pop-0", "pop-2"] and v.pruned == 1 and v.failed == 0
    assert v.settings[1].seeds_diverged == 1
    line = v.line()
    assert "; with lr 0.005: diverges (1 of 2 seeds diverged); " in line, line
    assert line.endswith("; 1 of 3 configurations learn, 1 pruned"), line


def test_the_progress_best_is_the_completed_configurations_result(study):
    """pop-2 and pop-1 had lower figures than pop-0's result at some reports, and pop-0 had lower
    ones while it ran: the best is pop-0's result, once it has completed."""
    _, lines = study
    ends = sorted(lines[:2])  # as the rungs stop them
    assert ends[0].startswith("trial pop-1 pruned; ") and ends[0].endswith("best error none finished yet")
    assert ends[1].startswith("trial pop-2 diverged; ") and ends[1].endswith("best error none finished yet")
    assert lines[2].startswith("trial pop-0 completed; ") and lines[2].endswith("best error 0.06 (trial pop-0)")


def test_a_population_ray_tune_stops_keeps_its_diverged_seed_and_its_running_seed_is_pruned(tmp_path):
    """With ``fuse: off`` Ray Tune's ASHA stops the whole Ray trial: the configuration ends with it,
    diverged as its last report says, and the seed still running there is recorded pruned."""
    spec = load_spec({**SPEC, "name": "solo", "fuse": "off"})
    loc = resolve(spec.name, tmp_path, None, None, None)
    loc.study_dir.mkdir(parents=True)
    study_id = results.upsert_study(loc.results_db, name=spec.name, task=spec.task, metric=spec.metric,
                                    mode=spec.mode, num_samples=1, repeats=2, state="running",
                                    spec_yaml=yaml.safe_dump(SPEC), tune_path="", mlflow_uri=loc.mlflow_uri)
    experiment_id, parent = tracking.setup_study(loc.mlflow_uri, spec.name, spec.model_dump(mode="json"), "",
                                                 loc.artifact_location)
    OptunaStudy.create(loc.results_db, spec.name, optuna.samplers.RandomSampler(seed=0), spec.mode, spec.metric)
    table = [Configuration("solo-0", 0, {"lr": LRS[0]})]
    recorder = rec.Recorder(spec, loc, study_id, experiment_id, parent, Journal(loc.study_dir / "journal.jsonl"))
    progress = Progress(spec.name, 1, spec.mode, Console(file=io.StringIO(), force_terminal=False))
    feed = StudyFeed(recorder, OptunaReports(loc.results_db, spec.name, recorder.run_ids), progress)
    population = PopulationReporter(spec, table, [0, 1], None, "solo")
    trial = SimpleNamespace(trial_id="solo", config={POPULATION_KEY: [c.to_dict() for c in table]},
                            last_result=None, status="RUNNING")
    with progress:
        feed.on_trial_start(0, [trial], trial)
        for step, members in ((10, [(0.5, "running"), (0.5, "running")]), (20, [(0.4, "running"), (0.5, "diverged")])):
            trial.last_result, _ = population.result(_report(step, members))
            feed.on_trial_result(0, [trial], trial, trial.last_result)
        trial.status = "TERMINATED"  # ASHA stopped it at its second report
        feed.on_trial_complete(0, [trial], trial)
    assert recorder.drain() is None
    assert _rows_of("solo", loc).loc["solo-0", "state"] == "diverged"
    points = api.metrics("solo", results_db=loc.results_db).set_index(["step", "member"])["status"]
    assert points.to_dict() == {(10, 0): "running", (10, 1): "running", (20, 0): "pruned", (20, 1): "diverged"}


def _rows_of(name: str, loc):
    return api.trials(name, results_db=loc.results_db).set_index("trial_id")
