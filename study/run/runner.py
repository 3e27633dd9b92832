"""Running a study: start it (everything that can fail is checked before the first write, and a
start that fails after it leaves nothing behind), fit the Ray Tune Tuner, and conclude in a true
state (completed, interrupted or failed, with the reason) whatever happened in between; or resume
one from its saved experiment.

This module is the driver's flow and only puts the parts together: Ray and the Tuner are in
study/run/tuner.py, the search in study/run/searcher.py (Optuna in study/run/optuna_study.py), the
recording in study/record/recorder.py, the end of a run in study/run/conclude.py, the rule for a
configuration's final state in study/record/outcome.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from typing import Any, Callable

from study.code_version import code_version
from study.errors import LocationError, SpecError
from study.locations import Locations, redact
from study.plan import preflight
from study.record import results, tracking, tracking_experiment
from study.record.journal import JOURNAL_FILE, Journal, scrub
from study.run import rung_board
from study.run import searcher as search
from study.run.conclude import fit_and_conclude
from study.run.lock import StudyLock
from study.run.optuna_study import batch_sampler
from study.run.progress import Progress
from study.run.trial import MLFLOW_URI_ENV
from study.run.tuner import (
    can_restore,
    configs_per_trial,  # noqa: F401 - the runner's figure, read by tests/test_plan.py
    init_ray,
    new_tuner,
    prepare,
    rebase_search_state,
    restore,
    restored_populations,
    run_plan,
    use_callbacks,
)
from study.spec.model import StudySpec, spec_to_yaml

log = logging.getLogger(__name__)

# Ray Tune's experiment inside the study directory, stored relative to it (ms_studies.tune_path).
TUNE_DIR = "tune"


class StudyExistsError(LocationError):
    """A new study whose name is already a study's (its directory or its results-DB row)."""


def _refuse_existing(spec: StudySpec, loc: Locations) -> None:
    own = loc.study_dir / "results.db"
    if loc.results_db == results.sqlite_url(own) and own.exists():
        # Judged by the file, not by opening it: opening an SQLite database in WAL mode rewrites its
        # -wal and -shm files, and a refused run must leave the existing study as it was.
        raise StudyExistsError(
            f"study {spec.name!r} already exists: {loc.study_dir} holds its results database; continue it with "
            f"`study resume {spec.name}`, delete it with `study delete {spec.name}`, or give the spec another name"
        )
    if results.sqlite_path_exists(loc.results_db) and results.get_study(loc.results_db, spec.name):
        raise StudyExistsError(
            f"study {spec.name!r} already exists in {redact(loc.results_db)}: continue it with "
            f"`study resume {spec.name}`, or give the spec another name"
        )


# --- run -----------------------------------------------------------------------------------------


def run(spec: StudySpec, loc: Locations, console: Any = None) -> str:
    """Runs a new study to the end (or until interrupted); returns the study's final state."""
    reports = prepare(spec, loc)
    warned = _warn(_early_warnings(spec, loc), console)
    preflight.check(spec, loc)
    _refuse_existing(spec, loc)
    created_dir = not loc.study_dir.exists()
    with StudyLock(loc.study_dir, spec.name, loc.results_db), contextlib.ExitStack() as run_scope:
        undo: list[Callable[[], None]] = []
        try:
            _refuse_existing(spec, loc)  # again, now that no other driver can be starting it
            init_ray(loc, spec)
            # The study's ASHA record for this run (study/run/rung_board.py), before the first write.
            run_scope.enter_context(rung_board.board(spec, loc.study_dir, reports))
            started = _start(spec, loc, reports, console, undo, warned)
        except BaseException:
            _undo_start(loc, created_dir, undo)
            raise
        return fit_and_conclude(spec, loc, *started)


def _early_warnings(spec: StudySpec, loc: Locations) -> list[str]:
    """The plan's warnings (a learning sampler left blind, study/plan/pacing.py) as `study plan`
    gives them for this machine: printed before any check that may refuse the run and before
    anything is written, so a user who stops the run at them has nothing to clean up. On a
    cluster, a CMA-ES generation follows the population size the cluster allows: its warning
    waits for Ray (``_start`` prints it, still before the first write)."""
    from study.plan import sizing

    if loc.ray_address and spec.sampler.type == "cmaes" and "popsize" not in spec.sampler.options:
        return []
    try:
        return sizing.make_plan(spec, sizing.this_machine()).warnings
    except SpecError:
        return []  # a study this machine cannot size: preflight refuses it, in its order of checks


