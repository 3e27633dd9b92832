"""What runs inside a Ray Tune trial: the adapter from trainables' reporter to ``tune.report``.

One trial trains one fused population: the configurations of its member table
(study/plan/population.py), each with its ``repeats`` seeds, as one batched computation. Every report
carries a ``ConfigurationReport`` per configuration (study/record/outcome.py: the mean over its seeds
as its metric, its objective, its members' figures), as plain data under ``outcome.CONFIGS_KEY``;
the driver's consumers read them back as records (``outcome.reports_in``).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from study.record.outcome import CONFIGS_KEY, ConfigurationReport, MemberFigures, objectives

CONTEXT_KEY = "study"
CHECKPOINT_FILE = "train_state.pt"
# The MLflow tracking URI with its password, in the workers' environment (never in a config).
MLFLOW_URI_ENV = "MOMENTUM_STUDY_MLFLOW_URI"
# When the previous trial in this worker process ended (Ray Tune reuses the process: reuse_actors).
_previous_end: float | None = None


def summarize(report: Any, seeds: list[int], metric: str, mode: str, config_id: str, number: int | None,
              population: str | None = None) -> ConfigurationReport:
    """One configuration's report (its members are its seeds, numbered from 0): means, the
    searcher's objective and every member's figures; ended once none of its seeds runs."""
    members = tuple(
        MemberFigures(m.member, seeds[m.member], m.error, m.loss, m.mu, m.lr, m.status, m.diverged_at, dict(m.extra))
        for m in report.members
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
    # worst value for schedulers (study/record/outcome.py); charts stay finite because the per-member
    # figures keep their last good values (docs/study-specs.md).
    objective, scheduler_objective = objectives(value, diverged, mode)
    return ConfigurationReport(
        config_id=config_id, optuna_number=number, step=report.step, final=bool(report.final),
        ended=all(m.status != "running" for m in report.members), metric_value=value, objective=objective,
        scheduler_objective=scheduler_objective, members_diverged=diverged, members=members,
        error=mean("error"), loss=mean("loss"), mu=mean("mu"), lr=mean("lr"), population=population,
    )


class PopulationReporter:
    """trainables' reporter for a population: one result per report for Ray Tune, with a
    ``ConfigurationReport`` per configuration, and the configurations that stop at this report.

    A configuration has ended when none of its members runs: its report is then frozen at the
    report where that happened (``step``, ``final`` as they were), with ``ended`` set."""

    def __init__(self, spec: Any, table: list, seeds: list[int], rungs: Any = None, population: str | None = None):
        self.spec, self.table, self.seeds, self.rungs = spec, table, seeds, rungs
        self.population = population
        self.repeats = len(seeds) // len(table)
        self.reports = 0
        self.ended: dict[int, ConfigurationReport] = {}

    def configs(self, report: Any) -> list[ConfigurationReport]:
        from dataclasses import replace

        from trainables.api import Report

        R = self.repeats
        out = []
        for j, c in enumerate(self.table):
            if j in self.ended:
                out.append(self.ended[j])
                continue
            mine = tuple(replace(m, member=m.member - j * R) for m in report.members[j * R:(j + 1) * R])
            sub = Report(step=report.step, members=mine, final=report.final, checkpoint=report.checkpoint)
            summary = summarize(sub, self.seeds[j * R:(j + 1) * R], self.spec.metric, self.spec.mode,
                                c.config_id, c.number, self.population)
            if summary.ended:
                self.ended[j] = summary
            out.append(summary)
        return out

    def result(self, report: Any) -> tuple[dict[str, Any], list[int]]:
        """The Tune result of a report, and the members to stop (member-level rungs)."""
        self.reports += 1
        configs = self.configs(report)
        stop: list[int] = []
        if self.rungs is not None:
            running = {j: c.scheduler_objective for j, c in enumerate(configs) if not c.ended}
            for j in self.rungs.stop(self.reports, running):
                stop += range(j * self.repeats, (j + 1) * self.repeats)
                self.ended[j] = configs[j] = configs[j].stopped()
        # Configurations ended earlier whose members still train: stopped at the report a resumed
        # checkpoint was taken at (it holds the members as they were before the stop).
        for j in self.ended:
            if any(m.status == "running" for m in report.members[j * self.repeats:(j + 1) * self.repeats]):
                stop += [k for k in range(j * self.repeats, (j + 1) * self.repeats) if k not in stop]
        # The population's own figures, for Tune (its searcher metric ``objective``, ASHA's
        # ``scheduler_objective``, the progress columns): with ``fuse: off`` the configuration's,
        # else the best configuration's. The driver's consumers read the reports under CONFIGS_KEY.
        if len(configs) == 1:
            result = configs[0].to_dict()
        else:
            best = min(configs, key=lambda c: c.objective if self.spec.mode == "min" else -c.objective)
            result = {k: getattr(best, k) for k in ("error", "loss", "mu", "lr", "metric_value", "objective",
                                                   "scheduler_objective")}
            result.update(step=report.step, final=bool(report.final),
                          members_diverged=sum(c.members_diverged for c in configs))
        result[CONFIGS_KEY] = [c.to_dict() for c in configs]
        return result, stop

    def checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint keeps of this bookkeeping, beside the trainer's state: the reports
        counted (rungs fall at report counts) and the configurations that had ended."""
        return {"reports": self.reports, "ended_configs": {j: c.to_dict() for j, c in self.ended.items()}}

    def resume(self, state: dict[str, Any]) -> None:
        """Goes on from a checkpoint's bookkeeping (``checkpoint_state``; absent in older ones)."""
        self.reports = int(state.get("reports", 0))
        self.ended = {int(j): ConfigurationReport.from_dict(c) for j, c in (state.get("ended_configs") or {}).items()}


