"""MLflow, the browsing store: one experiment per study, a parent run, one child run per
configuration (a "trial" of the results database; a fused Ray trial trains several).

The driver creates (or, on a retry or resume, finds) each configuration's child run with every
resolved parameter, and logs the metric history and the state tags from its Tune callback; the
trial process runs MLflow's psutil-based system metrics monitor on its first configuration's run.
A run is found by the tag ``trial_id`` (the configuration id), so a retried or resumed
configuration keeps one run, and the driver skips steps the run already holds, so nothing is
logged twice. The tag ``population`` names the Ray trial that trained it.

What is done to the experiment as a whole (the parent's summary and end, the runs left running,
`study ui`'s view, `study delete`, a report's artifacts) is in study/record/tracking_experiment.py.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

# MLflow prints "View run <name> at: <tracking URI>/..." to stdout when a run ends: with a password
# in the URI that is a credential in every log (docs/cluster.md).
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
# A tracking server that is down must fail a write in seconds (the driver then journals it,
# study/record/journal.py), not after MLflow's default minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")

from mlflow.entities import Metric, Param, RunTag, ViewType
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient

from study.record.run_names import configuration_name

if TYPE_CHECKING:
    from study.record.outcome import ConfigurationReport

ROLE_TAG = "momentum_study.role"
# The Ray trial whose population trained the configuration (study/plan/population.py).
POPULATION_TAG = "population"
TRIAL_TAG = "trial_id"  # the configuration id: ms_trials.trial_id
OPTUNA_TAG = "optuna_trial_number"
STATE_TAG = "state"
PARENT_TAG = "mlflow.parentRunId"
# What MLflow's UI shows as a run's or an experiment's description.
NOTE_TAG = "mlflow.note.content"
MAX_BATCH = 100
# A configuration's mean over its seeds, beside each seed's figure (error/seed_0, error/mean_over_seeds).
SEED_MEAN = "mean_over_seeds"
# Time to target (docs/reporting.md): the spec's target and the first step whose metric reached it.
TARGET = "target"
UPDATES_TO_TARGET = "updates_to_target"
# MLflow's "share view" state lives in an experiment tag `mlflow.sharedViewState.<key>`; the UI loads
# it from `#/experiments/<id>/runs?viewStateShareKey=<key>` (MLflow 3's runs table, with columns and
# sort; a plain `#/experiments/<id>` opens the GenAI overview). The UI has no other URL state for
# the selected columns (checked against MLflow 3.17's UI, tests/test_study_ui.py).
VIEW_KEY = "study-runs"
VIEW_TAG = "mlflow.sharedViewState." + VIEW_KEY
# MLflow 3 opens an experiment in its GenAI layout (traces, judges, prompts) unless told it is model
# training: the experiment's kind tag (the value MLflow's own "experiment type" choice writes) and,
# since MLflow 3.17's UI takes the layout from its address instead, ``workflowType`` in the URL.
KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
MODEL_TRAINING_LAYOUT = "workflowType=machine_learning"


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
    set_runs_view(uri, experiment_id, spec)
    found = c.search_runs([experiment_id], filter_string=f"tags.`{ROLE_TAG}` = 'parent'", max_results=1)
    if found:
        run_id = found[0].info.run_id
        c.update_run(run_id, status="RUNNING")
        return experiment_id, run_id
    tags = {ROLE_TAG: "parent", "study": name}
    if spec.get("description"):
        tags[NOTE_TAG] = spec["description"]
        c.set_experiment_tag(experiment_id, NOTE_TAG, spec["description"])
    run = c.create_run(experiment_id, run_name=name, tags=tags)
    run_id = run.info.run_id
    params: dict[str, str] = {}
    _flat("", spec, params)
    _log_params(c, run_id, params)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text(spec_yaml)
        c.log_artifact(run_id, str(path))
    return experiment_id, run_id


def best_key(metric: str) -> str:
    """The parent run's metric holding the study's best: the best result (the study metric at the
    last report, the mean over seeds) of a completed configuration, as the verdict and the
    progress lines name it."""
    return f"best_{metric}"


def seen_key(metric: str, mode: str = "min") -> str:
    """A child run's metric holding the lowest (mode max: highest) value of the study's metric at
    any of its reports while no seed had diverged: not its result (the value at its last report),
    and named so that no one takes it for the best."""
    return f"{'lowest' if mode == 'min' else 'highest'}_{metric}_seen"


def runs_view(spec: dict[str, Any]) -> dict[str, Any]:
    """The runs table a study opens on: the configurations sorted by the study's metric, grouped
    apart from the parent run, with the searched values, the state and the metric first.

    Columns the table shows are in the order of ``columnOrder`` after the run's name and Created
    (which MLflow keeps first), so the figures a reader looks for fit a 1400-pixel window. MLflow
    nests child runs under their parent only when sorted by start time, hence the grouping by role.
    """
    metric, mode = spec.get("metric", "error"), spec.get("mode", "min")
    from trainables.tasks import task_for

    searched = list(spec.get("search", {}))
    # Then the paper's figures of the task (Task.paper_params, from the resolved training config).
    paper = [p for p in (task_for(spec["task"]).paper_params if spec.get("task") else ()) if p not in searched]
    columns = [f"params.`{p}`" for p in searched]
    columns += [f"tags.`{STATE_TAG}`", f"metrics.`{metric}`", f"metrics.`{seen_key(metric, mode)}`"]
    columns += [f"params.`{p}`" for p in paper]
    # Narrower than MLflow's defaults: the searched values, the state and the metric fit in 1400 px
    # also beside the Assistant panel MLflow opens on a first visit to 127.0.0.1 (study/cli/ui.py).
    widths = {"attributes.`Run Name`": 180, "runDateAndNestInfo": 110, **{c: 100 for c in columns[:len(searched)]},
              **{c: 90 for c in columns[len(searched):len(searched) + 2]}}
    return {"searchFilter": "", "orderByKey": f"metrics.`{metric}`", "orderByAsc": mode == "min",
            "selectedColumns": columns, "columnOrder": ["attributes.`Run Name`", *columns, "duration"],
            "columnWidths": widths,
            # A group's row shows its best figures: the configurations' best error, not an average.
            "groupBy": {"aggregateFunction": "min" if mode == "min" else "max",
                        "groupByKeys": [{"mode": "tag", "groupByData": ROLE_TAG}]}}


def set_runs_view(uri: str, experiment_id: str, spec: dict[str, Any]) -> None:
    """The runs table's view and the model-training kind, on the experiment (new or old)."""
    import json

    c = client(uri)
    c.set_experiment_tag(experiment_id, VIEW_TAG, json.dumps(runs_view(spec)))
    c.set_experiment_tag(experiment_id, KIND_TAG, MODEL_TRAINING_KIND)