def _warn(warnings: list[str], console: Any) -> list[str]:
    for warning in warnings:
        if console is not None:
            console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
        else:
            log.warning("%s", warning)
    return warnings


def _start(spec: StudySpec, loc: Locations, reports: int, console: Any, undo: list, warned: list[str]) -> tuple:
    """The first writes, each with its undo (run in reverse if a later step fails); before them,
    the plan's warnings not ``warned`` already (those that needed the cluster's figures)."""
    plan = run_plan(spec, loc)
    _warn([w for w in plan.warnings if w not in warned], console)
    spec_yaml = spec_to_yaml(spec)
    (loc.study_dir / "spec.yaml").write_text(spec_yaml)
    undo.append(lambda: (loc.study_dir / "spec.yaml").unlink(missing_ok=True))
    existed = tracking_experiment.experiment_exists(loc.mlflow_uri, spec.name)
    experiment_id, parent_run_id = tracking.setup_study(
        loc.mlflow_uri, spec.name, spec.model_dump(mode="json"), spec_yaml, loc.artifact_location
    )
    if not existed:
        undo.append(lambda: tracking_experiment.undo_experiment(loc.mlflow_uri, experiment_id))
    undo.append(lambda: results.delete_study(loc.results_db, spec.name))
    study_id = results.upsert_study(
        loc.results_db,
        name=spec.name,
        task=spec.task,
        metric=spec.metric,
        mode=spec.mode,
        num_samples=spec.trials,
        repeats=spec.repeats,
        state="running",
        spec_yaml=spec_yaml,
        code_version=code_version(),
        # Relative to the study directory when Tune's experiment lives in it: a moved or copied
        # study directory resumes from where it is now (resume() resolves it).
        tune_path=TUNE_DIR if not loc.storage else loc.tune_uri,
        # Stored without a password; `study resume` takes the secret from its own options/env.
        mlflow_uri=redact(loc.mlflow_uri),
        mlflow_experiment_id=experiment_id,
        mlflow_parent_run_id=parent_run_id,
    )
    context = {
        "spec": spec.model_dump(mode="json"),
        "mlflow_uri": redact(loc.mlflow_uri),
        "experiment_id": experiment_id,
        "parent_run_id": parent_run_id,
    }
    recorder, progress, feed = _feed(spec, loc, study_id, experiment_id, parent_run_id,
                                     Journal(loc.study_dir / JOURNAL_FILE), console)
    undo.append(lambda: shutil.rmtree(loc.tune_path, ignore_errors=True) if not loc.storage else None)
    per_trial = plan.configs_per_trial
    # The run's one sampler: the searcher asks it, and a resumed run restores it from Optuna's storage.
    searcher = search.searcher(spec, loc.results_db, per_trial, batch_sampler(spec, per_trial), plan.slots)
    tuner = new_tuner(spec, loc, reports, context, searcher, [feed])
    return tuner, recorder, progress, parent_run_id


def _feed(spec: StudySpec, loc: Locations, study_id: int, experiment_id: str, parent_run_id: str, journal: Journal,
          console: Any) -> tuple[Any, Progress, Any]:
    """The run's recorder, progress display and the one Tune callback that feeds them and Optuna
    (study/run/feed.py); the MLflow run ids the recorder notes reach Optuna's user attributes
    through the ``RunIds`` both hold."""
    from study.record.recorder import Recorder, RunIds
    from study.run.feed import StudyFeed
    from study.run.optuna_reports import OptunaReports

    run_ids = RunIds()
    recorder = Recorder(spec, loc, study_id, experiment_id, parent_run_id, journal, run_ids)
    progress = Progress(spec.name, spec.trials, spec.mode, console)
    return recorder, progress, StudyFeed(recorder, OptunaReports(loc.results_db, spec.name, run_ids), progress)


