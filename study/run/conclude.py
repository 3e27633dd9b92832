"""The end of a study's run: whatever happened in Tuner.fit, the study ends in a true state
(completed, interrupted or failed, with the reason), pending writes land, and the rows, Optuna
trials and MLflow runs still shown running get the state the results database holds.
"""

from __future__ import annotations

import logging
from typing import Any

from study.locations import Locations
from study.record import outcome, results, tracking, tracking_experiment
from study.record.journal import scrub
from study.run.optuna_study import OptunaStudy, tell_ended
from study.run.progress import Progress
from study.spec.model import StudySpec

log = logging.getLogger(__name__)

TERMINAL = outcome.TERMINAL


def fit_and_conclude(spec: StudySpec, loc: Locations, tuner: Any, recorder: Any, progress: Progress,
                     parent_run_id: str | None) -> str:
    """Tuner.fit, then the study's end whatever happened in it (``conclude``)."""
    failure = None
    try:
        with progress:
            tuner.fit()
    except KeyboardInterrupt:
        failure = ("interrupted", "interrupted by the user")
    except Exception as exc:  # the driver itself failed: the study must still end in a true state
        log.exception("study %s failed", spec.name)
        failure = ("failed", f"the driver failed: {scrub(f'{type(exc).__name__}: {exc}')[:2000]}")
    state = conclude(spec, loc, recorder, parent_run_id, failure)
    _checkpoint(loc)
    return state


def _checkpoint(loc: Locations) -> None:
    """The study's SQLite results database whole in its file (docs/results-db.md); never raises."""
    try:
        busy = (results.checkpoint(loc.results_db) or (0,))[0]
        if busy:
            log.warning("results database: a reader kept part of the write-ahead log; it lands at the next end")
    except Exception as exc:
        log.warning("could not checkpoint the results database's write-ahead log: %s", scrub(str(exc)))


def conclude(spec: StudySpec, loc: Locations, recorder: Any, parent_run_id: str | None,
             failure: tuple[str, str] | None = None) -> str:
    """Lands pending writes, decides the study's state and reason (by outcome.study_state), and
    writes them everywhere it can; never raises (the reason says what could not be written)."""
    store_problem = recorder.drain()
    ended: dict[str, int] = {}
    first_error = None
    try:
        ended, first_error = finish_rows(spec, loc, failed=bool(failure or store_problem))
    except Exception as exc:
        store_problem = store_problem or f"results database unreachable ({scrub(str(exc))[:300]})"
    state, reason = outcome.study_state(ended, spec.trials, spec.name, failure, store_problem, first_error)
    # The state goes through the results DB's write queue: with the database down it is journaled
    # (and lands with `study resume`); `study status` meanwhile shows a study without a driver.
    if not recorder.study_state(state, reason):
        log.warning("could not record the study's state %s in the results database", state)
    if parent_run_id:
        try:
            # This run's driver bookkeeping against its trials' compute (docs/benchmarks.md).
            tracking_experiment.finish_study(loc.mlflow_uri, parent_run_id, state, reason, recorder.cost())
        except Exception as exc:
            log.warning("could not record the study's state in MLflow: %s", scrub(str(exc)))
        try:
            settle_mlflow(spec, loc, state)
        except Exception as exc:
            log.warning("could not settle the trials' MLflow runs: %s", scrub(str(exc)))
    return state


def finish_rows(spec: StudySpec, loc: Locations, failed: bool) -> tuple[dict[str, int], str | None]:
    """Settles the rows at the end of a run; returns how many configurations ended in each
    terminal state, and the last line of the first failed one's error.

    Running trials of an unfinished study become pending (`study resume` continues them). Once
    every trial finished, Optuna trials that no trial took over after a hard kill are failed, so
    nothing is left RUNNING.
    """
    study = results.get_study(loc.results_db, spec.name)
    if study is None:
        raise LookupError(f"no study {spec.name!r} in the results database")
    trials = results.study_trials(loc.results_db, study.id)
    done = sum(t.state in TERMINAL for t in trials)
    ended = {state: sum(t.state == state for t in trials) for state in TERMINAL}
    errors = [t.error_message for t in trials if t.state == "failed" and t.error_message]
    numbers = {t.optuna_trial_number for t in trials}
    finished = {t.optuna_trial_number: (t.state, t.objective) for t in trials
                if t.state in TERMINAL and t.optuna_trial_number is not None}
    if done < spec.trials or failed:
        results.pend_running_trials(loc.results_db, study.id)
    settle_optuna(spec, loc, finished, numbers if done >= spec.trials and not failed else None)
    return ended, _last_line(errors[0]) if errors else None


def _last_line(error: str) -> str:
    """A traceback's last line (the exception), which is what a reason has room for."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    return scrub(lines[-1] if lines else error)[:300]


def settle_optuna(spec: StudySpec, loc: Locations, finished: dict[int, tuple[str, float | None]],
                  held: set | None) -> None:
    """Optuna trials still RUNNING get the state the results DB holds for their configuration (a
    tell that failed while the database was down, or a driver killed before it); once the study
    is complete (``held`` given), those no configuration took over after a hard kill are failed."""
    ot = OptunaStudy.load(loc.results_db, spec.name)
    for t in ot.trials(running_only=True):
        if t.number in finished:
            state, value = finished[t.number]
            tell_ended(ot, t._trial_id, state, value)  # the rule the run told by (study/run/optuna_reports.py)
        elif held is not None and t.number not in held:
            ot.tell(t._trial_id, state="FAIL")


def settle_mlflow(spec: StudySpec, loc: Locations, state: str) -> None:
    """Child runs MLflow still shows RUNNING get the state the results DB holds for their trial."""
    study = results.get_study(loc.results_db, spec.name)
    if study is None or not study.mlflow_experiment_id:
        return
    by_trial = {t.trial_id: t.state for t in results.study_trials(loc.results_db, study.id)}
    for run in tracking_experiment.running_trial_runs(loc.mlflow_uri, study.mlflow_experiment_id):
        trial_state = by_trial.get(run.data.tags.get(tracking.TRIAL_TAG), "failed")
        if trial_state in TERMINAL:
            tracking.finish_trial(loc.mlflow_uri, run.info.run_id, trial_state)
        elif state != "completed":
            tracking_experiment.kill_run(loc.mlflow_uri, run.info.run_id)