def runs_url(base_url: str, experiment_id: str) -> str:
    """The address of the study's runs table in MLflow's UI (``set_runs_view`` stored its view)."""
    return (f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}"
            f"&{MODEL_TRAINING_LAYOUT}")


def find_trial_run(uri: str, experiment_id: str, trial_id: str) -> str | None:
    found = client(uri).search_runs(
        [experiment_id], filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}'", max_results=1
    )
    return found[0].info.run_id if found else None


def adopt_trial_run(uri: str, experiment_id: str, optuna_number: int, trial_id: str) -> bool:
    """Re-tags the run of an Optuna trial that a new Tune trial took over after a hard kill (see
    study/run/searcher.py: orphans), so the configuration keeps one run; True if there was one."""
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
    start_time_ms: int | None = None,
    population: str | None = None,
) -> str:
    """A configuration's child run, created with every resolved parameter on first call and named by
    its settings (``nag mu 0.99 r 1.1``, study/record/run_names.py); ``population`` (the Ray trial
    that trains it) is a tag.

    Sampled values go in under their own names only where the sampler's name differs from the
    config's (``sampled.one_minus_mu_max``), so ``lr`` is one param, not ``lr`` and ``sampled.lr``.
    ``start_time_ms`` is when the trial started (the write may land later, from the journal).
    """
    existing = find_trial_run(uri, experiment_id, trial_id)
    if existing:
        c = client(uri)
        c.set_tag(existing, STATE_TAG, "running")
        c.update_run(existing, status="RUNNING")
        # A driver killed between create_run and the params left a run without them: log them
        # again (MLflow accepts a param logged twice with the same value).
        params_again: dict[str, str] = {}
        _flat("", config, params_again)
        _flat("sampled", sampled, params_again)
        _log_params(c, existing, params_again)
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
    if population is not None:
        tags[POPULATION_TAG] = population
    run = c.create_run(experiment_id, start_time=start_time_ms, tags=tags,
                       run_name=_unique_run_name(c, experiment_id, configuration_name(config, sampled), trial_id))
    params: dict[str, str] = {}
    _flat("", config, params)
    _flat("sampled", {k: v for k, v in sampled.items() if k not in config}, params)
    _log_params(c, run.info.run_id, params)
    return run.info.run_id


def _unique_run_name(c: MlflowClient, experiment_id: str, name: str, trial_id: str) -> str:
    """``name``, or ``name (trial_id)`` where another run of the study has that name (the same
    values sampled twice, values equal in the digits shown, or nothing searched)."""
    taken = c.search_runs([experiment_id], filter_string=f"attributes.run_name = '{name}'", max_results=1,
                          run_view_type=ViewType.ALL)
    return f"{name} ({trial_id})" if taken else name