def _undo_start(loc: Locations, created_dir: bool, undo: list[Callable[[], None]]) -> None:
    """A start that failed leaves nothing: no rows, no Optuna study, no MLflow experiment, no files."""
    for step in reversed(undo):
        try:
            step()
        except Exception as exc:  # best effort: report, then go on undoing the rest
            log.warning("undoing a failed start: %s", scrub(str(exc)))
    if created_dir:
        results.forget_engine(loc.results_db)
        shutil.rmtree(loc.study_dir, ignore_errors=True)


# --- resume --------------------------------------------------------------------------------------


def resumed_version(recorded: str | None, now: str) -> str:
    """The study's code versions after a resume: unchanged where it resumes on the code it ran on,
    else the new one appended (a report then says the study ran on more than one)."""
    if not recorded:
        return f"unknown; resumed with {now}"
    if recorded == now or recorded.endswith(f"resumed with {now}"):
        return recorded
    return f"{recorded}; resumed with {now}"


def resume(name: str, loc: Locations, console: Any = None) -> str:
    """Continues a study: replays writes a store missed, then Tuner.restore (trials, checkpoints,
    the searcher, whose Optuna study lives in the results DB); finished trials are not rerun."""
    from study.spec.model import load_spec

    row = results.get_study(loc.results_db, name) if results.sqlite_path_exists(loc.results_db) else None
    if row is None:
        raise LocationError(f"no study named {name!r} in {redact(loc.results_db)}; `study status` lists the studies")
    spec = load_spec(row.spec_yaml)
    mlflow_uri = loc.mlflow_uri if "***" in row.mlflow_uri else row.mlflow_uri
    own_mlflow = loc.study_dir / "mlflow.db"
    if own_mlflow.is_file() and loc.mlflow_uri == results.sqlite_url(own_mlflow):
        if mlflow_uri != loc.mlflow_uri:
            # The study directory moved: Tune restores the trials' context with the old path, and
            # MLflow would create an empty store there. A local Ray's workers inherit this instead.
            os.environ[MLFLOW_URI_ENV] = loc.mlflow_uri
        mlflow_uri = loc.mlflow_uri  # the study directory's own store, wherever it was moved
    loc = Locations(loc.root, name, loc.results_db, mlflow_uri, loc.ray_address, loc.storage)
    preflight.check(spec, loc)
    with StudyLock(loc.study_dir, name, loc.results_db), contextlib.ExitStack() as run_scope:
        journal = Journal(loc.study_dir / JOURNAL_FILE)
        if row.state == "completed" and not journal.pending():
            return "completed"  # nothing to do (the command line says so)
        path = row.tune_path
        if "://" not in path and not os.path.isabs(path):
            path = str((loc.study_dir / path).resolve())
        elif not loc.storage and loc.tune_path.is_dir():
            path = str(loc.tune_path.resolve())  # stored absolute by an older version; the study dir's own wins
        if not can_restore(path):
            raise LocationError(f"study {name!r} has no Ray Tune experiment to restore at {path}")
        if "://" not in path:
            rebase_search_state(path)
        init_ray(loc, spec)
        # The rungs recorded before the interruption (study/run/rung_board.py), before anything is written.
        run_scope.enter_context(rung_board.board(spec, loc.study_dir, prepare(spec, loc)))
        search.use_storage(loc.results_db)  # the restored searcher re-attaches to it
        # ... and takes the populations of the trials Tune restores as those that exist, not the
        # older ones its own pickle may hold (study/run/searcher.py).
        search.use_restored_populations(restored_populations(path))
        # Restored before anything is written: an experiment that cannot be restored leaves the
        # study's state, its MLflow runs and the journal as they were.
        tuner = restore(name, path, spec)
        experiment_id, parent_run_id = tracking.setup_study(
            loc.mlflow_uri, spec.name, spec.model_dump(mode="json"), row.spec_yaml, loc.artifact_location
        )
        recorder, progress, feed = _feed(spec, loc, row.id, experiment_id, parent_run_id, journal, console)
        recorder.drain()  # what an earlier run could not write lands first
        results.set_study_state(loc.results_db, name, "running", state_reason=None,
                                code_version=resumed_version(row.code_version, code_version()))
        use_callbacks(tuner, [feed])
        return fit_and_conclude(spec, loc, tuner, recorder, progress, parent_run_id)
