"""MLflow, the browsing store: one experiment per study, a parent run, one child run per trial.

The trial process creates (or, on a retry or resume, finds) its child run, logs every resolved
parameter and runs MLflow's psutil-based system metrics monitor on it; the driver logs the metric
history and the state tags from its Tune callback. Both find a trial's run by the tag
``ray_trial_id``, so a retried or resumed trial keeps one run, and the driver skips steps the run
already holds, so nothing is logged twice.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

# MLflow prints "View run <name> at: <tracking URI>/..." to stdout when a run ends: with a password
# in the URI that is a credential in every log (docs/cluster.md).
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
# A tracking server that is down must fail a write in seconds (the driver then journals it,
# study/journal.py), not after MLflow's default minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

ROLE_TAG = "momentum_study.role"
TRIAL_TAG = "ray_trial_id"
OPTUNA_TAG = "optuna_trial_number"
STATE_TAG = "state"
PARENT_TAG = "mlflow.parentRunId"
MAX_BATCH = 100


def client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri)


def _flat(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = str(value)[:6000]


def _log_params(c: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), MAX_BATCH):
        c.log_batch(run_id, params=items[i : i + MAX_BATCH])


def setup_study(uri: str, name: str, spec: dict[str, Any], spec_yaml: str, artifact_location: str | None) -> tuple[str, str]:
    """Gets or creates the study's experiment and parent run; returns their ids."""
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None and exp.lifecycle_stage == "deleted":  # a failed start removed it
        c.restore_experiment(exp.experiment_id)
    experiment_id = exp.experiment_id if exp else c.create_experiment(name, artifact_location=artifact_location)
    found = c.search_runs([experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'parent'", max_results=1)
    if found:
        run_id = found[0].info.run_id
        c.update_run(run_id, status="RUNNING")
        return experiment_id, run_id
    run = c.create_run(experiment_id, run_name=name, tags={ROLE_TAG: "parent", "study": name})
    run_id = run.info.run_id
    params: dict[str, str] = {}
    _flat("", spec, params)
    _log_params(c, run_id, params)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text(spec_yaml)
        c.log_artifact(run_id, str(path))
    return experiment_id, run_id


def find_trial_run(uri: str, experiment_id: str, trial_id: str) -> str | None:
    found = client(uri).search_runs(
        [experiment_id], filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}'", max_results=1
    )
    return found[0].info.run_id if found else None


def adopt_trial_run(uri: str, experiment_id: str, optuna_number: int, trial_id: str) -> bool:
    """Re-tags the run of an Optuna trial that a new Tune trial took over after a hard kill (see
    study/search.py: orphans), so the configuration keeps one run; True if there was one."""
    c = client(uri)
    found = c.search_runs(
        [experiment_id], filter_string=f"tags.`{OPTUNA_TAG}` = '{optuna_number}' and tags.`{ROLE_TAG}` = 'trial'"
    )
    found = [r for r in found if r.data.tags.get(TRIAL_TAG) != trial_id]
    if not found or find_trial_run(uri, experiment_id, trial_id):
        return False
    c.set_tag(found[0].info.run_id, TRIAL_TAG, trial_id)
    return True


def ensure_trial_run(
    uri: str,
    experiment_id: str,
    parent_run_id: str,
    study: str,
    trial_id: str,
    optuna_number: int | None,
    config: dict[str, Any],
    sampled: dict[str, Any],
) -> str:
    """The trial's child run, created with every resolved parameter on first call."""
    existing = find_trial_run(uri, experiment_id, trial_id)
    if existing:
        c = client(uri)
        c.set_tag(existing, STATE_TAG, "running")
        c.update_run(existing, status="RUNNING")
        return existing
    c = client(uri)
    tags = {
        PARENT_TAG: parent_run_id,
        TRIAL_TAG: trial_id,
        STATE_TAG: "running",
        "study": study,
        ROLE_TAG: "trial",
    }
    if optuna_number is not None:
        tags[OPTUNA_TAG] = str(optuna_number)
    run = c.create_run(experiment_id, run_name=f"{study}-{trial_id}", tags=tags)
    params: dict[str, str] = {}
    _flat("", config, params)
    _flat("sampled", sampled, params)
    _log_params(c, run.info.run_id, params)
    return run.info.run_id


def metrics_at_step(result: dict[str, Any]) -> dict[str, float]:
    """The metric names one report becomes: means beside per-member figures (error/seed_3)."""
    out: dict[str, float] = {}
    for key in ("error", "loss", "mu", "lr", "members_diverged"):
        if result.get(key) is not None:
            out[key] = float(result[key])
    for m in result.get("members", []):
        for key in ("error", "loss"):
            if m.get(key) is not None:
                out[f"{key}/seed_{m['seed']}"] = float(m[key])
        for key, v in (m.get("extra") or {}).items():
            out[f"{key}/seed_{m['seed']}"] = float(v)
    return {k: v for k, v in out.items() if not math.isnan(v)}


class MetricLog:
    """Driver-side metric logging that never writes a (run, step) twice."""

    def __init__(self, uri: str):
        self.uri = uri
        self._last: dict[str, int] = {}

    def last_step(self, run_id: str) -> int:
        if run_id not in self._last:
            history = client(self.uri).get_metric_history(run_id, "error")
            self._last[run_id] = max((m.step for m in history), default=-1)
        return self._last[run_id]

    def log(self, run_id: str, step: int, metrics: dict[str, float], timestamp_ms: int) -> bool:
        if step <= self.last_step(run_id):
            return False
        items = [Metric(k, v, timestamp_ms, step) for k, v in metrics.items()]
        c = client(self.uri)
        for i in range(0, len(items), MAX_BATCH):
            c.log_batch(run_id, metrics=items[i : i + MAX_BATCH])
        self._last[run_id] = step
        return True


def finish_trial(uri: str, run_id: str, state: str, extra_tags: dict[str, str] | None = None) -> None:
    from study.outcome import MLFLOW_STATUS

    c = client(uri)
    tags = [RunTag(STATE_TAG, state)] + [RunTag(k, str(v)) for k, v in (extra_tags or {}).items()]
    c.log_batch(run_id, tags=tags)
    c.set_terminated(run_id, status=MLFLOW_STATUS.get(state, "FAILED"))


def finish_study(uri: str, parent_run_id: str, state: str, reason: str | None = None) -> None:
    c = client(uri)
    c.set_tag(parent_run_id, STATE_TAG, state)
    c.set_tag(parent_run_id, "state_reason", reason or "")
    c.set_terminated(parent_run_id, status={"completed": "FINISHED", "interrupted": "KILLED"}.get(state, "FAILED"))


def running_trial_runs(uri: str, experiment_id: str) -> list[Any]:
    """The study's child runs MLflow still shows RUNNING."""
    return client(uri).search_runs(
        [experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'trial' and attributes.status = 'RUNNING'", max_results=10000
    )