def metrics_at_step(report: "ConfigurationReport", metric: str | None = None, target: float | None = None,
                    mode: str = "min") -> dict[str, float]:
    """The metric names one configuration's report becomes (step: the update): means over its seeds
    (``error``, and ``error/mean_over_seeds`` beside the seeds' ``error/seed_3``), and the study's
    metric under its own name (the mean over its seeds). With the spec's ``target``: ``target`` (a
    flat line beside the metric's curve), and ``updates_to_target`` (this step) where the report
    reaches it (``MetricLog`` logs only the first)."""
    out: dict[str, float] = {}
    if target is not None:
        out[TARGET] = float(target)
        if report.reached(target, mode):
            out[UPDATES_TO_TARGET] = float(report.step)
    for key in ("error", "loss", "mu", "lr", "members_diverged"):
        if getattr(report, key) is not None:
            out[key] = float(getattr(report, key))
    if metric and report.metric_value is not None:
        out[metric] = float(report.metric_value)
    for m in report.members:
        for key in ("error", "loss"):
            if getattr(m, key) is not None:
                out[f"{key}/seed_{m.seed}"] = float(getattr(m, key))
        for key, v in m.extra.items():
            out[f"{key}/seed_{m.seed}"] = float(v)
    # The seed-averaged curve again under a name that says so, beside the seeds' own curves
    # (error/seed_0, ...): ``error`` is the same mean, named as the table's column and the results DB.
    for key in ("error", "loss"):
        if key in out:
            out[f"{key}/{SEED_MEAN}"] = out[key]
    return {k: v for k, v in out.items() if not math.isnan(v)}


class MetricLog:
    """Driver-side metric logging that never writes a (run, step) twice.

    Beside each report it logs ``lowest_<metric>_seen`` (``seen_key``): the lowest (mode max:
    highest) of the study's metric over the run's reports while no member had diverged, the rule of
    the results DB's ``best_metric_value`` (study/record/results.py); once a member diverged it is
    no longer logged (the state tag says why). A run's result is its ``<metric>`` at the last step.
    """

    def __init__(self, uri: str, metric: str = "error", mode: str = "min"):
        self.uri, self.metric, self.mode = uri, metric, mode
        self._last: dict[str, int] = {}
        self._best: dict[str, float | None] = {}
        self._reached: dict[str, bool] = {}

    def last_step(self, run_id: str) -> int:
        if run_id not in self._last:
            history = client(self.uri).get_metric_history(run_id, "error")
            self._last[run_id] = max((m.step for m in history), default=-1)
            logged = client(self.uri).get_run(run_id).data.metrics
            self._best[run_id] = logged.get(seen_key(self.metric, self.mode))
            self._reached[run_id] = UPDATES_TO_TARGET in logged
        return self._last[run_id]

    def log(self, run_id: str, step: int, metrics: dict[str, float], timestamp_ms: int) -> bool:
        from study.record.outcome import better

        if step <= self.last_step(run_id):
            return False
        metrics = dict(metrics)
        value = metrics.get(self.metric)
        if metrics.get("members_diverged"):
            self._best[run_id] = None
        elif value is not None and better(value, self._best.get(run_id), self.mode):
            self._best[run_id] = value
        if self._best.get(run_id) is not None and not metrics.get("members_diverged"):
            metrics[seen_key(self.metric, self.mode)] = self._best[run_id]
        # Time to target is the first step that reached it: logged once, also across a resume.
        if UPDATES_TO_TARGET in metrics:
            if self._reached.get(run_id):
                del metrics[UPDATES_TO_TARGET]
            self._reached[run_id] = True
        items = [Metric(k, v, timestamp_ms, step) for k, v in metrics.items()]
        c = client(self.uri)
        for i in range(0, len(items), MAX_BATCH):
            c.log_batch(run_id, metrics=items[i : i + MAX_BATCH])
        self._last[run_id] = step
        return True


def finish_trial(uri: str, run_id: str, state: str, extra_tags: dict[str, str] | None = None,
                 end_time_ms: int | None = None) -> None:
    """The trial's state tag and end; ``end_time_ms`` is when the trial ended (default: now)."""
    from study.record.outcome import MLFLOW_STATUS

    c = client(uri)
    tags = [RunTag(STATE_TAG, state)] + [RunTag(k, str(v)) for k, v in (extra_tags or {}).items()]
    c.log_batch(run_id, tags=tags)
    c.set_terminated(run_id, status=MLFLOW_STATUS.get(state, "FAILED"), end_time=end_time_ms)


class TrialSystemMetrics(SystemMetricsMonitor):
    """MLflow's system-metrics monitor, which also logs the sample it takes at the start when the
    trial ends before the first interval does: MLflow's loop drops collected samples on shutdown,
    so a trial shorter than one interval would log no system metrics at all."""

    def __init__(self, run_id: str, sampling_interval: float, tracking_uri: str):
        super().__init__(run_id, sampling_interval=sampling_interval, resume_logging=True, tracking_uri=tracking_uri)
        self._published = False

    def publish_metrics(self, metrics: dict[str, float]) -> None:
        super().publish_metrics(metrics)
        self._published = True

    def finish(self) -> None:
        started = self._process is not None
        super().finish()
        if started and not self._published:
            metrics = self.aggregate_metrics()
            if metrics:
                self.publish_metrics(metrics)
                self.mlflow_logger.flush()
