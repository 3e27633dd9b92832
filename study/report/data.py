"""A study read from the results database as the two frames every table is built from.

``members``: one row per (configuration, member) with every field of the member's own training
config (from the configuration's resolved config, population lists unpacked: a member is one
seed), its outcome and its final error, plus the error at the last report before the final
low-momentum phase (Table 2). A configuration is a results-DB trial row (``ms_trials``), whether
its Ray trial trained it alone or fused with others (``ms_trials.population``, never read here).
``points``: every metric point (configuration, step, member).

Outcome of a member: "completed", "diverged" (NaN/inf loss; it keeps its last good error, which
the tables never use as a result), or the trial's state where the member never finished
("failed", "pruned", "running", "pending").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import yaml

from study.record import queries, results
from study.locations import resolve
from trainables.config import POPULATION_FIELDS, TaskConfig, parse_config

# The fields a report can group by, in the paper's words.
HYPERPARAMETERS = ("optimizer", "lr", "mu_max", "mu_0", "init_scale", "spectral_radius")
# Every field of the training config, each a column of the member table.
CONFIG_FIELDS = tuple(TaskConfig.model_fields)
# Config fields that do not make a setting: the seed is what the members of a setting differ in
# (its repeats, fused as one population or run as separate trials), the device only where it ran.
# Every other field that a study varied keeps settings apart in every table (tables.other_varied).
NOT_SETTINGS = ("seed", "device", "cuda_graphs")
# Momentum coefficients: near 1 what matters is 1 - mu (0.99 vs 0.999 is a factor of 10), so
# every axis of one of these is 1 - mu on a log scale.
MOMENTUM_FIELDS = ("mu_max", "mu_0", "final_momentum")


def family(task: str) -> str:
    """The paper's section of a task, "autoencoder" or "rnn", as the task names it (trainables/tasks)."""
    from trainables.tasks import task_for

    return task_for(task).family


def final_phase_updates(config: dict[str, Any]) -> int:
    """The length of the final low-momentum phase: what the trainer used (default_final_updates)."""
    from trainables.config import ConfigError
    from trainables.train import default_final_updates

    try:
        return int(default_final_updates(parse_config(config)))
    except ConfigError:
        # A config stored by an older trainer that today's would refuse: its documented default.
        if config.get("final_momentum_updates") is not None:
            return int(config["final_momentum_updates"])
        from trainables.tasks import task_for

        return task_for(config["task"]).final_phase_updates(int(config.get("updates", 0)))


def momentum_schedule(config: dict[str, Any]) -> str:
    """The schedule the trainer ran: the config's, or the task's paper schedule (eq5 / rnn)."""
    if config.get("momentum_schedule"):
        return config["momentum_schedule"]
    from trainables.tasks import task_for

    return task_for(config["task"]).resolve(TaskConfig(task=config["task"])).momentum_schedule


def rnn_warmup_updates() -> int:
    """Updates at mu = 0.9 before mu_0 applies, as the trainer's RNN schedule has them (sec. 4.2)."""
    from trainables.schedules import warmup_of

    return warmup_of("rnn")


@dataclass
class StudyData:
    name: str
    task: str
    metric: str
    mode: str
    state: str
    spec: dict[str, Any]
    results_db: str
    mlflow_uri: str | None
    mlflow_parent_run_id: str | None
    trials: pd.DataFrame
    members: pd.DataFrame
    points: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    code_version: str | None = None  # None: a study made before versions were recorded
    created_at: Any = None
    updated_at: Any = None

    @property
    def family(self) -> str:
        return family(self.task)

    @property
    def searched(self) -> dict[str, Any]:
        return dict(self.spec.get("search") or {})


_DEFAULTS = {name: f.default for name, f in TaskConfig.model_fields.items() if name != "task"}


def _member_value(config: dict[str, Any], key: str, k: int) -> Any:
    v = config.get(key)
    return v[k] if isinstance(v, list) else v


