"""What runs inside a Ray Tune trial: the adapter from trainables' reporter to ``tune.report``.

One trial trains one fused population: with ``repeats: N`` the training config carries
``seed: [s0, ..., s0+N-1]`` and the members train as one batched computation. The trial reports
the mean over members as its metric; the per-member figures travel in ``members``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from study.outcome import objectives

CONTEXT_KEY = "study"
OPTUNA_NUMBER_KEY = "_optuna_trial_number"
CHECKPOINT_FILE = "train_state.pt"
# The MLflow tracking URI with its password, in the workers' environment (never in a config).
MLFLOW_URI_ENV = "MOMENTUM_STUDY_MLFLOW_URI"


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
    # A diverged member makes the configuration as bad as it gets: +-inf for Optuna, a finite
    # worst value for schedulers (study/outcome.py); charts stay finite because the per-member
    # figures keep their last good values (docs/study-specs.md).
    objective, scheduler_objective = objectives(value, diverged, mode)
    return {
        "step": report.step,
        "final": bool(report.final),
        "error": mean("error"),
        "loss": mean("loss"),
        "mu": mean("mu"),
        "lr": mean("lr"),
        "metric_value": value,
        "objective": objective,
        "scheduler_objective": scheduler_objective,
        "members_diverged": diverged,
        "members": members,
    }


def run_trial(config: dict[str, Any]) -> None:
    """Tune's function trainable for every study (importable by workers from the installed package)."""
    from study.devices import ray_trial_device
    from study.spec import StudySpec, task_config_dict
    from trainables.config import parse_config

    ctx = config[CONTEXT_KEY]
    spec = StudySpec.model_validate(ctx["spec"])
    sampled = sampled_params(config)
    task_config = parse_config(task_config_dict(spec, sampled))
    # The device Ray assigned (none for gpus: 0, even where CUDA is visible): study/devices.py.
    task_config = task_config.model_copy(update={"device": ray_trial_device(task_config.device)})
    seeds = [int(s) for s in task_config.member_values("seed")]
    trial_id = tune.get_context().get_trial_id()
    monitor = _system_metrics(_mlflow_uri(ctx), ctx["experiment_id"], trial_id)

    checkpoint = tune.get_checkpoint()
    resume_from = _load_checkpoint(checkpoint) if checkpoint is not None else None

    reports = 0
    node_id = ray.get_runtime_context().get_node_id()

    def reporter(report: Any) -> None:
        nonlocal reports
        reports += 1
        result = summarize(report, seeds, spec.metric, spec.mode)
        result["ray_node_id"] = node_id
        if report.final or reports % spec.checkpoint_every == 0:
            with tempfile.TemporaryDirectory() as tmp:
                torch.save(report.checkpoint(), Path(tmp) / CHECKPOINT_FILE)
                tune.report(result, checkpoint=tune.Checkpoint.from_directory(tmp))
        else:
            tune.report(result)

    try:
        train_to_the_end(task_config, reporter, resume_from)
    finally:
        if monitor is not None:
            monitor.finish()


def train_to_the_end(task_config: Any, reporter: Any, resume_from: dict[str, Any] | None) -> None:
    """``train()``, and the final report once more when the checkpoint resumed from was taken at
    the end: a trial killed after its last checkpoint but before Tune took its final result has
    done its work, and Tune must hear that it finished (else it counts as stopped early)."""
    from trainables import train

    reports = 0

    def counted(report: Any) -> None:
        nonlocal reports
        reports += 1
        reporter(report)

    train(task_config, counted, resume_from=resume_from)
    if reports == 0 and resume_from is not None:
        reporter(_final_report(resume_from))


def _final_report(state: dict[str, Any]) -> Any:
    from trainables.api import MemberMetrics, Report

    members = tuple(MemberMetrics(**m) for m in state["last"])
    return Report(step=int(state["step"]), members=members, final=True, checkpoint=lambda: state)


def _load_checkpoint(checkpoint: Any) -> dict[str, Any] | None:
    """The trial's training state from Tune's checkpoint.

    Tune's saved experiment state can name a checkpoint that the trial's own bookkeeping has
    deleted since (a hard kill between the two): then the newest checkpoint of the trial that
    still exists is taken, and failing that the trial starts over, rather than failing.
    """
    candidates = [Path(checkpoint.path)]
    if getattr(checkpoint.filesystem, "type_name", "local") == "local":
        parent = candidates[0].parent
        candidates += sorted(parent.glob("checkpoint_*"), reverse=True) if parent.is_dir() else []
    for path in candidates:
        if (path / CHECKPOINT_FILE).is_file():
            return torch.load(path / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
        if path == candidates[0]:
            try:  # remote storage: let Tune fetch it
                with checkpoint.as_directory() as d:
                    if (Path(d) / CHECKPOINT_FILE).is_file():
                        return torch.load(Path(d) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
            except (FileNotFoundError, OSError):
                pass
    return None


def _mlflow_uri(ctx: dict[str, Any]) -> str:
    """The tracking URI with its password: the context carries it redacted (Tune writes trial
    configs to disk); the secret comes from the worker's environment (study/runner.py)."""
    return os.environ.get(MLFLOW_URI_ENV) or ctx["mlflow_uri"]


def _system_metrics(uri: str, experiment_id: str, trial_id: str) -> Any:
    """MLflow's psutil-based monitor (CPU, memory, disk, network; GPU where present) on the trial's
    run, which the driver created before the trial started."""
    try:
        from study.tracking import TrialSystemMetrics, find_trial_run

        run_id = find_trial_run(uri, experiment_id, trial_id)
        if run_id is None:
            return None
        interval = float(os.environ.get("MOMENTUM_STUDY_SYSTEM_METRICS_INTERVAL", "2"))
        # Logs its first sample even when the trial ends within the first interval.
        monitor = TrialSystemMetrics(run_id, sampling_interval=interval, tracking_uri=uri)
        monitor.start()
        return monitor
    except Exception:  # system metrics are a nicety; never fail a trial over them (MLflow down)
        return None
