"""What runs inside a Ray Tune trial: the adapter from trainables' reporter to ``tune.report``.

One trial trains one fused population: with ``repeats: N`` the training config carries
``seed: [s0, ..., s0+N-1]`` and the members train as one batched computation. The trial reports
the mean over members as its metric; the per-member figures travel in ``members``.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

CONTEXT_KEY = "study"
OPTUNA_NUMBER_KEY = "_optuna_trial_number"
CHECKPOINT_FILE = "train_state.pt"


def sampled_params(config: dict[str, Any]) -> dict[str, Any]:
    """The values the searcher chose, without the study context Tune merges into every config."""
    return {k: v for k, v in config.items() if k not in (CONTEXT_KEY, OPTUNA_NUMBER_KEY)}


def summarize(report: Any, seeds: list[int], metric: str, mode: str) -> dict[str, Any]:
    """One report as a Tune result: means, the searcher's objective and every member's figures."""
    members = []
    for m in report.members:
        members.append(
            {
                "member": m.member,
                "seed": seeds[m.member],
                "error": m.error,
                "loss": m.loss,
                "mu": m.mu,
                "lr": m.lr,
                "status": m.status,
                "diverged_at": m.diverged_at,
                "extra": dict(m.extra),
            }
        )
    diverged = sum(m.status == "diverged" for m in report.members)

    def mean(key: str) -> float | None:
        values = [
            (m.extra.get(key) if key not in ("error", "loss", "mu", "lr") else getattr(m, key))
            for m in report.members
        ]
        values = [float(v) for v in values if v is not None]
        return sum(values) / len(values) if values else None

    value = mean(metric)
    # A diverged member makes the configuration as bad as it gets for the searcher: Optuna and
    # the schedulers accept +-inf (NaN would fail the Optuna trial), and it stays finite in charts
    # because the per-member figures keep their last good values (docs/study-specs.md).
    if diverged or value is None or not math.isfinite(value):
        objective = math.inf if mode == "min" else -math.inf
    else:
        objective = value
    return {
        "step": report.step,
        "final": bool(report.final),
        "error": mean("error"),
        "loss": mean("loss"),
        "mu": mean("mu"),
        "lr": mean("lr"),
        "metric_value": value,
        "objective": objective,
        "members_diverged": diverged,
        "members": members,
    }


def run_trial(config: dict[str, Any]) -> None:
    """Tune's function trainable for every study (importable by workers from the installed package)."""
    from study import tracking
    from study.spec import StudySpec, task_config_dict
    from trainables import train
    from trainables.config import parse_config

    ctx = config[CONTEXT_KEY]
    spec = StudySpec.model_validate(ctx["spec"])
    sampled = sampled_params(config)
    task_config = parse_config(task_config_dict(spec, sampled))
    seeds = [int(s) for s in task_config.member_values("seed")]
    trial_id = tune.get_context().get_trial_id()

    run_id = tracking.ensure_trial_run(
        ctx["mlflow_uri"],
        ctx["experiment_id"],
        ctx["parent_run_id"],
        spec.name,
        trial_id,
        config.get(OPTUNA_NUMBER_KEY),
        task_config.model_dump(mode="json"),
        sampled,
    )
    monitor = _system_metrics(run_id, ctx["mlflow_uri"])

    resume_from = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume_from = torch.load(Path(d) / CHECKPOINT_FILE, weights_only=False)

    reports = 0
    node_id = ray.get_runtime_context().get_node_id()

    def reporter(report: Any) -> None:
        nonlocal reports
        reports += 1
        result = summarize(report, seeds, spec.metric, spec.mode)
        result["mlflow_run_id"] = run_id
        result["ray_node_id"] = node_id
        if report.final or reports % spec.checkpoint_every == 0:
            with tempfile.TemporaryDirectory() as tmp:
                torch.save(report.checkpoint(), Path(tmp) / CHECKPOINT_FILE)
                tune.report(result, checkpoint=tune.Checkpoint.from_directory(tmp))
        else:
            tune.report(result)

    try:
        train(task_config, reporter, resume_from=resume_from)
    finally:
        if monitor is not None:
            monitor.finish()


def _system_metrics(run_id: str, uri: str) -> Any:
    """MLflow's psutil-based monitor (CPU, memory, disk, network; GPU where present) on the trial's run."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        interval = float(os.environ.get("MOMENTUM_STUDY_SYSTEM_METRICS_INTERVAL", "2"))
        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, resume_logging=True, tracking_uri=uri)
        monitor.start()
        return monitor
    except Exception:  # system metrics are a nicety; never fail a trial over them
        return None