def load_study(name: str, directory: str | None = None, results_db: str | None = None) -> StudyData:
    """Reads one study through the results DB's ORM; raises ResultsDBError / ValueError if absent."""
    url = resolve(name, directory, results_db).results_db
    if not results.sqlite_path_exists(url):
        raise ValueError(f"no results database for study {name!r} at {url}")
    found = queries.study_with_trials(url, name)
    if found is None:
        raise ValueError(f"no study named {name!r} in {url}; `study status` lists the studies")
    row, trial_rows, point_rows = found
    info = dict(
        name=row["name"],
        task=row["task"],
        metric=row["metric"],
        mode=row["mode"],
        state=row["state"],
        spec=yaml.safe_load(row["spec_yaml"]) or {},
        mlflow_uri=row["mlflow_uri"],
        mlflow_parent_run_id=row["mlflow_parent_run_id"],
        code_version=row.get("code_version"),
        created_at=row.get("created_at"),
        updated_at=row.get("updated_at"),
    )
    trials = pd.DataFrame(trial_rows, columns=["trial_pk", "trial_id", "optuna_trial_number", "state", "params",
                                               "config", "members", "members_diverged", "last_step", "error_message",
                                               "target", "updates_to_target"])
    points = pd.DataFrame(point_rows, columns=["trial_id", "step", "member", "seed", "error", "loss", "mu", "lr",
                                               "status", "diverged_at", "extra"])
    members = member_table(trials, points, info["metric"])
    # Failures are results: a member without a recorded task counts under the study's task.
    members["task"] = members["task"].fillna(info["task"])
    from study.report.time_to_target import per_member  # it reads this module's fields

    members = per_member(members, points, info["metric"], info["mode"], info["spec"])
    return StudyData(results_db=url, trials=trials, members=members, points=points, **info)


def member_table(trials: pd.DataFrame, points: pd.DataFrame, metric: str = "error") -> pd.DataFrame:
    """One row per (trial, member): hyperparameters, outcome, final and before-final-phase error."""
    rows = []
    by_trial = {tid: df.sort_values("step") for tid, df in points.groupby("trial_id")} if len(points) else {}
    for t in trials.itertuples(index=False):
        config = t.config if isinstance(t.config, dict) else json.loads(t.config or "{}")
        k_members = max(int(t.members or 1), 1)
        updates = int(config.get("updates", 0) or 0)
        final_n = final_phase_updates(config) if config.get("task") else 0
        schedule = momentum_schedule(config) if config.get("task") else None
        pts = by_trial.get(t.trial_id)
        for k in range(k_members):
            row: dict[str, Any] = {"trial_id": t.trial_id, "member": k, "trial_state": t.state}
            for key in CONFIG_FIELDS:
                # A key an older trainer did not store had today's default.
                row[key] = _member_value(config, key, k) if key in config else _DEFAULTS.get(key)
            # A configuration recorded before its config (a crash at start): its sampled task, if any.
            params = getattr(t, "params", None)
            params = params if isinstance(params, dict) else {}
            row["task"] = row["task"] or params.get("task")
            row["final_phase_updates"] = final_n
            row["momentum_schedule"] = schedule
            mine = pts[pts["member"] == k] if pts is not None else None
            last = mine.iloc[-1] if mine is not None and len(mine) else None
            if last is not None and last["seed"] is not None and not pd.isna(last["seed"]):
                row["seed"] = int(last["seed"])
            status = last["status"] if last is not None else None
            if status == "diverged":
                outcome = "diverged"
            elif status == "completed" and (last["step"] >= updates or t.state in ("completed", "diverged")):
                outcome = "completed"
            elif t.state in ("failed", "pruned", "running", "pending"):
                outcome = t.state
            else:
                outcome = status or t.state
            row["outcome"] = outcome
            row["last_step"] = int(last["step"]) if last is not None else None
            row["diverged_at"] = (
                int(last["diverged_at"]) if last is not None and not pd.isna(last["diverged_at"]) else None
            )
            value = None
            if last is not None:
                value = last["error"] if metric in ("error",) else (
                    last["loss"] if metric == "loss" else (last["extra"] or {}).get(metric)
                )
            row["final_error"] = float(value) if outcome == "completed" and value is not None else None
            row["last_good_error"] = float(last["error"]) if last is not None and last["error"] is not None else None
            # Table 2: the last report at or before the step where the final phase begins.
            before = None
            if mine is not None and final_n > 0 and outcome == "completed":
                start = updates - final_n
                earlier = mine[(mine["step"] <= start) & (mine["status"] != "diverged")]
                if len(earlier):
                    before = earlier.iloc[-1]
            row["before_final_phase_step"] = int(before["step"]) if before is not None else None
            row["error_before_final_phase"] = float(before["error"]) if before is not None else None
            rows.append(row)
    first = ["trial_id", "member", "trial_state", *HYPERPARAMETERS, "seed", "task", "updates", "batch_size",
             "train_cases", "eval_cases", "seq_length", "dataset", "data_dir", "final_phase_updates",
             "momentum_schedule"]
    columns = [*first, *(f for f in CONFIG_FIELDS if f not in first), "outcome", "last_step", "diverged_at",
               "final_error", "last_good_error", "before_final_phase_step", "error_before_final_phase"]
    return pd.DataFrame(rows, columns=columns)


__all__ = ["CONFIG_FIELDS", "MOMENTUM_FIELDS", "NOT_SETTINGS", "StudyData", "load_study", "member_table", "family",
           "final_phase_updates", "momentum_schedule", "rnn_warmup_updates", "POPULATION_FIELDS"]
