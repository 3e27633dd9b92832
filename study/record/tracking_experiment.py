"""MLflow for a study's experiment as a whole, beside study/record/tracking.py's configuration runs:
the parent run's summary and end, the child runs a driver leaves running, and what the command
line and the reports do to an experiment (its runs table's view, its size, its deletion, a report's
artifacts). Tags, the client and the experiment's creation (``setup_study``) are tracking.py's.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, ViewType
from mlflow.exceptions import MlflowException

from study.record.tracking import PARENT_TAG, ROLE_TAG, STATE_TAG, best_key, client, set_runs_view

# --- the parent run's summary and end, and the runs left running (study/run/conclude.py) ----------


def study_summary(uri: str, parent_run_id: str) -> dict[str, float]:
    """The parent's metrics from its child runs: trials per final state and the study's best.

    The best is the best result (the study metric at the last step) of the completed
    configurations, the verdict's best; a diverged, pruned or failed one has no result.
    """
    from study.record.outcome import TERMINAL, better

    c = client(uri)
    parent = c.get_run(parent_run_id)
    metric = parent.data.params.get("metric", "error")
    mode = parent.data.params.get("mode", "min")
    children = c.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{ROLE_TAG}` = 'trial'",
        max_results=50000,
    )
    counts = {f"trials_{s}": 0 for s in TERMINAL}
    best = None
    for run in children:
        state = run.data.tags.get(STATE_TAG)
        if f"trials_{state}" in counts:
            counts[f"trials_{state}"] += 1
        value = run.data.metrics.get(metric)  # a run's metrics hold each one's value at its last step
        if state == "completed" and value is not None and better(value, best, mode):
            best = value
    out: dict[str, float] = dict(counts)
    if best is not None:
        out[best_key(metric)] = best
    return out


def finish_study(uri: str, parent_run_id: str, state: str, reason: str | None = None,
                 extra: dict[str, float] | None = None) -> None:
    """The parent's state, its summary metrics (``study_summary``, and ``extra``) and its end."""
    c = client(uri)
    c.set_tag(parent_run_id, STATE_TAG, state)
    c.set_tag(parent_run_id, "state_reason", reason or "")
    stamp = int(time.time() * 1000)
    metrics = {**study_summary(uri, parent_run_id), **(extra or {})}
    c.log_batch(parent_run_id, metrics=[Metric(k, v, stamp, 0) for k, v in metrics.items()])
    c.set_terminated(parent_run_id, status={"completed": "FINISHED", "interrupted": "KILLED"}.get(state, "FAILED"))


def running_trial_runs(uri: str, experiment_id: str) -> list[Any]:
    """The study's child runs MLflow still shows RUNNING."""
    return client(uri).search_runs(
        [experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'trial' and attributes.status = 'RUNNING'", max_results=10000
    )


# --- for the command line and the reports (they never hold an MLflow client themselves) --------


class StoreRefused(RuntimeError):
    """The MLflow store refused a request; the message is MLflow's own."""


def store_runs_view(uri: str, experiment_id: str, spec: dict[str, Any]) -> None:
    """set_runs_view for `study ui`: a study made before the view existed gets it. Raises
    StoreRefused when the store has no such experiment (or refuses the tag)."""
    try:
        set_runs_view(uri, experiment_id, spec)
    except MlflowException as exc:
        raise StoreRefused(exc.message) from None


def experiment_runs(uri: str, name: str) -> tuple[str, int] | None:
    """(experiment id, number of runs, deleted ones included) of the study's experiment, or None."""
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is None:
        return None
    runs = c.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=50_000)
    return exp.experiment_id, len(runs)


def delete_experiment(uri: str, experiment_id: str, name: str) -> None:
    """Deletes the runs and the experiment. MLflow keeps deleted experiments (until `mlflow gc`)
    and their names with them: renamed first, the name is free for a new study."""
    c = client(uri)
    for run in c.search_runs([experiment_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=50_000):
        c.delete_run(run.info.run_id)
    c.rename_experiment(experiment_id, f"{name} (deleted {uuid.uuid4().hex[:8]})")
    c.delete_experiment(experiment_id)


def log_directory(uri: str, run_id: str, directory: str | Path, artifact_path: str) -> None:
    """Logs every file under ``directory`` as artifacts of the run, under ``artifact_path``."""
    client(uri).log_artifacts(run_id, str(directory), artifact_path=artifact_path)


# --- the driver's start and end (study/run/) ------------------------------------------------------


def experiment_exists(uri: str, name: str) -> bool:
    """Whether the store has an experiment of that name (deleted ones included)."""
    return client(uri).get_experiment_by_name(name) is not None


def undo_experiment(uri: str, experiment_id: str) -> None:
    """A failed start's experiment, deleted; setup_study restores it if the study starts again."""
    client(uri).delete_experiment(experiment_id)


def kill_run(uri: str, run_id: str) -> None:
    """A run whose trial did not finish in a study that did not complete: KILLED, not RUNNING."""
    client(uri).set_terminated(run_id, status="KILLED")
