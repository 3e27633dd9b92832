"""The results database's tables: typed SQLAlchemy 2 models with their constraints (docs/results-db.md).

Table names carry the ``ms_`` prefix because Optuna's own tables (``studies``, ``trials``, ...) live
in the same database. In these tables a configuration is a "trial" (``ms_trials``), as in Optuna's.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, CheckConstraint, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from study.record import outcome

TRIAL_STATES = ("pending", *outcome.STATES)  # a configuration's states (study/record/outcome.py), and pending
STUDY_STATES = ("running", "interrupted", "completed", "failed")
MEMBER_STATES = ("running", "completed", "diverged", "pruned")
TERMINAL_TRIAL_STATES = outcome.TERMINAL


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _states(column: str, states: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(s) for s in states)})"


class Base(DeclarativeBase):
    pass


class StudyRow(Base):
    __tablename__ = "ms_studies"
    __table_args__ = (
        UniqueConstraint("name", name="uq_ms_studies_name"),
        CheckConstraint(_states("state", STUDY_STATES), name="ck_ms_studies_state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    task: Mapped[str] = mapped_column(String(40))
    metric: Mapped[str] = mapped_column(String(40))
    mode: Mapped[str] = mapped_column(String(3))
    num_samples: Mapped[int] = mapped_column(Integer)
    repeats: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(12))
    spec_yaml: Mapped[str] = mapped_column(Text)
    tune_path: Mapped[str] = mapped_column(Text)
    mlflow_uri: Mapped[str] = mapped_column(Text)
    mlflow_experiment_id: Mapped[str | None] = mapped_column(String(64))
    mlflow_parent_run_id: Mapped[str | None] = mapped_column(String(64))
    # Why the study is failed or interrupted (migration 0003); None once it completed.
    state_reason: Mapped[str | None] = mapped_column(Text)
    # The code it ran on (study/code_version.py; migration 0006): created with, and each resume's
    # where it differs ("0.1.0+g1a2b3c; resumed with 0.1.0+g4d5e6f").
    code_version: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_now)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_now, onupdate=_now)

    trials: Mapped[list["TrialRow"]] = relationship(back_populates="study", cascade="all, delete-orphan")


class TrialRow(Base):
    __tablename__ = "ms_trials"
    __table_args__ = (
        UniqueConstraint("study_id", "trial_id", name="uq_ms_trials_study_trial"),
        CheckConstraint(_states("state", TRIAL_STATES), name="ck_ms_trials_state"),
        Index("ix_ms_trials_study_state", "study_id", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("ms_studies.id", ondelete="CASCADE"))
    # Ray Tune's trial id: stable across retries and `study resume`.
    trial_id: Mapped[str] = mapped_column(String(64))
    optuna_trial_number: Mapped[int | None] = mapped_column(Integer)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(12))
    # The sampled values, under the sampler's names (e.g. one_minus_mu_max).
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The full training config after trainables.parse_config, defaults included.
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    members: Mapped[int] = mapped_column(Integer, default=1)
    members_diverged: Mapped[int] = mapped_column(Integer, default=0)
    last_step: Mapped[int | None] = mapped_column(Integer)
    # The study metric at the last report (mean over members) and the best so far.
    metric_value: Mapped[float | None] = mapped_column(Float)
    best_metric_value: Mapped[float | None] = mapped_column(Float)
    # What the searcher was told: the metric, or +inf (mode min) / -inf (max) once a member diverged.
    objective: Mapped[float | None] = mapped_column(Float)
    error_message: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    ended_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    # Where the trial process last reported from (migration 0002): host, IP and Ray node id.
    hostname: Mapped[str | None] = mapped_column(String(255))
    node_ip: Mapped[str | None] = mapped_column(String(64))
    ray_node_id: Mapped[str | None] = mapped_column(String(64))
    # The population that trained it (migration 0004): the Ray trial id, and its worker's process.
    population: Mapped[str | None] = mapped_column(String(64))
    worker_pid: Mapped[int | None] = mapped_column(Integer)
    # Time to target (migration 0005): the spec's target for the study metric of this configuration,
    # and the first report step at which its metric (the mean over its seeds, no seed diverged)
    # reached it; None: no target, or not reached (never 0 or inf).
    target: Mapped[float | None] = mapped_column(Float)
    updates_to_target: Mapped[int | None] = mapped_column(Integer)

    study: Mapped[StudyRow] = relationship(back_populates="trials")
    points: Mapped[list["MetricPointRow"]] = relationship(back_populates="trial", cascade="all, delete-orphan")


class MetricPointRow(Base):
    """One member's figures at one report step (docs/results-db.md)."""

    __tablename__ = "ms_metric_points"
    __table_args__ = (
        UniqueConstraint("trial_pk", "step", "member", name="uq_ms_metric_points_trial_step_member"),
        CheckConstraint(_states("status", MEMBER_STATES), name="ck_ms_metric_points_status"),
        CheckConstraint("member >= 0 AND step >= 0", name="ck_ms_metric_points_nonneg"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trial_pk: Mapped[int] = mapped_column(ForeignKey("ms_trials.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    member: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[float | None] = mapped_column(Float)
    loss: Mapped[float | None] = mapped_column(Float)
    mu: Mapped[float | None] = mapped_column(Float)
    lr: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(10))
    diverged_at: Mapped[int | None] = mapped_column(Integer)
    extra: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    recorded_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_now, onupdate=_now)

    trial: Mapped[TrialRow] = relationship(back_populates="points")