def run_trial(config: dict[str, Any]) -> None:
    """Tune's function trainable for every study (importable by workers from the installed package):
    trains the member table's configurations as one population."""
    from study.plan.devices import ray_trial_device
    from study.plan.population import member_table, training_config
    from study.run.rung_board import population_rungs
    from study.spec.model import StudySpec

    global _previous_end
    entered = time.time()
    ctx = config[CONTEXT_KEY]
    spec = StudySpec.model_validate(ctx["spec"])
    table = member_table(config)
    task_config = training_config(spec, table)
    # The device Ray assigned (none for gpus: 0, even where CUDA is visible): study/plan/devices.py.
    task_config = task_config.model_copy(update={"device": ray_trial_device(task_config.device)})
    seeds = [int(s) for s in task_config.member_values("seed")]
    trial_id = tune.get_context().get_trial_id()
    monitor = _system_metrics(_mlflow_uri(ctx), ctx["experiment_id"], [c.config_id for c in table])

    checkpoint = tune.get_checkpoint()
    resume_from = _load_checkpoint(checkpoint) if checkpoint is not None else None

    # The study's rungs, shared by every population (study/run/rung_board.py).
    rungs = population_rungs(spec, [c.config_id for c in table], -(-task_config.updates // task_config.report_every))
    population = PopulationReporter(spec, table, seeds, rungs, trial_id)
    if resume_from is not None:
        population.resume(resume_from)
    node_id = ray.get_runtime_context().get_node_id()
    overhead = _Overhead(entered, _previous_end)

    def reporter(report: Any) -> list[int]:
        result, stop = population.result(report)
        result["ray_node_id"] = node_id
        result["population"] = trial_id
        result.update(overhead.at_report())
        if report.final or population.reports % spec.checkpoint_every == 0:
            with tempfile.TemporaryDirectory() as tmp:
                state = {**report.checkpoint(), **population.checkpoint_state()}
                torch.save(state, Path(tmp) / CHECKPOINT_FILE)
                tune.report(result, checkpoint=tune.Checkpoint.from_directory(tmp))
        else:
            tune.report(result)
        return stop

    try:
        train_to_the_end(task_config, reporter, resume_from)
    finally:
        if monitor is not None:
            monitor.finish()
        _previous_end = time.time()


class _Overhead:
    """What a trial costs before its first update, in its results (benchmarks/study_throughput.py
    reads them): ``since_previous_s``, from the end of the previous trial in this worker process
    to this one's start (None for a worker's first trial), and ``setup_s``, from its start to its
    first update: the time to the first report less one report interval's compute (the intervals
    between reports hold the same updates and one evaluation each), on the second report."""

    def __init__(self, entered: float, previous_end: float | None):
        self.entered, self.previous_end = entered, previous_end
        self.reports: list[float] = []

    def at_report(self) -> dict[str, float]:
        self.reports.append(time.time())
        if len(self.reports) == 1 and self.previous_end is not None:
            return {"since_previous_s": self.entered - self.previous_end}
        if len(self.reports) == 2:
            first, interval = self.reports[0] - self.entered, self.reports[1] - self.reports[0]
            return {"setup_s": max(first - interval, 0.0)}
        return {}


def train_to_the_end(task_config: Any, reporter: Any, resume_from: dict[str, Any] | None) -> None:
    """``train()``, and the final report once more when the checkpoint resumed from was taken at
    the end: a trial killed after its last checkpoint but before Tune took its final result has
    done its work, and Tune must hear that it finished (else it counts as stopped early)."""
    from trainables import train

    reports = 0

    def counted(report: Any) -> Any:
        nonlocal reports
        reports += 1
        return reporter(report)

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
    configs to disk); the secret comes from the worker's environment (study/run/runner.py)."""
    return os.environ.get(MLFLOW_URI_ENV) or ctx["mlflow_uri"]


def _system_metrics(uri: str, experiment_id: str, config_ids: list[str]) -> Any:
    """MLflow's psutil-based monitor (CPU, memory, disk, network; GPU where present) on the run of
    the population's first configuration (the process is the population's: one monitor, not one
    per configuration), which the driver created before the trial started."""
    try:
        from study.record.tracking import TrialSystemMetrics, find_trial_run

        run_id = find_trial_run(uri, experiment_id, config_ids[0])
        if run_id is None:
            return None
        interval = float(os.environ.get("MOMENTUM_STUDY_SYSTEM_METRICS_INTERVAL", "2"))
        # Logs its first sample even when the trial ends within the first interval.
        monitor = TrialSystemMetrics(run_id, sampling_interval=interval, tracking_uri=uri)
        monitor.start()
        return monitor
    except Exception:  # system metrics are a nicety; never fail a trial over them (MLflow down)
        return None
